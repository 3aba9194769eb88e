//! The VMI lifecycle, after virt-controller's VMI controller
//! (`pkg/virt-controller/watch/vmi/vmi.go`) and the parts of virt-handler that report a
//! running domain:
//!
//! * a VMI without a pod gets a virt-launcher pod ([`crate::launcher`]) and goes `Scheduling`;
//! * when the real scheduler has bound the pod and kwok runs it: `Scheduled`, with
//!   `status.nodeName`, `status.activePods` and the label `kubevirt.io/nodeName`; then `Running`
//!   with `Ready=True` (virt-handler started the domain);
//! * an unschedulable pod is mirrored as `PodScheduled=False/Unschedulable`;
//! * `LiveMigratable` is computed from the spec ([`crate::live_migratable`]) once the VMI is
//!   Scheduled (virt-handler writes it);
//! * `activePods` lists every pod the VMI controls, finished ones included (`setActivePods`);
//! * when the pod the VMI runs in is deleted (not as part of a migration), the guest is shut
//!   down: `Succeeded` if the pod was terminated gracefully, `Failed` if it vanished or failed.
//!
//! Migrations change `nodeName`/`activePods`/`migrationState`; that is the migration
//! controller's part. Every write here is conditional on the resourceVersion that was read,
//! so a decision taken on a stale cache is retried instead of overwriting newer state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kubevirt_api::common::{
    Condition, PhaseTransitionTimestamp, condition_reason, condition_type, now, set_condition,
};
use kubevirt_api::labels::{MIGRATION_JOB_LABEL, NODE_NAME_LABEL, VIRTUAL_MACHINE_UNPAUSED};
use kubevirt_api::vmi::VmiNetworkInterface;
use kubevirt_api::{
    ConditionStatus, VirtualMachineInstance, VirtualMachineInstanceStatus, VmiPhase,
};
use serde_json::json;

use super::{
    Context, key_of, pod_is_down, pod_is_ready, pod_node, pod_unschedulable, retry_after_error,
};
use crate::error::{Error, Result};
use crate::launcher;
use crate::live_migratable::live_migratable_condition;

