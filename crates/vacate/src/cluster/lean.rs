//! The shapes the cluster-wide watches decode nodes, pods, VMIs and VirtualMachines into:
//! only the fields vacate reads. serde skips every other field of the API server's answer
//! without building it, so the first list of a large fleet (500 objects a page) does not
//! become pages of whole objects (managed fields, node images, container specs and
//! statuses) that are projected and dropped a moment later, and every later event costs
//! the few fields too (docs/benchmarks.md, "Cache memory per object").
//!
//! Each shape turns into its typed object with only those fields set, so the projections
//! ([`super::cached`], [`super::usage`]) read it as they read any other object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, Node, NodeCondition, NodeSpec, NodeStatus,
    NodeSystemInfo, Pod, PodSpec, PodStatus, ResourceRequirements, TopologySpreadConstraint,
    Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kubevirt_api::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec,
    VirtualMachineInstanceStatus, VirtualMachineSpec, VirtualMachineStatus,
};
use serde::{Deserialize, Deserializer};

/// `metadata` without what no part of vacate reads (managed fields above all, then
/// finalizers, generate name, timestamps but the deletion's).
fn lean_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
        deletion_timestamp: Option<Time>,
        owner_references: Option<Vec<OwnerReference>>,
    }
    let meta = Meta::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        annotations: meta.annotations,
        deletion_timestamp: meta.deletion_timestamp,
        owner_references: meta.owner_references,
        ..ObjectMeta::default()
    })
}

