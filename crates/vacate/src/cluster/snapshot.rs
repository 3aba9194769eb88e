//! Turns API objects into the planner's plain views.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kubevirt_api::{KubeVirt, VirtualMachineInstanceMigration, labels as kv_labels};

use super::cached::{CachedNode, CachedVmi};
use super::restarts::RestartingVms;

use crate::config::Config;
use crate::planner::capacity::{Resources, parse_quantity};
use crate::planner::{
    ClusterView, EvictionStrategy, Migratability, MigrationPhase, MigrationView, NodeView, PodView,
    VmiView,
};

/// Label on every migration vacate creates, naming the node it drains (see [`node_label_value`]).
pub const MIGRATION_NODE_LABEL: &str = "vacate.io/node";
/// Annotation on every migration vacate creates, with the node's full name.
pub const MIGRATION_NODE_ANNOTATION: &str = "vacate.io/node";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The node label a steered migration selects its target by (`spec.addedNodeSelector`).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const MANAGED_BY_VALUE: &str = "vacate";

/// A label value naming a node. Node names may be longer than the 63 characters a label value
/// allows; those are shortened and made unique with a hash.
pub fn node_label_value(node: &str) -> String {
    if node.len() <= 63 {
        return node.to_string();
    }
    // The same in every release: migrations labelled by an older vacate still match.
    let hash = kubevirt_api::hash::fnv1a(node);
    let head = node[..46].trim_end_matches(['-', '.', '_']);
    format!("{head}-{hash:016x}")
}

pub fn to_chrono(time: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(time.0.as_second(), time.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

pub fn node_view(node: &CachedNode, config: &Config) -> NodeView {
    let labels = node.labels();
    let upgrade = &config.upgrade;
    let config = &config.node;
    NodeView {
        name: node.name_any(),
        unschedulable: node.unschedulable,
        ready: node.ready,
        request_value: labels.get(&config.request_label).map(String::from),
        upgrade_to: labels.get(&upgrade.request_label).map(String::from),
        kubelet_version: node.kubelet_version.clone(),
        labels: labels.to_map(),
        drained_label: labels.contains_key(&config.drained_label),
        state: node.state.clone(),
    }
}

fn eviction_strategy(s: kubevirt_api::EvictionStrategy) -> EvictionStrategy {
    match s {
        kubevirt_api::EvictionStrategy::None => EvictionStrategy::None,
        kubevirt_api::EvictionStrategy::LiveMigrate => EvictionStrategy::LiveMigrate,
        kubevirt_api::EvictionStrategy::LiveMigrateIfPossible => {
            EvictionStrategy::LiveMigrateIfPossible
        }
        kubevirt_api::EvictionStrategy::External => EvictionStrategy::External,
        kubevirt_api::EvictionStrategy::Unrecognized => EvictionStrategy::Unrecognized,
    }
}

/// Whether KubeVirt starts a VMI again once it is stopped: only the VirtualMachine that
/// controls it, when its run strategy resolves to Always ([`super::restarts::restarts`]).
pub fn restarts_when_stopped(vmi: &CachedVmi, vms: &RestartingVms) -> bool {
    vmi.owner
        .as_deref()
        .is_some_and(|(_, uid)| vms.contains(uid))
}

pub fn vmi_view(
    vmi: &CachedVmi,
    cluster_default: Option<kubevirt_api::EvictionStrategy>,
    pods: &[Pod],
    restartable: bool,
) -> VmiView {
    let migratability = match vmi.migratable.as_deref() {
        Some(m) if m.migratable => Migratability::Migratable,
        Some(m) => Migratability::NotMigratable {
            reason: m.reason.clone(),
            message: m.message.clone(),
        },
        None => Migratability::Unknown,
    };
    // KubeVirt's own default when neither the VMI nor the cluster sets one.
    let strategy = vmi
        .effective_eviction_strategy(cluster_default)
        .unwrap_or(kubevirt_api::EvictionStrategy::None);
    let launcher = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !pod_finished(p))
        .find(|p| {
            p.labels()
                .get(kv_labels::CREATED_BY_LABEL)
                .is_some_and(|uid| vmi.uid.is(uid))
        });
    let spec = launcher.and_then(|p| p.spec.as_ref());
    VmiView {
        launcher_pod: launcher.map(|p| p.name_any()),
        requests: launcher.map(pod_requests).unwrap_or_default(),
        node_selector: vmi.launcher_selector(),
        placement_rules: spec.is_some_and(placement_rules),
        namespace: vmi.namespace.clone(),
        name: vmi.name.clone(),
        finished: vmi.is_final(),
        running: vmi.is_running(),
        migratability,
        eviction_strategy: eviction_strategy(strategy),
        restartable,
        deleting: vmi.deleting,
        memory: vmi.memory.unwrap_or(0),
        evacuating: vmi.evacuating,
    }
}

/// Whether a pod has scheduling rules a node chosen by vacate could break: required node
/// affinity, required pod (anti-)affinity, or a topology spread it must not violate. Its
/// node selector is respected by the choice; tolerations only widen where it may go, and
/// vacate chooses only nodes without NoSchedule or NoExecute taints.
fn placement_rules(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    let affinity = spec.affinity.as_ref();
    let node_required = affinity
        .and_then(|a| a.node_affinity.as_ref())
        .is_some_and(|n| {
            n.required_during_scheduling_ignored_during_execution
                .is_some()
        });
    let pods_required = affinity.is_some_and(|a| {
        a.pod_affinity.as_ref().is_some_and(|p| {
            p.required_during_scheduling_ignored_during_execution
                .is_some()
        }) || a.pod_anti_affinity.as_ref().is_some_and(|p| {
            p.required_during_scheduling_ignored_during_execution
                .is_some()
        })
    });
    let spread = spec
        .topology_spread_constraints
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.when_unsatisfiable == "DoNotSchedule"));
    node_required || pods_required || spread
}

