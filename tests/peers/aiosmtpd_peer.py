"""aiosmtpd as a next hop for the interoperability tests: every message
it takes is saved, as received, in DIR/<recipient>.<n>.eml.

    aiosmtpd_peer.py PORT DIR
"""

import asyncio
import itertools
import os
import sys

from aiosmtpd.smtp import SMTP


class Save:
    def __init__(self, directory):
        self.directory = directory
        self.count = itertools.count()

    async def handle_DATA(self, server, session, envelope):
        n = next(self.count)
        for rcpt in envelope.rcpt_tos:
            path = os.path.join(self.directory, f"{rcpt}.{n}.eml")
            with open(path + ".tmp", "wb") as f:
                f.write(envelope.original_content)
            os.rename(path + ".tmp", path)
        return "250 2.0.0 saved"


async def main(port, directory):
    handler = Save(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, decode_data=False, hostname="aio.test"),
        "127.0.0.1",
        port,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
