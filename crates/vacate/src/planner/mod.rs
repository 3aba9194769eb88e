//! The rules of a drain, as a pure function.
//!
//! [`plan`] takes a [`Snapshot`] of one node and the configuration and returns the next
//! [`Action`]s and the node's next [`DrainState`]. It performs no I/O and reads no clock:
//! the shell supplies `now`, carries out the actions and feeds their results back through
//! [`record_outcome`]. Every rule of the node lifecycle lives in this module, one story a
//! file: `lifecycle` (request, start, hold, end, abort, failure), `vmis` (migrations and the
//! non-migratable policy), `pods` (the other pods), `outcomes` (action results folded back).

pub mod actions;
pub mod capacity;
pub mod explain;
pub mod fleet;
pub mod model;
pub mod pod_filters;
pub mod rollout;
pub mod state;
pub mod windows;

mod eta;
mod lifecycle;
mod outcomes;
mod pods;
mod vmis;

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Config, EvictionRefusedPolicy, NonMigratablePolicy, RequestKind};

pub use actions::{
    Action, ActionResult, DrainResult, EventType, MigrationResult, NextState, Observation, Plan,
    Subject,
};
pub use explain::{PlanLine, explain};
pub use fleet::{FleetNode, Gate};
pub use model::{
    ClusterView, EvictionStrategy, Migratability, MigrationPhase, MigrationView, NodeView, PodView,
    Snapshot, StartGate, SteerTarget, Steering, VmiView,
};
pub use outcomes::{backoff, record_outcome, summary};
pub use pod_filters::{PodVerdict, classify};
pub use state::{
    BlockReason, Blocker, DrainState, Phase, PodOutcome, PodRecord, Request, StateAnnotation,
    VmiOutcome, VmiRecord,
};
pub use vmis::migration_name;

/// What the node's labels ask for: the maintenance label wins over the upgrade label, whose
/// version is still awaited when both are set.
pub fn request_of(node: &NodeView) -> Option<(Request, String)> {
    match (&node.request_value, &node.upgrade_to) {
        (Some(m), None) => Some((Request::Maintenance, m.clone())),
        (None, Some(v)) => Some((
            Request::Upgrade { version: v.clone() },
            format!("upgrade:{v}"),
        )),
        (Some(m), Some(v)) => Some((Request::Maintenance, format!("{m} upgrade:{v}"))),
        (None, None) => None,
    }
}

impl Request {
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Maintenance => RequestKind::Maintenance,
            Request::Upgrade { .. } => RequestKind::Upgrade,
        }
    }
}

/// Whether the kubelet runs the requested version or a newer one: `v1.34.2` is met by
/// `v1.34.2`, `1.34.2`, builds of it such as `v1.34.2+k3s1` or `v1.34.2-eks-1`, and by
/// `v1.34.10` or `v1.35.0`. A node already ahead of the target needs no drain. Versions
/// that are not `major.minor.patch` must match exactly (build suffixes aside).
pub fn version_reached(kubelet: &str, target: &str) -> bool {
    let kubelet = kubelet.trim().trim_start_matches('v');
    let target = target.trim().trim_start_matches('v');
    if target.is_empty() {
        return false;
    }
    match (release(kubelet), release(target)) {
        (Some(k), Some(t)) => k >= t,
        _ => kubelet
            .strip_prefix(target)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', '-'])),
    }
}

/// The numeric `major.minor.patch` of a version (build and pre-release suffixes dropped).
fn release(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['+', '-']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let release = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(release)
}

/// An upgrade request the node already meets (Ready, on the version, no maintenance
/// request, no drain under way) is cleared without a drain.
fn upgrade_needs_no_drain(node: &NodeView, request: &Request) -> bool {
    let Request::Upgrade { version } = request else {
        return false;
    };
    let idle = node
        .state
        .valid()
        .is_none_or(|st| matches!(st.phase, Phase::Idle | Phase::Pending));
    idle && node.request_value.is_none()
        && node.ready
        && version_reached(&node.kubelet_version, version)
}

/// Whether the next plan for this node may start a drain, so that the shell evaluates the
/// (costly) start gate only then. A plan that starts a drain without it finds the gate
/// closed: the shell's snapshot holds a closed gate until it is asked.
pub fn wants_to_start(s: &Snapshot, config: &Config) -> bool {
    node_wants_to_start(&s.node, s.now, config)
}

