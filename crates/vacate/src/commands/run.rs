//! `vacate run`: the daemon.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::Shell;
use crate::cluster::watch::NodeFilter;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, Readiness};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let client = super::client().await?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let listener = server::bind(&config.server.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (server.listen): {e}",
            config.server.listen
        )
    })?;
    tracing::info!(address = %config.server.listen, "serving /metrics, /healthz and /readyz");
    tokio::spawn(server::serve(listener, metrics.clone(), readiness.clone()));

    let filter = NodeFilter {
        name: None,
        label_selector: (!config.node.selector.is_empty())
            .then(|| config.node.selector.as_str().to_string()),
    };
    let shell = Shell::start(client, config.clone(), metrics.clone(), filter);
    shell
        .ctx
        .stores
        .wait_until_ready(Duration::from_secs(120))
        .await
        .map_err(|e| anyhow::anyhow!("{e} (are the KubeVirt CRDs installed?)"))?;
    readiness.set_ready(true);
    metrics.leader.set(1);
    tracing::info!(
        request_label = %config.node.request_label,
        selector = %config.node.selector,
        "vacate is running"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutting down: no new work is started; running migrations are left to KubeVirt"
        );
        let _ = stop_tx.send(true);
    });
    shell.run(stop_rx).await;
    metrics.leader.set(0);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
