//! Watch caches: cluster-wide reflectors for nodes, VMIs, migrations and the KubeVirt CR,
//! and per-node pod reflectors that exist only while a node is being drained, so memory
//! does not grow with the number of pods in the cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kubevirt_api::{KubeVirt, VirtualMachineInstance, VirtualMachineInstanceMigration};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::cached::{CachedNode, CachedVmi};
use super::lean::{DrainPod, LeanNode, LeanVmi};
use super::restarts::RestartingVms;
use super::snapshot::MIGRATION_NODE_ANNOTATION;
use super::usage::PodUsage;
use crate::error::{Error, Result};

/// What needs another look.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Wake {
    /// One node, by name.
    Node(String),
    /// Every node in a drain: a cluster-wide limit changed or a migration slot came free.
    Draining,
}

/// Sends the wake-ups of the reconciler.
pub type Trigger = UnboundedSender<Wake>;

/// Objects a page of the first list (and of any relist) of a cluster-wide watch. The page is
/// read whole before it is decoded: at 500 a page (kube-runtime's default) a page of nodes as
/// the API server sends them (managed fields, 50 images) is about 15 MB of JSON, and the
/// lists of nodes, pods, VMIs and VirtualMachines run at once at start-up. At 100, vacate's
/// start-up peak on a 1,000-node testbed fell from 50-58 MB to 37-43 MB, for a few more list
/// requests at start (docs/benchmarks.md, "List page size").
pub(super) const LIST_PAGE_SIZE: u32 = 100;

/// The watch configuration of a cluster-wide cache.
pub(super) fn fleet_watch() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// Wakes each named node.
fn wake_nodes(names: impl IntoIterator<Item = String>) -> Vec<Wake> {
    names.into_iter().map(Wake::Node).collect()
}

#[derive(Clone)]
pub struct Stores {
    pub nodes: Store<CachedNode>,
    /// The VirtualMachines that start their VMI again once it stops.
    pub vms: RestartingVms,
    pub vmis: Store<CachedVmi>,
    pub migrations: Store<VirtualMachineInstanceMigration>,
    pub kubevirt: Store<KubeVirt>,
    /// What the pods of each node request.
    pub pod_usage: PodUsage,
}

impl Stores {
    /// The caches not filled yet, by resource.
    pub fn not_ready(&self) -> Vec<&'static str> {
        use futures::FutureExt;
        let filled = [
            (
                "nodes",
                self.nodes.wait_until_ready().now_or_never().is_some(),
            ),
            ("virtualmachines", self.vms.is_ready()),
            (
                "virtualmachineinstances",
                self.vmis.wait_until_ready().now_or_never().is_some(),
            ),
            (
                "virtualmachineinstancemigrations",
                self.migrations.wait_until_ready().now_or_never().is_some(),
            ),
            (
                "kubevirts",
                self.kubevirt.wait_until_ready().now_or_never().is_some(),
            ),
            ("pods", !self.pod_usage.is_on() || self.pod_usage.is_ready()),
        ];
        filled
            .into_iter()
            .filter(|(_, filled)| !filled)
            .map(|(name, _)| name)
            .collect()
    }

    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<()> {
        let all = async {
            let _ = self.nodes.wait_until_ready().await;
            self.vms.wait_until_ready().await;
            let _ = self.vmis.wait_until_ready().await;
            let _ = self.migrations.wait_until_ready().await;
            let _ = self.kubevirt.wait_until_ready().await;
            if self.pod_usage.is_on() {
                self.pod_usage.wait_until_ready().await;
            }
        };
        tokio::time::timeout(timeout, all)
            .await
            .map_err(|_| Error::CacheTimeout(timeout))
    }
}

/// Which nodes to watch: all, one by name, or those matching a label selector.
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    pub name: Option<String>,
    pub label_selector: Option<String>,
    /// Leave out the cluster-wide pod watch of the start gate's capacity check (for a
    /// command that asks no start gate: one pod list less).
    pub without_pod_usage: bool,
}

/// Which nodes the node cache holds.
#[derive(Debug, Clone, Copy)]
pub struct NodeCache {
    /// Every node vacate handles (the daemon; `vacate drain` watches one node only).
    pub has_fleet: bool,
    /// Every node of the cluster.
    pub has_cluster: bool,
}

impl NodeFilter {
    pub fn cache(&self) -> NodeCache {
        NodeCache {
            has_fleet: self.name.is_none(),
            has_cluster: self.name.is_none() && self.label_selector.is_none(),
        }
    }
}

