//! virt-launcher pods, rendered the way KubeVirt's template service does
//! (`pkg/virt-controller/services/template.go`: `RenderLaunchManifest` and, for migration
//! targets, `RenderMigrationManifest` plus `createMigrationPodAntiAffinityRule` of
//! migration.go). The pod runs nothing (kwok plays the kubelet); what matters is what the
//! scheduler and drain tools see: labels, owner, resources, placement and volumes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Pod,
    PodAffinityTerm, PodAntiAffinity, PodReadinessGate, PodSpec, ResourceRequirements, Toleration,
    Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use kubevirt_api::labels::{
    APP_LABEL, CREATED_BY_LABEL, DEFAULT_CONTAINER_ANNOTATION, DOMAIN_ANNOTATION,
    EVICT_ONLY_ANNOTATION, MIGRATION_JOB_LABEL, MIGRATION_JOB_NAME_ANNOTATION,
    MIGRATION_TRANSPORT_UNIX_ANNOTATION, NODE_SCHEDULABLE_LABEL, VIRT_LAUNCHER,
    VIRTUAL_MACHINE_UNPAUSED, VM_NAME_LABEL, VMI_ID_LABEL,
};
use kubevirt_api::{VirtualMachineInstance, VirtualMachineInstanceMigration};

use crate::error::{Error, Result};
use crate::faults::UNSCHEDULABLE_SELECTOR_KEY;
use crate::settings::KubeVirtRelease;

/// Memory virt-launcher needs on top of the guest (KubeVirt computes it per VMI; ~250 MiB is
/// typical for a small guest).
const LAUNCHER_MEMORY_OVERHEAD: u64 = 250 * 1024 * 1024;
/// KubeVirt adds this to the VMI's grace period so the guest can shut down (`gracePeriodKillAfter`).
const GRACE_PERIOD_KILL_AFTER: i64 = 15;
/// KubeVirt's default `terminationGracePeriodSeconds` of a VMI.
const DEFAULT_VMI_GRACE_PERIOD: i64 = 30;

/// Annotations KubeVirt copies from the VMI to its pod (`filterVMIAnnotationsForPod`): all
/// but `kubectl.kubernetes.io*`, `kubevirt.io/storage-observed-api-version*` and
/// `kubevirt.io/latest-observed-api-version*`.
fn copied_annotation(key: &str) -> bool {
    !key.starts_with("kubectl.kubernetes.io")
        && !key.starts_with("kubevirt.io/storage-observed-api-version")
        && !key.starts_with("kubevirt.io/latest-observed-api-version")
}

/// The pod's host name (`dns.SanitizeHostname`): `spec.hostname`, else the VMI name up to
/// its first dot, at most 63 characters.
fn host_name(vmi: &VirtualMachineInstance, name: &str) -> String {
    if let Some(h) = vmi.spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        return h.to_string();
    }
    let first = name.split('.').next().unwrap_or(name);
    first.chars().take(63).collect()
}

/// `CalculateVirtualMachineInstanceID` (`pkg/apimachinery/labels.go`): the name itself up to
/// 63 characters; longer names are cut to 54 and followed by `-` and the first 8 hex digits
/// of the name's SHA-1.
pub fn vmi_id(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let hash = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, name.as_bytes());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}", &name[..54], &hex[..8])
}

/// The pod that runs a VMI (no migration), as `release` renders it.
pub fn render_launch_pod(vmi: &VirtualMachineInstance, release: KubeVirtRelease) -> Result<Pod> {
    render(vmi, None, release)
}

/// The target pod of a migration: the launch pod plus KubeVirt's migration label and a
/// required anti-affinity to every pod of the VMI (`kubevirt.io/created-by=<uid>`) per host,
/// so the scheduler places it on another node. `unschedulable` adds a node selector no node
/// satisfies (fault injection).
///
/// The migration's `spec.addedNodeSelector` joins the node selector, but where a key is also
/// in the pod's own selector (the VMI's, `kubevirt.io/schedulable`) the pod's value stays:
/// it can only restrict where the VMI may go (`createTargetPod`, migration.go).
pub fn render_target_pod(
    vmi: &VirtualMachineInstance,
    migration: &VirtualMachineInstanceMigration,
    unschedulable: bool,
    release: KubeVirtRelease,
) -> Result<Pod> {
    let mut pod = render(vmi, Some(migration), release)?;
    let spec = pod.spec.get_or_insert_with(Default::default);
    let mut selector = migration.spec.added_node_selector.clone();
    selector.extend(spec.node_selector.take().unwrap_or_default());
    if unschedulable {
        selector.insert(UNSCHEDULABLE_SELECTOR_KEY.into(), "true".into());
    }
    spec.node_selector = Some(selector);
    Ok(pod)
}

