//! The fleet settings: maintenance windows, scheduled rollouts, rolling upgrades, how many
//! nodes may be in maintenance at once, and the blockers that hold back new drains.

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::count::at_least_one;
use super::cron::{CronExpr, Zone};
use super::prometheus_url::{self, PrometheusUrl};
use super::selector::validate_qualified_name;
use super::{ConfigDuration, ConfigError, LabelSelector, NodeConfig};

/// What asked for a drain; windows say which kinds they gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// The maintenance label (set by a person, by automation or by a schedule).
    Maintenance,
    /// The upgrade label.
    Upgrade,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Maintenance => "maintenance",
            RequestKind::Upgrade => "upgrade",
        }
    }
}

/// What happens to a drain still in progress when its window closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnClose {
    /// Let it finish.
    #[default]
    Finish,
    /// Cancel vacate's migrations, uncordon if vacate cordoned, and wait for the next window.
    Abort,
}

fn every_kind() -> Vec<RequestKind> {
    vec![RequestKind::Maintenance, RequestKind::Upgrade]
}

/// `[[windows]]`: drains of the kinds in `applies_to` start only while a window is open.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub name: String,
    /// When the window opens.
    pub cron: CronExpr,
    /// How long it stays open.
    pub duration: ConfigDuration,
    #[serde(default)]
    pub timezone: Zone,
    #[serde(default = "every_kind")]
    pub applies_to: Vec<RequestKind>,
    #[serde(default)]
    pub on_close: OnClose,
}

impl WindowConfig {
    /// Checks every window, and that their names are unique.
    pub fn validate_all(windows: &[WindowConfig]) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, w) in windows.iter().enumerate() {
            let at = |k: &str| format!("windows[{i}].{k}");
            if w.name.is_empty() || !names.insert(w.name.as_str()) {
                return Err(ConfigError::key(at("name"), "must be non-empty and unique"));
            }
            w.validate(at)?;
        }
        Ok(())
    }

    fn validate(&self, at: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        if self.duration.is_zero() {
            return Err(ConfigError::key(at("duration"), "must be longer than zero"));
        }
        if self.cron.next(chrono::Utc::now(), &self.timezone).is_none() {
            return Err(ConfigError::key(
                at("cron"),
                format!("`{}` never matches", self.cron),
            ));
        }
        if self.applies_to.is_empty() {
            return Err(ConfigError::key(
                at("applies_to"),
                "must name \"maintenance\", \"upgrade\" or both",
            ));
        }
        Ok(())
    }
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

fn ten_minutes() -> ConfigDuration {
    ConfigDuration::from_secs(600)
}

/// `[[schedules]]`: at a cron time vacate requests maintenance on the matching nodes itself
/// and works through them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Also the prefix of the request label value on the nodes of a rollout.
    pub name: String,
    pub cron: CronExpr,
    #[serde(default)]
    pub timezone: Zone,
    /// The nodes of the rollout (within `node.selector`); empty means all of them.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Nodes of this rollout in maintenance at once.
    #[serde(default = "one", deserialize_with = "at_least_one")]
    pub concurrency: NonZeroU32,
    /// How long a drained node stays in maintenance before vacate ends it.
    #[serde(default)]
    pub hold: ConfigDuration,
    /// When set, a drained node stays in maintenance until it carries this label (the
    /// completion signal of whoever does the maintenance); vacate then removes it.
    #[serde(default)]
    pub until_label: String,
    /// A run missed by more than this (vacate down, no leader) is skipped.
    #[serde(default = "ten_minutes")]
    pub start_deadline: ConfigDuration,
}

impl ScheduleConfig {
    /// Checks every schedule, and that their names are unique. `own_labels` are the labels
    /// vacate itself sets or reads, which no `until_label` may be.
    pub fn validate_all(
        schedules: &[ScheduleConfig],
        own_labels: &[&str],
    ) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, s) in schedules.iter().enumerate() {
            let at = |k: &str| format!("schedules[{i}].{k}");
            s.validate_name(at)?;
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::key(
                    at("name"),
                    format!("`{}` is used twice", s.name),
                ));
            }
            s.validate(at, own_labels)?;
        }
        Ok(())
    }

    /// The name starts the request label value of the rollout's nodes.
    fn validate_name(&self, at: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        let name = &self.name;
        let name_ok = !name.is_empty()
            && name.len() <= 40
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            return Err(ConfigError::key(
                at("name"),
                format!(
                    "`{name}` must be 1 to 40 lowercase letters, digits and dashes, starting and ending with a letter or digit"
                ),
            ));
        }
        Ok(())
    }

    fn validate(
        &self,
        at: impl Fn(&str) -> String,
        own_labels: &[&str],
    ) -> Result<(), ConfigError> {
        if self.cron.next(chrono::Utc::now(), &self.timezone).is_none() {
            return Err(ConfigError::key(
                at("cron"),
                format!("`{}` never matches", self.cron),
            ));
        }
        if !self.until_label.is_empty() {
            validate_qualified_name(&self.until_label)
                .map_err(|m| ConfigError::key(at("until_label"), m))?;
            if own_labels.contains(&self.until_label.as_str()) {
                return Err(ConfigError::key(
                    at("until_label"),
                    "must differ from the request, drained and upgrade labels",
                ));
            }
        }
        // The runner looks every 15 s; a shorter deadline could skip a run it woke late for.
        if self.start_deadline.get() < Duration::from_secs(60) {
            return Err(ConfigError::key(
                at("start_deadline"),
                "must be at least 1m",
            ));
        }
        Ok(())
    }
}

