"""natter-ffi's push surface from Python, against a live server and the Web Push service on
loopback (server/tests/push/webpush_provider.py): a device makes push keys, registers them,
goes offline; another user writes; the push service receives the encrypted notification;
a separate process — a notification extension, with no client and no connection — opens
it with the 49-byte key file, and its peak memory is measured.

Environment: NATTER_BINDINGS, NATTER_ADDR, NATTER_FINGERPRINT, NATTER_PREFIX (as for
chat_test.py) and NATTER_PUSH_PROVIDER (the provider script).
Run as `push_test.py extension KEYS BODY` it is the extension: prints one JSON line.
"""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def fault_in_library_code():
    """Touch every page of natter's library as mapped (code and read-only data), so the
    baseline holds them: what is measured is then the memory the call itself allocates, as
    a phone's notification extension is charged for it (iOS counts dirty memory; clean code
    pages are not charged), and not the size of this build's code (a debug build's is ~5 MB
    more, and moved by ±0.6 MB with unrelated changes)."""
    import ctypes
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or not parts[5].endswith("libnatter_ffi.so") or "r" not in parts[1]:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            for page in range(start, end, 4096):
                ctypes.string_at(page, 1)


if len(sys.argv) == 6 and sys.argv[1] == "open":
    # The extension of an encrypted conversation: it also opens the sealed message with the
    # device's encryption state file and store key (read-only), still with no client.
    sys.path.insert(0, os.environ["NATTER_BINDINGS"])
    import natter_ffi as n
    fault_in_library_code()
    baseline = hwm_kib()
    keys = open(sys.argv[2], "rb").read()
    body = open(sys.argv[3], "rb").read()
    try:
        note = n.open_notification(keys, body, sys.argv[4], bytes.fromhex(sys.argv[5]))
        out = {"seq": note.seq, "preview": note.preview, "fetch": note.fetch, "event": len(note.event)}
    except n.NatterError.Decrypt as e:
        out = {"error": "Decrypt", "detail": str(e)}
    out["hwm_over_baseline_kib"] = hwm_kib() - baseline
    print(json.dumps(out))
    sys.exit(0)

if len(sys.argv) == 4 and sys.argv[1] == "extension":
    # The notification extension: the interpreter with natter's bindings loaded is the
    # baseline (Python's module objects for the generated bindings cost ~17 MB in CPython
    # before natter runs a line: reported, not counted); then one notification is opened.
    # The acceptance measure (issue 17): everything the call touches counts, the library's
    # code pages included.
    bare = hwm_kib()
    sys.path.insert(0, os.environ["NATTER_BINDINGS"])
    import natter_ffi as n
    baseline = hwm_kib()

    keys = open(sys.argv[2], "rb").read()
    body = open(sys.argv[3], "rb").read()
    try:
        note = n.decrypt_notification(keys, body)
        out = {"seq": note.seq, "preview": note.preview, "sender": note.sender_name,
               "conversation": note.conversation_id, "mention": note.mention}
    except n.NatterError.Decrypt as e:
        out = {"error": "Decrypt", "detail": str(e)}
    out["hwm_over_baseline_kib"] = hwm_kib() - baseline
    out["import_kib"] = baseline - bare
    print(json.dumps(out))
    sys.exit(0)

sys.path.insert(0, os.environ["NATTER_BINDINGS"])
import natter_ffi as n  # noqa: E402
import natter_protocol as m  # noqa: E402

PREFIX = os.environ["NATTER_PREFIX"]
WAIT = 20.0


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def get_json(url):
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def options(state=None, key=None):
    return n.ConnectOptions(address=os.environ["NATTER_ADDR"],
                            certificate_sha256=os.environ["NATTER_FINGERPRINT"],
                            client_name="python-push-test", encryption_state_path=state,
                            encryption_store_key=key)


class Recorder(n.NatterListener):
    """Every event a client hears; wait for a message text."""
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


def extension(keys_path, body_path):
    out = subprocess.run([sys.executable, __file__, "extension", keys_path, body_path],
                         capture_output=True, text=True, env=os.environ, timeout=60)
    if out.returncode != 0:
        print(out.stdout, out.stderr)
        check(False, "the extension process ran")
    return json.loads(out.stdout)


