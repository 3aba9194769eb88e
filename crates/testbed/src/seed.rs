//! Loading a [`Scenario`] into a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::nodes::{self, NodeTemplate, SET_LABEL};
use crate::scenario::{
    Binding, IntOrPercent, PodTemplateSpec, Scenario, TaintSpec, VmGroup, VmKind,
};
use crate::wait::{self, WaitError};

/// Label on every object a seed creates; value: the seed id (prefix, or `default`).
pub const SEED_LABEL: &str = "testbed.vacate.io/seed";
/// Container image of plain workload pods (never pulled: kwok runs no containers).
pub const POD_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// How to load a scenario.
#[derive(Clone, Debug, Default)]
pub struct SeedOptions {
    /// Prefixes node names (`<prefix>-<node>`) and namespaces (`<prefix>-<ns>`), labels the
    /// nodes `testbed.vacate.io/set=<prefix>` and keeps every workload on them with a
    /// nodeSelector, so several seeds can share one cluster.
    pub prefix: Option<String>,
    /// Put every namespaced object into this namespace instead (it must exist or is created).
    pub namespace: Option<String>,
    /// Wait until nodes are Ready, workloads available and VMIs Running.
    pub wait: bool,
    /// Limit for that wait (default 5 minutes).
    pub wait_timeout: Option<Duration>,
}

/// What a seed created.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub nodes: Vec<String>,
    pub namespaces: Vec<String>,
    /// (namespace, name) of every VirtualMachine / VirtualMachineInstance.
    pub vms: Vec<(String, String)>,
    pub objects: usize,
    pub created_in: Duration,
    /// When the nodes were all Ready (with [`SeedOptions::wait`]).
    pub nodes_ready_in: Option<Duration>,
    /// When everything was ready (with [`SeedOptions::wait`]).
    pub ready_in: Option<Duration>,
}

/// The kubevirt.io/v1 resources the testbed creates.
pub fn kubevirt_resource(kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubevirt.io", "v1", kind), &plural)
}

struct Naming<'a> {
    prefix: Option<&'a str>,
    namespace: Option<&'a str>,
}

impl Naming<'_> {
    fn node(&self, name: &str) -> String {
        match self.prefix {
            Some(p) => format!("{p}-{name}"),
            None => name.to_string(),
        }
    }
    fn namespace(&self, ns: Option<&str>) -> String {
        if let Some(ns) = self.namespace {
            return ns.to_string();
        }
        let ns = ns.unwrap_or("default");
        match self.prefix {
            Some(p) => format!("{p}-{ns}"),
            None => ns.to_string(),
        }
    }
    fn seed_id(&self) -> String {
        self.prefix.unwrap_or("default").to_string()
    }
    fn node_selector(&self, own: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut sel = own.clone();
        if let Some(p) = self.prefix {
            sel.insert(SET_LABEL.to_string(), p.to_string());
        }
        sel
    }
}

