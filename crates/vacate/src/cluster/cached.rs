//! What the watch caches keep of nodes, VirtualMachineInstances and VirtualMachines: the
//! few fields vacate reads, not the objects. Typed Kubernetes objects are mostly inline
//! optional fields and small maps, so a decoded node, VMI or VirtualMachine takes several
//! times the memory of these projections, and a fleet of thousands of nodes and VMs would
//! fill the caches with fields nothing reads (docs/benchmarks.md, "Cache memory per
//! object").

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use kubevirt_api::labels as kv_labels;

use super::lean::LeanNode;
use crate::labels::Labels;
use crate::planner::StateAnnotation;
use crate::planner::capacity::{Resources, parse_quantity};
use kubevirt_api::{EvictionStrategy, LiveMigratability, VirtualMachineInstance, VmiPhase};

/// What vacate reads of a node. Nodes listed from the API server are turned into it too,
/// so every part of vacate reads a node the same way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedNode {
    /// Name, UID, resource version, and of the annotations only vacate's state. The labels
    /// are kept apart, interned ([`CachedNode::labels`]).
    pub metadata: ObjectMeta,
    pub labels: Labels,
    /// vacate's state annotation, read once when the node is cached: the start gate reads
    /// every node's state at every call, and the fleet's Pending nodes all hold one.
    pub state: StateAnnotation,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// A NoSchedule or NoExecute taint keeps pods off it.
    pub repels_pods: bool,
    /// The Ready condition is True.
    pub ready: bool,
    /// Allocatable CPU and memory, and the pod count.
    pub allocatable: (Resources, i64),
    pub kubelet_version: String,
}

impl CachedNode {
    /// The node's labels (not in `metadata`, whose labels are always empty).
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Whether `other` is this node in all vacate keeps of it but its resource version: a
    /// status heartbeat, a change of an image list or a condition vacate does not read.
    pub fn same_but_version(&self, other: &CachedNode) -> bool {
        // Taken apart whole, so that a field added to the projection is compared too.
        let CachedNode {
            metadata,
            labels,
            // Read from the annotation, compared below.
            state: _,
            unschedulable,
            repels_pods,
            ready,
            allocatable,
            kubelet_version,
        } = self;
        // `CachedNode::of` keeps these four of the metadata, and the resource version.
        let same_meta = metadata.name == other.metadata.name
            && metadata.uid == other.metadata.uid
            && metadata.annotations == other.metadata.annotations
            && metadata.deletion_timestamp == other.metadata.deletion_timestamp;
        same_meta
            && *labels == other.labels
            && *unschedulable == other.unschedulable
            && *repels_pods == other.repels_pods
            && *ready == other.ready
            && *allocatable == other.allocatable
            && *kubelet_version == other.kubelet_version
    }

    /// The projection of `node`, keeping `state_annotation` of its annotations.
    pub fn of(node: Node, state_annotation: &str) -> CachedNode {
        let allocatable = allocatable(&node);
        let Node {
            metadata,
            spec,
            status,
        } = node;
        let state = metadata
            .annotations
            .and_then(|mut a| a.remove_entry(state_annotation))
            .map(|entry| BTreeMap::from([entry]));
        let parsed = StateAnnotation::parse(
            state
                .as_ref()
                .and_then(|s| s.values().next())
                .map(String::as_str),
        );
        let spec = spec.unwrap_or_default();
        let status = status.unwrap_or_default();
        CachedNode {
            metadata: ObjectMeta {
                name: metadata.name,
                uid: metadata.uid,
                resource_version: metadata.resource_version,
                annotations: state,
                deletion_timestamp: metadata.deletion_timestamp,
                ..ObjectMeta::default()
            },
            labels: Labels::from(metadata.labels.unwrap_or_default()),
            state: parsed,
            unschedulable: spec.unschedulable.unwrap_or(false),
            repels_pods: spec
                .taints
                .unwrap_or_default()
                .iter()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute"),
            ready: status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            allocatable,
            kubelet_version: status
                .node_info
                .map(|i| i.kubelet_version)
                .unwrap_or_default(),
        }
    }

    /// The nodes `params` select, listed from the API server and decoded as lean nodes
    /// (only the fields the projection reads), keeping `state_annotation`.
    pub async fn list(
        client: &kube::Client,
        params: &kube::api::ListParams,
        state_annotation: &str,
    ) -> kube::Result<Vec<CachedNode>> {
        let list = kube::Api::<LeanNode>::all(client.clone())
            .list(params)
            .await?;
        Ok(list
            .items
            .into_iter()
            .map(|node| CachedNode::of(node.into(), state_annotation))
            .collect())
    }
}

