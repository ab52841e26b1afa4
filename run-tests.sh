#!/usr/bin/env bash
# Installs the real peers the tests need (idempotent) and runs the whole
# suite: format check, clippy, unit and integration tests. Run as root on
# Debian 12; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")"

peers=(postfix swaks libnet-ssleay-perl openssl sqlite3 knot knot-dnsutils testssl.sh python3 chromium chromium-driver)
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

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
status=0
cargo test --all-targets || status=$?
# Stop the peers the integration tests started and left for each other.
bash tests/peers/postfix.sh stop target/tmp/peers/postfix-dest
world=target/tmp/peers/dns-world
bash tests/peers/postfix.sh stop "$world/mx"
bash tests/peers/knot.sh stop "$world/knot"
bash tests/peers/pki.sh stop "$world/pki"
for pid in "$world"/www/*/pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
exit $status
