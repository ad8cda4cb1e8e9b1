"""An SMTP server that misbehaves on purpose, for keyward's fault tests.

    python3 smtp_faulty.py PORT MODE LOG

MODE is `refuse` (every recipient gets a permanent 550) or `slow` (every message is accepted
only after 20 seconds). Each recipient the server is offered is appended to LOG, one per line.
"""

import asyncio
import sys
import time

from aiosmtpd.controller import Controller


class Faulty:
    def __init__(self, mode, log):
        self.mode = mode
        self.log = log

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with open(self.log, "a") as f:
            f.write(f"{time.time()} {address}\n")
        if self.mode == "refuse":
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.mode == "slow":
            await asyncio.sleep(20)
        return "250 Message accepted for delivery"


def main():
    port, mode, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    controller = Controller(Faulty(mode, log), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
