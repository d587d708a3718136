//! The SOCKS5 client conversation with an upstream proxy, over any stream.

use crate::egress::source::*;
use crate::proto::socks5::{self, method, reply, Command, Reply, Request, TargetAddr};
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Greeting, RFC 1929, optional BIND for the source address, then `command`
/// (CONNECT, or UDP ASSOCIATE whose `target` is our UDP address). Returns the
/// bound address from its reply.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    proxy: &Proxy,
    command: Command,
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
        command,
        target: target.clone(),
    };
    let (step, doing) = match command {
        Command::UdpAssociate => ("UDP ASSOCIATE reply", "for UDP ASSOCIATE".to_string()),
        _ => ("CONNECT reply", format!("connecting to {target}")),
    };
    let r = request(io, &req, step, &io_err, &codec_err).await?;
    if r.code != reply::SUCCEEDED {
        return Err(fail(
            r.code,
            format!(
                "socks5: {} (0x{:02x}) {doing} via proxy {server}",
                socks5::reply_text(r.code),
                r.code
            ),
        ));
    }
    Ok(r.bound)
}

pub(crate) async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await // TLS: push the record out now
}

/// Sends a request and reads exactly one reply: not a byte of what follows it.
pub(crate) async fn request<S: AsyncRead + AsyncWrite + Unpin>(
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