/// Background tasks that end when their owner goes: a shell dropped after its leadership
/// was lost leaves no watch running behind it.
#[derive(Default)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    pub fn push(&mut self, task: JoinHandle<()>) {
        self.0.push(task);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the cluster-wide reflectors; every change is turned into node triggers.
/// `state_annotation` is the one annotation of a node vacate reads.
pub fn start(
    client: &Client,
    filter: &NodeFilter,
    state_annotation: &str,
    trigger: Trigger,
) -> (Stores, Tasks) {
    let mut tasks = Tasks::default();

    let mut node_config = fleet_watch();
    if let Some(name) = &filter.name {
        node_config = node_config.fields(&format!("metadata.name={name}"));
    }
    if let Some(selector) = &filter.label_selector {
        node_config = node_config.labels(selector);
    }
    let state_annotation = state_annotation.to_string();
    let (nodes, task) = reflect_as(
        Api::<LeanNode>::all(client.clone()),
        node_config,
        trigger.clone(),
        |before: Option<&CachedNode>, node: &CachedNode, deleted| {
            if !deleted && before.is_some_and(|b| b.same_but_version(node)) {
                return Vec::new();
            }
            wake_nodes([node.name_any()])
        },
        "nodes",
        move |node: LeanNode| CachedNode::of(node.into(), &state_annotation),
    );
    tasks.push(task);

    // Only whether a VirtualMachine starts its VMI again (its run strategy) is read.
    let (vms, task) = RestartingVms::start(client);
    tasks.push(task);

    let (vmis, task) = reflect_as(
        Api::<LeanVmi>::all(client.clone()),
        fleet_watch(),
        trigger.clone(),
        |before: Option<&CachedVmi>, vmi: &CachedVmi, deleted| vmi_wakes(before, vmi, deleted),
        "virtualmachineinstances",
        |vmi: LeanVmi| CachedVmi::from(VirtualMachineInstance::from(vmi)),
    );
    tasks.push(task);

    let vmi_store = vmis.clone();
    let (migrations, task) = reflect_stripped(
        Api::<VirtualMachineInstanceMigration>::all(client.clone()),
        fleet_watch(),
        trigger.clone(),
        move |_: Option<&VirtualMachineInstanceMigration>,
              m: &VirtualMachineInstanceMigration,
              deleted| {
            let vmi = ObjectRef::new(&m.spec.vmi_name).within(&m.namespace().unwrap_or_default());
            let vmi_node = vmi_store.get(&vmi).and_then(|v| v.node.clone());
            migration_wakes(m, deleted, vmi_node)
        },
        "virtualmachineinstancemigrations",
        strip_managed_fields,
    );
    tasks.push(task);

    let (kubevirt, task) = reflect(
        Api::<KubeVirt>::all(client.clone()),
        fleet_watch(),
        trigger,
        // The limits of the KubeVirt CR bound every drain's migrations.
        |_: Option<&KubeVirt>, _: &KubeVirt, _| vec![Wake::Draining],
        "kubevirts",
    );
    tasks.push(task);

    let pod_usage = if filter.without_pod_usage {
        PodUsage::off()
    } else {
        let (pod_usage, task) = PodUsage::start(client);
        tasks.push(task);
        pod_usage
    };

    (
        Stores {
            nodes,
            vms,
            vmis,
            migrations,
            kubevirt,
            pod_usage,
        },
        tasks,
    )
}

/// Who a VMI's change concerns: the node it runs on and the ends of its migration, now and
/// before the change (a VMI that moved concerns the node it left); nobody when nothing
/// vacate keeps of it changed.
fn vmi_wakes(before: Option<&CachedVmi>, vmi: &CachedVmi, deleted: bool) -> Vec<Wake> {
    if !deleted && before == Some(vmi) {
        return Vec::new();
    }
    let mut names: Vec<String> = Vec::new();
    for v in before.into_iter().chain([vmi]) {
        names.extend(v.node.iter().cloned());
        if let Some(ends) = v.migration_nodes.as_deref() {
            names.extend(ends.iter().flatten().cloned());
        }
    }
    names.sort();
    names.dedup();
    wake_nodes(names)
}