async def main():
    provider = subprocess.Popen([sys.executable, os.environ["NATTER_PUSH_PROVIDER"]],
                                stdout=subprocess.PIPE, text=True)
    try:
        base = "http://127.0.0.1:" + provider.stdout.readline().split()[1]
        await scenario(base)
        await encrypted_scenario(base)
    finally:
        provider.kill()


async def scenario(base):
    alice_name, bob_name = f"{PREFIX}alice", f"{PREFIX}bob"
    alice, bob = n.NatterClient(options()), n.NatterClient(options())
    await alice.register(alice_name, "alice password")
    await bob.register(bob_name, "bob password")
    await alice.login(alice_name, "alice password", "phone")
    await bob.login(bob_name, "bob password", "laptop")

    keys = n.generate_push_keys()
    check(len(keys) == 49, "push keys are 49 bytes")
    public = n.push_public_keys(keys)
    check(len(public.p256dh) == 65 and len(public.auth) == 16, "their public half")
    endpoint = get_json(f"{base}/subscribe/{alice_name}?keys=device")["endpoint"]
    regs = await alice.register_push(m.PushProvider.WEB_PUSH, endpoint, public, "", False)
    check(len(regs.registrations) == 1 and regs.registrations[0].endpoint == endpoint,
          "the registration is kept")
    check(len(regs.vapid_public_key) == 65, "the server's VAPID key")
    listed = await alice.list_push()
    check(listed.registrations == regs.registrations, "list_push shows it")
    try:
        n.push_public_keys(b"\x01" * 10)
        check(False, "malformed keys are refused")
    except n.NatterError.InvalidInput:
        check(True, "malformed keys are refused with InvalidInput")
    # Rules: mentions only, kept and read back; an unknown time zone is refused.
    rules = await alice.notify_settings()
    check(rules.level == m.NotifyLevel.UNSPECIFIED and rules.conversations == [], "no rules at first")
    rules.level = m.NotifyLevel.MENTIONS
    rules.time_zone = "Europe/Berlin"
    rules.email = "alice@example.com"
    saved = await alice.set_notify_settings(rules)
    check(saved.level == m.NotifyLevel.MENTIONS and saved.time_zone == "Europe/Berlin"
          and saved.email == "alice@example.com" and not saved.no_email_digest, "rules are kept")
    try:
        await alice.set_notify_settings(m.NotifySettings(level=m.NotifyLevel.ALL, mute_until_ms=0,
                                                         time_zone="Nowhere/Atlantis", dnd_start_minute=0,
                                                         dnd_end_minute=0, conversations=[], email="",
                                                         no_email_digest=False))
        check(False, "an unknown time zone is refused")
    except n.NatterError.Server as e:
        check(e.code == m.ErrorCode.BAD_REQUEST, "an unknown time zone is refused with BAD_REQUEST")
    await alice.shutdown()  # the phone goes into a pocket

    conv = await bob.direct(alice_name)
    await bob.send(conv.conversation_id, "no mention: alice hears nothing", 0)
    ack = await bob.send(conv.conversation_id, f"ding @{alice_name}", 0)
    deadline = time.time() + WAIT
    got = []
    while not got and time.time() < deadline:
        got = get_json(f"{base}/received/{alice_name}")
        await asyncio.sleep(0.02)
    check(len(got) == 1 and got[0]["problem"] is None, "the push service received one notification")

    with tempfile.TemporaryDirectory() as d:
        keys_path, body_path = os.path.join(d, "push.keys"), os.path.join(d, "body")
        open(keys_path, "wb").write(bytes(keys))
        b = got[0]["body"]
        open(body_path, "wb").write(__import__("base64").urlsafe_b64decode(b + "=" * (-len(b) % 4)))
        opened = extension(keys_path, body_path)
        check(opened.get("preview") == f"ding @{alice_name}" and opened.get("seq") == ack.seq
              and opened.get("sender") == bob_name and opened.get("mention"),
              f"the extension opened the notification of the mention: {opened}")
        print(f"extension: loading the bindings took {opened['import_kib']} KiB, opening the "
              f"notification {opened['hwm_over_baseline_kib']} KiB more at peak", flush=True)
        check(opened["hwm_over_baseline_kib"] < 8 * 1024, "the extension stays under 8 MB")
        # APNs and FCM carry the body as base64 text (the `n` field): opened as it comes.
        raw = open(body_path, "rb").read()
        open(body_path, "wb").write(__import__("base64").b64encode(raw))
        as_text = extension(keys_path, body_path)
        check(as_text.get("seq") == ack.seq, f"the base64 text of APNs/FCM opens the same: {as_text}")
        open(keys_path, "wb").write(bytes(n.generate_push_keys()))
        refused = extension(keys_path, body_path)
        check(refused.get("error") == "Decrypt", "another device's keys do not open it")
    await bob.shutdown()