/// A node's allocatable CPU, memory and pod count.
fn allocatable(node: &Node) -> (Resources, i64) {
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let get = |key: &str, scale: i64| {
        alloc
            .and_then(|a| a.get(key))
            .and_then(|q| parse_quantity(&q.0, scale))
            .unwrap_or(0)
    };
    (
        Resources {
            cpu_millis: get("cpu", 1000),
            memory_bytes: get("memory", 1),
        },
        get("pods", 1),
    )
}

/// A node's projection is a node to kube-runtime (its reconciliation queue takes the node
/// cache). Its `metadata` has no labels: they are in [`CachedNode::labels`], which method
/// calls on a `CachedNode` reach before kube's `ResourceExt::labels`; generic code over
/// `Resource` would see none.
impl Resource for CachedNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Node::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Node::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Node::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Node::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// An object's UID: as a number when it is a UUID in its canonical text (the API server
/// gives every object one), else as its text, so two different UIDs are never equal. The
/// number is two `u64`s, not a `u128`, so that a `Uid` takes 24 bytes, not 32 (a `u128` is
/// aligned to 16): the caches hold one for every VMI, VirtualMachine and running pod of
/// the cluster, where a `String` would take 24 bytes and an allocation of 48.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Uid {
    Uuid([u64; 2]),
    Text(Box<str>),
}

impl Uid {
    /// A UUID in its canonical text (lower-case hex digits, dashes after the 8th, 12th,
    /// 16th and 20th) becomes its number; any other text stays as it is.
    pub fn of(uid: &str) -> Uid {
        match uuid(uid) {
            Some(number) => Uid::Uuid(number),
            None => Uid::Text(uid.into()),
        }
    }

    /// Whether `text` is this UID (reading it allocates nothing).
    pub fn is(&self, text: &str) -> bool {
        match self {
            Uid::Text(own) => **own == *text,
            Uid::Uuid(number) => uuid(text) == Some(*number),
        }
    }
}

/// The number of a UUID in its canonical text, as two `u64`s (high, low).
fn uuid(text: &str) -> Option<[u64; 2]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut number: u128 = 0;
    for (i, b) in bytes.iter().enumerate() {
        let digit = match (i, b) {
            (8 | 13 | 18 | 23, b'-') => continue,
            (8 | 13 | 18 | 23, _) => return None,
            (_, b'0'..=b'9') => b - b'0',
            (_, b'a'..=b'f') => b - b'a' + 10,
            _ => return None,
        };
        number = (number << 4) | u128::from(digit);
    }
    Some([(number >> 64) as u64, number as u64])
}

impl Default for Uid {
    fn default() -> Uid {
        Uid::Text("".into())
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Text(text) => f.write_str(text),
            Uid::Uuid([high, low]) => write!(
                f,
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                high >> 32,
                (high >> 16) & 0xffff,
                high & 0xffff,
                low >> 48,
                low & 0xffff_ffff_ffff
            ),
        }
    }
}

/// What vacate reads of a VirtualMachineInstance.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedVmi {
    pub namespace: String,
    pub name: String,
    pub uid: Uid,
    /// The VirtualMachine that controls it: its name and UID.
    pub owner: Option<Box<(String, Uid)>>,
    /// Being deleted (`metadata.deletionTimestamp` is set).
    pub deleting: bool,
    pub phase: Option<VmiPhase>,
    /// `status.nodeName`, `None` when unset or empty.
    pub node: Option<String>,
    /// The `LiveMigratable` condition, `None` while KubeVirt has not computed it.
    pub migratable: Option<Box<LiveMigratability>>,
    /// The VMI's own eviction strategy (`spec.evictionStrategy`).
    pub eviction_strategy: Option<EvictionStrategy>,
    /// Guest memory in bytes (`VirtualMachineInstance::guest_memory_bytes`).
    pub memory: Option<u64>,
    /// `spec.nodeSelector`, its texts interned as nodes' labels are (the VMIs of a fleet
    /// select among a few pools).
    pub node_selector: Labels,
    /// The source and target node of its last or current migration.
    pub migration_nodes: Option<Box<[Option<String>; 2]>>,
    /// An eviction marked it for KubeVirt's evacuation (`status.evacuationNodeName` names
    /// the node it runs on): KubeVirt's evacuation controller creates migrations for it
    /// until it has left (evacuation.go, `getMarkedForEvictionVMIs`, v1.7.4 and v1.9.0).
    pub evacuating: bool,
}

