//! vacate under faults of what it depends on, on the testbed: API priority and fairness
//! answering 429 to vacate's requests, Prometheus going away while it gates drains, and
//! leadership won and lost again and again (nothing may leak per term).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::coordination::v1::Lease as LeaseObject;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::prometheus::PrometheusSetup;
use support::*;
use vacate::planner::{BlockReason, Phase, VmiOutcome};

// ---------------------------------------------------------------------------------------
// API priority and fairness answering 429
// ---------------------------------------------------------------------------------------

/// What the API server answers (as plain text) when API priority and fairness, or the
/// max-in-flight filter, turns a request away.
const THROTTLED: &str = "Too many requests";

/// A ServiceAccount of the test's namespace with cluster-admin, through a ClusterRoleBinding
/// named after the namespace. Not in system:masters, so API priority and fairness applies to
/// it (the `exempt` FlowSchema matches only that group).
async fn service_account(env: &Env, name: &str) -> Result<()> {
    let ns = env.ns.name();
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), ns);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}}))?,
        )
        .await
        .with_context(|| format!("creating ServiceAccount {name}"))?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-{name}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]
    }))?;
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .context("binding the ServiceAccount to cluster-admin")?;
    Ok(())
}

/// A priority level with no concurrency share of its own, nothing to borrow and no queue:
/// the API server runs one of its requests at a time and answers 429 to any other that
/// arrives meanwhile. The FlowSchema sends every request of the test's ServiceAccounts there
/// (and no one else's).
async fn throttle(env: &Env, name: &str, accounts: &[&str]) -> Result<()> {
    let level: PriorityLevelConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 0,
            "lendablePercent": 0,
            "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}
        }}
    }))?;
    Api::<PriorityLevelConfiguration>::all(env.client.clone())
        .create(&PostParams::default(), &level)
        .await
        .context("creating the PriorityLevelConfiguration")?;
    let subjects: Vec<_> = accounts
        .iter()
        .map(|a| json!({"kind": "ServiceAccount", "serviceAccount": {"namespace": env.ns.name(), "name": a}}))
        .collect();
    let schema: FlowSchema = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": name},
            // Before every suggested FlowSchema but exempt and probes.
            "matchingPrecedence": 50,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": subjects,
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
            }]
        }
    }))?;
    Api::<FlowSchema>::all(env.client.clone())
        .create(&PostParams::default(), &schema)
        .await
        .context("creating the FlowSchema")?;
    Ok(())
}

/// Removes what [`service_account`] and [`throttle`] made outside the namespace.
async fn remove_throttle(client: &Client, name: &str, bindings: &[String]) {
    let dp = DeleteParams::default();
    let _ = Api::<FlowSchema>::all(client.clone())
        .delete(name, &dp)
        .await;
    let _ = Api::<PriorityLevelConfiguration>::all(client.clone())
        .delete(name, &dp)
        .await;
    for binding in bindings {
        let _ = Api::<ClusterRoleBinding>::all(client.clone())
            .delete(binding, &dp)
            .await;
    }
}

