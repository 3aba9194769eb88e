//! Evacuation, after virt-controller's evacuation controller
//! (`pkg/virt-controller/watch/drain/evacuation/evacuation.go`), keyed by node like KubeVirt's:
//! VMIs on a node that the eviction webhook marked (`status.evacuationNodeName` = the node),
//! or all VMIs of a node tainted `kubevirt.io/drain:NoSchedule`, get a migration
//! (`generateName: kubevirt-evacuation-`, annotation `kubevirt.io/evacuationMigration`) when
//! their eviction strategy wants migration on eviction (`VMIMigratableOnEviction`: LiveMigrate,
//! or LiveMigrateIfPossible and migratable), they are `LiveMigratable`, have no unfinished
//! migration and a single active pod. How many are created at once depends on the release
//! followed ([`crate::settings::KubeVirtRelease`]):
//!
//! * v1.9.0: a migration for every candidate at once, with `spec.priority: system-critical`
//!   (`system-maintenance` for a VMI annotated `kubevirt.io/eviction-source: descheduler`),
//!   created as virt-controller's service account; the migration controller's priority queue
//!   enforces the limits (`GenerateNewMigration` and `sync` in v1.9.0's evacuation.go);
//! * v1.7.4 (feature gate `MigrationPriorityQueue` off, as installed by default): at most
//!   `min(parallelMigrationsPerCluster − running, parallelOutboundMigrationsPerNode − running
//!   from this node)`, without priority; the rest waits for a later pass (KubeVirt re-enqueues
//!   the node after 5 s).
//!
//! A VMI that has left the node it was marked for has its mark cleared (virt-handler does this
//! when a migration completes; doing it here too covers VMIs that left otherwise).

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kubevirt_api::labels::{
    EVACUATION_MIGRATION_ANNOTATION, EVACUATION_MIGRATION_NAME_PREFIX, EVICTION_SOURCE_ANNOTATION,
    NODE_DRAIN_TAINT_DEFAULT_KEY,
};
use kubevirt_api::migration::migration_priority;
use kubevirt_api::{
    EvictionStrategy, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationSpec,
};
use serde_json::json;

use super::{Context, key_of, retry_after_error};
use crate::error::{Error, Result};
use crate::settings::ClusterConfig;

pub async fn run(
    ctx: Arc<Context>,
    vmis: super::Subscription<VirtualMachineInstance>,
    migrations: super::Subscription<VirtualMachineInstanceMigration>,
) {
    let client = ctx.client.clone();
    let migration_ctx = ctx.clone();
    Controller::new(Api::<Node>::all(client), watcher::Config::default())
        .watches_shared_stream(vmis, |vmi: Arc<VirtualMachineInstance>| {
            let status = vmi.status.clone().unwrap_or_default();
            [status.node_name, status.evacuation_node_name]
                .into_iter()
                .flatten()
                .filter(|n| !n.is_empty())
                .map(|n| ObjectRef::new(&n))
                .collect::<Vec<ObjectRef<Node>>>()
        })
        .watches_shared_stream(
            migrations,
            move |m: Arc<VirtualMachineInstanceMigration>| {
                migration_ctx
                    .vmi(
                        m.metadata.namespace.as_deref().unwrap_or_default(),
                        &m.spec.vmi_name,
                    )
                    .and_then(|v| v.node_name().map(ObjectRef::new))
            },
        )
        .run(reconcile, retry_after_error, ctx)
        .for_each(|_| async {})
        .await;
}

/// `VMIMigratableOnEviction`.
pub fn migratable_on_eviction(vmi: &VirtualMachineInstance, cfg: &ClusterConfig) -> bool {
    match vmi.effective_eviction_strategy(cfg.eviction_strategy) {
        Some(EvictionStrategy::LiveMigrate) => true,
        Some(EvictionStrategy::LiveMigrateIfPossible) => vmi.is_migratable(),
        _ => false,
    }
}

