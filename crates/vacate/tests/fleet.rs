//! Fleet orchestration on the testbed: maintenance windows, a scheduled rollout across a
//! leader's death, upgrade requests, the capacity check and the drain blockers, each with the
//! real vacate binary against the real API server and the KubeVirt simulator.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::prometheus::{FlagExporter, PrometheusSetup};
use support::*;
use testbed::nodes::NodeTemplate;
use vacate::planner::{BlockReason, Phase, StateAnnotation};

const UPGRADE_LABEL: &str = "vacate.io/upgrade";

/// A 6-field cron expression that matches once a day, at `at` (UTC).
fn cron_at(at: DateTime<Utc>) -> String {
    at.format("%S %M %H * * *").to_string()
}

/// Records, from a watch on the set's nodes, the most nodes cordoned by vacate at once and
/// every node that reached Drained.
#[derive(Default)]
struct RolloutMonitor {
    cordoned_by_vacate: BTreeSet<String>,
    most_at_once: usize,
    drained: BTreeSet<String>,
}

fn watch_rollout(env: &Env) -> (Arc<Mutex<RolloutMonitor>>, tokio::task::JoinHandle<()>) {
    let monitor = Arc::new(Mutex::new(RolloutMonitor::default()));
    let nodes: Api<Node> = Api::all(env.client.clone());
    let config = watcher::Config::default().labels(&env.selector());
    let m = monitor.clone();
    let task = tokio::spawn(async move {
        let stream = watcher(nodes, config).default_backoff().touched_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(node)) = stream.next().await {
            let state = StateAnnotation::parse(
                node.annotations().get(STATE_ANNOTATION).map(String::as_str),
            );
            let ours =
                is_unschedulable(&node) && state.valid().is_some_and(|s| s.cordoned_by_vacate);
            let mut m = m.lock().unwrap();
            if ours {
                m.cordoned_by_vacate.insert(node.name_any());
            } else {
                m.cordoned_by_vacate.remove(&node.name_any());
            }
            m.most_at_once = m.most_at_once.max(m.cordoned_by_vacate.len());
            if state.valid().is_some_and(|s| s.phase == Phase::Drained) {
                m.drained.insert(node.name_any());
            }
        }
    });
    (monitor, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_holds_a_request_until_it_opens_and_aborts_the_drain_when_it_closes() -> Result<()>
{
    let env = Env::new("vacate-window", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        for i in 0..2 {
            let vm = Vm::migratable(format!("stuck-{i}"))
                .annotate("simulator.vacate.io/migration-stall", "true");
            env.create_vm(&vm).await?;
        }
        env.wait_vmis_running_on(&node, 2).await
    })
    .await?;
    // The window opens in 20 s and stays open for 20 s; a drain cut off by its close is aborted.
    let opens = Utc::now() + chrono::Duration::seconds(20);
    let config = format!(
        "{FAST}[[windows]]\nname = \"soon\"\ncron = \"{}\"\nduration = \"20s\"\non_close = \"abort\"\n",
        cron_at(opens)
    );
    let vacate = env.vacate(&config).await?;
    window_metric_is(&env, &vacate, 0.0).await?;
    env.request(&node, Some("true")).await?;
    let message = env
        .wait_pending_for(&node, BlockReason::OutsideWindow)
        .await?;
    ensure!(message.contains("window soon opens at"), "{message}");
    ensure!(!is_unschedulable(&env.get_node(&node).await?));

    let status = vacate_status(&vacate)?;
    ensure!(
        status.contains("soon") && status.contains("closed") && status.contains("opens"),
        "vacate status does not show the closed window:\n{status}"
    );

    // Once the window opens, the drain starts...
    let state = env
        .wait_phase(&node, Phase::Migrating, Duration::from_secs(60))
        .await?;
    ensure!(
        state.started_at >= opens - chrono::Duration::seconds(1),
        "the drain started at {} before the window opened at {opens}",
        state.started_at
    );
    window_metric_is(&env, &vacate, 1.0).await?;
    // ...the migrations stall, and when the window closes the drain is given up cleanly.
    let aborted = env
        .wait_pending_for(&node, BlockReason::OutsideWindow)
        .await;
    aborted.map_err(|e| anyhow::anyhow!("{e:#}\nvacate log:\n{}", vacate.log()))?;
    // The Pending state is written first, the uncordon right after it.
    env.wait(
        "the node to be uncordoned after the abort",
        Duration::from_secs(15),
        || async { Ok(!is_unschedulable(&env.get_node(&node).await?)) },
    )
    .await?;
    env.wait(
        "vacate's migrations to be cancelled",
        Duration::from_secs(30),
        || async { Ok(env.vacate_migrations().await?.is_empty()) },
    )
    .await?;
    let running_here = env
        .vmis()
        .await?
        .iter()
        .filter(|v| v.node_name() == Some(node.as_str()))
        .count();
    ensure!(running_here == 2, "the VMIs should still run on {node}");
    vacate
        .counter_reaching("vacate_drains_total{result=\"aborted\"}", 1.0)
        .await?;
    Ok(())
}

