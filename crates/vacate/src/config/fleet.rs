//! The fleet settings: maintenance windows, scheduled rollouts, rolling upgrades, how many
//! nodes may be in maintenance at once, and the blockers that hold back new drains.

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::cron::{CronExpr, Zone};
use super::{ConfigDuration, LabelSelector};

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

fn one() -> u32 {
    1
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
    #[serde(default = "one")]
    pub concurrency: u32,
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

/// How many nodes: a count, or a percentage of the nodes in scope (rounded down, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(u32),
    Percent(u32),
}

impl Limit {
    /// The number of nodes this limit allows out of `total`.
    pub fn of(self, total: usize) -> usize {
        match self {
            Limit::Count(n) => n as usize,
            Limit::Percent(p) => (total * p as usize / 100).max(1),
        }
    }

    pub fn validate(self) -> Result<(), String> {
        match self {
            Limit::Count(0) => Err("must be at least 1".into()),
            Limit::Percent(p) if p == 0 || p > 100 => {
                Err("a percentage must lie between 1% and 100%".into())
            }
            _ => Ok(()),
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
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u32::try_from(n)
                .map(Limit::Count)
                .map_err(|_| bad(&n.to_string())),
            Raw::Text(text) => {
                let t = text.trim();
                match t.strip_suffix('%') {
                    Some(p) => p.trim().parse().map(Limit::Percent).map_err(|_| bad(t)),
                    None => t.parse().map(Limit::Count).map_err(|_| bad(t)),
                }
            }
        }
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
            max_draining: Limit::Count(1),
            min_schedulable: 0,
            delay_between_nodes: ConfigDuration::from_secs(0),
            capacity_check: true,
            pools: Vec::new(),
        }
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

/// `[blockers]`: conditions under which no new drain starts (running drains go on).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlockersConfig {
    /// Pods matching this selector on a node hold back its drain (empty: off).
    pub pods: LabelSelector,
    /// Base URL of a Prometheus server (empty: off).
    pub prometheus_url: String,
    /// A drain waits while this query returns any series.
    pub prometheus_query: String,
    /// How long an answer from Prometheus is reused.
    pub prometheus_interval: ConfigDuration,
}

impl Default for BlockersConfig {
    fn default() -> Self {
        Self {
            pods: LabelSelector::default(),
            prometheus_url: String::new(),
            prometheus_query: r#"ALERTS{alertstate="firing",alertname!~"Watchdog|InfoInhibitor"}"#
                .into(),
            prometheus_interval: ConfigDuration::from_secs(15),
        }
    }
}
