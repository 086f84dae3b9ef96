// Files in the web chat: sending (the attach button and drag-and-drop, a progress bar per
// upload) and showing attachments (an image's BlurHash placeholder, then its thumbnail,
// the full image on click; video and audio players that stream and seek by HTTP Range;
// a download link for anything else). Uploads, signed URLs and placeholders are
// natter-wasm's (`upload`, `mediaUrl`, `decodeBlurhash`); this file only draws.
import { decodeBlurhash } from "./pkg/index.js";
import { el } from "./dom.js";

export function humanSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// Signed URLs, cached per file and variant until shortly before they expire.
const urls = new Map();
export async function signedUrl(client, mediaId, variant) {
  const key = `${mediaId}/${variant}`;
  const hit = urls.get(key);
  if (hit && hit.expiresMs - 30_000 > Date.now()) return hit.url;
  const u = await client.mediaUrl(mediaId, variant);
  urls.set(key, u);
  return u.url;
}

function placeholder(att, w, h) {
  const canvas = el("canvas", { class: "blurhash", width: 32, height: Math.max(1, Math.round(32 * h / w)) });
  canvas.style.aspectRatio = `${w} / ${h}`;
  try {
    const px = decodeBlurhash(att.blurhash, canvas.width, canvas.height);
    canvas.getContext("2d").putImageData(new ImageData(px, canvas.width, canvas.height), 0, 0);
  } catch { /* no placeholder: the box stays grey */ }
  return canvas;
}

// The image viewer: the original, full size.
async function openViewer(client, att) {
  const viewer = document.getElementById("viewer");
  const img = el("img", { alt: att.name, "data-media": att.mediaId, "data-variant": "original" });
  viewer.replaceChildren(img, el("a", { class: "download", download: att.name, textContent: "Download" }));
  viewer.hidden = false;
  const url = await signedUrl(client, att.mediaId, "original");
  img.src = url;
  viewer.querySelector("a").href = url;
}

function imageAttachment(client, att) {
  const w = att.width || 4, h = att.height || 3;
  const box = el("figure", { class: "att image", "data-media": att.mediaId, "data-state": "placeholder" });
  if (att.blurhash) box.append(placeholder(att, w, h));
  const thumb = att.thumbnails.find((t) => t.variant === "thumb320") ?? att.thumbnails[0];
  const img = el("img", { alt: att.name, "data-variant": thumb ? thumb.variant : "original" });
  img.style.aspectRatio = `${w} / ${h}`;
  img.onload = () => { box.dataset.state = "thumbnail"; box.querySelector(".blurhash")?.remove(); };
  img.onclick = () => openViewer(client, att);
  box.append(img);
  signedUrl(client, att.mediaId, thumb ? thumb.variant : "original").then((u) => { img.src = u; }).catch(() => {});
  return box;
}

function playerAttachment(client, att, tag) {
  const player = el(tag, { controls: true, preload: "metadata", "data-media": att.mediaId });
  const box = el("figure", { class: `att ${tag}`, "data-media": att.mediaId }, player,
    el("figcaption", {}, `${att.name} · ${humanSize(att.size)}`));
  signedUrl(client, att.mediaId, "original").then((u) => { player.src = u; }).catch(() => {});
  return box;
}

function fileAttachment(client, att) {
  const a = el("a", { class: "att file", download: att.name, "data-media": att.mediaId, textContent: `📄 ${att.name} · ${humanSize(att.size)}` });
  signedUrl(client, att.mediaId, "original").then((u) => { a.href = u; }).catch(() => {});
  return a;
}

// The attachments of a message, drawn.
export function renderAttachments(client, attachments) {
  if (!attachments?.length) return null;
  return el("div", { class: "attachments" }, ...attachments.map((att) => {
    if (att.mime.startsWith("image/") && !att.encrypted) return imageAttachment(client, att);
    if (att.mime.startsWith("video/") && !att.encrypted) return playerAttachment(client, att, "video");
    if (att.mime.startsWith("audio/") && !att.encrypted) return playerAttachment(client, att, "audio");
    return fileAttachment(client, att);
  }));
}

// Upload files to a conversation, one progress bar and a pause/resume button each, and
// send them as one message with `text`. Resolves when sent; a failed upload shows its
// error in its row. A paused upload keeps what the server stored and goes on from there.
export async function sendFiles(client, conversationId, files, text, tray) {
  const rows = [...files].map((file) => {
    const bar = el("progress", { max: file.size || 1, value: 0 });
    const pause = el("button", { type: "button", class: "pause", title: "Pause" }, "Pause");
    const row = el("li", { class: "upload", "data-name": file.name, "data-state": "uploading" },
      el("span", { class: "name" }, `${file.name} · ${humanSize(file.size)}`), bar, pause);
    tray.append(row);
    return { file, row, bar, pause };
  });
  tray.hidden = false;
  const done = await Promise.all(rows.map(async ({ file, row, bar, pause }) => {
    const onProgress = (stored, size) => { bar.max = size || 1; bar.value = stored; row.dataset.stored = String(stored); };
    let resume = null;
    pause.addEventListener("click", () => {
      if (row.dataset.state === "paused") { resume?.(); return; }
      // This file's upload: the unfinished one of its name and size that no row holds yet.
      const mine = row.dataset.uploadId ? { uploadId: row.dataset.uploadId }
        : client.pendingUploads().find((p) => p.name === file.name && p.size === file.size && !p.paused
          && !tray.querySelector(`[data-upload-id="${p.uploadId}"]`));
      if (!mine) return;
      row.dataset.uploadId = mine.uploadId;
      client.pauseUpload(mine.uploadId);
    });
    try {
      let media = null;
      let running = client.upload(conversationId, file, { onProgress });
      while (!media) {
        try {
          media = await running;
        } catch (e) {
          if (e.code !== "UPLOAD_PAUSED") throw e;
          row.dataset.state = "paused";
          pause.textContent = "Resume";
          pause.title = "Resume";
          await new Promise((r) => { resume = r; });
          row.dataset.state = "uploading";
          pause.textContent = "Pause";
          pause.title = "Pause";
          running = client.resumeUpload(row.dataset.uploadId, file, { onProgress });
        }
      }
      row.dataset.state = "ready";
      pause.remove();
      return media;
    } catch (e) {
      row.dataset.state = "failed";
      pause.remove();
      row.append(el("span", { class: "error" }, e.message));
      return null;
    }
  }));
  const media = done.filter(Boolean);
  if (media.length) await client.sendFiles(conversationId, text, media);
  for (const { row } of rows) if (row.dataset.state === "ready") row.remove();
  tray.hidden = tray.children.length === 0;
  return media;
}
