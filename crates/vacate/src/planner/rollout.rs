//! The plan of a whole rollout, for `vacate plan`: the order of its nodes in waves, what
//! happens to each VMI and pod, where there is room for what moves, what would block, and
//! how long each node and the whole rollout should take.
//!
//! Where things go is vacate's estimate (the capacity check's first fit, largest first,
//! preferring nodes that will not be drained later in the rollout); KubeVirt's scheduler
//! places the VMs. A VM that only fits on a node drained later in the rollout moves again.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::capacity::{Target, Workload};
use super::eta::makespan;
use super::explain::explain;
use super::model::Snapshot;
use crate::config::Config;

/// One node of the rollout with what would move off it.
#[derive(Debug, Clone)]
pub struct RolloutNode {
    pub snapshot: Snapshot,
    /// The pods that move in a drain (virt-launcher pods of the node's VMIs and the pods
    /// to evict), named `namespace/name`, with their requests.
    pub workloads: Vec<Workload>,
}

/// What the whole rollout is planned from.
#[derive(Debug, Clone, Default)]
pub struct RolloutInput {
    /// The nodes of the rollout, in any order.
    pub nodes: Vec<RolloutNode>,
    /// Every schedulable, Ready node of the cluster with the room it has left (the nodes of
    /// the rollout among them).
    pub targets: Vec<Target>,
    /// Nodes in maintenance at once.
    pub concurrency: usize,
    /// Pods (`namespace/name`) that a PodDisruptionBudget never lets go, with why.
    pub never_evictable: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPlan {
    pub nodes: Vec<NodePlan>,
    /// The whole rollout, wave after wave; `None` when the bandwidth is not known.
    pub predicted_seconds: Option<f64>,
    /// The migration bandwidth the predictions use (bytes per second).
    pub bandwidth_bytes_per_second: Option<f64>,
    pub migrations: usize,
    /// Migrations that land on a node drained later in the rollout, so their VM moves again.
    pub migrations_moving_again: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub node: String,
    /// 1 for the first nodes in maintenance, then 2, ...
    pub wave: usize,
    pub vmis: Vec<ItemPlan>,
    pub pods: Vec<ItemPlan>,
    pub blockers: Vec<String>,
    /// The node's migrations, on its slots at the bandwidth; `None` when it is not known.
    pub predicted_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemPlan {
    /// `namespace/name`.
    pub name: String,
    /// migrate, evict, restart, block, skip.
    pub action: &'static str,
    pub reason: String,
    /// Where the capacity estimate found room for it, if it moves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_on: Option<String>,
    /// The room found is on a node drained later in the rollout: it moves again then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub moves_again: bool,
}

/// Plans the rollout: nodes in the order the daemon takes them (the least VM memory first,
/// then by name: [`super::fleet::rollout_order`]), `concurrency` at a time.
pub fn plan_rollout(input: &RolloutInput, config: &Config) -> RolloutPlan {
    let mut nodes: Vec<&RolloutNode> = input.nodes.iter().collect();
    let key = |n: &RolloutNode| {
        let memory: u64 = n.snapshot.vmis.iter().map(|v| v.memory).sum();
        (memory, n.snapshot.node.name.clone())
    };
    nodes.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        super::fleet::rollout_order((a.0, &a.1), (b.0, &b.1))
    });
    let concurrency = input.concurrency.max(1);
    let members: BTreeSet<&str> = nodes
        .iter()
        .map(|n| n.snapshot.node.name.as_str())
        .collect();
    let mut free: BTreeMap<String, Target> = input
        .targets
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    let bandwidth = nodes
        .iter()
        .find_map(|n| n.snapshot.cluster.bandwidth)
        .filter(|b| *b > 0.0);
    let mut plans = Vec::new();
    let mut total = Some(0.0);
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for (w, wave) in nodes.chunks(concurrency).enumerate() {
        let in_wave: BTreeSet<&str> = wave.iter().map(|n| n.snapshot.node.name.as_str()).collect();
        let mut wave_jobs = Vec::new();
        let mut wave_longest: f64 = 0.0;
        let mut slots_total = 0;
        let mut cluster_slots = usize::MAX;
        for node in wave {
            let s = &node.snapshot;
            let (per_node, per_cluster) = s.cluster.migration_caps(config);
            cluster_slots = cluster_slots.min(per_cluster.max(1) as usize);
            slots_total += per_node.max(1) as usize;
            let plan = plan_node(
                node,
                w + 1,
                config,
                input,
                &mut free,
                |target| !in_wave.contains(target),
                |target| {
                    members.contains(target) && !done.contains(target) && !in_wave.contains(target)
                },
                bandwidth,
            );
            if let Some(b) = bandwidth {
                let jobs: Vec<f64> = migrating_memory(node, &plan)
                    .into_iter()
                    .map(|m| m as f64 / b)
                    .collect();
                wave_jobs.extend(jobs.iter().copied());
                wave_longest = wave_longest.max(plan.predicted_seconds.unwrap_or(0.0));
            }
            plans.push(plan);
        }
        // The wave's nodes share the cluster-wide slots.
        let wave_seconds = makespan(slots_total.min(cluster_slots).max(1), Vec::new(), wave_jobs)
            .max(wave_longest);
        total = total.map(|t| t + wave_seconds);
        // Drained and given back empty: their room is free for the next waves.
        for node in wave {
            for workload in &node.workloads {
                if let Some(t) = free.get_mut(&node.snapshot.node.name) {
                    t.free.cpu_millis += workload.requests.cpu_millis;
                    t.free.memory_bytes += workload.requests.memory_bytes;
                    t.pods_free += 1;
                }
            }
        }
        done.extend(in_wave);
    }
    let migrations = plans
        .iter()
        .flat_map(|p| &p.vmis)
        .filter(|v| v.action == "migrate")
        .count();
    let migrations_moving_again = plans
        .iter()
        .flat_map(|p| &p.vmis)
        .filter(|v| v.action == "migrate" && v.moves_again)
        .count();
    RolloutPlan {
        nodes: plans,
        predicted_seconds: bandwidth.and(total),
        bandwidth_bytes_per_second: bandwidth,
        migrations,
        migrations_moving_again,
    }
}

