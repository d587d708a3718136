//! TLS to the upstream proxy: client configuration (CA, SNI, insecure mode)
//! and readable handshake errors.

use crate::egress::source::*;
use crate::proto::socks5::reply;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

pub(crate) fn tls_settings(
    proxy_host: &str,
    ca: Option<&str>,
    insecure: bool,
    server_name: Option<String>,
    source_name: &str,
) -> Result<ProxyTls, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("socks5_proxy_tls", e.to_string()))?;
    let config = if insecure {
        if ca.is_some() {
            return Err(bad(
                "socks5_proxy_tls_insecure",
                "cannot be combined with socks5_proxy_tls_ca",
            ));
        }
        // Once per process: sources may be made per message or per reload.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "egress source '{source_name}': socks5_proxy_tls_insecure = true: the proxy's certificate is not verified (warned once per process)"
            );
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(ca) => {
                for cert in read_ca(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| bad("socks5_proxy_tls_ca", format!("bad certificate: {e}")))?;
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let name = server_name.unwrap_or_else(|| proxy_host.to_string());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        bad(
            "socks5_proxy_tls_server_name",
            format!("'{name}' is not a valid DNS name or IP address"),
        )
    })?;
    Ok(ProxyTls {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
        insecure,
    })
}

/// Inline PEM (contains "-----BEGIN") or a path to a PEM file.
pub(crate) fn read_ca(ca: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    const KEY: &str = "socks5_proxy_tls_ca";
    crate::host::tls::load_certs(&crate::host::tls::PemSource::from_str(ca), KEY).map_err(|m| {
        let m = m
            .strip_prefix(KEY)
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(&m);
        bad(KEY, m.to_string())
    })
}

/// `socks5_proxy_tls_insecure`: any certificate is accepted. Encryption without
/// authentication, for test setups and proxies on a trusted path.
#[derive(Debug)]
pub(crate) struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(crate) fn tls_error(e: io::Error, server: &str, name: &ServerName<'_>) -> EgressError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let msg = match inner {
        Some(err @ rustls::Error::InvalidCertificate(_)) => format!(
            "tls: certificate not trusted: proxy {server} (name '{}'): {err}",
            name.to_str()
        ),
        Some(err) => format!("tls: handshake with proxy {server} failed: {err}"),
        None => format!("tls: handshake with proxy {server} failed: {e}"),
    };
    fail(reply::GENERAL_FAILURE, msg)
}
