//! `vacate status [--watch]`: the nodes vacate is handling, read from their state annotations.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use crate::cluster::cached::CachedNode;
use crate::cluster::gate::fleet_node;
use crate::cluster::schedule;
use crate::cluster::snapshot::node_view;
use crate::config::{Config, OnClose};
use crate::planner::{DrainState, FleetNode, StateAnnotation, windows};

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

pub fn row(node: &CachedNode, config: &Config) -> Option<Row> {
    let view = node_view(node, config);
    let name = node.name_any();
    let age = |state: &DrainState| {
        let secs = (Utc::now() - state.phase_since).num_seconds().max(0) as u64;
        humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
    };
    match &view.state {
        StateAnnotation::Valid(state) => {
            let mut detail = state.detail().unwrap_or_default();
            if let Some(eta) = state
                .eta
                .filter(|_| state.phase == crate::planner::Phase::Migrating)
            {
                let left = (eta - Utc::now()).num_seconds().max(0) as u64;
                let eta = format!(
                    "migrations done by {} UTC (in {})",
                    eta.format("%H:%M:%S"),
                    humantime::format_duration(std::time::Duration::from_secs(left))
                );
                detail = if detail.is_empty() {
                    eta
                } else {
                    format!("{eta}; {detail}")
                };
            }
            if let Some(why) = state
                .unsteered
                .as_ref()
                .filter(|_| state.phase == crate::planner::Phase::Migrating)
            {
                let note = format!("not steered: {why}");
                detail = if detail.is_empty() {
                    note
                } else {
                    format!("{detail}; {note}")
                };
            }
            Some(Row {
                node: name,
                phase: state.phase.to_string(),
                vmis: (state.vmis_done(), state.vmis.len()),
                pods: (state.pods_done(), state.pods_total()),
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
        StateAnnotation::Absent if view.request_value.is_some() || view.upgrade_to.is_some() => {
            Some(Row {
                node: name,
                phase: "Requested".into(),
                vmis: (0, 0),
                pods: (0, 0),
                detail: "waiting for vacate to pick it up".into(),
                since: String::new(),
            })
        }
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

/// The maintenance windows, schedules and fleet limits, below the node table.
pub fn fleet_summary(
    config: &Config,
    now: DateTime<Utc>,
    nodes: &[FleetNode],
    last_runs: &BTreeMap<String, DateTime<Utc>>,
) -> String {
    let time = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let mut out = String::new();
    if !config.windows.is_empty() {
        let width = config
            .windows
            .iter()
            .map(|w| w.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        out = format!(
            "\n{:<width$}  {:<6}  {:<32}  GATES\n",
            "WINDOW", "STATE", "WHEN"
        );
        for w in &config.windows {
            let st = windows::status(w, now);
            let when = match (st.closes_at, st.next_open) {
                (Some(close), _) => format!("closes {}", time(close)),
                (None, Some(open)) => format!("opens {}", time(open)),
                (None, None) => "never opens again".into(),
            };
            let gates: Vec<&str> = w.applies_to.iter().map(|k| k.as_str()).collect();
            out.push_str(&format!(
                "{:<width$}  {:<6}  {:<32}  {} ({} {}, {} long, on close: {})\n",
                w.name,
                if st.open { "open" } else { "closed" },
                when,
                gates.join(", "),
                w.cron,
                w.timezone,
                w.duration,
                match w.on_close {
                    OnClose::Finish => "finish",
                    OnClose::Abort => "abort",
                }
            ));
        }
    }
    if !config.schedules.is_empty() {
        let width = config
            .schedules
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(8)
            .max(8);
        out.push_str(&format!(
            "\n{:<width$}  {:<23}  {:<23}  NODES IN ROLLOUT\n",
            "SCHEDULE", "LAST RUN", "NEXT RUN"
        ));
        for s in &config.schedules {
            let in_rollout: Vec<&str> = nodes
                .iter()
                .filter(|n| n.in_rollout_of(&s.name))
                .map(|n| n.name.as_str())
                .collect();
            out.push_str(&format!(
                "{:<width$}  {:<23}  {:<23}  {}\n",
                s.name,
                last_runs.get(&s.name).map_or("never".into(), |t| time(*t)),
                s.cron.next(now, &s.timezone).map_or("never".into(), time),
                if in_rollout.is_empty() {
                    "-".to_string()
                } else {
                    in_rollout.join(", ")
                }
            ));
        }
    }
    let busy: Vec<&str> = nodes
        .iter()
        .filter(|n| n.in_maintenance)
        .map(|n| n.name.as_str())
        .collect();
    out.push_str(&format!(
        "\nFleet: {} of at most {} node(s) in maintenance (fleet.max_draining = {}){}\n",
        busy.len(),
        config.fleet.max_draining.of(nodes.len()),
        config.fleet.max_draining,
        if busy.is_empty() {
            String::new()
        } else {
            format!(": {}", busy.join(", "))
        }
    ));
    out
}

pub async fn status(config: Config, watch: bool) -> anyhow::Result<()> {
    let client = super::client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    if !watch {
        let list = CachedNode::list(
            &client,
            &ListParams::default(),
            &config.node.state_annotation,
        )
        .await?;
        let mut rows: Vec<Row> = list.iter().filter_map(|n| row(n, &config)).collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        print!("{}", table(&rows));
        let fleet: Vec<FleetNode> = list
            .iter()
            .filter(|n| config.node.selector.matches(n.labels()))
            .map(|n| fleet_node(n, &config))
            .collect();
        let last_runs = if config.schedules.is_empty() {
            BTreeMap::new()
        } else {
            let namespace = super::run::lease_namespace(&config);
            match schedule::read_record(&client, &namespace).await {
                Ok(cm) => cm.as_ref().map(schedule::parse_record).unwrap_or_default(),
                Err(e) => {
                    eprintln!("cannot read the schedules' last runs: {e}");
                    BTreeMap::new()
                }
            }
        };
        print!("{}", fleet_summary(&config, Utc::now(), &fleet, &last_runs));
        let kubevirts: Api<kubevirt_api::KubeVirt> = Api::all(client.clone());
        match kubevirts.list(&ListParams::default()).await {
            Ok(list) => {
                for kv in &list.items {
                    println!(
                        "KubeVirt: {} (CR {})",
                        kv.observed_version().unwrap_or("version not reported yet"),
                        kv.name_any()
                    );
                }
            }
            Err(e) => eprintln!("cannot read the KubeVirt CR: {e}"),
        }
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
            Ok(node) => CachedNode::of(node, &config.node.state_annotation),
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_summary_shows_windows_schedules_and_the_fleet() {
        let config = Config::from_toml_and_env(
            r#"
            [fleet]
            max_draining = 2
            [[windows]]
            name = "nightly"
            cron = "0 2 * * *"
            duration = "4h"
            [[schedules]]
            name = "monthly"
            cron = "0 3 1 * *"
            "#,
            Vec::<(String, String)>::new(),
        )
        .unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        let node = |name: &str, value: Option<&str>, busy: bool| FleetNode {
            name: name.into(),
            labels: Default::default(),
            ready: true,
            unschedulable: busy,
            in_maintenance: busy,
            started_at: None,
            request_value: value.map(String::from),
            waiting_for_place: false,
            vm_memory: 0,
        };
        let nodes = [
            node("a", Some("monthly.20261101T030000Z"), true),
            node("b", Some("monthly.20261101T030000Z"), false),
            node("c", None, false),
        ];
        let last = BTreeMap::from([(
            "monthly".to_string(),
            Utc.with_ymd_and_hms(2026, 11, 1, 3, 0, 0).unwrap(),
        )]);
        let text = fleet_summary(&config, now, &nodes, &last);
        assert!(
            text.contains("nightly") && text.contains("closed"),
            "{text}"
        );
        assert!(text.contains("opens 2026-11-27 02:00:00 UTC"), "{text}");
        assert!(text.contains("2026-11-01 03:00:00 UTC"), "{text}");
        assert!(text.contains("2026-12-01 03:00:00 UTC"), "{text}");
        assert!(text.contains("a, b"), "{text}");
        assert!(
            text.contains("Fleet: 1 of at most 2 node(s) in maintenance"),
            "{text}"
        );
        let open = fleet_summary(
            &config,
            Utc.with_ymd_and_hms(2026, 11, 26, 3, 0, 0).unwrap(),
            &nodes,
            &last,
        );
        assert!(open.contains("closes 2026-11-26 06:00:00 UTC"), "{open}");
    }
}
