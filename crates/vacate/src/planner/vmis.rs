//! The VMIs of a draining node: follow vacate's migrations, start new ones largest first
//! within every limit, and apply the non-migratable policy to the VMIs that cannot move.

use super::*;

/// How soon a VMI waiting for a node outside the rollout to have a migration slot free
/// ([`Steer::Wait`]) is looked at again.
pub const STEER_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl Planner<'_> {
    /// Notes what became of vacate's own migrations since the last look.
    pub(super) fn follow_migrations(&mut self, state: &mut DrainState) {
        let s = self.s;
        let max_attempts = self.config.migration.max_attempts.get();
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
                    // No event of vacate's: KubeVirt records the migration on the VMI, and
                    // the node's Drained event counts the VMIs migrated.
                    record.outcome = VmiOutcome::Migrated;
                    self.observations.push(Observation::MigrationFinished {
                        result: MigrationResult::Succeeded,
                        duration,
                    });
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
    pub(super) fn handle_vmis(&mut self, state: &mut DrainState) -> usize {
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
                    self.waiting_for.get_or_insert_with(|| {
                        format!(
                            "a migration of VMI {key} that vacate did not start (KubeVirt's evacuation or a person's)"
                        )
                    });
                }
                continue;
            }
            if vmi.evacuating
                && matches!(
                    record.outcome,
                    VmiOutcome::Waiting
                        | VmiOutcome::MigratingExternally
                        | VmiOutcome::RetryWaiting
                )
            {
                // An eviction (vacate's or anyone's) handed the VMI to KubeVirt's evacuation,
                // which migrates it again after each failed attempt: evicting it again
                // would only be refused, and a migration of vacate's would race KubeVirt's.
                record.outcome = VmiOutcome::Evicting;
                record.retry_at = None;
            }
            match record.outcome {
                VmiOutcome::Evicting | VmiOutcome::Restarting => {
                    self.waiting_for.get_or_insert_with(|| {
                        format!("VMI {key} to leave the node (KubeVirt moves or stops it)")
                    });
                    continue;
                }
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
                VmiOutcome::Waiting
                | VmiOutcome::Blocked
                | VmiOutcome::Cancelling
                | VmiOutcome::Left => {}
            }
            if vmi.eviction_strategy == EvictionStrategy::Unrecognized {
                // What KubeVirt does with such a VMI on eviction is not known here: leave it
                // alone and say so rather than guess.
                record.outcome = VmiOutcome::Blocked;
                self.block(
                    BlockReason::NonMigratableVmi,
                    format!(
                        "VMI {key} has an evictionStrategy this vacate does not know; move it by hand or run a newer vacate"
                    ),
                );
                continue;
            }
            if vmi.eviction_strategy == EvictionStrategy::External {
                // KubeVirt leaves these to an external controller, which an eviction asks
                // (KubeVirt sets status.evacuationNodeName): vacate does not migrate them.
                self.request_evacuation(vmi);
                continue;
            }
            if !vmi.running {
                // A VMI still starting cannot be migrated yet (KubeVirt reports LiveMigratable
                // once its domain runs); it is handled once it runs.
                self.waiting_for.get_or_insert_with(|| {
                    format!("VMI {key} to start running before it can be moved")
                });
                continue;
            }
            let exhausted = record.attempts >= self.config.migration.max_attempts.get();
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
    pub(super) fn start_migrations(
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
            // The same migration again: to the node chosen when it was first written.
            self.actions.push(Action::CreateMigration {
                namespace: vmi.namespace.clone(),
                name,
                vmi: vmi.name.clone(),
                target: record.target.clone(),
            });
        }
        if fresh.is_empty() {
            return;
        }
        let (node_cap, cluster_cap) = s.cluster.migration_caps(self.config);
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
        let slots = m.batch_size.get().min(node_free).min(cluster_free) as usize;
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
        // Past the drain's deadline no batch starts: this plan fails the drain, and the
        // records keep saying which VMIs were still to go.
        if s.now >= state.started_at + chrono_duration(self.config.drain.timeout.get()) {
            self.waiting_for = Some(format!("{} VMIs to live-migrate", fresh.len()));
            return;
        }
        // One event when the migrations begin, on the node: the batches after it are told by
        // the metrics and `vacate status` (the Event API folds repeats into a count anyway).
        let first_batch = state.vmis.values().all(|r| r.attempts == 0);
        let to_go = fresh.len();
        let mut started = Vec::new();
        let mut slots_left = slots;
        for (vmi, _) in fresh {
            if slots_left == 0 {
                break;
            }
            let key = vmi.key();
            let previous = state.vmis[&key].target.clone();
            let target = match self.steer(vmi, previous.as_deref()) {
                Steer::To(target) => Some(target),
                Steer::KubeVirt(why) => {
                    if let Some(why) = why {
                        state.unsteered = Some(why);
                    }
                    None
                }
                Steer::Wait(why) => {
                    // The migrations that fill those nodes may be other nodes' (or ours,
                    // seen finished in the VMI before the migration): no event of this node
                    // need come when they end, so look again shortly.
                    self.wake_at(s.now + chrono_duration(STEER_RECHECK));
                    self.waiting_for.get_or_insert(why);
                    continue;
                }
            };
            slots_left -= 1;
            let attempt = state.vmis[&key].attempts + 1;
            let name = migration_name(&s.node.name, state, &vmi.name, attempt);
            let record = state.vmis.get_mut(&key).expect("entry created above");
            record.attempts = attempt;
            record.outcome = VmiOutcome::Migrating;
            record.retry_at = None;
            record.target = target.clone();
            self.actions.push(Action::CreateMigration {
                namespace: vmi.namespace.clone(),
                name: name.clone(),
                vmi: vmi.name.clone(),
                target,
            });
            started.push(if attempt > 1 {
                format!("{key} (attempt {attempt}, {name})")
            } else {
                format!("{key} ({name})")
            });
        }
        if started.is_empty() {
            return;
        }
        if first_batch {
            self.actions.push(Action::event(
                "MigrationStarted",
                format!(
                    "live-migrating {to_go} VMI{}, largest first, {slots} at a time; first: {}",
                    if to_go == 1 { "" } else { "s" },
                    started.join(", ")
                ),
            ));
        }
        state.last_batch_at = Some(s.now);
    }

    /// Where one migration goes during a rollout: the node outside the rollout (or done
    /// with it) with the most memory left among those with room for the VMI and fewer
    /// migrations coming in than `migration.max_inbound_per_node`; not `avoid`, the node the
    /// VMI's last attempt was sent to. When every node with room is at its inbound limit the
    /// VMI waits; when none has room, KubeVirt places it (it may then land on a node that
    /// drains later and move again).
    fn steer(&mut self, vmi: &VmiView, avoid: Option<&str>) -> Steer {
        let own = self.s.node.name.as_str();
        match &mut self.steering {
            Steering::Off => Steer::KubeVirt(None),
            Steering::Unavailable(why) => Steer::KubeVirt(Some(why.clone())),
            Steering::On { .. } if vmi.placement_rules => Steer::KubeVirt(Some(format!(
                "VMI {} has placement rules of its own (required affinity or topology \
                 spread): KubeVirt places it",
                vmi.key()
            ))),
            Steering::On {
                targets,
                max_inbound,
            } => {
                let workload = capacity::Workload {
                    name: vmi.key(),
                    requests: vmi.requests,
                    node_selector: vmi.node_selector.clone(),
                };
                let room = |t: &SteerTarget| {
                    t.room.name != own
                        && Some(t.hostname.as_str()) != avoid
                        && t.room.fits(&workload)
                };
                let best = targets
                    .iter_mut()
                    .filter(|t| room(t) && t.inbound < *max_inbound)
                    .max_by(|a, b| {
                        (a.room.free.memory_bytes, &b.room.name)
                            .cmp(&(b.room.free.memory_bytes, &a.room.name))
                    });
                if let Some(target) = best {
                    target.room.take(&workload);
                    target.inbound += 1;
                    return Steer::To(target.hostname.clone());
                }
                if targets.iter().any(room) {
                    return Steer::Wait(format!(
                        "a node outside the rollout to take VMI {} (each has {max_inbound} \
                         migrations coming in, migration.max_inbound_per_node)",
                        vmi.key()
                    ));
                }
                Steer::KubeVirt(Some(format!(
                    "no node outside the rollout has room for VMI {} (requests {}): KubeVirt \
                     places it, and it may move again",
                    vmi.key(),
                    vmi.requests
                )))
            }
        }
    }

    /// Applies the non-migratable policy to one VMI.
    pub(super) fn fallback(&mut self, state: &mut DrainState, vmi: &VmiView, why: String) {
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
                // The outcome becomes Evicting when the eviction is accepted (record_outcome).
                if self.evict_launcher(vmi, "VmiEvicted", |pod| {
                    format!("evicting VMI {key} (virt-launcher pod {pod}): {why}")
                }) {
                    self.waiting_for
                        .get_or_insert_with(|| format!("the eviction of VMI {key} ({why})"));
                }
            }
        }
    }

    /// Asks KubeVirt, through an eviction of the virt-launcher pod, to have a VMI with the
    /// External strategy moved by its external controller.
    fn request_evacuation(&mut self, vmi: &VmiView) {
        let key = vmi.key();
        self.evict_launcher(vmi, "EvacuationRequested", |pod| {
            format!(
                "VMI {key} has evictionStrategy External: evicting its virt-launcher pod {pod} so that KubeVirt hands it to the external controller"
            )
        });
    }

    /// Evicts a VMI's virt-launcher pod, with an event about the VMI; false while the pod is
    /// not known yet.
    fn evict_launcher(
        &mut self,
        vmi: &VmiView,
        reason: &'static str,
        message: impl FnOnce(&str) -> String,
    ) -> bool {
        let Some(pod) = &vmi.launcher_pod else {
            self.waiting_for
                .get_or_insert_with(|| format!("VMI {}'s virt-launcher pod", vmi.key()));
            return false;
        };
        self.actions.push(Action::EvictPod {
            namespace: vmi.namespace.clone(),
            name: pod.clone(),
            vmi: Some(vmi.name.clone()),
            kubevirt_answers: kubevirt_answers_eviction(vmi),
        });
        self.actions
            .push(Action::event(reason, message(pod)).about_vmi(&vmi.namespace, &vmi.name));
        true
    }

    pub(super) fn restart(&mut self, state: &mut DrainState, vmi: &VmiView, why: &str) {
        let key = vmi.key();
        let record = state.vmis.entry(key.clone()).or_default();
        if !vmi.restartable {
            record.outcome = VmiOutcome::Blocked;
            self.block(
                BlockReason::EvictionRefused,
                format!(
                    "VMI {key} cannot live-migrate ({why}) and has no VirtualMachine with runStrategy Always that would start it again elsewhere; move or stop it by hand"
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

    /// Asks KubeVirt to cancel vacate's unfinished migrations (by deleting them) and marks
    /// their VMIs `Cancelling` until the result is seen (`follow_cancels`). Returns how many
    /// migrations are being cancelled, those asked before included.
    pub(super) fn cancel_own_migrations(&mut self, state: &mut DrainState) -> usize {
        let s = self.s;
        let mut cancelled = 0;
        for m in s
            .migrations
            .iter()
            .filter(|m| m.ours && m.phase == MigrationPhase::Unfinished)
        {
            cancelled += 1;
            if !m.deleting {
                self.actions.push(Action::CancelMigration {
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                });
            }
            let key = m.vmi_key();
            let current = state.vmis.get(&key).is_some_and(|r| {
                r.attempts > 0
                    && !r.outcome.is_done()
                    && m.name == migration_name(&s.node.name, state, &m.vmi_name, r.attempts)
            });
            if let Some(record) = state.vmis.get_mut(&key).filter(|_| current) {
                record.outcome = VmiOutcome::Cancelling;
                record.retry_at = None;
            }
        }
        cancelled
    }

    /// Follows the migrations vacate cancelled to their end: a migration KubeVirt aborted
    /// (or removed before its hand-off) leaves its VMI where it was; one that finished before
    /// the cancel took moved its VMI, which is recorded as migrated. Returns how many
    /// cancels are still unresolved.
    pub(super) fn follow_cancels(&mut self, state: &mut DrainState) -> usize {
        let s = self.s;
        let mut pending = 0;
        let names: Vec<(String, String)> = state
            .vmis
            .iter()
            .filter(|(_, r)| r.outcome == VmiOutcome::Cancelling)
            .map(|(key, r)| {
                let vmi = key.split_once('/').map_or(key.as_str(), |(_, n)| n);
                (
                    key.clone(),
                    migration_name(&s.node.name, state, vmi, r.attempts),
                )
            })
            .collect();
        for (key, name) in names {
            let m = s
                .migrations
                .iter()
                .find(|m| m.ours && m.name == name && m.vmi_key() == key);
            let record = state.vmis.get_mut(&key).expect("collected above");
            let duration = m.and_then(|m| match (m.created_at, m.finished_at) {
                (Some(a), Some(b)) => (b - a).to_std().ok(),
                _ => None,
            });
            match m.map(|m| m.phase) {
                Some(MigrationPhase::Unfinished) => pending += 1,
                Some(MigrationPhase::Succeeded) => {
                    record.outcome = VmiOutcome::Migrated;
                    self.observations.push(Observation::MigrationFinished {
                        result: MigrationResult::Succeeded,
                        duration,
                    });
                    self.actions.push(Action::event(
                        "MigrationNotCancelled",
                        format!(
                            "migration {name} of VMI {key} finished before its cancel took effect; the VMI has moved"
                        ),
                    ));
                }
                Some(MigrationPhase::Failed) | None => {
                    record.outcome = VmiOutcome::Waiting;
                    self.observations.push(Observation::MigrationFinished {
                        result: MigrationResult::Cancelled,
                        duration: None,
                    });
                }
            }
        }
        if pending > 0 {
            self.waiting_for = Some(format!(
                "KubeVirt to resolve the cancel of {pending} migration(s)"
            ));
        }
        pending
    }
}

/// Name of the migration vacate creates for a VMI: recognisably vacate's, unique per node,
/// drain and attempt (two nodes' drains may start in the same second and meet the same VMI),
/// and the same every time it is computed, so a restarted vacate that repeats a create gets
/// `AlreadyExists` instead of a second migration.
pub fn migration_name(node: &str, state: &DrainState, vmi: &str, attempt: u32) -> String {
    // Stable across vacate versions, so a newer vacate computes the same names as the one
    // that started the drain.
    let drain = kubevirt_api::hash::fnv1a_32(&format!(
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

/// Whether KubeVirt's eviction webhook answers an eviction of the VMI's virt-launcher pod
/// itself (always with a 429) rather than letting it through: pod-eviction-admitter.go
/// (`admitLauncherPod`, v1.7.4 and v1.9.0) does for LiveMigrate (a VMI that cannot migrate
/// is refused), External, and LiveMigrateIfPossible when the VMI can migrate.
pub fn kubevirt_answers_eviction(vmi: &VmiView) -> bool {
    match vmi.eviction_strategy {
        EvictionStrategy::LiveMigrate | EvictionStrategy::External => true,
        EvictionStrategy::LiveMigrateIfPossible => vmi.migratability == Migratability::Migratable,
        EvictionStrategy::None | EvictionStrategy::Unrecognized => false,
    }
}

/// Where one migration goes.
enum Steer {
    /// To this node (its hostname label).
    To(String),
    /// Wherever KubeVirt places it; why, during a rollout.
    KubeVirt(Option<String>),
    /// Not now: every node that could take it is at its inbound limit.
    Wait(String),
}
