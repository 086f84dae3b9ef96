"""Product logins from Python (PROTOCOL.md §5.13), against a live server and the product
backend on loopback (server/tests/accounts/product.py): a client logs in with the
product's token, its TokenSource is asked for fresh ones before each expires and the
session goes on (same device, messages both ways, no reconnect); bad tokens are refused
with typed errors.

Environment: as chat_test.py, plus NATTER_PRODUCT (the product backend's base URL).
"""
import asyncio
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.environ["NATTER_BINDINGS"])
import natter_ffi as n  # noqa: E402
import natter_protocol as m  # noqa: E402

PRODUCT = os.environ["NATTER_PRODUCT"]
PREFIX = os.environ["NATTER_PREFIX"]
WAIT = 20.0


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def token(query):
    with urllib.request.urlopen(f"{PRODUCT}/token?{query}") as r:
        return r.read().decode()


def options():
    return n.ConnectOptions(address=os.environ["NATTER_ADDR"],
                            certificate_sha256=os.environ["NATTER_FINGERPRINT"],
                            client_name="python-token-test")


class Source(n.TokenSource):
    """The app's side: asks the product backend for a fresh token, counting the asks."""
    def __init__(self, query):
        self.query = query
        self.asked = 0

    def fresh_token(self):
        self.asked += 1
        return token(self.query)


class Recorder(n.NatterListener):
    def __init__(self):
        self.events = []
        self.cond = threading.Condition()

    def on_event(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_text(self, text):
        def seen():
            return any(isinstance(e, m.NatterEvent.EVENT) and isinstance(e.event.body, m.EventBody.MESSAGE)
                       and e.event.body.text == text for e in self.events)
        with self.cond:
            return self.cond.wait_for(seen, timeout=WAIT)

    def count(self, kind):
        with self.cond:
            return sum(1 for e in self.events if isinstance(e, kind))


async def main():
    ann_name, bob_name = f"{PREFIX}ann", f"{PREFIX}bob"
    # Bob: a plain token login, an hour long.
    bob = n.NatterClient(options())
    bob_events = Recorder()
    bob_sub = bob.subscribe(bob_events)
    await bob.login_with_token(token(f"sub={PREFIX}-bob&preferred_username={bob_name}&exp_in=3600"), "laptop")

    # Ann: tokens of 4 s, renewed by her TokenSource.
    query = f"sub={PREFIX}-ann&preferred_username={ann_name}&exp_in=4"
    source = Source(query)
    ann = n.NatterClient.with_token_source(options(), source)
    ann_events = Recorder()
    ann_sub = ann.subscribe(ann_events)
    info = await ann.login_with_token(token(query), "phone")
    conv = await ann.direct(bob_name)

    start = time.time()
    i = 0
    while time.time() - start < 10:
        i += 1
        await ann.send(conv.conversation_id, f"ann {i}", 0)
        check(bob_events.wait_text(f"ann {i}"), f"bob got message {i}")
        await asyncio.sleep(0.5)
    check(source.asked >= 2, f"the token source was asked before each expiry ({source.asked} times)")
    check(ann_events.count(m.NatterEvent.DISCONNECTED) == 0, "the session never dropped")
    check(ann_events.count(m.NatterEvent.TOKEN_NEEDED) >= 2, "the app heard TokenNeeded each time")
    devices = await ann.devices()
    check([d.device_id for d in devices] == [info.device_id], "still the one device of the login")
    await bob.send(conv.conversation_id, "still here?", 0)
    check(ann_events.wait_text("still here?"), "ann receives after her first token died")

    # Typed refusals.
    for what, bad, code in [
        ("wrong audience", token(f"sub={PREFIX}-x&aud=other"), m.ErrorCode.INVALID_TOKEN),
        ("bad signature", token(f"sub={PREFIX}-x&sign_with=other"), m.ErrorCode.INVALID_TOKEN),
        ("expired", token(f"sub={PREFIX}-x&exp_in=-5"), m.ErrorCode.TOKEN_EXPIRED),
    ]:
        c = n.NatterClient(options())
        try:
            await c.login_with_token(bad, "x")
            check(False, f"{what} is refused")
        except n.NatterError.Server as e:
            check(e.code == code, f"{what} is refused with {code}")
        await c.shutdown()
    try:
        await ann.refresh_token(token(f"sub={PREFIX}-bob"))
        check(False, "a token of another user does not renew ann's device")
    except n.NatterError.Server as e:
        check(e.code == m.ErrorCode.INVALID_TOKEN, "a token of another user is refused with INVALID_TOKEN")
    ann_sub.cancel()
    bob_sub.cancel()
    await ann.shutdown()
    await bob.shutdown()
    print("all checks passed", flush=True)


asyncio.run(main())
