//! Fixtures for vacate's integration tests, on top of the testbed's [`TestEnv`] (a namespace
//! and a node set of their own on the testbed's real API server, workloads placed on one
//! node): VMs and pods for a drain to move, the real `vacate` binary as a child process, and a
//! watch that records every migration vacate creates.

#![allow(dead_code)]

pub mod prometheus;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use kubevirt_api::common::condition_type;
use kubevirt_api::{
    MigrationPhase, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
};
use serde_json::json;
use testbed::nodes::NodeTemplate;
use testbed::test_support::{TestCluster, TestEnv};
use vacate::planner::{BlockReason, DrainState, Phase, StateAnnotation};

pub const REQUEST_LABEL: &str = "vacate.io/maintenance";
pub const DRAINED_LABEL: &str = "vacate.io/drained";
pub const STATE_ANNOTATION: &str = "vacate.io/state";

/// `drain.resync` of every vacate the integration tests start.
pub const RESYNC: &str = "1h";

/// Short batch intervals and backoffs, so that tests do not wait for production pacing.
pub const FAST: &str = r#"
[migration]
batch_interval = "1s"
retry_backoff = "1s"
retry_backoff_max = "2s"
[pods]
eviction_backoff = "1s"
eviction_backoff_max = "3s"
"#;

/// A test's [`TestEnv`] with vacate's helpers.
pub struct Env(TestEnv);

impl Deref for Env {
    type Target = TestEnv;

    fn deref(&self) -> &TestEnv {
        &self.0
    }
}

/// A VirtualMachine for a test.
#[derive(Clone, Debug)]
pub struct Vm {
    pub name: String,
    pub memory: &'static str,
    pub eviction_strategy: Option<&'static str>,
    /// Bridge binding on the pod network: KubeVirt reports InterfaceNotLiveMigratable.
    pub bridge: bool,
    pub annotations: BTreeMap<String, String>,
    /// A bare VMI instead of a VirtualMachine.
    pub bare: bool,
}

impl Vm {
    pub fn migratable(name: impl Into<String>) -> Self {
        Vm {
            name: name.into(),
            memory: "1Gi",
            eviction_strategy: Some("LiveMigrate"),
            bridge: false,
            annotations: BTreeMap::new(),
            bare: false,
        }
    }

    pub fn not_migratable(name: impl Into<String>, strategy: &'static str) -> Self {
        Vm {
            bridge: true,
            eviction_strategy: Some(strategy),
            ..Vm::migratable(name)
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }
}

impl Env {
    pub async fn new(prefix: &str, nodes: usize) -> Result<Env> {
        Self::with_template(prefix, nodes, NodeTemplate::default()).await
    }

    /// A namespace and `nodes` nodes on `cluster` (one the test started itself) instead of
    /// the shared testbed.
    pub async fn on(cluster: Arc<TestCluster>, prefix: &str, nodes: usize) -> Result<Env> {
        Ok(Env(TestEnv::on(
            cluster,
            prefix,
            nodes,
            NodeTemplate::default(),
        )
        .await?))
    }

