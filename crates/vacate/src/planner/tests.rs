//! Unit tests of the drain rules: one scenario a test, built from plain values.

use std::num::NonZeroU32;

use chrono::TimeZone;

use super::*;
use crate::config::{Config, PodPolicy};
use crate::planner::capacity::{Resources, Target};

pub(super) fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

pub(super) fn node(request: Option<&str>, unschedulable: bool) -> NodeView {
    NodeView {
        name: "worker-1".into(),
        unschedulable,
        ready: true,
        request_value: request.map(String::from),
        upgrade_to: None,
        kubelet_version: "v1.37.2".into(),
        labels: Default::default(),
        drained_label: false,
        state: StateAnnotation::Absent,
    }
}

pub(super) fn vmi(name: &str) -> VmiView {
    VmiView {
        namespace: "vms".into(),
        name: name.into(),
        finished: false,
        running: true,
        migratability: Migratability::Migratable,
        eviction_strategy: EvictionStrategy::LiveMigrate,
        launcher_pod: Some(format!("virt-launcher-{name}-abcde")),
        restartable: true,
        deleting: false,
        memory: 4 << 30,
        requests: Resources {
            cpu_millis: 1000,
            memory_bytes: 4 << 30,
        },
        node_selector: Default::default(),
        placement_rules: false,
        evacuating: false,
    }
}

fn not_migratable(name: &str) -> VmiView {
    VmiView {
        migratability: Migratability::NotMigratable {
            reason: "DisksNotLiveMigratable".into(),
            message: "PVC disk is ReadWriteOnce".into(),
        },
        ..vmi(name)
    }
}

fn pod(name: &str, controller: Option<&str>) -> PodView {
    PodView {
        namespace: "apps".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        controller_kind: controller.map(String::from),
        mirror: false,
        finished: false,
        has_emptydir: false,
        virt_launcher: false,
        deleting: false,
        delete_by: None,
        labels: Default::default(),
    }
}

fn migration(state: &DrainState, vmi: &str, attempt: u32, phase: MigrationPhase) -> MigrationView {
    MigrationView {
        namespace: "vms".into(),
        name: migration_name("worker-1", state, vmi, attempt),
        vmi_name: vmi.into(),
        phase,
        ours: true,
        created_at: Some(t(0)),
        finished_at: (phase != MigrationPhase::Unfinished).then(|| t(30)),
        deleting: false,
    }
}

pub(super) fn snapshot(node: NodeView) -> Snapshot {
    Snapshot {
        now: t(0),
        node,
        vmis: vec![],
        migrations: vec![],
        pods: vec![],
        cluster: ClusterView::default(),
        start_gate: StartGate::Open,
    }
}

/// The state after the plan, whether written at once or kept until the next write.
pub(super) fn written(plan: &Plan) -> DrainState {
    match &plan.state {
        NextState::Write(s) | NextState::Keep(s) => (**s).clone(),
        other => panic!("expected a new state, got {other:?}"),
    }
}

pub(super) fn with_state(mut s: Snapshot, state: &DrainState) -> Snapshot {
    s.node.state = StateAnnotation::Valid(Box::new(state.clone()));
    s
}

fn migrations_created(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateMigration { vmi, .. } => Some(vmi.clone()),
            _ => None,
        })
        .collect()
}

fn evicted(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::EvictPod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn has_event(plan: &Plan, reason: &str) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::Event { reason: r, .. } if *r == reason))
}

/// Runs the planner on a state and applies successful outcomes, as the shell would.
fn step(s: &Snapshot, state: &DrainState, config: &Config) -> (Plan, DrainState) {
    let plan = plan(&with_state(s.clone(), state), config);
    let mut next = match &plan.state {
        NextState::Write(st) | NextState::Keep(st) => (**st).clone(),
        NextState::Unchanged => state.clone(),
        NextState::Clear => panic!("state cleared unexpectedly"),
    };
    // As the shell does when every action succeeds.
    for action in &plan.actions {
        record_outcome(&mut next, action, &ActionResult::Done, s.now, config);
    }
    (plan, next)
}

#[test]
fn idle_node_without_request_needs_nothing() {
    let plan = plan(&snapshot(node(None, false)), &Config::default());
    assert!(plan.actions.is_empty());
    assert_eq!(plan.state, NextState::Unchanged);
    assert_eq!(plan.phase, Phase::Idle);
}

#[test]
fn request_cordons_and_remembers_vacate_did_it() {
    let plan = plan(&snapshot(node(Some("true"), false)), &Config::default());
    assert_eq!(plan.actions[0], Action::Cordon);
    assert!(has_event(&plan, "Cordoned"));
    let state = written(&plan);
    assert!(state.cordoned_by_vacate);
    assert_eq!(state.request_value, "true");
    // An empty node is drained at once.
    assert_eq!(state.phase, Phase::Drained);
    assert!(plan.actions.contains(&Action::SetDrainedLabel(true)));
}

#[test]
fn admin_cordoned_node_is_not_claimed() {
    let plan = plan(&snapshot(node(Some("true"), true)), &Config::default());
    assert!(!plan.actions.contains(&Action::Cordon));
    assert!(!written(&plan).cordoned_by_vacate);
}

#[test]
fn admin_cordoned_node_stays_cordoned_after_maintenance() {
    let mut state = DrainState::new(t(0), false, 1);
    state.phase = Phase::Drained;
    let mut n = node(None, true);
    n.drained_label = true;
    let plan = plan(&with_state(snapshot(n), &state), &Config::default());
    assert!(!plan.actions.contains(&Action::Uncordon));
    assert!(plan.actions.contains(&Action::SetDrainedLabel(false)));
    assert_eq!(plan.state, NextState::Clear);
}

#[test]
fn maintenance_end_uncordons_what_vacate_cordoned() {
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Drained;
    let mut n = node(None, true);
    n.drained_label = true;
    let plan = plan(&with_state(snapshot(n), &state), &Config::default());
    assert!(plan.actions.contains(&Action::Uncordon));
    let ended = plan.actions.iter().find_map(|a| match a {
        Action::Event {
            reason: "MaintenanceEnded",
            message,
            ..
        } => Some(message.clone()),
        _ => None,
    });
    assert!(ended.expect("the end is an event").contains("uncordoned"));
    assert_eq!(plan.state, NextState::Clear);
    assert_eq!(plan.phase, Phase::Idle);
}

#[test]
fn uncordon_waits_for_ready_node() {
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Drained;
    let mut n = node(None, true);
    n.ready = false;
    let plan = plan(&with_state(snapshot(n), &state), &Config::default());
    assert!(!plan.actions.contains(&Action::Uncordon));
    assert_eq!(plan.phase, Phase::Uncordoning);
    assert_eq!(plan.blocked, Some(BlockReason::NodeNotReady));
}

#[test]
fn migrations_respect_batch_and_node_limits() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..8).map(|i| vmi(&format!("vm-{i}"))).collect();
    let config = Config::default(); // batch 2, 2 per node
    let plan = plan(&s, &config);
    assert_eq!(migrations_created(&plan), vec!["vm-0", "vm-1"]);
    let state = written(&plan);
    assert_eq!(state.phase, Phase::Migrating);
    assert_eq!(state.last_batch_at, Some(t(0)));

    // Both in flight: no new migration even after the batch interval.
    let mut s2 = s.clone();
    s2.now = t(60);
    s2.migrations = vec![
        migration(&state, "vm-0", 1, MigrationPhase::Unfinished),
        migration(&state, "vm-1", 1, MigrationPhase::Unfinished),
    ];
    let (plan2, _) = step(&s2, &state, &config);
    assert!(migrations_created(&plan2).is_empty());
    assert!(
        written(&plan2)
            .waiting_for
            .unwrap()
            .contains("slot on the node")
    );
}

#[test]
fn kubevirt_limits_cap_configured_limits() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..8).map(|i| vmi(&format!("vm-{i}"))).collect();
    s.cluster.kubevirt_per_node = 1;
    let mut config = Config::default();
    config.migration.batch_size = NonZeroU32::new(5).unwrap();
    config.migration.max_in_flight_per_node = NonZeroU32::new(4).unwrap();
    assert_eq!(migrations_created(&plan(&s, &config)).len(), 1);
}

#[test]
fn cluster_limit_is_respected() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..8).map(|i| vmi(&format!("vm-{i}"))).collect();
    s.cluster.migrations_in_flight = 4;
    let mut config = Config::default();
    config.migration.batch_size = NonZeroU32::new(5).unwrap();
    config.migration.max_in_flight_per_node = NonZeroU32::new(5).unwrap();
    s.cluster.kubevirt_per_node = 5;
    assert_eq!(migrations_created(&plan(&s, &config)).len(), 1);
    s.cluster.migrations_in_flight = 5;
    let p = plan(&s, &config);
    assert!(migrations_created(&p).is_empty());
    assert!(written(&p).waiting_for.unwrap().contains("in the cluster"));
}

