//! The part of virt-handler's heartbeat (`pkg/virt-handler/heartbeat/heartbeat.go`, v1.7.4 and
//! v1.9.0) that the scheduler sees: every node virt-handler runs on (KubeVirt's DaemonSet runs
//! it on every node by default) is labelled `kubevirt.io/schedulable=true`, which every
//! virt-launcher pod selects. Nodes created at any time get the label as soon as the watch
//! shows them; a label changed or removed by someone else is set back.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kubevirt_api::labels::NODE_SCHEDULABLE_LABEL;
use serde_json::json;

use super::{Context, retry_after_error};
use crate::error::{Result, kube_not_found};

pub async fn run(ctx: Arc<Context>) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    Controller::new(nodes, watcher::Config::default())
        .run(reconcile, retry_after_error, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let labelled = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NODE_SCHEDULABLE_LABEL))
        .is_some_and(|v| v == "true");
    if labelled || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"metadata": {"labels": {NODE_SCHEDULABLE_LABEL: "true"}}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if kube_not_found(&e) => Ok(Action::await_change()),
        Err(e) => {
            tracing::debug!(node = %name, "labelling the node failed, retrying: {e}");
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
}
