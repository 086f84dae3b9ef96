#!/usr/bin/env bash
# natter side by side with NATS and Mosquitto (issue 21): one scenario, the same load, each
# server in turn pinned to CPU 0 and the generator to CPU 1, repeated (natter, NATS,
# Mosquitto, natter, …) so the three share the machine's moods; then the medians and the
# spread, one row per system. JSON of every run in target/compare/<time>-<scenario>/.
# Usage: bench/compare.sh fanout --users 100 --group-size 100 --senders 1 --rate 100 --secs 15 [--repeats 3]
#        bench/compare.sh connections --connections 5000 --probes 200 --idle-secs 10 [--repeats 3]
# natter runs with durability and TLS (bench/server.toml); NATS core and Mosquitto (QoS 0)
# run as brokers usually do: in memory, plain TCP.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: bench/compare.sh fanout|connections [options] [--repeats N]}
shift
repeats=3
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repeats) repeats=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
# Options only natter's client side has (how many clients share a UDP socket, logins in flight).
peer_args=()
skip=0
for a in "${args[@]}"; do
  if ((skip)); then skip=0; continue; fi
  case "$a" in --per-socket|--parallel) skip=1 ;; *) peer_args+=("$a") ;; esac
done
if ! command -v nats-server >/dev/null || ! command -v mosquitto >/dev/null; then
  sudo=""; [[ "$(id -u)" != 0 ]] && sudo="sudo -n"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nats-server mosquitto >/dev/null
fi
cargo build --release --locked -p natter-server -p natter-bench
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
out="target/compare/$(date +%Y%m%d-%H%M%S)-$scenario"
mkdir -p "$out"

# Run one peer broker on CPU 0 and the generator against it on CPU 1.
peer() { # peer <name> <json> <command…>
  local name=$1 json=$2 port
  shift 2
  case "$name" in nats) port=4222 ;; mqtt) port=1883 ;; esac
  taskset -c 0 "$@" > "$out/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 target/release/natter-bench --server-pid "$pid" --json "$json" \
    "peer-$scenario" --broker "$name" "${peer_args[@]}" > /dev/null || echo "$name run failed (see $json)"
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

for i in $(seq "$repeats"); do
  echo "== run $i of $repeats: natter" >&2
  bench/run.sh --json "$out/natter-$i.json" "$scenario" "${args[@]}" > /dev/null || echo "natter run $i failed"
  echo "== run $i of $repeats: NATS" >&2
  peer nats "$out/nats-$i.json" nats-server -a 127.0.0.1 -p 4222
  echo "== run $i of $repeats: Mosquitto" >&2
  peer mqtt "$out/mqtt-$i.json" mosquitto -c bench/mosquitto.conf
done

python3 - "$out" "$scenario" <<'EOF'
import json, pathlib, statistics, sys
out, scenario = pathlib.Path(sys.argv[1]), sys.argv[2]
def stat(xs):
    xs = [x for x in xs if x is not None]
    if not xs: return "—"
    m = statistics.median(xs)
    return f"{m:,.1f} ({min(xs):,.1f}–{max(xs):,.1f})" if len(xs) > 1 else f"{m:,.1f}"
cols = {
    "fanout": [("delivered/s", lambda r: r["delivered_per_sec"]),
               ("p50 ms", lambda r: r["latency"]["p50_ms"]),
               ("p99 ms", lambda r: r["latency"]["p99_ms"]),
               ("p999 ms", lambda r: r["latency"]["p999_ms"]),
               ("server % core", lambda r: 100 * r["server_cpu_share"]),
               ("server µs/delivery", lambda r: 1e6 * r["server_cpu_secs"] / max(r["delivered"], 1)),
               ("generator % core", lambda r: 100 * r["client_cpu_share"]),
               ("lost+dup", lambda r: r["lost"] + r["duplicates"])],
    "connections": [("held", lambda r: r["extra"]["connections_held"]),
                    ("KiB/connection", lambda r: r["extra"]["server_bytes_per_connection"] / 1024),
                    ("idle % core", lambda r: 100 * r["extra"]["server_idle_cpu_share"]),
                    ("probe p50 ms", lambda r: r["latency"]["p50_ms"]),
                    ("probe p99 ms", lambda r: r["latency"]["p99_ms"]),
                    ("lost+dup", lambda r: r["lost"] + r["duplicates"])],
}[scenario]
print(f"\n{scenario}: medians of {out.name} (min–max)\n")
print("| system | " + " | ".join(c for c, _ in cols) + " |")
print("|---|" + "---|" * len(cols))
for system, label in [("natter", "natter (durable, TLS, QUIC)"), ("nats", "NATS (nats-server)"), ("mqtt", "Mosquitto (QoS 0)")]:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{system}-*.json"))]
    if not runs:
        print(f"| {label} | " + " | ".join("—" for _ in cols) + " |"); continue
    vals = []
    for _, f in cols:
        try: vals.append(stat([f(r) for r in runs]))
        except (KeyError, TypeError): vals.append("—")
    print(f"| {label} ({len(runs)} runs) | " + " | ".join(vals) + " |")
EOF