#[test]
fn batch_interval_spaces_batches() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..4).map(|i| vmi(&format!("vm-{i}"))).collect();
    let mut config = Config::default();
    config.migration.max_in_flight_per_node = NonZeroU32::new(10).unwrap();
    config.migration.batch_interval = crate::config::ConfigDuration::from_secs(5);
    s.cluster.kubevirt_per_node = 10;
    let state = written(&plan(&s, &config));
    let mut s2 = s.clone();
    s2.now = t(2);
    s2.migrations = vec![
        migration(&state, "vm-0", 1, MigrationPhase::Unfinished),
        migration(&state, "vm-1", 1, MigrationPhase::Unfinished),
    ];
    let (p, _) = step(&s2, &state, &config);
    assert!(migrations_created(&p).is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(3)));
    s2.now = t(5);
    let (p, _) = step(&s2, &state, &config);
    assert_eq!(migrations_created(&p), vec!["vm-2", "vm-3"]);
}

/// An unfinished migration of KubeVirt's evacuation.
fn evacuation_migration(vmi: &str) -> MigrationView {
    MigrationView {
        namespace: "vms".into(),
        name: "kubevirt-evacuation-xyz".into(),
        vmi_name: vmi.into(),
        phase: MigrationPhase::Unfinished,
        ours: false,
        created_at: None,
        finished_at: None,
        deleting: false,
    }
}

#[test]
fn someone_elses_migration_is_awaited_not_duplicated() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    s.migrations = vec![evacuation_migration("vm-0")];
    let config = Config::default();
    let p = plan(&s, &config);
    assert!(migrations_created(&p).is_empty());
    let state = written(&p);
    assert_eq!(
        state.vmis["vms/vm-0"].outcome,
        VmiOutcome::MigratingExternally
    );
    // When it fails, vacate takes the VMI up again with a migration of its own.
    s.migrations[0].phase = MigrationPhase::Failed;
    let (p, state) = step(&s, &state, &config);
    assert_eq!(migrations_created(&p), vec!["vm-0"]);
    assert_eq!(state.vmis["vms/vm-0"].outcome, VmiOutcome::Migrating);
    assert!(
        p.observations.is_empty(),
        "someone else's failure is not vacate's metric"
    );
}

#[test]
fn a_vmi_kubevirts_evacuation_holds_is_left_to_it() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    s.migrations = vec![evacuation_migration("vm-0")];
    s.vmis[0].evacuating = true;
    let config = Config::default();
    let state = written(&plan(&s, &config));
    assert_eq!(
        state.vmis["vms/vm-0"].outcome,
        VmiOutcome::MigratingExternally
    );
    // KubeVirt's evacuation migration fails; the VMI is still marked, so KubeVirt creates
    // the next one: vacate neither migrates nor evicts it, and waits for it to leave.
    s.migrations[0].phase = MigrationPhase::Failed;
    let (p, state) = step(&s, &state, &config);
    assert!(migrations_created(&p).is_empty(), "{:?}", p.actions);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::EvictPod { .. })),
        "{:?}",
        p.actions
    );
    let record = &state.vmis["vms/vm-0"];
    assert_eq!(record.outcome, VmiOutcome::Evicting);
    assert!(
        state
            .waiting_for
            .as_deref()
            .unwrap_or("")
            .contains("vms/vm-0"),
        "{state:?}"
    );
    // Once it has left, vacate counts it as moved by the eviction.
    s.vmis.clear();
    s.migrations.clear();
    let (_, state) = step(&s, &state, &config);
    assert_eq!(state.vmis["vms/vm-0"].outcome, VmiOutcome::Evicted);
}

#[test]
fn successful_migration_completes_the_vmi() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    let mut s2 = s.clone();
    s2.now = t(30);
    s2.vmis.clear(); // the VMI now runs elsewhere
    s2.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Succeeded)];
    let (p, next) = step(&s2, &state, &config);
    assert_eq!(next.vmis["vms/vm-0"].outcome, VmiOutcome::Migrated);
    assert_eq!(next.phase, Phase::Drained);
    assert!(p.observations.contains(&Observation::MigrationFinished {
        result: MigrationResult::Succeeded,
        duration: Some(Duration::from_secs(30)),
    }));
    assert!(has_event(&p, "Drained"));
}

/// A plan writes the state when it acts or when what others read changes; a migration
/// that finished while others still run only changes what the next look finds again, so
/// the state is kept for the next write. The migrations' beginning is one event.
#[test]
fn only_intents_and_visible_changes_are_written() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..3).map(|i| vmi(&format!("vm-{i}"))).collect();
    let mut config = Config::default();
    config.migration.batch_size = NonZeroU32::new(1).unwrap();
    config.migration.max_in_flight_per_node = NonZeroU32::new(1).unwrap();
    let first = plan(&s, &config);
    assert!(matches!(first.state, NextState::Write(_)), "the start");
    let state = written(&first);
    s.node.unschedulable = true;

    // vm-0's migration runs: nothing changes.
    let mut running = s.clone();
    running.now = t(5);
    running.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Unfinished)];
    let (p, state) = step(&running, &state, &config);
    assert!(p.actions.is_empty(), "{:?}", p.actions);

    // vm-0 done, vm-1 starts: the intent is written.
    let mut next = s.clone();
    next.now = t(10);
    next.vmis.remove(0);
    next.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Succeeded)];
    let (p, state) = step(&next, &state, &config);
    assert_eq!(migrations_created(&p), vec!["vm-1"]);
    assert!(matches!(p.state, NextState::Write(_)));
    let events: Vec<_> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Event { .. }))
        .collect();
    assert!(
        events.is_empty(),
        "the first batch had the event: {events:?}"
    );
    assert!(has_event(&first, "MigrationStarted"));

    // A migration failing with attempts left waits for its retry: kept, not written.
    let mut failed = next.clone();
    failed.now = t(20);
    failed.vmis = vec![vmi("vm-1")]; // vm-2 was moved by someone else meanwhile
    failed
        .migrations
        .push(migration(&state, "vm-1", 1, MigrationPhase::Failed));
    let p = plan(&with_state(failed, &state), &config);
    assert!(
        matches!(p.state, NextState::Keep(_)),
        "a retry time is found again from the failed migration: {:?}",
        p.state
    );
    assert_eq!(
        written(&p).vmis["vms/vm-1"].outcome,
        VmiOutcome::RetryWaiting
    );

    // The last VMI gone: the phase changes, so the state is written.
    let mut done = s.clone();
    done.now = t(30);
    done.vmis.clear();
    let mut last = state.clone();
    last.vmis.get_mut("vms/vm-1").unwrap().outcome = VmiOutcome::Migrated;
    last.vmis.get_mut("vms/vm-2").unwrap().outcome = VmiOutcome::Migrated;
    let p = plan(&with_state(done, &last), &config);
    assert!(matches!(p.state, NextState::Write(_)));
    assert_eq!(written(&p).phase, Phase::Drained);
}

/// A VMI migrating onto the node (its target pod scheduled before the cordon) keeps the
/// node from being reported drained until the pod has finished or the VMI has landed and
/// been moved on; the launcher pods of the node's own VMIs move with them.
#[test]
fn a_migration_onto_the_node_holds_the_drain() {
    let mut s = snapshot(node(Some("true"), true));
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Migrating;
    let mut incoming = pod(
        "virt-launcher-elsewhere-xyz",
        Some("VirtualMachineInstance"),
    );
    incoming.namespace = "vms".into();
    incoming.virt_launcher = true;
    s.pods = vec![incoming.clone()];
    let p = plan(&with_state(s.clone(), &state), &Config::default());
    assert_ne!(p.phase, Phase::Drained);
    assert!(
        p.actions
            .iter()
            .all(|a| !matches!(a, Action::EvictPod { .. }))
    );
    assert!(
        written(&p)
            .waiting_for
            .unwrap()
            .contains("virt-launcher-elsewhere-xyz")
    );

    // The target pod failed (the migration did not happen): the node is empty.
    let mut ended = s.clone();
    ended.pods[0].finished = true;
    assert_eq!(
        plan(&with_state(ended, &state), &Config::default()).phase,
        Phase::Drained
    );

    // The VMI landed: it is the node's own now, and is migrated on.
    let mut landed = s.clone();
    let mut vmi = vmi("elsewhere");
    vmi.launcher_pod = Some("virt-launcher-elsewhere-xyz".into());
    landed.vmis = vec![vmi];
    let p = plan(&with_state(landed, &state), &Config::default());
    assert_eq!(migrations_created(&p), vec!["elsewhere"]);
}

