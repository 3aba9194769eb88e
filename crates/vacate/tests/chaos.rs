//! Chaos: drains of a busy node while something fails, and the invariants checked after
//! every run. `make test` runs a few runs with a fixed seed; `make chaos` runs many and
//! writes the figures to docs/reliability.md.
//!
//! The faults:
//! - vacate killed with SIGKILL at random moments and started again (`CHAOS_RUNS`, default
//!   2), also with 30% of the migrations failing (`CHAOS_FAILING_RUNS`, default 1); on the
//!   shared testbed;
//! - the leader of two replicas frozen with SIGSTOP past its lease and resumed
//!   (`CHAOS_FREEZE_RUNS`); the API server's audit log shows what the frozen replica wrote;
//! - kube-apiserver frozen with SIGSTOP for `CHAOS_APISERVER_PAUSE` seconds (default 30)
//!   (`CHAOS_APISERVER_RUNS`), etcd killed and started again (`CHAOS_ETCD_RUNS`);
//! - KubeVirt's API side unavailable: its admission webhooks refusing connections while a VMI
//!   whose migrations fail is handed to KubeVirt's evacuation (`CHAOS_WEBHOOK_RUNS`), and the
//!   whole simulator frozen for 20 s (`CHAOS_KUBEVIRT_RUNS`).
//!
//! The faults after the kills stop or reconfigure parts of the cluster, so they run on a
//! cluster this test process starts for them (its own etcd, API server, simulator and audit
//! log), one run at a time; the tests that share the testbed never see them. Each of their
//! counts defaults to 1. `CHAOS_SEED` (default 1) seeds run 0 (run i uses seed + i); with
//! `CHAOS_OUT` set, each run's record is appended to that file as one JSON line.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kubevirt_api::{MigrationPhase, VirtualMachineInstance};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;
use testbed::control_plane::AuditOptions;
use testbed::test_support::TestCluster;
use vacate::planner::Phase;

const DRAIN: Duration = Duration::from_secs(240);
/// A drain not over this long after its request is looked into ([`why_slow`]).
const SLOW: Duration = Duration::from_secs(30);

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

#[derive(serde::Serialize)]
struct RunRecord {
    run: u64,
    seed: u64,
    /// The faults of the run.
    faults: String,
    /// Seconds after the request at which vacate was killed.
    kills_at: Vec<f64>,
    /// What else was done to the cluster, and when (seconds after the request).
    injected: Vec<String>,
    /// What the run's own checks saw beyond the invariants (the audit log of a frozen
    /// leader's writes, the webhooks' hazard).
    evidence: Vec<String>,
    drain_seconds: f64,
    vmis: usize,
    migrations: usize,
    violations: Vec<String>,
}

/// The simulator's annotation on a VMI: the share of its migrations that fail halfway.
const FAILURE_RATE: &str = "simulator.vacate.io/migration-failure-rate";

// ---------------------------------------------------------------------------------------
// One runner for every fault kind.

/// One kind of fault: how its runs set the scene and start vacate, what is done to the
/// cluster once the drain is requested, and what its runs check besides the invariants that
/// every run shares ([`check_drain`]).
trait Fault {
    /// What [`Fault::inject`] leaves for [`Fault::check`].
    type Injected;

    /// `faults` of the run's record.
    fn describe(&self) -> String;

    /// The prefix of the run's namespace; the run number follows it.
    fn prefix(&self) -> String;

    /// The scene's 6 live-migratable VMs, as this fault wants them; `rng` is the run's.
    fn vms(&self, _rng: &mut StdRng) -> Vec<Vm> {
        (0..6).map(|i| Vm::migratable(format!("vm-{i}"))).collect()
    }

    /// Whether every VMI must get exactly one of vacate's migrations.
    fn one_migration_each(&self) -> bool {
        true
    }

    /// Starts vacate before the request: its replicas, each with the name the violation
    /// "… exited" gives it.
    async fn start(&self, run: &Run) -> Result<Vec<(String, Vacate)>> {
        Ok(vec![("vacate".into(), run.env.vacate(FAST).await?)])
    }

    /// What is done to the cluster once the drain is requested; returns when the drain is
    /// left to end.
    async fn inject(&self, run: &mut Run) -> Result<Self::Injected>;

    /// The run's own checks, once the drain ended and the shared invariants were checked.
    async fn check(&self, _run: &mut Run, _injected: Self::Injected) -> Result<()> {
        Ok(())
    }
}

/// A run under way: the scene, vacate's replicas and the record being filled.
struct Run {
    /// vacate's replicas and their names; first, so they are killed before the namespace
    /// and the nodes are deleted.
    replicas: Vec<(String, Vacate)>,
    env: Env,
    node: String,
    /// The cluster of the run when this process started it (the faults that stop parts of
    /// a cluster); `None` on the shared testbed.
    cluster: Option<Arc<TestCluster>>,
    rng: StdRng,
    /// The UID of every VMI of the scene, by name.
    before: BTreeMap<String, String>,
    monitor: MigrationMonitor,
    _watch: tokio::task::JoinHandle<()>,
    /// When the drain was requested.
    requested: Instant,
    record: RunRecord,
    /// A folder for the run's files (the replicas' kubeconfigs), removed after it.
    dir: tempfile::TempDir,
}

