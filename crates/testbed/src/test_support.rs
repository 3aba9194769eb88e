//! The test-support API: a cluster per test process (or a running testbed), isolated
//! namespaces and node sets, scenario seeding, and [`TestEnv`], what the integration tests
//! of vacate and of the KubeVirt simulator start from (each crate's tests add their own
//! helpers on top). Tests wait with [`crate::wait_for`] or [`crate::wait_until`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use testbed::{NodeTemplate, TestCluster};
//! let cluster = TestCluster::shared().await?;
//! let ns = cluster.namespace("drain").await?;
//! let nodes = cluster.node_set(3, NodeTemplate::default()).await?;
//! // Workloads of this test use `nodes.node_selector()` so they stay on its nodes.
//! # Ok(()) }
//! ```
//!
//! Lifetime rule: a cluster started by this API runs inside the test process (see
//! [`crate::process`]): its components die with the process, however it ends, and its
//! temporary state folder is removed at exit (or, after a crash, by the next start).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::control_plane::{AuditOptions, ControlPlane, Options};
use crate::kubeconfig;
use crate::nodes::{self, NodeTemplate, SET_LABEL};
use crate::paths;
use crate::process;
use crate::scenario::Scenario;
use crate::seed::{self, SeedOptions, SeedReport, kubevirt_resource};
use crate::wait;

/// Env: `auto` (default: start the simulator when its binary is found), `1` (required)
/// or `0` (never), for clusters the test-support API starts itself.
pub const ENV_KUBEVIRT: &str = "VACATE_TESTBED_KUBEVIRT";

/// Env: the KubeVirt release the simulator follows for this test process (`v1.9` or `v1.7`,
/// docs/testbed.md "Modes"). Set, the shared cluster is switched to it (the annotation
/// `simulator.vacate.io/kubevirt-release` on the KubeVirt CR) before any test uses it, and
/// the tests wait until the simulator reports that release. Unset, the cluster is left as is.
pub const ENV_KUBEVIRT_RELEASE: &str = "VACATE_TESTBED_KUBEVIRT_RELEASE";

/// The simulator's annotation on the KubeVirt CR that chooses the release it follows.
pub const KUBEVIRT_RELEASE_ANNOTATION: &str = "simulator.vacate.io/kubevirt-release";

static SHARED: OnceCell<std::result::Result<Arc<TestCluster>, String>> = OnceCell::const_new();

/// A cluster for tests.
pub struct TestCluster {
    kubeconfig: PathBuf,
    config: kube::Config,
    kubevirt: bool,
    owned: Option<ControlPlane>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("kubeconfig", &self.kubeconfig)
            .field("kubevirt", &self.kubevirt)
            .field("owned", &self.owned.is_some())
            .finish()
    }
}

impl TestCluster {
    /// The cluster shared by all tests of this process: the testbed named by
    /// `$VACATE_TESTBED_KUBECONFIG` (which must answer), else the workspace's
    /// `.testbed/kubeconfig` if that testbed answers, else one started now in a temporary
    /// folder (once per process; concurrent callers wait for the same start).
    pub async fn shared() -> Result<Arc<TestCluster>> {
        let r = SHARED
            .get_or_init(|| async {
                async {
                    let cluster = TestCluster::find_or_start().await?;
                    if let Ok(release) = std::env::var(ENV_KUBEVIRT_RELEASE) {
                        cluster.follow_kubevirt_release(&release).await?;
                    }
                    Ok::<_, anyhow::Error>(Arc::new(cluster))
                }
                .await
                .map_err(|e| format!("{e:#}"))
            })
            .await;
        match r {
            Ok(c) => Ok(c.clone()),
            Err(e) => bail!("the shared test cluster is unavailable: {e}"),
        }
    }

