//! The imperative shell: watches the cluster, builds a snapshot per node, asks the planner,
//! and carries out the plan. Reconciliations run one node at a time, so the cluster-wide
//! migration count seen by one node's plan includes what the previous plan created.

pub mod execute;
pub mod gate;
pub mod prometheus;
pub mod schedule;
pub mod snapshot;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch as tokio_watch};
use tracing::Instrument;

use crate::config::Config;
use crate::error::{Error, Result, status_code};
use crate::metrics::Metrics;
use crate::planner::{
    self, ActionResult, BlockReason, DrainState, MigrationPhase, MigrationView, NextState, Phase,
    Snapshot, StateAnnotation,
};
use execute::Executor;
use futures::StreamExt;
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, applier};
use watch::{NodeFilter, PodWatches, Stores, Trigger, Wake};

/// Wait after a failed reconciliation before the next attempt.
const ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// How long a just-created migration counts as in flight before the watch cache shows it.
const LEDGER_TTL: Duration = Duration::from_secs(120);

/// What one reconciliation left behind, for metrics, `vacate drain` and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub phase: Phase,
    pub blocked: Option<BlockReason>,
    pub state: Option<DrainState>,
}

/// Migrations created but not yet seen by the watch cache.
#[derive(Default)]
struct Ledger {
    created: HashMap<(String, String), (String, String, Instant)>,
}

pub struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub stores: Stores,
    pub pods: PodWatches,
    trigger: Trigger,
    ledger: Mutex<Ledger>,
    reports: Mutex<HashMap<String, NodeReport>>,
    report_tx: tokio_watch::Sender<HashMap<String, NodeReport>>,
    /// When this daemon last started a drain (the delay between drains counts from it).
    last_start: Mutex<Option<chrono::DateTime<Utc>>>,
    prometheus: Option<prometheus::PrometheusGate>,
}

/// A running shell: its context and the receiver of node triggers.
pub struct Shell {
    pub ctx: Arc<Context>,
    rx: mpsc::UnboundedReceiver<Wake>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Shell {
    /// Starts the watches. Call [`Shell::run`] to start acting.
    pub fn start(
        client: Client,
        config: Arc<Config>,
        metrics: Metrics,
        filter: NodeFilter,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stores, tasks) = watch::start(&client, &filter, tx.clone());
        let reporter = Reporter {
            controller: "vacate".into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let (report_tx, _) = tokio_watch::channel(HashMap::new());
        let b = &config.blockers;
        let prometheus = b.prometheus_url.as_ref().map(|url| {
            prometheus::PrometheusGate::new(
                url,
                &b.prometheus_query,
                b.prometheus_interval.get(),
                Duration::from_secs(10),
            )
            .expect("blockers.prometheus_url is validated at start-up")
        });
        let ctx = Arc::new(Context {
            client,
            config,
            metrics,
            recorder,
            stores,
            pods: PodWatches::default(),
            trigger: tx,
            ledger: Mutex::new(Ledger::default()),
            reports: Mutex::new(HashMap::new()),
            report_tx,
            last_start: Mutex::new(None),
            prometheus,
        });
        Self {
            ctx,
            rx,
            _tasks: tasks,
        }
    }

    /// Reports of every node after each reconciliation.
    pub fn reports(&self) -> tokio_watch::Receiver<HashMap<String, NodeReport>> {
        self.ctx.report_tx.subscribe()
    }

    /// Reconciles nodes as wake-ups arrive, one at a time (the cluster-wide migration count
    /// one plan sees includes what the previous plan created), until `stop` turns true.
    /// kube-runtime's applier keeps the queue: a node woken while it is being reconciled is
    /// looked at once more afterwards, and of several wake times the earliest wins.
    pub async fn run(self, mut stop: tokio_watch::Receiver<bool>) {
        let ctx = self.ctx;
        for node in ctx.stores.nodes.state() {
            let _ = ctx.trigger.send(Wake::Node(node.name_any()));
        }
        let stopped = async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        };
        let expand = Arc::clone(&ctx);
        let wakes = futures::stream::unfold(self.rx, |mut rx| async move {
            rx.recv().await.map(|wake| (wake, rx))
        });
        let queue = wakes
            .flat_map(move |wake| futures::stream::iter(expand.nodes_to_wake(wake)))
            .map(Ok::<_, std::convert::Infallible>)
            .take_until(stopped);
        let results = applier(
            |node: Arc<Node>, ctx: Arc<Context>| {
                Box::pin(async move {
                    let name = node.name_any();
                    let span = tracing::info_span!("node", node = %name);
                    let next = ctx.reconcile(&name).instrument(span).await?;
                    Ok::<_, Error>(next.map_or_else(Requeue::await_change, Requeue::requeue))
                })
            },
            |node: Arc<Node>, error: &Error, ctx: Arc<Context>| {
                ctx.metrics
                    .reconcile_errors
                    .with_label_values(&[error.metric_label()])
                    .inc();
                tracing::warn!(node = %node.name_any(), %error, "reconciliation failed; retrying");
                Requeue::requeue(ERROR_BACKOFF)
            },
            Arc::clone(&ctx),
            ctx.stores.nodes.clone(),
            queue,
            ControllerConfig::default().concurrency(1),
        );
        results
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::trace!(%error, "reconcile request ended without a reconciliation");
                }
            })
            .await;
    }
}