/// How long a finished migration took a drain, in seconds (at least 1). vacate creates its
/// own migrations when a slot is free: from creation to end, the start latency included.
/// Others (KubeVirt's evacuation creates all of a node's at once and keeps them Pending
/// while its parallel limits are full): from leaving Pending to the end, or from creation
/// when they record no phase after Pending.
pub fn slot_seconds(m: &VirtualMachineInstanceMigration) -> Option<f64> {
    use kubevirt_api::MigrationPhase as P;
    let left_pending = m
        .status
        .as_ref()?
        .phase_transition_timestamps
        .iter()
        .filter(|t| t.phase.is_some_and(|p| p > P::Pending && p < P::Succeeded))
        .filter_map(|t| t.phase_transition_timestamp.as_ref())
        .map(to_chrono)
        .min();
    let created = m.metadata.creation_timestamp.as_ref().map(to_chrono);
    let start = if is_ours(m) {
        created?
    } else {
        left_pending.or(created)?
    };
    let end = m
        .phase_entered_at(P::Succeeded)
        .or_else(|| m.phase_entered_at(P::Failed))
        .map(to_chrono)?;
    Some((end - start).to_std().ok()?.as_secs_f64().max(1.0))
}

/// One finished migration of one of vacate's drains, as [`drain_bandwidths`] reads it.
#[derive(Clone, Debug)]
pub struct DrainMigration {
    /// The drain it belongs to: the drained node and the drain's part of the name.
    pub drain: (String, String),
    pub created: DateTime<Utc>,
    pub ended: DateTime<Utc>,
    pub memory: u64,
}

impl DrainMigration {
    /// One of vacate's migrations that succeeded, with its VMI's guest memory.
    pub fn of(m: &VirtualMachineInstanceMigration, memory: u64) -> Option<DrainMigration> {
        if !is_ours(m) || m.phase() != Some(kubevirt_api::MigrationPhase::Succeeded) {
            return None;
        }
        let node = m.annotations().get(MIGRATION_NODE_ANNOTATION)?.clone();
        // vacate-<vmi>-<drain>-<attempt> (`planner::migration_name`).
        let name = m.name_any();
        let drain = name.rsplit('-').nth(1)?.to_string();
        Some(DrainMigration {
            drain: (node, drain),
            created: m.metadata.creation_timestamp.as_ref().map(to_chrono)?,
            ended: m
                .phase_entered_at(kubevirt_api::MigrationPhase::Succeeded)
                .map(to_chrono)?,
            memory,
        })
    }
}

