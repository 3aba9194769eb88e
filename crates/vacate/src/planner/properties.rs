//! Property tests of the drain rules: random but well-formed snapshots (any phase, any mix
//! of VMIs, migrations, pods and limits), and whole drains played against a model of the
//! cluster that answers every action the way the API server and KubeVirt would.
//!
//! Every property runs from a fixed seed, so a run is reproducible; a failure prints the
//! smallest snapshot proptest found.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{RngSeed, TestCaseError};

use super::capacity::Resources;
use super::tests::{node, t};
use super::*;
use crate::config::{ConfigDuration, PodPolicy};

const NODE: &str = "worker-1";

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x7661_6361_7465),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("strategies generate counts of at least 1")
}

// ---------------------------------------------------------------------------------------
// What is generated.

#[derive(Debug, Clone)]
struct RecordSpec {
    outcome: VmiOutcome,
    attempts: u32,
    /// Seconds from `now` to the retry (negative: already due).
    retry_in: Option<i64>,
    eviction_refused: bool,
}

#[derive(Debug, Clone)]
enum MigrationSpec {
    None,
    /// vacate's, under the name of the VMI's current attempt or of an earlier drain.
    Ours {
        phase: MigrationPhase,
        current: bool,
    },
    /// KubeVirt's evacuation or a person's.
    Theirs {
        phase: MigrationPhase,
    },
}

#[derive(Debug, Clone)]
struct VmiSpec {
    memory: u64,
    migratability: Migratability,
    strategy: EvictionStrategy,
    launcher: bool,
    restartable: bool,
    deleting: bool,
    finished: bool,
    record: Option<RecordSpec>,
    migration: MigrationSpec,
}

#[derive(Debug, Clone)]
struct PodSpec {
    controller: Option<&'static str>,
    mirror: bool,
    finished: bool,
    emptydir: bool,
    deleting: bool,
    record: Option<(PodOutcome, bool)>,
}

#[derive(Debug, Clone)]
enum StateSpec {
    Absent,
    Invalid,
    Newer,
    Valid {
        phase: Phase,
        cordoned_by_vacate: bool,
        attempt: u32,
        same_request: bool,
        last_batch_ago: Option<i64>,
    },
}

#[derive(Debug, Clone)]
struct Limits {
    batch_size: u32,
    per_node: u32,
    cluster: u32,
    max_attempts: u32,
    policy: NonMigratablePolicy,
    on_refused: EvictionRefusedPolicy,
    uncordon_on_failure: bool,
    unmanaged: PodPolicy,
    emptydir: PodPolicy,
    batch_interval: u64,
}

#[derive(Debug, Clone)]
struct Scenario {
    requested: bool,
    unschedulable: bool,
    ready: bool,
    drained_label: bool,
    state: StateSpec,
    /// Seconds since the drain in the state began.
    now: i64,
    vmis: Vec<VmiSpec>,
    /// vacate's migrations of VMIs that already left the node.
    lagging: Vec<MigrationPhase>,
    pods: Vec<PodSpec>,
    /// Unfinished migrations of other nodes.
    elsewhere: u32,
    kubevirt_per_node: u32,
    kubevirt_per_cluster: u32,
    limits: Limits,
    /// A rollout's steering targets (free GiB, migrations coming in) and the inbound limit;
    /// the first target is the node itself, never to be chosen.
    steering: Option<(Vec<(i64, u32)>, u32)>,
}

fn migration_phase() -> impl Strategy<Value = MigrationPhase> {
    prop_oneof![
        2 => Just(MigrationPhase::Unfinished),
        1 => Just(MigrationPhase::Succeeded),
        1 => Just(MigrationPhase::Failed),
    ]
}

fn vmi_outcome() -> impl Strategy<Value = VmiOutcome> {
    select(vec![
        VmiOutcome::Waiting,
        VmiOutcome::Migrating,
        VmiOutcome::MigratingExternally,
        VmiOutcome::RetryWaiting,
        VmiOutcome::Evicting,
        VmiOutcome::Restarting,
        VmiOutcome::Blocked,
        VmiOutcome::Migrated,
        VmiOutcome::Evicted,
        VmiOutcome::Restarted,
        VmiOutcome::Left,
    ])
}

fn eviction_strategy() -> impl Strategy<Value = EvictionStrategy> {
    prop_oneof![
        4 => Just(EvictionStrategy::LiveMigrate),
        1 => Just(EvictionStrategy::LiveMigrateIfPossible),
        1 => Just(EvictionStrategy::None),
        1 => Just(EvictionStrategy::External),
        1 => Just(EvictionStrategy::Unrecognized),
    ]
}

fn migratability() -> impl Strategy<Value = Migratability> {
    prop_oneof![
        4 => Just(Migratability::Migratable),
        1 => Just(Migratability::NotMigratable {
            reason: "DisksNotLiveMigratable".into(),
            message: "PVC disk is ReadWriteOnce".into(),
        }),
        1 => Just(Migratability::Unknown),
    ]
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    (
        vmi_outcome(),
        0u32..5,
        proptest::option::of(-600i64..600),
        any::<bool>(),
    )
        .prop_map(
            |(outcome, attempts, retry_in, eviction_refused)| RecordSpec {
                outcome,
                // A migration vacate created has a number.
                attempts: if outcome == VmiOutcome::Migrating {
                    attempts.max(1)
                } else {
                    attempts
                },
                retry_in,
                eviction_refused,
            },
        )
}