/// A node as [`super::cached::CachedNode::of`] reads it: not its images, addresses,
/// capacity or daemon endpoints.
#[derive(Clone, Debug, Deserialize, kube::Resource)]
#[resource(inherit = Node)]
pub struct LeanNode {
    #[serde(deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    pub spec: Option<NodeSpec>,
    pub status: Option<LeanNodeStatus>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanNodeStatus {
    allocatable: Option<BTreeMap<String, Quantity>>,
    conditions: Option<Vec<NodeCondition>>,
    node_info: Option<NodeSystemInfo>,
}

impl From<LeanNode> for Node {
    fn from(node: LeanNode) -> Node {
        Node {
            metadata: node.metadata,
            spec: node.spec,
            status: node.status.map(|s| NodeStatus {
                allocatable: s.allocatable,
                conditions: s.conditions,
                node_info: s.node_info,
                ..NodeStatus::default()
            }),
        }
    }
}

/// A pod as the pod usage reads it: where it runs, what its containers request, whether
/// it finished.
#[derive(Clone, Debug, Deserialize, kube::Resource)]
#[resource(inherit = Pod)]
pub struct LeanPod {
    #[serde(deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    pub spec: Option<LeanPodSpec>,
    pub status: Option<LeanPodStatus>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeanPodSpec {
    node_name: Option<String>,
    #[serde(default)]
    containers: Vec<LeanContainer>,
    init_containers: Option<Vec<LeanContainer>>,
    overhead: Option<BTreeMap<String, Quantity>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LeanContainer {
    resources: Option<ResourceRequirements>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LeanPodStatus {
    phase: Option<String>,
}

impl From<LeanPodSpec> for PodSpec {
    fn from(s: LeanPodSpec) -> PodSpec {
        let container = |c: LeanContainer| Container {
            resources: c.resources,
            ..Container::default()
        };
        PodSpec {
            node_name: s.node_name,
            containers: s.containers.into_iter().map(container).collect(),
            init_containers: s
                .init_containers
                .map(|cs| cs.into_iter().map(container).collect()),
            overhead: s.overhead,
            ..PodSpec::default()
        }
    }
}

impl From<LeanPodStatus> for PodStatus {
    fn from(s: LeanPodStatus) -> PodStatus {
        PodStatus {
            phase: s.phase,
            ..PodStatus::default()
        }
    }
}

impl From<LeanPod> for Pod {
    fn from(pod: LeanPod) -> Pod {
        Pod {
            metadata: pod.metadata,
            spec: pod.spec.map(PodSpec::from),
            status: pod.status.map(PodStatus::from),
        }
    }
}

/// A pod of a node vacate drains or gates, as its pod watch keeps it: what the pod usage
/// reads, and what the drain reads besides ([`super::snapshot::pod_view`], the launcher of
/// [`super::snapshot::vmi_view`], the start gate's capacity check): the node selector,
/// whether a volume is an `emptyDir`, the affinity and the topology spread constraints
/// (whether the pod has placement rules). Not its containers' images, commands,
/// environment, probes or mounts, nor its status but the phase: a whole pod as the API
/// server sends it decodes into 35 kB ("Cache memory per object" in docs/benchmarks.md).
#[derive(Clone, Debug, Deserialize, kube::Resource)]
#[resource(inherit = Pod)]
pub struct DrainPod {
    #[serde(deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    pub spec: Option<DrainPodSpec>,
    pub status: Option<LeanPodStatus>,
}

/// [`LeanPodSpec`]'s fields and those of the drain. (Not `#[serde(flatten)]`ed from it:
/// serde buffers a flattened struct's whole input before it decodes it.)
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainPodSpec {
    node_name: Option<String>,
    #[serde(default)]
    containers: Vec<LeanContainer>,
    init_containers: Option<Vec<LeanContainer>>,
    overhead: Option<BTreeMap<String, Quantity>>,
    node_selector: Option<BTreeMap<String, String>>,
    volumes: Option<Vec<DrainVolume>>,
    affinity: Option<Affinity>,
    topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// A volume: its name, and its `emptyDir` source if it is one.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainVolume {
    #[serde(default)]
    name: String,
    empty_dir: Option<EmptyDirVolumeSource>,
}

impl From<DrainPod> for Pod {
    fn from(pod: DrainPod) -> Pod {
        Pod {
            metadata: pod.metadata,
            spec: pod.spec.map(|s| PodSpec {
                node_selector: s.node_selector,
                volumes: s.volumes.map(|vs| {
                    vs.into_iter()
                        .map(|v| Volume {
                            name: v.name,
                            empty_dir: v.empty_dir,
                            ..Volume::default()
                        })
                        .collect()
                }),
                affinity: s.affinity,
                topology_spread_constraints: s.topology_spread_constraints,
                ..PodSpec::from(LeanPodSpec {
                    node_name: s.node_name,
                    containers: s.containers,
                    init_containers: s.init_containers,
                    overhead: s.overhead,
                })
            }),
            status: pod.status.map(PodStatus::from),
        }
    }
}

/// A VirtualMachineInstance without the managed fields of its metadata (spec and status
/// are decoded into kubevirt-api's types, which model only the fields vacate and the
/// simulator use).
#[derive(Clone, Debug, Deserialize, kube::Resource)]
#[resource(inherit = VirtualMachineInstance)]
pub struct LeanVmi {
    #[serde(deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineInstanceSpec,
    pub status: Option<VirtualMachineInstanceStatus>,
}

impl From<LeanVmi> for VirtualMachineInstance {
    fn from(vmi: LeanVmi) -> VirtualMachineInstance {
        VirtualMachineInstance {
            metadata: vmi.metadata,
            spec: vmi.spec,
            status: vmi.status,
        }
    }
}

/// A VirtualMachine without the managed fields of its metadata.
#[derive(Clone, Debug, Deserialize, kube::Resource)]
#[resource(inherit = VirtualMachine)]
pub struct LeanVm {
    #[serde(deserialize_with = "lean_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineSpec,
    pub status: Option<VirtualMachineStatus>,
}

impl From<LeanVm> for VirtualMachine {
    fn from(vm: LeanVm) -> VirtualMachine {
        VirtualMachine {
            metadata: vm.metadata,
            spec: vm.spec,
            status: vm.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::cached::tests::{full_node, vmi};
    use crate::cluster::cached::{CachedNode, CachedVmi};
    use crate::cluster::restarts::restarts;
    use crate::cluster::snapshot;
    use kube::ResourceExt;
    use serde_json::{Value, json};

    /// `object` as the API server writes it, with the managed fields of three writers.
    fn with_managed_fields(object: impl serde::Serialize) -> Value {
        let mut value = serde_json::to_value(object).unwrap();
        value["metadata"]["managedFields"] = json!([
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
             "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}},
            {"manager": "kwok", "operation": "Update", "apiVersion": "v1",
             "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:conditions": {}}}},
            {"manager": "vacate", "operation": "Apply", "apiVersion": "v1",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:unschedulable": {}}}}
        ]);
        value["metadata"]["finalizers"] = json!(["example.com/keep"]);
        value["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        value
    }

    #[test]
    fn a_lean_node_projects_as_the_whole_node() {
        let full = full_node();
        let lean: LeanNode = serde_json::from_value(with_managed_fields(&full)).unwrap();
        let node = Node::from(lean);
        assert_eq!(
            CachedNode::of(node.clone(), "vacate.io/state"),
            CachedNode::of(full.clone(), "vacate.io/state")
        );
        // What nothing reads is not decoded at all.
        let status = node.status.unwrap();
        assert!(status.images.is_none() && status.addresses.is_none());
        assert!(status.capacity.is_none());
        assert!(node.metadata.managed_fields.is_none() && node.metadata.finalizers.is_none());
        assert!(node.metadata.creation_timestamp.is_none());
        // Every annotation reaches the projection, which keeps vacate's state only.
        assert_eq!(node.metadata.annotations, full.metadata.annotations);
    }

    /// A pod as a Deployment's ReplicaSet creates it and kwok runs it.
    fn full_pod(phase: &str) -> Value {
        with_managed_fields(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-7d9c-x2x", "namespace": "apps",
                         "uid": "4fc930df-f25c-4c6f-a085-972840ebed94", "resourceVersion": "77",
                         "generateName": "web-7d9c-", "labels": {"app": "web"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-7d9c", "uid": "rs", "controller": true}]},
            "spec": {
                "nodeName": "worker-3",
                "initContainers": [{"name": "init", "image": "busybox",
                                    "resources": {"requests": {"cpu": "2", "memory": "64Mi"}}}],
                "containers": [
                    {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
                     "env": [{"name": "K", "value": "V"}],
                     "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                                   "limits": {"cpu": "1", "memory": "256Mi"}}},
                    {"name": "b", "image": "sidecar",
                     "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}],
                "overhead": {"cpu": "100m", "memory": "10Mi"},
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                 "effect": "NoExecute", "tolerationSeconds": 300}]
            },
            "status": {
                "phase": phase, "hostIP": "10.0.0.3", "podIP": "10.0.3.4",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0,
                                       "image": "nginx", "imageID": "", "started": true,
                                       "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
            }
        }))
    }

    #[test]
    fn a_lean_pod_requests_what_the_whole_pod_requests() {
        for phase in ["Running", "Pending", "Succeeded", "Failed"] {
            let value = full_pod(phase);
            let full: Pod = serde_json::from_value(value.clone()).unwrap();
            let lean = Pod::from(serde_json::from_value::<LeanPod>(value).unwrap());
            assert_eq!(lean.uid(), full.uid());
            assert_eq!(
                lean.spec.as_ref().unwrap().node_name.as_deref(),
                Some("worker-3")
            );
            assert_eq!(snapshot::pod_requests(&lean), snapshot::pod_requests(&full));
            assert_eq!(snapshot::pod_finished(&lean), snapshot::pod_finished(&full));
            assert!(lean.metadata.managed_fields.is_none());
            let spec = lean.spec.unwrap();
            assert!(spec.volumes.is_none() && spec.tolerations.is_none());
            assert!(spec.containers.iter().all(|c| c.image.is_none()));
        }
        // The requests of the test above: 0.25 + 0.5 CPU of the containers, the init
        // container's 2 CPUs being the larger, and the overhead's 0.1.
        let full: Pod = serde_json::from_value(full_pod("Running")).unwrap();
        assert_eq!(snapshot::pod_requests(&full).cpu_millis, 2_100);
    }

    /// Pods as a drain meets them: a Deployment's (emptyDir, node selector, spread it must
    /// not break), a VMI's virt-launcher (required node affinity), a mirror pod.
    fn drained_pods() -> Vec<Value> {
        let mut deployment = full_pod("Running");
        deployment["spec"]["nodeSelector"] = json!({"disk": "ssd"});
        deployment["spec"]["topologySpreadConstraints"] = json!([
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "web"}}}]);
        let launcher = with_managed_fields(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "virt-launcher-db-x7k2p", "namespace": "vms", "uid": "launcher-uid",
                         "resourceVersion": "91",
                         "labels": {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "vmi-uid",
                                    "vm.kubevirt.io/name": "db"},
                         "annotations": {"kubevirt.io/domain": "db"},
                         "ownerReferences": [{"apiVersion": "kubevirt.io/v1",
                                              "kind": "VirtualMachineInstance", "name": "db",
                                              "uid": "vmi-uid", "controller": true,
                                              "blockOwnerDeletion": true}]},
            "spec": {
                "nodeName": "worker-3",
                "nodeSelector": {"kubevirt.io/schedulable": "true"},
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "rack", "operator": "In", "values": ["r1"]}]}]}}},
                "containers": [{"name": "compute", "image": "virt-launcher",
                                "resources": {"requests": {"cpu": "100m", "memory": "2262Mi"}}}],
                "volumes": [{"name": "private", "emptyDir": {}},
                            {"name": "disks", "persistentVolumeClaim": {"claimName": "db"}}]
            },
            "status": {"phase": "Running", "podIP": "10.0.3.9"}
        }));
        let mut mirror = full_pod("Running");
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
        mirror["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node",
            "name": "worker-3", "uid": "node-uid", "controller": true}]);
        mirror["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");
        vec![deployment, launcher, mirror, full_pod("Succeeded")]
    }

    #[test]
    fn a_drain_pod_reads_as_the_whole_pod() {
        let values = drained_pods();
        let full: Vec<Pod> = values
            .iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect();
        let lean: Vec<Pod> = values
            .into_iter()
            .map(|v| Pod::from(serde_json::from_value::<DrainPod>(v).unwrap()))
            .collect();
        for (lean, full) in lean.iter().zip(&full) {
            // What the drain makes of each pod.
            assert_eq!(
                format!("{:?}", snapshot::pod_view(lean)),
                format!("{:?}", snapshot::pod_view(full))
            );
            assert_eq!(snapshot::pod_requests(lean), snapshot::pod_requests(full));
            assert_eq!(snapshot::launcher_vmi(lean), snapshot::launcher_vmi(full));
            assert_eq!(
                snapshot::moves_in_drain(lean),
                snapshot::moves_in_drain(full)
            );
            assert_eq!(
                lean.metadata.resource_version,
                full.metadata.resource_version
            );
            // The placement rules of a launcher (`snapshot::placement_rules`) and the node
            // selector of the capacity check, as they came.
            let (l, f) = (lean.spec.as_ref().unwrap(), full.spec.as_ref().unwrap());
            assert_eq!(l.affinity, f.affinity);
            assert_eq!(l.topology_spread_constraints, f.topology_spread_constraints);
            assert_eq!(l.node_selector, f.node_selector);
            assert_eq!(
                l.volumes
                    .iter()
                    .flatten()
                    .map(|v| (&v.name, v.empty_dir.is_some()))
                    .collect::<Vec<_>>(),
                f.volumes
                    .iter()
                    .flatten()
                    .map(|v| (&v.name, v.empty_dir.is_some()))
                    .collect::<Vec<_>>()
            );
            // What nothing reads is not decoded.
            assert!(lean.metadata.managed_fields.is_none() && lean.metadata.finalizers.is_none());
            assert!(l.tolerations.is_none() && l.containers.iter().all(|c| c.image.is_none()));
            assert!(
                l.volumes
                    .iter()
                    .flatten()
                    .all(|v| v.persistent_volume_claim.is_none())
            );
            assert!(lean.status.as_ref().unwrap().pod_ip.is_none());
        }
        // The start gate's capacity check: the same workloads leave the node.
        let launchers = snapshot::launcher_selectors(std::iter::empty());
        assert_eq!(
            format!("{:?}", crate::cluster::gate::movers(&lean, &launchers)),
            format!("{:?}", crate::cluster::gate::movers(&full, &launchers))
        );
        // The launcher is found by its VMI's uid, and has placement rules.
        assert_eq!(snapshot::launcher_vmi(&lean[1]).as_deref(), Some("vms/db"));
        assert!(lean[1].spec.as_ref().unwrap().affinity.is_some());
    }

    #[test]
    fn a_lean_vmi_and_vm_project_as_the_whole_objects() {
        let full = vmi();
        let lean: LeanVmi = serde_json::from_value(with_managed_fields(&full)).unwrap();
        let lean = VirtualMachineInstance::from(lean);
        assert!(lean.metadata.managed_fields.is_none());
        assert_eq!(CachedVmi::of(&lean), CachedVmi::of(&full));

        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "db", "namespace": "vms", "uid": "vm-uid"},
            "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}}}}}
        }))
        .unwrap();
        let lean: LeanVm = serde_json::from_value(with_managed_fields(&vm)).unwrap();
        let lean = VirtualMachine::from(lean);
        assert!(lean.metadata.managed_fields.is_none());
        let (cached, whole) = (restarts(&lean), restarts(&vm));
        assert!(cached.1);
        assert_eq!(cached, whole);
    }
}
