"""A Python program ends cleanly right after its last natter call, even when a natter thread
is still inside a call into Python at that moment (sdk-ffi/src/foreign.rs).

CPython ends a thread that asks for the GIL once the interpreter is finalizing. uniffi
resumes an awaiting coroutine from the natter thread that woke it, through
`loop.call_soon_threadsafe`, which queues the resumption and then releases the GIL, so the
program can end inside that window; a listener can be inside `on_event` at the end too.
This program makes both certain: during its last call, the thread that wakes it and the
listener wait (GIL released) until CPython, finalizing, flushes stdout; that flush lets them
go, waits while they ask for the GIL back, then cancels the listener's subscription.
Without natter's guard the process aborts at exit ("FATAL: exception not rethrown"); a
cancel that waited for the ended listener would hang it.

Environment: as chat_test.py. Prints "exiting" as its last line; the test checks the exit
status and that nothing follows it.
"""
import asyncio
import os
import sys
import threading
import time

sys.path.insert(0, os.environ["NATTER_BINDINGS"])
import natter_ffi as n  # noqa: E402

PREFIX = os.environ["NATTER_PREFIX"]
PASSWORD = "correct-horse-battery"


LAST_CALL = threading.Event()
FINALIZING = threading.Event()
HELD = []  # the natter threads held inside Python
KEEP = []


class SlowWakeLoop(asyncio.SelectorEventLoop):
    """Holds the thread that wakes the last call in `call_soon_threadsafe`, after it queued
    the resumption, until CPython finalizes."""

    def call_soon_threadsafe(self, callback, *args, context=None):
        hold = LAST_CALL.is_set() and threading.current_thread() is not threading.main_thread()
        if hold:
            HELD.append("waking")
        handle = super().call_soon_threadsafe(callback, *args, context=context)
        if hold:
            FINALIZING.wait(10)
        return handle


class FinalFlush:
    """sys.stdout, whose flush while CPython finalizes lets the held natter threads go."""

    def __init__(self, out):
        self.out = out

    def write(self, text):
        return self.out.write(text)

    def flush(self, is_finalizing=sys.is_finalizing, sleep=time.sleep, keep=KEEP):
        self.out.flush()
        if is_finalizing() and not FINALIZING.is_set():
            FINALIZING.set()
            sleep(0.5)
            # The listener was inside on_event when CPython ended its thread: cancelling its
            # subscription must not wait for it to come back.
            keep.clear()


sys.stdout = FinalFlush(sys.stdout)


class SlowListener(n.NatterListener):
    def on_event(self, event):
        if LAST_CALL.is_set() and "listener" not in HELD:
            HELD.append("listener")
            FINALIZING.wait(10)


def connect():
    return n.NatterClient(n.ConnectOptions(
        address=os.environ["NATTER_ADDR"], certificate_sha256=os.environ["NATTER_FINGERPRINT"],
        client_name="python-exit-test"))


async def main():
    first = connect()
    user = f"{PREFIX}-exit"
    await first.register(user, PASSWORD)
    await first.login(user, PASSWORD, "python")
    await first.create_group(f"{PREFIX} exit", [])
    await first.shutdown()
    # The last call: a new device's login (a handshake and a password check on the server),
    # so it completes on a natter thread well after this coroutine started waiting. The
    # program then returns with that client still connected and its listener busy.
    second = connect()
    listener = SlowListener()
    # Kept in a module global: it is dropped (cancelled) only while CPython finalizes, when
    # the held listener can no longer come back.
    KEEP.append(second.subscribe(listener))
    LAST_CALL.set()
    await second.login(user, PASSWORD, "python-2")
    for _ in range(200):  # the login's events reach the listener on their own thread
        if "listener" in HELD:
            break
        await asyncio.sleep(0.05)
    print(f"held: {sorted(HELD)}", flush=True)
    print("exiting", flush=True)


with asyncio.Runner(loop_factory=SlowWakeLoop) as runner:
    runner.run(main())
