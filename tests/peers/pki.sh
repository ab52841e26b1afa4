#!/usr/bin/env bash
# A test PKI for the certificate tests, made fresh on every run with
# `openssl ca` (so index.txt, revocations and the CRL are the real thing):
#   pki.sh make  DIR OCSP_PORT DEAD_PORT CRL_PORT FAULT_PORT
#       root CA (P-384) -> intermediate CA (P-256) -> one leaf per peer in
#       DIR/peers/NAME.pem (key, leaf, intermediate: Postfix's chain order),
#       a delegated OCSP signer, two revoked leaves, the intermediate's CRL
#       in DIR/www/int.crl, and a second CA nobody trusts. Two leaves name
#       OCSP URLs on FAULT_PORT (/garbage, /slow) that the tests serve.
#   pki.sh start DIR OCSP_PORT CRL_PORT
#       `openssl ocsp` on 127.0.0.1:OCSP_PORT, signing with the delegated
#       signer; the CRL over HTTP on 127.0.0.1:CRL_PORT.
#   pki.sh stop  DIR
#   pki.sh smime DIR NAME KEY ADDRESS [START END]
#       an S/MIME certificate for ADDRESS from the intermediate (KEY rsa:BITS
#       or ec:CURVE) in DIR/smime/NAME.crt, NAME.pem (with the
#       intermediate) and NAME.key; `make` issues alice (RSA), carol (P-256),
#       dave (P-384), old (expired) and gone (to be revoked by a test).
#   pki.sh revoke DIR NAME
#       revokes DIR/smime/NAME.crt; the responder serves it as revoked from
#       the request after next (it rereads index.txt between requests).
set -euo pipefail
cmd=$1 dir=$(realpath -m "$2")

quiet() { "$@" >/dev/null 2>"$dir/tmp/err" || { cat "$dir/tmp/err" >&2; exit 1; }; }

smime() {
  local name=$1 key=$2 address=$3 start=${4:-} end=${5:-} usage
  mkdir -p "$dir/smime"
  case "$key" in
    rsa:*) usage=keyEncipherment
      quiet openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${key#rsa:}" -out "$dir/smime/$name.key" ;;
    ec:*) usage=keyAgreement
      quiet openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:${key#ec:}" -out "$dir/smime/$name.key" ;;
  esac
  quiet openssl req -new -key "$dir/smime/$name.key" -subj "/CN=$address" -out "$dir/tmp/smime-$name.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,$usage" \
    "extendedKeyUsage=emailProtection" "subjectAltName=email:$address" \
    "authorityKeyIdentifier=keyid" "authorityInfoAccess=OCSP;URI:$(cat "$dir/ocsp.url")" \
    > "$dir/tmp/smime-$name.ext"
  local dates=()
  [ -n "$start" ] && dates=(-startdate "$start" -enddate "$end")
  quiet openssl ca -batch -config "$dir/ca/ca.cnf" -notext -in "$dir/tmp/smime-$name.csr" \
    -out "$dir/smime/$name.crt" -extfile "$dir/tmp/smime-$name.ext" "${dates[@]}"
  cat "$dir/smime/$name.crt" "$dir/ca/int.pem" > "$dir/smime/$name.pem"
}

