//! What differs between the KubeVirt releases the simulator follows: v1.9.0 (the default) and
//! v1.7.4 (annotation `simulator.vacate.io/kubevirt-release: v1.7` on the KubeVirt CR).
//! Every test holds the KubeVirt CR lock: the release is a cluster-wide setting.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures::StreamExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kubevirt_api::labels::EVACUATION_MIGRATION_ANNOTATION;
use kubevirt_api::{
    KubeVirt, MigrationPhase, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
};
use kubevirt_sim::settings::KUBEVIRT_RELEASE_ANNOTATION;
use serde_json::json;

use crate::eviction::evict;
use crate::support::{Env, KUBEVIRT_CR, TIMEOUT, expect_denied};

fn kubevirts(env: &Env) -> kube::Api<KubeVirt> {
    kube::Api::namespaced(env.client.clone(), "kubevirt")
}

/// Sets the release annotation (`None` removes it) and the KubeVirt CR `configuration`, then
/// waits until the simulator reports the release in `status.observedKubeVirtVersion`.
async fn configure(
    env: &Env,
    release: Option<&str>,
    configuration: serde_json::Value,
) -> Result<()> {
    let kvs = kubevirts(env);
    let patch = json!({
        "metadata": {"annotations": {KUBEVIRT_RELEASE_ANNOTATION: release}},
        "spec": {"configuration": configuration},
    });
    kvs.patch("kubevirt", &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let want = if release == Some("v1.7") {
        "v1.7.4"
    } else {
        "v1.9.0"
    };
    let what = format!("the KubeVirt CR to report {want}");
    env.wait(&what, TIMEOUT, || async {
        Ok(kvs.get("kubevirt").await?.observed_version() == Some(want))
    })
    .await
}

/// Back to the default install: v1.9, no configuration.
async fn restore(env: &Env) -> Result<()> {
    configure(env, None, serde_json::Value::Null).await
}

/// Watches the namespace's migrations until `count` are final; returns the most that
/// existed unfinished at once, the most that were past Pending at once, and the final phases.
async fn observe(
    api: kube::Api<VirtualMachineInstanceMigration>,
    count: usize,
) -> Result<(usize, usize, HashMap<String, MigrationPhase>)> {
    let mut phases: HashMap<String, Option<MigrationPhase>> = HashMap::new();
    let (mut max_unfinished, mut max_started) = (0, 0);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(m) = stream.next().await {
        let m = m?;
        phases.insert(m.metadata.name.clone().unwrap_or_default(), m.phase());
        let unfinished = phases
            .values()
            .filter(|p| !p.is_some_and(MigrationPhase::is_final))
            .count();
        let started = phases
            .values()
            .filter(|p| p.is_some_and(|p| !p.is_final() && p != MigrationPhase::Pending))
            .count();
        max_unfinished = max_unfinished.max(unfinished);
        max_started = max_started.max(started);
        if phases
            .values()
            .filter(|p| p.is_some_and(MigrationPhase::is_final))
            .count()
            >= count
        {
            break;
        }
    }
    let finals = phases
        .into_iter()
        .filter_map(|(n, p)| p.map(|p| (n, p)))
        .collect();
    Ok((max_unfinished, max_started, finals))
}

/// A node with six LiveMigrate VMIs is tainted `kubevirt.io/drain:NoSchedule`; returns what
/// [`observe`] saw until all six evacuation migrations finished.
async fn evacuate_six(env: &Env) -> Result<(usize, usize, HashMap<String, MigrationPhase>)> {
    let names = env.nodes.names().to_vec();
    env.live_migratable_vmis_on(0, 6, "2Gi").await?;
    let observer = tokio::spawn(observe(env.migrations(), 6));
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(env.client.clone());
    let taint = json!({"spec": {"taints": [
        {"key": "kubevirt.io/drain", "effect": "NoSchedule"}
    ]}});
    nodes
        .patch(&names[0], &PatchParams::default(), &Patch::Merge(taint))
        .await?;
    let seen = tokio::time::timeout(Duration::from_secs(120), observer)
        .await
        .context("the evacuation to finish")???;
    for i in 0..6 {
        let v = env.vmis().get(&format!("vm{i}")).await?;
        ensure!(
            v.node_name() != Some(names[0].as_str()),
            "vm{i} is still on the evacuated node"
        );
    }
    Ok(seen)
}

#[tokio::test]
async fn v1_9_evacuation_creates_every_migration_at_once_with_priority() -> Result<()> {
    let _default_config = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-rel-evac19", 3).await?;
    restore(&env).await?;
    let (max_unfinished, max_started, phases) = evacuate_six(&env).await?;
    ensure!(
        max_unfinished == 6,
        "at most {max_unfinished} evacuation migrations existed at once, not all 6"
    );
    ensure!(
        max_started <= 2,
        "{max_started} outbound migrations at once"
    );
    ensure!(
        phases.len() == 6 && phases.values().all(|p| *p == MigrationPhase::Succeeded),
        "{phases:?}"
    );
    for m in env.migrations().list(&Default::default()).await?.items {
        ensure!(
            m.spec.priority.as_deref() == Some("system-critical"),
            "evacuation migration without system-critical priority: {:?}",
            m.spec
        );
    }
    Ok(())
}

#[tokio::test]
async fn v1_7_evacuation_creates_at_most_the_free_slots() -> Result<()> {
    let _exclusive = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-rel-evac17", 3).await?;
    configure(&env, Some("v1.7"), serde_json::Value::Null).await?;
    let result = evacuate_six(&env).await;
    restore(&env).await?;
    let (max_unfinished, max_started, phases) = result?;
    // v1.7.4 counts only migrations past Pending against the limits, so a pass that comes
    // before the last ones it created have started may create a few more (as KubeVirt does);
    // that none is created without a free slot is shown by `v1_7_evacuation_waits_for_a_free_slot`.
    ensure!(
        max_unfinished < 6,
        "all {max_unfinished} evacuation migrations existed at once"
    );
    println!("v1.7: at most {max_unfinished} evacuation migrations existed at once");
    ensure!(
        max_started <= 2,
        "{max_started} outbound migrations at once"
    );
    ensure!(
        phases.len() == 6 && phases.values().all(|p| *p == MigrationPhase::Succeeded),
        "{phases:?}"
    );
    for m in env.migrations().list(&Default::default()).await?.items {
        ensure!(
            m.spec.priority.is_none(),
            "a priority in v1.7: {:?}",
            m.spec
        );
    }
    Ok(())
}

/// With one outbound migration per node, a stalled migration holds the node's slot; a user
/// migration waits, then an evacuation is triggered. Returns the user migration's name, the
/// evacuation migration's name if one was created while the slot was held, and the stalled one.
async fn queue_behind_a_stalled_migration(env: &Env) -> Result<(String, Option<String>, String)> {
    let blocker = env.vmi("blocker", "1Gi", None, |v| {
        v["metadata"]["annotations"]["simulator.vacate.io/migration-stall"] = json!("true");
    });
    let user = env.vmi("user", "1Gi", None, |_| {});
    let evac = env.vmi("evac", "1Gi", Some("LiveMigrate"), |_| {});
    let vmis = [blocker, user, evac];
    let running = env.place_on(0, || env.start_vmis(&vmis)).await?;
    let stalled = env.migrate("blocker").await?.metadata.name.unwrap();
    env.wait_migration_phase(&stalled, MigrationPhase::Running)
        .await?;
    let user_migration = env.migrate("user").await?.metadata.name.unwrap();
    env.wait_migration_phase(&user_migration, MigrationPhase::Pending)
        .await?;
    // The evacuation comes later than the user's migration.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect_denied(
        evict(env, &running[2], false).await?,
        429,
        "Eviction triggered evacuation of VMI",
    )?;
    // Give the evacuation controller time to act (several of its re-checks).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evacuation = env
        .migrations()
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|m| {
            m.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(EVACUATION_MIGRATION_ANNOTATION))
        })
        .and_then(|m| m.metadata.name);
    let user_now = env.migrations().get(&user_migration).await?;
    ensure!(
        user_now.phase() == Some(MigrationPhase::Pending),
        "the user migration did not wait: {:?}",
        user_now.status
    );
    Ok((user_migration, evacuation, stalled))
}

