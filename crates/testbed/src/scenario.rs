//! Scenario files: the nodes, VMs and plain workloads a test or demo starts from.
//! The schema is documented in docs/testbed.md ("## Scenarios").

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// A scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {origin} is not valid YAML for the scenario schema: {message}")]
    Parse { origin: String, message: String },
    #[error("scenario {origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub nodes: Vec<NodeGroup>,
    #[serde(default)]
    pub vms: Vec<VmGroup>,
    #[serde(default)]
    pub deployments: Vec<DeploymentSpec>,
    #[serde(default)]
    pub daemon_sets: Vec<DaemonSetSpec>,
    #[serde(default)]
    pub pods: Vec<PodGroup>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeGroup {
    pub count: u32,
    /// Nodes are named `<namePrefix>-<i>`.
    #[serde(default = "default_node_prefix")]
    pub name_prefix: String,
    /// Value of the `testbed.vacate.io/pool` label (default: namePrefix).
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: Capacity,
    /// Default: the cluster's version.
    #[serde(default)]
    pub kubelet_version: Option<String>,
    #[serde(default)]
    pub taints: Vec<TaintSpec>,
    /// Entries of `status.images` per node (a real kubelet reports up to 50); default 0.
    #[serde(default)]
    pub images: u32,
}

/// The kubelet's default `nodeStatusMaxImages`.
pub const MAX_NODE_IMAGES: u32 = 50;

fn default_node_prefix() -> String {
    "node".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Capacity {
    #[serde(default = "default_node_cpu")]
    pub cpu: String,
    #[serde(default = "default_node_memory")]
    pub memory: String,
    #[serde(default = "default_node_pods")]
    pub pods: String,
    /// Extended resources, e.g. `devices.kubevirt.io/kvm: "1k"`.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            cpu: default_node_cpu(),
            memory: default_node_memory(),
            pods: default_node_pods(),
            extra: BTreeMap::new(),
        }
    }
}