stop() {
  for p in "$dir"/run/*.pid; do
    # Each runs in its own process group (setsid): the responder forks workers.
    [ -f "$p" ] && kill -9 -- "-$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
}
listening() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

case "$cmd" in
stop) stop; exit 0 ;;
smime) shift 2; smime "$@"; exit 0 ;;
revoke)
  quiet openssl ca -config "$dir/ca/ca.cnf" -revoke "$dir/smime/$3.crt" -crl_reason keyCompromise
  exit 0 ;;
start)
  ocsp_port=$3 crl_port=$4
  stop
  for port in "$ocsp_port" "$crl_port"; do
    if listening "$port"; then echo "127.0.0.1:$port is already in use" >&2; exit 1; fi
  done
  # The responder serves one request at a time (-multi makes it exit when
  # this script does) and is not probed by connecting: an empty connection
  # can wedge it. It says when it listens.
  mkdir -p "$dir/run"
  cd "$dir/ca"
  setsid openssl ocsp -index index.txt -CA int.pem -rsigner ../ocsp.pem -rkey ../ocsp.key \
    -port "$ocsp_port" -nmin 60 >"$dir/run/ocsp.log" 2>&1 &
  echo $! > "$dir/run/ocsp.pid"
  setsid python3 -m http.server "$crl_port" --bind 127.0.0.1 --directory "$dir/www" \
    >"$dir/run/http.log" 2>&1 &
  echo $! > "$dir/run/http.pid"
  for _ in $(seq 200); do
    grep -q '^ACCEPT' "$dir/run/ocsp.log" && listening "$crl_port" && exit 0
    sleep 0.05
  done
  echo "OCSP responder or CRL server did not listen" >&2
  cat "$dir/run/ocsp.log" "$dir/run/http.log" >&2
  exit 1
  ;;
make) ;;
*) echo "usage: pki.sh make|start|stop|smime|revoke DIR ..." >&2; exit 2 ;;
esac

ocsp_port=$3 dead_port=$4 crl_port=$5 fault_port=$6
rm -rf "$dir"
mkdir -p "$dir/ca/new" "$dir/peers" "$dir/www" "$dir/tmp"
cd "$dir"
ocsp_url="http://127.0.0.1:$ocsp_port"
dead_url="http://127.0.0.1:$dead_port"
crl_url="http://127.0.0.1:$crl_port/int.crl"
echo "$ocsp_url" > ocsp.url

# Root and intermediate.
quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days 30 \
  -subj "/O=sealgate tests/CN=sealgate test root" -keyout ca/root.key -out ca/root.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/O=sealgate tests/CN=sealgate test intermediate" -keyout ca/int.key -out tmp/int.csr
cat > tmp/int.ext <<EXT
basicConstraints=critical,CA:TRUE,pathlen:0
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
quiet openssl x509 -req -in tmp/int.csr -CA ca/root.pem -CAkey ca/root.key -CAcreateserial \
  -days 30 -extfile tmp/int.ext -out ca/int.pem

# `openssl ca` for the leaves: it keeps index.txt, which the OCSP responder
# and the CRL are made from.
: > ca/index.txt
echo 1000 > ca/serial
echo 1000 > ca/crlnumber
cat > ca/ca.cnf <<CNF
[ca]
default_ca = int
[int]
dir = $dir/ca
database = \$dir/index.txt
new_certs_dir = \$dir/new
serial = \$dir/serial
crlnumber = \$dir/crlnumber
certificate = \$dir/int.pem
private_key = \$dir/int.key
default_md = sha256
default_days = 30
default_crl_days = 7
policy = any
unique_subject = no
[any]
commonName = supplied
CNF

# leaf NAME KEY SANS [START END] [EXTRA]: a leaf from the intermediate.
leaf() {
  local name=$1 key=$2 sans=$3 start=${4:-} end=${5:-} extra=${6:-aia}
  case "$key" in
    rsa:*) quiet openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${key#rsa:}" -out "tmp/$name.key" ;;
    ec) quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "tmp/$name.key" ;;
  esac
  quiet openssl req -new -key "tmp/$name.key" -subj "/CN=${sans%%,*}" -out "tmp/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "extendedKeyUsage=serverAuth"
    echo "subjectAltName=$(echo "$sans" | sed 's/[^,]*/DNS:&/g')"
    echo "authorityKeyIdentifier=keyid"
    case "$extra" in
      aia) echo "authorityInfoAccess=OCSP;URI:$ocsp_url" ;;
      dead) echo "authorityInfoAccess=OCSP;URI:$dead_url" ;;
      crl) echo "crlDistributionPoints=URI:$crl_url" ;;
      fault:*) echo "authorityInfoAccess=OCSP;URI:http://127.0.0.1:$fault_port/${extra#fault:}" ;;
    esac
  } > "tmp/$name.ext"
  local dates=()
  [ -n "$start" ] && dates=(-startdate "$start" -enddate "$end")
  quiet openssl ca -batch -config ca/ca.cnf -notext -in "tmp/$name.csr" -out "tmp/$name.crt" \
    -extfile "tmp/$name.ext" "${dates[@]}"
  cat "tmp/$name.key" "tmp/$name.crt" ca/int.pem > "peers/$name.pem"
}