const RESYNC: std::time::Duration = std::time::Duration::from_secs(5);

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let node_name = node
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let cfg = ctx.config();
    let all_vmis = ctx.vmis.state();

    // Clear marks of VMIs that have left this node.
    for vmi in all_vmis.iter().filter(|v| {
        v.status
            .as_ref()
            .and_then(|s| s.evacuation_node_name.as_deref())
            == Some(node_name.as_str())
            && v.node_name() != Some(node_name.as_str())
            && !v.is_migrating()
    }) {
        let patch = json!({"status": {"evacuationNodeName": null}});
        ctx.patch_vmi(
            vmi.metadata.namespace.as_deref().unwrap_or_default(),
            vmi.metadata.name.as_deref().unwrap_or_default(),
            vmi.metadata.resource_version.as_deref(),
            patch,
        )
        .await?;
        tracing::info!(vmi = %key_of(vmi.as_ref()), node = %node_name, "cleared evacuation mark");
    }

    let on_node: Vec<_> = all_vmis
        .iter()
        .filter(|v| v.node_name() == Some(node_name.as_str()))
        .cloned()
        .collect();
    if on_node.is_empty() {
        return Ok(Action::await_change());
    }
    // Nodes with VMIs are looked at again now and then, like an informer resync (the
    // migration watch does not pass deletions on).
    let resync = Action::requeue(RESYNC);
    let drain_key = cfg
        .migrations
        .node_drain_taint_key
        .clone()
        .unwrap_or_else(|| NODE_DRAIN_TAINT_DEFAULT_KEY.into());
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key == drain_key && t.effect == "NoSchedule")
        });
    let to_migrate: Vec<_> = if tainted {
        on_node.clone()
    } else {
        on_node
            .iter()
            .filter(|v| {
                v.status
                    .as_ref()
                    .and_then(|s| s.evacuation_node_name.as_deref())
                    == Some(node_name.as_str())
                    && !v.is_migrating()
            })
            .cloned()
            .collect()
    };
    if to_migrate.is_empty() {
        // Nothing to evacuate: a taint (node event) or a mark (VMI event) wakes the node.
        // Not resynced: thousands of nodes with VMIs would each be looked at every few
        // seconds, reading every VMI each time.
        return Ok(Action::await_change());
    }

    let migrations = ctx.migrations.state();
    let unfinished: Vec<_> = migrations.iter().filter(|m| !m.is_final()).collect();
    let migrating: HashSet<String> = unfinished
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m.metadata.namespace.as_deref().unwrap_or_default(),
                m.spec.vmi_name
            )
        })
        .collect();

    let mut candidates = Vec::new();
    let mut non_migratable = 0usize;
    for vmi in &to_migrate {
        let key = key_of(vmi.as_ref());
        if vmi.is_final()
            || vmi.metadata.deletion_timestamp.is_some()
            || !migratable_on_eviction(vmi, &cfg)
        {
            continue;
        }
        if !vmi.is_migratable() {
            non_migratable += 1;
            continue;
        }
        if migrating.contains(&key) {
            ctx.migration_expectations.observed(&key);
            continue;
        }
        if ctx.migration_expectations.pending(&key) {
            continue;
        }
        // `VMIActivePodsCount`: pods of the VMI that have not finished.
        if ctx.unfinished_pods_of_vmi(vmi) > 1 {
            continue;
        }
        candidates.push(vmi.clone());
    }
    if candidates.is_empty() {
        if non_migratable > 0 {
            tracing::debug!(node = %node_name, non_migratable, "VirtualMachineInstance is not migrateable");
        }
        return Ok(resync);
    }

    let running: Vec<_> = unfinished.iter().filter(|m| m.is_running()).collect();
    let on_node_names: HashSet<String> = on_node.iter().map(|v| key_of(v.as_ref())).collect();
    let from_this_node = running
        .iter()
        .filter(|m| {
            on_node_names.contains(&format!(
                "{}/{}",
                m.metadata.namespace.as_deref().unwrap_or_default(),
                m.spec.vmi_name
            ))
        })
        .count();
    let priority_queue = cfg.release.priority_queue();
    let selected = if priority_queue {
        // v1.9.0: every candidate at once; the migration controller's queue holds them.
        candidates.len()
    } else {
        let free_cluster =
            cfg.migrations.parallel_migrations_per_cluster() as i64 - running.len() as i64;
        let free_node =
            cfg.migrations.parallel_outbound_migrations_per_node() as i64 - from_this_node as i64;
        let free = free_cluster.min(free_node);
        if free <= 0 {
            return Ok(Action::requeue(cfg.recheck()));
        }
        candidates.len().min(free as usize)
    };
    tracing::info!(node = %node_name, running = running.len(), candidates = candidates.len(), selected, "evacuating");
    for vmi in &candidates[..selected] {
        let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
        let mut migration = VirtualMachineInstanceMigration::new(
            "",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: vmi.metadata.name.clone().unwrap_or_default(),
                priority: priority_queue.then(|| evacuation_priority(vmi).to_string()),
                ..Default::default()
            },
        );
        migration.metadata.name = None;
        migration.metadata.generate_name = Some(EVACUATION_MIGRATION_NAME_PREFIX.into());
        migration.metadata.namespace = Some(namespace.clone());
        migration.metadata.annotations = Some(
            [(
                EVACUATION_MIGRATION_ANNOTATION.to_string(),
                node_name.clone(),
            )]
            .into(),
        );
        // Only virt-controller may set a priority (migration-create-admitter.go).
        let client = if priority_queue {
            ctx.virt_controller_client.clone()
        } else {
            ctx.client.clone()
        };
        let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(client, &namespace);
        match api.create(&PostParams::default(), &migration).await {
            Ok(created) => {
                ctx.migration_expectations.expect(&key_of(vmi.as_ref()));
                tracing::info!(vmi = %key_of(vmi.as_ref()), migration = created.metadata.name.as_deref().unwrap_or(""), "created evacuation migration");
            }
            Err(e) => {
                tracing::warn!(vmi = %key_of(vmi.as_ref()), "creating an evacuation migration failed: {e}")
            }
        }
    }
    if priority_queue {
        return Ok(resync);
    }
    // More candidates than free slots: look again after KubeVirt's re-enqueue delay.
    Ok(Action::requeue(cfg.recheck()))
}

/// `spec.priority` of an evacuation migration (`GenerateNewMigration`, v1.9.0's
/// evacuation.go): `system-critical`, or `system-maintenance` when the descheduler asked for
/// the eviction.
pub fn evacuation_priority(vmi: &VirtualMachineInstance) -> &'static str {
    let from_descheduler = vmi
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EVICTION_SOURCE_ANNOTATION))
        .is_some_and(|v| v == "descheduler");
    if from_descheduler {
        migration_priority::SYSTEM_MAINTENANCE
    } else {
        migration_priority::SYSTEM_CRITICAL
    }
}
