//! What the shell's actions came to, folded back into the state, and how the state reads.

use super::*;

/// Whether KubeVirt's 429 to a virt-launcher pod's eviction means it took the VMI over
/// rather than refused: pod-eviction-admitter.go (v1.7.4 and v1.9.0) answers "Eviction
/// triggered evacuation of VMI ..." when it marks the VMI, and "Evacuation in progress: ..."
/// when the VMI was marked already.
fn kubevirt_took_over(message: &str) -> bool {
    message.contains("Eviction triggered evacuation") || message.contains("Evacuation in progress")
}

/// Folds the result of one action into the state written after the actions ran. Returns
/// when the node must be planned again because of it (a refusal changes what comes next),
/// if that is sooner than anything the plan already waits for.
pub fn record_outcome(
    state: &mut DrainState,
    action: &Action,
    result: &ActionResult,
    now: DateTime<Utc>,
    config: &Config,
) -> Option<DateTime<Utc>> {
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
            None
        }
        (Action::RestartVmi { namespace, name }, ActionResult::Done | ActionResult::Gone) => {
            state
                .vmis
                .entry(format!("{namespace}/{name}"))
                .or_default()
                .outcome = VmiOutcome::Restarting;
            None
        }
        (
            Action::EvictPod {
                namespace,
                name,
                vmi: None,
                ..
            },
            ActionResult::Done,
        ) => {
            if let Some(record) = state.pods.get_mut(&format!("{namespace}/{name}")) {
                record.outcome = PodOutcome::Evicting;
            }
            None
        }
        (
            Action::EvictPod {
                namespace,
                vmi: Some(vmi),
                ..
            },
            ActionResult::Refused(message) | ActionResult::Rejected(message),
        ) => {
            let record = state.vmis.entry(format!("{namespace}/{vmi}")).or_default();
            if kubevirt_took_over(message) {
                // Not a refusal: KubeVirt marked the VMI and moves it itself (its evacuation
                // for LiveMigrate, an external controller for External). Wait for it to leave.
                record.outcome = VmiOutcome::Evicting;
                return None;
            }
            record.eviction_refused = true;
            record.outcome = VmiOutcome::Waiting;
            // The policy for refused evictions decides at the next plan.
            Some(now)
        }
        (
            Action::EvictPod {
                namespace,
                name,
                vmi: None,
                ..
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
            let retry_at = now + chrono_duration(wait);
            record.retry_at = Some(retry_at);
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
            Some(retry_at)
        }
        (
            Action::EvictPod {
                namespace,
                name,
                vmi: None,
                ..
            },
            ActionResult::Gone,
        ) => {
            if let Some(record) = state.pods.get_mut(&format!("{namespace}/{name}")) {
                record.outcome = PodOutcome::Evicted;
            }
            None
        }
        (
            Action::CreateMigration { namespace, vmi, .. },
            ActionResult::Refused(message) | ActionResult::Rejected(message),
        ) => {
            let key = format!("{namespace}/{vmi}");
            let record = state.vmis.entry(key.clone()).or_default();
            // "Try again later" (a 429 from API priority and fairness or a webhook), or
            // KubeVirt's migration-create admitter finding another migration of the VMI in
            // flight (migration-create-admitter.go: "in-flight migration detected"), says
            // nothing about whether the VMI can migrate: it uses up no attempt. Any other
            // refusal (the VMI stopped being migratable, say) counts as a failed attempt.
            let transient = matches!(result, ActionResult::Refused(_))
                || message.contains("in-flight migration detected");
            if transient {
                record.attempts = record.attempts.saturating_sub(1);
            }
            record.outcome = VmiOutcome::RetryWaiting;
            let retry_at = now
                + chrono_duration(backoff(
                    config.migration.retry_backoff.get(),
                    config.migration.retry_backoff_max.get(),
                    record.attempts.max(1),
                    &key,
                ));
            record.retry_at = Some(retry_at);
            Some(retry_at)
        }
        _ => None,
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
        state.pods_total(),
    )
}

pub(super) fn progress(state: &DrainState) -> String {
    format!(
        "{}/{} VMIs, {}/{} pods",
        state.vmis_done(),
        state.vmis.len(),
        state.pods_done(),
        state.pods_total()
    )
}
