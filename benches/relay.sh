#!/usr/bin/env bash
# Throughput of sealgate beside Postfix on the same loopback harness:
#   smtp-source (SESSIONS sessions, MESSAGES x SIZE bytes) -> relay -> sink
# measured end to end (first connection until the sink has counted every
# message), in four modes of the outbound side:
#   1 no TLS      Postfix smtp_tls_security_level=none, sealgate with
#                 normal mail allowed in plaintext; sink: smtp-sink
#   2 encrypt     Postfix encrypt; sealgate's default policy (normal mail
#                 needs encrypted); sink: bench-sink (STARTTLS, a test cert)
#   3 verified    Postfix secure (test CA, name checked, TLS connection
#                 reuse via tlsproxy); sealgate requires authenticated
#                 (PKIX against the test CA, MX from DNSSEC-signed Knot)
#   4 qualified   Postfix secure as in 3; sealgate requires qualified
#                 (DNSSEC MX, DANE-EE TLSA, BSI TR-02102-2 profile; no
#                 allowance for unavailable revocation)
# Both relays sync each message to disk before answering 250: Postfix
# fsyncs the queue file in cleanup(8); sealgate commits to SQLite with
# synchronous=FULL (one sync per group of messages).
# Run as root after ./run-tests.sh has installed the peers:
#   benches/relay.sh [MESSAGES] [SIZE] [SESSIONS]      (MODES="1 4" to pick)
# SEALGATE_BIN=path runs another build of sealgate (an older commit's, to
# measure what a change costs) on the same harness.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000} SIZE=${2:-10240} SESSIONS=${3:-10}
MODES=${MODES:-1 2 3 4}
work=$(mktemp -d /tmp/sealgate-bench.XXXXXX)
chmod 755 "$work"  # Postfix opens its data directory as the postfix user
SINK=26025 PF=26026 SG=26027 DNS=26053

cargo build --release -q
cargo build --release -q --example bench-sink
bin=${SEALGATE_BIN:-target/release/sealgate}
sinkbin=target/release/examples/bench-sink

cleanup() {
  bash tests/peers/postfix.sh stop "$work/postfix" || true
  bash tests/peers/knot.sh stop "$work/knot" || true
  [ -n "${sg_pid:-}" ] && kill "$sg_pid" 2>/dev/null || true
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

. benches/common.sh

# The sink's certificate: a test CA, a P-256 leaf for the two sink names.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.pem" >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=sink.bench.test \
  -keyout "$work/sink.key" -out "$work/sink.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:sink.bench.test,DNS:pkixsink.bench.test\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/sink.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/ext" -out "$work/sink.pem" >/dev/null 2>&1
cat "$work/sink.pem" "$work/ca.pem" > "$work/chain.pem"
spki=$(openssl x509 -in "$work/sink.pem" -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)

# Signed zones: pkix.bench.test (MX without TLSA), dane.bench.test (TLSA 3 1 1).
mkdir -p "$work/knot"
printf '. signed\ntest. signed\nbench.test. signed\n' > "$work/knot/zones"
: > "$work/knot/root.zone"; : > "$work/knot/test.zone"
cat > "$work/knot/bench.test.zone" <<Z
pkix.bench.test. MX 10 pkixsink.bench.test.
dane.bench.test. MX 10 sink.bench.test.
pkixsink.bench.test. A 127.0.0.1
sink.bench.test. A 127.0.0.1
_$SINK._tcp.sink.bench.test. TLSA 3 1 1 $spki
Z
bash tests/peers/knot.sh start "$work/knot" $DNS >/dev/null

start_sink() {
  : > "$work/sink.out"
  if [ "$1" = 1 ]; then
    smtp-sink -u nobody -c 127.0.0.1:$SINK 256 > "$work/sink.out" 2>&1 &
  else
    "$sinkbin" 127.0.0.1:$SINK "$work/chain.pem" "$work/sink.key" > "$work/sink.out" 2>&1 &
  fi
  sink_pid=$!
  wait_port $SINK
}

# Sends the load to PORT for RCPT and prints messages per second, delivered at the sink.
run_load() {
  local port=$1 rcpt=$2 start end count
  start=$(date +%s.%N)
  smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f load@src.test -t "$rcpt" 127.0.0.1:"$port"
  for _ in $(seq 6000); do
    count=$(sink_count); [ "${count:-0}" -ge "$N" ] && break; sleep 0.02
  done
  end=$(date +%s.%N)
  [ "${count:-0}" -ge "$N" ] || { echo "only ${count:-0} of $N arrived" >&2; return 1; }
  echo "scale=1; $N / ($end - $start)" | bc
}

postfix_mode() {
  case $1 in
  1) SMTP_TLS=none bash tests/peers/postfix.sh relay "$work/postfix" $PF 127.0.0.1:$SINK ;;
  2) SMTP_TLS=encrypt bash tests/peers/postfix.sh relay "$work/postfix" $PF 127.0.0.1:$SINK ;;
  *) SMTP_TLS=secure SMTP_TLS_CA="$work/ca.pem" SMTP_TLS_MATCH=sink.bench.test SMTP_TLS_REUSE=yes \
       bash tests/peers/postfix.sh relay "$work/postfix" $PF 127.0.0.1:$SINK ;;
  esac
}

