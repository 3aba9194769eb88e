//! The simulator at fleet scale, reduced to a quick check: a seeded batch of VMs settles
//! without conflict loops, and a settled fleet costs the API server nothing per VM.
//!
//! Runs on a cluster of its own (its API server's audit log counts every request by
//! namespace, verb and answer), so that no other test's requests are counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use testbed::control_plane::AuditOptions;
use testbed::{Scenario, SeedOptions, TestCluster};

/// 50 nodes, 2 VMs per node, and with a DaemonSet and a Deployment 10 pods per node.
const SCENARIO: &str = "
name: scale-check
nodes:
  - {count: 50, namePrefix: n, pool: scale, images: 50}
vms:
  - count: 100
    namePrefix: vm
    namespace: scale-vms
    memory: 2Gi
    evictionStrategy: LiveMigrate
deployments:
  - {name: web, namespace: scale-apps, replicas: 350, pod: {cpu: 10m, memory: 32Mi}}
daemonSets:
  - {name: agent, namespace: scale-apps, pod: {cpu: 10m, memory: 32Mi}}
";

/// One request of the audit log.
#[derive(Debug)]
struct Request {
    at: f64,
    verb: String,
    resource: String,
    namespace: String,
    code: u16,
    /// Who asked, and through what: tells the simulator's own reads from the control plane's.
    user: String,
    agent: String,
}

fn audit(path: &std::path::Path) -> Result<Vec<Request>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["stage"] != "ResponseComplete" {
            continue;
        }
        let at = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond() as f64 / 1000.0)
            .context("an audit event without requestReceivedTimestamp")?;
        out.push(Request {
            at,
            verb: e["verb"].as_str().unwrap_or_default().to_string(),
            resource: e["objectRef"]["resource"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            namespace: e["objectRef"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            code: e["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
            user: e["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            agent: e["userAgent"]
                .as_str()
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string(),
        });
    }
    Ok(out)
}

fn unix_now() -> f64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seeded_fleet_settles_without_conflict_loops_and_then_costs_no_requests() -> Result<()> {
    let cluster = TestCluster::start_with(true, Some(AuditOptions::default())).await?;
    let log = cluster
        .audit_log()
        .context("the cluster writes no audit log")?;
    let scenario = Scenario::from_yaml(SCENARIO, "scale-check")?;
    let started = Instant::now();
    let report = testbed::seed::seed(
        &cluster.client(),
        &scenario,
        &SeedOptions {
            wait: true,
            wait_timeout: Some(Duration::from_secs(400)),
            ..Default::default()
        },
    )
    .await?;
    let seeded = unix_now();
    eprintln!(
        "seeded {} VMs on {} nodes in {:.1?}",
        report.vms.len(),
        report.nodes.len(),
        started.elapsed()
    );
    // Longer than two of every controller's resyncs (VMs and VMIs: 10 s).
    tokio::time::sleep(Duration::from_secs(25)).await;
    let settled = unix_now();

    let requests = audit(&log)?;
    let vmi_requests = |from: f64, to: f64| {
        requests.iter().filter(move |r| {
            r.resource == "virtualmachineinstances"
                && r.namespace == "scale-vms"
                && r.at >= from
                && r.at < to
        })
    };
    // While the batch starts: the VMI controller writes each VMI's status a few times
    // (Scheduling, Scheduled, Running); writes based on a cache that lags behind its own
    // previous write are not sent, so next to none is refused.
    let patches: Vec<_> = vmi_requests(0.0, seeded)
        .filter(|r| r.verb == "patch")
        .collect();
    let conflicts = patches.iter().filter(|r| r.code == 409).count();
    eprintln!(
        "while seeding: {} VMI patches, {conflicts} answered 409",
        patches.len()
    );
    assert!(
        patches.len() >= 3 * report.vms.len(),
        "the VMIs got {} status writes: the audit log does not show what it should",
        patches.len()
    );
    assert!(
        conflicts * 20 <= report.vms.len(),
        "{conflicts} of {} VMI patches were answered 409 while {} VMs started: the simulator \
         writes on stale caches",
        patches.len(),
        report.vms.len()
    );

    // Settled: every VM runs; nothing is to be written, and next to nothing is read from the
    // API server (the controllers resync from their caches). A few reads of VMs that settle
    // late are allowed: polling every VM's VMI at each resync costs about 250 in this window.
    // Kubernetes' own controllers are not the simulator: the garbage collector GETs a
    // launcher pod's VMI owner (with back-off) until its own watch of the VMIs, started at
    // its next look at the API's resources after the CRDs appeared, has seen it.
    let control_plane = |user: &str| {
        user.starts_with("system:serviceaccount:kube-system:") || user.starts_with("system:kube-")
    };
    let mut idle: BTreeMap<String, usize> = BTreeMap::new();
    let mut kubernetes: BTreeMap<String, usize> = BTreeMap::new();
    for r in vmi_requests(seeded + 2.0, settled).filter(|r| r.verb != "watch" && r.verb != "list") {
        let counts = if control_plane(&r.user) {
            &mut kubernetes
        } else {
            &mut idle
        };
        *counts
            .entry(format!("{} by {} ({})", r.verb, r.user, r.agent))
            .or_default() += 1;
    }
    let total: usize = idle.values().sum();
    eprintln!(
        "settled: {total} requests on VMIs in the window ({idle:?}); Kubernetes' controllers: \
         {kubernetes:?}"
    );
    assert!(
        total * 5 <= report.vms.len(),
        "a settled fleet of {} VMs cost {total} requests on its VMIs in 23 s ({idle:?}): \
         the simulator polls the API server",
        report.vms.len()
    );
    Ok(())
}
