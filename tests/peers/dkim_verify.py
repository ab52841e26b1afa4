"""Verifies the DKIM signatures of one message with dkimpy, an
implementation independent of the one that signed it.

    dkim_verify.py MESSAGE RECORDS

RECORDS holds lines `NAME TXT-VALUE` (the DNS the verifier sees, so that no
resolver is needed). Prints one line per signature, `pass d=… s=… a=…` or
`fail d=… …`; exit 0 only if there is at least one signature and all pass.
"""
import sys

import dkim


def main():
    message = open(sys.argv[1], "rb").read()
    records = {}
    for line in open(sys.argv[2]):
        name, _, value = line.strip().partition(" ")
        records[name.rstrip(".").lower()] = value.encode()

    def dns(name, timeout=5):
        return records.get(name.decode().rstrip(".").lower())

    verifier = dkim.DKIM(message)
    signatures = [v for (n, v) in verifier.headers if n.lower() == b"dkim-signature"]
    failed = 0
    for idx in range(len(signatures)):
        try:
            ok = verifier.verify(idx=idx, dnsfunc=dns)
        except dkim.DKIMException as e:
            print("fail %s" % e)
            failed += 1
            continue
        sig = verifier.signature_fields
        print("%s d=%s s=%s a=%s" % ("pass" if ok else "fail",
              sig.get(b"d", b"").decode(), sig.get(b"s", b"").decode(),
              sig.get(b"a", b"").decode()))
        failed += 0 if ok else 1
    count = len(signatures)
    sys.exit(0 if count > 0 and failed == 0 else 1)


if __name__ == "__main__":
    main()
