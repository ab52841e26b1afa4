#!/usr/bin/env bash
# Duplicates and losses when the relay is killed with SIGKILL under load,
# sealgate beside Postfix on the same loopback harness:
#   8 smtplib clients -> relay -> Postfix destination (saves every message)
# ROUNDS times: load, SIGKILL at a random moment (200-800 ms in), restart.
# Postfix is killed whole (master and every child: its session), as a
# crash would; sealgate is one process. Then every acknowledged message
# must arrive; a Message-ID that arrives twice is a duplicate (the relay
# resent what the destination had already taken). A destination keeps a
# message whose data it has received even when the client dies before
# reading its 250, so the duplicates per kill grow with the transactions
# in flight at that moment, that is with throughput (Little's law): the
# last column is per 1000 acknowledged messages.
# Both relays deliver in plaintext here (the destination has no test CA):
# the window measured is the relay's, not TLS's.
# Run as root after ./run-tests.sh has installed the peers:
#   benches/crash.sh [ROUNDS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5} RUNS=${2:-3}
work=$(mktemp -d /tmp/sealgate-crash.XXXXXX)
chmod 755 "$work"
DEST=26125 PF=26126 SG=26127

cargo build --release -q
bin=target/release/sealgate

cleanup() {
  bash tests/peers/postfix.sh stop "$work/postfix" >/dev/null 2>&1 || true
  bash tests/peers/postfix.sh stop "$work/dest" >/dev/null 2>&1 || true
  [ -n "${sg_pid:-}" ] && kill "$sg_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

. benches/common.sh
policy_requiring plaintext
bash tests/peers/postfix.sh dest "$work/dest" $DEST

cat > "$work/load.py" <<'PY'
"""Sends until the relay dies (or for 2 s at most): 8 sessions, one
unique Message-ID per message; prints the ID of every message the relay
acknowledged."""
import smtplib, sys, threading, time
port, tag, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()
end = time.monotonic() + 2
def session(t):
    try:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="load.test", timeout=10)
        for i in range(100000):
            if time.monotonic() > end:
                break
            mid = f"<{tag}.{t}.{i}@load.test>"
            msg = f"From: load@src.test\r\nTo: {rcpt}\r\nSubject: crash\r\nMessage-ID: {mid}\r\n\r\nload\r\n"
            s.sendmail("load@src.test", [rcpt], msg)
            with lock:
                print(mid, flush=True)
    except Exception:
        pass
threads = [threading.Thread(target=session, args=(t,)) for t in range(8)]
for t in threads: t.start()
for t in threads: t.join()
PY

start_postfix() { SMTP_TLS=none bash tests/peers/postfix.sh relay "$work/postfix" $PF 127.0.0.1:$DEST; }
kill_postfix() {
  local sid
  sid=$(ps -o sid= -p "$(tr -dc 0-9 < "$work/postfix/queue/pid/master.pid")" | tr -d ' ')
  pkill -9 -s "$sid" || true
  # Gone when nothing listens any more (exit is not instant).
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$PF) 2>/dev/null || break; sleep 0.01; done
  # At the next start postsuper reports the crash's half-written queue
  # files into this log, as the postfix user.
  chown postfix "$work/postfix/log"
}
start_sealgate() {
  SEALGATE_LOG=warn "$bin" --config "$work/sealgate.toml" serve 2>> "$work/sealgate.log" &
  sg_pid=$!
  wait_port $SG
}
kill_sealgate() { kill -9 "$sg_pid"; wait "$sg_pid" 2>/dev/null || true; sg_pid=; }

cat > "$work/sealgate.toml" <<CF
hostname = "crash.test"
data_dir = "$work/sealgate"
[[listener]]
address = "127.0.0.1:$SG"
mode = "relay"
[queue]
retry_schedule = ["1s"]
max_per_destination = 20
[outbound]
port = $DEST
[policy]
dir = "$work/policies"
[[route]]
domain = "*"
next_hop = "127.0.0.1:$DEST"
CF

# One run: ROUNDS kills of relay $1; prints "acked delivered lost duplicates".
run() {
  local relay=$1 run=$2 port rcpt acked arrived
  rcpt="$relay-$run@dst.test"
  : > "$work/acked"
  if [ "$relay" = postfix ]; then port=$PF; start_postfix; else port=$SG; start_sealgate; fi
  for round in $(seq "$ROUNDS"); do
    python3 "$work/load.py" $port "$relay.$run.$round" "$rcpt" >> "$work/acked" &
    load=$!
    sleep "0.$(( 200 + RANDOM % 600 ))"
    if [ "$relay" = postfix ]; then kill_postfix; start_postfix; else kill_sealgate; start_sealgate; fi
    wait $load || true
  done
  acked=$(sort -u "$work/acked" | wc -l)
  # Until every acknowledged message has arrived. Postfix defers what a
  # crash interrupted (queue_run_delay): flushed, as an admin would.
  [ "$relay" = postfix ] && postqueue -c "$work/postfix" -f
  for _ in $(seq 1200); do
    arrived=$(cat "$work/dest/mail/$rcpt"/*.eml 2>/dev/null | grep -i '^Message-ID:' | awk '{print $2}' | sort -u > "$work/arrived"; \
      comm -23 <(sort -u "$work/acked") "$work/arrived" | wc -l)
    [ "$arrived" = 0 ] && break
    sleep 0.1
  done
  sleep 2  # a duplicate may still be on its way
  local all unique
  all=$(cat "$work/dest/mail/$rcpt"/*.eml 2>/dev/null | grep -ci '^Message-ID:' || true)
  unique=$(cat "$work/dest/mail/$rcpt"/*.eml 2>/dev/null | grep -i '^Message-ID:' | sort -u | wc -l)
  echo "$acked $all $arrived $((all - unique))"
  if [ "$relay" = postfix ]; then bash tests/peers/postfix.sh stop "$work/postfix" >/dev/null; else kill "$sg_pid"; wait "$sg_pid" 2>/dev/null || true; sg_pid=; fi
}

echo "SIGKILL under load: $ROUNDS kills per run, 8 sessions, $RUNS runs per relay"
printf '%-9s %5s %9s %10s %5s %11s %12s\n' relay run acked delivered lost duplicates "per 1000"
for relay in postfix sealgate; do
  total=0 all_acked=0
  for r in $(seq "$RUNS"); do
    read -r acked delivered lost dups < <(run $relay "$r")
    printf '%-9s %5s %9s %10s %5s %11s %12s\n' $relay "$r" "$acked" "$delivered" "$lost" "$dups" \
      "$(echo "scale=1; 1000 * $dups / $acked" | bc)"
    total=$((total + dups)) all_acked=$((all_acked + acked))
  done
  printf '%-9s %5s %9s %10s %5s %11s %12s\n' $relay all "$all_acked" "" "" "$total" \
    "$(echo "scale=1; 1000 * $total / $all_acked" | bc)"
done
