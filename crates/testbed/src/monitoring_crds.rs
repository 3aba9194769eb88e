//! The prometheus-operator's ServiceMonitor and PrometheusRule CustomResourceDefinitions,
//! installed at start so that vacate's manifests (deploy/) apply to a plain testbed. The
//! definitions are the files of deploy/crds-for-testing/, compiled in.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// (file name, YAML) of each definition.
pub const DEFINITIONS: [(&str, &str); 2] = [
    (
        "monitoring.coreos.com_servicemonitors.yaml",
        include_str!("../../../deploy/crds-for-testing/monitoring.coreos.com_servicemonitors.yaml"),
    ),
    (
        "monitoring.coreos.com_prometheusrules.yaml",
        include_str!("../../../deploy/crds-for-testing/monitoring.coreos.com_prometheusrules.yaml"),
    ),
];

/// Server-side applies every definition; returns their names.
pub async fn apply(client: &kube::Client) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("testbed").force();
    let mut names = Vec::new();
    for (file, yaml) in DEFINITIONS {
        let crd: CustomResourceDefinition =
            serde_norway::from_str(yaml).with_context(|| format!("parsing {file}"))?;
        let name = crd
            .metadata
            .name
            .clone()
            .with_context(|| format!("{file} has no name"))?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying the CustomResourceDefinition {name}"))?;
        names.push(name);
    }
    Ok(names)
}

/// Waits until every named definition is Established (its API is served).
pub async fn wait_established(
    client: &kube::Client,
    names: &[String],
    deadline: Instant,
) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        loop {
            let crd = api.get(name).await?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the CustomResourceDefinition {name} was not Established in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
