//! `vacate status [--watch]`: the nodes vacate is handling, read from their state annotations.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use chrono::Utc;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::cluster::snapshot::node_view;
use crate::config::Config;
use crate::planner::{DrainState, StateAnnotation};

/// One row of the status table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub node: String,
    pub phase: String,
    pub vmis: (usize, usize),
    pub pods: (usize, usize),
    pub detail: String,
    pub since: String,
}

pub fn row(node: &Node, config: &Config) -> Option<Row> {
    let view = node_view(node, config);
    let name = node.name_any();
    let age = |state: &DrainState| {
        let secs = (Utc::now() - state.phase_since).num_seconds().max(0) as u64;
        humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
    };
    match &view.state {
        StateAnnotation::Valid(state) => {
            let detail = state.detail().unwrap_or_default();
            Some(Row {
                node: name,
                phase: state.phase.to_string(),
                vmis: (state.vmis_done(), state.vmis.len()),
                pods: (state.pods_done(), state.pods.len()),
                detail,
                since: age(state),
            })
        }
        StateAnnotation::Invalid(e) => Some(Row {
            node: name,
            phase: "?".into(),
            vmis: (0, 0),
            pods: (0, 0),
            detail: format!("unreadable state annotation: {e}"),
            since: String::new(),
        }),
        StateAnnotation::NewerVersion(v) => Some(Row {
            node: name,
            phase: "?".into(),
            vmis: (0, 0),
            pods: (0, 0),
            detail: format!("state written by a newer vacate (version {v})"),
            since: String::new(),
        }),
        StateAnnotation::Absent if view.request_value.is_some() => Some(Row {
            node: name,
            phase: "Requested".into(),
            vmis: (0, 0),
            pods: (0, 0),
            detail: "waiting for vacate to pick it up".into(),
            since: String::new(),
        }),
        StateAnnotation::Absent => None,
    }
}

pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "No nodes are in maintenance.\n".into();
    }
    let width = rows.iter().map(|r| r.node.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:<width$}  {:<11}  {:>7}  {:>7}  {:>8}  DETAIL\n",
        "NODE", "PHASE", "VMIS", "PODS", "SINCE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<width$}  {:<11}  {:>7}  {:>7}  {:>8}  {}\n",
            r.node,
            r.phase,
            format!("{}/{}", r.vmis.0, r.vmis.1),
            format!("{}/{}", r.pods.0, r.pods.1),
            r.since,
            r.detail
        ));
    }
    out
}

pub async fn status(config: Config, watch: bool) -> anyhow::Result<()> {
    let client = super::client().await?;
    let nodes: Api<Node> = Api::all(client);
    if !watch {
        let list = nodes.list(&ListParams::default()).await?;
        let mut rows: Vec<Row> = list.items.iter().filter_map(|n| row(n, &config)).collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        print!("{}", table(&rows));
        return Ok(());
    }
    // Progress bars on a terminal; one line per change when the output is a file or pipe.
    let interactive = std::io::stdout().is_terminal();
    let mut last_lines: BTreeMap<String, String> = BTreeMap::new();
    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:<20} {msg:<11} [{bar:30.green/white}] {pos}/{len}")
            .expect("static template")
            .progress_chars("=> ");
    let mut shown: BTreeMap<String, (ProgressBar, ProgressBar)> = BTreeMap::new();
    let stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .touched_objects();
    futures::pin_mut!(stream);
    println!("Watching nodes in maintenance (Ctrl-C to stop)...");
    loop {
        let next = tokio::select! {
            n = stream.next() => n,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = next else { return Ok(()) };
        let node = match event {
            Ok(node) => node,
            Err(e) => {
                let _ = bars.println(format!("watch error: {e}; retrying"));
                continue;
            }
        };
        let name = node.name_any();
        if !interactive {
            let line = match row(&node, &config) {
                Some(r) => format!(
                    "{name}: {} VMIs {}/{} pods {}/{} {}",
                    r.phase, r.vmis.0, r.vmis.1, r.pods.0, r.pods.1, r.detail
                ),
                None if last_lines.contains_key(&name) => format!("{name}: maintenance over"),
                None => continue,
            };
            if last_lines.get(&name) != Some(&line) {
                println!("{}", line.trim_end());
                last_lines.insert(name, line);
            }
            continue;
        }
        match row(&node, &config) {
            Some(r) => {
                let (vmi_bar, pod_bar) = shown.entry(name.clone()).or_insert_with(|| {
                    let v = bars.add(ProgressBar::new(0).with_style(style.clone()));
                    let p = bars.add(ProgressBar::new(0).with_style(style.clone()));
                    v.set_prefix(format!("{name} VMIs"));
                    p.set_prefix(format!("{name} pods"));
                    (v, p)
                });
                vmi_bar.set_length(r.vmis.1 as u64);
                vmi_bar.set_position(r.vmis.0 as u64);
                vmi_bar.set_message(r.phase.clone());
                pod_bar.set_length(r.pods.1 as u64);
                pod_bar.set_position(r.pods.0 as u64);
                pod_bar.set_message(if r.detail.is_empty() {
                    r.phase.clone()
                } else {
                    r.detail.chars().take(60).collect()
                });
            }
            None => {
                if let Some((v, p)) = shown.remove(&name) {
                    v.finish_with_message("Idle");
                    p.finish_with_message("Idle");
                    let _ = bars.println(format!("{name}: maintenance over"));
                }
            }
        }
    }
}
