//! Live migrations, after virt-controller's migration controller
//! (`pkg/virt-controller/watch/migration/migration.go`) and the parts virt-handler plays on the
//! source and target nodes.
//!
//! Phases, as `processMigrationPhase` moves them:
//! * (unset) → `Pending` (or `Failed` when another unfinished migration owns the VMI,
//!   `canMigrateVMI`);
//! * `Pending` → `Scheduling` once the target pod is created, which only happens while fewer
//!   than `parallelMigrationsPerCluster` migrations run in the cluster and fewer than
//!   `parallelOutboundMigrationsPerNode` leave the VMI's node; otherwise the migration waits
//!   in Pending and is looked at again (KubeVirt re-enqueues after 5 s). Following v1.9.0
//!   (not v1.7.4, whose `MigrationPriorityQueue` gate is off by default), the controller's
//!   work queue is a priority queue: Pending migrations take free slots in the order of
//!   [`queue_order`] (priority from `spec.priority`, then the order they entered the queue),
//!   and re-checks come after 1 s, 3 s or 5 s by priority (`getRequeueDelayForPriority`);
//! * `Scheduling` → `Scheduled` when the real scheduler has placed the target pod (with its
//!   anti-affinity to the VMI's pods, so cordoned nodes and the source node are avoided) and
//!   it runs; a target pod left unschedulable for 5 minutes (15 for any other reason) fails
//!   the migration (`defaultUnschedulablePendingTimeoutSeconds`, scaled);
//! * `Scheduled` → `PreparingTarget` when the migration is handed off: the VMI's
//!   `status.migrationState` names source and target;
//! * `PreparingTarget` → `TargetReady` when the target "domain" is prepared;
//! * `TargetReady` → `Running` when the source starts sending memory (`startTimestamp`);
//! * `Running` → `Succeeded` after guest memory / bandwidth (scaled); the VMI's node, label
//!   and `migrationState` move to the target and the source virt-launcher exits: its pod
//!   turns `Succeeded` and stays (nothing deletes it but the VMI's end or, in v1.9, the
//!   garbage collection of old migrations).
//!
//! Target preparation and the copy are timed from the instant this process moved the
//! migration into `PreparingTarget` and `Running` ([`super::PhaseClocks`]), to the fraction of
//! a second, and end exactly when due; the API's whole-second timestamps (phase transitions,
//! `startTimestamp`) are only read after a restart. API-visible timestamps are set as
//! KubeVirt sets them.
//!
//! Deleting an unfinished migration before the hand-off cancels it at once (target pod
//! deleted); after it, it only asks for an abort, which takes effect a simulated second after
//! the copy has started unless the copy ends first ([`abort_outcome`]); the finalizer is
//! removed once the migration is final so the deletion completes. At most five finished
//! migrations are kept per VMI (`garbageCollectFinalizedMigrations`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kubevirt_api::common::{Condition, PhaseTransitionTimestamp, condition_type, now};
use kubevirt_api::labels::{
    EVACUATION_MIGRATION_ANNOTATION, MIGRATION_FINALIZER, MIGRATION_JOB_LABEL,
    MIGRATION_JOB_NAME_ANNOTATION, MIGRATION_SELECTOR_LABEL, MIGRATION_TARGET_NODE_NAME_LABEL,
    NODE_NAME_LABEL,
};
use kubevirt_api::migration::migration_priority;
use kubevirt_api::{
    ConditionStatus, MigrationAbortStatus, MigrationPhase, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
    VirtualMachineInstanceMigrationStatus,
};
use serde_json::json;

use super::{
    Context, age, finish_launcher_pod, key_of, pod_is_down, pod_is_ready, pod_node,
    pod_unschedulable, replacing, retry_after_error, since,
};
use crate::error::{Error, Result, kube_not_found};
use crate::faults::FaultKnobs;
use crate::launcher;
use crate::settings::{
    ABORT_RESOLUTION, CATCH_ALL_PENDING_TIMEOUT, ClusterConfig, DEFAULT_GUEST_MEMORY,
    EFFECTIVE_BANDWIDTH_ANNOTATION, FINALIZED_MIGRATIONS_KEPT, TARGET_PREPARATION,
    UNSCHEDULABLE_PENDING_TIMEOUT,
};

pub async fn run(
    ctx: Arc<Context>,
    migrations: super::Subscription<VirtualMachineInstanceMigration>,
    pods: super::Subscription<Pod>,
    vmis: super::Subscription<VirtualMachineInstance>,
) {
    let vmi_ctx = ctx.clone();
    Controller::for_shared_stream(migrations, ctx.migrations.clone())
        // Every change of a target pod (added, changed, deleted) enqueues the migration it
        // names, as migration.go's addPod/updatePod/deletePod do (resolveControllerRef: the
        // `kubevirt.io/migrationJobName` annotation and `kubevirt.io/migrationJobUID` label),
        // so a target pod turning Ready moves the migration on at once.
        .watches_shared_stream(pods, |pod: Arc<Pod>| {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let is_target = pod
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(MIGRATION_JOB_LABEL));
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIGRATION_JOB_NAME_ANNOTATION))
                .filter(|_| is_target)
                .map(|name| ObjectRef::new(name).within(&ns))
        })
        // VMI changes (phase, migration state) concern its unfinished migrations.
        .watches_shared_stream(vmis, move |vmi: Arc<VirtualMachineInstance>| {
            let ns = vmi.metadata.namespace.clone().unwrap_or_default();
            let name = vmi.metadata.name.clone().unwrap_or_default();
            vmi_ctx
                .migrations_of_vmi(&ns, &name)
                .into_iter()
                .filter(|m| {
                    !m.is_final()
                        || m.metadata
                            .finalizers
                            .iter()
                            .flatten()
                            .any(|f| f == MIGRATION_FINALIZER)
                })
                .map(|m| ObjectRef::from_obj(m.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, retry_after_error, ctx)
        .for_each(|_| async {})
        .await;
}

/// Everything one reconcile needs about a migration.
struct Job<'a> {
    ctx: &'a Context,
    cfg: ClusterConfig,
    migration: &'a VirtualMachineInstanceMigration,
    namespace: String,
    name: String,
    uid: String,
    key: String,
}

async fn reconcile(
    migration: Arc<VirtualMachineInstanceMigration>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let job = Job {
        ctx: &ctx,
        cfg: ctx.config(),
        migration: &migration,
        namespace: migration
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingField("metadata.namespace"))?,
        name: migration
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?,
        uid: migration
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingField("metadata.uid"))?,
        key: key_of(migration.as_ref()),
    };
    job.ensure_selector_label().await?;

    let Some(vmi) = ctx.vmi(&job.namespace, &migration.spec.vmi_name) else {
        // migration.go deletes migrations of VMIs that are gone.
        job.forget_slot().await;
        if migration.metadata.deletion_timestamp.is_none() {
            job.api()
                .delete(&job.name, &DeleteParams::default())
                .await
                .map(|_| ())
                .or_else(ignore_not_found)?;
        }
        if !migration.is_final() {
            let mut status = migration.status.clone().unwrap_or_default();
            job.enter(
                &mut status,
                MigrationPhase::Failed,
                "Migration failed because vmi does not exist.",
            );
            job.write_status(&status).await?;
        }
        job.remove_finalizer().await?;
        return Ok(Action::await_change());
    };

    if migration.is_final() {
        return job.finalized(&vmi).await;
    }

    let old = migration.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let action = job.step(&vmi, &mut status).await?;
    job.write_status(&status).await?;
    if status.phase.is_some_and(MigrationPhase::is_final) {
        job.forget_slot().await;
        return Ok(Action::requeue(Duration::ZERO));
    }
    Ok(action)
}

