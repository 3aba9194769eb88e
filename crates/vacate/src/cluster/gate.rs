//! The start gate: whether a node whose drain is requested may start now. The rules are in
//! the planner ([`planner::fleet`], [`planner::capacity`]); this gathers what they need
//! from the watch caches, the API server and Prometheus. Cheap checks go first, so a busy
//! fleet costs no Prometheus query and no pod list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;

use super::cached::{CachedNode, CachedVmi};
use super::{Context, snapshot};
use crate::error::{Error, Result};
use crate::planner::capacity::{self, Resources, Target, Workload};
use crate::planner::{self, BlockReason, FleetNode, Gate, StartGate};

/// A node as the fleet limits see it. Of its labels it keeps the request label and those
/// the pools' selectors read, all the limits look at: the fleet is copied at every start
/// gate, and the other labels would be most of the copy.
/// It reads the node's fields directly, not through [`snapshot::node_view`], which copies
/// every label: the fleet is built from every node of the cache.
pub fn fleet_node(node: &CachedNode, config: &crate::config::Config) -> FleetNode {
    let request_label = &config.node.request_label;
    let labels = node
        .labels()
        .iter()
        .filter(|(key, _)| {
            *key == request_label || config.fleet.pools.iter().any(|p| p.selector.reads(key))
        })
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    FleetNode::from_state(
        node.name_any(),
        labels,
        node.ready,
        node.unschedulable,
        &node.state,
        &config.node.request_label,
    )
}

impl Context {
    /// The fleet's nodes as the watch cache shows them: every node vacate handles (for
    /// metrics; `vacate drain` watches one node only).
    pub fn fleet_nodes(&self) -> Vec<FleetNode> {
        let config = &self.config;
        // Guest memory by node: the rollout takes its lightest nodes first.
        let vmis = self.stores.vmis.state();
        let mut memory: HashMap<&str, u64> = HashMap::new();
        for vmi in &vmis {
            if let Some(node) = vmi.node_name() {
                *memory.entry(node).or_default() += vmi.memory.unwrap_or(0);
            }
        }
        self.stores
            .nodes
            .state()
            .iter()
            .filter(|n| config.node.selector.matches(n.labels()))
            .map(|n| {
                let name = n.metadata.name.as_deref().unwrap_or_default();
                let vm_memory = memory.get(name).copied().unwrap_or(0);
                fleet_node(n, config).with_vm_memory(vm_memory)
            })
            .collect()
    }

    /// Whether a drain of `node` may start now: fleet limits, blockers, capacity.
    pub(super) async fn start_gate(self: &Arc<Self>, node: &CachedNode) -> Result<StartGate> {
        Ok(match self.check_start(node).await? {
            Ok(()) => StartGate::Open,
            Err(gate) => StartGate::Closed(gate),
        })
    }

    async fn check_start(
        self: &Arc<Self>,
        node: &CachedNode,
    ) -> Result<std::result::Result<(), Gate>> {
        let name = node.name_any();
        let config = &self.config;
        // The fleet limits look at the nodes vacate handles. The daemon's watch cache holds
        // them all and includes the drain it started a moment ago (every reconciliation
        // waits until the cache shows its own writes); `vacate drain`, which watches one
        // node, lists them from the API server.
        let fleet: Vec<FleetNode> = if self.node_cache.has_fleet {
            self.fleet_nodes()
        } else {
            self.list_nodes(ListParams::default())
                .await?
                .iter()
                .filter(|n| config.node.selector.matches(n.labels()))
                .map(|n| fleet_node(n, config))
                .collect()
        };
        let last_start = *self.last_start.lock().expect("last start lock");
        if let Err(gate) = planner::fleet::check(config, &name, &fleet, last_start, Utc::now()) {
            return Ok(Err(gate));
        }
        if let Err(gate) = self.blocking_pods(&name).await? {
            return Ok(Err(gate));
        }
        if let Some(prometheus) = &self.prometheus {
            match prometheus.check().await {
                Ok(None) => {}
                Ok(Some(summary)) => {
                    return Ok(Err(self.ask_again(Gate::new(
                        BlockReason::PrometheusAlert,
                        format!(
                            "the Prometheus query of blockers.prometheus_query returns {summary}"
                        ),
                    ))));
                }
                Err(message) => {
                    return Ok(Err(self.ask_again(Gate::new(
                        BlockReason::PrometheusUnavailable,
                        format!("cannot ask Prometheus whether drains may start: {message}"),
                    ))));
                }
            }
        }
        if self.config.fleet.capacity_check {
            // Every node of the cluster, not only those vacate handles: VMs and pods may go
            // anywhere.
            let all_nodes = self.all_nodes().await?;
            return self.capacity(&name, all_nodes.iter().map(|n| &**n)).await;
        }
        Ok(Ok(()))
    }

