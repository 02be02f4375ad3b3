#!/usr/bin/env bash
# make-test-certs.sh DIR: a test CA, a server certificate for
# 127.0.0.1/localhost (also usable as a client certificate for mutual TLS
# between psd processes), a client certificate, and token files, all in DIR:
#
#   ca.pem ca.key server.pem server.key client.pem client.key
#   tokens          "<role> <token>" lines for trainer, admin and node (servers: --token-file)
#   trainer.token admin.token node.token   one token each (clients: --token-file)
#
# FOR LOCAL TESTING ONLY: the CA key sits next to the certificates.
# Idempotent: files that exist are kept.
set -euo pipefail
dir=${1:?usage: make-test-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
umask 077
days=3650

if [[ ! -f ca.pem || ! -f ca.key ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days "$days" \
    -subj "/CN=psd test CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# make_cert NAME CN EXTENDED_KEY_USAGE [SAN]
make_cert() {
  local name=$1 cn=$2 eku=$3 san=${4:-}
  [[ -f $name.pem && -f $name.key ]] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n $san ]] && echo "subjectAltName=$san"
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" \
    -days "$days" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
make_cert server localhost serverAuth,clientAuth "DNS:localhost,IP:127.0.0.1,IP:::1"
make_cert client "psd test client" clientAuth

if [[ ! -f tokens ]]; then
  for role in trainer admin node; do
    openssl rand -hex 32 >"$role.token"
  done
  {
    echo "# psd test tokens: <role> <token>"
    for role in trainer admin node; do echo "$role $(cat "$role.token")"; done
  } >tokens
fi
chmod 644 ca.pem server.pem client.pem
echo "test certificates and tokens in $(pwd)"
