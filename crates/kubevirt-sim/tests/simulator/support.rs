//! Helpers of the simulator's integration tests, on top of the testbed's [`TestEnv`] (the
//! cluster with the simulator, a namespace and a node set of the test's own): VMIs, their
//! migrations and pods, and watch-based waits.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kubevirt_api::labels::{APP_LABEL, CREATED_BY_LABEL, VIRT_LAUNCHER};
use kubevirt_api::{
    MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationSpec, VmiPhase,
};
use serde_json::{Value, json};
use testbed::{NodeTemplate, TestEnv, wait_until};

pub const TIMEOUT: Duration = Duration::from_secs(90);

/// Held by tests that change the shared KubeVirt CR or depend on its default configuration
/// (tests of one binary run in parallel against one cluster).
pub static KUBEVIRT_CR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's [`TestEnv`] with the simulator tests' helpers.
pub struct Env(TestEnv);

impl Deref for Env {
    type Target = TestEnv;

    fn deref(&self) -> &TestEnv {
        &self.0
    }
}

impl Env {
    /// A namespace and `nodes` nodes of its own. The client does not retry 429 answers:
    /// these tests want to see them, as kubectl and vacate do.
    pub async fn new(prefix: &str, nodes: usize) -> Result<Env> {
        let env = TestEnv::new(prefix, nodes, NodeTemplate::default()).await?;
        Ok(Env(env.without_retries()))
    }

