//! The TLS certificate of the SIP listeners: the one `Data.SipConfig.CertificateThumbPrint` names
//! (SHA-1 of its DER) from `<data-dir>/certs/*.pem`, else a self-signed one generated once and kept
//! in `<data-dir>/certs/self-signed.pem`. A resolver holds the current one, so a configuration
//! change swaps it for new handshakes without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha1::{Digest, Sha1};

/// Why no certificate could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// File system trouble.
    #[error("{0}")]
    Io(String),
    /// A PEM file without a usable certificate and key.
    #[error("{0}")]
    Invalid(String),
}

/// Hands the current certificate to every new TLS handshake.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    /// Starts with `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        CertResolver {
            current: RwLock::new(key),
        }
    }

    /// Replaces the certificate for handshakes from now on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut g) => *g = key,
            Err(p) => *p.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }
}

/// SHA-1 thumbprint of a DER certificate, upper-case hex as Windows shows it.
pub fn thumbprint(der: &[u8]) -> String {
    hex::encode_upper(Sha1::digest(der))
}

fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, CertError> {
    let signing = any_supported_type(&key)
        .map_err(|e| CertError::Invalid(format!("unusable private key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

fn load_pem(
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| CertError::Invalid(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(CertError::Invalid(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(path)
        .map_err(|e| CertError::Invalid(format!("{}: no private key: {e}", path.display())))?;
    Ok((certs, key))
}

/// Finds the certificate whose thumbprint is `thumb` among `<certs_dir>/*.pem` (each file holding
/// the chain and its key), or, with an empty thumbprint, returns the self-signed one (creating it).
pub fn load_certificate(
    certs_dir: &Path,
    thumb: &str,
    server_name: &str,
) -> Result<(Arc<CertifiedKey>, String), CertError> {
    std::fs::create_dir_all(certs_dir)
        .map_err(|e| CertError::Io(format!("{}: {e}", certs_dir.display())))?;
    let want = thumb.trim().replace([':', ' '], "").to_ascii_uppercase();
    if !want.is_empty() {
        let entries = std::fs::read_dir(certs_dir)
            .map_err(|e| CertError::Io(format!("{}: {e}", certs_dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "pem") {
                continue;
            }
            match load_pem(&path) {
                Ok((certs, key)) if thumbprint(&certs[0]) == want => {
                    return Ok((certified_key(certs, key)?, want));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
            }
        }
        tracing::warn!(thumbprint = %want, dir = %certs_dir.display(), "no certificate with this thumbprint; using the self-signed one");
    }
    let path: PathBuf = certs_dir.join("self-signed.pem");
    if !path.exists() {
        let names = vec![server_name.to_owned(), "localhost".to_owned()];
        let ck = rcgen::generate_simple_self_signed(names).map_err(|e| {
            CertError::Invalid(format!("generating a self-signed certificate: {e}"))
        })?;
        let pem = format!("{}{}", ck.cert.pem(), ck.key_pair.serialize_pem());
        crate::config::local::write_private(&path, pem.as_bytes())
            .map_err(|e| CertError::Io(e.to_string()))?;
        tracing::warn!(file = %path.display(), "no TLS certificate configured: generated a self-signed one (set Data.SipConfig.CertificateThumbPrint to use a real one)");
    } else {
        tracing::warn!(file = %path.display(), "no TLS certificate configured: using the self-signed one");
    }
    let (certs, key) = load_pem(&path)?;
    let tp = thumbprint(&certs[0]);
    Ok((certified_key(certs, key)?, tp))
}

/// A TLS server configuration that asks `resolver` for its certificate.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(resolver.clone()));
    match cfg {
        Ok(c) => Arc::new(c),
        // The ring provider supports the default versions; this cannot fail with it.
        Err(e) => unreachable!("ring supports TLS 1.2 and 1.3: {e}"),
    }
}
