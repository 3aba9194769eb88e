//! What virt-operator installs, reduced to what the simulator needs: the CRDs
//! (`pkg/virt-operator/resource/generate/components/crds.go`), the `kubevirt` namespace with a
//! KubeVirt CR, and the webhook configurations of virt-api
//! (`pkg/virt-operator/resource/generate/components/webhooks.go`) pointing at the simulator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubevirt_api::labels::{KUBEVIRT_NAME, KUBEVIRT_NAMESPACE};
use kubevirt_api::{KubeVirt, KubeVirtSpec, KubeVirtStatus};
use serde_json::json;

use crate::error::{Error, Result, kube_conflict};
use crate::settings::{KUBEVIRT_RELEASE_ANNOTATION, KubeVirtRelease};

const FIELD_MANAGER: &str = "kubevirt-sim";

/// Webhook paths served by [`crate::webhooks`].
pub mod paths {
    pub const MIGRATION_CREATE_VALIDATE: &str = "/migration-validate-create";
    pub const MIGRATION_CREATE_MUTATE: &str = "/migration-mutate-create";
    pub const POD_EVICTION_VALIDATE: &str = "/launcher-eviction-validate";
    pub const READYZ: &str = "/readyz";
}

/// KubeVirt's webhook configuration names.
pub const VALIDATING_CONFIGURATION: &str = "virt-api-validator";
pub const MUTATING_CONFIGURATION: &str = "virt-api-mutator";

/// Creates or updates the four CRDs and waits until the API server serves them.
pub async fn install_crds(client: &kube::Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in kubevirt_api::crds() {
        let name = crd
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?;
        api.patch(&name, &params, &Patch::Apply(&crd)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for crd in kubevirt_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let current = api.get(&name).await?;
            let established = current
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("CRD {name} to be Established")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The discovery cache of the API server may still lag a moment; a list proves the
    // resources are served.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let vmis: Api<kubevirt_api::VirtualMachineInstance> = Api::all(client.clone());
        match vmis.list(&Default::default()).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Ensures namespace `kubevirt` and the KubeVirt CR `kubevirt/kubevirt` exist, with the
/// status a deployed KubeVirt reports. An existing CR (e.g. configured by a test) is kept.
pub async fn ensure_kubevirt(client: &kube::Client, release: KubeVirtRelease) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": KUBEVIRT_NAMESPACE}}))?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(e) if kube_conflict(&e) => {}
        Err(e) => return Err(e.into()),
    }
    let api: Api<KubeVirt> = Api::namespaced(client.clone(), KUBEVIRT_NAMESPACE);
    let existing = api.get_opt(KUBEVIRT_NAME).await?;
    // The release this simulator follows: the CR's annotation, else the command line.
    let release = existing
        .as_ref()
        .and_then(|kv| kv.metadata.annotations.as_ref())
        .and_then(|a| a.get(KUBEVIRT_RELEASE_ANNOTATION))
        .and_then(|v| KubeVirtRelease::parse(v))
        .unwrap_or(release);
    if existing.is_none() {
        // A default install: no configuration, so KubeVirt's defaults apply (5 parallel
        // migrations per cluster, 2 outbound per node, unlimited bandwidth, no cluster-wide
        // eviction strategy).
        let mut kv = KubeVirt::new(KUBEVIRT_NAME, KubeVirtSpec::default());
        kv.metadata.namespace = Some(KUBEVIRT_NAMESPACE.into());
        match api.create(&PostParams::default(), &kv).await {
            Ok(_) => {}
            Err(e) if kube_conflict(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let status = KubeVirtStatus {
        phase: Some("Deployed".into()),
        conditions: vec![kubevirt_api::common::Condition::new(
            "Available",
            kubevirt_api::ConditionStatus::True,
            "AllComponentsReady",
            "All components are ready.",
        )],
        observed_kube_virt_version: Some(release.version().into()),
        target_kube_virt_version: Some(release.version().into()),
    };
    api.patch_status(
        KUBEVIRT_NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// Registers the validating and mutating webhooks, pointing at `https://<listen>/...`.
pub async fn register_webhooks(
    client: &kube::Client,
    listen: SocketAddr,
    ca_pem: &str,
) -> Result<()> {
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let url = |path: &str| format!("https://{listen}{path}");
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_CONFIGURATION, "labels": {"kubevirt.io": "virt-api-validator"}},
        "webhooks": [
            {
                // KubeVirt: "migration-create-validator.kubevirt.io", failurePolicy Fail.
                "name": "migration-create-validator.kubevirt.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "clientConfig": {"url": url(paths::MIGRATION_CREATE_VALIDATE), "caBundle": ca_bundle},
                "rules": [{
                    "operations": ["CREATE"],
                    "apiGroups": ["kubevirt.io"],
                    "apiVersions": ["v1"],
                    "resources": ["virtualmachineinstancemigrations"],
                    "scope": "Namespaced"
                }]
            },
            {
                // KubeVirt: "virt-launcher-eviction-interceptor.kubevirt.io" on pods/eviction,
                // for pods named virt-launcher-* only, failurePolicy Fail: while virt-api is
                // down the API server refuses a virt-launcher eviction (500, "failed calling
                // webhook") and lets every other eviction through (webhooks.go,
                // `NewVirtAPIValidatingWebhookConfiguration`, v1.7.4 and v1.9.0).
                "name": "virt-launcher-eviction-interceptor.kubevirt.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "clientConfig": {"url": url(paths::POD_EVICTION_VALIDATE), "caBundle": ca_bundle},
                "rules": [{
                    "operations": ["*"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods/eviction"],
                    "scope": "Namespaced"
                }],
                "matchConditions": [{
                    "name": "only-vms",
                    "expression": "object.metadata.name.startsWith(\"virt-launcher\")"
                }]
            }
        ]
    }))?;
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_CONFIGURATION, "labels": {"kubevirt.io": "virt-api-mutator"}},
        "webhooks": [{
            "name": "migrations-mutator.kubevirt.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 10,
            "clientConfig": {"url": url(paths::MIGRATION_CREATE_MUTATE), "caBundle": ca_bundle},
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": ["kubevirt.io"],
                "apiVersions": ["v1"],
                "resources": ["virtualmachineinstancemigrations"],
                "scope": "Namespaced"
            }]
        }]
    }))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    v.patch(
        VALIDATING_CONFIGURATION,
        &params,
        &Patch::Apply(&validating),
    )
    .await?;
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    m.patch(MUTATING_CONFIGURATION, &params, &Patch::Apply(&mutating))
        .await?;
    Ok(())
}

/// Waits until the API server calls the webhooks: a dry-run migration for a VMI that does not
/// exist must be refused by the validating webhook (the API server picks up new webhook
/// configurations asynchronously).
pub async fn wait_for_webhooks(client: &kube::Client) -> Result<()> {
    let api: Api<kubevirt_api::VirtualMachineInstanceMigration> =
        Api::namespaced(client.clone(), KUBEVIRT_NAMESPACE);
    let mut probe = kubevirt_api::VirtualMachineInstanceMigration::new(
        "kubevirt-sim-webhook-probe",
        kubevirt_api::VirtualMachineInstanceMigrationSpec {
            vmi_name: "kubevirt-sim-webhook-probe-no-such-vmi".into(),
            ..Default::default()
        },
    );
    probe.metadata.namespace = Some(KUBEVIRT_NAMESPACE.into());
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match api.create(&params, &probe).await {
            Err(kube::Error::Api(s)) if s.message.contains("does not exist") => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(Error::Timeout("the webhooks to be called".into()));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
