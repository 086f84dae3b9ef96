// natter's generated Kotlin bindings against a live server: the same scenario as
// tests/python/chat_test.py. Run by sdk-ffi/tests/bindings.rs, which starts the server, sets
// NATTER_ADDR, NATTER_FINGERPRINT, NATTER_PREFIX and NATTER_WAIT_SECS, and answers "@cut <user
// id>" lines on stdout by dropping that user's connections. Exits 0 when every check holds;
// otherwise prints "FAIL: <check>" and exits 1.
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import uniffi.natter_ffi.*
import uniffi.natter_protocol.*
import kotlin.system.exitProcess

val WAIT_MS = ((System.getenv("NATTER_WAIT_SECS") ?: "20").toDouble() * 1000).toLong()
val PREFIX: String = System.getenv("NATTER_PREFIX")

class Failed(what: String) : Exception(what)

/** A real PNG, made with the JDK's ImageIO. */
fun png(width: Int, height: Int): ByteArray {
    val img = java.awt.image.BufferedImage(width, height, java.awt.image.BufferedImage.TYPE_INT_RGB)
    for (y in 0 until height) for (x in 0 until width) img.setRGB(x, y, ((x * 4 % 256) shl 16) or ((y * 5 % 256) shl 8) or 90)
    val out = java.io.ByteArrayOutputStream()
    javax.imageio.ImageIO.write(img, "png", out)
    return out.toByteArray()
}

class Progress : UploadListener {
    val seen = java.util.Collections.synchronizedList(mutableListOf<Pair<ULong, ULong>>())
    override fun onProgress(stored: ULong, size: ULong) {
        seen.add(stored to size)
    }
}

/** Pauses the client's running upload once its first piece is stored. */
class PauseOnFirstPiece(val client: NatterClient) : UploadListener {
    val paused = java.util.Collections.synchronizedList(mutableListOf<String>())
    override fun onProgress(stored: ULong, size: ULong) {
        if (stored > 0u && paused.isEmpty()) {
            for (p in client.pendingUploads()) if (client.pauseUpload(p.uploadId)) paused.add(p.uploadId)
        }
    }
}

fun check(cond: Boolean, what: () -> String) {
    if (!cond) throw Failed(what())
}

/** Keeps every event; waiters block on the monitor, never on a sleep. */
class Recorder(val name: String) : NatterListener {
    private val lock = Object()
    private val events = mutableListOf<NatterEvent>()

    override fun onEvent(event: NatterEvent) {
        synchronized(lock) {
            events.add(event)
            lock.notifyAll()
        }
    }

    fun mark(): Int = synchronized(lock) { events.size }

    /** Every event so far that `pred` holds for, in arrival order. */
    fun matching(pred: (NatterEvent) -> Boolean): List<NatterEvent> = synchronized(lock) { events.filter(pred) }

    suspend fun waitFor(what: String, start: Int = 0, pred: (NatterEvent) -> Boolean): NatterEvent =
        withContext(Dispatchers.IO) {
            val deadline = System.currentTimeMillis() + WAIT_MS
            synchronized(lock) {
                while (true) {
                    events.drop(start).firstOrNull(pred)?.let { return@withContext it }
                    val left = deadline - System.currentTimeMillis()
                    if (left <= 0) throw Failed("$name: $what (within ${WAIT_MS / 1000.0} s)")
                    lock.wait(left)
                }
                @Suppress("UNREACHABLE_CODE")
                throw IllegalStateException()
            }
        }

    /** (seq, text) of every message event of `conv`, in arrival order. */
    fun messages(conv: ULong): List<Pair<ULong, String>> = synchronized(lock) {
        events.filterIsInstance<NatterEvent.Event>()
            .filter { it.event.conversationId == conv }
            .mapNotNull { e -> (e.event.body as? EventBody.Message)?.let { e.event.seq to it.text } }
    }
}

fun isMessage(conv: ULong, text: String): (NatterEvent) -> Boolean = { e ->
    e is NatterEvent.Event && e.event.conversationId == conv && (e.event.body as? EventBody.Message)?.text == text
}

fun isReceipt(conv: ULong, user: ULong, delivered: ULong = 0u, read: ULong = 0u): (NatterEvent) -> Boolean = { e ->
    e is NatterEvent.Receipt && e.conversationId == conv && e.userId == user &&
        e.deliveredSeq >= delivered && e.readSeq >= read
}

