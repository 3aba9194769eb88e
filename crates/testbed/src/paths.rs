//! Where things are: the workspace, the state folder, the upstream binaries and the
//! KubeVirt simulator.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Env: folder holding etcd, kube-apiserver, ... (skips the build script).
pub const ENV_BIN_DIR: &str = "VACATE_TESTBED_BIN";
/// Env: path of the KubeVirt simulator binary.
pub const ENV_KUBEVIRT_SIM: &str = "VACATE_KUBEVIRT_SIM";
/// Env: kubeconfig of a running testbed that tests should reuse.
pub const ENV_KUBECONFIG: &str = "VACATE_TESTBED_KUBECONFIG";

/// The upstream programs the control plane runs.
pub const UPSTREAM_BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
];

/// The workspace root: the nearest ancestor of the current folder whose Cargo.toml has a
/// `[workspace]` table, else the workspace this crate was built in.
pub fn workspace_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let manifest = dir.join("Cargo.toml");
            if let Ok(text) = std::fs::read_to_string(&manifest)
                && text.lines().any(|l| l.trim() == "[workspace]")
                && dir.join("tests/testbed/build.sh").exists()
            {
                return dir.to_path_buf();
            }
        }
    }
    compiled_workspace_root()
}

fn compiled_workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `.testbed/` at the workspace root.
pub fn default_state_dir() -> PathBuf {
    workspace_root().join(".testbed")
}

/// The folder with the upstream binaries: `$VACATE_TESTBED_BIN`, else what
/// `tests/testbed/build.sh` prints (it builds on first use and is instant afterwards).
pub fn upstream_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_BIN_DIR) {
        let dir = PathBuf::from(dir);
        check_bin_dir(&dir).with_context(|| format!("checking ${ENV_BIN_DIR}"))?;
        return Ok(dir);
    }
    let mut candidates = vec![workspace_root(), compiled_workspace_root()];
    candidates.dedup();
    let script = candidates
        .iter()
        .map(|root| root.join("tests/testbed/build.sh"))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "cannot find tests/testbed/build.sh (looked in {}); run from the vacate \
                 workspace or set ${ENV_BIN_DIR} to a folder with {}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                UPSTREAM_BINARIES.join(", ")
            )
        })?;
    let output = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); see its output above. The control plane is built from Go \
             modules with the machine's Go toolchain",
            script.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .with_context(|| format!("{} printed no bin folder", script.display()))?;
    check_bin_dir(&dir)?;
    Ok(dir)
}

fn check_bin_dir(dir: &Path) -> Result<()> {
    let missing: Vec<_> = UPSTREAM_BINARIES
        .iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks {:?}; run tests/testbed/build.sh to build them",
            dir.display(),
            missing
        );
    }
    Ok(())
}

/// The KubeVirt simulator: `$VACATE_KUBEVIRT_SIM`, else `kubevirt-sim` next to the current
/// executable, else in its parent folder (test binaries live in `target/<profile>/deps`).
pub fn kubevirt_sim() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_KUBEVIRT_SIM) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "${ENV_KUBEVIRT_SIM} is {} but no such file exists; build it with \
             `cargo build -p kubevirt-sim`",
            p.display()
        );
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut looked = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("kubevirt-sim");
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    bail!(
        "the KubeVirt simulator binary was not found (looked at {}); build it with \
         `cargo build -p kubevirt-sim` (same profile and target dir), or point \
         ${ENV_KUBEVIRT_SIM} at it, or start without KubeVirt (--no-kubevirt)",
        looked.join(", ")
    )
}
