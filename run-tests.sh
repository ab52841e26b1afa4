#!/usr/bin/env bash
# Installs the real peers the tests need (idempotent) and runs the whole
# suite: format check, clippy, unit and integration tests, then a short
# bounded fuzz run of every target in fuzz/. Run as root on Debian 12;
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")"

# How long each phase took, so that a slow run says where its time went.
start=$SECONDS last=$SECONDS
phase() {
  echo "== $1: $((SECONDS - last)) s (total $((SECONDS - start)) s)"
  last=$SECONDS
}

peers=(postfix swaks libnet-ssleay-perl openssl sqlite3 knot knot-dnsutils testssl.sh python3 chromium chromium-driver gnupg
       lintian systemd man-db groff-base adduser binutils util-linux procps podman runc debootstrap
       podman-compose golang-github-containernetworking-plugin-dnsname)
missing=()
for p in "${peers[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing test peers: ${missing[*]}"
  # "No configuration": our tests run private Postfix instances only.
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Exim, OpenSMTPD and aiosmtpd for the interoperability tests: unpacked
# beside the tree, since Debian installs one MTA package (Postfix is ours).
bash tests/peers/mtas.sh install target/tmp/peers/mtas-root 2>/dev/null || {
  apt-get update -qq
  bash tests/peers/mtas.sh install target/tmp/peers/mtas-root
}

# schemathesis (PyPI) drives tests/console.rs's schema-driven API test.
st=target/tmp/peers/schemathesis
if ! "$st/bin/schemathesis" --version >/dev/null 2>&1; then
  python3 -m venv "$st"
  "$st/bin/pip" install -q 'schemathesis==4.32.5'
fi

# PostgreSQL for tests/storage.rs: the machine's own server on
# 127.0.0.1:5432, else Debian's postgresql as a private cluster.
bash tests/peers/postgres.sh url target/tmp/peers/postgres 24432 >/dev/null

# The fuzz targets need a build of their own (instrumented, release):
# made now at the lowest CPU and I/O priority, so that it takes only what
# the builds and the tests leave idle (the tests mostly wait on peers and
# timers) instead of adding its ten minutes at the end. Sixteen codegen
# units (cargo-fuzz's default is one) halve that build for runs of a minute,
# which lose little speed by it; run and build must agree on it, or the
# run builds everything again.
mkdir -p target
setsid nice -n 19 ionice -c 3 bash -c '
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
  RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none --codegen-units 16
' >target/fuzz-build.log 2>&1 </dev/null &
fuzz_build=$!
# A run that stops early (fmt, clippy) leaves no build behind.
trap 'kill -- -"$fuzz_build" 2>/dev/null || true' EXIT
phase "peers"

cargo fmt --all -- --check
(cd fuzz && cargo fmt --all -- --check)
cargo clippy --all-targets -- -D warnings
phase "fmt and clippy"

# The Debian package, as packaging/build-deb.sh builds it (a release build
# with symbols split off); tests/package.rs checks, installs and purges it.
rm -f target/debian/sealgate_*.deb
bash packaging/build-deb.sh >/dev/null
SEALGATE_DEB=$(ls target/debian/sealgate_*.deb)
export SEALGATE_DEB
phase "Debian package"

status=0
cargo test --all-targets --no-fail-fast || status=$?
phase "tests"
# The suites whose gateways queue and deliver mail, again with every
# gateway on PostgreSQL (the cluster backend, docs/cluster.md): both
# backends must behave alike. tests/report.rs edits the SQLite file on
# purpose and stays single-backend; tests/storage.rs and tests/cluster.rs
# cover the PostgreSQL log. The console reads the log of either; policy
# and sealed keep the domain memory, passwords and certificates there.
SEALGATE_TEST_STORAGE=postgres cargo test --no-fail-fast --test relay --test faults --test operations --test console --test policy --test sealed || status=$?
phase "tests on PostgreSQL"

# Stop the peers the integration tests started and left for each other.
bash tests/peers/postfix.sh stop target/tmp/peers/postfix-dest
world=target/tmp/peers/dns-world
bash tests/peers/postfix.sh stop "$world/mx"
bash tests/peers/knot.sh stop "$world/knot"
bash tests/peers/pki.sh stop "$world/pki"
for pid in "$world"/www/*/pid "$world"/rtls/pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
for dir in target/tmp/peers/interop/*/; do bash tests/peers/mtas.sh stop "$dir"; done
bash tests/peers/postfix.sh stop target/tmp/peers/interop/postfix-relay
bash tests/peers/postgres.sh stop target/tmp/peers/postgres
bash tests/peers/postgres.sh stop target/tmp/peers/postgres-restart
bash tests/peers/postgres.sh stop target/tmp/peers/postgres-tls

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer), short and bounded: each
# target FUZZ_SECONDS (default 60, a minute per target) from the committed
# seeds in fuzz/corpus (each a case that once found a bug, or a real
# example).
# Stable Rust: no sanitizer, and RUSTC_BOOTSTRAP for cargo-fuzz's flags.
if ! wait "$fuzz_build"; then
  echo "building the fuzz targets failed:"
  tail -40 target/fuzz-build.log
  exit 1
fi
phase "fuzz build (what was left of it)"
# Two targets at a time: each libFuzzer run is one process on one core,
# and nothing else runs now.
fuzz_one() {
  local target=$1 log="target/fuzz-$1.log"
  # New inputs go to target/fuzz-corpus; the committed seeds are only read.
  mkdir -p "target/fuzz-corpus/$target"
  if RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --codegen-units 16 "$target" \
      "target/fuzz-corpus/$target" "fuzz/corpus/$target" -- \
      -max_total_time="${FUZZ_SECONDS:-60}" -rss_limit_mb=2048 >"$log" 2>&1; then
    echo "fuzzed $target for ${FUZZ_SECONDS:-60} s: $(grep -E '^Done' "$log" || true)"
  else
    echo "fuzz target $target failed:"
    grep -v -E '^\s+(at |[0-9]+: )' "$log" | tail -40
    return 1
  fi
}
for pair in "address command" "data dsn" "config policy" "envelope content"; do
  set -- $pair
  fuzz_one "$1" > "target/fuzz-$1.out" & first=$!
  fuzz_one "$2" > "target/fuzz-$2.out" & second=$!
  wait "$first" || status=1
  wait "$second" || status=1
  cat "target/fuzz-$1.out" "target/fuzz-$2.out"
done
phase "fuzzing"

exit $status
