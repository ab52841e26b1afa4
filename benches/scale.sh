#!/usr/bin/env bash
# The queue at scale: COUNT messages (default 100,000) to a destination that
# answers 4xx, then it accepts and `sealgate queue flush` sends them all.
# Prints sealgate's resident memory with 1k, 10k and COUNT messages queued,
# the time per message of each stretch of the load (flat when no step grows
# with the queue), and how fast the full queue drains.
# Run as root after ./run-tests.sh has installed the peers:
#   benches/scale.sh [COUNT] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000} SIZE=${2:-2048}
work=$(mktemp -d /tmp/sealgate-scale.XXXXXX)
SINK=26125 SG=26127

cargo build --release -q
bin=target/release/sealgate

cleanup() {
  [ -n "${sg_pid:-}" ] && kill "$sg_pid" 2>/dev/null || true
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
. benches/common.sh
start_sink() {
  : > "$work/sink.out"
  smtp-sink -u nobody -c "$@" 127.0.0.1:$SINK 256 > "$work/sink.out" 2>&1 &
  sink_pid=$!
  wait_port $SINK
}
rss() { awk '/VmRSS/ {print $2}' /proc/$sg_pid/status; }

# smtp-sink offers no STARTTLS: normal mail may go in plaintext here.
policy_requiring plaintext
cat > "$work/sealgate.toml" <<CF
hostname = "bench.test"
data_dir = "$work/sealgate"
[[listener]]
address = "127.0.0.1:$SG"
mode = "relay"
[queue]
retry_schedule = ["6h"]
max_per_destination = 20
[policy]
dir = "$work/policies"
[[route]]
domain = "*"
next_hop = "127.0.0.1:$SINK"
CF

# First the destination says 450 to every RCPT: each message is tried once and stays queued.
start_sink -r RCPT
SEALGATE_LOG=warn "$bin" --config "$work/sealgate.toml" serve 2> "$work/sealgate.log" &
sg_pid=$!
wait_port $SG

echo "queue: $N messages x $SIZE bytes, the destination answering 4xx"
printf '%10s %12s %16s\n' queued "RSS kB" "ms per message"
queued=0
for mark in 1000 10000 "$N"; do
  [ "$mark" -gt "$N" ] && continue
  n=$((mark - queued))
  [ "$n" -gt 0 ] || continue
  start=$(date +%s.%N)
  smtp-source -s 10 -m "$n" -l "$SIZE" -f load@src.test -t sink@dst.test 127.0.0.1:$SG
  end=$(date +%s.%N)
  queued=$mark
  printf '%10s %12s %16s\n' "$queued" "$(rss)" "$(echo "scale=3; ($end - $start) * 1000 / $n" | bc)"
done
tries=$(sqlite3 "$work/sealgate/sealgate.db" "SELECT count(*) FROM recipients WHERE status = 0 AND attempts >= 1")
echo "pending after one 4xx attempt each: $tries of $N"

# Now it accepts: flush the queue and time the drain.
stop_sink
start_sink
start=$(date +%s.%N)
"$bin" --config "$work/sealgate.toml" queue flush
for _ in $(seq 60000); do
  count=$(sink_count); [ "${count:-0}" -ge "$N" ] && break; sleep 0.05
done
end=$(date +%s.%N)
[ "${count:-0}" -ge "$N" ] || { echo "only ${count:-0} of $N arrived" >&2; exit 1; }
echo "drained $N in $(printf %.1f "$(echo "$end - $start" | bc)") s: $(echo "scale=1; $N / ($end - $start)" | bc) msg/s; RSS now $(rss) kB, peak $(awk '/VmHWM/ {print $2}' /proc/$sg_pid/status) kB"
