//! What `make bench` measures, each in one process with a watch (no kubectl start-up in a
//! figure): the least time KubeVirt's limits allow for a node's drain ([`bound`]), the time
//! a drain takes ([`drain`]), and how long a request label takes to cordon a node
//! ([`cordon_latency`]). See docs/benchmarks.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kubevirt_api::{KubeVirt, VirtualMachineInstance};
use serde::Serialize;
use serde_json::json;

/// The simulator's annotations on the KubeVirt CR and its defaults when they are absent
/// (crates/kubevirt-sim/src/settings.rs: `TIME_SCALE_ANNOTATION`, `DEFAULT_TIME_SCALE`,
/// `EFFECTIVE_BANDWIDTH_ANNOTATION`, `DEFAULT_EFFECTIVE_BANDWIDTH`, `TARGET_PREPARATION`).
pub const TIME_SCALE_ANNOTATION: &str = "simulator.vacate.io/time-scale";
pub const DEFAULT_TIME_SCALE: f64 = 10.0;
pub const EFFECTIVE_BANDWIDTH_ANNOTATION: &str = "simulator.vacate.io/effective-bandwidth";
pub const DEFAULT_EFFECTIVE_BANDWIDTH: f64 = 128.0 * 1024.0 * 1024.0;
/// Simulated seconds virt-handler takes to prepare a migration's target, in every migration.
pub const TARGET_PREPARATION_SECONDS: f64 = 2.0;
/// kwok's pod-delete stage (crates/testbed/kwok/stages.yaml) ends a pod at its
/// deletionTimestamp unless this annotation asks for an earlier exit.
const TERMINATION_DELAY_ANNOTATION: &str = "testbed.vacate.io/termination-delay";

/// The least time a node's drain can take under KubeVirt's limits, from what the cluster
/// says now: the KubeVirt CR (limits and the simulator's annotations), the node's VMIs and
/// its other pods.
#[derive(Clone, Debug, Serialize)]
pub struct Bound {
    pub node: String,
    pub vmis: usize,
    pub total_memory_bytes: u64,
    pub largest_memory_bytes: u64,
    /// `parallelOutboundMigrationsPerNode` as KubeVirt reads it (default 2).
    pub parallel_outbound_migrations_per_node: u32,
    /// `parallelMigrationsPerCluster` (default 5).
    pub parallel_migrations_per_cluster: u32,
    /// min of the two: migrations that can leave the node at once.
    pub slots: u32,
    /// Bytes per second of one migration: `bandwidthPerMigration`, else the simulator's
    /// effective bandwidth.
    pub bandwidth_bytes_per_second: f64,
    pub bandwidth_from: String,
    pub time_scale: f64,
    pub time_scale_from: String,
    pub target_preparation_seconds: f64,
    /// max(total memory / (slots × bandwidth), largest / bandwidth) / time scale.
    pub memory_bound_seconds: f64,
    /// The same with every migration also holding its slot for the target preparation:
    /// max(Σ (prep + memoryᵢ / B) / slots, max (prep + memoryᵢ / B)) / time scale.
    pub migration_bound_seconds: f64,
    /// The longest termination grace period of the node's other evictable pods (kwok ends
    /// such a pod when its grace period is over); real seconds, not scaled.
    pub pod_grace_seconds: f64,
    /// max(migration bound, pod grace): no drain can end sooner.
    pub bound_seconds: f64,
}

