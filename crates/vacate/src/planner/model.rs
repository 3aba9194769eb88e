//! The planner's view of one node and what runs on it.
//!
//! The shell builds a [`Snapshot`] from its watch caches; the planner never sees an API
//! object, only these plain values, so its rules can be tested without a cluster.

use chrono::{DateTime, Utc};

use std::collections::BTreeMap;

use super::capacity::{Resources, Target};
use super::fleet::Gate;
use super::state::StateAnnotation;

/// Everything the planner knows when it decides the next step for one node.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub node: NodeView,
    /// VMIs whose `status.nodeName` is this node.
    pub vmis: Vec<VmiView>,
    /// Migrations of VMIs on this node, and every migration vacate created for this node.
    pub migrations: Vec<MigrationView>,
    /// Pods whose `spec.nodeName` is this node.
    pub pods: Vec<PodView>,
    pub cluster: ClusterView,
    /// Whether the fleet limits and blockers let a new drain start now. Maintenance windows
    /// are not part of it: the planner reads them from the config.
    pub start_gate: StartGate,
}

/// The answer of the fleet limits, capacity check and blockers for a drain about to start.
/// Asking costs API calls, so the shell asks only when [`super::wants_to_start`] says so; a
/// gate not asked keeps the drain from starting.
#[derive(Debug, Clone, PartialEq)]
pub enum StartGate {
    NotAsked,
    Open,
    Closed(Gate),
}

impl StartGate {
    /// Why a drain may not start now, if it may not.
    pub fn closed(&self) -> Option<Gate> {
        match self {
            StartGate::Open => None,
            StartGate::Closed(gate) => Some(gate.clone()),
            StartGate::NotAsked => Some(Gate::new(
                super::BlockReason::FleetLimit,
                "the fleet limits were not checked yet",
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub unschedulable: bool,
    pub ready: bool,
    /// Value of the request label; `None` when the label is absent.
    pub request_value: Option<String>,
    /// Value of the upgrade label: the kubelet version to wait for.
    pub upgrade_to: Option<String>,
    /// The version the kubelet reports (`status.nodeInfo.kubeletVersion`).
    pub kubelet_version: String,
    pub labels: BTreeMap<String, String>,
    /// The drained label is present.
    pub drained_label: bool,
    pub state: StateAnnotation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionStrategy {
    None,
    LiveMigrate,
    LiveMigrateIfPossible,
    External,
    /// A strategy this vacate does not know (a newer KubeVirt's).
    Unrecognized,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migratability {
    Migratable,
    NotMigratable {
        reason: String,
        message: String,
    },
    /// KubeVirt has not computed the condition yet.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct VmiView {
    pub namespace: String,
    pub name: String,
    /// The VMI is Succeeded or Failed: it no longer runs and needs nothing.
    pub finished: bool,
    /// The VMI runs (phase Running): only a running VMI is migrated; one still starting
    /// waits.
    pub running: bool,
    pub migratability: Migratability,
    /// The VMI's own strategy, or the cluster default when it sets none.
    pub eviction_strategy: EvictionStrategy,
    /// The running virt-launcher pod on this node, if any.
    pub launcher_pod: Option<String>,
    /// The VMI is controlled by a VirtualMachine that starts it again when it stops.
    pub restartable: bool,
    pub deleting: bool,
    /// Guest memory in bytes (0 when the VMI states none): the size of its migration, by
    /// which the largest VMs are started first.
    pub memory: u64,
    /// What the VMI's virt-launcher pod asks the scheduler for, and its node selector: what a
    /// target node must have room for.
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    /// The virt-launcher pod has required node affinity, tolerations or topology rules a
    /// target chosen by vacate could break: KubeVirt places its migrations.
    pub placement_rules: bool,
    /// An eviction marked it for KubeVirt's evacuation, which keeps migrating it off the
    /// node until it has left: vacate neither migrates nor evicts it again.
    pub evacuating: bool,
}

impl VmiView {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Created, not yet finished (Pending through Running).
    Unfinished,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
pub struct MigrationView {
    pub namespace: String,
    pub name: String,
    pub vmi_name: String,
    pub phase: MigrationPhase,
    /// Created by vacate for this node.
    pub ours: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub deleting: bool,
}

impl MigrationView {
    pub fn vmi_key(&self) -> String {
        format!("{}/{}", self.namespace, self.vmi_name)
    }
}

#[derive(Debug, Clone)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Kind of the controlling owner (`ReplicaSet`, `DaemonSet`, ...), if any.
    pub controller_kind: Option<String>,
    pub mirror: bool,
    pub finished: bool,
    pub has_emptydir: bool,
    pub virt_launcher: bool,
    pub deleting: bool,
    /// When the pod's grace period ends (`metadata.deletionTimestamp`), once it is deleted.
    pub delete_by: Option<DateTime<Utc>>,
    pub labels: BTreeMap<String, String>,
}

impl PodView {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Cluster-wide facts that bound what one node may do.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Unfinished migrations in the whole cluster, including ones just created.
    pub migrations_in_flight: u32,
    /// `parallelOutboundMigrationsPerNode` of the KubeVirt CR.
    pub kubevirt_per_node: u32,
    /// `parallelMigrationsPerCluster` of the KubeVirt CR.
    pub kubevirt_per_cluster: u32,
    /// Bytes of guest memory a migration moves per second in this cluster: measured from
    /// migrations that finished, else the KubeVirt CR's `bandwidthPerMigration`.
    pub bandwidth: Option<f64>,
    /// Where this node's migrations may be sent so that each VM moves once in a rollout.
    pub steering: Steering,
}

/// Steering migrations during a rollout: each is sent (`spec.addedNodeSelector`) to a node
/// that is not waiting for its own drain, so the VM moves once.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Steering {
    /// No rollout (no other node waits for a drain): KubeVirt places the migrations.
    #[default]
    Off,
    /// A rollout, but migrations cannot be steered: why (KubeVirt older than 1.6, ...).
    Unavailable(String),
    /// The nodes outside the rollout or done with it, with their room, and how many
    /// migrations each may receive at once.
    On {
        targets: Vec<SteerTarget>,
        max_inbound: u32,
    },
}

/// A node migrations may be steered to.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerTarget {
    /// The room it has left (requests of its pods, target pods of migrations included).
    pub room: Target,
    /// Its `kubernetes.io/hostname` label, the selector a migration adds.
    pub hostname: String,
    /// Migrations steered to it that have not finished.
    pub inbound: u32,
}

impl ClusterView {
    /// The migration limits in force, per node and cluster-wide: vacate's configuration
    /// capped by the KubeVirt CR's.
    pub fn migration_caps(&self, config: &crate::config::Config) -> (u32, u32) {
        let m = &config.migration;
        (
            m.max_in_flight_per_node.get().min(self.kubevirt_per_node),
            m.max_in_flight_cluster.get().min(self.kubevirt_per_cluster),
        )
    }
}

impl Default for ClusterView {
    fn default() -> Self {
        // KubeVirt's own defaults when the CR does not set them.
        Self {
            migrations_in_flight: 0,
            kubevirt_per_node: 2,
            kubevirt_per_cluster: 5,
            bandwidth: None,
            steering: Steering::Off,
        }
    }
}
