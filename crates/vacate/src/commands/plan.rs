//! `vacate plan`: the whole rollout of a selector or a schedule, before anything moves.
//! Reads only; the plan itself is the planner's ([`planner::rollout`]).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::core::{Selector, SelectorExt};
use kube::{Api, ResourceExt};

use crate::cluster::cached::CachedNode;
use crate::cluster::gate::room_and_movers;
use crate::cluster::watch::NodeFilter;
use crate::config::{Config, LabelSelector};
use crate::planner::rollout::{RolloutInput, RolloutNode, RolloutPlan, plan_rollout};

/// What `vacate plan` was asked for.
pub struct PlanRequest {
    pub selector: Option<String>,
    pub schedule: Option<String>,
    pub concurrency: Option<u32>,
    pub json: bool,
}

pub async fn plan(config: Config, request: PlanRequest) -> anyhow::Result<ExitCode> {
    let (selector, concurrency, what) = match (&request.schedule, &request.selector) {
        (Some(name), _) => {
            let Some(schedule) = config.schedules.iter().find(|s| &s.name == name) else {
                let known: Vec<&str> = config.schedules.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "no schedule named `{name}` in the configuration (schedules: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            };
            (
                schedule.selector.clone(),
                schedule.concurrency.get(),
                format!("schedule {name}"),
            )
        }
        (None, Some(text)) => (
            LabelSelector::parse(text).map_err(|e| anyhow::anyhow!("--selector: {e}"))?,
            1,
            format!("nodes matching `{text}`"),
        ),
        (None, None) => bail!("say which nodes: --selector SELECTOR or --schedule NAME"),
    };
    let concurrency = request.concurrency.unwrap_or(concurrency).max(1);
    let config = Arc::new(config);
    let client = super::client().await?;
    let filter = NodeFilter {
        name: None,
        label_selector: (!config.node.selector.is_empty())
            .then(|| config.node.selector.as_str().to_string()),
        // No start gate is asked: the capacity estimate lists the pods itself.
        without_pod_usage: true,
    };
    let shell = super::start_shell(&client, &config, filter).await?;
    let mut members: Vec<String> = shell
        .ctx
        .stores
        .nodes
        .state()
        .iter()
        .filter(|n| selector.matches(n.labels()))
        .map(|n| n.name_any())
        .collect();
    members.sort();
    if members.is_empty() {
        bail!(
            "no node matches {what} within node.selector `{}`",
            config.node.selector
        );
    }
    // Served from the API server's watch cache, as the capacity check's lists.
    let cached = ListParams::default().match_any();
    let pods: Vec<Pod> = Api::<Pod>::all(client.clone())
        .list(
            &cached
                .clone()
                .fields("status.phase!=Succeeded,status.phase!=Failed"),
        )
        .await
        .context("listing pods")?
        .items;
    let nodes = CachedNode::list(&client, &cached, &config.node.state_annotation)
        .await
        .context("listing nodes")?;
    let pdbs: Vec<PodDisruptionBudget> = Api::<PodDisruptionBudget>::all(client.clone())
        .list(&cached)
        .await
        .context("listing PodDisruptionBudgets")?
        .items;
    let launchers = crate::cluster::snapshot::launcher_selectors(
        shell.ctx.stores.vmis.state().iter().map(|v| &**v),
    );
    let (mut moving, targets) = room_and_movers(&pods, &nodes, &launchers);
    let mut input = RolloutInput {
        nodes: Vec::new(),
        targets,
        concurrency: concurrency as usize,
        never_evictable: never_evictable(&pdbs, &pods),
    };
    // Measured on the migrations that finished in the cluster, as a drain under way does.
    let measured = shell.ctx.observed_bandwidth();
    for name in &members {
        let Some(mut snapshot) = shell.ctx.snapshot(name, true).await? else {
            continue;
        };
        snapshot.cluster.bandwidth = measured.or(snapshot.cluster.bandwidth);
        input.nodes.push(RolloutNode {
            snapshot,
            workloads: moving.remove(name).unwrap_or_default(),
        });
    }
    let plan = plan_rollout(&input, &config);
    if request.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", table(&plan, &what, concurrency));
    }
    Ok(ExitCode::SUCCESS)
}

