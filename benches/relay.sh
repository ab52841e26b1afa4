#!/usr/bin/env bash
# Throughput of sealgate beside Postfix on the same loopback harness:
#   smtp-source (SESSIONS sessions, MESSAGES x SIZE bytes) -> relay -> smtp-sink
# measured end to end (first connection until the sink has counted every
# message). Both relays sync each message to disk before answering 250:
# Postfix fsyncs the queue file in cleanup(8); sealgate commits to SQLite
# with synchronous=FULL (one sync per group of messages).
# Run as root after ./run-tests.sh has installed the peers:
#   benches/relay.sh [MESSAGES] [SIZE] [SESSIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000} SIZE=${2:-10240} SESSIONS=${3:-10}
work=$(mktemp -d /tmp/sealgate-bench.XXXXXX)
chmod 755 "$work"  # Postfix opens its data directory as the postfix user
SINK=26025 PF=26026 SG=26027

cargo build --release -q
bin=target/release/sealgate

cleanup() {
  bash tests/peers/postfix.sh stop "$work/postfix" || true
  [ -n "${sg_pid:-}" ] && kill "$sg_pid" 2>/dev/null || true
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

start_sink() {
  : > "$work/sink.out"
  smtp-sink -u nobody -c 127.0.0.1:$SINK 256 > "$work/sink.out" 2>&1 &
  sink_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SINK) 2>/dev/null && return; sleep 0.05; done
}
sink_count() { tr '\r' '\n' < "$work/sink.out" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1; }
stop_sink() { kill "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null || true; sink_pid=; }

# Sends the load to PORT and prints messages per second, delivered at the sink.
run_load() {
  local port=$1 start end count
  start=$(date +%s.%N)
  smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f load@src.test -t sink@dst.test 127.0.0.1:"$port"
  for _ in $(seq 6000); do
    count=$(sink_count); [ "${count:-0}" -ge "$N" ] && break; sleep 0.02
  done
  end=$(date +%s.%N)
  [ "${count:-0}" -ge "$N" ] || { echo "only ${count:-0} of $N arrived" >&2; return 1; }
  echo "scale=1; $N / ($end - $start)" | bc
}

echo "load: $N messages x $SIZE bytes over $SESSIONS sessions; no TLS outbound"

start_sink
bash tests/peers/postfix.sh relay "$work/postfix" $PF 127.0.0.1:$SINK
postfix_rate=$(run_load $PF)
bash tests/peers/postfix.sh stop "$work/postfix"
stop_sink
echo "postfix:  $postfix_rate msg/s"

start_sink
# The sink offers no STARTTLS: the default policy would hold normal mail
# (it requires encrypted). The shipped rules stay in force, so every
# message is still parsed and classified as in production.
mkdir -p "$work/policies"
sed 's/^required = "encrypted"/required = "plaintext"/' policies/default.toml \
  > "$work/policies/default.toml"
grep -q '^required = "plaintext"' "$work/policies/default.toml"
cat > "$work/sealgate.toml" <<CF
hostname = "bench.test"
data_dir = "$work/sealgate"
[[listener]]
address = "127.0.0.1:$SG"
mode = "relay"
[queue]
max_per_destination = 20
[policy]
dir = "$work/policies"
[[route]]
domain = "*"
next_hop = "127.0.0.1:$SINK"
CF
SEALGATE_LOG=warn "$bin" --config "$work/sealgate.toml" serve 2> "$work/sealgate.log" &
sg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SG) 2>/dev/null && break; sleep 0.05; done
cpu_before=$(awk '{print $14+$15}' /proc/$sg_pid/stat)
sealgate_rate=$(run_load $SG)
cpu_after=$(awk '{print $14+$15}' /proc/$sg_pid/stat)
rss=$(awk '/VmHWM/ {print $2}' /proc/$sg_pid/status)
stop_sink
echo "sealgate: $sealgate_rate msg/s (peak RSS ${rss} kB, $(echo "scale=2; ($cpu_after - $cpu_before) / $(getconf CLK_TCK) * 1000 / $N" | bc) CPU s per 1000 messages)"
echo "ratio sealgate/postfix: $(echo "scale=2; $sealgate_rate / $postfix_rate" | bc)"
