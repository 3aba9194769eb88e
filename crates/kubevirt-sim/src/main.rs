//! `kubevirt-sim`: a KubeVirt simulator for the vacate testbed. See docs/testbed.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use kubevirt_sim::Options;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "kubevirt-sim",
    about = "Simulates KubeVirt v1.9 or v1.7 (VMIs, live migrations, webhooks, evacuation) on a real API server"
)]
struct Cli {
    /// Admin kubeconfig of the cluster to simulate KubeVirt in.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Address of the HTTPS server for the admission webhooks and /readyz.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Folder for the generated certificates.
    #[arg(long)]
    state_dir: PathBuf,
    /// Simulated time runs this many times faster than real time (migration durations and
    /// KubeVirt's timeouts are divided by it). Overridden by the KubeVirt CR annotation
    /// `simulator.vacate.io/time-scale`.
    #[arg(long, default_value_t = kubevirt_sim::settings::DEFAULT_TIME_SCALE)]
    time_scale: f64,
    /// The KubeVirt release to follow where releases differ: `v1.9` (v1.9.0) or `v1.7`
    /// (v1.7.4). Overridden by the KubeVirt CR annotation
    /// `simulator.vacate.io/kubevirt-release`.
    #[arg(long, default_value_t = kubevirt_sim::settings::KubeVirtRelease::default())]
    kubevirt_release: kubevirt_sim::settings::KubeVirtRelease,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let options = Options {
        kubeconfig: cli.kubeconfig,
        listen: cli.listen,
        state_dir: cli.state_dir,
        time_scale: cli.time_scale,
        kubevirt_release: cli.kubevirt_release,
    };
    kubevirt_sim::run(options).await?;
    Ok(())
}