impl Context {
    /// The nodes a wake-up concerns. A node gone from the cache is forgotten here, as there
    /// is nothing left to reconcile.
    fn nodes_to_wake(&self, wake: Wake) -> Vec<ObjectRef<Node>> {
        match wake {
            Wake::Node(name) => {
                let node = ObjectRef::new(&name);
                if self.stores.nodes.get(&node).is_some() {
                    vec![node]
                } else {
                    self.forget(&name);
                    Vec::new()
                }
            }
            Wake::Draining => {
                let reports = self.reports.lock().expect("report map lock");
                reports
                    .iter()
                    .filter(|(_, r)| r.phase.is_draining())
                    .map(|(name, _)| ObjectRef::new(name))
                    .collect()
            }
        }
    }

    /// Drops everything kept for a node that left the cache or the drain.
    fn forget(&self, node: &str) {
        self.pods.stop(node);
        self.metrics.forget_node(node);
        self.set_report(node, None);
    }

    fn wake_pending(&self, except: &str) {
        let reports = self.reports.lock().expect("report map lock");
        for (node, report) in reports.iter() {
            if node != except && report.phase == Phase::Pending {
                let _ = self.trigger.send(Wake::Node(node.clone()));
            }
        }
    }

    fn set_report(&self, node: &str, report: Option<NodeReport>) {
        let mut reports = self.reports.lock().expect("report map lock");
        match report {
            Some(r) => {
                reports.insert(node.to_string(), r);
            }
            None => {
                reports.remove(node);
            }
        }
        let mut phases: HashMap<Phase, i64> = HashMap::new();
        let mut blocked: HashMap<BlockReason, i64> = HashMap::new();
        for r in reports.values() {
            *phases.entry(r.phase).or_default() += 1;
            if let Some(b) = r.blocked {
                *blocked.entry(b).or_default() += 1;
            }
        }
        for phase in Phase::ALL {
            let count = if phase == Phase::Idle {
                0
            } else {
                phases.get(&phase).copied().unwrap_or(0)
            };
            self.metrics
                .nodes
                .with_label_values(&[phase.as_str()])
                .set(count);
        }
        for reason in BlockReason::ALL {
            self.metrics
                .nodes_blocked
                .with_label_values(&[reason.as_str()])
                .set(blocked.get(&reason).copied().unwrap_or(0));
        }
        self.report_tx.send_replace(reports.clone());
    }

    /// Unfinished migrations cluster-wide and the views of a node's migrations, including
    /// migrations created moments ago that the watch cache has not delivered yet.
    fn migrations_for(
        &self,
        node: &str,
        vmi_keys: &BTreeSet<(String, String)>,
    ) -> (u32, Vec<MigrationView>) {
        let all = self.stores.migrations.state();
        let mut ledger = self.ledger.lock().expect("ledger lock");
        ledger.created.retain(|(ns, name), (_, _, at)| {
            at.elapsed() < LEDGER_TTL
                && self
                    .stores
                    .migrations
                    .get(&ObjectRef::new(name).within(ns))
                    .is_none()
        });
        let mut in_flight = all.iter().filter(|m| m.is_unfinished()).count() as u32;
        in_flight += ledger.created.len() as u32;
        let ours_in_flight = all
            .iter()
            .filter(|m| m.is_unfinished() && snapshot::is_ours(m))
            .count()
            + ledger.created.len();
        self.metrics.migrations_in_flight.set(ours_in_flight as i64);
        let mut views: Vec<MigrationView> = all
            .iter()
            .filter(|m| {
                snapshot::is_ours_for(m, node)
                    || vmi_keys
                        .contains(&(m.namespace().unwrap_or_default(), m.spec.vmi_name.clone()))
            })
            .map(|m| snapshot::migration_view(m, node))
            .collect();
        for ((namespace, name), (for_node, vmi, at)) in &ledger.created {
            if for_node == node {
                views.push(MigrationView {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    vmi_name: vmi.clone(),
                    phase: MigrationPhase::Unfinished,
                    ours: true,
                    created_at: None,
                    finished_at: None,
                    deleting: false,
                });
                tracing::trace!(migration = %name, age = ?at.elapsed(), "counting a migration not yet in the cache");
            }
        }
        (in_flight, views)
    }