    pub fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    pub fn migrations(&self) -> Api<VirtualMachineInstanceMigration> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    /// A VMI as users write them (see [`TestEnv::vmi_spec`]) that stops without a grace
    /// period. `customize` edits the JSON.
    pub fn vmi(
        &self,
        name: &str,
        memory: &str,
        strategy: Option<&str>,
        customize: impl FnOnce(&mut Value),
    ) -> VirtualMachineInstance {
        let mut spec = self.vmi_spec(memory, strategy);
        spec["terminationGracePeriodSeconds"] = json!(0);
        let mut v = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {
                "name": name,
                "namespace": self.ns.name(),
                "labels": {"app": name},
                // kwok removes terminating pods after this delay instead of the grace period.
                "annotations": {"testbed.vacate.io/termination-delay": "1s"}
            },
            "spec": spec
        });
        customize(&mut v);
        serde_json::from_value(v).expect("a valid VMI")
    }

    pub async fn create_vmi(&self, vmi: &VirtualMachineInstance) -> Result<VirtualMachineInstance> {
        Ok(self.vmis().create(&PostParams::default(), vmi).await?)
    }

    /// Waits until the VMI satisfies `done`.
    pub async fn wait_vmi(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&VirtualMachineInstance) -> bool,
    ) -> Result<VirtualMachineInstance> {
        let found = wait_until(
            &format!("VMI {name}: {what}"),
            TIMEOUT,
            self.vmis(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            |v: &[VirtualMachineInstance]| v.first().is_some_and(&done),
            |v| format!("{:?}", v.first().and_then(|v| v.status.clone())),
        )
        .await?;
        found.into_iter().next().context("the VMI vanished")
    }

    pub async fn wait_running(&self, name: &str) -> Result<VirtualMachineInstance> {
        self.wait_vmi(name, "Running", |v| v.phase() == Some(VmiPhase::Running))
            .await
    }

    /// Creates VMIs and waits until all run.
    pub async fn start_vmis(
        &self,
        vmis: &[VirtualMachineInstance],
    ) -> Result<Vec<VirtualMachineInstance>> {
        for vmi in vmis {
            self.create_vmi(vmi).await?;
        }
        let mut running = Vec::new();
        for vmi in vmis {
            running.push(
                self.wait_running(vmi.metadata.name.as_deref().unwrap_or_default())
                    .await?,
            );
        }
        Ok(running)
    }

    /// Creates `count` LiveMigrate VMIs `vm0`, `vm1`, … of `memory` on node `target` of the
    /// set, and waits until all run there.
    pub async fn live_migratable_vmis_on(
        &self,
        target: usize,
        count: usize,
        memory: &str,
    ) -> Result<Vec<VirtualMachineInstance>> {
        let vmis: Vec<_> = (0..count)
            .map(|i| self.vmi(&format!("vm{i}"), memory, Some("LiveMigrate"), |_| {}))
            .collect();
        let running = self.place_on(target, || self.start_vmis(&vmis)).await?;
        let node = self.node(target);
        ensure!(
            running.iter().all(|v| v.node_name() == Some(node)),
            "not every VMI runs on {node}"
        );
        Ok(running)
    }

    /// A migration of `vmi` (created through the webhooks).
    pub async fn migrate(&self, vmi: &str) -> Result<VirtualMachineInstanceMigration, kube::Error> {
        let mut m = VirtualMachineInstanceMigration::new(
            "",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: vmi.into(),
                ..Default::default()
            },
        );
        m.metadata.name = None;
        m.metadata.generate_name = Some(format!("{vmi}-migration-"));
        self.migrations().create(&PostParams::default(), &m).await
    }

    pub async fn wait_migration(
        &self,
        name: &str,
        what: &str,
        done: impl Fn(&VirtualMachineInstanceMigration) -> bool,
    ) -> Result<VirtualMachineInstanceMigration> {
        let found = wait_until(
            &format!("migration {name}: {what}"),
            TIMEOUT,
            self.migrations(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            |m: &[VirtualMachineInstanceMigration]| m.first().is_some_and(&done),
            |m| format!("{:?}", m.first().and_then(|m| m.status.clone())),
        )
        .await?;
        found.into_iter().next().context("the migration vanished")
    }

    pub async fn wait_migration_phase(
        &self,
        name: &str,
        phase: MigrationPhase,
    ) -> Result<VirtualMachineInstanceMigration> {
        self.wait_migration(name, phase.as_str(), |m| m.phase() == Some(phase))
            .await
    }

    /// The virt-launcher pods of a VMI.
    pub async fn launcher_pods(&self, vmi: &VirtualMachineInstance) -> Result<Vec<Pod>> {
        let uid = vmi.metadata.uid.clone().unwrap_or_default();
        let selector = format!("{APP_LABEL}={VIRT_LAUNCHER},{CREATED_BY_LABEL}={uid}");
        Ok(self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }

    /// A PVC bound to a PV of its own (no provisioner runs in the testbed; the PV controller
    /// of kube-controller-manager binds the pair).
    pub async fn bound_pvc(&self, name: &str, access_mode: &str) -> Result<()> {
        let ns = self.ns.name();
        let pv_name = format!("{ns}-{name}");
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": pv_name, "labels": {"testbed.vacate.io/namespace": ns}},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": [access_mode],
                "storageClassName": "manual",
                "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": format!("/var/lib/testbed/{pv_name}")},
                "claimRef": {"namespace": ns, "name": name}
            }
        }))?;
        Api::<PersistentVolume>::all(self.client.clone())
            .create(&PostParams::default(), &pv)
            .await?;
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "accessModes": [access_mode],
                "storageClassName": "manual",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "10Gi"}}
            }
        }))?;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        pvcs.create(&PostParams::default(), &pvc).await?;
        wait_until(
            &format!("PVC {name} to be Bound"),
            TIMEOUT,
            pvcs,
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            |p: &[PersistentVolumeClaim]| {
                p.first()
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.phase.as_deref())
                    == Some("Bound")
            },
            |p| format!("{:?}", p.first().and_then(|p| p.status.clone())),
        )
        .await?;
        Ok(())
    }
}

/// The message of an API error (e.g. an admission denial).
pub fn api_error(e: &kube::Error) -> Option<(u16, String)> {
    match e {
        kube::Error::Api(s) => Some((s.code, s.message.clone())),
        _ => None,
    }
}

/// Fails unless `r` is an API error with `code` whose message contains `needle`.
pub fn expect_denied<T: std::fmt::Debug>(
    r: Result<T, kube::Error>,
    code: u16,
    needle: &str,
) -> Result<()> {
    match r {
        Ok(v) => bail!("expected a denial containing {needle:?}, got {v:?}"),
        Err(e) => match api_error(&e) {
            Some((c, msg)) if c == code && msg.contains(needle) => Ok(()),
            _ => bail!("expected HTTP {code} containing {needle:?}, got: {e}"),
        },
    }
}

/// The LiveMigratable condition as (status, reason).
pub fn live_migratable(vmi: &VirtualMachineInstance) -> Option<(bool, String)> {
    vmi.live_migratable().map(|m| (m.migratable, m.reason))
}

pub fn labels(v: &VirtualMachineInstance) -> BTreeMap<String, String> {
    v.metadata.labels.clone().unwrap_or_default()
}
