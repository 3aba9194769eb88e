//! The cluster-wide configuration the simulator works with: KubeVirt's migration
//! configuration and eviction strategy from the KubeVirt CR (as `virtconfig.ClusterConfig`
//! reads them), plus the simulator's own knobs (time scale, fault defaults) from annotations
//! on that CR so tests can change them at run time.

use std::time::Duration;

use kubevirt_api::{EvictionStrategy, KubeVirt, MigrationConfiguration};

use crate::faults::FaultKnobs;

/// Simulated time runs this many times faster than real time unless told otherwise:
/// with the default bandwidth a 4 GiB guest migrates in about 3 seconds.
pub const DEFAULT_TIME_SCALE: f64 = 10.0;

/// Annotation on the KubeVirt CR overriding `--time-scale` (e.g. `"20"`).
pub const TIME_SCALE_ANNOTATION: &str = "simulator.vacate.io/time-scale";

/// Annotation on the KubeVirt CR overriding `--kubevirt-release` (`"v1.9"` or `"v1.7"`).
pub const KUBEVIRT_RELEASE_ANNOTATION: &str = "simulator.vacate.io/kubevirt-release";

/// The KubeVirt release whose behaviour the simulator follows where releases differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KubeVirtRelease {
    /// v1.7.4: the `MigrationPriorityQueue` feature gate exists but is off (Alpha, not
    /// enabled by a default install), so the evacuation controller creates at most as many
    /// migrations as there are free slots and migrations carry no priority.
    V1_7,
    /// v1.9.0: the migration priority queue is GA and always on: the evacuation controller
    /// creates a migration for every candidate at once, with `spec.priority`, and the
    /// migration controller starts Pending migrations in priority order.
    #[default]
    V1_9,
}

impl KubeVirtRelease {
    /// Parses `v1.9`/`v1.7` (also `1.9`, `v1.9.0`, `v1.7.4`, ...).
    pub fn parse(value: &str) -> Option<KubeVirtRelease> {
        let v = value.trim();
        let v = v.strip_prefix('v').unwrap_or(v);
        let mut parts = v.split('.');
        match (parts.next(), parts.next()) {
            (Some("1"), Some("7")) => Some(KubeVirtRelease::V1_7),
            (Some("1"), Some("9")) => Some(KubeVirtRelease::V1_9),
            _ => None,
        }
    }

    /// The short name, as the setting is written.
    pub fn as_str(self) -> &'static str {
        match self {
            KubeVirtRelease::V1_7 => "v1.7",
            KubeVirtRelease::V1_9 => "v1.9",
        }
    }

    /// The version the KubeVirt CR reports in `status.observedKubeVirtVersion`: the release
    /// whose sources the simulator follows.
    pub fn version(self) -> &'static str {
        match self {
            KubeVirtRelease::V1_7 => "v1.7.4",
            KubeVirtRelease::V1_9 => "v1.9.0",
        }
    }

    /// Whether the migration priority queue is on (`MigrationPriorityQueueEnabled()` in
    /// v1.7.4, always in v1.9.0).
    pub fn priority_queue(self) -> bool {
        self == KubeVirtRelease::V1_9
    }

    /// Whether garbage collection of finished migrations also deletes the pod each left
    /// behind (`garbageCollectFinalizedMigrations`: v1.9.0 yes, v1.7.4 no).
    pub fn collects_defunct_pods(self) -> bool {
        self == KubeVirtRelease::V1_9
    }

    /// The virt-launcher image of the release (`GetLauncherImage`, the operator's
    /// `quay.io/kubevirt` registry and the release's tag).
    pub fn launcher_image(self) -> String {
        format!("quay.io/kubevirt/virt-launcher:{}", self.version())
    }
}

impl std::str::FromStr for KubeVirtRelease {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KubeVirtRelease::parse(s)
            .ok_or_else(|| format!("unknown KubeVirt release {s:?} (v1.9 or v1.7)"))
    }
}

impl std::fmt::Display for KubeVirtRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Annotation on the KubeVirt CR (or a VMI) overriding the simulated migration throughput
/// used when `bandwidthPerMigration` is unset/unlimited (a quantity per second, e.g. `"1Gi"`).
pub const EFFECTIVE_BANDWIDTH_ANNOTATION: &str = "simulator.vacate.io/effective-bandwidth";

/// Memory copied per second by a migration whose bandwidth KubeVirt does not limit
/// (`bandwidthPerMigration` unset or 0, the default). 128 MiB/s is what a pre-copy migration
/// of an idle guest over a shared 1 Gbit/s migration network achieves; with 10 Gbit/s it is
/// higher, which a test can model with [`EFFECTIVE_BANDWIDTH_ANNOTATION`].
pub const DEFAULT_EFFECTIVE_BANDWIDTH: f64 = 128.0 * 1024.0 * 1024.0;