/// Who a migration's change concerns: the node it drains (vacate's annotation), its source,
/// and the node its VMI runs on; and, when it ended or went away, every drain waiting for
/// the cluster-wide slot it held.
fn migration_wakes(
    m: &VirtualMachineInstanceMigration,
    deleted: bool,
    vmi_node: Option<String>,
) -> Vec<Wake> {
    let mut names: Vec<String> = m
        .annotations()
        .get(MIGRATION_NODE_ANNOTATION)
        .cloned()
        .into_iter()
        .collect();
    names.extend(m.source_node().map(String::from));
    names.extend(vmi_node);
    names.sort();
    names.dedup();
    let mut wakes = wake_nodes(names);
    if deleted || m.is_final() || m.metadata.deletion_timestamp.is_some() {
        wakes.push(Wake::Draining);
    }
    wakes
}

/// Drops what no cache of vacate's reads: the managed fields of every object.
fn strip_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: Trigger,
    wakes_of: impl Fn(Option<&K>, &K, bool) -> Vec<Wake> + Send + 'static,
    what: &'static str,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflect_stripped(api, config, trigger, wakes_of, what, strip_managed_fields)
}

/// As [`reflect`], keeping of each object only what `strip` leaves.
fn reflect_stripped<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: Trigger,
    wakes_of: impl Fn(Option<&K>, &K, bool) -> Vec<Wake> + Send + 'static,
    what: &'static str,
    strip: fn(&mut K),
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflect_as(
        api,
        config,
        trigger,
        wakes_of,
        what,
        move |mut object: K| {
            strip(&mut object);
            object
        },
    )
}

/// As [`reflect`], keeping of each object only its projection `project`. `wakes_of` sees
/// what the cache held of the object before the event (`None` for an object new to it), so
/// that a change in nothing the projection keeps (a kubelet's or kwok's status heartbeat
/// rewrites a node every few minutes) wakes nobody.
fn reflect_as<K, S>(
    api: Api<K>,
    config: watcher::Config,
    trigger: Trigger,
    wakes_of: impl Fn(Option<&S>, &S, bool) -> Vec<Wake> + Send + 'static,
    what: &'static str,
    project: impl Fn(K) -> S + Send + 'static,
) -> (Store<S>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    S: reflector::Lookup + Clone + Send + Sync + 'static,
    S::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let mut reflection = Reflection::new(writer, wakes_of);
    let stream = watcher(api, config)
        .default_backoff()
        .map(move |item| item.map(|event| map_event(event, &project)));
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(%error, "watching {what} failed; retrying with backoff");
                    continue;
                }
            };
            for wake in reflection.apply(event) {
                let _ = trigger.send(wake);
            }
        }
    });
    (reader, task)
}

/// A watch's cache and whom its events wake.
///
/// During a list (the first one, or a relist after the watch was down) kube-runtime keeps
/// showing the cache as it was and swaps the listed objects in at the list's end. The wakes
/// of a list are held until then, so that the reconciliations they start read the listed
/// objects; and an object the list no longer has (deleted while the watch was down, so no
/// delete event ever came) wakes as deleted.
struct Reflection<S, W>
where
    S: reflector::Lookup + Clone + 'static,
    S::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer: reflector::store::Writer<S>,
    store: Store<S>,
    wakes_of: W,
    /// The wakes of the list under way, if one is.
    listing: Option<HashSet<Wake>>,
}

impl<S, W> Reflection<S, W>
where
    S: reflector::Lookup + Clone + 'static,
    S::DynamicType: Default + Eq + std::hash::Hash + Clone,
    W: Fn(Option<&S>, &S, bool) -> Vec<Wake>,
{
    fn new(writer: reflector::store::Writer<S>, wakes_of: W) -> Self {
        let store = writer.as_reader();
        Reflection {
            writer,
            store,
            wakes_of,
            listing: None,
        }
    }

    /// Applies `event` to the cache; the wakes it makes due now.
    fn apply(&mut self, event: watcher::Event<S>) -> Vec<Wake> {
        let key = |o: &S| reflector::Lookup::to_object_ref(o, Default::default());
        let (object, deleted, listed) = match &event {
            watcher::Event::Apply(o) => (o, false, false),
            watcher::Event::InitApply(o) => (o, false, true),
            watcher::Event::Delete(o) => (o, true, false),
            watcher::Event::Init => {
                self.writer.apply_watcher_event(&event);
                self.listing = Some(HashSet::new());
                return Vec::new();
            }
            watcher::Event::InitDone => {
                let before = self.store.state();
                self.writer.apply_watcher_event(&event);
                let mut wakes = self.listing.take().unwrap_or_default();
                for gone in before.iter().map(|o| &**o) {
                    if self.store.get(&key(gone)).is_none() {
                        wakes.extend((self.wakes_of)(Some(gone), gone, true));
                    }
                }
                return wakes.into_iter().collect();
            }
        };
        // What the cache shows until the event is applied: during a list, the objects of
        // the list before it.
        let previous = self.store.get(&key(object));
        self.writer.apply_watcher_event(&event);
        let wakes = (self.wakes_of)(previous.as_deref(), object, deleted);
        match &mut self.listing {
            Some(held) if listed => {
                held.extend(wakes);
                Vec::new()
            }
            _ => wakes,
        }
    }
}

