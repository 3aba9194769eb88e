//! `vacate drain NODE` and `vacate uncordon NODE`: the daemon's engine for one node, in
//! the foreground. They write the same request label and state annotation as the daemon,
//! so a running daemon and these commands cooperate instead of competing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;

use crate::cluster::cached::CachedNode;
use crate::cluster::watch::NodeFilter;
use crate::cluster::{NodeReport, Shell, get_node, set_node_label, set_unschedulable};
use crate::config::Config;
use crate::planner::{self, Phase};

/// The request label value `vacate drain` sets when the label is absent.
const CLI_REQUEST_VALUE: &str = "cli";

/// Starts the engine's watches for one node and waits until its caches are filled.
async fn start_shell(client: &Client, config: &Arc<Config>, node: &str) -> anyhow::Result<Shell> {
    let filter = NodeFilter {
        name: Some(node.to_string()),
        label_selector: None,
        without_pod_usage: false,
    };
    super::start_shell(client, config, filter).await
}

pub async fn dry_run(config: Config, node: &str) -> anyhow::Result<ExitCode> {
    let config = Arc::new(config);
    let client = super::client().await?;
    get_node(&client, node).await?;
    let shell = start_shell(&client, &config, node).await?;
    let Some(snapshot) = shell.ctx.snapshot(node, true).await? else {
        anyhow::bail!(
            "node {node} does not match node.selector `{}`",
            config.node.selector
        );
    };
    let lines = planner::explain(&snapshot, &config);
    println!(
        "Dry run: draining node {node} would{} cordon it and:",
        if snapshot.node.unschedulable {
            " keep it cordoned (already cordoned) and"
        } else {
            ""
        }
    );
    let width = lines.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    println!("{:<4} {:<width$} {:<8} REASON", "KIND", "NAME", "ACTION");
    for line in &lines {
        println!(
            "{:<4} {:<width$} {:<8} {}",
            line.kind, line.name, line.verdict, line.reason
        );
    }
    let count = |v: &str| lines.iter().filter(|l| l.verdict == v).count();
    println!(
        "\n{} to migrate, {} to evict, {} to restart, {} blocking, {} skipped. Nothing was changed.",
        count("migrate"),
        count("evict"),
        count("restart"),
        count("block"),
        count("skip")
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn drain(
    config: Config,
    node: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let mut config = config;
    if let Some(timeout) = timeout {
        config.drain.timeout = timeout.into();
    }
    let config = Arc::new(config);
    let client = super::client().await?;
    let current = get_node(&client, node).await?;
    let label = &config.node.request_label;
    let has_request = current
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(label));
    if !has_request {
        set_node_label(&client, node, label, Some(CLI_REQUEST_VALUE)).await?;
        println!("requested maintenance on node {node} ({label}={CLI_REQUEST_VALUE})");
    }
    let shell = start_shell(&client, &config, node).await?;
    let mut reports = shell.reports();
    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = tokio::spawn(shell.run(stop_rx));
    let mut last_line = String::new();
    // A drain that starts is bounded by drain.timeout (it ends in Failed); one that cannot
    // start (a closed window, the fleet limits, a blocker) is given up after as long.
    let mut give_up = tokio::time::Instant::now() + config.drain.timeout.get();
    let outcome = loop {
        tokio::select! {
            changed = reports.changed() => {
                if changed.is_err() {
                    break Err(anyhow::anyhow!("the drain engine stopped unexpectedly"));
                }
            }
            _ = tokio::time::sleep_until(give_up) => {
                let report = reports.borrow().get(node).cloned();
                if report.as_ref().is_some_and(|r| r.phase == Phase::Pending) {
                    let why = report
                        .and_then(|r| r.state)
                        .and_then(|s| s.blocked)
                        .map_or_else(|| "unknown reason".into(), |b| b.message);
                    eprintln!("node {node} did not start draining within {}: {why}; it stays requested, `vacate uncordon {node}` withdraws the request", config.drain.timeout);
                    break Ok(ExitCode::from(1));
                }
                // Started after all: the planner's own timeout ends it; look again later.
                give_up = tokio::time::Instant::now() + Duration::from_secs(5);
                continue;
            }
            _ = tokio::signal::ctrl_c() => {
                println!("\ninterrupted: node {node} stays requested; `vacate uncordon {node}` ends the maintenance");
                break Ok(ExitCode::from(130));
            }
        }
        let report = reports.borrow_and_update().get(node).cloned();
        let Some(report) = report else { continue };
        let line = progress_line(&report);
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        match report.phase {
            Phase::Drained => {
                let summary = report
                    .state
                    .as_ref()
                    .map(planner::summary)
                    .unwrap_or_default();
                println!("node {node} drained: {summary}");
                break Ok(ExitCode::SUCCESS);
            }
            Phase::Failed => {
                let reason = report
                    .state
                    .as_ref()
                    .and_then(|s| s.failure.clone())
                    .unwrap_or_else(|| "unknown reason".into());
                eprintln!("node {node} was not drained: {reason}");
                break Ok(ExitCode::from(1));
            }
            _ => {}
        }
    };
    let _ = stop_tx.send(true);
    let _ = engine.await;
    outcome
}

pub async fn uncordon(config: Config, node: &str) -> anyhow::Result<ExitCode> {
    let config = Arc::new(config);
    let client = super::client().await?;
    get_node(&client, node).await?;
    set_node_label(&client, node, &config.node.request_label, None).await?;
    let shell = start_shell(&client, &config, node).await?;
    // One reconciliation ends the maintenance (cancelling an unfinished drain).
    let mut tries = 0;
    loop {
        let next = shell.ctx.reconcile(node).await?;
        let state = crate::cluster::snapshot::node_view(
            &CachedNode::of(
                get_node(&client, node).await?,
                &config.node.state_annotation,
            ),
            &config,
        )
        .state;
        if state == planner::StateAnnotation::Absent {
            break;
        }
        tries += 1;
        if tries > 120 {
            anyhow::bail!(
                "node {node} did not leave maintenance; see `kubectl describe node {node}`"
            );
        }
        tokio::time::sleep(
            next.unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1)),
        )
        .await;
    }
    let after = get_node(&client, node).await?;
    if after
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        // The person asked for it by name: uncordon even a cordon vacate did not make.
        set_unschedulable(&client, node, false).await?;
    }
    println!("node {node} uncordoned; maintenance ended");
    Ok(ExitCode::SUCCESS)
}

fn progress_line(report: &NodeReport) -> String {
    let Some(state) = &report.state else {
        return format!("{}", report.phase);
    };
    let mut line = format!(
        "{:<10} VMIs {}/{}  pods {}/{}",
        report.phase.as_str(),
        state.vmis_done(),
        state.vmis.len(),
        state.pods_done(),
        state.pods_total()
    );
    if let Some(detail) = state.detail() {
        line.push_str("  ");
        line.push_str(&detail);
    }
    line
}
