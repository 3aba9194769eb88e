//! Migration timing as a watch sees it, measured with the test's own sub-second clock: a
//! migration takes the time its memory copy and target preparation are due to take (never
//! less, not much more), and a migration moves on as soon as its target pod is Ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kubevirt_api::labels::MIGRATION_JOB_LABEL;
use kubevirt_api::{MigrationPhase, VirtualMachineInstanceMigration};
use kubevirt_sim::settings::{
    CliDefaults, ClusterConfig, DEFAULT_TIME_SCALE, EFFECTIVE_BANDWIDTH_ANNOTATION,
    TARGET_PREPARATION,
};
use serde_json::json;
use tokio::time::Instant;

use crate::support::{Env, KUBEVIRT_CR, TIMEOUT};

/// What a watch on a namespace's migrations and target pods saw, and when it first saw it.
#[derive(Default)]
struct Seen {
    /// Migration name → phase → first seen in that phase.
    phases: HashMap<String, HashMap<MigrationPhase, Instant>>,
    /// Migration name → UID.
    uids: HashMap<String, String>,
    /// Migration UID → its target pod first seen Ready.
    target_ready: HashMap<String, Instant>,
}

/// A watch of the test namespace's migrations and target pods, running until dropped.
struct Observer {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

enum Event {
    Migration(Box<VirtualMachineInstanceMigration>),
    Pod(Box<Pod>),
}

impl Observer {
    async fn start(env: &Env) -> Result<Observer> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let migrations = watcher(env.migrations(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .map(|m| m.map(|m| Event::Migration(Box::new(m))));
        let pods = watcher(
            env.pods(),
            watcher::Config::default().labels(MIGRATION_JOB_LABEL),
        )
        .default_backoff()
        .applied_objects()
        .map(|p| p.map(|p| Event::Pod(Box::new(p))));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(futures::stream::select(migrations, pods));
            while let Some(event) = events.next().await {
                let at = Instant::now();
                let Ok(mut seen) = record.lock() else { return };
                match event {
                    Ok(Event::Migration(m)) => {
                        let name = m.metadata.name.clone().unwrap_or_default();
                        if let Some(uid) = m.metadata.uid.clone() {
                            seen.uids.insert(name.clone(), uid);
                        }
                        if let Some(phase) = m.phase() {
                            seen.phases
                                .entry(name)
                                .or_default()
                                .entry(phase)
                                .or_insert(at);
                        }
                    }
                    Ok(Event::Pod(p)) => {
                        let uid = p
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(MIGRATION_JOB_LABEL))
                            .cloned()
                            .unwrap_or_default();
                        if kubevirt_sim::controllers::pod_is_ready(&p) {
                            seen.target_ready.entry(uid).or_insert(at);
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        // Let the watches start before anything is created.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Observer { seen, task })
    }

    /// Waits until the watch has seen the migration final; returns when it saw it so.
    async fn final_seen(&self, name: &str) -> Result<(MigrationPhase, Instant)> {
        let until = Instant::now() + TIMEOUT;
        loop {
            {
                let seen = self.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                if let Some(found) = seen.phases.get(name).and_then(|phases| {
                    phases
                        .iter()
                        .filter(|(p, _)| p.is_final())
                        .map(|(p, at)| (*p, *at))
                        .min_by_key(|(_, at)| *at)
                }) {
                    return Ok(found);
                }
            }
            ensure!(Instant::now() < until, "migration {name} never final");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How long migration `name` was seen in Scheduling after its target pod was seen Ready.
    fn scheduling_after_ready(&self, name: &str) -> Result<Duration> {
        let seen = self.seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let uid = seen.uids.get(name).context("migration never seen")?;
        let ready = *seen
            .target_ready
            .get(uid)
            .with_context(|| format!("the target pod of {name} never seen Ready"))?;
        let moved_on = seen
            .phases
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(p, _)| **p >= MigrationPhase::Scheduled)
            .map(|(_, at)| *at)
            .min()
            .with_context(|| format!("{name} never seen past Scheduling"))?;
        Ok(moved_on.saturating_duration_since(ready))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A migration whose preparation and copy are due to take 2.476 s (2 simulated seconds of
/// target preparation and 1 GiB at 45 MiB/s, 22.76 simulated seconds, at time scale 10)
/// takes, from the create request to the watch showing it Succeeded, never less than that,
/// and not a second or two more. Repeated, so that start times fall at different fractions
/// of a second (whole-second timestamps let migrations end up to a second early).
#[tokio::test]
async fn a_migration_takes_its_due_time_to_the_fraction_of_a_second() -> Result<()> {
    // The default configuration: time scale 10, no bandwidth limit on the KubeVirt CR.
    let _default_config = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-timing", 3).await?;
    let bandwidth = "45Mi";
    let vmi = env.vmi("exact", "1Gi", Some("LiveMigrate"), |v| {
        v["metadata"]["annotations"][EFFECTIVE_BANDWIDTH_ANNOTATION] = json!(bandwidth);
    });
    env.start_vmis(&[vmi]).await?;
    let cfg = ClusterConfig::from_kubevirt(None, &CliDefaults::time_scale(DEFAULT_TIME_SCALE));
    let due = cfg.real(TARGET_PREPARATION)
        + cfg.migration_duration(1 << 30, Some(45.0 * 1024.0 * 1024.0));
    // Scheduling, pod start (kwok) and the watch's delay come on top.
    let margin = Duration::from_secs(2);

    let observer = Observer::start(&env).await?;
    let mut took = Vec::new();
    for _ in 0..4 {
        let created = Instant::now();
        let name = env
            .migrate("exact")
            .await?
            .metadata
            .name
            .unwrap_or_default();
        let (phase, at) = observer.final_seen(&name).await?;
        ensure!(phase == MigrationPhase::Succeeded, "{name}: {phase:?}");
        took.push(at.duration_since(created));
    }
    println!("due {due:?}, took {took:?}");
    for t in &took {
        ensure!(
            *t >= due && *t < due + margin,
            "migrations took {took:?}, due {due:?} (at most {margin:?} more)"
        );
    }
    Ok(())
}

/// Migrations one after the other, two VMIs at a time: once the target pod is Ready, no
/// migration stays in Scheduling for as long as the controller's periodic re-check (5 s):
/// the pod's change wakes it.
#[tokio::test]
async fn a_migration_leaves_scheduling_when_its_target_pod_is_ready() -> Result<()> {
    let env = Env::new("sim-ready", 3).await?;
    let names = ["prompt0", "prompt1"];
    let vmis: Vec<_> = names
        .iter()
        .map(|n| env.vmi(n, "1Gi", Some("LiveMigrate"), |_| {}))
        .collect();
    env.start_vmis(&vmis).await?;
    let observer = Observer::start(&env).await?;
    let rounds = 5;
    let chains = names.iter().map(|vmi| {
        let env = &env;
        let observer = &observer;
        async move {
            let mut migrations = Vec::new();
            for _ in 0..rounds {
                let name = env.migrate(vmi).await?.metadata.name.unwrap_or_default();
                let (phase, _) = observer.final_seen(&name).await?;
                ensure!(phase == MigrationPhase::Succeeded, "{name}: {phase:?}");
                migrations.push(name);
            }
            anyhow::Ok(migrations)
        }
    });
    let migrations: Vec<String> = futures::future::try_join_all(chains)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let mut waits = Vec::new();
    for name in &migrations {
        waits.push((name.clone(), observer.scheduling_after_ready(name)?));
    }
    println!("in Scheduling after the target pod was Ready: {waits:?}");
    ensure!(
        waits.iter().all(|(_, w)| *w < Duration::from_secs(2)),
        "in Scheduling after the target pod was Ready: {waits:?}"
    );
    Ok(())
}
