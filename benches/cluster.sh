#!/usr/bin/env bash
# sealgate on PostgreSQL beside sealgate on SQLite, same load, same machine:
#   smtp-source (MESSAGES x SIZE bytes over SESSIONS sessions, split evenly
#   over the nodes) -> sealgate node(s) -> smtp-sink
# in four set-ups: one node on SQLite, then one, two and three nodes on one
# PostgreSQL (a private cluster with fsync on, started here). Delivery is
# plaintext (normal mail allowed so by the policy) so that storage, not TLS,
# is what differs. Prints messages per second end to end, CPU seconds per
# 1,000 messages of sealgate (all nodes) and of PostgreSQL (every server
# process, including backends that ended), and SQL statements per message
# (pg_stat_statements: each is at least one round trip).
# Run as root after ./run-tests.sh has installed the peers:
#   benches/cluster.sh [MESSAGES] [SIZE] [SESSIONS]
# DETAIL=1 also prints the statements each PostgreSQL set-up ran.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000} SIZE=${2:-10240} SESSIONS=${3:-12}
work=$(mktemp -d /tmp/sealgate-cluster.XXXXXX)
chmod 755 "$work"
SINK=26225 PG=26432 SG=26230

cargo build --release -q
bin=target/release/sealgate
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  bash tests/peers/postgres.sh stop "$work/pg" >/dev/null 2>&1 || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
. benches/common.sh
policy_requiring plaintext

server=$(SEALGATE_TEST_PG_PRIVATE=1 SEALGATE_TEST_PG_OPTIONS="-c shared_preload_libraries=pg_stat_statements" \
  bash tests/peers/postgres.sh url "$work/pg" $PG)
psql "$server/postgres" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null

start_sink() {
  : > "$work/sink.out"
  smtp-sink -u nobody -c 127.0.0.1:$SINK 256 > "$work/sink.out" 2>&1 &
  sink_pid=$!
  wait_port $SINK
}

# CPU ticks of every PostgreSQL server process, ended backends included
# (the postmaster's reaped children).
pg_ticks() {
  local master total=0 p
  master=$(head -1 "$work/pg/data/postmaster.pid")
  total=$(awk '{print $14+$15+$16+$17}' "/proc/$master/stat")
  for p in $(pgrep -P "$master"); do
    total=$((total + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
# Statements run in the bench database (the view lives in the postgres one).
statements() {
  psql "$server/postgres" -tAc "SELECT COALESCE(SUM(s.calls), 0) FROM pg_stat_statements s
    JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'sealgate_bench'"
}

# node_config I URL: the configuration of node I (URL empty: SQLite).
node_config() {
  local i=$1 url=$2 storage=
  [ -n "$url" ] && storage="[storage]
url = \"$url\"
[cluster]
node = \"bench$i\"
[spool]
key_file = \"$work/spool.key\""
  cat > "$work/node$i.toml" <<CF
hostname = "bench$i.test"
data_dir = "$work/node$i"
[[listener]]
address = "127.0.0.1:$((SG + i))"
mode = "relay"
[queue]
max_per_destination = 20
[outbound]
port = $SINK
[policy]
dir = "$work/policies"
[[route]]
domain = "*"
next_hop = "127.0.0.1:$SINK"
$storage
CF
}

# run NAME NODES URL: one measurement.
run() {
  local name=$1 k=$2 url=$3 i start end count sg_before=0 sg_after=0 pg_before pg_after st_before st_after
  rm -rf "$work"/node* "$work/spool.key"
  if [ -n "$url" ]; then
    psql "$server/postgres" -qc "DROP DATABASE IF EXISTS sealgate_bench WITH (FORCE)" -c "CREATE DATABASE sealgate_bench" 2>/dev/null
  fi
  start_sink
  pids=()
  for i in $(seq "$k"); do
    node_config "$i" "$url"
    SEALGATE_LOG=warn "$bin" --config "$work/node$i.toml" serve 2> "$work/node$i.log" &
    pids+=($!)
    wait_port $((SG + i))
  done
  for p in "${pids[@]}"; do sg_before=$((sg_before + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
  pg_before=$(pg_ticks)
  st_before=$( [ -n "$url" ] && statements || echo 0)
  start=$(date +%s.%N)
  local senders=()
  for i in $(seq "$k"); do
    smtp-source -s $((SESSIONS / k)) -m $((N / k)) -l "$SIZE" -f load@src.test -t sink@dst.test 127.0.0.1:$((SG + i)) &
    senders+=($!)
  done
  wait "${senders[@]}"
  for _ in $(seq 6000); do
    count=$(sink_count); [ "${count:-0}" -ge "$N" ] && break; sleep 0.02
  done
  end=$(date +%s.%N)
  [ "${count:-0}" -ge "$N" ] || { echo "$name: only ${count:-0} of $N arrived" >&2; cat "$work"/node*.log >&2; exit 1; }
  for p in "${pids[@]}"; do sg_after=$((sg_after + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
  st_after=$( [ -n "$url" ] && statements || echo 0)
  for p in "${pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  pids=()
  # The nodes' backends end when their connections close: reaped, their
  # CPU shows in the postmaster's children total.
  for _ in $(seq 100); do
    [ -z "$(psql "$server/postgres" -tAc "SELECT 1 FROM pg_stat_activity WHERE datname = 'sealgate_bench' LIMIT 1")" ] && break
    sleep 0.05
  done
  sleep 0.2
  pg_after=$(pg_ticks)
  stop_sink
  if [ -n "$url" ] && [ -n "${DETAIL:-}" ]; then
    # What the statements were, most frequent first (DETAIL=1).
    psql "$server/postgres" -tAF ' | ' -c "SELECT s.calls, round(s.total_exec_time::numeric, 1) AS ms,
        left(regexp_replace(s.query, '\\s+', ' ', 'g'), 110)
      FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
      WHERE d.datname = 'sealgate_bench' ORDER BY s.calls DESC LIMIT 15" >&2
  fi
  [ -n "$url" ] && psql "$server/postgres" -qtAc "SELECT pg_stat_statements_reset()" >/dev/null
  local tck per_msg
  tck=$(getconf CLK_TCK)
  per_msg="-"
  [ -n "$url" ] && per_msg=$(echo "scale=1; ($st_after - $st_before) / $N" | bc)
  printf '%-22s %10s %14s %14s %12s\n' "$name" \
    "$(echo "scale=1; $N / ($end - $start)" | bc)" \
    "$(echo "scale=2; ($sg_after - $sg_before) / $tck * 1000 / $N" | bc)" \
    "$( [ -n "$url" ] && echo "scale=2; ($pg_after - $pg_before) / $tck * 1000 / $N" | bc || echo -)" \
    "$per_msg"
}

echo "load: $N messages x $SIZE bytes over $SESSIONS sessions; sink: smtp-sink; delivery in plaintext"
printf '%-22s %10s %14s %14s %12s\n' set-up "msg/s" "sealgate CPU" "postgres CPU" "statements"
printf '%-22s %10s %14s %14s %12s\n' "" "" "s/1000 msg" "s/1000 msg" "per msg"
run "1 node, SQLite" 1 ""
run "1 node, PostgreSQL" 1 "$server/sealgate_bench"
run "2 nodes, PostgreSQL" 2 "$server/sealgate_bench"
run "3 nodes, PostgreSQL" 3 "$server/sealgate_bench"