/// The bandwidth each migration slot of vacate's finished drains reached, newest drain
/// first: a drain's guest memory over the time from its first migration's creation to its
/// last one's end, times the slots it could use (`slots` per node, fewer when it had fewer
/// migrations). Everything a drain waits for between migrations counts: scheduling, target
/// preparation, and the latency between one migration's end and the next one's start, which
/// no single migration shows. A drain of one migration is left out: it shows no such latency.
pub fn drain_bandwidths(migrations: &[DrainMigration], slots: usize) -> Vec<f64> {
    /// First creation, last end, migrations, memory.
    type Span = (DateTime<Utc>, DateTime<Utc>, usize, u64);
    let mut drains: BTreeMap<&(String, String), Span> = BTreeMap::new();
    for m in migrations {
        let d = drains.entry(&m.drain).or_insert((m.created, m.ended, 0, 0));
        d.0 = d.0.min(m.created);
        d.1 = d.1.max(m.ended);
        d.2 += 1;
        d.3 += m.memory;
    }
    let mut rates: Vec<(DateTime<Utc>, f64)> = drains
        .into_values()
        .filter(|(_, _, count, _)| *count > 1)
        .filter_map(|(first, last, count, memory)| {
            let seconds = (last - first).to_std().ok()?.as_secs_f64().max(1.0);
            let used = slots.clamp(1, count) as f64;
            Some((last, memory as f64 / seconds / used))
        })
        .collect();
    rates.sort_by_key(|(last, _)| std::cmp::Reverse(*last));
    rates.into_iter().map(|(_, rate)| rate).collect()
}

/// The bandwidth that stands for a set of measured ones: their harmonic mean (the mean time
/// per byte), leaving out rates more than [`RATE_SPREAD`] times off their median (a migration
/// held up by a fault says nothing about the next one). A mean and not the median, as the API
/// records a migration's times in whole seconds: a 2.2 s migration shows as 2 s four times in
/// five and as 3 s once, and only the mean of those gets 2.2 s back.
pub fn typical_rate(rates: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = rates
        .iter()
        .copied()
        .filter(|r| r.is_finite() && *r > 0.0)
        .collect();
    sorted.sort_by(f64::total_cmp);
    let median = *sorted.get(sorted.len() / 2)?;
    let kept: Vec<f64> = sorted
        .into_iter()
        .filter(|r| *r >= median / RATE_SPREAD && *r <= median * RATE_SPREAD)
        .collect();
    let seconds_per_byte = kept.iter().map(|r| 1.0 / r).sum::<f64>() / kept.len() as f64;
    Some(1.0 / seconds_per_byte)
}

/// How far off the median a measured rate may be and still count in [`typical_rate`].
pub const RATE_SPREAD: f64 = 3.0;

pub fn migration_view(m: &VirtualMachineInstanceMigration, node: &str) -> MigrationView {
    use kubevirt_api::MigrationPhase as P;
    let phase = match m.phase() {
        Some(P::Succeeded) => MigrationPhase::Succeeded,
        Some(P::Failed) => MigrationPhase::Failed,
        _ => MigrationPhase::Unfinished,
    };
    let finished_at = m
        .phase_entered_at(P::Succeeded)
        .or_else(|| m.phase_entered_at(P::Failed))
        .or_else(|| m.migration_state().and_then(|s| s.end_timestamp.as_ref()))
        .map(to_chrono);
    MigrationView {
        namespace: m.namespace().unwrap_or_default(),
        name: m.name_any(),
        vmi_name: m.spec.vmi_name.clone(),
        phase,
        ours: is_ours_for(m, node),
        created_at: m.metadata.creation_timestamp.as_ref().map(to_chrono),
        finished_at,
        deleting: m.metadata.deletion_timestamp.is_some(),
    }
}

