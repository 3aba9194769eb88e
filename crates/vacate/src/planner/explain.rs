//! The plan of a whole drain in words, for `vacate drain --dry-run`.

use crate::config::{Config, NonMigratablePolicy};

use super::model::{EvictionStrategy, Migratability, Snapshot};
use super::pod_filters::{PodVerdict, classify};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanLine {
    /// `VMI` or `Pod`.
    pub kind: &'static str,
    /// `namespace/name`.
    pub name: String,
    /// migrate, evict, restart, block, skip.
    pub verdict: &'static str,
    pub reason: String,
}

/// What a drain of the snapshot's node would do with every VMI and pod.
pub fn explain(s: &Snapshot, config: &Config) -> Vec<PlanLine> {
    let mut lines = Vec::new();
    let mut vmis: Vec<_> = s.vmis.iter().filter(|v| !v.finished).collect();
    vmis.sort_by_key(|v| v.key());
    for vmi in vmis {
        let (verdict, reason) = match (&vmi.migratability, vmi.eviction_strategy) {
            (_, EvictionStrategy::None) => fallback(config, "evictionStrategy is None".into()),
            (Migratability::Migratable, _) => ("migrate", "live-migratable".to_string()),
            (Migratability::Unknown, _) => (
                "migrate",
                "KubeVirt has not reported LiveMigratable yet; migrated once it does".to_string(),
            ),
            (Migratability::NotMigratable { reason, message }, _) => {
                fallback(config, format!("{reason}: {message}"))
            }
        };
        let reason = if verdict == "restart" && !vmi.restartable {
            format!(
                "{reason}; but no VirtualMachine would start it again, so the drain would block"
            )
        } else {
            reason
        };
        lines.push(PlanLine {
            kind: "VMI",
            name: vmi.key(),
            verdict,
            reason,
        });
    }
    let mut pods: Vec<_> = s.pods.iter().collect();
    pods.sort_by_key(|p| p.key());
    for pod in pods {
        let (verdict, reason) = match classify(pod, &config.pods) {
            PodVerdict::Evict => ("evict", "evicted through the Eviction API".to_string()),
            PodVerdict::Skip(why) => ("skip", why.to_string()),
            PodVerdict::Block(_, why) => ("block", why),
        };
        lines.push(PlanLine {
            kind: "Pod",
            name: pod.key(),
            verdict,
            reason,
        });
    }
    lines
}

fn fallback(config: &Config, why: String) -> (&'static str, String) {
    match config.non_migratable.policy {
        NonMigratablePolicy::Evict => (
            "evict",
            format!(
                "cannot live-migrate ({why}); its virt-launcher pod is evicted (on refusal: {:?})",
                config.non_migratable.on_eviction_refused
            ),
        ),
        NonMigratablePolicy::Restart => (
            "restart",
            format!(
                "cannot live-migrate ({why}); stopped so its VirtualMachine starts it elsewhere"
            ),
        ),
        NonMigratablePolicy::Block => (
            "block",
            format!("cannot live-migrate ({why}) and non_migratable.policy is \"block\""),
        ),
    }
}
