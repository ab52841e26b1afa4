#!/usr/bin/env bash
# A PostgreSQL server for the tests:
#   postgres.sh url DIR PORT
#       prints the URL of a server the tests may create databases on: the
#       machine's own at 127.0.0.1:5432 when it answers (trust auth, user
#       postgres), otherwise a private cluster in DIR on 127.0.0.1:PORT,
#       made with Debian's postgresql (installed if missing) and run as the
#       postgres user, since PostgreSQL refuses to run as root.
#       SEALGATE_TEST_PG_PRIVATE=1 makes the private cluster even so;
#       SEALGATE_TEST_PG_OPTIONS adds server options to it (the bench
#       loads pg_stat_statements to count statements).
#   postgres.sh stop DIR
#       stops the private cluster (at once, as a crash would: the next
#       start recovers from its WAL), or drops the tests' databases
#       (sealgate_test_*) from the machine's server.
set -euo pipefail
cmd=$1 dir=$(realpath -m "$2")

bin() {
  local b
  b=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$b" ] && echo "$b"
}

case "$cmd" in
stop)
  if [ -f "$dir/data/postmaster.pid" ] && b=$(bin); then
    runuser -u postgres -- "$b/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  elif command -v psql >/dev/null; then
    server=postgres://postgres@127.0.0.1:5432/postgres
    psql "$server" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'sealgate\_test\_%'" \
      2>/dev/null | while read -r db; do
      psql "$server" -qc "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
  fi
  exit 0 ;;
url) port=$3 ;;
*) echo "usage: postgres.sh url|stop DIR [PORT]" >&2; exit 2 ;;
esac

if [ -z "${SEALGATE_TEST_PG_PRIVATE:-}" ] && command -v psql >/dev/null &&
   psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  echo "postgres://postgres@127.0.0.1:5432"
  exit 0
fi

if ! b=$(bin); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  b=$(bin)
fi
if ! psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres: "$dir"
    runuser -u postgres -- "$b/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  chown -R postgres: "$dir"
  runuser -u postgres -- "$b/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on ${SEALGATE_TEST_PG_OPTIONS:-}" start >/dev/null
fi
echo "postgres://postgres@127.0.0.1:$port"