/// The predicted end: the VMIs left, largest first over the node's slots at the cluster's
/// bandwidth, counting what the migrations under way have done.
#[test]
fn a_drain_predicts_when_its_migrations_end() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..4).map(|i| vmi(&format!("vm-{i}"))).collect(); // 4 GiB each
    let config = Config::default(); // 2 per node
    let p = plan(&s, &config);
    assert_eq!(written(&p).eta, None, "no bandwidth known yet");

    s.cluster.bandwidth = Some((1u64 << 30) as f64); // 1 GiB/s: 4 s per VMI
    let state = written(&plan(&s, &config));
    assert_eq!(state.eta, Some(t(8)));

    // Two seconds in, vm-0 and vm-1 half done: 2 s left each, then 4 s for each of the others.
    let mut later = s.clone();
    later.node.unschedulable = true;
    later.now = t(2);
    later.migrations = vec![
        migration(&state, "vm-0", 1, MigrationPhase::Unfinished),
        migration(&state, "vm-1", 1, MigrationPhase::Unfinished),
    ];
    for m in &mut later.migrations {
        m.created_at = Some(t(0));
    }
    let (_, next) = step(&later, &state, &config);
    assert_eq!(next.eta, Some(t(8)));
}

#[test]
fn failed_migration_is_retried_with_backoff_then_falls_back() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let mut config = Config::default();
    config.migration.max_attempts = NonZeroU32::new(2).unwrap();
    let state = written(&plan(&s, &config));
    assert_eq!(state.vmis["vms/vm-0"].attempts, 1);

    let mut s2 = s.clone();
    s2.now = t(20);
    s2.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Failed)];
    let (p, state) = step(&s2, &state, &config);
    assert!(has_event(&p, "MigrationFailed"));
    let record = &state.vmis["vms/vm-0"];
    assert_eq!(record.outcome, VmiOutcome::RetryWaiting);
    let retry_at = record.retry_at.unwrap();
    assert!(retry_at >= t(30) && retry_at <= t(35), "{retry_at}");
    assert!(migrations_created(&p).is_empty());

    // Still waiting before retry_at.
    let (p, state) = step(&s2, &state, &config);
    assert!(migrations_created(&p).is_empty());

    // After the backoff, attempt 2 gets a new name.
    s2.now = t(40);
    let (p, state) = step(&s2, &state, &config);
    assert_eq!(migrations_created(&p), vec!["vm-0"]);
    assert_eq!(state.vmis["vms/vm-0"].attempts, 2);
    let name2 = migration_name("worker-1", &state, "vm-0", 2);
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateMigration { name, .. } if *name == name2))
    );

    // Attempt 2 fails too: attempts exhausted, the launcher pod is evicted (policy evict).
    s2.now = t(60);
    s2.migrations
        .push(migration(&state, "vm-0", 2, MigrationPhase::Failed));
    let (p, state) = step(&s2, &state, &config);
    assert_eq!(evicted(&p), vec!["virt-launcher-vm-0-abcde"]);
    assert_eq!(state.vmis["vms/vm-0"].outcome, VmiOutcome::Evicting);
}

#[test]
fn interrupted_create_is_repeated_under_the_same_name() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let plan1 = plan(&s, &config);
    let state = written(&plan1);
    // vacate died after writing the state, before the create: the migration is missing.
    let mut s2 = s.clone();
    s2.now = t(1);
    let (p, next) = step(&s2, &state, &config);
    let first = migration_name("worker-1", &state, "vm-0", 1);
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateMigration { name, .. } if *name == first))
    );
    assert_eq!(next.vmis["vms/vm-0"].attempts, 1);
}

#[test]
fn restart_after_crash_does_not_duplicate_running_migration() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0"), vmi("vm-1")];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    let mut s2 = s.clone();
    s2.now = t(100);
    s2.migrations = vec![
        migration(&state, "vm-0", 1, MigrationPhase::Unfinished),
        migration(&state, "vm-1", 1, MigrationPhase::Unfinished),
    ];
    let (p, _) = step(&s2, &state, &config);
    assert!(migrations_created(&p).is_empty());
}

#[test]
fn repeated_create_takes_a_node_slot() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..6).map(|i| vmi(&format!("vm-{i}"))).collect();
    let config = Config::default(); // batch 2, 2 per node
    let state = written(&plan(&s, &config));
    assert_eq!(state.vmis["vms/vm-1"].outcome, VmiOutcome::Migrating);
    // vacate died between the two creates of its batch: vm-0's migration runs, vm-1's is
    // missing. The repeat of vm-1's create fills the node's second slot; nothing else starts.
    let mut s2 = s.clone();
    s2.now = t(60);
    s2.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Unfinished)];
    let (p, next) = step(&s2, &state, &config);
    assert_eq!(migrations_created(&p), vec!["vm-1"]);
    assert_eq!(next.vmis["vms/vm-2"].attempts, 0);
    assert!(next.waiting_for.unwrap().contains("slot on the node"));
}

#[test]
fn a_migration_finishing_after_its_vmi_left_still_takes_a_slot() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..4).map(|i| vmi(&format!("vm-{i}"))).collect();
    let config = Config::default(); // batch 2, 2 per node
    let state = written(&plan(&s, &config));
    // vm-0 already shows the target node, but its migration is not Succeeded yet; vm-1's
    // runs. Both count: no third migration starts.
    let mut s2 = s.clone();
    s2.now = t(60);
    s2.vmis.retain(|v| v.name != "vm-0");
    s2.migrations = vec![
        migration(&state, "vm-0", 1, MigrationPhase::Unfinished),
        migration(&state, "vm-1", 1, MigrationPhase::Unfinished),
    ];
    let (p, next) = step(&s2, &state, &config);
    assert!(
        migrations_created(&p).is_empty(),
        "{:?}",
        migrations_created(&p)
    );
    assert!(next.waiting_for.unwrap().contains("slot on the node"));
}

#[test]
fn non_migratable_policy_block_waits_and_says_why() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![not_migratable("db")];
    let mut config = Config::default();
    config.non_migratable.policy = NonMigratablePolicy::Block;
    let p = plan(&s, &config);
    assert!(evicted(&p).is_empty());
    assert_eq!(p.blocked, Some(BlockReason::NonMigratableVmi));
    let state = written(&p);
    assert!(
        state
            .blocked
            .unwrap()
            .message
            .contains("DisksNotLiveMigratable")
    );
    assert_eq!(state.phase, Phase::Migrating);
}

#[test]
fn non_migratable_policy_evict_evicts_launcher_pod() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![not_migratable("db")];
    let p = plan(&s, &Config::default());
    assert_eq!(evicted(&p), vec!["virt-launcher-db-abcde"]);
    assert!(migrations_created(&p).is_empty());
}

#[test]
fn eviction_strategy_none_is_not_migrated() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![VmiView {
        eviction_strategy: EvictionStrategy::None,
        ..vmi("scratch")
    }];
    let p = plan(&s, &Config::default());
    assert!(migrations_created(&p).is_empty());
    assert_eq!(evicted(&p), vec!["virt-launcher-scratch-abcde"]);
}

#[test]
fn refused_eviction_escalates_to_restart() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![not_migratable("db")];
    let config = Config::default();
    let p = plan(&s, &config);
    let mut state = written(&p);
    let evict = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::EvictPod { .. }))
        .unwrap();
    record_outcome(
        &mut state,
        evict,
        &ActionResult::Refused(
            "VMI db is configured with an eviction strategy but is not live-migratable".into(),
        ),
        t(0),
        &config,
    );
    s.now = t(1);
    let (p, state) = step(&s, &state, &config);
    assert!(p.actions.contains(&Action::RestartVmi {
        namespace: "vms".into(),
        name: "db".into()
    }));
    assert_eq!(state.vmis["vms/db"].outcome, VmiOutcome::Restarting);
    // Once the VMI has gone, it counts as restarted.
    s.vmis.clear();
    let (_, state) = step(&s, &state, &config);
    assert_eq!(state.vmis["vms/db"].outcome, VmiOutcome::Restarted);
    assert_eq!(state.phase, Phase::Drained);
}

#[test]
fn refused_eviction_can_fail_the_drain() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![not_migratable("db")];
    let mut config = Config::default();
    config.non_migratable.on_eviction_refused = EvictionRefusedPolicy::Fail;
    let p = plan(&s, &config);
    let mut state = written(&p);
    let evict = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::EvictPod { .. }))
        .unwrap();
    record_outcome(
        &mut state,
        evict,
        &ActionResult::Refused("no".into()),
        t(0),
        &config,
    );
    let (p, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Failed);
    assert!(
        state
            .failure
            .unwrap()
            .contains("refused to evict VMI vms/db")
    );
    assert!(has_event(&p, "DrainFailed"));
}

