#!/usr/bin/env bash
# The console at scale: the transaction log filled with real chained
# records (examples/fill-log.rs: one received and one attempt record per
# message, over 50,000 domains and 3 tenants), first 10,000 attempts, then
# COUNT (default 1,000,000). For each size it prints how long the console
# index took to catch up, the gateway's resident memory, and p50 / p95 of
# the time each page takes over one kept-alive HTTPS connection: the
# dashboard, searches by domain, by sender and by time range, page 1 and
# page 500 of a result, and a message's evidence; then once more after a
# restart, when the index has nothing to catch up. The gateway runs on one
# core (taskset).
#   benches/console.sh [COUNT] [REPEAT]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000} REPEAT=${2:-40}
work=$(mktemp -d /tmp/sealgate-console.XXXXXX)
RELAY=26225 SUB=26226 WEB=26443

cargo build --release -q --bin sealgate --example fill-log
bin=target/release/sealgate
fill=target/release/examples/fill-log

cleanup() {
  [ -n "${sg_pid:-}" ] && kill "$sg_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
. benches/common.sh

cat > "$work/sealgate.toml" <<EOF
hostname = "bench.test"
default_tenant = "t0"
data_dir = "$work/data"
[[listener]]
address = "127.0.0.1:$RELAY"
mode = "relay"
[[listener]]
address = "127.0.0.1:$SUB"
mode = "submission"
[console]
address = "127.0.0.1:$WEB"
[report]
head_interval = "0s"
[[tenant]]
id = "t0"
networks = ["127.0.0.0/8"]
[[tenant]]
id = "t1"
[[tenant]]
id = "t2"
EOF

start() {
  taskset -c 0 "$bin" --config "$work/sealgate.toml" serve >> "$work/log" 2>&1 &
  sg_pid=$!
  wait_port $WEB
}
stop() { kill "$sg_pid"; wait "$sg_pid" 2>/dev/null || true; sg_pid=; }
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$sg_pid/status"; }

# The first start makes the database; the account logs in to measure.
start
stop
echo 'bench password 123' | "$bin" --config "$work/sealgate.toml" account add bench --role admin >/dev/null

measure() { # $1: messages in the log now
  local t0 t1
  t0=$(date +%s.%N)
  start
  python3 - "$WEB" "$1" <<'PY'
import http.client, json, ssl, sys, time, urllib.parse
port, total = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl._create_unverified_context()
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=600)
def req(method, path, body=None, headers={}):
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse(); data = r.read()
    return r, data
r, page = req("GET", "/login")
pre = r.getheader("set-cookie").split(";")[0]
token = page.decode().split('name="csrf" value="')[1][:64]
form = urllib.parse.urlencode({"name": "bench", "password": "bench password 123", "csrf": token})
r, _ = req("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded", "Cookie": pre})
cookie = {"Cookie": r.getheader("set-cookie").split(";")[0]}
# Until the index holds every record of the log.
start = time.time()
while True:
    _, body = req("GET", "/api/v1/dashboard", headers=cookie)
    if sum(ch["records"] for ch in json.loads(body)["chains"]) >= 2 * total:
        break
    time.sleep(0.2)
print(f"  index caught up in {time.time() - start:.1f} s")
PY
  t1=$(date +%s.%N)
  echo "  start to caught up: $(echo "$t1 - $t0" | bc) s; RSS $(rss)"
  python3 - "$WEB" "$REPEAT" <<'PY'
import http.client, json, ssl, sys, time, urllib.parse
port, repeat = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl._create_unverified_context()
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=600)
def req(path, headers):
    c.request("GET", path, headers=headers)
    r = c.getresponse(); data = r.read()
    assert r.status == 200, (path, r.status, data[:200])
    return data
c.request("GET", "/login"); r = c.getresponse(); page = r.read()
pre = r.getheader("set-cookie").split(";")[0]
token = page.decode().split('name="csrf" value="')[1][:64]
form = urllib.parse.urlencode({"name": "bench", "password": "bench password 123", "csrf": token})
c.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded", "Cookie": pre})
r = c.getresponse(); r.read()
h = {"Cookie": r.getheader("set-cookie").split(";")[0]}
now = int(time.time())
first = json.loads(req("/api/v1/transactions", h))
msg = first["rows"][0]["queue_id"]
# Page 500 of the whole log, newest first: follow 499 cursors (or to the
# last page of a smaller log).
after, deep = "", 1
for _ in range(499):
    page = json.loads(req("/api/v1/transactions?" + urllib.parse.urlencode({"after": after}), h))
    if not page["next"]:
        break
    after, deep = page["next"], deep + 1
cases = [
    ("dashboard", "/"),
    ("search by domain", "/transactions?domain=d4242.example"),
    ("search by sender", "/transactions?sender=sender7@tenant1.example"),
    ("search by time range", f"/transactions?from={now - 3 * 86400}&to={now - 2 * 86400}"),
    ("transactions page 1", "/transactions"),
    (f"transactions page {deep}", "/transactions?" + urllib.parse.urlencode({"after": after})),
    ("message evidence", f"/message/{msg}"),
]
for name, path in cases:
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); req(path, h); times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p50, p95 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.95))]
    print(f"  {name:24} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
PY
  echo "  RSS after the pages: $(rss)"
  stop
}

small=5000
"$fill" "$work/data/sealgate.db" $small 50000 3 >/dev/null
echo "== $small attempts ($((2 * small)) records)"
measure $small
rest=$((N - small))
t0=$(date +%s)
"$fill" "$work/data/sealgate.db" $rest 50000 3 $small >/dev/null
echo "== $N attempts ($((2 * N)) records; filled in $(( $(date +%s) - t0 )) s)"
measure "$N"
# The memory of a server whose index had nothing to catch up: what a
# restarted gateway holds in steady state, apart from the catch-up.
echo "== $N attempts again, after a restart (the index already caught up)"
measure "$N"
echo "console.db: $(du -h "$work/data/console.db" | cut -f1), sealgate.db: $(du -h "$work/data/sealgate.db" | cut -f1)"
rm -rf "$work"
