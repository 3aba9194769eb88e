//! `vacate run`: the daemon. Every replica serves /metrics, /healthz and /readyz; only the
//! holder of the Lease watches the cluster and acts.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

use crate::cluster::Shell;
use crate::cluster::fence::Fence;
use crate::cluster::watch::NodeFilter;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, Readiness};

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let client = super::client().await?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let listener = server::bind(&config.server.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (server.listen): {e}",
            config.server.listen
        )
    })?;
    tracing::info!(address = %config.server.listen, "serving /metrics, /healthz and /readyz");
    tokio::spawn(server::serve(listener, metrics.clone(), readiness.clone()));
    {
        let (metrics, config) = (metrics.clone(), config.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.update_windows(&config, chrono::Utc::now());
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutting down: no new work is started; running migrations are left to KubeVirt"
        );
        let _ = stop_tx.send(true);
    });

    if !config.leader_election.enabled {
        // Ready for systemd (Type=notify) once the caches are filled, inside `act`.
        metrics.record_leader(true);
        act(&client, &config, &metrics, &readiness, stop_rx, None).await?;
        metrics.record_leader(false);
        return Ok(());
    }

    let identity = identity();
    let namespace = lease_namespace(&config);
    let duration = config.leader_election.lease_duration.get().as_secs();
    // Building the manager reads (and may create) the Lease. A transient failure (a 429 from
    // API priority and fairness, a 5xx, an API server not reachable yet) is waited out:
    // exiting would only have the replica restarted into the same answer.
    let mut wait = Duration::from_millis(500);
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &config.leader_election.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .with_field_manager("vacate")
            .build()
            .await;
        match built {
            Ok(manager) => break manager,
            Err(e) if lease_error_is_transient(&e) => {
                tracing::warn!(error = %e, retry_in = ?wait, lease = %format!("{namespace}/{}", config.leader_election.lease_name), "cannot use the leader-election Lease yet; trying again");
                let mut stop = stop_rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|stop| *stop) => return Ok(()),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot use Lease {namespace}/{} for leader election: {e}",
                    config.leader_election.lease_name
                ));
            }
        }
    };
    let (mut leader_rx, lease_task) = watch_lease(manager, Duration::from_secs(duration));
    // vacate writes only while the Lease, as its own watch shows it, is held and current.
    let (fence, _fence_watch) = Fence::start(
        &client,
        &namespace,
        &config.leader_election.lease_name,
        &identity,
    );
    readiness.set_ready(true);
    notify_systemd(sd_notify::NotifyState::Ready);
    tracing::info!(%identity, lease = %format!("{namespace}/{}", config.leader_election.lease_name), "waiting for leadership");

    let mut stop = stop_rx.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        if !*leader_rx.borrow_and_update() {
            metrics.record_leader(false);
            tokio::select! {
                changed = leader_rx.changed() => {
                    if changed.is_err() { break; }
                    continue;
                }
                _ = stop.changed() => break,
            }
        }
        tracing::info!(%identity, "became the leader; acting on the cluster");
        metrics.record_leader(true);
        // Act until the lease is lost or a shutdown is asked for.
        let (lost_tx, lost_rx) = watch::channel(false);
        let mut leader_watch = leader_rx.clone();
        let mut stop_watch = stop_rx.clone();
        let relay = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = leader_watch.changed() => {
                        if changed.is_err() || !*leader_watch.borrow() { break; }
                    }
                    _ = stop_watch.changed() => break,
                }
            }
            let _ = lost_tx.send(true);
        });
        act(
            &client,
            &config,
            &metrics,
            &readiness,
            lost_rx,
            Some(fence.clone()),
        )
        .await?;
        relay.abort();
        metrics.record_leader(false);
        if !*stop.borrow() {
            tracing::warn!(%identity, "lost the leadership; waiting to win it again");
        }
    }
    notify_systemd(sd_notify::NotifyState::Stopping);
    // Dropping the receiver makes the lease task release the Lease, so a standby takes
    // over at once instead of after the lease duration.
    drop(leader_rx);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(()))) => tracing::info!("released the lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the lease failed"),
        _ => tracing::warn!(
            "the lease was not released in time; a standby takes over when it expires"
        ),
    }
    Ok(())
}

/// Follows the Lease: the receiver says whether this replica holds it; dropping every
/// receiver releases it and ends the task.
///
/// kube-lease-manager's own `LeaseManager::watch` waits 1 s, 2 s, ... up to 30 s after each
/// failed renewal and starts again from 1 s only when the leadership changes: a leader that
/// keeps its lease through a few transient failures (429s from API priority and fairness,
/// say) ends up waiting 30 s after the next one, far past its lease, and acts for no one in
/// the meantime. Here the wait after a failure is never longer than a third of the lease, so
/// the renewal is tried again before the lease runs out, and starts again from short waits
/// once a lease duration has passed without failures.
fn watch_lease(
    manager: LeaseManager,
    lease: Duration,
) -> (
    watch::Receiver<bool>,
    tokio::task::JoinHandle<Result<(), LeaseManagerError>>,
) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut failures = 0u32;
        let mut last_failure = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = tx.closed() => return manager.release().await,
                changed = manager.changed() => match changed {
                    Ok(leader) => {
                        failures = 0;
                        if tx.send(leader).is_err() {
                            return manager.release().await;
                        }
                    }
                    Err(error) => {
                        if last_failure.elapsed() > lease {
                            failures = 0;
                        }
                        last_failure = tokio::time::Instant::now();
                        failures += 1;
                        let wait = lease_retry_wait(failures, lease);
                        tracing::warn!(%error, retry_in = ?wait, "renewing or taking the leader-election Lease failed; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = tx.closed() => return manager.release().await,
                        }
                    }
                }
            }
        }
    });
    (rx, task)
}