#[test]
fn restart_policy_needs_a_virtual_machine() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![VmiView {
        restartable: false,
        ..not_migratable("standalone")
    }];
    let mut config = Config::default();
    config.non_migratable.policy = NonMigratablePolicy::Restart;
    let p = plan(&s, &config);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::RestartVmi { .. }))
    );
    assert_eq!(p.blocked, Some(BlockReason::EvictionRefused));
}

#[test]
fn unknown_migratability_waits() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![VmiView {
        migratability: Migratability::Unknown,
        ..vmi("new")
    }];
    let p = plan(&s, &Config::default());
    assert!(
        p.actions
            .iter()
            .all(|a| !matches!(a, Action::CreateMigration { .. } | Action::EvictPod { .. }))
    );
    assert!(
        written(&p)
            .waiting_for
            .unwrap()
            .contains("can live-migrate")
    );
}

#[test]
fn pods_follow_kubectl_drain_rules() {
    let mut s = snapshot(node(Some("true"), false));
    s.pods = vec![
        pod("web-1", Some("ReplicaSet")),
        pod("logs-x", Some("DaemonSet")),
        PodView {
            mirror: true,
            ..pod("static", None)
        },
        PodView {
            finished: true,
            ..pod("job-done", Some("Job"))
        },
        PodView {
            virt_launcher: true,
            ..pod("virt-launcher-a", Some("VirtualMachineInstance"))
        },
    ];
    let p = plan(&s, &Config::default());
    assert_eq!(evicted(&p), vec!["web-1"]);
    assert_eq!(written(&p).phase, Phase::Evicting);
}

#[test]
fn unmanaged_and_emptydir_pods_block_by_default() {
    let mut s = snapshot(node(Some("true"), false));
    s.pods = vec![pod("bare", None)];
    let p = plan(&s, &Config::default());
    assert!(evicted(&p).is_empty());
    assert_eq!(p.blocked, Some(BlockReason::UnmanagedPod));

    s.pods = vec![PodView {
        has_emptydir: true,
        ..pod("cache", Some("ReplicaSet"))
    }];
    let p = plan(&s, &Config::default());
    assert_eq!(p.blocked, Some(BlockReason::EmptyDirPod));

    let mut config = Config::default();
    config.pods.emptydir = PodPolicy::Evict;
    config.pods.unmanaged = PodPolicy::Evict;
    s.pods.push(pod("bare", None));
    assert_eq!(evicted(&plan(&s, &config)), vec!["bare", "cache"]);
}

#[test]
fn pdb_refusal_backs_off_and_reports_blocker() {
    let mut s = snapshot(node(Some("true"), false));
    s.pods = vec![pod("web-1", Some("ReplicaSet"))];
    let config = Config::default();
    let p = plan(&s, &config);
    let mut state = written(&p);
    let evict = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::EvictPod { .. }))
        .unwrap()
        .clone();
    record_outcome(
        &mut state,
        &evict,
        &ActionResult::Refused(
            "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        ),
        t(0),
        &config,
    );
    let record = &state.pods["apps/web-1"];
    assert_eq!(record.outcome, PodOutcome::RetryWaiting);
    assert!(record.retry_at.unwrap() >= t(5));

    // Before the retry time: no hot loop, blocker shown.
    s.now = t(1);
    s.node.unschedulable = true;
    let (p, state) = step(&s, &state, &config);
    assert!(evicted(&p).is_empty());
    assert_eq!(p.blocked, Some(BlockReason::PodDisruptionBudget));
    // The same blocker in new words (one more refusal counted) is not worth a write.
    let mut reworded = state.clone();
    reworded.blocked.as_mut().unwrap().message = "refused 0 times".into();
    let again = plan(&with_state(s.clone(), &reworded), &config);
    assert!(
        matches!(again.state, NextState::Keep(_)),
        "{:?}",
        again.state
    );
    assert!(
        state
            .blocked
            .as_ref()
            .unwrap()
            .message
            .contains("disruption budget")
    );
    assert!(p.requeue_after.unwrap() >= Duration::from_secs(4));

    // Second refusal doubles the wait.
    let mut st = written(&plan(
        &with_state(s.clone(), &{
            let mut x = DrainState::new(t(0), true, 1);
            x.pods.insert(
                "apps/web-1".into(),
                PodRecord {
                    uid: "uid-web-1".into(),
                    ..Default::default()
                },
            );
            x
        }),
        &config,
    ));
    record_outcome(
        &mut st,
        &evict,
        &ActionResult::Refused("budget".into()),
        t(10),
        &config,
    );
    record_outcome(
        &mut st,
        &evict,
        &ActionResult::Refused("budget".into()),
        t(10),
        &config,
    );
    assert!(st.pods["apps/web-1"].retry_at.unwrap() >= t(20));

    // After the retry time the eviction is tried again, and once the pod is gone the node is drained.
    s.now = t(60);
    let (p, state) = step(
        &s,
        &{
            let mut x = state.clone();
            x.pods.get_mut("apps/web-1").unwrap().retry_at = Some(t(30));
            x
        },
        &config,
    );
    assert_eq!(evicted(&p), vec!["web-1"]);
    s.pods.clear();
    let (_, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Drained);
    assert!(!state.pods.contains_key("apps/web-1"));
    assert_eq!((state.pods_done(), state.pods_total()), (1, 1));
}

#[test]
fn pod_recreated_under_same_name_is_a_new_pod() {
    let mut s = snapshot(node(Some("true"), false));
    s.pods = vec![pod("db-0", Some("StatefulSet"))];
    let config = Config::default();
    let (_, state) = step(&s, &written(&plan(&s, &config)), &config);
    // The old pod left; a pod of the same name elsewhere is not on this node's list.
    s.pods.clear();
    let (_, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Drained);
}

#[test]
fn deleting_pod_is_awaited_not_evicted_again() {
    let mut s = snapshot(node(Some("true"), false));
    s.pods = vec![PodView {
        deleting: true,
        ..pod("web-1", Some("ReplicaSet"))
    }];
    let p = plan(&s, &Config::default());
    assert!(evicted(&p).is_empty());
    assert_eq!(written(&p).phase, Phase::Evicting);
}

#[test]
fn abort_cancels_own_unfinished_migrations_and_uncordons() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0"), vmi("vm-1"), vmi("vm-2")];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    let mut s2 = snapshot(node(None, true));
    s2.vmis = s.vmis.clone();
    s2.migrations = vec![
        migration(&state, "vm-0", 1, MigrationPhase::Unfinished),
        migration(&state, "vm-1", 1, MigrationPhase::Succeeded),
        MigrationView {
            ours: false,
            name: "someone-elses".into(),
            ..migration(&state, "vm-2", 1, MigrationPhase::Unfinished)
        },
    ];
    let p = plan(&with_state(s2, &state), &config);
    let cancelled: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CancelMigration { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        cancelled,
        vec![migration_name("worker-1", &state, "vm-0", 1)]
    );
    assert!(p.actions.contains(&Action::Uncordon));
    assert!(has_event(&p, "DrainAborted"));
    assert!(p.observations.iter().any(|o| matches!(
        o,
        Observation::DrainFinished {
            result: DrainResult::Aborted,
            ..
        }
    )));
    // The node is given back at once; the state stays until the cancel shows its result.
    let NextState::Write(kept) = &p.state else {
        panic!(
            "the state should be kept while a cancel is pending: {:?}",
            p.state
        )
    };
    assert_eq!(kept.phase, Phase::Idle);
    assert!(!kept.cordoned_by_vacate);
    assert_eq!(kept.vmis["vms/vm-0"].outcome, VmiOutcome::Cancelling);
    assert!(!cancelled_observed(&p));
}

fn cancelled_observed(p: &Plan) -> bool {
    p.observations.iter().any(|o| {
        matches!(
            o,
            Observation::MigrationFinished {
                result: MigrationResult::Cancelled,
                ..
            }
        )
    })
}

/// After an abort: the request removed mid-drain, vm-0's migration cancelled.
fn aborted_with_a_cancel() -> (Snapshot, DrainState, Config) {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    let mut s = snapshot(node(None, true));
    s.vmis = vec![vmi("vm-0")];
    s.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Unfinished)];
    let (p, state) = step(&s, &state, &config);
    assert!(p.actions.contains(&Action::Uncordon));
    assert!(state.cancels_pending());
    s.node.unschedulable = false;
    (s, state, config)
}

