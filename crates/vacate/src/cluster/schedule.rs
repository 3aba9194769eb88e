//! Scheduled maintenance: at a schedule's cron time vacate puts the request label on every
//! node the schedule selects; the fleet limits and the schedule's concurrency then let them
//! drain a few at a time, and the planner ends each node's maintenance after the hold.
//!
//! A rollout's progress is the labels and state annotations on its nodes, so a restarted or
//! newly elected vacate simply carries on. Which run was started last is recorded in a
//! ConfigMap, so a run is started once even across failovers, and a run missed while no
//! vacate led (by less than `start_deadline`) is started late rather than lost.
//! tokio-cron-scheduler wakes the runner at each cron time; a periodic check covers a
//! leader that took over just after one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;

use super::cached::CachedNode;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_cron_scheduler::{Job, JobScheduler};

use super::Context;
use crate::config::ScheduleConfig;
use crate::error::{Error, Result};

/// The ConfigMap holding the last run of every schedule.
pub const RECORD_NAME: &str = "vacate-schedules";
const CHECK_EVERY: Duration = Duration::from_secs(15);

/// The request label value of a run: the schedule's name and the run's time.
pub fn request_value(schedule: &ScheduleConfig, run: DateTime<Utc>) -> String {
    format!("{}.{}", schedule.name, run.format("%Y%m%dT%H%M%SZ"))
}

/// The run a schedule should have started by `now`, if it is not too late to start it.
pub fn due_run(schedule: &ScheduleConfig, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let run = schedule.cron.previous(now, &schedule.timezone)?;
    let late = (now - run).to_std().unwrap_or_default();
    (late <= schedule.start_deadline.get()).then_some(run)
}

/// Last runs read back from the record.
pub fn parse_record(cm: &ConfigMap) -> BTreeMap<String, DateTime<Utc>> {
    cm.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| (k.clone(), t.with_timezone(&Utc)))
        })
        .collect()
}

pub async fn read_record(client: &kube::Client, namespace: &str) -> Result<Option<ConfigMap>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.get_opt(RECORD_NAME).await.map_err(Error::kube(format!(
        "reading ConfigMap {namespace}/{RECORD_NAME}"
    )))
}

/// Starts the runs of every schedule as they come due, until `stop` turns true. Call it
/// once the watch caches are filled.
pub async fn run(ctx: Arc<Context>, namespace: String, mut stop: watch::Receiver<bool>) {
    if ctx.config.schedules.is_empty() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let scheduler = match start_scheduler(&ctx, tx).await {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "the cron scheduler did not start; schedules are checked every {CHECK_EVERY:?} instead");
            None
        }
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = rx.recv() => {
                // The cron time is reached; the cache may lag by a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        if let Err(error) = check(&ctx, &namespace).await {
            ctx.metrics.record_error(&error);
            tracing::warn!(%error, "checking the maintenance schedules failed; retrying");
        }
    }
    if let Some(mut scheduler) = scheduler {
        let _ = scheduler.shutdown().await;
    }
}

async fn start_scheduler(
    ctx: &Arc<Context>,
    tx: mpsc::UnboundedSender<()>,
) -> std::result::Result<JobScheduler, tokio_cron_scheduler::JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    for schedule in &ctx.config.schedules {
        let tx = tx.clone();
        let job = Job::new_async_tz(
            schedule.cron.six_fields(),
            schedule.timezone.0,
            move |_, _| {
                let tx = tx.clone();
                Box::pin(async move {
                    let _ = tx.send(());
                })
            },
        )?;
        scheduler.add(job).await?;
    }
    scheduler.start().await?;
    Ok(scheduler)
}

/// Starts every run that is due and not recorded as started.
async fn check(ctx: &Arc<Context>, namespace: &str) -> Result<()> {
    let now = Utc::now();
    let record = read_record(&ctx.client, namespace).await?;
    let last = record.as_ref().map(parse_record).unwrap_or_default();
    for schedule in &ctx.config.schedules {
        let last_run = last.get(&schedule.name).copied();
        if let Some(t) = last_run {
            ctx.metrics.record_schedule_run(&schedule.name, t);
        }
        ctx.metrics
            .record_schedule_next(&schedule.name, schedule.cron.next(now, &schedule.timezone));
        let Some(run) = due_run(schedule, now) else {
            continue;
        };
        if last_run.is_some_and(|t| t >= run) {
            continue;
        }
        start_run(ctx, schedule, run).await?;
        // Recorded after the labels: a vacate that dies in between labels the same nodes
        // again on its return, which changes nothing.
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": RECORD_NAME,
                "labels": {"app.kubernetes.io/managed-by": "vacate"},
            },
            "data": {&schedule.name: run.to_rfc3339()},
        });
        // One field manager per schedule: server-side apply removes the keys a manager
        // stops sending, so a shared manager would erase the other schedules' runs.
        api.patch(
            RECORD_NAME,
            &PatchParams::apply(&format!("vacate-schedule-{}", schedule.name)).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(Error::kube(format!(
            "recording the run of schedule {} in ConfigMap {namespace}/{RECORD_NAME}",
            schedule.name
        )))?;
        ctx.metrics.record_schedule_run(&schedule.name, run);
    }
    Ok(())
}

async fn start_run(
    ctx: &Arc<Context>,
    schedule: &ScheduleConfig,
    run: DateTime<Utc>,
) -> Result<()> {
    let config = &ctx.config;
    let value = request_value(schedule, run);
    let nodes: Vec<Arc<CachedNode>> = ctx
        .stores
        .nodes
        .state()
        .into_iter()
        .filter(|n| {
            config.node.selector.matches(n.labels()) && schedule.selector.matches(n.labels())
        })
        .collect();
    let mut labelled = Vec::new();
    for node in &nodes {
        let name = node.name_any();
        if node.labels().contains_key(&config.node.request_label) {
            // Already in maintenance for another reason; the rollout does not take it over.
            continue;
        }
        super::set_node_label(&ctx.client, &name, &config.node.request_label, Some(&value)).await?;
        labelled.push(name);
    }
    tracing::info!(
        schedule = %schedule.name,
        run = %run,
        nodes = labelled.len(),
        "scheduled maintenance started: {}",
        labelled.join(", ")
    );
    Ok(())
}