impl Run {
    /// Seconds since the request, to the hundredth.
    fn since_request(&self) -> f64 {
        seconds_since(self.requested)
    }

    /// The cluster this process started for the run.
    fn own_cluster(&self) -> Result<Arc<TestCluster>> {
        self.cluster
            .clone()
            .context("this fault runs on a cluster of the test's own")
    }
}

/// Runs `runs` of `fault` on `cluster` (the shared testbed when `None`), run i seeded with
/// `seed + i`; reports them and fails on any violation.
async fn runs_of(
    fault: &impl Fault,
    cluster: Option<Arc<TestCluster>>,
    runs: Range<u64>,
    seed: u64,
) -> Result<()> {
    let mut records = Vec::new();
    for run in runs {
        records.push(one_run(fault, cluster.clone(), run, seed.wrapping_add(run)).await?);
    }
    report(records)
}

/// One run of `fault`: the scene on node 0 of 3 (6 live-migratable VMs, a Deployment of 2
/// behind a PodDisruptionBudget, a DaemonSet), vacate started, the drain requested, the fault
/// injected, then the shared invariants, every replica still running, and the fault's own
/// checks.
async fn one_run(
    fault: &impl Fault,
    cluster: Option<Arc<TestCluster>>,
    run: u64,
    seed: u64,
) -> Result<RunRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let vms = fault.vms(&mut rng);
    let prefix = format!("{}{run}", fault.prefix());
    let env = match &cluster {
        Some(cluster) => Env::on(cluster.clone(), &prefix, 3).await?,
        None => Env::new(&prefix, 3).await?,
    };
    env.busy_node_with(0, vms, 2, 1).await?;
    let node = env.node(0).to_string();
    let before = uids(&env).await?;
    let (monitor, watch) = MigrationMonitor::start(&env);
    let mut run = Run {
        replicas: Vec::new(),
        env,
        node,
        cluster,
        rng,
        before,
        monitor,
        _watch: watch,
        requested: Instant::now(),
        record: RunRecord {
            run,
            seed,
            faults: fault.describe(),
            kills_at: Vec::new(),
            injected: Vec::new(),
            evidence: Vec::new(),
            drain_seconds: 0.0,
            vmis: 0,
            migrations: 0,
            violations: Vec::new(),
        },
        dir: tempfile::tempdir()?,
    };
    run.replicas = fault.start(&run).await?;

    run.requested = Instant::now();
    run.env.request(&run.node, Some("true")).await?;
    let injected = fault.inject(&mut run).await?;

    run.record.drain_seconds = check_drain(
        &run.env,
        &run.node,
        &run.before,
        &run.monitor,
        run.requested,
        fault.one_migration_each(),
        &mut run.record,
    )
    .await?;
    for (name, replica) in &mut run.replicas {
        if !replica.running() {
            run.record.violations.push(format!("{name} exited"));
        }
    }
    fault.check(&mut run, injected).await?;
    if !run.record.violations.is_empty() {
        keep_component_logs(&mut run);
    }
    run.record.vmis = run.before.len();
    run.record.migrations = run.monitor.per_vmi().values().map(Vec::len).sum();
    Ok(run.record)
}

/// A run with violations on a cluster of the test's own: the logs of its components are
/// copied next to vacate's log (the cluster's folder goes when the process ends) and named
/// in the run's evidence.
fn keep_component_logs(run: &mut Run) {
    let Some(cluster) = run.cluster.clone() else {
        return;
    };
    for component in [
        "kubevirt-sim",
        "kwok",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-apiserver",
        "etcd",
    ] {
        let Some(log) = cluster.component_log(component) else {
            continue;
        };
        let kept =
            std::env::temp_dir().join(format!("vacate-test-{}-{component}.log", run.env.ns.name()));
        match std::fs::copy(&log, &kept) {
            Ok(_) => run
                .record
                .evidence
                .push(format!("{component} log: {}", kept.display())),
            Err(e) => run
                .record
                .evidence
                .push(format!("{component} log not kept: {e}")),
        }
    }
}

/// Prints the records, appends them to `$CHAOS_OUT`, and fails on any violation.
fn report(records: Vec<RunRecord>) -> Result<()> {
    let mut failed = Vec::new();
    for record in records {
        let run = record.run;
        println!(
            "run {run} ({}): killed at {:?} s, drained in {:.1} s, {} violations",
            record.faults,
            record.kills_at,
            record.drain_seconds,
            record.violations.len()
        );
        for line in record.injected.iter().chain(&record.evidence) {
            println!("  {line}");
        }
        if let Ok(path) = std::env::var("CHAOS_OUT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {path}"))?;
            writeln!(file, "{}", serde_json::to_string(&record)?)?;
        }
        if !record.violations.is_empty() {
            failed.push(format!(
                "run {run} ({}): {:?}",
                record.faults, record.violations
            ));
        }
    }
    anyhow::ensure!(failed.is_empty(), "invariants violated: {failed:#?}");
    Ok(())
}