/// How many nodes: a count, or a percentage of the nodes in scope (rounded down, at least 1).
/// Read from the file only as at least 1 node or 1% to 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(NonZeroU32),
    Percent(u32),
}

impl Limit {
    /// The number of nodes this limit allows out of `total`.
    pub fn of(self, total: usize) -> usize {
        match self {
            Limit::Count(n) => n.get() as usize,
            Limit::Percent(p) => (total * p as usize / 100).max(1),
        }
    }

    fn count(n: u32) -> Result<Self, String> {
        NonZeroU32::new(n)
            .map(Limit::Count)
            .ok_or_else(|| "must be at least 1".into())
    }

    fn percent(p: u32) -> Result<Self, String> {
        if (1..=100).contains(&p) {
            Ok(Limit::Percent(p))
        } else {
            Err("a percentage must lie between 1% and 100%".into())
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let bad = |text: &str| {
            serde::de::Error::custom(format!(
                "`{text}` is neither a number of nodes such as 2 nor a percentage such as \"25%\""
            ))
        };
        let limit = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u32::try_from(n)
                .map(Limit::count)
                .map_err(|_| bad(&n.to_string()))?,
            Raw::Text(text) => {
                let t = text.trim();
                match t.strip_suffix('%') {
                    Some(p) => p.trim().parse().map(Limit::percent).map_err(|_| bad(t))?,
                    None => t.parse().map(Limit::count).map_err(|_| bad(t))?,
                }
            }
        };
        limit.map_err(serde::de::Error::custom)
    }
}

/// `[fleet]`: limits across all nodes vacate handles.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Nodes in maintenance at once (cordoned by vacate, from the cordon to the uncordon).
    pub max_draining: Limit,
    /// Schedulable, Ready nodes that must remain; a drain that would leave fewer waits.
    pub min_schedulable: u32,
    /// Minimum time between the starts of two drains.
    pub delay_between_nodes: ConfigDuration,
    /// Before a drain starts, check that the remaining schedulable nodes can hold its VMs and pods.
    pub capacity_check: bool,
    /// Limits for groups of nodes, on top of the fleet-wide ones.
    pub pools: Vec<PoolConfig>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            max_draining: Limit::Count(NonZeroU32::MIN),
            min_schedulable: 0,
            delay_between_nodes: ConfigDuration::from_secs(0),
            capacity_check: true,
            pools: Vec::new(),
        }
    }
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, pool) in self.pools.iter().enumerate() {
            let at = |k: &str| format!("fleet.pools[{i}].{k}");
            if pool.name.is_empty() || !names.insert(pool.name.as_str()) {
                return Err(ConfigError::key(at("name"), "must be non-empty and unique"));
            }
            if pool.selector.is_empty() {
                return Err(ConfigError::key(at("selector"), "must select some nodes"));
            }
        }
        Ok(())
    }
}

/// `[[fleet.pools]]`: a group of nodes with limits of its own.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub selector: LabelSelector,
    pub max_draining: Limit,
    #[serde(default)]
    pub min_schedulable: u32,
}

/// `[upgrade]`: rolling Kubernetes upgrades driven by a label whose value is the target
/// kubelet version.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeConfig {
    pub request_label: String,
    /// A drained node that does not report the target version (and Ready) within this
    /// long ends in phase Failed.
    pub timeout: ConfigDuration,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            request_label: "vacate.io/upgrade".into(),
            timeout: ConfigDuration::from_secs(3600),
        }
    }
}

impl UpgradeConfig {
    /// `node` holds the labels the upgrade label must differ from.
    pub fn validate(&self, node: &NodeConfig) -> Result<(), ConfigError> {
        validate_qualified_name(&self.request_label)
            .map_err(|m| ConfigError::key("upgrade.request_label", m))?;
        if self.request_label == node.request_label || self.request_label == node.drained_label {
            return Err(ConfigError::key(
                "upgrade.request_label",
                "must differ from node.request_label and node.drained_label",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::key(
                "upgrade.timeout",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}

/// `[blockers]`: conditions under which no new drain starts (running drains go on).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlockersConfig {
    /// Pods matching this selector on a node hold back its drain (empty: off).
    pub pods: LabelSelector,
    /// Base URL of a Prometheus server (empty: off).
    #[serde(deserialize_with = "prometheus_url::optional")]
    pub prometheus_url: Option<PrometheusUrl>,
    /// A drain waits while this query returns any series.
    pub prometheus_query: String,
    /// How long an answer from Prometheus is reused.
    pub prometheus_interval: ConfigDuration,
}

impl Default for BlockersConfig {
    fn default() -> Self {
        Self {
            pods: LabelSelector::default(),
            prometheus_url: None,
            prometheus_query: r#"ALERTS{alertstate="firing",alertname!~"Watchdog|InfoInhibitor"}"#
                .into(),
            prometheus_interval: ConfigDuration::from_secs(15),
        }
    }
}

impl BlockersConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.prometheus_url else {
            return Ok(());
        };
        if self.prometheus_query.trim().is_empty() {
            return Err(ConfigError::key(
                "blockers.prometheus_query",
                "must not be empty when blockers.prometheus_url is set",
            ));
        }
        // vacate checks an https Prometheus against the system's root certificates: without
        // any it could never ask, so that fails now rather than at the first drain.
        if url.is_https() {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| {
                    ConfigError::key(
                        "blockers.prometheus_url",
                        format!("cannot verify {url}: {e}"),
                    )
                })?;
        }
        Ok(())
    }
}
