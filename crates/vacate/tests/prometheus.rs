//! The Grafana dashboard against a real Prometheus: Prometheus (Debian's `prometheus`
//! package) scrapes vacate every second while vacate drains a testbed node, and every query
//! of dashboards/vacate.json must return at least one series with a value that is a number.

mod support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use support::prometheus::Prometheus;
use support::*;
use vacate::planner::Phase;

/// A window that is always open, so that the dashboard's window panel has a series.
const ALWAYS_OPEN: &str = r#"
[[windows]]
name = "always"
cron = "* * * * *"
duration = "1h"
"#;

/// Grafana's interval variables, as the dashboard would resolve them over a short range.
const GRAFANA_VARIABLES: [(&str, &str); 3] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "1s"),
    ("$__range", "5m"),
];

/// Every `expr` of the dashboard, with the panel title it belongs to.
fn dashboard_queries(path: &Path) -> Result<Vec<(String, String)>> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                    out.push((title.to_string(), expr.to_string()));
                }
                for value in map.values() {
                    walk(value, title, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, title, out);
                }
            }
            _ => {}
        }
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    walk(&dashboard["panels"], "", &mut out);
    Ok(out)
}

fn resolve_variables(expr: &str) -> Result<String> {
    let mut expr = expr.to_string();
    for (name, value) in GRAFANA_VARIABLES {
        expr = expr.replace(name, value);
    }
    ensure!(
        !expr.contains('$'),
        "a dashboard variable this test does not resolve: {expr}"
    );
    Ok(expr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_during_a_drain() -> Result<()> {
    let dashboard = Path::new("../../dashboards/vacate.json");
    let queries = dashboard_queries(dashboard)?;
    ensure!(queries.len() >= 10, "only {} queries found", queries.len());

    let env = Env::new("prom", 2).await?;
    let node = env.node(0).to_string();
    env.busy_node(0, 3, 2, 1).await?;

    let vacate = env.vacate(&format!("{FAST}{ALWAYS_OPEN}")).await?;
    let prometheus = Prometheus::start(vacate.metrics_port).await?;
    let result = drain_and_query(&env, &node, &prometheus, &queries).await;
    result.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n\nvacate's log:\n{}\nprometheus's log:\n{}",
            vacate.log(),
            prometheus.log()
        )
    })
}

async fn drain_and_query(
    env: &Env,
    node: &str,
    prometheus: &Prometheus,
    queries: &[(String, String)],
) -> Result<()> {
    // A few scrapes of the idle daemon first, so rates have a before.
    env.wait(
        "Prometheus to scrape vacate",
        Duration::from_secs(30),
        || async { Ok(prometheus.query("up{job=\"vacate\"} == 1").await?.len() == 1) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    env.request(node, Some("true")).await?;
    env.wait_phase(node, Phase::Drained, Duration::from_secs(120))
        .await?;
    env.wait(
        "Prometheus to see the finished drain",
        Duration::from_secs(30),
        || async {
            Ok(!prometheus
                .query("vacate_drains_total{result=\"drained\"} == 1")
                .await?
                .is_empty())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut empty = Vec::new();
    for (title, expr) in queries {
        let resolved = resolve_variables(expr)?;
        let series = prometheus
            .query(&resolved)
            .await
            .with_context(|| format!("panel {title:?}: {resolved}"))?;
        let values: Vec<&str> = series
            .iter()
            .filter_map(|s| s["value"][1].as_str())
            .collect();
        eprintln!("{:>3} series {values:?}  {title}: {resolved}", series.len());
        // A drain finished within the last minute: even its duration quantiles are numbers.
        if !values.iter().any(|v| *v != "NaN") {
            empty.push(format!("panel {title:?}: {resolved} => {values:?}"));
        }
    }
    ensure!(
        empty.is_empty(),
        "{} of {} dashboard queries returned no series (or only NaN) during a drain:\n{}",
        empty.len(),
        queries.len(),
        empty.join("\n")
    );

    env.request(node, None).await?;
    env.wait_idle(node, Duration::from_secs(30)).await?;
    Ok(())
}
