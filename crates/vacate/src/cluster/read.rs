//! The first stage of a reconciliation: one node's snapshot, read from the watch caches
//! without side effects, and the ledger of migrations created moments ago that the caches
//! do not show yet.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cached::CachedNode;
use chrono::Utc;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::snapshot;
use crate::error::Result;
use crate::planner::{
    self, DrainState, MigrationPhase, MigrationView, Snapshot, StartGate, StateAnnotation,
};

/// Finished migrations the bandwidth estimate looks at.
const BANDWIDTH_SAMPLES: usize = 20;
/// How many of vacate's last finished drains the bandwidth is measured on.
const DRAIN_SAMPLES: usize = 8;

/// How long a just-created migration counts as in flight before the watch cache shows it.
const LEDGER_TTL: Duration = Duration::from_secs(120);

/// Migrations created but not yet seen by the watch cache: (namespace, name) to the node
/// they drain, the VMI and when they were created.
#[derive(Default)]
pub(super) struct Ledger {
    created: HashMap<(String, String), (String, String, Instant)>,
}

impl Ledger {
    pub(super) fn created(&mut self, namespace: &str, name: &str, node: &str, vmi: &str) {
        self.created.insert(
            (namespace.to_string(), name.to_string()),
            (node.to_string(), vmi.to_string(), Instant::now()),
        );
    }

    /// The migrations still counted: created less than [`LEDGER_TTL`] ago and not in the
    /// watch cache (`seen`) yet.
    fn pending<'a>(
        &'a self,
        seen: impl Fn(&str, &str) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a (String, String), &'a (String, String, Instant))> + 'a {
        self.created
            .iter()
            .filter(move |((ns, name), (_, _, at))| at.elapsed() < LEDGER_TTL && !seen(ns, name))
    }

    /// Forgets the migrations no longer counted (see [`Ledger::pending`]).
    pub(super) fn prune(&mut self, seen: impl Fn(&str, &str) -> bool) {
        self.created
            .retain(|(ns, name), (_, _, at)| at.elapsed() < LEDGER_TTL && !seen(ns, name));
    }
}

/// States that changed only in what the next look derives again (see
/// [`planner::NextState::Keep`]), not written yet: node name to the annotation they build
/// on and the newer state. A kept state counts only while the annotation is still the one
/// it builds on; anyone else's write (another replica, `vacate drain`) makes it void.
#[derive(Default)]
pub(super) struct Kept {
    states: HashMap<String, (Option<String>, DrainState)>,
}

impl Kept {
    pub(super) fn keep(&mut self, node: &str, base: Option<String>, state: DrainState) {
        self.states.insert(node.to_string(), (base, state));
    }

    pub(super) fn forget(&mut self, node: &str) {
        self.states.remove(node);
    }

    /// The kept state of a node whose annotation is still `stored`.
    fn current(&self, node: &str, stored: Option<&str>) -> Option<DrainState> {
        match self.states.get(node) {
            Some((base, state)) if base.as_deref() == stored => Some(state.clone()),
            _ => None,
        }
    }

    /// Forgets a node's kept state that someone else's write made void (see
    /// [`Kept::current`]).
    pub(super) fn forget_void(&mut self, node: &str, stored: Option<&str>) {
        if self
            .states
            .get(node)
            .is_some_and(|(base, _)| base.as_deref() != stored)
        {
            self.states.remove(node);
        }
    }
}

/// What reading a node found.
pub enum Look {
    /// Deleted, or outside the watch's node filter.
    Gone,
    /// Outside `node.selector`, or in no drain: nothing to do.
    NotInvolved,
    Node(Box<Read>),
}

pub struct Read {
    pub node: Arc<CachedNode>,
    /// The state annotation as the node holds it.
    pub stored: Option<String>,
    pub snapshot: Snapshot,
    /// vacate's own migrations in flight, cluster-wide.
    pub ours_in_flight: usize,
    /// Whether the node's pods were read (the snapshot holds none otherwise).
    pub with_pods: bool,
}

impl Context {
    /// Reads a node and everything its plan needs. `include_idle` reads a node in no drain
    /// too (for `vacate drain`, which shows what it is about to do). The node's pods are
    /// read when it drains, when `may_start` (its drain may begin now) or with
    /// `include_idle`: a plan needs them for nothing else. It changes nothing: the only
    /// thing it may start is the node's pod watch, the cache this read needs.
    pub async fn look(&self, name: &str, include_idle: bool, may_start: bool) -> Result<Look> {
        let config = &self.config;
        let Some(node) = self.stores.nodes.get(&ObjectRef::new(name)) else {
            return Ok(Look::Gone);
        };
        if !config.node.selector.matches(node.labels()) {
            return Ok(Look::NotInvolved);
        }
        let mut view = snapshot::node_view(&node, config);
        let stored = node
            .annotations()
            .get(&config.node.state_annotation)
            .cloned();
        let kept = (self.kept.lock().expect("kept states lock")).current(name, stored.as_deref());
        if let Some(kept) = kept {
            view.state = StateAnnotation::Valid(Box::new(kept));
        }
        let involved =
            planner::request_of(&view).is_some() || view.state != StateAnnotation::Absent;
        if !involved && !include_idle {
            return Ok(Look::NotInvolved);
        }
        let draining = view.state.valid().is_some_and(|st| st.phase.is_draining());
        let with_pods = draining || may_start || include_idle;
        let pods = if with_pods {
            self.pods.pods(&self.client, name, &self.trigger).await?
        } else {
            Vec::new()
        };
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
            .map(|v| (v.namespace.clone(), v.name.clone()))
            .collect();
        let (in_flight, ours_in_flight, migrations) = self.migrations_for(name, &vmi_keys);
        let snapshot = Snapshot {
            now: Utc::now(),
            vmis: vmis
                .iter()
                .map(|v| {
                    let restarts = snapshot::restarts_when_stopped(v, &self.stores.vms);
                    snapshot::vmi_view(v, default_strategy, &pods, restarts)
                })
                .collect(),
            migrations,
            pods: pods.iter().map(snapshot::pod_view).collect(),
            cluster: {
                let mut cluster = snapshot::cluster_view(kubevirt.as_deref(), in_flight);
                // Only a drain under way predicts its end: idle and pending nodes do not pay
                // for a look at every finished migration.
                if draining {
                    cluster.bandwidth = self.observed_bandwidth().or(cluster.bandwidth);
                }
                cluster
            },
            // The reconciliation asks the gate only when the plan may start a drain.
            start_gate: StartGate::NotAsked,
            node: view,
        };
        Ok(Look::Node(Box::new(Read {
            node,
            stored,
            snapshot,
            ours_in_flight,
            with_pods,
        })))
    }

