//! What the pods of each node request, from one cluster-wide pod watch kept as a small
//! projection: the node and the requests of every unfinished pod, a few dozen bytes each,
//! not the pod objects. The start gate's capacity check and the steering of a rollout read
//! it instead of listing every pod of the cluster, so a start costs no pod list and memory
//! does not hold the cluster's pods.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

use super::cached::Uid;
use super::lean::LeanPod;
use super::snapshot;
use super::watch::{fleet_watch, map_event};
use crate::planner::capacity::Resources;

/// The requests of one running pod, and where it runs.
#[derive(Clone, Debug, PartialEq)]
struct Use {
    node: Arc<str>,
    requests: Resources,
}

/// A pod's key: its UID (as [`Uid`] keeps it), or `namespace/name` when it has none.
type PodKey = Uid;

#[derive(Default)]
struct Pods {
    /// By pod UID.
    current: HashMap<PodKey, Use>,
    /// The relist under way (a watch restarted): it replaces `current` when complete.
    relist: Option<HashMap<PodKey, Use>>,
    /// Node names, shared by the pods on each node.
    names: HashMap<String, Arc<str>>,
}

impl Pods {
    fn node_name(&mut self, node: &str) -> Arc<str> {
        if let Some(name) = self.names.get(node) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(node);
        self.names.insert(node.to_string(), Arc::clone(&name));
        name
    }

    /// The projection of `pod`: `None` for a pod that takes no room (not scheduled yet, or
    /// finished).
    fn project(&mut self, pod: &Pod) -> Option<(PodKey, Use)> {
        let node = pod.spec.as_ref()?.node_name.as_deref()?;
        if snapshot::pod_finished(pod) {
            return None;
        }
        let node = self.node_name(node);
        Some((
            key_of(pod),
            Use {
                node,
                requests: snapshot::pod_requests(pod),
            },
        ))
    }

    fn apply(&mut self, event: watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(pod) => {
                if let Some((key, value)) = self.project(&pod)
                    && let Some(relist) = self.relist.as_mut()
                {
                    relist.insert(key, value);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    self.current = relist;
                }
                // Names of nodes no pod runs on any more are dropped with the relist.
                let used: std::collections::HashSet<&str> =
                    self.current.values().map(|u| &*u.node).collect();
                self.names.retain(|name, _| used.contains(name.as_str()));
                true
            }
            watcher::Event::Apply(pod) => {
                let key = key_of(&pod);
                match self.project(&pod) {
                    Some((key, value)) => {
                        self.current.insert(key, value);
                    }
                    None => {
                        self.current.remove(&key);
                    }
                }
                false
            }
            watcher::Event::Delete(pod) => {
                self.current.remove(&key_of(&pod));
                false
            }
        }
    }
}

/// The key of `pod`: its UID, else `namespace/name`.
fn key_of(pod: &Pod) -> PodKey {
    match pod.metadata.uid.as_deref() {
        Some(uid) => PodKey::of(uid),
        None => PodKey::Text(
            format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()).into(),
        ),
    }
}

/// The pod requests of every node (see the module's documentation).
#[derive(Clone)]
pub struct PodUsage {
    pods: Arc<Mutex<Pods>>,
    ready: tokio_watch::Receiver<bool>,
    /// Whether the watch runs at all (`vacate plan` asks no start gate and goes without).
    on: bool,
}

impl PodUsage {
    /// No watch: never filled, so a start gate asked anyway waits instead of seeing an
    /// empty cluster; the shell's readiness does not wait for it.
    pub fn off() -> PodUsage {
        PodUsage {
            pods: Arc::default(),
            ready: tokio_watch::channel(false).1,
            on: false,
        }
    }

