//! Egress sources: how a connection leaves this host. Either directly (optionally
//! bound to a source address) or through a SOCKS5 proxy: TCP (optionally TLS) to
//! the proxy, greeting, RFC 1929 when credentials are set, KumoMTA's
//! BIND `<ip>:0` to pick the proxy's source address, then CONNECT.
//!
//! Everything here is async and Lua-free; `lua_egress` wraps it for Lua and the
//! listener uses it for upstream chaining. Failures are `EgressError`s whose text
//! names the hop that failed and whose `code` is the SOCKS5 reply a chained
//! listener sends its own client.

use crate::listener::{Config, Shared};
use crate::net::{within, Keepalive};
use crate::runtime::Process;
use crate::socks5::{self, method, reply, Command, Reply, Request, TargetAddr, UserPass};
use crate::stats::Stats;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// What `make_egress_source` was given, before validation. Secrets are already
/// read (key_data / key_file resolved by the caller).
#[derive(Default)]
pub struct Settings {
    pub name: String,
    pub source_address: Option<IpAddr>,
    pub proxy_server: Option<String>,
    pub proxy_source_address: Option<IpAddr>,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
    pub tls: Option<bool>,
    pub tls_ca: Option<String>,
    pub tls_insecure: Option<bool>,
    pub tls_server_name: Option<String>,
    pub connect_timeout: Option<Duration>,
}

/// A setting that can never work; `key` is the parameter to blame.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub msg: String,
}

fn bad(key: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        msg: msg.into(),
    }
}

/// A validated egress source, shared by every connection made through it.
pub struct EgressSource {
    pub name: String,
    /// Bound before connecting: to the destination, or to the proxy.
    pub source_address: Option<IpAddr>,
    pub proxy: Option<Proxy>,
    pub connect_timeout: Duration,
}

pub struct Proxy {
    /// As configured: an IP literal or a DNS name (every address tried in turn).
    pub host: String,
    pub port: u16,
    /// Asked of the proxy with BIND `<ip>:0` before CONNECT.
    pub source_address: Option<IpAddr>,
    pub credentials: Option<UserPass>,
    pub tls: Option<ProxyTls>,
}

pub struct ProxyTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    pub insecure: bool,
}