fn migration_spec() -> impl Strategy<Value = MigrationSpec> {
    prop_oneof![
        3 => Just(MigrationSpec::None),
        2 => (migration_phase(), any::<bool>())
            .prop_map(|(phase, current)| MigrationSpec::Ours { phase, current }),
        1 => migration_phase().prop_map(|phase| MigrationSpec::Theirs { phase }),
    ]
}

fn vmi_spec() -> impl Strategy<Value = VmiSpec> {
    (
        0u64..(64 << 30),
        migratability(),
        eviction_strategy(),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        proptest::option::of(record_spec()),
        migration_spec(),
    )
        .prop_map(
            |(
                memory,
                migratability,
                strategy,
                launcher,
                restartable,
                deleting,
                finished,
                record,
                migration,
            )| {
                VmiSpec {
                    memory,
                    migratability,
                    strategy,
                    launcher,
                    restartable,
                    deleting,
                    finished,
                    record,
                    migration,
                }
            },
        )
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        select(vec![
            None,
            Some("ReplicaSet"),
            Some("StatefulSet"),
            Some("DaemonSet"),
            Some("Pod"),
        ]),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        proptest::option::of((
            select(vec![
                PodOutcome::Waiting,
                PodOutcome::Evicting,
                PodOutcome::RetryWaiting,
                PodOutcome::Blocked,
                PodOutcome::Evicted,
            ]),
            any::<bool>(),
        )),
    )
        .prop_map(
            |(controller, mirror, finished, emptydir, deleting, record)| PodSpec {
                controller,
                mirror,
                finished,
                emptydir,
                deleting,
                record,
            },
        )
}

