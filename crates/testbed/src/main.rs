//! `testbed`: start, stop and seed the vacate testbed. See docs/testbed.md.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use testbed::bench::{self, DrainBy};
use testbed::control_plane::{self, AuditOptions, ControlPlane, Layout, Options};
use testbed::nodes::{self, NodeTemplate};
use testbed::{Scenario, SeedOptions, paths, process, seed};

#[derive(Parser)]
#[command(
    name = "testbed",
    about = "A local Kubernetes control plane with kwok nodes and a KubeVirt simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct StateArgs {
    /// State folder (certificates, logs, kubeconfig). Default: .testbed/ at the workspace root.
    #[arg(long, env = "VACATE_TESTBED_STATE")]
    state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn dir(&self) -> Result<PathBuf> {
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(paths::default_state_dir);
        absolute(&dir)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a testbed in the background and wait until it is ready.
    Up {
        /// Number of kwok nodes to create (testbed-node-0..N-1).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[command(flatten)]
        state: StateArgs,
        /// Do not start the KubeVirt simulator.
        #[arg(long)]
        no_kubevirt: bool,
        /// Seconds to wait for readiness.
        #[arg(long, default_value_t = 240)]
        timeout: u64,
        /// Write the API server's audit log (level Metadata, JSON lines) to <state>/audit.log.
        #[arg(long)]
        audit_log: bool,
        /// Audit only this user's requests (repeatable; implies --audit-log).
        #[arg(long, value_name = "USER")]
        audit_user: Vec<String>,
        /// Duration of the node leases kwok keeps. Longer leases mean fewer writes on a
        /// large fleet, but a node whose lease renewal failed (an API server or etcd
        /// restart) is left alone for a quarter of it.
        #[arg(long, default_value_t = control_plane::NODE_LEASE_SECONDS,
              value_parser = clap::value_parser!(u32).range(40..=86400))]
        node_lease_seconds: u32,
    },
    /// Stop the testbed and remove its state folder.
    Down {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Load a scenario file into the running testbed.
    Seed {
        /// Scenario YAML (see tests/scenarios/).
        file: PathBuf,
        /// Prefix for node names and namespaces; also keeps the scenario's workloads on
        /// its own nodes (label testbed.vacate.io/set=<prefix>).
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        state: StateArgs,
        /// Kubeconfig to use instead of <state>/kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Return once the objects exist, without waiting for Ready/Running.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for readiness.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Show whether a testbed runs and where.
    Status {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Set a node's reported kubelet version (status.nodeInfo.kubeletVersion).
    SetKubeletVersion {
        node: String,
        version: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Print, as JSON, the least time a drain of NODE can take under KubeVirt's limits,
    /// read from the cluster now (see docs/benchmarks.md).
    BenchBound {
        node: String,
        #[command(flatten)]
        state: StateArgs,
        /// Kubeconfig to use instead of <state>/kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Time one drain of NODE from a node watch and print it as JSON: either set a request
    /// label and wait for the drained label (--label, --until), or run a command after `--`
    /// and wait for it to exit.
    BenchDrain {
        node: String,
        /// The request label to set, key=value.
        #[arg(long, requires = "until")]
        label: Option<String>,
        /// The label that says the drain is over, key=value.
        #[arg(long)]
        until: Option<String>,
        /// Seconds to wait.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        #[command(flatten)]
        state: StateArgs,
        /// Kubeconfig to use instead of <state>/kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The command that drains the node (instead of --label).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Label the selected (idle) nodes one at a time with a request label and time each
    /// until a node watch shows the node cordoned; print p50 and p99 as JSON.
    BenchCordon {
        /// Label selector of the nodes to use.
        #[arg(long)]
        selector: String,
        /// Requests to time.
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// The request label, key=value.
        #[arg(long, default_value = "vacate.io/maintenance=true")]
        label: String,
        /// The label the drainer sets on a drained node (waited away between requests).
        #[arg(long, default_value = "vacate.io/drained")]
        drained_label: String,
        /// The drainer's state annotation (waited away between requests).
        #[arg(long, default_value = "vacate.io/state")]
        state_annotation: String,
        /// Seconds to wait for each step.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        #[command(flatten)]
        state: StateArgs,
        /// Kubeconfig to use instead of <state>/kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Runs the components (started by `up`).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long)]
        nodes: usize,
        #[arg(long)]
        no_kubevirt: bool,
        #[arg(long)]
        timeout: u64,
        #[arg(long)]
        audit_log: bool,
        #[arg(long)]
        audit_user: Vec<String>,
        #[arg(long)]
        node_lease_seconds: u32,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up {
            nodes,
            state,
            no_kubevirt,
            timeout,
            audit_log,
            audit_user,
            node_lease_seconds,
        } => {
            let audit =
                (audit_log || !audit_user.is_empty()).then_some(AuditOptions { users: audit_user });
            state.dir().and_then(|d| {
                up(
                    &d,
                    nodes,
                    no_kubevirt,
                    timeout,
                    audit.as_ref(),
                    node_lease_seconds,
                )
            })
        }
        Cmd::Down { state } => state.dir().and_then(|d| down(&d)),
        Cmd::Status { state } => state.dir().and_then(|d| status(&d)),
        Cmd::Seed {
            file,
            prefix,
            state,
            kubeconfig,
            no_wait,
            timeout,
        } => state.dir().and_then(|d| {
            let kc = kubeconfig.unwrap_or_else(|| Layout::new(&d).kubeconfig());
            runtime()?.block_on(seed_cmd(&kc, &file, prefix, !no_wait, timeout))
        }),
        Cmd::SetKubeletVersion {
            node,
            version,
            state,
        } => state.dir().and_then(|d| {
            runtime()?.block_on(async {
                let client =
                    testbed::kubeconfig::client_from(&Layout::new(&d).kubeconfig()).await?;
                nodes::set_kubelet_version(&client, &node, &version).await
            })
        }),
        Cmd::BenchBound {
            node,
            state,
            kubeconfig,
        } => with_client(&state, kubeconfig, |client| async move {
            print_json(&testbed::bench::bound(&client, &node).await?)
        }),
        Cmd::BenchDrain {
            node,
            label,
            until,
            timeout,
            state,
            kubeconfig,
            command,
        } => with_client(&state, kubeconfig, |client| async move {
            let by = match (label, command.is_empty()) {
                (Some(label), true) => DrainBy::Label {
                    request: bench::parse_label(&label)?,
                    until: bench::parse_label(&until.unwrap_or_default())?,
                },
                (None, false) => DrainBy::Command(command),
                _ => bail!("give either --label and --until, or a command after --"),
            };
            print_json(&bench::drain(&client, &node, &by, Duration::from_secs(timeout)).await?)
        }),
        Cmd::BenchCordon {
            selector,
            count,
            label,
            drained_label,
            state_annotation,
            timeout,
            state,
            kubeconfig,
        } => with_client(&state, kubeconfig, |client| async move {
            let request = bench::parse_label(&label)?;
            print_json(
                &bench::cordon_latency(
                    &client,
                    &selector,
                    &request,
                    &drained_label,
                    &state_annotation,
                    count,
                    Duration::from_secs(timeout),
                )
                .await?,
            )
        }),
        Cmd::Supervise {
            state_dir,
            nodes,
            no_kubevirt,
            timeout,
            audit_log,
            audit_user,
            node_lease_seconds,
        } => {
            let audit = audit_log.then_some(AuditOptions { users: audit_user });
            supervise(
                &state_dir,
                nodes,
                no_kubevirt,
                timeout,
                audit,
                node_lease_seconds,
            )
        }
    };
    if let Err(e) = result {
        eprintln!("testbed: {e:#}");
        std::process::exit(1);
    }
}

/// Runs `f` with a client of the testbed (or of `kubeconfig`).
fn with_client<F, Fut>(state: &StateArgs, kubeconfig: Option<PathBuf>, f: F) -> Result<()>
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let kc = match kubeconfig {
        Some(kc) => kc,
        None => Layout::new(state.dir()?).kubeconfig(),
    };
    runtime()?.block_on(async {
        let client = testbed::kubeconfig::client_from(&kc).await?;
        f(client).await
    })
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

fn read_pid(layout: &Layout) -> Option<i32> {
    std::fs::read_to_string(layout.pid_file())
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Removes a state folder, refusing folders that are not testbed state.
fn remove_state(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let layout = Layout::new(dir);
    let empty = std::fs::read_dir(dir)?.next().is_none();
    if !empty && !layout.marker().exists() {
        bail!(
            "{} is not a testbed state folder (no {}); not deleting it",
            dir.display(),
            layout.marker().display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

fn up(
    dir: &Path,
    node_count: usize,
    no_kubevirt: bool,
    timeout: u64,
    audit: Option<&AuditOptions>,
    node_lease_seconds: u32,
) -> Result<()> {
    let started = Instant::now();
    let layout = Layout::new(dir);
    if let Some(pid) = read_pid(&layout)
        && process::alive(pid)
    {
        bail!(
            "a testbed already runs with state in {} (supervisor pid {pid}); \
             run `testbed down` first",
            dir.display()
        );
    }
    remove_state(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(layout.marker(), "vacate testbed state folder\n")?;

    // Resolve binaries here so that build output and errors reach the terminal.
    let bin = paths::upstream_bin_dir()?;
    let sim = if no_kubevirt {
        None
    } else {
        Some(paths::kubevirt_sim()?)
    };

    let log = std::fs::File::create(layout.supervisor_log())?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("supervise")
        .arg("--state-dir")
        .arg(dir)
        .arg("--nodes")
        .arg(node_count.to_string())
        .arg("--timeout")
        .arg(timeout.to_string())
        .arg("--node-lease-seconds")
        .arg(node_lease_seconds.to_string())
        .env(paths::ENV_BIN_DIR, &bin)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    if let Some(audit) = audit {
        cmd.arg("--audit-log");
        for user in &audit.users {
            cmd.arg("--audit-user").arg(user);
        }
    }
    if let Some(sim) = &sim {
        cmd.env(paths::ENV_KUBEVIRT_SIM, sim);
    } else {
        cmd.arg("--no-kubevirt");
    }
    // SAFETY: setsid is async-signal-safe; the supervisor leads a new session and
    // process group, so `down` can signal the whole group.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the testbed supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(timeout + 10);
    loop {
        if layout.kubeconfig().exists() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            let reason = std::fs::read_to_string(layout.failure())
                .unwrap_or_else(|_| process::tail(&layout.supervisor_log(), 30));
            bail!(
                "the testbed did not start (supervisor {status}):\n{reason}\n\
                 Logs: {}",
                layout.logs().display()
            );
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            bail!(
                "the testbed was not ready after {timeout}s; logs in {}",
                layout.logs().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let kubevirt = if sim.is_some() {
        "with the KubeVirt simulator"
    } else {
        "without KubeVirt"
    };
    println!(
        "testbed up in {:.1}s: {node_count} kwok nodes, {kubevirt}, Kubernetes {}",
        started.elapsed().as_secs_f64(),
        testbed::KUBE_VERSION
    );
    println!("state: {}", dir.display());
    println!("export KUBECONFIG={}", layout.kubeconfig().display());
    println!("kubectl: {}", bin.join("kubectl").display());
    Ok(())
}

fn supervise(
    dir: &Path,
    node_count: usize,
    no_kubevirt: bool,
    timeout: u64,
    audit: Option<AuditOptions>,
    node_lease_seconds: u32,
) -> Result<()> {
    let layout = Layout::new(dir);
    std::fs::write(layout.pid_file(), std::process::id().to_string())?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        let mut opts = Options::new(dir);
        opts.kubevirt = !no_kubevirt;
        opts.ready_timeout = Duration::from_secs(timeout);
        opts.audit = audit;
        opts.node_lease_seconds = node_lease_seconds;
        let cp = match ControlPlane::start(&opts).await {
            Ok(cp) => cp,
            Err(e) => {
                let _ = std::fs::write(layout.failure(), format!("{e:#}\n"));
                return Err(e);
            }
        };
        if let Err(e) = create_default_nodes(&cp, node_count).await {
            let _ = std::fs::write(layout.failure(), format!("{e:#}\n"));
            cp.stop();
            return Err(e);
        }
        cp.publish_kubeconfig()?;
        eprintln!(
            "testbed ready in {:.1}s; supervising (pid {})",
            cp.started_in.as_secs_f64(),
            std::process::id()
        );

        let mut exits = cp.components.exits();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let outcome = tokio::select! {
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
            _ = hup.recv() => Ok(()),
            _ = exits.wait_for(|e| e.is_some()) => {
                let exit = cp.components.failed();
                Err(anyhow::anyhow!("stopping the testbed: {}", exit.map(|e| e.to_string()).unwrap_or_default()))
            }
        };
        cp.stop();
        outcome
    });
    let _ = std::fs::remove_file(layout.pid_file());
    result
}

async fn create_default_nodes(cp: &ControlPlane, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let client = testbed::kubeconfig::client_from(&cp.kubeconfig).await?;
    let template = NodeTemplate::default();
    let objs = (0..n)
        .map(|i| template.node(&format!("testbed-node-{i}"), "default"))
        .collect::<Result<Vec<_>>>()?;
    let names = nodes::create_nodes(&client, objs, 32).await?;
    let set: std::collections::BTreeSet<String> = names.into_iter().collect();
    testbed::wait_until(
        &format!("{n} testbed nodes to be Ready"),
        Duration::from_secs(60),
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(client),
        kube::runtime::watcher::Config::default().labels("type=kwok"),
        |ns| {
            ns.iter()
                .filter(|node| {
                    set.contains(node.metadata.name.as_deref().unwrap_or_default())
                        && nodes::is_ready(node)
                })
                .count()
                == n
        },
        |ns| {
            format!(
                "{} Ready",
                ns.iter().filter(|node| nodes::is_ready(node)).count()
            )
        },
    )
    .await?;
    Ok(())
}

fn down(dir: &Path) -> Result<()> {
    let layout = Layout::new(dir);
    match read_pid(&layout) {
        Some(pid) if process::alive(pid) => {
            // SAFETY: the supervisor leads its own process group (setsid in `up`).
            unsafe { libc::kill(-pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while process::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above; whatever is left of the group goes now.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while process::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("testbed stopped (supervisor pid {pid})");
        }
        _ => println!("no testbed was running in {}", dir.display()),
    }
    remove_state(dir)?;
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let layout = Layout::new(dir);
    match read_pid(&layout) {
        Some(pid) if process::alive(pid) => {
            let ready = layout.kubeconfig().exists();
            println!(
                "running (supervisor pid {pid}, {})",
                if ready { "ready" } else { "starting" }
            );
            if let Ok(e) = std::fs::read_to_string(layout.endpoints()) {
                println!("{e}");
            }
            println!("export KUBECONFIG={}", layout.kubeconfig().display());
        }
        _ => println!("not running (state folder {})", dir.display()),
    }
    Ok(())
}

async fn seed_cmd(
    kubeconfig: &Path,
    file: &Path,
    prefix: Option<String>,
    wait: bool,
    timeout: u64,
) -> Result<()> {
    let scenario = Scenario::from_file(file)?;
    if !kubeconfig.exists() {
        bail!(
            "no kubeconfig at {}; start a testbed with `testbed up` first",
            kubeconfig.display()
        );
    }
    let client = testbed::kubeconfig::client_from(kubeconfig).await?;
    let opts = SeedOptions {
        prefix,
        namespace: None,
        wait,
        wait_timeout: Some(Duration::from_secs(timeout)),
    };
    let report = seed::seed(&client, &scenario, &opts).await?;
    println!(
        "seeded {}: {} nodes, {} VMs, {} objects created in {:.1}s",
        file.display(),
        report.nodes.len(),
        report.vms.len(),
        report.objects,
        report.created_in.as_secs_f64()
    );
    if let (Some(nodes), Some(ready)) = (report.nodes_ready_in, report.ready_in) {
        println!(
            "nodes Ready after {:.1}s; all ready (workloads available, VMIs Running) after {:.1}s",
            nodes.as_secs_f64(),
            ready.as_secs_f64()
        );
    }
    Ok(())
}
