//! The rules of a drain, as a pure function.
//!
//! [`plan`] takes a [`Snapshot`] of one node and the configuration and returns the next
//! [`Action`]s and the node's next [`DrainState`]. It performs no I/O and reads no clock:
//! the shell supplies `now`, carries out the actions and feeds their results back through
//! [`record_outcome`]. Every rule of the node lifecycle lives in this module.

pub mod actions;
pub mod capacity;
pub mod explain;
pub mod fleet;
pub mod model;
pub mod pod_filters;
pub mod state;
pub mod windows;

#[cfg(test)]
mod fleet_tests;
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
    Snapshot, VmiView,
};
pub use pod_filters::{PodVerdict, classify};
pub use state::{
    BlockReason, Blocker, DrainState, Phase, PodOutcome, PodRecord, Request, StateAnnotation,
    VmiOutcome, VmiRecord,
};

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

/// Whether the kubelet runs the requested version: `v1.34.2` is met by `v1.34.2`,
/// `1.34.2` and by builds of it such as `v1.34.2+k3s1` or `v1.34.2-eks-1`.
pub fn version_reached(kubelet: &str, target: &str) -> bool {
    let kubelet = kubelet.trim().trim_start_matches('v');
    let target = target.trim().trim_start_matches('v');
    !target.is_empty()
        && kubelet
            .strip_prefix(target)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', '-']))
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
    let Some((request, value)) = request_of(&s.node) else {
        return false;
    };
    if upgrade_needs_no_drain(&s.node, &request) {
        return false;
    }
    let startable = match s.node.state.valid() {
        None => !matches!(s.node.state, StateAnnotation::NewerVersion(_)),
        Some(state) => match state.phase {
            Phase::Idle | Phase::Pending => true,
            Phase::Failed => state.request_value != value,
            _ => false,
        },
    };
    startable
        && !matches!(
            windows::verdict(config, request.kind(), s.now),
            windows::Verdict::Closed { .. }
        )
}

/// Name of the migration vacate creates for a VMI: recognisably vacate's, unique per node,
/// drain and attempt (two nodes' drains may start in the same second and meet the same VMI),
/// and the same every time it is computed, so a restarted vacate that repeats a create gets
/// `AlreadyExists` instead of a second migration.
pub fn migration_name(node: &str, state: &DrainState, vmi: &str, attempt: u32) -> String {
    let drain = fnv1a(&format!(
        "{node}/{}",
        state.started_at.timestamp_nanos_opt().unwrap_or_default()
    ));
    let suffix = format!("-{drain:08x}-{attempt}");
    let max_vmi = 253 - "vacate-".len() - suffix.len();
    let vmi = if vmi.len() > max_vmi {
        &vmi[..max_vmi]
    } else {
        vmi
    };
    format!("vacate-{}{suffix}", vmi.trim_end_matches(['-', '.']))
}

