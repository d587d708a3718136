//! TLS on the proxy listener: certificate loading (file or inline PEM), self-signed
//! certificates, mutual TLS with a client CA, hot reload, and client identities.
//!
//! rustls with the `ring` provider, TLS 1.2 and 1.3. The live `ServerConfig` sits
//! behind an `RwLock<Arc<_>>`: a reload swaps the Arc for new handshakes while
//! established sessions keep the config they started with.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// A certificate, key or CA: inline PEM text or a file path.
#[derive(Clone)]
pub enum PemSource {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for PemSource {
    // Inline material may be a private key: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::Inline(_) => write!(f, "<inline PEM>"),
            PemSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl PemSource {
    /// Text containing `-----BEGIN` is PEM; anything else is a path.
    pub fn from_str(s: &str) -> Self {
        if s.contains("-----BEGIN") {
            PemSource::Inline(s.to_string())
        } else {
            PemSource::File(PathBuf::from(s))
        }
    }

    fn describe(&self) -> String {
        match self {
            PemSource::Inline(_) => "inline PEM".to_string(),
            PemSource::File(p) => format!("file {}", p.display()),
        }
    }

    fn bytes(&self, param: &str) -> Result<Vec<u8>, String> {
        match self {
            PemSource::Inline(s) => Ok(s.as_bytes().to_vec()),
            PemSource::File(p) => {
                std::fs::read(p).map_err(|e| format!("{param}: cannot read {}: {e}", p.display()))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

/// Everything `use_tls` needs, as given by the user.
#[derive(Debug, Clone)]
pub struct TlsParams {
    pub certificate: Option<PemSource>,
    pub private_key: Option<PemSource>,
    pub hostname: String,
    pub client_ca: Option<PemSource>,
    pub client_auth: ClientAuth,
}

pub fn load_certs(src: &PemSource, param: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = src.bytes(param)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{param}: {}: invalid PEM: {e}", src.describe()))?;
    if certs.is_empty() {
        return Err(format!(
            "{param}: {}: no CERTIFICATE found in PEM",
            src.describe()
        ));
    }
    Ok(certs)
}

pub fn load_key(src: &PemSource, param: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = src.bytes(param)?;
    // Accepts PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{param}: {}: no usable private key: {e}", src.describe()))
}

pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server config; also returns the leaf certificate as PEM.
fn build(params: &TlsParams) -> Result<(Arc<ServerConfig>, String), String> {
    let (chain, key, leaf_pem) = match (&params.certificate, &params.private_key) {
        (Some(c), Some(k)) => {
            let chain = load_certs(c, "tls_certificate")?;
            let key = load_key(k, "tls_private_key")?;
            let pem = pem_encode("CERTIFICATE", &chain[0]);
            (chain, key, pem)
        }
        (None, None) => return Err("tls_certificate: required".into()),
        (Some(_), None) => return Err("tls_private_key: required with tls_certificate".into()),
        (None, Some(_)) => return Err("tls_certificate: required with tls_private_key".into()),
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &params.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca, "tls_client_ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_client_ca: {}: {e}", ca.describe()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = match params.client_auth {
                ClientAuth::Required => v,
                ClientAuth::Optional => v.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| format!("tls_client_ca: {}: {e}", ca.describe()))?,
            )
        }
    };
    let what = match &params.certificate {
        Some(c) => format!(" ({} with tls_private_key)", c.describe()),
        None => String::new(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_certificate{what}: {e}"))?;
    config.alpn_protocols.clear();
    Ok((Arc::new(config), leaf_pem))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    // LF line endings, as openssl and rcgen write them.
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der.to_vec()), config)
}

/// A listener's TLS state; `reload` swaps it atomically for new handshakes.
pub struct TlsServer {
    current: RwLock<(Arc<ServerConfig>, String)>,
    params: RwLock<TlsParams>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").finish_non_exhaustive()
    }
}

impl TlsServer {
    pub fn new(mut params: TlsParams) -> Result<Self, String> {
        if params.certificate.is_none() && params.private_key.is_none() {
            // Generated once and kept as if given inline: a later reload_tls that
            // changes only the client CA keeps the certificate clients trust.
            let ck =
                rcgen::generate_simple_self_signed(vec![params.hostname.clone()]).map_err(|e| {
                    format!(
                        "hostname: cannot generate a self-signed certificate for '{}': {e}",
                        params.hostname
                    )
                })?;
            params.certificate = Some(PemSource::Inline(ck.cert.pem()));
            params.private_key = Some(PemSource::Inline(ck.signing_key.serialize_pem()));
        }
        let built = build(&params)?;
        Ok(TlsServer {
            current: RwLock::new(built),
            params: RwLock::new(params),
        })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap().0.clone())
    }

    pub fn certificate_pem(&self) -> String {
        self.current.read().unwrap().1.clone()
    }

    /// Applies `update` to the current parameters and rebuilds. On error the old
    /// material stays in force.
    pub fn reload(&self, update: impl FnOnce(&mut TlsParams)) -> Result<(), String> {
        let mut next = self.params.read().unwrap().clone();
        update(&mut next);
        let built = build(&next)?;
        *self.current.write().unwrap() = built;
        *self.params.write().unwrap() = next;
        Ok(())
    }
}

/// Who a verified client certificate says the client is.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    pub common_name: Option<String>,
    pub sans: Vec<String>,
    /// SHA-256 of the certificate (DER): the auth cache keys verdicts on the
    /// certificate itself, not on names two certificates could share.
    pub fingerprint: [u8; 32],
}

impl ClientIdentity {
    /// The name used as identity: subject CN, else the first SAN.
    pub fn name(&self) -> Option<&str> {
        self.common_name
            .as_deref()
            .or_else(|| self.sans.first().map(|s| s.as_str()))
    }
}

pub fn client_identity(der: &CertificateDer<'_>) -> Option<ClientIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(s) => sans.push(format!("DNS:{s}")),
                GeneralName::RFC822Name(s) => sans.push(format!("email:{s}")),
                GeneralName::URI(s) => sans.push(format!("URI:{s}")),
                _ => {}
            }
        }
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der.as_ref()).as_ref());
    Some(ClientIdentity {
        common_name,
        sans,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> TlsParams {
        TlsParams {
            certificate: None,
            private_key: None,
            hostname: "proxy.test".into(),
            client_ca: None,
            client_auth: ClientAuth::Required,
        }
    }

    #[test]
    fn self_signed_certificate_pem_roundtrips() {
        let s = TlsServer::new(self_signed()).unwrap();
        let pem = s.certificate_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let certs = load_certs(&PemSource::from_str(&pem), "x").unwrap();
        assert_eq!(certs.len(), 1);
    }

    #[test]
    fn inline_material_and_mismatched_key() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let mut p = self_signed();
        p.certificate = Some(PemSource::from_str(&a.cert.pem()));
        p.private_key = Some(PemSource::from_str(&a.signing_key.serialize_pem()));
        let s = TlsServer::new(p.clone()).unwrap();
        assert_eq!(s.certificate_pem().trim(), a.cert.pem().trim());
        // A key from another certificate is refused, and reload keeps the old one.
        let err = s
            .reload(|p| p.private_key = Some(PemSource::from_str(&b.signing_key.serialize_pem())))
            .unwrap_err();
        assert!(err.contains("tls_certificate"), "{err}");
        assert_eq!(s.certificate_pem().trim(), a.cert.pem().trim());
    }

    #[test]
    fn errors_name_parameter_and_file() {
        let mut p = self_signed();
        p.certificate = Some(PemSource::from_str("/nonexistent/cert.pem"));
        p.private_key = Some(PemSource::from_str("/nonexistent/key.pem"));
        let err = TlsServer::new(p).err().unwrap();
        assert!(
            err.starts_with("tls_certificate: cannot read /nonexistent/cert.pem"),
            "{err}"
        );
        let mut p = self_signed();
        p.certificate = Some(PemSource::Inline("-----BEGIN NOTHING-----\n".into()));
        p.private_key = Some(PemSource::Inline("-----BEGIN NOTHING-----\n".into()));
        let err = TlsServer::new(p).err().unwrap();
        assert!(err.starts_with("tls_certificate:"), "{err}");
    }

    #[test]
    fn identity_from_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = client_identity(cert.der()).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("alice"));
        assert_eq!(id.sans, vec!["DNS:client.test".to_string()]);
        assert_eq!(id.name(), Some("alice"));
    }

    #[test]
    fn pem_encode_matches_rcgen() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        assert_eq!(
            pem_encode("CERTIFICATE", a.cert.der()).replace('\r', ""),
            a.cert.pem().replace('\r', "")
        );
    }
}