#[test]
fn a_cancel_past_the_hand_off_is_followed_until_kubevirt_aborts_it() {
    let (mut s, state, config) = aborted_with_a_cancel();
    // KubeVirt holds the migration (finalizer) while the abort is under way: nothing is
    // asked twice, nothing cordoned again, the state says what it waits for.
    s.migrations[0].deleting = true;
    let (p, state) = step(&s, &state, &config);
    assert!(
        p.actions
            .iter()
            .all(|a| !matches!(a, Action::CancelMigration { .. } | Action::Cordon)),
        "{:?}",
        p.actions
    );
    assert!(
        state
            .waiting_for
            .as_deref()
            .unwrap_or("")
            .contains("cancel of 1 migration")
    );
    // The abort took: the migration failed, the VMI stayed; counted as cancelled once.
    s.migrations[0].phase = MigrationPhase::Failed;
    let p = plan(&with_state(s, &state), &config);
    assert_eq!(p.state, NextState::Clear);
    assert!(cancelled_observed(&p));
    assert!(!p.actions.contains(&Action::Uncordon));
}

#[test]
fn a_cancel_that_comes_too_late_is_recorded_as_a_migration() {
    let (mut s, state, config) = aborted_with_a_cancel();
    s.migrations[0].phase = MigrationPhase::Succeeded;
    s.vmis.clear();
    let p = plan(&with_state(s, &state), &config);
    assert_eq!(p.state, NextState::Clear);
    assert!(has_event(&p, "MigrationNotCancelled"));
    assert!(!cancelled_observed(&p));
    assert!(p.observations.iter().any(|o| matches!(
        o,
        Observation::MigrationFinished {
            result: MigrationResult::Succeeded,
            ..
        }
    )));
}

#[test]
fn a_failed_drain_records_what_its_cancels_came_to() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    s.now = t(7200);
    s.node.unschedulable = true;
    s.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Unfinished)];
    let (_, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Failed);
    assert_eq!(state.vmis["vms/vm-0"].outcome, VmiOutcome::Cancelling);
    s.migrations[0].phase = MigrationPhase::Succeeded;
    let (p, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Failed);
    assert_eq!(state.vmis["vms/vm-0"].outcome, VmiOutcome::Migrated);
    assert!(has_event(&p, "MigrationNotCancelled"));
}

#[test]
fn abort_leaves_admin_cordon() {
    let state = DrainState::new(t(0), false, 1);
    let p = plan(
        &with_state(snapshot(node(None, true)), &state),
        &Config::default(),
    );
    assert!(!p.actions.contains(&Action::Uncordon));
    assert_eq!(p.state, NextState::Clear);
}

#[test]
fn timeout_fails_the_drain_with_the_blocker_as_reason() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![not_migratable("db")];
    let mut config = Config::default();
    config.non_migratable.policy = NonMigratablePolicy::Block;
    let state = written(&plan(&s, &config));
    s.now = t(3600);
    s.node.unschedulable = true;
    let (p, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Failed);
    let failure = state.failure.unwrap();
    assert!(failure.contains("did not finish within 1h"), "{failure}");
    assert!(failure.contains("DisksNotLiveMigratable"), "{failure}");
    assert!(has_event(&p, "DrainFailed"));
    assert!(!p.actions.contains(&Action::Uncordon));
}

#[test]
fn timeout_can_uncordon_and_cancels_migrations() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let mut config = Config::default();
    config.drain.uncordon_on_failure = true;
    let state = written(&plan(&s, &config));
    s.now = t(7200);
    s.node.unschedulable = true;
    s.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Unfinished)];
    let (p, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Failed);
    assert!(p.actions.contains(&Action::Uncordon));
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::CancelMigration { .. }))
    );
}

#[test]
fn failed_drain_stays_until_request_reapplied() {
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Failed;
    state.request_value = "true".into();
    let s = snapshot(node(Some("true"), true));
    let p = plan(&with_state(s.clone(), &state), &Config::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.phase, Phase::Failed);

    let mut s2 = s.clone();
    s2.node.request_value = Some("retry-1".into());
    let p = plan(&with_state(s2, &state), &Config::default());
    let next = written(&p);
    assert_eq!(next.attempt, 2);
    assert!(
        next.cordoned_by_vacate,
        "the earlier cordon is still vacate's"
    );
    assert_eq!(next.phase, Phase::Drained);
}

#[test]
fn node_uncordoned_mid_drain_is_cordoned_again() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    let (p, _) = step(&s, &state, &config);
    assert!(p.actions.contains(&Action::Cordon));
}

#[test]
fn newer_state_version_is_left_alone() {
    let mut s = snapshot(node(Some("true"), false));
    s.node.state = StateAnnotation::parse(Some(r#"{"version": 7, "phase": "Teleporting"}"#));
    let p = plan(&s, &Config::default());
    assert!(p.actions.is_empty());
    assert_eq!(p.state, NextState::Unchanged);
    assert_eq!(p.blocked, Some(BlockReason::NewerStateVersion));
}

#[test]
fn garbage_state_is_reported_and_replaced() {
    let mut s = snapshot(node(Some("true"), true));
    s.node.state = StateAnnotation::parse(Some("{not json"));
    let p = plan(&s, &Config::default());
    assert!(has_event(&p, "InvalidState"));
    let state = written(&p);
    assert!(
        !state.cordoned_by_vacate,
        "an unknown cordon is not claimed"
    );

    let mut s = snapshot(node(None, false));
    s.node.state = StateAnnotation::parse(Some(r#"{"version": 1, "phase": 3}"#));
    let p = plan(&s, &Config::default());
    assert_eq!(p.state, NextState::Clear);
}

#[test]
fn start_gate_holds_drain_in_pending() {
    let mut s = snapshot(node(Some("true"), false));
    s.start_gate = StartGate::Closed(Gate::new(BlockReason::FleetLimit, "1 of at most 1 node"));
    let p = plan(&s, &Config::default());
    assert!(!p.actions.contains(&Action::Cordon));
    assert_eq!(p.phase, Phase::Pending);
    assert_eq!(p.blocked, Some(BlockReason::FleetLimit));
}

#[test]
fn state_round_trips_and_tolerates_unknown_fields() {
    let mut state = DrainState::new(t(0), true, 1);
    state.vmis.insert(
        "vms/a".into(),
        VmiRecord {
            attempts: 2,
            ..Default::default()
        },
    );
    let json = state.to_json();
    assert_eq!(
        StateAnnotation::parse(Some(&json)),
        StateAnnotation::Valid(Box::new(state.clone()))
    );
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["addedLater"] = serde_json::json!(true);
    assert!(
        StateAnnotation::parse(Some(&value.to_string()))
            .valid()
            .is_some()
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    let base = Duration::from_secs(5);
    let max = Duration::from_secs(60);
    let first = backoff(base, max, 1, "a");
    assert!(first >= base && first < base.mul_f64(1.5));
    let third = backoff(base, max, 3, "a");
    assert!(third >= Duration::from_secs(20));
    assert!(backoff(base, max, 30, "a") <= max);
    // Jitter spreads different pods apart.
    let spread: BTreeSet<_> = (0..20)
        .map(|i| backoff(base, max, 1, &format!("pod-{i}")))
        .collect();
    assert!(spread.len() > 10);
}

#[test]
fn migration_names_are_valid_and_unique_per_attempt() {
    let state = DrainState::new(t(0), true, 1);
    let long = "v".repeat(300);
    let name = migration_name("worker-1", &state, &long, 1);
    assert!(name.len() <= 253);
    assert_ne!(
        migration_name("worker-1", &state, "a", 1),
        migration_name("worker-1", &state, "a", 2)
    );
    let later = DrainState::new(t(10), true, 1);
    assert_ne!(
        migration_name("worker-1", &state, "a", 1),
        migration_name("worker-1", &later, "a", 1)
    );
    // Drains of two nodes that start in the same second and meet the same VMI (it moved
    // from one to the other) must not share a migration name.
    assert_ne!(
        migration_name("worker-1", &state, "a", 1),
        migration_name("worker-2", &state, "a", 1)
    );
    // Stable across versions: the name a restarted vacate computes is the one it created.
    assert_eq!(
        migration_name("worker-1", &state, "a", 1),
        "vacate-a-905bfda5-1"
    );
}

#[test]
fn vmi_seen_leaving_before_its_migration_succeeds_keeps_the_result() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    // The VMI shows up on the target before the migration's Succeeded reaches the cache.
    let mut s2 = s.clone();
    s2.now = t(20);
    s2.vmis.clear();
    s2.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Unfinished)];
    let (_, state) = step(&s2, &state, &config);
    assert_eq!(
        state.phase,
        Phase::Migrating,
        "not drained before the result is known"
    );
    s2.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Succeeded)];
    let (p, state) = step(&s2, &state, &config);
    assert_eq!(state.vmis["vms/vm-0"].outcome, VmiOutcome::Migrated);
    assert_eq!(state.phase, Phase::Drained);
    assert!(p.observations.iter().any(|o| matches!(
        o,
        Observation::MigrationFinished {
            result: MigrationResult::Succeeded,
            ..
        }
    )));
}

