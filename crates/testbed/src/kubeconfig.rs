//! Self-contained kubeconfig files (certificates inlined as base64 data).

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::pki::CertPair;

/// Renders a kubeconfig for `server` that trusts `ca_pem` and authenticates with `client`.
pub fn render(server: &str, ca_pem: &str, client: &CertPair, user: &str) -> String {
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: {user}
    namespace: default
current-context: testbed
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

/// Writes a file atomically (temporary file + rename), owner-readable only, so that a
/// reader never sees half a kubeconfig.
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Builds a kube client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Result<kube::Client> {
    let config = config_from(path).await?;
    kube::Client::try_from(config)
        .with_context(|| format!("building a client from {}", path.display()))
}

/// Loads a kube client configuration from a kubeconfig file.
pub async fn config_from(path: &Path) -> Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))
}
