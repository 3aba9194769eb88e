//! The drain state vacate keeps on each node as a versioned JSON annotation.
//!
//! It is the only memory vacate has: a restarted or newly elected daemon reads it back and
//! carries on. Unknown fields are ignored so that a patch release can add some; a higher
//! `version` means a newer vacate owns the node and this one leaves it alone.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The annotation format written by this version of vacate.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum Phase {
    Idle,
    Pending,
    Cordoned,
    Migrating,
    Evicting,
    Drained,
    Uncordoning,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Idle,
        Phase::Pending,
        Phase::Cordoned,
        Phase::Migrating,
        Phase::Evicting,
        Phase::Drained,
        Phase::Uncordoning,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::Pending => "Pending",
            Phase::Cordoned => "Cordoned",
            Phase::Migrating => "Migrating",
            Phase::Evicting => "Evicting",
            Phase::Drained => "Drained",
            Phase::Uncordoning => "Uncordoning",
            Phase::Failed => "Failed",
        }
    }

    /// A drain is under way: the node is (being) emptied.
    pub fn is_draining(self) -> bool {
        matches!(self, Phase::Cordoned | Phase::Migrating | Phase::Evicting)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a drain cannot make progress; also the `reason` label of `vacate_nodes_blocked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
pub enum BlockReason {
    /// No maintenance window for this kind of request is open.
    OutsideWindow,
    /// As many nodes as allowed are in maintenance (fleet, pool or schedule), or the delay
    /// between drains has not passed.
    FleetLimit,
    /// Draining would leave fewer schedulable nodes than configured.
    MinSchedulable,
    /// The remaining schedulable nodes cannot hold the node's VMs and pods.
    InsufficientCapacity,
    /// Pods matching `blockers.pods` run on the node.
    BlockingPods,
    /// The Prometheus query of `blockers` returns results (e.g. firing alerts).
    PrometheusAlert,
    /// Prometheus could not be asked; no drain starts until it answers.
    PrometheusUnavailable,
    /// A PodDisruptionBudget refuses an eviction.
    PodDisruptionBudget,
    /// The API server rejects an eviction outright (a missing permission, an admission
    /// webhook): retried with backoff, but a person has to look.
    EvictionRejected,
    /// A VMI cannot live-migrate and the policy is `block`.
    NonMigratableVmi,
    /// KubeVirt refuses to evict a VMI and nothing else may be done with it.
    EvictionRefused,
    /// A pod without a controller and `pods.unmanaged = "block"`.
    UnmanagedPod,
    /// A pod with emptyDir data and `pods.emptydir = "block"`.
    EmptyDirPod,
    /// Waiting for the node to become Ready before uncordoning.
    NodeNotReady,
    /// The state annotation was written by a newer vacate.
    NewerStateVersion,
}

impl BlockReason {
    pub const ALL: [BlockReason; 15] = [
        BlockReason::OutsideWindow,
        BlockReason::FleetLimit,
        BlockReason::MinSchedulable,
        BlockReason::InsufficientCapacity,
        BlockReason::BlockingPods,
        BlockReason::PrometheusAlert,
        BlockReason::PrometheusUnavailable,
        BlockReason::PodDisruptionBudget,
        BlockReason::EvictionRejected,
        BlockReason::NonMigratableVmi,
        BlockReason::EvictionRefused,
        BlockReason::UnmanagedPod,
        BlockReason::EmptyDirPod,
        BlockReason::NodeNotReady,
        BlockReason::NewerStateVersion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::OutsideWindow => "OutsideWindow",
            BlockReason::FleetLimit => "FleetLimit",
            BlockReason::MinSchedulable => "MinSchedulable",
            BlockReason::InsufficientCapacity => "InsufficientCapacity",
            BlockReason::BlockingPods => "BlockingPods",
            BlockReason::PrometheusAlert => "PrometheusAlert",
            BlockReason::PrometheusUnavailable => "PrometheusUnavailable",
            BlockReason::PodDisruptionBudget => "PodDisruptionBudget",
            BlockReason::EvictionRejected => "EvictionRejected",
            BlockReason::NonMigratableVmi => "NonMigratableVmi",
            BlockReason::EvictionRefused => "EvictionRefused",
            BlockReason::UnmanagedPod => "UnmanagedPod",
            BlockReason::EmptyDirPod => "EmptyDirPod",
            BlockReason::NodeNotReady => "NodeNotReady",
            BlockReason::NewerStateVersion => "NewerStateVersion",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocker {
    pub reason: BlockReason,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VmiOutcome {
    /// Not handled yet.
    #[default]
    Waiting,
    /// vacate's migration runs.
    Migrating,
    /// Someone else's migration runs (KubeVirt's evacuation, a person's); vacate waits.
    MigratingExternally,
    /// The last migration failed; the next attempt waits for `retry_at`.
    RetryWaiting,
    /// The virt-launcher pod was evicted; waiting for the VMI to leave.
    Evicting,
    /// The VMI was stopped so that its VirtualMachine starts it elsewhere.
    Restarting,
    /// Held back by policy or refusal; see the node's blocker.
    Blocked,
    /// vacate cancelled its migration (the drain was aborted or failed); waiting for the
    /// cancel's result: KubeVirt aborts a migration past the hand-off only on request, and it
    /// may still finish.
    Cancelling,
    Migrated,
    Evicted,
    Restarted,
    /// Left the node without vacate's doing (moved or stopped by someone else).
    Left,
}

impl VmiOutcome {
    pub fn is_done(self) -> bool {
        matches!(
            self,
            VmiOutcome::Migrated | VmiOutcome::Evicted | VmiOutcome::Restarted | VmiOutcome::Left
        )
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct VmiRecord {
    pub outcome: VmiOutcome,
    /// Migrations vacate has created for this VMI during this drain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// KubeVirt answered 429 to the eviction of the virt-launcher pod.
    #[serde(default, skip_serializing_if = "is_false")]
    pub eviction_refused: bool,
    /// The node vacate sent the last migration to (its hostname label), during a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PodOutcome {
    #[default]
    Waiting,
    /// The eviction was accepted; waiting for the pod to go.
    Evicting,
    /// Refused for now (PodDisruptionBudget); retried at `retry_at`.
    RetryWaiting,
    Blocked,
    Evicted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub outcome: PodOutcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Why the last eviction was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<String>,
    /// The last refusal was a rejection (not a 429 from a PodDisruptionBudget).
    #[serde(default, skip_serializing_if = "is_false")]
    pub rejected: bool,
}

/// What asked for the drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    #[default]
    Maintenance,
    /// The upgrade label: done when the node reports this kubelet version and is Ready.
    Upgrade { version: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainState {
    pub version: u32,
    pub phase: Phase,
    #[serde(default)]
    pub request: Request,
    /// Value of the request label when this drain began; a new value retries a failed drain.
    #[serde(default)]
    pub request_value: String,
    /// vacate cordoned the node (it was schedulable when the drain began); only then
    /// does vacate uncordon it.
    pub cordoned_by_vacate: bool,
    pub started_at: DateTime<Utc>,
    pub phase_since: DateTime<Utc>,
    /// Drains of this node so far, counting this one.
    #[serde(default = "one")]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocker>,
    /// What the drain waits for when nothing blocks it (a migration slot, a retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_batch_at: Option<DateTime<Utc>>,
    /// When the node's migrations should be done (see `planner::eta`), as predicted at the
    /// last write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vmis: BTreeMap<String, VmiRecord>,
    /// The pods still to go (or holding the drain up), by `namespace/name`. A pod that has
    /// gone leaves its record and is counted in `pods_evicted`, so the annotation stays small
    /// however many pods the node had.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pods: BTreeMap<String, PodRecord>,
    /// Pods of the node gone during the drain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods_evicted: u32,
    /// Why the last migration of a rollout was left to KubeVirt's placement, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsteered: Option<String>,
}

fn one() -> u32 {
    1
}

impl DrainState {
    /// Whether a migration vacate cancelled has not shown its result yet.
    pub fn cancels_pending(&self) -> bool {
        self.vmis
            .values()
            .any(|r| r.outcome == VmiOutcome::Cancelling)
    }

    pub fn new(now: DateTime<Utc>, cordoned_by_vacate: bool, attempt: u32) -> Self {
        Self {
            version: STATE_VERSION,
            phase: Phase::Cordoned,
            request: Request::Maintenance,
            request_value: String::new(),
            cordoned_by_vacate,
            started_at: now,
            phase_since: now,
            attempt,
            blocked: None,
            waiting_for: None,
            failure: None,
            drained_at: None,
            last_batch_at: None,
            eta: None,
            vmis: BTreeMap::new(),
            pods: BTreeMap::new(),
            pods_evicted: 0,
            unsteered: None,
        }
    }

    /// The state without what the next look derives again from the cluster: the outcomes
    /// of the VMIs and pods (the attempts that name vacate's migrations are kept), what
    /// the drain waits for, its predicted end and the wording of its blocker. A change outside it is written at once.
    pub fn durable_part(&self) -> DrainState {
        let mut durable = self.clone();
        durable.waiting_for = None;
        durable.eta = None;
        // What blocks the drain is written when it changes, not each time its message
        // counts one more refusal.
        if let Some(blocker) = &mut durable.blocked {
            blocker.message.clear();
        }
        for record in durable.vmis.values_mut() {
            *record = VmiRecord {
                attempts: record.attempts,
                ..VmiRecord::default()
            };
        }
        durable.pods.clear();
        durable.pods_evicted = 0;
        durable
    }

    pub fn set_phase(&mut self, phase: Phase, now: DateTime<Utc>) {
        if self.phase != phase {
            self.phase = phase;
            self.phase_since = now;
        }
    }

    pub fn vmis_done(&self) -> usize {
        self.vmis.values().filter(|r| r.outcome.is_done()).count()
    }

    pub fn pods_done(&self) -> usize {
        self.pods_evicted as usize
            + self
                .pods
                .values()
                .filter(|r| r.outcome == PodOutcome::Evicted)
                .count()
    }

    /// The pods the drain has dealt with: gone, or still recorded.
    pub fn pods_total(&self) -> usize {
        self.pods_evicted as usize + self.pods.len()
    }

    /// What the drain waits for, in words: the failure, the blocker, or what it waits on.
    pub fn detail(&self) -> Option<String> {
        if let Some(failure) = &self.failure {
            Some(format!("failed: {failure}"))
        } else if let Some(b) = &self.blocked {
            Some(format!("blocked ({}): {}", b.reason.as_str(), b.message))
        } else {
            self.waiting_for
                .as_ref()
                .map(|w| format!("waiting for {w}"))
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("drain state always serialises")
    }
}

/// The state annotation as found on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateAnnotation {
    #[default]
    Absent,
    Valid(Box<DrainState>),
    /// Not JSON, or not a drain state; the text says what is wrong.
    Invalid(String),
    /// Written by a newer vacate.
    NewerVersion(u32),
}

impl StateAnnotation {
    pub fn parse(text: Option<&str>) -> Self {
        let Some(text) = text else {
            return StateAnnotation::Absent;
        };
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        match serde_json::from_str::<Versioned>(text) {
            Ok(v) if v.version > STATE_VERSION => return StateAnnotation::NewerVersion(v.version),
            Ok(v) if v.version == 0 => {
                return StateAnnotation::Invalid("version 0 is not a vacate state".into());
            }
            Ok(_) => {}
            Err(e) => return StateAnnotation::Invalid(e.to_string()),
        }
        match serde_json::from_str::<DrainState>(text) {
            Ok(state) => StateAnnotation::Valid(Box::new(state)),
            Err(e) => StateAnnotation::Invalid(e.to_string()),
        }
    }

    pub fn valid(&self) -> Option<&DrainState> {
        match self {
            StateAnnotation::Valid(s) => Some(s),
            _ => None,
        }
    }
}
