// natter's service worker: shows a notification for each Web Push the server sends
// (PROTOCOL.md §13.3: the payload is JSON, which the browser has already decrypted), one
// per conversation (the collapse id is the tag, so a newer one replaces it), and opens the
// conversation when the notification is clicked. It holds no keys and no client.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

/** Title and options of the notification for one payload. */
self.notificationFor = (p) => {
  const group = p.conversationTitle;
  const title = group || p.senderName || "natter";
  const text = p.fetch ? "New message" : p.preview;
  return {
    title,
    options: {
      body: group && p.senderName ? `${p.senderName}: ${text}` : text,
      tag: p.collapseId || `c${p.conversationId}`,
      renotify: true,
      data: { conversationId: p.conversationId, seq: p.seq },
    },
  };
};

self.addEventListener("push", (event) => {
  let p;
  try { p = event.data.json(); } catch { return; }
  if (p.withdraw) {
    // Read on another device (§13.2): take the conversation's notification away.
    event.waitUntil(self.withdraw(p));
    return;
  }
  const { title, options } = self.notificationFor(p);
  // The server pushes only to devices with no connected page (§13.2): always show it.
  event.waitUntil((async () => {
    await self.registration.showNotification(title, options);
    if (self.navigator.setAppBadge && typeof p.badge === "number") await self.navigator.setAppBadge(p.badge).catch(() => {});
  })());
});

/** Close the notifications of `p`'s conversation; update the badge. */
self.withdraw = async (p) => {
  const shown = await self.registration.getNotifications({ tag: p.collapseId || `c${p.conversationId}` });
  for (const n of shown) n.close();
  if (self.navigator.setAppBadge && typeof p.badge === "number") await self.navigator.setAppBadge(p.badge).catch(() => {});
};

/** Focus a page of ours on the conversation (telling it which), or open one there. */
self.openConversation = async (conversationId) => {
  const wins = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const w of wins) {
    w.postMessage({ type: "openConversation", conversationId });
    return w.focus().catch(() => w);
  }
  return self.clients.openWindow(new URL(`./?c=${conversationId}`, self.registration.scope).href);
};

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.openConversation(event.notification.data?.conversationId));
});
