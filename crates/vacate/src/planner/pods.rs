//! The other pods of a draining node: evicted while the VMIs migrate, as `kubectl drain`
//! would, except those that must outlast the VMIs.

use super::*;

/// How long past its grace period a pod deleted on a node that is not Ready holds up the drain.
const STUCK_TERMINATING: Duration = Duration::from_secs(60);

impl Planner<'_> {
    /// Evicts the remaining pods; returns how many still hold up the drain. While VMIs are
    /// still on the node (`vmis_remain`), pods that must outlast them wait.
    pub(super) fn handle_pods(&mut self, state: &mut DrainState, vmis_remain: bool) -> usize {
        let s = self.s;
        let now = s.now;
        let mut pods: Vec<&PodView> = s.pods.iter().collect();
        pods.sort_by_key(|p| p.key());
        let present: BTreeSet<(String, String)> =
            pods.iter().map(|p| (p.key(), p.uid.clone())).collect();
        // Pods that are gone (or replaced by a new pod of the same name) were evicted: only
        // their count is kept.
        let before = state.pods.len();
        state.pods.retain(|key, record| {
            record.outcome != PodOutcome::Evicted
                && present.contains(&(key.clone(), record.uid.clone()))
        });
        state.pods_evicted += (before - state.pods.len()) as u32;
        // The virt-launcher pods of the VMIs on the node move with their VMIs. Any other
        // virt-launcher pod still running belongs to a VMI that runs elsewhere: the target of
        // a migration onto this node (scheduled before the cordon) or the source of one that
        // just left. The node is not empty until it has finished; a VMI that lands here is
        // moved on like the others.
        let launchers: BTreeSet<String> = s
            .vmis
            .iter()
            .filter_map(|v| {
                v.launcher_pod
                    .as_ref()
                    .map(|pod| format!("{}/{pod}", v.namespace))
            })
            .collect();
        let mut left = 0;
        for pod in pods {
            let key = pod.key();
            if pod.virt_launcher && !pod.finished && !launchers.contains(&key) {
                left += 1;
                self.waiting_for.get_or_insert_with(|| {
                    format!(
                        "virt-launcher pod {key}, of a VMI running elsewhere, to finish (a migration onto this node, or one just off it)"
                    )
                });
                continue;
            }
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
                        // A node that does not answer never confirms a deletion: past its
                        // grace period by STUCK_TERMINATING, such a pod no longer holds up the
                        // drain (kubectl drain's --skip-wait-for-delete-timeout).
                        let stuck = !s.node.ready
                            && pod
                                .delete_by
                                .is_some_and(|by| now >= by + chrono_duration(STUCK_TERMINATING));
                        if stuck {
                            left -= 1;
                            if record.outcome != PodOutcome::Evicted {
                                self.actions.push(Action::warning(
                                    "PodStuckTerminating",
                                    format!(
                                        "pod {key} was deleted but the node is not Ready and cannot confirm it; no longer waiting for it"
                                    ),
                                ));
                            }
                            record.outcome = PodOutcome::Evicted;
                            continue;
                        }
                        if let Some(by) = pod.delete_by.filter(|_| !s.node.ready) {
                            self.wake_at(by + chrono_duration(STUCK_TERMINATING));
                        }
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
                                kubevirt_answers: false,
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
    pub(super) fn waits_for_vmis(&self, pod: &PodView) -> bool {
        let after = &self.config.pods.evict_after_vmis;
        pod.controller_kind.as_deref() == Some("Pod")
            || (!after.is_empty() && after.matches(&pod.labels))
    }
}
