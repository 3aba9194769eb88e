//! The `vacate` binary: parses the command line and hands over to a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vacate::commands::{self, drain, plan, run, status};

/// mimalloc gives freed memory back to the system; with glibc's allocator the memory of a
/// large list (the caches filling, a relist) stayed in the process (see docs/benchmarks.md,
/// "Scale"). `vacate::memory::configure` sets it up for a mostly idle daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vacate",
    version,
    about = "Drains Kubernetes nodes that run KubeVirt VMs: cordon, live-migrate, evict, uncordon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch nodes for maintenance requests and drain them.
    Run {
        /// Configuration file (TOML); VACATE_* environment variables override it.
        #[arg(long, short, env = "VACATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show the nodes vacate is handling.
    Status {
        /// Follow progress live.
        #[arg(long, short)]
        watch: bool,
        #[arg(long, short, env = "VACATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Drain one node in the foreground; exits 0 when drained.
    Drain {
        node: String,
        /// Print what would be migrated, evicted or skipped, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up after this long (overrides drain.timeout), e.g. 30m.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long, short, env = "VACATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Show the plan of a rollout before anything moves: order of nodes, each VMI's and pod's
    /// fate, room for what moves, blockers, predicted durations.
    Plan {
        /// The rollout's nodes (a label selector, within node.selector), one at a time
        /// unless --concurrency says otherwise.
        #[arg(long, short = 'l', conflicts_with = "schedule")]
        selector: Option<String>,
        /// The nodes of this configured schedule, at its concurrency.
        #[arg(long)]
        schedule: Option<String>,
        /// Nodes in maintenance at once.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: Option<u32>,
        /// `table` or `json`.
        #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
        output: String,
        #[arg(long, short, env = "VACATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// End the maintenance of a node and uncordon it.
    Uncordon {
        node: String,
        #[arg(long, short, env = "VACATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; exits 2 naming the first bad key.
    CheckConfig { file: PathBuf },
}

/// Two worker threads whatever the machine: vacate reconciles one node at a time and waits
/// on the API server most of the time, and every worker thread holds memory of its own (its
/// stack, the allocator's pages for it), which on a 64-core node would be 64 of each.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let memory = vacate::memory::configure();
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Command::CheckConfig { file } => return commands::check_config(file),
        Command::Run { config }
        | Command::Status { config, .. }
        | Command::Drain { config, .. }
        | Command::Plan { config, .. }
        | Command::Uncordon { config, .. } => config.clone(),
    };
    let config = match commands::load_config(config_path.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    commands::init_logging(&config);
    if let Err(error) = memory {
        tracing::debug!(%error, "transparent huge pages stay on for vacate");
    }
    let result = match cli.command {
        Command::Run { .. } => run::run(config).await.map(|()| ExitCode::SUCCESS),
        Command::Status { watch, .. } => status::status(config, watch)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Drain {
            node,
            dry_run: true,
            ..
        } => drain::dry_run(config, &node).await,
        Command::Drain { node, timeout, .. } => drain::drain(config, &node, timeout).await,
        Command::Uncordon { node, .. } => drain::uncordon(config, &node).await,
        Command::Plan {
            selector,
            schedule,
            concurrency,
            output,
            ..
        } => {
            let request = plan::PlanRequest {
                selector,
                schedule,
                concurrency,
                json: output == "json",
            };
            plan::plan(config, request).await
        }
        Command::CheckConfig { .. } => unreachable!("handled before loading the configuration"),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vacate: {error:#}");
            ExitCode::from(1)
        }
    }
}
