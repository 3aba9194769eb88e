//! Safe concurrency across the fleet: whether one more node may go into maintenance.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::state::{BlockReason, Phase, StateAnnotation};
use crate::config::{Config, LabelSelector, Limit};

/// Why a drain may not start now, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub reason: BlockReason,
    pub message: String,
    pub retry_at: Option<DateTime<Utc>>,
}

/// How soon a gate that depends on other nodes (their readiness, their room) is asked
/// again: no event of this node says when it opens.
pub const GATE_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

impl Gate {
    /// Too few schedulable nodes is ended by other nodes coming back: look again soon.
    fn recheck_if_min_schedulable(self, now: DateTime<Utc>) -> Self {
        if self.reason == BlockReason::MinSchedulable {
            self.recheck_after(now)
        } else {
            self
        }
    }

    /// Asks for the gate to be looked at again after [`GATE_RECHECK`].
    pub fn recheck_after(mut self, now: DateTime<Utc>) -> Self {
        self.retry_at = Some(now + chrono::Duration::from_std(GATE_RECHECK).unwrap_or_default());
        self
    }

    pub fn new(reason: BlockReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            retry_at: None,
        }
    }
}

/// One node handled by vacate, as the fleet limits see it.
#[derive(Debug, Clone)]
pub struct FleetNode {
    pub name: String,
    /// The labels the fleet's limits read (the request label, the pools' selectors' keys);
    /// a node may have more.
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub unschedulable: bool,
    /// Holds a maintenance slot: from vacate's cordon to its uncordon (a failed drain that
    /// keeps the node cordoned holds it too, so a rollout stops at a failure).
    pub in_maintenance: bool,
    pub started_at: Option<DateTime<Utc>>,
    /// Value of the maintenance request label.
    pub request_value: Option<String>,
    /// Requested and waiting only for a place in the fleet (not looked at yet, or Pending
    /// behind the fleet limits): such nodes take the places that free up in rollout order.
    pub waiting_for_place: bool,
    /// Guest memory of the VMIs on the node: the lightest nodes go first in a rollout.
    pub vm_memory: u64,
}

/// A rollout's order: the nodes with the least VM memory first, then by name. The first
/// nodes' VMs can only go to nodes outside the rollout, where room is scarcest; the later
/// ones' also to the nodes done before them.
pub fn rollout_order(a: (u64, &str), b: (u64, &str)) -> std::cmp::Ordering {
    a.cmp(&b)
}

impl FleetNode {
    pub fn from_state(
        name: String,
        labels: BTreeMap<String, String>,
        ready: bool,
        unschedulable: bool,
        state: &StateAnnotation,
        request_label: &str,
    ) -> Self {
        let valid = state.valid();
        let in_maintenance = valid.is_some_and(|s| match s.phase {
            // An aborted drain whose cordon is not lifted yet still takes the node out.
            Phase::Idle | Phase::Pending => s.cordoned_by_vacate && unschedulable,
            Phase::Failed => s.cordoned_by_vacate && unschedulable,
            // The maintenance is over; only the node is not back (not Ready). A node that
            // never comes back must not hold the rollout up.
            Phase::Uncordoning => false,
            _ => true,
        });
        let requested = labels.contains_key(request_label);
        let waiting_for_place = requested
            && !in_maintenance
            && match state {
                StateAnnotation::Absent => true,
                StateAnnotation::Valid(s) => {
                    matches!(s.phase, Phase::Idle | Phase::Pending)
                        && s.blocked
                            .as_ref()
                            .is_none_or(|b| b.reason == BlockReason::FleetLimit)
                }
                _ => false,
            };
        Self {
            waiting_for_place,
            request_value: labels.get(request_label).cloned(),
            name,
            labels,
            ready,
            unschedulable,
            in_maintenance,
            started_at: valid.filter(|_| in_maintenance).map(|s| s.started_at),
            vm_memory: 0,
        }
    }

    /// Whether the node's request comes from a run of schedule `schedule`: its value is
    /// `<schedule>.<run>` (see `cluster::schedule::request_value`).
    pub fn in_rollout_of(&self, schedule: &str) -> bool {
        self.request_value
            .as_deref()
            .and_then(|v| v.strip_prefix(schedule))
            .is_some_and(|run| run.starts_with('.'))
    }

    /// With the guest memory of the VMIs on the node, which orders the rollout.
    pub fn with_vm_memory(mut self, bytes: u64) -> Self {
        self.vm_memory = bytes;
        self
    }

    fn schedulable(&self) -> bool {
        self.ready && !self.unschedulable
    }
}