/// Creates everything the scenario describes.
pub async fn seed(
    client: &kube::Client,
    scenario: &Scenario,
    opts: &SeedOptions,
) -> Result<SeedReport> {
    let started = Instant::now();
    let naming = Naming {
        prefix: opts.prefix.as_deref(),
        namespace: opts.namespace.as_deref(),
    };
    let seed_id = naming.seed_id();
    let mut report = SeedReport::default();

    if !scenario.vms.is_empty() {
        ensure_kubevirt(client).await?;
    }

    // Namespaces.
    let mut namespaces = BTreeSet::new();
    for ns in scenario
        .vms
        .iter()
        .map(|v| v.namespace.as_deref())
        .chain(scenario.deployments.iter().map(|d| d.namespace.as_deref()))
        .chain(scenario.daemon_sets.iter().map(|d| d.namespace.as_deref()))
        .chain(scenario.pods.iter().map(|p| p.namespace.as_deref()))
    {
        namespaces.insert(naming.namespace(ns));
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        if ns_api.get_opt(ns).await?.is_none() {
            let obj: Namespace = serde_json::from_value(json!({
                "metadata": {"name": ns, "labels": {SEED_LABEL: seed_id}}
            }))?;
            match ns_api.create(&PostParams::default(), &obj).await {
                Ok(_) => report.objects += 1,
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating namespace {ns}")),
            }
        }
    }
    report.namespaces = namespaces.iter().cloned().collect();

    // Nodes.
    let mut node_objs = Vec::new();
    for g in &scenario.nodes {
        let mut template = NodeTemplate {
            labels: g.labels.clone(),
            cpu: g.capacity.cpu.clone(),
            memory: g.capacity.memory.clone(),
            pods: g.capacity.pods.clone(),
            extra_capacity: g.capacity.extra.clone(),
            taints: g.taints.iter().map(taint).collect::<Result<_>>()?,
            images: g.images,
            ..NodeTemplate::default()
        };
        if let Some(v) = &g.kubelet_version {
            template.kubelet_version = v.clone();
        }
        template.labels.insert(SEED_LABEL.into(), seed_id.clone());
        if !scenario.vms.is_empty() {
            // Seeded as if virt-handler already ran on them: the simulator labels every node
            // it sees, but a VM created before that label is there would be placed on
            // another node than its `preferNode`.
            template
                .labels
                .insert("kubevirt.io/schedulable".into(), "true".into());
        }
        if let Some(p) = naming.prefix {
            template.labels.insert(SET_LABEL.into(), p.to_string());
        }
        let pool = g.pool.clone().unwrap_or_else(|| g.name_prefix.clone());
        for i in 0..g.count {
            let name = naming.node(&format!("{}-{i}", g.name_prefix));
            node_objs.push(template.node(&name, &pool)?);
        }
    }
    report.nodes = nodes::create_nodes(client, node_objs, 64).await?;
    report.objects += report.nodes.len();
    // Workloads arrive on a fleet that is up. Pods created while most nodes are starting
    // (kwok makes them Ready one by one, then the node controller lifts their not-ready
    // taint) would all go to the first few, each up to its pod limit.
    let schedules = !scenario.vms.is_empty()
        || !scenario.deployments.is_empty()
        || !scenario.daemon_sets.is_empty()
        || !scenario.pods.is_empty();
    if schedules && !report.nodes.is_empty() {
        let timeout = opts.wait_timeout.unwrap_or(Duration::from_secs(300));
        wait_nodes_schedulable(client, &report.nodes, &naming, timeout).await?;
        report.nodes_ready_in = Some(started.elapsed());
    }

    // Storage first (so that the PV controller has bound the claims before a VM's pod is
    // scheduled), then everything else; each batch created concurrently.
    let mut storage: Vec<Create> = Vec::new();
    let mut creates: Vec<Create> = Vec::new();
    for g in &scenario.vms {
        let ns = naming.namespace(g.namespace.as_deref());
        for i in 0..g.count {
            let name = format!("{}-{i}", g.name_prefix);
            for v in &g.volumes {
                if let Some(pvc) = &v.pvc {
                    let claim = pvc
                        .claim_name
                        .clone()
                        .unwrap_or_else(|| format!("{name}-{}", v.name));
                    let modes: Vec<&str> = pvc.access_modes.iter().map(|m| m.as_str()).collect();
                    let pv_name = format!("{ns}-{claim}");
                    storage.push(Create::Pvc(
                        ns.clone(),
                        serde_json::from_value(json!({
                            "metadata": {"name": claim, "namespace": ns,
                                         "labels": {SEED_LABEL: seed_id}},
                            "spec": {
                                "accessModes": modes,
                                "resources": {"requests": {"storage": pvc.size}},
                                "storageClassName": "",
                                "volumeName": pv_name,
                            }
                        }))?,
                    ));
                    storage.push(Create::Pv(serde_json::from_value(json!({
                        "metadata": {"name": pv_name,
                                     "labels": {SEED_LABEL: seed_id,
                                                "testbed.vacate.io/namespace": ns}},
                        "spec": {
                            "capacity": {"storage": pvc.size},
                            "accessModes": modes,
                            "persistentVolumeReclaimPolicy": "Retain",
                            "storageClassName": "",
                            "claimRef": {"namespace": ns, "name": claim},
                            "hostPath": {"path": format!("/var/lib/testbed/{pv_name}")},
                        }
                    }))?));
                }
            }
            let vm = vm_object(g, &name, &ns, &naming, &seed_id);
            report.vms.push((ns.clone(), name));
            creates.push(Create::Vm(ns.clone(), g.kind, vm));
        }
    }
    for d in &scenario.deployments {
        let ns = naming.namespace(d.namespace.as_deref());
        let labels = app_labels(&d.name, &d.pod.labels, &seed_id);
        let mut pod = pod_spec(&d.pod, &naming, None);
        if let Some(n) = &d.prefer_node {
            pod["affinity"] = prefer_node(&naming.node(n));
        }
        let dep: Deployment = serde_json::from_value(json!({
            "metadata": {"name": d.name, "namespace": ns, "labels": {SEED_LABEL: seed_id}},
            "spec": {
                "replicas": d.replicas,
                "selector": {"matchLabels": {"app": d.name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod,
                }
            }
        }))?;
        creates.push(Create::Deployment(ns.clone(), Box::new(dep)));
        if let Some(pdb) = &d.pdb {
            let mut spec = json!({"selector": {"matchLabels": {"app": d.name}}});
            if let Some(v) = &pdb.min_available {
                spec["minAvailable"] = int_or_percent(v);
            }
            if let Some(v) = &pdb.max_unavailable {
                spec["maxUnavailable"] = int_or_percent(v);
            }
            creates.push(Create::Pdb(
                ns.clone(),
                serde_json::from_value(json!({
                    "metadata": {"name": d.name, "namespace": ns,
                                 "labels": {SEED_LABEL: seed_id}},
                    "spec": spec,
                }))?,
            ));
        }
    }
    for d in &scenario.daemon_sets {
        let ns = naming.namespace(d.namespace.as_deref());
        let labels = app_labels(&d.name, &d.pod.labels, &seed_id);
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": d.name, "namespace": ns, "labels": {SEED_LABEL: seed_id}},
            "spec": {
                "selector": {"matchLabels": {"app": d.name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod_spec(&d.pod, &naming, None),
                }
            }
        }))?;
        creates.push(Create::DaemonSet(ns, Box::new(ds)));
    }
    for p in &scenario.pods {
        let ns = naming.namespace(p.namespace.as_deref());
        for i in 0..p.count {
            let name = format!("{}-{i}", p.name_prefix);
            let labels = app_labels(&p.name_prefix, &p.pod.labels, &seed_id);
            let node = p.node_name.as_deref().map(|n| naming.node(n));
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": pod_spec(&p.pod, &naming, node.as_deref()),
            }))?;
            creates.push(Create::Pod(ns.clone(), Box::new(pod)));
        }
    }
    // PVs before their claims: the PV controller then binds a claim as soon as it sees
    // it, instead of at its next periodic sync.
    let (volumes, claims): (Vec<Create>, Vec<Create>) = storage
        .into_iter()
        .partition(|c| matches!(c, Create::Pv(..)));
    let claim_count = claims.len();
    for (i, batch) in [volumes, claims, creates].into_iter().enumerate() {
        report.objects += batch.len();
        futures::stream::iter(batch.into_iter().map(|c| c.run(client.clone())))
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await?;
        if i == 1 && claim_count > 0 {
            wait_claims_bound(client, &seed_id, claim_count).await?;
        }
    }
    report.created_in = started.elapsed();

    if opts.wait {
        let timeout = opts.wait_timeout.unwrap_or(Duration::from_secs(300));
        wait_seeded(client, scenario, &naming, &mut report, timeout, started).await?;
        report.ready_in = Some(started.elapsed());
    }
    Ok(report)
}

