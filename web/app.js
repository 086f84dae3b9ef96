// The natter web chat: a small app over the natter-wasm package (./pkg, built by
// sdk-wasm/build.sh). Everything protocol-related happens in natter-wasm; this file keeps
// view state and renders it; what a message says after edits, deletes and reactions comes
// from natter-wasm's Timeline (the protocol's own fold). Query options:
// ?transport=websocket|webtransport|auto. Encrypted direct conversations (the 🔒 box
// beside "Chat"), their device list and emoji verification are in e2ee.js; names, avatars
// and the profile form in profiles.js.
import init, { NatterClient, Timeline } from "./pkg/index.js";
import { renderAttachments, sendFiles } from "./media.js";
import { forgetStoreKey, onVerification, renderDevices, storeKey, wireBackup } from "./e2ee.js";
import { el } from "./dom.js";
import { wireSearch } from "./search.js";
import { avatar, onProfileChanged, refreshProfiles, shownName, wireAccount, wireProfileForm, wireProfiles } from "./profiles.js";
import { enableNotifications, notifyHidden, pushRemoved, startNotifications, wireNotifyLevel } from "./notify.js";

const KIND = { DIRECT: "direct", GROUP: "group", CHANNEL: "channel" };
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// A product embedding the chat logs its user in with a token it minted (PROTOCOL.md §5.13):
// `#token=<jwt>` (a fragment: never sent to a server or kept in its logs), and
// `?token_url=<url>`, where the page asks the product's backend (with its cookies) for a
// fresh one before the device's expires.
const productToken = new URLSearchParams(location.hash.slice(1)).get("token");
const tokenUrl = params.get("token_url");
const tokenProvider = tokenUrl ? async () => {
  const r = await fetch(tokenUrl, { credentials: "include" }).catch(() => null);
  return r?.ok ? (await r.text()).trim() : null;
} : undefined;
const TOKEN_KEY = "natter.token";

const state = {
  client: null,
  me: null,                 // { userId, username, deviceId }
  convs: new Map(),         // id -> { summary, timeline, messages: Map(seq -> msg), oldest, peer }
  active: null,
  typing: new Map(),        // conversationId -> Map(userId -> username)
  presence: new Map(),      // userId -> "online" | "away" | "offline"
  log: [],                  // recent events, newest last (for tests and debugging)
  // A conversation to open once it is known (?c=<id>, or the service worker asked).
  pendingOpen: Number(params.get("c")) || null,
};
window.natter = state;      // for tests and the console

function conv(id) {
  let c = state.convs.get(id);
  if (!c) {
    c = { summary: { conversationId: id, name: "", kind: null, unreadCount: 0, lastSeq: 0 }, timeline: new Timeline(), messages: new Map(), oldest: null, peer: null };
    state.convs.set(id, c);
  }
  return c;
}

function title(c) {
  const s = c.summary;
  if (s.kind === KIND.DIRECT) return c.peer ? shownName(c.peer.userId, c.peer.username) : s.name || "Direct message";
  if (s.kind === KIND.CHANNEL) return "#" + s.name;
  return s.name;
}

// ---- events -------------------------------------------------------------------------