#[tokio::test]
async fn v1_9_pending_evacuation_starts_before_an_older_user_migration() -> Result<()> {
    let _exclusive = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-rel-prio19", 3).await?;
    configure(
        &env,
        None,
        json!({"migrations": {"parallelOutboundMigrationsPerNode": 1}}),
    )
    .await?;
    let result = async {
        let (user, evacuation, stalled) = queue_behind_a_stalled_migration(&env).await?;
        let evacuation = evacuation.context("no evacuation migration while the slot was held")?;
        let pending = env
            .wait_migration_phase(&evacuation, MigrationPhase::Pending)
            .await?;
        ensure!(
            pending.spec.priority.as_deref() == Some("system-critical"),
            "{:?}",
            pending.spec
        );
        // Free the slot: the evacuation goes first, though the user's migration is older.
        env.migrations()
            .delete(&stalled, &Default::default())
            .await?;
        env.wait_migration(&evacuation, "started", |m| {
            m.phase().is_some_and(|p| p != MigrationPhase::Pending)
        })
        .await?;
        let user_now = env.migrations().get(&user).await?;
        ensure!(
            user_now.phase() == Some(MigrationPhase::Pending),
            "the user migration started before the evacuation: {:?}",
            user_now.status
        );
        env.wait_migration_phase(&evacuation, MigrationPhase::Succeeded)
            .await?;
        env.wait_migration_phase(&user, MigrationPhase::Succeeded)
            .await?;
        Ok(())
    }
    .await;
    restore(&env).await?;
    result
}

