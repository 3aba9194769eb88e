//! Configuration: a TOML file overridden by `VACATE_`-prefixed environment variables.
//!
//! Every key has a default, so an empty file is a valid configuration. Loading validates
//! everything before vacate talks to the cluster: an unknown key, a malformed duration or
//! a bad label selector is reported with the key's full dotted name.

mod count;
mod cron;
mod duration;
mod fleet;
mod prometheus_url;
mod selector;

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use cron::{CronExpr, Zone};
pub use duration::ConfigDuration;
pub use fleet::{
    BlockersConfig, FleetConfig, Limit, OnClose, PoolConfig, RequestKind, ScheduleConfig,
    UpgradeConfig, WindowConfig,
};
pub use prometheus_url::PrometheusUrl;
pub use selector::LabelSelector;

use count::{at_least_one, count};

/// Prefix of environment variables that override file settings.
/// `VACATE_MIGRATION__BATCH_SIZE=4` sets `migration.batch_size`; a variable without the
/// `__` between section and key is not a setting.
pub const ENV_PREFIX: &str = "VACATE";
const ENV_SEPARATOR: &str = "__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    /// A bad value of `key` (its full dotted name, e.g. `migration.batch_size`).
    pub fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub drain: DrainConfig,
    pub migration: MigrationConfig,
    pub non_migratable: NonMigratableConfig,
    pub pods: PodConfig,
    pub upgrade: UpgradeConfig,
    pub fleet: FleetConfig,
    pub blockers: BlockersConfig,
    pub windows: Vec<WindowConfig>,
    pub schedules: Vec<ScheduleConfig>,
    pub server: ServerConfig,
    pub leader_election: LeaderElectionConfig,
    pub log: LogConfig,
}

/// Several replicas may run; only the holder of a coordination.k8s.io Lease acts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderElectionConfig {
    pub enabled: bool,
    /// Namespace of the Lease; empty: the pod's own namespace, else `default`.
    pub namespace: String,
    pub lease_name: String,
    /// How long a leader's claim lasts without renewal; a standby takes over after it.
    pub lease_duration: ConfigDuration,
}

impl LeaderElectionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let lease = self.lease_duration.get();
        if lease < Duration::from_secs(2) || lease.subsec_nanos() != 0 {
            return Err(ConfigError::key(
                "leader_election.lease_duration",
                "must be a whole number of seconds, at least 2s",
            ));
        }
        if self.lease_name.is_empty() {
            return Err(ConfigError::key(
                "leader_election.lease_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            namespace: String::new(),
            lease_name: "vacate".into(),
            lease_duration: ConfigDuration::from_secs(15),
        }
    }
}

/// Which nodes vacate handles and the labels and annotation it speaks through.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Label whose presence requests a drain; removing it ends the maintenance.
    pub request_label: String,
    /// Label vacate sets to `true` once a node is drained.
    pub drained_label: String,
    /// Annotation holding vacate's versioned JSON state for the node.
    pub state_annotation: String,
    /// Only nodes matching this label selector are handled (empty: all nodes).
    pub selector: LabelSelector,
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("node.request_label", &self.request_label),
            ("node.drained_label", &self.drained_label),
            ("node.state_annotation", &self.state_annotation),
        ] {
            selector::validate_qualified_name(value).map_err(|m| ConfigError::key(name, m))?;
        }
        if self.request_label == self.drained_label {
            return Err(ConfigError::key(
                "node.drained_label",
                "must differ from node.request_label",
            ));
        }
        Ok(())
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            request_label: "vacate.io/maintenance".into(),
            drained_label: "vacate.io/drained".into(),
            state_annotation: "vacate.io/state".into(),
            selector: LabelSelector::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// A drain not finished after this long ends in phase Failed.
    pub timeout: ConfigDuration,
    /// Uncordon a failed node if vacate cordoned it (default: keep it cordoned).
    pub uncordon_on_failure: bool,
    /// How often a node in a drain is looked at although nothing changed. Every step of a
    /// drain is woken by the event it waits for; this is only a safety net.
    pub resync: ConfigDuration,
}

impl DrainConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::key(
                "drain.timeout",
                "must be longer than zero",
            ));
        }
        if self.resync.get() < Duration::from_secs(1) {
            return Err(ConfigError::key("drain.resync", "must be at least 1s"));
        }
        Ok(())
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout: ConfigDuration::from_secs(3600),
            uncordon_on_failure: false,
            resync: ConfigDuration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    /// Migrations started together in one batch.
    #[serde(deserialize_with = "at_least_one")]
    pub batch_size: NonZeroU32,
    /// Minimum time between two batches on one node.
    pub batch_interval: ConfigDuration,
    /// Unfinished migrations allowed from one node (also capped by the KubeVirt CR).
    #[serde(deserialize_with = "at_least_one")]
    pub max_in_flight_per_node: NonZeroU32,
    /// Unfinished migrations allowed in the cluster (also capped by the KubeVirt CR).
    #[serde(deserialize_with = "at_least_one")]
    pub max_in_flight_cluster: NonZeroU32,
    /// Attempts per VMI before the non-migratable policy takes over.
    #[serde(deserialize_with = "at_least_one")]
    pub max_attempts: NonZeroU32,
    /// Wait before the first retry of a failed migration; doubles per attempt.
    pub retry_backoff: ConfigDuration,
    /// Upper bound of the retry wait.
    pub retry_backoff_max: ConfigDuration,
    /// During a rollout (other nodes wait for their drains), send each migration to a node
    /// outside the rollout or done with it (`spec.addedNodeSelector`, KubeVirt 1.6+), so
    /// that each VM moves once.
    pub steer_rollouts: bool,
    /// Steered migrations one node may receive at once.
    #[serde(deserialize_with = "at_least_one")]
    pub max_inbound_per_node: NonZeroU32,
}