fn state_spec() -> impl Strategy<Value = StateSpec> {
    prop_oneof![
        2 => Just(StateSpec::Absent),
        1 => Just(StateSpec::Invalid),
        1 => Just(StateSpec::Newer),
        8 => (
            select(Phase::ALL.to_vec()),
            any::<bool>(),
            1u32..4,
            prop::bool::weighted(0.8),
            proptest::option::of(0i64..120),
        )
            .prop_map(|(phase, cordoned_by_vacate, attempt, same_request, last_batch_ago)| {
                StateSpec::Valid {
                    phase,
                    cordoned_by_vacate,
                    attempt,
                    same_request,
                    last_batch_ago,
                }
            }),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        1u32..7,
        1u32..7,
        1u32..13,
        1u32..5,
        select(vec![
            NonMigratablePolicy::Evict,
            NonMigratablePolicy::Restart,
            NonMigratablePolicy::Block,
        ]),
        select(vec![
            EvictionRefusedPolicy::Restart,
            EvictionRefusedPolicy::Fail,
        ]),
        any::<bool>(),
        select(vec![PodPolicy::Evict, PodPolicy::Block]),
        select(vec![PodPolicy::Evict, PodPolicy::Block]),
        select(vec![0u64, 0, 60]),
    )
        .prop_map(
            |(
                batch_size,
                per_node,
                cluster,
                max_attempts,
                policy,
                on_refused,
                uncordon_on_failure,
                unmanaged,
                emptydir,
                batch_interval,
            )| Limits {
                batch_size,
                per_node,
                cluster,
                max_attempts,
                policy,
                on_refused,
                uncordon_on_failure,
                unmanaged,
                emptydir,
                batch_interval,
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (
            prop::bool::weighted(0.8),
            any::<bool>(),
            prop::bool::weighted(0.9),
            any::<bool>(),
            state_spec(),
            0i64..7200,
        ),
        prop::collection::vec(vmi_spec(), 0..=20),
        prop::collection::vec(migration_phase(), 0..3),
        prop::collection::vec(pod_spec(), 0..6),
        (0u32..8, 0u32..7, 0u32..13),
        limits(),
        prop::option::of((prop::collection::vec((0i64..40, 0u32..4), 0..5), 1u32..4)),
    )
        .prop_map(
            |(
                (requested, unschedulable, ready, drained_label, state, now),
                vmis,
                lagging,
                pods,
                (elsewhere, kubevirt_per_node, kubevirt_per_cluster),
                limits,
                steering,
            )| Scenario {
                requested,
                unschedulable,
                ready,
                drained_label,
                state,
                now,
                vmis,
                lagging,
                pods,
                elsewhere,
                kubevirt_per_node,
                kubevirt_per_cluster,
                limits,
                steering,
            },
        )
}

// ---------------------------------------------------------------------------------------
// From what is generated to the planner's input.

fn config_of(l: &Limits) -> Config {
    let mut config = Config::default();
    let m = &mut config.migration;
    m.batch_size = nz(l.batch_size);
    m.max_in_flight_per_node = nz(l.per_node);
    m.max_in_flight_cluster = nz(l.cluster);
    m.max_attempts = nz(l.max_attempts);
    m.batch_interval = ConfigDuration::from_secs(l.batch_interval);
    config.non_migratable.policy = l.policy;
    config.non_migratable.on_eviction_refused = l.on_refused;
    config.drain.uncordon_on_failure = l.uncordon_on_failure;
    config.pods.unmanaged = l.unmanaged;
    config.pods.emptydir = l.emptydir;
    config
}

fn vmi_name(i: usize) -> String {
    format!("vm-{i:02}")
}

fn vmi_view(i: usize, v: &VmiSpec) -> VmiView {
    let name = vmi_name(i);
    VmiView {
        namespace: "vms".into(),
        launcher_pod: v.launcher.then(|| format!("virt-launcher-{name}-abcde")),
        name,
        finished: v.finished,
        running: !v.finished,
        migratability: v.migratability.clone(),
        eviction_strategy: v.strategy,
        restartable: v.restartable,
        deleting: v.deleting,
        memory: v.memory,
        // A sixteenth of the guest memory: small enough that several fit on a target.
        requests: Resources {
            cpu_millis: 1000,
            memory_bytes: (v.memory / 16) as i64,
        },
        node_selector: Default::default(),
        placement_rules: false,
        evacuating: false,
    }
}

fn pod_view(i: usize, p: &PodSpec, now: i64) -> PodView {
    PodView {
        namespace: "apps".into(),
        name: format!("pod-{i}"),
        uid: format!("uid-{i}"),
        controller_kind: p.controller.map(String::from),
        mirror: p.mirror,
        finished: p.finished,
        has_emptydir: p.emptydir,
        virt_launcher: false,
        deleting: p.deleting,
        delete_by: p.deleting.then(|| t(now + 30)),
        labels: Default::default(),
    }
}

fn build(sc: &Scenario) -> (Snapshot, Config) {
    let config = config_of(&sc.limits);
    let now = sc.now;
    let mut n = node(sc.requested.then_some("true"), sc.unschedulable);
    n.ready = sc.ready;
    n.drained_label = sc.drained_label;
    let mut state = match &sc.state {
        StateSpec::Valid {
            phase,
            cordoned_by_vacate,
            attempt,
            same_request,
            last_batch_ago,
        } => {
            let mut st = DrainState::new(t(0), *cordoned_by_vacate, *attempt);
            st.phase = *phase;
            st.phase_since = t(now / 2);
            st.request_value = if *same_request { "true" } else { "earlier" }.into();
            st.last_batch_at = last_batch_ago.map(|ago| t(now - ago));
            if *phase == Phase::Drained {
                st.drained_at = Some(t(now / 2));
            }
            if *phase == Phase::Failed {
                st.failure = Some("an earlier failure".into());
            }
            Some(st)
        }
        _ => None,
    };
    // Names of an earlier drain of this node, which no current record points at.
    let earlier = DrainState::new(t(-86_400), true, 1);
    let mut migrations = Vec::new();
    let mut migration = |name: String, vmi: String, phase: MigrationPhase, ours: bool| {
        migrations.push(MigrationView {
            namespace: "vms".into(),
            name,
            vmi_name: vmi,
            phase,
            ours,
            created_at: Some(t(now - 30)),
            finished_at: (phase != MigrationPhase::Unfinished).then(|| t(now - 5)),
            deleting: false,
        });
    };
    for (i, v) in sc.vmis.iter().enumerate() {
        let name = vmi_name(i);
        let key = format!("vms/{name}");
        if let (Some(st), Some(r)) = (state.as_mut(), &v.record) {
            st.vmis.insert(
                key,
                VmiRecord {
                    outcome: r.outcome,
                    attempts: r.attempts,
                    retry_at: r.retry_in.map(|s| t(now + s)),
                    eviction_refused: r.eviction_refused,
                    target: None,
                },
            );
        }
        match &v.migration {
            MigrationSpec::None => {}
            MigrationSpec::Ours { phase, current } => {
                let attempts = v.record.as_ref().map_or(0, |r| r.attempts);
                let m = match state.as_ref() {
                    Some(st) if *current && attempts > 0 => {
                        migration_name(NODE, st, &name, attempts)
                    }
                    _ => migration_name(NODE, &earlier, &name, 1),
                };
                migration(m, name, *phase, true);
            }
            MigrationSpec::Theirs { phase } => {
                migration(format!("kubevirt-evacuation-{i}"), name, *phase, false)
            }
        }
    }
    for (j, phase) in sc.lagging.iter().enumerate() {
        let name = format!("gone-{j}");
        let m = match state.as_mut() {
            Some(st) => {
                st.vmis.insert(
                    format!("vms/{name}"),
                    VmiRecord {
                        outcome: VmiOutcome::Migrating,
                        attempts: 1,
                        ..VmiRecord::default()
                    },
                );
                migration_name(NODE, st, &name, 1)
            }
            None => migration_name(NODE, &earlier, &name, 1),
        };
        migration(m, name, *phase, true);
    }
    let pods: Vec<PodView> = sc
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| pod_view(i, p, now))
        .collect();
    if let Some(st) = state.as_mut() {
        for (i, p) in sc.pods.iter().enumerate() {
            if let Some((outcome, same_uid)) = p.record {
                st.pods.insert(
                    format!("apps/pod-{i}"),
                    PodRecord {
                        outcome,
                        uid: if same_uid {
                            format!("uid-{i}")
                        } else {
                            "old".into()
                        },
                        retries: u32::from(outcome == PodOutcome::RetryWaiting),
                        retry_at: (outcome == PodOutcome::RetryWaiting).then(|| t(now + 10)),
                        last_refusal: None,
                        rejected: false,
                    },
                );
            }
        }
    }
    n.state = match (&sc.state, state) {
        (_, Some(st)) => StateAnnotation::Valid(Box::new(st)),
        (StateSpec::Invalid, None) => StateAnnotation::Invalid("expected value".into()),
        (StateSpec::Newer, None) => StateAnnotation::NewerVersion(2),
        _ => StateAnnotation::Absent,
    };
    let in_flight_here = unfinished_count(&migrations);
    let s = Snapshot {
        now: t(now),
        node: n,
        vmis: sc
            .vmis
            .iter()
            .enumerate()
            .map(|(i, v)| vmi_view(i, v))
            .collect(),
        migrations,
        pods,
        cluster: ClusterView {
            migrations_in_flight: in_flight_here + sc.elsewhere,
            kubevirt_per_node: sc.kubevirt_per_node,
            kubevirt_per_cluster: sc.kubevirt_per_cluster,
            bandwidth: Some(128.0 * 1024.0 * 1024.0),
            steering: match &sc.steering {
                None => Steering::Off,
                Some((targets, max_inbound)) => Steering::On {
                    targets: targets
                        .iter()
                        .enumerate()
                        .map(|(i, (free_gib, inbound))| {
                            let name = if i == 0 {
                                "worker-1".to_string()
                            } else {
                                format!("target-{i}")
                            };
                            SteerTarget {
                                room: capacity::Target {
                                    name: name.clone(),
                                    labels: Default::default(),
                                    free: Resources {
                                        cpu_millis: 100_000,
                                        memory_bytes: free_gib << 30,
                                    },
                                    pods_free: 110,
                                },
                                hostname: name,
                                inbound: *inbound,
                            }
                        })
                        .collect(),
                    max_inbound: *max_inbound,
                },
            },
        },
        start_gate: StartGate::Open,
    };
    (s, config)
}

