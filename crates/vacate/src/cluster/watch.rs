//! Watch caches: cluster-wide reflectors for nodes, VMIs, migrations and the KubeVirt CR,
//! and per-node pod reflectors that exist only while a node is being drained, so memory
//! does not grow with the number of pods in the cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kubevirt_api::{KubeVirt, VirtualMachineInstance, VirtualMachineInstanceMigration};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::snapshot::MIGRATION_NODE_ANNOTATION;
use crate::error::{Error, Result};

/// What needs another look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// One node, by name.
    Node(String),
    /// Every node in a drain: a cluster-wide limit changed or a migration slot came free.
    Draining,
}

/// Sends the wake-ups of the reconciler.
pub type Trigger = UnboundedSender<Wake>;

/// Wakes each named node.
fn wake_nodes(names: impl IntoIterator<Item = String>) -> Vec<Wake> {
    names.into_iter().map(Wake::Node).collect()
}

#[derive(Clone)]
pub struct Stores {
    pub nodes: Store<Node>,
    pub vmis: Store<VirtualMachineInstance>,
    pub migrations: Store<VirtualMachineInstanceMigration>,
    pub kubevirt: Store<KubeVirt>,
}

impl Stores {
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<()> {
        let all = async {
            let _ = self.nodes.wait_until_ready().await;
            let _ = self.vmis.wait_until_ready().await;
            let _ = self.migrations.wait_until_ready().await;
            let _ = self.kubevirt.wait_until_ready().await;
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
pub fn start(client: &Client, filter: &NodeFilter, trigger: Trigger) -> (Stores, Tasks) {
    let mut tasks = Tasks::default();

    let mut node_config = watcher::Config::default();
    if let Some(name) = &filter.name {
        node_config = node_config.fields(&format!("metadata.name={name}"));
    }
    if let Some(selector) = &filter.label_selector {
        node_config = node_config.labels(selector);
    }
    let (nodes, task) = reflect(
        Api::<Node>::all(client.clone()),
        node_config,
        trigger.clone(),
        |node: &Node, _| wake_nodes([node.name_any()]),
        "nodes",
    );
    tasks.push(task);

    let (vmis, task) = reflect(
        Api::<VirtualMachineInstance>::all(client.clone()),
        watcher::Config::default(),
        trigger.clone(),
        |vmi: &VirtualMachineInstance, _| {
            let mut names: Vec<String> = vmi.node_name().map(String::from).into_iter().collect();
            if let Some(state) = vmi.migration_state() {
                names.extend(state.source_node.clone());
                names.extend(state.target_node.clone());
            }
            wake_nodes(names)
        },
        "virtualmachineinstances",
    );
    tasks.push(task);

    let vmi_store = vmis.clone();
    let (migrations, task) = reflect(
        Api::<VirtualMachineInstanceMigration>::all(client.clone()),
        watcher::Config::default(),
        trigger.clone(),
        move |m: &VirtualMachineInstanceMigration, deleted| {
            let mut names: Vec<String> = m
                .annotations()
                .get(MIGRATION_NODE_ANNOTATION)
                .cloned()
                .into_iter()
                .collect();
            names.extend(m.source_node().map(String::from));
            let vmi = ObjectRef::new(&m.spec.vmi_name).within(&m.namespace().unwrap_or_default());
            names.extend(
                vmi_store
                    .get(&vmi)
                    .and_then(|v| v.node_name().map(String::from)),
            );
            let mut wakes = wake_nodes(names);
            // A migration that ended or went away frees a cluster-wide slot: every drain
            // waiting for one may go on.
            if deleted || m.is_final() || m.metadata.deletion_timestamp.is_some() {
                wakes.push(Wake::Draining);
            }
            wakes
        },
        "virtualmachineinstancemigrations",
    );
    tasks.push(task);

    let (kubevirt, task) = reflect(
        Api::<KubeVirt>::all(client.clone()),
        watcher::Config::default(),
        trigger,
        // The limits of the KubeVirt CR bound every drain's migrations.
        |_: &KubeVirt, _| vec![Wake::Draining],
        "kubevirts",
    );
    tasks.push(task);

    (
        Stores {
            nodes,
            vmis,
            migrations,
            kubevirt,
        },
        tasks,
    )
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: Trigger,
    wakes_of: impl Fn(&K, bool) -> Vec<Wake> + Send + 'static,
    what: &'static str,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let (object, deleted) = match item {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
                Err(error) => {
                    tracing::warn!(%error, "watching {what} failed; retrying with backoff");
                    continue;
                }
            };
            for wake in wakes_of(&object, deleted) {
                let _ = trigger.send(wake);
            }
        }
    });
    (reader, task)
}

struct PodWatch {
    store: Store<Pod>,
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
    /// The pods of `node`, starting a watch if there is none yet.
    pub async fn pods(&self, client: &Client, node: &str, trigger: &Trigger) -> Result<Vec<Pod>> {
        let store = {
            let mut watches = self.watches.lock().expect("pod watch map lock");
            match watches.get(node) {
                Some(w) => w.store.clone(),
                None => {
                    let name = node.to_string();
                    let (store, task) = reflect(
                        Api::<Pod>::all(client.clone()),
                        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
                        trigger.clone(),
                        move |_: &Pod, _| vec![Wake::Node(name.clone())],
                        "pods",
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
            }
        };
        let timeout = Duration::from_secs(30);
        tokio::time::timeout(timeout, store.wait_until_ready())
            .await
            .map_err(|_| Error::CacheTimeout(timeout))?
            .map_err(|_| Error::CacheTimeout(timeout))?;
        Ok(store.state().iter().map(|p| (**p).clone()).collect())
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

    use super::Tasks;

    /// Sets its flag when the task holding it ends, however it ends.
    struct Ended(Arc<AtomicBool>);

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
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