    async fn find_or_start() -> Result<TestCluster> {
        if let Some(path) = std::env::var_os(paths::ENV_KUBECONFIG) {
            let path = PathBuf::from(path);
            return TestCluster::connect(&path).await.with_context(|| {
                format!(
                    "${} names {}, which does not answer; start it with `testbed up` or \
                     unset the variable",
                    paths::ENV_KUBECONFIG,
                    path.display()
                )
            });
        }
        let default = paths::default_state_dir().join("kubeconfig");
        if default.exists() {
            match TestCluster::connect(&default).await {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(
                    "not reusing the testbed of {}: {e:#}; starting one for this test process",
                    default.display()
                ),
            }
        }
        let kubevirt = match std::env::var(ENV_KUBEVIRT).as_deref() {
            Ok("0") | Ok("false") => false,
            Ok("1") | Ok("true") => true,
            _ => paths::kubevirt_sim().is_ok(),
        };
        TestCluster::start(kubevirt).await
    }

    /// Starts a new cluster owned by this value, in a temporary state folder. It stops
    /// when the value is dropped or the process ends.
    pub async fn start(kubevirt: bool) -> Result<TestCluster> {
        TestCluster::start_with(kubevirt, None).await
    }

    /// [`TestCluster::start`], with the API server's audit log when `audit` is given
    /// ([`TestCluster::audit_log`]). A cluster of its own is what a test needs to pause,
    /// restart or reconfigure components ([`TestCluster::control_plane`]) without
    /// disturbing the tests that share the testbed.
    pub async fn start_with(kubevirt: bool, audit: Option<AuditOptions>) -> Result<TestCluster> {
        sweep_stale_state_dirs();
        let dir = std::env::temp_dir().join(format!(
            "vacate-testbed-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        process::remove_at_exit(&dir);
        let mut opts = Options::new(&dir);
        opts.kubevirt = kubevirt;
        opts.audit = audit;
        let cp = ControlPlane::start(&opts).await?;
        tracing::info!(
            "started a test cluster in {:.1?} ({})",
            cp.started_in,
            dir.display()
        );
        let config = kubeconfig::config_from(&cp.kubeconfig).await?;
        Ok(TestCluster {
            kubeconfig: cp.kubeconfig.clone(),
            config,
            kubevirt: cp.kubevirt,
            owned: Some(cp),
        })
    }

    /// The control plane when this process started the cluster ([`TestCluster::start`]):
    /// its components can be paused, resumed and restarted. `None` for a testbed this
    /// process only connected to, which other tests may share.
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        self.owned.as_ref()
    }

    /// The control plane of a cluster this process started, or an error saying why not.
    pub fn owned_control_plane(&self) -> Result<&ControlPlane> {
        self.owned.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "the cluster at {} was not started by this process; only a cluster of the \
                 test's own (TestCluster::start) can have its components paused or restarted",
                self.kubeconfig.display()
            )
        })
    }

    /// The API server's audit log, when this process started the cluster with one.
    pub fn audit_log(&self) -> Option<PathBuf> {
        let cp = self.owned.as_ref()?;
        let path = cp.layout.audit_log();
        path.exists().then_some(path)
    }

    /// The log of a component (`kubevirt-sim`, `kube-scheduler`, ...) of a cluster this
    /// process started.
    pub fn component_log(&self, component: &str) -> Option<PathBuf> {
        let path = self.owned.as_ref()?.layout.log(component);
        path.exists().then_some(path)
    }

    /// Uses a running cluster; fails unless its /readyz answers within 5 seconds.
    pub async fn connect(kubeconfig_path: &Path) -> Result<TestCluster> {
        let config = kubeconfig::config_from(kubeconfig_path).await?;
        let client = kube::Client::try_from(config.clone())?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let answer = tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
            .await
            .context("the API server did not answer /readyz within 5s")??;
        if answer.trim() != "ok" {
            bail!("the API server is not ready: {answer}");
        }
        let vmis: Api<DynamicObject> =
            Api::all_with(client, &kubevirt_resource("VirtualMachineInstance"));
        let kubevirt = vmis.list(&ListParams::default().limit(1)).await.is_ok();
        Ok(TestCluster {
            kubeconfig: kubeconfig_path.to_path_buf(),
            config,
            kubevirt,
            owned: None,
        })
    }

    /// Switches the KubeVirt simulator to `release` (`v1.9` or `v1.7`) and waits until the
    /// KubeVirt CR reports it in `status.observedKubeVirtVersion`.
    pub async fn follow_kubevirt_release(&self, release: &str) -> Result<()> {
        let version = match release {
            "v1.9" => "v1.9.0",
            "v1.7" => "v1.7.4",
            other => bail!("${ENV_KUBEVIRT_RELEASE}={other:?}: the simulator follows v1.9 or v1.7"),
        };
        self.require_kubevirt()?;
        let kubevirts: Api<DynamicObject> =
            Api::namespaced_with(self.client(), "kubevirt", &kubevirt_resource("KubeVirt"));
        let patch = json!({"metadata": {"annotations": {KUBEVIRT_RELEASE_ANNOTATION: release}}});
        kubevirts
            .patch("kubevirt", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("annotating the KubeVirt CR with the release to follow")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let kv = kubevirts.get("kubevirt").await?;
            let seen = kv.data["status"]["observedKubeVirtVersion"].as_str();
            if seen == Some(version) {
                tracing::info!("the KubeVirt simulator follows {version}");
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the KubeVirt CR reports {seen:?}, not {version}, 30s after the switch");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new client. Each call builds its own, so that it belongs to the calling test's
    /// tokio runtime (a client must not outlive the runtime it was made in).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone())
            .expect("a client from a kubeconfig that already produced one")
    }

    /// A new client that does not retry 429 answers, as kube's client does by default: for
    /// tests that want to see them, as kubectl and vacate do.
    pub fn client_without_retries(&self) -> kube::Client {
        let mut config = self.config.clone();
        config.default_retry = false;
        kube::Client::try_from(config)
            .expect("a client from a kubeconfig that already produced one")
    }

    /// The admin kubeconfig (for kubectl, vacate, ...).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Whether kubevirt.io/v1 is served (the KubeVirt simulator runs).
    pub fn has_kubevirt(&self) -> bool {
        self.kubevirt
    }

    /// Fails with instructions when the cluster runs without the KubeVirt simulator.
    pub fn require_kubevirt(&self) -> Result<()> {
        if self.kubevirt {
            return Ok(());
        }
        bail!(
            "this test needs the KubeVirt simulator, but the cluster at {} runs without it: \
             `cargo build -p kubevirt-sim` (or set ${} to its path) and rerun, or start the \
             reused testbed without --no-kubevirt",
            self.kubeconfig.display(),
            paths::ENV_KUBEVIRT_SIM
        )
    }

    /// `kubectl --kubeconfig <admin>` from the testbed's build.
    pub fn kubectl(&self) -> Result<Command> {
        let bin = paths::upstream_bin_dir()?;
        let mut cmd = Command::new(bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        Ok(cmd)
    }

    /// A new namespace named `<prefix>-<random>`, deleted (best effort) on drop.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let name = format!("{prefix}-{}", unique_id());
        let api: Api<Namespace> = Api::all(self.client());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"testbed.vacate.io/test": "true"}}
        }))?;
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            config: self.config.clone(),
            keep: false,
        })
    }

    /// `n` new Ready kwok nodes labelled `testbed.vacate.io/set=<id>`, deleted on drop.
    pub async fn node_set(&self, n: usize, template: NodeTemplate) -> Result<NodeSet> {
        let id = format!("set-{}", unique_id());
        let template = template.label(SET_LABEL, id.clone());
        let objs = (0..n)
            .map(|i| template.node(&format!("{id}-{i}"), &id))
            .collect::<Result<Vec<_>>>()?;
        let client = self.client();
        let names = nodes::create_nodes(&client, objs, 32).await?;
        let set = NodeSet {
            id,
            names,
            config: self.config.clone(),
        };
        set.wait_ready(&client, Duration::from_secs(60)).await?;
        Ok(set)
    }

    /// Loads a scenario into a fresh namespace and node set (every namespaced object goes
    /// into that namespace; node names get the set id as prefix) and waits until its nodes
    /// are Ready, workloads available and VMIs Running.
    pub async fn seed(&self, scenario: &Scenario, prefix: &str) -> Result<Seeded> {
        if scenario.vm_count() > 0 {
            self.require_kubevirt()?;
        }
        let namespace = self.namespace(prefix).await?;
        let id = namespace.name.clone();
        let client = self.client();
        let opts = SeedOptions {
            prefix: Some(id.clone()),
            namespace: Some(id.clone()),
            wait: true,
            wait_timeout: Some(Duration::from_secs(300)),
        };
        let report = seed::seed(&client, scenario, &opts).await?;
        Ok(Seeded {
            nodes: NodeSet {
                id,
                names: report.nodes.clone(),
                config: self.config.clone(),
            },
            namespace,
            report,
        })
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(cp) = &self.owned {
            cp.stop();
            let _ = std::fs::remove_dir_all(&cp.layout.root);
        }
    }
}