/// The UID of every VMI of the test, by name.
async fn uids(env: &Env) -> Result<BTreeMap<String, String>> {
    Ok(env
        .vmis()
        .await?
        .iter()
        .map(|v| (v.name_any(), v.uid().unwrap_or_default()))
        .collect())
}

/// Waits for the drain to end and checks the invariants every run shares: every VMI of
/// `before` still exists with its UID (none deleted: all could migrate), runs, and not on
/// the node; with `one_migration_each`, each got exactly one of vacate's migrations, or one
/// more after each that KubeVirt failed on its own; never two of a VMI at once, never more
/// than the node's limit at once; the drain ends Drained; removing the request uncordons the
/// node and no other node was cordoned. Returns the drain time in seconds.
async fn check_drain(
    env: &Env,
    node: &str,
    before: &BTreeMap<String, String>,
    monitor: &MigrationMonitor,
    requested: Instant,
    one_migration_each: bool,
    record: &mut RunRecord,
) -> Result<f64> {
    let RunRecord {
        violations,
        evidence,
        ..
    } = record;
    // A drain that takes long says why in the run's record: what vacate waited for then,
    // and the PodDisruptionBudgets' view of the namespace.
    let mut drained = env.wait_phase(node, Phase::Drained, SLOW).await;
    if drained.is_err() {
        evidence.push(why_slow(env, node).await);
        drained = env
            .wait_phase(node, Phase::Drained, DRAIN.saturating_sub(SLOW))
            .await;
    }
    let drain_seconds = (requested.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    if let Err(error) = &drained {
        violations.push(format!("the drain did not end Drained: {error:#}"));
    }
    let after = env.vmis().await?;
    for (name, uid) in before {
        match after.iter().find(|v| &v.name_any() == name) {
            None => violations.push(format!("VMI {name} is gone")),
            Some(v) if v.uid().as_ref() != Some(uid) => {
                violations.push(format!("VMI {name} was deleted and created again"))
            }
            Some(v) if !v.is_running() || v.node_name() == Some(node) => violations.push(format!(
                "VMI {name} is {:?} on {:?}",
                v.status.as_ref().and_then(|s| s.phase),
                v.node_name()
            )),
            Some(_) => {}
        }
    }
    let per_vmi = monitor.per_vmi();
    if one_migration_each {
        for name in before.keys() {
            let migrations = per_vmi.get(name).cloned().unwrap_or_default();
            // One migration, or one more after each that KubeVirt failed on its own (a
            // timeout, no deletion or abort asked for): retrying those is vacate's job.
            match migrations.split_last() {
                Some((_, [])) => {}
                Some((last, earlier)) if earlier.iter().all(|m| monitor.failed_unasked(m)) => {
                    evidence.push(format!(
                        "VMI {name}: KubeVirt failed {earlier:?} with no one asking; vacate's \
                         retry {last} followed"
                    ))
                }
                _ => violations.push(format!(
                    "VMI {name} got migrations {migrations:?}{}",
                    why_failed(env, &migrations)
                )),
            }
        }
    }
    if monitor.max_concurrent_per_vmi() > 1 {
        violations.push("a VMI had two of vacate's migrations in flight at once".into());
    }
    if monitor.max_in_flight_on(node) > 2 {
        violations.push(format!(
            "{} migrations in flight on the node (limit 2)",
            monitor.max_in_flight_on(node)
        ));
    }
    env.request(node, None).await?;
    match env.wait_idle(node, Duration::from_secs(60)).await {
        Ok(n) if is_unschedulable(&n) => violations.push("the node stayed cordoned".into()),
        Ok(_) => {}
        Err(error) => violations.push(format!("the maintenance did not end: {error:#}")),
    }
    for other in env.nodes.names().iter().filter(|n| *n != node) {
        if is_unschedulable(&env.get_node(other).await?) {
            violations.push(format!("node {other} was cordoned"));
        }
    }
    Ok(drain_seconds)
}

/// What a drain still waits for [`SLOW`] after its request: vacate's phase and blocker,
/// and each PodDisruptionBudget of the run with the pods it counts as disrupted. (An
/// eviction the API server answered with an error after it had already counted the pod in
/// the budget holds that disruption until the disruption controller drops it, two minutes
/// later: Kubernetes' pkg/controller/disruption/disruption.go, `DeletionTimeout`.)
async fn why_slow(env: &Env, node: &str) -> String {
    let state = match env.state(node).await {
        Ok(vacate::planner::StateAnnotation::Valid(s)) => format!(
            "{} ({})",
            s.phase,
            s.blocked
                .map(|b| format!("{}: {}", b.reason.as_str(), b.message))
                .or(s.waiting_for)
                .unwrap_or_else(|| "no blocker".into())
        ),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("unreadable: {e:#}"),
    };
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), env.ns.name());
    let budgets = match pdbs.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|p| {
                let status = p.status.clone().unwrap_or_default();
                format!(
                    "PDB {}: {} disruptions allowed, disrupted pods {:?}",
                    p.name_any(),
                    status.disruptions_allowed.unwrap_or_default(),
                    status
                        .disrupted_pods
                        .unwrap_or_default()
                        .keys()
                        .collect::<Vec<_>>()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("PDBs unreadable: {e:#}"),
    };
    let migrations = match env.vacate_migrations().await {
        Ok(list) => list
            .iter()
            .filter(|m| {
                !matches!(
                    m.status.as_ref().and_then(|s| s.phase),
                    Some(MigrationPhase::Succeeded)
                )
            })
            .map(|m| {
                format!(
                    "{} {:?}",
                    m.name_any(),
                    m.status.as_ref().and_then(|s| s.phase)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("unreadable: {e:#}"),
    };
    // Pods that wait: the scheduler's or kwok's view, where a migration's target waits.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), env.ns.name());
    let waiting = match pods.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
            .map(|p| {
                let scheduled = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
                    .map(|c| format!("{} {}", c.status, c.message.clone().unwrap_or_default()))
                    .unwrap_or_else(|| "no PodScheduled".into());
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                format!("{} on {node:?} ({scheduled})", p.name_any())
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("unreadable: {e:#}"),
    };
    format!(
        "not drained {} s after the request: {state}; {budgets}; unfinished migrations: \
         [{migrations}]; Pending pods: [{waiting}]",
        SLOW.as_secs()
    )
}

/// Why the simulator failed these migrations, from its log, when this process started the
/// cluster (the shared testbed's log is not read).
fn why_failed(env: &Env, migrations: &[String]) -> String {
    let Some(log) = env.cluster.component_log("kubevirt-sim") else {
        return String::new();
    };
    let Ok(text) = std::fs::read_to_string(&log) else {
        return String::new();
    };
    let failed: Vec<String> = text
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("to=Failed") && migrations.iter().any(|m| l.contains(m.as_str())))
        .map(|l| l.chars().take(400).collect())
        .collect();
    if failed.is_empty() {
        String::new()
    } else {
        format!("; the simulator: {failed:?}")
    }
}

/// A log line without its terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn seconds_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------------------
// vacate killed, on the shared testbed.

/// vacate killed with SIGKILL one to three times at random moments (0.1–4 s apart) and
/// started again after each kill; with `failure_rate`, that share of the migrations fails
/// halfway (the simulator's per-VMI annotation).
struct Kills {
    failure_rate: Option<&'static str>,
    /// One VM's migrations stall (make no progress) from the request until a random moment
    /// 3–10 s later, then go on.
    stall: bool,
}

const STALL: &str = "simulator.vacate.io/migration-stall";

impl Fault for Kills {
    type Injected = ();

    fn describe(&self) -> String {
        let stall = if self.stall { ", one stalling" } else { "" };
        match self.failure_rate {
            Some(rate) => format!("SIGKILL, {rate} of migrations failing{stall}"),
            None => format!("SIGKILL{stall}"),
        }
    }

    fn prefix(&self) -> String {
        "chaos".into()
    }

    fn vms(&self, rng: &mut StdRng) -> Vec<Vm> {
        let stalling = self.stall.then(|| format!("vm-{}", rng.random_range(0..6)));
        (0..6)
            .map(|i| {
                let vm = Vm::migratable(format!("vm-{i}"));
                let vm = match self.failure_rate {
                    Some(rate) => vm.annotate(FAILURE_RATE, rate),
                    None => vm,
                };
                if stalling.as_deref() == Some(vm.name.as_str()) {
                    vm.annotate(STALL, "true")
                } else {
                    vm
                }
            })
            .collect()
    }

    /// Failed migrations are retried: a VMI may get more than one.
    fn one_migration_each(&self) -> bool {
        self.failure_rate.is_none()
    }

    async fn start(&self, run: &Run) -> Result<Vec<(String, Vacate)>> {
        Ok(vec![(
            "the last vacate".into(),
            run.env.vacate(FAST).await?,
        )])
    }

    async fn inject(&self, run: &mut Run) -> Result<()> {
        let stalling = run
            .env
            .vmis()
            .await?
            .iter()
            .find(|v| v.annotations().contains_key(STALL))
            .map(|v| v.name_any());
        let vmis: Api<VirtualMachineInstance> =
            Api::namespaced(run.env.client.clone(), run.env.ns.name());
        let unstall = stalling.map(|vm| {
            let after = Duration::from_millis(run.rng.random_range(3000..10_000));
            run.record.injected.push(format!(
                "{vm}'s migrations stalled until {:.2} s",
                after.as_secs_f64()
            ));
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let patch = serde_json::json!({"metadata": {"annotations": {STALL: null}}});
                vmis.patch(&vm, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            })
        });
        for _ in 0..run.rng.random_range(1..=3) {
            let wait = Duration::from_millis(run.rng.random_range(100..4000));
            tokio::time::sleep(wait).await;
            run.replicas[0].1.kill();
            run.record.kills_at.push(run.since_request());
            run.replicas[0].1 = run.env.vacate(FAST).await?;
        }
        if let Some(unstall) = unstall {
            unstall.await??;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() -> Result<()> {
    let runs = env_number("CHAOS_RUNS", 2)?;
    let seed = env_number("CHAOS_SEED", 1)?;
    let kills = Kills {
        failure_rate: None,
        stall: false,
    };
    runs_of(&kills, None, 0..runs, seed).await
}

/// Migrations failing at random on top of the kills, and one VM's migrations stalling for a
/// while: vacate retries the failed ones, and after its attempts hands the VMI to KubeVirt
/// (an eviction its evacuation turns into a migration); it waits out the stalled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_migrations_and_sigkill_lose_nothing() -> Result<()> {
    let runs = env_number("CHAOS_FAILING_RUNS", 1)?;
    let seed = env_number("CHAOS_SEED", 1)?;
    // Run numbers after the plain runs' keep the records apart.
    let first = env_number("CHAOS_RUNS", 2)?;
    let kills = Kills {
        failure_rate: Some("0.3"),
        stall: true,
    };
    runs_of(&kills, None, first..first + runs, seed).await
}

// ---------------------------------------------------------------------------------------
// Faults on a cluster of this process's own.

/// The cluster the faults below run on: started by this process with the API server's audit
/// log, so that freezing its API server, restarting its etcd or taking its KubeVirt down
/// disturbs no other test.
static OWN: tokio::sync::OnceCell<std::result::Result<Arc<TestCluster>, String>> =
    tokio::sync::OnceCell::const_new();
/// One run at a time on that cluster: each run's fault hits the whole cluster.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn own_cluster() -> Result<Arc<TestCluster>> {
    OWN.get_or_init(|| async {
        let started = Instant::now();
        let cluster = TestCluster::start_with(true, Some(AuditOptions::default()))
            .await
            .map(Arc::new)
            .map_err(|e| format!("starting the chaos suite's own cluster: {e:#}"));
        println!(
            "started the chaos suite's own cluster in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        cluster
    })
    .await
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Runs of one fault kind (`$name` of them, default 1) on the own cluster.
async fn own_runs(name: &str, fault: &impl Fault) -> Result<()> {
    let runs = env_number(name, 1)?;
    if runs == 0 {
        return Ok(());
    }
    let seed = env_number("CHAOS_SEED", 1)?;
    let _turn = TURN.lock().await;
    let cluster = own_cluster().await?;
    runs_of(fault, Some(cluster), 0..runs, seed).await
}

// --- The leader frozen past its lease ---------------------------------------------------

/// Two replicas; the leader is frozen with SIGSTOP a random moment into the drain, kept
/// frozen until the other replica leads (its lease is 4 s) and a little longer, and resumed.
/// The other replica finishes the drain. The API server's audit log, where each replica's
/// requests carry a user of its own (impersonation), must show no write of the resumed
/// replica: its lease is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_writes_nothing_once_resumed() -> Result<()> {
    own_runs("CHAOS_FREEZE_RUNS", &LeaderFrozen).await
}

struct LeaderFrozen;

/// The replica that leads first and is frozen, and the standby.
const LEADER: usize = 0;
const STANDBY: usize = 1;

impl LeaderFrozen {
    /// The user each replica's requests impersonate.
    fn users(run: &Run) -> [String; 2] {
        let n = run.record.run;
        [format!("vacate-{n}-a"), format!("vacate-{n}-b")]
    }
}

/// When the leader was frozen and resumed.
struct Frozen {
    frozen_at: DateTime<Utc>,
    resumed_at: DateTime<Utc>,
}

impl Fault for LeaderFrozen {
    type Injected = Frozen;

    fn describe(&self) -> String {
        "leader frozen (SIGSTOP) past its lease".into()
    }

    fn prefix(&self) -> String {
        "freeze".into()
    }

    async fn start(&self, run: &Run) -> Result<Vec<(String, Vacate)>> {
        run.own_cluster()?
            .audit_log()
            .context("the own cluster writes no audit log")?;
        // Each replica's requests impersonate a user of its own.
        let lease = Lease {
            namespace: run.env.ns.name(),
            name: "vacate",
        };
        let mut replicas = Vec::new();
        for user in Self::users(run) {
            let kubeconfig = run.dir.path().join(format!("{user}.kubeconfig"));
            run.env.impersonating_kubeconfig(&user, &kubeconfig)?;
            let replica = run
                .env
                .vacate_with_kubeconfig(&kubeconfig, lease, FAST)
                .await?;
            replicas.push((format!("replica {user}"), replica));
            if replicas.len() == 1 {
                // The first leads before the second starts.
                leader_of(&[&replicas[LEADER].1], Duration::from_secs(30)).await?;
            }
        }
        Ok(replicas)
    }

    async fn inject(&self, run: &mut Run) -> Result<Frozen> {
        tokio::time::sleep(Duration::from_millis(run.rng.random_range(500..3000))).await;
        run.replicas[LEADER].1.freeze()?;
        let frozen_at = Utc::now();
        let at = run.since_request();
        run.record
            .injected
            .push(format!("leader frozen at {at:.2} s"));
        // Past its lease: the standby leads, then a little longer.
        let took_over = leader_of(&[&run.replicas[STANDBY].1], Duration::from_secs(30)).await;
        let led_after = (Utc::now() - frozen_at).num_milliseconds() as f64 / 1000.0;
        if took_over.is_err() {
            run.record
                .violations
                .push("the standby did not take over within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(run.rng.random_range(0..2000))).await;
        let resumed_at = Utc::now();
        run.replicas[LEADER].1.resume()?;
        let at = run.since_request();
        run.record.injected.push(format!(
            "resumed at {at:.2} s ({:.1} s frozen; the standby led after {led_after:.1} s)",
            (resumed_at - frozen_at).num_milliseconds() as f64 / 1000.0,
        ));
        Ok(Frozen {
            frozen_at,
            resumed_at,
        })
    }

    /// The evidence: every write of the frozen replica, from the API server's audit log.
    async fn check(&self, run: &mut Run, frozen: Frozen) -> Result<()> {
        let Frozen {
            frozen_at,
            resumed_at,
        } = frozen;
        let audit = run
            .own_cluster()?
            .audit_log()
            .context("the own cluster writes no audit log")?;
        let user = Self::users(run)[LEADER].clone();
        let writes = audit_writes(&audit, &user)?;
        let earlier = writes.iter().filter(|w| w.received < frozen_at).count();
        let (lease_writes, after): (Vec<&AuditWrite>, Vec<&AuditWrite>) = writes
            .iter()
            .filter(|w| w.received >= resumed_at)
            .partition(|w| w.resource == "leases");
        let fenced = run.replicas[LEADER]
            .1
            .metric("vacate_reconcile_errors_total{error=\"fenced\"}")
            .await
            .unwrap_or(0.0);
        let record = &mut run.record;
        record.evidence.push(format!(
            "audit log of {user}: {earlier} writes before the freeze, {} after the resume \
             besides its Lease ({} Lease requests: {:?}); {fenced} reconciliations refused by \
             the fence",
            after.len(),
            lease_writes.len(),
            lease_writes
                .iter()
                .map(|w| format!("{} {}", w.verb, w.code))
                .collect::<Vec<_>>()
        ));
        if earlier == 0 {
            record.violations.push(format!(
                "the audit log shows no write of {user} before the freeze: the check saw nothing"
            ));
        }
        for w in &after {
            record.violations.push(format!(
                "the resumed replica wrote after its lease was gone: {} {} {} ({}) at {}",
                w.verb, w.resource, w.name, w.code, w.received
            ));
        }
        for w in lease_writes.iter().filter(|w| (200..300).contains(&w.code)) {
            // Taking the Lease back while the other replica holds and renews it.
            record.violations.push(format!(
                "the resumed replica's {} of Lease {} succeeded at {}",
                w.verb, w.name, w.received
            ));
        }
        Ok(())
    }
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// A write request of the audit log.
#[derive(Debug)]
struct AuditWrite {
    received: DateTime<Utc>,
    verb: String,
    resource: String,
    name: String,
    code: i64,
}

/// The writes the audit log holds of requests impersonating `user`.
fn audit_writes(log: &std::path::Path, user: &str) -> Result<Vec<AuditWrite>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let quoted = format!("\"{user}\"");
    let mut writes = Vec::new();
    for line in text.lines().filter(|l| l.contains(&quoted)) {
        let event: serde_json::Value = serde_json::from_str(line)?;
        if event["impersonatedUser"]["username"] != user
            || event["stage"] != "ResponseComplete"
            || !WRITE_VERBS.contains(&event["verb"].as_str().unwrap_or(""))
        {
            continue;
        }
        let received = event["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .context("an audit event without requestReceivedTimestamp")?;
        let object = &event["objectRef"];
        let mut resource = object["resource"].as_str().unwrap_or("").to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        writes.push(AuditWrite {
            received: received.with_timezone(&Utc),
            verb: event["verb"].as_str().unwrap_or("").into(),
            resource,
            name: object["name"].as_str().unwrap_or("").into(),
            code: event["responseStatus"]["code"].as_i64().unwrap_or(0),
        });
    }
    Ok(writes)
}

// --- kube-apiserver, etcd and the simulator stopped mid-drain ---------------------------

/// What a run does to one component of the own cluster, a random moment (0.5–4 s) into the
/// drain.
#[derive(Clone, Copy)]
enum ComponentFault {
    /// SIGSTOP for this long, then SIGCONT.
    Freeze(&'static str, Duration),
    /// SIGKILL and started again at once with the same data.
    Restart(&'static str),
}

/// kube-apiserver frozen with SIGSTOP for `CHAOS_APISERVER_PAUSE` seconds (default 30) a
/// random moment into the drain: vacate's requests and watches hang, then go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_frozen_mid_drain_loses_nothing() -> Result<()> {
    let pause = Duration::from_secs(env_number("CHAOS_APISERVER_PAUSE", 30)?);
    let fault = ComponentFault::Freeze("kube-apiserver", pause);
    own_runs("CHAOS_APISERVER_RUNS", &fault).await
}

/// etcd killed and started again (its data kept) a random moment into the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_mid_drain_loses_nothing() -> Result<()> {
    own_runs("CHAOS_ETCD_RUNS", &ComponentFault::Restart("etcd")).await
}

/// The whole KubeVirt simulator (its webhooks and controllers) frozen for 20 s a random
/// moment into the drain: migrations are neither admitted nor moved on, evictions wait for
/// the webhook's 10 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_frozen_mid_drain_loses_nothing() -> Result<()> {
    let fault = ComponentFault::Freeze("kubevirt-sim", Duration::from_secs(20));
    own_runs("CHAOS_KUBEVIRT_RUNS", &fault).await
}

impl ComponentFault {
    fn component(self) -> &'static str {
        match self {
            ComponentFault::Freeze(name, _) | ComponentFault::Restart(name) => name,
        }
    }
}

impl Fault for ComponentFault {
    type Injected = ();

    fn describe(&self) -> String {
        match *self {
            ComponentFault::Freeze(name, d) => format!("{name} frozen (SIGSTOP) {}s", d.as_secs()),
            ComponentFault::Restart(name) => format!("{name} restarted (SIGKILL)"),
        }
    }

    fn prefix(&self) -> String {
        let name = self.component();
        name.split('-').next_back().unwrap_or(name).into()
    }

    async fn inject(&self, run: &mut Run) -> Result<()> {
        let cluster = run.own_cluster()?;
        let control_plane = cluster.owned_control_plane()?;
        tokio::time::sleep(Duration::from_millis(run.rng.random_range(500..4000))).await;
        let at = run.since_request();
        match *self {
            ComponentFault::Freeze(name, duration) => {
                control_plane.pause(name)?;
                tokio::time::sleep(duration).await;
                control_plane.resume(name)?;
                let resumed = run.since_request();
                run.record.injected.push(format!(
                    "{name} frozen at {at:.2} s, resumed at {resumed:.2} s"
                ));
            }
            ComponentFault::Restart(name) => {
                control_plane.restart(name)?;
                run.record
                    .injected
                    .push(format!("{name} killed and started again at {at:.2} s"));
            }
        }
        control_plane.wait_ready(Duration::from_secs(120)).await?;
        let at = run.since_request();
        run.record
            .injected
            .push(format!("the cluster answered again at {at:.2} s"));
        Ok(())
    }
}

// --- KubeVirt's webhooks refusing -------------------------------------------------------

/// KubeVirt's admission webhooks unreachable (virt-api down, its controllers up) while a VMI
/// whose migrations fail is handed to KubeVirt: vacate's one attempt fails and it evicts the
/// virt-launcher pod, which KubeVirt's webhook turns into an evacuation. That webhook's
/// failurePolicy is Fail (as in KubeVirt), so while it is down the API server must refuse the
/// eviction (checked with dry runs at the end of the outage), and vacate must wait and try
/// again, never evicting a virt-launcher pod past it. The webhooks are pointed at a closed port from
/// a random moment (0–1 s) after vacate's first migration of a failing VMI for
/// `CHAOS_WEBHOOK_OUTAGE` seconds (default 20); then the migrations stop failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_webhooks_down_while_a_vmi_is_evicted_loses_nothing() -> Result<()> {
    let outage = Duration::from_secs(env_number("CHAOS_WEBHOOK_OUTAGE", 20)?);
    own_runs("CHAOS_WEBHOOK_RUNS", &WebhooksDown { outage }).await
}

struct WebhooksDown {
    outage: Duration,
}

/// The VMs whose migrations fail until the webhooks are back.
const FAILING: [&str; 2] = ["vm-0", "vm-1"];

impl Fault for WebhooksDown {
    type Injected = ();

    fn describe(&self) -> String {
        format!("KubeVirt's webhooks refusing {}s", self.outage.as_secs())
    }

    fn prefix(&self) -> String {
        "webhooks".into()
    }

    fn vms(&self, _rng: &mut StdRng) -> Vec<Vm> {
        (0..6)
            .map(|i| Vm::migratable(format!("vm-{i}")))
            .map(|vm| {
                if FAILING.contains(&vm.name.as_str()) {
                    vm.annotate(FAILURE_RATE, "1")
                } else {
                    vm
                }
            })
            .collect()
    }

    async fn start(&self, run: &Run) -> Result<Vec<(String, Vacate)>> {
        // One attempt: a failed migration hands the VMI to KubeVirt at once.
        let config = FAST.replace("[migration]\n", "[migration]\nmax_attempts = 1\n");
        Ok(vec![("vacate".into(), run.env.vacate(&config).await?)])
    }

    async fn inject(&self, run: &mut Run) -> Result<()> {
        let (env, monitor) = (&run.env, &run.monitor);
        env.wait(
            "vacate's first migration of a VMI whose migrations fail",
            Duration::from_secs(60),
            || async {
                Ok(FAILING
                    .iter()
                    .any(|vm| !monitor.migrations_of(vm).is_empty()))
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(run.rng.random_range(0..1000))).await;
        // A port nobody listens on: the API server's calls are refused at once.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let saved = point_webhooks(&env.client, &format!("https://127.0.0.1:{dead}/")).await?;
        let down_at = run.since_request();
        tokio::time::sleep(self.outage).await;
        let probe = probe_launcher_evictions(env, &run.node).await?;
        restore_webhooks(&env.client, &saved).await?;
        let up_at = run.since_request();
        run.record.injected.push(format!(
            "webhooks refusing from {down_at:.2} s to {up_at:.2} s"
        ));
        // The cause of the failures goes away: KubeVirt's evacuation can move them.
        let env = &run.env;
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(env.client.clone(), env.ns.name());
        for vm in FAILING {
            vmis.patch(
                vm,
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"annotations": {FAILURE_RATE: null}}}),
                ),
            )
            .await?;
        }
        let vacate = &run.replicas[0].1;
        let evicted = vacate
            .metric("vacate_evictions_total{kind=\"vmi\",result=\"evicted\"}")
            .await
            .unwrap_or(0.0);
        let refused = vacate
            .metric("vacate_evictions_total{kind=\"vmi\",result=\"refused\"}")
            .await
            .unwrap_or(0.0);
        let held = vacate
            .metric("vacate_reconcile_errors_total{error=\"kubevirt_unavailable\"}")
            .await
            .unwrap_or(0.0);
        let migrations = FAILING.map(|vm| run.monitor.migrations_of(vm));
        run.record.evidence.push(format!(
            "during the outage: virt-launcher evictions {evicted} let through, {refused} answered \
             429 by KubeVirt, {held} held back (KubeVirt unavailable: its webhook not answering); \
             vacate's migrations of the failing VMIs: {migrations:?}"
        ));
        if evicted > 0.0 {
            run.record.violations.push(format!(
                "{evicted} virt-launcher pods evicted while KubeVirt's webhook was down"
            ));
        }
        run.record.evidence.push(format!(
            "dry-run evictions of the virt-launcher pods left on the node at the end of the \
             outage: {} refused by the API server, {} let through",
            probe.refused, probe.let_through
        ));
        if probe.let_through > 0 {
            run.record.violations.push(format!(
                "{} virt-launcher evictions let through while KubeVirt's webhook (failurePolicy \
                 Fail) was down",
                probe.let_through
            ));
        }
        Ok(())
    }
}

/// The URLs of KubeVirt's admission webhooks, by configuration.
struct WebhookUrls {
    validating: Vec<(String, Vec<Option<String>>)>,
    mutating: Vec<(String, Vec<Option<String>>)>,
}

/// Points every KubeVirt admission webhook at `url`; returns the URLs it had.
async fn point_webhooks(client: &kube::Client, url: &str) -> Result<WebhookUrls> {
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut saved = WebhookUrls {
        validating: Vec::new(),
        mutating: Vec::new(),
    };
    let lp = ListParams::default().labels("kubevirt.io in (virt-api-validator,virt-api-mutator)");
    for mut config in validating.list(&lp).await? {
        let webhooks = config.webhooks.get_or_insert_default();
        let urls = webhooks
            .iter_mut()
            .map(|w| w.client_config.url.replace(url.to_string()))
            .collect();
        validating
            .replace(&config.name_any(), &PostParams::default(), &config)
            .await?;
        saved.validating.push((config.name_any(), urls));
    }
    for mut config in mutating.list(&lp).await? {
        let webhooks = config.webhooks.get_or_insert_default();
        let urls = webhooks
            .iter_mut()
            .map(|w| w.client_config.url.replace(url.to_string()))
            .collect();
        mutating
            .replace(&config.name_any(), &PostParams::default(), &config)
            .await?;
        saved.mutating.push((config.name_any(), urls));
    }
    anyhow::ensure!(
        !saved.validating.is_empty() && !saved.mutating.is_empty(),
        "KubeVirt's webhook configurations were not found"
    );
    Ok(saved)
}

/// Puts back the URLs [`point_webhooks`] replaced.
async fn restore_webhooks(client: &kube::Client, saved: &WebhookUrls) -> Result<()> {
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for (name, urls) in &saved.validating {
        let mut config = validating.get(name).await?;
        for (w, url) in config.webhooks.get_or_insert_default().iter_mut().zip(urls) {
            w.client_config.url = url.clone();
        }
        validating
            .replace(name, &PostParams::default(), &config)
            .await?;
    }
    for (name, urls) in &saved.mutating {
        let mut config = mutating.get(name).await?;
        for (w, url) in config.webhooks.get_or_insert_default().iter_mut().zip(urls) {
            w.client_config.url = url.clone();
        }
        mutating
            .replace(name, &PostParams::default(), &config)
            .await?;
    }
    Ok(())
}

struct EvictionProbe {
    refused: usize,
    let_through: usize,
}

/// Dry-run evictions of every running virt-launcher pod on `node`: while KubeVirt's webhook
/// is down (failurePolicy Fail) the API server must refuse each of them.
async fn probe_launcher_evictions(env: &Env, node: &str) -> Result<EvictionProbe> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), env.ns.name());
    let mut probe = EvictionProbe {
        refused: 0,
        let_through: 0,
    };
    let params = kube::api::EvictParams {
        post_options: PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        ..Default::default()
    };
    for pod in env.pods_on(node).await? {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || !pod.name_any().starts_with("virt-launcher-") {
            continue;
        }
        match pods.evict(&pod.name_any(), &params).await {
            Ok(_) => probe.let_through += 1,
            Err(_) => probe.refused += 1,
        }
    }
    Ok(probe)
}