/// The wait after the `failures`-th failure in a row to renew or take the Lease: doubling
/// from 250 ms, at most a third of the lease.
fn lease_retry_wait(failures: u32, lease: Duration) -> Duration {
    let longest = (lease / 3).max(Duration::from_millis(250));
    Duration::from_millis(250)
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(longest)
}

/// Whether setting up leader election may succeed if tried again: the API server answered
/// 429 (API priority and fairness) or 5xx, could not be reached, or another replica created
/// the Lease at the same moment. A refusal (403, say) is not: vacate exits and says why.
fn lease_error_is_transient(error: &LeaseManagerError) -> bool {
    match error {
        LeaseManagerError::KubeError(kube::Error::Api(status)) => {
            status.code == 429 || status.code >= 500
        }
        LeaseManagerError::KubeError(kube::Error::HyperError(_) | kube::Error::Service(_)) => true,
        LeaseManagerError::LeaseAlreadyExists(_) => true,
        _ => false,
    }
}

/// How long vacate waits for its watch caches before it says again what it waits for.
const CACHE_WAIT: Duration = Duration::from_secs(60);

/// Watches the cluster and drains nodes until `stop` turns true.
async fn act(
    client: &Client,
    config: &Arc<Config>,
    metrics: &Metrics,
    readiness: &Readiness,
    stop: watch::Receiver<bool>,
    fence: Option<Fence>,
) -> anyhow::Result<()> {
    let filter = NodeFilter {
        name: None,
        label_selector: (!config.node.selector.is_empty())
            .then(|| config.node.selector.as_str().to_string()),
        without_pod_usage: false,
    };
    let shell = Shell::start(
        client.clone(),
        config.clone(),
        metrics.clone(),
        filter,
        fence.clone(),
    );
    // A slow or overloaded API server is not fatal: the watches retry with back-off, and
    // vacate stays not ready (saying which caches it waits for) until they are filled.
    let mut waited = Duration::ZERO;
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            filled = shell.ctx.stores.wait_until_ready(CACHE_WAIT) => match filled {
                Ok(()) => break,
                Err(_) => {
                    waited += CACHE_WAIT;
                    tracing::warn!(
                        waited = %humantime::format_duration(waited),
                        caches = %shell.ctx.stores.not_ready().join(", "),
                        "the watch caches are not filled yet (an overloaded API server, or KubeVirt's CRDs not installed?); still trying, not ready"
                    );
                }
            },
            _ = stopping.wait_for(|stop| *stop) => return Ok(()),
        }
    }
    if let Some(fence) = &fence
        && let Err(why) = fence.wait_until_held(Duration::from_secs(10)).await
    {
        tracing::warn!(%why, "the lease watch does not show this replica's lease yet; every write waits for it");
    }
    readiness.set_ready(true);
    notify_systemd(sd_notify::NotifyState::Ready);
    tracing::info!(
        request_label = %config.node.request_label,
        selector = %config.node.selector,
        "vacate is running"
    );
    // Started once the caches are filled: a run started from a half-filled node cache would
    // label some nodes and be recorded as started all the same.
    let schedules = tokio::spawn(crate::cluster::schedule::run(
        shell.ctx.clone(),
        lease_namespace(config),
        stop.clone(),
    ));
    shell.run(stop).await;
    let _ = schedules.await;
    Ok(())
}

/// Tells systemd (a `Type=notify` unit) how vacate is doing; a no-op anywhere else.
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!(%error, "notifying systemd failed");
    }
}

fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "vacate".into());
            format!("{host}-{}", std::process::id())
        })
}

pub(crate) fn lease_namespace(config: &Config) -> String {
    if !config.leader_election.namespace.is_empty() {
        return config.leader_election.namespace.clone();
    }
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "default".into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> LeaseManagerError {
        LeaseManagerError::KubeError(kube::Error::Api(
            kube::core::Status::failure("answer", "Reason")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn a_failed_renewal_is_tried_again_before_the_lease_runs_out() {
        let lease = Duration::from_secs(15);
        assert_eq!(lease_retry_wait(1, lease), Duration::from_millis(250));
        assert_eq!(lease_retry_wait(2, lease), Duration::from_millis(500));
        for failures in 1..100 {
            assert!(lease_retry_wait(failures, lease) <= Duration::from_secs(5));
        }
        assert_eq!(lease_retry_wait(1000, lease), Duration::from_secs(5));
        assert_eq!(
            lease_retry_wait(50, Duration::from_secs(1)),
            Duration::from_secs(1) / 3
        );
    }

    #[test]
    fn throttling_and_server_errors_setting_up_the_lease_are_waited_out() {
        // API priority and fairness answers 429 in plain text, which kube reads this way.
        assert!(lease_error_is_transient(&api(429)));
        assert!(lease_error_is_transient(&api(500)));
        assert!(lease_error_is_transient(&api(503)));
        assert!(lease_error_is_transient(
            &LeaseManagerError::LeaseAlreadyExists("vacate".into())
        ));
        // A refusal is not: vacate exits and says why.
        assert!(!lease_error_is_transient(&api(403)));
        assert!(!lease_error_is_transient(&api(422)));
        assert!(!lease_error_is_transient(
            &LeaseManagerError::InconsistentState("x".into())
        ));
    }
}