    /// Every node of the cluster: from the watch cache when it holds them all (shared with
    /// it, not copied: the gate and the steering read every node of the fleet), else listed.
    pub(super) async fn all_nodes(&self) -> Result<Vec<Arc<CachedNode>>> {
        if self.node_cache.has_cluster {
            return Ok(self.stores.nodes.state());
        }
        Ok(self
            .list_nodes(ListParams::default().match_any())
            .await?
            .into_iter()
            .map(Arc::new)
            .collect())
    }

    async fn list_nodes(&self, params: ListParams) -> Result<Vec<CachedNode>> {
        let state_annotation = &self.config.node.state_annotation;
        CachedNode::list(&self.client, &params, state_annotation)
            .await
            .map_err(Error::kube("listing nodes for the start gate"))
    }

    /// Prometheus is asked again once its answer may have changed.
    fn ask_again(&self, mut gate: Gate) -> Gate {
        let every = self
            .config
            .blockers
            .prometheus_interval
            .get()
            .max(std::time::Duration::from_secs(1));
        gate.retry_at = Some(Utc::now() + chrono::Duration::from_std(every).unwrap_or_default());
        gate
    }

    /// Pods matching `blockers.pods` on the node (as kured's blocking pod selector).
    async fn blocking_pods(&self, node: &str) -> Result<std::result::Result<(), Gate>> {
        let selector = &self.config.blockers.pods;
        if selector.is_empty() {
            return Ok(Ok(()));
        }
        let pods = self.pods.pods(&self.client, node, &self.trigger).await?;
        let blocking: Vec<String> = pods
            .iter()
            .filter(|p| !snapshot::pod_view(p).finished && selector.matches(p.labels()))
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        if blocking.is_empty() {
            return Ok(Ok(()));
        }
        Ok(Err(Gate::new(
            BlockReason::BlockingPods,
            format!(
                "{} pod(s) matching blockers.pods ({selector}) run on the node: {}",
                blocking.len(),
                blocking
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )))
    }

    /// Whether the node's VMs and pods fit on the schedulable nodes that remain: the node's
    /// own pods from its pod watch, the room of the others from the pod usage watch.
    async fn capacity<'a>(
        &self,
        name: &str,
        all_nodes: impl IntoIterator<Item = &'a CachedNode>,
    ) -> Result<std::result::Result<(), Gate>> {
        let Some(used) = self.stores.pod_usage.by_node() else {
            return Ok(Err(Gate::new(
                BlockReason::InsufficientCapacity,
                "the pods of the cluster are still being read for the capacity check",
            )
            .recheck_after(Utc::now() + chrono::Duration::seconds(1))));
        };
        let pods = self.pods.pods(&self.client, name, &self.trigger).await?;
        // The selectors of the VMIs whose launcher pods are on the node, not of the fleet's.
        let vmis: Vec<Arc<CachedVmi>> = pods
            .iter()
            .filter_map(snapshot::launcher_vmi)
            .filter_map(|key| {
                let (namespace, vmi) = key.split_once('/')?;
                self.stores.vmis.get(&ObjectRef::new(vmi).within(namespace))
            })
            .collect();
        let launchers = snapshot::launcher_selectors(vmis.iter().map(|v| &**v));
        let mut workloads = movers(&pods, &launchers).remove(name).unwrap_or_default();
        for w in &mut workloads {
            w.name = format!("pod {}", w.name);
        }
        let targets: Vec<Target> = rooms(&used, all_nodes)
            .into_iter()
            .filter(|t| t.name != name)
            .collect();
        Ok(capacity::check(&workloads, &targets).map_err(|message| {
            Gate::new(BlockReason::InsufficientCapacity, message).recheck_after(Utc::now())
        }))
    }
}

