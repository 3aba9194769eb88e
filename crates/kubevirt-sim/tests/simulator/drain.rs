//! The headline: `kubectl drain --ignore-daemonsets --delete-emptydir-data` of a node with
//! six LiveMigrate VMIs, the way KubeVirt users drain today.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kubevirt_api::MigrationPhase;

use crate::migration::observe_outbound;
use crate::support::Env;

#[tokio::test]
async fn kubectl_drain_live_migrates_six_vmis_two_at_a_time() -> Result<()> {
    let env = Env::new("sim-drain", 3).await?;
    let names = env.nodes.names().to_vec();
    env.live_migratable_vmis_on(0, 6, "4Gi").await?;

    let observer = tokio::spawn(observe_outbound(env.migrations(), 6));
    let mut kubectl = env.cluster.kubectl()?;
    kubectl.args([
        "drain",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=300s",
        &names[0],
    ]);
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || kubectl.output())
        .await?
        .context("running kubectl drain")?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "kubectl drain failed after {took:?}:\n{stdout}\n{stderr}"
    );
    ensure!(stdout.contains("drained"), "{stdout}");
    // kubectl retried evictions that the webhook answered with 429.
    ensure!(
        stderr.contains("Eviction triggered evacuation of VMI"),
        "{stderr}"
    );

    let (max, phases) = tokio::time::timeout(Duration::from_secs(60), observer).await???;
    ensure!(
        max <= 2,
        "saw {max} concurrent outbound migrations from the drained node"
    );
    ensure!(
        phases.len() == 6 && phases.values().all(|p| *p == MigrationPhase::Succeeded),
        "{phases:?}"
    );
    for i in 0..6 {
        let v = env.vmis().get(&format!("vm{i}")).await?;
        ensure!(v.is_running(), "vm{i} is not running: {:?}", v.status);
        ensure!(
            v.node_name() != Some(names[0].as_str()),
            "vm{i} is still on the drained node"
        );
    }
    println!("kubectl drain of 6 VMIs took {took:.1?}, at most {max} outbound migrations at once");
    Ok(())
}
