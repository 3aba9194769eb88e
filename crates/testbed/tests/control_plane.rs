//! Integration tests against the real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok) started by the test-support API, or
//! the running testbed it reuses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use testbed::seed::pod_running;
use testbed::{NodeTemplate, Scenario, TestCluster, nodes, wait_until};

fn deployment(name: &str, replicas: i32, selector: &BTreeMap<String, String>) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": selector,
                    "terminationGracePeriodSeconds": 3,
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }))
    .expect("valid deployment")
}

async fn running_pods(
    api: &Api<Pod>,
    selector: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Pod>> {
    let pods = wait_until(
        &format!("{n} pods with {selector} to be Running"),
        timeout,
        api.clone(),
        kube::runtime::watcher::Config::default().labels(selector),
        |pods: &[Pod]| pods.iter().filter(|p| pod_running(p)).count() >= n,
        |pods| {
            pods.iter()
                .map(|p| {
                    format!(
                        "{}={:?}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.status.as_ref().and_then(|s| s.phase.clone())
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
    .await?;
    Ok(pods.into_iter().filter(pod_running).collect())
}

#[tokio::test]
async fn api_server_answers_with_the_built_version() -> Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client();
    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, testbed::KUBE_VERSION);
    assert_eq!(version.major, "1");
    // RBAC is on: the default service account may not list nodes.
    let kubectl = cluster
        .kubectl()?
        .args(["auth", "can-i", "list", "nodes", "--as"])
        .arg("system:serviceaccount:default:default")
        .output()?;
    assert_eq!(String::from_utf8_lossy(&kubectl.stdout).trim(), "no");
    Ok(())
}

#[tokio::test]
async fn node_sets_become_ready_with_their_kubelet_version() -> Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client();
    let mut template = NodeTemplate::default().label("pool", "test");
    template.kubelet_version = "v1.36.3".into();
    let set = cluster.node_set(2, template).await?;
    let api: Api<Node> = Api::all(client.clone());
    for name in set.names() {
        let node = api.get(name).await?;
        assert!(nodes::is_ready(&node), "{name} is not Ready");
        let status = node.status.context("node status")?;
        assert_eq!(
            status.node_info.context("nodeInfo")?.kubelet_version,
            "v1.36.3"
        );
        let cap = status.capacity.context("capacity")?;
        assert_eq!(cap["cpu"].0, "32");
        assert_eq!(cap["memory"].0, "256Gi");
        let labels = node.metadata.labels.context("labels")?;
        assert_eq!(labels["type"], "kwok");
        assert_eq!(labels["kubernetes.io/hostname"], *name);
    }
    // An "upgraded" kubelet: kwok keeps the version we set.
    let first = &set.names()[0];
    nodes::set_kubelet_version(&client, first, testbed::KUBE_VERSION).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let node = api.get(first).await?;
    assert_eq!(
        node.status
            .and_then(|s| s.node_info)
            .map(|i| i.kubelet_version),
        Some(testbed::KUBE_VERSION.to_string())
    );
    Ok(())
}

#[tokio::test]
async fn deployment_pods_run_on_kwok_nodes_and_deletion_waits_for_the_grace_period() -> Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client();
    let ns = cluster.namespace("deploy").await?;
    let set = cluster.node_set(2, NodeTemplate::default()).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 3, &set.node_selector()),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let running = running_pods(&pods, "app=web", 3, Duration::from_secs(60)).await?;
    for p in &running {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        assert!(
            node.as_ref().is_some_and(|n| set.names().contains(n)),
            "pod scheduled to {node:?}, outside the test's node set"
        );
        assert!(p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some());
    }

    // Deletion finishes once the grace period (3 s) has run out. The deletion timestamp has
    // whole seconds, so the wait can be up to a second shorter than the grace period.
    let victim = running[0].metadata.name.clone().context("pod name")?;
    let started = Instant::now();
    pods.delete(&victim, &DeleteParams::default()).await?;
    let terminating = pods.get(&victim).await?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    testbed::wait_for(
        &format!("pod {victim} to be gone"),
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            let victim = victim.clone();
            async move { Ok(pods.get_opt(&victim).await?.is_none()) }
        },
    )
    .await?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "pod went away after {took:?}, before its 3 s grace period"
    );
    // The ReplicaSet replaces it.
    running_pods(&pods, "app=web", 3, Duration::from_secs(60)).await?;
    Ok(())
}