    /// Whether the watch runs.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Starts the watch (unfinished pods only: a pod that finishes leaves it).
    pub fn start(client: &Client) -> (PodUsage, JoinHandle<()>) {
        let pods = Arc::new(Mutex::new(Pods::default()));
        let (ready_tx, ready) = tokio_watch::channel(false);
        let config = fleet_watch().fields("status.phase!=Succeeded,status.phase!=Failed");
        let stream = watcher(Api::<LeanPod>::all(client.clone()), config).default_backoff();
        let writer = Arc::clone(&pods);
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        let event = map_event(event, Pod::from);
                        let filled = writer.lock().expect("pod usage lock").apply(event);
                        if filled {
                            ready_tx.send_replace(true);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "watching pods for their requests failed; retrying with backoff");
                    }
                }
            }
        });
        (
            PodUsage {
                pods,
                ready,
                on: true,
            },
            task,
        )
    }

    /// A projection of `pods`, complete from the start (for tests of the shell).
    #[cfg(test)]
    pub fn filled(list: &[Pod]) -> PodUsage {
        let mut pods = Pods::default();
        pods.apply(watcher::Event::Init);
        for pod in list {
            pods.apply(watcher::Event::InitApply(pod.clone()));
        }
        pods.apply(watcher::Event::InitDone);
        PodUsage {
            pods: Arc::new(Mutex::new(pods)),
            ready: tokio_watch::channel(true).1,
            on: true,
        }
    }

    /// Whether the first list is complete.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// What the pods of each node request, and how many there are, by node name; `None`
    /// until the first list is complete.
    pub fn by_node(&self) -> Option<HashMap<String, (Resources, i64)>> {
        if !self.is_ready() {
            return None;
        }
        let pods = self.pods.lock().expect("pod usage lock");
        let mut used: HashMap<String, (Resources, i64)> = HashMap::new();
        for u in pods.current.values() {
            let entry = used.entry(u.node.to_string()).or_default();
            entry.0.add(u.requests);
            entry.1 += 1;
        }
        Some(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, node: Option<&str>, phase: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "apps", "uid": uid},
            "spec": {"nodeName": node, "containers": [
                {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Mi"}}}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    fn totals(pods: &Pods) -> HashMap<String, (i64, usize)> {
        let mut t: HashMap<String, (i64, usize)> = HashMap::new();
        for u in pods.current.values() {
            let e = t.entry(u.node.to_string()).or_default();
            e.0 += u.requests.cpu_millis;
            e.1 += 1;
        }
        t
    }

    #[test]
    fn uuids_are_kept_as_numbers_and_anything_else_as_text() {
        assert_eq!(
            PodKey::of("4fc930df-f25c-4c6f-a085-972840ebed94"),
            PodKey::Uuid([0x4fc9_30df_f25c_4c6f, 0xa085_9728_40eb_ed94])
        );
        assert_eq!(std::mem::size_of::<PodKey>(), 24);
        let text = "4fc930df-f25c-4c6f-a085-972840ebed94";
        for uid in [
            text,
            "0000000a-000b-000c-000d-00000000000e",
            "not-a-uuid",
            "",
        ] {
            assert_eq!(PodKey::of(uid).to_string(), uid);
        }
        assert!(
            PodKey::of(text).is(text)
                && !PodKey::of(text).is("4FC930DF-F25C-4C6F-A085-972840EBED94")
        );
        assert!(PodKey::of("abc").is("abc") && !PodKey::of("abc").is(text));
        for other in [
            "a",
            "4fc930df-f25c-4c6f-a085-972840ebed9",
            "+fc930df-f25c-4c6f-a085-972840ebed94",
            "",
        ] {
            assert_eq!(PodKey::of(other), PodKey::Text(other.into()), "{other}");
        }
        // A pod without a UID is known by its namespace and name.
        let mut pod = pod("x", Some("n1"), "Running", "1");
        pod.metadata.uid = None;
        assert_eq!(key_of(&pod), PodKey::Text("apps/x".into()));
    }

    #[test]
    fn the_projection_follows_pods_through_a_relist() {
        let mut pods = Pods::default();
        assert!(!pods.apply(watcher::Event::Init));
        pods.apply(watcher::Event::InitApply(pod(
            "a",
            Some("n1"),
            "Running",
            "100m",
        )));
        pods.apply(watcher::Event::InitApply(pod(
            "b",
            Some("n1"),
            "Running",
            "200m",
        )));
        // Not scheduled yet, or finished: no room taken.
        pods.apply(watcher::Event::InitApply(pod("c", None, "Pending", "1")));
        pods.apply(watcher::Event::InitApply(pod(
            "d",
            Some("n2"),
            "Succeeded",
            "1",
        )));
        assert!(
            pods.current.is_empty(),
            "a relist counts only once complete"
        );
        assert!(pods.apply(watcher::Event::InitDone));
        assert_eq!(totals(&pods), HashMap::from([("n1".into(), (300, 2))]));

        // Scheduled, moved on, finished, deleted.
        pods.apply(watcher::Event::Apply(pod("c", Some("n2"), "Running", "1")));
        pods.apply(watcher::Event::Apply(pod(
            "a",
            Some("n1"),
            "Succeeded",
            "100m",
        )));
        pods.apply(watcher::Event::Delete(pod(
            "b",
            Some("n1"),
            "Running",
            "200m",
        )));
        assert_eq!(totals(&pods), HashMap::from([("n2".into(), (1000, 1))]));

        // A restarted watch replaces everything, and a node no pod runs on is forgotten.
        pods.apply(watcher::Event::Init);
        pods.apply(watcher::Event::InitApply(pod(
            "e",
            Some("n3"),
            "Running",
            "50m",
        )));
        assert_eq!(totals(&pods), HashMap::from([("n2".into(), (1000, 1))]));
        pods.apply(watcher::Event::InitDone);
        assert_eq!(totals(&pods), HashMap::from([("n3".into(), (50, 1))]));
        assert_eq!(pods.names.keys().collect::<Vec<_>>(), vec!["n3"]);
    }
}
