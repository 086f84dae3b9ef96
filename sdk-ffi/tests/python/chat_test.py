"""natter's generated Python bindings against a live server.

Run by sdk-ffi/tests/bindings.rs, which starts the server and sets:
  NATTER_BINDINGS      folder holding natter_ffi.py and libnatter_ffi.so
  NATTER_ADDR          host:port of the server's QUIC endpoint
  NATTER_FINGERPRINT   the server certificate's SHA-256
  NATTER_PREFIX        prefix for usernames (unique per run)
  NATTER_WAIT_SECS     how long to wait for any one event (default 20)
Lines starting with "@" on stdout ask the harness to act on the server ("@cut <user id>":
drop that user's connections as a network failure would); it answers "ok" on stdin.
Exits 0 when every check holds; otherwise prints "FAIL: <check>" and exits 1.
"""
import asyncio
import hashlib
import os
import struct
import sys
import threading
import zlib

sys.path.insert(0, os.environ["NATTER_BINDINGS"])
import natter_ffi as n  # noqa: E402  (the client)
import natter_protocol as m  # noqa: E402  (the app-facing model: events, records, codes)

WAIT = float(os.environ.get("NATTER_WAIT_SECS", "20"))
PREFIX = os.environ["NATTER_PREFIX"]


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


class Recorder(n.NatterListener):
    """Keeps every event; waiters block on a condition, never on a sleep."""

    def __init__(self, name):
        self.name = name
        self.events = []
        self.cond = threading.Condition()

    def on_event(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def _wait(self, pred, what, start):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(e) for e in self.events[start:]), timeout=WAIT)
            if not ok:
                raise Failed(f"{self.name}: {what} (within {WAIT} s)")
            return next(e for e in self.events[start:] if pred(e))

    async def wait_for(self, pred, what, start=0):
        return await asyncio.to_thread(self._wait, pred, what, start)

    def mark(self):
        with self.cond:
            return len(self.events)

    def messages(self, conv):
        """(seq, text) of every message event of `conv`, in arrival order."""
        with self.cond:
            return [(e.event.seq, e.event.body.text) for e in self.events
                    if isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == conv
                    and isinstance(e.event.body, m.EventBody.MESSAGE)]


def is_message(conv, text):
    return lambda e: (isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == conv
                      and isinstance(e.event.body, m.EventBody.MESSAGE) and e.event.body.text == text)


def is_receipt(conv, user, delivered=0, read=0):
    return lambda e: (isinstance(e, m.NatterEvent.RECEIPT) and e.conversation_id == conv and e.user_id == user
                      and e.delivered_seq >= delivered and e.read_seq >= read)


async def expect_error(kind, coro, what, code=None):
    try:
        await coro
    except kind as e:
        if code is not None:
            check(e.code == code, f"{what}: code {e.code}, expected {code}")
        return e
    raise Failed(f"{what}: no {kind.__name__} raised")


async def harness(request):
    print("@" + request, flush=True)
    answer = await asyncio.to_thread(sys.stdin.readline)
    check(answer.strip() == "ok", f"harness answered {answer!r} to {request}")


def png(width, height):
    """A real RGB PNG, made with the standard library."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"".join(bytes(((x * 4) % 256, (y * 5) % 256, 90)) for x in range(width))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class Progress(n.UploadListener):
    def __init__(self):
        self.seen = []

    def on_progress(self, stored, size):
        self.seen.append((stored, size))


def open_with_libsodium(key_hex, sealed):
    """An independent reading of PROTOCOL.md §11.7: libsodium's XChaCha20-Poly1305, chunk by
    chunk, nonce = prefix | u32 BE index | last flag."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
    material = bytes.fromhex(key_hex)
    key, prefix = material[:32], material[32:]
    pieces = [sealed[i:i + 65552] for i in range(0, len(sealed), 65552)]
    return b"".join(
        crypto_aead_xchacha20poly1305_ietf_decrypt(
            p, None, prefix + i.to_bytes(4, "big") + (b"\x01" if i == len(pieces) - 1 else b"\x00"), key)
        for i, p in enumerate(pieces))