#[tokio::test]
async fn node_sets_keep_parallel_tests_apart() -> Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client();
    let ns = cluster.namespace("iso").await?;
    let (a, b) = tokio::try_join!(
        cluster.node_set(2, NodeTemplate::default()),
        cluster.node_set(2, NodeTemplate::default())
    )?;
    assert!(a.names().iter().all(|n| !b.names().contains(n)));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    deployments
        .create(
            &PostParams::default(),
            &deployment("a", 4, &a.node_selector()),
        )
        .await?;
    deployments
        .create(
            &PostParams::default(),
            &deployment("b", 4, &b.node_selector()),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    for (app, set) in [("a", &a), ("b", &b)] {
        let running =
            running_pods(&pods, &format!("app={app}"), 4, Duration::from_secs(60)).await?;
        for p in running {
            let node = p.spec.and_then(|s| s.node_name).unwrap_or_default();
            assert!(
                set.names().contains(&node),
                "pod of {app} on {node}, not in its set"
            );
        }
    }
    let listed = Api::<Node>::all(client)
        .list(&ListParams::default().labels(&a.label_selector()))
        .await?;
    assert_eq!(listed.items.len(), 2);
    Ok(())
}

fn scenario(name: &str) -> Result<Scenario> {
    let path = std::path::Path::new("../../tests/scenarios").join(name);
    Ok(Scenario::from_file(&path)?)
}

#[tokio::test]
async fn seeding_plain_workloads_keeps_them_on_the_scenario_nodes() -> Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client();
    let seeded = cluster
        .seed(&scenario("control-plane.yaml")?, "seed")
        .await?;
    assert_eq!(seeded.report.nodes.len(), 3);
    let pods: Api<Pod> = Api::namespaced(client.clone(), seeded.namespace.name());
    let all = pods.list(&ListParams::default()).await?;
    // 4 + 2 Deployment replicas, 3 DaemonSet pods (one per scenario node), 3 bare pods.
    assert_eq!(all.items.iter().filter(|p| pod_running(p)).count(), 12);
    for p in &all.items {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            seeded.nodes.names().contains(&node),
            "{} runs on {node}, outside the scenario",
            p.metadata.name.clone().unwrap_or_default()
        );
    }
    let scratch = all
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("scratch-0"))
        .context("pod scratch-0")?;
    assert_eq!(
        scratch.spec.as_ref().and_then(|s| s.node_name.clone()),
        Some(format!("{}-worker-1", seeded.nodes.id))
    );
    Ok(())
}

#[tokio::test]
async fn seeding_the_small_scenario() -> Result<()> {
    let cluster = TestCluster::shared().await?;
    let mut small = scenario("small.yaml")?;
    if !cluster.has_kubevirt() {
        // Without the simulator only the plain part of the scenario can run.
        eprintln!("KubeVirt simulator not running: seeding small.yaml without its VMs");
        small.vms.clear();
    }
    let seeded = cluster.seed(&small, "small").await?;
    assert_eq!(seeded.report.nodes.len(), 3);
    assert!(seeded.report.ready_in.is_some());
    let pods: Api<Pod> = Api::namespaced(cluster.client(), seeded.namespace.name());
    let running = pods
        .list(&ListParams::default().labels("app=api"))
        .await?
        .items
        .into_iter()
        .filter(pod_running)
        .count();
    assert_eq!(running, 3);
    Ok(())
}