function onEvent(ev) {
  state.log.push(ev.type === "event" ? { type: "event", conversationId: ev.event.conversationId, seq: ev.event.seq }
    : ev.type === "connected" ? { type: "connected", resumed: ev.resumed } : { type: ev.type });
  if (state.log.length > 5000) state.log.shift();
  switch (ev.type) {
    case "transport": setConn(`connected · ${ev.name}`, true); break;
    case "connected":
      state.me = { userId: ev.userId, username: ev.username, deviceId: ev.deviceId };
      if (!ev.resumed) refreshProfiles();
      renderMe();
      showApp();
      refreshConversations();
      wireNotifyLevel(state.client);
      break;
    case "disconnected": setConn("reconnecting…", false); break;
    case "authFailed":
      localStorage.removeItem(TOKEN_KEY);
      showAuth("Your session ended; sign in again.");
      break;
    case "conversations":
      for (const s of ev.conversations) addSummary(s);
      renderList();
      openPending();
      break;
    case "event": onConversationEvent(ev.event); break;
    // Retention removed what this device had not been given (PROTOCOL.md §5.17).
    case "historyRemoved": removeThrough(ev.conversationId, ev.throughSeq); break;
    case "unread": conv(ev.conversationId).summary.unreadCount = ev.unreadCount; renderList(); break;
    case "receipt": if (ev.conversationId === state.active) renderMarks(); break;
    case "presenceChanged": state.presence.set(ev.presence.userId, ev.presence.state); renderList(); renderHeader(); break;
    case "typing": typingMap(ev.conversationId).set(ev.userId, ev.username); renderTyping(); break;
    case "typingStopped": typingMap(ev.conversationId).delete(ev.userId); renderTyping(); break;
    case "pushRemoved": pushRemoved(ev, state.me); break;
    case "profileChanged": onProfileChanged(ev.profile); break;
    // A product login whose token expired with no way here to get a fresh one.
    case "tokenNeeded": if (!tokenProvider && ev.expiresAtMs === 0) showAuth("Your sign-in has expired: open the chat from the app again."); break;
    case "sendFailed": $("chat-error").textContent = `Not sent: ${ev.error.message}`; break;
    case "encryptionUnavailable":
      $("banner").hidden = false;
      $("banner").dataset.reason = ev.reason;
      $("banner").textContent = ev.reason === "in_use"
        ? "natter is open in another tab or window: encrypted conversations work in one of them at a time. Close the other one and reload this page to use them here."
        : `Encrypted conversations are unavailable on this device: ${ev.message}`;
      break;
    case "verification": onVerification(state.client, ev, username(ev.userId), () => { if (!$("devices").hidden) showDevices(); }); break;
  }
}

// A user's name as this page knows it (a conversation peer, or this user).
function username(userId) {
  if (userId === state.me?.userId) return "you";
  for (const c of state.convs.values()) if (c.peer?.userId === userId) return shownName(userId, c.peer.username);
  return shownName(userId, `user ${userId}`);
}

function typingMap(id) {
  if (!state.typing.has(id)) state.typing.set(id, new Map());
  return state.typing.get(id);
}

function addSummary(s) {
  const c = conv(s.conversationId);
  c.summary = s;
  if (s.removedThrough) removeThrough(s.conversationId, s.removedThrough, false);
  if (s.lastMessage) addEvent(s.lastMessage);
  if (s.kind === KIND.DIRECT && !c.peer) loadPeer(s.conversationId);
}

async function loadPeer(id) {
  const members = await state.client.members(id);
  const peer = members.find((m) => m.userId !== state.me.userId);
  if (!peer) return;
  conv(id).peer = peer;
  const p = await state.client.presence([peer.userId]);
  for (const u of p) state.presence.set(u.userId, u.state);
  renderList();
  renderHeader();
}

async function refreshConversations() {
  for (const s of await state.client.conversations()) addSummary(s);
  renderList();
  openPending();
}

