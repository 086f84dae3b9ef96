#!/usr/bin/env bash
# Run every fuzz target for a while (default 60 s each) from the committed corpus.
# Usage: fuzz/run.sh [seconds]     Needs the nightly toolchain; installs cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in $(cargo +nightly fuzz list); do
  echo "==> $t ($secs s)"
  # New inputs go to work/<target> (ignored); the committed seeds in corpus/<target> are read.
  mkdir -p "work/$t" "corpus/$t"
  cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- -max_total_time="$secs" 2>&1 | tail -n 3
done