/// `apiserver_flowcontrol_rejected_requests_total` of one priority level, all reasons.
async fn rejected_by_level(client: &Client, level: &str) -> Result<f64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await
        .context("reading the API server's metrics")?;
    let label = format!("priority_level=\"{level}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_flowcontrol_rejected_requests_total{"))
        .filter(|l| l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_while_api_priority_and_fairness_answers_429() -> Result<()> {
    let env = Env::new("apf", 3).await?;
    let name = format!("vacate-test-{}", env.ns.name());
    let accounts = ["vacate", "neighbour"];
    let bindings: Vec<String> = accounts
        .iter()
        .map(|a| format!("{}-{a}", env.ns.name()))
        .collect();
    let result = drain_under_429s(&env, &name, &accounts).await;
    remove_throttle(&env.client, &name, &bindings).await;
    result
}

async fn drain_under_429s(env: &Env, level: &str, accounts: &[&str]) -> Result<()> {
    let node = env.node(0).to_string();
    env.busy_node(0, 4, 2, 1).await?;
    let uids: BTreeMap<String, String> = env
        .vmis()
        .await?
        .iter()
        .map(|v| (v.name_any(), v.uid().unwrap_or_default()))
        .collect();

    let dir = tempfile::tempdir()?;
    for account in accounts {
        service_account(env, account).await?;
        env.service_account_kubeconfig(env.ns.name(), account, &dir.path().join(account))
            .await?;
    }
    throttle(env, level, accounts).await?;
    let before = rejected_by_level(&env.client, level).await?;

    // A neighbour in the same priority level holds its one seat for 3 s at a time, 1 to 4 s
    // apart, as other clients of a saturated level do: vacate's requests that arrive
    // meanwhile are turned away with 429, those in between go through. The neighbour's request is a list
    // at a resourceVersion the API server has not reached: it waits 3 s for its watch cache
    // to catch up, then answers 504.
    let mut config = testbed::kubeconfig::config_from(&dir.path().join(accounts[1])).await?;
    config.default_retry = false;
    let neighbour = Client::try_from(config)?;
    let path = format!(
        "/api/v1/namespaces/{}/pods?limit=1&resourceVersionMatch=NotOlderThan&resourceVersion=999999999",
        env.ns.name()
    );
    let noise = tokio::spawn(async move {
        loop {
            if let Ok(request) = http::Request::get(&path).body(Vec::new()) {
                let _ = neighbour.request_text(request).await;
            }
            let gap = 1000 + rand::random::<u64>() % 3000;
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
    });
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _noise = Abort(noise);

    let (monitor, _monitor_task) = MigrationMonitor::start(env);
    let lease = Lease {
        namespace: env.ns.name(),
        name: "vacate",
    };
    let mut vacate = env
        .vacate_with_kubeconfig(&dir.path().join(accounts[0]), lease, FAST)
        .await?;
    env.request(&node, Some("true")).await?;
    let drained = env
        .wait_phase(&node, Phase::Drained, Duration::from_secs(240))
        .await;
    let log = vacate.log();
    let throttled = log.matches(THROTTLED).count();
    let rejected = rejected_by_level(&env.client, level).await? - before;
    eprintln!(
        "the API server turned away {rejected} requests of the level; vacate's log names {throttled} 429s"
    );
    let state = drained.map_err(|e| anyhow!("{e:#}\n\nvacate's log:\n{log}"))?;

    // The fault did happen, to vacate.
    ensure!(rejected > 0.0, "API priority and fairness rejected nothing");
    ensure!(
        throttled > 0,
        "vacate never got a 429 from API priority and fairness; its log:\n{log}"
    );
    // No 429 used up a migration attempt or failed a VMI: one migration each, all succeeded.
    ensure!(state.vmis.len() == 4, "{state:#?}");
    for (key, record) in &state.vmis {
        ensure!(
            record.outcome == VmiOutcome::Migrated && record.attempts == 1,
            "VMI {key}: {record:?}"
        );
    }
    for vmi in uids.keys() {
        let migrations = monitor.migrations_of(vmi);
        ensure!(migrations.len() == 1, "VMI {vmi}: {migrations:?}");
    }
    ensure!(monitor.max_concurrent_per_vmi() <= 1);
    // Nothing deleted: the same VMIs, Running elsewhere.
    for vmi in env.vmis().await? {
        ensure!(
            uids.get(&vmi.name_any()) == vmi.uid().as_ref(),
            "VMI {} was replaced",
            vmi.name_any()
        );
        ensure!(vmi.is_running() && vmi.node_name() != Some(node.as_str()));
    }
    ensure!(state.pods_done() == 2, "{state:#?}");
    ensure!(vacate.running(), "vacate exited:\n{log}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Prometheus down while it gates drains
// ---------------------------------------------------------------------------------------

/// The blockers' Prometheus is a start gate: while it cannot be asked, no drain starts and
/// the node says why; a drain already under way goes on (its VMs are half moved, and
/// stopping it would leave the node cordoned for as long as Prometheus is away); once
/// Prometheus answers again, the waiting drain starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_away_holds_new_drains_and_lets_running_ones_finish() -> Result<()> {
    let env = Env::new("promdown", 3).await?;
    let (first, second) = (env.node(0).to_string(), env.node(1).to_string());
    // A PodDisruptionBudget that lets no pod go holds the first drain under way until the
    // test lowers it.
    env.busy_node(0, 3, 2, 2).await?;
    let prometheus = PrometheusSetup::default().start().await?;
    let port = prometheus.port();
    let config = format!(
        "{FAST}[fleet]\nmax_draining = 2\n[blockers]\nprometheus_url = \"{}\"\nprometheus_interval = \"1s\"\n",
        prometheus.url()
    );
    let mut vacate = env.vacate(&config).await?;
    let result = async {
        // Prometheus answers, nothing fires: the first drain starts.
        env.request(&first, Some("true")).await?;
        env.wait(
            "the first drain to start",
            Duration::from_secs(60),
            || async {
                Ok(env
                    .state(&first)
                    .await?
                    .valid()
                    .is_some_and(|s| s.phase.is_draining()))
            },
        )
        .await?;
        // Prometheus goes away mid-drain. Its last answer is reused for
        // blockers.prometheus_interval (1 s here); the second request comes after that.
        drop(prometheus);
        tokio::time::sleep(Duration::from_secs(2)).await;
        env.request(&second, Some("true")).await?;
        let message = env
            .wait_pending_for(&second, BlockReason::PrometheusUnavailable)
            .await?;
        ensure!(
            message.contains("cannot ask Prometheus") && message.contains(&port.to_string()),
            "{message}"
        );
        ensure!(!is_unschedulable(&env.get_node(&second).await?));
        ensure!(
            vacate
                .metric("vacate_nodes_blocked{reason=\"PrometheusUnavailable\"}")
                .await?
                == 1.0
        );
        // The drain under way is not held: the gate is asked only before a drain starts.
        ensure!(
            env.state(&first)
                .await?
                .valid()
                .is_some_and(|s| s.phase.is_draining())
        );
        env.set_pdb_min_available("web", 1).await?;
        let state = env
            .wait_phase(&first, Phase::Drained, Duration::from_secs(120))
            .await?;
        ensure!(
            state
                .vmis
                .values()
                .all(|r| r.outcome == VmiOutcome::Migrated)
        );
        // Still held, a while later.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = env.state(&second).await?;
        let s = s.valid().context("a state")?;
        ensure!(s.phase == Phase::Pending, "{s:#?}");
        ensure!(vacate.running(), "vacate exited");

        // Prometheus is back where it was: the waiting drain starts.
        let prometheus = PrometheusSetup::default().port(port).start().await?;
        env.wait(
            "the second drain to start",
            Duration::from_secs(60),
            || async {
                Ok(env
                    .state(&second)
                    .await?
                    .valid()
                    .is_some_and(|s| s.phase != Phase::Pending))
            },
        )
        .await?;
        env.wait(
            "the blocker's gauge to go back to 0",
            Duration::from_secs(10),
            || async {
                Ok(vacate
                    .metric("vacate_nodes_blocked{reason=\"PrometheusUnavailable\"}")
                    .await?
                    == 0.0)
            },
        )
        .await?;
        drop(prometheus);
        Ok(())
    }
    .await;
    result.map_err(|e| anyhow!("{e:#}\n\nvacate's log:\n{}", vacate.log()))
}

// ---------------------------------------------------------------------------------------
// Leadership won and lost again and again
// ---------------------------------------------------------------------------------------

/// The least of a few readings of a gauge a second apart: what a busy moment (a scrape's own
/// connection, a request under way) adds passes.
async fn settled(vacate: &Vacate, series: &str) -> Result<f64> {
    let mut least = f64::MAX;
    for _ in 0..5 {
        least = least.min(vacate.metric(series).await?);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    Ok(least)
}

async fn wait_leader(vacate: &Vacate, leader: bool) -> Result<()> {
    let what = format!("vacate_leader to become {}", u8::from(leader));
    testbed::wait_for(&what, Duration::from_secs(60), || async {
        Ok(vacate.leads().await? == leader)
    })
    .await?;
    Ok(())
}

/// A replica that loses its Lease to another holder and wins it back, five times over, ends
/// each term with what it had after its first: every term starts the watches (and the pod
/// watch of a node in maintenance) anew, and a term's tasks and connections must end with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_won_and_lost_again_leaves_no_tasks_or_files_behind() -> Result<()> {
    let env = Env::new("flap", 2).await?;
    let node = env.node(0).to_string();
    env.migratable_vms_on(0, 1, "1Gi").await?;
    let mut vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    env.wait_phase(&node, Phase::Drained, Duration::from_secs(120))
        .await?;
    wait_leader(&vacate, true).await?;
    let tasks = settled(&vacate, "vacate_runtime_tasks").await?;
    let fds = settled(&vacate, "process_open_fds").await?;
    eprintln!("after the first term began: {tasks} tasks, {fds} open files");
    ensure!(tasks > 5.0, "vacate_runtime_tasks is not exported: {tasks}");

    let leases: Api<LeaseObject> = Api::namespaced(env.client.clone(), env.ns.name());
    let mut readings = Vec::new();
    for term in 2..=6 {
        // Another replica takes the Lease, as after this one missed its renewals.
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        leases
            .patch(
                "vacate",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {
                    "holderIdentity": "another-replica",
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseDurationSeconds": 4
                }})),
            )
            .await?;
        wait_leader(&vacate, false).await?;
        // The other replica stops renewing; once its claim runs out this one wins it back.
        wait_leader(&vacate, true).await?;
        let t = settled(&vacate, "vacate_runtime_tasks").await?;
        let f = settled(&vacate, "process_open_fds").await?;
        eprintln!("term {term}: {t} tasks, {f} open files");
        readings.push((term, t, f));
    }
    let log = vacate.log();
    ensure!(
        log.matches("became the leader").count() >= 6,
        "not every term began:\n{log}"
    );
    // A few tasks and files come and go (a connection the client pools, a request under
    // way); a term's watches left behind would add about ten of each per term.
    const SLACK: f64 = 4.0;
    for (term, t, f) in &readings {
        ensure!(
            *t <= tasks + SLACK && *f <= fds + SLACK,
            "after term {term}: {t} tasks and {f} open files, against {tasks} and {fds} after the first: {readings:?}"
        );
    }
    ensure!(vacate.running());
    // The node in maintenance is still looked after.
    ensure!(
        env.state(&node)
            .await?
            .valid()
            .is_some_and(|s| s.phase == Phase::Drained)
    );
    Ok(())
}
