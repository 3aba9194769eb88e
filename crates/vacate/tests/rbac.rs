//! vacate with the privileges that deploy/ gives it, and no others: the ServiceAccount,
//! ClusterRole, Role and bindings of deploy/rbac.yaml are applied to the testbed, vacate
//! authenticates with a token of that ServiceAccount, and the happy path must still drain
//! and uncordon the node. A permission missing from deploy/ shows up as a 403 (Forbidden) in
//! vacate's log and a drain that does not finish, and fails this test.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use support::*;
use testbed::test_support::unique_id;
use vacate::planner::{Phase, VmiOutcome};

/// The namespace of deploy/ (kustomization.yaml sets it on every namespaced object).
const NAMESPACE: &str = "vacate-system";
const SERVICE_ACCOUNT: &str = "vacate";
const FIELD_MANAGER: &str = "vacate-rbac-test";

fn deploy_dir() -> PathBuf {
    Path::new("../../deploy").to_path_buf()
}

fn documents(file: &str) -> Result<Vec<serde_json::Value>> {
    let path = deploy_dir().join(file);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)
            .with_context(|| format!("parsing {}", path.display()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Server-side applies `object` (namespaced objects into vacate-system).
async fn apply<K>(client: &Client, mut object: serde_json::Value) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    object["metadata"]["namespace"] = NAMESPACE.into();
    let object: K = serde_json::from_value(object)?;
    let api: Api<K> = Api::namespaced(client.clone(), NAMESPACE);
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {}", object.name_any()))?;
    Ok(())
}

async fn apply_cluster<K>(client: &Client, object: serde_json::Value) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(object)?;
    let api: Api<K> = Api::all(client.clone());
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying {}", object.name_any()))?;
    Ok(())
}

/// Applies deploy/namespace.yaml and deploy/rbac.yaml; returns the kinds applied. An
/// earlier run's namespace that is still terminating is waited out first.
async fn apply_deploy_rbac(env: &Env) -> Result<Vec<String>> {
    let client = &env.client;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    env.wait(
        "an earlier run's vacate-system namespace to be gone",
        Duration::from_secs(120),
        || async {
            Ok(namespaces
                .get_opt(NAMESPACE)
                .await?
                .is_none_or(|ns| ns.metadata.deletion_timestamp.is_none()))
        },
    )
    .await?;
    for doc in documents("namespace.yaml")? {
        ensure!(doc["metadata"]["name"] == NAMESPACE, "{doc}");
        apply_cluster::<Namespace>(client, doc).await?;
    }
    let mut kinds = Vec::new();
    for doc in documents("rbac.yaml")? {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "ServiceAccount" => apply::<ServiceAccount>(client, doc).await?,
            "Role" => apply::<Role>(client, doc).await?,
            "RoleBinding" => apply::<RoleBinding>(client, doc).await?,
            "ClusterRole" => apply_cluster::<ClusterRole>(client, doc).await?,
            "ClusterRoleBinding" => apply_cluster::<ClusterRoleBinding>(client, doc).await?,
            other => bail!("deploy/rbac.yaml has a {other}, which this test does not apply"),
        }
        kinds.push(kind);
    }
    kinds.sort();
    Ok(kinds)
}

/// What the API server answers for the kubeconfig's user: may it `verb` `resource`?
async fn may(client: &Client, verb: &str, resource: &str) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Deletes what [`apply_deploy_rbac`] created (the namespace takes the rest with it), so
/// that later users of the shared testbed, such as tests/artifacts/check.sh, start clean.
async fn remove_deploy_rbac(client: &Client) {
    let dp = DeleteParams::default();
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete("vacate", &dp)
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete("vacate", &dp)
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(NAMESPACE, &dp)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_as_the_deploy_service_account() -> Result<()> {
    let env = Env::new("rbac", 3).await?;
    let result = happy_path_as_service_account(&env).await;
    remove_deploy_rbac(&env.client).await;
    result
}

async fn happy_path_as_service_account(env: &Env) -> Result<()> {
    let kinds = apply_deploy_rbac(env).await?;
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount"
        ]
    );
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    env.service_account_kubeconfig(NAMESPACE, SERVICE_ACCOUNT, &kubeconfig)
        .await?;

    // The kubeconfig really is the ServiceAccount's, not an administrator's.
    let sa_client = testbed::kubeconfig::client_from(&kubeconfig).await?;
    ensure!(
        may(&sa_client, "patch", "nodes").await?,
        "the ServiceAccount may not patch nodes: deploy/rbac.yaml was not applied"
    );
    ensure!(
        !may(&sa_client, "list", "secrets").await?,
        "the kubeconfig may list secrets: it is not the vacate ServiceAccount's"
    );

    let node = env.node(0).to_string();
    env.busy_node(0, 4, 3, 2).await?;

    let lease_name = format!("vacate-rbac-{}", unique_id());
    let lease = Lease {
        namespace: NAMESPACE,
        name: &lease_name,
    };
    let vacate = env.vacate_with_kubeconfig(&kubeconfig, lease, FAST).await?;
    // A refused request fails the test at once rather than at the drain's timeout.
    let drained = tokio::select! {
        r = drain_and_end(env, &node) => r,
        _ = async {
            while refusals(&vacate.log()).is_empty() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        } => Err(anyhow::anyhow!("the drain was interrupted by a refused request")),
    };
    let log = vacate.log();
    // Some calls (Events, for one) do not stop a drain when refused; none may be refused.
    let refused = refusals(&log);
    ensure!(
        refused.is_empty(),
        "the API server refused vacate's requests (a permission missing from deploy/rbac.yaml):\n{}\n\nvacate's log:\n{log}",
        refused.join("\n")
    );
    drained.map_err(|e| {
        anyhow::anyhow!("{e:#}\n\nvacate's log (as the deploy/ ServiceAccount):\n{log}")
    })
}

/// The log lines of requests the API server refused (403 Forbidden).
fn refusals(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .collect()
}

async fn drain_and_end(env: &Env, node: &str) -> Result<()> {
    env.request(node, Some("true")).await?;
    let state = env
        .wait_phase(node, Phase::Drained, Duration::from_secs(120))
        .await?;
    ensure!(
        state.vmis.len() == 4
            && state
                .vmis
                .values()
                .all(|r| r.outcome == VmiOutcome::Migrated),
        "not every VMI migrated: {state:#?}"
    );
    ensure!(state.pods_done() == 3, "the Deployment's pods: {state:#?}");
    ensure!(state.cordoned_by_vacate);
    env.wait("the drained label", Duration::from_secs(10), || async {
        Ok(has_label(&env.get_node(node).await?, DRAINED_LABEL))
    })
    .await?;
    ensure!(is_unschedulable(&env.get_node(node).await?));
    for vmi in env.vmis().await? {
        ensure!(
            vmi.is_running() && vmi.node_name() != Some(node),
            "{} is not Running elsewhere",
            vmi.name_any()
        );
    }
    // Finished pods (the source virt-launcher pods, `Succeeded` after their VMI moved) stay.
    let left: Vec<_> = env
        .pods_on(node)
        .await?
        .into_iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    ensure!(
        left.len() == 1,
        "only the DaemonSet's pod stays: {:?}",
        left.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );

    env.request(node, None).await?;
    let n = env.wait_idle(node, Duration::from_secs(30)).await?;
    ensure!(
        !is_unschedulable(&n),
        "vacate uncordons the node it cordoned"
    );
    ensure!(!has_label(&n, DRAINED_LABEL));
    Ok(())
}