/// Distinct unfinished migrations, as KubeVirt counts them.
fn unfinished_count(migrations: &[MigrationView]) -> u32 {
    migrations
        .iter()
        .filter(|m| m.phase == MigrationPhase::Unfinished)
        .map(|m| (&m.namespace, &m.name))
        .collect::<BTreeSet<_>>()
        .len() as u32
}

// ---------------------------------------------------------------------------------------
// What every plan must respect.

/// The migrations the plan creates stay within the effective limits: vacate's own and the
/// KubeVirt CR's, whichever is lower, counting what is already in flight. A create repeated
/// because an earlier one may not have gone through was counted when it was first made; it
/// still takes a slot from new ones.
fn check_limits(s: &Snapshot, config: &Config, plan: &Plan) -> Result<(), TestCaseError> {
    let m = &config.migration;
    let node_cap = m
        .max_in_flight_per_node
        .get()
        .min(s.cluster.kubevirt_per_node);
    let cluster_cap = m
        .max_in_flight_cluster
        .get()
        .min(s.cluster.kubevirt_per_cluster);
    let original = s.node.state.valid().filter(|st| st.phase.is_draining());
    let is_repeat = |namespace: &str, name: &str, vmi: &str| {
        original.is_some_and(|st| {
            st.vmis.get(&format!("{namespace}/{vmi}")).is_some_and(|r| {
                r.outcome == VmiOutcome::Migrating
                    && r.attempts > 0
                    && name == migration_name(&s.node.name, st, vmi, r.attempts)
            })
        })
    };
    let (mut repeats, mut fresh) = (0u32, 0u32);
    for action in &plan.actions {
        if let Action::CreateMigration {
            namespace,
            name,
            vmi,
            ..
        } = action
        {
            if is_repeat(namespace, name, vmi) {
                repeats += 1;
            } else {
                fresh += 1;
            }
        }
    }
    if fresh > 0 {
        let node_after = unfinished_count(&s.migrations) + repeats + fresh;
        let cluster_after = s.cluster.migrations_in_flight + repeats + fresh;
        prop_assert!(
            node_after <= node_cap,
            "{node_after} migrations in flight from the node, limit {node_cap}"
        );
        prop_assert!(
            cluster_after <= cluster_cap,
            "{cluster_after} migrations in flight in the cluster, limit {cluster_cap}"
        );
        prop_assert!(fresh <= m.batch_size.get(), "batch of {fresh}");
    }
    Ok(())
}

/// A migration is created only for a running VMI on the node that has none in flight, and
/// only once per plan.
fn check_one_migration_per_vmi(s: &Snapshot, plan: &Plan) -> Result<(), TestCaseError> {
    let mut created = BTreeSet::new();
    for action in &plan.actions {
        if let Action::CreateMigration { namespace, vmi, .. } = action {
            let key = format!("{namespace}/{vmi}");
            prop_assert!(created.insert(key.clone()), "two creates for {key}");
            prop_assert!(
                s.vmis.iter().any(|v| v.key() == key && !v.finished),
                "a migration of {key}, which does not run on the node"
            );
            prop_assert!(
                !s.migrations
                    .iter()
                    .any(|m| m.vmi_key() == key && m.phase == MigrationPhase::Unfinished),
                "a second migration of {key} while one is in flight"
            );
        }
    }
    Ok(())
}

