//! Carries out the planner's actions against the API server.

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::{DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use kubevirt_api::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
};
use serde_json::json;

use super::cached::CachedNode;
use super::snapshot::{
    HOSTNAME_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, MIGRATION_NODE_ANNOTATION,
    MIGRATION_NODE_LABEL, node_label_value,
};
use crate::config::Config;
use crate::error::{Error, Result, is_throttled, status_code, status_message};
use crate::planner::{Action, ActionResult, EventType, Subject};

/// The longest one API call of an action may take.
pub const ACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Executor<'a> {
    pub client: &'a Client,
    pub config: &'a Config,
    pub recorder: &'a Recorder,
    pub node: &'a CachedNode,
    pub written_version: std::sync::Mutex<Option<String>>,
}

/// Sorts an API error into a result the planner understands, or a real error.
fn classify(error: kube::Error, doing: &str) -> Result<ActionResult> {
    if is_throttled(&error) {
        // Not a refusal by a PodDisruptionBudget or KubeVirt: the API server had no room for
        // the request. An error, so the action is tried again after the error back-off and
        // nothing is recorded (a launcher pod's eviction is not taken as refused).
        return Err(Error::Kube {
            doing: format!("{doing} (throttled by the API server)"),
            source: error,
        });
    }
    match status_code(&error) {
        Some(404) => Ok(ActionResult::Gone),
        Some(409) => Ok(ActionResult::AlreadyExists),
        Some(429) => Ok(ActionResult::Refused(status_message(&error))),
        Some(code) if (400..500).contains(&code) && code != 401 => {
            Ok(ActionResult::Rejected(status_message(&error)))
        }
        // The Eviction API answers 500 for a pod under two PodDisruptionBudgets (eviction.go in
        // Kubernetes): no retry changes that, so it is a rejection shown to the user.
        Some(500) if status_message(&error).contains("more than one PodDisruptionBudget") => {
            Ok(ActionResult::Rejected(status_message(&error)))
        }
        _ => Err(Error::Kube {
            doing: doing.to_string(),
            source: error,
        }),
    }
}

/// As [`classify`], and an eviction KubeVirt's webhook could not be asked about (virt-api
/// down: the API server answers 500 "failed calling webhook", as the webhook's failurePolicy
/// is Fail) is KubeVirt being unavailable, tried again later.
fn classify_eviction(error: kube::Error, doing: &str) -> Result<ActionResult> {
    let message = status_message(&error);
    if status_code(&error) == Some(500)
        && message.contains("failed calling webhook")
        && message.contains(".kubevirt.io")
    {
        return Err(Error::KubeVirtUnavailable(format!(
            "{doing}: KubeVirt's eviction webhook did not answer ({message}); trying again later"
        )));
    }
    classify(error, doing)
}

/// An eviction that changes nothing: `dryRun=All` in the query (the admission request's
/// `dryRun`) and in the Eviction's deleteOptions (KubeVirt's admitter reads either).
fn dry_run_eviction() -> EvictParams {
    EvictParams {
        delete_options: Some(DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        }),
        post_options: PostParams {
            dry_run: true,
            ..PostParams::default()
        },
    }
}

fn done<T>(result: Result<T, kube::Error>, doing: &str) -> Result<ActionResult> {
    match result {
        Ok(_) => Ok(ActionResult::Done),
        Err(error) => classify(error, doing),
    }
}