function addEvent(e) {
  const c = conv(e.conversationId);
  const kind = e.body.type;
  // Messages, edits, deletes and reactions fold in the timeline; it names the message to redraw.
  const changed = c.timeline.apply(e);
  const keep = (m) => c.messages.set(m.seq, {
    seq: m.seq, from: m.senderUserId || null, who: m.senderUsername || "deleted user", time: m.serverTimeMs,
    text: m.deleted ? "message deleted" : m.text, edited: m.edited, deleted: m.deleted, reactions: m.reactions,
    attachments: m.deleted ? [] : m.attachments,
    // Drawn once and kept, so a redraw does not reload images and players.
    attachmentsEl: m.deleted ? undefined : c.messages.get(m.seq)?.attachmentsEl,
  });
  if (changed) {
    keep(c.timeline.message(changed));
  } else if (kind === "userErased") {
    // A deleted account: every message of theirs may have changed (PROTOCOL.md §5.16).
    for (const m of c.timeline.all()) keep(m);
    c.messages.set(e.seq, { seq: e.seq, notice: notice(e) });
  } else if (NOTICES.has(kind)) {
    c.messages.set(e.seq, { seq: e.seq, notice: notice(e) });
  } else if ((kind === "undecryptable" || kind === "encrypted") && !c.timeline.message(e.seq)) {
    // It comes again, opened, with the same seq if its key arrives later.
    const why = kind === "undecryptable" ? ` (${e.body.reason})` : "";
    c.messages.set(e.seq, { seq: e.seq, from: e.senderUserId, who: e.senderUsername, time: e.serverTimeMs,
      text: `🔒 This message could not be decrypted on this device${why}.`, undecryptable: true });
  }
  if (c.oldest == null || e.seq < c.oldest) c.oldest = e.seq;
  if (e.seq > (c.summary.lastSeq || 0)) c.summary.lastSeq = e.seq;
}

// Retention removed a conversation's events up to `through` (PROTOCOL.md §5.17): they go
// from the view, which shows one line for the range instead.
function removeThrough(id, through, redraw = true) {
  const c = conv(id);
  if (!c.timeline.removeThrough(through)) return;
  for (const seq of [...c.messages.keys()]) if (seq <= through) c.messages.delete(seq);
  if (c.oldest != null && c.oldest <= through) c.oldest = c.messages.size ? Math.min(...c.messages.keys()) : null;
  if (redraw && id === state.active) renderMessages();
}

// How long a conversation keeps its messages, in words.
function keptFor(secs) {
  if (!secs) return "forever";
  const days = secs / 86400;
  return Number.isInteger(days) ? `${days} day${days === 1 ? "" : "s"}` : `${secs} s`;
}

// Conversation changes shown as a line of their own.
const NOTICES = new Set(["created", "membersAdded", "memberRemoved", "renamed", "devicesChanged", "memberModerated", "slowModeChanged", "retentionChanged"]);

function notice(e) {
  const b = e.body;
  switch (b.type) {
    case "created": return `${e.senderUsername} created this conversation`;
    case "membersAdded": return `${e.senderUsername} added ${b.members.map((m) => m.username).join(", ")}`;
    case "memberRemoved": return b.left ? `${b.username} left` : `${b.username} was removed`;
    case "renamed": return `${e.senderUsername} renamed it to ${b.name}`;
    case "memberModerated": {
      const until = b.untilMs ? ` until ${new Date(b.untilMs).toLocaleTimeString()}` : "";
      const verb = { mute: `muted ${b.username}${until}`, unmute: `unmuted ${b.username}`, ban: `banned ${b.username}`, unban: `lifted ${b.username}'s ban` }[b.action] || b.action;
      return `${e.senderUsername} ${verb}`;
    }
    case "userErased": return b.anonymised ? "An account was deleted; its messages stay as deleted-user's" : "An account was deleted with its messages";
    case "retentionChanged": return b.retentionSecs == null
      ? `${e.senderUsername} set messages to be kept for the server's default (${keptFor(b.effectiveSecs)})`
      : `${e.senderUsername} set messages to be kept ${b.retentionSecs ? "for " : ""}${keptFor(b.retentionSecs)}`;
    case "slowModeChanged": return b.intervalSecs ? `${e.senderUsername} turned on slow mode: one message every ${b.intervalSecs} s` : `${e.senderUsername} turned off slow mode`;
    case "devicesChanged": {
      const who = username(b.userId);
      const parts = [...b.added.map((d) => `added device ${d}`), ...b.removed.map((d) => `removed device ${d}`)];
      return `🔒 ${who === "you" ? "You" : who} ${parts.join(", ")}${b.added.length ? " — verify it under Devices" : ""}`;
    }
    default: return "";
  }
}