/// The migration was created by vacate to drain `node`.
pub fn is_ours_for(m: &VirtualMachineInstanceMigration, node: &str) -> bool {
    m.labels().get(MIGRATION_NODE_LABEL) == Some(&node_label_value(node))
        && m.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
}

/// The migration was created by vacate (for any node).
pub fn is_ours(m: &VirtualMachineInstanceMigration) -> bool {
    m.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && m.labels().contains_key(MIGRATION_NODE_LABEL)
}

/// Succeeded or Failed: it holds no room on its node any more.
pub(super) fn pod_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub fn pod_view(pod: &Pod) -> PodView {
    let spec = pod.spec.as_ref();
    PodView {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        controller_kind: pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.kind.clone()),
        mirror: pod
            .annotations()
            .contains_key("kubernetes.io/config.mirror"),
        finished: pod_finished(pod),
        has_emptydir: spec
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| vs.iter().any(|v| v.empty_dir.is_some())),
        virt_launcher: pod.labels().get(kv_labels::APP_LABEL).map(String::as_str)
            == Some(kv_labels::VIRT_LAUNCHER),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        delete_by: pod.metadata.deletion_timestamp.as_ref().map(to_chrono),
        labels: pod.labels().clone(),
    }
}

pub fn cluster_view(kubevirt: Option<&KubeVirt>, migrations_in_flight: u32) -> ClusterView {
    let defaults = ClusterView::default();
    let Some(kv) = kubevirt else {
        return ClusterView {
            migrations_in_flight,
            ..defaults
        };
    };
    let m = kv.migration_configuration();
    ClusterView {
        migrations_in_flight,
        kubevirt_per_node: m.parallel_outbound_migrations_per_node(),
        kubevirt_per_cluster: m.parallel_migrations_per_cluster(),
        bandwidth: m.bandwidth_bytes_per_second(),
        steering: Default::default(),
    }
}

/// What a pod asks the scheduler for: the sum of its containers' requests, or the largest
/// init container's when that is more, plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let of = |requests: Option<&BTreeMap<String, Quantity>>| Resources {
        cpu_millis: requests
            .and_then(|r| r.get("cpu"))
            .and_then(|q| parse_quantity(&q.0, 1000))
            .unwrap_or(0),
        memory_bytes: requests
            .and_then(|r| r.get("memory"))
            .and_then(|q| parse_quantity(&q.0, 1))
            .unwrap_or(0),
    };
    let requests_of = |c: &k8s_openapi::api::core::v1::Container| {
        of(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(requests_of(c));
    }
    for c in spec.init_containers.iter().flatten() {
        let init = requests_of(c);
        total.cpu_millis = total.cpu_millis.max(init.cpu_millis);
        total.memory_bytes = total.memory_bytes.max(init.memory_bytes);
    }
    total.add(of(spec.overhead.as_ref()));
    total
}

/// The node selector the next virt-launcher pod of each VMI gets, by `namespace/name`
/// ([`CachedVmi::launcher_selector`]). The running launcher pod's own selector is not it: a
/// pod that came from a migration also carries that migration's `addedNodeSelector`, which
/// pins it to the node it was sent to and does not follow the VM to its next migration.
pub fn launcher_selectors<'a>(
    vmis: impl IntoIterator<Item = &'a CachedVmi>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    vmis.into_iter()
        .map(|v| (v.key(), v.launcher_selector()))
        .collect()
}

/// The VMI a virt-launcher pod runs (`namespace/name`, from its controller reference).
pub fn launcher_vmi(pod: &Pod) -> Option<String> {
    if pod.labels().get(kv_labels::APP_LABEL).map(String::as_str) != Some(kv_labels::VIRT_LAUNCHER)
    {
        return None;
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "VirtualMachineInstance")?;
    Some(format!(
        "{}/{}",
        pod.namespace().unwrap_or_default(),
        owner.name
    ))
}