impl From<VirtualMachineInstance> for CachedVmi {
    fn from(vmi: VirtualMachineInstance) -> CachedVmi {
        CachedVmi::of(&vmi)
    }
}

impl CachedVmi {
    pub fn of(vmi: &VirtualMachineInstance) -> CachedVmi {
        let owner = vmi
            .owner_references()
            .iter()
            .find(|o| o.kind == "VirtualMachine" && o.controller == Some(true))
            .map(|o| Box::new((o.name.clone(), Uid::of(&o.uid))));
        CachedVmi {
            namespace: vmi.namespace().unwrap_or_default(),
            name: vmi.name_any(),
            uid: Uid::of(&vmi.uid().unwrap_or_default()),
            owner,
            deleting: vmi.metadata.deletion_timestamp.is_some(),
            phase: vmi.phase(),
            node: vmi.node_name().map(String::from),
            migratable: vmi.live_migratable().map(Box::new),
            eviction_strategy: vmi.spec.eviction_strategy,
            memory: vmi.guest_memory_bytes(),
            node_selector: Labels::from(vmi.spec.node_selector.clone()),
            migration_nodes: vmi
                .migration_state()
                .map(|m| Box::new([m.source_node.clone(), m.target_node.clone()])),
            evacuating: vmi.is_marked_for_eviction()
                && vmi
                    .status
                    .as_ref()
                    .is_some_and(|s| s.evacuation_node_name == s.node_name),
        }
    }

    pub fn node_name(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Succeeded or Failed.
    pub fn is_final(&self) -> bool {
        self.phase.is_some_and(VmiPhase::is_final)
    }

    pub fn is_running(&self) -> bool {
        self.phase == Some(VmiPhase::Running)
    }

    /// The eviction strategy KubeVirt applies: the VMI's own, else the cluster-wide one.
    pub fn effective_eviction_strategy(
        &self,
        cluster_default: Option<EvictionStrategy>,
    ) -> Option<EvictionStrategy> {
        self.eviction_strategy.or(cluster_default)
    }

    /// The node selector the next virt-launcher pod of the VMI gets (template.go in
    /// KubeVirt v1.9.0): the VMI's own and `kubevirt.io/schedulable=true`.
    pub fn launcher_selector(&self) -> BTreeMap<String, String> {
        let mut selector = self.node_selector.to_map();
        selector.insert(
            kv_labels::NODE_SCHEDULABLE_LABEL.to_string(),
            "true".to_string(),
        );
        selector
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A cache's key for a namespaced KubeVirt kind: its name and namespace. The resource
/// version and UID the store could keep beside each key are left out (the store compares
/// keys without them).
macro_rules! lookup {
    ($type:ty, $kind:literal, $plural:literal) => {
        impl kube::runtime::reflector::Lookup for $type {
            type DynamicType = ();

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }

            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("kubevirt.io")
            }

            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed("v1")
            }

            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }

            fn name(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(&self.name))
            }

            fn namespace(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(&self.namespace))
            }

            fn resource_version(&self) -> Option<Cow<'_, str>> {
                None
            }

            fn uid(&self) -> Option<Cow<'_, str>> {
                None
            }
        }
    };
}