/// A VMI is stopped only when the policy for VMIs that cannot migrate says so, it cannot
/// migrate, and a VirtualMachine starts it again.
fn check_restarts(s: &Snapshot, config: &Config, plan: &Plan) -> Result<(), TestCaseError> {
    let policy = &config.non_migratable;
    let records = s.node.state.valid().map(|st| &st.vmis);
    for action in &plan.actions {
        let Action::RestartVmi { namespace, name } = action else {
            continue;
        };
        let key = format!("{namespace}/{name}");
        let vmi = s.vmis.iter().find(|v| v.key() == key);
        prop_assert!(vmi.is_some(), "restart of {key}, which is not on the node");
        let vmi = vmi.expect("checked");
        let record = records
            .and_then(|r| r.get(&key))
            .cloned()
            .unwrap_or_default();
        let says_restart = policy.policy == NonMigratablePolicy::Restart
            || (policy.policy == NonMigratablePolicy::Evict
                && policy.on_eviction_refused == EvictionRefusedPolicy::Restart
                && record.eviction_refused);
        prop_assert!(says_restart, "restart of {key} under {policy:?}");
        prop_assert!(
            vmi.restartable,
            "restart of {key}, which has no VirtualMachine"
        );
        prop_assert!(!vmi.deleting, "second stop of {key}");
        let cannot_migrate = matches!(vmi.migratability, Migratability::NotMigratable { .. })
            || vmi.eviction_strategy == EvictionStrategy::None
            || record.attempts >= config.migration.max_attempts.get();
        prop_assert!(
            cannot_migrate
                && !matches!(
                    vmi.eviction_strategy,
                    EvictionStrategy::External | EvictionStrategy::Unrecognized
                ),
            "restart of {key}, which could still migrate or is not vacate's to move"
        );
    }
    Ok(())
}

/// A cordon vacate did not set is never lifted: the state says so, or there is no (readable)
/// state and the node is cordoned.
fn admin_cordoned(s: &Snapshot) -> bool {
    s.node.unschedulable
        && match &s.node.state {
            StateAnnotation::Valid(st) => !st.cordoned_by_vacate,
            _ => true,
        }
}

fn check_admin_cordon(s: &Snapshot, plan: &Plan) -> Result<(), TestCaseError> {
    if admin_cordoned(s) {
        prop_assert!(
            !plan.actions.contains(&Action::Uncordon),
            "lifted a cordon vacate did not set: {:?}",
            plan.actions
        );
    }
    Ok(())
}

/// A plan that fails the drain starts nothing new: it cancels vacate's migrations, so
/// creating one, or evicting or stopping a VM, would leave work running for a drain that
/// has given up.
fn check_failure_starts_nothing(s: &Snapshot, plan: &Plan) -> Result<(), TestCaseError> {
    let failing = plan.phase == Phase::Failed
        && s.node
            .state
            .valid()
            .is_none_or(|st| st.phase != Phase::Failed);
    if failing {
        for action in &plan.actions {
            prop_assert!(
                !matches!(
                    action,
                    Action::CreateMigration { .. }
                        | Action::RestartVmi { .. }
                        | Action::EvictPod { vmi: Some(_), .. }
                ),
                "the plan that fails the drain also does {action:?}"
            );
        }
    }
    Ok(())
}

/// Steered migrations go to a target that is not the node itself, within its room and its
/// inbound limit.
fn check_steering(s: &Snapshot, plan: &Plan) -> Result<(), TestCaseError> {
    let Steering::On {
        targets,
        max_inbound,
    } = &s.cluster.steering
    else {
        return Ok(());
    };
    let mut taken: BTreeMap<&str, (u32, i64)> = BTreeMap::new();
    for action in &plan.actions {
        let Action::CreateMigration {
            vmi,
            target: Some(host),
            ..
        } = action
        else {
            continue;
        };
        prop_assert!(
            *host != s.node.name,
            "steered to the node itself: {action:?}"
        );
        let target = targets.iter().find(|t| t.hostname == *host);
        prop_assert!(target.is_some(), "steered to an unknown node: {action:?}");
        let memory = s
            .vmis
            .iter()
            .find(|v| v.name == *vmi)
            .map_or(0, |v| v.requests.memory_bytes);
        let entry = taken.entry(host.as_str()).or_default();
        entry.0 += 1;
        entry.1 += memory;
    }
    for (host, (count, memory)) in taken {
        let target = targets
            .iter()
            .find(|t| t.hostname == host)
            .expect("checked");
        prop_assert!(
            target.inbound + count <= *max_inbound,
            "{host}: {} coming in and {count} more, limit {max_inbound}",
            target.inbound
        );
        prop_assert!(
            memory <= target.room.free.memory_bytes,
            "{host}: {memory} bytes steered to {} free",
            target.room.free.memory_bytes
        );
    }
    Ok(())
}

fn check_plan(s: &Snapshot, config: &Config, plan: &Plan) -> Result<(), TestCaseError> {
    check_steering(s, plan)?;
    check_limits(s, config, plan)?;
    check_one_migration_per_vmi(s, plan)?;
    check_restarts(s, config, plan)?;
    check_admin_cordon(s, plan)?;
    check_failure_starts_nothing(s, plan)
}