/// What an integration test works in: the shared cluster, which runs the KubeVirt simulator,
/// a namespace and a node set of the test's own, and a client.
pub struct TestEnv {
    pub cluster: Arc<TestCluster>,
    pub client: kube::Client,
    pub ns: TestNamespace,
    pub nodes: NodeSet,
}

impl TestEnv {
    /// A namespace `<prefix>-<id>` and `nodes` Ready nodes made from `template`.
    pub async fn new(prefix: &str, nodes: usize, template: NodeTemplate) -> Result<TestEnv> {
        TestEnv::on(TestCluster::shared().await?, prefix, nodes, template).await
    }

    /// [`TestEnv::new`] on `cluster` instead of the shared one.
    pub async fn on(
        cluster: Arc<TestCluster>,
        prefix: &str,
        nodes: usize,
        template: NodeTemplate,
    ) -> Result<TestEnv> {
        cluster.require_kubevirt()?;
        let ns = cluster.namespace(prefix).await?;
        let nodes = cluster.node_set(nodes, template).await?;
        Ok(TestEnv {
            client: cluster.client(),
            cluster,
            ns,
            nodes,
        })
    }

    /// The same environment with a client that does not retry 429 answers (see
    /// [`TestCluster::client_without_retries`]).
    pub fn without_retries(mut self) -> TestEnv {
        self.client = self.cluster.client_without_retries();
        self
    }

