//! What differs between the KubeVirt releases the simulator follows: v1.9.0 (the default) and
//! v1.7.4 (annotation `simulator.vacate.io/kubevirt-release: v1.7` on the KubeVirt CR).
//! Every test holds the KubeVirt CR lock: the release is a cluster-wide setting.

use std::time::Duration;

use anyhow::{Result, ensure};
use kube::api::{Patch, PatchParams, PostParams};
use kubevirt_api::{
    KubeVirt, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
};
use kubevirt_sim::settings::KUBEVIRT_RELEASE_ANNOTATION;
use serde_json::json;

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
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let kv = kvs.get("kubevirt").await?;
        if kv.observed_version() == Some(want) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the KubeVirt CR still reports {:?}, not {want}",
            kv.observed_version()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Back to the default install: v1.9, no configuration.
async fn restore(env: &Env) -> Result<()> {
    configure(env, None, serde_json::Value::Null).await
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