#[test]
fn eviction_not_yet_answered_is_tried_again() {
    // The eviction call timed out: the intent was written, no outcome recorded.
    let mut s = snapshot(node(Some("true"), false));
    s.pods = vec![pod("web-1", Some("ReplicaSet"))];
    s.vmis = vec![];
    let config = Config::default();
    let state = written(&plan(&s, &config));
    assert_eq!(state.pods["apps/web-1"].outcome, PodOutcome::Waiting);
    let p = plan(&with_state(s.clone(), &state), &config);
    assert_eq!(
        evicted(&p),
        vec!["web-1"],
        "an unanswered eviction is repeated"
    );

    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![not_migratable("db")];
    let state = written(&plan(&s, &config));
    assert_eq!(state.vmis["vms/db"].outcome, VmiOutcome::Waiting);
    s.now = t(1);
    let p = plan(&with_state(s, &state), &config);
    assert_eq!(evicted(&p), vec!["virt-launcher-db-abcde"]);
}

#[test]
fn rejected_eviction_is_its_own_blocker() {
    let mut s = snapshot(node(Some("true"), false));
    s.pods = vec![pod("web-1", Some("ReplicaSet"))];
    let config = Config::default();
    let p = plan(&s, &config);
    let mut state = written(&p);
    let evict = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::EvictPod { .. }))
        .unwrap();
    record_outcome(
        &mut state,
        evict,
        &ActionResult::Rejected(
            "pods \"web-1\" is forbidden: User cannot create resource \"pods/eviction\"".into(),
        ),
        t(0),
        &config,
    );
    assert_eq!(
        state.blocked.as_ref().unwrap().reason,
        BlockReason::EvictionRejected
    );
    s.now = t(1);
    let (p, _) = step(&s, &state, &config);
    assert_eq!(p.blocked, Some(BlockReason::EvictionRejected));
    assert!(evicted(&p).is_empty(), "retried only after the backoff");
}

#[test]
fn pods_are_evicted_while_the_vmis_migrate() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..4).map(|i| vmi(&format!("vm-{i}"))).collect();
    s.pods = vec![
        pod("web-1", Some("ReplicaSet")),
        pod("cache", Some("ReplicaSet")),
    ];
    let p = plan(&s, &Config::default());
    assert_eq!(migrations_created(&p), vec!["vm-0", "vm-1"]);
    assert_eq!(evicted(&p), vec!["cache", "web-1"]);
    assert_eq!(written(&p).phase, Phase::Migrating);
}

#[test]
fn pods_selected_to_go_last_wait_for_the_vmis() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let mut agent = pod("storage-agent", Some("ReplicaSet"));
    agent.labels.insert("role".into(), "storage".into());
    s.pods = vec![agent, pod("web-1", Some("ReplicaSet"))];
    let mut config = Config::default();
    config.pods.evict_after_vmis = crate::config::LabelSelector::parse("role=storage").unwrap();
    let (p, state) = step(&s, &DrainState::new(t(0), true, 1), &config);
    assert_eq!(evicted(&p), vec!["web-1"]);
    assert!(
        state
            .waiting_for
            .as_deref()
            .is_some_and(|w| w.contains("storage-agent")),
        "{:?}",
        state.waiting_for
    );

    // The VMI has left: now the agent goes.
    s.vmis.clear();
    s.pods.retain(|p| p.name == "storage-agent");
    let (p, state) = step(&s, &state, &config);
    assert_eq!(evicted(&p), vec!["storage-agent"]);
    assert_eq!(state.phase, Phase::Evicting);
}

#[test]
fn hotplug_volume_pods_wait_for_their_vmi() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    s.pods = vec![pod("hp-volume-abcde", Some("Pod"))];
    let p = plan(&s, &Config::default());
    assert!(evicted(&p).is_empty());
    s.vmis.clear();
    let p = plan(&s, &Config::default());
    assert_eq!(evicted(&p), vec!["hp-volume-abcde"]);
}

fn sized(name: &str, gib: u64) -> VmiView {
    VmiView {
        memory: gib << 30,
        ..vmi(name)
    }
}

#[test]
fn largest_vmis_start_first_and_ties_go_by_name() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![
        sized("a-small", 1),
        sized("b-huge", 32),
        sized("c-mid", 8),
        sized("d-huge", 32),
    ];
    let p = plan(&s, &Config::default());
    assert_eq!(migrations_created(&p), vec!["b-huge", "d-huge"]);
}

/// Drives the planner through a whole node of VMIs of very different sizes, each migration
/// taking its memory over a fixed bandwidth, and returns when the last one ended.
fn makespan(sizes_gib: &[u64], per_node: u32) -> u64 {
    let mut config = Config::default();
    config.migration.batch_size = NonZeroU32::new(per_node).unwrap();
    config.migration.max_in_flight_per_node = NonZeroU32::new(per_node).unwrap();
    config.migration.batch_interval = crate::config::ConfigDuration::from_secs(0);
    let mut s = snapshot(node(Some("true"), true));
    s.cluster.kubevirt_per_node = per_node;
    s.vmis = sizes_gib
        .iter()
        .enumerate()
        .map(|(i, g)| sized(&format!("vm-{i:02}"), *g))
        .collect();
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Migrating;
    // (vmi, ends at) of migrations in flight; one second per GiB.
    let mut running: Vec<(String, i64)> = Vec::new();
    let mut now = 0;
    for _ in 0..100 {
        s.now = t(now);
        s.migrations = running
            .iter()
            .map(|(v, _)| migration(&state, v, 1, MigrationPhase::Unfinished))
            .collect();
        let (p, next) = step(&s, &state, &config);
        state = next;
        for v in migrations_created(&p) {
            let gib = s.vmis.iter().find(|x| x.name == v).unwrap().memory >> 30;
            running.push((v, now + gib as i64));
        }
        if state.phase == Phase::Drained {
            return now as u64;
        }
        // Jump to the next migration's end; its VMI leaves the node.
        running.sort_by_key(|(_, end)| *end);
        let (done, end) = running.remove(0);
        now = end;
        s.vmis.retain(|v| v.name != done);
        state.vmis.get_mut(&format!("vms/{done}")).unwrap().outcome = VmiOutcome::Migrated;
    }
    panic!("the drain did not end");
}

#[test]
fn mixed_sizes_finish_at_the_makespan_bound() {
    // Total 63 GiB over 2 slots: no schedule ends before max(63 / 2, 32) = 32 s.
    assert_eq!(makespan(&[1, 2, 4, 8, 16, 32], 2), 32);
    // Smallest-first order from the names must not matter either.
    assert_eq!(makespan(&[32, 1, 1, 1, 1, 1, 1, 16, 16], 2), 35);
}

#[test]
fn the_plan_announces_its_transitions() {
    let has = |p: &Plan, o: &Observation| p.observations.contains(o);
    // A request starts a drain.
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let p = plan(&s, &Config::default());
    assert!(has(&p, &Observation::DrainStarted));
    assert!(has(
        &p,
        &Observation::PhaseChanged {
            from: Phase::Idle,
            to: Phase::Migrating
        }
    ));
    assert!(!has(&p, &Observation::PlaceReleased));

    // A drain still under way announces nothing new.
    let state = written(&p);
    let mut s2 = with_state(s.clone(), &state);
    s2.node.unschedulable = true;
    s2.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Unfinished)];
    let p = plan(&s2, &Config::default());
    assert!(p.observations.is_empty(), "{:?}", p.observations);

    // The request removed mid-drain: the place in the fleet is given back.
    s2.node.request_value = None;
    let p = plan(&s2, &Config::default());
    assert!(has(&p, &Observation::PlaceReleased));
    assert!(!has(&p, &Observation::DrainStarted));
}

#[test]
fn a_gate_not_asked_keeps_the_drain_from_starting() {
    let mut s = snapshot(node(Some("true"), false));
    s.start_gate = StartGate::NotAsked;
    let p = plan(&s, &Config::default());
    assert!(!p.actions.contains(&Action::Cordon));
    assert_eq!(p.phase, Phase::Pending);
    assert!(!p.observations.contains(&Observation::DrainStarted));
}

#[test]
fn a_vmi_with_an_unknown_eviction_strategy_is_left_alone_and_named() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![
        VmiView {
            eviction_strategy: EvictionStrategy::Unrecognized,
            ..vmi("future")
        },
        vmi("vm-1"),
    ];
    let p = plan(&s, &Config::default());
    assert_eq!(migrations_created(&p), vec!["vm-1"]);
    assert!(evicted(&p).is_empty());
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::RestartVmi { .. }))
    );
    assert_eq!(p.blocked, Some(BlockReason::NonMigratableVmi));
    assert_eq!(written(&p).vmis["vms/future"].outcome, VmiOutcome::Blocked);
}

