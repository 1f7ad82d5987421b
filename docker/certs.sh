#!/usr/bin/env bash
# Credentials for a fedsim deployment (SuperLink + SuperNodes):
#   ca.crt / ca.key        a private certificate authority (keep ca.key offline)
#   server.pem / server.key the SuperLink's TLS certificate, signed by the CA, valid for
#                          localhost, superlink (the compose service name), 127.0.0.1 and
#                          every name or IP in $SUPERLINK_SAN (comma separated, e.g. "DNS:fl.example.org,IP:10.0.0.5")
#   superexec.secret       the shared secret between the SuperLink and the ServerApp runtime
#   node_K / node_K.pub    one ECDSA P-384 key pair per SuperNode (K = 1..N); register the .pub files
#
# Usage: docker/certs.sh [OUT_DIR=docker/certs] [N_NODES=3]
# Needs openssl and ssh-keygen. Refuses to overwrite an existing CA.
set -euo pipefail
out=${1:-"$(dirname "$0")/certs"}
n=${2:-3}
days=${CERT_DAYS:-365}
case "$n" in ''|*[!0-9]*) echo "certs.sh: N_NODES must be a number, got '$n'" >&2; exit 2;; esac
for tool in openssl ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "certs.sh: $tool not found (install openssl / openssh-client)" >&2; exit 2; }
done
if [ -e "$out/ca.crt" ]; then
  echo "certs.sh: $out/ca.crt exists; remove $out to start over" >&2; exit 2
fi
mkdir -p "$out"
umask 077
san="DNS:localhost,DNS:superlink,IP:127.0.0.1${SUPERLINK_SAN:+,$SUPERLINK_SAN}"
openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=fedsim-ca" \
  -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -newkey rsa:3072 -nodes -subj "/CN=superlink" \
  -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days "$days" -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext"
openssl rand -hex 32 | tr -d '\n' > "$out/superexec.secret"
for i in $(seq 1 "$n"); do
  ssh-keygen -q -t ecdsa -b 384 -N "" -f "$out/node_$i" -C "fedsim-node-$i"
done
chmod 644 "$out/ca.crt" "$out/server.pem" "$out"/node_*.pub
echo "certs.sh: wrote CA, SuperLink certificate ($san), SuperExec secret and $n node key pairs to $out"