impl fmt::Debug for EgressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressSource")
            .field("name", &self.name)
            .field("source_address", &self.source_address)
            .field("proxy", &self.proxy)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl fmt::Debug for Proxy {
    // `credentials` is a UserPass, whose Debug redacts the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("server", &self.server())
            .field("source_address", &self.source_address)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Debug for ProxyTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Proxy {
    pub fn server(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port`, `[v6]:port` or `v4:port` -> (host, port).
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let err = || format!("'{s}' is not host:port (e.g. 'proxy.example.com:1080' or '[::1]:1080')");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(err)?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| err())?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(err)?;
        if h.contains(':') {
            return Err(err()); // a bare IPv6 address needs brackets
        }
        (h, p)
    };
    let port: u16 = port.parse().map_err(|_| err())?;
    if host.is_empty() || port == 0 {
        return Err(err());
    }
    Ok((host.to_string(), port))
}

/// A destination as the caller named it: an IP literal stays an IP (CONNECT with
/// ATYP IPv4/IPv6); anything else is sent to the proxy as a domain name.
pub fn target(host: &str, port: u16) -> Result<TargetAddr, String> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(TargetAddr::Ip(SocketAddr::new(ip, port)));
    }
    if h.is_empty() || h.len() > 255 {
        return Err(format!("host name must be 1 to 255 bytes, got {}", h.len()));
    }
    Ok(TargetAddr::Domain(h.to_string(), port))
}

impl EgressSource {
    pub fn new(s: Settings) -> Result<EgressSource, ConfigError> {
        if s.name.is_empty() {
            return Err(bad("name", "must not be empty"));
        }
        let connect_timeout = s.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            return Err(bad("connect_timeout", "must be greater than zero"));
        }
        let Some(server) = s.proxy_server else {
            // Every proxy-only option is a mistake without a proxy: refuse it rather
            // than connect directly and ignore the credentials or TLS the user wanted.
            let proxy_only: [(&'static str, bool); 7] = [
                (
                    "socks5_proxy_source_address",
                    s.proxy_source_address.is_some(),
                ),
                ("socks5_proxy_username", s.username.is_some()),
                ("socks5_proxy_password", s.password.is_some()),
                ("socks5_proxy_tls", s.tls.is_some()),
                ("socks5_proxy_tls_ca", s.tls_ca.is_some()),
                ("socks5_proxy_tls_insecure", s.tls_insecure.is_some()),
                ("socks5_proxy_tls_server_name", s.tls_server_name.is_some()),
            ];
            if let Some((key, _)) = proxy_only.iter().find(|(_, set)| *set) {
                return Err(bad(key, "requires socks5_proxy_server"));
            }
            return Ok(EgressSource {
                name: s.name,
                source_address: s.source_address,
                proxy: None,
                connect_timeout,
            });
        };
        let (host, port) = split_host_port(&server).map_err(|e| bad("socks5_proxy_server", e))?;
        // Binding to one family and connecting to the other can never work.
        if let (Some(src), Ok(ip)) = (s.source_address, host.parse::<IpAddr>()) {
            if src.is_ipv4() != ip.is_ipv4() {
                return Err(bad(
                    "source_address",
                    format!("{src} cannot reach socks5_proxy_server {ip}: address families differ"),
                ));
            }
        }
        let credentials = match (s.username, s.password) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(bad(
                    "socks5_proxy_password",
                    "is required when socks5_proxy_username is set",
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "socks5_proxy_username",
                    "is required when socks5_proxy_password is set",
                ))
            }
            (Some(u), Some(p)) => {
                // RFC 1929: one length byte each, and the username may not be empty.
                if u.is_empty() || u.len() > 255 {
                    return Err(bad(
                        "socks5_proxy_username",
                        format!("must be 1 to 255 bytes (RFC 1929), got {}", u.len()),
                    ));
                }
                if p.len() > 255 {
                    return Err(bad(
                        "socks5_proxy_password",
                        format!("must be at most 255 bytes (RFC 1929), got {}", p.len()),
                    ));
                }
                Some(UserPass {
                    username: u,
                    password: p,
                })
            }
        };
        let tls = if s.tls.unwrap_or(false) {
            Some(tls_settings(
                &host,
                s.tls_ca.as_deref(),
                s.tls_insecure.unwrap_or(false),
                s.tls_server_name,
                &s.name,
            )?)
        } else {
            let tls_only: [(&'static str, bool); 3] = [
                ("socks5_proxy_tls_ca", s.tls_ca.is_some()),
                ("socks5_proxy_tls_insecure", s.tls_insecure.is_some()),
                ("socks5_proxy_tls_server_name", s.tls_server_name.is_some()),
            ];
            if let Some((key, _)) = tls_only.iter().find(|(_, set)| *set) {
                return Err(bad(key, "requires socks5_proxy_tls = true"));
            }
            None
        };
        Ok(EgressSource {
            name: s.name,
            source_address: s.source_address,
            proxy: Some(Proxy {
                host,
                port,
                source_address: s.proxy_source_address,
                credentials,
                tls,
            }),
            connect_timeout,
        })
    }
}

fn tls_settings(
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
fn read_ca(ca: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    const KEY: &str = "socks5_proxy_tls_ca";
    crate::tls::load_certs(&crate::tls::PemSource::from_str(ca), KEY).map_err(|m| {
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
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

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

/// A failed connect: `msg` names the hop; `code` is the SOCKS5 reply for a chained
/// listener's client (the upstream proxy's own code when it gave one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressError {
    pub msg: String,
    pub code: u8,
}

impl fmt::Display for EgressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for EgressError {}

fn fail(code: u8, msg: impl Into<String>) -> EgressError {
    EgressError {
        msg: msg.into(),
        code,
    }
}

/// The connected stream: plain TCP (splice-able) or TLS to the proxy.
pub type EgressStream = crate::stream::UpstreamStream;

pub struct Connected {
    pub stream: EgressStream,
    /// Our end of the TCP connection (to the proxy, or to the destination).
    pub local: SocketAddr,
    /// The TCP peer: the proxy, or the destination when direct.
    pub peer: SocketAddr,
    /// The address the proxy reported in its CONNECT reply: the real source
    /// address of the outbound connection. None when direct.
    pub proxy_bound: Option<TargetAddr>,
}

impl EgressSource {
    /// Reaches `target` within `timeout`, directly or through the proxy.
    pub async fn connect(
        &self,
        target: &TargetAddr,
        timeout: Duration,
    ) -> Result<Connected, EgressError> {
        let deadline = Instant::now() + timeout;
        let r = match &self.proxy {
            None => self.connect_direct(target, deadline).await,
            Some(p) => self.connect_via(p, target, deadline).await,
        };
        match &r {
            Ok(c) => tracing::debug!(
                "egress '{}': connected to {target} from {}{}",
                self.name,
                c.local,
                match &c.proxy_bound {
                    Some(b) => format!(" via proxy {} (proxy bound {b})", c.peer),
                    None => String::new(),
                }
            ),
            Err(e) => tracing::debug!("egress '{}': {target}: {e}", self.name),
        }
        r
    }

    async fn connect_direct(
        &self,
        target: &TargetAddr,
        deadline: Instant,
    ) -> Result<Connected, EgressError> {
        let what = target.to_string();
        let stream = within(
            left(deadline),
            fail(reply::TTL_EXPIRED, format!("timeout connecting to {what}")),
            async {
                let addrs = resolve(target, self.source_address).await?;
                dial(&addrs, self.source_address).await.map_err(|e| {
                    fail(
                        socks5::reply_code_for_io_error(&e),
                        format!("connect to {what}: {e}"),
                    )
                })
            },
        )
        .await?;
        let (local, peer) = addrs_of(&stream)?;
        Ok(Connected {
            stream: EgressStream::Plain(stream),
            local,
            peer,
            proxy_bound: None,
        })
    }

    async fn connect_via(
        &self,
        proxy: &Proxy,
        target: &TargetAddr,
        deadline: Instant,
    ) -> Result<Connected, EgressError> {
        let server = proxy.server();
        let general = reply::GENERAL_FAILURE;
        let tcp = within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout connecting to proxy {server}"),
            ),
            async {
                let proxy_target = TargetAddr::Domain(proxy.host.clone(), proxy.port);
                let proxy_target = match proxy.host.parse::<IpAddr>() {
                    Ok(ip) => TargetAddr::Ip(SocketAddr::new(ip, proxy.port)),
                    Err(_) => proxy_target,
                };
                let addrs = resolve(&proxy_target, self.source_address)
                    .await
                    .map_err(|e| fail(general, format!("proxy {server}: {e}")))?;
                dial(&addrs, self.source_address)
                    .await
                    .map_err(|e| fail(general, format!("connect to proxy {server}: {e}")))
            },
        )
        .await?;
        let (local, peer) = addrs_of(&tcp)?;
        let server = peer.to_string();
        let mut stream = match &proxy.tls {
            None => EgressStream::Plain(tcp),
            Some(tls) => {
                let s = within(
                    left(deadline),
                    fail(
                        reply::TTL_EXPIRED,
                        format!("timeout in TLS handshake with proxy {server}"),
                    ),
                    async {
                        tls.connector
                            .connect(tls.server_name.clone(), tcp)
                            .await
                            .map_err(|e| tls_error(e, &server, &tls.server_name))
                    },
                )
                .await?;
                EgressStream::Tls(Box::new(s))
            }
        };
        let bound = within(
            left(deadline),
            fail(
                reply::TTL_EXPIRED,
                format!("timeout in SOCKS5 handshake with proxy {server}"),
            ),
            handshake(&mut stream, proxy, target, &server),
        )
        .await?;
        Ok(Connected {
            stream,
            local,
            peer,
            proxy_bound: Some(bound),
        })
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn addrs_of(s: &TcpStream) -> Result<(SocketAddr, SocketAddr), EgressError> {
    let e = |e: io::Error| fail(reply::GENERAL_FAILURE, format!("socket address: {e}"));
    Ok((s.local_addr().map_err(e)?, s.peer_addr().map_err(e)?))
}

/// Addresses to try, keeping only the source address's family when one is set.
async fn resolve(
    target: &TargetAddr,
    source: Option<IpAddr>,
) -> Result<Vec<SocketAddr>, EgressError> {
    crate::net::resolve(target, source)
        .await
        .map_err(|(code, msg)| fail(code, msg))
}

/// Tries each address in turn; the last error wins.
async fn dial(addrs: &[SocketAddr], source: Option<IpAddr>) -> io::Result<TcpStream> {
    let mut last = None;
    for &addr in addrs {
        let attempt = async {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(src) = source {
                sock.bind(SocketAddr::new(src, 0)).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot bind source address {src}: {e}"))
                })?;
            }
            sock.connect(addr).await
        };
        match attempt.await {
            Ok(s) => {
                crate::net::tune_stream(&s, &Keepalive::default(), "egress socket");
                return Ok(s);
            }
            Err(e) => {
                tracing::debug!("connect to {addr} failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to try")))
}

fn tls_error(e: io::Error, server: &str, name: &ServerName<'_>) -> EgressError {
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

/// Greeting, RFC 1929, optional BIND for the source address, CONNECT.
/// Returns the bound address from the CONNECT reply.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    proxy: &Proxy,
    target: &TargetAddr,
    server: &str,
) -> Result<TargetAddr, EgressError> {
    let general = reply::GENERAL_FAILURE;
    let io_err = |step: &str, e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            fail(
                general,
                format!("socks5: proxy {server} closed the connection during {step}"),
            )
        } else {
            fail(general, format!("socks5: proxy {server}: {step}: {e}"))
        }
    };
    let codec_err = |step: &str, e: socks5::CodecError| {
        fail(
            general,
            format!("socks5: proxy {server} sent a bad {step}: {e}"),
        )
    };
    // Offer only what we can complete: with credentials configured, an answer of
    // "no auth" would silently skip the authentication the operator asked for.
    let offer = if proxy.credentials.is_some() {
        method::USERNAME_PASSWORD
    } else {
        method::NO_AUTH
    };
    let mut out = Vec::with_capacity(600);
    socks5::encode_greeting(&[offer], &mut out);
    send(io, &out).await.map_err(|e| io_err("greeting", e))?;
    let mut two = [0u8; 2];
    io.read_exact(&mut two)
        .await
        .map_err(|e| io_err("method selection", e))?;
    let chosen = match socks5::parse_method_selection(&two) {
        Ok(Some((m, _))) => m,
        Ok(None) => unreachable!("two bytes are a whole method selection"),
        Err(e) => return Err(codec_err("method selection", e)),
    };
    if chosen != offer {
        let what = if offer == method::USERNAME_PASSWORD {
            "username/password"
        } else {
            "no authentication (set socks5_proxy_username and socks5_proxy_password?)"
        };
        return Err(fail(
            general,
            format!("socks5 auth: proxy {server} accepted none of our methods (offered {what}; it answered 0x{chosen:02x})"),
        ));
    }
    if let Some(creds) = &proxy.credentials {
        out.clear();
        socks5::encode_userpass(&creds.username, &creds.password, &mut out);
        send(io, &out)
            .await
            .map_err(|e| io_err("RFC 1929 authentication", e))?;
        io.read_exact(&mut two)
            .await
            .map_err(|e| io_err("RFC 1929 authentication", e))?;
        match socks5::parse_auth_status(&two) {
            Ok(Some((true, _))) => {}
            Ok(Some((false, _))) => {
                return Err(fail(
                    general,
                    format!(
                        "socks5 auth: rejected by proxy {server} (user '{}')",
                        String::from_utf8_lossy(&creds.username)
                    ),
                ))
            }
            Ok(None) => unreachable!("two bytes are a whole auth status"),
            Err(e) => return Err(codec_err("auth status", e)),
        }
    }
    if let Some(src) = proxy.source_address {
        let req = Request {
            command: Command::Bind,
            target: TargetAddr::Ip(SocketAddr::new(src, 0)),
        };
        let r = request(io, &req, "BIND reply", &io_err, &codec_err).await?;
        if r.code != reply::SUCCEEDED {
            return Err(fail(
                r.code,
                format!(
                    "socks5: proxy {server} refused source address {src} (BIND): {} (0x{:02x})",
                    socks5::reply_text(r.code),
                    r.code
                ),
            ));
        }
    }
    let req = Request {
        command: Command::Connect,
        target: target.clone(),
    };
    let r = request(io, &req, "CONNECT reply", &io_err, &codec_err).await?;
    if r.code != reply::SUCCEEDED {
        return Err(fail(
            r.code,
            format!(
                "socks5: {} (0x{:02x}) connecting to {target} via proxy {server}",
                socks5::reply_text(r.code),
                r.code
            ),
        ));
    }
    Ok(r.bound)
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await // TLS: push the record out now
}

/// Sends a request and reads exactly one reply: not a byte of what follows it.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    req: &Request,
    step: &str,
    io_err: &impl Fn(&str, io::Error) -> EgressError,
    codec_err: &impl Fn(&str, socks5::CodecError) -> EgressError,
) -> Result<Reply, EgressError> {
    let mut out = Vec::with_capacity(262);
    socks5::encode_request(req, &mut out);
    send(io, &out).await.map_err(|e| io_err(step, e))?;
    let mut buf = vec![0u8; 5];
    io.read_exact(&mut buf).await.map_err(|e| io_err(step, e))?;
    let n = match socks5::reply_len(&buf) {
        Ok(Some(n)) => n,
        Ok(None) => unreachable!("5 bytes tell a reply's length"),
        Err(e) => return Err(codec_err(step, e)),
    };
    buf.resize(n, 0);
    io.read_exact(&mut buf[5..])
        .await
        .map_err(|e| io_err(step, e))?;
    match socks5::parse_reply(&buf) {
        Ok(Some((r, _))) => Ok(r),
        Ok(None) => Err(codec_err(
            step,
            socks5::CodecError::Malformed("short reply"),
        )),
        Err(e) => Err(codec_err(step, e)),
    }
}

/// `src:forward{}`: a local TCP listener whose connections are relayed to `to`
/// through `source`. It is a listener like the proxy's (stats, close, graceful
/// shutdown in `run()`), so it registers with the process the same way.
pub fn start_forward(
    process: &Process,
    source: Arc<EgressSource>,
    listen: SocketAddr,
    to: TargetAddr,
    idle_timeout: Duration,
) -> io::Result<Arc<Shared>> {
    let mut config = Config::new(listen);
    config.timeout = idle_timeout;
    config.service = crate::listener::Service::Forward { source, to };
    crate::listener::start(process, config)
}

/// One connection accepted by a forwarder: connect through the source, relay.
pub async fn serve_forward(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    source: Arc<EgressSource>,
    to: TargetAddr,
) {
    let _active = crate::stats::ActiveGuard(&shared.stats);
    let r = tokio::select! {
        r = forward_one(stream, &shared, &source, &to) => r,
        _ = shared.abort.cancelled() => Err("cut at the end of the shutdown grace period".to_string()),
    };
    match r {
        Ok(()) => Stats::inc(&shared.stats.completed),
        Err(e) => {
            Stats::inc(&shared.stats.failed);
            tracing::warn!("forwarder {}: {peer} -> {to}: {e}", shared.local_addr);
        }
    }
}

async fn forward_one(
    client: TcpStream,
    shared: &Shared,
    source: &EgressSource,
    to: &TargetAddr,
) -> Result<(), String> {
    if !shared.config.sockopts_inherited {
        crate::net::tune_stream(&client, &shared.config.keepalive, "client socket");
    }
    let up = source
        .connect(to, source.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    crate::relay::relay_any(
        crate::stream::ClientStream::Plain(client),
        up.stream,
        &[],
        shared,
        None,
    )
    .await
    .map_err(|e| format!("relay ended: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn settings() -> Settings {
        Settings {
            name: "ip-1".into(),
            proxy_server: Some("127.0.0.1:1080".into()),
            ..Default::default()
        }
    }

    fn key_of(s: Settings) -> &'static str {
        EgressSource::new(s).unwrap_err().key
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("a.example:25"),
            Ok(("a.example".into(), 25))
        );
        assert_eq!(
            split_host_port("10.0.0.1:1080"),
            Ok(("10.0.0.1".into(), 1080))
        );
        assert_eq!(split_host_port("[::1]:1080"), Ok(("::1".into(), 1080)));
        assert!(split_host_port("::1:1080").is_err());
        assert!(split_host_port("host").is_err());
        assert!(split_host_port("host:0").is_err());
        assert!(split_host_port(":25").is_err());
        assert!(split_host_port("[nope]:25").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            target("10.0.0.1", 25),
            Ok(TargetAddr::Ip("10.0.0.1:25".parse().unwrap()))
        );
        assert_eq!(
            target("[::1]", 25),
            Ok(TargetAddr::Ip("[::1]:25".parse().unwrap()))
        );
        assert_eq!(
            target("mx.example", 25),
            Ok(TargetAddr::Domain("mx.example".into(), 25))
        );
        assert!(target("", 25).is_err());
        assert!(target(&"a".repeat(256), 25).is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut s = settings();
        s.username = Some(b"alice".to_vec());
        assert_eq!(key_of(s), "socks5_proxy_password");

        let mut s = settings();
        s.password = Some(b"pw".to_vec());
        assert_eq!(key_of(s), "socks5_proxy_username");

        let mut s = settings();
        s.username = Some(vec![b'u'; 256]);
        s.password = Some(b"pw".to_vec());
        assert_eq!(key_of(s), "socks5_proxy_username");

        // KumoMTA blames the username for a long password; we name the password.
        let mut s = settings();
        s.username = Some(b"alice".to_vec());
        s.password = Some(vec![b'p'; 256]);
        assert_eq!(key_of(s), "socks5_proxy_password");

        let mut s = settings();
        s.source_address = Some("::1".parse().unwrap());
        assert_eq!(key_of(s), "source_address");

        let mut s = settings();
        s.proxy_server = None;
        s.tls = Some(true);
        assert_eq!(key_of(s), "socks5_proxy_tls");

        let mut s = settings();
        s.tls_ca = Some("/nonexistent".into());
        assert_eq!(key_of(s), "socks5_proxy_tls_ca");

        let mut s = settings();
        s.tls = Some(true);
        s.tls_ca = Some("/nonexistent/ca.pem".into());
        assert_eq!(key_of(s), "socks5_proxy_tls_ca");

        let mut s = settings();
        s.proxy_server = Some("proxy".into());
        assert_eq!(key_of(s), "socks5_proxy_server");

        let mut s = settings();
        s.connect_timeout = Some(Duration::ZERO);
        assert_eq!(key_of(s), "connect_timeout");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let mut s = settings();
        s.username = Some(b"alice".to_vec());
        s.password = Some(b"hunter2-secret".to_vec());
        s.tls = Some(true);
        let src = EgressSource::new(s).unwrap();
        let dbg = format!("{src:?}");
        assert!(dbg.contains("alice"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    /// A scripted proxy: replies as given, records what the client sent.
    async fn scripted(replies: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(&replies).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), s.read_to_end(&mut got)).await;
            got
        });
        (addr, h)
    }

    #[tokio::test]
    async fn reads_exactly_the_reply_and_leaves_the_banner() {
        // method NO_AUTH, CONNECT ok bound 10.1.2.3:4567, then an SMTP banner
        let mut replies = vec![5, 0];
        socks5::encode_reply(
            &Reply::success("10.1.2.3:4567".parse().unwrap()),
            &mut replies,
        );
        replies.extend_from_slice(b"220 hi\r\n");
        let (addr, server) = scripted(replies).await;
        let mut s = settings();
        s.proxy_server = Some(addr.to_string());
        let src = EgressSource::new(s).unwrap();
        let mut c = src
            .connect(&target("mx.example", 25).unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            c.proxy_bound,
            Some(TargetAddr::Ip("10.1.2.3:4567".parse().unwrap()))
        );
        let mut banner = [0u8; 8];
        c.stream.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"220 hi\r\n");
        drop(c);
        let sent = server.await.unwrap();
        let mut want = vec![5, 1, 0];
        socks5::encode_request(
            &Request {
                command: Command::Connect,
                target: TargetAddr::Domain("mx.example".into(), 25),
            },
            &mut want,
        );
        assert_eq!(sent, want);
    }

    #[tokio::test]
    async fn auth_bind_connect_and_errors_name_the_hop() {
        // userpass chosen, auth ok, BIND ok, CONNECT refused (0x05)
        let mut replies = vec![5, 2, 1, 0];
        socks5::encode_reply(
            &Reply::success("127.0.0.2:0".parse().unwrap()),
            &mut replies,
        );
        socks5::encode_reply(&Reply::failure(reply::CONNECTION_REFUSED), &mut replies);
        let (addr, server) = scripted(replies).await;
        let mut s = settings();
        s.proxy_server = Some(addr.to_string());
        s.proxy_source_address = Some("127.0.0.2".parse().unwrap());
        s.username = Some(b"alice".to_vec());
        s.password = Some(b"pw".to_vec());
        let src = EgressSource::new(s).unwrap();
        let e = src
            .connect(&target("10.9.9.9", 25).unwrap(), Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert_eq!(e.code, reply::CONNECTION_REFUSED);
        assert!(
            e.msg
                .starts_with("socks5: connection refused by destination (0x05)"),
            "{e}"
        );
        let sent = server.await.unwrap();
        let mut want = vec![5, 1, 2];
        socks5::encode_userpass(b"alice", b"pw", &mut want);
        for (command, t) in [
            (Command::Bind, "127.0.0.2:0"),
            (Command::Connect, "10.9.9.9:25"),
        ] {
            socks5::encode_request(
                &Request {
                    command,
                    target: TargetAddr::Ip(t.parse().unwrap()),
                },
                &mut want,
            );
        }
        assert_eq!(sent, want);
    }

    #[tokio::test]
    async fn auth_rejected_and_timeouts() {
        let (addr, _server) = scripted(vec![5, 2, 1, 1]).await;
        let mut s = settings();
        s.proxy_server = Some(addr.to_string());
        s.username = Some(b"alice".to_vec());
        s.password = Some(b"wrong".to_vec());
        let src = EgressSource::new(s).unwrap();
        let e = src
            .connect(&target("10.9.9.9", 25).unwrap(), Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(e.msg.starts_with("socks5 auth: rejected by proxy"), "{e}");
        assert!(!e.msg.contains("wrong"), "{e}");

        // A proxy that accepts and says nothing: the timeout names the step.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = settings();
        s.proxy_server = Some(l.local_addr().unwrap().to_string());
        let src = EgressSource::new(s).unwrap();
        let e = src
            .connect(&target("10.9.9.9", 25).unwrap(), Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(
            e.msg.contains("timeout in SOCKS5 handshake with proxy"),
            "{e}"
        );
        assert_eq!(e.code, reply::TTL_EXPIRED);
        drop(l);
    }
}
