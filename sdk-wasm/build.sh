#!/usr/bin/env bash
# Builds the natter-wasm npm package into sdk-wasm/pkg and copies it to web/pkg for the
# chat page. Needs the wasm32 target and wasm-bindgen-cli at the crate's pinned version
# (scripts/test.sh installs both). Usage: bash sdk-wasm/build.sh [--dev]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile=release
flags=(--release)
if [[ "${1:-}" == "--dev" ]]; then profile=debug; flags=(); fi
cargo build -p natter-wasm --target wasm32-unknown-unknown --locked "${flags[@]}"
out=sdk-wasm/pkg
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name natter_wasm \
  "target/wasm32-unknown-unknown/$profile/natter_wasm.wasm"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
cat > "$out/index.js" <<'JS'
// natter-wasm: `await init()` once, then `NatterClient.connect({ server })`; `Timeline`
// folds a conversation's events into messages; `decodeBlurhash` draws an image's
// placeholder. Adds `for await (const ev of client)` on
// top of the generated bindings.
import init, { NatterClient, Timeline, decodeBlurhash } from "./natter_wasm.js";
NatterClient.prototype[Symbol.asyncIterator] = function () {
  return {
    next: async () => {
      const value = await this.nextEvent();
      return value == null ? { value: undefined, done: true } : { value, done: false };
    },
  };
};
export { NatterClient, Timeline, decodeBlurhash };
export default init;
JS
cat > "$out/index.d.ts" <<'TS'
export * from "./natter_wasm.js";
export { default } from "./natter_wasm.js";
import type { NatterEvent } from "./natter_wasm.js";
declare module "./natter_wasm.js" {
  interface NatterClient { [Symbol.asyncIterator](): AsyncIterator<NatterEvent>; }
}
TS
cat > "$out/package.json" <<JSON
{
  "name": "natter-wasm",
  "version": "$version",
  "description": "natter chat client for browsers (WebTransport, WebSocket fallback)",
  "type": "module",
  "main": "index.js",
  "types": "index.d.ts",
  "files": ["index.js", "index.d.ts", "natter_wasm.js", "natter_wasm.d.ts", "natter_wasm_bg.wasm", "natter_wasm_bg.wasm.d.ts", "snippets"],
  "license": "Apache-2.0"
}
JSON
rm -rf web/pkg
cp -r "$out" web/pkg
echo "natter-wasm package: $out ($(du -h "$out/natter_wasm_bg.wasm" | cut -f1) wasm), copied to web/pkg"
