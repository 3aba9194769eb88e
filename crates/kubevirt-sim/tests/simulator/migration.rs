//! Migrations: admission, phases, placement, limits, cancellation and fault knobs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kubevirt_api::labels::{MIGRATION_FINALIZER, MIGRATION_SELECTOR_LABEL, NODE_NAME_LABEL};
use kubevirt_api::{MigrationAbortStatus, MigrationPhase, VirtualMachineInstanceMigration};
use kubevirt_sim::faults::MIGRATION_STALL;
use kubevirt_sim::settings::KubeVirtRelease;
use serde_json::json;

use crate::support::{Env, expect_denied, labels};

#[tokio::test]
async fn migration_for_a_non_migratable_vmi_is_refused() -> Result<()> {
    let env = Env::new("sim-refuse", 2).await?;
    let bridge = env.vmi("bridged", "1Gi", None, |v| {
        v["spec"]["domain"]["devices"]["interfaces"] = json!([{"name": "default", "bridge": {}}]);
    });
    env.start_vmis(&[bridge]).await?;
    expect_denied(
        env.migrate("bridged").await,
        400,
        "Cannot migrate VMI, Reason: InterfaceNotLiveMigratable",
    )?;
    expect_denied(env.migrate("no-such-vmi").await, 400, "does not exist")?;
    Ok(())
}

