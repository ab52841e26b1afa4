#!/usr/bin/env bash
# Exim, OpenSMTPD and aiosmtpd on loopback, for the interoperability tests.
# Debian lets one MTA package be installed (Postfix is ours), so Exim and
# OpenSMTPD are unpacked from their Debian packages under ROOT, with the
# system users and the few fixed paths their binaries were built with.
#   mtas.sh install ROOT                 unpack, users, links, aiosmtpd+dkimpy venv (idempotent; needs apt lists)
#   mtas.sh exim-in  ROOT DIR PORT       Exim that keeps what it receives in its queue (STARTTLS, CHUNKING)
#   mtas.sh exim-out ROOT DIR PORT NEXT  Exim relaying all it receives to 127.0.0.1:NEXT (BDAT when offered)
#   mtas.sh smtpd    ROOT DIR PORT NEXT  OpenSMTPD: *.smtpd.test into DIR/mail, the rest relayed to 127.0.0.1:NEXT
#   mtas.sh aiosmtpd ROOT DIR PORT       aiosmtpd saving each message under DIR/mail
#   mtas.sh stop     DIR                 stops what DIR runs
# Every instance starts empty, writes its pid to DIR/pid and is ready when
# this returns.
set -euo pipefail
mode=$1

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  exit 1
}

stop() {
  local dir=$1
  [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "$mode" in
install)
  root=$(realpath -m "$2")
  if [ ! -x "$root/usr/sbin/exim4" ] || [ ! -x "$root/usr/sbin/smtpd" ]; then
    mkdir -p "$root/debs"
    (cd "$root/debs" && apt-get download exim4-daemon-light exim4-base opensmtpd >/dev/null)
    for deb in "$root"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
  fi
  # Libraries the unpacked binaries link against.
  missing=()
  for p in libidn12 libevent-2.1-7 libgnutls-dane0 python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Users and paths compiled into the binaries.
  for u in Debian-exim opensmtpd opensmtpq; do
    id "$u" >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$u"
  done
  mkdir -p /var/lib/opensmtpd/empty
  # Exim re-executes itself and OpenSMTPD runs its delivery helpers from
  # where the package would put them: linked there unless a real file is
  # (a link is ours, perhaps from another checkout: pointed here).
  mkdir -p /usr/libexec
  for pair in "usr/sbin/exim4" "usr/libexec/opensmtpd"; do
    if [ ! -e "/$pair" ] || [ -L "/$pair" ]; then ln -sfn "$root/$pair" "/$pair"; fi
  done
  # aiosmtpd is a peer; dkimpy (with PyNaCl for Ed25519) verifies our
  # DKIM signatures independently of the crate that makes them.
  if [ ! -x "$root/venv/bin/python" ] || ! "$root/venv/bin/python" -c 'import aiosmtpd, dkim, nacl' 2>/dev/null; then
    python3 -m venv "$root/venv"
    "$root/venv/bin/pip" install -q 'aiosmtpd==1.4.6' 'dkimpy==1.1.8' 'PyNaCl==1.5.0'
  fi
  ;;

exim-in | exim-out)
  root=$(realpath -m "$2") dir=$(realpath -m "$3") port=$4 next=${5:-}
  stop "$dir"
  # Each start begins empty: what a test finds is what it sent.
  rm -rf "$dir/spool" "$dir/log"
  mkdir -p "$dir/spool" "$dir/log"
  [ -f "$dir/cert.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=exim.test \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
  chown -R Debian-exim "$dir/spool" "$dir/log" "$dir/key.pem"
  if [ "$mode" = exim-in ]; then
    routing="queue_only = true
tls_certificate = $dir/cert.pem
tls_privatekey = $dir/key.pem
begin routers"
  else
    routing="tls_advertise_hosts =
begin routers
out:
  driver = manualroute
  route_list = * 127.0.0.1::$next byname
  transport = smtp
  self = send
begin transports
smtp:
  driver = smtp
  hosts_try_chunking = *
  hosts_avoid_tls = *
begin retry
* * F,1h,1m"
  fi
  rm -f "$dir/exim.conf"
  cat > "$dir/exim.conf" <<CF
primary_hostname = $mode.exim.test
spool_directory = $dir/spool
log_file_path = $dir/log/%slog
log_selector = +all
daemon_smtp_ports = $port
local_interfaces = 127.0.0.1
pid_file_path = $dir/exim.pid
acl_smtp_rcpt = accept
smtputf8_advertise_hosts = *
keep_environment =
$routing
CF
  # The relay delivers as soon as it receives; the other only queues.
  [ "$mode" = exim-out ] && at_once=-odi || at_once=
  "$root/usr/sbin/exim4" -C "$dir/exim.conf" -bd $at_once -oX "$port" -oP "$dir/exim.pid"
  wait_port "$port"
  cp "$dir/exim.pid" "$dir/pid"
  ;;

smtpd)
  root=$(realpath -m "$2") dir=$(realpath -m "$3") port=$4 next=$5
  stop "$dir"
  # One OpenSMTPD per machine: its control socket and queue are fixed paths.
  pkill -f "$root/usr/sbin/smtpd" 2>/dev/null || true
  rm -rf "$dir/mail"
  mkdir -p "$dir/mail"
  chmod 777 "$dir/mail"
  cat > "$dir/smtpd.conf" <<CF
table vusers { "@" = "nobody" }
listen on 127.0.0.1 port $port
action "keep" mda "/usr/bin/tee $dir/mail/%{rcpt}.%{mbox.from}.eml" virtual <vusers>
action "out" relay host smtp://127.0.0.1:$next
match from any for domain "*.smtpd.test" action "keep"
match from any for any action "out"
CF
  "$root/usr/sbin/smtpd" -d -f "$dir/smtpd.conf" >"$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  wait_port "$port"
  ;;

aiosmtpd)
  root=$(realpath -m "$2") dir=$(realpath -m "$3") port=$4
  stop "$dir"
  rm -rf "$dir/mail"
  mkdir -p "$dir/mail"
  here=$(dirname "$(realpath "$0")")
  "$root/venv/bin/python" "$here/aiosmtpd_peer.py" "$port" "$dir/mail" >"$dir/log" 2>&1 &
  echo $! > "$dir/pid"
  wait_port "$port"
  ;;

stop)
  stop "$(realpath -m "$2")"
  ;;

*)
  echo "usage: mtas.sh install|exim-in|exim-out|smtpd|aiosmtpd|stop ..." >&2
  exit 2
  ;;
esac
