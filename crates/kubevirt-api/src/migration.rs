//! `VirtualMachineInstanceMigration` (short name `vmim`): a request to live-migrate one VMI.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, PhaseTransitionTimestamp};
pub use crate::vmi::{MigrationAbortStatus, VirtualMachineInstanceMigrationState};

/// `VirtualMachineInstanceMigrationSpec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstanceMigration",
    plural = "virtualmachineinstancemigrations",
    singular = "virtualmachineinstancemigration",
    namespaced,
    derive = "PartialEq",
    shortname = "vmim",
    shortname = "vmims",
    category = "all",
    status = "VirtualMachineInstanceMigrationStatus",
    label("kubevirt.io", ""),
    doc = "VirtualMachineInstanceMigration represents the object tracking a VMI's migration to another host in the cluster",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"The current phase of VM instance migration"}"#,
    printcolumn = r#"{"name":"VMI","type":"string","jsonPath":".spec.vmiName","description":"The name of the VMI to perform the migration on"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationSpec {
    /// The name of the VMI to migrate, in the migration's namespace.
    #[serde(default)]
    pub vmi_name: String,
    /// Extra node selector terms the target pod must satisfy (KubeVirt ≥ 1.6).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_node_selector: BTreeMap<String, String>,
    /// `MigrationPriority` (`system-critical`, `user-triggered`, `system-maintenance`; see
    /// [`migration_priority`]). Only virt-controller may set it (KubeVirt v1.9: evacuations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
}

/// Values of `spec.priority` (`MigrationPriority` in
/// `staging/src/kubevirt.io/api/core/v1/types.go`, v1.7.4 and v1.9.0).
pub mod migration_priority {
    pub const SYSTEM_CRITICAL: &str = "system-critical";
    pub const USER_TRIGGERED: &str = "user-triggered";
    pub const SYSTEM_MAINTENANCE: &str = "system-maintenance";
}

/// `VirtualMachineInstanceMigrationPhase`, in the order migration.go moves through them.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum MigrationPhase {
    /// Accepted, waiting for a slot (cluster and per-node limits).
    Pending,
    /// Target pod created, waiting for the scheduler.
    Scheduling,
    /// Target pod scheduled and running.
    Scheduled,
    /// The target node prepares to receive the domain.
    PreparingTarget,
    /// The target is ready, the transfer can start.
    TargetReady,
    /// Memory is being transferred.
    Running,
    /// The VMI runs on the target (final).
    Succeeded,
    /// The migration failed or was aborted; the VMI stays on the source (final).
    Failed,
    /// Phases this crate does not know (KubeVirt's `MigrationPhaseUnset` is "").
    #[serde(other)]
    Unknown,
}

impl MigrationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Pending => "Pending",
            MigrationPhase::Scheduling => "Scheduling",
            MigrationPhase::Scheduled => "Scheduled",
            MigrationPhase::PreparingTarget => "PreparingTarget",
            MigrationPhase::TargetReady => "TargetReady",
            MigrationPhase::Running => "Running",
            MigrationPhase::Succeeded => "Succeeded",
            MigrationPhase::Failed => "Failed",
            MigrationPhase::Unknown => "Unknown",
        }
    }

    /// Succeeded or Failed.
    pub fn is_final(self) -> bool {
        matches!(self, MigrationPhase::Succeeded | MigrationPhase::Failed)
    }
}

impl std::fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `VirtualMachineInstanceMigrationStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransitionTimestamp<MigrationPhase>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<VirtualMachineInstanceMigrationState>,
}

impl VirtualMachineInstanceMigration {
    /// The phase; a migration without status is `Pending` in everything but name (KubeVirt's
    /// `MigrationPhaseUnset`), reported here as `None`.
    pub fn phase(&self) -> Option<MigrationPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// Succeeded or Failed (`IsFinal()`).
    pub fn is_final(&self) -> bool {
        self.phase().is_some_and(MigrationPhase::is_final)
    }

    /// Not final (`ListUnfinishedMigrations` counts these).
    pub fn is_unfinished(&self) -> bool {
        !self.is_final()
    }

    /// Past Pending and not final: the migration holds one of the parallel-migration slots
    /// (migration.go counts these as "running").
    pub fn is_running(&self) -> bool {
        matches!(
            self.phase(),
            Some(
                MigrationPhase::Scheduling
                    | MigrationPhase::Scheduled
                    | MigrationPhase::PreparingTarget
                    | MigrationPhase::TargetReady
                    | MigrationPhase::Running
            )
        )
    }

    pub fn migration_state(&self) -> Option<&VirtualMachineInstanceMigrationState> {
        self.status
            .as_ref()
            .and_then(|s| s.migration_state.as_ref())
    }

    /// The source node recorded in the migration state, if the migration got that far.
    pub fn source_node(&self) -> Option<&str> {
        self.migration_state()
            .and_then(|m| m.source_node.as_deref())
    }

    /// The target node recorded in the migration state, if the migration got that far.
    pub fn target_node(&self) -> Option<&str> {
        self.migration_state()
            .and_then(|m| m.target_node.as_deref())
    }

    /// When the migration entered the given phase.
    pub fn phase_entered_at(
        &self,
        phase: MigrationPhase,
    ) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
        self.status
            .as_ref()?
            .phase_transition_timestamps
            .iter()
            .rev()
            .find(|t| t.phase == Some(phase))
            .and_then(|t| t.phase_transition_timestamp.as_ref())
    }
}
