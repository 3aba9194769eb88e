//! The imperative shell: watches the cluster, builds a snapshot per node, asks the planner,
//! and carries out the plan. Reconciliations run one node at a time, so the cluster-wide
//! migration count seen by one node's plan includes what the previous plan created.

pub mod cached;
pub mod execute;
pub mod fence;
pub mod gate;
pub mod lean;
pub mod prometheus;
mod read;
pub mod restarts;
pub mod schedule;
pub mod snapshot;
mod steer;
#[cfg(test)]
mod tests;
pub mod usage;
pub mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, applier};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch as tokio_watch};
use tracing::Instrument;

use crate::config::Config;
use crate::error::{Error, Result, status_code};
use crate::metrics::Metrics;
use crate::planner::{
    self, Action, ActionResult, BlockReason, DrainState, NextState, Observation, Phase, Plan,
    Snapshot, StartGate,
};
use cached::CachedNode;
use execute::Executor;
use read::{Kept, Ledger};
pub use read::{Look, Read};
use watch::{NodeCache, NodeFilter, PodWatches, Stores, Trigger, Wake};

/// Wait after a failed reconciliation before the next attempt, on average.
const ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// [`ERROR_BACKOFF`] with ±50 % jitter: retries at a fixed period can lock onto a periodic
/// load on the API server (seen with API priority and fairness answering 429 in bursts) and
/// land in every burst.
fn error_backoff() -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new()
        .hash_one(std::time::SystemTime::now())
        % 1000;
    ERROR_BACKOFF.mul_f64(0.5 + random as f64 / 1000.0)
}

/// What one reconciliation left behind, for metrics, `vacate drain` and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub phase: Phase,
    pub blocked: Option<BlockReason>,
    pub state: Option<DrainState>,
}

pub struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub stores: Stores,
    node_cache: NodeCache,
    pub pods: PodWatches,
    trigger: Trigger,
    ledger: Mutex<Ledger>,
    kept: Mutex<Kept>,
    /// Every node's last report, kept in the channel its readers watch: changed in place,
    /// never copied (with hundreds of nodes Pending, a copy at every reconciliation would
    /// cost as much as the reconciliations).
    report_tx: tokio_watch::Sender<HashMap<String, NodeReport>>,
    /// When this daemon last started a drain (the delay between drains counts from it).
    last_start: Mutex<Option<chrono::DateTime<Utc>>>,
    prometheus: Option<prometheus::PrometheusGate>,
    /// The Lease this replica must hold to write (none without leader election).
    fence: Option<fence::Fence>,
    /// The room on the nodes migrations may be steered to during a rollout.
    rooms: Mutex<steer::Rooms>,
}

/// A running shell: its context and the receiver of node triggers.
pub struct Shell {
    pub ctx: Arc<Context>,
    rx: mpsc::UnboundedReceiver<Wake>,
    _tasks: watch::Tasks,
}