pub fn moves_in_drain(pod: &Pod) -> bool {
    let view = pod_view(pod);
    !view.finished && !view.mirror && view.controller_kind.as_deref() != Some("DaemonSet")
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn vm(run: serde_json::Value) -> kubevirt_api::VirtualMachine {
        let mut spec = json!({"template": {"spec": {"domain": {"devices": {}}}}});
        for (k, v) in run.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "db", "namespace": "vms", "uid": "vm-uid"},
            "spec": spec
        }))
        .unwrap()
    }

    fn owned_vmi() -> CachedVmi {
        CachedVmi::from(
            serde_json::from_value::<kubevirt_api::VirtualMachineInstance>(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "metadata": {"name": "db", "namespace": "vms", "ownerReferences": [
                    {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "db",
                     "uid": "vm-uid", "controller": true}]},
                "spec": {"domain": {"devices": {}}}
            }))
            .unwrap(),
        )
    }

    /// A migration KubeVirt's evacuation created while the limits were full waited 30 s in
    /// Pending: that wait is not part of the 10 s it took once it had a slot. One of vacate's
    /// counts from its creation.
    #[test]
    fn a_migrations_slot_time_leaves_out_its_wait_in_pending() {
        let m: VirtualMachineInstanceMigration = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "evacuation-x", "namespace": "vms",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"vmiName": "db"},
            "status": {"phase": "Succeeded", "phaseTransitionTimestamps": [
                {"phase": "Pending", "phaseTransitionTimestamp": "2026-01-01T00:00:00Z"},
                {"phase": "Scheduling", "phaseTransitionTimestamp": "2026-01-01T00:00:30Z"},
                {"phase": "Running", "phaseTransitionTimestamp": "2026-01-01T00:00:33Z"},
                {"phase": "Succeeded", "phaseTransitionTimestamp": "2026-01-01T00:00:40Z"}]}
        }))
        .unwrap();
        assert_eq!(slot_seconds(&m), Some(10.0));
        // Without phases after Pending, from its creation.
        let mut bare = m.clone();
        if let Some(s) = bare.status.as_mut() {
            s.phase_transition_timestamps.retain(|t| {
                t.phase != Some(kubevirt_api::MigrationPhase::Scheduling)
                    && t.phase != Some(kubevirt_api::MigrationPhase::Running)
            });
        }
        assert_eq!(slot_seconds(&bare), Some(40.0));
        // vacate's own: created when a slot was free, so from creation.
        let mut ours = m.clone();
        ours.metadata.labels = Some(
            [
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                (
                    MIGRATION_NODE_LABEL.to_string(),
                    node_label_value("worker-1"),
                ),
            ]
            .into(),
        );
        assert_eq!(slot_seconds(&ours), Some(40.0));
    }

    /// A drain's bandwidth per slot counts the time between its migrations: four 1 GiB
    /// migrations on two slots, each 2 s long, with 1 s between one's end and the next
    /// one's start, take 5 s: 0.4 GiB/s per slot, not the 0.5 of one migration.
    #[test]
    fn a_drains_bandwidth_counts_the_time_between_its_migrations() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let gib = 1u64 << 30;
        let m = |node: &str, drain: &str, created: i64, ended: i64| DrainMigration {
            drain: (node.to_string(), drain.to_string()),
            created: t(created),
            ended: t(ended),
            memory: gib,
        };
        let migrations = vec![
            m("worker-1", "aa", 0, 2),
            m("worker-1", "aa", 0, 2),
            m("worker-1", "aa", 3, 5),
            m("worker-1", "aa", 3, 5),
            // A later drain of the same node, with one slot's worth of migrations.
            m("worker-1", "bb", 100, 104),
            m("worker-1", "bb", 100, 104),
            // A drain of one migration shows nothing between migrations.
            m("worker-2", "cc", 200, 201),
        ];
        let rates = drain_bandwidths(&migrations, 2);
        let expected = [gib as f64 * 2.0 / 4.0 / 2.0, gib as f64 * 4.0 / 5.0 / 2.0];
        assert_eq!(rates, expected, "newest drain first");
        // The drain and its node come from vacate's migration: its annotation and name.
        let object: VirtualMachineInstanceMigration = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "vacate-db-1-0a1b2c3d-1", "namespace": "vms",
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {MIGRATION_NODE_ANNOTATION: "worker-1"},
                         "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                                    MIGRATION_NODE_LABEL: node_label_value("worker-1")}},
            "spec": {"vmiName": "db-1"},
            "status": {"phase": "Succeeded", "phaseTransitionTimestamps": [
                {"phase": "Succeeded", "phaseTransitionTimestamp": "2026-01-01T00:00:07Z"}]}
        }))
        .unwrap();
        let seen = DrainMigration::of(&object, gib).expect("one of vacate's");
        assert_eq!(seen.drain, ("worker-1".to_string(), "0a1b2c3d".to_string()));
        assert_eq!((seen.ended - seen.created).num_seconds(), 7);
        let mut others = object.clone();
        others.metadata.labels = None;
        assert!(DrainMigration::of(&others, gib).is_none());
    }

    /// Migrations of 2.2 s recorded in whole seconds (2 s four times in five, 3 s once):
    /// the typical rate is that of 2.2 s, where the median would say 2 s; a migration held up
    /// ten times longer is left out.
    #[test]
    fn the_typical_rate_undoes_whole_second_timestamps() {
        let gib = (1u64 << 30) as f64;
        let mut rates = vec![gib / 2.0; 8];
        rates.extend([gib / 3.0, gib / 3.0]);
        let rate = typical_rate(&rates).unwrap();
        assert!((gib / rate - 2.2).abs() < 1e-9, "{}", gib / rate);
        rates.push(gib / 25.0);
        let rate = typical_rate(&rates).unwrap();
        assert!(
            (gib / rate - 2.2).abs() < 1e-9,
            "an outlier counted: {}",
            gib / rate
        );
        assert_eq!(typical_rate(&[]), None);
        assert_eq!(typical_rate(&[f64::NAN, 0.0]), None);
        assert_eq!(typical_rate(&[gib]), Some(gib));
    }

    /// A VMI comes back when the VirtualMachine its owner reference names by UID restarts.
    #[test]
    fn only_a_vm_that_runs_always_starts_a_stopped_vmi_again() {
        let always = vm(json!({"runStrategy": "Always"}));
        let halted = vm(json!({"runStrategy": "Halted"}));
        let mut other = always.clone();
        other.metadata.uid = Some("another-vm-uid".into());
        let vmi = owned_vmi();
        assert!(restarts_when_stopped(
            &vmi,
            &RestartingVms::filled([&always])
        ));
        assert!(!restarts_when_stopped(
            &vmi,
            &RestartingVms::filled([&halted])
        ));
        // Another VirtualMachine of the same name (the VMI's was deleted and made again).
        assert!(!restarts_when_stopped(
            &vmi,
            &RestartingVms::filled([&other])
        ));
        // No VirtualMachine in the cache: nothing would start it.
        assert!(!restarts_when_stopped(&vmi, &RestartingVms::filled([])));
        assert_eq!(
            super::super::restarts::restarts(&always).0,
            super::super::cached::Uid::of("vm-uid")
        );
    }

    #[test]
    fn long_node_names_make_valid_unique_label_values() {
        let a = format!("{}-a", "n".repeat(80));
        let b = format!("{}-b", "n".repeat(80));
        assert!(node_label_value(&a).len() <= 63);
        assert_ne!(node_label_value(&a), node_label_value(&b));
        assert_eq!(node_label_value("worker-1"), "worker-1");
    }

    #[test]
    fn pods_are_classified_from_their_objects() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "virt-launcher-vm-abcde", "namespace": "vms", "uid": "u1",
                "labels": {"kubevirt.io": "virt-launcher"},
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                                     "name": "vm", "uid": "v1", "controller": true}]
            },
            "spec": {"containers": [], "volumes": [{"name": "scratch", "emptyDir": {}}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let view = pod_view(&pod);
        assert!(view.virt_launcher);
        assert!(view.has_emptydir);
        assert_eq!(
            view.controller_kind.as_deref(),
            Some("VirtualMachineInstance")
        );
        assert!(!view.finished && !view.mirror && !view.deleting);
    }
}
