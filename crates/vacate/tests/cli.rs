//! The `vacate` command line: configuration errors without a cluster, and `drain`,
//! `status` and `uncordon` against the testbed.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use vacate::planner::Phase;

fn vacate() -> Command {
    let mut command = Command::new(vacate_bin());
    command.env("VACATE_DRAIN__RESYNC", RESYNC);
    command
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[migration]\nbatch_sise = 3\n", "migration.batch_sise"),
        ("[migration]\nbatch_size = 0\n", "migration.batch_size"),
        ("[drain]\ntimeout = \"soon\"\n", "drain.timeout"),
        ("[node]\nselector = \"pool in (a\"\n", "node.selector"),
        (
            "[non_migratable]\npolicy = \"pray\"\n",
            "non_migratable.policy",
        ),
        (
            "[[windows]]\nname = \"w\"\ncron = \"0 2 * *\"\nduration = \"1h\"\n",
            "windows[0].cron",
        ),
        (
            "[[windows]]\nname = \"w\"\ncron = \"0 2 * * *\"\nduration = \"1h\"\ntimezone = \"Europe/Atlantis\"\n",
            "windows[0].timezone",
        ),
        (
            "[[schedules]]\nname = \"s\"\ncron = \"0 2 * * MONDAY-ish\"\n",
            "schedules[0].cron",
        ),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for args in [
            vec!["check-config", path.to_str().unwrap()],
            vec!["run", "--config", path.to_str().unwrap()],
        ] {
            let out = vacate()
                .args(&args)
                .env_remove("KUBECONFIG")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} with {text:?}: {stderr}"
            );
            assert!(
                stderr.contains(key),
                "{args:?}: `{stderr}` does not name {key}"
            );
        }
    }
    let out = vacate()
        .args(["run"])
        .env("VACATE_MIGRATION__MAX_IN_FLIGHT_PER_NODE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("migration.max_in_flight_per_node"));
}

#[test]
fn shipped_config_is_valid() {
    let path = "../../config/vacate.toml";
    let out = vacate().args(["check-config", path]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_dry_run_drain_status_and_uncordon() -> anyhow::Result<()> {
    let env = Env::new("cli", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        env.create_vm(&Vm::migratable("web")).await?;
        env.create_vm(&Vm::not_migratable("legacy", "LiveMigrateIfPossible"))
            .await?;
        env.create_deployment("api", 1, None).await?;
        env.wait_vmis_running_on(&node, 2).await?;
        env.wait_pods_running_on(&node, 3).await
    })
    .await?;
    let kubeconfig = env.cluster.kubeconfig_path().to_path_buf();
    let config = tempfile::NamedTempFile::new()?;
    // Other tests drain nodes of the same cluster at the same time.
    std::fs::write(
        config.path(),
        "[migration]\nbatch_interval = \"1s\"\n[fleet]\nmax_draining = \"100%\"\n",
    )?;
    let run = |args: &[&str]| {
        let kubeconfig = kubeconfig.clone();
        let config = config.path().to_path_buf();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                vacate()
                    .args(&args)
                    .arg("--config")
                    .arg(config)
                    .env("KUBECONFIG", kubeconfig)
                    .output()
            })
            .await
            .unwrap()
        }
    };

    let out = run(&["drain", &node, "--dry-run"]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/web") && text.contains("migrate"), "{text}");
    assert!(
        text.contains("/legacy") && text.contains("InterfaceNotLiveMigratable"),
        "{text}"
    );
    assert!(text.contains("Nothing was changed"), "{text}");
    let n = env.get_node(&node).await?;
    assert!(!is_unschedulable(&n), "a dry run changes nothing");
    assert!(!has_label(&n, REQUEST_LABEL));

    // `status --watch` follows the drain (printing lines, as its output is not a terminal).
    let watcher = Command::new(vacate_bin())
        .args(["status", "--watch", "--config"])
        .arg(config.path())
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let out = run(&["drain", &node, "--timeout", "3m"]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("drained"), "{text}");
    let state = env
        .wait_phase(&node, Phase::Drained, Duration::from_secs(5))
        .await?;
    assert_eq!(state.vmis.len(), 2);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let watched = {
        let mut watcher = watcher;
        let _ = watcher.kill();
        watcher.wait_with_output()?
    };
    let watched = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.contains(&format!("{node}: Migrating"))
            || watched.contains(&format!("{node}: Cordoned")),
        "{watched}"
    );
    assert!(watched.contains(&format!("{node}: Drained")), "{watched}");

    let out = run(&["status"]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(node.as_str()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("Drained") && row.contains("2/2"), "{row}");

    let out = run(&["uncordon", &node]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = env.wait_idle(&node, Duration::from_secs(10)).await?;
    assert!(!is_unschedulable(&n));
    assert!(!has_label(&n, REQUEST_LABEL));
    assert!(!has_label(&n, DRAINED_LABEL));
    Ok(())
}

/// `vacate drain NODE --timeout 5s` with the given configuration file.
async fn drain_for_5s(
    env: &Env,
    node: &str,
    config: &std::path::Path,
) -> anyhow::Result<std::process::Output> {
    let kubeconfig = env.cluster.kubeconfig_path().to_path_buf();
    let (node, config) = (node.to_string(), config.to_path_buf());
    Ok(tokio::task::spawn_blocking(move || {
        vacate()
            .args(["drain", &node, "--timeout", "5s", "--config"])
            .arg(config)
            .env("KUBECONFIG", kubeconfig)
            .output()
    })
    .await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_exits_non_zero_with_the_reason() -> anyhow::Result<()> {
    let env = Env::new("cli-fail", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        env.create_vm(&Vm::not_migratable("pinned", "LiveMigrate"))
            .await?;
        env.wait_vmis_running_on(&node, 1).await
    })
    .await?;
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        "[non_migratable]\npolicy = \"block\"\n[fleet]\nmax_draining = \"100%\"\n",
    )?;
    let out = drain_for_5s(&env, &node, config.path()).await?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was not drained") && stderr.contains("pinned"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_on_a_node_that_cannot_start() -> anyhow::Result<()> {
    let env = Env::new("cli-window", 1).await?;
    let node = env.node(0).to_string();
    let config = tempfile::NamedTempFile::new()?;
    // A window that opens once a year, at a moment that is not now.
    let closed = (chrono::Utc::now() + chrono::Duration::days(180)).format("0 0 %d %m *");
    std::fs::write(
        config.path(),
        format!("[[windows]]\nname = \"yearly\"\ncron = \"{closed}\"\nduration = \"1m\"\n"),
    )?;
    let out = drain_for_5s(&env, &node, config.path()).await?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not start draining") && stderr.contains("window yearly opens"),
        "{stderr}"
    );
    assert!(!is_unschedulable(&env.get_node(&node).await?));
    Ok(())
}

