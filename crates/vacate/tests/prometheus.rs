//! The Grafana dashboard against a real Prometheus: Prometheus (Debian's `prometheus`
//! package) scrapes vacate every second while vacate drains a testbed node, and every query
//! of dashboards/vacate.json must return at least one series with a value that is a number.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use support::*;
use vacate::planner::Phase;

const FAST: &str = r#"
[migration]
batch_interval = "1s"
retry_backoff = "1s"
retry_backoff_max = "2s"
[pods]
eviction_backoff = "1s"
eviction_backoff_max = "3s"
"#;

/// Grafana's interval variables, as the dashboard would resolve them over a short range.
const GRAFANA_VARIABLES: [(&str, &str); 3] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "1s"),
    ("$__range", "5m"),
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The prometheus binary; installed from Debian when missing. Not finding it fails the test.
fn prometheus_bin() -> Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("prometheus is not installed: apt-get install -y prometheus");
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "prometheus",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match (status, find()) {
        (_, Some(p)) => Ok(p),
        (Ok(s), None) => {
            bail!("prometheus is needed and `apt-get install prometheus` failed ({s})")
        }
        (Err(e), None) => bail!("prometheus is needed and apt-get could not run: {e}"),
    }
}

/// A Prometheus server scraping one target every second; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target_port: u16) -> Result<Prometheus> {
        let bin = prometheus_bin()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vacate\n    scrape_interval: 1s\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )?;
        let port = free_port();
        let log_path = dir.path().join("prometheus.log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut prometheus = Prometheus {
            child,
            port,
            log_path,
            _dir: dir,
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", self.log());
            }
            if let Ok((200, _)) = self.get("/-/ready").await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("prometheus was not ready within 30 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GET over HTTP/1.0, so the answer is neither chunked nor kept alive.
    async fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(
                format!("GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("an HTTP response without a body")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("an HTTP response without a status")?;
        Ok((status, body.to_string()))
    }

    /// An instant query; returns the result vector (an error for anything else).
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>> {
        let (status, body) = self
            .get(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .await?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("HTTP {status}: {body}"))?;
        ensure!(
            status == 200 && answer["status"] == "success",
            "HTTP {status}: {body}"
        );
        match answer["data"]["resultType"].as_str() {
            Some("vector") => Ok(answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()),
            other => bail!("a {other:?} result, not an instant vector: {body}"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards/vacate.json");
    let queries = dashboard_queries(&dashboard)?;
    ensure!(queries.len() >= 10, "only {} queries found", queries.len());

    let env = Env::new("prom", 2).await?;
    let node = env.node(0).to_string();
    env.busy_node(0, 3, 2, 1).await?;

    let vacate = env.vacate(FAST).await?;
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