    /// The name of node `i` of the set.
    pub fn node(&self, i: usize) -> &str {
        &self.nodes.names()[i]
    }

    /// Cordons a node (`unschedulable`) or uncordons it.
    pub async fn cordon(&self, node: &str, unschedulable: bool) -> Result<()> {
        Api::<Node>::all(self.client.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": unschedulable}})),
            )
            .await
            .with_context(|| {
                format!("setting spec.unschedulable of node {node} to {unschedulable}")
            })?;
        Ok(())
    }

    /// Runs `create` while every other node of the set is cordoned, so that what it creates
    /// (and waits for) is scheduled onto node `target`; then uncordons the others, whether
    /// `create` succeeded or not.
    pub async fn place_on<T, F, Fut>(&self, target: usize, create: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let others: Vec<&String> = (self.nodes.names().iter().enumerate())
            .filter(|(i, _)| *i != target)
            .map(|(_, n)| n)
            .collect();
        for node in &others {
            self.cordon(node, true).await?;
        }
        let result = create().await;
        for node in &others {
            self.cordon(node, false).await?;
        }
        result
    }

    /// The spec of a VMI as users write them: `memory` of guest memory, masquerade on the pod
    /// network, a containerDisk, the eviction strategy when given, kept on this test's nodes.
    /// Tests add to the JSON what they need.
    pub fn vmi_spec(&self, memory: &str, eviction_strategy: Option<&str>) -> Value {
        let mut spec = json!({
            "domain": {
                "memory": {"guest": memory},
                "devices": {
                    "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                    "interfaces": [{"name": "default", "masquerade": {}}]
                }
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:latest"}}],
            "nodeSelector": self.nodes.node_selector()
        });
        if let Some(strategy) = eviction_strategy {
            spec["evictionStrategy"] = json!(strategy);
        }
        spec
    }

    /// Polls `check` until it returns `Ok(true)`: [`crate::wait_for`].
    pub async fn wait<F, Fut>(&self, what: &str, timeout: Duration, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        Ok(wait::wait_for(what, timeout, check).await?)
    }
}

/// A namespace of one test.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
    config: kube::Config,
    keep: bool,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keep the namespace after the test (for debugging).
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let name = self.name.clone();
        let config = self.config.clone();
        run_detached_cleanup(async move {
            let client = kube::Client::try_from(config)?;
            let api: Api<Namespace> = Api::all(client.clone());
            let _ = api.delete(&name, &DeleteParams::background()).await;
            let pvs: Api<PersistentVolume> = Api::all(client);
            let _ = pvs
                .delete_collection(
                    &DeleteParams::background(),
                    &ListParams::default().labels(&format!("testbed.vacate.io/namespace={name}")),
                )
                .await;
            Ok(())
        });
    }
}

