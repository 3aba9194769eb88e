//! `testbed up`, `seed` and `down` as a person runs them, and the process-lifetime rule:
//! nothing survives the supervisor.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn testbed(args: &[&str], state: &Path) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .with_context(|| format!("running testbed {args:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "testbed {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Pids whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] = state, [1] = ppid, [2] = pgrp
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn up_seed_down_and_no_process_outlives_the_supervisor() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("testbed-cli-{}", std::process::id()));
    let state = tmp.join("state");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;

    let out = testbed(&["up", "--nodes", "2", "--no-kubevirt"], &state)?;
    assert!(out.contains("testbed up in"), "{out}");
    let kubeconfig = state.join("kubeconfig");
    assert!(kubeconfig.exists());

    // A second `up` on the same state refuses.
    let again = testbed(&["up", "--no-kubevirt"], &state);
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains("already runs")),
        "{again:?}"
    );

    let scenario = Path::new("../../tests/scenarios/control-plane.yaml");
    let out = testbed(
        &[
            "seed",
            scenario.to_str().context("path")?,
            "--prefix",
            "cli",
        ],
        &state,
    )?;
    assert!(out.contains("seeded"), "{out}");
    assert!(out.contains("all ready"), "{out}");

    // A bad scenario names the field.
    let bad = tmp.join("bad.yaml");
    std::fs::write(&bad, "vms:\n- namePrefix: x\n  memory: lots\n")?;
    let err = testbed(&["seed", bad.to_str().context("path")?], &state).unwrap_err();
    assert!(err.to_string().contains("vms[0].memory"), "{err}");

    // Kill the supervisor hard: every component must go with it (PR_SET_PDEATHSIG).
    let pid: i32 = std::fs::read_to_string(state.join("supervisor.pid"))?
        .trim()
        .parse()?;
    let members = group_members(pid);
    assert!(
        members.len() >= 6,
        "expected the supervisor and its 5 components in group {pid}, found {members:?}"
    );
    // SAFETY: killing the supervisor this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !group_members(pid).is_empty() {
        if Instant::now() > deadline {
            bail!(
                "components outlived their supervisor: {:?}",
                group_members(pid)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    testbed(&["down"], &state)?;
    assert!(!state.exists(), "down must remove the state folder");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[test]
fn down_stops_a_running_testbed() -> Result<()> {
    let state = std::env::temp_dir().join(format!("testbed-cli-down-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    testbed(
        &[
            "up",
            "--nodes",
            "0",
            "--no-kubevirt",
            "--audit-user",
            "vacate",
        ],
        &state,
    )?;

    // The `vacate` user has a kubeconfig of its own, and the audit log holds its requests
    // and no one else's.
    tokio::runtime::Runtime::new()?.block_on(async {
        let client = testbed::kubeconfig::client_from(&state.join("vacate.kubeconfig")).await?;
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(client)
            .list(&Default::default())
            .await?;
        anyhow::Ok(())
    })?;
    let audit = std::fs::read_to_string(state.join("audit.log"))?;
    let users: std::collections::BTreeSet<String> = audit
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l)?;
            Ok(e["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        })
        .collect::<Result<_>>()?;
    assert_eq!(users.into_iter().collect::<Vec<_>>(), ["vacate"], "{audit}");
    assert!(audit.contains(r#""verb":"list""#), "{audit}");

    let pid: i32 = std::fs::read_to_string(state.join("supervisor.pid"))?
        .trim()
        .parse()?;
    let out = testbed(&["down"], &state)?;
    assert!(out.contains("stopped"), "{out}");
    assert!(group_members(pid).is_empty(), "{:?}", group_members(pid));
    assert!(!state.exists());
    Ok(())
}