    /// A copy of the admin kubeconfig whose requests impersonate `user` (in group
    /// system:masters), written to `path`: the API server's audit log names `user` as the
    /// `impersonatedUser` of each of them, which tells apart processes that share the
    /// admin's credentials.
    pub fn impersonating_kubeconfig(&self, user: &str, path: &Path) -> Result<()> {
        let mut config = kube::config::Kubeconfig::read_from(self.cluster.kubeconfig_path())?;
        for named in &mut config.auth_infos {
            if let Some(auth) = named.auth_info.as_mut() {
                auth.impersonate = Some(user.to_string());
                auth.impersonate_groups = Some(vec!["system:masters".into()]);
            }
        }
        // JSON is YAML: kubeconfig readers take it.
        std::fs::write(path, serde_json::to_string(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// A kubeconfig for the testbed's API server, written to `path`, that authenticates with
    /// a token of ServiceAccount `namespace/account`, obtained through the TokenRequest API.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        account: &str,
        path: &Path,
    ) -> Result<()> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = accounts
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{account}"))?
            .status
            .context("TokenRequest without a status")?
            .token;
        let admin_path = self.cluster.kubeconfig_path();
        let admin: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(admin_path)?)
                .with_context(|| format!("parsing {}", admin_path.display()))?;
        let cluster = admin["clusters"][0]["cluster"].clone();
        ensure!(
            cluster["server"].is_string() && cluster["certificate-authority-data"].is_string(),
            "the admin kubeconfig has no server and inline CA: {cluster}"
        );
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": cluster}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": "testbed", "user": account}}],
            "current-context": account
        });
        std::fs::write(path, serde_json::to_string_pretty(&kubeconfig)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// A namespace and `nodes` nodes made from `template`.
    pub async fn with_template(prefix: &str, nodes: usize, template: NodeTemplate) -> Result<Env> {
        Ok(Env(TestEnv::new(prefix, nodes, template).await?))
    }

    pub fn selector(&self) -> String {
        self.nodes.label_selector()
    }

    /// The VMI spec of `vm`, with resource requests the scheduler and the capacity check count.
    fn vmi_spec_of(&self, vm: &Vm) -> serde_json::Value {
        let mut spec = self.vmi_spec(vm.memory, vm.eviction_strategy);
        spec["domain"]["resources"] = json!({"requests": {"memory": vm.memory, "cpu": "100m"}});
        if vm.bridge {
            spec["domain"]["devices"]["interfaces"] = json!([{"name": "default", "bridge": {}}]);
        }
        spec["terminationGracePeriodSeconds"] = json!(1);
        spec
    }

    pub async fn create_vm(&self, vm: &Vm) -> Result<()> {
        let ns = self.ns.name();
        let meta = json!({"labels": {"app": vm.name}, "annotations": vm.annotations});
        if vm.bare {
            let vmi: VirtualMachineInstance = serde_json::from_value(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "metadata": {"name": vm.name, "namespace": ns, "labels": meta["labels"], "annotations": meta["annotations"]},
                "spec": self.vmi_spec_of(vm)
            }))?;
            Api::<VirtualMachineInstance>::namespaced(self.client.clone(), ns)
                .create(&PostParams::default(), &vmi)
                .await
                .with_context(|| format!("creating VMI {}", vm.name))?;
        } else {
            let object: VirtualMachine = serde_json::from_value(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                "metadata": {"name": vm.name, "namespace": ns},
                "spec": {"runStrategy": "Always", "template": {"metadata": meta, "spec": self.vmi_spec_of(vm)}}
            }))?;
            Api::<VirtualMachine>::namespaced(self.client.clone(), ns)
                .create(&PostParams::default(), &object)
                .await
                .with_context(|| format!("creating VM {}", vm.name))?;
        }
        Ok(())
    }

    pub async fn create_deployment(
        &self,
        name: &str,
        replicas: i32,
        pdb_min_available: Option<i32>,
    ) -> Result<()> {
        let ns = self.ns.name();
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": self.nodes.node_selector(),
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]
                    }
                }
            }
        }))?;
        Api::<Deployment>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &deployment)
            .await?;
        if let Some(min) = pdb_min_available {
            let pdb: PodDisruptionBudget = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"minAvailable": min, "selector": {"matchLabels": {"app": name}}}
            }))?;
            Api::<PodDisruptionBudget>::namespaced(self.client.clone(), ns)
                .create(&PostParams::default(), &pdb)
                .await?;
        }
        Ok(())
    }

    pub async fn set_pdb_min_available(&self, name: &str, min: i32) -> Result<()> {
        Api::<PodDisruptionBudget>::namespaced(self.client.clone(), self.ns.name())
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"minAvailable": min}})),
            )
            .await?;
        Ok(())
    }

    pub async fn create_daemonset(&self, name: &str) -> Result<()> {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": self.ns.name()},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "nodeSelector": self.nodes.node_selector(),
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "agent", "image": "registry.k8s.io/pause:3.10"}]
                    }
                }
            }
        }))?;
        Api::<DaemonSet>::namespaced(self.client.clone(), self.ns.name())
            .create(&PostParams::default(), &ds)
            .await?;
        Ok(())
    }

    pub async fn vmis(&self) -> Result<Vec<VirtualMachineInstance>> {
        Ok(
            Api::<VirtualMachineInstance>::namespaced(self.client.clone(), self.ns.name())
                .list(&ListParams::default())
                .await?
                .items,
        )
    }

    pub async fn pods_on(&self, node: &str) -> Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(self.client.clone(), self.ns.name())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?
            .items)
    }

    /// Places `count` live-migratable VMs of `memory` on node `target` and waits for them.
    pub async fn migratable_vms_on(
        &self,
        target: usize,
        count: usize,
        memory: &'static str,
    ) -> Result<()> {
        let node = self.node(target).to_string();
        self.place_on(target, || async {
            for i in 0..count {
                let mut vm = Vm::migratable(format!("vm-{i}"));
                vm.memory = memory;
                self.create_vm(&vm).await?;
            }
            self.wait_vmis_running_on(&node, count).await
        })
        .await
    }

    /// The usual drain scene on node `target`: `vms` live-migratable VMs, a Deployment `web`
    /// of `replicas` behind a PodDisruptionBudget with `min_available`, and a DaemonSet
    /// `agent` on every node of the set. Waits until all of it runs.
    pub async fn busy_node(
        &self,
        target: usize,
        vms: usize,
        replicas: i32,
        min_available: i32,
    ) -> Result<()> {
        let vms = (0..vms)
            .map(|i| Vm::migratable(format!("vm-{i}")))
            .collect();
        self.busy_node_with(target, vms, replicas, min_available)
            .await
    }

    /// [`Env::busy_node`] with the given VMs.
    pub async fn busy_node_with(
        &self,
        target: usize,
        vms: Vec<Vm>,
        replicas: i32,
        min_available: i32,
    ) -> Result<()> {
        let node = self.node(target).to_string();
        let count = vms.len();
        let pods = count + replicas as usize;
        self.place_on(target, || async {
            for vm in &vms {
                self.create_vm(vm).await?;
            }
            self.create_deployment("web", replicas, Some(min_available))
                .await?;
            self.wait_vmis_running_on(&node, count).await?;
            self.wait_pods_running_on(&node, pods).await
        })
        .await?;
        self.create_daemonset("agent").await?;
        self.wait_pods_running_on(&node, pods + 1).await
    }

    /// Waits until `count` VMIs run on `node` with LiveMigratable computed.
    pub async fn wait_vmis_running_on(&self, node: &str, count: usize) -> Result<()> {
        self.wait(
            &format!("{count} VMIs Running on {node}"),
            Duration::from_secs(90),
            || async {
                let vmis = self.vmis().await?;
                let running = vmis
                    .iter()
                    .filter(|v| {
                        v.is_running()
                            && v.node_name() == Some(node)
                            && v.live_migratable().is_some()
                    })
                    .count();
                Ok(running == count)
            },
        )
        .await
    }

    /// Waits until `count` pods of the namespace run on `node`.
    pub async fn wait_pods_running_on(&self, node: &str, count: usize) -> Result<()> {
        self.wait(
            &format!("{count} pods Running on {node}"),
            Duration::from_secs(90),
            || async {
                let pods = self.pods_on(node).await?;
                let running = pods
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count();
                Ok(running == count)
            },
        )
        .await
    }

    pub async fn get_node(&self, name: &str) -> Result<Node> {
        Ok(Api::<Node>::all(self.client.clone()).get(name).await?)
    }

    pub async fn request(&self, node: &str, value: Option<&str>) -> Result<()> {
        Api::<Node>::all(self.client.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {REQUEST_LABEL: value}}})),
            )
            .await?;
        Ok(())
    }

    pub async fn state(&self, node: &str) -> Result<StateAnnotation> {
        let node = self.get_node(node).await?;
        Ok(StateAnnotation::parse(
            node.annotations().get(STATE_ANNOTATION).map(String::as_str),
        ))
    }

    /// Polls the node's state annotation every 200 ms until `check` takes it (`Ok(Some)`);
    /// `check` may end the wait with an error. A read that fails does not end the wait (the
    /// API server may be busy), as with [`testbed::wait_for`]: the timeout error names it,
    /// with `what` and the last state seen.
    pub async fn wait_state<T>(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&DrainState) -> Result<Option<T>>,
    ) -> Result<T> {
        let (mut last, mut last_error) = (None, None);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.state(node).await {
                Ok(StateAnnotation::Valid(state)) => {
                    if let Some(found) = check(&state)? {
                        return Ok(found);
                    }
                    last = Some(state);
                }
                Ok(_) => {}
                Err(error) => last_error = Some(error),
            }
            if tokio::time::Instant::now() > deadline {
                let error = last_error
                    .map(|e| format!("; last error: {e:#}"))
                    .unwrap_or_default();
                bail!("timed out waiting for {what}; last state: {last:#?}{error}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the node's state annotation shows `phase`; fails early on Failed.
    pub async fn wait_phase(
        &self,
        node: &str,
        phase: Phase,
        timeout: Duration,
    ) -> Result<DrainState> {
        let what = format!("{node} to reach {phase}");
        self.wait_state(node, &what, timeout, |state| {
            if state.phase == phase {
                return Ok(Some(state.clone()));
            }
            if state.phase == Phase::Failed && phase != Phase::Failed {
                bail!("drain of {node} failed: {:?}", state.failure);
            }
            Ok(None)
        })
        .await
    }

    /// Waits (60 s at most) until the node waits in Pending with `reason` as its blocker;
    /// returns the blocker's message.
    pub async fn wait_pending_for(&self, node: &str, reason: BlockReason) -> Result<String> {
        let what = format!("{node} to wait in Pending for {}", reason.as_str());
        self.wait_state(node, &what, Duration::from_secs(60), |state| {
            Ok(match &state.blocked {
                Some(b) if state.phase == Phase::Pending && b.reason == reason => {
                    Some(b.message.clone())
                }
                _ => None,
            })
        })
        .await
    }

    /// Waits until the node has no vacate state left.
    pub async fn wait_idle(&self, node: &str, timeout: Duration) -> Result<Node> {
        self.wait(&format!("{node} to be back to Idle"), timeout, || async {
            Ok(self.state(node).await? == StateAnnotation::Absent)
        })
        .await?;
        self.get_node(node).await
    }

    pub async fn vacate_migrations(&self) -> Result<Vec<VirtualMachineInstanceMigration>> {
        Ok(
            Api::<VirtualMachineInstanceMigration>::namespaced(self.client.clone(), self.ns.name())
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=vacate"))
                .await?
                .items,
        )
    }

    /// Starts the vacate daemon handling only this test's nodes.
    pub async fn vacate(&self, extra_config: &str) -> Result<Vacate> {
        let lease = Lease {
            namespace: self.ns.name(),
            name: "vacate",
        };
        self.vacate_with_kubeconfig(self.cluster.kubeconfig_path(), lease, extra_config)
            .await
    }

    /// Starts the vacate daemon for this test's nodes with the credentials of `kubeconfig`
    /// and its leader-election Lease at `lease`.
    pub async fn vacate_with_kubeconfig(
        &self,
        kubeconfig: &Path,
        lease: Lease<'_>,
        extra_config: &str,
    ) -> Result<Vacate> {
        let mut vacate = Vacate::start(self, kubeconfig, lease, extra_config)?;
        vacate.wait_ready().await?;
        Ok(vacate)
    }
}

pub fn is_unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

pub fn has_label(node: &Node, key: &str) -> bool {
    node.labels().contains_key(key)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn vacate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vacate"))
}

/// The vacate daemon as a child process; killed when dropped.
pub struct Vacate {
    child: Child,
    pub metrics_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where vacate's leader-election Lease lives.
#[derive(Clone, Copy, Debug)]
pub struct Lease<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
}

impl Vacate {
    fn start(env: &Env, kubeconfig: &Path, lease: Lease, extra_config: &str) -> Result<Vacate> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        // Each test has a Lease of its own, so tests do not compete for it.
        let config = format!(
            "[node]\nselector = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n[leader_election]\nnamespace = \"{}\"\nlease_name = \"{}\"\nlease_duration = \"4s\"\n{}\n",
            env.selector(),
            lease.namespace,
            lease.name,
            extra_config
        );
        let config_path = dir.path().join("vacate.toml");
        std::fs::write(&config_path, config)?;
        // The log outlives the test so that a failed test can be read after the fact.
        let log_path =
            std::env::temp_dir().join(format!("vacate-test-{}-{port}.log", env.ns.name()));
        eprintln!("vacate log: {}", log_path.display());
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(vacate_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .env("KUBECONFIG", kubeconfig)
            .env("VACATE_LOG__LEVEL", "vacate=debug,info")
            // The periodic look at draining nodes is a safety net: at an hour, every drain
            // of the suite must still end, woken only by the events it waits for.
            .env("VACATE_DRAIN__RESYNC", RESYNC)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting vacate")?;
        Ok(Vacate {
            child,
            metrics_port: port,
            config_path,
            log_path,
            kubeconfig: kubeconfig.to_path_buf(),
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for /readyz; fails with the log if the process exits first.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "vacate exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(text) = self.get("/readyz").await
                && text.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("vacate was not ready within 60 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGSTOP: the process is frozen (a hung process, a paused VM) until [`Vacate::resume`].
    pub fn freeze(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`Vacate::freeze`].
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: i32) -> Result<()> {
        // SAFETY: signalling our own child, not yet reaped.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling vacate");
        }
        Ok(())
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn get(&self, path: &str) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = format!("127.0.0.1:{}", self.metrics_port);
        let mut stream = tokio::net::TcpStream::connect(&url).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok(body)
    }

    pub async fn metrics(&self) -> Result<String> {
        self.get("/metrics").await
    }

    /// Whether this replica leads: its `vacate_leader` gauge is 1.
    pub async fn leads(&self) -> Result<bool> {
        Ok(self.metric("vacate_leader").await? == 1.0)
    }

    /// The value of one sample line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0))
    }

    /// The value of a counter once it reached `at_least`: vacate counts an ended drain or
    /// migration after the plan's writes, so a sample read right after the state it follows
    /// can still lag by one count.
    pub async fn counter_reaching(&self, series: &str, at_least: f64) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.metric(series).await?;
            if value >= at_least {
                return Ok(value);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{series} stayed at {value}, below {at_least}, for 15 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Vacate {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- vacate log ---\n{}", self.log());
        }
        // A frozen process would not die before it runs again.
        let _ = self.resume();
        self.kill();
    }
}

/// Waits until one of `replicas` leads; returns its index. A replica that does not answer
/// (a frozen one) does not lead.
pub async fn leader_of(replicas: &[&Vacate], timeout: Duration) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        for (i, replica) in replicas.iter().enumerate() {
            if replica.leads().await.unwrap_or(false) {
                return Ok(i);
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no replica led within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Records vacate's migrations as they happen: the most that were unfinished at once per
/// node, and every migration created per VMI.
#[derive(Clone, Default)]
pub struct MigrationMonitor {
    inner: Arc<Mutex<MonitorState>>,
}

#[derive(Default)]
struct MonitorState {
    unfinished: HashMap<String, String>,
    /// VMI of each unfinished migration.
    unfinished_vmi: HashMap<String, String>,
    max_concurrent_per_vmi: usize,
    max_per_node: HashMap<String, usize>,
    max_total: usize,
    per_vmi: HashMap<String, Vec<String>>,
    /// Each migration seen Failed, and whether it was then Failed with no deletion and no
    /// abort asked for: KubeVirt failed it on its own (a timeout, a target pod gone), not at
    /// anyone's request. Taken from the first event that shows it Failed.
    failed_unasked: HashMap<String, bool>,
}

impl MigrationMonitor {
    pub fn start(env: &Env) -> (MigrationMonitor, tokio::task::JoinHandle<()>) {
        let monitor = MigrationMonitor::default();
        let api: Api<VirtualMachineInstanceMigration> =
            Api::namespaced(env.client.clone(), env.ns.name());
        let inner = monitor.inner.clone();
        let task = tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .touched_objects();
            futures::pin_mut!(stream);
            while let Some(Ok(m)) = stream.next().await {
                let Some(node) = m.annotations().get("vacate.io/node").cloned() else {
                    continue;
                };
                let name = m.name_any();
                let mut s = inner.lock().unwrap();
                let vmi_list = s.per_vmi.entry(m.spec.vmi_name.clone()).or_default();
                if !vmi_list.contains(&name) {
                    vmi_list.push(name.clone());
                }
                if m.phase() == Some(MigrationPhase::Failed) {
                    let abort_asked = m.status.as_ref().is_some_and(|st| {
                        st.conditions
                            .iter()
                            .any(|c| c.type_ == condition_type::MIGRATION_ABORT_REQUESTED)
                    });
                    let unasked = !abort_asked && m.metadata.deletion_timestamp.is_none();
                    s.failed_unasked.entry(name.clone()).or_insert(unasked);
                }
                if m.is_unfinished() && m.metadata.deletion_timestamp.is_none() {
                    s.unfinished.insert(name.clone(), node.clone());
                    s.unfinished_vmi.insert(name, m.spec.vmi_name.clone());
                } else {
                    s.unfinished.remove(&name);
                    s.unfinished_vmi.remove(&name);
                }
                let of_vmi = s
                    .unfinished_vmi
                    .values()
                    .filter(|v| **v == m.spec.vmi_name)
                    .count();
                s.max_concurrent_per_vmi = s.max_concurrent_per_vmi.max(of_vmi);
                let on_node = s.unfinished.values().filter(|n| **n == node).count();
                let total = s.unfinished.len();
                let max = s.max_per_node.entry(node).or_default();
                *max = (*max).max(on_node);
                s.max_total = s.max_total.max(total);
            }
        });
        (monitor, task)
    }

    pub fn max_in_flight_on(&self, node: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .max_per_node
            .get(node)
            .copied()
            .unwrap_or(0)
    }

    pub fn migrations_of(&self, vmi: &str) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .per_vmi
            .get(vmi)
            .cloned()
            .unwrap_or_default()
    }

    /// The most of vacate's migrations of one VMI that were unfinished at once.
    pub fn max_concurrent_per_vmi(&self) -> usize {
        self.inner.lock().unwrap().max_concurrent_per_vmi
    }

    pub fn per_vmi(&self) -> HashMap<String, Vec<String>> {
        self.inner.lock().unwrap().per_vmi.clone()
    }

    /// Whether `migration` failed with no one asking: no deletion, no abort request.
    pub fn failed_unasked(&self, migration: &str) -> bool {
        self.inner.lock().unwrap().failed_unasked.get(migration) == Some(&true)
    }
}