async def encrypted_scenario(base):
    """An encrypted direct conversation: the UnifiedPush notification carries the sealed
    message, and the extension opens it with the phone's state file."""
    carol_name, dan_name = f"{PREFIX}carol", f"{PREFIX}dan"
    with tempfile.TemporaryDirectory() as d:
        carol_state, carol_key = os.path.join(d, "carol.state"), os.urandom(32)
        carol = n.NatterClient(options(carol_state, carol_key))
        dan = n.NatterClient(options(os.path.join(d, "dan.state"), os.urandom(32)))
        rec = Recorder()
        sub = carol.subscribe(rec)
        await carol.register(carol_name, "carol password")
        await dan.register(dan_name, "dan password")
        await carol.login(carol_name, "carol password", "phone")
        await dan.login(dan_name, "dan password", "laptop")
        keys = n.generate_push_keys()
        endpoint = get_json(f"{base}/subscribe/{carol_name}?keys=device")["endpoint"]
        await carol.register_push(m.PushProvider.UNIFIED_PUSH, endpoint, n.push_public_keys(keys), "", False)
        conv = await dan.encrypted_direct(carol_name)
        # A first message while carol is online: the Olm session exists on both sides.
        await dan.send(conv.conversation_id, "hello carol", 0)
        check(await asyncio.to_thread(rec.wait_text, "hello carol"), "carol reads the first sealed message")
        await carol.shutdown()  # the phone goes into a pocket; its state is on disk
        ack = await dan.send(conv.conversation_id, "the secret is 42", 0)
        deadline = time.time() + WAIT
        got = []
        while not got and time.time() < deadline:
            got = get_json(f"{base}/received/{carol_name}")
            await asyncio.sleep(0.02)
        check(len(got) == 1 and got[0]["problem"] is None, "one UnifiedPush notification for carol")
        keys_path, body_path = os.path.join(d, "push.keys"), os.path.join(d, "body")
        open(keys_path, "wb").write(bytes(keys))
        b = got[0]["body"]
        open(body_path, "wb").write(__import__("base64").urlsafe_b64decode(b + "=" * (-len(b) % 4)))
        state_before = open(carol_state, "rb").read()
        run = lambda key: json.loads(subprocess.run(  # noqa: E731
            [sys.executable, __file__, "open", keys_path, body_path, carol_state, key.hex()],
            capture_output=True, text=True, env=os.environ, timeout=60, check=True).stdout)
        plain = extension(keys_path, body_path)
        check(plain.get("seq") == ack.seq and plain.get("preview") == "", f"the push keys alone show no text: {plain}")
        opened = run(carol_key)
        check(opened.get("preview") == "the secret is 42" and opened.get("fetch") is False
              and opened.get("event", 0) > 0, f"the extension opens the sealed message: {opened}")
        print(f"extension: opening the sealed message took {opened['hwm_over_baseline_kib']} KiB at peak",
              flush=True)
        check(opened["hwm_over_baseline_kib"] < 8 * 1024, "opening it stays under 8 MB")
        wrong = run(os.urandom(32))
        check(wrong.get("error") == "Decrypt", f"another store key does not open the state: {wrong}")
        check(open(carol_state, "rb").read() == state_before, "the extension wrote nothing to the app's state")
        del sub
        await dan.shutdown()
    print("all checks passed", flush=True)


asyncio.run(main())
