//! A node's life: a request starts a drain (or waits in Pending for a window or the start
//! gate), the drain runs until the node is empty, holds while the maintenance lasts, and ends
//! with the cordon lifted when vacate set it. Aborts, failures and upgrades branch off here.

use super::outcomes::progress;
use super::*;

impl Planner<'_> {
    pub(super) fn run(&mut self) {
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
            StateAnnotation::Valid(state) => {
                let mut state = (**state).clone();
                self.follow_cancels(&mut state);
                Some(state)
            }
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
                    // A drain aborted at a window's close may not have lifted its cordon yet;
                    // a drain aborted earlier gave the node back and follows its cancels.
                    let following = state.phase == Phase::Idle && state.cancels_pending();
                    let mut note = String::new();
                    self.keep_following_cancels(state, &mut note);
                    if !note.is_empty() && !following {
                        self.actions.push(Action::event(
                            "MaintenanceEnded",
                            format!("the request was removed before the drain began{note}"),
                        ));
                    }
                }
                Phase::Cordoned | Phase::Migrating | Phase::Evicting => self.abort(state),
                Phase::Drained | Phase::Uncordoning | Phase::Failed => self.end(state),
            },
        }
    }

    /// A request is seen: wait for the start gate, then cordon and begin.
    pub(super) fn start(&mut self, attempt: u32, cordoned_by_vacate_before: bool) {
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
            _ => s.start_gate.closed(),
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
        self.observations.push(Observation::DrainStarted);
        self.drain(state, true);
    }

    pub(super) fn drain(&mut self, mut state: DrainState, just_cordoned: bool) {
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
            state.eta = eta::predicted_end(s, self.config);
        } else {
            if state.eta.is_none_or(|eta| eta > now) {
                // The migrations are over: their end is known.
                state.eta = Some(now);
            }
            if pods_left > 0 {
                state.set_phase(Phase::Evicting, now);
            } else {
                self.finish_drain(state);
                return;
            }
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
    pub(super) fn pend(
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
    pub(super) fn clear_fulfilled_upgrade(&mut self, version: &str, had_state: bool) {
        let node = &self.s.node;
        let mut note = String::new();
        if let Some(state) = node.state.valid() {
            self.release_node(state, &mut note);
        }
        self.actions.push(Action::RemoveLabel(
            self.config.upgrade.request_label.clone(),
        ));
        self.actions.push(Action::event(
            "UpgradeNotNeeded",
            format!(
                "the kubelet already runs {} (requested {version}); cleared the upgrade request without draining{note}",
                node.kubelet_version
            ),
        ));
        self.clear = had_state;
    }

    /// A window closed during the drain and asks for drains to be aborted: cancel vacate's
    /// migrations, give the node back, and wait for the next window. Returns whether it did.
    pub(super) fn window_closed_abort(&mut self, state: &DrainState) -> bool {
        let s = self.s;
        let windows::Verdict::Closed {
            abort: true,
            next_open,
            message,
        } = windows::verdict(self.config, state.request.kind(), s.now)
        else {
            return false;
        };
        let mut state = state.clone();
        let cancelled = self.cancel_own_migrations(&mut state);
        let mut note = format!(
            "the maintenance window closed during the drain; cancelled {cancelled} migration(s)"
        );
        self.release_node(&state, &mut note);
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
        // The cancels are followed to their results while the node waits for the window.
        pending.vmis = state
            .vmis
            .into_iter()
            .filter(|(_, r)| r.outcome == VmiOutcome::Cancelling)
            .collect();
        self.state = Some(pending);
        if let Some(at) = next_open {
            self.wake_at(at);
        }
        self.block(BlockReason::OutsideWindow, message);
        true
    }

    pub(super) fn state_failed(&self, state: &DrainState) -> bool {
        state.phase == Phase::Failed
            || self
                .state
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Failed)
    }

    pub(super) fn finish_drain(&mut self, mut state: DrainState) {
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

    pub(super) fn fail(&mut self, mut state: DrainState, reason: String) {
        let s = self.s;
        let now = s.now;
        // A drain that gives up starts nothing: the migrations, evictions and stops this
        // plan was about to start are withdrawn (a timeout found while VMIs waited for a
        // slot, a refusal found after other VMIs were evicted), and vacate's migrations
        // that run are cancelled.
        self.actions.retain(|a| !a.starts_work());
        self.cancel_own_migrations(&mut state);
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
    pub(super) fn abort(&mut self, mut state: DrainState) {
        let s = self.s;
        let cancelled = self.cancel_own_migrations(&mut state);
        let mut message = format!(
            "maintenance request removed during the drain; cancelled {cancelled} migration(s)"
        );
        self.observations.push(Observation::DrainFinished {
            result: DrainResult::Aborted,
            duration: (s.now - state.started_at).to_std().unwrap_or_default(),
        });
        self.keep_following_cancels(state, &mut message);
        self.actions.push(Action::event("DrainAborted", message));
    }

    /// Gives the node back once maintenance is over; the state stays (phase Idle, the cordon
    /// no longer vacate's) only while migrations vacate cancelled have not shown their result.
    fn keep_following_cancels(&mut self, mut state: DrainState, message: &mut String) {
        self.release_node(&state, message);
        if state.cancels_pending() {
            state.set_phase(Phase::Idle, self.s.now);
            state.cordoned_by_vacate = false;
            self.state = Some(state);
        } else {
            self.clear = true;
        }
    }

    /// The request was removed after the drain finished (or failed).
    pub(super) fn end(&mut self, mut state: DrainState) {
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
        self.cancel_own_migrations(&mut state);
        let mut message = "maintenance is over".to_string();
        self.keep_following_cancels(state, &mut message);
        self.actions
            .push(Action::event("MaintenanceEnded", message));
    }

    /// The node is drained and the request stands: wait for what ends the maintenance
    /// (an upgrade reaching its version, a schedule's hold or completion label), or for
    /// someone to remove the request.
    pub(super) fn hold_drained(&mut self, mut state: DrainState) {
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

    pub(super) fn release_node(&mut self, state: &DrainState, message: &mut String) {
        let node = &self.s.node;
        if state.cordoned_by_vacate && node.unschedulable {
            // The event that ends the maintenance says so (`message`).
            self.actions.push(Action::Uncordon);
            message.push_str("; uncordoned");
        } else if node.unschedulable {
            message.push_str("; left cordoned, as it was cordoned before vacate began");
        }
        if node.drained_label {
            self.actions.push(Action::SetDrainedLabel(false));
        }
    }
}
