//! The webhook server's certificates: a CA generated at every start (its PEM becomes the
//! webhooks' `caBundle`) and a serving certificate for the listen address.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::error::{Error, Result};

/// A CA and the serving certificate it signed.
pub struct ServingCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServingCerts {
    /// Generates the certificates and writes them into `dir` (for debugging with curl).
    pub fn generate(dir: &Path, ip: IpAddr) -> Result<ServingCerts> {
        let tls = |e: rcgen::Error| Error::Tls(e.to_string());
        let ca_key = KeyPair::generate().map_err(tls)?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kubevirt-sim-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().map_err(tls)?;
        let mut names = vec![ip.to_string(), "localhost".to_string()];
        names.dedup();
        let mut params = CertificateParams::new(names).map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "virt-api.kubevirt.svc");
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;

        let certs = ServingCerts {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.crt"), &certs.ca_pem)?;
        std::fs::write(dir.join("tls.crt"), &certs.cert_pem)?;
        std::fs::write(dir.join("tls.key"), &certs.key_pem)?;
        Ok(certs)
    }

    /// A rustls server configuration presenting the serving certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