function onConversationEvent(e) {
  const known = state.convs.has(e.conversationId) && state.convs.get(e.conversationId).summary.kind;
  addEvent(e);
  const c = conv(e.conversationId);
  if (e.body.type === "message") {
    c.summary.lastMessage = e;
    if (state.me && e.senderUserId !== state.me.userId) {
      notifyHidden(title(c) || e.senderUsername, e.body.text || "New message", e.conversationId);
    }
    typingMap(e.conversationId).delete(e.senderUserId);
    renderTyping();
  }
  if (e.body.type === "retentionChanged") {
    c.summary.retentionSecs = e.body.effectiveSecs;
    c.summary.retentionSet = e.body.retentionSecs != null;
    if (e.conversationId === state.active) renderHeader();
  }
  if (!known || ["created", "renamed", "membersAdded"].includes(e.body.type)) refreshConversations();
  if (e.conversationId === state.active) {
    renderMessages();
    markReadIfVisible();
  }
  renderList();
}

// ---- rendering ----------------------------------------------------------------------

// This user's avatar and name at the top of the sidebar.
function renderMe() {
  if (!state.me) return;
  $("me-name").replaceChildren(avatar(state.me.userId, state.me.username),
    el("span", { class: "me-label" }, shownName(state.me.userId, state.me.username)));
}

// A profile changed or arrived: redraw what shows names and avatars.
function renderProfiles() {
  renderMe();
  renderList();
  renderHeader();
  if (state.active != null) renderMessages();
}

function setConn(text, up) {
  const c = $("conn");
  c.textContent = text;
  c.classList.toggle("up", up);
  c.dataset.transport = up ? (state.client.transport || "") : "";
}

function renderList() {
  const list = $("conversations");
  const items = [...state.convs.values()]
    .filter((c) => c.summary.kind)
    .sort((a, b) => (b.summary.lastMessage?.serverTimeMs || 0) - (a.summary.lastMessage?.serverTimeMs || 0));
  list.replaceChildren(
    ...items.map((c) => {
      const s = c.summary;
      const presence = c.peer ? state.presence.get(c.peer.userId) || "offline" : null;
      const body = s.lastMessage?.body;
      const last = body?.type !== "message" ? undefined
        : body.text || (body.attachments?.length ? `📎 ${body.attachments.map((a) => a.name).join(", ")}` : undefined);
      const li = el("li", { "data-conversation": String(s.conversationId), class: s.conversationId === state.active ? "active" : "" },
        c.peer ? avatar(c.peer.userId, c.peer.username) : null,
        el("span", { class: `dot ${presence ?? "none"}`, "data-presence": presence ?? "", title: presence ?? "" }),
        el("span", { class: "name" }, s.encrypted ? el("span", { class: "lock", title: "end-to-end encrypted", "data-encrypted": "true" }, "🔒 ") : null,
          title(c), last ? el("span", { class: "preview" }, last) : null),
        s.unreadCount > 0 && s.conversationId !== state.active ? el("span", { class: "badge", "data-unread": String(s.unreadCount) }, String(s.unreadCount)) : null);
      li.onclick = () => openConversation(s.conversationId);
      return li;
    }));
}

function renderHeader() {
  if (state.active == null) return;
  const c = conv(state.active);
  $("chat-title").textContent = (c.summary.encrypted ? "🔒 " : "") + title(c);
  $("chat-title").dataset.encrypted = String(!!c.summary.encrypted);
  $("devices-btn").hidden = !c.summary.encrypted;
  if (!c.summary.encrypted) $("devices").hidden = true;
  const sub = c.peer ? state.presence.get(c.peer.userId) || "offline" : `${c.summary.memberCount || ""} members`;
  $("chat-sub").textContent = sub;
  // How long messages are kept: its owner (either member of a direct conversation) changes it.
  const r = $("retention");
  r.disabled = !(c.summary.kind === KIND.DIRECT || c.summary.myRole === "owner");
  r.value = c.summary.retentionSet ? String(c.summary.retentionSecs) : "default";
  r.title = `Messages are kept ${c.summary.retentionSecs ? "for " : ""}${keptFor(c.summary.retentionSecs)}`;
}