/// First wait of an evacuation migration after a failed one (migration.go,
/// `handleMigrationBackoff`, v1.7.4 and v1.9.0); it doubles with each further failure.
const EVACUATION_BACKOFF: Duration = Duration::from_secs(20);

/// How much longer a Pending evacuation migration waits, after KubeVirt's
/// `handleMigrationBackoff`: among the VMI's evacuation migrations, newest first, if this one
/// is the newest, every failed one before it (up to a success; deleted ones skipped) doubles
/// a wait of 20 s that runs from the failure of the one just before it. Simulated time.
fn evacuation_backoff_left(
    migration: &VirtualMachineInstanceMigration,
    all: &[Arc<VirtualMachineInstanceMigration>],
    cfg: &ClusterConfig,
) -> Option<Duration> {
    let is_evacuation = |m: &VirtualMachineInstanceMigration| {
        m.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(EVACUATION_MIGRATION_ANNOTATION))
    };
    if !is_evacuation(migration) {
        return None;
    }
    let mut same_vmi: Vec<&VirtualMachineInstanceMigration> = all
        .iter()
        .map(Arc::as_ref)
        .filter(|m| {
            m.metadata.namespace == migration.metadata.namespace
                && m.spec.vmi_name == migration.spec.vmi_name
                && is_evacuation(m)
        })
        .collect();
    if same_vmi.len() < 2 {
        return None;
    }
    same_vmi.sort_by_key(|m| std::cmp::Reverse(m.metadata.creation_timestamp.clone()));
    if same_vmi[0].metadata.uid != migration.metadata.uid {
        return None;
    }
    let mut backoff = Duration::ZERO;
    for m in &same_vmi[1..] {
        match m.phase() {
            Some(MigrationPhase::Succeeded) => break,
            _ if m.metadata.deletion_timestamp.is_some() => continue,
            Some(MigrationPhase::Failed) => {
                backoff = if backoff.is_zero() {
                    EVACUATION_BACKOFF
                } else {
                    backoff * 2
                };
            }
            _ => {}
        }
    }
    if backoff.is_zero() {
        return None;
    }
    let failed_at = same_vmi[1].phase_entered_at(MigrationPhase::Failed)?;
    cfg.real(backoff).checked_sub(since(&failed_at.0))
}

/// The work-queue priority of a migration (`PriorityFromMigration`,
/// `pkg/util/migrations/migrations.go`, v1.9.0): `system-critical` 100, `user-triggered` 50,
/// `system-maintenance` 20, none (or unknown) 0.
pub fn queue_priority(migration: &VirtualMachineInstanceMigration) -> i32 {
    match migration.spec.priority.as_deref() {
        Some(migration_priority::SYSTEM_CRITICAL) => 100,
        Some(migration_priority::USER_TRIGGERED) => 50,
        Some(migration_priority::SYSTEM_MAINTENANCE) => 20,
        _ => 0,
    }
}

/// How long a Pending migration held back by a limit waits before it is looked at again
/// (`getRequeueDelayForPriority`, migration.go v1.9.0), simulated time.
fn requeue_delay_for_priority(priority: i32) -> Duration {
    match priority {
        p if p >= 100 => Duration::from_secs(1),
        p if p >= 50 => Duration::from_secs(3),
        _ => Duration::from_secs(5),
    }
}

/// The order in which Pending migrations get free slots with v1.9.0's priority queue
/// (controller-runtime's `priorityqueue`, `less`): higher priority first; among equal
/// priorities the one queued first, which for migrations waiting on the limits (each
/// re-queued after the same delay) is the one created first. Name breaks ties.
pub fn queue_order(
    migration: &VirtualMachineInstanceMigration,
) -> (
    std::cmp::Reverse<i32>,
    Option<k8s_openapi::jiff::Timestamp>,
    String,
) {
    (
        std::cmp::Reverse(queue_priority(migration)),
        migration.metadata.creation_timestamp.as_ref().map(|t| t.0),
        migration.metadata.name.clone().unwrap_or_default(),
    )
}

fn ignore_not_found<T: Default>(e: kube::Error) -> Result<T> {
    if kube_not_found(&e) {
        Ok(T::default())
    } else {
        Err(e.into())
    }
}