class PauseOnFirstPiece(n.UploadListener):
    """Pauses the client's running upload once its first piece is stored."""
    def __init__(self, client):
        self.client, self.paused = client, []

    def on_progress(self, stored, size):
        if stored > 0 and not self.paused:
            for p in self.client.pending_uploads():
                if self.client.pause_upload(p.upload_id):
                    self.paused.append(p.upload_id)


def options(**kw):
    return n.ConnectOptions(address=os.environ["NATTER_ADDR"],
                            certificate_sha256=os.environ["NATTER_FINGERPRINT"],
                            client_name="python-test", **kw)


async def main():
    alice_name, bob_name, carol_name = (f"{PREFIX}{x}" for x in ("alice", "bob", "carol"))
    alice, bob = n.NatterClient(options()), n.NatterClient(options())
    a_events, b_events = Recorder("alice"), Recorder("bob")
    a_sub, b_sub = alice.subscribe(a_events), bob.subscribe(b_events)

    # Typed errors: bad input is refused on the device, the server's refusals carry codes.
    await expect_error(n.NatterError.InvalidInput, alice.register("x", "long enough password"),
                       "a one-letter username")
    alice_id = await alice.register(alice_name, "alice password")
    bob_id = await bob.register(bob_name, "bob password")
    carol_id = await alice.register(carol_name, "carol password")
    await expect_error(n.NatterError.Server, bob.register(bob_name, "another password"),
                       "a taken username", m.ErrorCode.USERNAME_TAKEN)
    await expect_error(n.NatterError.Server, alice.login(alice_name, "wrong password", "phone"),
                       "a wrong password", m.ErrorCode.INVALID_CREDENTIALS)
    try:
        n.NatterClient(n.ConnectOptions(address=os.environ["NATTER_ADDR"]))
        raise Failed("connect options without a certificate were accepted")
    except n.NatterError.Setup:
        pass

    a_login = await alice.login(alice_name, "alice password", "alice's phone")
    b_login = await bob.login(bob_name, "bob password", "bob's phone")
    check(a_login.user_id == alice_id and b_login.user_id == bob_id, "login returns the registered user")
    await a_events.wait_for(lambda e: isinstance(e, m.NatterEvent.CONNECTED) and e.user_id == alice_id,
                            "a Connected event after login")

    # Chat: a DM, delivered through the listener, with ✓ → ✓✓ → read.
    dm = (await alice.direct(bob_name)).conversation_id
    await expect_error(n.NatterError.InvalidInput, alice.send(dm, "", 0), "an empty message")
    await expect_error(n.NatterError.Server, bob.send(999_999, "to nowhere", 0),
                       "a send to a conversation that does not exist")
    await a_events.wait_for(lambda e: isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == dm
                            and isinstance(e.event.body, m.EventBody.CREATED), "the DM's Created event")
    ack = await alice.send(dm, "hello bob", 0)
    check(ack.seq == 2 and not ack.duplicate, f"first message acked at seq 2, got {ack}")
    got = await b_events.wait_for(is_message(dm, "hello bob"), "bob receives alice's message")
    check(got.event.sender_user_id == alice_id and got.event.seq == ack.seq, "sender and seq as acked")
    await a_events.wait_for(is_receipt(dm, bob_id, delivered=ack.seq), "a delivered receipt from bob")
    status = await alice.message_status(dm, ack.seq)
    check(status is not None and status.state == m.DeliveryState.DELIVERED, f"delivered status, got {status}")
    await bob.mark_read(dm, ack.seq)
    await a_events.wait_for(is_receipt(dm, bob_id, read=ack.seq), "a read receipt from bob")
    status = await alice.message_status(dm, ack.seq)
    check(status.state == m.DeliveryState.READ and status.read == 1, f"read status, got {status}")

    # ✓ only: carol never connects, so a message to her stays "sent".
    to_carol = (await alice.direct(carol_name)).conversation_id
    await a_events.wait_for(lambda e: isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == to_carol,
                            "the DM with carol's Created event")
    carol_ack = await alice.send(to_carol, "are you there?", 0)
    status = await alice.message_status(to_carol, carol_ack.seq)
    check(status is not None and status.state == m.DeliveryState.SENT, f"sent status, got {status}")

    # Typing, presence, reply, edit and reaction cross to the other side.
    alice.typing(dm)
    await b_events.wait_for(lambda e: isinstance(e, m.NatterEvent.TYPING) and e.user_id == alice_id,
                            "bob sees alice typing")
    seen = await bob.presence([alice_id])
    check(len(seen) == 1 and seen[0].state == m.PresenceState.ONLINE, f"alice online for bob, got {seen}")
    reply = await bob.send(dm, "hi alice", ack.seq)
    got = await a_events.wait_for(is_message(dm, "hi alice"), "alice receives bob's reply")
    check(got.event.body.reply_to_seq == ack.seq, "the reply points at alice's message")
    await alice.react(dm, reply.seq, "👍", False)
    edit_seq = await bob.edit(dm, reply.seq, "hi alice!")
    await b_events.wait_for(lambda e: isinstance(e, m.NatterEvent.EVENT) and isinstance(e.event.body, m.EventBody.REACTION)
                            and e.event.body.emoji == "👍", "bob sees the reaction")
    await a_events.wait_for(lambda e: isinstance(e, m.NatterEvent.EVENT) and e.event.seq == edit_seq
                            and isinstance(e.event.body, m.EventBody.MESSAGE_EDITED), "alice sees the edit")
    await expect_error(n.NatterError.Server, alice.edit(dm, reply.seq, "not mine"),
                       "editing someone else's message", m.ErrorCode.FORBIDDEN)

    # Search: the edited text is found, with the match marked; the directory finds bob.
    await harness(f"indexed {dm} {edit_seq}")
    found = await alice.search(m.SearchQuery(query="alice!", conversation_ids=[], from_user_ids=[], after_ms=0,
                                             before_ms=0, order=m.SearchOrder.RECENT, limit=0, cursor="",
                                             typing=False))
    check([(h.conversation_id, h.seq) for h in found.hits] == [(dm, reply.seq)], f"search finds the edit: {found}")
    check(any(p.hit and p.text == "alice" for p in found.hits[0].snippet), f"the match is marked: {found.hits[0]}")
    check(found.hits[0].event.body.text == "hi alice!", "the hit's message as last edited")
    await expect_error(n.NatterError.Server, alice.search(m.SearchQuery(
        query="has:video", conversation_ids=[], from_user_ids=[], after_ms=0, before_ms=0,
        order=m.SearchOrder.RELEVANT, limit=0, cursor="", typing=False)), "an unknown has: value",
        m.ErrorCode.BAD_REQUEST)
    users = await alice.search_users(bob_name[:-1], 0)
    check([u.username for u in users] == [bob_name], f"bob found by prefix: {users}")
    await bob.set_unlisted(True)
    check(await alice.search_users(bob_name, 0) == [], "an unlisted user is not found")
    await bob.set_unlisted(False)

    # A dropped connection: alice is cut off by the server while both keep sending; she
    # resumes, her queued sends go out once, and both see every message once, in order.
    mark = a_events.mark()
    await harness(f"cut {alice_id}")
    sends = [asyncio.ensure_future(alice.send(dm, f"from alice {i}", 0)) for i in range(5)]
    for i in range(5):
        await bob.send(dm, f"from bob {i}", 0)
    acks = await asyncio.gather(*sends)
    # A send that crossed the cut may be resent by the SDK and acked as a duplicate of its own
    # first attempt; what must hold is that no two sends became one message.
    check(len({a.seq for a in acks}) == 5, f"each alice send has a message of its own, got {acks}")
    await a_events.wait_for(lambda e: isinstance(e, m.NatterEvent.DISCONNECTED), "alice sees the drop", mark)
    resumed = await a_events.wait_for(lambda e: isinstance(e, m.NatterEvent.CONNECTED), "alice reconnects", mark)
    check(resumed.resumed, "alice's session was resumed")
    for i in range(5):
        await a_events.wait_for(is_message(dm, f"from bob {i}"), f"alice receives 'from bob {i}'")
        await b_events.wait_for(is_message(dm, f"from alice {i}"), f"bob receives 'from alice {i}'")

    page = await alice.history(dm, n.HistoryAnchor.BEFORE(seq=0), 100)
    seqs = [e.seq for e in page.events]
    check(seqs == list(range(1, page.last_seq + 1)), f"history is gap-free from 1, got {seqs}")
    texts = [e.body.text for e in page.events if isinstance(e.body, m.EventBody.MESSAGE)]
    # The timeline fold (the one the JS package and the web chat use) over the same page.
    timeline = n.Timeline()
    changed = [timeline.apply(e) for e in page.events]
    check(changed[edit_seq - 1] == reply.seq, f"the edit changes the reply, got {changed[edit_seq - 1]}")
    folded = timeline.message(reply.seq)
    check(folded is not None and folded.text == "hi alice!" and folded.edited and not folded.deleted,
          f"the reply as it stands after the edit, got {folded}")
    check([(r.emoji, r.count, r.user_ids) for r in folded.reactions] == [("👍", 1, [alice_id])],
          f"alice's reaction on the reply, got {folded.reactions}")
    check([x.seq for x in timeline.messages()] == [e.seq for e in page.events
                                                   if isinstance(e.body, m.EventBody.MESSAGE)],
          "the timeline holds every message of the page, in order")
    for who in ("alice", "bob"):
        mine = [t for t in texts if t.startswith(f"from {who} ")]
        check(sorted(mine) == [f"from {who} {i}" for i in range(5)], f"{who}'s sends stored once each: {mine}")
    check([t for t in texts if t.startswith("from bob ")] == [f"from bob {i}" for i in range(5)],
          "bob's sends in his order")
    for rec in (a_events, b_events):
        msgs = rec.messages(dm)
        check(len(msgs) == len(set(msgs)), f"{rec.name} received a message twice: {msgs}")
        check([s for s, _ in msgs] == sorted(s for s, _ in msgs), f"{rec.name} received out of order: {msgs}")

    # Files: alice uploads a PNG with progress, sends it; bob sees the attachment (type and
    # pixel size from the server), downloads it whole, a range, and a thumbnail.
    picture = png(400, 300)
    progress = Progress()
    info = await alice.upload(dm, "picture.png", "image/png", picture, progress)
    check(info.mime == "image/png" and (info.width, info.height) == (400, 300) and info.size == len(picture),
          f"the finished upload describes the picture, got {info}")
    check(progress.seen and progress.seen[-1] == (len(picture), len(picture)),
          f"progress ends with every byte stored, got {progress.seen}")
    sent = await alice.send_files(dm, "a picture", [info])
    got = await b_events.wait_for(lambda e: isinstance(e, m.NatterEvent.EVENT) and e.event.seq == sent.seq,
                                  "bob receives the picture message")
    att = got.event.body.attachments
    check(len(att) == 1 and att[0].media_id == info.media_id and att[0].width == 400, f"one attachment, got {att}")
    whole = await bob.download(info.media_id, m.MediaVariant.ORIGINAL, 0, 0)
    check(whole == picture, "bob downloads the picture byte for byte")
    part = await bob.download(info.media_id, m.MediaVariant.ORIGINAL, 100, 50)
    check(part == picture[100:150], "a range of it")
    thumb = await bob.download(info.media_id, m.MediaVariant.THUMB320, 0, 0)
    check(thumb[:3] == b"\xff\xd8\xff", "the thumbnail is a JPEG")
    await expect_error(n.NatterError.Server, bob.download("A" * 22, m.MediaVariant.ORIGINAL, 0, 0),
                       "a file that does not exist", m.ErrorCode.NOT_FOUND)

    # A file encrypted on alice's device: the server serves sealed bytes; bob opens the
    # whole file and a range across a chunk boundary with the key, not with another.
    secret = os.urandom(200_000)
    enc = await alice.upload_encrypted(dm, "secret.bin", "application/octet-stream", secret, None)
    check(enc.media.encrypted and enc.media.size > len(secret), f"an encrypted file, got {enc.media}")
    sent = await alice.send_files(dm, "", [enc.media])
    got = await b_events.wait_for(lambda e: isinstance(e, m.NatterEvent.EVENT) and e.event.seq == sent.seq,
                                  "bob receives the encrypted file")
    check(got.event.body.attachments[0].encrypted, "the attachment says encrypted")
    sealed = await bob.download(enc.media.media_id, m.MediaVariant.ORIGINAL, 0, 0)
    check(secret[1000:1064] not in sealed, "the server serves no plaintext")
    check(await bob.download_encrypted(enc.media.media_id, enc.key, 0, 0) == secret, "bob opens it whole")
    check(open_with_libsodium(enc.key, sealed) == secret,
          "libsodium (PyNaCl) opens the served bytes by PROTOCOL.md §11.7 alone")
    check(await bob.download_encrypted(enc.media.media_id, enc.key, 65_000, 1_000) == secret[65_000:66_000],
          "and a range across a chunk boundary")
    await expect_error(n.NatterError.Decrypt, bob.download_encrypted(enc.media.media_id, "00" * 51, 0, 10),
                       "another key")
    await expect_error(n.NatterError.InvalidInput, bob.download_encrypted(enc.media.media_id, "xyz", 0, 10),
                       "not a key")

    # An upload from a file, paused once its first piece is stored (large enough that the
    # rest is still unsent then): the running call ends with UploadPaused, and the upload is
    # in the snapshot — paused, with its path — for after the restart below.
    movie = os.urandom(24 << 20)
    movie_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{PREFIX}movie.bin")
    with open(movie_path, "wb") as f:
        f.write(movie)
    pauser = PauseOnFirstPiece(alice)
    await expect_error(n.NatterError.UploadPaused,
                       alice.upload_file(dm, movie_path, "application/octet-stream", pauser),
                       "a paused upload ends its call")
    check(len(pauser.paused) == 1, f"paused once, got {pauser.paused}")

    # Restore after the app is killed: snapshot, stop, start again from the snapshot.
    snap = await alice.snapshot()
    check(snap.access_token == a_login.access_token and snap.resume_token, "snapshot holds the tokens")
    check(snap.pending_sends == [], f"nothing pending after every ack, got {snap.pending_sends}")
    check([(p.upload_id, p.source, p.size, p.paused) for p in snap.pending_uploads]
          == [(pauser.paused[0], movie_path, len(movie), True)],
          f"the paused upload is in the snapshot, got {snap.pending_uploads}")
    a_sub.cancel()
    await alice.shutdown()
    alice = n.NatterClient(options(access_token=snap.access_token, resume_token=snap.resume_token,
                                   cursors=snap.cursors, pending_uploads=snap.pending_uploads))
    check(alice.pending_uploads() == snap.pending_uploads, "the restored client knows the upload")
    await expect_error(n.NatterError.NotTheSameFile,
                       alice.resume_upload(pauser.paused[0], os.urandom(len(movie)), None),
                       "another file of the same size")
    resumed = Progress()
    movie_info = await alice.resume_upload_file(pauser.paused[0], resumed)
    check(movie_info.size == len(movie) and movie_info.sha256 == hashlib.sha256(movie).hexdigest(),
          f"the resumed upload is the whole file, got {movie_info}")
    check(resumed.seen and resumed.seen[0][0] > 0,
          f"it went on from the stored offset, not from 0: {resumed.seen[:3]}")
    check(alice.pending_uploads() == [], "nothing pending once it is ready")
    os.remove(movie_path)
    restored = Recorder("alice (restored)")
    a_sub = alice.subscribe(restored)
    back = await restored.wait_for(lambda e: isinstance(e, m.NatterEvent.CONNECTED), "the restored client connects")
    check(back.resumed and back.device_id == a_login.device_id, f"restored the same session: {back}")
    await bob.send(dm, "welcome back", 0)
    await restored.wait_for(is_message(dm, "welcome back"), "the restored client receives new messages")
    check([t for _, t in restored.messages(dm)] == ["welcome back"],
          f"only the new message after the restore (nothing again): {restored.messages(dm)}")

    # A cancelled subscription hears nothing more; another one on the same client does.
    b_sub.cancel()
    quiet = b_events.mark()
    b_other = Recorder("bob (second listener)")
    b_other_sub = bob.subscribe(b_other)
    await alice.send(dm, "after cancel", 0)
    await b_other.wait_for(is_message(dm, "after cancel"), "the second listener receives")
    check(b_events.mark() == quiet, "a cancelled subscription still got events")
    b_other_sub.cancel()

    # Retention (PROTOCOL.md §5.17): a group kept for one second loses what is older once
    # the server sweeps; bob's page ends at one tombstone, and the timeline shows it.
    keep = (await alice.create_group(f"{PREFIX}keep", [bob_name])).conversation_id
    await alice.send(keep, "soon gone", 0)
    await expect_error(n.NatterError.Server, bob.set_retention(keep, 0), "a member setting retention",
                       m.ErrorCode.FORBIDDEN)
    await alice.set_retention(keep, 1)
    await asyncio.sleep(1.1)  # event times are wall-clock: what follows is a second younger
    fresh = await alice.send(keep, "still here", 0)
    await harness(f"sweep {fresh.server_time_ms + 999}")
    page = await bob.history(keep, n.HistoryAnchor.BEFORE(seq=0), 100)
    check([e.seq for e in page.events] == [fresh.seq] and page.removed_through == fresh.seq - 1
          and not page.has_more, f"the page ends at the removed range: {page}")
    kept = n.Timeline()
    kept.remove_through(page.removed_through)
    for e in page.events:
        kept.apply(e)
    check(kept.removed_through() == fresh.seq - 1 and [x.text for x in kept.messages()] == ["still here"],
          "the timeline shows what is left, after one tombstone")
    summary = [c for c in await bob.conversations() if c.conversation_id == keep][0]
    check((summary.retention_secs, summary.retention_set, summary.removed_through) == (1, True, fresh.seq - 1),
          f"the summary tells how long and how far: {summary}")

    await encrypted_dm()

    await alice.logout(0)
    await bob.shutdown()
    await alice.shutdown()
    print("python bindings: all checks passed", flush=True)


