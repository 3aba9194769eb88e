//! Starting the control plane: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok and (optionally) the KubeVirt simulator, on loopback ports chosen
//! at start, with certificates generated at start.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

use crate::kubeconfig;
use crate::paths;
use crate::pki::Pki;
use crate::process::Components;

/// The Kubernetes version the upstream binaries are stamped with (see tests/testbed/build.sh).
pub const KUBE_VERSION: &str = "v1.37.2";

/// The kwok stages (node and pod lifecycle) the testbed runs.
const KWOK_STAGES: &str = include_str!("../kwok/stages.yaml");

/// kwok's options: more parallel stage workers than the defaults (4), so that hundreds of
/// nodes and pods turn Ready in seconds.
const KWOK_CONFIGURATION: &str = "apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
metadata:
  name: testbed
options:
  nodePlayStageParallelism: 16
  podPlayStageParallelism: 16
  nodeLeaseParallelism: 16
  podsOnNodeSyncParallelism: 4
";

/// The node leases kwok keeps by default, in seconds: it renews each a quarter of this after
/// the last renewal. Every renewal is a write; at 40 s (a kubelet's default) a thousand nodes
/// needed 100 writes a second, more than kwok managed on a loaded API server (about 30).
///
/// Longer leases cost fewer writes (at 160 s a 1,000-node seed spent one API request in
/// eleven on leases, a 2,000-node seed one in six), but kwok leaves a node alone, neither
/// its status nor its pods, while it does not hold the node's lease (`readOnlyFunc` in kwok's
/// pkg/kwok/controllers/controller.go, v0.8.0): a renewal that fails, as while etcd restarts,
/// is retried only at the next interval, a quarter of the lease later. Test clusters keep
/// that gap short; `testbed up --node-lease-seconds` lengthens it for large fleets.
pub const NODE_LEASE_SECONDS: u32 = 160;

/// How long the node-lifecycle controller waits for a lease renewal before it marks a node
/// NotReady: well over the renewal interval of a lease of `lease_seconds` (a quarter of it),
/// and over the renewal lag of a large seed. Never under 300 s.
fn node_monitor_grace_seconds(lease_seconds: u32) -> u32 {
    (lease_seconds.saturating_mul(3) / 2).max(300)
}

/// kube-scheduler's configuration. With a file, the scheduler reads its client settings
/// from it and ignores `--kubeconfig`, `--kube-api-qps` and `--leader-elect`.
///
/// `percentageOfNodesToScore: 5`: the scheduler stops looking once it found that share of
/// the nodes feasible (never fewer than 100 nodes). Its default is adaptive, 50 % minus one
/// point per 125 nodes: 42 % at 1,000 nodes, so scheduling the pods of a seed grows with the
/// square of the fleet. Pods still spread: 100 candidates are scored.
///
/// `PodTopologySpread` spreads the pods of a ReplicaSet (or Service, StatefulSet) over
/// hostnames only. Its system defaults also spread them over zones; testbed nodes carry no
/// zone label, so all of them form one zone "", and scoring that zone counts the matching
/// pods on every node of the cluster, not only the candidates (`PodTopologySpread.PreScore`,
/// pkg/scheduler/framework/plugins/podtopologyspread/scoring.go): at 1,000 nodes that was
/// the scheduler's largest cost, growing with nodes times pods. The hostname constraint is
/// the default's (`maxSkew: 3`, `ScheduleAnyway`) and is scored on the candidates alone.
fn scheduler_configuration(kubeconfig: &Path) -> String {
    format!(
        "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: {}
  qps: 200
  burst: 400
leaderElection:
  leaderElect: false
percentageOfNodesToScore: 5
profiles:
- schedulerName: default-scheduler
  pluginConfig:
  - name: PodTopologySpread
    args:
      defaultingType: List
      defaultConstraints:
      - maxSkew: 3
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: ScheduleAnyway
",
        serde_json::to_string(&kubeconfig.display().to_string()).expect("a string serializes")
    )
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Folder for certificates, kubeconfigs, logs and etcd's data.
    pub state_dir: PathBuf,
    /// Start the KubeVirt simulator (`kubevirt-sim`).
    pub kubevirt: bool,
    /// How long to wait for everything to become ready.
    pub ready_timeout: Duration,
    /// Write the API server's audit log to `<state>/audit.log`.
    pub audit: Option<AuditOptions>,
    /// The duration of the node leases kwok keeps, in seconds (see [`NODE_LEASE_SECONDS`]).
    pub node_lease_seconds: u32,
}