/// Runs the controller until the watches end.
pub async fn run(
    ctx: Arc<Context>,
    vmis: super::Subscription<VirtualMachineInstance>,
    pods: super::Subscription<Pod>,
) {
    let client = ctx.client.clone();
    let mapper_ctx = ctx.clone();
    Controller::for_shared_stream(vmis, ctx.vmis.clone())
        // virt-controller's VMI workers (`defaultVMIControllerThreads`, application.go): a
        // few thousand VMIs starting at once do not flood the API server.
        .with_config(kube::runtime::controller::Config::default().concurrency(10))
        // Pods wake the VMI that controls them.
        .owns_shared_stream(pods)
        // A PVC appearing or changing access modes changes LiveMigratable.
        .watches(
            Api::<PersistentVolumeClaim>::all(client),
            watcher::Config::default(),
            move |pvc: PersistentVolumeClaim| {
                let ns = pvc.metadata.namespace.clone().unwrap_or_default();
                let name = pvc.metadata.name.clone().unwrap_or_default();
                mapper_ctx
                    .vmis
                    .state()
                    .into_iter()
                    .filter(|v| {
                        v.metadata.namespace.as_deref() == Some(ns.as_str())
                            && v.claim_names().contains(&name.as_str())
                    })
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, retry_after_error, ctx)
        .for_each(|_| async {})
        .await;
}

/// Like an informer's resync: every VMI is looked at again now and then. Shared informers do
/// not pass deletions on, so a pod that vanished without a terminating phase is noticed here.
const RESYNC: Duration = Duration::from_secs(10);

async fn reconcile(vmi: Arc<VirtualMachineInstance>, ctx: Arc<Context>) -> Result<Action> {
    if vmi.metadata.deletion_timestamp.is_some() || vmi.is_final() {
        // Deletion: the pods go with their owner (garbage collector).
        return Ok(Action::await_change());
    }
    let key = key_of(vmi.as_ref());
    let namespace = vmi
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vmi
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let uid = vmi
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingField("metadata.uid"))?;
    let rv = vmi.metadata.resource_version.clone();
    let old = vmi.status.clone().unwrap_or_default();
    let mut new = old.clone();
    let mut labels: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut requeue = None;

    let pods = ctx.pods_of_vmi(&uid);
    if !pods.is_empty() {
        ctx.pod_expectations.observed(&key);
    }

    // setActivePods (lifecycle.go): every pod the VMI controls, finished ones included, with
    // the node it is bound to ("" while unscheduled); a pod leaves only when it is deleted.
    if !pods.is_empty() || !old.active_pods.is_empty() {
        new.active_pods = pods
            .iter()
            .map(|p| {
                (
                    p.metadata.uid.clone().unwrap_or_default(),
                    pod_node(p).unwrap_or_default().to_string(),
                )
            })
            .collect();
    }

    // virt-handler computes LiveMigratable (`updateLiveMigrationConditions`, called by
    // `updateVMIStatus`) on every sync of a VMI on its node, i.e. from Scheduled on; never
    // before, and not in a final phase.
    if matches!(old.phase, Some(VmiPhase::Scheduled | VmiPhase::Running)) {
        set_condition(
            &mut new.conditions,
            live_migratable_condition(
                &vmi,
                |claim| ctx.pvc(&namespace, claim),
                ctx.config().release,
            ),
        );
    }

    // syncPausedConditionToPod and setLauncherContainerInfo (lifecycle.go `updateStatus`):
    // the VMI's current pod gets the readiness-gate condition, the VMI the pod's image.
    if let Some(pod) = ctx.current_vmi_pod(&vmi).filter(|p| !pod_is_down(p)) {
        sync_paused_condition_to_pod(&ctx, &vmi, &pod).await?;
        if matches!(old.phase, Some(VmiPhase::Scheduled | VmiPhase::Running))
            && let Some(image) = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == "compute"))
                .and_then(|c| c.image.clone())
        {
            new.launcher_container_image_version = Some(image);
        }
    }

    match old.phase {
        None | Some(VmiPhase::Pending) | Some(VmiPhase::Unknown) => {
            if pods.is_empty() {
                if ctx.pod_expectations.pending(&key) {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                let pod = launcher::render_launch_pod(&vmi, ctx.config().release)?;
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
                let created = api.create(&PostParams::default(), &pod).await?;
                ctx.pod_expectations.expect(&key);
                tracing::info!(vmi = %key, pod = created.metadata.name.as_deref().unwrap_or(""), "created virt-launcher pod");
            }
            new.phase = Some(VmiPhase::Scheduling);
        }
        Some(VmiPhase::Scheduling) => {
            let launch_pod = pods.iter().find(|p| !has_label(p, MIGRATION_JOB_LABEL));
            match launch_pod {
                None if ctx.pod_expectations.pending(&key) => {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                None => fail(
                    &mut new,
                    "PodNotExists",
                    "virt-launcher pod disappeared before the VMI was scheduled",
                ),
                Some(pod) if pod_is_down(pod) => fail(
                    &mut new,
                    "PodTerminated",
                    "virt-launcher pod terminated before the VMI was scheduled",
                ),
                Some(pod) => match (pod_node(pod), pod_is_ready(pod)) {
                    (Some(node), true) => {
                        // virt-controller hands the VMI to virt-handler of that node.
                        new.phase = Some(VmiPhase::Scheduled);
                        new.node_name = Some(node.to_string());
                        new.conditions
                            .retain(|c| c.type_ != condition_type::POD_SCHEDULED);
                        labels.insert(NODE_NAME_LABEL.into(), Some(node.to_string()));
                        requeue = Some(Duration::ZERO);
                    }
                    (_, _) => {
                        if let Some(message) = pod_unschedulable(pod) {
                            set_condition(
                                &mut new.conditions,
                                Condition::new(
                                    condition_type::POD_SCHEDULED,
                                    ConditionStatus::False,
                                    condition_reason::UNSCHEDULABLE,
                                    &message,
                                ),
                            );
                        }
                    }
                },
            }
        }
        Some(VmiPhase::Scheduled) => {
            // virt-handler starts the domain and reports it running.
            let pod = ctx.current_vmi_pod(&vmi);
            let pod = pod.as_deref();
            match pod {
                Some(pod) if !pod_is_down(pod) => {
                    new.phase = Some(VmiPhase::Running);
                    set_condition(
                        &mut new.conditions,
                        Condition::new(condition_type::READY, ConditionStatus::True, "", ""),
                    );
                    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                    new.interfaces = vec![VmiNetworkInterface {
                        name: vmi.spec.networks.first().map(|n| n.name.clone()),
                        ip_addresses: ip.iter().cloned().collect(),
                        ip_address: ip,
                        interface_name: Some("eth0".into()),
                        info_source: Some("domain, guest-agent".into()),
                        ..Default::default()
                    }];
                    new.qos_class = pod.status.as_ref().and_then(|s| s.qos_class.clone());
                    new.migration_method = Some("LiveMigration".into());
                }
                Some(_) => finish_after_pod_loss(&mut new, true),
                None => finish_after_pod_loss(&mut new, false),
            }
        }
        Some(VmiPhase::Running) => match ctx.current_vmi_pod(&vmi).as_deref() {
            Some(pod) if !pod_is_down(pod) => {
                if let Some(node) = old.node_name.as_deref() {
                    let label = vmi
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(NODE_NAME_LABEL));
                    if label.map(String::as_str) != Some(node) {
                        labels.insert(NODE_NAME_LABEL.into(), Some(node.to_string()));
                    }
                }
            }
            Some(_) => finish_after_pod_loss(&mut new, true),
            None => {
                // The active pod is gone: shut down if it was seen terminating gracefully,
                // crashed if it vanished.
                let graceful = ctx.terminating_pods.lock().is_ok_and(|seen| {
                    old.active_pods.iter().any(|(uid, node)| {
                        Some(node.as_str()) == old.node_name.as_deref() && seen.contains(uid)
                    })
                });
                finish_after_pod_loss(&mut new, graceful)
            }
        },
        Some(VmiPhase::Succeeded | VmiPhase::Failed) => return Ok(Action::await_change()),
    }

    if new.phase != old.phase
        && let Some(phase) = new.phase
    {
        new.phase_transition_timestamps
            .push(PhaseTransitionTimestamp {
                phase: Some(phase),
                phase_transition_timestamp: Some(now()),
            });
        tracing::info!(vmi = %key, from = ?old.phase, to = %phase, node = new.node_name.as_deref().unwrap_or(""), "VMI phase");
    }

    if new != old || !labels.is_empty() {
        let mut status = owned_status_fields(&new);
        // A merge patch removes a map entry only when it is set to null.
        for uid in old.active_pods.keys() {
            if !new.active_pods.contains_key(uid) {
                status["activePods"][uid] = serde_json::Value::Null;
            }
        }
        let patch = json!({
            "metadata": {"labels": labels},
            "status": status,
        });
        ctx.patch_vmi(&namespace, &name, rv.as_deref(), patch)
            .await?;
        if new.phase.is_some_and(VmiPhase::is_final)
            && let Ok(mut seen) = ctx.terminating_pods.lock()
        {
            // Only once the final phase is written: a conflict retries with the memory intact.
            for uid in old.active_pods.keys() {
                seen.remove(uid);
            }
        }
    }
    Ok(Action::requeue(requeue.unwrap_or(RESYNC)))
}