enum Create {
    Pvc(String, Box<PersistentVolumeClaim>),
    Pv(Box<PersistentVolume>),
    Vm(String, VmKind, Value),
    Deployment(String, Box<Deployment>),
    Pdb(String, Box<PodDisruptionBudget>),
    DaemonSet(String, Box<DaemonSet>),
    Pod(String, Box<Pod>),
}

impl Create {
    async fn run(self, client: kube::Client) -> Result<()> {
        let pp = PostParams::default();
        match self {
            Create::Pvc(ns, o) => create(Api::namespaced(client, &ns), &pp, *o, "PVC").await,
            Create::Pv(o) => create(Api::all(client), &pp, *o, "PersistentVolume").await,
            Create::Deployment(ns, o) => {
                create(Api::namespaced(client, &ns), &pp, *o, "Deployment").await
            }
            Create::Pdb(ns, o) => {
                create(Api::namespaced(client, &ns), &pp, *o, "PodDisruptionBudget").await
            }
            Create::DaemonSet(ns, o) => {
                create(Api::namespaced(client, &ns), &pp, *o, "DaemonSet").await
            }
            Create::Pod(ns, o) => create(Api::namespaced(client, &ns), &pp, *o, "Pod").await,
            Create::Vm(ns, kind, value) => {
                let kind = match kind {
                    VmKind::VirtualMachine => "VirtualMachine",
                    VmKind::VirtualMachineInstance => "VirtualMachineInstance",
                };
                let ar = kubevirt_resource(kind);
                let obj: DynamicObject = serde_json::from_value(value)?;
                let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &ar);
                create(api, &pp, obj, kind).await
            }
        }
    }
}