/// The API server's audit log: one JSON line per request at level `Metadata` (who, verb,
/// resource, response code; no bodies), written when the response is complete (and, for
/// watches, also when the response starts).
#[derive(Clone, Debug, Default)]
pub struct AuditOptions {
    /// Log only these users' requests (empty: everyone's).
    pub users: Vec<String>,
}

impl AuditOptions {
    /// The audit policy file's text.
    pub fn policy(&self) -> String {
        let mut policy = String::from(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n",
        );
        if self.users.is_empty() {
            policy.push_str("- level: Metadata\n");
        } else {
            let users = serde_json::to_string(&self.users).unwrap_or_default();
            policy.push_str(&format!(
                "- level: Metadata\n  users: {users}\n- level: None\n"
            ));
        }
        policy
    }
}

impl Options {
    pub fn new(state_dir: impl Into<PathBuf>) -> Options {
        Options {
            state_dir: state_dir.into(),
            kubevirt: true,
            ready_timeout: Duration::from_secs(180),
            audit: None,
            node_lease_seconds: NODE_LEASE_SECONDS,
        }
    }
}

/// Files of a testbed's state folder.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    /// The admin kubeconfig `testbed up` publishes once the cluster is ready.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    /// A kubeconfig for the user `vacate` (group `system:masters`), published with the admin one.
    pub fn vacate_kubeconfig(&self) -> PathBuf {
        self.root.join("vacate.kubeconfig")
    }
    /// The API server's audit log (`testbed up --audit-log`).
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }
    /// The admin kubeconfig the components use (exists from the start).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.config().join("admin.kubeconfig")
    }
    /// Marks a folder as a testbed state folder (so `down` may delete it).
    pub fn marker(&self) -> PathBuf {
        self.root.join(".testbed-state")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("supervisor.pid")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }
    pub fn kubevirt_sim(&self) -> PathBuf {
        self.root.join("kubevirt-sim")
    }
    /// Written when startup failed, with the reason (read by `testbed up`).
    pub fn failure(&self) -> PathBuf {
        self.root.join("failed")
    }
    /// Ports and addresses, for people and tools.
    pub fn endpoints(&self) -> PathBuf {
        self.root.join("endpoints.json")
    }
}

/// The addresses a running control plane listens on.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    pub apiserver: String,
    pub etcd: String,
    pub kubevirt_sim: Option<String>,
    pub kubernetes_version: String,
}

/// A running control plane. It stops when the last handle to its [`Components`] is
/// dropped, on [`ControlPlane::stop`], or when this process ends.
pub struct ControlPlane {
    pub layout: Layout,
    pub endpoints: Endpoints,
    pub components: Components,
    /// Admin kubeconfig (client certificate in group system:masters).
    pub kubeconfig: PathBuf,
    pub kubevirt: bool,
    pub started_in: Duration,
}

impl ControlPlane {
    /// Starts every component and waits until the cluster is usable: the API server's
    /// /readyz answers, the `default` service account exists in `default`, and the
    /// simulator (if started) answers its /readyz. Then writes the admin kubeconfig.
    pub async fn start(opts: &Options) -> Result<ControlPlane> {
        let started = Instant::now();
        let layout = Layout::new(&opts.state_dir);
        for dir in [layout.logs(), layout.config(), layout.etcd_data()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(layout.marker(), "vacate testbed state folder\n")?;
        let bin = paths::upstream_bin_dir()?;
        let sim = if opts.kubevirt {
            Some(paths::kubevirt_sim()?)
        } else {
            None
        };

        let pki = Pki::generate(&layout.pki())?;
        let components = Components::new()?;
        let result = start_components(opts, &layout, &bin, sim.as_deref(), &pki, &components)
            .await
            .map_err(|e| match components.failed() {
                Some(exit) => anyhow!("{e:#}\n{exit}"),
                None => e,
            });
        match result {
            Ok(endpoints) => Ok(ControlPlane {
                kubeconfig: layout.admin_kubeconfig(),
                layout,
                endpoints,
                components,
                kubevirt: sim.is_some(),
                started_in: started.elapsed(),
            }),
            Err(e) => {
                components.shutdown();
                Err(e)
            }
        }
    }

    /// Stops every component.
    pub fn stop(&self) {
        self.components.shutdown();
    }

    /// The names of the components, in start order (`kubevirt-sim` only when it runs).
    pub fn component_names(&self) -> Vec<&'static str> {
        let mut names = vec![
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        ];
        if self.kubevirt {
            names.push("kubevirt-sim");
        }
        names
    }

    fn check_component(&self, name: &str) -> Result<()> {
        let names = self.component_names();
        if !names.contains(&name) {
            bail!("no component {name:?} in this testbed (it runs {names:?})");
        }
        Ok(())
    }

