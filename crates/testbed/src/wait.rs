//! Waiting for cluster state, with timeout errors that say what was awaited.
//!
//! [`wait_until`] watches a list of objects (kube-runtime's watcher) and
//! re-checks a predicate on every change: no polling of the API server. [`wait_for`] is
//! the generic fallback that polls an async check.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// A wait that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {timeout:?} waiting for {what}{}", last.as_ref().map(|l| format!(" (last seen: {l})")).unwrap_or_default())]
    Timeout {
        what: String,
        timeout: Duration,
        last: Option<String>,
    },
    #[error("while waiting for {what}: {source:#}")]
    Failed {
        what: String,
        #[source]
        source: anyhow::Error,
    },
}

/// Polls `check` every 100 ms until it returns `Ok(true)`. An `Err` from `check` aborts the
/// wait.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let fut = async {
        loop {
            match check().await {
                Ok(true) => return Ok(()),
                Ok(false) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(source) => {
                    return Err(WaitError::Failed {
                        what: what.to_string(),
                        source,
                    });
                }
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(WaitError::Timeout {
            what: what.to_string(),
            timeout,
            last: None,
        }),
    }
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
        loop {
            // Apply one event, then every event already waiting, before checking `done`
            // (a burst of thousands of events costs one check, not thousands).
            let mut changed = false;
            let mut next = Some(stream.next().await);
            while let Some(event) = next {
                match event {
                    Some(Ok(watcher::Event::Init)) => initial.clear(),
                    Some(Ok(watcher::Event::InitApply(o))) => {
                        initial.insert(key(&o), o);
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        current = std::mem::take(&mut initial);
                        listed = true;
                        changed = true;
                    }
                    Some(Ok(watcher::Event::Apply(o))) => {
                        current.insert(key(&o), o);
                        changed = true;
                    }
                    Some(Ok(watcher::Event::Delete(o))) => {
                        current.remove(&key(&o));
                        changed = true;
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
            if listed && changed {
                let snapshot: Vec<K> = current.values().cloned().collect();
                if done(&snapshot) {
                    return Ok(snapshot);
                }
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
                last: Some(describe(&snapshot)),
            })
        }
    }
}