impl Job<'_> {
    fn api(&self) -> Api<VirtualMachineInstanceMigration> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    /// migration.go's `ensureSelectorLabelPresent` (the mutating webhook normally did it).
    async fn ensure_selector_label(&self) -> Result<()> {
        let has = self
            .migration
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MIGRATION_SELECTOR_LABEL))
            == Some(&self.migration.spec.vmi_name);
        if !has {
            let patch = json!({"metadata": {"labels": {MIGRATION_SELECTOR_LABEL: self.migration.spec.vmi_name}}});
            self.api()
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(())
    }

    /// Moves the status to a phase and stamps the transition.
    fn enter(
        &self,
        status: &mut VirtualMachineInstanceMigrationStatus,
        phase: MigrationPhase,
        why: &str,
    ) {
        if status.phase == Some(phase) {
            return;
        }
        tracing::info!(migration = %self.key, vmi = %self.migration.spec.vmi_name, from = ?status.phase, to = %phase, why, "migration phase");
        if !phase.is_final() {
            self.ctx.phase_clocks.entered(&self.uid, phase);
        }
        status.phase = Some(phase);
        status
            .phase_transition_timestamps
            .push(PhaseTransitionTimestamp {
                phase: Some(phase),
                phase_transition_timestamp: Some(now()),
            });
    }

    async fn write_status(&self, status: &VirtualMachineInstanceMigrationStatus) -> Result<()> {
        if Some(status) == self.migration.status.as_ref() {
            return Ok(());
        }
        // Conditional on the version read: a reconcile on a stale cache must not roll the
        // phase back.
        let patch = json!({
            "metadata": {"resourceVersion": self.migration.metadata.resource_version},
            "status": status,
        });
        self.api()
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn remove_finalizer(&self) -> Result<()> {
        let finalizers = self
            .migration
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == MIGRATION_FINALIZER) {
            return Ok(());
        }
        let kept: Vec<_> = finalizers
            .into_iter()
            .filter(|f| f != MIGRATION_FINALIZER)
            .collect();
        let patch = json!({"metadata": {"finalizers": kept, "resourceVersion": self.migration.metadata.resource_version}});
        self.api()
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .or_else(ignore_not_found)
    }

    async fn forget_slot(&self) {
        self.ctx.started_migrations.lock().await.remove(&self.uid);
        self.ctx.phase_clocks.forget(&self.uid);
        if let Ok(mut asked) = self.ctx.abort_requests.lock() {
            asked.remove(&self.uid);
        }
    }

    /// How long the migration has been in `phase`: on this process's clock when it moved the
    /// migration there itself, else (after a restart) from `api_timestamp`, which has whole
    /// seconds only.
    fn in_phase_for(
        &self,
        phase: MigrationPhase,
        api_timestamp: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    ) -> Duration {
        self.ctx
            .phase_clocks
            .in_phase_for(&self.uid, phase)
            .or_else(|| api_timestamp.map(|t| since(&t.0)))
            .unwrap_or_default()
    }

    fn target_pods(&self) -> Vec<Arc<Pod>> {
        self.ctx
            .launcher_pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(self.namespace.as_str())
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(MIGRATION_JOB_LABEL))
                        == Some(&self.uid)
            })
            .collect()
    }

    /// A finished migration: keep the VMI's final migration state, drop the finalizer, and
    /// garbage-collect old finished migrations of the VMI.
    async fn finalized(&self, vmi: &VirtualMachineInstance) -> Result<Action> {
        self.forget_slot().await;
        let mut status = self.migration.status.clone().unwrap_or_default();
        if let Some(state) = vmi.migration_state()
            && state.migration_uid.as_deref() == Some(self.uid.as_str())
            && status.migration_state.as_ref() != Some(state)
        {
            status.migration_state = Some(state.clone());
            self.write_status(&status).await?;
            return Ok(Action::requeue(Duration::ZERO));
        }
        self.remove_finalizer().await?;
        self.garbage_collect(vmi).await?;
        Ok(Action::await_change())
    }

    async fn garbage_collect(&self, vmi: &VirtualMachineInstance) -> Result<()> {
        let name = vmi.metadata.name.as_deref().unwrap_or_default();
        let mut finished: Vec<_> = self
            .ctx
            .migrations_of_vmi(&self.namespace, name)
            .into_iter()
            .filter(|m| m.is_final() && m.metadata.deletion_timestamp.is_none())
            .collect();
        if finished.len() <= FINALIZED_MIGRATIONS_KEPT {
            return Ok(());
        }
        finished.sort_by_key(|m| m.metadata.creation_timestamp.as_ref().map(|t| t.0));
        for old in &finished[..finished.len() - FINALIZED_MIGRATIONS_KEPT] {
            // v1.9.0 also deletes the pod the migration left behind: the target pod of a
            // failed one, the source pod of a successful one. v1.7.4 deletes the migration only.
            let defunct = old.migration_state().and_then(|s| {
                if s.failed {
                    s.target_pod.clone()
                } else if s.completed {
                    s.source_pod.clone()
                } else {
                    None
                }
            });
            if self.cfg.release.collects_defunct_pods()
                && let Some(pod) = defunct.filter(|p| !p.is_empty())
            {
                self.pods()
                    .delete(&pod, &DeleteParams::default())
                    .await
                    .map(|_| ())
                    .or_else(ignore_not_found)?;
            }
            if let Some(n) = old.metadata.name.as_deref() {
                self.api()
                    .delete(n, &DeleteParams::default())
                    .await
                    .map(|_| ())
                    .or_else(ignore_not_found)?;
            }
        }
        Ok(())
    }

    /// One step of the state machine; returns when to look again.
    async fn step(
        &self,
        vmi: &VirtualMachineInstance,
        status: &mut VirtualMachineInstanceMigrationStatus,
    ) -> Result<Action> {
        let targets = self.target_pods();
        let target = targets.first().map(|p| p.as_ref());
        if target.is_some() {
            self.ctx.pod_expectations.observed(&self.key);
        }
        let phase = status.phase;
        let owns_vmi_state = vmi
            .migration_state()
            .and_then(|s| s.migration_uid.as_deref())
            == Some(self.uid.as_str());
        let handed_off =
            owns_vmi_state && phase.is_some_and(|p| p >= MigrationPhase::PreparingTarget);
        let target_created = phase.is_some_and(|p| p >= MigrationPhase::Scheduling);

        if vmi.is_final() {
            self.fail(
                vmi,
                status,
                &targets,
                handed_off,
                "Migration failed vmi shutdown during migration.",
                false,
            )
            .await?;
            return Ok(Action::await_change());
        }
        if self.migration.metadata.deletion_timestamp.is_some() {
            if !status
                .conditions
                .iter()
                .any(|c| c.type_ == condition_type::MIGRATION_ABORT_REQUESTED)
            {
                status.conditions.push(Condition::new(
                    condition_type::MIGRATION_ABORT_REQUESTED,
                    ConditionStatus::True,
                    "",
                    "",
                ));
            }
            if !handed_off {
                // Before the hand-off a deletion cancels at once: the target pod is deleted
                // (`handlePreHandoffMigrationCancel`).
                self.fail(
                    vmi,
                    status,
                    &targets,
                    false,
                    "Migration failed due to being canceled",
                    false,
                )
                .await?;
                return Ok(Action::await_change());
            }
            // After it, the deletion only asks for an abort: the migration goes on until the
            // source has started sending memory, then virt-handler is asked to abort
            // (`markMigrationAbortInVmiStatus`, in [`Self::progress`]); the finalizer keeps
            // the object until the migration is final.
        }
        if let Some(pod) = target
            && pod_is_down(pod)
        {
            self.fail(
                vmi,
                status,
                &targets,
                handed_off,
                "Migration failed because target pod shutdown during migration",
                false,
            )
            .await?;
            return Ok(Action::await_change());
        }
        if target_created && target.is_none() && !self.ctx.pod_expectations.pending(&self.key) {
            self.fail(
                vmi,
                status,
                &targets,
                handed_off,
                "Migration target pod was removed during active migration.",
                false,
            )
            .await?;
            return Ok(Action::await_change());
        }
        if handed_off && vmi.migration_state().is_some_and(|s| s.failed) {
            self.fail(
                vmi,
                status,
                &targets,
                handed_off,
                "source node reported migration failed",
                false,
            )
            .await?;
            return Ok(Action::await_change());
        }

        match phase {
            None | Some(MigrationPhase::Unknown) => {
                if self.another_migration_owns(vmi) {
                    self.enter(status, MigrationPhase::Failed, "VMI is not eligible for migration because another migration job is in progress.");
                } else {
                    self.enter(status, MigrationPhase::Pending, "accepted");
                }
                Ok(Action::requeue(Duration::ZERO))
            }
            Some(MigrationPhase::Pending) => self.start_if_allowed(vmi, status, target).await,
            Some(MigrationPhase::Scheduling) => {
                let Some(pod) = target else {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                };
                if let (Some(node), true) = (pod_node(pod), pod_is_ready(pod)) {
                    let state = status.migration_state.get_or_insert_with(Default::default);
                    state.target_node = Some(node.to_string());
                    state.target_pod = pod.metadata.name.clone();
                    self.enter(status, MigrationPhase::Scheduled, "target pod is running");
                    return Ok(Action::requeue(Duration::ZERO));
                }
                let pending_for = age(&pod.metadata);
                let unschedulable = pod_unschedulable(pod);
                let timeout = if unschedulable.is_some() {
                    self.cfg.real(UNSCHEDULABLE_PENDING_TIMEOUT)
                } else {
                    self.cfg.real(CATCH_ALL_PENDING_TIMEOUT)
                };
                if pending_for >= timeout {
                    let why = match unschedulable {
                        Some(msg) => format!(
                            "Migration target pod was unschedulable for longer than the timeout: {msg}"
                        ),
                        None => "Migration target pod was pending for longer than the timeout"
                            .to_string(),
                    };
                    self.fail(vmi, status, &targets, false, &why, false).await?;
                    return Ok(Action::await_change());
                }
                Ok(Action::requeue(
                    (timeout - pending_for).min(Duration::from_secs(5)),
                ))
            }
            Some(MigrationPhase::Scheduled) => {
                self.hand_off(vmi, status).await?;
                Ok(Action::requeue(self.cfg.real(TARGET_PREPARATION)))
            }
            Some(MigrationPhase::PreparingTarget) => {
                let waited = self.in_phase_for(
                    MigrationPhase::PreparingTarget,
                    self.migration
                        .phase_entered_at(MigrationPhase::PreparingTarget),
                );
                let needed = self.cfg.real(TARGET_PREPARATION);
                if waited < needed {
                    return Ok(Action::requeue(needed - waited));
                }
                let state = self
                    .patch_vmi_state(vmi, |s| {
                        s.target_node_address = Some("10.0.0.1".into());
                        s.target_node_domain_detected = Some(true);
                    })
                    .await?;
                status.migration_state = Some(state);
                self.enter(
                    status,
                    MigrationPhase::TargetReady,
                    "target domain prepared",
                );
                Ok(Action::requeue(Duration::ZERO))
            }
            Some(MigrationPhase::TargetReady) => {
                let state = self
                    .patch_vmi_state(vmi, |s| {
                        if s.start_timestamp.is_none() {
                            s.start_timestamp = Some(now());
                        }
                        s.mode = Some("PreCopy".into());
                    })
                    .await?;
                status.migration_state = Some(state);
                self.enter(
                    status,
                    MigrationPhase::Running,
                    "source started sending memory",
                );
                Ok(Action::requeue(Duration::ZERO))
            }
            Some(MigrationPhase::Running) => self.progress(vmi, status, &targets).await,
            Some(MigrationPhase::Succeeded | MigrationPhase::Failed) => Ok(Action::await_change()),
        }
    }

    /// `canMigrateVMI`: the VMI's migration state belongs to another migration that is not final.
    fn another_migration_owns(&self, vmi: &VirtualMachineInstance) -> bool {
        let Some(other) = vmi.migration_state().and_then(|s| s.migration_uid.clone()) else {
            return false;
        };
        if other == self.uid || other.is_empty() {
            return false;
        }
        self.ctx
            .migrations
            .state()
            .iter()
            .any(|m| m.metadata.uid.as_deref() == Some(other.as_str()) && !m.is_final())
    }

    /// The Pending phase of `sync`: create the target pod when the limits allow.
    async fn start_if_allowed(
        &self,
        vmi: &VirtualMachineInstance,
        status: &mut VirtualMachineInstanceMigrationStatus,
        target: Option<&Pod>,
    ) -> Result<Action> {
        let priority_queue = self.cfg.release.priority_queue();
        let recheck = Action::requeue(if priority_queue {
            self.cfg
                .recheck_after(requeue_delay_for_priority(queue_priority(self.migration)))
        } else {
            self.cfg.recheck()
        });
        if let Some(pod) = target {
            // The target pod exists (created by an earlier sync whose status write did not
            // go through): the migration moves on to Scheduling whatever the limits say.
            // KubeVirt's `updateStatus` does so for any Pending migration with a target pod;
            // `handleTargetPodCreation`, with its checks, runs only while there is none
            // (pkg/virt-controller/watch/migration/migration.go).
            let source_pod = self.source_pod(vmi).and_then(|p| p.metadata.name.clone());
            let state = status.migration_state.get_or_insert_with(Default::default);
            state.migration_uid = Some(self.uid.clone());
            if state.source_node.is_none() {
                state.source_node = vmi.node_name().map(str::to_string);
            }
            if state.source_pod.is_none() {
                state.source_pod = source_pod;
            }
            state.target_pod = pod.metadata.name.clone();
            self.enter(status, MigrationPhase::Scheduling, "target pod created");
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        if !vmi.is_running() {
            return Ok(recheck);
        }
        if let Some(left) =
            evacuation_backoff_left(self.migration, &self.ctx.migrations.state(), &self.cfg)
        {
            tracing::info!(migration = %self.key, ?left, "vmi in migration backoff");
            return Ok(Action::requeue(left));
        }
        // "there are already multiple pods running for vmi" (`VMIActivePodsCount`: pods of
        // the VMI that have not finished), looked at again after 1 s.
        if self.ctx.unfinished_pods_of_vmi(vmi) > 1 {
            return Ok(Action::requeue(
                self.cfg.recheck_after(Duration::from_secs(1)),
            ));
        }
        let Some(source_node) = vmi.node_name().map(str::to_string) else {
            return Ok(recheck);
        };

        let mut started = self.ctx.started_migrations.lock().await;
        if !started.contains_key(&self.uid) && !self.ctx.pod_expectations.pending(&self.key) {
            // Count running migrations: those the cache shows past Pending, plus those this
            // process started and the cache does not show yet.
            let store = self.ctx.migrations.state();
            started.retain(|uid, _| {
                store
                    .iter()
                    .find(|m| m.metadata.uid.as_deref() == Some(uid.as_str()))
                    .is_none_or(|m| !m.is_final())
            });
            let mut running: HashMap<String, String> = started.clone();
            for m in store.iter().filter(|m| m.is_running()) {
                let uid = m.metadata.uid.clone().unwrap_or_default();
                let node = m
                    .source_node()
                    .map(str::to_string)
                    .or_else(|| {
                        self.ctx
                            .vmi(
                                m.metadata.namespace.as_deref().unwrap_or_default(),
                                &m.spec.vmi_name,
                            )
                            .and_then(|v| v.node_name().map(str::to_string))
                    })
                    .unwrap_or_default();
                running.entry(uid).or_insert(node);
            }
            running.remove(&self.uid);
            let cluster_limit = self.cfg.migrations.parallel_migrations_per_cluster() as usize;
            let node_limit = self.cfg.migrations.parallel_outbound_migrations_per_node() as usize;
            if priority_queue {
                // The Pending migrations ahead of this one in the priority queue take the
                // free slots first, each as far as its own node's limit allows.
                let ahead_of = queue_order(self.migration);
                let mut ahead: Vec<_> = store
                    .iter()
                    .filter(|m| {
                        m.phase() == Some(MigrationPhase::Pending)
                            && m.metadata.deletion_timestamp.is_none()
                            && m.metadata
                                .uid
                                .as_deref()
                                .is_some_and(|uid| uid != self.uid && !running.contains_key(uid))
                            && queue_order(m) < ahead_of
                    })
                    .collect();
                ahead.sort_by_key(|m| queue_order(m));
                for m in ahead {
                    if running.len() >= cluster_limit {
                        break;
                    }
                    let Some(node) = self.could_start(m, &store) else {
                        continue;
                    };
                    if running.values().filter(|n| **n == node).count() < node_limit {
                        tracing::debug!(migration = %self.key, ahead = %key_of(m.as_ref()), "waiting: a migration ahead in the priority queue goes first");
                        running.insert(m.metadata.uid.clone().unwrap_or_default(), node);
                    }
                }
            }
            if running.len() >= cluster_limit {
                tracing::debug!(migration = %self.key, running = running.len(), "waiting: cluster-wide migration limit reached");
                return Ok(recheck);
            }
            let outbound = running.values().filter(|n| **n == source_node).count();
            if outbound >= node_limit {
                tracing::debug!(migration = %self.key, node = %source_node, outbound, "waiting: outbound migration limit of the node reached");
                return Ok(recheck);
            }
            let knobs =
                FaultKnobs::from_annotations(vmi.metadata.annotations.as_ref(), &self.cfg.faults);
            let pod = launcher::render_target_pod(
                vmi,
                self.migration,
                knobs.target_unschedulable,
                self.cfg.release,
            )?;
            let created = self.pods().create(&PostParams::default(), &pod).await?;
            self.ctx.pod_expectations.expect(&self.key);
            started.insert(self.uid.clone(), source_node.clone());
            let state = status.migration_state.get_or_insert_with(Default::default);
            state.migration_uid = Some(self.uid.clone());
            state.source_node = Some(source_node.clone());
            state.source_pod = self.source_pod(vmi).and_then(|p| p.metadata.name.clone());
            state.target_pod = created.metadata.name.clone();
            tracing::info!(migration = %self.key, source = %source_node, target_pod = created.metadata.name.as_deref().unwrap_or(""), "created target pod");
        }
        drop(started);
        self.enter(status, MigrationPhase::Scheduling, "target pod created");
        Ok(Action::requeue(Duration::from_secs(1)))
    }

    /// The source node of another Pending migration if it could start now were there a
    /// free slot: its VMI runs on a node with a single active pod, it is not backing off and
    /// has no target pod on the way.
    fn could_start(
        &self,
        other: &VirtualMachineInstanceMigration,
        store: &[Arc<VirtualMachineInstanceMigration>],
    ) -> Option<String> {
        let vmi = self.ctx.vmi(
            other.metadata.namespace.as_deref().unwrap_or_default(),
            &other.spec.vmi_name,
        )?;
        if !vmi.is_running()
            || self.ctx.unfinished_pods_of_vmi(&vmi) > 1
            || self.ctx.pod_expectations.pending(&key_of(other))
            || evacuation_backoff_left(other, store, &self.cfg).is_some()
        {
            return None;
        }
        vmi.node_name().map(str::to_string)
    }

    /// The VMI's current (source) pod (`CurrentVMIPod`).
    fn source_pod(&self, vmi: &VirtualMachineInstance) -> Option<Arc<Pod>> {
        vmi.node_name()?;
        self.ctx.current_vmi_pod(vmi)
    }

    /// virt-controller hands the migration to virt-handler: the VMI's migration state names
    /// source and target, the target pod joins `activePods`. The state replaces that of an
    /// earlier migration as a whole: nothing of it (`completed`, timestamps) carries over.
    async fn hand_off(
        &self,
        vmi: &VirtualMachineInstance,
        status: &mut VirtualMachineInstanceMigrationStatus,
    ) -> Result<()> {
        let planned = status.migration_state.clone().unwrap_or_default();
        let target_node = planned.target_node.clone().unwrap_or_default();
        let state = VirtualMachineInstanceMigrationState {
            migration_uid: Some(self.uid.clone()),
            source_node: planned
                .source_node
                .clone()
                .or_else(|| vmi.node_name().map(str::to_string)),
            source_pod: planned.source_pod.clone(),
            target_node: Some(target_node.clone()),
            target_pod: planned.target_pod.clone(),
            ..Default::default()
        };
        let patch = json!({
            "metadata": {"labels": {MIGRATION_TARGET_NODE_NAME_LABEL: target_node}},
            "status": {
                "migrationState": replacing(vmi.migration_state(), &state)?,
            },
        });
        self.ctx
            .patch_vmi(
                &self.namespace,
                &self.migration.spec.vmi_name,
                vmi.metadata.resource_version.as_deref(),
                patch,
            )
            .await?;
        status.migration_state = Some(state);
        self.enter(
            status,
            MigrationPhase::PreparingTarget,
            "handed off to the target node",
        );
        Ok(())
    }

    /// Changes the VMI's migration state (conditional on the VMI version read) and returns it.
    async fn patch_vmi_state(
        &self,
        vmi: &VirtualMachineInstance,
        change: impl FnOnce(&mut VirtualMachineInstanceMigrationState),
    ) -> Result<VirtualMachineInstanceMigrationState> {
        let mut state = vmi.migration_state().cloned().unwrap_or_default();
        if state.migration_uid.as_deref() != Some(self.uid.as_str()) {
            return Err(Error::Config(format!(
                "the migration state of VMI {} belongs to another migration",
                self.migration.spec.vmi_name
            )));
        }
        change(&mut state);
        let patch =
            json!({"status": {"migrationState": replacing(vmi.migration_state(), &state)?}});
        self.ctx
            .patch_vmi(
                &self.namespace,
                &self.migration.spec.vmi_name,
                vmi.metadata.resource_version.as_deref(),
                patch,
            )
            .await?;
        Ok(state)
    }

    /// The Running phase: memory is copied at the migration bandwidth. A deletion of the
    /// migration asks for an abort here (see [`abort_outcome`]).
    async fn progress(
        &self,
        vmi: &VirtualMachineInstance,
        status: &mut VirtualMachineInstanceMigrationStatus,
        targets: &[Arc<Pod>],
    ) -> Result<Action> {
        let Some(state) = vmi
            .migration_state()
            .filter(|s| s.migration_uid.as_deref() == Some(self.uid.as_str()))
        else {
            self.fail(vmi, status, targets, false, "VMI's migration state was taken over by another migration job during active migration.", false)
                .await?;
            return Ok(Action::await_change());
        };
        if state.completed && !state.failed && vmi.node_name() == state.target_node.as_deref() {
            // Completed by an earlier reconcile whose status write did not land (that
            // reconcile moved the VMI to the target in the same write).
            self.finish_source_pod(state).await?;
            status.migration_state = Some(state.clone());
            self.enter(
                status,
                MigrationPhase::Succeeded,
                "Source node reported migration succeeded",
            );
            return Ok(Action::requeue(Duration::ZERO));
        }
        let knobs =
            FaultKnobs::from_annotations(vmi.metadata.annotations.as_ref(), &self.cfg.faults);
        // The copy runs from the moment this simulator started it (entered Running), to the
        // fraction of a second; `startTimestamp` only after a restart.
        let elapsed = self.in_phase_for(MigrationPhase::Running, state.start_timestamp.as_ref());
        let memory = vmi.guest_memory_bytes().unwrap_or(DEFAULT_GUEST_MEMORY);
        let bandwidth = vmi
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EFFECTIVE_BANDWIDTH_ANNOTATION))
            .and_then(|q| kubevirt_api::quantity::parse_quantity(q))
            .filter(|b| *b > 0.0);
        let duration = self.cfg.migration_duration(memory, bandwidth);
        let timeout = self.cfg.completion_timeout(memory);
        // When the copy ends on its own (None: never), and whether it ends in a failure.
        let (ends_in, ends_failed) = if knobs.migration_stall {
            (None, false)
        } else if knobs.migration_fails(&self.uid) {
            (Some((duration / 2).saturating_sub(elapsed)), true)
        } else if timeout < duration {
            (Some(timeout.saturating_sub(elapsed)), true)
        } else {
            (Some(duration.saturating_sub(elapsed)), false)
        };

        if self.migration.metadata.deletion_timestamp.is_some() {
            // markMigrationAbortInVmiStatus: virt-handler is asked to abort.
            let asked = if state.abort_requested {
                self.abort_asked_at()
            } else {
                let _ = self
                    .patch_vmi_state(vmi, |s| s.abort_requested = true)
                    .await?;
                self.abort_asked_at()
            };
            let abort_in = self
                .cfg
                .real(ABORT_RESOLUTION)
                .saturating_sub(asked.elapsed());
            match abort_outcome(abort_in, ends_in) {
                AbortOutcome::Aborted => {
                    self.fail(
                        vmi,
                        status,
                        targets,
                        true,
                        "Live migration has been aborted",
                        true,
                    )
                    .await?;
                    return Ok(Action::await_change());
                }
                AbortOutcome::Pending(wait) => return Ok(Action::requeue(wait)),
                // The copy ends first: the abort comes too late and fails.
                AbortOutcome::TooLate => {}
            }
        }

        match ends_in {
            None => Ok(Action::await_change()),
            Some(left) if !left.is_zero() => {
                Ok(Action::requeue(left.max(Duration::from_millis(10))))
            }
            Some(_) if ends_failed => {
                let why = if knobs.migration_fails(&self.uid) {
                    "Live migration failed: simulated failure (simulator.vacate.io/migration-failure-rate)"
                } else {
                    "Live migration is not completing after completionTimeoutPerGiB and has been aborted"
                };
                self.fail(vmi, status, targets, true, why, false).await?;
                Ok(Action::await_change())
            }
            Some(_) => {
                self.complete(vmi, status, state.clone()).await?;
                Ok(Action::requeue(Duration::ZERO))
            }
        }
    }

    /// When this process asked virt-handler to abort the migration (now, if it did not, e.g.
    /// after a restart).
    fn abort_asked_at(&self) -> std::time::Instant {
        match self.ctx.abort_requests.lock() {
            Ok(mut asked) => *asked
                .entry(self.uid.clone())
                .or_insert_with(std::time::Instant::now),
            Err(_) => std::time::Instant::now(),
        }
    }

    /// The source virt-launcher exits once the guest has moved: its pod finishes
    /// (`Succeeded`) and stays.
    async fn finish_source_pod(&self, state: &VirtualMachineInstanceMigrationState) -> Result<()> {
        if let Some(source_pod) = state.source_pod.as_deref().filter(|p| !p.is_empty()) {
            finish_launcher_pod(&self.ctx.client, &self.namespace, source_pod).await?;
        }
        Ok(())
    }

    /// The guest runs on the target: the VMI moves there, the source pod finishes.
    async fn complete(
        &self,
        vmi: &VirtualMachineInstance,
        status: &mut VirtualMachineInstanceMigrationStatus,
        mut state: VirtualMachineInstanceMigrationState,
    ) -> Result<()> {
        let target_node = state
            .target_node
            .clone()
            .ok_or(Error::MissingField("migrationState.targetNode"))?;
        let source_node = state.source_node.clone().unwrap_or_default();
        let vmi_status = vmi.status.clone().unwrap_or_default();
        let stamp = now();
        state.completed = true;
        state.end_timestamp = Some(stamp.clone());
        state.target_node_domain_ready_timestamp = Some(stamp);
        let mut status_patch = json!({
            "nodeName": target_node,
            "migrationState": replacing(vmi.migration_state(), &state)?,
        });
        // virt-handler clears the eviction mark once the VMI has left the evacuated node.
        if vmi_status
            .evacuation_node_name
            .as_deref()
            .is_some_and(|n| n != target_node)
        {
            status_patch["evacuationNodeName"] = serde_json::Value::Null;
        }
        let patch = json!({
            "metadata": {"labels": {NODE_NAME_LABEL: target_node, MIGRATION_TARGET_NODE_NAME_LABEL: null}},
            "status": status_patch,
        });
        self.ctx
            .patch_vmi(
                &self.namespace,
                &self.migration.spec.vmi_name,
                vmi.metadata.resource_version.as_deref(),
                patch,
            )
            .await?;
        self.finish_source_pod(&state).await?;
        tracing::info!(migration = %self.key, from = %source_node, to = %target_node, "migration completed");
        status.migration_state = Some(state);
        self.enter(
            status,
            MigrationPhase::Succeeded,
            "Source node reported migration succeeded",
        );
        Ok(())
    }

    /// Fails the migration: the VMI stays on the source. After hand-off the VMI's migration
    /// state records the failure (and, when the migration was aborted, `abortStatus`), and the
    /// target virt-launcher exits on its own: its pod finishes (`Succeeded`) and stays. Before
    /// hand-off the target pod is deleted (`handlePreHandoffMigrationCancel`,
    /// `deleteTimedOutTargetPod`).
    async fn fail(
        &self,
        vmi: &VirtualMachineInstance,
        status: &mut VirtualMachineInstanceMigrationStatus,
        targets: &[Arc<Pod>],
        handed_off: bool,
        why: &str,
        aborted: bool,
    ) -> Result<()> {
        let owns = vmi
            .migration_state()
            .and_then(|s| s.migration_uid.as_deref())
            == Some(self.uid.as_str());
        if handed_off && owns && !vmi.is_final() {
            let mut state = vmi.migration_state().cloned().unwrap_or_default();
            if !(state.completed && state.failed) {
                state.completed = true;
                state.failed = true;
                state.end_timestamp = Some(now());
                if state.start_timestamp.is_none() {
                    state.start_timestamp = state.end_timestamp.clone();
                }
                if aborted {
                    state.abort_requested = true;
                    state.abort_status = Some(MigrationAbortStatus::Succeeded);
                }
                state.failure_reason = Some(why.to_string());
                let patch = json!({
                    "metadata": {"labels": {MIGRATION_TARGET_NODE_NAME_LABEL: null}},
                    "status": {
                        "migrationState": replacing(vmi.migration_state(), &state)?,
                    },
                });
                self.ctx
                    .patch_vmi(
                        &self.namespace,
                        &self.migration.spec.vmi_name,
                        vmi.metadata.resource_version.as_deref(),
                        patch,
                    )
                    .await?;
            }
            status.migration_state = Some(state);
        }
        for pod in targets {
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            if handed_off {
                finish_launcher_pod(&self.ctx.client, &self.namespace, name).await?;
            } else {
                self.pods()
                    .delete(name, &DeleteParams::default())
                    .await
                    .map(|_| ())
                    .or_else(ignore_not_found)?;
            }
        }
        self.enter(status, MigrationPhase::Failed, why);
        Ok(())
    }
}

