//! Migrations: admission, phases, placement, limits, cancellation and fault knobs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use kube::api::DeleteParams;
use kube::runtime::{WatchStreamExt, watcher};
use kubevirt_api::labels::{MIGRATION_FINALIZER, MIGRATION_SELECTOR_LABEL, NODE_NAME_LABEL};
use kubevirt_api::{MigrationAbortStatus, MigrationPhase, VirtualMachineInstanceMigration};
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
    // The source pod goes away; one pod remains, on the target.
    testbed::wait_for(
        "only the target pod to remain",
        crate::support::TIMEOUT,
        || async {
            let pods = env.launcher_pods(&moved).await?;
            Ok(pods.len() == 1
                && pods[0].spec.as_ref().unwrap().node_name.as_deref()
                    == Some(expected_target.as_str()))
        },
    )
    .await?;
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

    env.migrations()
        .delete(&name, &DeleteParams::default())
        .await?;
    testbed::wait_for(
        "the cancelled migration to be deleted",
        crate::support::TIMEOUT,
        || async { Ok(env.migrations().get_opt(&name).await?.is_none()) },
    )
    .await?;
    let after = env
        .wait_vmi("stay", "migration aborted", |v| {
            v.migration_state().is_some_and(|s| s.failed)
        })
        .await?;
    let state = after.migration_state().unwrap();
    assert_eq!(state.abort_status, Some(MigrationAbortStatus::Succeeded));
    assert!(state.abort_requested);
    assert_eq!(after.node_name(), Some(source.as_str()));
    assert!(after.is_running());
    testbed::wait_for(
        "the target pod to be removed",
        crate::support::TIMEOUT,
        || async { Ok(env.launcher_pods(&after).await?.len() == 1) },
    )
    .await?;
    Ok(())
}

/// Six migrations from one node: a watch on the migrations never sees more than two started
/// and unfinished at once (`parallelOutboundMigrationsPerNode`), and all succeed.
#[tokio::test]
async fn outbound_migrations_per_node_are_limited_to_two() -> Result<()> {
    let env = Env::new("sim-limit", 3).await?;
    let names = env.nodes.names().to_vec();
    // Put every VMI on the first node; the others are open as targets afterwards.
    let vmis: Vec<_> = (0..6)
        .map(|i| env.vmi(&format!("vm{i}"), "4Gi", Some("LiveMigrate"), |_| {}))
        .collect();
    let running = env.place_on(0, || env.start_vmis(&vmis)).await?;
    ensure!(
        running
            .iter()
            .all(|v| v.node_name() == Some(names[0].as_str())),
        "all VMIs on the first node"
    );

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
            v.node_name() != Some(names[0].as_str()),
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
            let on_target = pods.len() == 1 && node_of(&pods[0]).as_ref() == Some(target);
            let active_is_target = on_target
                && status.active_pods.len() == 1
                && status
                    .active_pods
                    .get(pods[0].metadata.uid.as_deref().unwrap_or_default())
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
