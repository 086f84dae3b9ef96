#!/usr/bin/env bash
# Runs one natter-bench scenario against a fresh release server: the server pinned to CPU 0,
# the load generator to CPU 1 (taskset), so the two never share a core. Prints the JSON
# report and a summary; the server is stopped afterwards.
# Usage: bench/run.sh <scenario> [scenario options]   e.g. bench/run.sh fanout --users 2000
#        PERF=1 bench/run.sh …   also samples the server with perf and prints the top of the profile
#        HEAPTRACK=1 bench/run.sh …   runs the server (built on glibc's allocator, which heaptrack
#                                     can hook) under heaptrack (Debian's) and prints where
#                                     the memory it held at its peak was allocated (the report's
#                                     CPU and RSS figures are then heaptrack's, not natter's)
#        EXISTING_USERS=1 bench/run.sh connections --connections N …   registers the N users on a
#                                     first server, restarts it on the same store, and holds
#                                     connections of those users: the memory per connection
#                                     then leaves out what registering them cost
#        STORAGE=redis bench/run.sh …   the server on a fresh redis-server (appendfsync always,
#                                       on CPU 0 with the server) instead of sled
set -euo pipefail
cd "$(dirname "$0")/.."
# heaptrack hooks malloc: the server then keeps glibc's allocator (mimalloc bypasses it).
features=()
[[ -n "${HEAPTRACK:-}" ]] && features=(--features natter-server/system-alloc)
cargo build --release --locked -p natter-server -p natter-bench "${features[@]}"
rm -rf target/bench-data
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
out=$(mktemp)
storage=()
redis=""
if [[ "${STORAGE:-sled}" == redis ]]; then
  mkdir -p target/bench-data/redis
  (cd target/bench-data/redis && exec taskset -c 0 redis-server --bind 127.0.0.1 --port 6399 --save "" \
    --appendonly yes --appendfsync always > redis.log) &
  redis=$!
  for _ in $(seq 100); do redis-cli -p 6399 ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  storage=(--storage redis --redis redis://127.0.0.1:6399)
fi
# The web endpoint only for the media scenario (its curl comparison goes through it).
web=(--web-listen off)
extra=()
for a in "$@"; do
  if [[ "$a" == media ]]; then
    web=(--web-listen 127.0.0.1:18080)
    extra=(--web http://127.0.0.1:18080)
  fi
done
# The push scenario's push service is a sink on loopback: admitted by the test-only switch.
config=bench/server.toml
for a in "$@"; do
  if [[ "$a" == push ]]; then
    config=target/bench-push.toml
    { echo "push_allow_loopback_endpoints = true"; cat bench/server.toml; } > "$config"
  fi
done
# The api scenario: the web endpoint, and a write key made on the fresh store before start.
for a in "$@"; do
  if [[ "$a" == api ]]; then
    web=(--web-listen 127.0.0.1:18080)
    key=$(target/release/natter-server --config "$config" "${storage[@]}" api-key create --name bench --scope write \
      | sed -n 's/.*"secret":"\([^"]*\)".*/\1/p')
    extra=(--web http://127.0.0.1:18080 --api-key "$key")
  fi
done
# SEARCH=off: the same server without its search index (to measure what indexing costs).
if [[ "${SEARCH:-on}" == off ]]; then
  { echo "search_enabled = false"; cat "$config"; } > target/bench-nosearch.toml
  config=target/bench-nosearch.toml
fi
# EXISTING_USERS=1: the users of a connections run are registered on a server of their
# own first, which is then stopped; the measured server starts on that store.
bench_args=("$@")
if [[ -n "${EXISTING_USERS:-}" ]]; then
  n=10000
  for ((i = 1; i < $#; i++)); do [[ "${!i}" == --connections ]] && { j=$((i + 1)); n=${!j}; }; done
  pre=$(mktemp)
  taskset -c 0 target/release/natter-server --config "$config" --web-listen off --webtransport-listen off \
    "${storage[@]}" > "$pre" &
  setup=$!
  trap 'kill "$setup" 2>/dev/null; wait "$setup" 2>/dev/null' EXIT
  for _ in $(seq 100); do grep -q "certificate sha256" "$pre" && break; sleep 0.1; done
  setup_fp=$(sed -n 's/^certificate sha256 //p' "$pre")
  [[ -n "$setup_fp" ]] || { cat "$pre"; echo "the registering server did not start" >&2; exit 1; }
  taskset -c 1 target/release/natter-bench --fingerprint "$setup_fp" \
    --server-pid "$setup" register --users "$n" --prefix pre > /dev/null
  kill "$setup"; wait "$setup" 2>/dev/null || true
  trap - EXIT
  rm -f "$pre"
  bench_args+=(--existing pre)
fi
wrap=()
[[ -n "${HEAPTRACK:-}" ]] && wrap=(heaptrack -o target/bench-heap)
taskset -c 0 "${wrap[@]}" target/release/natter-server --config "$config" \
  "${web[@]}" --webtransport-listen off "${storage[@]}" > "$out" &
server=$!
stop() {
  pkill -P "$server" 2>/dev/null || true # under heaptrack the server is the wrapper's child
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
  if [[ -n "$redis" ]]; then
    echo "redis-server CPU: $(ps -o times= -p "$redis" | tr -d ' ') s"
    kill "$redis" 2>/dev/null; wait "$redis" 2>/dev/null
  fi
  rm -f "$out"
}
trap stop EXIT
if [[ -n "${HEAPTRACK:-}" ]]; then
  trap 'stop; heaptrack_print -f target/bench-heap.*zst --print-peaks 1 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 --peak-limit 25 2>/dev/null | head -150' EXIT
fi
for _ in $(seq 100); do grep -q "certificate sha256" "$out" && break; sleep 0.1; done
fp=$(sed -n 's/^certificate sha256 //p' "$out")
if [[ -n "${PERF:-}" ]]; then
  # Sample the server's stacks during the run (software clock: this VM has no PMU).
  perf record -e cpu-clock -F 999 -g -p "$server" -o target/bench-perf.data > /dev/null 2>&1 &
  perf_pid=$!
fi
taskset -c 1 target/release/natter-bench --fingerprint "$fp" --server-pid "$server" "${bench_args[@]}" "${extra[@]}"
if [[ -n "${PERF:-}" ]]; then
  kill -INT "$perf_pid"; wait "$perf_pid" || true
  perf report -i target/bench-perf.data --stdio --no-children --percent-limit 1.5 2>/dev/null \
    | grep -v '^$' | head -80
fi
