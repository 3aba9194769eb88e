//! A real Prometheus (Debian's `prometheus` package) for tests: it scrapes the targets a test
//! names every second and evaluates the test's alerting rules every second; and
//! [`FlagExporter`], a target with one gauge the test raises and lowers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::free_port;

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

/// What a test's Prometheus scrapes, which alerts it evaluates and where it serves.
#[derive(Debug, Default)]
pub struct PrometheusSetup {
    targets: Vec<(String, u16)>,
    alerts: Vec<(String, String)>,
    route_prefix: String,
    port: Option<u16>,
}

impl PrometheusSetup {
    /// Scrapes `127.0.0.1:<port>/metrics` every second as job `job`.
    pub fn scrape(mut self, job: &str, port: u16) -> Self {
        self.targets.push((job.into(), port));
        self
    }

    /// An alerting rule `name` firing (without a `for` delay) while `expr` returns anything.
    pub fn alert(mut self, name: &str, expr: &str) -> Self {
        self.alerts.push((name.into(), expr.into()));
        self
    }

    /// Serves the web UI and API below `prefix` (`--web.route-prefix`), as behind a proxy.
    pub fn route_prefix(mut self, prefix: &str) -> Self {
        self.route_prefix = prefix.trim_end_matches('/').into();
        self
    }

    /// Listens on `port` (a Prometheus started again where the last one was) instead of a
    /// free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub async fn start(self) -> Result<Prometheus> {
        let bin = prometheus_bin()?;
        let dir = tempfile::tempdir()?;
        let rules = dir.path().join("rules.yml");
        let alerts: Vec<_> = self
            .alerts
            .iter()
            .map(|(name, expr)| json!({"alert": name, "expr": expr}))
            .collect();
        std::fs::write(
            &rules,
            serde_norway::to_string(&json!({
                "groups": [{"name": "test", "interval": "1s", "rules": alerts}]
            }))?,
        )?;
        let scrape_configs: Vec<_> = self
            .targets
            .iter()
            .map(|(job, port)| {
                json!({
                    "job_name": job,
                    "scrape_interval": "1s",
                    "static_configs": [{"targets": [format!("127.0.0.1:{port}")]}]
                })
            })
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            serde_norway::to_string(&json!({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [rules],
                "scrape_configs": scrape_configs
            }))?,
        )?;
        let port = self.port.unwrap_or_else(free_port);
        let log_path = dir.path().join("prometheus.log");
        let mut command = Command::new(&bin);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        if !self.route_prefix.is_empty() {
            command.arg(format!("--web.route-prefix={}", self.route_prefix));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut prometheus = Prometheus {
            child,
            port,
            route_prefix: self.route_prefix,
            log_path,
            _dir: dir,
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }
}

/// A Prometheus server; killed when dropped.
pub struct Prometheus {
    child: Child,
    port: u16,
    route_prefix: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Prometheus scraping one target, as job `vacate`.
    pub async fn start(target_port: u16) -> Result<Prometheus> {
        PrometheusSetup::default()
            .scrape("vacate", target_port)
            .start()
            .await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its API is, with the route prefix: `http://127.0.0.1:<port>[/prefix]`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.route_prefix)
    }

    pub fn log(&self) -> String {
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
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(
                format!(
                    "GET {}{path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n",
                    self.route_prefix
                )
                .as_bytes(),
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
    pub async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>> {
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

/// A scrape target on loopback serving one gauge, [`FlagExporter::METRIC`], at `/metrics`:
/// 0 until the test raises it. Stops when dropped.
pub struct FlagExporter {
    pub port: u16,
    raised: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FlagExporter {
    pub const METRIC: &str = "vacate_test_flag";

    pub async fn start() -> Result<FlagExporter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let raised = Arc::new(AtomicBool::new(false));
        let flag = raised.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::answer(stream, flag.clone()));
            }
        });
        Ok(FlagExporter { port, raised, task })
    }

    /// Sets the gauge to 1 (`true`) or 0; the next scrape sees it.
    pub fn set(&self, raised: bool) {
        self.raised.store(raised, Ordering::SeqCst);
    }

    /// One request, one answer, then the connection is closed.
    async fn answer(mut stream: tokio::net::TcpStream, raised: Arc<AtomicBool>) {
        let mut request = Vec::new();
        let mut buf = [0; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let (status, body) = if request.starts_with(b"GET /metrics ") {
            let (metric, value) = (Self::METRIC, u8::from(raised.load(Ordering::SeqCst)));
            (
                "200 OK",
                format!(
                    "# HELP {metric} Set by the test.\n# TYPE {metric} gauge\n{metric} {value}\n"
                ),
            )
        } else {
            ("404 Not Found", String::new())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
    }
}

impl Drop for FlagExporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
