//! Types shared by several KubeVirt objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What KubeVirt does with a VMI when its node is drained (`EvictionStrategy` in types.go).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum EvictionStrategy {
    /// No action: the VMI is shut down and, depending on its VM's run strategy, restarted elsewhere.
    None,
    /// The VMI is live-migrated; eviction is refused while it is not migratable.
    LiveMigrate,
    /// Live-migrate when migratable, otherwise behave as `None`.
    LiveMigrateIfPossible,
    /// Eviction is refused and `status.evacuationNodeName` is set for an external controller.
    External,
    /// A strategy of a KubeVirt newer than this build: read, so that one such VMI does not
    /// make a whole list unreadable, but never acted on as if it were known.
    #[serde(other)]
    Unrecognized,
}

impl EvictionStrategy {
    /// The spelling used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionStrategy::None => "None",
            EvictionStrategy::LiveMigrate => "LiveMigrate",
            EvictionStrategy::LiveMigrateIfPossible => "LiveMigrateIfPossible",
            EvictionStrategy::External => "External",
            EvictionStrategy::Unrecognized => "Unrecognized",
        }
    }
}

impl std::fmt::Display for EvictionStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `True`, `False` or `Unknown`, as in `k8s.io/api/core/v1.ConditionStatus`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    #[serde(other)]
    Unknown,
}

impl ConditionStatus {
    pub fn from_bool(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// A condition as KubeVirt writes them on VMIs, VMs, migrations and the KubeVirt CR.
///
/// The `type` is kept as a string because KubeVirt has many condition types and adds new ones in
/// every release; the well-known ones are in [`condition_type`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

impl Condition {
    /// A condition with the given type, status, reason and message, stamped now.
    pub fn new(type_: &str, status: ConditionStatus, reason: &str, message: &str) -> Self {
        Condition {
            type_: type_.to_string(),
            status,
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
            last_probe_time: None,
            last_transition_time: Some(now()),
        }
    }
}

/// Finds the condition of the given type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets (or replaces) a condition, keeping `lastTransitionTime` when the status does not change.
/// Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status
                && existing.reason == condition.reason
                && existing.message == condition.message
            {
                return false;
            }
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Well-known condition types.
pub mod condition_type {
    /// VMI: whether the VMI can be live-migrated (`VirtualMachineInstanceIsMigratable`).
    pub const LIVE_MIGRATABLE: &str = "LiveMigratable";
    /// VMI: whether the storage can be live-migrated (`VirtualMachineInstanceIsStorageLiveMigratable`).
    pub const STORAGE_LIVE_MIGRATABLE: &str = "StorageLiveMigratable";
    /// VMI and VM: ready (`VirtualMachineInstanceReady`, `VirtualMachineReady`).
    pub const READY: &str = "Ready";
    /// VMI: the guest is paused.
    pub const PAUSED: &str = "Paused";
    /// VMI: the launcher pod cannot be scheduled (`PodScheduled` mirrored from the pod).
    pub const POD_SCHEDULED: &str = "PodScheduled";
    /// VM: the VMI failed to start.
    pub const FAILURE: &str = "Failure";
    /// Migration: an abort was requested by deleting the migration (`VirtualMachineInstanceMigrationAbortRequested`).
    pub const MIGRATION_ABORT_REQUESTED: &str = "migrationAbortRequested";
    /// Migration: rejected by a resource quota (`VirtualMachineInstanceMigrationRejectedByResourceQuota`).
    pub const MIGRATION_REJECTED_BY_RESOURCE_QUOTA: &str = "migrationRejectedByResourceQuota";
}

/// Well-known condition reasons.
pub mod condition_reason {
    /// `LiveMigratable=False`: a disk cannot be migrated (e.g. a ReadWriteOnce PVC).
    pub const DISKS_NOT_LIVE_MIGRATABLE: &str = "DisksNotLiveMigratable";
    /// `LiveMigratable=False`: bridge binding on the pod network.
    pub const INTERFACE_NOT_LIVE_MIGRATABLE: &str = "InterfaceNotLiveMigratable";
    /// `LiveMigratable=False`: host devices or GPUs are passed through.
    pub const HOST_DEVICE_NOT_LIVE_MIGRATABLE: &str = "HostDeviceNotLiveMigratable";
    /// `LiveMigratable=False`: generic reason.
    pub const NOT_MIGRATABLE: &str = "NotMigratable";
    /// `PodScheduled=False` on an unschedulable launcher pod.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
}

/// A phase and the time the object entered it (`VirtualMachineInstancePhaseTransitionTimestamp`,
/// `VirtualMachineInstanceMigrationPhaseTransitionTimestamp`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    bound(deserialize = "P: Deserialize<'de>", serialize = "P: Serialize")
)]
pub struct PhaseTransitionTimestamp<P> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<P>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_transition_timestamp: Option<Time>,
}
