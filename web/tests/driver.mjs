// Headless Chromium for natter's browser tests, driven over stdin/stdout by
// server/tests/browser.rs: one JSON command per line in, one JSON reply per line out
// ({ id, ok, value } or { id, ok: false, error }). Each page gets its own browser
// context (own storage), like two people on two machines. Uses Debian's chromium; never
// downloads a browser.
import { chromium } from "playwright-core";
import readline from "node:readline";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    // Extra flags from the test, e.g. --ignore-certificate-errors-spki-list for a dev cert.
    ...(process.env.CHROMIUM_ARGS ? process.env.CHROMIUM_ARGS.split(" ") : [])],
});
const pages = new Map();
const logs = new Map();
const media = new Map();  // page -> [{ method, url, range, status }] of its /media/ and /tus/ requests

async function run(cmd) {
  const page = pages.get(cmd.page);
  switch (cmd.op) {
    case "open": {
      const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
      // Runs before the page's own scripts (e.g. to take WebTransport away).
      if (cmd.init) await context.addInitScript(cmd.init);
      const p = await context.newPage();
      logs.set(cmd.page, []);
      p.on("console", (m) => logs.get(cmd.page).push(`${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => logs.get(cmd.page).push(`pageerror: ${e.message}`));
      media.set(cmd.page, []);
      p.on("response", async (r) => {
        const path = new URL(r.url()).pathname;
        if (!path.startsWith("/media/") && !path.startsWith("/tus/")) return;
        const headers = await r.request().allHeaders().catch(() => ({}));
        media.get(cmd.page).push({ method: r.request().method(), url: r.url(), range: headers["range"] ?? null, status: r.status() });
      });
      await p.goto(cmd.url);
      pages.set(cmd.page, p);
      return null;
    }
    // Another tab of the same browser profile as page `of` (same storage, same locks).
    case "openTab": {
      const p = await pages.get(cmd.of).context().newPage();
      logs.set(cmd.page, []);
      p.on("console", (m) => logs.get(cmd.page).push(`${m.type()}: ${m.text()}`));
      await p.goto(cmd.url);
      pages.set(cmd.page, p);
      return null;
    }
    case "fill": await page.fill(cmd.selector, cmd.value); return null;
    case "type": await page.locator(cmd.selector).pressSequentially(cmd.value, { delay: 20 }); return null;
    case "press": await page.press(cmd.selector, cmd.key); return null;
    // Load the page again (what a person's reload does: storage stays, memory goes).
    case "reload": await page.reload(); return null;
    case "click": await page.click(cmd.selector); return null;
    case "select": await page.selectOption(cmd.selector, cmd.value); return null;
    case "text": return await page.locator(cmd.selector).allInnerTexts();
    case "wait": await page.waitForSelector(cmd.selector, { timeout: cmd.timeout ?? 20000 }); return null;
    // Wait until an expression (evaluated in the page) is truthy; returns its value.
    case "waitFn": {
      const handle = await page.waitForFunction(cmd.js, null, { timeout: cmd.timeout ?? 20000, polling: 50 });
      return await handle.jsonValue();
    }
    // Evaluate an async function body in the page; returns its JSON result.
    case "eval": return await page.evaluate(`(async () => { ${cmd.js} })()`);
    case "screenshot": await page.screenshot({ path: cmd.path, fullPage: true }); return cmd.path;
    case "logs": return logs.get(cmd.page) ?? [];
    // The page's requests for /media/ and /tus/ so far: method, URL, Range header, status.
    case "mediaRequests": return media.get(cmd.page) ?? [];
    // Allow notifications for the page's origin (what a person's "Allow" does).
    case "grant": await page.context().grantPermissions(cmd.permissions, { origin: new URL(page.url()).origin }); return null;
    // Deliver a push message to the page's service worker as a push service would, after
    // the browser decrypted it (DevTools: ServiceWorker.deliverPushMessage).
    case "deliverPush": {
      const cdp = await page.context().newCDPSession(page);
      const origin = new URL(page.url()).origin;
      const registered = new Promise((resolve) => cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => {
        const r = e.registrations.find((r) => !r.isDeleted && r.scopeURL.startsWith(origin));
        if (r) resolve(r.registrationId);
      }));
      await cdp.send("ServiceWorker.enable");
      const registrationId = await registered;
      await cdp.send("ServiceWorker.deliverPushMessage", { origin, registrationId, data: cmd.data });
      await cdp.detach();
      return null;
    }
    // Evaluate an async function body in the page's service worker; returns its JSON result.
    case "workerEval": {
      const worker = page.context().serviceWorkers()[0] ?? (await page.context().waitForEvent("serviceworker"));
      return await worker.evaluate(`(async () => { ${cmd.js} })()`);
    }
    case "quit": await browser.close(); process.exit(0);
    default: throw new Error(`unknown op ${cmd.op}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
console.log(JSON.stringify({ id: 0, ok: true, value: "ready" }));
for await (const line of rl) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  try {
    const value = await run(cmd);
    console.log(JSON.stringify({ id: cmd.id, ok: true, value: value ?? null }));
  } catch (e) {
    const log = cmd.page ? (logs.get(cmd.page) ?? []).slice(-20) : [];
    console.log(JSON.stringify({ id: cmd.id, ok: false, error: String(e?.message ?? e), log }));
  }
}
await browser.close();
