//! VirtualMachines, after virt-controller's VM controller (`pkg/virt-controller/watch/vm/vm.go`):
//! the run strategy decides whether a VMI exists. With `Always` (or `running: true`) a VMI is
//! created from the template and re-created whenever it is deleted or has finished; with
//! `RerunOnFailure` only after a failure; `Halted` (or `running: false`) deletes it. `Manual`
//! and `Once` leave an existing VMI alone (starting them needs the subresource API, which is
//! not simulated). The status reports `printableStatus`, `created` and `ready`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kubevirt_api::common::{Condition, condition_type};
use kubevirt_api::vm::printable_status;
use kubevirt_api::{
    ConditionStatus, RunStrategy, VirtualMachine, VirtualMachineInstance, VmiPhase,
};
use serde_json::json;

use super::{Context, key_of, retry_after_error};
use crate::error::{Error, Result, kube_conflict, kube_not_found};

pub async fn run(ctx: Arc<Context>, vmis: super::Subscription<VirtualMachineInstance>) {
    let client = ctx.client.clone();
    Controller::new(
        Api::<VirtualMachine>::all(client),
        watcher::Config::default(),
    )
    // Bounded workers, as virt-controller's queues have: thousands of VMs created at
    // once do not flood the API server.
    .with_config(kube::runtime::controller::Config::default().concurrency(10))
    // The shared VMI informer: one VMI watch for all controllers.
    .owns_shared_stream(vmis)
    .run(reconcile, retry_after_error, ctx)
    .for_each(|_| async {})
    .await;
}

async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action> {
    if vm.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = vm
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vm
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let vm_uid = vm.metadata.uid.clone().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    // A VMI of the same name that this VM does not own is left alone.
    let owned = |v: &VirtualMachineInstance| {
        v.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == vm_uid && o.controller == Some(true))
    };
    let strategy = vm.effective_run_strategy();
    // The shared cache is enough while the VM's VMI exists, is not on its way out and is
    // to stay: nothing is to be done but the status. Otherwise, before deciding to create or
    // delete, the API is asked: this controller is woken by VMI deletions, which a cache may
    // not show yet. (Asking the API at every pass made thousands of VMs cost a GET each
    // every 10 s.)
    let cached = ctx
        .vmi(&namespace, &name)
        .filter(|v| owned(v))
        .filter(|v| v.metadata.deletion_timestamp.is_none() && !v.is_final());
    let vmi = match cached {
        Some(v) if !matches!(strategy, RunStrategy::Halted | RunStrategy::Unrecognized) => {
            Some((*v).clone())
        }
        _ => vmis.get_opt(&name).await?.filter(|v| owned(v)),
    };

    let wants_vmi = match strategy {
        RunStrategy::Always => true,
        RunStrategy::RerunOnFailure => vmi
            .as_ref()
            .is_none_or(|v| v.phase() != Some(VmiPhase::Succeeded)),
        RunStrategy::Halted | RunStrategy::Unrecognized => false,
        RunStrategy::Manual | RunStrategy::Once | RunStrategy::WaitAsReceiver => vmi.is_some(),
    };

    // The cache may lag behind our own deletes and creates: look again shortly whenever the
    // VMI is on its way out or in.
    let mut requeue = false;
    match &vmi {
        Some(v) if v.metadata.deletion_timestamp.is_some() => requeue = wants_vmi,
        Some(_) if !wants_vmi => {
            delete_vmi(&vmis, &name, "run strategy wants no VMI").await?;
        }
        Some(v) if v.is_final() && restarts(strategy, v) => {
            // Finished VMIs are removed and a fresh one is started.
            delete_vmi(&vmis, &name, "VMI finished, restarting").await?;
            requeue = true;
        }
        Some(_) => {}
        None if wants_vmi => {
            let new = vmi_from_template(&vm)?;
            match vmis.create(&PostParams::default(), &new).await {
                Ok(_) => tracing::info!(vm = %key_of(vm.as_ref()), "created VMI"),
                // The previous VMI is still being deleted.
                Err(e) if kube_conflict(&e) => requeue = true,
                Err(e) => return Err(e.into()),
            }
        }
        None => {}
    }

    update_status(&ctx, &vm, vmi.as_ref(), strategy).await?;
    // Without news, look again now and then (an informer's resync): the VMI cache read here
    // may lag behind the event that triggered this pass.
    Ok(Action::requeue(if requeue {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    }))
}

