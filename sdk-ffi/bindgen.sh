#!/usr/bin/env bash
# Builds natter-ffi and generates its Kotlin, Swift and Python bindings (uniffi library
# mode: the API is read from the built library itself, no UDL).
# Usage: sdk-ffi/bindgen.sh [--release] [out-dir]   (default out-dir: target/ffi-bindings)
# Out: <out>/kotlin/uniffi/natter_ffi/natter_ffi.kt, <out>/swift/{natter_ffi.swift,
#      natter_ffiFFI.h, natter_ffiFFI.modulemap}, <out>/python/natter_ffi.py, and the
#      library next to the Python module (it loads the .so from its own folder).
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
