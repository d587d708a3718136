#!/usr/bin/env bash
# Generates throwaway test PKI into $1 (never committed):
#   ca1.{key,pem}, ca2.{key,pem}         two unrelated CAs
#   server.{key,pem}                      CN=localhost, SAN DNS:localhost, IP:127.0.0.1 (by ca1)
#   server2.{key,pem}                     CN=rotated.test, same SANs (by ca2), for reload
#   alice.{key,pem}                       client CN=alice, SAN email:alice@example.test (by ca1)
#   mallory.{key,pem}                     client CN=mallory (by ca2)
#   rsa.{key,pem}                         server cert with a PKCS#1 RSA key (by ca1)
#   ec.{key,pem}                          server cert with a SEC1 EC key (by ca1)
set -euo pipefail
d=$1
mkdir -p "$d"
cd "$d"
q() { "$@" >/dev/null 2>&1; }

ca() {
    q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$1.key" -out "$1.pem" -subj "/CN=kumoproxy test $1" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
# leaf NAME CA CN EXT [KEYTYPE]
leaf() {
    local name=$1 ca=$2 cn=$3 ext=$4
    case "${5:-pkcs8}" in
        pkcs8) q openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key" ;;
        rsa) q openssl genrsa -traditional -out "$name.key" 2048 ;;
        sec1) q openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" ;;
    esac
    q openssl req -new -key "$name.key" -out "$name.csr" -subj "/CN=$cn"
    printf '%s\n' "$ext" >"$name.ext"
    q openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -CAcreateserial \
        -days 2 -out "$name.pem" -extfile "$name.ext"
    rm -f "$name.csr" "$name.ext"
}

ca ca1
ca ca2
server_ext='subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth'
leaf server ca1 localhost "$server_ext"
leaf server2 ca2 rotated.test "$server_ext"
leaf rsa ca1 localhost "$server_ext" rsa
leaf ec ca1 localhost "$server_ext" sec1
leaf alice ca1 alice 'subjectAltName=email:alice@example.test,DNS:alice.clients.test
extendedKeyUsage=clientAuth'
leaf mallory ca2 mallory 'extendedKeyUsage=clientAuth'
echo "$d"