fn restarts(strategy: RunStrategy, vmi: &VirtualMachineInstance) -> bool {
    match strategy {
        RunStrategy::Always => true,
        RunStrategy::RerunOnFailure => vmi.phase() == Some(VmiPhase::Failed),
        _ => false,
    }
}

async fn delete_vmi(api: &Api<VirtualMachineInstance>, name: &str, why: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(vmi = name, why, "deleted VMI");
            Ok(())
        }
        Err(e) if kube_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The VMI a VM starts: the template's metadata and spec, owned by the VM.
fn vmi_from_template(vm: &VirtualMachine) -> Result<VirtualMachineInstance> {
    let name = vm
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let template_meta = vm.spec.template.metadata.clone().unwrap_or_default();
    let spec = vm.spec.template.spec.clone().unwrap_or_default();
    let mut vmi = VirtualMachineInstance::new(&name, spec);
    vmi.metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: vm.metadata.namespace.clone(),
        labels: template_meta.labels,
        annotations: template_meta.annotations,
        owner_references: Some(vec![OwnerReference {
            api_version: kubevirt_api::API_VERSION.into(),
            kind: VirtualMachine::kind(&()).into_owned(),
            name,
            uid: vm
                .metadata
                .uid
                .clone()
                .ok_or(Error::MissingField("metadata.uid"))?,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    };
    Ok(vmi)
}

async fn update_status(
    ctx: &Context,
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    strategy: RunStrategy,
) -> Result<()> {
    let ready = vmi.is_some_and(|v| {
        v.is_running()
            && v.condition(condition_type::READY)
                .is_some_and(|c| c.status == ConditionStatus::True)
    });
    let printable = match vmi {
        None => printable_status::STOPPED,
        Some(v) if v.metadata.deletion_timestamp.is_some() => printable_status::STOPPING,
        Some(v) => match v.phase() {
            None | Some(VmiPhase::Pending | VmiPhase::Scheduling | VmiPhase::Scheduled) => {
                if v.condition(condition_type::POD_SCHEDULED)
                    .is_some_and(|c| c.status == ConditionStatus::False)
                {
                    printable_status::ERROR_UNSCHEDULABLE
                } else {
                    printable_status::STARTING
                }
            }
            Some(VmiPhase::Running) if v.is_migrating() => printable_status::MIGRATING,
            Some(VmiPhase::Running) => printable_status::RUNNING,
            Some(VmiPhase::Succeeded) => printable_status::STOPPED,
            Some(VmiPhase::Failed) => printable_status::CRASH_LOOP_BACK_OFF,
            Some(VmiPhase::Unknown) => printable_status::UNKNOWN,
        },
    };
    let mut conditions = vm
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    kubevirt_api::common::set_condition(
        &mut conditions,
        Condition::new(
            condition_type::READY,
            ConditionStatus::from_bool(ready),
            if ready { "" } else { "VMINotReady" },
            "",
        ),
    );
    let status = json!({
        "printableStatus": printable,
        "created": vmi.is_some(),
        "ready": ready,
        "runStrategy": strategy,
        "conditions": conditions,
        "observedGeneration": vm.metadata.generation,
        "desiredGeneration": vm.metadata.generation,
    });
    let current = vm.status.as_ref().map(serde_json::to_value).transpose()?;
    let unchanged = current.as_ref().is_some_and(|c| {
        c.get("printableStatus") == status.get("printableStatus")
            && c.get("ready").cloned().unwrap_or(json!(false)) == status["ready"]
            && c.get("created").cloned().unwrap_or(json!(false)) == status["created"]
    });
    if unchanged {
        return Ok(());
    }
    let api: Api<VirtualMachine> = Api::namespaced(
        ctx.client.clone(),
        vm.metadata.namespace.as_deref().unwrap_or_default(),
    );
    api.patch_status(
        vm.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}
