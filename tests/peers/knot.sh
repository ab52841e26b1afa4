#!/usr/bin/env bash
# A private Knot DNS on loopback serving DNSSEC-signed test zones under a
# test root, for the DNSSEC/DANE/MTA-STS tests.
#   knot.sh start DIR PORT   serve the zones listed in DIR/zones
#   knot.sh stop  DIR
# DIR/zones has one line per zone, parents before children: `NAME MODE`,
# MODE one of
#   signed    signed by Knot, DS published in the parent
#   unsigned  no signatures, no DS: an insecure delegation
#   bogus     signed, but the parent publishes a DS that matches no key
#   nosig     not signed, yet the parent publishes its DS: answers are bogus
#   broken    the zone file does not parse: Knot answers SERVFAIL inside it
# and DIR/NAME.zone holds its records (no SOA/NS needed: they are added).
# Afterwards DIR/root.keys holds the root's DNSKEY set: the trust anchor.
set -euo pipefail
cmd=$1 dir=$(realpath -m "$2")

if [ "$cmd" = stop ]; then
  [ -f "$dir/run/knot.pid" ] && kill "$(cat "$dir/run/knot.pid")" 2>/dev/null || true
  exit 0
fi
port=$3
if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
  echo "127.0.0.1:$port is already in use" >&2
  exit 1
fi
rm -rf "$dir/run" "$dir/db" "$dir/keys" "$dir/served"
mkdir -p "$dir/run" "$dir/db" "$dir/keys" "$dir/served"

fqdn() { [ "$1" = . ] && echo . || echo "${1%.}."; }
parent() { local z; z=$(fqdn "$1"); z=${z#*.}; [ -z "$z" ] && echo . || echo "$z"; }
file_of() { [ "$1" = . ] && echo root || echo "${1%.}"; }

conf=$dir/knot.conf
cat > "$conf" <<CONF
server:
    rundir: "$dir/run"
    pidfile: "$dir/run/knot.pid"
    listen: 127.0.0.1@$port
database:
    storage: "$dir/db"
    kasp-db: "$dir/keys"
log:
  - target: "$dir/knot.log"
    any: info
policy:
  - id: test
    algorithm: ecdsap256sha256
    single-type-signing: on
    manual: on
    nsec3: off
template:
  - id: default
    storage: "$dir/served"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
CONF
while read -r name mode; do
  [ -z "$name" ] && continue
  z=$(fqdn "$name") f=$(file_of "$z")
  echo "  - domain: \"$z\"" >> "$conf"
  echo "    file: \"$f.zone\"" >> "$conf"
  case "$mode" in signed|bogus) printf '    dnssec-signing: on\n    dnssec-policy: test\n' >> "$conf" ;; esac
  {
    echo "\$TTL 300"
    echo "$z SOA ns.test. hostmaster.test. 1 3600 600 86400 300"
    echo "$z NS ns.test."
    [ "$z" = "test." ] && echo "ns.test. A 127.0.0.1"
    cat "$dir/$f.zone"
  } > "$dir/served/$f.zone"
  [ "$mode" = broken ] && echo "this line does not parse" >> "$dir/served/$f.zone"
done < "$dir/zones"

# Keys first (Knot signs with them on start), then the DS records in the parents.
while read -r name mode; do
  [ -z "$name" ] && continue
  z=$(fqdn "$name")
  case "$mode" in signed|bogus|nosig)
    keymgr -c "$conf" "$z" generate algorithm=ecdsap256sha256 ksk=yes zsk=yes >/dev/null ;;
  esac
done < "$dir/zones"
while read -r name mode; do
  [ -z "$name" ] && continue
  z=$(fqdn "$name")
  [ "$z" = . ] && continue
  p=$(parent "$z") pf=$(file_of "$(parent "$z")")
  echo "$z NS ns.test." >> "$dir/served/$pf.zone"
  case "$mode" in
  signed|nosig) keymgr -c "$conf" "$z" ds | grep ' 2 ' >> "$dir/served/$pf.zone" ;;
  bogus) keymgr -c "$conf" "$z" ds | grep ' 2 ' | sed -E 's/ [0-9A-Fa-f]{64}$/ 0000000000000000000000000000000000000000000000000000000000000000/' >> "$dir/served/$pf.zone" ;;
  esac
done < "$dir/zones"

knotd -d -c "$conf"
for _ in $(seq 100); do
  if kdig @127.0.0.1 -p "$port" +short +dnssec . DNSKEY 2>/dev/null | grep -q '^257 '; then
    kdig @127.0.0.1 -p "$port" +noall +answer . DNSKEY > "$dir/root.keys"
    exit 0
  fi
  sleep 0.05
done
echo "knotd in $dir did not serve the signed root" >&2; cat "$dir/knot.log" >&2; exit 1
