#!/usr/bin/env bash
# Run every fuzz target for a while (default 60 s each) from the committed corpus.
# Usage: fuzz/run.sh [seconds] [target…]   Needs the nightly toolchain; installs cargo-fuzz.
# Full logs go to work/<target>.log; a crash prints its panic and the run exits non-zero.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && mapfile -t targets < <(cargo +nightly fuzz list)
status=0
for t in "${targets[@]}"; do
  echo "==> $t ($secs s)"
  # New inputs go to work/<target> (ignored); the committed seeds in corpus/<target> are read.
  mkdir -p "work/$t" "corpus/$t"
  if ! cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- -max_total_time="$secs" > "work/$t.log" 2>&1; then
    grep -A3 -m1 "panicked" "work/$t.log"
    grep -m1 "Test unit written to" "work/$t.log"
    status=1
  fi
  grep -E "^Done [0-9]+ runs" "work/$t.log" | tail -n 1
done
exit $status