// ---------------------------------------------------------------------------------------
// Properties of single plans.

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn migrations_stay_within_the_effective_limits(sc in scenario()) {
        let (s, config) = build(&sc);
        check_limits(&s, &config, &plan(&s, &config))?;
    }

    #[test]
    fn steered_migrations_stay_within_room_and_inbound_limits(sc in scenario()) {
        let (s, config) = build(&sc);
        check_steering(&s, &plan(&s, &config))?;
    }

    #[test]
    fn a_vmi_never_gets_a_second_migration_in_flight(sc in scenario()) {
        let (s, config) = build(&sc);
        check_one_migration_per_vmi(&s, &plan(&s, &config))?;
    }

    #[test]
    fn a_cordon_vacate_did_not_set_is_never_lifted(
        mut sc in scenario(),
        no_state in any::<bool>(),
    ) {
        sc.unschedulable = true;
        match &mut sc.state {
            StateSpec::Valid { cordoned_by_vacate, .. } if !no_state => *cordoned_by_vacate = false,
            state => *state = StateSpec::Absent,
        }
        let (s, config) = build(&sc);
        prop_assert!(admin_cordoned(&s));
        check_admin_cordon(&s, &plan(&s, &config))?;
    }

    #[test]
    fn vmis_are_stopped_only_as_the_policy_says(sc in scenario()) {
        let (s, config) = build(&sc);
        check_restarts(&s, &config, &plan(&s, &config))?;
    }

    #[test]
    fn a_failing_plan_starts_nothing_new(sc in scenario()) {
        let (s, config) = build(&sc);
        check_failure_starts_nothing(&s, &plan(&s, &config))?;
    }

    /// No snapshot makes the planner panic, and what it writes reads back as written.
    #[test]
    fn planning_never_panics_and_states_round_trip(sc in scenario()) {
        let (s, config) = build(&sc);
        let p = plan(&s, &config);
        let _ = explain(&s, &config);
        let _ = wants_to_start(&s, &config);
        if let NextState::Write(st) | NextState::Keep(st) = &p.state {
            let json = st.to_json();
            prop_assert_eq!(StateAnnotation::parse(Some(&json)), StateAnnotation::Valid(st.clone()));
            let _ = summary(st);
            let _ = st.detail();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Whole drains against a model of the cluster.

/// A small deterministic generator for the cluster's answers, seeded by proptest.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next() % (high - low + 1) as u64) as i64
    }
}

/// How a VMI left the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// vacate's migration succeeded.
    OurMigration,
    /// Someone else's migration (KubeVirt's evacuation) succeeded.
    TheirMigration,
    /// Its virt-launcher pod was evicted and the VM stopped.
    Evicted,
    /// vacate stopped it; its VirtualMachine starts it elsewhere.
    Restarted,
}

struct World {
    now: i64,
    node: NodeView,
    vmis: Vec<VmiView>,
    /// VMIs that leave at the next tick, and how.
    leaving: BTreeMap<String, Left>,
    left: BTreeMap<String, Left>,
    migrations: Vec<MigrationView>,
    pods: Vec<PodView>,
    elsewhere: u32,
    kubevirt_per_node: u32,
    kubevirt_per_cluster: u32,
    evacuations: u32,
}

const TAKEN_OVER: &str = "Eviction triggered evacuation of VMI";

impl World {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            now: t(self.now),
            node: self.node.clone(),
            vmis: self.vmis.clone(),
            migrations: self.migrations.clone(),
            pods: self.pods.clone(),
            cluster: ClusterView {
                migrations_in_flight: unfinished_count(&self.migrations) + self.elsewhere,
                kubevirt_per_node: self.kubevirt_per_node,
                kubevirt_per_cluster: self.kubevirt_per_cluster,
                bandwidth: Some(128.0 * 1024.0 * 1024.0),
                steering: Steering::Off,
            },
            start_gate: StartGate::Open,
        }
    }

    fn start_evacuation(&mut self, vmi: &VmiView) {
        self.evacuations += 1;
        self.migrations.push(MigrationView {
            namespace: vmi.namespace.clone(),
            name: format!("kubevirt-evacuation-{}", self.evacuations),
            vmi_name: vmi.name.clone(),
            phase: MigrationPhase::Unfinished,
            ours: false,
            created_at: Some(t(self.now)),
            finished_at: None,
            deleting: false,
        });
    }

    /// Carries out one action as the API server and KubeVirt would, and answers.
    fn apply(&mut self, action: &Action, dice: &mut Dice) -> ActionResult {
        match action {
            Action::Cordon => self.node.unschedulable = true,
            Action::Uncordon => self.node.unschedulable = false,
            Action::SetDrainedLabel(on) => self.node.drained_label = *on,
            Action::RemoveLabel(_) | Action::Event { .. } => {}
            Action::CreateMigration {
                namespace,
                name,
                vmi,
                ..
            } => {
                if self.migrations.iter().any(|m| m.name == *name) {
                    return ActionResult::AlreadyExists;
                }
                if dice.chance(10) {
                    return ActionResult::Refused(
                        "the server has received too many requests".into(),
                    );
                }
                self.migrations.push(MigrationView {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    vmi_name: vmi.clone(),
                    phase: MigrationPhase::Unfinished,
                    ours: true,
                    created_at: Some(t(self.now)),
                    finished_at: None,
                    deleting: false,
                });
            }
            Action::CancelMigration { name, .. } => {
                let before = self.migrations.len();
                self.migrations
                    .retain(|m| !(m.name == *name && m.phase == MigrationPhase::Unfinished));
                if self.migrations.len() == before {
                    return ActionResult::Gone;
                }
            }
            Action::EvictPod {
                namespace,
                vmi: Some(vmi),
                ..
            } => {
                let key = format!("{namespace}/{vmi}");
                let Some(v) = self.vmis.iter().find(|v| v.key() == key).cloned() else {
                    return ActionResult::Gone;
                };
                match (v.eviction_strategy, &v.migratability) {
                    // KubeVirt marks the VMI and moves it itself (or hands it to the
                    // external controller, modelled as a migration too).
                    (EvictionStrategy::External, _)
                    | (EvictionStrategy::LiveMigrate, Migratability::Migratable) => {
                        self.start_evacuation(&v);
                        return ActionResult::Refused(format!("{TAKEN_OVER} {key}"));
                    }
                    (EvictionStrategy::LiveMigrate, _) => {
                        return ActionResult::Refused(format!("VMI {key} is not migratable"));
                    }
                    _ if dice.chance(15) => {
                        return ActionResult::Refused(
                            "Cannot evict pod as it would violate the pod's disruption budget."
                                .into(),
                        );
                    }
                    _ => {
                        self.leaving.entry(key).or_insert(Left::Evicted);
                    }
                }
            }
            Action::EvictPod {
                namespace,
                name,
                vmi: None,
                ..
            } => {
                let now = self.now;
                let Some(pod) = self
                    .pods
                    .iter_mut()
                    .find(|p| p.namespace == *namespace && p.name == *name)
                else {
                    return ActionResult::Gone;
                };
                if dice.chance(20) {
                    return ActionResult::Refused(
                        "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                    );
                }
                pod.deleting = true;
                pod.delete_by = Some(t(now + 30));
            }
            Action::RestartVmi { namespace, name } => {
                let key = format!("{namespace}/{name}");
                let Some(v) = self.vmis.iter_mut().find(|v| v.key() == key) else {
                    return ActionResult::Gone;
                };
                v.deleting = true;
                self.leaving.entry(key).or_insert(Left::Restarted);
            }
        }
        ActionResult::Done
    }

    /// Time passes: migrations end, VMIs and deleted pods go.
    fn tick(&mut self, dice: &mut Dice) {
        for (key, how) in std::mem::take(&mut self.leaving) {
            if self.vmis.iter().any(|v| v.key() == key) {
                self.vmis.retain(|v| v.key() != key);
                self.left.insert(key, how);
            }
        }
        self.now += dice.between(30, 180);
        for i in 0..self.migrations.len() {
            if self.migrations[i].phase != MigrationPhase::Unfinished || dice.chance(40) {
                continue;
            }
            let m = &mut self.migrations[i];
            m.finished_at = Some(t(self.now));
            if dice.chance(25) {
                m.phase = MigrationPhase::Failed;
                continue;
            }
            m.phase = MigrationPhase::Succeeded;
            let (key, ours) = (m.vmi_key(), m.ours);
            if self.vmis.iter().any(|v| v.key() == key) {
                self.vmis.retain(|v| v.key() != key);
                let how = if ours {
                    Left::OurMigration
                } else {
                    Left::TheirMigration
                };
                self.left.insert(key, how);
            }
        }
        self.pods.retain(|p| !p.deleting || dice.chance(30));
    }
}

