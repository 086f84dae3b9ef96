// End-to-end encryption in the web chat (PROTOCOL.md §12): the store key the page keeps,
// the device list with each device's trust, emoji verification between two devices, and
// the key backup (set up, with a recovery key to write down; restore on a new device).
// natter-wasm does all of the cryptography; this file only shows it.
//
// The store key seals the encryption state natter-wasm keeps in IndexedDB. The page keeps
// it in localStorage beside the access token: a browser offers nothing stronger to a page
// without asking the person for a passphrase, so the state at rest is as safe as the
// origin's storage (an app that can ask should derive the key from one).
import { el } from "./dom.js";
const STORE_KEY = "natter.storeKey";
const $ = (id) => document.getElementById(id);

/** This browser's store key (made on first use). */
export function storeKey() {
  const saved = localStorage.getItem(STORE_KEY);
  if (saved) return Uint8Array.from(atob(saved), (c) => c.charCodeAt(0));
  const key = crypto.getRandomValues(new Uint8Array(32));
  localStorage.setItem(STORE_KEY, btoa(String.fromCharCode(...key)));
  return key;
}

/** After a logout: the state it sealed is gone, so is the key. */
export function forgetStoreKey() {
  localStorage.removeItem(STORE_KEY);
}

const TRUST = { verified: "✅ verified", unverified: "⚠️ unverified", changed: "❗ key changed" };

/** The devices of the people in an encrypted conversation (`users`: [{ userId, username }]),
 * each with its trust and a Verify button; this device is listed as such. */
export async function renderDevices(client, me, users) {
  const list = $("device-list");
  const rows = [];
  for (const u of users) {
    for (const d of await client.deviceTrust(u.userId)) {
      const self = u.userId === me.userId && d.deviceId === me.deviceId;
      const verify = el("button", { class: "secondary", textContent: "Verify" });
      verify.onclick = () => client.verifyDevice(u.userId, d.deviceId).catch((e) => showVerify(e.message));
      rows.push(el("li", { "data-user": String(u.userId), "data-device": String(d.deviceId), "data-trust": self ? "self" : d.trust },
        el("span", { class: "name" }, `${u.username} · device ${d.deviceId}`),
        el("code", { title: "identity key" }, d.ed25519.slice(0, 16) + "…"),
        self ? el("span", { class: "muted" }, "this device") : el("span", { class: `trust ${d.trust}` }, TRUST[d.trust]),
        self || d.trust === "verified" ? null : verify));
    }
  }
  list.replaceChildren(...rows);
}

function showVerify(text, emoji = [], buttons = []) {
  $("verify").hidden = false;
  $("verify-text").textContent = text;
  $("verify-emoji").replaceChildren(...emoji.map((e) => {
    const [symbol, ...name] = e.split(" ");
    return el("span", { class: "emoji" }, el("b", {}, symbol), name.join(" "));
  }));
  $("verify-buttons").replaceChildren(...buttons.map(([label, id, fn, secondary]) => {
    const b = el("button", { id, textContent: label, class: secondary ? "secondary" : "" });
    b.onclick = async () => { $("verify-buttons").replaceChildren(); try { await fn(); } catch (e) { $("verify-text").textContent = e.message; } };
    return b;
  }));
}

/** A `verification` event: asks, shows the emoji to compare, or says how it ended.
 * `who` is the other device's user ("you" for one of your own); `done(ev)` runs after a
 * verification ends (to redraw the device list). */
export function onVerification(client, ev, who, done) {
  const whose = who === "you" ? "your" : `${who}'s`;
  const Whose = whose[0].toUpperCase() + whose.slice(1);
  const close = ["Close", "verify-close", () => { $("verify").hidden = true; }, true];
  $("verify").dataset.state = ev.state;
  $("verify").dataset.txn = ev.txn;
  switch (ev.state) {
    case "requested":
      showVerify(`${Whose} device ${ev.deviceId} asks to verify this device.`, [], [
        ["Accept", "verify-accept", () => { $("verify-text").textContent = "Waiting for the codes…"; return client.acceptVerification(ev.txn); }],
        ["Decline", "verify-decline", () => client.cancelVerification(ev.txn).then(() => { $("verify").hidden = true; }), true],
      ]);
      break;
    case "compare":
      showVerify(`Do these emoji appear in the same order on ${whose} device ${ev.deviceId}?`, ev.emoji, [
        ["They match", "verify-yes", () => { $("verify-text").textContent = "Waiting for the other device…"; return client.confirmVerification(ev.txn, true); }],
        ["They don't match", "verify-no", () => client.confirmVerification(ev.txn, false), true],
      ]);
      break;
    case "verified":
      showVerify(`✅ ${Whose} device ${ev.deviceId} is verified.`, [], [close]);
      done(ev);
      break;
    case "cancelled":
      showVerify(`Verification with ${whose} device ${ev.deviceId} stopped (${ev.reason}).`, [], [close]);
      done(ev);
      break;
  }
}

/** The key backup panel: set one up (shows the recovery key once), or restore with one;
 * `restored()` runs after a restore (to reload what was shown unopened). */
export function wireBackup(client, restored) {
  const status = $("backup-status");
  $("backup-enable").onclick = async () => {
    status.textContent = "Setting up…";
    try {
      const key = await client.enableBackup();
      $("recovery-key").hidden = false;
      $("recovery-key").textContent = key;
      status.textContent = "Write this recovery key down: it is the only way to read the backup.";
    } catch (e) { status.textContent = e.message; status.dataset.code = e.code; }
  };
  $("backup-restore").onsubmit = async (e) => {
    e.preventDefault();
    status.textContent = "Restoring…";
    delete status.dataset.code;
    try {
      const n = await client.restoreBackup($("recovery-input").value.trim());
      status.textContent = `Restored ${n} message keys.`;
      status.dataset.code = "OK";
      e.target.reset();
      await restored();
    } catch (err) {
      status.textContent = err.code === "WRONG_RECOVERY_KEY" ? "That recovery key does not open this backup."
        : err.code === "MALFORMED_RECOVERY_KEY" ? `That is not a recovery key (${err.message}).`
        : err.code === "NO_KEY_BACKUP" ? "No key backup was set up." : err.message;
      status.dataset.code = err.code;
    }
  };
}
