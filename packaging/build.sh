#!/usr/bin/env bash
# The release build for shipping, without Docker: the steps packaging/Dockerfile runs.
# Builds natter-server in the `dist` profile (LTO, one codegen unit, stripped), the web
# chat's WASM package, and lays them out in OUT (default target/package):
#   OUT/natter-server, OUT/web/ (the chat page with web/pkg), OUT/natter.service
# and prints the binary's size (docs/OPERATIONS.md records it).
# Usage: bash packaging/build.sh [OUT]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-target/package}"
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
source scripts/wasm-tools.sh
cargo build --locked --profile dist -p natter-server
bash sdk-wasm/build.sh >/dev/null
rm -rf "$out"
install -D -m 0755 target/dist/natter-server "$out/natter-server"
mkdir -p "$out/web"
cp -r web/index.html web/*.js web/*.css web/pkg "$out/web/"
install -m 0644 packaging/natter.service "$out/natter.service"
echo "natter-server $(du -b "$out/natter-server" | cut -f1) bytes ($(du -h "$out/natter-server" | cut -f1)), in $out"