pub async fn bound(client: &kube::Client, node: &str) -> Result<Bound> {
    let kvs = Api::<KubeVirt>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing KubeVirt CRs")?;
    let kv = kvs.items.first();
    let config = kv
        .map(KubeVirt::migration_configuration)
        .unwrap_or_default();
    let annotations = kv.and_then(|kv| kv.metadata.annotations.clone());
    let annotation = |key: &str| annotations.as_ref().and_then(|a| a.get(key)).cloned();

    let (time_scale, time_scale_from) = match annotation(TIME_SCALE_ANNOTATION) {
        Some(v) => {
            let scale = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .with_context(|| format!("{TIME_SCALE_ANNOTATION}={v:?} is not a time scale"))?;
            (scale, format!("annotation {TIME_SCALE_ANNOTATION}"))
        }
        None => (DEFAULT_TIME_SCALE, "simulator default".to_string()),
    };
    let effective = annotation(EFFECTIVE_BANDWIDTH_ANNOTATION)
        .and_then(|v| kubevirt_api::quantity::parse_quantity(&v))
        .filter(|b| *b > 0.0);
    let (bandwidth, bandwidth_from) = match (config.bandwidth_bytes_per_second(), effective) {
        (Some(b), _) => (b, "KubeVirt bandwidthPerMigration".to_string()),
        (None, Some(b)) => (b, format!("annotation {EFFECTIVE_BANDWIDTH_ANNOTATION}")),
        (None, None) => (
            DEFAULT_EFFECTIVE_BANDWIDTH,
            "simulator default (bandwidthPerMigration unlimited)".to_string(),
        ),
    };
    let per_node = config.parallel_outbound_migrations_per_node();
    let per_cluster = config.parallel_migrations_per_cluster();
    let slots = per_node.min(per_cluster).max(1);

    let vmis = Api::<VirtualMachineInstance>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing VMIs")?;
    let mut memory = Vec::new();
    let mut slot_seconds = Vec::new();
    for vmi in vmis.items.iter().filter(|v| v.node_name() == Some(node)) {
        let bytes = vmi.guest_memory_bytes().with_context(|| {
            format!(
                "VMI {} states no guest memory",
                vmi.metadata.name.as_deref().unwrap_or("?")
            )
        })?;
        // A VMI may lower its own throughput (the simulator takes the smaller value).
        let own = vmi
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EFFECTIVE_BANDWIDTH_ANNOTATION))
            .and_then(|v| kubevirt_api::quantity::parse_quantity(v))
            .filter(|b| *b > 0.0);
        let b = match (config.bandwidth_bytes_per_second(), own) {
            (Some(limit), Some(own)) => limit.min(own),
            (Some(limit), None) => limit,
            (None, Some(own)) => own,
            (None, None) => bandwidth,
        };
        memory.push(bytes);
        slot_seconds.push(TARGET_PREPARATION_SECONDS + bytes as f64 / b);
    }
    let total: u64 = memory.iter().sum();
    let largest = memory.iter().copied().max().unwrap_or(0);
    let memory_bound =
        (total as f64 / (slots as f64 * bandwidth)).max(largest as f64 / bandwidth) / time_scale;
    let makespan = |d: &[f64]| {
        let total: f64 = d.iter().fold(0.0, |a, b| a + b);
        (total / slots as f64).max(d.iter().copied().fold(0.0, f64::max))
    };
    let migration_bound = makespan(&slot_seconds) / time_scale;

    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .context("listing the node's pods")?;
    let pod_grace = pods
        .items
        .iter()
        .filter(|p| evictable(p))
        .map(|p| {
            let grace = p
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30) as f64;
            let delay = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TERMINATION_DELAY_ANNOTATION))
                .and_then(|d| parse_go_seconds(d));
            delay.map_or(grace, |d| d.min(grace))
        })
        .fold(0.0, f64::max);

    Ok(Bound {
        node: node.to_string(),
        vmis: memory.len(),
        total_memory_bytes: total,
        largest_memory_bytes: largest,
        parallel_outbound_migrations_per_node: per_node,
        parallel_migrations_per_cluster: per_cluster,
        slots,
        bandwidth_bytes_per_second: bandwidth,
        bandwidth_from,
        time_scale,
        time_scale_from,
        target_preparation_seconds: TARGET_PREPARATION_SECONDS,
        memory_bound_seconds: memory_bound,
        migration_bound_seconds: migration_bound,
        pod_grace_seconds: pod_grace,
        bound_seconds: migration_bound.max(pod_grace),
    })
}

/// A pod a drain evicts and waits for: not a DaemonSet's, not a mirror pod, not a
/// virt-launcher (its VMI migrates; the simulator deletes it with no grace period).
fn evictable(pod: &Pod) -> bool {
    let owned_by_daemonset = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let launcher = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubevirt.io"))
        .is_some_and(|v| v == "virt-launcher");
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !(owned_by_daemonset || mirror || launcher || finished)
}

/// Seconds of a Go duration such as `1s`, `500ms` or `2m` (the forms the testbed uses).
fn parse_go_seconds(d: &str) -> Option<f64> {
    let d = d.trim();
    for (suffix, factor) in [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)] {
        if let Some(n) = d.strip_suffix(suffix)
            && let Ok(n) = n.parse::<f64>()
        {
            return Some(n * factor);
        }
    }
    None
}