/// How an abort asked for during the copy resolves.
#[derive(Debug, PartialEq, Eq)]
enum AbortOutcome {
    /// The abort takes effect: the migration fails, `abortStatus: Succeeded`.
    Aborted,
    /// The copy ends (succeeds or fails on its own) before the abort takes effect: the abort
    /// fails and the migration ends as it would have.
    TooLate,
    /// Neither yet: look again after this long.
    Pending(Duration),
}

/// The simulator's model of virt-handler's abort (`handleMigrationAbort` →
/// `CancelVirtualMachineMigration` → libvirt `AbortJob`): it takes effect `abort_in` after
/// now (the simulator's [`ABORT_RESOLUTION`], scaled, after it was asked for) unless the copy
/// ends first (`copy_ends_in`, `None` for never), in which case libvirt finds no job to abort.
fn abort_outcome(abort_in: Duration, copy_ends_in: Option<Duration>) -> AbortOutcome {
    match copy_ends_in {
        Some(ends) if ends <= abort_in => {
            if ends.is_zero() {
                AbortOutcome::TooLate
            } else {
                AbortOutcome::Pending(ends)
            }
        }
        _ if abort_in.is_zero() => AbortOutcome::Aborted,
        _ => AbortOutcome::Pending(abort_in),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An evacuation migration of vm-0 created `age` seconds ago, in `phase`, failed
    /// `failed_ago` seconds ago when it failed.
    fn evacuation(
        name: &str,
        age: i64,
        phase: &str,
        failed_ago: Option<i64>,
    ) -> Arc<VirtualMachineInstanceMigration> {
        let at = |ago: i64| {
            (k8s_openapi::jiff::Timestamp::now()
                - k8s_openapi::jiff::SignedDuration::from_secs(ago))
            .to_string()
        };
        let transitions: Vec<_> = failed_ago
            .map(|ago| json!({"phase": "Failed", "phaseTransitionTimestamp": at(ago)}))
            .into_iter()
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"name": name, "namespace": "vms", "uid": name,
                             "creationTimestamp": at(age),
                             "annotations": {EVACUATION_MIGRATION_ANNOTATION: "node-a"}},
                "spec": {"vmiName": "vm-0"},
                "status": {"phase": phase, "phaseTransitionTimestamps": transitions}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn an_abort_wins_unless_the_copy_ends_first() {
        let s = Duration::from_secs;
        // Copy far from done: the abort takes effect when due.
        assert_eq!(
            abort_outcome(s(1), Some(s(10))),
            AbortOutcome::Pending(s(1))
        );
        assert_eq!(abort_outcome(s(0), Some(s(10))), AbortOutcome::Aborted);
        // A stalled copy never ends: the abort takes effect.
        assert_eq!(abort_outcome(s(0), None), AbortOutcome::Aborted);
        // The copy ends before the abort would: wait for it, then the abort is too late.
        assert_eq!(
            abort_outcome(s(1), Some(Duration::from_millis(300))),
            AbortOutcome::Pending(Duration::from_millis(300))
        );
        assert_eq!(abort_outcome(s(1), Some(s(0))), AbortOutcome::TooLate);
    }

    #[test]
    fn evacuation_migrations_back_off_after_failures_as_kubevirt_does() {
        // Time scale 1: KubeVirt's own seconds.
        let cfg =
            ClusterConfig::from_kubevirt(None, &crate::settings::CliDefaults::time_scale(1.0));
        let new = evacuation("c", 1, "Pending", None);
        // No earlier failure: no wait.
        assert_eq!(
            evacuation_backoff_left(&new, std::slice::from_ref(&new), &cfg),
            None
        );
        // One failure 5 s ago: 20 s from it, about 15 s left.
        let all = vec![evacuation("b", 30, "Failed", Some(5)), new.clone()];
        let left = evacuation_backoff_left(&new, &all, &cfg).unwrap();
        assert!(
            left > Duration::from_secs(13) && left <= Duration::from_secs(15),
            "{left:?}"
        );
        // Two failures in a row: 40 s from the last one.
        let all = vec![
            evacuation("a", 60, "Failed", Some(50)),
            evacuation("b", 30, "Failed", Some(5)),
            new.clone(),
        ];
        let left = evacuation_backoff_left(&new, &all, &cfg).unwrap();
        assert!(
            left > Duration::from_secs(33) && left <= Duration::from_secs(35),
            "{left:?}"
        );
        // A success in between resets the count; a wait already over is none.
        let all = vec![
            evacuation("a", 60, "Failed", Some(50)),
            evacuation("s", 40, "Succeeded", None),
            evacuation("b", 30, "Failed", Some(25)),
            new.clone(),
        ];
        assert_eq!(evacuation_backoff_left(&new, &all, &cfg), None);
        // Only the newest migration waits.
        let older = evacuation("b", 30, "Pending", None);
        let all = vec![
            evacuation("a", 60, "Failed", Some(5)),
            older.clone(),
            new.clone(),
        ];
        assert_eq!(evacuation_backoff_left(&older, &all, &cfg), None);
    }
}