fn default_node_cpu() -> String {
    "32".into()
}
fn default_node_memory() -> String {
    "256Gi".into()
}
fn default_node_pods() -> String {
    "110".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaintSpec {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum VmKind {
    /// A `VirtualMachine`; the simulator creates its VMI.
    #[default]
    VirtualMachine,
    /// A bare `VirtualMachineInstance`.
    VirtualMachineInstance,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum EvictionStrategy {
    LiveMigrate,
    LiveMigrateIfPossible,
    External,
    None,
}

impl EvictionStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionStrategy::LiveMigrate => "LiveMigrate",
            EvictionStrategy::LiveMigrateIfPossible => "LiveMigrateIfPossible",
            EvictionStrategy::External => "External",
            EvictionStrategy::None => "None",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmGroup {
    #[serde(default = "one")]
    pub count: u32,
    /// VMs are named `<namePrefix>-<i>`.
    pub name_prefix: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub kind: VmKind,
    /// For `VirtualMachine` only; default `Always`.
    #[serde(default)]
    pub run_strategy: Option<String>,
    #[serde(default = "default_vm_memory")]
    pub memory: String,
    #[serde(default = "one")]
    pub cpu: u32,
    /// Absent: the cluster-wide default from the KubeVirt CR applies.
    #[serde(default)]
    pub eviction_strategy: Option<EvictionStrategy>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Default: one `default` interface with masquerade binding on the pod network.
    #[serde(default)]
    pub interfaces: Option<Vec<InterfaceSpec>>,
    #[serde(default)]
    pub host_devices: Vec<HostDeviceSpec>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Scenario node name the VMs should start on (a preferred node affinity, so that a
    /// migration may still move them anywhere).
    #[serde(default)]
    pub prefer_node: Option<String>,
    /// The VMI's terminationGracePeriodSeconds (absent: KubeVirt's default).
    #[serde(default)]
    pub termination_grace_period_seconds: Option<i64>,
}

fn one() -> u32 {
    1
}
fn default_vm_memory() -> String {
    "1Gi".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    #[serde(default)]
    pub pvc: Option<PvcSpec>,
    #[serde(default)]
    pub container_disk: Option<ContainerDiskSpec>,
    #[serde(default)]
    pub empty_disk: Option<EmptyDiskSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PvcSpec {
    /// Default: `<vm>-<volume>`; a PVC of that name is created per VM.
    #[serde(default)]
    pub claim_name: Option<String>,
    pub access_modes: Vec<AccessMode>,
    #[serde(default = "default_pvc_size")]
    pub size: String,
}

fn default_pvc_size() -> String {
    "10Gi".into()
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadOnlyMany,
    ReadWriteMany,
    ReadWriteOncePod,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerDiskSpec {
    #[serde(default = "default_container_disk")]
    pub image: String,
}

fn default_container_disk() -> String {
    "quay.io/containerdisks/fedora:latest".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDiskSpec {
    #[serde(default = "default_pvc_size")]
    pub capacity: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InterfaceSpec {
    #[serde(default = "default_iface")]
    pub name: String,
    pub binding: Binding,
    /// Multus network name; absent: the pod network.
    #[serde(default)]
    pub multus_network: Option<String>,
}

fn default_iface() -> String {
    "default".into()
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Binding {
    Masquerade,
    Bridge,
    Sriov,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostDeviceSpec {
    pub name: String,
    pub device_name: String,
}

/// `minAvailable` / `maxUnavailable` value: a count or a percentage.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(i32),
    Percent(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PdbSpec {
    #[serde(default)]
    pub min_available: Option<IntOrPercent>,
    #[serde(default)]
    pub max_unavailable: Option<IntOrPercent>,
}

/// Settings shared by the pods of plain workloads.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodTemplateSpec {
    #[serde(default = "default_pod_cpu")]
    pub cpu: String,
    #[serde(default = "default_pod_memory")]
    pub memory: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes' default is 30; the testbed's default is 5 so that drains stay quick.
    /// kwok removes a deleted pod when its grace period ends.
    #[serde(default = "default_grace")]
    pub termination_grace_period_seconds: i64,
    /// Mount an emptyDir volume (drains then need --delete-emptydir-data).
    #[serde(default)]
    pub empty_dir: bool,
}

impl Default for PodTemplateSpec {
    fn default() -> Self {
        PodTemplateSpec {
            cpu: default_pod_cpu(),
            memory: default_pod_memory(),
            labels: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            termination_grace_period_seconds: default_grace(),
            empty_dir: false,
        }
    }
}

fn default_pod_cpu() -> String {
    "100m".into()
}
fn default_pod_memory() -> String {
    "128Mi".into()
}
fn default_grace() -> i64 {
    5
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub replicas: i32,
    #[serde(default)]
    pub pdb: Option<PdbSpec>,
    /// Scenario node name the pods should start on (a preferred node affinity, so that
    /// their replacements go elsewhere once it is cordoned).
    #[serde(default)]
    pub prefer_node: Option<String>,
    /// The pods' settings.
    #[serde(default)]
    pub pod: PodTemplateSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DaemonSetSpec {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// The pods' settings.
    #[serde(default)]
    pub pod: PodTemplateSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodGroup {
    #[serde(default = "one")]
    pub count: u32,
    /// Pods are named `<namePrefix>-<i>`.
    pub name_prefix: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Scenario node name to bind the pods to (spec.nodeName); absent: the scheduler places them.
    #[serde(default)]
    pub node_name: Option<String>,
    /// The pods' settings.
    #[serde(default)]
    pub pod: PodTemplateSpec,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates scenario YAML; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario =
            serde_norway::from_str(text).map_err(|e| ScenarioError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        scenario.validate(origin)?;
        Ok(scenario)
    }

    /// Number of nodes the scenario creates.
    pub fn node_count(&self) -> u32 {
        self.nodes.iter().map(|g| g.count).sum()
    }

    /// Number of VMs the scenario creates.
    pub fn vm_count(&self) -> u32 {
        self.vms.iter().map(|g| g.count).sum()
    }

    /// All node names of the scenario, in order (before any prefix).
    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|g| (0..g.count).map(move |i| format!("{}-{i}", g.name_prefix)))
            .collect()
    }

    fn validate(&self, origin: &str) -> Result<(), ScenarioError> {
        let err = |field: String, message: String| ScenarioError::Invalid {
            origin: origin.to_string(),
            field,
            message,
        };
        let node_names = self.node_names();
        let mut seen = std::collections::BTreeSet::new();
        for n in &node_names {
            if !seen.insert(n.clone()) {
                return Err(err(
                    "nodes".into(),
                    format!("node name {n} is produced twice; give the groups distinct namePrefix"),
                ));
            }
        }
        for (i, g) in self.nodes.iter().enumerate() {
            let f = |name: &str| format!("nodes[{i}].{name}");
            if g.count == 0 {
                return Err(err(f("count"), "must be at least 1".into()));
            }
            check_name(&g.name_prefix).map_err(|m| err(f("namePrefix"), m))?;
            if g.images > MAX_NODE_IMAGES {
                return Err(err(
                    f("images"),
                    format!(
                        "{} is more than a kubelet reports ({MAX_NODE_IMAGES})",
                        g.images
                    ),
                ));
            }
            for (k, v) in [
                ("cpu", &g.capacity.cpu),
                ("memory", &g.capacity.memory),
                ("pods", &g.capacity.pods),
            ] {
                check_quantity(v).map_err(|m| err(f(&format!("capacity.{k}")), m))?;
            }
            for (k, v) in &g.capacity.extra {
                check_quantity(v).map_err(|m| err(f(&format!("capacity.extra.{k}")), m))?;
            }
            if let Some(v) = &g.kubelet_version
                && !v.starts_with('v')
            {
                return Err(err(
                    f("kubeletVersion"),
                    format!("{v:?} should look like v1.37.2"),
                ));
            }
        }
        for (i, g) in self.vms.iter().enumerate() {
            let f = |name: &str| format!("vms[{i}].{name}");
            if g.count == 0 {
                return Err(err(f("count"), "must be at least 1".into()));
            }
            check_name(&g.name_prefix).map_err(|m| err(f("namePrefix"), m))?;
            if let Some(ns) = &g.namespace {
                check_name(ns).map_err(|m| err(f("namespace"), m))?;
            }
            check_quantity(&g.memory).map_err(|m| err(f("memory"), m))?;
            if g.cpu == 0 {
                return Err(err(f("cpu"), "must be at least 1".into()));
            }
            if g.kind == VmKind::VirtualMachineInstance && g.run_strategy.is_some() {
                return Err(err(
                    f("runStrategy"),
                    "only a VirtualMachine has a runStrategy (kind is VirtualMachineInstance)"
                        .into(),
                ));
            }
            if let Some(rs) = &g.run_strategy {
                const RUN_STRATEGIES: [&str; 6] = [
                    "Always",
                    "RerunOnFailure",
                    "Manual",
                    "Halted",
                    "Once",
                    "WaitAsReceiver",
                ];
                if !RUN_STRATEGIES.contains(&rs.as_str()) {
                    return Err(err(
                        f("runStrategy"),
                        format!("{rs:?} is not one of {RUN_STRATEGIES:?}"),
                    ));
                }
            }
            let mut names = std::collections::BTreeSet::new();
            for (j, v) in g.volumes.iter().enumerate() {
                let fv = |name: &str| f(&format!("volumes[{j}].{name}"));
                check_name(&v.name).map_err(|m| err(fv("name"), m))?;
                if !names.insert(v.name.clone()) {
                    return Err(err(fv("name"), format!("volume {} appears twice", v.name)));
                }
                let sources = [
                    v.pvc.is_some(),
                    v.container_disk.is_some(),
                    v.empty_disk.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if sources != 1 {
                    return Err(err(
                        f(&format!("volumes[{j}]")),
                        "needs exactly one of pvc, containerDisk, emptyDisk".into(),
                    ));
                }
                if let Some(p) = &v.pvc {
                    if p.access_modes.is_empty() {
                        return Err(err(
                            fv("pvc.accessModes"),
                            "needs at least one access mode".into(),
                        ));
                    }
                    check_quantity(&p.size).map_err(|m| err(fv("pvc.size"), m))?;
                    if let Some(c) = &p.claim_name {
                        check_name(c).map_err(|m| err(fv("pvc.claimName"), m))?;
                        if g.count > 1 {
                            return Err(err(
                                fv("pvc.claimName"),
                                format!(
                                    "a fixed claimName would be shared by all {} VMs of the \
                                     group; leave it out to get one PVC per VM",
                                    g.count
                                ),
                            ));
                        }
                    }
                }
                if let Some(e) = &v.empty_disk {
                    check_quantity(&e.capacity).map_err(|m| err(fv("emptyDisk.capacity"), m))?;
                }
            }
            if let Some(ifaces) = &g.interfaces {
                let mut names = std::collections::BTreeSet::new();
                let mut pod_networks = 0;
                for (j, iface) in ifaces.iter().enumerate() {
                    check_name(&iface.name)
                        .map_err(|m| err(f(&format!("interfaces[{j}].name")), m))?;
                    if !names.insert(iface.name.clone()) {
                        return Err(err(
                            f(&format!("interfaces[{j}].name")),
                            format!("interface {} appears twice", iface.name),
                        ));
                    }
                    if iface.multus_network.is_none() {
                        pod_networks += 1;
                    }
                    if iface.binding == Binding::Sriov && iface.multus_network.is_none() {
                        return Err(err(
                            f(&format!("interfaces[{j}].multusNetwork")),
                            "an sriov interface needs a multusNetwork".into(),
                        ));
                    }
                }
                if pod_networks > 1 {
                    return Err(err(
                        f("interfaces"),
                        "at most one interface may use the pod network (no multusNetwork)".into(),
                    ));
                }
            }
            for (j, h) in g.host_devices.iter().enumerate() {
                check_name(&h.name).map_err(|m| err(f(&format!("hostDevices[{j}].name")), m))?;
            }
            if let Some(n) = &g.prefer_node
                && !node_names.contains(n)
            {
                return Err(err(
                    f("preferNode"),
                    format!("{n} is not a node of this scenario"),
                ));
            }
        }
        for (i, d) in self.deployments.iter().enumerate() {
            let f = |name: &str| format!("deployments[{i}].{name}");
            check_name(&d.name).map_err(|m| err(f("name"), m))?;
            if let Some(ns) = &d.namespace {
                check_name(ns).map_err(|m| err(f("namespace"), m))?;
            }
            if d.replicas < 0 {
                return Err(err(f("replicas"), "must not be negative".into()));
            }
            check_pod(&d.pod).map_err(|(k, m)| err(f(&format!("pod.{k}")), m))?;
            if let Some(n) = &d.prefer_node
                && !node_names.contains(n)
            {
                return Err(err(
                    f("preferNode"),
                    format!("{n} is not a node of this scenario"),
                ));
            }
            if let Some(p) = &d.pdb {
                match (&p.min_available, &p.max_unavailable) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(err(
                            f("pdb"),
                            "needs exactly one of minAvailable, maxUnavailable".into(),
                        ));
                    }
                    (Some(v), None) => {
                        check_int_or_percent(v).map_err(|m| err(f("pdb.minAvailable"), m))?
                    }
                    (None, Some(v)) => {
                        check_int_or_percent(v).map_err(|m| err(f("pdb.maxUnavailable"), m))?
                    }
                }
            }
        }
        for (i, d) in self.daemon_sets.iter().enumerate() {
            let f = |name: &str| format!("daemonSets[{i}].{name}");
            check_name(&d.name).map_err(|m| err(f("name"), m))?;
            if let Some(ns) = &d.namespace {
                check_name(ns).map_err(|m| err(f("namespace"), m))?;
            }
            check_pod(&d.pod).map_err(|(k, m)| err(f(&format!("pod.{k}")), m))?;
        }
        for (i, p) in self.pods.iter().enumerate() {
            let f = |name: &str| format!("pods[{i}].{name}");
            if p.count == 0 {
                return Err(err(f("count"), "must be at least 1".into()));
            }
            check_name(&p.name_prefix).map_err(|m| err(f("namePrefix"), m))?;
            if let Some(ns) = &p.namespace {
                check_name(ns).map_err(|m| err(f("namespace"), m))?;
            }
            if let Some(n) = &p.node_name
                && !node_names.contains(n)
            {
                return Err(err(
                    f("nodeName"),
                    format!("{n} is not a node of this scenario"),
                ));
            }
            check_pod(&p.pod).map_err(|(k, m)| err(f(&format!("pod.{k}")), m))?;
        }
        Ok(())
    }
}

fn check_pod(p: &PodTemplateSpec) -> Result<(), (&'static str, String)> {
    check_quantity(&p.cpu).map_err(|m| ("cpu", m))?;
    check_quantity(&p.memory).map_err(|m| ("memory", m))?;
    if p.termination_grace_period_seconds < 0 {
        return Err((
            "terminationGracePeriodSeconds",
            "must not be negative".into(),
        ));
    }
    Ok(())
}

fn check_int_or_percent(v: &IntOrPercent) -> Result<(), String> {
    match v {
        IntOrPercent::Int(n) if *n < 0 => Err(format!("{n} must not be negative")),
        IntOrPercent::Int(_) => Ok(()),
        IntOrPercent::Percent(s) => {
            let ok = s
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n <= 100);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{s:?} is neither a count nor a percentage like \"50%\""
                ))
            }
        }
    }
}

/// A DNS-1123 label (what Kubernetes accepts as a namespace or a generated name part).
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be lower-case letters, digits and '-', start and end with a letter \
             or digit, and have at most 50 characters"
        ))
    }
}

/// A Kubernetes resource quantity such as `4Gi`, `500m`, `32` or `1e3`.
fn check_quantity(q: &str) -> Result<(), String> {
    const SUFFIXES: [&str; 17] = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let digits_end = q
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map(|(i, _)| i)
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = SUFFIXES.contains(&suffix)
        || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
            !e.is_empty()
                && e.trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        });
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "{q:?} is not a Kubernetes quantity (examples: 4Gi, 500m, 32)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["4Gi", "500m", "32", "1.5", "1e3", "110", "256Gi"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Gi", "4GG", "four", "1..2", "-1"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let e = Scenario::from_yaml("vms:\n- namePrefix: a\n  memroy: 1Gi\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memroy"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Scenario::from_yaml("vms:\n- namePrefix: a\n  memory: 4GG\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vms[0].memory"), "{e}");
        let e = Scenario::from_yaml("vms:\n- namePrefix: a\n  volumes:\n  - name: d\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vms[0].volumes[0]"), "{e}");
        let e = Scenario::from_yaml(
            "deployments:\n- name: web\n  replicas: 2\n  pdb: {}\n",
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("deployments[0].pdb"), "{e}");
        let e = Scenario::from_yaml(
            "nodes:\n- count: 1\nvms:\n- namePrefix: a\n  preferNode: nope\n",
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("vms[0].preferNode"), "{e}");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new("../../tests/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                Scenario::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(
            n >= 3,
            "expected the shipped scenarios in {}",
            dir.display()
        );
    }
}
