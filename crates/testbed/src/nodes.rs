//! kwok nodes: Node objects created with a status (capacity, kubelet version), which kwok
//! then keeps Ready.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::control_plane::KUBE_VERSION;

/// Label every testbed node carries (`type=kwok`).
pub const TYPE_LABEL: (&str, &str) = ("type", "kwok");
/// Label of the pool a node belongs to.
pub const POOL_LABEL: &str = "testbed.vacate.io/pool";
/// Label that marks the nodes of one [`crate::NodeSet`].
pub const SET_LABEL: &str = "testbed.vacate.io/set";

/// What a node looks like.
#[derive(Clone, Debug)]
pub struct NodeTemplate {
    pub labels: BTreeMap<String, String>,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    /// Reported as `status.nodeInfo.kubeletVersion`.
    pub kubelet_version: String,
    pub taints: Vec<Taint>,
    /// Extra capacity, e.g. `devices.kubevirt.io/kvm`.
    pub extra_capacity: BTreeMap<String, String>,
    /// Container images reported in `status.images` (a real kubelet lists up to 50), so
    /// that Node objects weigh what they weigh in a real cluster.
    pub images: u32,
}

impl Default for NodeTemplate {
    fn default() -> Self {
        NodeTemplate {
            labels: BTreeMap::new(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: "110".into(),
            kubelet_version: KUBE_VERSION.into(),
            taints: Vec::new(),
            extra_capacity: BTreeMap::new(),
            images: 0,
        }
    }
}

impl NodeTemplate {
    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The Node object named `name`.
    pub fn node(&self, name: &str, pool: &str) -> Result<Node> {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), name.into());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        labels.insert(TYPE_LABEL.0.into(), TYPE_LABEL.1.into());
        labels
            .entry(POOL_LABEL.into())
            .or_insert_with(|| pool.to_string());
        let mut capacity = serde_json::Map::new();
        capacity.insert("cpu".into(), json!(self.cpu));
        capacity.insert("memory".into(), json!(self.memory));
        capacity.insert("pods".into(), json!(self.pods));
        capacity.insert("ephemeral-storage".into(), json!("1Ti"));
        for (k, v) in &self.extra_capacity {
            capacity.insert(k.clone(), json!(v));
        }
        let images: Vec<serde_json::Value> = (0..self.images).map(|i| image(name, i)).collect();
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "kwok.x-k8s.io/node": "fake",
                },
            },
            "spec": {
                "taints": self.taints,
            },
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": node_ip(name)},
                    {"type": "Hostname", "address": name},
                ],
                "capacity": capacity,
                "allocatable": capacity,
                "images": images,
                "nodeInfo": {
                    "kubeletVersion": self.kubelet_version,
                    "kubeProxyVersion": self.kubelet_version,
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "containerRuntimeVersion": "kwok",
                    "kernelVersion": "kwok",
                    "osImage": "kwok",
                    "machineID": "",
                    "bootID": "",
                    "systemUUID": "",
                },
            },
        });
        serde_json::from_value(node).with_context(|| format!("building node {name}"))
    }
}

/// The `i`th entry of a node's `status.images`: two names (tag and digest) and a size, as
/// the kubelet reports them; digests differ per node and image.
fn image(node: &str, i: u32) -> serde_json::Value {
    let h = kubevirt_api::hash::fnv1a(&format!("{node}/{i}"));
    let digest = format!(
        "{h:016x}{:016x}{h:016x}{:016x}",
        h.rotate_left(17),
        h.rotate_left(31)
    );
    let repo = format!("registry.example.com/platform/component-{i:02}");
    json!({
        "names": [format!("{repo}@sha256:{digest}"), format!("{repo}:v1.{}.{}", i % 7, h % 20)],
        "sizeBytes": 20_000_000 + (h % 400_000_000),
    })
}

/// A stable made-up address in 10.64.0.0/10 for a node name (nothing listens there).
fn node_ip(name: &str) -> String {
    let h = kubevirt_api::hash::fnv1a(name);
    format!(
        "10.{}.{}.{}",
        64 + (h % 64),
        (h >> 8) % 256,
        1 + (h >> 16) % 254
    )
}

/// Creates nodes (status included, which kwok keeps), `concurrency` at a time.
pub async fn create_nodes(
    client: &kube::Client,
    nodes: Vec<Node>,
    concurrency: usize,
) -> Result<Vec<String>> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(nodes.into_iter().map(|node| {
        let api = api.clone();
        async move {
            let name = node.metadata.name.clone().unwrap_or_default();
            api.create(&PostParams::default(), &node)
                .await
                .with_context(|| format!("creating node {name}"))?;
            Ok::<_, anyhow::Error>(name)
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect()
    .await
}

/// Sets a node's reported kubelet version (as after a kubelet upgrade). kwok does not
/// overwrite `status.nodeInfo.kubeletVersion`.
pub async fn set_kubelet_version(client: &kube::Client, node: &str, version: &str) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {"nodeInfo": {"kubeletVersion": version}}});
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting the kubelet version of node {node} to {version}"))?;
    Ok(())
}

/// Whether a node's Ready condition is True.
/// Ready, and without the taints the node controller puts on a node that is not ready or
/// not reachable: the scheduler may place pods on it.
pub fn is_schedulable(node: &Node) -> bool {
    let held_back = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| {
            taints.iter().any(|t| {
                t.key == "node.kubernetes.io/not-ready" || t.key == "node.kubernetes.io/unreachable"
            })
        });
    is_ready(node) && !held_back
}

pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, taint: Option<&str>) -> Node {
        let taints: Vec<serde_json::Value> = taint
            .map(|key| serde_json::json!({"key": key, "effect": "NoSchedule"}))
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_takes_pods_once_ready_and_rid_of_the_not_ready_taints() {
        assert!(is_schedulable(&node("True", None)));
        assert!(is_schedulable(&node("True", Some("dedicated"))));
        assert!(!is_schedulable(&node("False", None)));
        assert!(!is_schedulable(&node(
            "True",
            Some("node.kubernetes.io/not-ready")
        )));
        assert!(!is_schedulable(&node(
            "True",
            Some("node.kubernetes.io/unreachable")
        )));
    }
}
