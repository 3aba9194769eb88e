//! A KubeVirt simulator: it installs KubeVirt's CRDs into a real API server and then
//! behaves, towards every other client, as KubeVirt v1.9 (or, when told, v1.7) does for the
//! parts that matter when draining nodes ([`settings::KubeVirtRelease`]):
//!
//! * VMI lifecycle with virt-launcher pods placed by the real scheduler ([`controllers::vmi`]);
//! * VirtualMachines and their run strategies ([`controllers::vm`]);
//! * live migrations through all of KubeVirt's phases, with its parallelism limits
//!   ([`controllers::migration`]);
//! * evacuation of VMIs marked by the eviction webhook ([`controllers::evacuation`]);
//! * the admission webhooks for migrations and pod evictions, served over HTTPS and registered
//!   with the API server ([`webhooks`]).
//!
//! The references are KubeVirt's own sources, cited in each module. What is not modelled is
//! listed in docs/testbed.md.

pub mod controllers;
pub mod error;
pub mod faults;
pub mod install;
pub mod launcher;
pub mod live_migratable;
pub mod settings;
pub mod tls;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Error, Result};

/// How the simulator is started.
#[derive(Clone, Debug)]
pub struct Options {
    pub kubeconfig: PathBuf,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub time_scale: f64,
    /// The KubeVirt release followed unless the KubeVirt CR's annotation says otherwise.
    pub kubevirt_release: settings::KubeVirtRelease,
}

/// Installs everything, starts the webhook server and the controllers, and runs until the
/// process is stopped or a component fails.
pub async fn run(options: Options) -> Result<()> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&options.kubeconfig)
        .map_err(|e| Error::Config(format!("reading {}: {e}", options.kubeconfig.display())))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    // Requests virt-controller makes in its own name: the migration admission of KubeVirt
    // v1.9 lets only its service account set `spec.priority`. The simulator's user is an
    // administrator, so it impersonates that account (keeping the administrator's group for
    // authorization).
    let mut virt_controller_config = config.clone();
    virt_controller_config.auth_info.impersonate =
        Some(kubevirt_api::labels::VIRT_CONTROLLER_USER.into());
    virt_controller_config.auth_info.impersonate_groups = Some(vec!["system:masters".into()]);
    let virt_controller = kube::Client::try_from(virt_controller_config)?;
    let client = kube::Client::try_from(config)?;

    retry_startup("installing the CRDs", || install::install_crds(&client)).await?;
    retry_startup("creating the KubeVirt CR", || {
        install::ensure_kubevirt(&client, options.kubevirt_release)
    })
    .await?;
    let certs = tls::ServingCerts::generate(&options.state_dir, options.listen.ip())?;

    let (ctx, subscriptions) = controllers::Context::start(
        client.clone(),
        virt_controller,
        settings::CliDefaults {
            time_scale: options.time_scale,
            release: options.kubevirt_release,
        },
    )
    .await?;
    let ctx = Arc::new(ctx);
    let ready = webhooks::Readiness::default();
    let server = tokio::spawn(webhooks::serve(
        options.listen,
        certs.server_config()?,
        ctx.clone(),
        ready.clone(),
    ));
    retry_startup("registering the webhooks", || {
        install::register_webhooks(&client, options.listen, &certs.ca_pem)
    })
    .await?;
    install::wait_for_webhooks(&client).await?;
    let controllers = tokio::spawn(controllers::run_all(ctx.clone(), subscriptions));
    ready.set_ready();
    tracing::info!(listen = %options.listen, "kubevirt-sim is ready");

    tokio::select! {
        r = server => match r {
            Ok(r) => r,
            Err(e) => Err(Error::Task(e.to_string())),
        },
        r = controllers => match r {
            Ok(()) => Err(Error::Task("the controllers stopped".into())),
            Err(e) => Err(Error::Task(e.to_string())),
        },
        _ = shutdown_signal() => {
            tracing::info!("stopping");
            Ok(())
        }
    }
}

/// Retries a start-up step for up to two minutes: the API server may still be settling
/// (e.g. answering 500 while its post-start hooks finish).
async fn retry_startup<F, Fut>(what: &str, mut step: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match step().await {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!("{what} failed, retrying: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