/// `event` with its object turned into `f` of it.
pub(super) fn map_event<K, S>(event: watcher::Event<K>, f: impl Fn(K) -> S) -> watcher::Event<S> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

struct PodWatch {
    /// Kept as decoded (a few kB a pod; as a `Pod`, three times that) and turned into
    /// `Pod`s when read.
    store: Store<DrainPod>,
    task: JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pod caches for the nodes being drained, one field-selected watch per node.
#[derive(Default)]
pub struct PodWatches {
    watches: Mutex<HashMap<String, PodWatch>>,
}

impl PodWatches {
    /// Starts the pod watch of `node` if there is none yet, without waiting for it to fill:
    /// done when a node's request is seen, before the node's turn in the (serial)
    /// reconciliation, so that many nodes requested at once fill their caches in parallel.
    pub fn ensure(&self, client: &Client, node: &str, trigger: &Trigger) -> Store<DrainPod> {
        let mut watches = self.watches.lock().expect("pod watch map lock");
        if let Some(w) = watches.get(node) {
            return w.store.clone();
        }
        let name = node.to_string();
        // Decoded as a `DrainPod`: only the fields the drain and the start gate read.
        let (store, task) = reflect_as(
            Api::<DrainPod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            trigger.clone(),
            move |_: Option<&DrainPod>, _: &DrainPod, _| vec![Wake::Node(name.clone())],
            "pods",
            |pod: DrainPod| pod,
        );
        watches.insert(
            node.to_string(),
            PodWatch {
                store: store.clone(),
                task,
            },
        );
        store
    }

    /// Whether `node` has a pod watch.
    pub fn watching(&self, node: &str) -> bool {
        self.watches
            .lock()
            .expect("pod watch map lock")
            .contains_key(node)
    }

    /// The pods of `node`, starting a watch if there is none yet.
    pub async fn pods(&self, client: &Client, node: &str, trigger: &Trigger) -> Result<Vec<Pod>> {
        let store = self.ensure(client, node, trigger);
        let timeout = Duration::from_secs(30);
        tokio::time::timeout(timeout, store.wait_until_ready())
            .await
            .map_err(|_| Error::CacheTimeout(timeout))?
            .map_err(|_| Error::CacheTimeout(timeout))?;
        Ok(store
            .state()
            .iter()
            .map(|p| Pod::from((**p).clone()))
            .collect())
    }