/// Guest memory assumed for a VMI that states none (KubeVirt would reject it; the
/// simulator stays lenient).
pub const DEFAULT_GUEST_MEMORY: u64 = 1 << 30;

/// KubeVirt's `defaultUnschedulablePendingTimeoutSeconds` (migration.go).
pub const UNSCHEDULABLE_PENDING_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// KubeVirt's `defaultCatchAllPendingTimeoutSeconds` (migration.go).
pub const CATCH_ALL_PENDING_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long virt-handler takes to prepare the target domain (simulated seconds).
pub const TARGET_PREPARATION: Duration = Duration::from_secs(2);
/// How long an abort asked for during the copy takes to take effect (virt-handler sees
/// `abortRequested`, asks virt-launcher, which has libvirt abort the job), simulated seconds.
/// A copy that ends sooner wins: the abort fails and the migration ends as it would have.
pub const ABORT_RESOLUTION: Duration = Duration::from_secs(1);
/// How often migration.go and evacuation.go look again at work held back by a limit.
pub const LIMIT_RECHECK: Duration = Duration::from_secs(5);
/// Finalized migrations kept per VMI (`defaultFinalizedMigrationGarbageCollectionBuffer`).
pub const FINALIZED_MIGRATIONS_KEPT: usize = 5;

/// The settings given on the command line, which annotations on the KubeVirt CR override.
#[derive(Clone, Copy, Debug)]
pub struct CliDefaults {
    pub time_scale: f64,
    pub release: KubeVirtRelease,
}

impl Default for CliDefaults {
    fn default() -> Self {
        CliDefaults {
            time_scale: DEFAULT_TIME_SCALE,
            release: KubeVirtRelease::default(),
        }
    }
}

impl CliDefaults {
    pub fn time_scale(time_scale: f64) -> CliDefaults {
        CliDefaults {
            time_scale,
            ..Default::default()
        }
    }
}

/// A snapshot of the cluster configuration.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub migrations: MigrationConfiguration,
    pub eviction_strategy: Option<EvictionStrategy>,
    pub time_scale: f64,
    pub effective_bandwidth: f64,
    pub faults: FaultKnobs,
    /// The KubeVirt release followed.
    pub release: KubeVirtRelease,
}

impl ClusterConfig {
    /// Reads the configuration from the KubeVirt CR (if any), falling back to KubeVirt's
    /// defaults and the command line.
    pub fn from_kubevirt(kv: Option<&KubeVirt>, cli: &CliDefaults) -> ClusterConfig {
        let cli_time_scale = cli.time_scale;
        let annotations = kv.and_then(|kv| kv.metadata.annotations.as_ref());
        let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let release = get(KUBEVIRT_RELEASE_ANNOTATION)
            .and_then(KubeVirtRelease::parse)
            .unwrap_or(cli.release);
        let time_scale = get(TIME_SCALE_ANNOTATION)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(cli_time_scale);
        let time_scale = if time_scale.is_finite() && time_scale > 0.0 {
            time_scale
        } else {
            1.0
        };
        let effective_bandwidth = get(EFFECTIVE_BANDWIDTH_ANNOTATION)
            .and_then(kubevirt_api::quantity::parse_quantity)
            .filter(|b| *b > 0.0)
            .unwrap_or(DEFAULT_EFFECTIVE_BANDWIDTH);
        ClusterConfig {
            migrations: kv
                .map(KubeVirt::migration_configuration)
                .unwrap_or_default(),
            eviction_strategy: kv.and_then(KubeVirt::eviction_strategy),
            time_scale,
            effective_bandwidth,
            faults: FaultKnobs::from_annotations(annotations, &FaultKnobs::default()),
            release,
        }
    }