function mark(m) {
  if (m.from !== state.me?.userId || m.notice) return null;
  const s = state.client.messageStatus(state.active, m.seq);
  if (!s) return null;
  const text = s.state === "read" ? "✓✓ read" : s.state === "delivered" ? "✓✓" : "✓";
  return el("span", { class: `mark ${s.state}`, "data-status": s.state }, text);
}

function renderMessages() {
  const c = conv(state.active);
  const ol = $("message-list");
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const msgs = [...c.messages.values()].sort((a, b) => a.seq - b.seq);
  // What retention removed: one line, never a silent gap.
  const removed = c.timeline.removedThrough;
  const tombstone = removed > 0 && (c.oldest == null || c.oldest === removed + 1)
    ? el("li", { class: "notice removed", "data-removed-through": String(removed) },
      `Older messages were removed: this conversation keeps messages ${c.summary.retentionSecs ? "for " : ""}${keptFor(c.summary.retentionSecs)}.`)
    : null;
  ol.replaceChildren(...(tombstone ? [tombstone] : []), ...msgs.map((m) => {
    if (m.notice) return el("li", { class: "notice", "data-seq": String(m.seq) }, m.notice);
    const mine = m.from === state.me?.userId;
    // Sent before this device was added to the conversation: only keys from elsewhere open it.
    const before = m.undecryptable && c.readableFrom != null && m.seq < c.readableFrom;
    if (before) m.text = "🔒 Sent before this device joined: restore your key backup, or verify another device of yours, to read it.";
    return el("li", { class: `msg${mine ? " mine" : ""}${m.deleted ? " deleted" : ""}${m.undecryptable ? " undecryptable" : ""}${c.found === m.seq ? " found" : ""}`, "data-seq": String(m.seq), "data-before-device": before ? "true" : undefined },
      !mine && m.from != null ? avatar(m.from, m.who) : null,
      !mine && c.summary.kind !== KIND.DIRECT ? el("div", { class: "who" }, shownName(m.from, m.who)) : null,
      m.text || !m.attachments?.length ? el("div", { class: "text" }, m.text) : null,
      m.attachments?.length ? (m.attachmentsEl ??= renderAttachments(state.client, m.attachments)) : null,
      m.reactions?.length ? el("div", { class: "reactions" }, ...m.reactions.map((r) =>
        el("span", { class: `reaction${r.userIds.includes(state.me?.userId) ? " mine" : ""}`, "data-emoji": r.emoji }, `${r.emoji} ${r.count}`))) : null,
      el("div", { class: "meta" }, new Date(m.time).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), m.edited ? " · edited" : "", " ", mark(m)));
  }));
  $("older").hidden = !(c.oldest > Math.max(1, removed + 1));
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function renderMarks() {
  renderMessages();
}

function renderTyping() {
  const who = state.active == null ? [] : [...typingMap(state.active).values()];
  $("typing").textContent = who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}

// The devices of an encrypted conversation's members, with their trust.
async function showDevices() {
  const c = conv(state.active);
  $("devices").hidden = false;
  const users = [{ userId: state.me.userId, username: state.me.username }];
  if (c.peer) users.push(c.peer);
  try { await renderDevices(state.client, state.me, users); } catch (e) { $("chat-error").textContent = e.message; }
}

// Open the conversation asked for (by the URL or the service worker) once it is known.
function openPending() {
  const id = state.pendingOpen;
  if (id != null && state.convs.get(id)?.summary.kind) {
    state.pendingOpen = null;
    openConversation(id);
  }
}