async fn create<K>(api: Api<K>, pp: &PostParams, obj: K, what: &str) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = format!(
        "{}/{}",
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default()
    );
    api.create(pp, &obj)
        .await
        .with_context(|| format!("creating {what} {name}"))?;
    Ok(())
}

async fn ensure_kubevirt(client: &kube::Client) -> Result<()> {
    let api: Api<DynamicObject> =
        Api::all_with(client.clone(), &kubevirt_resource("VirtualMachineInstance"));
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => bail!(
            "the scenario has VMs but the cluster does not serve kubevirt.io/v1 \
             (the KubeVirt simulator installs it): start the testbed without --no-kubevirt \
             (after `cargo build -p kubevirt-sim`)"
        ),
        Err(e) => Err(e).context("checking that kubevirt.io/v1 is served"),
    }
}

fn taint(t: &TaintSpec) -> Result<k8s_openapi::api::core::v1::Taint> {
    Ok(k8s_openapi::api::core::v1::Taint {
        key: t.key.clone(),
        value: t.value.clone(),
        effect: t.effect.as_str().to_string(),
        time_added: None,
    })
}

fn int_or_percent(v: &IntOrPercent) -> Value {
    match v {
        IntOrPercent::Int(n) => json!(n),
        IntOrPercent::Percent(s) => json!(s),
    }
}

fn app_labels(
    app: &str,
    extra: &BTreeMap<String, String>,
    seed_id: &str,
) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    labels.insert("app".into(), app.into());
    labels.insert(SEED_LABEL.into(), seed_id.into());
    labels
}

fn pod_spec(p: &PodTemplateSpec, naming: &Naming<'_>, node_name: Option<&str>) -> Value {
    let mut container = json!({
        "name": "app",
        "image": POD_IMAGE,
        "resources": {"requests": {"cpu": p.cpu, "memory": p.memory}},
    });
    let mut spec = json!({
        "containers": [],
        "terminationGracePeriodSeconds": p.termination_grace_period_seconds,
        "nodeSelector": naming.node_selector(&p.node_selector),
    });
    if p.empty_dir {
        container["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch"}]);
        spec["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    }
    spec["containers"] = json!([container]);
    if let Some(n) = node_name {
        spec["nodeName"] = json!(n);
    }
    spec
}

/// A preferred node affinity for one node (start there, go anywhere else when it is cordoned).
fn prefer_node(node: &str) -> Value {
    json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100,
        "preference": {"matchExpressions": [{
            "key": "kubernetes.io/hostname", "operator": "In", "values": [node]
        }]}
    }]}})
}