    /// The bandwidth migrations reach in this cluster, per migration slot. From vacate's own
    /// finished drains when there are any: the [`snapshot::typical_rate`] of the last
    /// [`DRAIN_SAMPLES`] of [`snapshot::drain_bandwidths`], which also counts the latency
    /// between one migration's end and the next one's start. Otherwise the typical rate, over
    /// the last [`BANDWIDTH_SAMPLES`] migrations that succeeded, of the VMI's guest memory over the
    /// time the migration took a drain ([`snapshot::slot_seconds`]: scheduling and target
    /// preparation included, as a drain waits for them too, but not a wait in Pending for a
    /// slot, which the prediction counts itself).
    pub fn observed_bandwidth(&self) -> Option<f64> {
        let memory = |m: &kubevirt_api::VirtualMachineInstanceMigration| {
            let vmi = ObjectRef::new(&m.spec.vmi_name).within(&m.namespace().unwrap_or_default());
            self.stores.vmis.get(&vmi)?.memory
        };
        let drains: Vec<snapshot::DrainMigration> = self
            .stores
            .migrations
            .state()
            .iter()
            .filter_map(|m| snapshot::DrainMigration::of(m, memory(m)?))
            .collect();
        let kubevirt = self.stores.kubevirt.state().first().cloned();
        let slots = snapshot::cluster_view(kubevirt.as_deref(), 0)
            .migration_caps(&self.config)
            .0 as usize;
        let rates: Vec<f64> = snapshot::drain_bandwidths(&drains, slots)
            .into_iter()
            .take(DRAIN_SAMPLES)
            .collect();
        if let Some(rate) = snapshot::typical_rate(&rates) {
            return Some(rate);
        }
        let mut finished: Vec<(chrono::DateTime<Utc>, f64)> = self
            .stores
            .migrations
            .state()
            .iter()
            .filter(|m| m.phase() == Some(kubevirt_api::MigrationPhase::Succeeded))
            .filter_map(|m| {
                let view = snapshot::migration_view(m, "");
                let seconds = snapshot::slot_seconds(m)?;
                let end = view.finished_at?;
                let vmi = self
                    .stores
                    .vmis
                    .get(&ObjectRef::new(&m.spec.vmi_name).within(&view.namespace))?;
                Some((end, vmi.memory? as f64 / seconds))
            })
            .collect();
        finished.sort_by_key(|(end, _)| std::cmp::Reverse(*end));
        let rates: Vec<f64> = finished
            .into_iter()
            .take(BANDWIDTH_SAMPLES)
            .map(|(_, rate)| rate)
            .collect();
        snapshot::typical_rate(&rates)
    }

    /// Unfinished migrations cluster-wide, vacate's among them, and the views of a node's
    /// migrations, including migrations created moments ago that the watch cache has not
    /// delivered yet.
    fn migrations_for(
        &self,
        node: &str,
        vmi_keys: &BTreeSet<(String, String)>,
    ) -> (u32, usize, Vec<MigrationView>) {
        let all = self.stores.migrations.state();
        let ledger = self.ledger.lock().expect("ledger lock");
        let pending: Vec<_> = ledger
            .pending(|ns, name| self.in_migration_cache(ns, name))
            .collect();
        let not_yet_seen = pending.len();
        let in_flight = all.iter().filter(|m| m.is_unfinished()).count() + not_yet_seen;
        let ours_in_flight = all
            .iter()
            .filter(|m| m.is_unfinished() && snapshot::is_ours(m))
            .count()
            + not_yet_seen;
        let mut views: Vec<MigrationView> = all
            .iter()
            .filter(|m| {
                snapshot::is_ours_for(m, node)
                    || vmi_keys
                        .contains(&(m.namespace().unwrap_or_default(), m.spec.vmi_name.clone()))
            })
            .map(|m| snapshot::migration_view(m, node))
            .collect();
        for ((namespace, name), (for_node, vmi, _)) in pending {
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
            }
        }
        (in_flight as u32, ours_in_flight, views)
    }

    /// Whether the migration watch cache holds `namespace/name`.
    pub(super) fn in_migration_cache(&self, namespace: &str, name: &str) -> bool {
        self.stores
            .migrations
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }
}
