//! Certificates for one testbed, generated at start: a CA, the API server's serving
//! certificate, client certificates for the admin user and the control-plane components,
//! and the service-account signing key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A PEM certificate with its PEM private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Everything the control plane needs, written under `<state>/pki`.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca: CertPair,
    pub apiserver: CertPair,
    pub admin: CertPair,
    pub controller_manager: CertPair,
    pub scheduler: CertPair,
    /// A second administrator, user `vacate` in group `system:masters`: vacate's own
    /// identity in the benchmark, so the audit log tells its requests apart.
    pub vacate: CertPair,
    /// PKCS#8 PEM of the ECDSA key that signs service-account tokens.
    pub service_account_key_path: PathBuf,
    /// Its public key (PEM), which verifies them.
    pub service_account_pub_path: PathBuf,
}

/// The client identities the testbed issues certificates for: (file stem, CN, O).
const ADMIN: (&str, &str, Option<&str>) = ("admin", "testbed-admin", Some("system:masters"));
const CONTROLLER_MANAGER: (&str, &str, Option<&str>) =
    ("controller-manager", "system:kube-controller-manager", None);
const SCHEDULER: (&str, &str, Option<&str>) = ("scheduler", "system:kube-scheduler", None);
const VACATE: (&str, &str, Option<&str>) = ("vacate", "vacate", Some("system:masters"));

impl Pki {
    /// Generates a fresh CA and all certificates into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the certificate folder {}", dir.display()))?;

        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "vacate-testbed-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let ca = write_pair(dir, "ca", ca_cert.pem(), ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca_params, ca_key);

        let apiserver = {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "10.96.0.1".to_string(),
                "kubernetes".to_string(),
                "kubernetes.default".to_string(),
                "kubernetes.default.svc".to_string(),
                "kubernetes.default.svc.cluster.local".to_string(),
            ])
            .context("building the API server certificate's names")?;
            params
                .distinguished_name
                .push(DnType::CommonName, "kube-apiserver");
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = params
                .signed_by(&key, &issuer)
                .context("signing the API server certificate")?;
            write_pair(dir, "apiserver", cert.pem(), key.serialize_pem())?
        };

        let client = |(stem, cn, org): (&str, &str, Option<&str>)| -> Result<CertPair> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(org) = org {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, org);
            }
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params
                .signed_by(&key, &issuer)
                .with_context(|| format!("signing the client certificate for {cn}"))?;
            write_pair(dir, stem, cert.pem(), key.serialize_pem())
        };
        let admin = client(ADMIN)?;
        let controller_manager = client(CONTROLLER_MANAGER)?;
        let scheduler = client(SCHEDULER)?;
        let vacate = client(VACATE)?;

        let sa_key = KeyPair::generate().context("generating the service-account key")?;
        let service_account_key_path = dir.join("service-account.key");
        write_private(&service_account_key_path, &sa_key.serialize_pem())?;
        let service_account_pub_path = dir.join("service-account.pub");
        std::fs::write(&service_account_pub_path, sa_key.public_key_pem())
            .with_context(|| format!("writing {}", service_account_pub_path.display()))?;

        Ok(Pki {
            ca,
            apiserver,
            admin,
            controller_manager,
            scheduler,
            vacate,
            service_account_key_path,
            service_account_pub_path,
        })
    }
}

fn write_pair(dir: &Path, stem: &str, cert_pem: String, key_pem: String) -> Result<CertPair> {
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, &cert_pem)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, &key_pem)?;
    Ok(CertPair {
        cert_pem,
        key_pem,
        cert_path,
        key_path,
    })
}

fn write_private(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