/// The status fields this controller owns. `migrationState` and `evacuationNodeName` belong
/// to the migration controller and the eviction webhook and are never written here.
fn owned_status_fields(s: &VirtualMachineInstanceStatus) -> serde_json::Value {
    json!({
        "phase": s.phase,
        "nodeName": s.node_name,
        "reason": s.reason,
        "conditions": s.conditions,
        "phaseTransitionTimestamps": s.phase_transition_timestamps,
        "interfaces": s.interfaces,
        "activePods": s.active_pods,
        "qosClass": s.qos_class,
        "launcherContainerImageVersion": s.launcher_container_image_version,
        "migrationMethod": s.migration_method,
    })
}

/// `syncPausedConditionToPod`: the pod's readiness gate `kubevirt.io/virtual-machine-unpaused`
/// is `False` (`Paused`) while the VMI has `Paused=True`, else `True` (`NotPaused`). Written
/// only when it is not so already.
async fn sync_paused_condition_to_pod(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    pod: &Pod,
) -> Result<()> {
    let paused = vmi.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition_type::PAUSED && c.status == ConditionStatus::True)
    });
    let current = pod.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == VIRTUAL_MACHINE_UNPAUSED)
    });
    let want = if paused { "False" } else { "True" };
    let in_place = current.is_some_and(|c| c.status == want);
    // As KubeVirt: while paused only a True condition is turned False; while not paused any
    // other state becomes True.
    if in_place || (paused && current.is_none()) {
        return Ok(());
    }
    let (reason, message) = if paused {
        ("Paused", "the virtual machine is paused")
    } else {
        ("NotPaused", "the virtual machine is not paused")
    };
    let stamp = now();
    let patch = json!({"status": {"conditions": [{
        "type": VIRTUAL_MACHINE_UNPAUSED, "status": want, "reason": reason, "message": message,
        "lastProbeTime": stamp, "lastTransitionTime": stamp,
    }]}});
    let api: Api<Pod> = Api::namespaced(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    match api
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if crate::error::kube_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn has_label(pod: &Pod, key: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(key))
}

/// The guest is gone because its pod was deleted: a graceful pod termination lets
/// virt-launcher shut the guest down (Succeeded); a pod that vanished or failed means the
/// guest crashed with it (Failed).
fn finish_after_pod_loss(status: &mut VirtualMachineInstanceStatus, graceful: bool) {
    if graceful {
        status.phase = Some(VmiPhase::Succeeded);
        status.reason = None;
    } else {
        fail(
            status,
            "PodNotExists",
            "virt-launcher pod of a running VMI disappeared",
        );
    }
    set_condition(
        &mut status.conditions,
        Condition::new(
            condition_type::READY,
            ConditionStatus::False,
            "PodTerminating",
            "virt-launcher pod is terminating or gone",
        ),
    );
}

fn fail(status: &mut VirtualMachineInstanceStatus, reason: &str, message: &str) {
    status.phase = Some(VmiPhase::Failed);
    status.reason = Some(reason.to_string());
    tracing::info!(reason, message, "VMI failed");
}