#[derive(Debug, Clone)]
struct Drain {
    admin_cordon: bool,
    vmis: Vec<VmiSpec>,
    /// Someone else's migration already runs for these VMIs.
    external: Vec<bool>,
    pods: Vec<PodSpec>,
    elsewhere: u32,
    kubevirt_per_node: u32,
    kubevirt_per_cluster: u32,
    limits: Limits,
    /// vacate restarts now and then and reads back only what it wrote.
    restarts: bool,
    seed: u64,
}

fn drain_scenario() -> impl Strategy<Value = Drain> {
    (
        any::<bool>(),
        prop::collection::vec((vmi_spec(), prop::bool::weighted(0.1)), 0..=20),
        prop::collection::vec(pod_spec(), 0..6),
        (0u32..4, 1u32..7, 1u32..13),
        limits(),
        prop::bool::weighted(0.3),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                admin_cordon,
                vmis,
                pods,
                (elsewhere, per_node, per_cluster),
                mut limits,
                restarts,
                seed,
                movable,
            )| {
                let (mut vmis, external): (Vec<VmiSpec>, Vec<bool>) = vmis.into_iter().unzip();
                if movable {
                    // Half the drains have nothing that holds them for good, so that most
                    // of those end Drained rather than at the timeout.
                    limits.unmanaged = PodPolicy::Evict;
                    limits.emptydir = PodPolicy::Evict;
                    if limits.policy == NonMigratablePolicy::Block {
                        limits.policy = NonMigratablePolicy::Evict;
                    }
                    for v in &mut vmis {
                        v.restartable = true;
                        if v.strategy == EvictionStrategy::Unrecognized {
                            v.strategy = EvictionStrategy::LiveMigrate;
                        }
                    }
                }
                Drain {
                    admin_cordon,
                    vmis,
                    external,
                    pods,
                    elsewhere,
                    kubevirt_per_node: per_node,
                    kubevirt_per_cluster: per_cluster,
                    limits,
                    restarts,
                    seed,
                }
            },
        )
}

const DRAIN_TIMEOUT_SECS: u64 = 1800;
/// Each step lets at least 30 s pass: past this many the drain must have timed out.
const MAX_STEPS: usize = 100;

