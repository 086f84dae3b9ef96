// Search in the web chat (PROTOCOL.md §14): the box above the conversations searches
// messages as you type (the last word a prefix) and lists hits with their matches
// marked (encrypted conversations' hits come from this browser's own index); a hit opens
// its conversation at that message. The "Message a user…" and
// "#channel" inputs suggest names from the directory. Everything goes through natter-wasm's
// search, searchUsers and searchChannels.
import { el } from "./dom.js";

const $ = (id) => document.getElementById(id);
const DEBOUNCE_MS = 200;

// Wire the search box and the name suggestions. `title(id)` names a conversation;
// `open(id, seq)` shows it at a message.
export function wireSearch(client, { title, open }) {
  let timer = null;
  let asked = 0;
  const run = async (typing) => {
    const q = $("search-q").value.trim();
    const list = $("search-results");
    const ticket = ++asked;
    if (!q) { list.hidden = true; list.replaceChildren(); $("search-status").textContent = ""; return; }
    try {
      const r = await client.search({ query: q, typing, limit: 30 });
      if (ticket !== asked) return; // a newer query is on its way
      render(r, { title, open });
    } catch (e) {
      if (ticket !== asked) return;
      list.hidden = true;
      $("search-status").textContent = e.code === "BAD_REQUEST" ? e.message : `Search failed: ${e.message}`;
    }
  };
  $("search-q").oninput = () => { clearTimeout(timer); timer = setTimeout(() => run(true), DEBOUNCE_MS); };
  $("search").onsubmit = (e) => { e.preventDefault(); clearTimeout(timer); run(false); };
  suggest("dm-user", "user-suggestions", async (p) => (await client.searchUsers(p, 8)).map((u) => u.username));
  suggest("channel-name", "channel-suggestions",
    async (p) => (await client.searchChannels(p.replace(/^#/, ""), 8)).map((c) => c.name));
}

function render(r, { title, open }) {
  const list = $("search-results");
  list.replaceChildren(...r.hits.map((h) => el("li", {
    class: "hit", "data-conversation": h.conversationId, "data-seq": h.seq,
    onclick: () => open(h.conversationId, h.seq),
  }, el("span", { class: "hit-where" }, title(h.conversationId), " · ", h.event?.senderUsername ?? ""),
     el("span", { class: "hit-text" }, ...h.snippet.map((p) => (p.hit ? el("mark", {}, p.text) : p.text))))));
  list.hidden = false;
  const more = r.total > r.hits.length ? ` (${r.total} in all)` : "";
  const lag = r.indexLagMs > 1000 ? " · the index is catching up" : "";
  // Encrypted conversations are searched on this device, as far back as it has read them.
  const partial = (r.local ?? []).filter((l) => !l.complete).length;
  const sealed = partial ? ` · ${partial} encrypted conversation(s) searched only as far back as this device has read` : "";
  $("search-status").textContent = (r.hits.length ? `${r.hits.length} found${more}` : "Nothing found") + lag + sealed;
}

// Fill a datalist with names that start with what is typed into `input`.
function suggest(input, datalist, find) {
  let timer = null;
  $(input).addEventListener("input", () => {
    clearTimeout(timer);
    const prefix = $(input).value.trim();
    if (!prefix) return;
    timer = setTimeout(async () => {
      try { $(datalist).replaceChildren(...(await find(prefix)).map((n) => el("option", { value: n }))); }
      catch { /* suggestions are a convenience */ }
    }, DEBOUNCE_MS);
  });
}