async def encrypted_dm():
    """End-to-end encryption through the bindings: two encrypting devices read each other;
    a device of the same user without keys sees only that a message is sealed."""
    import tempfile
    keys_dir = tempfile.mkdtemp()

    def e2ee_options(name):
        return options(encryption_state_path=os.path.join(keys_dir, name + ".state"),
                       encryption_store_key=os.urandom(32))

    try:
        n.NatterClient(options(encryption_state_path=os.path.join(keys_dir, "x"), encryption_store_key=b"short"))
        raise Failed("a 5-byte store key was accepted")
    except n.NatterError.Setup:
        pass
    dave_name, erin_name = f"{PREFIX}dave", f"{PREFIX}erin"
    dave, erin = n.NatterClient(e2ee_options("dave")), n.NatterClient(e2ee_options("erin"))
    d_events, e_events = Recorder("dave"), Recorder("erin")
    d_sub, e_sub = dave.subscribe(d_events), erin.subscribe(e_events)
    await dave.register(dave_name, "dave password")
    await erin.register(erin_name, "erin password")
    await dave.login(dave_name, "dave password", "dave's phone")
    await erin.login(erin_name, "erin password", "erin's phone")
    for rec in (d_events, e_events):
        await rec.wait_for(lambda e: isinstance(e, m.NatterEvent.CONNECTED), "connected with keys published")
    secret = await dave.encrypted_direct(erin_name)
    check(secret.encrypted, f"an encrypted conversation: {secret}")
    sid = secret.conversation_id
    await dave.send(sid, "sealed from python", 0)
    await e_events.wait_for(is_message(sid, "sealed from python"), "erin opens dave's sealed message")
    await erin.send(sid, "and back", 0)
    await d_events.wait_for(is_message(sid, "and back"), "dave opens erin's answer")

    # Search on the device: the sealed message is found by erin's own index (the server
    # cannot read it), and the answer says how far back it is indexed.
    def sealed_query(q):
        return m.SearchQuery(query=q, conversation_ids=[], from_user_ids=[], after_ms=0, before_ms=0,
                             order=m.SearchOrder.RECENT, limit=0, cursor="", typing=False)
    found = await erin.search(sealed_query("sealed"))
    check([(h.conversation_id, h.event.body.text) for h in found.hits] == [(sid, "sealed from python")],
          f"erin's device finds the sealed message: {found}")
    check(found.encrypted_conversation_ids == [sid] and [c.conversation_id for c in found.local] == [sid],
          f"the encrypted conversation is searched locally: {found}")
    check(any(p.hit and p.text == "sealed" for p in found.hits[0].snippet), f"marked: {found.hits[0]}")

    keyless = n.NatterClient(options())
    k_events = Recorder("erin (no keys)")
    k_sub = keyless.subscribe(k_events)
    await keyless.login(erin_name, "erin password", "erin's old tablet")
    ack = await dave.send(sid, "not for the tablet", 0)
    got = await k_events.wait_for(lambda e: isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == sid
                                  and e.event.seq == ack.seq, "the tablet hears of the message")
    check(isinstance(got.event.body, m.EventBody.ENCRYPTED), f"only that it is sealed: {got.event.body}")
    await e_events.wait_for(is_message(sid, "not for the tablet"), "erin's phone reads it")

    # The key backup: erin's phone backs up what it read; a new phone of hers, alone,
    # reads nothing until it restores with the recovery key.
    recovery = await erin.enable_backup()
    check(len(recovery.replace(" ", "")) == 53, f"a recovery key: {recovery!r}")
    await erin.backup_now()
    for c, sub in ((erin, e_sub), (keyless, k_sub)):
        sub.cancel()
        await c.shutdown()
    new_phone = n.NatterClient(e2ee_options("erin-new"))
    p_events = Recorder("erin (new phone)")
    p_sub = new_phone.subscribe(p_events)
    await new_phone.login(erin_name, "erin password", "erin's new phone")
    phone_up = await p_events.wait_for(lambda e: isinstance(e, m.NatterEvent.CONNECTED), "the new phone has keys")
    def undecryptable(seq=None):
        return lambda e: (isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == sid
                          and isinstance(e.event.body, m.EventBody.UNDECRYPTABLE)
                          and (seq is None or e.event.seq == seq))
    await p_events.wait_for(undecryptable(ack.seq), "the new phone's sync brings the last message, unopened")
    with p_events.cond:
        unopened = [e.event.seq for e in p_events.events if undecryptable()(e)]
    check(len(unopened) == 3 and not p_events.messages(sid), f"three messages it cannot open yet: {unopened}")

    async def texts():
        page = await new_phone.history(sid, n.HistoryAnchor.AFTER(seq=0), 100)
        return [e.body.text if isinstance(e.body, m.EventBody.MESSAGE) else None
                for e in page.events if isinstance(e.body, (m.EventBody.MESSAGE, m.EventBody.ENCRYPTED))]
    check(all(t is None for t in await texts()), "nothing opens before the restore")
    wrong = recovery[:-1] + ("1" if recovery[-1] != "1" else "2")
    try:
        await new_phone.restore_backup(wrong)
        raise Failed("a mistyped recovery key was accepted")
    except (n.NatterError.MalformedRecoveryKey, n.NatterError.WrongRecoveryKey):
        pass
    restored = await new_phone.restore_backup(recovery)
    check(restored == 3, f"three message keys restored, got {restored}")
    want = ["sealed from python", "and back", "not for the tablet"]
    await p_events.wait_for(is_message(sid, want[-1]), "what came undecryptable comes again, opened")
    check(p_events.messages(sid) == list(zip(unopened, want)), f"same seqs, opened: {p_events.messages(sid)}")
    check(await texts() == want, f"history opens on the new phone: {await texts()}")
    # The phone says what it can read of its own: from the change that added it, after all three.
    await p_events.wait_for(lambda e: (isinstance(e, m.NatterEvent.EVENT) and e.event.conversation_id == sid
                                       and isinstance(e.event.body, m.EventBody.DEVICES_CHANGED)
                                       and phone_up.device_id in e.event.body.added), "the phone hears it was added")
    frm = await new_phone.readable_from(sid)
    check(frm is not None and frm > max(unopened), f"readable from its addition on: {frm}, unopened {unopened}")

    # Dave verifies erin's new phone: both show the same emoji, both confirm.
    erin_id, phone_id = phone_up.user_id, phone_up.device_id
    def verification(state, txn=None):
        return lambda e: (isinstance(e, m.NatterEvent.VERIFICATION) and e.state == state
                          and (txn is None or e.txn == txn))
    txn = await dave.verify_device(erin_id, phone_id)
    await p_events.wait_for(verification("requested", txn), "the phone is asked to verify")
    await new_phone.accept_verification(txn)
    on_dave = await d_events.wait_for(verification("compare", txn), "dave's screen shows the code")
    on_phone = await p_events.wait_for(verification("compare", txn), "the phone's screen shows the code")
    check(on_dave.emoji == on_phone.emoji and len(on_dave.emoji) == 7, f"the same emoji: {on_dave.emoji} / {on_phone.emoji}")
    await dave.confirm_verification(txn, True)
    await new_phone.confirm_verification(txn, True)
    await d_events.wait_for(verification("verified", txn), "dave: verified")
    await p_events.wait_for(verification("verified", txn), "the phone: verified")
    trust = {d.device_id: d.trust for d in await dave.device_trust(erin_id)}
    check(trust[phone_id] == "verified", f"erin's new phone is verified for dave: {trust}")
    check(list(trust.values()).count("unverified") == 1, f"her old phone is not: {trust}")

    # Her new phone verifies a laptop of hers: with the verification the laptop gets the
    # phone's keys (PROTOCOL.md §12.11) and reads the history nobody sealed for it.
    laptop = n.NatterClient(e2ee_options("erin-laptop"))
    l_events = Recorder("erin (laptop)")
    l_sub = laptop.subscribe(l_events)
    await laptop.login(erin_name, "erin password", "erin's laptop")
    laptop_up = await l_events.wait_for(lambda e: isinstance(e, m.NatterEvent.CONNECTED), "the laptop has keys")
    own = await new_phone.verify_device(erin_id, laptop_up.device_id)
    await l_events.wait_for(verification("requested", own), "the laptop is asked to verify")
    await laptop.accept_verification(own)
    on_phone = await p_events.wait_for(verification("compare", own), "the phone's code for the laptop")
    on_laptop = await l_events.wait_for(verification("compare", own), "the laptop's code")
    check(on_phone.emoji == on_laptop.emoji, f"the same emoji: {on_phone.emoji} / {on_laptop.emoji}")
    await new_phone.confirm_verification(own, True)
    await laptop.confirm_verification(own, True)
    await l_events.wait_for(verification("verified", own), "the laptop: verified")
    await p_events.wait_for(verification("verified", own), "the phone: the laptop verified")
    page = await laptop.history(sid, n.HistoryAnchor.AFTER(seq=0), 100)
    got = [e.body.text for e in page.events if isinstance(e.body, m.EventBody.MESSAGE)]
    check(got == want, f"the laptop reads the history it was never sent: {got}")
    for c, sub in ((dave, d_sub), (new_phone, p_sub), (laptop, l_sub)):
        sub.cancel()
        await c.shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Failed as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