/// Pods a PodDisruptionBudget never lets go as things stand: it wants every pod it counts
/// healthy (`minAvailable` equal to the pods, or `maxUnavailable: 0`), so an eviction is
/// refused until the drain times out.
fn never_evictable(pdbs: &[PodDisruptionBudget], pods: &[Pod]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pdb in pdbs {
        let Some(status) = &pdb.status else { continue };
        let allowed = status.disruptions_allowed.unwrap_or(0);
        let expected = status.expected_pods.unwrap_or(0);
        let desired = status.desired_healthy.unwrap_or(0);
        if allowed > 0 || expected == 0 || desired < expected {
            continue;
        }
        let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.clone()) else {
            continue;
        };
        let Ok(selector) = Selector::try_from(selector) else {
            continue;
        };
        let ns = pdb.namespace().unwrap_or_default();
        for pod in pods
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
            .filter(|p| selector.matches(p.labels()))
        {
            out.insert(
                format!("{ns}/{}", pod.name_any()),
                format!(
                    "PodDisruptionBudget {ns}/{} allows no disruption ({} of {} pods must stay healthy); the drain would wait until drain.timeout",
                    pdb.name_any(),
                    desired,
                    expected
                ),
            );
        }
    }
    out
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "unknown".into(),
        Some(s) if s >= 60.0 => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0).round() as u64),
        Some(s) => format!("{s:.0}s"),
    }
}

/// The plan as text: a summary, a line per node, then every VMI and pod.
pub fn table(plan: &RolloutPlan, what: &str, concurrency: u32) -> String {
    let mut out = String::new();
    let waves = plan.nodes.iter().map(|n| n.wave).max().unwrap_or(0);
    let bandwidth = match plan.bandwidth_bytes_per_second {
        Some(b) => format!("{:.0} MiB/s per migration", b / (1u64 << 20) as f64),
        None => {
            "not known: no migration has finished and the KubeVirt CR sets no bandwidthPerMigration"
                .into()
        }
    };
    out.push_str(&format!(
        "Rollout of {} node(s) ({what}), {concurrency} at a time: {waves} wave(s), {} migration(s), {} of them onto a node drained later (that VM moves again); predicted {} (bandwidth {bandwidth}).\n\n",
        plan.nodes.len(),
        plan.migrations,
        plan.migrations_moving_again,
        seconds(plan.predicted_seconds),
    ));
    let width = plan
        .nodes
        .iter()
        .map(|n| n.node.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out.push_str(&format!(
        "{:<4} {:<width$} {:>4} {:>4} {:>9}  BLOCKERS\n",
        "WAVE", "NODE", "VMIS", "PODS", "PREDICTED"
    ));
    for n in &plan.nodes {
        out.push_str(&format!(
            "{:<4} {:<width$} {:>4} {:>4} {:>9}  {}\n",
            n.wave,
            n.node,
            n.vmis.len(),
            n.pods.len(),
            seconds(n.predicted_seconds),
            if n.blockers.is_empty() {
                "-".to_string()
            } else {
                n.blockers.len().to_string()
            }
        ));
    }
    for n in &plan.nodes {
        out.push_str(&format!("\n{} (wave {}):\n", n.node, n.wave));
        for b in &n.blockers {
            out.push_str(&format!("  BLOCKER {b}\n"));
        }
        for (kind, items) in [("VMI", &n.vmis), ("Pod", &n.pods)] {
            for i in items {
                let room = match (&i.room_on, i.moves_again) {
                    (Some(t), false) => format!(" -> room on {t}"),
                    (Some(t), true) => format!(" -> room on {t} (drained later: moves again)"),
                    (None, _) => String::new(),
                };
                out.push_str(&format!(
                    "  {kind:<3} {} {}{room}: {}\n",
                    i.name, i.action, i.reason
                ));
            }
        }
    }
    out.push_str("\nNothing was changed. Where VMs go is vacate's estimate; KubeVirt's scheduler places them.\n");
    out
}