suspend inline fun <reified E : NatterException> expectError(what: String, code: ErrorCode? = null, block: () -> Unit): E {
    try {
        block()
    } catch (e: NatterException) {
        check(e is E) { "$what: ${e::class.simpleName} raised, expected ${E::class.simpleName}" }
        if (code != null) check((e as NatterException.Server).code == code) { "$what: code ${e.code}, expected $code" }
        return e as E
    }
    throw Failed("$what: no ${E::class.simpleName} raised")
}

suspend fun harness(request: String) {
    println("@$request")
    System.out.flush()
    val answer = withContext(Dispatchers.IO) { readLine() }
    check(answer?.trim() == "ok") { "harness answered $answer to $request" }
}

fun options(
    accessToken: String? = null,
    resumeToken: String? = null,
    cursors: List<Cursor> = listOf(),
    pendingUploads: List<PendingUpload> = listOf(),
) =
    ConnectOptions(
        address = System.getenv("NATTER_ADDR"),
        certificateSha256 = System.getenv("NATTER_FINGERPRINT"),
        accessToken = accessToken,
        resumeToken = resumeToken,
        cursors = cursors,
        pendingUploads = pendingUploads,
        clientName = "kotlin-test",
    )

suspend fun scenario() {
    val (aliceName, bobName, carolName) = listOf("alice", "bob", "carol").map { PREFIX + it }
    var alice = NatterClient(options())
    val bob = NatterClient(options())
    val aEvents = Recorder("alice")
    val bEvents = Recorder("bob")
    var aSub = alice.subscribe(aEvents)
    val bSub = bob.subscribe(bEvents)

    // Typed errors: bad input is refused on the device, the server's refusals carry codes.
    expectError<NatterException.InvalidInput>("a one-letter username") { alice.register("x", "long enough password") }
    val aliceId = alice.register(aliceName, "alice password")
    val bobId = bob.register(bobName, "bob password")
    alice.register(carolName, "carol password")
    expectError<NatterException.Server>("a taken username", ErrorCode.USERNAME_TAKEN) {
        bob.register(bobName, "another password")
    }
    expectError<NatterException.Server>("a wrong password", ErrorCode.INVALID_CREDENTIALS) {
        alice.login(aliceName, "wrong password", "phone")
    }
    expectError<NatterException.Setup>("connect options without a certificate") {
        NatterClient(ConnectOptions(address = System.getenv("NATTER_ADDR")))
    }

    val aLogin = alice.login(aliceName, "alice password", "alice's phone")
    val bLogin = bob.login(bobName, "bob password", "bob's phone")
    check(aLogin.userId == aliceId && bLogin.userId == bobId) { "login returns the registered user" }
    aEvents.waitFor("a Connected event after login") { it is NatterEvent.Connected && it.userId == aliceId }

    // Chat: a DM, delivered through the listener, with ✓ → ✓✓ → read.
    val dm = alice.direct(bobName).conversationId
    expectError<NatterException.InvalidInput>("an empty message") { alice.send(dm, "", 0u) }
    expectError<NatterException.Server>("a send to a conversation that does not exist") {
        bob.send(999_999u, "to nowhere", 0u)
    }
    aEvents.waitFor("the DM's Created event") {
        it is NatterEvent.Event && it.event.conversationId == dm && it.event.body is EventBody.Created
    }
    val ack = alice.send(dm, "hello bob", 0u)
    check(ack.seq == 2uL && !ack.duplicate) { "first message acked at seq 2, got $ack" }
    val got = bEvents.waitFor("bob receives alice's message", pred = isMessage(dm, "hello bob")) as NatterEvent.Event
    check(got.event.senderUserId == aliceId && got.event.seq == ack.seq) { "sender and seq as acked" }
    aEvents.waitFor("a delivered receipt from bob", pred = isReceipt(dm, bobId, delivered = ack.seq))
    var status = alice.messageStatus(dm, ack.seq)
    check(status?.state == DeliveryState.DELIVERED) { "delivered status, got $status" }
    bob.markRead(dm, ack.seq)
    aEvents.waitFor("a read receipt from bob", pred = isReceipt(dm, bobId, read = ack.seq))
    status = alice.messageStatus(dm, ack.seq)
    check(status?.state == DeliveryState.READ && status.read == 1u) { "read status, got $status" }

    // ✓ only: carol never connects, so a message to her stays "sent".
    val toCarol = alice.direct(carolName).conversationId
    aEvents.waitFor("the DM with carol's Created event") {
        it is NatterEvent.Event && it.event.conversationId == toCarol
    }
    val carolAck = alice.send(toCarol, "are you there?", 0u)
    status = alice.messageStatus(toCarol, carolAck.seq)
    check(status?.state == DeliveryState.SENT) { "sent status, got $status" }

    // Typing, presence, reply, edit and reaction cross to the other side.
    alice.typing(dm)
    bEvents.waitFor("bob sees alice typing") { it is NatterEvent.Typing && it.userId == aliceId }
    val seen = bob.presence(listOf(aliceId))
    check(seen.size == 1 && seen[0].state == PresenceState.ONLINE) { "alice online for bob, got $seen" }
    val reply = bob.send(dm, "hi alice", ack.seq)
    val replyEvent = aEvents.waitFor("alice receives bob's reply", pred = isMessage(dm, "hi alice")) as NatterEvent.Event
    check((replyEvent.event.body as EventBody.Message).replyToSeq == ack.seq) { "the reply points at alice's message" }
    alice.react(dm, reply.seq, "👍", false)
    val editSeq = bob.edit(dm, reply.seq, "hi alice!")
    bEvents.waitFor("bob sees the reaction") {
        it is NatterEvent.Event && (it.event.body as? EventBody.Reaction)?.emoji == "👍"
    }
    aEvents.waitFor("alice sees the edit") {
        it is NatterEvent.Event && it.event.seq == editSeq && it.event.body is EventBody.MessageEdited
    }
    expectError<NatterException.Server>("editing someone else's message", ErrorCode.FORBIDDEN) {
        alice.edit(dm, reply.seq, "not mine")
    }

    // Search: the edited text is found, with the match marked; the directory finds bob.
    harness("indexed $dm $editSeq")
    val found = alice.search(SearchQuery(query = "alice!", order = SearchOrder.RECENT))
    check(found.hits.map { it.conversationId to it.seq } == listOf(dm to reply.seq)) { "search finds the edit: $found" }
    check(found.hits[0].snippet.any { it.hit && it.text == "alice" }) { "the match is marked: ${found.hits[0]}" }
    check((found.hits[0].event?.body as EventBody.Message).text == "hi alice!") { "the hit's message as last edited" }
    expectError<NatterException.Server>("an unknown has: value", ErrorCode.BAD_REQUEST) {
        alice.search(SearchQuery(query = "has:video", order = SearchOrder.RELEVANT))
    }
    val users = alice.searchUsers(bobName.dropLast(1), 0u)
    check(users.map { it.username } == listOf(bobName)) { "bob found by prefix: $users" }
    bob.setUnlisted(true)
    check(alice.searchUsers(bobName, 0u).isEmpty()) { "an unlisted user is not found" }
    bob.setUnlisted(false)

    // A dropped connection: alice is cut off by the server while both keep sending; she
    // resumes, her queued sends go out once, and both see every message once, in order.
    val mark = aEvents.mark()
    harness("cut $aliceId")
    val acks = coroutineScope {
        val sends = (0 until 5).map { i -> async { alice.send(dm, "from alice $i", 0u) } }
        for (i in 0 until 5) bob.send(dm, "from bob $i", 0u)
        sends.awaitAll()
    }
    // A send that crossed the cut may be resent by the SDK and acked as a duplicate of its own
    // first attempt; what must hold is that no two sends became one message.
    check(acks.map { it.seq }.toSet().size == 5) { "each alice send has a message of its own, got $acks" }
    aEvents.waitFor("alice sees the drop", mark) { it is NatterEvent.Disconnected }
    val resumed = aEvents.waitFor("alice reconnects", mark) { it is NatterEvent.Connected } as NatterEvent.Connected
    check(resumed.resumed) { "alice's session was resumed" }
    for (i in 0 until 5) {
        aEvents.waitFor("alice receives 'from bob $i'", pred = isMessage(dm, "from bob $i"))
        bEvents.waitFor("bob receives 'from alice $i'", pred = isMessage(dm, "from alice $i"))
    }

    val page = alice.history(dm, HistoryAnchor.Before(0u), 100u)
    val seqs = page.events.map { it.seq }
    check(seqs == (1uL..page.lastSeq).toList()) { "history is gap-free from 1, got $seqs" }
    val texts = page.events.mapNotNull { (it.body as? EventBody.Message)?.text }
    // The timeline fold (the one the JS package and the web chat use) over the same page.
    val timeline = Timeline()
    val changed = page.events.map { timeline.apply(it) }
    check(changed[(editSeq - 1uL).toInt()] == reply.seq) { "the edit changes the reply, got $changed" }
    val folded = timeline.message(reply.seq)
    check(folded != null && folded.text == "hi alice!" && folded.edited && !folded.deleted) {
        "the reply as it stands after the edit, got $folded"
    }
    check(folded!!.reactions.map { Triple(it.emoji, it.count, it.userIds) } == listOf(Triple("👍", 1u, listOf(aliceId)))) {
        "alice's reaction on the reply, got ${folded.reactions}"
    }
    check(timeline.messages().map { it.seq } == page.events.filter { it.body is EventBody.Message }.map { it.seq }) {
        "the timeline holds every message of the page, in order"
    }
    for (who in listOf("alice", "bob")) {
        val mine = texts.filter { it.startsWith("from $who ") }
        check(mine.sorted() == (0 until 5).map { "from $who $it" }) { "$who's sends stored once each: $mine" }
    }
    check(texts.filter { it.startsWith("from bob ") } == (0 until 5).map { "from bob $it" }) { "bob's sends in his order" }
    for (rec in listOf(aEvents, bEvents)) {
        val msgs = rec.messages(dm)
        check(msgs.size == msgs.toSet().size) { "${rec.name} received a message twice: $msgs" }
        check(msgs.map { it.first } == msgs.map { it.first }.sorted()) { "${rec.name} received out of order: $msgs" }
    }

    // Files: alice uploads a PNG with progress and sends it; bob sees the attachment (type
    // and pixel size from the server) and downloads it whole, a range and a thumbnail.
    val picture = png(400, 300)
    val progress = Progress()
    val info = alice.upload(dm, "picture.png", "image/png", picture, progress)
    check(info.mime == "image/png" && info.width == 400u && info.height == 300u && info.size == picture.size.toULong()) {
        "the finished upload describes the picture, got $info"
    }
    check(progress.seen.lastOrNull() == (picture.size.toULong() to picture.size.toULong())) {
        "progress ends with every byte stored, got ${progress.seen}"
    }
    val sentPicture = alice.sendFiles(dm, "a picture", listOf(info))
    val pictureEvent = bEvents.waitFor("bob receives the picture message") {
        it is NatterEvent.Event && it.event.seq == sentPicture.seq
    } as NatterEvent.Event
    val att = (pictureEvent.event.body as EventBody.Message).attachments
    check(att.size == 1 && att[0].mediaId == info.mediaId && att[0].width == 400u) { "one attachment, got $att" }
    check(bob.download(info.mediaId, MediaVariant.ORIGINAL, 0u, 0u).contentEquals(picture)) { "bob downloads the picture byte for byte" }
    check(bob.download(info.mediaId, MediaVariant.ORIGINAL, 100u, 50u).contentEquals(picture.copyOfRange(100, 150))) { "a range of it" }
    val thumb = bob.download(info.mediaId, MediaVariant.THUMB320, 0u, 0u)
    check(thumb.size > 3 && thumb[0] == 0xFF.toByte() && thumb[1] == 0xD8.toByte()) { "the thumbnail is a JPEG" }
    expectError<NatterException.Server>("a file that does not exist", ErrorCode.NOT_FOUND) {
        bob.download("A".repeat(22), MediaVariant.ORIGINAL, 0u, 0u)
    }

    // A file encrypted on alice's device: the server serves sealed bytes; bob opens the
    // whole file and a range across a chunk boundary with the key, not with another.
    val secret = ByteArray(200_000).also { java.util.Random(8).nextBytes(it) }
    val enc = alice.uploadEncrypted(dm, "secret.bin", "application/octet-stream", secret, null)
    check(enc.media.encrypted && enc.media.size > secret.size.toULong()) { "an encrypted file, got ${enc.media}" }
    val encSent = alice.sendFiles(dm, "", listOf(enc.media))
    val encEvent = bEvents.waitFor("bob receives the encrypted file") {
        it is NatterEvent.Event && it.event.seq == encSent.seq
    } as NatterEvent.Event
    check((encEvent.event.body as EventBody.Message).attachments[0].encrypted) { "the attachment says encrypted" }
    val sealed = bob.download(enc.media.mediaId, MediaVariant.ORIGINAL, 0u, 0u)
    val window = secret.copyOfRange(1000, 1064)
    check((0..sealed.size - window.size).none { i -> window.indices.all { sealed[i + it] == window[it] } }) {
        "the server serves no plaintext"
    }
    check(bob.downloadEncrypted(enc.media.mediaId, enc.key, 0u, 0u).contentEquals(secret)) { "bob opens it whole" }
    check(bob.downloadEncrypted(enc.media.mediaId, enc.key, 65_000u, 1_000u).contentEquals(secret.copyOfRange(65_000, 66_000))) {
        "and a range across a chunk boundary"
    }
    expectError<NatterException.Decrypt>("another key") {
        bob.downloadEncrypted(enc.media.mediaId, "00".repeat(51), 0u, 10u)
    }
    expectError<NatterException.InvalidInput>("not a key") {
        bob.downloadEncrypted(enc.media.mediaId, "xyz", 0u, 10u)
    }

    // An upload from a file, paused once its first piece is stored (large enough that the
    // rest is still unsent then): the running call ends with UploadPaused, and the upload is
    // in the snapshot — paused, with its path — for after the restart below.
    val movie = ByteArray(24 shl 20).also { java.util.Random(7).nextBytes(it) }
    val moviePath = java.io.File.createTempFile("natter-$PREFIX", "movie.bin").apply { writeBytes(movie) }.path
    val pauser = PauseOnFirstPiece(alice)
    expectError<NatterException.UploadPaused>("a paused upload ends its call") {
        alice.uploadFile(dm, moviePath, "application/octet-stream", pauser)
    }
    check(pauser.paused.size == 1) { "paused once, got ${pauser.paused}" }

    // Restore after the app is killed: snapshot, stop, start again from the snapshot.
    val snap = alice.snapshot()
    check(snap.accessToken == aLogin.accessToken && snap.resumeToken != null) { "snapshot holds the tokens" }
    check(snap.pendingSends.isEmpty()) { "nothing pending after every ack, got ${snap.pendingSends}" }
    check(snap.pendingUploads.map { listOf(it.uploadId, it.source, it.size, it.paused) } ==
        listOf(listOf(pauser.paused[0], moviePath, movie.size.toULong(), true))) {
        "the paused upload is in the snapshot, got ${snap.pendingUploads}"
    }
    aSub.cancel()
    alice.shutdown()
    alice.close()
    alice = NatterClient(options(snap.accessToken, snap.resumeToken, snap.cursors, snap.pendingUploads))
    check(alice.pendingUploads() == snap.pendingUploads) { "the restored client knows the upload" }
    expectError<NatterException.NotTheSameFile>("another file of the same size") {
        alice.resumeUpload(pauser.paused[0], ByteArray(movie.size), null)
    }
    val resumedUpload = Progress()
    val movieInfo = alice.resumeUploadFile(pauser.paused[0], resumedUpload)
    val movieSha = java.security.MessageDigest.getInstance("SHA-256").digest(movie).joinToString("") { "%02x".format(it) }
    check(movieInfo.size == movie.size.toULong() && movieInfo.sha256 == movieSha) {
        "the resumed upload is the whole file, got $movieInfo"
    }
    check(resumedUpload.seen.isNotEmpty() && resumedUpload.seen[0].first > 0u) {
        "it went on from the stored offset, not from 0: ${resumedUpload.seen.take(3)}"
    }
    check(alice.pendingUploads().isEmpty()) { "nothing pending once it is ready" }
    java.io.File(moviePath).delete()
    val restored = Recorder("alice (restored)")
    aSub = alice.subscribe(restored)
    val back = restored.waitFor("the restored client connects") { it is NatterEvent.Connected } as NatterEvent.Connected
    check(back.resumed && back.deviceId == aLogin.deviceId) { "restored the same session: $back" }
    bob.send(dm, "welcome back", 0u)
    restored.waitFor("the restored client receives new messages", pred = isMessage(dm, "welcome back"))
    check(restored.messages(dm).map { it.second } == listOf("welcome back")) {
        "only the new message after the restore (nothing again): ${restored.messages(dm)}"
    }

    // A cancelled subscription hears nothing more; another one on the same client does.
    bSub.cancel()
    val quiet = bEvents.mark()
    val bOther = Recorder("bob (second listener)")
    bob.subscribe(bOther).use {
        alice.send(dm, "after cancel", 0u)
        bOther.waitFor("the second listener receives", pred = isMessage(dm, "after cancel"))
        check(bEvents.mark() == quiet) { "a cancelled subscription still got events" }
    }

    // Retention (PROTOCOL.md §5.17): a group kept for one second loses what is older once
    // the server sweeps; bob's page ends at one tombstone, and the timeline shows it.
    val keep = alice.createGroup("${PREFIX}keep", listOf(bobName)).conversationId
    alice.send(keep, "soon gone", 0u)
    expectError<NatterException.Server>("a member setting retention", ErrorCode.FORBIDDEN) {
        bob.setRetention(keep, 0uL)
    }
    alice.setRetention(keep, 1uL)
    delay(1_100) // event times are wall-clock: what follows is a second younger
    val fresh = alice.send(keep, "still here", 0u)
    harness("sweep ${fresh.serverTimeMs + 999uL}")
    val kept = bob.history(keep, HistoryAnchor.Before(0uL), 100u)
    check(kept.events.map { it.seq } == listOf(fresh.seq) && kept.removedThrough == fresh.seq - 1uL && !kept.hasMore) {
        "the page ends at the removed range: $kept"
    }
    val keptTimeline = Timeline()
    keptTimeline.removeThrough(kept.removedThrough)
    kept.events.forEach { keptTimeline.apply(it) }
    check(keptTimeline.removedThrough() == fresh.seq - 1uL && keptTimeline.messages().map { it.text } == listOf("still here")) {
        "the timeline shows what is left, after one tombstone"
    }
    bob.setRetention(dm, 0uL) // either member of a direct conversation: kept forever

    encryptedDm()

    alice.logout(0u)
    bob.shutdown()
    alice.shutdown()
    aSub.close()
    alice.close()
    bob.close()
    println("kotlin bindings: all checks passed")
}