    /// Builds the planner's snapshot of a node from the watch caches; `None` when the node
    /// is gone, outside the selector, or not involved in any drain.
    pub async fn snapshot(
        self: &Arc<Self>,
        name: &str,
        include_idle: bool,
    ) -> Result<Option<(Arc<Node>, Snapshot)>> {
        let config = &self.config;
        let Some(node) = self.stores.nodes.get(&ObjectRef::new(name)) else {
            // Deleted, or outside the node filter.
            self.forget(name);
            return Ok(None);
        };
        if !config.node.selector.matches(node.labels()) {
            return Ok(None);
        }
        let view = snapshot::node_view(&node, config);
        let involved =
            planner::request_of(&view).is_some() || view.state != StateAnnotation::Absent;
        if !involved && !include_idle {
            self.forget(name);
            return Ok(None);
        }
        let pods = self.pods.pods(&self.client, name, &self.trigger).await?;
        let kubevirt = self.stores.kubevirt.state().first().cloned();
        let default_strategy = kubevirt.as_ref().and_then(|kv| kv.eviction_strategy());
        let vmis: Vec<_> = self
            .stores
            .vmis
            .state()
            .into_iter()
            .filter(|v| v.node_name() == Some(name))
            .collect();
        let vmi_keys: BTreeSet<(String, String)> = vmis
            .iter()
            .map(|v| (v.namespace().unwrap_or_default(), v.name_any()))
            .collect();
        let (in_flight, migrations) = self.migrations_for(name, &vmi_keys);
        let cluster = snapshot::cluster_view(kubevirt.as_deref(), in_flight);
        self.metrics
            .migration_limit
            .with_label_values(&["node"])
            .set(
                config
                    .migration
                    .max_in_flight_per_node
                    .get()
                    .min(cluster.kubevirt_per_node) as i64,
            );
        self.metrics
            .migration_limit
            .with_label_values(&["cluster"])
            .set(
                config
                    .migration
                    .max_in_flight_cluster
                    .get()
                    .min(cluster.kubevirt_per_cluster) as i64,
            );
        let now = Utc::now();
        let snap = Snapshot {
            now,
            vmis: vmis
                .iter()
                .map(|v| snapshot::vmi_view(v, default_strategy, &pods))
                .collect(),
            migrations,
            pods: pods.iter().map(snapshot::pod_view).collect(),
            cluster,
            // Closed until asked (reconcile asks when the plan may start a drain), so that no
            // drain ever starts without the fleet limits, capacity and blockers checked.
            start_gate: Err(planner::Gate::new(
                BlockReason::FleetLimit,
                "the fleet limits were not checked yet",
            )),
            node: view,
        };
        Ok(Some((node, snap)))
    }

