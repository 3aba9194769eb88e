//! `KubeVirt` (short name `kv`): the install, and the cluster-wide configuration that matters for
//! drains (`spec.configuration.migrations`, `spec.configuration.evictionStrategy`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, EvictionStrategy};
use crate::quantity::parse_quantity;

/// `KubeVirtSpec`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "KubeVirt",
    plural = "kubevirts",
    singular = "kubevirt",
    namespaced,
    derive = "PartialEq",
    shortname = "kv",
    shortname = "kvs",
    category = "all",
    status = "KubeVirtStatus",
    label("operator.kubevirt.io", ""),
    doc = "KubeVirt represents the object deploying all KubeVirt resources",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<KubeVirtConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
}

/// `KubeVirtConfiguration`: only the drain-relevant part.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationConfiguration>,
    /// The eviction strategy of VMIs that set none themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
}

/// `MigrationConfiguration`. Unset fields take KubeVirt's defaults (`pkg/virt-config`), see the
/// accessor methods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_migrations_per_cluster: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_outbound_migrations_per_node: Option<u32>,
    /// Bandwidth limit per migration; `0` (the default) means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<Quantity>,
    /// Seconds per GiB of guest memory before a migration is cancelled (default 150).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "completionTimeoutPerGiB"
    )]
    pub completion_timeout_per_gib: Option<i64>,
    /// Seconds without progress before a migration is cancelled (default 150).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_migration_override: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_workload_disruption: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_drain_taint_key: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "disableTLS"
    )]
    pub disable_tls: Option<bool>,
}

impl MigrationConfiguration {
    /// KubeVirt's `ParallelMigrationsPerClusterDefault`.
    pub const DEFAULT_PARALLEL_MIGRATIONS_PER_CLUSTER: u32 = 5;
    /// KubeVirt's `ParallelOutboundMigrationsPerNodeDefault`.
    pub const DEFAULT_PARALLEL_OUTBOUND_MIGRATIONS_PER_NODE: u32 = 2;
    /// KubeVirt's `MigrationCompletionTimeoutPerGiB`.
    pub const DEFAULT_COMPLETION_TIMEOUT_PER_GIB: i64 = 150;
    /// KubeVirt's `MigrationProgressTimeout`.
    pub const DEFAULT_PROGRESS_TIMEOUT: i64 = 150;

    pub fn parallel_migrations_per_cluster(&self) -> u32 {
        self.parallel_migrations_per_cluster
            .unwrap_or(Self::DEFAULT_PARALLEL_MIGRATIONS_PER_CLUSTER)
    }

    pub fn parallel_outbound_migrations_per_node(&self) -> u32 {
        self.parallel_outbound_migrations_per_node
            .unwrap_or(Self::DEFAULT_PARALLEL_OUTBOUND_MIGRATIONS_PER_NODE)
    }

    pub fn completion_timeout_per_gib(&self) -> i64 {
        self.completion_timeout_per_gib
            .unwrap_or(Self::DEFAULT_COMPLETION_TIMEOUT_PER_GIB)
    }

    pub fn progress_timeout(&self) -> i64 {
        self.progress_timeout
            .unwrap_or(Self::DEFAULT_PROGRESS_TIMEOUT)
    }

    /// Bandwidth per migration in bytes per second; `None` when unlimited (unset or 0).
    pub fn bandwidth_bytes_per_second(&self) -> Option<f64> {
        self.bandwidth_per_migration
            .as_ref()
            .and_then(|q| parse_quantity(&q.0))
            .filter(|b| *b > 0.0)
    }
}

/// `KubeVirtStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtStatus {
    /// `Deploying`, `Deployed`, `Deleting`, `Deleted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_kube_virt_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kube_virt_version: Option<String>,
}

impl KubeVirt {
    /// The migration configuration, with KubeVirt's defaults for everything unset.
    pub fn migration_configuration(&self) -> MigrationConfiguration {
        self.spec
            .configuration
            .as_ref()
            .and_then(|c| c.migrations.clone())
            .unwrap_or_default()
    }

    /// The KubeVirt release deployed (`status.observedKubeVirtVersion`), if reported.
    pub fn observed_version(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.observed_kube_virt_version.as_deref())
            .filter(|v| !v.is_empty())
    }

    /// The cluster-wide eviction strategy, if any.
    pub fn eviction_strategy(&self) -> Option<EvictionStrategy> {
        self.spec
            .configuration
            .as_ref()
            .and_then(|c| c.eviction_strategy)
    }
}