/// [`wants_to_start`] from the node alone, so that the shell can ask the start gate while
/// it reads the node's VMIs and pods.
pub fn node_wants_to_start(node: &NodeView, now: DateTime<Utc>, config: &Config) -> bool {
    let Some((request, value)) = request_of(node) else {
        return false;
    };
    if upgrade_needs_no_drain(node, &request) {
        return false;
    }
    let startable = match node.state.valid() {
        None => !matches!(node.state, StateAnnotation::NewerVersion(_)),
        Some(state) => match state.phase {
            Phase::Idle | Phase::Pending => true,
            Phase::Failed => state.request_value != value,
            _ => false,
        },
    };
    startable
        && !matches!(
            windows::verdict(config, request.kind(), now),
            windows::Verdict::Closed { .. }
        )
}

/// Decides the next step for one node.
pub fn plan(s: &Snapshot, config: &Config) -> Plan {
    let mut p = Planner::new(s, config);
    p.run();
    p.finish()
}

struct Planner<'a> {
    s: &'a Snapshot,
    config: &'a Config,
    original: Option<DrainState>,
    state: Option<DrainState>,
    clear: bool,
    actions: Vec<Action>,
    observations: Vec<Observation>,
    wake: Option<DateTime<Utc>>,
    blocked: Option<Blocker>,
    waiting_for: Option<String>,
    /// The steering targets, their room taken as this plan's migrations are placed.
    steering: Steering,
}

impl<'a> Planner<'a> {
    fn new(s: &'a Snapshot, config: &'a Config) -> Self {
        Self {
            s,
            config,
            original: s.node.state.valid().cloned(),
            state: None,
            clear: false,
            actions: Vec::new(),
            observations: Vec::new(),
            wake: None,
            blocked: None,
            waiting_for: None,
            steering: s.cluster.steering.clone(),
        }
    }

    fn block(&mut self, reason: BlockReason, message: impl Into<String>) {
        // The first blocker found is the one reported; the rest show up once it is gone.
        if self.blocked.is_none() {
            self.blocked = Some(Blocker {
                reason,
                message: message.into(),
            });
        }
    }

    fn wake_at(&mut self, at: DateTime<Utc>) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    fn finish(mut self) -> Plan {
        let now = self.s.now;
        // Never sooner than a second: a wake time in the past (a clock going back) must not
        // turn into a tight loop.
        let requeue_after = self.wake.map(|w| {
            (w - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1))
        });
        let (next, phase) = match self.state {
            Some(mut state) => {
                if !matches!(state.phase, Phase::Drained | Phase::Failed) {
                    state.blocked = self.blocked.clone();
                    state.waiting_for = if self.blocked.is_some() {
                        None
                    } else {
                        self.waiting_for.clone()
                    };
                }
                let phase = state.phase;
                let next = match &self.original {
                    Some(original) if *original == state => NextState::Unchanged,
                    Some(original)
                        if !self.actions.iter().any(Action::changes_cluster)
                            && original.durable_part() == state.durable_part() =>
                    {
                        NextState::Keep(Box::new(state))
                    }
                    _ => NextState::Write(Box::new(state)),
                };
                (next, phase)
            }
            None if self.clear => (NextState::Clear, Phase::Idle),
            None => (NextState::Unchanged, Phase::Idle),
        };
        let from = self.original.as_ref().map_or(Phase::Idle, |s| s.phase);
        if from != phase {
            self.observations
                .push(Observation::PhaseChanged { from, to: phase });
        }
        let left_maintenance = !matches!(from, Phase::Idle | Phase::Pending)
            && matches!(
                phase,
                Phase::Idle | Phase::Pending | Phase::Failed | Phase::Uncordoning
            )
            && from != phase;
        if left_maintenance || self.actions.contains(&Action::Uncordon) {
            self.observations.push(Observation::PlaceReleased);
        }
        Plan {
            actions: self.actions,
            state: next,
            requeue_after,
            observations: self.observations,
            phase,
            blocked: self.blocked.map(|b| b.reason),
        }
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
