//! The eviction webhook for each eviction strategy, and the evacuation it triggers.

use std::time::Duration;

use anyhow::{Result, ensure};
use kube::api::{EvictParams, Patch, PatchParams, PostParams};
use kubevirt_api::labels::{EVACUATION_MIGRATION_ANNOTATION, EVACUATION_MIGRATION_NAME_PREFIX};
use kubevirt_api::{KubeVirt, MigrationPhase, VirtualMachineInstance};
use serde_json::json;

use crate::migration::observe_outbound;
use crate::support::{Env, KUBEVIRT_CR, expect_denied};

pub(crate) async fn evict(
    env: &Env,
    vmi: &VirtualMachineInstance,
    dry_run: bool,
) -> Result<Result<(), kube::Error>> {
    // The pod the VMI runs in, not the target pod of a migration in flight.
    let node = env
        .vmis()
        .get(vmi.metadata.name.as_deref().unwrap())
        .await?
        .node_name()
        .map(str::to_string);
    let pod = env
        .launcher_pods(vmi)
        .await?
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()) == node)
        .expect("a launcher pod on the VMI's node");
    let params = EvictParams {
        post_options: PostParams {
            dry_run,
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(env
        .pods()
        .evict(pod.metadata.name.as_deref().unwrap(), &params)
        .await
        .map(|_| ()))
}

#[tokio::test]
async fn eviction_webhook_answers_for_each_strategy() -> Result<()> {
    // "unset" relies on the default install's missing cluster-wide strategy.
    let _default_config = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-evict", 3).await?;
    let bridge = |v: &mut serde_json::Value| {
        v["spec"]["domain"]["devices"]["interfaces"] = json!([{"name": "default", "bridge": {}}]);
    };
    let vmis = env
        .start_vmis(&[
            env.vmi("none", "1Gi", Some("None"), |_| {}),
            env.vmi("unset", "1Gi", None, |_| {}),
            // Large enough that its evacuation (about 13 s) is still running at the second eviction.
            env.vmi("lm", "16Gi", Some("LiveMigrate"), |_| {}),
            env.vmi("lm-stuck", "1Gi", Some("LiveMigrate"), bridge),
            env.vmi("lmip", "1Gi", Some("LiveMigrateIfPossible"), |_| {}),
            env.vmi("lmip-stuck", "1Gi", Some("LiveMigrateIfPossible"), bridge),
            env.vmi("external", "1Gi", Some("External"), |_| {}),
        ])
        .await?;
    let by_name = |n: &str| {
        vmis.iter()
            .find(|v| v.metadata.name.as_deref() == Some(n))
            .unwrap()
            .clone()
    };

    // Dry run: the answer is the same, nothing is marked.
    expect_denied(
        evict(&env, &by_name("lm"), true).await?,
        429,
        "Eviction triggered evacuation of VMI",
    )?;
    assert!(!env.vmis().get("lm").await?.is_marked_for_eviction());

    // None / no strategy: evicted; the guest shuts down.
    evict(&env, &by_name("none"), false).await??;
    evict(&env, &by_name("unset"), false).await??;
    env.wait_vmi("none", "final", |v| v.is_final()).await?;
    env.wait_vmi("unset", "final", |v| v.is_final()).await?;

    // LiveMigrate, migratable: marked, 429, then evacuated to another node.
    let lm = by_name("lm");
    let ns = env.ns.name().to_string();
    expect_denied(
        evict(&env, &lm, false).await?,
        429,
        &format!("Eviction triggered evacuation of VMI \"{ns}/lm\""),
    )?;
    let marked = env.vmis().get("lm").await?;
    assert_eq!(
        marked
            .status
            .as_ref()
            .unwrap()
            .evacuation_node_name
            .as_deref(),
        lm.node_name()
    );
    expect_denied(
        evict(&env, &lm, false).await?,
        429,
        "Evacuation in progress",
    )?;
    let moved = env
        .wait_vmi("lm", "evacuated", |v| {
            v.is_running() && v.node_name() != lm.node_name()
        })
        .await?;
    assert!(
        !moved.is_marked_for_eviction(),
        "the mark is cleared once the VMI left the node"
    );
    let migrations = env.migrations().list(&Default::default()).await?.items;
    let evacuation = migrations
        .iter()
        .find(|m| m.spec.vmi_name == "lm")
        .expect("an evacuation migration");
    assert!(
        evacuation
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with(EVACUATION_MIGRATION_NAME_PREFIX)
    );
    assert_eq!(
        evacuation.metadata.annotations.as_ref().unwrap()[EVACUATION_MIGRATION_ANNOTATION],
        lm.node_name().unwrap()
    );
    // The VMI shows its new node before the migration controller marks the migration
    // Succeeded (as in KubeVirt, where virt-handler updates the VMI first).
    env.wait_migration_phase(
        evacuation.metadata.name.as_deref().unwrap(),
        MigrationPhase::Succeeded,
    )
    .await?;

    // LiveMigrate, not migratable: 429 without a mark.
    expect_denied(
        evict(&env, &by_name("lm-stuck"), false).await?,
        429,
        "VMI lm-stuck is configured with an eviction strategy but is not live-migratable",
    )?;
    assert!(!env.vmis().get("lm-stuck").await?.is_marked_for_eviction());

    // LiveMigrateIfPossible: migratable → marked and 429; not migratable → evicted.
    expect_denied(
        evict(&env, &by_name("lmip"), false).await?,
        429,
        "Eviction triggered evacuation",
    )?;
    evict(&env, &by_name("lmip-stuck"), false).await??;
    env.wait_vmi("lmip-stuck", "final", |v| v.is_final())
        .await?;

    // External: marked and 429, but no migration (an external controller acts on the mark).
    let external = by_name("external");
    expect_denied(
        evict(&env, &external, false).await?,
        429,
        "Eviction triggered evacuation",
    )?;
    let marked = env.vmis().get("external").await?;
    assert_eq!(
        marked
            .status
            .as_ref()
            .unwrap()
            .evacuation_node_name
            .as_deref(),
        external.node_name()
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let migrations = env.migrations().list(&Default::default()).await?.items;
    assert!(!migrations.iter().any(|m| m.spec.vmi_name == "external"));
    Ok(())
}

#[tokio::test]
async fn cluster_wide_configuration_comes_from_the_kubevirt_cr() -> Result<()> {
    let _exclusive = KUBEVIRT_CR.lock().await;
    let env = Env::new("sim-kvcr", 3).await?;
    let kvs: kube::Api<KubeVirt> = kube::Api::namespaced(env.client.clone(), "kubevirt");
    let kv = kvs.get("kubevirt").await?;
    // A default install: no cluster-wide strategy, KubeVirt's limits.
    assert_eq!(kv.eviction_strategy(), None);
    assert_eq!(
        kv.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Deployed")
    );
    assert_eq!(
        kv.migration_configuration()
            .parallel_outbound_migrations_per_node(),
        2
    );

    let vmis: Vec<_> = (0..3)
        .map(|i| env.vmi(&format!("plain{i}"), "4Gi", None, |_| {}))
        .collect();
    let running = env.place_on(0, || env.start_vmis(&vmis)).await?;

    let configure = json!({"spec": {"configuration": {
        "evictionStrategy": "LiveMigrate",
        "migrations": {"parallelOutboundMigrationsPerNode": 1}
    }}});
    kvs.patch(
        "kubevirt",
        &PatchParams::default(),
        &Patch::Merge(configure),
    )
    .await?;
    let result = async {
        // VMIs without a strategy now follow the cluster's LiveMigrate.
        let mut answer = evict(&env, &running[0], false).await?;
        for _ in 0..50 {
            if answer.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            answer = evict(&env, &running[0], false).await?;
        }
        expect_denied(answer, 429, "Eviction triggered evacuation of VMI")?;
        // One outbound migration at a time from the node.
        let observer = tokio::spawn(observe_outbound(env.migrations(), 3));
        env.migrate("plain1").await?;
        env.migrate("plain2").await?;
        let (max, phases) = tokio::time::timeout(Duration::from_secs(120), observer).await???;
        ensure!(
            max == 1,
            "saw {max} concurrent outbound migrations with a limit of 1"
        );
        ensure!(
            phases.values().all(|p| *p == MigrationPhase::Succeeded),
            "{phases:?}"
        );
        Ok(())
    }
    .await;
    let restore = json!({"spec": {"configuration": null}});
    kvs.patch("kubevirt", &PatchParams::default(), &Patch::Merge(restore))
        .await?;
    result
}

/// KubeVirt registers its eviction interceptor for virt-launcher pods only, with failurePolicy
/// Fail: while virt-api is down the API server refuses a virt-launcher eviction instead of
/// letting it delete the pod (webhooks.go, v1.7.4 and v1.9.0). A plain pod is evicted as
/// usual, the match condition keeping the webhook out of its way.
#[tokio::test]
async fn the_eviction_webhook_fails_closed_for_virt_launcher_pods_only() -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let env = Env::new("sim-evict-policy", 1).await?;
    let configs: kube::Api<ValidatingWebhookConfiguration> = kube::Api::all(env.client.clone());
    let config = configs
        .get(kubevirt_sim::install::VALIDATING_CONFIGURATION)
        .await?;
    let webhook = config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .find(|w| w.name == "virt-launcher-eviction-interceptor.kubevirt.io")
        .expect("the eviction interceptor is registered");
    ensure!(
        webhook.failure_policy.as_deref() == Some("Fail"),
        "{:?}",
        webhook.failure_policy
    );
    let conditions = webhook.match_conditions.unwrap_or_default();
    ensure!(
        conditions.len() == 1
            && conditions[0].name == "only-vms"
            && conditions[0].expression == r#"object.metadata.name.startsWith("virt-launcher")"#,
        "{conditions:?}"
    );
    ensure!(
        webhook.side_effects == "NoneOnDryRun",
        "{}",
        webhook.side_effects
    );
    Ok(())
}
