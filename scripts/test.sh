#!/usr/bin/env bash
# The whole suite: installs redis-server when it is missing (Debian), then the
# format check, clippy with warnings as errors, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests start real redis-server processes (some with TLS, certificates made
# with the openssl CLI).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# tests/cluster.rs makes six of them a cluster with redis-cli (Debian's redis-tools).
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The server's allocator (tikv-jemallocator) builds jemalloc with make.
command -v make >/dev/null 2>&1 || missing+=(make)
# The browser tests (tests/console.rs) drive Debian's chromium, headless, from Node.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# tests/metrics.rs checks a live scrape with promtool, from Debian's prometheus package.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]} (apt-get)"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get install -y "${missing[@]}" >/dev/null 2>&1 || {
    $sudo_cmd apt-get update >/dev/null
    $sudo_cmd apt-get install -y "${missing[@]}" >/dev/null
  }
fi
redis-server --version
# The browser tests' Node packages, as pinned by tests/browser/package-lock.json.
if [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  echo "== npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund >/dev/null)
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace --all-targets -- --test-threads "${TEST_THREADS:-4}"

echo "== cargo test --doc (the README's Rust examples included)"
cargo test --workspace --doc

echo "== loadgen smoke (a few seconds of load on two servers)"
bash bench/smoke.sh