#[tokio::test]
async fn second_concurrent_migration_is_refused() -> Result<()> {
    let env = Env::new("sim-conflict", 2).await?;
    let vmi = env.vmi("busy", "1Gi", None, |v| {
        v["metadata"]["annotations"]["simulator.vacate.io/migration-stall"] = json!("true");
    });
    env.start_vmis(&[vmi]).await?;
    let first = env.migrate("busy").await?;
    // The mutating webhook added the selector label and the finalizer.
    assert_eq!(
        first.metadata.labels.as_ref().unwrap()[MIGRATION_SELECTOR_LABEL],
        "busy"
    );
    assert!(
        first
            .metadata
            .finalizers
            .as_ref()
            .unwrap()
            .iter()
            .any(|f| f == MIGRATION_FINALIZER)
    );
    expect_denied(
        env.migrate("busy").await,
        400,
        "in-flight migration detected",
    )?;
    env.migrations()
        .delete(
            first.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn migration_moves_the_vmi_and_avoids_cordoned_nodes() -> Result<()> {
    let env = Env::new("sim-move", 3).await?;
    let vmi = env
        .start_vmis(&[env.vmi("mover", "4Gi", Some("LiveMigrate"), |_| {})])
        .await?
        .remove(0);
    let source = vmi.node_name().unwrap().to_string();
    let others: Vec<_> = env
        .nodes
        .names()
        .iter()
        .filter(|n| **n != source)
        .cloned()
        .collect();
    // Cordon one of the two other nodes: the target must be the remaining one.
    env.cordon(&others[0], true).await?;
    let expected_target = others[1].clone();

    let m = env.migrate("mover").await?;
    let name = m.metadata.name.clone().unwrap();
    let done = env.wait_migration(&name, "final", |m| m.is_final()).await?;
    assert_eq!(
        done.phase(),
        Some(MigrationPhase::Succeeded),
        "{:?}",
        done.status
    );
    let phases: Vec<_> = done
        .status
        .as_ref()
        .unwrap()
        .phase_transition_timestamps
        .iter()
        .filter_map(|t| t.phase)
        .collect();
    assert_eq!(
        phases,
        [
            MigrationPhase::Pending,
            MigrationPhase::Scheduling,
            MigrationPhase::Scheduled,
            MigrationPhase::PreparingTarget,
            MigrationPhase::TargetReady,
            MigrationPhase::Running,
            MigrationPhase::Succeeded
        ]
    );
    let state = done.migration_state().unwrap();
    assert_eq!(state.source_node.as_deref(), Some(source.as_str()));
    assert_eq!(state.target_node.as_deref(), Some(expected_target.as_str()));
    assert!(state.completed && !state.failed);

    let moved = env
        .wait_vmi("mover", "on the target", |v| {
            v.node_name() == Some(expected_target.as_str())
        })
        .await?;
    assert_eq!(labels(&moved).get(NODE_NAME_LABEL), Some(&expected_target));
    let vstate = moved.migration_state().unwrap();
    assert!(vstate.completed && vstate.end_timestamp.is_some() && vstate.start_timestamp.is_some());
    assert_eq!(vstate.migration_uid, done.metadata.uid);
    // virt-launcher exits on the source: its pod finishes (Succeeded) and stays, nobody
    // deletes it; the target pod runs. activePods lists both (setActivePods: every pod the
    // VMI controls).
    let source_pod = vstate.source_pod.clone().unwrap();
    testbed::wait_for(
        "the source pod to finish and the target pod to run",
        crate::support::TIMEOUT,
        || async {
            let pods = env.launcher_pods(&moved).await?;
            let source_done = pods.iter().any(|p| {
                p.metadata.name.as_deref() == Some(source_pod.as_str())
                    && pod_phase(p) == Some("Succeeded")
                    && p.metadata.deletion_timestamp.is_none()
            });
            let target_runs = pods.iter().any(|p| {
                p.spec.as_ref().unwrap().node_name.as_deref() == Some(expected_target.as_str())
                    && pod_phase(p) == Some("Running")
            });
            let v = env.vmis().get("mover").await?;
            let active = v.status.unwrap_or_default().active_pods;
            Ok(pods.len() == 2 && source_done && target_runs && active.len() == 2)
        },
    )
    .await?;
    // A finished pod stays finished: kwok does not play it back to Running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = env.launcher_pods(&moved).await?;
    let source = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(source_pod.as_str()))
        .expect("the source pod stays");
    assert_eq!(pod_phase(source), Some("Succeeded"));
    // The finalizer is gone from the finished migration.
    env.wait_migration(&name, "finalizer removed", |m| {
        !m.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == MIGRATION_FINALIZER)
    })
    .await?;
    env.cordon(&others[0], false).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_running_migration_cancels_it() -> Result<()> {
    let env = Env::new("sim-cancel", 2).await?;
    let vmi = env.vmi("stay", "1Gi", None, |v| {
        v["metadata"]["annotations"]["simulator.vacate.io/migration-stall"] = json!("true");
    });
    let vmi = env.start_vmis(&[vmi]).await?.remove(0);
    let source = vmi.node_name().unwrap().to_string();
    let m = env.migrate("stay").await?;
    let name = m.metadata.name.clone().unwrap();
    env.wait_migration_phase(&name, MigrationPhase::Running)
        .await?;
    // A stalled migration stays Running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.migrations().get(&name).await?.phase(),
        Some(MigrationPhase::Running)
    );

    // Watch the migration from before the deletion: after the hand-off a deletion only
    // asks for an abort; the finalizer keeps the object, still Running, until it is final.
    let seen_abort_requested = {
        let api = env.migrations();
        let name = name.clone();
        tokio::spawn(async move {
            let stream = watcher(
                api,
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            )
            .default_backoff()
            .applied_objects();
            let mut stream = std::pin::pin!(stream);
            let mut seen = false;
            while let Some(Ok(m)) = stream.next().await {
                let requested = m.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "migrationAbortRequested")
                });
                if m.metadata.deletion_timestamp.is_some()
                    && m.phase() == Some(MigrationPhase::Running)
                    && requested
                {
                    seen = true;
                }
                if m.is_final() {
                    break;
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.migrations()
        .delete(&name, &DeleteParams::default())
        .await?;
    testbed::wait_for(
        "the cancelled migration to be deleted",
        crate::support::TIMEOUT,
        || async { Ok(env.migrations().get_opt(&name).await?.is_none()) },
    )
    .await?;
    ensure!(
        tokio::time::timeout(Duration::from_secs(10), seen_abort_requested).await??,
        "the deleted migration was never seen Running with deletionTimestamp and migrationAbortRequested"
    );
    let after = env
        .wait_vmi("stay", "migration aborted", |v| {
            v.migration_state().is_some_and(|s| s.failed)
        })
        .await?;
    let state = after.migration_state().unwrap();
    assert_eq!(state.abort_status, Some(MigrationAbortStatus::Succeeded));
    assert!(state.abort_requested);
    assert_eq!(
        state.failure_reason.as_deref(),
        Some("Live migration has been aborted")
    );
    assert_eq!(after.node_name(), Some(source.as_str()));
    assert!(after.is_running());
    // The target virt-launcher exits on its own: its pod finishes and stays.
    testbed::wait_for(
        "the target pod to finish",
        crate::support::TIMEOUT,
        || async {
            let pods = env.launcher_pods(&after).await?;
            Ok(pods.len() == 2
                && pods
                    .iter()
                    .filter(|p| pod_phase(p) == Some("Running"))
                    .count()
                    == 1
                && pods.iter().any(|p| pod_phase(p) == Some("Succeeded")))
        },
    )
    .await?;
    Ok(())
}

/// Before the hand-off (here: the target pod cannot be scheduled) deleting a migration
/// cancels it at once: the target pod is deleted, the VMI never gets a migration state.
#[tokio::test]
async fn deleting_a_migration_before_the_hand_off_cancels_it_at_once() -> Result<()> {
    let env = Env::new("sim-cancel-early", 2).await?;
    let vmi = env.vmi("early", "1Gi", None, |v| {
        v["metadata"]["annotations"]["simulator.vacate.io/target-unschedulable"] = json!("true");
    });
    let vmi = env.start_vmis(&[vmi]).await?.remove(0);
    let m = env.migrate("early").await?;
    let name = m.metadata.name.clone().unwrap();
    env.wait_migration_phase(&name, MigrationPhase::Scheduling)
        .await?;
    testbed::wait_for("the target pod", crate::support::TIMEOUT, || async {
        Ok(env.launcher_pods(&vmi).await?.len() == 2)
    })
    .await?;
    env.migrations()
        .delete(&name, &DeleteParams::default())
        .await?;
    testbed::wait_for(
        "the cancelled migration to be deleted",
        Duration::from_secs(10),
        || async { Ok(env.migrations().get_opt(&name).await?.is_none()) },
    )
    .await?;
    testbed::wait_for(
        "the target pod to be deleted",
        Duration::from_secs(15),
        || async { Ok(env.launcher_pods(&vmi).await?.len() == 1) },
    )
    .await?;
    let after = env.vmis().get("early").await?;
    assert!(after.migration_state().is_none(), "{:?}", after.status);
    assert!(after.is_running());
    Ok(())
}

/// `spec.addedNodeSelector` steers the target pod, but cannot override the VMI's own node
/// selector: a colliding key keeps the VMI's value.
#[tokio::test]
async fn added_node_selector_restricts_the_target() -> Result<()> {
    let env = Env::new("sim-added", 3).await?;
    let vmi = env
        .start_vmis(&[env.vmi("steer", "1Gi", None, |_| {})])
        .await?
        .remove(0);
    let source = vmi.node_name().unwrap().to_string();
    // The last node that is not the source: the scheduler would pick either by itself.
    let chosen = env
        .nodes
        .names()
        .iter()
        .rfind(|n| **n != source)
        .cloned()
        .unwrap();
    let set_selector = env.nodes.node_selector();
    let (set_key, set_value) = set_selector.iter().next().unwrap();
    let mut m = VirtualMachineInstanceMigration::new(
        "",
        kubevirt_api::VirtualMachineInstanceMigrationSpec {
            vmi_name: "steer".into(),
            added_node_selector: BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), chosen.clone()),
                (set_key.clone(), "no-such-set".to_string()),
            ]),
            ..Default::default()
        },
    );
    m.metadata.name = Some("steer-added".into());
    env.migrations()
        .create(&kube::api::PostParams::default(), &m)
        .await?;
    let done = env
        .wait_migration("steer-added", "final", |m| m.is_final())
        .await?;
    assert_eq!(
        done.phase(),
        Some(MigrationPhase::Succeeded),
        "{:?}",
        done.status
    );
    let target_pod = done.migration_state().unwrap().target_pod.clone().unwrap();
    let pod = env.pods().get(&target_pod).await?;
    let spec = pod.spec.unwrap();
    let selector = spec.node_selector.unwrap();
    assert_eq!(selector["kubernetes.io/hostname"], chosen);
    assert_eq!(&selector[set_key], set_value, "the VMI's own selector wins");
    assert_eq!(selector["kubevirt.io/schedulable"], "true");
    assert_eq!(spec.node_name.as_deref(), Some(chosen.as_str()));
    Ok(())
}