/// `key=value` from the command line.
pub fn parse_label(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{s:?} is not key=value"),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn label_of<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

fn cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// Nodes as a watch shows them, and a way to wait for one of them to change.
struct NodeWatch {
    nodes: tokio::sync::watch::Receiver<BTreeMap<String, Node>>,
    task: tokio::task::JoinHandle<()>,
}

impl NodeWatch {
    /// Starts a watch of the nodes the config selects and returns once it has listed them.
    async fn start(api: Api<Node>, config: watcher::Config) -> Result<NodeWatch> {
        let (tx, mut rx) = tokio::sync::watch::channel(BTreeMap::new());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut initial = BTreeMap::new();
            let mut stream = std::pin::pin!(watcher(api, config));
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => initial.clear(),
                    Ok(watcher::Event::InitApply(n)) => {
                        initial.insert(n.metadata.name.clone().unwrap_or_default(), n);
                    }
                    Ok(watcher::Event::InitDone) => {
                        tx.send_replace(std::mem::take(&mut initial));
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(n)) => tx.send_modify(|m| {
                        m.insert(n.metadata.name.clone().unwrap_or_default(), n);
                    }),
                    Ok(watcher::Event::Delete(n)) => tx.send_modify(|m| {
                        m.remove(n.metadata.name.as_deref().unwrap_or_default());
                    }),
                    Err(e) => {
                        // The watcher lists again on its next poll; a short pause keeps a
                        // failing API server from being hammered without delaying a sample.
                        tracing::info!("node watch: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .context("the node watch did not list the nodes in 30 s")?
            .context("the node watch ended")?;
        rx.borrow_and_update();
        Ok(NodeWatch { nodes: rx, task })
    }

    fn get(&self, name: &str) -> Option<Node> {
        self.nodes.borrow().get(name).cloned()
    }

    /// Waits until `done` holds for the node, returning the instant the watch said so.
    async fn until(
        &mut self,
        name: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Node) -> bool,
    ) -> Result<Instant> {
        wait_for_node(&mut self.nodes, name, timeout, what, done).await
    }
}

async fn wait_for_node(
    nodes: &mut tokio::sync::watch::Receiver<BTreeMap<String, Node>>,
    name: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Node) -> bool,
) -> Result<Instant> {
    let wait = async {
        loop {
            if nodes.borrow_and_update().get(name).is_some_and(&done) {
                return Ok(Instant::now());
            }
            if nodes.changed().await.is_err() {
                bail!("the node watch ended");
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .with_context(|| format!("node {name}: {what} not seen within {timeout:?}"))?
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn set_label(api: &Api<Node>, node: &str, key: &str, value: Option<&str>) -> Result<()> {
    let patch = json!({"metadata": {"labels": {key: value}}});
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("labelling node {node}"))?;
    Ok(())
}

/// One drain, timed: from the request (the label patch sent, or the command started) to
/// its end (the watch shows the drained label, or the command exits 0).
#[derive(Clone, Debug, Serialize)]
pub struct DrainTiming {
    pub node: String,
    pub start_unix: f64,
    pub end_unix: f64,
    pub seconds: f64,
    /// From the request until the watch showed `spec.unschedulable`.
    pub cordon_seconds: Option<f64>,
}

/// How a drain is started and when it counts as done.
pub enum DrainBy {
    /// Set `request`; done when the node carries `until`.
    Label {
        request: (String, String),
        until: (String, String),
    },
    /// Run a command; done when it exits successfully.
    Command(Vec<String>),
}

pub async fn drain(
    client: &kube::Client,
    node: &str,
    by: &DrainBy,
    timeout: Duration,
) -> Result<DrainTiming> {
    let api: Api<Node> = Api::all(client.clone());
    let mut watch = NodeWatch::start(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
    )
    .await?;
    if watch.get(node).is_none() {
        bail!("no node {node}");
    }
    if watch.get(node).is_some_and(|n| cordoned(&n)) {
        bail!("node {node} is cordoned already");
    }
    let start_unix = unix_now();
    let start = Instant::now();
    // The cordon is watched beside the drain (on a second receiver of the same watch).
    let mut cordon_rx = watch.nodes.clone();
    let node_name = node.to_string();
    let cordon = tokio::spawn(async move {
        wait_for_node(&mut cordon_rx, &node_name, timeout, "the cordon", cordoned)
            .await
            .ok()
    });
    let result = async {
        match by {
            DrainBy::Label { request, until } => {
                set_label(&api, node, &request.0, Some(&request.1)).await?;
                watch
                    .until(
                        node,
                        timeout,
                        &format!("label {}={}", until.0, until.1),
                        |n| label_of(n, &until.0) == Some(until.1.as_str()),
                    )
                    .await
            }
            DrainBy::Command(argv) => {
                let (program, args) = argv.split_first().context("an empty command")?;
                let mut child = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    // Standard output is this command's JSON: the drainer writes to stderr.
                    .stdout(std::process::Stdio::from(std::io::stderr()))
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting {program}"))?;
                let status = tokio::time::timeout(timeout, child.wait())
                    .await
                    .with_context(|| format!("{program} did not finish within {timeout:?}"))??;
                let end = Instant::now();
                if !status.success() {
                    bail!("{} failed: {status}", argv.join(" "));
                }
                Ok(end)
            }
        }
    }
    .await;
    let end = match result {
        Ok(end) => end,
        Err(e) => {
            cordon.abort();
            return Err(e);
        }
    };
    let seconds = end.duration_since(start).as_secs_f64();
    let cordon_seconds = match tokio::time::timeout(Duration::from_secs(1), cordon).await {
        Ok(Ok(Some(at))) => Some(at.duration_since(start).as_secs_f64()),
        _ => None,
    };
    Ok(DrainTiming {
        node: node.to_string(),
        start_unix,
        end_unix: start_unix + seconds,
        seconds,
        cordon_seconds,
    })
}

/// Request label → cordon latencies over `count` requests.
#[derive(Clone, Debug, Serialize)]
pub struct CordonLatency {
    pub requests: usize,
    pub nodes: Vec<String>,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    pub samples_seconds: Vec<f64>,
}

/// Sets `request` on the selected nodes in turn, one at a time, and times each until the
/// watch shows the node cordoned; then removes the label and waits until the node is back
/// (uncordoned, no `drained` label, no `state` annotation) before the next request.
pub async fn cordon_latency(
    client: &kube::Client,
    selector: &str,
    request: &(String, String),
    drained_label: &str,
    state_annotation: &str,
    count: usize,
    timeout: Duration,
) -> Result<CordonLatency> {
    let api: Api<Node> = Api::all(client.clone());
    let mut watch =
        NodeWatch::start(api.clone(), watcher::Config::default().labels(selector)).await?;
    let nodes: Vec<String> = watch.nodes.borrow().keys().cloned().collect();
    if nodes.is_empty() {
        bail!("no node matches {selector:?}");
    }
    let idle = |n: &Node| {
        !cordoned(n)
            && label_of(n, drained_label).is_none()
            && label_of(n, &request.0).is_none()
            && n.metadata
                .annotations
                .as_ref()
                .is_none_or(|a| !a.contains_key(state_annotation))
    };
    for node in &nodes {
        watch.until(node, timeout, "an idle node", idle).await?;
    }
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let node = &nodes[i % nodes.len()];
        let start = Instant::now();
        set_label(&api, node, &request.0, Some(&request.1)).await?;
        let at = watch.until(node, timeout, "the cordon", cordoned).await?;
        samples.push(at.duration_since(start).as_secs_f64());
        set_label(&api, node, &request.0, None).await?;
        watch
            .until(node, timeout, "the end of the maintenance", idle)
            .await?;
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(CordonLatency {
        requests: count,
        nodes,
        p50_seconds: percentile(&sorted, 0.50),
        p99_seconds: percentile(&sorted, 0.99),
        max_seconds: sorted.last().copied().unwrap_or_default(),
        samples_seconds: samples,
    })
}

/// The nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s[..50], 0.99), 50.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_seconds("1s"), Some(1.0));
        assert_eq!(parse_go_seconds("500ms"), Some(0.5));
        assert_eq!(parse_go_seconds("2m"), Some(120.0));
        assert_eq!(parse_go_seconds("x"), None);
    }
}
