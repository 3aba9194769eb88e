//! Waiting for cluster state, with timeout errors that say what was awaited.
//!
//! [`wait_until`] watches a list of objects (kube-runtime's watcher) and
//! re-checks a predicate on every change: no polling of the API server. [`wait_for`] is
//! the generic fallback that polls an async check; every test of the workspace waits with
//! one of the two.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// A wait that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {timeout:?} waiting for {what}{}", last.as_ref().map(|l| format!(" ({l})")).unwrap_or_default())]
    Timeout {
        what: String,
        timeout: Duration,
        /// What was seen last (`last seen: …`) or the last error of the check (`last error: …`).
        last: Option<String>,
    },
    #[error("while waiting for {what}: {source:#}")]
    Failed {
        what: String,
        #[source]
        source: anyhow::Error,
    },
}

/// How often [`wait_for`] asks.
const POLL: Duration = Duration::from_millis(250);
/// [`wait_until`] checks its predicate at most this often, and never spends more than a
/// tenth of its time on checks: after a check that took `d`, the next waits `10 × d`.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Polls `check` every 250 ms until it returns `Ok(true)`. An `Err` does not end the wait (the
/// object may not exist yet, the API server may be busy): it is remembered, and the timeout
/// error names the last one.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let mut last_error = None;
    let polls = async {
        loop {
            match check().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::time::timeout(timeout, polls)
        .await
        .map_err(|_| WaitError::Timeout {
            what: what.to_string(),
            timeout,
            last: last_error.map(|e| format!("last error: {e:#}")),
        })
}

/// Watches the objects of `api` selected by `config` and returns them (sorted by name)
/// as soon as `done` holds for the current set. `describe` summarises the last seen set
/// for the timeout error.
pub async fn wait_until<K, D, S>(
    what: &str,
    timeout: Duration,
    api: Api<K>,
    config: watcher::Config,
    mut done: D,
    describe: S,
) -> Result<Vec<K>, WaitError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    D: FnMut(&[K]) -> bool,
    S: Fn(&[K]) -> String,
{
    let mut current: BTreeMap<String, K> = BTreeMap::new();
    let mut initial: BTreeMap<String, K> = BTreeMap::new();
    let mut listed = false;
    let key = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let result = tokio::time::timeout(timeout, async {
        // When `done` may look next, and whether anything changed since it last did.
        let mut due: Option<Instant> = None;
        let mut dirty = false;
        loop {
            // Apply one event, then every event already waiting, before checking `done`
            // (a burst of thousands of events costs one check, not thousands). While a
            // check is owed but not yet due, an event is awaited only until it is.
            let mut next = match due.filter(|_| dirty) {
                Some(at) => {
                    tokio::select! {
                        event = stream.next() => Some(event),
                        () = tokio::time::sleep_until(at.into()) => None,
                    }
                }
                None => Some(stream.next().await),
            };
            while let Some(event) = next {
                match event {
                    Some(Ok(watcher::Event::Init)) => initial.clear(),
                    Some(Ok(watcher::Event::InitApply(o))) => {
                        initial.insert(key(&o), o);
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        current = std::mem::take(&mut initial);
                        listed = true;
                        dirty = true;
                    }
                    Some(Ok(watcher::Event::Apply(o))) => {
                        current.insert(key(&o), o);
                        dirty = listed;
                    }
                    Some(Ok(watcher::Event::Delete(o))) => {
                        current.remove(&key(&o));
                        dirty = listed;
                    }
                    Some(Err(e)) => {
                        tracing::debug!("watch error while waiting for {what}: {e}");
                    }
                    None => {
                        return Err(WaitError::Failed {
                            what: what.to_string(),
                            source: anyhow::anyhow!("the watch ended"),
                        });
                    }
                }
                next = stream.next().now_or_never();
            }
            // `done` reads a copy of the whole set: 12 MB for a thousand nodes of 12 kB each.
            if dirty && due.is_none_or(|at| Instant::now() >= at) {
                let started = Instant::now();
                dirty = false;
                let snapshot: Vec<K> = current.values().cloned().collect();
                if done(&snapshot) {
                    return Ok(snapshot);
                }
                due = Some(started + CHECK_INTERVAL.max(started.elapsed() * 10));
            }
        }
    })
    .await;
    match result {
        Ok(r) => r,
        Err(_) => {
            let snapshot: Vec<K> = current.values().cloned().collect();
            Err(WaitError::Timeout {
                what: what.to_string(),
                timeout,
                last: Some(format!("last seen: {}", describe(&snapshot))),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn errors_are_retried_until_the_check_holds() {
        let calls = AtomicU32::new(0);
        wait_for("the third call", Duration::from_secs(10), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => anyhow::bail!("not there yet"),
                1 => Ok(false),
                _ => Ok(true),
            }
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_timeout_names_what_was_awaited_and_the_last_error() {
        let calls = AtomicU32::new(0);
        let error = wait_for(
            "the node to be Ready",
            Duration::from_millis(600),
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n.is_multiple_of(2) {
                    anyhow::bail!("connection refused ({n})")
                }
                Ok(false)
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("timed out after 600ms waiting for the node to be Ready (last error: connection refused ("),
            "{error}"
        );
        let quiet = wait_for("nothing", Duration::from_millis(300), || async {
            Ok(false)
        })
        .await
        .unwrap_err();
        assert_eq!(
            quiet.to_string(),
            "timed out after 300ms waiting for nothing"
        );
    }
}