/// Guest memory of the node's VMIs that migrate.
fn migrating_memory(node: &RolloutNode, plan: &NodePlan) -> Vec<u64> {
    plan.vmis
        .iter()
        .filter(|v| v.action == "migrate")
        .filter_map(|v| node.snapshot.vmis.iter().find(|x| x.key() == v.name))
        .map(|v| v.memory)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn plan_node(
    node: &RolloutNode,
    wave: usize,
    config: &Config,
    input: &RolloutInput,
    free: &mut BTreeMap<String, Target>,
    usable: impl Fn(&str) -> bool,
    drained_later: impl Fn(&str) -> bool,
    bandwidth: Option<f64>,
) -> NodePlan {
    let s = &node.snapshot;
    let name = s.node.name.clone();
    let mut blockers = Vec::new();
    // Where each moving pod finds room: nodes that stay put first, then those drained later.
    let mut room: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut order: Vec<&Workload> = node.workloads.iter().collect();
    order.sort_by(|a, b| {
        (b.requests.memory_bytes, b.requests.cpu_millis, &a.name).cmp(&(
            a.requests.memory_bytes,
            a.requests.cpu_millis,
            &b.name,
        ))
    });
    for w in order {
        let pick = free
            .values()
            .filter(|t| t.name != name && usable(&t.name) && !drained_later(&t.name))
            .find(|t| t.fits(w))
            .or_else(|| {
                free.values()
                    .filter(|t| t.name != name && usable(&t.name))
                    .find(|t| t.fits(w))
            })
            .map(|t| t.name.clone());
        match pick {
            Some(target) => {
                free.get_mut(&target).expect("picked from the map").take(w);
                let again = drained_later(&target);
                room.insert(w.name.clone(), (target, again));
            }
            None => blockers.push(format!(
                "no room for {} (requests {}) on the nodes that stay schedulable",
                w.name, w.requests
            )),
        }
    }
    let lines = explain(s, config);
    let mut vmis = Vec::new();
    let mut pods = Vec::new();
    for line in lines {
        let pod_key = if line.kind == "VMI" {
            s.vmis.iter().find(|v| v.key() == line.name).and_then(|v| {
                v.launcher_pod
                    .as_ref()
                    .map(|p| format!("{}/{p}", v.namespace))
            })
        } else {
            Some(line.name.clone())
        };
        let moves = matches!(line.verdict, "migrate" | "evict" | "restart");
        let (room_on, moves_again) = match pod_key.as_ref().and_then(|k| room.get(k)) {
            Some((target, again)) if moves => (Some(target.clone()), *again),
            _ => (None, false),
        };
        if line.verdict == "block" {
            blockers.push(format!("{} {}: {}", line.kind, line.name, line.reason));
        }
        if line.kind == "Pod"
            && line.verdict == "evict"
            && let Some(why) = input.never_evictable.get(&line.name)
        {
            blockers.push(format!("Pod {}: {why}", line.name));
        }
        let item = ItemPlan {
            name: line.name,
            action: line.verdict,
            reason: line.reason,
            room_on,
            moves_again,
        };
        if line.kind == "VMI" {
            vmis.push(item);
        } else {
            pods.push(item);
        }
    }
    let mut plan = NodePlan {
        node: name,
        wave,
        vmis,
        pods,
        blockers,
        predicted_seconds: None,
    };
    if let Some(b) = bandwidth {
        let (per_node, _) = s.cluster.migration_caps(config);
        let jobs = migrating_memory(node, &plan)
            .into_iter()
            .map(|m| m as f64 / b)
            .collect();
        plan.predicted_seconds = Some(makespan(per_node.max(1) as usize, Vec::new(), jobs));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::super::capacity::Resources;
    use super::super::tests::{node, snapshot, vmi};
    use super::*;

    const GIB: i64 = 1 << 30;

    fn node_with(name: &str, vms: &[(&str, u64)]) -> RolloutNode {
        let mut s = snapshot(node(None, false));
        s.node.name = name.into();
        s.cluster.bandwidth = Some(GIB as f64);
        s.vmis = vms
            .iter()
            .map(|(n, gib)| {
                let mut v = vmi(n);
                v.memory = gib << 30;
                v
            })
            .collect();
        let workloads = s
            .vmis
            .iter()
            .map(|v| Workload {
                name: format!("vms/{}", v.launcher_pod.clone().unwrap()),
                requests: Resources {
                    cpu_millis: 100,
                    memory_bytes: v.memory as i64,
                },
                node_selector: Default::default(),
            })
            .collect();
        RolloutNode {
            snapshot: s,
            workloads,
        }
    }

    fn target(name: &str, free_gib: i64) -> Target {
        Target {
            name: name.into(),
            labels: Default::default(),
            free: Resources {
                cpu_millis: 64_000,
                memory_bytes: free_gib * GIB,
            },
            pods_free: 100,
        }
    }

    /// Three nodes in a rollout, one at a time, lightest first, and a spare node with room
    /// for one node's VMs: the first node's VM goes to the spare; the second's to the spare's
    /// rest or the first node (drained by then); the third's to what is left. Nothing moves
    /// twice.
    #[test]
    fn vms_go_where_they_stay_and_waves_add_up() {
        let input = RolloutInput {
            nodes: vec![
                node_with("w-2", &[("c", 4)]),
                node_with("w-1", &[("a", 4), ("b", 4)]),
                node_with("w-3", &[("d", 8)]),
            ],
            targets: vec![
                target("w-1", 4),
                target("w-2", 8),
                target("w-3", 8),
                target("spare", 8),
            ],
            concurrency: 1,
            never_evictable: BTreeMap::new(),
        };
        let plan = plan_rollout(&input, &Config::default());
        let order: Vec<(&str, usize)> = plan
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.wave))
            .collect();
        // The lightest node first (w-2, 4 GiB of VMs), then by name among equals.
        assert_eq!(order, vec![("w-2", 1), ("w-1", 2), ("w-3", 3)]);
        let room = |n: usize| -> Vec<(String, Option<String>, bool)> {
            plan.nodes[n]
                .vmis
                .iter()
                .map(|v| (v.name.clone(), v.room_on.clone(), v.moves_again))
                .collect()
        };
        assert_eq!(room(0), vec![("vms/c".into(), Some("spare".into()), false)]);
        assert_eq!(
            room(1),
            vec![
                ("vms/a".into(), Some("spare".into()), false),
                ("vms/b".into(), Some("w-2".into()), false)
            ]
        );
        assert_eq!(plan.migrations, 4);
        assert_eq!(plan.migrations_moving_again, 0);
        // 1 GiB/s, 2 slots: w-1 4 s, w-2 4 s, w-3 8 s.
        let seconds: Vec<Option<f64>> = plan.nodes.iter().map(|n| n.predicted_seconds).collect();
        assert_eq!(seconds, vec![Some(4.0), Some(4.0), Some(8.0)]);
        assert_eq!(plan.predicted_seconds, Some(16.0));
    }

    /// Without room on nodes that stay, a VM lands on a node drained later (and moves
    /// again); with no room at all the node is blocked.
    #[test]
    fn moving_again_and_no_room_are_reported() {
        let input = RolloutInput {
            nodes: vec![
                node_with("w-1", &[("a", 4)]),
                node_with("w-2", &[("b", 16)]),
            ],
            targets: vec![target("w-1", 0), target("w-2", 8)],
            concurrency: 1,
            never_evictable: BTreeMap::new(),
        };
        let plan = plan_rollout(&input, &Config::default());
        assert!(plan.nodes[0].vmis[0].moves_again);
        assert_eq!(plan.nodes[0].vmis[0].room_on.as_deref(), Some("w-2"));
        assert_eq!(plan.migrations_moving_again, 1);
        assert!(
            plan.nodes[1].blockers[0].contains("no room for vms/virt-launcher-b-abcde"),
            "{:?}",
            plan.nodes[1].blockers
        );
    }

    /// Two at a time share the cluster's slots; without a known bandwidth there is no
    /// prediction.
    #[test]
    fn waves_share_the_cluster_slots_and_need_a_bandwidth() {
        let nodes = vec![
            node_with("w-1", &[("a", 4), ("b", 4), ("c", 4)]),
            node_with("w-2", &[("d", 4), ("e", 4), ("f", 4)]),
        ];
        let mut input = RolloutInput {
            nodes,
            targets: vec![target("spare", 64)],
            concurrency: 2,
            never_evictable: BTreeMap::new(),
        };
        let plan = plan_rollout(&input, &Config::default());
        assert!(plan.nodes.iter().all(|n| n.wave == 1));
        // Six 4 s jobs over min(2 + 2, 5) slots: 8 s; each node alone 8 s on its 2 slots.
        assert_eq!(plan.predicted_seconds, Some(8.0));
        for n in &mut input.nodes {
            n.snapshot.cluster.bandwidth = None;
        }
        let plan = plan_rollout(&input, &Config::default());
        assert_eq!(plan.predicted_seconds, None);
        assert_eq!(plan.nodes[0].predicted_seconds, None);
    }
}
