-- A SOCKS5 proxy inside TLS, with mutual TLS: clients present a certificate
-- issued by your CA, which identifies them without a password.
--
--   lua5.4 examples/tls.lua CERT.pem KEY.pem CLIENT_CA.pem
--
-- Without arguments it serves a self-signed certificate (printed below) and asks
-- for username/password instead. Try it with kumoproxy's own egress source:
--   see examples/egress.lua (socks5_proxy_tls = true, socks5_proxy_tls_ca = ...)
local kumoproxy = require 'kumoproxy'

local cert, key, client_ca = arg[1], arg[2], arg[3]

kumoproxy.on('proxy_server_auth_rfc1929', function(username, password, conn_meta)
  -- conn_meta.tls_client_identity is the verified certificate's CN, when there is one.
  print(('login %s from %s (certificate: %s)'):format(
    username, conn_meta.peer_address, conn_meta.tls_client_identity or 'none'))
  return username == 'alice' and password == 'secret'
end)

local listener = kumoproxy.start_proxy_listener {
  listen = os.getenv('KUMOPROXY_LISTEN') or '127.0.0.1:1443',
  use_tls = true,
  tls_certificate = cert,      -- nil: self-signed for `hostname`
  tls_private_key = key,
  hostname = 'localhost',
  tls_client_ca = client_ca,   -- nil: no client certificates asked for
  require_auth = true,         -- a verified client certificate satisfies this
  -- The demo (and its test) reach services on 127.0.0.1; loopback, link-local
  -- and 169.254.169.254 are denied by default: leave this out in production.
  allow_private_destinations = true,
}
print('proxy listener (TLS) on ' .. listener:local_addr())
if not cert then
  print('self-signed certificate clients can trust:\n' .. listener:certificate_pem())
end
io.stdout:flush()

-- Rotate certificates without dropping sessions, e.g. from a SIGHUP-driven
-- reload in your own loop: listener:reload_tls { tls_certificate = ..., tls_private_key = ... }
kumoproxy.run()