impl Shell {
    /// Starts the watches. Call [`Shell::run`] to start acting.
    pub fn start(
        client: Client,
        config: Arc<Config>,
        metrics: Metrics,
        filter: NodeFilter,
        fence: Option<fence::Fence>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stores, tasks) =
            watch::start(&client, &filter, &config.node.state_annotation, tx.clone());
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
            node_cache: filter.cache(),
            pods: PodWatches::default(),
            trigger: tx,
            ledger: Mutex::new(Ledger::default()),
            kept: Mutex::new(Kept::default()),
            report_tx,
            last_start: Mutex::new(None),
            prometheus,
            fence,
            rooms: Mutex::default(),
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
            |node: Arc<CachedNode>, ctx: Arc<Context>| {
                Box::pin(async move {
                    let name = node.name_any();
                    let span = tracing::info_span!("node", node = %name);
                    let next = ctx.reconcile(&name).instrument(span).await?;
                    Ok::<_, Error>(next.map_or_else(Requeue::await_change, Requeue::requeue))
                })
            },
            |node: Arc<CachedNode>, error: &Error, ctx: Arc<Context>| {
                ctx.metrics.record_error(error);
                tracing::warn!(node = %node.name_any(), %error, "reconciliation failed; retrying");
                Requeue::requeue(error_backoff())
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
    fn nodes_to_wake(&self, wake: Wake) -> Vec<ObjectRef<CachedNode>> {
        match wake {
            Wake::Node(name) => {
                let node = ObjectRef::new(&name);
                if let Some(object) = self.stores.nodes.get(&node) {
                    // A draining node is about to be looked at with its pods: their watch
                    // starts now, not in its turn of the reconciliation. Nodes waiting for
                    // their turn hold no pod watch (see `Context::reconcile`).
                    let draining = object
                        .state
                        .valid()
                        .is_some_and(|st| st.phase.is_draining());
                    if draining {
                        self.pods.ensure(&self.client, &name, &self.trigger);
                    }
                    vec![node]
                } else {
                    self.forget(&name);
                    Vec::new()
                }
            }
            Wake::Draining => self
                .report_tx
                .borrow()
                .iter()
                .filter(|(_, r)| r.phase.is_draining())
                .map(|(name, _)| ObjectRef::new(name))
                .collect(),
        }
    }

    /// Drops everything kept for a node that left the cache or the drain.
    fn forget(&self, node: &str) {
        self.kept.lock().expect("kept states lock").forget(node);
        self.pods.stop(node);
        self.metrics.forget_node(node);
        self.set_report(node, None);
    }

    /// Nodes waiting in Pending look again: a place in the fleet may have come free.
    fn wake_pending(&self, except: &str) {
        for (node, report) in self.report_tx.borrow().iter() {
            if node != except && report.phase == Phase::Pending {
                let _ = self.trigger.send(Wake::Node(node.clone()));
            }
        }
    }

    fn set_report(&self, node: &str, report: Option<NodeReport>) {
        self.report_tx.send_if_modified(|reports| {
            let changed = match report {
                Some(r) if reports.get(node) != Some(&r) => {
                    reports.insert(node.to_string(), r);
                    true
                }
                Some(_) => false,
                None => reports.remove(node).is_some(),
            };
            if changed {
                self.metrics
                    .record_phases(reports.values().map(|r| (r.phase, r.blocked)));
            }
            changed
        });
    }

    /// The planner's snapshot of a node (see [`Context::look`]); `None` when there is
    /// nothing to plan for it.
    pub async fn snapshot(&self, name: &str, include_idle: bool) -> Result<Option<Snapshot>> {
        Ok(match self.look(name, include_idle, include_idle).await? {
            Look::Node(read) => Some(read.snapshot),
            Look::Gone | Look::NotInvolved => None,
        })
    }

    /// Looks at one node and takes the next step, in four stages: read the snapshot, ask
    /// the start gate if a drain may begin, plan, carry the plan out, and report. Returns
    /// when to look again.
    pub async fn reconcile(self: &Arc<Self>, name: &str) -> Result<Option<Duration>> {
        self.metrics.record_reconciliation();
        let config = &self.config;
        // The start gate (fleet limits, blockers, capacity) is asked while the node's pods
        // are read, when the node may start a drain: a request is cordoned sooner.
        let wants_to_start = self
            .stores
            .nodes
            .get(&ObjectRef::new(name))
            .filter(|node| config.node.selector.matches(node.labels()))
            .filter(|node| {
                let view = snapshot::node_view(node, config);
                planner::node_wants_to_start(&view, Utc::now(), config)
            });
        let gate = match &wants_to_start {
            Some(node) => Some(self.start_gate(node).await?),
            None => None,
        };
        // A node's pods are read (and watched) only while it drains or may start: a node
        // held back by the fleet's limits, however many there are, costs no pod watch.
        let may_start = gate.as_ref().is_some_and(|gate| match gate {
            StartGate::Open => true,
            StartGate::Closed(gate) => !matches!(
                gate.reason,
                BlockReason::FleetLimit | BlockReason::MinSchedulable
            ),
            StartGate::NotAsked => false,
        });
        let mut read = match self.look(name, false, may_start).await? {
            Look::Node(read) => *read,
            Look::Gone | Look::NotInvolved => {
                self.forget(name);
                return Ok(None);
            }
        };
        if let Some(gate) = gate {
            read.snapshot.start_gate = gate;
        }
        // Where migrations may go is looked up only when the plan may start some.
        let draining = read
            .snapshot
            .node
            .state
            .valid()
            .is_some_and(|s| s.phase.is_draining());
        if (draining || wants_to_start.is_some())
            && read.snapshot.vmis.iter().any(|v| v.running && !v.finished)
        {
            read.snapshot.cluster.steering = self.steering(name).await;
        }
        let plan = planner::plan(&read.snapshot, config);
        let Applied {
            state,
            replan_at,
            failed,
        } = match self.apply(&read, &plan).await? {
            Some(applied) => applied,
            // Someone changed the node since the snapshot: plan again with fresh data.
            None => return Ok(Some(Duration::from_millis(200))),
        };
        let snap = &read.snapshot;
        self.report(name, snap, &plan, state.as_ref(), read.ours_in_flight);
        if !read.with_pods {
            self.pods.stop(name);
        }
        if let Some(error) = failed {
            // The other actions ran; this one is tried again after the error back-off.
            return Err(error);
        }
        Ok(plan.look_again(replan_at, Utc::now(), config))
    }

    /// Carries the plan out: the new state first, with the plan's node changes in the same
    /// request (a vacate that dies after an action and before recording it finds the intent
    /// on restart and repeats the idempotent action), then the other actions, then what
    /// their results changed, kept until the next write. `None` when the node changed since
    /// the snapshot and the plan must be made again.
    async fn apply(&self, read: &Read, plan: &Plan) -> Result<Option<Applied>> {
        let config = &self.config;
        let (node, snap) = (&*read.node, &read.snapshot);
        let name = node.name_any();
        let executor = Executor {
            client: &self.client,
            config,
            recorder: &self.recorder,
            node,
            written_version: Default::default(),
        };
        let with_state = !matches!(plan.state, NextState::Unchanged | NextState::Keep(_));
        let node_changes: Vec<&Action> = if with_state {
            plan.actions.iter().filter(|a| a.is_node_change()).collect()
        } else {
            Vec::new()
        };
        // What the read of the node left to tidy: a kept state someone else's write made
        // void, migrations of the ledger the watch cache shows by now or too old to count.
        (self.kept.lock().expect("kept states lock")).forget_void(&name, read.stored.as_deref());
        (self.ledger.lock().expect("ledger lock")).prune(|ns, m| self.in_migration_cache(ns, m));
        self.check_fence()?;
        // What the annotation holds once the write is done.
        let mut stored = read.stored.clone();
        let mut state = match &plan.state {
            NextState::Write(s) => {
                let rv = node.resource_version();
                let json = s.to_json();
                let write = executor.write_state(Some(json.clone()), rv.as_deref(), &node_changes);
                if let Err(error) = write.await {
                    if let Error::Kube { source, .. } = &error
                        && status_code(source) == Some(409)
                    {
                        return Ok(None);
                    }
                    return Err(error);
                }
                stored = Some(json);
                Some((**s).clone())
            }
            NextState::Keep(s) => Some((**s).clone()),
            NextState::Unchanged => snap.node.state.valid().cloned(),
            NextState::Clear => None,
        };
        let mut replan_at = None;
        let mut failed = None;
        let mut evicted = Vec::new();
        for action in &plan.actions {
            // A plan may take a while to carry out: the lease is checked before each step,
            // events included (they are writes too).
            self.check_fence()?;
            let result = if node_changes.contains(&action) {
                if matches!(plan.state, NextState::Clear) {
                    // Sent below, with the removal of the state.
                    continue;
                }
                ActionResult::Done
            } else {
                match executor.run(action).await {
                    Ok(result) => result,
                    // Nothing may move off a node that is not cordoned.
                    Err(error) if *action == Action::Cordon => return Err(error),
                    // One failing call (a webhook down, a 5xx) does not hold up the others.
                    Err(error) => {
                        tracing::warn!(?action, %error, "an action failed; the others go on");
                        failed.get_or_insert(error);
                        continue;
                    }
                }
            };
            self.metrics.record_action(action, &result);
            match (action, &result) {
                (
                    Action::CreateMigration {
                        namespace,
                        name: m,
                        vmi,
                        target,
                    },
                    ActionResult::Done,
                ) => {
                    if let (Some(host), Some(view)) = (
                        target,
                        snap.vmis
                            .iter()
                            .find(|v| v.namespace == *namespace && v.name == *vmi),
                    ) {
                        self.reserve(host, view.requests, namespace, m);
                    }
                    let mut ledger = self.ledger.lock().expect("ledger lock");
                    ledger.created(namespace, m, &name, vmi);
                }
                (
                    Action::EvictPod {
                        namespace,
                        name: pod,
                        vmi: None,
                        ..
                    },
                    ActionResult::Done,
                ) => evicted.push(format!("{namespace}/{pod}")),
                _ => {}
            }
            if let Some(s) = state.as_mut()
                && let Some(at) = planner::record_outcome(s, action, &result, Utc::now(), config)
            {
                replan_at = Some(replan_at.map_or(at, |r: chrono::DateTime<Utc>| r.min(at)));
            }
        }
        if !evicted.is_empty() {
            self.check_fence()?;
            let message = format!("evicted {} pods: {}", evicted.len(), evicted.join(", "));
            executor
                .publish(planner::EventType::Normal, "PodsEvicted", message)
                .await;
        }
        if matches!(plan.state, NextState::Clear) {
            self.check_fence()?;
            executor.write_state(None, None, &node_changes).await?;
            for action in &node_changes {
                self.metrics.record_action(action, &ActionResult::Done);
            }
        }
        // What the results changed is written when others need to see it (a blocker, a
        // failure) and kept for the next write otherwise.
        if let Some(s) = &state {
            let durable = planner::StateAnnotation::parse(stored.as_deref())
                .valid()
                .map(DrainState::durable_part);
            if durable.as_ref() != Some(&s.durable_part()) {
                self.check_fence()?;
                executor.write_state(Some(s.to_json()), None, &[]).await?;
                stored = Some(s.to_json());
            }
        }
        {
            let mut kept = self.kept.lock().expect("kept states lock");
            match &state {
                Some(s) if stored.as_deref() != Some(s.to_json().as_str()) => {
                    kept.keep(&name, stored, s.clone());
                }
                _ => kept.forget(&name),
            }
        }
        // The next look at this node must see what was just written, not an older copy
        // from the watch cache: wait (briefly) until the cache has caught up.
        if let Some(version) = executor.written_version() {
            self.wait_for_cache(&name, &version).await;
        }
        Ok(Some(Applied {
            state,
            replan_at,
            failed,
        }))
    }

    /// Tells everyone what the plan did: metrics, `vacate drain` and the tests through the
    /// reports, and the nodes that the plan's transitions concern.
    fn report(
        &self,
        name: &str,
        snap: &Snapshot,
        plan: &Plan,
        state: Option<&DrainState>,
        ours_in_flight: usize,
    ) {
        let config = &self.config;
        let (per_node, per_cluster) = snap.cluster.migration_caps(config);
        self.metrics
            .record_migrations(per_node, per_cluster, ours_in_flight);
        self.metrics.record_node(name, state);
        let kubevirt = self.stores.kubevirt.state().first().cloned();
        self.metrics
            .record_kubevirt(kubevirt.as_ref().and_then(|kv| kv.observed_version()));
        self.set_report(
            name,
            Some(NodeReport {
                phase: plan.phase,
                blocked: plan.blocked,
                state: state.cloned(),
            }),
        );
        let mut fleet_changed = false;
        for observation in &plan.observations {
            self.metrics.observe(observation);
            match observation {
                Observation::DrainStarted => {
                    *self.last_start.lock().expect("last start lock") = Some(snap.now);
                }
                Observation::PhaseChanged { .. } => fleet_changed = true,
                Observation::PlaceReleased => {
                    fleet_changed = true;
                    self.wake_pending(name);
                }
                Observation::InvalidState { message } => {
                    tracing::warn!(%message, "replaced an unreadable state annotation");
                }
                Observation::MigrationFinished { .. } | Observation::DrainFinished { .. } => {}
            }
        }
        if fleet_changed {
            // The fleet gauges read every node: only worth it when who is in maintenance changed.
            self.metrics.update_fleet(config, &self.fleet_nodes());
        }
        if plan.phase == Phase::Idle && planner::request_of(&snap.node).is_none() {
            self.pods.stop(name);
        }
        match state.and_then(|s| s.blocked.as_ref()) {
            Some(b) => {
                tracing::info!(phase = %plan.phase, reason = b.reason.as_str(), message = %b.message, "drain blocked")
            }
            None => {
                tracing::debug!(phase = %plan.phase, actions = plan.actions.len(), "reconciled")
            }
        }
    }

    /// Fails when this replica may no longer act (see [`fence`]).
    fn check_fence(&self) -> Result<()> {
        match &self.fence {
            Some(fence) => fence.check(Utc::now()).map_err(Error::Fenced),
            None => Ok(()),
        }
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
}

/// What carrying out a plan left: the state as written, and when the action results ask
/// for the next plan.
struct Applied {
    state: Option<DrainState>,
    replan_at: Option<chrono::DateTime<Utc>>,
    /// The first action that failed, if one did.
    failed: Option<Error>,
}

/// Sets (`Some`) or removes (`None`) one label of a node, for the requests of maintenance
/// that commands and schedules make. (The plan's own node changes go with its state, in
/// one request: see [`execute::Executor::write_state`].)
pub async fn set_node_label(
    client: &Client,
    node: &str,
    label: &str,
    value: Option<&str>,
) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"labels": {label: value}}});
    patch_node(
        client,
        node,
        &patch,
        format!("setting label {label} of node {node}"),
    )
    .await
}

/// Cordons (`true`) or uncordons a node, for `vacate uncordon`.
pub async fn set_unschedulable(client: &Client, node: &str, unschedulable: bool) -> Result<()> {
    let patch = serde_json::json!({"spec": {"unschedulable": unschedulable}});
    let doing = format!("setting spec.unschedulable of node {node} to {unschedulable}");
    patch_node(client, node, &patch, doing).await
}

async fn patch_node(
    client: &Client,
    node: &str,
    patch: &serde_json::Value,
    doing: String,
) -> Result<()> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    nodes
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .map_err(Error::kube(doing))?;
    Ok(())
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
