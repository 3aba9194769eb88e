//! `VirtualMachine` (short name `vm`): a VMI template plus a run strategy; KubeVirt creates and
//! re-creates the VMI according to the run strategy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;
use crate::vmi::VirtualMachineInstanceSpec;

/// `VirtualMachineSpec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    singular = "virtualmachine",
    namespaced,
    derive = "PartialEq",
    shortname = "vm",
    shortname = "vms",
    category = "all",
    status = "VirtualMachineStatus",
    label("kubevirt.io", ""),
    doc = "VirtualMachine handles the VirtualMachines that are not running or are in a stopped state",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.printableStatus","description":"Human Readable Status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Deprecated in favour of `runStrategy`; mutually exclusive with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    pub template: VirtualMachineInstanceTemplateSpec,
}

/// `VirtualMachineRunStrategy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RunStrategy {
    /// A VMI always exists; it is re-created whenever it stops.
    Always,
    /// Re-created when it fails, not when the guest shuts down cleanly.
    RerunOnFailure,
    /// Started and stopped only by explicit requests.
    Manual,
    /// No VMI.
    Halted,
    /// Started once, never re-created.
    Once,
    /// Waits to receive a VMI through a cross-cluster migration (KubeVirt ≥ 1.6).
    WaitAsReceiver,
    /// A strategy of a KubeVirt newer than this build: read, never acted on as if known.
    #[serde(other)]
    Unrecognized,
}

/// `VirtualMachineInstanceTemplateSpec`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crds::preserve_unknown_object")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<VirtualMachineInstanceSpec>,
}

/// `VirtualMachinePrintableStatus` values (kept as strings: KubeVirt adds new ones).
pub mod printable_status {
    pub const STOPPED: &str = "Stopped";
    pub const PROVISIONING: &str = "Provisioning";
    pub const STARTING: &str = "Starting";
    pub const RUNNING: &str = "Running";
    pub const PAUSED: &str = "Paused";
    pub const STOPPING: &str = "Stopping";
    pub const TERMINATING: &str = "Terminating";
    pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
    pub const MIGRATING: &str = "Migrating";
    pub const UNKNOWN: &str = "Unknown";
    pub const ERROR_UNSCHEDULABLE: &str = "ErrorUnschedulable";
}

/// `VirtualMachineStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl VirtualMachine {
    /// The run strategy KubeVirt applies (`GetRunStrategy()`): `runStrategy` if set, else
    /// `running: true` → Always, `running: false` → Halted, nothing → Halted.
    pub fn effective_run_strategy(&self) -> RunStrategy {
        match (self.spec.run_strategy, self.spec.running) {
            (Some(strategy), _) => strategy,
            (None, Some(true)) => RunStrategy::Always,
            _ => RunStrategy::Halted,
        }
    }
}
