#!/usr/bin/env bash
# Builds natter-ffi and generates its Kotlin, Swift and Python bindings (uniffi library
# mode: the API is read from the built library itself, no UDL).
# Usage: sdk-ffi/bindgen.sh [--release] [out-dir]   (default out-dir: target/ffi-bindings)
# Out: two modules per language — natter_ffi (the client) and natter_protocol (the
#      app-facing model: events, records, codes): <out>/kotlin/uniffi/{natter_ffi,
#      natter_protocol}/*.kt, <out>/swift/{natter_ffi,natter_protocol}{.swift,FFI.h,
#      FFI.modulemap}, <out>/python/{natter_ffi,natter_protocol}.py, and the library next
#      to the Python modules (they load the .so from their own folder).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug flag=()
if [[ "${1:-}" == "--release" ]]; then profile=release flag=(--release); shift; fi
out="${1:-target/ffi-bindings}"
cargo build -p natter-ffi --lib --bin uniffi-bindgen --locked "${flag[@]}"
lib="target/$profile/libnatter_ffi.so"
[[ "$(uname)" == Darwin ]] && lib="target/$profile/libnatter_ffi.dylib"
rm -rf "$out"
for lang in kotlin swift python; do
  "target/$profile/uniffi-bindgen" generate --library "$lib" --language "$lang" --out-dir "$out/$lang" >/dev/null
done
cp "$lib" "$out/python/"
echo "bindings in $out (library: $lib)"