day=86400
past1=$(date -u -d "@$(( $(date +%s) - 10 * day ))" +%Y%m%d%H%M%SZ)
past2=$(date -u -d "@$(( $(date +%s) - 1 * day ))" +%Y%m%d%H%M%SZ)
fut1=$(date -u -d "@$(( $(date +%s) + 1 * day ))" +%Y%m%d%H%M%SZ)
fut2=$(date -u -d "@$(( $(date +%s) + 30 * day ))" +%Y%m%d%H%M%SZ)

# The protocol and cipher variants (Postfix settings) present this one too.
leaf good rsa:3072 mx.good.pki.test,mx.tls10.pki.test,mx.cbc.pki.test,mx.chacha.pki.test,mx.x25519.pki.test,mx.nostarttls.pki.test,mx.flip.pki.test
leaf ecdsa ec mx.ecdsa.pki.test
leaf rsa2048 rsa:2048 mx.rsa2048.pki.test
leaf rsa1024 rsa:1024 mx.rsa1024.pki.test
leaf expired ec mx.expired.pki.test "$past1" "$past2"
leaf notyet ec mx.notyet.pki.test "$fut1" "$fut2"
leaf wrongname ec mx.elsewhere.pki.test
leaf revoked ec mx.revoked.pki.test
leaf crlrevoked ec mx.crlrevoked.pki.test "" "" crl
leaf crlgood ec mx.crlgood.pki.test "" "" crl
leaf ocspdown ec mx.ocspdown.pki.test "" "" dead
leaf ocspgarbage ec mx.ocspgarbage.pki.test "" "" fault:garbage
leaf ocspslow ec mx.ocspslow.pki.test "" "" fault:slow
# Recipients' S/MIME certificates.
smime alice rsa:3072 alice@good.pki.test
smime carol ec:P-256 carol@good.pki.test
smime dave ec:P-384 dave@good.pki.test
smime gone ec:P-256 gone@good.pki.test
smime old ec:P-256 old@good.pki.test "$past1" "$past2"
quiet openssl ca -config ca/ca.cnf -revoke tmp/revoked.crt -crl_reason keyCompromise
quiet openssl ca -config ca/ca.cnf -revoke tmp/crlrevoked.crt -crl_reason superseded
quiet openssl ca -config ca/ca.cnf -gencrl -out tmp/int.crl.pem
openssl crl -in tmp/int.crl.pem -outform DER -out www/int.crl

# The delegated OCSP signer.
quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=sealgate test OCSP responder" -keyout ocsp.key -out tmp/ocsp.csr
printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=OCSPSigning\n' > tmp/ocsp.ext
quiet openssl ca -batch -config ca/ca.cnf -notext -in tmp/ocsp.csr -out ocsp.pem -extfile tmp/ocsp.ext

# Self-signed, and from a CA nobody trusts.
quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=mx.selfsigned.pki.test -addext subjectAltName=DNS:mx.selfsigned.pki.test \
  -keyout tmp/selfsigned.key -out tmp/selfsigned.crt
cat tmp/selfsigned.key tmp/selfsigned.crt > peers/selfsigned.pem
quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=unknown CA" -keyout tmp/other.key -out tmp/other.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj /CN=mx.unknownca.pki.test -keyout tmp/unknownca.key -out tmp/unknownca.csr
printf 'subjectAltName=DNS:mx.unknownca.pki.test\nextendedKeyUsage=serverAuth\n' > tmp/unknownca.ext
quiet openssl x509 -req -in tmp/unknownca.csr -CA tmp/other.pem -CAkey tmp/other.key \
  -CAcreateserial -days 30 -extfile tmp/unknownca.ext -out tmp/unknownca.crt
cat tmp/unknownca.key tmp/unknownca.crt tmp/other.pem > peers/unknownca.pem

# Leaves the tests read: serials for index lookups, the issuer for OCSP.
cp tmp/good.crt tmp/revoked.crt peers/
chmod 600 peers/*.pem ca/*.key ocsp.key
