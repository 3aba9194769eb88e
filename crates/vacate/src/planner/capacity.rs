//! Whether the VMs and pods of a node have somewhere to go: their resource requests packed
//! onto the free allocatable of the schedulable nodes that remain (first fit, largest first).
//!
//! An estimate of what the scheduler will do: each pod's node selector is respected, taints
//! and affinity are not, so a "fits" can still leave a pod pending, but a "does not fit" is
//! certain for what is counted (CPU, memory, pod slots, node selectors).

use std::collections::BTreeMap;
use std::fmt;

use crate::labels::Labels;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

impl Resources {
    pub fn add(&mut self, other: Resources) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} CPU, {:.1} GiB",
            self.cpu_millis as f64 / 1000.0,
            self.memory_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

/// A pod that must move (a VMI's virt-launcher pod or a pod to evict).
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub requests: Resources,
    /// The pod's `nodeSelector`: only nodes with all these labels can take it.
    pub node_selector: BTreeMap<String, String>,
}

/// A node that can take workloads: what it has left.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    /// The node's labels, shared: a fleet's targets are copied for every plan that steers
    /// migrations, and the labels are most of a target.
    pub labels: Labels,
    pub free: Resources,
    pub pods_free: i64,
}

impl Target {
    /// Whether `w` fits in what this node has left and matches its node selector.
    pub fn fits(&self, w: &Workload) -> bool {
        w.node_selector
            .iter()
            .all(|(k, v)| self.labels.get(k) == Some(v.as_str()))
            && self.pods_free > 0
            && self.free.cpu_millis >= w.requests.cpu_millis
            && self.free.memory_bytes >= w.requests.memory_bytes
    }

    /// Places `w` here.
    pub fn take(&mut self, w: &Workload) {
        self.free.cpu_millis -= w.requests.cpu_millis;
        self.free.memory_bytes -= w.requests.memory_bytes;
        self.pods_free -= 1;
    }
}

/// `Ok` when every workload fits somewhere, else a message naming what does not.
pub fn check(workloads: &[Workload], targets: &[Target]) -> Result<(), String> {
    if workloads.is_empty() {
        return Ok(());
    }
    let mut targets: Vec<Target> = targets.to_vec();
    let mut order: Vec<&Workload> = workloads.iter().collect();
    order.sort_by(|a, b| {
        (b.requests.memory_bytes, b.requests.cpu_millis, &a.name).cmp(&(
            a.requests.memory_bytes,
            a.requests.cpu_millis,
            &b.name,
        ))
    });
    let mut stranded: Vec<&Workload> = Vec::new();
    for w in order {
        match targets.iter_mut().find(|t| t.fits(w)) {
            Some(t) => t.take(w),
            None => stranded.push(w),
        }
    }
    let Some(first) = stranded.first() else {
        return Ok(());
    };
    // Kept free of figures that change with every pod in the cluster: the message is part of
    // the node's state, which is rewritten whenever it changes.
    Err(format!(
        "the schedulable nodes that would remain cannot hold {} of the {} VMs and pods to move, e.g. {} (requests {})",
        stranded.len(),
        workloads.len(),
        first.name,
        first.requests,
    ))
}

/// Parses a Kubernetes quantity (`500m`, `2`, `4Gi`, `1.5G`, `1e3`) in units of `1/scale`:
/// `parse_quantity("500m", 1000)` is 500 (millicores), `parse_quantity("1Ki", 1)` is 1024.
pub fn parse_quantity(text: &str, scale: i64) -> Option<i64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let value = number * factor * scale as f64;
    value.is_finite().then(|| value.ceil() as i64)
}