    /// Freezes component `name` with SIGSTOP: it keeps its sockets open but answers
    /// nothing, as a process that hangs or a paused VM, until [`ControlPlane::resume`].
    pub fn pause(&self, name: &str) -> Result<()> {
        self.check_component(name)?;
        self.components.signal(name, libc::SIGSTOP)
    }

    /// Resumes a component frozen by [`ControlPlane::pause`] (SIGCONT).
    pub fn resume(&self, name: &str) -> Result<()> {
        self.check_component(name)?;
        self.components.signal(name, libc::SIGCONT)
    }

    /// Kills component `name` with SIGKILL, as in a crash, and starts it again with the same
    /// arguments (etcd keeps its data folder, the simulator its state folder and address).
    /// Returns without waiting for it to be ready: see [`ControlPlane::wait_ready`].
    pub fn restart(&self, name: &str) -> Result<u32> {
        self.check_component(name)?;
        self.components.restart(name)
    }

    /// The pid of component `name`.
    pub fn pid(&self, name: &str) -> Result<u32> {
        self.check_component(name)?;
        self.components
            .pid(name)
            .ok_or_else(|| anyhow!("component {name} is not running"))
    }

    /// Waits until the API server's /readyz answers `ok` and, when it runs, the simulator's
    /// /readyz answers 200 (after a pause or a restart).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        wait_for_apiserver(&self.kubeconfig, &self.components, deadline).await?;
        if let Some(endpoint) = &self.endpoints.kubevirt_sim {
            let listen = endpoint.trim_start_matches("https://");
            wait_for_simulator(
                listen,
                &self.components,
                deadline,
                &self.layout.log("kubevirt-sim"),
            )
            .await?;
        }
        Ok(())
    }

    /// Copies the admin kubeconfig to `<state>/kubeconfig`, which tells `testbed up` and
    /// tools that the cluster is ready, and the `vacate` user's to `<state>/vacate.kubeconfig`.
    pub fn publish_kubeconfig(&self) -> Result<PathBuf> {
        let vacate = self.layout.config().join("vacate.kubeconfig");
        let text = std::fs::read_to_string(&vacate)
            .with_context(|| format!("reading {}", vacate.display()))?;
        kubeconfig::write_atomic(&self.layout.vacate_kubeconfig(), &text)?;
        let text = std::fs::read_to_string(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let path = self.layout.kubeconfig();
        kubeconfig::write_atomic(&path, &text)?;
        Ok(path)
    }
}

