//! What the planner asks the shell to do, and what the shell reports back.

use std::time::Duration;

use super::state::{BlockReason, DrainState, Phase};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// The reasons of the events that announce a migration, eviction or stop vacate starts.
pub const WORK_EVENTS: [&str; 4] = [
    "MigrationStarted",
    "VmiEvicted",
    "EvacuationRequested",
    "VmiRestarted",
];

/// One change to the cluster. The shell carries them out in order and stops at the first
/// error, so every action must be safe to repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Cordon,
    Uncordon,
    SetDrainedLabel(bool),
    /// Remove a label from the node (a request that is fulfilled, a consumed completion signal).
    RemoveLabel(String),
    CreateMigration {
        namespace: String,
        name: String,
        vmi: String,
        /// The hostname label of the node the migration is sent to (`spec.addedNodeSelector`);
        /// `None` leaves the choice to KubeVirt.
        target: Option<String>,
    },
    /// Deleting an unfinished migration makes KubeVirt abort it.
    CancelMigration {
        namespace: String,
        name: String,
    },
    /// Evict a pod through the Eviction API; `vmi` names the VMI when it is a virt-launcher pod.
    EvictPod {
        namespace: String,
        name: String,
        vmi: Option<String>,
        /// KubeVirt's eviction webhook answers this eviction itself, with a 429 whatever
        /// happens (pod-eviction-admitter.go, `admitLauncherPod`: the VMI's eviction strategy
        /// is LiveMigrate or External, or LiveMigrateIfPossible and it can migrate). KubeVirt
        /// registers that webhook with failurePolicy Fail, so while virt-api is down the API
        /// server refuses the eviction; were the registration changed to Ignore, the eviction
        /// would delete the pod and the VM with it. The shell asks with a dry run first and
        /// evicts only once KubeVirt answers.
        kubevirt_answers: bool,
    },
    /// Stop a VMI gracefully; its VirtualMachine starts it again elsewhere.
    RestartVmi {
        namespace: String,
        name: String,
    },
    Event {
        event_type: EventType,
        reason: &'static str,
        message: String,
        /// The VMI or pod the event is about, besides the node.
        subject: Option<Subject>,
    },
}

/// An object an event is also about; events about different subjects are kept apart
/// instead of being folded into one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Action {
    /// Whether the action changes the cluster (everything but an event): a plan with such
    /// an action writes its state first.
    pub fn changes_cluster(&self) -> bool {
        !matches!(self, Action::Event { .. })
    }

    /// Whether the action moves a workload off the node (a migration, an eviction, a
    /// stop), or is the event that announces one: work that a plan failing the drain
    /// withdraws.
    pub fn starts_work(&self) -> bool {
        match self {
            Action::CreateMigration { .. }
            | Action::EvictPod { .. }
            | Action::RestartVmi { .. } => true,
            Action::Event { reason, .. } => WORK_EVENTS.contains(reason),
            _ => false,
        }
    }

    /// Whether the action is a change of the node object itself, which the shell can send
    /// in the same request as the state.
    pub fn is_node_change(&self) -> bool {
        matches!(
            self,
            Action::Cordon | Action::Uncordon | Action::SetDrainedLabel(_) | Action::RemoveLabel(_)
        )
    }

    pub fn event(reason: &'static str, message: impl Into<String>) -> Self {
        Action::Event {
            event_type: EventType::Normal,
            reason,
            message: message.into(),
            subject: None,
        }
    }

    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Action::Event {
            event_type: EventType::Warning,
            reason,
            message: message.into(),
            subject: None,
        }
    }

    /// Marks an event as being about a VMI as well as the node.
    pub fn about_vmi(self, namespace: &str, name: &str) -> Self {
        match self {
            Action::Event {
                event_type,
                reason,
                message,
                ..
            } => Action::Event {
                event_type,
                reason,
                message,
                subject: Some(Subject {
                    kind: "VirtualMachineInstance",
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                }),
            },
            other => other,
        }
    }
}

/// How the state annotation changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextState {
    Unchanged,
    /// Written before any action (the intent), or because what others read changed:
    /// the phase, a blocker, a failure, the counts of attempts that make a migration's
    /// name.
    Write(Box<DrainState>),
    /// Changed only in what the next look derives again from the cluster (the outcome of a
    /// migration or eviction already recorded, what the drain waits for): the shell keeps
    /// it and writes it with the next change that must be written. A vacate that restarts
    /// in between reads the older state and finds the same outcomes again.
    Keep(Box<DrainState>),
    /// Remove the annotation: the node is back to Idle.
    Clear,
}

/// Transitions the plan makes, announced once, when they happen: the shell keeps its
/// metrics and wakes other nodes from them instead of deriving them again.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A drain begins (the delay between drains counts from here).
    DrainStarted,
    /// The node moved from one phase to another.
    PhaseChanged {
        from: Phase,
        to: Phase,
    },
    /// The node gave its place in the fleet back (its drain ended, failed or went back to
    /// waiting, or a cordon of vacate's was lifted): nodes waiting for a place may start.
    PlaceReleased,
    MigrationFinished {
        result: MigrationResult,
        duration: Option<Duration>,
    },
    DrainFinished {
        result: DrainResult,
        duration: Duration,
    },
    InvalidState {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationResult {
    Succeeded,
    Failed,
    Cancelled,
}

impl MigrationResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationResult::Succeeded => "succeeded",
            MigrationResult::Failed => "failed",
            MigrationResult::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainResult {
    Drained,
    Failed,
    Aborted,
}

impl DrainResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainResult::Drained => "drained",
            DrainResult::Failed => "failed",
            DrainResult::Aborted => "aborted",
        }
    }
}

/// The planner's answer for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub state: NextState,
    /// Run the planner again after this long even if nothing changes (retries, batches, timeout).
    pub requeue_after: Option<Duration>,
    pub observations: Vec<Observation>,
    /// The node's phase after this plan (Idle when the state is cleared).
    pub phase: Phase,
    pub blocked: Option<BlockReason>,
}

impl Plan {
    /// When to look at the node again once the plan is carried out: the plan's own wake-up
    /// or the one the actions' results asked for (`replan_at`, see
    /// [`super::record_outcome`]), whichever comes first, and at the latest after
    /// `drain.resync` while the node is in maintenance, a safety net only: every step of a
    /// drain is woken by what it waits for.
    pub fn look_again(
        &self,
        replan_at: Option<chrono::DateTime<chrono::Utc>>,
        now: chrono::DateTime<chrono::Utc>,
        config: &crate::config::Config,
    ) -> Option<Duration> {
        let mut next = self.requeue_after;
        if let Some(at) = replan_at {
            let after = (at - now).to_std().unwrap_or_default();
            next = Some(next.map_or(after, |n| n.min(after)));
        }
        if self.phase.is_draining() || matches!(self.phase, Phase::Uncordoning | Phase::Pending) {
            let resync = config.drain.resync.get();
            next = Some(next.map_or(resync, |n| n.min(resync)));
        }
        next
    }
}

/// How an action went, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResult {
    Done,
    /// The API answered 429 Too Many Requests (a PodDisruptionBudget, or KubeVirt's webhook).
    Refused(String),
    /// The object is already gone.
    Gone,
    /// The object already exists (a repeated create).
    AlreadyExists,
    /// The API rejected the request for good (4xx other than 404/409/429).
    Rejected(String),
}
