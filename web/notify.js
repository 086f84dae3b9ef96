// Notifications in the web chat (PROTOCOL.md §13): the service worker (sw.js) shows Web
// Push notifications while no natter page is in front; "🔔 Notify me" subscribes this
// browser with the server's VAPID key and registers the subscription for this device. While
// the page is open but hidden, new messages show through the Notification API directly.
const $ = (id) => document.getElementById(id);

let registration = null;

/** Register the service worker; `open(conversationId)` is called when it asks. */
export async function startNotifications(open) {
  if (!("serviceWorker" in navigator)) return;
  try {
    registration = await navigator.serviceWorker.register("sw.js");
  } catch (e) {
    console.warn("service worker:", e.message);
    return;
  }
  navigator.serviceWorker.addEventListener("message", (e) => {
    if (e.data?.type === "openConversation") open(e.data.conversationId);
  });
  $("notify-btn").hidden = !("PushManager" in window);
}

/** Subscribe this browser and register the subscription with the server. */
export async function enableNotifications(client) {
  const status = $("notify-status");
  try {
    if ((await Notification.requestPermission()) !== "granted") {
      status.textContent = "Notifications are blocked for this page.";
      return;
    }
    const reg = registration ?? (await navigator.serviceWorker.ready);
    const { vapidPublicKey } = await client.listPush();
    const sub = (await reg.pushManager.getSubscription())
      ?? (await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: vapidPublicKey }));
    await client.registerPush(sub);
    status.textContent = "Notifications are on for this browser.";
    $("notify-btn").dataset.on = "true";
  } catch (e) {
    status.textContent = `Notifications are unavailable here: ${e.message}`;
  }
}

/** The push service dropped one of the user's registrations (PROTOCOL.md §13.4). Ours: the
 *  subscription is dead, so drop it and offer to turn notifications on again. */
export async function pushRemoved(ev, me) {
  const status = $("notify-status");
  if (ev.deviceId !== me?.deviceId) {
    status.textContent = `One of your other devices stopped getting notifications (${ev.reason}).`;
    return;
  }
  const reg = registration ?? (await navigator.serviceWorker?.ready);
  await (await reg?.pushManager.getSubscription())?.unsubscribe().catch(() => {});
  status.textContent = `The push service ended this browser's notifications (${ev.reason}). Turn them on again.`;
  delete $("notify-btn").dataset.on;
}

/** A message arrived while the page is open but hidden: tell the person. */
export function notifyHidden(title, body, conversationId) {
  if (document.visibilityState === "visible" || !("Notification" in window)) return;
  if (Notification.permission !== "granted") return;
  const n = new Notification(title, { body, tag: `c${conversationId}` });
  n.onclick = () => { window.focus(); n.close(); };
}

/** Show the user's notification level and save changes to it (PROTOCOL.md §13.2). */
export async function wireNotifyLevel(client) {
  const select = $("notify-level");
  try {
    const s = await client.getNotifySettings();
    select.value = s.level === "unspecified" ? "all" : s.level;
    select.onchange = async () => {
      try {
        const saved = await client.setNotifySettings({ ...(await client.getNotifySettings()), level: select.value });
        select.value = saved.level;
        $("notify-status").textContent = `Notifications: ${select.selectedOptions[0].text}.`;
      } catch (e) {
        $("notify-status").textContent = `Not saved: ${e.message}`;
      }
    };
  } catch (e) {
    console.warn("notify settings:", e.message);
  }
}
