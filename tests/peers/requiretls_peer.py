"""A next hop that takes REQUIRETLS (RFC 8689), which Postfix before 3.10
does not: aiosmtpd with STARTTLS, offering REQUIRETLS once the session is
encrypted, saving each message as DIR/<recipient>.<n>.eml and the MAIL
FROM parameters it came with as DIR/<recipient>.<n>.mail.

    requiretls_peer.py ADDR PORT CHAIN KEY DIR
"""

import asyncio
import itertools
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP


class RequireTlsSmtp(SMTP):
    requiretls = False

    async def smtp_MAIL(self, arg):
        # aiosmtpd refuses parameters it does not know: take ours off first.
        words = (arg or "").split()
        self.requiretls = any(w.upper() == "REQUIRETLS" for w in words[1:])
        if self.requiretls and self._tls_protocol is None:
            await self.push("530 5.7.10 REQUIRETLS needs an encrypted session")
            return
        kept = [w for i, w in enumerate(words) if i == 0 or w.upper() != "REQUIRETLS"]
        await super().smtp_MAIL(" ".join(kept))


class Save:
    def __init__(self, directory):
        self.directory = directory
        self.count = itertools.count()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if session.ssl is not None:
            responses.insert(len(responses) - 1, "250-REQUIRETLS")
        return responses

    async def handle_DATA(self, server, session, envelope):
        n = next(self.count)
        for rcpt in envelope.rcpt_tos:
            path = os.path.join(self.directory, f"{rcpt}.{n}")
            with open(path + ".mail", "w") as f:
                f.write("REQUIRETLS\n" if server.requiretls else "\n")
            with open(path + ".tmp", "wb") as f:
                f.write(envelope.original_content)
            os.rename(path + ".tmp", path + ".eml")
        return "250 2.0.0 saved"


async def main(addr, port, chain, key, directory):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    handler = Save(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RequireTlsSmtp(
            handler,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname="mx.rtls.dane.test",
            tls_context=context,
        ),
        addr,
        port,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
