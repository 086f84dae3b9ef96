"""A real SMTP server on loopback (aiosmtpd) for natter's email digest tests: it takes every
message and prints it as one JSON line {"from", "to", "subject", "headers", "body"} on
stdout. Prints "port <n>" once listening.
"""
import json
import socket
import sys
import time
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller


class Sink:
    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.original_content, policy=policy.default)
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": str(msg["Subject"]),
            "headers": {k: str(v) for k, v in msg.items()},
            "body": msg.get_body(("plain",)).get_content(),
        }), flush=True)
        return "250 OK"


probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
controller = Controller(Sink(), hostname="127.0.0.1", port=port)
controller.start()
print(f"port {port}", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