#[tokio::test]
async fn v1_7_evacuation_waits_for_a_free_slot() -> Result<()> {
    let _exclusive = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-rel-prio17", 3).await?;
    configure(
        &env,
        Some("v1.7"),
        json!({"migrations": {"parallelOutboundMigrationsPerNode": 1}}),
    )
    .await?;
    let result = async {
        let (user, evacuation, stalled) = queue_behind_a_stalled_migration(&env).await?;
        ensure!(
            evacuation.is_none(),
            "v1.7 created evacuation migration {evacuation:?} without a free slot"
        );
        env.migrations()
            .delete(&stalled, &Default::default())
            .await?;
        env.wait_migration_phase(&user, MigrationPhase::Succeeded)
            .await?;
        env.wait_vmi("evac", "moved off its node", |v| {
            v.is_running() && v.node_name() != Some(env.nodes.names()[0].as_str())
        })
        .await?;
        Ok(())
    }
    .await;
    restore(&env).await?;
    result
}

#[tokio::test]
async fn a_user_set_priority_is_refused() -> Result<()> {
    let _exclusive = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-rel-userprio", 3).await?;
    env.start_vmis(&[env.vmi("vm", "1Gi", None, |_| {})])
        .await?;
    let with_priority = || {
        VirtualMachineInstanceMigration::new(
            "mine",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: "vm".into(),
                priority: Some("system-critical".into()),
                ..Default::default()
            },
        )
    };
    restore(&env).await?;
    expect_denied(
        env.migrations()
            .create(&PostParams::default(), &with_priority())
            .await,
        422,
        "Migration priority queue, only virt-controller is allowed to set priority field",
    )?;
    configure(&env, Some("v1.7"), serde_json::Value::Null).await?;
    let v17 = env
        .migrations()
        .create(&PostParams::default(), &with_priority())
        .await;
    restore(&env).await?;
    expect_denied(
        v17,
        422,
        "MigrationPriorityQueue feature gate is not enabled in kubevirt resource",
    )?;
    // Without a priority, users' migrations are accepted in either release.
    env.migrate("vm").await?;
    Ok(())
}

/// The virt-launcher image (and the VMI's `launcherContainerImageVersion`) is the release's:
/// v1.9.0 by default, v1.7.4 in the v1.7 mode.
#[tokio::test]
async fn launcher_image_follows_the_release() -> Result<()> {
    let _lock = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-image", 1).await?;
    let result = async {
        for (release, image) in [
            (Some("v1.7"), "quay.io/kubevirt/virt-launcher:v1.7.4"),
            (None, "quay.io/kubevirt/virt-launcher:v1.9.0"),
        ] {
            configure(&env, release, serde_json::Value::Null).await?;
            let name = format!("img{}", if release.is_some() { "17" } else { "19" });
            let vmi = env
                .start_vmis(&[env.vmi(&name, "1Gi", None, |_| {})])
                .await?
                .remove(0);
            let pods = env.launcher_pods(&vmi).await?;
            ensure!(pods.len() == 1, "{pods:?}");
            let pod_image = pods[0]
                .spec
                .as_ref()
                .and_then(|s| s.containers[0].image.clone());
            ensure!(
                pod_image.as_deref() == Some(image),
                "{release:?}: pod image {pod_image:?}"
            );
            let vmi = env
                .wait_vmi(&name, "image version", |v| {
                    v.status
                        .as_ref()
                        .and_then(|s| s.launcher_container_image_version.as_deref())
                        == Some(image)
                })
                .await?;
            drop(vmi);
        }
        Ok(())
    }
    .await;
    restore(&env).await?;
    result
}