/** End-to-end encryption through the bindings: two encrypting devices read each other. */
suspend fun encryptedDm() {
    val dir = kotlin.io.path.createTempDirectory("natter-keys").toFile()
    fun e2ee(name: String) = options().copy(
        encryptionStatePath = java.io.File(dir, "$name.state").path,
        encryptionStoreKey = java.security.SecureRandom().let { r -> ByteArray(32).also { r.nextBytes(it) } },
    )
    expectError<NatterException.Setup>("a 5-byte store key") {
        NatterClient(options().copy(encryptionStatePath = java.io.File(dir, "x").path, encryptionStoreKey = ByteArray(5)))
    }
    val (daveName, erinName) = listOf("dave", "erin").map { PREFIX + it }
    val dave = NatterClient(e2ee("dave"))
    val erin = NatterClient(e2ee("erin"))
    val dEvents = Recorder("dave")
    val eEvents = Recorder("erin")
    val dSub = dave.subscribe(dEvents)
    val eSub = erin.subscribe(eEvents)
    dave.register(daveName, "dave password")
    erin.register(erinName, "erin password")
    dave.login(daveName, "dave password", "dave's phone")
    erin.login(erinName, "erin password", "erin's phone")
    for (rec in listOf(dEvents, eEvents)) {
        rec.waitFor("connected with keys published") { it is NatterEvent.Connected }
    }
    val secret = dave.encryptedDirect(erinName)
    check(secret.encrypted) { "an encrypted conversation: $secret" }
    val sid = secret.conversationId
    dave.send(sid, "sealed from kotlin", 0u)
    eEvents.waitFor("erin opens dave's sealed message", pred = isMessage(sid, "sealed from kotlin"))
    erin.send(sid, "and back", 0u)
    dEvents.waitFor("dave opens erin's answer", pred = isMessage(sid, "and back"))

    // The key backup: a new phone of erin's, alone, restores history with her recovery key.
    val recovery = erin.enableBackup()
    check(recovery.replace(" ", "").length == 53) { "a recovery key: $recovery" }
    erin.backupNow()
    eSub.cancel()
    erin.shutdown()
    erin.close()
    val phone = NatterClient(e2ee("erin-new"))
    val pEvents = Recorder("erin (new phone)")
    val pSub = phone.subscribe(pEvents)
    phone.login(erinName, "erin password", "erin's new phone")
    val phoneUp = pEvents.waitFor("the new phone has keys") { it is NatterEvent.Connected } as NatterEvent.Connected
    suspend fun texts() = phone.history(sid, HistoryAnchor.After(0u), 100u).events.mapNotNull { e ->
        when (val b = e.body) {
            is EventBody.Message -> b.text
            is EventBody.Encrypted -> ""
            else -> null
        }
    }
    val before = texts()
    check(before == listOf("", "")) { "nothing opens before the restore: $before" }
    // Its sync brought both messages undecryptable; the restore hands them on again, opened.
    val isUnopened = { e: NatterEvent ->
        e is NatterEvent.Event && e.event.conversationId == sid && e.event.body is EventBody.Undecryptable
    }
    // (The count under the recorder's lock, which is re-entrant.)
    pEvents.waitFor("the sync brings both messages, unopened") { pEvents.matching(isUnopened).size == 2 }
    check(pEvents.messages(sid).isEmpty()) { "none opened without its key: ${pEvents.messages(sid)}" }
    val unopenedSeqs = pEvents.matching(isUnopened).map { (it as NatterEvent.Event).event.seq }
    expectError<NatterException.WrongRecoveryKey>("another backup's key") {
        // A well-formed key of another user's backup (dave's) is wrong, not malformed.
        phone.restoreBackup(dave.enableBackup())
    }
    expectError<NatterException.MalformedRecoveryKey>("a mistyped key") { phone.restoreBackup(recovery.dropLast(1)) }
    check(phone.restoreBackup(recovery) == 2uL) { "two message keys restored" }
    pEvents.waitFor("what came undecryptable comes again, opened", pred = isMessage(sid, "and back"))
    val reopened = pEvents.messages(sid)
    check(reopened == unopenedSeqs.zip(listOf("sealed from kotlin", "and back"))) { "same seqs, opened: $reopened" }
    val after = texts()
    check(after == listOf("sealed from kotlin", "and back")) { "history opens on the new phone: $after" }
    // The phone says what it can read of its own: from the change that added it, after both.
    pEvents.waitFor("the phone hears it was added") { e ->
        e is NatterEvent.Event && e.event.conversationId == sid &&
            (e.event.body as? EventBody.DevicesChanged)?.added?.contains(phoneUp.deviceId) == true
    }
    val from = phone.readableFrom(sid)
    check(from != null && from > unopenedSeqs.max()) { "readable from its addition on: $from, unopened $unopenedSeqs" }

    // Dave verifies erin's new phone by comparing emoji.
    fun step(state: String, txn: String) = { e: NatterEvent -> e is NatterEvent.Verification && e.state == state && e.txn == txn }
    val txn = dave.verifyDevice(phoneUp.userId, phoneUp.deviceId)
    pEvents.waitFor("the phone is asked to verify", pred = step("requested", txn))
    phone.acceptVerification(txn)
    val onDave = dEvents.waitFor("dave's code", pred = step("compare", txn)) as NatterEvent.Verification
    val onPhone = pEvents.waitFor("the phone's code", pred = step("compare", txn)) as NatterEvent.Verification
    check(onDave.emoji == onPhone.emoji && onDave.emoji.size == 7) { "the same emoji: ${onDave.emoji} / ${onPhone.emoji}" }
    dave.confirmVerification(txn, true)
    phone.confirmVerification(txn, true)
    dEvents.waitFor("dave: verified", pred = step("verified", txn))
    pEvents.waitFor("the phone: verified", pred = step("verified", txn))
    val trust = dave.deviceTrust(phoneUp.userId).associate { it.deviceId to it.trust }
    check(trust[phoneUp.deviceId] == "verified") { "erin's new phone is verified for dave: $trust" }
    dSub.cancel()
    pSub.cancel()
    dave.shutdown()
    phone.shutdown()
    dave.close()
    phone.close()
}

fun main() {
    try {
        runBlocking { scenario() }
    } catch (e: Failed) {
        println("FAIL: ${e.message}")
        System.out.flush()
        exitProcess(1)
    }
    exitProcess(0)
}
