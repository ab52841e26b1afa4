#!/usr/bin/env bash
# Private Postfix instances on loopback for tests and benchmarks.
#   postfix.sh dest  DIR PORT            destination MX: accepts *.test into maildirs under DIR/mail
#                                        ($ADDR: listen address, default 127.0.0.1;
#                                         $CHAIN: PEM file with key and certificate chain;
#                                         $EXTRA_MASTER: file of more master.cf lines, e.g.
#                                         listeners with their own -o TLS settings)
#   postfix.sh relay DIR PORT NEXTHOP    relay for 127.0.0.0/8 to NEXTHOP (host:port); TLS level in $SMTP_TLS (none),
#                                        $SMTP_TLS_CA, $SMTP_TLS_MATCH (names a `secure` certificate must carry),
#                                        $SMTP_TLS_REUSE=yes: TLS connection reuse through tlsproxy(8)
#   postfix.sh stop  DIR
# Idempotent: an instance already running in DIR is left as it is.
set -euo pipefail
mode=$1 dir=$(realpath -m "$2")

if [ "$mode" = stop ]; then
  [ -f "$dir/main.cf" ] && postfix -c "$dir" stop >/dev/null 2>&1 || true
  exit 0
fi
port=$3 addr=${ADDR:-127.0.0.1}
if [ -f "$dir/main.cf" ] && postfix -c "$dir" status >/dev/null 2>&1; then exit 0; fi
# Postfix binds with SO_REUSEPORT: a second instance on a busy port would
# silently share its connections. Refuse instead.
if (exec 3<>/dev/tcp/"$addr"/"$port") 2>/dev/null; then
  echo "$addr:$port is already in use (another Postfix from another checkout?)" >&2
  exit 1
fi

mkdir -p "$dir/queue" "$dir/data" "$dir/mail"
chmod 755 "$dir"
chown postfix "$dir/data"
chown nobody:nogroup "$dir/mail"
[ -f "$dir/cert.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=dest.test \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
chmod 600 "$dir/key.pem"
chain=${CHAIN:-$dir/key.pem, $dir/cert.pem}
: > "$dir/log"
[ -f "$dir/access" ] || : > "$dir/access"

cat > "$dir/main.cf" <<CF
compatibility_level = 3.6
meta_directory = /etc/postfix
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
inet_interfaces = all
inet_protocols = ipv4
myhostname = dest.test
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
smtpd_peername_lookup = no
maillog_file = $dir/log
maillog_file_prefixes = $dir
smtputf8_enable = yes
message_size_limit = 104857600
smtpd_tls_security_level = may
smtpd_tls_chain_files = $chain
smtpd_recipient_restrictions = check_recipient_access regexp:$dir/access, permit_mynetworks, reject_unauth_destination
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_dns_support_level = disabled
smtp_host_lookup = native
disable_dns_lookups = yes
CF
case "$mode" in
dest)
  # Every *.test recipient is accepted and saved by the pipe transport as
  # DIR/mail/<recipient>/<n>.eml, the message exactly as received (LF line ends).
  echo '/\.test$/ OK' > "$dir/domains"
  cat > "$dir/save.sh" <<'SH'
#!/bin/sh
d="$1/$2"
mkdir -p "$d" && f="$d/$(date +%s%N).$$" && cat > "$f.tmp" && mv "$f.tmp" "$f.eml"
SH
  chmod 755 "$dir/save.sh"
  cat >> "$dir/main.cf" <<CF
relay_domains = regexp:$dir/domains
relay_recipient_maps =
relay_transport = sink
sink_destination_recipient_limit = 1
CF
  ;;
relay)
  cat >> "$dir/main.cf" <<CF
relay_domains = regexp:$dir/any
relayhost = [${4%:*}]:${4##*:}
smtp_tls_security_level = ${SMTP_TLS:-none}
smtp_tls_CAfile = ${SMTP_TLS_CA:-}
smtp_tls_verify_cert_match = nexthop, dot-nexthop, hostname
smtp_tls_secure_cert_match = ${SMTP_TLS_MATCH:-nexthop, dot-nexthop}
smtp_tls_connection_reuse = ${SMTP_TLS_REUSE:-no}
smtp_tls_loglevel = 1
smtp_connection_cache_on_demand = yes
default_destination_concurrency_limit = 20
CF
  echo '/./ OK' > "$dir/any"
  ;;
esac

cat > "$dir/master.cf" <<CF
$addr:$port inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
tlsproxy  unix  - - n - 0 tlsproxy
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
sink      unix  - n n - - pipe flags=q user=nobody argv=$dir/save.sh $dir/mail \${recipient}
CF
[ -n "${EXTRA_MASTER:-}" ] && cat "$EXTRA_MASTER" >> "$dir/master.cf"
postfix -c "$dir" check
postfix -c "$dir" start >/dev/null 2>&1 || { cat "$dir/log" >&2; exit 1; }
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/"$addr"/"$port") 2>/dev/null && exit 0
  sleep 0.05
done
echo "postfix in $dir did not listen on $port" >&2; cat "$dir/log" >&2; exit 1
