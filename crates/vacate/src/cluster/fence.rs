//! Fencing: a leader acts only while the Lease it holds is current. A vacate frozen past its
//! lease (a stopped process, a paused VM, a long GC pause) and then resumed may still think it
//! leads until its lease manager notices; meanwhile another replica has taken over. Before
//! every write the shell checks the Lease as vacate's own watch last saw it: held by this
//! replica and renewed less than a lease duration ago by this replica's clock. A resumed
//! replica finds its clock past the last renewal it saw, and writes nothing.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::watch::Tasks;

/// The Lease this replica must hold to act.
#[derive(Clone)]
pub struct Fence {
    store: Store<Lease>,
    namespace: String,
    name: String,
    identity: String,
}

impl Fence {
    /// Watches the Lease `namespace/name`; the watch ends with the returned tasks.
    pub fn start(client: &Client, namespace: &str, name: &str, identity: &str) -> (Fence, Tasks) {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let (store, writer) = reflector::store();
        let stream = reflector(
            writer,
            watcher(
                api,
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            )
            .default_backoff(),
        )
        .applied_objects();
        let mut tasks = Tasks::default();
        tasks.push(tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Err(error) = event {
                    tracing::debug!(%error, "watching the lease");
                }
            }
        }));
        let fence = Fence {
            store,
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
        };
        (fence, tasks)
    }

    /// Waits (up to `timeout`) until the watch shows the lease held by this replica: a new
    /// leader's first steps are not refused for a watch event still on its way.
    pub async fn wait_until_held(&self, timeout: std::time::Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.check(Utc::now()) {
                Ok(()) => return Ok(()),
                Err(why) if tokio::time::Instant::now() >= deadline => return Err(why),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// A fence over a store filled by the caller (tests).
    pub fn with_store(store: Store<Lease>, namespace: &str, name: &str, identity: &str) -> Fence {
        Fence {
            store,
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    /// `Ok` while this replica holds a current lease; otherwise why not.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), String> {
        let lease = self
            .store
            .get(&ObjectRef::new(&self.name).within(&self.namespace));
        holds(lease.as_deref(), &self.identity, now)
    }
}

/// Whether `lease` is held by `identity` and was renewed less than its duration before `now`.
pub fn holds(lease: Option<&Lease>, identity: &str, now: DateTime<Utc>) -> Result<(), String> {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Err("the lease is not known yet".into());
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder != identity {
        return Err(format!("the lease is held by {holder:?}"));
    }
    let (Some(renewed), Some(duration)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return Err("the lease has no renewal time or duration".into());
    };
    let renewed = DateTime::from_timestamp(
        renewed.0.as_second(),
        renewed.0.subsec_nanosecond().max(0) as u32,
    )
    .unwrap_or_default();
    let expires = renewed + chrono::Duration::seconds(i64::from(duration));
    if now >= expires {
        return Err(format!(
            "the lease expired at {} (last renewal seen {}, now {}); another replica may lead",
            expires.to_rfc3339(),
            renewed.to_rfc3339(),
            now.to_rfc3339()
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    pub(crate) fn micro_time(at: DateTime<Utc>) -> MicroTime {
        MicroTime(
            k8s_openapi::jiff::Timestamp::new(at.timestamp(), at.timestamp_subsec_nanos() as i32)
                .expect("a time in range"),
        )
    }

    fn lease(holder: &str, renewed: DateTime<Utc>, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(micro_time(renewed)),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_current_lease_of_ours_holds() {
        let now = Utc::now();
        let l = lease("me", now - chrono::Duration::seconds(5), 15);
        assert!(holds(Some(&l), "me", now).is_ok());
    }

    #[test]
    fn an_expired_lease_or_someone_elses_does_not() {
        let now = Utc::now();
        let expired = lease("me", now - chrono::Duration::seconds(16), 15);
        assert!(
            holds(Some(&expired), "me", now)
                .unwrap_err()
                .contains("expired")
        );
        let theirs = lease("other", now, 15);
        assert!(
            holds(Some(&theirs), "me", now)
                .unwrap_err()
                .contains("other")
        );
        assert!(holds(None, "me", now).is_err());
        assert!(holds(Some(&Lease::default()), "me", now).is_err());
    }
}