/// Checks the fleet-wide and pool limits, the rollout's own concurrency and the delay
/// between drains for `node`, which is about to start. `nodes` are all nodes vacate handles.
pub fn check(
    config: &Config,
    node: &str,
    nodes: &[FleetNode],
    last_start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), Gate> {
    let Some(me) = nodes.iter().find(|n| n.name == node) else {
        return Ok(());
    };
    let fleet = &config.fleet;
    let everyone = |_: &FleetNode| true;
    limit_in(
        ("the fleet", "fleet"),
        nodes,
        me,
        everyone,
        fleet.max_draining,
        fleet.min_schedulable,
        now,
    )
    .map_err(|gate| gate.recheck_if_min_schedulable(now))?;
    for pool in &fleet.pools {
        if pool.selector.matches(&me.labels) {
            let selector: &LabelSelector = &pool.selector;
            limit_in(
                (
                    &format!("pool {}", pool.name),
                    &format!("fleet.pools {}", pool.name),
                ),
                nodes,
                me,
                |n| selector.matches(&n.labels),
                pool.max_draining,
                pool.min_schedulable,
                now,
            )
            .map_err(|gate| gate.recheck_if_min_schedulable(now))?;
        }
    }
    if let Some(schedule) = me
        .request_value
        .as_deref()
        .and_then(|v| config.schedule_of(v))
    {
        let busy: Vec<&str> = nodes
            .iter()
            .filter(|n| n.name != me.name && n.in_maintenance)
            .filter(|n| n.in_rollout_of(&schedule.name))
            .map(|n| n.name.as_str())
            .collect();
        if busy.len() >= schedule.concurrency.get() as usize {
            return Err(Gate::new(
                BlockReason::FleetLimit,
                format!(
                    "schedule {} works through {} node(s) at a time; in maintenance now: {}",
                    schedule.name,
                    schedule.concurrency,
                    busy.join(", ")
                ),
            ));
        }
        let rollout: Vec<&FleetNode> = nodes
            .iter()
            .filter(|n| n.in_rollout_of(&schedule.name))
            .collect();
        let ahead = ahead_of(me, &rollout);
        if busy.len() + ahead.len() >= schedule.concurrency.get() as usize {
            return Err(Gate::new(
                BlockReason::FleetLimit,
                format!(
                    "schedule {} works through its nodes lightest first (VM memory, then name), {} at a time; next: {}",
                    schedule.name,
                    schedule.concurrency,
                    ahead.join(", ")
                ),
            )
            .recheck_after(now));
        }
    }
    let delay = fleet.delay_between_nodes.get();
    if !delay.is_zero() {
        let latest = nodes
            .iter()
            .filter(|n| n.name != me.name)
            .filter_map(|n| n.started_at)
            .chain(last_start)
            .max();
        if let Some(latest) = latest {
            let next = latest + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            if next > now {
                return Err(Gate {
                    reason: BlockReason::FleetLimit,
                    message: format!(
                        "the previous drain started at {}; the next may start at {} (fleet.delay_between_nodes = {})",
                        latest.format("%H:%M:%S"),
                        next.format("%H:%M:%S"),
                        fleet.delay_between_nodes
                    ),
                    retry_at: Some(next),
                });
            }
        }
    }
    Ok(())
}

/// The nodes among `members` that wait for a place and come before `me` in the rollout's
/// order ([`rollout_order`]), so that a rollout goes through its nodes in the order
/// `vacate plan` shows.
fn ahead_of<'a>(me: &FleetNode, members: &[&'a FleetNode]) -> Vec<&'a str> {
    let mine = (me.vm_memory, me.name.as_str());
    members
        .iter()
        .filter(|n| {
            n.waiting_for_place && rollout_order((n.vm_memory, n.name.as_str()), mine).is_lt()
        })
        .map(|n| n.name.as_str())
        .collect()
}

/// Checks one scope's limits (`scope` names it, `keys` its configuration keys).
fn limit_in(
    (scope, keys): (&str, &str),
    nodes: &[FleetNode],
    me: &FleetNode,
    member: impl Fn(&FleetNode) -> bool,
    max: Limit,
    min_schedulable: u32,
    now: DateTime<Utc>,
) -> Result<(), Gate> {
    let members: Vec<&FleetNode> = nodes.iter().filter(|n| member(n)).collect();
    let allowed = max.of(members.len());
    let busy: Vec<&str> = members
        .iter()
        .filter(|n| n.name != me.name && n.in_maintenance)
        .map(|n| n.name.as_str())
        .collect();
    if busy.len() >= allowed {
        return Err(Gate::new(
            BlockReason::FleetLimit,
            format!(
                "{} of at most {allowed} node(s) of {scope} are in maintenance ({keys} max_draining = {max}): {}",
                busy.len(),
                busy.join(", ")
            ),
        ));
    }
    let ahead = ahead_of(me, &members);
    if busy.len() + ahead.len() >= allowed {
        return Err(Gate::new(
            BlockReason::FleetLimit,
            format!(
                "{scope} has {} free place(s) ({keys} max_draining = {max}), taken lightest first (VM memory, then name) by the nodes waiting ahead of this one: {}",
                allowed - busy.len(),
                ahead.join(", ")
            ),
        )
        // A node ahead may come to wait for something else instead: look again soon.
        .recheck_after(now));
    }
    if min_schedulable > 0 && me.schedulable() {
        let schedulable = members.iter().filter(|n| n.schedulable()).count();
        if schedulable <= min_schedulable as usize {
            return Err(Gate::new(
                BlockReason::MinSchedulable,
                format!(
                    "{scope} has {schedulable} schedulable Ready node(s); draining this one would leave fewer than {min_schedulable} ({keys} min_schedulable)"
                ),
            ));
        }
    }
    Ok(())
}
