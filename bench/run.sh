#!/usr/bin/env bash
# Runs one natter-bench scenario against a fresh release server: the server pinned to CPU 0,
# the load generator to CPU 1 (taskset), so the two never share a core. Prints the JSON
# report and a summary; the server is stopped afterwards.
# Usage: bench/run.sh <scenario> [scenario options]   e.g. bench/run.sh fanout --users 2000
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p natter-server -p natter-bench
rm -rf target/bench-data
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
out=$(mktemp)
taskset -c 0 target/release/natter-server --config bench/server.toml \
  --web-listen off --webtransport-listen off > "$out" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "certificate sha256" "$out" && break; sleep 0.1; done
fp=$(sed -n 's/^certificate sha256 //p' "$out")
taskset -c 1 target/release/natter-bench --fingerprint "$fp" --server-pid "$server" "$@"