/// A migration of a VMI that is not running yet is admitted (KubeVirt has no such check)
/// and waits in Pending; LiveMigratable only appears once virt-handler has the VMI
/// (Scheduled); when the VMI runs, the migration goes ahead.
#[tokio::test]
async fn a_migration_of_a_vmi_not_running_yet_waits() -> Result<()> {
    let env = Env::new("sim-early-mig", 3).await?;
    let nodes = env.nodes.names().to_vec();
    let vmi = env.vmi("later", "1Gi", Some("LiveMigrate"), |v| {
        v["spec"]["nodeSelector"]["sim.vacate.io/ready"] = json!("yes");
    });
    env.create_vmi(&vmi).await?;
    let pending = env
        .wait_vmi("later", "Scheduling", |v| {
            v.phase() == Some(kubevirt_api::VmiPhase::Scheduling)
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pending = env.vmis().get("later").await.unwrap_or(pending);
    assert!(
        crate::support::live_migratable(&pending).is_none(),
        "LiveMigratable before the VMI is scheduled: {:?}",
        pending.status
    );
    let m = env.migrate("later").await?;
    let name = m.metadata.name.clone().unwrap();
    env.wait_migration_phase(&name, MigrationPhase::Pending)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.migrations().get(&name).await?.phase(),
        Some(MigrationPhase::Pending)
    );
    // Two nodes become eligible: the VMI starts on one and migrates to the other.
    let nodes_api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(env.client.clone());
    for n in &nodes[..2] {
        nodes_api
            .patch(
                n,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({"metadata": {"labels": {"sim.vacate.io/ready": "yes"}}}),
                ),
            )
            .await?;
    }
    let running = env.wait_running("later").await?;
    assert_eq!(
        crate::support::live_migratable(&running).map(|(ok, _)| ok),
        Some(true)
    );
    let done = env.wait_migration(&name, "final", |m| m.is_final()).await?;
    assert_eq!(
        done.phase(),
        Some(MigrationPhase::Succeeded),
        "{:?}",
        done.status
    );
    Ok(())
}