    /// A simulated duration as real time.
    pub fn real(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.time_scale)
    }

    /// How long re-checks of held-back work wait: KubeVirt's 5 s, scaled, but never
    /// shorter than 200 ms (a poll interval, not a simulated delay).
    pub fn recheck(&self) -> Duration {
        self.recheck_after(LIMIT_RECHECK)
    }

    /// [`Self::recheck`] after another simulated delay than KubeVirt's 5 s.
    pub fn recheck_after(&self, simulated: Duration) -> Duration {
        self.real(simulated).max(Duration::from_millis(200))
    }

    /// The bytes per second a migration copies: `bandwidthPerMigration` when KubeVirt limits
    /// it, else the simulator's effective bandwidth.
    pub fn migration_bandwidth(&self) -> f64 {
        self.migrations
            .bandwidth_bytes_per_second()
            .unwrap_or(self.effective_bandwidth)
    }

    /// Real time a migration of `memory` bytes takes.
    pub fn migration_duration(&self, memory: u64, bandwidth_override: Option<f64>) -> Duration {
        let bandwidth = match (
            self.migrations.bandwidth_bytes_per_second(),
            bandwidth_override,
        ) {
            (Some(limit), Some(eff)) => limit.min(eff),
            (Some(limit), None) => limit,
            (None, Some(eff)) => eff,
            (None, None) => self.effective_bandwidth,
        };
        self.real(Duration::from_secs_f64(memory as f64 / bandwidth.max(1.0)))
    }

    /// KubeVirt cancels a migration that runs longer than `completionTimeoutPerGiB` per GiB
    /// of guest memory (real time after scaling).
    pub fn completion_timeout(&self, memory: u64) -> Duration {
        let gib = (memory as f64 / (1u64 << 30) as f64).max(1.0);
        self.real(Duration::from_secs_f64(
            self.migrations.completion_timeout_per_gib().max(1) as f64 * gib,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubevirt_api::KubeVirtSpec;

    fn kv(annotations: &[(&str, &str)], bandwidth: Option<&str>) -> KubeVirt {
        let mut kv = KubeVirt::new("kubevirt", KubeVirtSpec::default());
        kv.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let migrations = MigrationConfiguration {
            bandwidth_per_migration: bandwidth
                .map(|b| k8s_openapi::apimachinery::pkg::api::resource::Quantity(b.into())),
            ..Default::default()
        };
        kv.spec.configuration = Some(kubevirt_api::KubeVirtConfiguration {
            migrations: Some(migrations),
            eviction_strategy: Some(EvictionStrategy::LiveMigrate),
        });
        kv
    }

    #[test]
    fn four_gib_migrate_in_a_few_seconds_by_default() {
        let cfg = ClusterConfig::from_kubevirt(None, &CliDefaults::default());
        let d = cfg.migration_duration(4 << 30, None);
        assert!(
            d >= Duration::from_secs(2) && d <= Duration::from_secs(5),
            "{d:?}"
        );
        assert_eq!(cfg.migrations.parallel_outbound_migrations_per_node(), 2);
        assert_eq!(cfg.eviction_strategy, None);
    }

    #[test]
    fn kubevirt_cr_overrides() {
        let cfg = ClusterConfig::from_kubevirt(
            Some(&kv(&[(TIME_SCALE_ANNOTATION, "64")], Some("64Mi"))),
            &CliDefaults::time_scale(1.0),
        );
        assert_eq!(cfg.time_scale, 64.0);
        assert_eq!(cfg.eviction_strategy, Some(EvictionStrategy::LiveMigrate));
        // 4 GiB at 64 MiB/s = 64 s simulated = 1 s real.
        assert_eq!(
            cfg.migration_duration(4 << 30, None),
            Duration::from_secs(1)
        );
        // 150 s per GiB, 4 GiB, scaled by 64.
        assert_eq!(
            cfg.completion_timeout(4 << 30),
            Duration::from_secs_f64(600.0 / 64.0)
        );
    }

    #[test]
    fn bad_time_scale_falls_back() {
        let cfg = ClusterConfig::from_kubevirt(
            Some(&kv(&[(TIME_SCALE_ANNOTATION, "-3")], None)),
            &CliDefaults::time_scale(2.0),
        );
        assert_eq!(cfg.time_scale, 1.0);
        let cfg = ClusterConfig::from_kubevirt(
            Some(&kv(&[(TIME_SCALE_ANNOTATION, "x")], None)),
            &CliDefaults::time_scale(2.0),
        );
        assert_eq!(cfg.time_scale, 2.0);
    }

    #[test]
    fn the_release_defaults_to_v1_9_and_the_annotation_chooses() {
        let cfg = ClusterConfig::from_kubevirt(None, &CliDefaults::default());
        assert_eq!(cfg.release, KubeVirtRelease::V1_9);
        assert_eq!(cfg.release.version(), "v1.9.0");
        let v17 = kv(&[(KUBEVIRT_RELEASE_ANNOTATION, "v1.7")], None);
        let cfg = ClusterConfig::from_kubevirt(Some(&v17), &CliDefaults::default());
        assert_eq!(cfg.release, KubeVirtRelease::V1_7);
        assert_eq!(cfg.release.version(), "v1.7.4");
        // The command line sets the default; an unknown value keeps it.
        let cli = CliDefaults {
            release: KubeVirtRelease::V1_7,
            ..Default::default()
        };
        let bad = kv(&[(KUBEVIRT_RELEASE_ANNOTATION, "v2.0")], None);
        assert_eq!(
            ClusterConfig::from_kubevirt(Some(&bad), &cli).release,
            KubeVirtRelease::V1_7
        );
        assert_eq!(KubeVirtRelease::parse("1.9.0"), Some(KubeVirtRelease::V1_9));
        assert_eq!(
            KubeVirtRelease::parse("v1.7.4"),
            Some(KubeVirtRelease::V1_7)
        );
    }
}
