#!/usr/bin/env bash
# Runs the natter server on its embedded default (sled in ./data, generated development
# certificates) with the web chat: builds the natter-wasm package first (installing the
# wasm32 target and the pinned wasm-bindgen CLI if needed). Extra arguments go to
# natter-server (see --help). Usage: ./scripts/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/wasm-tools.sh
bash sdk-wasm/build.sh
exec cargo run --release --locked -p natter-server -- "$@"