/// The state after the first create of vm-0's migration was answered with `result`.
fn after_refused_create(result: ActionResult) -> DrainState {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let p = plan(&s, &config);
    let mut state = written(&p);
    let create = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::CreateMigration { .. }))
        .unwrap();
    let replan = record_outcome(&mut state, create, &result, t(0), &config);
    assert!(replan.is_some_and(|at| at > t(0)), "a retry is timed");
    assert_eq!(state.vmis["vms/vm-0"].outcome, VmiOutcome::RetryWaiting);
    state
}

#[test]
fn a_create_refused_for_now_uses_no_attempt() {
    let state = after_refused_create(ActionResult::Refused("too many requests".into()));
    assert_eq!(state.vmis["vms/vm-0"].attempts, 0);
    let state = after_refused_create(ActionResult::Rejected(
        "admission webhook \"migration-create-validator.kubevirt.io\" denied the request: in-flight migration detected. Active migration job (abc) is currently already in progress for VMI vm-0.".into(),
    ));
    assert_eq!(state.vmis["vms/vm-0"].attempts, 0);
}

#[test]
fn a_create_rejected_for_good_counts_as_an_attempt() {
    let state = after_refused_create(ActionResult::Rejected(
        "cannot migrate VMI: DisksNotLiveMigratable".into(),
    ));
    assert_eq!(state.vmis["vms/vm-0"].attempts, 1);
}

#[test]
fn a_pod_stuck_terminating_on_a_node_that_is_not_ready_stops_holding_the_drain() {
    let mut n = node(Some("true"), true);
    n.ready = false;
    let mut s = snapshot(n);
    s.pods = vec![PodView {
        deleting: true,
        delete_by: Some(t(0)),
        ..pod("web-1", Some("ReplicaSet"))
    }];
    let mut state = DrainState::new(t(-100), true, 1);
    state.phase = Phase::Evicting;
    // Within a minute of its grace period's end it is still awaited, with a wake-up for then.
    s.now = t(30);
    let (p, state) = step(&s, &state, &Config::default());
    assert_eq!(state.phase, Phase::Evicting);
    assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
    // Past that, the node that cannot confirm the deletion no longer holds the drain.
    s.now = t(61);
    let (p, state) = step(&s, &state, &Config::default());
    assert_eq!(state.phase, Phase::Drained);
    assert!(has_event(&p, "PodStuckTerminating"));
}

#[test]
fn a_pod_terminating_on_a_ready_node_is_awaited() {
    let mut s = snapshot(node(Some("true"), true));
    s.pods = vec![PodView {
        deleting: true,
        delete_by: Some(t(0)),
        ..pod("web-1", Some("ReplicaSet"))
    }];
    let mut state = DrainState::new(t(-100), true, 1);
    state.phase = Phase::Evicting;
    s.now = t(600);
    let (_, state) = step(&s, &state, &Config::default());
    assert_eq!(state.phase, Phase::Evicting);
}

const TRIGGERED: &str = "Eviction triggered evacuation of VMI \"vms/ext\"";

#[test]
fn external_vmis_are_handed_to_kubevirt_not_migrated() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![VmiView {
        eviction_strategy: EvictionStrategy::External,
        ..vmi("ext")
    }];
    let config = Config::default();
    let p = plan(&s, &config);
    assert!(migrations_created(&p).is_empty());
    assert_eq!(evicted(&p), vec!["virt-launcher-ext-abcde"]);
    let mut state = written(&p);
    let evict = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::EvictPod { .. }))
        .unwrap();
    record_outcome(
        &mut state,
        evict,
        &ActionResult::Refused(TRIGGERED.into()),
        t(0),
        &config,
    );
    assert_eq!(state.vmis["vms/ext"].outcome, VmiOutcome::Evicting);
    assert!(!state.vmis["vms/ext"].eviction_refused);
    // Waiting for the external controller: nothing more is asked, nothing is deleted.
    let mut s2 = s.clone();
    s2.node.unschedulable = true;
    let (p, _) = step(&s2, &state, &config);
    assert!(p.actions.iter().all(|a| !matches!(
        a,
        Action::EvictPod { .. } | Action::RestartVmi { .. } | Action::CreateMigration { .. }
    )));
}

#[test]
fn an_eviction_that_triggered_kubevirts_evacuation_never_restarts_the_vmi() {
    // A LiveMigrate VMI whose attempts ran out goes to the eviction policy; KubeVirt answers
    // 429 because it marked the VMI and migrates it itself: that is not a refusal.
    let mut s = snapshot(node(Some("true"), true));
    s.vmis = vec![vmi("vm-0")];
    let config = Config::default();
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Migrating;
    state.vmis.insert(
        "vms/vm-0".into(),
        VmiRecord {
            attempts: config.migration.max_attempts.get(),
            ..Default::default()
        },
    );
    let (p, base) = step(&s, &state, &config);
    let evict = p
        .actions
        .iter()
        .find(|a| matches!(a, Action::EvictPod { .. }))
        .expect("the eviction policy applies")
        .clone();
    for message in [
        "Eviction triggered evacuation of VMI \"vms/vm-0\"".to_string(),
        "Evacuation in progress: Eviction triggered evacuation of VMI \"vms/vm-0\"".to_string(),
    ] {
        let mut next = base.clone();
        record_outcome(
            &mut next,
            &evict,
            &ActionResult::Refused(message),
            t(0),
            &config,
        );
        s.now = t(5);
        let (p2, _) = step(&s, &next, &config);
        assert!(
            !p2.actions
                .iter()
                .any(|a| matches!(a, Action::RestartVmi { .. })),
            "{p2:#?}"
        );
    }
    // A true refusal still goes to on_eviction_refused.
    let mut next = base.clone();
    record_outcome(
        &mut next,
        &evict,
        &ActionResult::Refused(
            "VMI vm-0 is configured with an eviction strategy but is not live-migratable".into(),
        ),
        t(0),
        &config,
    );
    let (p3, _) = step(&s, &next, &config);
    assert!(
        p3.actions
            .iter()
            .any(|a| matches!(a, Action::RestartVmi { .. }))
    );
}

/// A plan that fails the drain starts nothing: neither the batch that a timeout found
/// waiting for its turn, nor the eviction of a VMI met before another VMI's refused one.
#[test]
fn a_plan_that_fails_the_drain_starts_no_work() {
    let mut s = snapshot(node(Some("true"), true));
    s.vmis = (0..3).map(|i| vmi(&format!("vm-{i}"))).collect();
    let config = Config::default();
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Migrating;
    s.now = t(3600);
    let (p, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Failed);
    assert!(migrations_created(&p).is_empty(), "{:?}", p.actions);
    assert!(!has_event(&p, "MigrationStarted"));
    assert!(state.vmis.values().all(|r| r.attempts == 0));
    let failure = state.failure.unwrap();
    assert!(failure.contains("3 VMIs to live-migrate"), "{failure}");

    let mut s = snapshot(node(Some("true"), true));
    s.vmis = vec![not_migratable("a"), not_migratable("b")];
    let mut config = Config::default();
    config.non_migratable.on_eviction_refused = EvictionRefusedPolicy::Fail;
    let mut state = DrainState::new(t(0), true, 1);
    state.phase = Phase::Migrating;
    state.vmis.insert(
        "vms/b".into(),
        VmiRecord {
            eviction_refused: true,
            ..VmiRecord::default()
        },
    );
    let (p, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Failed);
    assert!(evicted(&p).is_empty(), "{:?}", p.actions);
    assert!(!has_event(&p, "VmiEvicted"));
    assert!(has_event(&p, "DrainFailed"));
}

/// KubeVirt reports whether a VMI can migrate only once its domain runs: a VMI still
/// starting on the node waits, and is migrated once it runs.
#[test]
fn a_vmi_that_does_not_run_yet_is_not_migrated() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![VmiView {
        running: false,
        ..vmi("starting")
    }];
    let config = Config::default();
    let p = plan(&s, &config);
    assert!(
        p.actions
            .iter()
            .all(|a| !a.starts_work() && !matches!(a, Action::RestartVmi { .. })),
        "{:?}",
        p.actions
    );
    let state = written(&p);
    assert!(
        state
            .waiting_for
            .as_deref()
            .unwrap_or("")
            .contains("VMI vms/starting to start running"),
        "{:?}",
        state.waiting_for
    );
    s.node.unschedulable = true;
    s.vmis[0].running = true;
    let (p, _) = step(&s, &state, &config);
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateMigration { .. }))
    );
}

