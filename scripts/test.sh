#!/usr/bin/env bash
# Runs every natter test on a fresh machine: installs what the suite needs, then checks
# formatting, lints, the wasm32 build of natter-protocol, and the whole test suite.
# Usage: ./scripts/test.sh      (the README's test command; .ci/run calls it)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: rustfmt, clippy, wasm32-unknown-unknown"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-unknown-unknown

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "natter-protocol builds for wasm32-unknown-unknown"
cargo build -p natter-protocol --target wasm32-unknown-unknown --locked

step "tests (unit, store suite, spec vectors, end-to-end over QUIC on loopback)"
cargo build --workspace --bins --locked
log=$(mktemp)
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "\nnatter: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