impl Executor<'_> {
    /// Remembers the node's resourceVersion after one of vacate's own writes.
    fn note_version(&self, result: Result<Node, kube::Error>) -> Result<Node, kube::Error> {
        if let Ok(node) = &result
            && let Some(version) = node.resource_version()
        {
            *self.written_version.lock().expect("version lock") = Some(version);
        }
        result
    }

    /// The node's resourceVersion after the last write of this executor, if any.
    pub fn written_version(&self) -> Option<String> {
        self.written_version.lock().expect("version lock").clone()
    }

    fn node_name(&self) -> String {
        self.node.name_any()
    }

    /// Carries out one action. A call that hangs (an admission webhook that does not
    /// answer) is given up after [`ACTION_TIMEOUT`] and retried with the next reconciliation.
    pub async fn run(&self, action: &Action) -> Result<ActionResult> {
        match tokio::time::timeout(ACTION_TIMEOUT, self.run_inner(action)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(format!("{action:?}"))),
        }
    }

    async fn run_inner(&self, action: &Action) -> Result<ActionResult> {
        let node = self.node_name();
        let nodes: Api<Node> = Api::all(self.client.clone());
        match action {
            Action::Cordon
            | Action::Uncordon
            | Action::SetDrainedLabel(_)
            | Action::RemoveLabel(_) => {
                let patch = self.node_patch(&[action]);
                let result = nodes
                    .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                let result = self.note_version(result);
                let outcome = done(result, &format!("changing node {node} ({action:?})"))?;
                if matches!(action, Action::Cordon | Action::Uncordon)
                    && outcome != ActionResult::Done
                {
                    return Err(Error::NodeNotFound(format!("{node} ({outcome:?})")));
                }
                Ok(outcome)
            }
            Action::CreateMigration {
                namespace,
                name,
                vmi,
                target,
            } => {
                let api: Api<VirtualMachineInstanceMigration> =
                    Api::namespaced(self.client.clone(), namespace);
                let mut migration = VirtualMachineInstanceMigration::new(
                    name,
                    VirtualMachineInstanceMigrationSpec {
                        vmi_name: vmi.clone(),
                        added_node_selector: target
                            .iter()
                            .map(|t| (HOSTNAME_LABEL.to_string(), t.clone()))
                            .collect(),
                        ..Default::default()
                    },
                );
                migration.labels_mut().extend([
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                    (MIGRATION_NODE_LABEL.to_string(), node_label_value(&node)),
                ]);
                migration
                    .annotations_mut()
                    .insert(MIGRATION_NODE_ANNOTATION.to_string(), node.clone());
                let result = api.create(&PostParams::default(), &migration).await;
                let outcome = done(result, &format!("creating migration {namespace}/{name}"))?;
                match &outcome {
                    ActionResult::Refused(m) | ActionResult::Rejected(m) => {
                        self.publish(
                            EventType::Warning,
                            "MigrationRefused",
                            format!("KubeVirt refused a migration of VMI {namespace}/{vmi}: {m}"),
                        )
                        .await;
                    }
                    _ => {}
                }
                Ok(outcome)
            }
            Action::CancelMigration { namespace, name } => {
                let api: Api<VirtualMachineInstanceMigration> =
                    Api::namespaced(self.client.clone(), namespace);
                let result = api.delete(name, &DeleteParams::default()).await;
                done(result, &format!("cancelling migration {namespace}/{name}"))
            }
            Action::EvictPod {
                namespace,
                name,
                kubevirt_answers,
                ..
            } => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
                if *kubevirt_answers {
                    // KubeVirt's webhook must answer this eviction (with a 429). Asked with a
                    // dry run, an eviction let through means the webhook did not run: its
                    // registration was changed to failurePolicy Ignore or removed, and the
                    // real eviction would delete the virt-launcher pod and kill the VM.
                    let probe = api.evict(name, &dry_run_eviction()).await;
                    match probe {
                        Ok(_) => {
                            return Err(Error::KubeVirtUnavailable(format!(
                                "KubeVirt's eviction webhook did not answer a dry-run eviction of \
                                 virt-launcher pod {namespace}/{name} (is \
                                 virt-launcher-eviction-interceptor.kubevirt.io registered with \
                                 failurePolicy Fail?); not evicting it, trying again later"
                            )));
                        }
                        Err(error) if status_code(&error) == Some(429) => {}
                        Err(error) => {
                            return classify_eviction(
                                error,
                                &format!("evicting pod {namespace}/{name} (dry run)"),
                            );
                        }
                    }
                }
                let result = api.evict(name, &EvictParams::default()).await;
                let outcome = match result {
                    Ok(_) => ActionResult::Done,
                    Err(error) => {
                        classify_eviction(error, &format!("evicting pod {namespace}/{name}"))?
                    }
                };
                // Evicted pods are announced together, in one event per plan (the shell's).
                match &outcome {
                    ActionResult::Refused(message) => {
                        tracing::info!(pod = %name, %namespace, %message, "eviction refused");
                    }
                    ActionResult::Rejected(message) => {
                        self.publish(
                            EventType::Warning,
                            "EvictionRejected",
                            format!("eviction of pod {namespace}/{name} rejected: {message}"),
                        )
                        .await;
                    }
                    _ => {}
                }
                Ok(outcome)
            }
            Action::RestartVmi { namespace, name } => {
                let api: Api<VirtualMachineInstance> =
                    Api::namespaced(self.client.clone(), namespace);
                let result = api.delete(name, &DeleteParams::default()).await;
                done(result, &format!("stopping VMI {namespace}/{name}"))
            }
            Action::Event {
                event_type,
                reason,
                message,
                subject,
            } => {
                self.publish_about(*event_type, reason, message.clone(), subject.as_ref())
                    .await;
                Ok(ActionResult::Done)
            }
        }
    }

    /// Writes (or removes) the state annotation. With `resource_version`, the write only
    /// succeeds if the node has not changed since the snapshot was taken. The node changes
    /// of the plan (cordon, uncordon, labels) go out in the same request: a drain's start
    /// is one request, state and cordon together or neither, and so is its end.
    pub async fn write_state(
        &self,
        json: Option<String>,
        resource_version: Option<&str>,
        node_changes: &[&Action],
    ) -> Result<()> {
        let node = self.node_name();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut patch = self.node_patch(node_changes);
        patch["metadata"]["annotations"] = json!({&self.config.node.state_annotation: json});
        if let Some(rv) = resource_version {
            patch["metadata"]["resourceVersion"] = json!(rv);
        }
        let patch = Patch::Merge(patch);
        let params = PatchParams::default();
        let write = nodes.patch(&node, &params, &patch);
        let written = tokio::time::timeout(ACTION_TIMEOUT, write)
            .await
            .map_err(|_| Error::Timeout(format!("writing the state of node {node}")))?;
        self.note_version(written)
            .map_err(Error::kube(format!("writing the state of node {node}")))?;
        Ok(())
    }

    /// One merge patch of the node for its cordon, uncordon and label actions.
    fn node_patch(&self, changes: &[&Action]) -> serde_json::Value {
        let mut patch = json!({"metadata": {}});
        for change in changes {
            match change {
                Action::Cordon | Action::Uncordon => {
                    patch["spec"] = json!({"unschedulable": matches!(change, Action::Cordon)});
                }
                Action::SetDrainedLabel(set) => {
                    patch["metadata"]["labels"][&self.config.node.drained_label] =
                        json!(set.then_some("true"));
                }
                Action::RemoveLabel(label) => {
                    patch["metadata"]["labels"][label] = serde_json::Value::Null;
                }
                _ => {}
            }
        }
        patch
    }

    pub async fn publish(&self, event_type: EventType, reason: &str, message: String) {
        self.publish_about(event_type, reason, message, None).await;
    }

    /// Publishes an event on the node; `subject` names the VMI or pod it is also about.
    pub async fn publish_about(
        &self,
        event_type: EventType,
        reason: &str,
        message: String,
        subject: Option<&Subject>,
    ) {
        let event = Event {
            type_: match event_type {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: reason.to_string(),
            note: Some(truncate(message, 1000)),
            action: reason.to_string(),
            secondary: subject.map(|s| ObjectReference {
                api_version: Some(
                    if s.kind == "Pod" {
                        "v1"
                    } else {
                        "kubevirt.io/v1"
                    }
                    .to_string(),
                ),
                kind: Some(s.kind.to_string()),
                namespace: Some(s.namespace.clone()),
                name: Some(s.name.clone()),
                ..Default::default()
            }),
        };
        let reference = self.node.object_ref(&());
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason, "publishing an event failed");
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