/// The state keeps a record per pod still to go; gone pods are only counted, so the
/// annotation of a node that had hundreds of pods stays small.
#[test]
fn gone_pods_are_counted_not_recorded() {
    let mut s = snapshot(node(Some("true"), false));
    s.pods = (0..300)
        .map(|i| pod(&format!("web-{i:03}"), Some("ReplicaSet")))
        .collect();
    let config = Config::default();
    let state = written(&plan(&s, &config));
    s.node.unschedulable = true;
    let (_, state) = step(&s, &state, &config);
    assert_eq!(state.pods_total(), 300);
    let during = state.to_json().len();
    s.pods.clear();
    let (_, state) = step(&s, &state, &config);
    assert_eq!(state.phase, Phase::Drained);
    assert_eq!((state.pods_done(), state.pods_total()), (300, 300));
    assert!(state.pods.is_empty());
    let after = state.to_json().len();
    assert!(
        after < 1_000,
        "{after} bytes after the drain (during: {during})"
    );
}

/// The next look comes at the earliest of the plan's wake-up and the results' replan time,
/// and no later than `drain.resync` while the node is in maintenance; an idle node waits
/// for a change.
#[test]
fn the_next_look_is_the_earliest_wake_up_with_resync_as_a_safety_net() {
    let config = Config::default();
    let resync = config.drain.resync.get();
    let plan_in = |phase: Phase, requeue_after: Option<Duration>| Plan {
        actions: Vec::new(),
        state: NextState::Unchanged,
        requeue_after,
        observations: Vec::new(),
        phase,
        blocked: None,
    };
    let idle = plan_in(Phase::Idle, None);
    assert_eq!(idle.look_again(None, t(0), &config), None);
    assert_eq!(
        idle.look_again(Some(t(30)), t(0), &config),
        Some(Duration::from_secs(30))
    );
    // A replan time already passed is now.
    assert_eq!(
        idle.look_again(Some(t(0)), t(10), &config),
        Some(Duration::ZERO)
    );
    let waiting = plan_in(Phase::Idle, Some(Duration::from_secs(20)));
    assert_eq!(
        waiting.look_again(Some(t(30)), t(0), &config),
        Some(Duration::from_secs(20))
    );
    for phase in [Phase::Migrating, Phase::Uncordoning, Phase::Pending] {
        assert_eq!(
            plan_in(phase, None).look_again(None, t(0), &config),
            Some(resync),
            "{phase}"
        );
        assert_eq!(
            plan_in(phase, Some(Duration::from_secs(5))).look_again(None, t(0), &config),
            Some(Duration::from_secs(5).min(resync)),
            "{phase}"
        );
    }
    assert_eq!(
        plan_in(Phase::Drained, None).look_again(None, t(0), &config),
        None
    );
}

fn steer_target(name: &str, free_gib: i64, inbound: u32) -> SteerTarget {
    SteerTarget {
        room: Target {
            name: name.into(),
            labels: [("kubernetes.io/hostname", name)].into_iter().collect(),
            free: Resources {
                cpu_millis: 64_000,
                memory_bytes: free_gib << 30,
            },
            pods_free: 100,
        },
        hostname: name.into(),
        inbound,
    }
}

fn targets_of(plan: &Plan) -> Vec<(String, Option<String>)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateMigration { vmi, target, .. } => Some((vmi.clone(), target.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rollouts_migrations_go_to_nodes_with_room_outside_it() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = (0..4).map(|i| vmi(&format!("vm-{i}"))).collect();
    s.cluster.kubevirt_per_node = 4;
    s.cluster.steering = Steering::On {
        // worker-2 has room for one 4 GiB VM only; worker-3 for three; the node itself is
        // never a target.
        targets: vec![
            steer_target("worker-1", 100, 0),
            steer_target("worker-2", 5, 0),
            steer_target("worker-3", 13, 0),
        ],
        max_inbound: 2,
    };
    let mut config = Config::default();
    config.migration.batch_size = NonZeroU32::new(4).unwrap();
    config.migration.max_in_flight_per_node = NonZeroU32::new(4).unwrap();
    let plan = plan(&s, &config);
    // Most room first; each node's inbound limit (2) and room hold; the fourth VM waits.
    assert_eq!(
        targets_of(&plan),
        vec![
            ("vm-0".into(), Some("worker-3".into())),
            ("vm-1".into(), Some("worker-3".into())),
            ("vm-2".into(), Some("worker-2".into())),
        ]
    );
    let state = written(&plan);
    assert_eq!(state.vmis["vms/vm-2"].target.as_deref(), Some("worker-2"));
    assert!(
        state
            .waiting_for
            .as_deref()
            .is_some_and(|w| w.contains("max_inbound_per_node")),
        "{state:#?}"
    );
    assert_eq!(state.unsteered, None);
}

/// The migrations that hold every target at its inbound limit are another node's: their end
/// is no event of this node, so the plan itself asks to be looked at again soon.
#[test]
fn a_vmi_waiting_for_an_inbound_slot_is_looked_at_again_soon() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    s.cluster.steering = Steering::On {
        targets: vec![
            steer_target("worker-2", 100, 2),
            steer_target("worker-3", 100, 2),
        ],
        max_inbound: 2,
    };
    let p = plan(&s, &Config::default());
    assert_eq!(targets_of(&p), vec![]);
    assert!(
        p.requeue_after.is_some_and(|d| d <= vmis::STEER_RECHECK),
        "{:?}",
        p.requeue_after
    );
}

#[test]
fn with_no_room_outside_the_rollout_kubevirt_places_the_migration_and_says_why() {
    let mut s = snapshot(node(Some("true"), false));
    s.vmis = vec![vmi("vm-0")];
    s.cluster.steering = Steering::On {
        targets: vec![steer_target("worker-2", 2, 0)],
        max_inbound: 2,
    };
    let p = plan(&s, &Config::default());
    assert_eq!(targets_of(&p), vec![("vm-0".into(), None)]);
    let why = written(&p).unsteered.unwrap_or_default();
    assert!(
        why.contains("no node outside the rollout has room"),
        "{why}"
    );

    // An older KubeVirt: the same, with its own reason.
    s.cluster.steering = Steering::Unavailable("KubeVirt v1.5.2 does not take it".into());
    let p = plan(&s, &Config::default());
    assert_eq!(targets_of(&p), vec![("vm-0".into(), None)]);
    assert_eq!(
        written(&p).unsteered.as_deref(),
        Some("KubeVirt v1.5.2 does not take it")
    );

    // Placement rules of the VM's own: not steered.
    let mut pinned = vmi("vm-0");
    pinned.placement_rules = true;
    s.vmis = vec![pinned];
    s.cluster.steering = Steering::On {
        targets: vec![steer_target("worker-2", 100, 0)],
        max_inbound: 2,
    };
    let p = plan(&s, &Config::default());
    assert_eq!(targets_of(&p), vec![("vm-0".into(), None)]);
}

#[test]
fn a_steered_vms_node_selector_is_respected_and_a_failed_target_is_not_tried_again() {
    let mut s = snapshot(node(Some("true"), false));
    let mut gpu = vmi("vm-0");
    gpu.node_selector = [("gpu".to_string(), "true".to_string())].into();
    s.vmis = vec![gpu];
    let mut with_gpu = steer_target("worker-2", 10, 0);
    with_gpu.room.labels = [("kubernetes.io/hostname", "worker-2"), ("gpu", "true")]
        .into_iter()
        .collect();
    s.cluster.steering = Steering::On {
        targets: vec![
            steer_target("worker-3", 100, 0),
            with_gpu,
            steer_target("worker-4", 10, 0),
        ],
        max_inbound: 2,
    };
    let config = Config::default();
    let plan1 = plan(&s, &config);
    assert_eq!(
        targets_of(&plan1),
        vec![("vm-0".into(), Some("worker-2".into()))]
    );
    let state = written(&plan1);

    // The migration to worker-2 failed: the retry goes elsewhere (here nowhere fits the
    // selector, so KubeVirt places it), and an interrupted create is repeated to the same node.
    let mut s2 = s.clone();
    s2.now = t(600);
    s2.migrations = vec![migration(&state, "vm-0", 1, MigrationPhase::Failed)];
    let (_, retrying) = step(&s2, &state, &config);
    let mut s3 = s2.clone();
    s3.now = t(900);
    let (plan3, next) = step(&s3, &retrying, &config);
    assert_eq!(targets_of(&plan3), vec![("vm-0".into(), None)]);
    assert_eq!(next.vmis["vms/vm-0"].attempts, 2);

    let mut s4 = s.clone();
    s4.now = t(1);
    let (repeat, _) = step(&s4, &state, &config);
    assert_eq!(
        targets_of(&repeat),
        vec![("vm-0".into(), Some("worker-2".into()))]
    );
}
