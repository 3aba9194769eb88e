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

/// The requests of one running pod, and the node it runs on (an index into
/// [`Pods::names`]): 16 bytes, kept for every running pod of the cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Use {
    node: u32,
    cpu_millis: u32,
    memory_bytes: u64,
}

impl Use {
    fn requests(&self) -> Resources {
        Resources {
            cpu_millis: i64::from(self.cpu_millis),
            memory_bytes: self.memory_bytes.try_into().unwrap_or(i64::MAX),
        }
    }
}

/// A pod's key: its UID (as [`Uid`] keeps it), or `namespace/name` when it has none.
type PodKey = Uid;

/// The running pods by key: those with a UUID (every pod the API server made) by its
/// number, 32 bytes an entry with its use, the others by their text.
#[derive(Default)]
struct PodMap {
    by_uuid: HashMap<[u64; 2], Use>,
    by_text: HashMap<Box<str>, Use>,
}

impl PodMap {
    fn insert(&mut self, key: PodKey, value: Use) {
        match key {
            Uid::Uuid(number) => self.by_uuid.insert(number, value),
            Uid::Text(text) => self.by_text.insert(text, value),
        };
    }

    fn remove(&mut self, key: &PodKey) {
        match key {
            Uid::Uuid(number) => self.by_uuid.remove(number),
            Uid::Text(text) => self.by_text.remove(text),
        };
    }

    fn values(&self) -> impl Iterator<Item = &Use> {
        self.by_uuid.values().chain(self.by_text.values())
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Use> {
        self.by_uuid.values_mut().chain(self.by_text.values_mut())
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_uuid.is_empty() && self.by_text.is_empty()
    }
}

#[derive(Default)]
struct Pods {
    current: PodMap,
    /// The relist under way (a watch restarted): it replaces `current` when complete.
    relist: Option<PodMap>,
    /// The names of the nodes pods run on, by the index a [`Use`] keeps.
    names: Vec<Arc<str>>,
    /// The index of each name of `names`.
    index: HashMap<Arc<str>, u32>,
}

impl Pods {
    fn node_index(&mut self, node: &str) -> u32 {
        if let Some(index) = self.index.get(node) {
            return *index;
        }
        let index = u32::try_from(self.names.len()).expect("fewer than 2^32 nodes");
        let name: Arc<str> = Arc::from(node);
        self.names.push(Arc::clone(&name));
        self.index.insert(name, index);
        index
    }

    /// Drops the names of nodes no pod runs on any more, renumbering the others.
    fn forget_unused_names(&mut self) {
        let mut used = vec![false; self.names.len()];
        for u in self.current.values() {
            used[u.node as usize] = true;
        }
        let mut renumbered = vec![0u32; self.names.len()];
        let mut names = Vec::new();
        for (old, name) in std::mem::take(&mut self.names).into_iter().enumerate() {
            if used[old] {
                renumbered[old] = names.len() as u32;
                names.push(name);
            }
        }
        for u in self.current.values_mut() {
            u.node = renumbered[u.node as usize];
        }
        self.index = names
            .iter()
            .enumerate()
            .map(|(i, name)| (Arc::clone(name), i as u32))
            .collect();
        self.names = names;
    }

    /// The projection of `pod`: `None` for a pod that takes no room (not scheduled yet, or
    /// finished).
    fn project(&mut self, pod: &Pod) -> Option<(PodKey, Use)> {
        let node = pod.spec.as_ref()?.node_name.as_deref()?;
        if snapshot::pod_finished(pod) {
            return None;
        }
        let requests = snapshot::pod_requests(pod);
        Some((
            key_of(pod),
            Use {
                node: self.node_index(node),
                cpu_millis: requests.cpu_millis.clamp(0, u32::MAX.into()) as u32,
                memory_bytes: requests.memory_bytes.max(0) as u64,
            },
        ))
    }

    fn apply(&mut self, event: watcher::Event<Pod>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(PodMap::default());
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
                self.forget_unused_names();
                true
            }
            watcher::Event::Apply(pod) => {
                let key = key_of(&pod);
                match self.project(&pod) {
                    Some((key, value)) => self.current.insert(key, value),
                    None => self.current.remove(&key),
                }
                false
            }
            watcher::Event::Delete(pod) => {
                self.current.remove(&key_of(&pod));
                false
            }
        }
    }

    /// What the pods of each node request, and how many there are, by node name.
    fn by_node(&self) -> HashMap<String, (Resources, i64)> {
        let mut used = vec![(Resources::default(), 0i64); self.names.len()];
        for u in self.current.values() {
            let entry = &mut used[u.node as usize];
            entry.0.add(u.requests());
            entry.1 += 1;
        }
        used.into_iter()
            .zip(&self.names)
            .filter(|((_, count), _)| *count > 0)
            .map(|(used, name)| (name.to_string(), used))
            .collect()
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
        Some(self.pods.lock().expect("pod usage lock").by_node())
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
        pods.by_node()
            .into_iter()
            .map(|(node, (requests, count))| (node, (requests.cpu_millis, count as usize)))
            .collect()
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

    /// A pod without a UID is kept by its text, and a use takes 16 bytes.
    #[test]
    fn pods_without_a_uuid_count_too() {
        assert_eq!(std::mem::size_of::<Use>(), 16);
        let mut pods = Pods::default();
        pods.apply(watcher::Event::Init);
        pods.apply(watcher::Event::InitDone);
        let mut odd = pod("odd", Some("n1"), "Running", "250m");
        odd.metadata.uid = None;
        pods.apply(watcher::Event::Apply(odd.clone()));
        pods.apply(watcher::Event::Apply(pod(
            "4fc930df-f25c-4c6f-a085-972840ebed94",
            Some("n1"),
            "Running",
            "1",
        )));
        assert_eq!(totals(&pods), HashMap::from([("n1".into(), (1250, 2))]));
        let (_, (requests, _)) = pods.by_node().into_iter().next().unwrap();
        assert_eq!(requests.memory_bytes, 2 << 20);
        pods.apply(watcher::Event::Delete(odd));
        assert_eq!(totals(&pods), HashMap::from([("n1".into(), (1000, 1))]));
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
        assert_eq!(pods.names, vec![Arc::<str>::from("n3")]);
        assert_eq!(pods.index, HashMap::from([(Arc::<str>::from("n3"), 0)]));
    }
}
