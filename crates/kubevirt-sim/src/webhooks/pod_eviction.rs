//! The eviction interceptor, after KubeVirt v1.7's
//! `pkg/virt-api/webhooks/validating-webhook/admitters/pod-eviction-admitter.go`:
//!
//! | eviction strategy      | VMI migratable | answer                                                    |
//! |------------------------|----------------|-----------------------------------------------------------|
//! | none resolved / `None` | any            | allowed (the pod is evicted, the guest shut down)         |
//! | `LiveMigrate`          | yes            | VMI marked (`status.evacuationNodeName`), 429              |
//! | `LiveMigrate`          | no             | 429 "configured with an eviction strategy but is not live-migratable" |
//! | `LiveMigrateIfPossible`| yes            | VMI marked, 429                                            |
//! | `LiveMigrateIfPossible`| no             | allowed                                                   |
//! | `External`             | any            | VMI marked, 429                                            |
//!
//! A VMI already marked answers 429 "Evacuation in progress: ..." without marking again.
//! Pods that are not virt-launchers, cannot be read, or have terminated are allowed. In a
//! dry run the mark is written with `dryRun=All` (so nothing changes) and the answer is the same.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kubevirt_api::labels::{APP_LABEL, DOMAIN_ANNOTATION, VIRT_LAUNCHER};
use kubevirt_api::{EvictionStrategy, VirtualMachineInstance};
use serde_json::json;

use super::admission::{AdmissionRequest, Verdict};
use crate::controllers::Context;

pub async fn admit(ctx: &Context, req: &AdmissionRequest) -> Verdict {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &req.namespace);
    let Ok(pod) = pods.get(&req.name).await else {
        return Verdict::Allow;
    };
    let is_launcher = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(APP_LABEL))
        .map(String::as_str)
        == Some(VIRT_LAUNCHER);
    if !is_launcher {
        return Verdict::Allow;
    }
    if matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Verdict::Allow;
    }
    let Some(vmi_name) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DOMAIN_ANNOTATION))
        .cloned()
    else {
        return Verdict::Allow;
    };
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &req.namespace);
    let vmi = match vmis.get(&vmi_name).await {
        Ok(v) => v,
        Err(e) => {
            return Verdict::too_many_requests(format!("kubevirt failed getting the vmi: {e}"));
        }
    };
    let cfg = ctx.config();
    let Some(strategy) = vmi.effective_eviction_strategy(cfg.eviction_strategy) else {
        // "we don't act on VMIs without an eviction strategy"
        return Verdict::Allow;
    };
    let mark = match strategy {
        EvictionStrategy::LiveMigrate => {
            if !vmi.is_migratable() {
                return Verdict::too_many_requests(format!(
                    "VMI {vmi_name} is configured with an eviction strategy but is not live-migratable"
                ));
            }
            true
        }
        EvictionStrategy::LiveMigrateIfPossible => vmi.is_migratable(),
        EvictionStrategy::External => true,
        EvictionStrategy::None | EvictionStrategy::Unrecognized => false,
    };
    if !mark {
        return Verdict::Allow;
    }
    let pod_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let vmi_node = vmi.node_name().map(str::to_string);
    if vmi_node.is_none() || vmi_node != pod_node {
        // Not the pod the VMI runs in (a finished migration's source, or a target): allowed.
        return Verdict::Allow;
    }
    let triggered = format!(
        "Eviction triggered evacuation of VMI \"{}/{}\"",
        req.namespace, vmi_name
    );
    if vmi.is_marked_for_eviction() {
        return Verdict::too_many_requests(format!("Evacuation in progress: {triggered}"));
    }
    let dry_run = req.dry_run == Some(true)
        || req
            .object
            .as_ref()
            .and_then(|o| o.pointer("/deleteOptions/dryRun"))
            .and_then(|d| d.as_array())
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let params = PatchParams {
        dry_run,
        ..Default::default()
    };
    let patch = json!({"status": {"evacuationNodeName": vmi_node}});
    if let Err(e) = vmis.patch(&vmi_name, &params, &Patch::Merge(&patch)).await {
        return Verdict::too_many_requests(format!(
            "kubevirt failed marking the vmi for eviction: {e}"
        ));
    }
    tracing::info!(vmi = %format!("{}/{vmi_name}", req.namespace), node = vmi_node.as_deref().unwrap_or(""), dry_run, "eviction triggered evacuation");
    Verdict::too_many_requests(triggered)
}