async function openConversation(id) {
  state.active = id;
  $("devices").hidden = true;
  $("empty").hidden = true;
  for (const e of [document.querySelector(".chat-head"), $("messages"), $("composer")]) e.hidden = false;
  renderHeader();
  renderList();
  const c = conv(id);
  // Which of an encrypted conversation this device can read (from the event that added it).
  if (c.summary.encrypted) c.readableFrom = await state.client.readableFrom(id).catch(() => null);
  if (c.messages.size < 30) await loadOlder(true);
  renderMessages();
  renderTyping();
  markReadIfVisible();
  $("text").focus();
}

// Open a conversation at one of its messages (a search hit): older pages are loaded until
// it is drawn, then it is scrolled to and marked.
async function openAt(id, seq) {
  await openConversation(id);
  const c = conv(id);
  while (!c.messages.has(seq) && c.oldest != null && c.oldest > seq) {
    const before = c.oldest;
    await loadOlder(false);
    if (c.oldest === before) break;
  }
  c.found = seq;
  renderMessages();
  document.querySelector(`#message-list li[data-seq='${seq}']`)?.scrollIntoView({ block: "center" });
}

async function loadOlder(latest = false) {
  const c = conv(state.active);
  const id = state.active;
  const page = await state.client.history(id, { before: latest ? 0 : c.oldest, limit: 50 });
  if (page.removedThrough) removeThrough(id, page.removedThrough, false);
  for (const e of page.events) addEvent(e);
  // Reached the removed range: what is left begins just after it.
  if (!page.hasMore && page.removedThrough && c.oldest == null) c.oldest = page.removedThrough + 1;
  renderMessages();
}

function markReadIfVisible() {
  if (state.active == null || document.visibilityState !== "visible") return;
  const c = conv(state.active);
  const last = c.summary.lastSeq;
  if (last > (c.summary.readSeq || 0)) {
    c.summary.readSeq = last;
    c.summary.unreadCount = 0;
    state.client.markRead(state.active, last).catch(() => {});
    renderList();
  }
}

// ---- auth and actions ---------------------------------------------------------------

function showAuth(message = "") {
  $("app").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message;
}

function showApp() {
  $("auth").hidden = true;
  $("app").hidden = false;
}

async function signIn(register) {
  const username = $("username").value.trim();
  const password = $("password").value;
  $("auth-error").textContent = "";
  try {
    if (register) await state.client.register(username, password);
    const login = await state.client.login(username, password, `${navigator.userAgent.includes("Headless") ? "headless " : ""}browser`);
    localStorage.setItem(TOKEN_KEY, login.accessToken);
  } catch (e) {
    $("auth-error").textContent = e.code === "USERNAME_TAKEN" ? "That username is taken."
      : e.code === "INVALID_CREDENTIALS" ? "Wrong username or password."
      : e.code === "RATE_LIMITED" ? `Too many attempts; try again in ${Math.ceil(e.retryAfterMs / 1000)} s.`
      : e.message;
  }
}