fn vm_object(g: &VmGroup, name: &str, ns: &str, naming: &Naming<'_>, seed_id: &str) -> Value {
    let mut labels = g.labels.clone();
    labels.insert(SEED_LABEL.into(), seed_id.into());
    labels.insert("kubevirt.io/vm".into(), name.into());

    let mut disks = Vec::new();
    let mut volumes = Vec::new();
    if g.volumes.is_empty() {
        disks.push(json!({"name": "rootdisk", "disk": {"bus": "virtio"}}));
        volumes.push(json!({"name": "rootdisk",
                            "containerDisk": {"image": "quay.io/containerdisks/fedora:latest"}}));
    }
    for v in &g.volumes {
        disks.push(json!({"name": v.name, "disk": {"bus": "virtio"}}));
        if let Some(pvc) = &v.pvc {
            let claim = pvc
                .claim_name
                .clone()
                .unwrap_or_else(|| format!("{name}-{}", v.name));
            volumes.push(json!({"name": v.name, "persistentVolumeClaim": {"claimName": claim}}));
        } else if let Some(c) = &v.container_disk {
            volumes.push(json!({"name": v.name, "containerDisk": {"image": c.image}}));
        } else if let Some(e) = &v.empty_disk {
            volumes.push(json!({"name": v.name, "emptyDisk": {"capacity": e.capacity}}));
        }
    }
    let default_ifaces = [crate::scenario::InterfaceSpec {
        name: "default".into(),
        binding: Binding::Masquerade,
        multus_network: None,
    }];
    let ifaces = g.interfaces.as_deref().unwrap_or(&default_ifaces);
    let interfaces: Vec<Value> = ifaces
        .iter()
        .map(|i| match i.binding {
            Binding::Masquerade => json!({"name": i.name, "masquerade": {}}),
            Binding::Bridge => json!({"name": i.name, "bridge": {}}),
            Binding::Sriov => json!({"name": i.name, "sriov": {}}),
        })
        .collect();
    let networks: Vec<Value> = ifaces
        .iter()
        .map(|i| match &i.multus_network {
            None => json!({"name": i.name, "pod": {}}),
            Some(net) => json!({"name": i.name, "multus": {"networkName": net}}),
        })
        .collect();
    let host_devices: Vec<Value> = g
        .host_devices
        .iter()
        .map(|h| json!({"name": h.name, "deviceName": h.device_name}))
        .collect();

    let mut devices = json!({"disks": disks, "interfaces": interfaces});
    if !host_devices.is_empty() {
        devices["hostDevices"] = json!(host_devices);
    }
    let mut spec = json!({
        "domain": {
            "cpu": {"cores": g.cpu},
            "memory": {"guest": g.memory},
            "resources": {"requests": {"memory": g.memory}},
            "devices": devices,
        },
        "networks": networks,
        "volumes": volumes,
    });
    if let Some(e) = g.eviction_strategy {
        spec["evictionStrategy"] = json!(e.as_str());
    }
    if let Some(t) = g.termination_grace_period_seconds {
        spec["terminationGracePeriodSeconds"] = json!(t);
    }
    let selector = naming.node_selector(&g.node_selector);
    if !selector.is_empty() {
        spec["nodeSelector"] = json!(selector);
    }
    if let Some(n) = &g.prefer_node {
        spec["affinity"] = prefer_node(&naming.node(n));
    }
    match g.kind {
        VmKind::VirtualMachine => json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "runStrategy": g.run_strategy.as_deref().unwrap_or("Always"),
                "template": {"metadata": {"labels": labels}, "spec": spec},
            }
        }),
        VmKind::VirtualMachineInstance => json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": spec,
        }),
    }
}

/// Waits until the seed's PVCs are Bound to their PVs (kube-controller-manager's PV
/// controller binds them), so that VM pods are schedulable at once.
async fn wait_claims_bound(client: &kube::Client, seed_id: &str, n: usize) -> Result<()> {
    let bound = |c: &PersistentVolumeClaim| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    };
    wait::wait_until(
        &format!("{n} seeded PersistentVolumeClaims to be Bound"),
        Duration::from_secs(60),
        Api::<PersistentVolumeClaim>::all(client.clone()),
        kube::runtime::watcher::Config::default().labels(&format!("{SEED_LABEL}={seed_id}")),
        |claims: &[PersistentVolumeClaim]| claims.iter().filter(|c| bound(c)).count() >= n,
        |claims| {
            let b = claims.iter().filter(|c| bound(c)).count();
            format!("{b} of {} Bound", claims.len())
        },
    )
    .await?;
    Ok(())
}

/// VMIs the scenario should have running once the simulator caught up.
fn expected_vmis(scenario: &Scenario) -> usize {
    scenario
        .vms
        .iter()
        .filter(|g| {
            g.kind == VmKind::VirtualMachineInstance
                || matches!(
                    g.run_strategy.as_deref().unwrap_or("Always"),
                    "Always" | "RerunOnFailure" | "Once"
                )
        })
        .map(|g| g.count as usize)
        .sum()
}