    /// Stops the pod watch of a node that no longer needs one.
    pub fn stop(&self, node: &str) {
        // Dropping the watch ends its task.
        self.watches
            .lock()
            .expect("pod watch map lock")
            .remove(node);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{
        Reflection, Tasks, VirtualMachineInstanceMigration, Wake, migration_wakes, vmi_wakes,
    };
    use crate::cluster::cached::{CachedVmi, tests::vmi};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{reflector, watcher};

    /// An object named `name` holding `value`.
    fn object(name: &str, value: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "vms"},
            "data": {"v": value},
        }))
        .unwrap()
    }

    /// A list's wakes come once the listed objects are in the cache, and an object the list
    /// no longer has wakes as deleted; a change outside a list wakes at once.
    #[test]
    fn a_list_wakes_once_the_cache_holds_it() {
        let (store, writer) = reflector::store::<ConfigMap>();
        let mut reflection = Reflection::new(writer, |before: Option<&ConfigMap>, now, deleted| {
            if !deleted && before == Some(now) {
                return Vec::new();
            }
            let name = now.metadata.name.clone().unwrap();
            vec![Wake::Node(if deleted {
                format!("{name} deleted")
            } else {
                name
            })]
        });
        let mut wakes = |event| {
            let mut wakes = reflection.apply(event);
            wakes.sort_by_key(|w| format!("{w:?}"));
            wakes
        };
        let node = |n: &str| Wake::Node(n.to_string());
        let value = |name: &str| {
            let cm = store.get(&reflector::ObjectRef::new(name).within("vms"));
            cm.and_then(|c| c.data.as_ref()?.get("v").cloned())
        };

        // The first list: nothing until its end, then everyone in it.
        assert!(wakes(watcher::Event::Init).is_empty());
        assert!(wakes(watcher::Event::InitApply(object("a", "1"))).is_empty());
        assert!(wakes(watcher::Event::InitApply(object("b", "1"))).is_empty());
        assert!(wakes(watcher::Event::InitApply(object("c", "1"))).is_empty());
        assert_eq!(value("a"), None, "kube-runtime swaps a list in at its end");
        assert_eq!(
            wakes(watcher::Event::InitDone),
            vec![node("a"), node("b"), node("c")]
        );
        assert_eq!(value("a").as_deref(), Some("1"));

        // Watching: a change wakes at once, an unchanged object nobody.
        assert_eq!(
            wakes(watcher::Event::Apply(object("a", "2"))),
            vec![node("a")]
        );
        assert!(wakes(watcher::Event::Apply(object("a", "2"))).is_empty());

        // A relist after the watch was down: `a` changed, `b` did not, `c` was deleted and
        // `d` created meanwhile. The changed and the new wake once the cache holds them.
        assert!(wakes(watcher::Event::Init).is_empty());
        assert!(wakes(watcher::Event::InitApply(object("a", "3"))).is_empty());
        assert!(wakes(watcher::Event::InitApply(object("b", "1"))).is_empty());
        assert!(wakes(watcher::Event::InitApply(object("d", "1"))).is_empty());
        assert_eq!(value("a").as_deref(), Some("2"));
        assert_eq!(
            wakes(watcher::Event::InitDone),
            vec![node("a"), node("c deleted"), node("d")]
        );
        assert_eq!(value("a").as_deref(), Some("3"));
        assert_eq!(value("c"), None);
        assert_eq!(
            wakes(watcher::Event::Delete(object("d", "1"))),
            vec![node("d deleted")]
        );
    }

    /// Sets its flag when the task holding it ends, however it ends.
    struct Ended(Arc<AtomicBool>);

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn migration(phase: Option<&str>) -> VirtualMachineInstanceMigration {
        let mut m: VirtualMachineInstanceMigration = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "m", "namespace": "vms",
                         "annotations": {"vacate.io/node": "worker-1"}},
            "spec": {"vmiName": "vm-0"}
        }))
        .unwrap();
        if let Some(phase) = phase {
            m.status = serde_json::from_value(serde_json::json!({"phase": phase})).unwrap();
        }
        m
    }

    #[test]
    fn a_migration_that_ends_or_goes_wakes_every_draining_node() {
        let node = |n: &str| Wake::Node(n.to_string());
        let running = migration_wakes(&migration(Some("Running")), false, Some("worker-1".into()));
        assert_eq!(running, vec![node("worker-1")]);
        for (m, deleted) in [
            (migration(Some("Succeeded")), false),
            (migration(Some("Failed")), false),
            (migration(Some("Running")), true),
        ] {
            let wakes = migration_wakes(&m, deleted, Some("worker-2".into()));
            assert!(wakes.contains(&Wake::Draining), "{wakes:?}");
            assert!(wakes.contains(&node("worker-1")) && wakes.contains(&node("worker-2")));
        }
    }

    /// A VMI wakes the nodes it concerns before and after a change, and nobody when
    /// nothing vacate keeps of it changed.
    #[test]
    fn a_vmi_wakes_the_nodes_it_left_and_reached() {
        let node = |n: &str| Wake::Node(n.to_string());
        let before = CachedVmi::from(vmi());
        assert_eq!(
            vmi_wakes(None, &before, false),
            vec![node("worker-0"), node("worker-1")]
        );
        assert!(vmi_wakes(Some(&before), &before.clone(), false).is_empty());
        assert_eq!(
            vmi_wakes(Some(&before), &before.clone(), true),
            vec![node("worker-0"), node("worker-1")]
        );
        let mut moved = before.clone();
        moved.node = Some("worker-2".into());
        moved.migration_nodes = None;
        assert_eq!(
            vmi_wakes(Some(&before), &moved, false),
            vec![node("worker-0"), node("worker-1"), node("worker-2")]
        );
    }

    #[tokio::test]
    async fn dropped_tasks_end() {
        let ended = Arc::new(AtomicBool::new(false));
        let guard = Ended(ended.clone());
        let mut tasks = Tasks::default();
        tasks.push(tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }));
        tokio::task::yield_now().await;
        assert!(!ended.load(Ordering::SeqCst));
        drop(tasks);
        for _ in 0..100 {
            if ended.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("a dropped task kept running");
    }
}
