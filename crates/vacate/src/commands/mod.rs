//! The subcommands of the `vacate` binary.

pub mod drain;
pub mod plan;
pub mod run;
pub mod status;

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, LogFormat};

/// Exit status for configuration errors, distinct from a failed drain (1).
pub const EXIT_CONFIG: u8 = 2;

/// Loads the configuration or explains what is wrong with it.
pub fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("vacate: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `vacate check-config FILE`.
pub fn check_config(path: &Path) -> ExitCode {
    match load_config(Some(path)) {
        Ok(_) => {
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn init_logging(config: &Config) {
    // log.level was validated with the configuration (VACATE_LOG__LEVEL overrides it).
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// A client for the cluster in KUBECONFIG or, inside a pod, its service account.
///
/// The client's own retries are turned off: a 429 from an eviction is an answer (a
/// PodDisruptionBudget, or KubeVirt asking for a migration) that vacate records and retries
/// with its own backoff, not a reason to block the drain loop inside a request.
pub async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot find the cluster ({e}); set KUBECONFIG or run inside a pod with a service account"
        )
    })?;
    config.default_retry = false;
    kube::Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("cannot build a client for the cluster: {e}"))
}

/// Starts the engine's watches for the nodes of `filter`, without leader election, and waits
/// until its caches are filled: the shell of the one-shot commands.
pub(crate) async fn start_shell(
    client: &kube::Client,
    config: &std::sync::Arc<crate::config::Config>,
    filter: crate::cluster::watch::NodeFilter,
) -> anyhow::Result<crate::cluster::Shell> {
    let shell = crate::cluster::Shell::start(
        client.clone(),
        config.clone(),
        crate::metrics::Metrics::new(),
        filter,
        None,
    );
    shell
        .ctx
        .stores
        .wait_until_ready(std::time::Duration::from_secs(60))
        .await?;
    Ok(shell)
}
