"""A device on natter's generated Python bindings in an encrypted direct conversation,
beside a browser and natter-sdk devices (server/tests/browser/e2ee.rs).

Environment: NATTER_BINDINGS (folder with natter_ffi.py, natter_protocol.py and the
library: `sdk-ffi/bindgen.sh` makes target/ffi-bindings/python), NATTER_ADDR,
NATTER_FINGERPRINT, NATTER_USER, NATTER_PASSWORD, NATTER_STATE (its encryption state file).

Logs in with encryption and prints {"device": id} once its keys are published. Then reads
commands from stdin, one per line, answering each with one JSON line:
  read CONV N       the texts of the first N messages of CONV it received (fails on an
                    undecryptable one): {"texts": [...]}
  send CONV TEXT    sends TEXT, sealed: {"seq": n}
Exits 0 at the end of stdin.
"""
import asyncio
import json
import os
import sys
import threading

sys.path.insert(0, os.environ["NATTER_BINDINGS"])
import natter_ffi as n  # noqa: E402
import natter_protocol as m  # noqa: E402

WAIT = 30.0


class Recorder(n.NatterListener):
    def __init__(self):
        self.events = []
        self.cond = threading.Condition()

    def on_event(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def messages(self, conv, n_wanted):
        """Block until `n_wanted` messages of `conv` arrived; their texts in arrival order."""
        def ready():
            found = []
            for e in self.events:
                if not (isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == conv):
                    continue
                if isinstance(e.event.body, m.EventBody.UNDECRYPTABLE):
                    raise RuntimeError(f"seq {e.event.seq} undecryptable: {e.event.body.reason}")
                if isinstance(e.event.body, m.EventBody.MESSAGE):
                    found.append(e.event.body.text)
            return found if len(found) >= n_wanted else None
        with self.cond:
            if not self.cond.wait_for(lambda: ready() is not None, timeout=WAIT):
                raise RuntimeError(f"only {len(ready() or [])} of {n_wanted} messages within {WAIT} s")
            return ready()[:n_wanted]


async def main():
    client = n.NatterClient(n.ConnectOptions(
        address=os.environ["NATTER_ADDR"], certificate_sha256=os.environ["NATTER_FINGERPRINT"],
        client_name="python-member", encryption_state_path=os.environ["NATTER_STATE"],
        encryption_store_key=os.urandom(32)))
    rec = Recorder()
    sub = client.subscribe(rec)
    await client.login(os.environ["NATTER_USER"], os.environ["NATTER_PASSWORD"], "python")

    def connected():
        with rec.cond:
            rec.cond.wait_for(lambda: any(isinstance(e, m.NatterEvent.CONNECTED) for e in rec.events), timeout=WAIT)
            return next(e for e in rec.events if isinstance(e, m.NatterEvent.CONNECTED))
    up = await asyncio.to_thread(connected)
    print(json.dumps({"device": up.device_id}), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        op, conv, arg = line.rstrip("\n").split(" ", 2)
        if op == "read":
            texts = await asyncio.to_thread(rec.messages, int(conv), int(arg))
            print(json.dumps({"texts": texts}), flush=True)
        elif op == "send":
            ack = await client.send(int(conv), arg, 0)
            print(json.dumps({"seq": ack.seq}), flush=True)
    sub.cancel()
    await client.shutdown()


asyncio.run(main())
