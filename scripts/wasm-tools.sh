#!/usr/bin/env bash
# Installs what building natter-wasm needs: the wasm32 target and the wasm-bindgen CLI at
# exactly the version sdk-wasm/Cargo.toml pins. Sourced by test.sh and serve.sh.
rustup target add wasm32-unknown-unknown
want="$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' sdk-wasm/Cargo.toml)"
if [[ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]]; then
  # Not --locked: its lockfile names a webpki-roots version the registry no longer has.
  cargo install wasm-bindgen-cli --version "=$want"
fi