/// Waits until every node of `names` is Ready and free of the node controller's not-ready
/// and unreachable taints, so that the scheduler may place pods on it.
async fn wait_nodes_schedulable(
    client: &kube::Client,
    names: &[String],
    naming: &Naming<'_>,
    timeout: Duration,
) -> Result<()> {
    let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    if want.is_empty() {
        return Ok(());
    }
    let n = want.len();
    let seed_sel = format!("{SEED_LABEL}={}", naming.seed_id());
    wait::wait_until(
        &format!("{n} seeded nodes to be Ready"),
        timeout,
        Api::<Node>::all(client.clone()),
        kube::runtime::watcher::Config::default().labels(&seed_sel),
        |nodes: &[Node]| {
            nodes
                .iter()
                .filter(|node| {
                    want.contains(node.metadata.name.as_deref().unwrap_or_default())
                        && nodes::is_schedulable(node)
                })
                .count()
                == n
        },
        |nodes| {
            let ready = nodes.iter().filter(|n| nodes::is_schedulable(n)).count();
            format!("{ready} of {} Ready without a not-ready taint", nodes.len())
        },
    )
    .await?;
    Ok(())
}

async fn wait_seeded(
    client: &kube::Client,
    scenario: &Scenario,
    naming: &Naming<'_>,
    report: &mut SeedReport,
    timeout: Duration,
    started: Instant,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let seed_sel = format!("{SEED_LABEL}={}", naming.seed_id());

    // Nodes Ready.
    wait_nodes_schedulable(client, &report.nodes, naming, left()).await?;
    if report.nodes_ready_in.is_none() {
        report.nodes_ready_in = Some(started.elapsed());
    }

    // Workloads available.
    for d in &scenario.deployments {
        let ns = naming.namespace(d.namespace.as_deref());
        let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let want = d.replicas;
        wait::wait_for(
            &format!(
                "Deployment {ns}/{} to have {want} available replicas",
                d.name
            ),
            left(),
            || {
                let api = api.clone();
                let name = d.name.clone();
                async move {
                    let dep = api.get(&name).await?;
                    Ok(dep.status.and_then(|s| s.available_replicas).unwrap_or(0) >= want)
                }
            },
        )
        .await
        .map_err(anyhow::Error::from)?;
    }
    for d in &scenario.daemon_sets {
        let ns = naming.namespace(d.namespace.as_deref());
        let api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
        wait::wait_for(
            &format!("DaemonSet {ns}/{} to be available on its nodes", d.name),
            left(),
            || {
                let api = api.clone();
                let name = d.name.clone();
                async move {
                    let ds = api.get(&name).await?;
                    let s = ds.status.unwrap_or_default();
                    Ok(s.desired_number_scheduled > 0
                        && s.number_available.unwrap_or(0) >= s.desired_number_scheduled)
                }
            },
        )
        .await
        .map_err(anyhow::Error::from)?;
    }
    let mut pod_namespaces = BTreeMap::<String, usize>::new();
    for p in &scenario.pods {
        *pod_namespaces
            .entry(naming.namespace(p.namespace.as_deref()))
            .or_default() += p.count as usize;
    }
    for (ns, want) in pod_namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let bare = format!("{seed_sel},!pod-template-hash,!controller-revision-hash");
        wait::wait_until(
            &format!("{want} seeded bare pods in {ns} to be Running"),
            left(),
            api,
            kube::runtime::watcher::Config::default().labels(&bare),
            |pods: &[Pod]| pods.iter().filter(|p| pod_running(p)).count() >= want,
            |pods| {
                let running = pods.iter().filter(|p| pod_running(p)).count();
                format!("{running} of {} Running", pods.len())
            },
        )
        .await?;
    }

    // VMIs Running.
    let want = expected_vmis(scenario);
    if want > 0 {
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &kubevirt_resource("VirtualMachineInstance"));
        let running = |o: &DynamicObject| o.data["status"]["phase"] == "Running";
        wait::wait_until(
            &format!("{want} seeded VMIs to be Running"),
            left(),
            api,
            kube::runtime::watcher::Config::default().labels(&seed_sel),
            |vmis: &[DynamicObject]| vmis.iter().filter(|v| running(v)).count() >= want,
            |vmis| {
                let r = vmis.iter().filter(|v| running(v)).count();
                format!("{r} of {} Running", vmis.len())
            },
        )
        .await
        .map_err(|e: WaitError| anyhow::Error::from(e))?;
    }
    Ok(())
}

/// Whether a pod is Running (phase) and not being deleted.
pub fn pod_running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}