lookup!(
    CachedVmi,
    "VirtualMachineInstance",
    "virtualmachineinstances"
);

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cluster::snapshot;
    use crate::config::Config;
    use kube::runtime::reflector::{self, ObjectRef};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    pub(crate) fn vmi() -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "db", "namespace": "vms", "uid": "vmi-uid",
                         "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "ownerReferences": [
                             {"apiVersion": "v1", "kind": "Pod", "name": "other", "uid": "x",
                              "controller": false},
                             {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                              "name": "db", "uid": "vm-uid", "controller": true}]},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "2Gi"}},
                     "evictionStrategy": "LiveMigrateIfPossible",
                     "nodeSelector": {"zone": "b", "pool": "vms"}},
            "status": {"phase": "Running", "nodeName": "worker-1",
                       "conditions": [{"type": "LiveMigratable", "status": "False",
                                       "reason": "DisksNotLiveMigratable", "message": "m"}],
                       "migrationState": {"sourceNode": "worker-0", "targetNode": "worker-1"}}
        }))
        .unwrap()
    }

    /// A node as kwok and a kubelet write it: images, managed fields, five conditions,
    /// addresses, annotations of other programs beside vacate's state.
    pub(crate) fn full_node() -> Node {
        let images: Vec<serde_json::Value> = (0..50)
            .map(|i| {
                serde_json::json!({"names": [format!("registry.example/image-{i}:v1")],
                                        "sizeBytes": 1000 + i})
            })
            .collect();
        let conditions: Vec<serde_json::Value> = [
            "Ready",
            "MemoryPressure",
            "DiskPressure",
            "PIDPressure",
        ]
        .iter()
        .map(|t| {
            serde_json::json!({"type": t, "status": if *t == "Ready" {"True"} else {"False"},
                    "reason": "KubeletReady", "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"})
        })
        .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "worker-1", "uid": "u-1", "resourceVersion": "42",
                "labels": {"kubernetes.io/hostname": "worker-1", "vacate.io/maintenance": "true",
                           "vacate.io/drained": ""},
                "annotations": {"vacate.io/state": "{\"phase\":\"Cordoning\"}",
                                "node.alpha.kubernetes.io/ttl": "0",
                                "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                                   "apiVersion": "v1", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:status": {}}}]},
            "spec": {"unschedulable": true, "podCIDR": "10.0.1.0/24", "providerID": "kwok://worker-1",
                     "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "31500m", "memory": "250Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "conditions": conditions,
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "images": images,
                "nodeInfo": {"kubeletVersion": "v1.37.2", "osImage": "Debian", "kernelVersion": "6.1",
                             "architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "c",
                             "kubeProxyVersion": "", "machineID": "m", "operatingSystem": "linux",
                             "systemUUID": "s"}
            }
        }))
        .unwrap()
    }

    /// Of a node, the projection keeps what vacate reads, and only that.
    #[test]
    fn a_node_keeps_what_vacate_reads() {
        let full = full_node();
        let cached = CachedNode::of(full.clone(), "vacate.io/state");
        assert_eq!(cached.name_any(), "worker-1");
        assert_eq!(cached.uid().as_deref(), Some("u-1"));
        assert_eq!(cached.resource_version().as_deref(), Some("42"));
        assert_eq!(&cached.labels().to_map(), full.labels());
        // kube's view of the metadata has none: the labels are kept apart.
        assert_eq!(cached.metadata.labels, None);
        assert!(ResourceExt::labels(&cached).is_empty());
        assert_eq!(
            cached.annotations().keys().collect::<Vec<_>>(),
            ["vacate.io/state"]
        );
        assert!(cached.metadata.managed_fields.is_none());
        assert!(cached.unschedulable && cached.repels_pods && cached.ready);
        assert_eq!(
            cached.allocatable,
            (
                Resources {
                    cpu_millis: 31_500,
                    memory_bytes: 250 << 30
                },
                110
            )
        );
        assert_eq!(cached.kubelet_version, "v1.37.2");
        let view = snapshot::node_view(&cached, &Config::default());
        assert!(view.state != crate::planner::StateAnnotation::Absent);
        assert!(view.ready && view.unschedulable && view.kubelet_version == "v1.37.2");
    }

    /// A heartbeat (new times in the conditions, a new resource version, other images) is
    /// the same node to vacate; a change of anything the projection keeps is not.
    #[test]
    fn a_heartbeat_changes_nothing_vacate_keeps() {
        let state = "vacate.io/state";
        let before = CachedNode::of(full_node(), state);
        let mut beat = full_node();
        beat.metadata.resource_version = Some("43".into());
        let status = beat.status.as_mut().unwrap();
        for c in status.conditions.as_mut().unwrap() {
            c.last_heartbeat_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:10:00Z".parse().unwrap(),
            ));
        }
        status.images.as_mut().unwrap().pop();
        beat.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("node.alpha.kubernetes.io/ttl".into(), "30".into());
        let after = CachedNode::of(beat, state);
        assert_ne!(before, after);
        assert!(before.same_but_version(&after));

        type Change = (&'static str, fn(&mut Node));
        let changes: [Change; 8] = [
            ("a label", |n| {
                n.labels_mut()
                    .insert("vacate.io/maintenance".into(), "false".into());
            }),
            ("the state", |n| {
                n.annotations_mut()
                    .insert("vacate.io/state".into(), "{}".into());
            }),
            ("cordoned", |n| {
                n.spec.as_mut().unwrap().unschedulable = None
            }),
            ("a taint", |n| n.spec.as_mut().unwrap().taints = None),
            ("Ready", |n| {
                n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into()
            }),
            ("allocatable", |n| {
                n.status.as_mut().unwrap().allocatable = None;
            }),
            ("the kubelet", |n| {
                n.status
                    .as_mut()
                    .unwrap()
                    .node_info
                    .as_mut()
                    .unwrap()
                    .kubelet_version = "v1.38.0".into()
            }),
            ("deleted", |n| {
                n.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        "2026-01-01T00:10:00Z".parse().unwrap(),
                    ))
            }),
        ];
        for (what, change) in changes {
            let mut node = full_node();
            change(&mut node);
            let changed = CachedNode::of(node, state);
            assert!(!before.same_but_version(&changed), "{what}");
            assert!(!changed.same_but_version(&before), "{what}");
        }
    }

    /// Not Ready, a taint pods are only asked to avoid, no state and no status at all.
    #[test]
    fn a_bare_node_is_not_ready_and_takes_pods() {
        let mut node = full_node();
        node.metadata.annotations = None;
        node.spec = serde_json::from_value(json!({
            "taints": [{"key": "k", "effect": "PreferNoSchedule"}]}))
        .unwrap();
        node.status = None;
        let cached = CachedNode::of(node, "vacate.io/state");
        assert!(cached.metadata.annotations.is_none());
        assert!(!cached.unschedulable && !cached.repels_pods && !cached.ready);
        assert_eq!(cached.allocatable, (Resources::default(), 0));
        assert_eq!(cached.kubelet_version, "");
        let mut node = full_node();
        node.spec = serde_json::from_value(json!({
            "taints": [{"key": "k", "effect": "NoExecute"}]}))
        .unwrap();
        assert!(CachedNode::of(node, "vacate.io/state").repels_pods);
    }

    #[test]
    fn a_vmi_keeps_what_vacate_reads() {
        let cached = CachedVmi::of(&vmi());
        assert_eq!(
            (cached.namespace.as_str(), cached.name.as_str()),
            ("vms", "db")
        );
        assert_eq!(cached.uid, Uid::of("vmi-uid"));
        assert!(cached.uid.is("vmi-uid"));
        assert_eq!(
            cached.owner.as_deref(),
            Some(&("db".to_string(), Uid::of("vm-uid")))
        );
        assert!(cached.deleting && cached.is_running() && !cached.is_final());
        assert_eq!(cached.node_name(), Some("worker-1"));
        let migratable = cached.migratable.as_deref().unwrap();
        assert!(!migratable.migratable);
        assert_eq!(migratable.reason, "DisksNotLiveMigratable");
        assert_eq!(
            cached.effective_eviction_strategy(Some(EvictionStrategy::None)),
            Some(EvictionStrategy::LiveMigrateIfPossible)
        );
        assert_eq!(cached.memory, Some(2 << 30));
        assert_eq!(
            cached.launcher_selector().into_iter().collect::<Vec<_>>(),
            [
                ("kubevirt.io/schedulable", "true"),
                ("pool", "vms"),
                ("zone", "b")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(
            cached.migration_nodes.as_deref(),
            Some(&[Some("worker-0".to_string()), Some("worker-1".to_string())])
        );
    }

    #[test]
    fn a_vmi_without_status_or_owner_has_nothing_to_report() {
        let mut bare = vmi();
        bare.status = None;
        bare.metadata.owner_references = None;
        bare.metadata.deletion_timestamp = None;
        bare.spec.eviction_strategy = None;
        let cached = CachedVmi::of(&bare);
        assert!(cached.owner.is_none() && !cached.deleting);
        assert!(cached.phase.is_none() && cached.node.is_none());
        assert!(cached.migratable.is_none() && cached.migration_nodes.is_none());
        assert_eq!(
            cached.effective_eviction_strategy(Some(EvictionStrategy::External)),
            Some(EvictionStrategy::External)
        );
    }

    #[test]
    fn projections_are_found_in_a_store_by_namespace_and_name() {
        let (store, mut writer) = reflector::store::<CachedVmi>();
        writer.apply_watcher_event(&Event::Apply(CachedVmi::of(&vmi())));
        assert!(store.get(&ObjectRef::new("db").within("vms")).is_some());
        assert!(store.get(&ObjectRef::new("db").within("other")).is_none());
        writer.apply_watcher_event(&Event::Delete(CachedVmi::of(&vmi())));
        assert!(store.get(&ObjectRef::new("db").within("vms")).is_none());
    }
}