/// `vacate plan` shows a rollout of three nodes, one at a time, before anything moves: the
/// order (the least VM memory first), each VMI's migration and where there is room for it
/// (taken lightest first, every VM has room on a node done before it, so none moves again), a
/// PodDisruptionBudget that never allows an eviction, and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_a_rollout_before_anything_moves() -> anyhow::Result<()> {
    let env = Env::new("plan", 3).await?;
    let mut names: Vec<String> = (0..3).map(|i| env.node(i).to_string()).collect();
    names.sort();
    // heavy: two VMs; light: one VM and a pod under a PDB; empty: nothing.
    let (heavy, light, empty) = (names[0].clone(), names[1].clone(), names[2].clone());
    let index = |name: &str| (0..3).find(|&i| env.node(i) == name).unwrap();
    env.place_on(index(&heavy), || async {
        env.create_vm(&Vm::migratable("a")).await?;
        env.create_vm(&Vm::migratable("b")).await?;
        env.wait_vmis_running_on(&heavy, 2).await
    })
    .await?;
    env.place_on(index(&light), || async {
        env.create_vm(&Vm::migratable("c")).await?;
        env.create_deployment("db", 1, Some(1)).await?;
        env.wait_vmis_running_on(&light, 1).await?;
        env.wait_pods_running_on(&light, 2).await
    })
    .await?;
    let ns = env.ns.name().to_string();
    let pdbs: kube::Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        kube::Api::namespaced(env.client.clone(), &ns);
    env.wait(
        "the PDB to count its pod",
        Duration::from_secs(30),
        || async {
            let pdb = pdbs.get("db").await?;
            Ok(pdb.status.and_then(|s| s.expected_pods) == Some(1))
        },
    )
    .await?;

    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(
        config.path(),
        format!("[node]\nselector = \"{}\"\n", env.selector()),
    )?;
    let kubeconfig = env.cluster.kubeconfig_path().to_path_buf();
    let selector = env.selector();
    let run = |output: &'static str| {
        let (kubeconfig, config, selector) = (
            kubeconfig.clone(),
            config.path().to_path_buf(),
            selector.clone(),
        );
        tokio::task::spawn_blocking(move || {
            vacate()
                .args([
                    "plan",
                    "--selector",
                    &selector,
                    "--output",
                    output,
                    "--config",
                ])
                .arg(config)
                .env("KUBECONFIG", kubeconfig)
                .output()
        })
    };
    let out = run("json").await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let nodes = plan["nodes"].as_array().expect("nodes");
    let order: Vec<(&str, u64)> = nodes
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["wave"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        order,
        vec![
            (empty.as_str(), 1),
            (light.as_str(), 2),
            (heavy.as_str(), 3)
        ]
    );
    assert_eq!(nodes[0]["vmis"].as_array().map(Vec::len), Some(0));
    // The light node's VM has room on the empty node, done by then: it moves once.
    let c = &nodes[1]["vmis"][0];
    assert_eq!(c["name"], format!("{ns}/c"));
    assert_eq!(c["roomOn"], empty.as_str(), "{c}");
    assert!(c.get("movesAgain").is_none(), "{c}");
    // The heavy node's VMs go to the nodes done before it.
    for vmi in nodes[2]["vmis"].as_array().unwrap() {
        assert_eq!(vmi["action"], "migrate", "{vmi}");
        let room = vmi["roomOn"].as_str().unwrap_or("");
        assert!(room == empty || room == light, "{vmi}");
        assert!(vmi.get("movesAgain").is_none(), "{vmi}");
    }
    assert_eq!(plan["migrations"], 3);
    assert_eq!(plan["migrationsMovingAgain"], 0);
    let blockers = nodes[1]["blockers"].to_string();
    assert!(
        blockers.contains(&format!("PodDisruptionBudget {ns}/db allows no disruption")),
        "{blockers}"
    );
    assert_eq!(nodes[0]["blockers"].as_array().map(Vec::len), Some(0));

    let out = run("table").await??;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("3 migration(s), 0 of them onto a node drained later"),
        "{text}"
    );
    assert!(text.contains("Nothing was changed"), "{text}");
    for node in [&heavy, &light, &empty] {
        let n = env.get_node(node).await?;
        assert!(!is_unschedulable(&n), "{node} was cordoned");
        assert!(
            !n.metadata
                .annotations
                .unwrap_or_default()
                .contains_key(STATE_ANNOTATION),
            "{node} got a state"
        );
    }
    Ok(())
}
