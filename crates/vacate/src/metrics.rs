//! Every Prometheus metric vacate exports. Names and labels are public interface: they are
//! documented in the README and used by the dashboard and alert rules.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::collections::HashMap;

use crate::config::Config;
use crate::error::Error;
use crate::planner::{
    Action, ActionResult, BlockReason, DrainResult, DrainState, FleetNode, MigrationResult,
    Observation, Phase, windows,
};

/// Buckets for drains: from a minute to a few hours.
const DRAIN_BUCKETS: &[f64] = &[
    30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// Buckets for migrations: seconds to half an hour.
const MIGRATION_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Every series vacate exports. They are set only through the methods below (`record_*`,
/// `observe`, `update_*`, `forget_node`), which say what happened, not which gauge moves.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    nodes: IntGaugeVec,
    nodes_blocked: IntGaugeVec,
    drains: IntCounterVec,
    drain_duration: HistogramVec,
    migrations_started: IntCounter,
    migrations: IntCounterVec,
    migrations_in_flight: IntGauge,
    migration_limit: IntGaugeVec,
    migration_duration: HistogramVec,
    evictions: IntCounterVec,
    eviction_retries: IntCounterVec,
    vmi_restarts: IntCounter,
    node_vmis: IntGaugeVec,
    node_pods: IntGaugeVec,
    node_drain_started: GaugeVec,
    node_drain_eta: GaugeVec,
    reconcile_errors: IntCounterVec,
    invalid_states: IntCounter,
    reconciliations: IntCounter,
    leader: IntGauge,
    build_info: IntGaugeVec,
    kubevirt_info: IntGaugeVec,
    window_open: IntGaugeVec,
    window_next_open: GaugeVec,
    schedule_last_run: GaugeVec,
    schedule_next_run: GaugeVec,
    fleet_in_maintenance: IntGaugeVec,
    fleet_max_in_maintenance: IntGaugeVec,
    runtime_tasks: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            nodes: IntGaugeVec::new(
                Opts::new("vacate_nodes", "Nodes handled by vacate, by drain phase."),
                &["phase"],
            )
            .unwrap(),
            nodes_blocked: IntGaugeVec::new(
                Opts::new(
                    "vacate_nodes_blocked",
                    "Nodes whose drain cannot make progress, by reason.",
                ),
                &["reason"],
            )
            .unwrap(),
            drains: IntCounterVec::new(
                Opts::new(
                    "vacate_drains_total",
                    "Finished drains, by result (drained, failed, aborted).",
                ),
                &["result"],
            )
            .unwrap(),
            drain_duration: HistogramVec::new(
                HistogramOpts::new(
                    "vacate_drain_duration_seconds",
                    "Time from the start of a drain to its end, by result.",
                )
                .buckets(DRAIN_BUCKETS.to_vec()),
                &["result"],
            )
            .unwrap(),
            migrations_started: IntCounter::new(
                "vacate_migrations_started_total",
                "VirtualMachineInstanceMigrations created by vacate.",
            )
            .unwrap(),
            migrations: IntCounterVec::new(
                Opts::new(
                    "vacate_migrations_total",
                    "Finished migrations created by vacate, by result (succeeded, failed, cancelled).",
                ),
                &["result"],
            )
            .unwrap(),
            migrations_in_flight: IntGauge::new(
                "vacate_migrations_in_flight",
                "Unfinished migrations created by vacate.",
            )
            .unwrap(),
            migration_limit: IntGaugeVec::new(
                Opts::new(
                    "vacate_migration_limit",
                    "Effective limit of unfinished migrations (configuration capped by the KubeVirt CR), by scope (node, cluster).",
                ),
                &["scope"],
            )
            .unwrap(),
            migration_duration: HistogramVec::new(
                HistogramOpts::new(
                    "vacate_migration_duration_seconds",
                    "Time from creation to the end of migrations created by vacate, by result.",
                )
                .buckets(MIGRATION_BUCKETS.to_vec()),
                &["result"],
            )
            .unwrap(),
            evictions: IntCounterVec::new(
                Opts::new(
                    "vacate_evictions_total",
                    "Eviction requests, by kind (pod, vmi) and result (evicted, refused, gone, rejected).",
                ),
                &["kind", "result"],
            )
            .unwrap(),
            eviction_retries: IntCounterVec::new(
                Opts::new(
                    "vacate_eviction_retries_total",
                    "Evictions refused with 429 and retried later, by refuser (pdb, kubevirt).",
                ),
                &["reason"],
            )
            .unwrap(),
            vmi_restarts: IntCounter::new(
                "vacate_vmi_restarts_total",
                "VMIs stopped so that their VirtualMachine starts them on another node.",
            )
            .unwrap(),
            node_vmis: IntGaugeVec::new(
                Opts::new(
                    "vacate_node_vmis",
                    "VMIs of a node being drained, by state (total, done).",
                ),
                &["node", "state"],
            )
            .unwrap(),
            node_pods: IntGaugeVec::new(
                Opts::new(
                    "vacate_node_pods",
                    "Pods to evict from a node being drained, by state (total, done).",
                ),
                &["node", "state"],
            )
            .unwrap(),
            node_drain_started: GaugeVec::new(
                Opts::new(
                    "vacate_node_drain_started_timestamp_seconds",
                    "Unix time at which the current drain of a node started.",
                ),
                &["node"],
            )
            .unwrap(),
            node_drain_eta: GaugeVec::new(
                Opts::new(
                    "vacate_node_drain_eta_timestamp_seconds",
                    "Unix time at which the migrations of a draining node are predicted to end \
                     (the VMIs left, largest first over the node's slots at the bandwidth \
                     migrations reach in the cluster).",
                ),
                &["node"],
            )
            .unwrap(),
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "vacate_reconcile_errors_total",
                    "Node reconciliations that ended in an error, by error kind.",
                ),
                &["error"],
            )
            .unwrap(),
            reconciliations: IntCounter::new(
                "vacate_reconciliations_total",
                "Node reconciliations begun: a change vacate reads, a timer or a retry.",
            )
            .unwrap(),
            invalid_states: IntCounter::new(
                "vacate_invalid_state_annotations_total",
                "Unreadable state annotations found on nodes and replaced.",
            )
            .unwrap(),
            leader: IntGauge::new(
                "vacate_leader",
                "1 when this replica is the one acting on the cluster.",
            )
            .unwrap(),
            build_info: IntGaugeVec::new(
                Opts::new("vacate_build_info", "Always 1; labels carry the version."),
                &["version"],
            )
            .unwrap(),
            kubevirt_info: IntGaugeVec::new(
                Opts::new(
                    "vacate_kubevirt_info",
                    "1 for the KubeVirt release the KubeVirt CR reports (status.observedKubeVirtVersion).",
                ),
                &["version"],
            )
            .unwrap(),
            window_open: IntGaugeVec::new(
                Opts::new(
                    "vacate_window_open",
                    "1 while a maintenance window is open, else 0.",
                ),
                &["window"],
            )
            .unwrap(),
            window_next_open: GaugeVec::new(
                Opts::new(
                    "vacate_window_next_open_timestamp_seconds",
                    "Unix time at which a closed maintenance window opens next.",
                ),
                &["window"],
            )
            .unwrap(),
            schedule_last_run: GaugeVec::new(
                Opts::new(
                    "vacate_schedule_last_run_timestamp_seconds",
                    "Unix time of the last run a maintenance schedule started (leader only).",
                ),
                &["schedule"],
            )
            .unwrap(),
            schedule_next_run: GaugeVec::new(
                Opts::new(
                    "vacate_schedule_next_run_timestamp_seconds",
                    "Unix time of a maintenance schedule's next run.",
                ),
                &["schedule"],
            )
            .unwrap(),
            fleet_in_maintenance: IntGaugeVec::new(
                Opts::new(
                    "vacate_fleet_nodes_in_maintenance",
                    "Nodes holding a maintenance slot, fleet-wide (scope=\"fleet\") and per pool.",
                ),
                &["scope"],
            )
            .unwrap(),
            fleet_max_in_maintenance: IntGaugeVec::new(
                Opts::new(
                    "vacate_fleet_max_nodes_in_maintenance",
                    "How many nodes may be in maintenance at once, fleet-wide and per pool.",
                ),
                &["scope"],
            )
            .unwrap(),
            runtime_tasks: IntGauge::new(
                "vacate_runtime_tasks",
                "Tasks alive in vacate's async runtime (tokio), read at each scrape: with \
                 process_open_fds and process_resident_memory_bytes, shows a leak as a rise \
                 that does not come back down.",
            )
            .unwrap(),
            registry,
        };
        m.register_all();
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for phase in Phase::ALL {
            m.nodes.with_label_values(&[phase.as_str()]).set(0);
        }
        for reason in BlockReason::ALL {
            m.nodes_blocked.with_label_values(&[reason.as_str()]).set(0);
        }
        for result in ["drained", "failed", "aborted"] {
            m.drains.with_label_values(&[result]);
        }
        // Durations are observed for these results; with the histograms at 0 from the
        // start, a rate over the first drain or migration is not empty.
        for result in ["drained", "failed"] {
            m.drain_duration.with_label_values(&[result]);
        }
        for result in ["succeeded", "failed", "cancelled"] {
            m.migrations.with_label_values(&[result]);
        }
        for result in ["succeeded", "failed"] {
            m.migration_duration.with_label_values(&[result]);
        }
        for kind in ["pod", "vmi"] {
            for result in ["evicted", "refused", "gone", "rejected"] {
                m.evictions.with_label_values(&[kind, result]);
            }
        }
        for refuser in ["pdb", "kubevirt"] {
            m.eviction_retries.with_label_values(&[refuser]);
        }
        for error in crate::error::Error::METRIC_LABELS {
            m.reconcile_errors.with_label_values(&[error]);
        }
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.nodes.clone()),
            Box::new(self.nodes_blocked.clone()),
            Box::new(self.drains.clone()),
            Box::new(self.drain_duration.clone()),
            Box::new(self.migrations_started.clone()),
            Box::new(self.migrations.clone()),
            Box::new(self.migrations_in_flight.clone()),
            Box::new(self.migration_limit.clone()),
            Box::new(self.migration_duration.clone()),
            Box::new(self.evictions.clone()),
            Box::new(self.eviction_retries.clone()),
            Box::new(self.vmi_restarts.clone()),
            Box::new(self.node_vmis.clone()),
            Box::new(self.node_pods.clone()),
            Box::new(self.node_drain_started.clone()),
            Box::new(self.node_drain_eta.clone()),
            Box::new(self.reconcile_errors.clone()),
            Box::new(self.invalid_states.clone()),
            Box::new(self.reconciliations.clone()),
            Box::new(self.leader.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.kubevirt_info.clone()),
            Box::new(self.window_open.clone()),
            Box::new(self.window_next_open.clone()),
            Box::new(self.schedule_last_run.clone()),
            Box::new(self.schedule_next_run.clone()),
            Box::new(self.fleet_in_maintenance.clone()),
            Box::new(self.fleet_max_in_maintenance.clone()),
            Box::new(self.runtime_tasks.clone()),
        ];
        for c in collectors {
            self.registry.register(c).expect("metric names are unique");
        }
        // The standard process metrics: process_resident_memory_bytes,
        // process_cpu_seconds_total, process_open_fds, ...
        #[cfg(target_os = "linux")]
        self.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
    }

    /// The state of every maintenance window at `now`; every replica shows it.
    pub fn update_windows(&self, config: &Config, now: chrono::DateTime<chrono::Utc>) {
        for w in &config.windows {
            let status = windows::status(w, now);
            self.window_open
                .with_label_values(&[&w.name])
                .set(status.open as i64);
            let next = status.next_open.map_or(0.0, |t| t.timestamp() as f64);
            self.window_next_open
                .with_label_values(&[&w.name])
                .set(next);
        }
        for s in &config.schedules {
            self.record_schedule_next(&s.name, s.cron.next(now, &s.timezone));
        }
    }

    /// When a maintenance schedule's next run is due (nothing when it has none).
    pub fn record_schedule_next(
        &self,
        schedule: &str,
        next: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        if let Some(next) = next {
            self.schedule_next_run
                .with_label_values(&[schedule])
                .set(next.timestamp() as f64);
        }
    }

    /// The run a maintenance schedule last started.
    pub fn record_schedule_run(&self, schedule: &str, run: chrono::DateTime<chrono::Utc>) {
        self.schedule_last_run
            .with_label_values(&[schedule])
            .set(run.timestamp() as f64);
    }

    /// Whether this replica leads (and acts on the cluster).
    pub fn record_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Nodes in maintenance against the limits, fleet-wide and per pool.
    pub fn update_fleet(&self, config: &Config, nodes: &[FleetNode]) {
        let mut scopes = vec![("fleet".to_string(), None, config.fleet.max_draining)];
        for pool in &config.fleet.pools {
            scopes.push((
                format!("pool:{}", pool.name),
                Some(&pool.selector),
                pool.max_draining,
            ));
        }
        for (scope, selector, limit) in scopes {
            let members: Vec<&FleetNode> = nodes
                .iter()
                .filter(|n| selector.is_none_or(|s| s.matches(&n.labels)))
                .collect();
            let busy = members.iter().filter(|n| n.in_maintenance).count();
            self.fleet_in_maintenance
                .with_label_values(&[&scope])
                .set(busy as i64);
            self.fleet_max_in_maintenance
                .with_label_values(&[&scope])
                .set(limit.of(members.len()) as i64);
        }
    }

    /// Counts what one action of a plan came to.
    pub fn record_action(&self, action: &Action, result: &ActionResult) {
        match (action, result) {
            (Action::CreateMigration { .. }, ActionResult::Done) => self.migrations_started.inc(),
            (Action::RestartVmi { .. }, ActionResult::Done) => self.vmi_restarts.inc(),
            (Action::EvictPod { vmi, .. }, result) => {
                let kind = if vmi.is_some() { "vmi" } else { "pod" };
                let label = match result {
                    ActionResult::Done => "evicted",
                    ActionResult::Refused(_) => "refused",
                    ActionResult::Gone => "gone",
                    ActionResult::AlreadyExists | ActionResult::Rejected(_) => "rejected",
                };
                self.evictions.with_label_values(&[kind, label]).inc();
                if let ActionResult::Refused(_) = result {
                    let refuser = if vmi.is_some() { "kubevirt" } else { "pdb" };
                    self.eviction_retries.with_label_values(&[refuser]).inc();
                }
            }
            _ => {}
        }
    }

    /// The KubeVirt release in the cluster ("unknown" while the CR reports none).
    pub fn record_kubevirt(&self, version: Option<&str>) {
        let version = version.unwrap_or("unknown");
        if self
            .kubevirt_info
            .get_metric_with_label_values(&[version])
            .is_ok_and(|g| g.get() == 1)
        {
            return;
        }
        self.kubevirt_info.reset();
        self.kubevirt_info.with_label_values(&[version]).set(1);
    }

    /// Counts a reconciliation begun.
    pub fn record_reconciliation(&self) {
        self.reconciliations.inc();
    }

    /// Counts a reconciliation that failed.
    pub fn record_error(&self, error: &Error) {
        self.reconcile_errors
            .with_label_values(&[error.metric_label()])
            .inc();
    }

    /// The nodes in each phase and blocked for each reason, from every node's last plan.
    pub fn record_phases(&self, nodes: impl Iterator<Item = (Phase, Option<BlockReason>)>) {
        let mut phases: HashMap<Phase, i64> = HashMap::new();
        let mut blocked: HashMap<BlockReason, i64> = HashMap::new();
        for (phase, reason) in nodes {
            *phases.entry(phase).or_default() += 1;
            if let Some(reason) = reason {
                *blocked.entry(reason).or_default() += 1;
            }
        }
        for phase in Phase::ALL {
            // Idle nodes are not counted: there are as many as the cluster has nodes.
            let count = if phase == Phase::Idle {
                0
            } else {
                phases.get(&phase).copied().unwrap_or(0)
            };
            self.nodes.with_label_values(&[phase.as_str()]).set(count);
        }
        for reason in BlockReason::ALL {
            self.nodes_blocked
                .with_label_values(&[reason.as_str()])
                .set(blocked.get(&reason).copied().unwrap_or(0));
        }
    }

    /// The progress of one node's drain; a node not draining has no such series.
    pub fn record_node(&self, node: &str, state: Option<&DrainState>) {
        // A Pending node is not cordoned and nothing moves yet: it has no progress to show,
        // and a long wait for a window must not look like a node cordoned for too long.
        let Some(state) = state.filter(|s| s.phase != Phase::Pending) else {
            self.forget_node(node);
            return;
        };
        let set = |gauge: &IntGaugeVec, which: &str, value: usize| {
            gauge.with_label_values(&[node, which]).set(value as i64);
        };
        set(&self.node_vmis, "total", state.vmis.len());
        set(&self.node_vmis, "done", state.vmis_done());
        set(&self.node_pods, "total", state.pods_total());
        set(&self.node_pods, "done", state.pods_done());
        self.node_drain_started
            .with_label_values(&[node])
            .set(state.started_at.timestamp() as f64);
        match state.eta {
            Some(eta) => self
                .node_drain_eta
                .with_label_values(&[node])
                .set(eta.timestamp_millis() as f64 / 1000.0),
            None => {
                let _ = self.node_drain_eta.remove_label_values(&[node]);
            }
        }
    }

    /// The migration limits in force (vacate's configuration capped by the KubeVirt CR)
    /// and vacate's own migrations in flight.
    pub fn record_migrations(&self, per_node: u32, per_cluster: u32, ours_in_flight: usize) {
        self.migration_limit
            .with_label_values(&["node"])
            .set(per_node as i64);
        self.migration_limit
            .with_label_values(&["cluster"])
            .set(per_cluster as i64);
        self.migrations_in_flight.set(ours_in_flight as i64);
    }

    pub fn observe(&self, observation: &Observation) {
        match observation {
            Observation::MigrationFinished { result, duration } => {
                self.migrations.with_label_values(&[result.as_str()]).inc();
                if let (Some(d), false) = (duration, *result == MigrationResult::Cancelled) {
                    self.migration_duration
                        .with_label_values(&[result.as_str()])
                        .observe(d.as_secs_f64());
                }
            }
            Observation::DrainFinished { result, duration } => {
                self.drains.with_label_values(&[result.as_str()]).inc();
                if *result != DrainResult::Aborted {
                    self.drain_duration
                        .with_label_values(&[result.as_str()])
                        .observe(duration.as_secs_f64());
                }
            }
            Observation::InvalidState { .. } => {
                self.invalid_states.inc();
            }
            Observation::DrainStarted
            | Observation::PhaseChanged { .. }
            | Observation::PlaceReleased => {}
        }
    }

    /// Removes the per-node series of a node that is no longer being drained.
    pub fn forget_node(&self, node: &str) {
        for state in ["total", "done"] {
            let _ = self.node_vmis.remove_label_values(&[node, state]);
            let _ = self.node_pods.remove_label_values(&[node, state]);
        }
        let _ = self.node_drain_started.remove_label_values(&[node]);
        let _ = self.node_drain_eta.remove_label_values(&[node]);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        // Outside a runtime (a unit test) the gauge keeps its last value.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks
                .set(runtime.metrics().num_alive_tasks() as i64);
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_standard_process_metrics_are_exported() {
        let text = Metrics::new().render();
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing");
        }
    }

    #[tokio::test]
    async fn the_runtime_task_count_is_exported() {
        let m = Metrics::new();
        let before = m.render();
        let count = |text: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix("vacate_runtime_tasks "))
                .and_then(|v| v.parse().ok())
                .expect("vacate_runtime_tasks is exported")
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stopped.await;
        });
        let during = m.render();
        assert_eq!(count(&during), count(&before) + 1, "{during}");
        let _ = stop.send(());
        task.await.unwrap();
        assert_eq!(count(&m.render()), count(&before));
    }

    #[test]
    fn the_kubevirt_release_is_one_series() {
        let m = Metrics::new();
        m.record_kubevirt(None);
        m.record_kubevirt(Some("v1.7.4"));
        m.record_kubevirt(Some("v1.9.0"));
        let text = m.render();
        assert!(text.contains("vacate_kubevirt_info{version=\"v1.9.0\"} 1"));
        assert!(
            !text.contains("v1.7.4") && !text.contains("unknown"),
            "{text}"
        );
    }
}
