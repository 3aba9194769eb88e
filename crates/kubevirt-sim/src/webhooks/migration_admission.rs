//! Admission of new migrations, after KubeVirt's
//! `pkg/virt-api/webhooks/validating-webhook/admitters/migration-create-admitter.go` and the
//! migration mutator of `pkg/virt-api/webhooks/mutating-webhook/mutators`.

use kube::api::{Api, ListParams};
use kubevirt_api::labels::{MIGRATION_FINALIZER, MIGRATION_SELECTOR_LABEL, VIRT_CONTROLLER_USER};
use kubevirt_api::{ConditionStatus, VirtualMachineInstance, VirtualMachineInstanceMigration};
use serde_json::json;

use super::admission::{AdmissionRequest, Verdict};
use crate::controllers::Context;
use crate::error::kube_not_found;
use crate::settings::KubeVirtRelease;
use kubevirt_api::common::condition_type;

fn migration_of(req: &AdmissionRequest) -> Result<VirtualMachineInstanceMigration, Verdict> {
    let object = req
        .object
        .clone()
        .ok_or_else(|| Verdict::bad_request("request without object"))?;
    serde_json::from_value(object).map_err(|e| Verdict::bad_request(e.to_string()))
}

/// Who may set `spec.priority`, per release (migration-create-admitter.go, `Admit`):
/// v1.9.0 only virt-controller's service account; v1.7.4 nobody while the
/// `MigrationPriorityQueue` feature gate is off (a default install). Both answer with
/// `ToAdmissionResponse` (422 Invalid, field `spec.migrationPriority`).
pub fn check_priority(
    migration: &VirtualMachineInstanceMigration,
    username: &str,
    release: KubeVirtRelease,
) -> Option<Verdict> {
    migration.spec.priority.as_ref()?;
    match release {
        KubeVirtRelease::V1_7 => Some(Verdict::invalid(
            "MigrationPriorityQueue feature gate is not enabled in kubevirt resource",
        )),
        KubeVirtRelease::V1_9 if username != VIRT_CONTROLLER_USER => Some(Verdict::invalid(
            "Migration priority queue, only virt-controller is allowed to set priority field",
        )),
        KubeVirtRelease::V1_9 => None,
    }
}

/// Validates a new migration: only virt-controller may set a priority; the VMI must exist,
/// must not be final, must run, must not be `LiveMigratable=False`, and must have no other
/// unfinished migration.
pub async fn validate_create(ctx: &Context, req: &AdmissionRequest) -> Verdict {
    let migration = match migration_of(req) {
        Ok(m) => m,
        Err(v) => return v,
    };
    if let Some(refused) = check_priority(&migration, &req.user_info.username, ctx.config().release)
    {
        return refused;
    }
    let namespace = migration
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| req.namespace.clone());
    let vmi_name = migration.spec.vmi_name.clone();
    if vmi_name.is_empty() {
        return Verdict::invalid("vmiName is missing");
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &namespace);
    let vmi = match vmis.get(&vmi_name).await {
        Ok(v) => v,
        Err(e) if kube_not_found(&e) => {
            return Verdict::bad_request(format!(
                "the VMI \"{namespace}/{vmi_name}\" does not exist"
            ));
        }
        Err(e) => return Verdict::bad_request(e.to_string()),
    };
    // Don't allow introducing a migration job for a VMI that has already finalized.
    if vmi.is_final() {
        return Verdict::bad_request("Cannot migrate VMI in finalized state.");
    }
    // A VMI not running yet (Pending, Scheduling, Scheduled) is admitted: KubeVirt has no
    // such check; the migration waits in Pending until the VMI runs (migration.go
    // `handleTargetPodCreation` creates the target pod only for a running VMI).
    // Reject migration jobs for non-migratable VMIs.
    if let Some(c) = vmi.condition(condition_type::LIVE_MIGRATABLE)
        && c.status == ConditionStatus::False
    {
        return Verdict::bad_request(format!(
            "Cannot migrate VMI, Reason: {}, Message: {}",
            c.reason.as_deref().unwrap_or_default(),
            c.message.as_deref().unwrap_or_default()
        ));
    }
    // Don't allow new migration jobs while another one is in flight (`ensureNoConflict`).
    let migrations: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{MIGRATION_SELECTOR_LABEL} in ({vmi_name})");
    match migrations
        .list(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => {
            if let Some(active) = list.items.iter().find(|m| !m.is_final()) {
                return Verdict::bad_request(format!(
                    "in-flight migration detected. Active migration job ({}) is currently already in progress for VMI {}.",
                    active.metadata.uid.as_deref().unwrap_or_default(),
                    active.spec.vmi_name
                ));
            }
        }
        Err(e) => return Verdict::bad_request(e.to_string()),
    }
    Verdict::Allow
}

/// Adds the selector label `kubevirt.io/vmi-name` and the finalizer
/// `kubevirt.io/migrationJobFinalize`.
pub fn mutate_create(req: &AdmissionRequest) -> Verdict {
    let migration = match migration_of(req) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let mut ops = Vec::new();
    let mut labels = migration.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        MIGRATION_SELECTOR_LABEL.into(),
        migration.spec.vmi_name.clone(),
    );
    ops.push(json!({"op": if migration.metadata.labels.is_some() { "replace" } else { "add" }, "path": "/metadata/labels", "value": labels}));
    let mut finalizers = migration.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == MIGRATION_FINALIZER) {
        finalizers.push(MIGRATION_FINALIZER.into());
    }
    ops.push(json!({"op": if migration.metadata.finalizers.is_some() { "replace" } else { "add" }, "path": "/metadata/finalizers", "value": finalizers}));
    Verdict::Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_virt_controller_sets_a_priority_in_v1_9() {
        let mut m = VirtualMachineInstanceMigration::new("m", Default::default());
        assert_eq!(check_priority(&m, "alice", KubeVirtRelease::V1_9), None);
        assert_eq!(check_priority(&m, "alice", KubeVirtRelease::V1_7), None);
        m.spec.priority = Some("system-critical".into());
        assert_eq!(
            check_priority(&m, VIRT_CONTROLLER_USER, KubeVirtRelease::V1_9),
            None
        );
        let Some(Verdict::Deny { code, message, .. }) =
            check_priority(&m, "alice", KubeVirtRelease::V1_9)
        else {
            panic!("a user's priority was allowed")
        };
        assert_eq!(code, 422);
        assert!(message.contains("only virt-controller"), "{message}");
        let Some(Verdict::Deny { message, .. }) =
            check_priority(&m, VIRT_CONTROLLER_USER, KubeVirtRelease::V1_7)
        else {
            panic!("a priority was allowed with the feature gate off")
        };
        assert!(message.contains("feature gate is not enabled"), "{message}");
    }

    #[test]
    fn mutation_adds_label_and_finalizer() {
        let req = AdmissionRequest {
            uid: "u".into(),
            object: Some(
                json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"generateName": "m-", "labels": {"a": "b"}}, "spec": {"vmiName": "vm1"}}),
            ),
            ..Default::default()
        };
        let Verdict::Patch(ops) = mutate_create(&req) else {
            panic!("no patch")
        };
        assert_eq!(ops[0]["op"], "replace");
        assert_eq!(ops[0]["value"]["kubevirt.io/vmi-name"], "vm1");
        assert_eq!(ops[0]["value"]["a"], "b");
        assert_eq!(ops[1]["op"], "add");
        assert_eq!(ops[1]["value"][0], MIGRATION_FINALIZER);
    }
}
