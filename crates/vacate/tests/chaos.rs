//! Chaos: vacate killed with SIGKILL at random moments of a drain and started again, and the
//! invariants checked after every run. `make test` runs a few runs with a fixed seed; `make
//! chaos` runs many and writes the figures to docs/reliability.md.
//!
//! `CHAOS_RUNS` (default 2), `CHAOS_FAILING_RUNS` (runs where 30% of the migrations fail as
//! well; default 1) and `CHAOS_SEED` (default 1) choose the runs; with `CHAOS_OUT` set, each
//! run's record is appended to that file as one JSON line.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kube::ResourceExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;
use vacate::planner::Phase;

const DRAIN: Duration = Duration::from_secs(240);

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
    /// The faults of the run besides the kills.
    faults: String,
    /// Seconds after the request at which vacate was killed.
    kills_at: Vec<f64>,
    drain_seconds: f64,
    vmis: usize,
    migrations: usize,
    violations: Vec<String>,
}

/// What a run injects besides the kills.
#[derive(Clone, Copy)]
struct Faults {
    /// Share of migrations that fail halfway (the simulator's per-VMI annotation).
    failure_rate: Option<&'static str>,
}

impl Faults {
    fn describe(self) -> String {
        match self.failure_rate {
            Some(rate) => format!("SIGKILL, {rate} of migrations failing"),
            None => "SIGKILL".into(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() -> Result<()> {
    let runs = env_number("CHAOS_RUNS", 2)?;
    let seed = env_number("CHAOS_SEED", 1)?;
    runs_of(0..runs, seed, Faults { failure_rate: None }).await
}

/// Migrations failing at random on top of the kills: vacate retries them, and after its
/// attempts hands the VMI to KubeVirt (an eviction its evacuation turns into a migration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_migrations_and_sigkill_lose_nothing() -> Result<()> {
    let runs = env_number("CHAOS_FAILING_RUNS", 1)?;
    let seed = env_number("CHAOS_SEED", 1)?;
    // Run numbers after the plain runs' keep the records apart.
    let first = env_number("CHAOS_RUNS", 2)?;
    let faults = Faults {
        failure_rate: Some("0.3"),
    };
    runs_of(first..first + runs, seed, faults).await
}

async fn runs_of(runs: std::ops::Range<u64>, seed: u64, faults: Faults) -> Result<()> {
    let mut failed = Vec::new();
    for run in runs {
        let record = one_run(run, seed.wrapping_add(run), faults).await?;
        println!(
            "run {run} ({}): killed at {:?} s, drained in {:.1} s, {} violations",
            record.faults,
            record.kills_at,
            record.drain_seconds,
            record.violations.len()
        );
        if let Ok(path) = std::env::var("CHAOS_OUT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {path}"))?;
            writeln!(file, "{}", serde_json::to_string(&record)?)?;
        }
        if !record.violations.is_empty() {
            failed.push(format!("run {run}: {:?}", record.violations));
        }
    }
    anyhow::ensure!(failed.is_empty(), "invariants violated: {failed:#?}");
    Ok(())
}

/// One drain of a busy node, vacate killed one to three times at random moments.
async fn one_run(run: u64, seed: u64, faults: Faults) -> Result<RunRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new(&format!("chaos{run}"), 3).await?;
    let node = env.node(0).to_string();
    let vms = (0..6)
        .map(|i| {
            let vm = Vm::migratable(format!("vm-{i}"));
            match faults.failure_rate {
                Some(rate) => vm.annotate("simulator.vacate.io/migration-failure-rate", rate),
                None => vm,
            }
        })
        .collect();
    env.busy_node_with(0, vms, 2, 1).await?;
    let before: BTreeMap<String, String> = env
        .vmis()
        .await?
        .iter()
        .map(|v| (v.name_any(), v.uid().unwrap_or_default()))
        .collect();
    let (monitor, _watch) = MigrationMonitor::start(&env);

    let mut vacate = env.vacate(FAST).await?;
    let requested = Instant::now();
    env.request(&node, Some("true")).await?;
    let mut kills_at = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let wait = Duration::from_millis(rng.random_range(100..4000));
        tokio::time::sleep(wait).await;
        vacate.kill();
        kills_at.push((requested.elapsed().as_secs_f64() * 100.0).round() / 100.0);
        vacate = env.vacate(FAST).await?;
    }
    let mut violations = Vec::new();
    let drained = env.wait_phase(&node, Phase::Drained, DRAIN).await;
    let drain_seconds = requested.elapsed().as_secs_f64();
    if let Err(error) = &drained {
        violations.push(format!("the drain did not end Drained: {error:#}"));
    }

    // Every VMI still exists (none deleted: all could migrate), runs, and not on the node.
    let after = env.vmis().await?;
    for (name, uid) in &before {
        match after.iter().find(|v| &v.name_any() == name) {
            None => violations.push(format!("VMI {name} is gone")),
            Some(v) if v.uid().as_ref() != Some(uid) => {
                violations.push(format!("VMI {name} was deleted and created again"))
            }
            Some(v) if !v.is_running() || v.node_name() == Some(node.as_str()) => {
                violations.push(format!(
                    "VMI {name} is {:?} on {:?}",
                    v.status.as_ref().and_then(|s| s.phase),
                    v.node_name()
                ))
            }
            Some(_) => {}
        }
    }
    // Without failures one migration per VMI; never two of a VMI at once, never more than
    // the node's limit at once.
    let per_vmi = monitor.per_vmi();
    for (vmi, migrations) in &per_vmi {
        if faults.failure_rate.is_none() && migrations.len() != 1 {
            violations.push(format!("VMI {vmi} got migrations {migrations:?}"));
        }
    }
    if monitor.max_concurrent_per_vmi() > 1 {
        violations.push("a VMI had two of vacate's migrations in flight at once".into());
    }
    if monitor.max_in_flight_on(&node) > 2 {
        violations.push(format!(
            "{} migrations in flight on the node (limit 2)",
            monitor.max_in_flight_on(&node)
        ));
    }
    // The maintenance ends: vacate's cordon is lifted, no other node was cordoned.
    env.request(&node, None).await?;
    match env.wait_idle(&node, Duration::from_secs(60)).await {
        Ok(n) if is_unschedulable(&n) => violations.push("the node stayed cordoned".into()),
        Ok(_) => {}
        Err(error) => violations.push(format!("the maintenance did not end: {error:#}")),
    }
    for other in [env.node(1), env.node(2)] {
        if is_unschedulable(&env.get_node(other).await?) {
            violations.push(format!("node {other} was cordoned"));
        }
    }
    if !vacate.running() {
        violations.push("the last vacate exited".into());
    }
    Ok(RunRecord {
        run,
        seed,
        faults: faults.describe(),
        kills_at,
        drain_seconds: (drain_seconds * 100.0).round() / 100.0,
        vmis: before.len(),
        migrations: per_vmi.values().map(Vec::len).sum(),
        violations,
    })
}
