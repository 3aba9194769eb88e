//! Fault injection: knobs read from annotations on a VMI, with cluster-wide defaults from the
//! same annotations on the KubeVirt CR. None of this exists in KubeVirt; it lets tests provoke
//! the failures real clusters see (failed, stuck and unschedulable migrations).

use std::collections::BTreeMap;

/// Share (0.0–1.0) of migrations of the VMI that fail while running, e.g. `"0.5"`.
pub const MIGRATION_FAILURE_RATE: &str = "simulator.vacate.io/migration-failure-rate";
/// `"true"`: migrations of the VMI stay Running until deleted (aborted).
pub const MIGRATION_STALL: &str = "simulator.vacate.io/migration-stall";
/// `"true"`: target pods of the VMI's migrations get a node selector no node satisfies, so
/// they stay unschedulable and the migration fails after KubeVirt's timeout.
pub const TARGET_UNSCHEDULABLE: &str = "simulator.vacate.io/target-unschedulable";
/// Label key of the impossible node selector used for unschedulable target pods.
pub const UNSCHEDULABLE_SELECTOR_KEY: &str = "simulator.vacate.io/no-such-node";

/// The fault knobs in force for one VMI.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultKnobs {
    pub migration_failure_rate: f64,
    pub migration_stall: bool,
    pub target_unschedulable: bool,
}

impl FaultKnobs {
    /// Reads the knobs from annotations; missing or malformed ones keep `defaults`.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
        defaults: &FaultKnobs,
    ) -> FaultKnobs {
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
        let flag = |key: &str, default: bool| match get(key) {
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            _ => default,
        };
        FaultKnobs {
            migration_failure_rate: get(MIGRATION_FAILURE_RATE)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|r| r.is_finite())
                .map(|r| r.clamp(0.0, 1.0))
                .unwrap_or(defaults.migration_failure_rate),
            migration_stall: flag(MIGRATION_STALL, defaults.migration_stall),
            target_unschedulable: flag(TARGET_UNSCHEDULABLE, defaults.target_unschedulable),
        }
    }

    /// Whether the migration with this UID fails. Derived from the UID, so every reconcile of
    /// the same migration agrees, and a share `rate` of all migrations fail.
    pub fn migration_fails(&self, migration_uid: &str) -> bool {
        if self.migration_failure_rate <= 0.0 {
            return false;
        }
        let hash = kubevirt_api::hash::fnv1a(migration_uid);
        (hash % 10_000) as f64 / 10_000.0 < self.migration_failure_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn vmi_annotations_override_cluster_defaults() {
        let cluster = FaultKnobs::from_annotations(
            Some(&ann(&[(MIGRATION_FAILURE_RATE, "0.25")])),
            &FaultKnobs::default(),
        );
        assert_eq!(cluster.migration_failure_rate, 0.25);
        let vmi = FaultKnobs::from_annotations(
            Some(&ann(&[
                (MIGRATION_STALL, "true"),
                (TARGET_UNSCHEDULABLE, "TRUE"),
                (MIGRATION_FAILURE_RATE, "7"),
            ])),
            &cluster,
        );
        assert!(vmi.migration_stall && vmi.target_unschedulable);
        assert_eq!(vmi.migration_failure_rate, 1.0);
        let plain = FaultKnobs::from_annotations(None, &cluster);
        assert_eq!(plain, cluster);
    }

    #[test]
    fn failure_share_is_close_to_the_rate() {
        let knobs = FaultKnobs {
            migration_failure_rate: 0.5,
            ..Default::default()
        };
        let failed = (0..2000)
            .filter(|i| knobs.migration_fails(&format!("uid-{i}")))
            .count();
        assert!((800..1200).contains(&failed), "{failed}");
        assert!(!FaultKnobs::default().migration_fails("x"));
        let always = FaultKnobs {
            migration_failure_rate: 1.0,
            ..Default::default()
        };
        assert!(always.migration_fails("x"));
    }
}