async fn start_components(
    opts: &Options,
    layout: &Layout,
    bin: &Path,
    sim: Option<&Path>,
    pki: &Pki,
    components: &Components,
) -> Result<Endpoints> {
    let deadline = Instant::now() + opts.ready_timeout;
    let etcd_port = free_port()?;
    let etcd_peer_port = free_port()?;
    let apiserver_port = free_port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let server = format!("https://127.0.0.1:{apiserver_port}");

    // Internal kubeconfig files for the components (the admin one is written at the end).
    let admin_kc = layout.admin_kubeconfig();
    let kcm_kc = layout.config().join("controller-manager.kubeconfig");
    let sched_kc = layout.config().join("scheduler.kubeconfig");
    kubeconfig::write_atomic(
        &admin_kc,
        &kubeconfig::render(&server, &pki.ca.cert_pem, &pki.admin, "admin"),
    )?;
    kubeconfig::write_atomic(
        &kcm_kc,
        &kubeconfig::render(
            &server,
            &pki.ca.cert_pem,
            &pki.controller_manager,
            "controller-manager",
        ),
    )?;
    kubeconfig::write_atomic(
        &sched_kc,
        &kubeconfig::render(&server, &pki.ca.cert_pem, &pki.scheduler, "scheduler"),
    )?;
    kubeconfig::write_atomic(
        &layout.config().join("vacate.kubeconfig"),
        &kubeconfig::render(&server, &pki.ca.cert_pem, &pki.vacate, "vacate"),
    )?;
    let stages = layout.config().join("kwok.yaml");
    std::fs::write(&stages, format!("{KWOK_CONFIGURATION}---\n{KWOK_STAGES}"))
        .with_context(|| format!("writing {}", stages.display()))?;

    // etcd: single member, no fsync (a test cluster's data is disposable).
    let mut etcd = Command::new(bin.join("etcd"));
    etcd.arg("--name=testbed")
        .arg(format!("--data-dir={}", layout.etcd_data().display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=testbed={peer_url}"))
        .arg("--unsafe-no-fsync=true")
        .arg("--quota-backend-bytes=8589934592")
        .arg("--log-level=warn");
    components.spawn("etcd", etcd, &layout.log("etcd"))?;

    let sa_key = pki.service_account_key_path.display().to_string();
    let mut apiserver = Command::new(bin.join("kube-apiserver"));
    apiserver
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        // Endpoint reconcilers refuse a loopback address for the `kubernetes` Service, and
        // nothing here reaches the API server through it (kwok pods run no processes).
        .arg("--endpoint-reconciler-type=none")
        .arg(format!("--secure-port={apiserver_port}"))
        .arg(format!(
            "--tls-cert-file={}",
            pki.apiserver.cert_path.display()
        ))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.apiserver.key_path.display()
        ))
        .arg(format!("--client-ca-file={}", pki.ca.cert_path.display()))
        .arg("--authorization-mode=Node,RBAC")
        .arg(format!(
            "--service-account-key-file={}",
            pki.service_account_pub_path.display()
        ))
        .arg(format!("--service-account-signing-key-file={sa_key}"))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg("--allow-privileged=true")
        // Hundreds of kwok nodes and a seeding client are bursty; the defaults (400/200)
        // throttle them.
        .arg("--max-requests-inflight=2000")
        .arg("--max-mutating-requests-inflight=1000")
        .arg("--profiling=false")
        .arg("--v=0");
    if let Some(audit) = &opts.audit {
        let policy = layout.config().join("audit-policy.yaml");
        std::fs::write(&policy, audit.policy())
            .with_context(|| format!("writing {}", policy.display()))?;
        apiserver
            .arg(format!("--audit-policy-file={}", policy.display()))
            .arg(format!("--audit-log-path={}", layout.audit_log().display()))
            .arg("--audit-log-format=json")
            // Every event is written before the response (no batching), so a reader sees a
            // request in the log once its client has the answer.
            .arg("--audit-log-mode=blocking")
            .arg("--audit-log-maxbackup=0");
    }
    components.spawn("kube-apiserver", apiserver, &layout.log("kube-apiserver"))?;

    let client = wait_for_apiserver(&admin_kc, components, deadline).await?;
    // Applied now, Established by the time everything else is up.
    let crds = crate::monitoring_crds::apply(&client).await?;

    let mut kcm = Command::new(bin.join("kube-controller-manager"));
    kcm.arg(format!("--kubeconfig={}", kcm_kc.display()))
        .arg(format!("--authentication-kubeconfig={}", kcm_kc.display()))
        .arg(format!("--authorization-kubeconfig={}", kcm_kc.display()))
        .arg("--bind-address=127.0.0.1")
        .arg("--secure-port=0")
        .arg(format!("--service-account-private-key-file={sa_key}"))
        .arg(format!("--root-ca-file={}", pki.ca.cert_path.display()))
        .arg(format!(
            "--cluster-signing-cert-file={}",
            pki.ca.cert_path.display()
        ))
        .arg(format!(
            "--cluster-signing-key-file={}",
            pki.ca.key_path.display()
        ))
        .arg("--use-service-account-credentials=true")
        .arg("--leader-elect=false")
        .arg("--kube-api-qps=200")
        .arg("--kube-api-burst=400")
        // kwok renews a node's lease a quarter of its duration after the last renewal, but
        // at a thousand nodes it falls behind: the default grace (50 s) then marked nodes
        // NotReady and their pods Ready=False, and nothing plays the kubelet that would set
        // them Ready again. See kwok's --node-lease-duration-seconds below.
        .arg(format!(
            "--node-monitor-grace-period={}s",
            node_monitor_grace_seconds(opts.node_lease_seconds)
        ))
        .arg("--v=0");
    components.spawn(
        "kube-controller-manager",
        kcm,
        &layout.log("kube-controller-manager"),
    )?;

    let sched_config = layout.config().join("scheduler.yaml");
    std::fs::write(&sched_config, scheduler_configuration(&sched_kc))
        .with_context(|| format!("writing {}", sched_config.display()))?;
    let mut scheduler = Command::new(bin.join("kube-scheduler"));
    scheduler
        .arg(format!("--config={}", sched_config.display()))
        .arg(format!(
            "--authentication-kubeconfig={}",
            sched_kc.display()
        ))
        .arg(format!("--authorization-kubeconfig={}", sched_kc.display()))
        .arg("--bind-address=127.0.0.1")
        .arg("--secure-port=0")
        .arg("--v=0");
    components.spawn("kube-scheduler", scheduler, &layout.log("kube-scheduler"))?;

    // kwok plays the kubelet of every node in the cluster.
    let mut kwok = Command::new(bin.join("kwok"));
    kwok.arg(format!("--kubeconfig={}", admin_kc.display()))
        .arg(format!("--config={}", stages.display()))
        .arg("--manage-all-nodes=true")
        .arg(format!(
            "--node-lease-duration-seconds={}",
            opts.node_lease_seconds
        ))
        .arg("--cidr=10.128.0.1/9")
        // kwok logs every write it makes at INFO: thousands of lines a minute on a large
        // fleet, for nothing a test reads. Failures are still logged.
        .arg("--v=WARN")
        .env("HOME", layout.config());
    components.spawn("kwok", kwok, &layout.log("kwok"))?;

    wait_for_default_service_account(&client, components, deadline).await?;
    crate::monitoring_crds::wait_established(&client, &crds, deadline).await?;

    let mut sim_endpoint = None;
    if let Some(sim) = sim {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(layout.kubevirt_sim())?;
        let mut cmd = Command::new(sim);
        cmd.arg("--kubeconfig")
            .arg(&admin_kc)
            .arg("--listen")
            .arg(&listen)
            .arg("--state-dir")
            .arg(layout.kubevirt_sim());
        components.spawn("kubevirt-sim", cmd, &layout.log("kubevirt-sim"))?;
        wait_for_simulator(&listen, components, deadline, &layout.log("kubevirt-sim")).await?;
        sim_endpoint = Some(format!("https://{listen}"));
    }

    let endpoints = Endpoints {
        apiserver: server.clone(),
        etcd: etcd_url,
        kubevirt_sim: sim_endpoint,
        kubernetes_version: KUBE_VERSION.to_string(),
    };
    std::fs::write(
        layout.endpoints(),
        serde_json::to_string_pretty(&endpoints)?,
    )?;
    Ok(endpoints)
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn check_alive(components: &Components) -> Result<()> {
    match components.failed() {
        Some(exit) => Err(anyhow!("{exit}")),
        None => Ok(()),
    }
}

async fn wait_for_apiserver(
    kubeconfig_path: &Path,
    components: &Components,
    deadline: Instant,
) -> Result<kube::Client> {
    let client = kubeconfig::client_from(kubeconfig_path).await?;
    let mut last: String;
    loop {
        check_alive(components)?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(client),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            bail!("kube-apiserver did not become ready in time: /readyz said: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_default_service_account(
    client: &kube::Client,
    components: &Components,
    deadline: Instant,
) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    loop {
        check_alive(components)?;
        if api.get_opt("default").await?.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the service account default/default was not created in time \
                 (kube-controller-manager's service-account controller makes it)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_simulator(
    listen: &str,
    components: &Components,
    deadline: Instant,
    log: &Path,
) -> Result<()> {
    let mut last: String;
    loop {
        check_alive(components)?;
        match crate::https::get_insecure(listen, "/readyz").await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => last = format!("HTTP {status}: {}", body.trim()),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "kubevirt-sim did not answer GET https://{listen}/readyz with 200 in time \
                 (last: {last}); see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_configuration_carries_its_client_and_search_settings() {
        let text = scheduler_configuration(Path::new("/state/config/sched \"x\".kubeconfig"));
        let config: serde_json::Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(config["kind"], "KubeSchedulerConfiguration", "{text}");
        assert_eq!(
            config["clientConnection"]["kubeconfig"],
            "/state/config/sched \"x\".kubeconfig"
        );
        assert_eq!(config["clientConnection"]["qps"], 200);
        assert_eq!(config["leaderElection"]["leaderElect"], false);
        assert_eq!(config["percentageOfNodesToScore"], 5);
        let spread = &config["profiles"][0]["pluginConfig"][0];
        assert_eq!(config["profiles"][0]["schedulerName"], "default-scheduler");
        assert_eq!(spread["name"], "PodTopologySpread");
        assert_eq!(spread["args"]["defaultingType"], "List");
        assert_eq!(
            spread["args"]["defaultConstraints"],
            serde_json::json!([{
                "maxSkew": 3,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
            }])
        );
    }

    #[test]
    fn the_node_monitor_grace_outlasts_several_lease_renewals() {
        assert_eq!(node_monitor_grace_seconds(NODE_LEASE_SECONDS), 300);
        assert_eq!(node_monitor_grace_seconds(1200), 1800);
        // kwok renews a quarter of the lease after the last renewal: the grace spans at
        // least four renewals, for every lease `testbed up` accepts.
        for lease in [40, 160, 600, 1200, 3600, 86400] {
            assert!(node_monitor_grace_seconds(lease) >= lease);
        }
    }
}