/// From every unfinished pod and node: the pods that would move in a drain, by node
/// (named `namespace/name`), and every schedulable Ready node with the room it has left. A
/// virt-launcher pod's node selector is its VMI's next one (`launchers`, by the VMI's
/// `namespace/name`: [`snapshot::launcher_selectors`]), not the pod's own.
pub fn room_and_movers<'a>(
    pods: &[Pod],
    nodes: impl IntoIterator<Item = &'a CachedNode>,
    launchers: &BTreeMap<String, BTreeMap<String, String>>,
) -> (HashMap<String, Vec<Workload>>, Vec<Target>) {
    (movers(pods, launchers), rooms(&used_by_node(pods), nodes))
}

/// What the pods request on each node, and how many there are.
pub fn used_by_node(pods: &[Pod]) -> HashMap<String, (Resources, i64)> {
    let mut used: HashMap<String, (Resources, i64)> = HashMap::new();
    for pod in pods {
        let Some(on) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let entry = used.entry(on).or_default();
        entry.0.add(snapshot::pod_requests(pod));
        entry.1 += 1;
    }
    used
}

/// The pods that would move in a drain, by node (see [`room_and_movers`]).
pub fn movers(
    pods: &[Pod],
    launchers: &BTreeMap<String, BTreeMap<String, String>>,
) -> HashMap<String, Vec<Workload>> {
    let mut moving: HashMap<String, Vec<Workload>> = HashMap::new();
    for pod in pods {
        let Some(on) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if snapshot::moves_in_drain(pod) {
            moving.entry(on).or_default().push(Workload {
                name: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
                requests: snapshot::pod_requests(pod),
                node_selector: snapshot::launcher_vmi(pod)
                    .and_then(|vmi| launchers.get(&vmi).cloned())
                    .unwrap_or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.node_selector.clone())
                            .unwrap_or_default()
                    }),
            });
        }
    }
    moving
}

/// Every schedulable Ready node with the room its pods (`used`, by node) leave.
pub fn rooms<'a>(
    used: &HashMap<String, (Resources, i64)>,
    nodes: impl IntoIterator<Item = &'a CachedNode>,
) -> Vec<Target> {
    nodes
        .into_iter()
        // Nodes waiting for their own drain count: in a rollout every node is waiting, and
        // the VMs of the first ones can only go to the later ones.
        .filter(|n| n.ready && !n.unschedulable)
        .map(|n| {
            let (alloc, pods_alloc) = n.allocatable;
            let (u, count) = used.get(&n.name_any()).copied().unwrap_or_default();
            Target {
                name: n.name_any(),
                labels: n.labels().clone(),
                free: Resources {
                    cpu_millis: alloc.cpu_millis - u.cpu_millis,
                    memory_bytes: alloc.memory_bytes - u.memory_bytes,
                },
                pods_free: pods_alloc - count,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A VM that came from a migration steered to `worker-2` runs in a pod pinned there by
    /// the migration's added node selector; its next migration is not, and the capacity
    /// check must not think it can go nowhere.
    #[test]
    fn a_launcher_pods_selector_is_its_vmis_not_a_past_migrations() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "virt-launcher-vm-0-abcde", "namespace": "vms",
                         "labels": {"kubevirt.io": "virt-launcher"},
                         "ownerReferences": [{"apiVersion": "kubevirt.io/v1",
                             "kind": "VirtualMachineInstance", "name": "vm-0",
                             "uid": "u", "controller": true}]},
            "spec": {"nodeName": "worker-2", "containers": [],
                     "nodeSelector": {"kubernetes.io/hostname": "worker-2",
                                      "kubevirt.io/schedulable": "true", "zone": "a"}},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let vmi: kubevirt_api::VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm-0", "namespace": "vms"},
            "spec": {"nodeSelector": {"zone": "a"}, "domain": {"devices": {}}}
        }))
        .unwrap();
        let launchers = snapshot::launcher_selectors([&vmi.into()]);
        let (moving, _) = room_and_movers(std::slice::from_ref(&pod), [], &launchers);
        let selector = &moving["worker-2"][0].node_selector;
        assert_eq!(
            selector,
            &[
                ("kubevirt.io/schedulable".to_string(), "true".to_string()),
                ("zone".to_string(), "a".to_string())
            ]
            .into()
        );
        // Without its VMI known, the pod's own selector is all there is.
        let (moving, _) = room_and_movers(&[pod], [], &Default::default());
        assert!(
            moving["worker-2"][0]
                .node_selector
                .contains_key("kubernetes.io/hostname")
        );
    }
}