/// FNV-1a folded to 32 bits: stable across vacate versions, unlike std's hasher, so a
/// newer vacate computes the same migration names as the one that started the drain.
fn fnv1a(text: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) as u32
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
        }
    }

    fn run(&mut self) {
        let node = &self.s.node;
        let current = match &node.state {
            StateAnnotation::NewerVersion(version) => {
                self.block(
                    BlockReason::NewerStateVersion,
                    format!(
                        "the state annotation has version {version}, written by a newer vacate; this one leaves the node alone"
                    ),
                );
                return;
            }
            StateAnnotation::Invalid(message) => {
                self.observations.push(Observation::InvalidState {
                    message: message.clone(),
                });
                self.actions.push(Action::warning(
                    "InvalidState",
                    format!(
                        "ignoring an unreadable vacate state annotation ({message}); a cordon found on the node is treated as someone else's"
                    ),
                ));
                self.clear = true;
                None
            }
            StateAnnotation::Valid(state) => Some((**state).clone()),
            StateAnnotation::Absent => None,
        };
        let request = request_of(node);
        if let Some((r @ Request::Upgrade { version }, _)) = &request
            && upgrade_needs_no_drain(node, r)
        {
            self.clear_fulfilled_upgrade(version, current.is_some());
            return;
        }
        match (request.as_ref().map(|(_, v)| v), current) {
            (None, None) => {}
            (Some(_), None) => self.start(1, false),
            (Some(value), Some(state)) => match state.phase {
                Phase::Idle | Phase::Pending => self.start(state.attempt, state.cordoned_by_vacate),
                Phase::Cordoned | Phase::Migrating | Phase::Evicting => {
                    if !self.window_closed_abort(&state) {
                        self.drain(state, false)
                    }
                }
                Phase::Drained | Phase::Uncordoning => self.hold_drained(state),
                Phase::Failed if &state.request_value != value => {
                    // Re-applying the request (a new label value) retries a failed drain.
                    let cordoned_by_vacate = state.cordoned_by_vacate;
                    self.start(state.attempt + 1, cordoned_by_vacate)
                }
                Phase::Failed => self.state = Some(state),
            },
            (None, Some(state)) => match state.phase {
                Phase::Idle | Phase::Pending => {
                    // A drain aborted at a window's close may not have lifted its cordon yet.
                    let mut note = String::new();
                    self.release_node(&state, &mut note);
                    self.clear = true;
                }
                Phase::Cordoned | Phase::Migrating | Phase::Evicting => self.abort(state),
                Phase::Drained | Phase::Uncordoning | Phase::Failed => self.end(state),
            },
        }
    }

    /// A request is seen: wait for the start gate, then cordon and begin.
    fn start(&mut self, attempt: u32, cordoned_by_vacate_before: bool) {
        let s = self.s;
        let now = s.now;
        let (request, value) = request_of(&s.node).expect("start() runs only with a request");
        let gate = match windows::verdict(self.config, request.kind(), now) {
            windows::Verdict::Closed {
                next_open, message, ..
            } => Some(Gate {
                reason: BlockReason::OutsideWindow,
                message,
                retry_at: next_open,
            }),
            _ => s.start_gate.clone().err(),
        };
        if let Some(gate) = gate {
            self.pend(attempt, request, value, gate, cordoned_by_vacate_before);
            return;
        }
        let cordoned_by_vacate = cordoned_by_vacate_before || !s.node.unschedulable;
        let mut state = DrainState::new(now, cordoned_by_vacate, attempt);
        state.request = request;
        state.request_value = value;
        if s.node.unschedulable {
            let note = if cordoned_by_vacate_before {
                "drain started; the node is still cordoned from the previous attempt"
            } else {
                "drain started; the node was already cordoned, so vacate will leave it cordoned afterwards"
            };
            self.actions.push(Action::event("DrainStarted", note));
        } else {
            self.actions.push(Action::Cordon);
            self.actions.push(Action::event(
                "Cordoned",
                "cordoned for maintenance; draining",
            ));
        }
        self.clear = false;
        self.drain(state, true);
    }

    fn drain(&mut self, mut state: DrainState, just_cordoned: bool) {
        let s = self.s;
        let now = s.now;
        if !s.node.unschedulable && !just_cordoned {
            self.actions.push(Action::Cordon);
            self.actions.push(Action::warning(
                "Cordoned",
                "the node was uncordoned during the drain; cordoned it again",
            ));
            state.cordoned_by_vacate = true;
        }
        let deadline = state.started_at + chrono_duration(self.config.drain.timeout.get());
        self.follow_migrations(&mut state);
        let vmis_left = self.handle_vmis(&mut state);
        if self.state_failed(&state) {
            return;
        }
        // The other pods go while the VMIs migrate, so that their grace periods and any
        // PodDisruptionBudget back-off pass inside the migrations' time, not after it.
        let pods_left = self.handle_pods(&mut state, vmis_left > 0);
        if vmis_left > 0 {
            state.set_phase(Phase::Migrating, now);
        } else if pods_left > 0 {
            state.set_phase(Phase::Evicting, now);
        } else {
            self.finish_drain(state);
            return;
        }
        if now >= deadline {
            let why = match (&self.blocked, &self.waiting_for) {
                (Some(b), _) => b.message.clone(),
                (None, Some(w)) => w.clone(),
                (None, None) => "work still in progress".into(),
            };
            let message = format!(
                "drain did not finish within {} ({}): {why}",
                self.config.drain.timeout,
                progress(&state),
            );
            self.fail(state, message);
            return;
        }
        self.wake_at(deadline);
        self.state = Some(state);
    }

    /// The request waits for a window or the start gate; the node is left untouched.
    fn pend(
        &mut self,
        attempt: u32,
        request: Request,
        value: String,
        gate: Gate,
        cordoned_by_vacate: bool,
    ) {
        let now = self.s.now;
        let mut state = self
            .original
            .clone()
            .filter(|st| st.phase == Phase::Pending)
            .unwrap_or_else(|| DrainState::new(now, false, attempt));
        state.set_phase(Phase::Pending, now);
        // A cordon of vacate's that an aborted drain has not lifted yet (the uncordon failed)
        // is lifted now; until then the state remembers it is vacate's.
        state.cordoned_by_vacate = cordoned_by_vacate && self.s.node.unschedulable;
        if state.cordoned_by_vacate {
            self.actions.push(Action::Uncordon);
        }
        state.request = request;
        state.request_value = value;
        self.state = Some(state);
        if let Some(at) = gate.retry_at {
            self.wake_at(at);
        }
        self.block(gate.reason, gate.message);
    }

    /// An upgrade request for the version the node already runs needs no drain: it is
    /// cleared at once (and a Pending state with it).
    fn clear_fulfilled_upgrade(&mut self, version: &str, had_state: bool) {
        let node = &self.s.node;
        if let Some(state) = node.state.valid() {
            let mut note = String::new();
            self.release_node(state, &mut note);
        }
        self.actions.push(Action::RemoveLabel(
            self.config.upgrade.request_label.clone(),
        ));
        self.actions.push(Action::event(
            "UpgradeNotNeeded",
            format!(
                "the kubelet already runs {} (requested {version}); cleared the upgrade request without draining",
                node.kubelet_version
            ),
        ));
        self.clear = had_state;
    }

    /// A window closed during the drain and asks for drains to be aborted: cancel vacate's
    /// migrations, give the node back, and wait for the next window. Returns whether it did.
    fn window_closed_abort(&mut self, state: &DrainState) -> bool {
        let s = self.s;
        let windows::Verdict::Closed {
            abort: true,
            next_open,
            message,
        } = windows::verdict(self.config, state.request.kind(), s.now)
        else {
            return false;
        };
        let cancelled = self.cancel_own_migrations();
        let mut note = format!(
            "the maintenance window closed during the drain; cancelled {cancelled} migration(s)"
        );
        self.release_node(state, &mut note);
        note.push_str("; the drain starts again when a window opens");
        self.actions.push(Action::warning("DrainAborted", note));
        self.observations.push(Observation::DrainFinished {
            result: DrainResult::Aborted,
            duration: (s.now - state.started_at).to_std().unwrap_or_default(),
        });
        // Written before the uncordon runs: if it fails, the Pending state still says the
        // cordon is vacate's, and the next plan lifts it.
        let mut pending = DrainState::new(s.now, state.cordoned_by_vacate, state.attempt);
        pending.set_phase(Phase::Pending, s.now);
        pending.request = state.request.clone();
        pending.request_value = state.request_value.clone();
        self.state = Some(pending);
        if let Some(at) = next_open {
            self.wake_at(at);
        }
        self.block(BlockReason::OutsideWindow, message);
        true
    }

    fn state_failed(&self, state: &DrainState) -> bool {
        state.phase == Phase::Failed
            || self
                .state
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Failed)
    }

    /// Notes what became of vacate's own migrations since the last look.
    fn follow_migrations(&mut self, state: &mut DrainState) {
        let s = self.s;
        let max_attempts = self.config.migration.max_attempts;
        for m in s.migrations.iter().filter(|m| m.ours) {
            let key = m.vmi_key();
            let Some(record) = state.vmis.get(&key) else {
                continue;
            };
            if record.attempts == 0
                || m.name != migration_name(&s.node.name, state, &m.vmi_name, record.attempts)
                || record.outcome != VmiOutcome::Migrating
            {
                continue;
            }
            let duration = match (m.created_at, m.finished_at) {
                (Some(a), Some(b)) => (b - a).to_std().ok(),
                _ => None,
            };
            let record = state.vmis.get_mut(&key).expect("checked above");
            match m.phase {
                MigrationPhase::Unfinished => {}
                MigrationPhase::Succeeded => {
                    record.outcome = VmiOutcome::Migrated;
                    self.observations.push(Observation::MigrationFinished {
                        result: MigrationResult::Succeeded,
                        duration,
                    });
                    self.actions.push(
                        Action::event(
                            "MigrationSucceeded",
                            format!("VMI {key} live-migrated ({})", m.name),
                        )
                        .about_vmi(&m.namespace, &m.vmi_name),
                    );
                }
                MigrationPhase::Failed => {
                    self.observations.push(Observation::MigrationFinished {
                        result: MigrationResult::Failed,
                        duration,
                    });
                    let attempts = record.attempts;
                    if attempts < max_attempts {
                        let retry_at = s.now
                            + chrono_duration(backoff(
                                self.config.migration.retry_backoff.get(),
                                self.config.migration.retry_backoff_max.get(),
                                attempts,
                                &key,
                            ));
                        record.outcome = VmiOutcome::RetryWaiting;
                        record.retry_at = Some(retry_at);
                        self.actions.push(
                            Action::warning(
                                "MigrationFailed",
                                format!(
                                    "migration {} of VMI {key} failed (attempt {attempts} of {max_attempts}); retrying at {}",
                                    m.name,
                                    retry_at.format("%H:%M:%S")
                                ),
                            )
                            .about_vmi(&m.namespace, &m.vmi_name),
                        );
                    } else {
                        record.outcome = VmiOutcome::Waiting;
                        self.actions.push(
                            Action::warning(
                                "MigrationFailed",
                                format!(
                                    "migration {} of VMI {key} failed; all {max_attempts} attempts used, applying the non-migratable policy",
                                    m.name
                                ),
                            )
                            .about_vmi(&m.namespace, &m.vmi_name),
                        );
                    }
                }
            }
        }
    }

    /// Moves every VMI off the node; returns how many are still on it.
    fn handle_vmis(&mut self, state: &mut DrainState) -> usize {
        let s = self.s;
        let now = s.now;
        let mut active: Vec<&VmiView> = s.vmis.iter().filter(|v| !v.finished).collect();
        active.sort_by_key(|v| v.key());
        let active_keys: BTreeSet<String> = active.iter().map(|v| v.key()).collect();

        // VMIs that have left the node are done, whichever way they went; a VMI that left
        // while the watch cache still shows vacate's migration unfinished is finished by
        // `follow_migrations` once the migration's result arrives, so its metrics are kept.
        let awaiting_result: BTreeSet<String> = state
            .vmis
            .iter()
            .filter(|(_, r)| r.outcome == VmiOutcome::Migrating && r.attempts > 0)
            .filter(|(key, r)| {
                s.migrations.iter().any(|m| {
                    m.ours
                        && m.phase == MigrationPhase::Unfinished
                        && m.vmi_key() == **key
                        && m.name == migration_name(&s.node.name, state, &m.vmi_name, r.attempts)
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut lagging = 0;
        for (key, record) in state.vmis.iter_mut() {
            if active_keys.contains(key) || record.outcome.is_done() {
                continue;
            }
            if awaiting_result.contains(key) {
                lagging += 1;
                continue;
            }
            record.outcome = match record.outcome {
                VmiOutcome::Migrating | VmiOutcome::MigratingExternally => VmiOutcome::Migrated,
                VmiOutcome::Evicting => VmiOutcome::Evicted,
                VmiOutcome::Restarting => VmiOutcome::Restarted,
                _ => VmiOutcome::Left,
            };
            record.retry_at = None;
        }

        let unfinished = |vmi: &VmiView| {
            s.migrations.iter().any(|m| {
                m.phase == MigrationPhase::Unfinished
                    && m.namespace == vmi.namespace
                    && m.vmi_name == vmi.name
            })
        };
        // Every unfinished migration off this node takes a slot, also one whose VMI already
        // shows the target node while KubeVirt finishes it (KubeVirt counts it outbound).
        let node_in_flight = s
            .migrations
            .iter()
            .filter(|m| m.phase == MigrationPhase::Unfinished)
            .map(|m| (&m.namespace, &m.name))
            .collect::<BTreeSet<_>>()
            .len() as u32;

        let mut candidates: Vec<(&VmiView, bool)> = Vec::new();
        for vmi in &active {
            let key = vmi.key();
            let current = state
                .vmis
                .get(&key)
                .filter(|r| r.attempts > 0)
                .map(|r| migration_name(&s.node.name, state, &vmi.name, r.attempts));
            let record = state.vmis.entry(key.clone()).or_default();
            if unfinished(vmi) {
                // Ours or someone else's (KubeVirt's evacuation): either way, wait for it.
                let ours = s.migrations.iter().any(|m| {
                    m.phase == MigrationPhase::Unfinished
                        && m.vmi_key() == key
                        && Some(&m.name) == current.as_ref()
                });
                if !ours {
                    record.outcome = VmiOutcome::MigratingExternally;
                }
                continue;
            }
            match record.outcome {
                VmiOutcome::Evicting | VmiOutcome::Restarting => continue,
                VmiOutcome::Migrated | VmiOutcome::Evicted | VmiOutcome::Restarted => {
                    // Finished, but the VMI has not been seen leaving yet.
                    continue;
                }
                VmiOutcome::RetryWaiting => match record.retry_at {
                    Some(at) if at > now => {
                        self.wake_at(at);
                        self.waiting_for
                            .get_or_insert_with(|| format!("retry of VMI {key}'s migration"));
                        continue;
                    }
                    _ => {
                        record.outcome = VmiOutcome::Waiting;
                        record.retry_at = None;
                    }
                },
                VmiOutcome::Migrating => {
                    // State says a migration was created, yet none is running: either it is
                    // not in the watch cache yet, or a create was interrupted. Repeating the
                    // create under the same name is safe either way.
                    candidates.push((vmi, true));
                    continue;
                }
                VmiOutcome::MigratingExternally => {
                    // That migration ended and the VMI is still here: take it up again.
                    record.outcome = VmiOutcome::Waiting;
                }
                VmiOutcome::Waiting | VmiOutcome::Blocked | VmiOutcome::Left => {}
            }
            let exhausted = record.attempts >= self.config.migration.max_attempts;
            let strategy_allows = vmi.eviction_strategy != EvictionStrategy::None;
            match (&vmi.migratability, strategy_allows, exhausted) {
                (Migratability::Migratable, true, false) => candidates.push((vmi, false)),
                (Migratability::Unknown, true, false) => {
                    self.waiting_for.get_or_insert_with(|| {
                        format!("KubeVirt to report whether VMI {key} can live-migrate")
                    });
                }
                (migratability, _, _) => {
                    let why = if exhausted {
                        format!("{} migration attempts failed", record.attempts)
                    } else if !strategy_allows {
                        "its evictionStrategy is None".to_string()
                    } else if let Migratability::NotMigratable { reason, message } = migratability {
                        format!("{reason}: {message}")
                    } else {
                        "it cannot live-migrate".to_string()
                    };
                    self.fallback(state, vmi, why);
                    if self.state_failed(state) {
                        return active.len();
                    }
                }
            }
        }
        self.start_migrations(state, candidates, node_in_flight);
        active.len() + lagging
    }

    /// Creates the next batch of migrations, within every limit.
    fn start_migrations(
        &mut self,
        state: &mut DrainState,
        candidates: Vec<(&VmiView, bool)>,
        node_in_flight: u32,
    ) {
        if candidates.is_empty() {
            return;
        }
        let s = self.s;
        let m = &self.config.migration;
        // Repeats of interrupted creates are not a new batch, but each takes a slot: no
        // migration of theirs is counted in flight yet.
        let (repeats, fresh): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|(_, r)| *r);
        let node_in_flight = node_in_flight + repeats.len() as u32;
        let cluster_in_flight = s.cluster.migrations_in_flight + repeats.len() as u32;
        for (vmi, _) in repeats {
            let record = &state.vmis[&vmi.key()];
            let name = migration_name(&s.node.name, state, &vmi.name, record.attempts);
            self.actions.push(Action::CreateMigration {
                namespace: vmi.namespace.clone(),
                name,
                vmi: vmi.name.clone(),
            });
        }
        if fresh.is_empty() {
            return;
        }
        let node_cap = m.max_in_flight_per_node.min(s.cluster.kubevirt_per_node);
        let cluster_cap = m.max_in_flight_cluster.min(s.cluster.kubevirt_per_cluster);
        let node_free = node_cap.saturating_sub(node_in_flight);
        let cluster_free = cluster_cap.saturating_sub(cluster_in_flight);
        if let Some(last) = state.last_batch_at {
            let next = last + chrono_duration(m.batch_interval.get());
            if next > s.now {
                self.wake_at(next);
                self.waiting_for = Some(format!(
                    "the next migration batch ({} VMIs to go)",
                    fresh.len()
                ));
                return;
            }
        }
        // Largest first (longest processing time first): with P slots the node empties near
        // max(total / P, largest) instead of leaving a big VM to start last.
        let mut fresh = fresh;
        fresh.sort_by(|(a, _), (b, _)| b.memory.cmp(&a.memory).then_with(|| a.key().cmp(&b.key())));
        let slots = m.batch_size.min(node_free).min(cluster_free) as usize;
        if slots == 0 {
            self.waiting_for = Some(if node_free == 0 {
                format!(
                    "a migration slot on the node ({node_in_flight} of {node_cap} in flight; {} VMIs to go)",
                    fresh.len()
                )
            } else {
                format!(
                    "a migration slot in the cluster ({cluster_in_flight} of {cluster_cap} in flight; {} VMIs to go)",
                    fresh.len()
                )
            });
            return;
        }
        for (vmi, _) in fresh.into_iter().take(slots) {
            let key = vmi.key();
            let attempt = state.vmis[&key].attempts + 1;
            let name = migration_name(&s.node.name, state, &vmi.name, attempt);
            let record = state.vmis.get_mut(&key).expect("entry created above");
            record.attempts = attempt;
            record.outcome = VmiOutcome::Migrating;
            record.retry_at = None;
            self.actions.push(Action::CreateMigration {
                namespace: vmi.namespace.clone(),
                name: name.clone(),
                vmi: vmi.name.clone(),
            });
            self.actions.push(
                Action::event(
                    "MigrationStarted",
                    format!("live-migrating VMI {key} (attempt {attempt}, migration {name})"),
                )
                .about_vmi(&vmi.namespace, &vmi.name),
            );
        }
        state.last_batch_at = Some(s.now);
    }

    /// Applies the non-migratable policy to one VMI.
    fn fallback(&mut self, state: &mut DrainState, vmi: &VmiView, why: String) {
        let key = vmi.key();
        let policy = &self.config.non_migratable;
        let record = state.vmis.get(&key).cloned().unwrap_or_default();
        match policy.policy {
            NonMigratablePolicy::Block => {
                state.vmis.entry(key.clone()).or_default().outcome = VmiOutcome::Blocked;
                self.block(
                    BlockReason::NonMigratableVmi,
                    format!(
                        "VMI {key} cannot live-migrate ({why}) and non_migratable.policy is \"block\""
                    ),
                );
            }
            NonMigratablePolicy::Restart => self.restart(state, vmi, &why),
            NonMigratablePolicy::Evict if record.eviction_refused => {
                match policy.on_eviction_refused {
                    EvictionRefusedPolicy::Restart => self.restart(state, vmi, &why),
                    EvictionRefusedPolicy::Fail => {
                        let message = format!(
                            "KubeVirt refused to evict VMI {key}, which cannot live-migrate ({why}), and non_migratable.on_eviction_refused is \"fail\""
                        );
                        self.fail(state.clone(), message);
                    }
                }
            }
            NonMigratablePolicy::Evict => {
                let Some(pod) = &vmi.launcher_pod else {
                    self.waiting_for
                        .get_or_insert_with(|| format!("VMI {key}'s virt-launcher pod"));
                    return;
                };
                // The outcome becomes Evicting when the eviction is accepted (record_outcome).
                self.actions.push(Action::EvictPod {
                    namespace: vmi.namespace.clone(),
                    name: pod.clone(),
                    vmi: Some(vmi.name.clone()),
                });
                self.actions.push(
                    Action::event(
                        "VmiEvicted",
                        format!("evicting VMI {key} (virt-launcher pod {pod}): {why}"),
                    )
                    .about_vmi(&vmi.namespace, &vmi.name),
                );
            }
        }
    }

    fn restart(&mut self, state: &mut DrainState, vmi: &VmiView, why: &str) {
        let key = vmi.key();
        let record = state.vmis.entry(key.clone()).or_default();
        if !vmi.restartable {
            record.outcome = VmiOutcome::Blocked;
            self.block(
                BlockReason::EvictionRefused,
                format!(
                    "VMI {key} cannot live-migrate ({why}) and has no VirtualMachine that would start it again; move or stop it by hand"
                ),
            );
            return;
        }
        if vmi.deleting {
            record.outcome = VmiOutcome::Restarting;
            return;
        }
        // The outcome becomes Restarting when the stop is accepted (record_outcome).
        self.actions.push(Action::RestartVmi {
            namespace: vmi.namespace.clone(),
            name: vmi.name.clone(),
        });
        self.actions.push(
            Action::event(
                "VmiRestarted",
                format!(
                    "stopping VMI {key} so that its VirtualMachine starts it on another node: {why}"
                ),
            )
            .about_vmi(&vmi.namespace, &vmi.name),
        );
    }

    /// Evicts the remaining pods; returns how many still hold up the drain. While VMIs are
    /// still on the node (`vmis_remain`), pods that must outlast them wait.
    fn handle_pods(&mut self, state: &mut DrainState, vmis_remain: bool) -> usize {
        let s = self.s;
        let now = s.now;
        let mut pods: Vec<&PodView> = s.pods.iter().collect();
        pods.sort_by_key(|p| p.key());
        let present: BTreeSet<(String, String)> =
            pods.iter().map(|p| (p.key(), p.uid.clone())).collect();
        // Pods that are gone (or replaced by a new pod of the same name) were evicted.
        for (key, record) in state.pods.iter_mut() {
            if record.outcome != PodOutcome::Evicted
                && !present.contains(&(key.clone(), record.uid.clone()))
            {
                record.outcome = PodOutcome::Evicted;
                record.retry_at = None;
            }
        }
        let mut left = 0;
        for pod in pods {
            let key = pod.key();
            match classify(pod, &self.config.pods) {
                PodVerdict::Skip(_) => {}
                PodVerdict::Block(reason, message) => {
                    left += 1;
                    let record = state.pods.entry(key).or_default();
                    record.uid = pod.uid.clone();
                    record.outcome = PodOutcome::Blocked;
                    self.block(reason, message);
                }
                PodVerdict::Evict => {
                    left += 1;
                    let record = state.pods.entry(key.clone()).or_default();
                    if record.uid != pod.uid {
                        *record = PodRecord {
                            uid: pod.uid.clone(),
                            ..PodRecord::default()
                        };
                    }
                    if pod.deleting {
                        record.outcome = PodOutcome::Evicting;
                        record.retry_at = None;
                        continue;
                    }
                    if vmis_remain && self.waits_for_vmis(pod) {
                        record.outcome = PodOutcome::Waiting;
                        self.waiting_for.get_or_insert_with(|| {
                            format!("the VMIs to leave before pod {key} is evicted")
                        });
                        continue;
                    }
                    match (record.outcome, record.retry_at) {
                        (PodOutcome::RetryWaiting, Some(at)) if at > now => {
                            let message = record.last_refusal.clone().unwrap_or_default();
                            let reason = if record.rejected {
                                BlockReason::EvictionRejected
                            } else {
                                BlockReason::PodDisruptionBudget
                            };
                            self.wake_at(at);
                            self.block(
                                reason,
                                format!(
                                    "eviction of pod {key} refused {} times, retrying at {}: {message}",
                                    record.retries,
                                    at.format("%H:%M:%S")
                                ),
                            );
                        }
                        (PodOutcome::Evicting, _) => {
                            // Accepted; the deletion has not reached the watch cache yet.
                        }
                        _ => {
                            // Evicting once the eviction is accepted (record_outcome).
                            record.outcome = PodOutcome::Waiting;
                            record.retry_at = None;
                            self.actions.push(Action::EvictPod {
                                namespace: pod.namespace.clone(),
                                name: pod.name.clone(),
                                vmi: None,
                            });
                        }
                    }
                }
            }
        }
        left
    }

    /// Pods evicted only once the VMIs are gone: those matching `pods.evict_after_vmis`, and
    /// pods controlled by a pod (a virt-launcher's hotplug volume pods, which KubeVirt
    /// refuses to evict while their VMI runs and removes once it has left).
    fn waits_for_vmis(&self, pod: &PodView) -> bool {
        let after = &self.config.pods.evict_after_vmis;
        pod.controller_kind.as_deref() == Some("Pod")
            || (!after.is_empty() && after.matches(&pod.labels))
    }

    fn finish_drain(&mut self, mut state: DrainState) {
        let now = self.s.now;
        state.set_phase(Phase::Drained, now);
        state.drained_at = Some(now);
        state.blocked = None;
        state.waiting_for = None;
        let took = (now - state.started_at).to_std().unwrap_or_default();
        self.actions.push(Action::SetDrainedLabel(true));
        self.actions.push(Action::event(
            "Drained",
            format!(
                "node drained in {}: {}",
                humantime::format_duration(Duration::from_secs(took.as_secs())),
                summary(&state)
            ),
        ));
        self.observations.push(Observation::DrainFinished {
            result: DrainResult::Drained,
            duration: took,
        });
        self.blocked = None;
        self.waiting_for = None;
        self.state = Some(state);
    }

    fn fail(&mut self, mut state: DrainState, reason: String) {
        let s = self.s;
        let now = s.now;
        self.cancel_own_migrations();
        state.set_phase(Phase::Failed, now);
        state.failure = Some(reason.clone());
        self.actions
            .push(Action::warning("DrainFailed", reason.clone()));
        if self.config.drain.uncordon_on_failure && state.cordoned_by_vacate && s.node.unschedulable
        {
            self.actions.push(Action::Uncordon);
            self.actions.push(Action::event(
                "Uncordoned",
                "uncordoned after the failed drain (drain.uncordon_on_failure)",
            ));
        }
        self.observations.push(Observation::DrainFinished {
            result: DrainResult::Failed,
            duration: (now - state.started_at).to_std().unwrap_or_default(),
        });
        self.blocked = None;
        self.waiting_for = None;
        self.state = Some(state);
    }

    /// The request was removed before the drain finished.
    fn abort(&mut self, state: DrainState) {
        let s = self.s;
        let cancelled = self.cancel_own_migrations();
        let mut message = format!(
            "maintenance request removed during the drain; cancelled {cancelled} migration(s)"
        );
        self.release_node(&state, &mut message);
        self.actions.push(Action::event("DrainAborted", message));
        self.observations.push(Observation::DrainFinished {
            result: DrainResult::Aborted,
            duration: (s.now - state.started_at).to_std().unwrap_or_default(),
        });
        self.clear = true;
    }

    /// The request was removed after the drain finished (or failed).
    fn end(&mut self, mut state: DrainState) {
        let s = self.s;
        if state.phase != Phase::Failed && state.cordoned_by_vacate && !s.node.ready {
            state.set_phase(Phase::Uncordoning, s.now);
            self.block(
                BlockReason::NodeNotReady,
                "maintenance is over; waiting for the node to become Ready before uncordoning",
            );
            self.state = Some(state);
            return;
        }
        self.cancel_own_migrations();
        let mut message = "maintenance is over".to_string();
        self.release_node(&state, &mut message);
        self.actions
            .push(Action::event("MaintenanceEnded", message));
        self.clear = true;
    }

    /// The node is drained and the request stands: wait for what ends the maintenance
    /// (an upgrade reaching its version, a schedule's hold or completion label), or for
    /// someone to remove the request.
    fn hold_drained(&mut self, mut state: DrainState) {
        let s = self.s;
        let now = s.now;
        if !s.node.drained_label {
            self.actions.push(Action::SetDrainedLabel(true));
        }
        state.set_phase(Phase::Drained, now);
        state.waiting_for = None;
        let drained_at = state.drained_at.unwrap_or(state.phase_since);
        if let Some(version) = s.node.upgrade_to.clone() {
            if s.node.ready && version_reached(&s.node.kubelet_version, &version) {
                self.actions.push(Action::event(
                    "Upgraded",
                    format!(
                        "the kubelet reports {} and the node is Ready",
                        s.node.kubelet_version
                    ),
                ));
                self.actions.push(Action::RemoveLabel(
                    self.config.upgrade.request_label.clone(),
                ));
                if s.node.request_value.is_none() {
                    self.end(state);
                    return;
                }
            } else {
                let deadline = drained_at + chrono_duration(self.config.upgrade.timeout.get());
                let seen = if s.node.ready {
                    format!("it reports {}", s.node.kubelet_version)
                } else {
                    format!("it reports {} and is not Ready", s.node.kubelet_version)
                };
                if now >= deadline {
                    let message = format!(
                        "the node did not report kubelet {version} and Ready within {} of being drained ({seen}; upgrade.timeout)",
                        self.config.upgrade.timeout
                    );
                    self.fail(state, message);
                    return;
                }
                self.wake_at(deadline);
                state.waiting_for = Some(format!("the upgrade to kubelet {version} ({seen})"));
                self.state = Some(state);
                return;
            }
        }
        if let Some(schedule) = s
            .node
            .request_value
            .as_deref()
            .and_then(|v| self.config.schedule_of(v))
        {
            let until = &schedule.until_label;
            let held_until = drained_at + chrono_duration(schedule.hold.get());
            let done = if until.is_empty() {
                now >= held_until
            } else {
                s.node.labels.contains_key(until)
            };
            if done {
                self.actions
                    .push(Action::RemoveLabel(self.config.node.request_label.clone()));
                if !until.is_empty() {
                    self.actions.push(Action::RemoveLabel(until.clone()));
                }
                self.end(state);
                return;
            }
            state.waiting_for = Some(if until.is_empty() {
                self.wake_at(held_until);
                format!(
                    "the end of schedule {}'s hold at {}",
                    schedule.name,
                    held_until.format("%H:%M:%S")
                )
            } else {
                format!("label {until} that marks the maintenance done")
            });
        }
        self.state = Some(state);
    }

    fn release_node(&mut self, state: &DrainState, message: &mut String) {
        let node = &self.s.node;
        if state.cordoned_by_vacate && node.unschedulable {
            self.actions.push(Action::Uncordon);
            self.actions
                .push(Action::event("Uncordoned", "uncordoned by vacate"));
            message.push_str("; uncordoned");
        } else if node.unschedulable {
            message.push_str("; left cordoned, as it was cordoned before vacate began");
        }
        if node.drained_label {
            self.actions.push(Action::SetDrainedLabel(false));
        }
    }

    fn cancel_own_migrations(&mut self) -> usize {
        let mut cancelled = 0;
        for m in self
            .s
            .migrations
            .iter()
            .filter(|m| m.ours && m.phase == MigrationPhase::Unfinished && !m.deleting)
        {
            cancelled += 1;
            self.actions.push(Action::CancelMigration {
                namespace: m.namespace.clone(),
                name: m.name.clone(),
            });
            self.observations.push(Observation::MigrationFinished {
                result: MigrationResult::Cancelled,
                duration: None,
            });
        }
        cancelled
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

    fn finish(self) -> Plan {
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
                let next = if Some(&state) == self.original.as_ref() {
                    NextState::Unchanged
                } else {
                    NextState::Write(Box::new(state))
                };
                (next, phase)
            }
            None if self.clear => (NextState::Clear, Phase::Idle),
            None => (NextState::Unchanged, Phase::Idle),
        };
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

/// Folds the result of one action into the state written after the actions ran.
pub fn record_outcome(
    state: &mut DrainState,
    action: &Action,
    result: &ActionResult,
    now: DateTime<Utc>,
    config: &Config,
) {
    match (action, result) {
        (
            Action::EvictPod {
                namespace,
                vmi: Some(vmi),
                ..
            },
            ActionResult::Done | ActionResult::Gone,
        ) => {
            state
                .vmis
                .entry(format!("{namespace}/{vmi}"))
                .or_default()
                .outcome = VmiOutcome::Evicting;
        }
        (Action::RestartVmi { namespace, name }, ActionResult::Done | ActionResult::Gone) => {
            state
                .vmis
                .entry(format!("{namespace}/{name}"))
                .or_default()
                .outcome = VmiOutcome::Restarting;
        }
        (
            Action::EvictPod {
                namespace,
                name,
                vmi: None,
            },
            ActionResult::Done,
        ) => {
            if let Some(record) = state.pods.get_mut(&format!("{namespace}/{name}")) {
                record.outcome = PodOutcome::Evicting;
            }
        }
        (
            Action::EvictPod {
                namespace,
                vmi: Some(vmi),
                ..
            },
            ActionResult::Refused(_) | ActionResult::Rejected(_),
        ) => {
            let record = state.vmis.entry(format!("{namespace}/{vmi}")).or_default();
            record.eviction_refused = true;
            record.outcome = VmiOutcome::Waiting;
        }
        (
            Action::EvictPod {
                namespace,
                name,
                vmi: None,
            },
            ActionResult::Refused(message) | ActionResult::Rejected(message),
        ) => {
            let rejected = matches!(result, ActionResult::Rejected(_));
            let key = format!("{namespace}/{name}");
            let record = state.pods.entry(key.clone()).or_default();
            record.rejected = rejected;
            record.retries += 1;
            let wait = backoff(
                config.pods.eviction_backoff.get(),
                config.pods.eviction_backoff_max.get(),
                record.retries,
                &key,
            );
            record.outcome = PodOutcome::RetryWaiting;
            record.retry_at = Some(now + chrono_duration(wait));
            record.last_refusal = Some(message.clone());
            if state.blocked.is_none() {
                state.blocked = Some(Blocker {
                    reason: if rejected {
                        BlockReason::EvictionRejected
                    } else {
                        BlockReason::PodDisruptionBudget
                    },
                    message: format!("eviction of pod {key} refused: {message}"),
                });
            }
        }
        (
            Action::EvictPod {
                namespace,
                name,
                vmi: None,
            },
            ActionResult::Gone,
        ) => {
            if let Some(record) = state.pods.get_mut(&format!("{namespace}/{name}")) {
                record.outcome = PodOutcome::Evicted;
            }
        }
        (
            Action::CreateMigration { namespace, vmi, .. },
            ActionResult::Refused(_) | ActionResult::Rejected(_),
        ) => {
            // KubeVirt's admission refused the migration (e.g. another one is running, or
            // the VMI stopped being migratable): count it as a failed attempt.
            let key = format!("{namespace}/{vmi}");
            let record = state.vmis.entry(key.clone()).or_default();
            record.outcome = VmiOutcome::RetryWaiting;
            record.retry_at = Some(
                now + chrono_duration(backoff(
                    config.migration.retry_backoff.get(),
                    config.migration.retry_backoff_max.get(),
                    record.attempts,
                    &key,
                )),
            );
        }
        _ => {}
    }
}

/// Exponential backoff with up to 50 % jitter. The jitter is derived from the object and
/// the attempt, so the planner stays deterministic while retries of different pods spread out.
pub fn backoff(base: Duration, max: Duration, attempt: u32, key: &str) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let raw = base.saturating_mul(1u32 << exponent).min(max);
    let mut hasher = DefaultHasher::new();
    (key, attempt).hash(&mut hasher);
    let jitter = (hasher.finish() % 1000) as f64 / 2000.0;
    raw.mul_f64(1.0 + jitter).min(max.max(base))
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// "8/8 VMIs (6 migrated, 1 evicted, 1 restarted), 5/5 pods evicted".
pub fn summary(state: &DrainState) -> String {
    let count = |o: VmiOutcome| state.vmis.values().filter(|r| r.outcome == o).count();
    format!(
        "{}/{} VMIs done ({} migrated, {} evicted, {} restarted, {} left on their own), {}/{} pods evicted",
        state.vmis_done(),
        state.vmis.len(),
        count(VmiOutcome::Migrated),
        count(VmiOutcome::Evicted),
        count(VmiOutcome::Restarted),
        count(VmiOutcome::Left),
        state.pods_done(),
        state.pods.len(),
    )
}

fn progress(state: &DrainState) -> String {
    format!(
        "{}/{} VMIs, {}/{} pods",
        state.vmis_done(),
        state.vmis.len(),
        state.pods_done(),
        state.pods.len()
    )
}