impl MigrationConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_backoff_max < self.retry_backoff {
            return Err(ConfigError::key(
                "migration.retry_backoff_max",
                "must not be shorter than migration.retry_backoff",
            ));
        }
        Ok(())
    }
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            batch_size: count(2),
            batch_interval: ConfigDuration::from_secs(0),
            max_in_flight_per_node: count(2),
            max_in_flight_cluster: count(5),
            max_attempts: count(3),
            retry_backoff: ConfigDuration::from_secs(10),
            retry_backoff_max: ConfigDuration::from_secs(300),
            steer_rollouts: true,
            max_inbound_per_node: count(2),
        }
    }
}

/// What happens to a VMI that cannot live-migrate.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NonMigratablePolicy {
    /// Evict the virt-launcher pod through the Eviction API.
    Evict,
    /// Stop the VMI so its VirtualMachine starts it again on another node.
    Restart,
    /// Wait, and say why, until someone moves the VM.
    Block,
}

/// What happens when KubeVirt refuses to evict a virt-launcher pod.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EvictionRefusedPolicy {
    Restart,
    Fail,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NonMigratableConfig {
    pub policy: NonMigratablePolicy,
    pub on_eviction_refused: EvictionRefusedPolicy,
}

impl Default for NonMigratableConfig {
    fn default() -> Self {
        Self {
            policy: NonMigratablePolicy::Evict,
            on_eviction_refused: EvictionRefusedPolicy::Restart,
        }
    }
}

/// Whether a class of pods is evicted or blocks the drain.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PodPolicy {
    Evict,
    Block,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PodConfig {
    /// Pods with emptyDir volumes lose that data when evicted (kubectl's --delete-emptydir-data).
    pub emptydir: PodPolicy,
    /// Pods without a controller are not recreated when evicted (kubectl's --force).
    pub unmanaged: PodPolicy,
    /// Wait before retrying an eviction refused by a PodDisruptionBudget; doubles per retry.
    pub eviction_backoff: ConfigDuration,
    /// Upper bound of the eviction retry wait.
    pub eviction_backoff_max: ConfigDuration,
    /// Pods matching this selector are evicted only once every VMI has left the node (a
    /// storage or network agent the VMs need while they migrate, say). Empty, the default:
    /// every pod is evicted while the VMIs migrate.
    pub evict_after_vmis: LabelSelector,
}

impl PodConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.eviction_backoff_max < self.eviction_backoff {
            return Err(ConfigError::key(
                "pods.eviction_backoff_max",
                "must not be shorter than pods.eviction_backoff",
            ));
        }
        Ok(())
    }
}

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            emptydir: PodPolicy::Block,
            unmanaged: PodPolicy::Block,
            eviction_backoff: ConfigDuration::from_secs(5),
            eviction_backoff_max: ConfigDuration::from_secs(120),
            evict_after_vmis: LabelSelector::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    pub listen: String,
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::key(
                "server.listen",
                format!("`{}` is not an address such as 0.0.0.0:9464", self.listen),
            ));
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `vacate=debug,kube=info`.
    pub level: String,
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(ConfigError::key(
                "log.level",
                format!("`{}` is not a log filter such as `info`", self.level),
            ));
        }
        Ok(())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads the file (when given) and the environment, then validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        Self::from_builder(builder, std::env::vars())
    }

    /// Parses a TOML document with the given environment; used by `load` and by tests.
    pub fn from_toml_and_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml));
        Self::from_builder(builder, env)
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Only `VACATE_<SECTION>__<KEY>` variables are settings; others that merely share
        // the prefix (VACATE_CONFIG, variables of other tools) are left alone.
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(ENV_PREFIX)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
            })
            .collect();
        let merged = builder
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()
            .map_err(describe_error)?;
        let config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            let message = match e.into_inner() {
                // The key leads the message already; only the origin is worth repeating.
                config::ConfigError::At {
                    error,
                    origin: Some(origin),
                    ..
                } => format!("{error} in {origin}"),
                config::ConfigError::At { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            if key.is_empty() || key == "." {
                ConfigError::Invalid(message)
            } else {
                ConfigError::Key { key, message }
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that types alone cannot express, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate()?;
        self.migration.validate()?;
        self.pods.validate()?;
        self.drain.validate()?;
        self.server.validate()?;
        self.leader_election.validate()?;
        self.upgrade.validate(&self.node)?;
        self.fleet.validate()?;
        WindowConfig::validate_all(&self.windows)?;
        ScheduleConfig::validate_all(
            &self.schedules,
            &[
                &self.node.request_label,
                &self.node.drained_label,
                &self.upgrade.request_label,
            ],
        )?;
        self.blockers.validate()?;
        self.log.validate()
    }

    /// The schedule whose rollout set this request label value, if any.
    pub fn schedule_of(&self, request_value: &str) -> Option<&ScheduleConfig> {
        let (name, _) = request_value.split_once('.')?;
        self.schedules.iter().find(|s| s.name == name)
    }
}

/// Turns the config crate's errors into messages that name the key.
fn describe_error(error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::At {
            error,
            key: Some(k),
            ..
        } => ConfigError::Key {
            key: k,
            message: error.to_string(),
        },
        config::ConfigError::Type {
            key: Some(k),
            unexpected,
            expected,
            ..
        } => ConfigError::Key {
            key: k,
            message: format!("expected {expected}, found {unexpected}"),
        },
        other => ConfigError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