fn pod_phase(p: &k8s_openapi::api::core::v1::Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Six migrations from one node: a watch on the migrations never sees more than two started
/// and unfinished at once (`parallelOutboundMigrationsPerNode`), and all succeed.
#[tokio::test]
async fn outbound_migrations_per_node_are_limited_to_two() -> Result<()> {
    let env = Env::new("sim-limit", 3).await?;
    // Put every VMI on the first node; the others are open as targets afterwards.
    env.live_migratable_vmis_on(0, 6, "4Gi").await?;

    let observer = tokio::spawn(observe_outbound(env.migrations(), 6));
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..6 {
        env.migrate(&format!("vm{i}")).await?;
    }
    let (max, phases) = tokio::time::timeout(Duration::from_secs(180), observer).await???;
    ensure!(max <= 2, "saw {max} concurrent outbound migrations");
    ensure!(max >= 1, "saw no running migration");
    ensure!(
        phases.values().all(|p| *p == MigrationPhase::Succeeded),
        "{phases:?}"
    );
    for i in 0..6 {
        let v = env.vmis().get(&format!("vm{i}")).await?;
        ensure!(
            v.node_name() != Some(env.node(0)),
            "vm{i} still on the source"
        );
    }
    Ok(())
}

/// Watches migrations until `count` are final; returns the largest number seen started
/// (past Pending) and unfinished at the same time, and the final phases.
pub async fn observe_outbound(
    api: kube::Api<VirtualMachineInstanceMigration>,
    count: usize,
) -> Result<(usize, BTreeMap<String, MigrationPhase>)> {
    let mut phases: HashMap<String, MigrationPhase> = HashMap::new();
    let mut max = 0;
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(m) = stream.next().await {
        let m = m?;
        let Some(phase) = m.phase() else { continue };
        phases.insert(m.metadata.name.clone().unwrap_or_default(), phase);
        let running = phases
            .values()
            .filter(|p| !p.is_final() && **p != MigrationPhase::Pending)
            .count();
        max = max.max(running);
        if phases.values().filter(|p| p.is_final()).count() >= count {
            break;
        }
    }
    Ok((max, phases.into_iter().collect()))
}

#[tokio::test]
async fn fault_knobs() -> Result<()> {
    let env = Env::new("sim-faults", 2).await?;
    let failing = env.vmi("failing", "1Gi", None, |v| {
        v["metadata"]["annotations"]["simulator.vacate.io/migration-failure-rate"] = json!("1.0");
    });
    let stuck = env.vmi("stuck", "1Gi", None, |v| {
        v["metadata"]["annotations"]["simulator.vacate.io/target-unschedulable"] = json!("true");
    });
    let vmis = env.start_vmis(&[failing, stuck]).await?;
    let failing_node = vmis[0].node_name().unwrap().to_string();

    let m1 = env.migrate("failing").await?.metadata.name.unwrap();
    let m2 = env.migrate("stuck").await?.metadata.name.unwrap();

    // Failure rate 1: fails while running, the VMI stays where it was.
    let failed = env.wait_migration(&m1, "final", |m| m.is_final()).await?;
    assert_eq!(failed.phase(), Some(MigrationPhase::Failed));
    assert!(failed.phase_entered_at(MigrationPhase::Running).is_some());
    let v = env.vmis().get("failing").await?;
    assert_eq!(v.node_name(), Some(failing_node.as_str()));
    assert!(v.migration_state().is_some_and(|s| s.failed));

    // Unschedulable target: Scheduling until KubeVirt's 5-minute timeout (scaled) fails it.
    env.wait_migration_phase(&m2, MigrationPhase::Scheduling)
        .await?;
    let pending = env.wait_migration(&m2, "final", |m| m.is_final()).await?;
    assert_eq!(pending.phase(), Some(MigrationPhase::Failed));
    assert!(
        pending
            .phase_entered_at(MigrationPhase::Scheduled)
            .is_none()
    );
    let stuck = env.vmis().get("stuck").await?;
    testbed::wait_for(
        "the unschedulable target pod to be removed",
        crate::support::TIMEOUT,
        || async { Ok(env.launcher_pods(&stuck).await?.len() == 1) },
    )
    .await?;
    Ok(())
}

/// Several VMIs, each migrated and, as soon as that migration succeeded, migrated again (a
/// rolling drain moves VMs twice). Each VMI stays where its last migration took it, with that
/// pod alone in `activePods`, through the controllers' resyncs.
#[tokio::test]
async fn a_vmi_migrated_twice_stays_on_the_last_target() -> Result<()> {
    let env = Env::new("sim-twice", 3).await?;
    let names: Vec<String> = (0..4).map(|i| format!("twice{i}")).collect();
    let vmis: Vec<_> = names
        .iter()
        .map(|n| env.vmi(n, "1Gi", Some("LiveMigrate"), |_| {}))
        .collect();
    env.start_vmis(&vmis).await?;

    let mut chains = Vec::new();
    for name in &names {
        let env = &env;
        chains.push(async move {
            let mut last = None;
            for _ in 0..2 {
                let m = env.migrate(name).await?;
                let m = m.metadata.name.unwrap_or_default();
                let done = env.wait_migration(&m, "final", |m| m.is_final()).await?;
                ensure!(
                    done.phase() == Some(MigrationPhase::Succeeded),
                    "{m} of {name}: {:?}",
                    done.status
                );
                last = done.migration_state().and_then(|s| s.target_node.clone());
            }
            last.ok_or_else(|| anyhow::anyhow!("{name}: no target node"))
        });
    }
    let targets: Vec<String> = futures::future::try_join_all(chains).await?;

    // Twice the VMI controller's resync, and the migration controller's re-reconciles of
    // both finished migrations. The VMI must be on the target from the start; its source pod
    // goes within seconds (grace period 0), and from then on the target pod alone remains.
    let until = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut pods_settled = false;
    loop {
        let mut wrong = Vec::new();
        let mut all_pods_settled = true;
        for (name, target) in names.iter().zip(&targets) {
            let v = env.vmis().get(name).await?;
            let status = v.status.clone().unwrap_or_default();
            let pods = env.launcher_pods(&v).await?;
            let node_of = |p: &k8s_openapi::api::core::v1::Pod| {
                p.spec.as_ref().and_then(|s| s.node_name.clone())
            };
            // The finished source pods stay (nobody deletes them); one pod runs, on the
            // target, and activePods lists every pod with its node.
            let running: Vec<_> = pods
                .iter()
                .filter(|p| pod_phase(p) != Some("Succeeded"))
                .collect();
            let on_target = running.len() == 1 && node_of(running[0]).as_ref() == Some(target);
            let active_is_target = on_target
                && status.active_pods.len() == pods.len()
                && status
                    .active_pods
                    .get(running[0].metadata.uid.as_deref().unwrap_or_default())
                    == Some(target);
            let vmi_on_target = v.node_name() == Some(target.as_str())
                && labels(&v).get(NODE_NAME_LABEL) == Some(target)
                && v.is_running();
            all_pods_settled &= active_is_target;
            if !vmi_on_target || (pods_settled && !active_is_target) {
                let pods: Vec<_> = pods
                    .iter()
                    .map(|p| (p.metadata.name.clone(), node_of(p)))
                    .collect();
                wrong.push(format!(
                    "{name}: expected on {target}, node {:?} phase {:?} activePods {:?} pods {pods:?}",
                    v.node_name(),
                    v.phase(),
                    status.active_pods,
                ));
            }
        }
        ensure!(wrong.is_empty(), "{wrong:#?}");
        pods_settled |= all_pods_settled;
        if tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(pods_settled, "the source pods never went away");
    Ok(())
}

/// A Pending migration whose target pod already exists (the sync that created it could not
/// write the status after it, as when etcd restarts in between) moves on to Scheduling,
/// whatever holds new migrations back: KubeVirt's `updateStatus` moves every Pending
/// migration with a target pod, and only `handleTargetPodCreation` looks at the limits and
/// at the VMI's other pods (pkg/virt-controller/watch/migration/migration.go).
#[tokio::test]
async fn a_pending_migration_whose_target_pod_exists_moves_on() -> Result<()> {
    let env = Env::new("sim-adopt", 3).await?;
    let vmis = env.live_migratable_vmis_on(0, 3, "1Gi").await?;
    // vm0 and vm1 migrate for ever: the node's two outbound slots stay taken.
    let mut stalled = Vec::new();
    for name in ["vm0", "vm1"] {
        let stall = json!({"metadata": {"annotations": {MIGRATION_STALL: "true"}}});
        env.vmis()
            .patch(name, &PatchParams::default(), &Patch::Merge(&stall))
            .await?;
        let m = env.migrate(name).await?;
        let m = m.metadata.name.unwrap_or_default();
        env.wait_migration_phase(&m, MigrationPhase::Running)
            .await?;
        stalled.push(m);
    }
    let held = env.migrate("vm2").await?;
    let name = held.metadata.name.clone().unwrap_or_default();
    let held = env
        .wait_migration_phase(&name, MigrationPhase::Pending)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        env.migrations().get(&name).await?.phase() == Some(MigrationPhase::Pending),
        "the migration of vm2 was not held back by the node's limit"
    );

    // Its target pod, as the simulator renders it.
    let pod = kubevirt_sim::launcher::render_target_pod(
        &vmis[2],
        &held,
        false,
        KubeVirtRelease::default(),
    )?;
    let pod = env.pods().create(&PostParams::default(), &pod).await?;
    let moved = env
        .wait_migration(&name, "Scheduling with the existing target pod", |m| {
            m.phase()
                .is_some_and(|p| p >= MigrationPhase::Scheduling && !p.is_final())
        })
        .await?;
    let state = moved.migration_state().cloned().unwrap_or_default();
    ensure!(
        state.target_pod == pod.metadata.name && state.migration_uid == moved.metadata.uid,
        "migration state {state:?}, target pod {:?}",
        pod.metadata.name
    );
    ensure!(
        env.launcher_pods(&vmis[2]).await?.len() == 2,
        "a second target pod was created"
    );
    for m in stalled.iter().chain([&name]) {
        env.migrations().delete(m, &DeleteParams::default()).await?;
    }
    Ok(())
}