# sealgate's configuration and the recipient for a mode.
sealgate_mode() {
  local required route dns roots
  case $1 in
  1) required=plaintext ;; 2) required=encrypted ;; 3) required=authenticated ;; 4) required=qualified ;;
  esac
  rm -rf "$work/sealgate"
  policy_requiring "$required"
  roots="pkix_roots = \"$work/ca.pem\""
  if [ "$1" = 4 ]; then
    # Qualified for real: no "revocation unavailable" allowance, and the
    # sink's key is trusted through DANE-EE alone (revocation does not
    # apply to it, RFC 7672 §3.1.1), not through the PKIX test CA.
    sed -i 's/^accept_revocation_unavailable = true/accept_revocation_unavailable = false/' "$work/policies/default.toml"
    roots=
  fi
  route="[[route]]
domain = \"*\"
next_hop = \"127.0.0.1:$SINK\""
  dns=
  if [ "$1" -ge 3 ]; then
    route=
    dns="[dns]
servers = [\"127.0.0.1:$DNS\"]
trust_anchor = \"$work/knot/root.keys\""
  fi
  cat > "$work/sealgate.toml" <<CF
hostname = "bench.test"
data_dir = "$work/sealgate"
[[listener]]
address = "127.0.0.1:$SG"
mode = "relay"
[queue]
max_per_destination = 20
[outbound]
port = $SINK
$roots
[policy]
dir = "$work/policies"
$dns
$route
CF
}

rcpt_of() { case $1 in 3) echo sink@pkix.bench.test ;; 4) echo sink@dane.bench.test ;; *) echo sink@dst.test ;; esac; }
name_of() { case $1 in 1) echo "no TLS" ;; 2) echo "encrypt" ;; 3) echo "verified" ;; 4) echo "qualified" ;; esac; }

echo "load: $N messages x $SIZE bytes over $SESSIONS sessions"
printf '%-10s %12s %12s %7s %14s %12s\n' mode "postfix/s" "sealgate/s" ratio "sealgate RSS" "CPU s/1000"
for mode in $MODES; do
  rcpt=$(rcpt_of "$mode")
  start_sink "$mode"
  postfix_mode "$mode"
  postfix_rate=$(run_load $PF "$rcpt")
  # What Postfix's connections were: its log names each TLS session's trust.
  pf_tls=$( (grep -oE '(Anonymous|Untrusted|Trusted|Verified) TLS connection (established|reused)' "$work/postfix/log" || true) \
    | awk '{print $1 " " $4}' | sort | uniq -c | awk '{printf "%s%s %s %s", sep, $2, $3, $1; sep=", "}')
  bash tests/peers/postfix.sh stop "$work/postfix"
  rm -rf "$work/postfix"
  stop_sink

  start_sink "$mode"
  sealgate_mode "$mode"
  SEALGATE_LOG=warn "$bin" --config "$work/sealgate.toml" serve 2> "$work/sealgate-$mode.log" &
  sg_pid=$!
  wait_port $SG
  cpu_before=$(awk '{print $14+$15}' /proc/$sg_pid/stat)
  sealgate_rate=$(run_load $SG "$rcpt") || { cat "$work/sealgate-$mode.log" >&2; exit 1; }
  cpu_after=$(awk '{print $14+$15}' /proc/$sg_pid/stat)
  rss=$(awk '/VmHWM/ {print $2}' /proc/$sg_pid/status)
  kill "$sg_pid"; wait "$sg_pid" 2>/dev/null || true; sg_pid=
  stop_sink
  # What sealgate's deliveries reached, from its transaction log.
  sg_levels=$(sqlite3 "$work/sealgate/sealgate.db" \
    "SELECT level || ' ' || n FROM (SELECT json_extract(data, '\$.verdict.level') AS level, count(*) AS n
     FROM txlog WHERE kind = 'attempt' GROUP BY level)" \
    | paste -sd, | sed 's/,/, /g')
  cpu=$(echo "scale=2; ($cpu_after - $cpu_before) / $(getconf CLK_TCK) * 1000 / $N" | bc)
  printf '%-10s %12s %12s %7s %11s kB %12s\n' "$(name_of "$mode")" "$postfix_rate" "$sealgate_rate" \
    "$(echo "scale=2; $sealgate_rate / $postfix_rate" | bc)" "$rss" "$cpu"
  printf '%-10s postfix sessions: %s; sealgate attempts: %s\n' "" "${pf_tls:-no TLS}" "$sg_levels"
done