/// Nodes of one test, labelled `testbed.vacate.io/set=<id>`.
#[derive(Debug)]
pub struct NodeSet {
    pub id: String,
    pub names: Vec<String>,
    config: kube::Config,
}

impl NodeSet {
    /// Node names, in creation order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `testbed.vacate.io/set=<id>`, for list calls.
    pub fn label_selector(&self) -> String {
        format!("{SET_LABEL}={}", self.id)
    }

    /// A nodeSelector that keeps a workload on this set.
    pub fn node_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(SET_LABEL.to_string(), self.id.clone())])
    }

    /// Waits until every node of the set is Ready.
    pub async fn wait_ready(&self, client: &kube::Client, timeout: Duration) -> Result<()> {
        let n = self.names.len();
        wait::wait_until(
            &format!("the {n} nodes of node set {} to be Ready", self.id),
            timeout,
            Api::<Node>::all(client.clone()),
            kube::runtime::watcher::Config::default().labels(&self.label_selector()),
            |nodes: &[Node]| nodes.iter().filter(|n| nodes::is_ready(n)).count() >= n,
            |nodes| {
                let ready: Vec<_> = nodes
                    .iter()
                    .filter(|n| nodes::is_ready(n))
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                format!("Ready: {ready:?}")
            },
        )
        .await?;
        Ok(())
    }
}

impl Drop for NodeSet {
    fn drop(&mut self) {
        let selector = self.label_selector();
        let config = self.config.clone();
        run_detached_cleanup(async move {
            let api: Api<Node> = Api::all(kube::Client::try_from(config)?);
            let _ = api
                .delete_collection(
                    &DeleteParams::background(),
                    &ListParams::default().labels(&selector),
                )
                .await;
            Ok(())
        });
    }
}

/// A scenario loaded by [`TestCluster::seed`].
#[derive(Debug)]
pub struct Seeded {
    pub namespace: TestNamespace,
    pub nodes: NodeSet,
    pub report: SeedReport,
}

/// Runs a cleanup on a thread of its own with its own runtime and waits for it (at most
/// 10 s): drop handlers run inside a test's runtime, which may be shutting down.
fn run_detached_cleanup<F>(fut: F)
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), fut).await });
    });
    let _ = handle.join();
}

/// A short random id (6 hex digits) for object names.
pub fn unique_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Removes temporary state folders of test processes that are gone.
fn sweep_stale_state_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("vacate-testbed-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !process::alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