fn render(
    vmi: &VirtualMachineInstance,
    migration: Option<&VirtualMachineInstanceMigration>,
    release: KubeVirtRelease,
) -> Result<Pod> {
    let name = vmi
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let uid = vmi
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingField("metadata.uid"))?;
    let namespace = vmi.metadata.namespace.clone();

    let hostname = host_name(vmi, &name);
    // podLabels: every VMI label, then KubeVirt's own.
    let mut labels: BTreeMap<String, String> = vmi.metadata.labels.clone().unwrap_or_default();
    labels.insert(APP_LABEL.into(), VIRT_LAUNCHER.into());
    labels.insert(CREATED_BY_LABEL.into(), uid.clone());
    labels.insert(VM_NAME_LABEL.into(), hostname.clone());
    labels.insert(VMI_ID_LABEL.into(), vmi_id(&name));
    let mut annotations: BTreeMap<String, String> = vmi
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| copied_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // generatePodAnnotations
    annotations.insert(DOMAIN_ANNOTATION.into(), name.clone());
    annotations.insert(DEFAULT_CONTAINER_ANNOTATION.into(), "compute".into());
    annotations.insert(MIGRATION_TRANSPORT_UNIX_ANNOTATION.into(), "true".into());
    annotations.insert(EVICT_ONLY_ANNOTATION.into(), String::new());
    if let Some(m) = migration {
        labels.insert(
            MIGRATION_JOB_LABEL.into(),
            m.metadata.uid.clone().unwrap_or_default(),
        );
        annotations.insert(
            MIGRATION_JOB_NAME_ANNOTATION.into(),
            m.metadata.name.clone().unwrap_or_default(),
        );
    }

    let owner = OwnerReference {
        api_version: kubevirt_api::API_VERSION.into(),
        kind: VirtualMachineInstance::kind(&()).into_owned(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    let spec = &vmi.spec;
    let memory = spec
        .guest_memory()
        .unwrap_or(crate::settings::DEFAULT_GUEST_MEMORY);
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    let resources = spec.domain.resources.clone().unwrap_or_default();
    let memory_request = resources
        .requests
        .get("memory")
        .and_then(|q| kubevirt_api::quantity::parse_bytes(&q.0))
        .unwrap_or(memory);
    requests.insert(
        "memory".into(),
        Quantity((memory_request + LAUNCHER_MEMORY_OVERHEAD).to_string()),
    );
    let cpu_request = resources.requests.get("cpu").cloned().unwrap_or_else(|| {
        // KubeVirt requests 1/cpuAllocationRatio (10) of a CPU per vCPU by default.
        let vcpus = spec.domain.cpu.as_ref().map_or(1, |c| {
            c.cores.unwrap_or(1).max(1)
                * c.sockets.unwrap_or(1).max(1)
                * c.threads.unwrap_or(1).max(1)
        });
        Quantity(format!("{}m", 100 * vcpus))
    });
    requests.insert("cpu".into(), cpu_request);
    for (k, v) in &resources.limits {
        limits.insert(k.clone(), v.clone());
    }
    if let Some(limit) = limits
        .get("memory")
        .and_then(|q| kubevirt_api::quantity::parse_bytes(&q.0))
    {
        limits.insert(
            "memory".into(),
            Quantity((limit + LAUNCHER_MEMORY_OVERHEAD).to_string()),
        );
    }
    // Host devices and GPUs are extended resources on the pod, as with device plugins.
    for dev in spec
        .domain
        .devices
        .host_devices
        .iter()
        .map(|d| &d.device_name)
        .chain(spec.domain.devices.gpus.iter().map(|g| &g.device_name))
    {
        if dev.is_empty() {
            continue;
        }
        let count = limits
            .get(dev)
            .and_then(|q| q.0.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        limits.insert(dev.clone(), Quantity(count.to_string()));
        requests.insert(dev.clone(), Quantity(count.to_string()));
    }

    let mut volumes = Vec::new();
    for v in &spec.volumes {
        if let Some(claim) = v.claim_name() {
            volumes.push(Volume {
                name: v.name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_string(),
                    read_only: v.persistent_volume_claim.as_ref().and_then(|p| p.read_only),
                }),
                ..Default::default()
            });
        } else if v.container_disk.is_some() || v.empty_disk.is_some() || v.host_disk.is_some() {
            // containerDisks are copied into an emptyDir by an init container; emptyDisks and
            // the launcher's own scratch space live in emptyDirs too.
            volumes.push(Volume {
                name: v.name.clone(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
        }
    }
    // virt-launcher always has these emptyDirs (`private`, `public`, `sockets`, ...).
    for scratch in ["private", "public", "sockets"] {
        volumes.push(Volume {
            name: scratch.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }

    let mut affinity: Option<Affinity> = spec.affinity.clone();
    if let Some(m) = migration {
        let _ = m;
        let term = PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    CREATED_BY_LABEL.to_string(),
                    uid.clone(),
                )])),
                ..Default::default()
            }),
            topology_key: "kubernetes.io/hostname".into(),
            ..Default::default()
        };
        let a = affinity.get_or_insert_with(Default::default);
        let anti = a
            .pod_anti_affinity
            .get_or_insert_with(PodAntiAffinity::default);
        anti.required_during_scheduling_ignored_during_execution
            .get_or_insert_with(Vec::new)
            .push(term);
    }

    let mut tolerations: Vec<Toleration> = spec.tolerations.clone();
    // KubeVirt lets launcher pods ride out short node problems like any pod.
    tolerations.dedup();

    // NodeSelectorRenderer: `kubevirt.io/schedulable: "true"`, the architecture when the VMI
    // names one, then the VMI's own selector (which wins).
    let mut node_selector =
        BTreeMap::from([(NODE_SCHEDULABLE_LABEL.to_string(), "true".to_string())]);
    if let Some(arch) = spec.architecture.as_deref().filter(|a| !a.is_empty()) {
        node_selector.insert("kubernetes.io/arch".into(), arch.to_lowercase());
    }
    node_selector.extend(spec.node_selector.clone());

    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_VMI_GRACE_PERIOD)
        + GRACE_PERIOD_KILL_AFTER;
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("virt-launcher-{name}-")),
            namespace,
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "compute".into(),
                image: Some(release.launcher_image()),
                command: Some(vec!["/usr/bin/virt-launcher-monitor".into()]),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: (!limits.is_empty()).then_some(limits),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector: Some(node_selector),
            readiness_gates: Some(vec![PodReadinessGate {
                condition_type: VIRTUAL_MACHINE_UNPAUSED.into(),
            }]),
            affinity,
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            scheduler_name: spec.scheduler_name.clone(),
            priority_class_name: spec.priority_class_name.clone(),
            termination_grace_period_seconds: Some(grace),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            hostname: Some(hostname),
            subdomain: spec.subdomain.clone(),
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    };
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_api::VirtualMachineInstanceSpec;

    fn vmi() -> VirtualMachineInstance {
        let mut vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "labels": {"app": "web", "kubevirt.io/nodeName": "n0"},
                         "annotations": {"team": "a", "kubevirt.io/keep": "yes", "kubevirt.io/latest-observed-api-version": "v1",
                                             "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {
                "domain": {"memory": {"guest": "4Gi"}, "devices": {"gpus": [{"name": "g", "deviceName": "nvidia.com/A10"}]}},
                "nodeSelector": {"pool": "a"},
                "volumes": [
                    {"name": "root", "containerDisk": {"image": "fedora"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}},
                    {"name": "dv", "dataVolume": {"name": "web-dv"}}
                ]
            }
        }))
        .unwrap();
        vmi.spec.termination_grace_period_seconds = Some(0);
        vmi
    }

    #[test]
    fn launch_pod_looks_like_kubevirts() {
        let pod = render_launch_pod(&vmi(), KubeVirtRelease::V1_9).unwrap();
        let meta = &pod.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("virt-launcher-web-"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["kubevirt.io"], "virt-launcher");
        assert_eq!(labels["kubevirt.io/created-by"], "u-1");
        assert_eq!(labels["app"], "web");
        // podLabels copies every VMI label.
        assert_eq!(labels["kubevirt.io/nodeName"], "n0");
        assert_eq!(labels["vm.kubevirt.io/name"], "web");
        assert_eq!(labels["vmi.kubevirt.io/id"], "web");
        let ann = meta.annotations.as_ref().unwrap();
        assert_eq!(ann["kubevirt.io/domain"], "web");
        assert_eq!(ann["team"], "a");
        assert_eq!(ann["kubevirt.io/keep"], "yes");
        assert_eq!(ann["kubectl.kubernetes.io/default-container"], "compute");
        assert_eq!(ann["kubevirt.io/migrationTransportUnix"], "true");
        assert_eq!(
            ann["descheduler.alpha.kubernetes.io/request-evict-only"],
            ""
        );
        assert!(!ann.contains_key("kubevirt.io/latest-observed-api-version"));
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("VirtualMachineInstance", Some(true))
        );
        let spec = pod.spec.unwrap();
        let selector = spec.node_selector.clone().unwrap();
        assert_eq!(selector["pool"], "a");
        assert_eq!(selector["kubevirt.io/schedulable"], "true");
        assert_eq!(
            spec.readiness_gates.as_ref().unwrap()[0].condition_type,
            "kubevirt.io/virtual-machine-unpaused"
        );
        assert_eq!(spec.hostname.as_deref(), Some("web"));
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("quay.io/kubevirt/virt-launcher:v1.9.0")
        );
        let old = render_launch_pod(&vmi(), KubeVirtRelease::V1_7).unwrap();
        assert_eq!(
            old.spec.unwrap().containers[0].image.as_deref(),
            Some("quay.io/kubevirt/virt-launcher:v1.7.4")
        );
        assert_eq!(spec.termination_grace_period_seconds, Some(15));
        let volumes = spec.volumes.unwrap();
        assert!(volumes[0].empty_dir.is_some());
        assert_eq!(
            volumes[1]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-pvc"
        );
        assert_eq!(
            volumes[2]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "web-dv"
        );
        let res = spec.containers[0].resources.clone().unwrap();
        let requests = res.requests.unwrap();
        assert_eq!(
            requests["memory"].0,
            ((4u64 << 30) + LAUNCHER_MEMORY_OVERHEAD).to_string()
        );
        assert_eq!(requests["nvidia.com/A10"].0, "1");
        assert!(spec.affinity.is_none());
    }

    #[test]
    fn vmi_id_hashes_long_names_as_kubevirt_does() {
        assert_eq!(vmi_id("web"), "web");
        let long = "a".repeat(70);
        let id = vmi_id(&long);
        assert_eq!(id.len(), 63);
        assert!(id.starts_with(&"a".repeat(54)));
        // sha1("a" x 70), first 8 hex digits
        assert_eq!(&id[55..], &sha1_hex8(&long));
    }

    fn sha1_hex8(s: &str) -> String {
        let out = std::process::Command::new("sha1sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(s.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..8].to_string()
    }

    #[test]
    fn target_pod_avoids_the_source() {
        let mut m = VirtualMachineInstanceMigration::new("m1", Default::default());
        m.metadata.uid = Some("m-uid".into());
        m.spec.added_node_selector = BTreeMap::from([
            ("pool".to_string(), "b".to_string()),
            ("zone".to_string(), "z1".to_string()),
            ("kubevirt.io/schedulable".to_string(), "false".to_string()),
        ]);
        let pod = render_target_pod(&vmi(), &m, true, KubeVirtRelease::V1_9).unwrap();
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()["kubevirt.io/migrationJobUID"],
            "m-uid"
        );
        let spec = pod.spec.unwrap();
        let terms = spec
            .affinity
            .unwrap()
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(
            terms[0]
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubevirt.io/created-by"],
            "u-1"
        );
        let selector = spec.node_selector.unwrap();
        assert!(selector.contains_key(UNSCHEDULABLE_SELECTOR_KEY));
        // addedNodeSelector adds keys but never changes the VMI's own or KubeVirt's.
        assert_eq!(selector["zone"], "z1");
        assert_eq!(selector["pool"], "a");
        assert_eq!(selector["kubevirt.io/schedulable"], "true");
        let _ = VirtualMachineInstanceSpec::default();
    }
}