/// Plays one drain to its end; the final state and the world it left.
fn play(d: &Drain) -> Result<(DrainState, World, bool), TestCaseError> {
    let mut config = config_of(&d.limits);
    config.drain.timeout = ConfigDuration::from_secs(DRAIN_TIMEOUT_SECS);
    let mut dice = Dice(d.seed);
    let mut world = World {
        now: 0,
        node: node(Some("true"), d.admin_cordon),
        vmis: d
            .vmis
            .iter()
            .enumerate()
            .map(|(i, v)| VmiView {
                deleting: false,
                finished: false,
                ..vmi_view(i, v)
            })
            .collect(),
        leaving: BTreeMap::new(),
        left: BTreeMap::new(),
        migrations: Vec::new(),
        pods: d
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| PodView {
                deleting: false,
                delete_by: None,
                ..pod_view(i, p, 0)
            })
            .collect(),
        elsewhere: d.elsewhere,
        kubevirt_per_node: d.kubevirt_per_node,
        kubevirt_per_cluster: d.kubevirt_per_cluster,
        evacuations: 0,
    };
    for (i, external) in d.external.iter().enumerate() {
        if *external {
            let v = world.vmis[i].clone();
            world.start_evacuation(&v);
        }
    }
    // The annotation as last written, which a restarted vacate reads.
    let mut stored: Option<DrainState> = None;
    let mut restarted = false;
    for _ in 0..MAX_STEPS {
        let s = world.snapshot();
        let p = plan(&s, &config);
        check_plan(&s, &config, &p)?;
        let mut state = match &p.state {
            NextState::Write(st) => {
                stored = Some((**st).clone());
                Some((**st).clone())
            }
            NextState::Keep(st) => Some((**st).clone()),
            NextState::Unchanged => s.node.state.valid().cloned(),
            NextState::Clear => None,
        };
        for action in &p.actions {
            let result = world.apply(action, &mut dice);
            if let Some(st) = state.as_mut() {
                record_outcome(st, action, &result, t(world.now), &config);
            }
        }
        if let Some(st) = &state
            && stored.as_ref().map(DrainState::durable_part) != Some(st.durable_part())
        {
            stored = Some(st.clone());
        }
        let mut per_vmi: BTreeMap<String, usize> = BTreeMap::new();
        for m in world
            .migrations
            .iter()
            .filter(|m| m.phase == MigrationPhase::Unfinished)
        {
            *per_vmi.entry(m.vmi_key()).or_default() += 1;
        }
        for (key, n) in per_vmi {
            prop_assert!(n <= 1, "{n} migrations of {key} in flight at once");
        }
        if matches!(p.phase, Phase::Drained | Phase::Failed) {
            let state = state.expect("a drained or failed node keeps its state");
            return Ok((state, world, restarted));
        }
        let kept = if d.restarts && dice.chance(5) {
            restarted = true;
            stored.clone()
        } else {
            state
        };
        world.node.state = kept.map_or(StateAnnotation::Absent, |st| {
            StateAnnotation::Valid(Box::new(st))
        });
        world.tick(&mut dice);
    }
    Err(TestCaseError::fail(format!(
        "the drain neither finished nor failed in {MAX_STEPS} steps ({} s)",
        world.now
    )))
}

proptest! {
    #![proptest_config(proptest_config(128))]

    /// Whole drains end Drained, with every VMI in one final outcome that says how it
    /// left, or Failed with a reason, and nothing of vacate's still running.
    #[test]
    fn whole_drains_end_with_one_outcome_per_vmi(d in drain_scenario()) {
        let (state, world, restarted) = play(&d)?; eprintln!("END {} {} {}", state.phase, d.vmis.len(), restarted); eprintln!("END {} {} {}", state.phase, d.vmis.len(), restarted);
        if d.admin_cordon {
            prop_assert!(world.node.unschedulable, "the admin's cordon was lifted");
        }
        let keys: BTreeSet<String> = (0..d.vmis.len()).map(|i| format!("vms/{}", vmi_name(i))).collect();
        for key in state.vmis.keys() {
            prop_assert!(keys.contains(key), "a record of {key}, which never ran on the node");
        }
        match state.phase {
            Phase::Drained => {
                prop_assert!(world.vmis.is_empty(), "drained with {:?} on the node", world.vmis);
                for key in &keys {
                    let outcome = state.vmis.get(key).map(|r| r.outcome);
                    let how = world.left.get(key).copied();
                    prop_assert!(
                        outcome.is_some_and(VmiOutcome::is_done),
                        "{key} ended as {outcome:?} (left by {how:?})"
                    );
                    let outcome = outcome.expect("checked");
                    let expected: &[VmiOutcome] = match how {
                        Some(Left::OurMigration) => &[VmiOutcome::Migrated],
                        // An eviction KubeVirt turned into its own migration counts as
                        // either, depending on whether vacate saw that migration run.
                        Some(Left::TheirMigration) => &[VmiOutcome::Migrated, VmiOutcome::Evicted],
                        Some(Left::Evicted) => &[VmiOutcome::Evicted],
                        Some(Left::Restarted) => &[VmiOutcome::Restarted],
                        None => &[],
                    };
                    // A restarted vacate may no longer know what it had asked for; the VMI
                    // is then one that left.
                    prop_assert!(
                        expected.contains(&outcome) || (restarted && outcome == VmiOutcome::Left),
                        "{key} left by {how:?} but ended as {outcome:?}"
                    );
                }
                for p in &world.pods {
                    let verdict = classify(p, &config_of(&d.limits).pods);
                    prop_assert!(
                        matches!(verdict, PodVerdict::Skip(_)),
                        "drained with pod {} still there ({verdict:?})", p.key()
                    );
                }
            }
            Phase::Failed => {
                prop_assert!(
                    state.failure.as_deref().is_some_and(|f| !f.is_empty()),
                    "failed without a reason"
                );
                let ours: Vec<&str> = world
                    .migrations
                    .iter()
                    .filter(|m| m.ours && m.phase == MigrationPhase::Unfinished)
                    .map(|m| m.name.as_str())
                    .collect();
                prop_assert!(ours.is_empty(), "the failed drain left migrations running: {ours:?}");
            }
            other => prop_assert!(false, "ended in phase {other}"),
        }
    }
}