function wire() {
  $("auth-form").onsubmit = (e) => { e.preventDefault(); signIn(false); };
  $("register").onclick = () => { if ($("auth-form").reportValidity()) signIn(true); };
  $("composer").onsubmit = async (e) => {
    e.preventDefault();
    const text = $("text").value;
    if (!text.trim() || state.active == null) return;
    $("text").value = "";
    $("chat-error").textContent = "";
    try { await state.client.send(state.active, text); } catch (err) { $("chat-error").textContent = err.message; }
  };
  // Files: the attach button, or dropped anywhere on the conversation.
  const send = async (files) => {
    if (!files.length || state.active == null) return;
    const text = $("text").value;
    $("text").value = "";
    $("chat-error").textContent = "";
    try { await sendFiles(state.client, state.active, files, text, $("uploads")); }
    catch (err) { $("chat-error").textContent = err.message; }
  };
  $("attach").onclick = () => $("file").click();
  $("file").onchange = () => { const files = [...$("file").files]; $("file").value = ""; send(files); };
  const chat = $("chat");
  chat.addEventListener("dragover", (e) => {
    if (state.active == null || !e.dataTransfer?.types.includes("Files")) return;
    e.preventDefault();
    chat.classList.add("dropping");
  });
  chat.addEventListener("dragleave", (e) => { if (e.target === chat) chat.classList.remove("dropping"); });
  chat.addEventListener("drop", (e) => {
    chat.classList.remove("dropping");
    if (state.active == null || !e.dataTransfer?.files.length) return;
    e.preventDefault();
    send([...e.dataTransfer.files]);
  });
  $("viewer").onclick = (e) => { if (e.target.tagName !== "A") $("viewer").hidden = true; };
  $("text").oninput = () => { if (state.active != null && $("text").value) state.client.typing(state.active); };
  $("older").onclick = () => loadOlder(false);
  $("retention").onchange = async (e) => {
    const v = e.target.value;
    try {
      await state.client.setRetention(state.active, v === "default" ? null : Number(v));
    } catch (err) {
      $("chat-error").textContent = err.message;
      renderHeader();
    }
  };
  const action = (form, fn) => { $(form).onsubmit = async (e) => {
    e.preventDefault();
    try { const s = await fn(); addSummary(s); renderList(); openConversation(s.conversationId); e.target.reset(); }
    catch (err) { $("chat-error").textContent = err.message; }
  }; };
  action("new-dm", () => state.client.direct($("dm-user").value.trim(), { encrypted: $("dm-encrypted").checked }));
  $("notify-btn").onclick = () => enableNotifications(state.client);
  wireSearch(state.client, { title: (id) => title(conv(id)), open: openAt });
  wireProfiles(state.client, renderProfiles);
  wireProfileForm(() => state.me);
  wireAccount(() => {
    localStorage.removeItem(TOKEN_KEY);
    forgetStoreKey();
    location.reload();
  });
  $("devices-btn").onclick = () => ($("devices").hidden ? showDevices() : ($("devices").hidden = true));
  action("new-group", () => state.client.createGroup($("group-name").value.trim(),
    $("group-members").value.split(",").map((s) => s.trim()).filter(Boolean)));
  action("join-channel", async () => {
    const name = $("channel-name").value.trim().replace(/^#/, "");
    try { return await state.client.joinChannel(name); }
    catch (e) { if (e.code === "NOT_FOUND") return state.client.createChannel(name); throw e; }
  });
  $("logout").onclick = async () => {
    try { await state.client.logout(); } catch {}
    localStorage.removeItem(TOKEN_KEY);
    forgetStoreKey();
    location.reload();
  };
  // After a restore: what was drawn unopened is read again.
  wireBackup(state.client, async () => { if (state.active != null) await loadOlder(true); });
  document.addEventListener("visibilitychange", () => {
    state.client?.setPresence(document.visibilityState === "visible" ? "online" : "away");
    markReadIfVisible();
  });
}

await init();
const token = localStorage.getItem(TOKEN_KEY);
state.client = NatterClient.connect({
  transport: params.get("transport") || "auto", token: token || undefined, onEvent,
  encryption: { storeKey: storeKey() }, tokenProvider,
});
wire();
startNotifications((id) => { state.pendingOpen = id; openPending(); });
if (!token && productToken) {
  // Opened by a product with its user's token (PROTOCOL.md §5.13): log in with it, and keep
  // it out of the address bar and history.
  history.replaceState(null, "", location.pathname + location.search);
  try {
    const login = await state.client.loginWithToken(productToken, "browser");
    localStorage.setItem(TOKEN_KEY, login.accessToken);
  } catch (e) {
    showAuth(e.code === "TOKEN_EXPIRED" ? "That sign-in link has expired." : `Sign-in refused: ${e.message}`);
  }
} else if (!token) showAuth();