async fn window_metric_is(env: &Env, vacate: &Vacate, value: f64) -> Result<()> {
    env.wait(
        &format!("vacate_window_open to be {value}"),
        Duration::from_secs(20),
        || async {
            Ok(vacate
                .metric("vacate_window_open{window=\"soon\"}")
                .await
                .ok()
                == Some(value))
        },
    )
    .await
}

fn vacate_status(vacate: &Vacate) -> Result<String> {
    let out = std::process::Command::new(vacate_bin())
        .args(["status", "--config"])
        .arg(&vacate.config_path)
        .env("KUBECONFIG", &vacate.kubeconfig)
        .output()?;
    ensure!(
        out.status.success(),
        "vacate status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rollout_drains_five_nodes_two_at_a_time_across_a_leader_death() -> Result<()> {
    let env = Env::new("vacate-rollout", 5).await?;
    for i in 0..5 {
        let node = env.node(i).to_string();
        env.place_on(i, || async {
            for j in 0..2 {
                env.create_vm(&Vm::migratable(format!("vm-{i}-{j}")))
                    .await?;
            }
            env.wait_vmis_running_on(&node, 2).await
        })
        .await?;
    }
    let (migrations, migration_task) = MigrationMonitor::start(&env);
    let (rollout, rollout_task) = watch_rollout(&env);
    let fires = Utc::now() + chrono::Duration::seconds(15);
    let config = format!(
        "{FAST}[fleet]\nmax_draining = 5\n[[schedules]]\nname = \"rollout\"\ncron = \"{}\"\nconcurrency = 2\nhold = \"2s\"\n",
        cron_at(fires)
    );
    let mut first = env.vacate(&config).await?;
    env.wait(
        "the first replica to lead",
        Duration::from_secs(30),
        || async { Ok(first.metric("vacate_leader").await? == 1.0) },
    )
    .await?;
    let second = env.vacate(&config).await?;

    // The run labels every node of the set at the cron time.
    let nodes: Api<Node> = Api::all(env.client.clone());
    env.wait(
        "the schedule to request maintenance",
        Duration::from_secs(60),
        || async {
            let labelled = nodes
                .list(&ListParams::default().labels(&env.selector()))
                .await?
                .items
                .iter()
                .filter(|n| has_label(n, REQUEST_LABEL))
                .count();
            Ok(labelled == 5)
        },
    )
    .await?;
    let value = env.get_node(env.node(0)).await?.labels()[REQUEST_LABEL].clone();
    ensure!(value.starts_with("rollout."), "request value {value}");

    // The leader dies while the rollout is under way.
    env.wait(
        "the rollout to be migrating",
        Duration::from_secs(60),
        || async { Ok(!migrations.per_vmi().is_empty()) },
    )
    .await?;
    first.kill();
    // Released: request gone, state gone, uncordoned — every node of the rollout. (A node
    // not picked up yet has no state either, so the state alone says nothing.)
    let released = env
        .wait(
            "every node of the rollout to be released",
            Duration::from_secs(300),
            || async {
                let nodes = nodes
                    .list(&ListParams::default().labels(&env.selector()))
                    .await?
                    .items;
                Ok(nodes.len() == 5
                    && nodes.iter().all(|n| {
                        !has_label(n, REQUEST_LABEL)
                            && !is_unschedulable(n)
                            && !n.annotations().contains_key(STATE_ANNOTATION)
                    }))
            },
        )
        .await;
    released.map_err(|e| anyhow::anyhow!("{e:#}\nsecond replica's log:\n{}", second.log()))?;
    let (most_at_once, drained) = {
        let seen = rollout.lock().unwrap();
        (seen.most_at_once, seen.drained.clone())
    };
    ensure!(
        most_at_once == 2,
        "at most 2 nodes may be cordoned by vacate at once, and 2 should be; saw {most_at_once}"
    );
    ensure!(drained.len() == 5, "drained: {drained:?}");
    rollout_task.abort();
    migration_task.abort();
    // No VMI was migrated twice by the same node's drain, whichever replica led.
    for (vmi, names) in migrations.per_vmi() {
        let drains: BTreeSet<String> = names
            .iter()
            .map(|n| {
                n.rsplit_once('-')
                    .map_or(n.clone(), |(head, _)| head.to_string())
            })
            .collect();
        ensure!(
            drains.len() == names.len(),
            "VMI {vmi} got more than one migration in one drain: {names:?}"
        );
    }
    // The run is recorded, so neither replica starts it again.
    let record: Api<ConfigMap> = Api::namespaced(env.client.clone(), env.ns.name());
    let cm = record.get("vacate-schedules").await?;
    ensure!(
        cm.data.unwrap_or_default().contains_key("rollout"),
        "the run is not recorded"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_ends_when_the_kubelet_reports_the_version_or_fails_in_time()
-> Result<()> {
    let env = Env::new("vacate-upgrade", 3).await?;
    let (upgraded, stuck) = (env.node(0).to_string(), env.node(1).to_string());
    env.migratable_vms_on(0, 2, "1Gi").await?;
    let vacate = env
        .vacate(&format!(
            "{FAST}[fleet]\nmax_draining = 2\n[upgrade]\ntimeout = \"20s\"\n"
        ))
        .await?;
    let label = |node: &str, version: &str| {
        let nodes: Api<Node> = Api::all(env.client.clone());
        let patch = json!({"metadata": {"labels": {UPGRADE_LABEL: version}}});
        let node = node.to_string();
        async move {
            nodes
                .patch(
                    &node,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
        }
    };
    label(&upgraded, "v1.37.9").await?;
    env.wait_phase(&upgraded, Phase::Drained, Duration::from_secs(120))
        .await?;
    ensure!(has_label(&env.get_node(&upgraded).await?, DRAINED_LABEL));
    // The upgrader does its work; the kubelet comes back with the new version.
    testbed::nodes::set_kubelet_version(&env.client, &upgraded, "v1.37.9").await?;
    let n = env.wait_idle(&upgraded, Duration::from_secs(60)).await?;
    ensure!(!is_unschedulable(&n), "uncordoned after the upgrade");
    ensure!(
        !has_label(&n, UPGRADE_LABEL),
        "the upgrade request is cleared"
    );
    ensure!(!has_label(&n, DRAINED_LABEL));

    // An upgrade that never comes ends in Failed with the reason, the node kept cordoned.
    label(&stuck, "v1.37.8").await?;
    let failed = env
        .wait_phase(&stuck, Phase::Failed, Duration::from_secs(120))
        .await?;
    let why = failed.failure.unwrap_or_default();
    ensure!(
        why.contains("v1.37.8") && why.contains("upgrade.timeout"),
        "{why}"
    );
    ensure!(is_unschedulable(&env.get_node(&stuck).await?));
    vacate
        .counter_reaching("vacate_drains_total{result=\"failed\"}", 1.0)
        .await?;

    // An upgrade to the version already running needs no drain.
    let third = env.node(2).to_string();
    let running = env.get_node(&third).await?;
    let version = running
        .status
        .and_then(|s| s.node_info)
        .map(|i| i.kubelet_version)
        .unwrap_or_default();
    label(&third, &version).await?;
    env.wait(
        "the needless upgrade request to be cleared",
        Duration::from_secs(30),
        || async { Ok(!has_label(&env.get_node(&third).await?, UPGRADE_LABEL)) },
    )
    .await?;
    ensure!(!is_unschedulable(&env.get_node(&third).await?));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_check_holds_a_drain_the_rest_of_the_cluster_cannot_absorb() -> Result<()> {
    // Two 16 GiB nodes; the test's VMs may only run on them (their node selector).
    let small = NodeTemplate {
        memory: "16Gi".into(),
        ..NodeTemplate::default()
    };
    let env = Env::with_template("vacate-capacity", 2, small).await?;
    let (node, other) = (env.node(0).to_string(), env.node(1).to_string());
    let fast = |vm: Vm| vm.annotate("simulator.vacate.io/effective-bandwidth", "16Gi");
    env.place_on(0, || async {
        let mut big = fast(Vm::migratable("big"));
        big.memory = "12Gi";
        env.create_vm(&big).await?;
        env.wait_vmis_running_on(&node, 1).await
    })
    .await?;
    env.place_on(1, || async {
        let mut filler = fast(Vm::migratable("filler"));
        filler.memory = "8Gi";
        env.create_vm(&filler).await?;
        env.wait_vmis_running_on(&other, 1).await
    })
    .await?;
    let vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    let message = env
        .wait_pending_for(&node, BlockReason::InsufficientCapacity)
        .await?;
    ensure!(message.contains("virt-launcher-big"), "{message}");
    ensure!(!is_unschedulable(&env.get_node(&node).await?));
    ensure!(
        vacate
            .metric("vacate_nodes_blocked{reason=\"InsufficientCapacity\"}")
            .await?
            == 1.0
    );
    // Room is made on the other node: the drain goes ahead.
    let vms: Api<kubevirt_api::VirtualMachine> = Api::namespaced(env.client.clone(), env.ns.name());
    vms.delete("filler", &DeleteParams::default()).await?;
    env.wait_phase(&node, Phase::Drained, Duration::from_secs(120))
        .await?;
    let vmis = env.vmis().await?;
    ensure!(
        vmis.iter()
            .any(|v| v.name_any() == "big" && v.node_name() == Some(other.as_str())),
        "VM big should now run on {other}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blockers_hold_new_drains_while_pods_match_or_prometheus_alerts_fire() -> Result<()> {
    let env = Env::new("vacate-blockers", 2).await?;
    let node = env.node(0).to_string();
    env.migratable_vms_on(0, 1, "1Gi").await?;
    // A backup job's pod on the node, matching blockers.pods.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), env.ns.name());
    let backup: Pod = serde_json::from_value(json!({
        "metadata": {"name": "backup", "labels": {"app": "backup"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
            "tolerations": [{"operator": "Exists"}],
        }
    }))?;
    pods.create(&PostParams::default(), &backup).await?;
    // An alert that fires while the test says so.
    let flag = FlagExporter::start().await?;
    flag.set(true);
    let prometheus = PrometheusSetup::default()
        .scrape("flag", flag.port)
        .alert("VacateTestBlock", &format!("{} == 1", FlagExporter::METRIC))
        // Fires forever, as in kube-prometheus-stack: the default query must not wait for it.
        .alert("Watchdog", "vector(1)")
        .start()
        .await?;
    env.wait("the alert to fire", Duration::from_secs(60), || async {
        Ok(!prometheus
            .query("ALERTS{alertname=\"VacateTestBlock\",alertstate=\"firing\"}")
            .await?
            .is_empty())
    })
    .await?;
    let config = format!(
        "{FAST}[blockers]\npods = \"app=backup\"\nprometheus_url = \"{}\"\nprometheus_interval = \"1s\"\n",
        prometheus.url()
    );
    let vacate = env.vacate(&config).await?;
    env.request(&node, Some("true")).await?;
    let message = env
        .wait_pending_for(&node, BlockReason::BlockingPods)
        .await?;
    ensure!(message.contains("backup"), "{message}");

    pods.delete("backup", &DeleteParams::default().grace_period(0))
        .await?;
    let message = env
        .wait_pending_for(&node, BlockReason::PrometheusAlert)
        .await?;
    ensure!(message.contains("VacateTestBlock"), "{message}");
    ensure!(!is_unschedulable(&env.get_node(&node).await?));

    flag.set(false);
    let drained = env
        .wait_phase(&node, Phase::Drained, Duration::from_secs(120))
        .await;
    drained.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nvacate log:\n{}\nprometheus log:\n{}",
            vacate.log(),
            prometheus.log()
        )
    })?;
    Ok(())
}

/// A rollout of two nodes, one at a time, with two more nodes outside it: vacate sends every
/// migration (`spec.addedNodeSelector`) to a node that does not wait for its own drain: the
/// first node's VMs to the nodes outside the rollout (never to the second node, schedulable
/// while it waits); the last node's wherever KubeVirt places them, as no node waits any more.
/// Each VM moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollouts_vms_move_once_to_nodes_outside_it() -> Result<()> {
    let env = Env::new("vacate-steer", 4).await?;
    let (first, second) = (env.node(0).to_string(), env.node(1).to_string());
    let outside = [env.node(2).to_string(), env.node(3).to_string()];
    for (i, node) in [&first, &second].into_iter().enumerate() {
        env.place_on(i, || async {
            for j in 0..2 {
                let mut vm = Vm::migratable(format!("vm-{i}-{j}"));
                // The rollout takes the lightest node first (then by name, which says
                // nothing of the order of the set's nodes): the first node is lighter.
                vm.memory = if i == 0 { "1Gi" } else { "2Gi" };
                env.create_vm(&vm).await?;
            }
            env.wait_vmis_running_on(node, 2).await
        })
        .await?;
    }
    let _vacate = env
        .vacate(&format!("{FAST}[fleet]\nmax_draining = 1\n"))
        .await?;
    env.request(&first, Some("true")).await?;
    env.request(&second, Some("true")).await?;
    env.wait_phase(&first, Phase::Drained, Duration::from_secs(120))
        .await?;
    ensure!(
        !is_unschedulable(&env.get_node(&second).await?),
        "the second node waits for its place, schedulable"
    );
    let targets = |of: &'static str| {
        let env = &env;
        async move {
            let migrations: Api<kubevirt_api::VirtualMachineInstanceMigration> =
                Api::namespaced(env.client.clone(), env.ns.name());
            let all = migrations.list(&ListParams::default()).await?.items;
            anyhow::Ok(
                all.iter()
                    .filter(|m| m.spec.vmi_name.starts_with(of))
                    .map(|m| {
                        m.spec
                            .added_node_selector
                            .get("kubernetes.io/hostname")
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>(),
            )
        }
    };
    let firsts = targets("vm-0-").await?;
    ensure!(
        firsts.len() == 2 && firsts.iter().all(|t| outside.contains(t)),
        "the first node's migrations go outside the rollout: {firsts:?}"
    );
    // The first node is done: the second drains.
    env.request(&first, None).await?;
    env.wait_phase(&second, Phase::Drained, Duration::from_secs(120))
        .await?;
    // No other node waits now: every node the scheduler may choose is final, and KubeVirt
    // places the last node's migrations.
    let seconds = targets("vm-1-").await?;
    ensure!(
        seconds == ["", ""],
        "the last node's migrations are left to KubeVirt: {seconds:?}"
    );
    // One migration per VM, and every VM on a node that is not waiting for a drain.
    for vmi in env.vmis().await? {
        ensure!(
            vmi.node_name().is_some_and(|n| n != second),
            "VMI {} runs on {:?}",
            vmi.name_any(),
            vmi.node_name()
        );
    }
    Ok(())
}