    /// Looks at one node and takes the next step. Returns when to look again.
    pub async fn reconcile(self: &Arc<Self>, name: &str) -> Result<Option<Duration>> {
        let config = &self.config;
        let Some((node, mut snap)) = self.snapshot(name, false).await? else {
            return Ok(None);
        };
        if planner::wants_to_start(&snap, config) {
            snap.start_gate = self.start_gate(&node).await?;
        }
        let plan = planner::plan(&snap, config);
        let executor = Executor {
            client: &self.client,
            config,
            metrics: &self.metrics,
            recorder: &self.recorder,
            node: &node,
            written_version: Default::default(),
        };

        // Write the intent first: a vacate that dies after an action and before recording
        // it finds the intent on restart and repeats the (idempotent) action.
        let mut state = match &plan.state {
            NextState::Write(s) => {
                let rv = node.resource_version();
                if let Err(error) = executor.write_state(Some(s.to_json()), rv.as_deref()).await {
                    if let Error::Kube { source, .. } = &error
                        && status_code(source) == Some(409)
                    {
                        // Someone changed the node since the snapshot: plan again with fresh data.
                        return Ok(Some(Duration::from_millis(200)));
                    }
                    return Err(error);
                }
                Some((**s).clone())
            }
            NextState::Unchanged => snap.node.state.valid().cloned(),
            NextState::Clear => None,
        };
        let written = state.clone();
        if plan.actions.contains(&planner::Action::Cordon)
            || state.as_ref().is_some_and(|s| s.phase.is_draining())
                && snap
                    .node
                    .state
                    .valid()
                    .is_none_or(|o| !o.phase.is_draining())
        {
            *self.last_start.lock().expect("last start lock") = Some(snap.now);
        }
        let mut refused = false;
        for action in &plan.actions {
            let result = executor.run(action).await?;
            if let planner::Action::CreateMigration {
                namespace,
                name: m,
                vmi,
            } = action
                && result == ActionResult::Done
            {
                self.ledger.lock().expect("ledger lock").created.insert(
                    (namespace.clone(), m.clone()),
                    (name.to_string(), vmi.clone(), Instant::now()),
                );
            }
            refused |= matches!(result, ActionResult::Refused(_) | ActionResult::Rejected(_));
            if let Some(s) = state.as_mut() {
                planner::record_outcome(s, action, &result, Utc::now(), config);
            }
        }
        match (&plan.state, &state) {
            (NextState::Clear, _) => executor.write_state(None, None).await?,
            (_, Some(s)) if state != written => {
                executor.write_state(Some(s.to_json()), None).await?
            }
            _ => {}
        }
        // The next look at this node must see what was just written, not an older copy
        // from the watch cache: wait (briefly) until the cache has caught up.
        if let Some(version) = executor.written_version() {
            self.wait_for_cache(name, &version).await;
        }
        for observation in &plan.observations {
            self.metrics.observe(observation);
            if let planner::Observation::InvalidState { message } = observation {
                tracing::warn!(%message, "replaced an unreadable state annotation");
            }
        }
        self.update_node_metrics(name, state.as_ref());
        let report = NodeReport {
            phase: plan.phase,
            blocked: plan.blocked,
            state: state.clone(),
        };
        let phase = report.phase;
        let released = snap
            .node
            .state
            .valid()
            .is_some_and(|s| s.phase != Phase::Pending)
            && matches!(phase, Phase::Idle | Phase::Pending | Phase::Failed);
        self.set_report(name, Some(report));
        if released {
            // A maintenance slot may have come free: nodes waiting for one look again now.
            self.wake_pending(name);
        }
        let phase_before = snap.node.state.valid().map_or(Phase::Idle, |s| s.phase);
        if phase_before != phase || plan.actions.contains(&planner::Action::Uncordon) {
            // Only a change of phase (or a cordon lifted) changes who is in maintenance; the
            // fleet gauges read every node, which is not worth doing on every reconciliation.
            self.metrics.update_fleet(config, &self.fleet_nodes());
        }
        if phase == Phase::Idle && planner::request_of(&snap.node).is_none() {
            self.pods.stop(name);
        }
        if let Some(blocked) = &state.as_ref().and_then(|s| s.blocked.clone()) {
            tracing::info!(phase = %phase, reason = blocked.reason.as_str(), message = %blocked.message, "drain blocked");
        } else {
            tracing::debug!(phase = %phase, actions = plan.actions.len(), "reconciled");
        }

        let mut next = plan.requeue_after;
        if refused {
            // A refusal changed the state: plan again soon with it.
            next = Some(next.map_or(Duration::from_secs(1), |n| n.min(Duration::from_secs(1))));
        }
        if phase.is_draining() || phase == Phase::Uncordoning || phase == Phase::Pending {
            // A safety net only: every step of a drain is woken by what it waits for.
            let resync = config.drain.resync.get();
            next = Some(next.map_or(resync, |n| n.min(resync)));
        }
        Ok(next)
    }

    async fn wait_for_cache(&self, node: &str, written: &str) {
        let Ok(written) = written.parse::<u64>() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let seen = self
                .stores
                .nodes
                .get(&ObjectRef::new(node))
                .and_then(|n| n.resource_version())
                .and_then(|v| v.parse::<u64>().ok());
            match seen {
                Some(seen) if seen >= written => return,
                None => return,
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        tracing::debug!(node, "the watch cache lags behind vacate's own write");
    }

    fn update_node_metrics(&self, node: &str, state: Option<&DrainState>) {
        // A Pending node is not cordoned and nothing moves yet: it has no progress to show,
        // and a long wait for a window must not look like a node cordoned for too long.
        let Some(state) = state.filter(|s| s.phase != Phase::Pending) else {
            self.metrics.forget_node(node);
            return;
        };
        let m = &self.metrics;
        m.node_vmis
            .with_label_values(&[node, "total"])
            .set(state.vmis.len() as i64);
        m.node_vmis
            .with_label_values(&[node, "done"])
            .set(state.vmis_done() as i64);
        m.node_pods
            .with_label_values(&[node, "total"])
            .set(state.pods.len() as i64);
        m.node_pods
            .with_label_values(&[node, "done"])
            .set(state.pods_done() as i64);
        m.node_drain_started
            .with_label_values(&[node])
            .set(state.started_at.timestamp() as f64);
    }
}

/// Looks up a node, for commands that act on one.
pub async fn get_node(client: &Client, name: &str) -> Result<Node> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    nodes
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading node {name}")))?
        .ok_or_else(|| Error::NodeNotFound(name.to_string()))
}
