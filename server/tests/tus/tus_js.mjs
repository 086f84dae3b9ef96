// Uploads a file to natter's tus endpoint with tus-js-client (npm), the way a web app
// would, and is interrupted once: the first upload is aborted after its first PATCH, and a
// second Upload resumes it from the server's offset (HEAD) with the URL the first got.
// Usage: node tus_js.mjs <endpoint> <access token> <conversation id> <file> <chunk bytes>
// Prints one JSON line: { url, firstOffset, resumedFrom, offset }.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../../../web/tests/package.json", import.meta.url));
const tus = require("tus-js-client");

const [endpoint, token, conversation, path, chunk] = process.argv.slice(2);
const data = readFileSync(path);
const common = {
  headers: { Authorization: `Bearer ${token}` },
  metadata: { conversation, filename: "tus-js.bin", filetype: "application/octet-stream" },
  chunkSize: Number(chunk),
  retryDelays: [],
  storeFingerprintForResuming: false,
};

function run(options) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      ...common,
      ...options,
      onError: reject,
      onSuccess: () => resolve({ upload, done: true }),
      onChunkComplete: (size, sent) => {
        if (options.stopAfterFirst) {
          upload.abort().then(() => resolve({ upload, done: false, sent }));
        }
      },
    });
    upload.start();
  });
}

const first = await run({ endpoint, stopAfterFirst: true });
let resumedFrom = null;
const second = await run({
  endpoint,
  uploadUrl: first.upload.url,
  onProgress: (sent) => {
    if (resumedFrom === null) resumedFrom = sent;
  },
});
console.log(JSON.stringify({ url: first.upload.url, firstOffset: first.sent, resumedFrom, done: second.done }));
