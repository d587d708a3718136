//! Validating `make_egress_source`'s settings into an [`EgressSource`].

use crate::egress::source::*;
use crate::egress::tls::tls_settings;
use crate::proto::socks5::UserPass;
use std::net::IpAddr;

impl EgressSource {
    pub fn new(s: Settings) -> Result<EgressSource, ConfigError> {
        if s.name.is_empty() {
            return Err(bad("name", "must not be empty"));
        }
        let connect_timeout = s.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            return Err(bad("connect_timeout", "must be greater than zero"));
        }
        let ha_proxy = crate::egress::haproxy::settings(
            s.ha_proxy_server.as_deref(),
            s.ha_proxy_source_address,
        )
        .map_err(|(key, msg)| bad(key, msg))?;
        if ha_proxy.is_some() && s.proxy_server.is_some() {
            return Err(bad(
                "ha_proxy_server",
                "cannot be combined with socks5_proxy_server",
            ));
        }
        let Some(server) = s.proxy_server else {
            // Every proxy-only option is a mistake without a proxy: refuse it rather
            // than connect directly and ignore the credentials or TLS the user wanted.
            let proxy_only: [(&'static str, bool); 8] = [
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
                ("socks5_proxy_remote_dns", s.remote_dns.is_some()),
            ];
            if let Some((key, _)) = proxy_only.iter().find(|(_, set)| *set) {
                return Err(bad(key, "requires socks5_proxy_server"));
            }
            return Ok(EgressSource {
                name: s.name,
                source_address: s.source_address,
                proxy: None,
                ha_proxy,
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
                remote_dns: s.remote_dns.unwrap_or(false),
            }),
            ha_proxy: None,
            connect_timeout,
        })
    }
}
