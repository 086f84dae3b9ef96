// Profiles in the web chat (PROTOCOL.md §5.15): names and avatars of the people on the page,
// read in batches (`profiles`) and kept current by `profileChanged` events; after a connect
// that did not resume, every profile shown is read again (changes made while away are not
// replayed). The "Profile" form changes this user's display name, status and avatar
// (`setProfile`, `setAvatar`). Avatars that are uploaded images are drawn from their 320 px
// thumbnail through a signed URL.
import { el } from "./dom.js";
import { signedUrl } from "./media.js";

const profiles = new Map();   // userId -> Profile
const asked = new Set();      // userIds with a read in flight or done
let pending = new Set();
let client = null;
let redraw = () => {};

export function wireProfiles(c, onChange) {
  client = c;
  redraw = onChange;
  window.natter.profiles = profiles;
}

// The name to show for a user: display name, else username, else `fallback`.
export function shownName(userId, fallback) {
  const p = profiles.get(userId);
  if (!p) { want([userId]); return fallback; }
  return p.displayName || p.username || fallback;
}

// Ask for the profiles of users not yet known (batched, at most 100 per request).
export function want(userIds) {
  for (const id of userIds) if (id != null && !asked.has(id)) { asked.add(id); pending.add(id); }
  if (pending.size === 1) queueMicrotask(flush);
}

async function flush() {
  const ids = [...pending];
  pending = new Set();
  for (let i = 0; i < ids.length; i += 100) {
    try {
      for (const p of await client.profiles(ids.slice(i, i + 100))) keep(p);
    } catch {
      for (const id of ids.slice(i, i + 100)) asked.delete(id);
    }
  }
  redraw();
}

function keep(p) {
  const had = profiles.get(p.userId);
  if (had && had.updatedMs > p.updatedMs) return false;
  profiles.set(p.userId, p);
  return true;
}

export function onProfileChanged(p) {
  asked.add(p.userId);
  if (keep(p)) redraw();
}

// After a connect that did not resume: read every known profile again.
export function refreshProfiles() {
  const ids = [...asked];
  asked.clear();
  want(ids);
}

function initials(name) {
  return (name || "?").trim().slice(0, 1).toUpperCase();
}

// A small round avatar for a user: their picture, else their initial.
export function avatar(userId, fallbackName) {
  const p = profiles.get(userId);
  if (!p) want([userId]);
  const name = p?.displayName || p?.username || fallbackName;
  const src = p?.avatar || "";
  const box = el("span", { class: "avatar", "data-user": String(userId), "data-avatar": src, title: name }, initials(name));
  if (src.startsWith("https://")) {
    box.replaceChildren(el("img", { src, alt: "" }));
  } else if (src.startsWith("media:")) {
    const img = el("img", { alt: "", "data-media": src.slice(6) });
    signedUrl(client, src.slice(6), "thumb320").then((url) => {
      img.src = url;
      box.replaceChildren(img);
    }).catch(() => {});
  }
  return box;
}

// The account (PROTOCOL.md §5.16): download a zip of this user's data, or delete it.
export function wireAccount(onDeleted) {
  const status = document.getElementById("profile-status");
  document.getElementById("export-account").onclick = async () => {
    status.textContent = "";
    try {
      const { path } = await client.exportAccount();
      const a = el("a", { href: path, download: "natter-export.zip" });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (err) { status.textContent = err.message; }
  };
  document.getElementById("delete-account").onclick = async () => {
    status.textContent = "";
    const password = prompt("Delete your account, your messages and your files for good? Type your password (leave empty if you signed in through another app).");
    if (password === null) return;
    try {
      await client.deleteAccount(password);
      onDeleted();
    } catch (err) { status.textContent = err.code === "INVALID_CREDENTIALS" ? "Wrong password." : err.message; }
  };
}

// The "Profile" form: this user's display name, status and avatar.
export function wireProfileForm(me) {
  const form = document.getElementById("profile-form");
  const status = document.getElementById("profile-status");
  document.getElementById("profile-btn").onclick = () => {
    const p = profiles.get(me().userId);
    form.hidden = !form.hidden;
    if (!form.hidden) {
      document.getElementById("profile-name").value = p?.displayName || "";
      document.getElementById("profile-text").value = p?.status || "";
    }
  };
  form.onsubmit = async (e) => {
    e.preventDefault();
    status.textContent = "";
    try {
      const file = document.getElementById("profile-avatar").files[0];
      if (file) onProfileChanged(await client.setAvatar(file, {}));
      onProfileChanged(await client.setProfile({
        displayName: document.getElementById("profile-name").value.trim(),
        status: document.getElementById("profile-text").value.trim(),
      }));
      document.getElementById("profile-avatar").value = "";
      form.hidden = true;
    } catch (err) {
      status.textContent = err.message;
    }
  };
}
