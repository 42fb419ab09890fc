#!/usr/bin/env bash
# Starts one node of the socketioxide peer the way bench/lib.sh's start_server starts
# `node bench/peers/socketio/server.js`: no arguments, env PORT (0 picks a free port)
# and REDIS_URL; prints "switchboard listening on http://127.0.0.1:PORT" when ready.
# It builds the release binary first (a second or so when up to date) and then execs
# it, so the PID that start_server records is the server's.
#
#   bench/peers/socketioxide/run.sh           # build if needed, run one node
#   bench/peers/socketioxide/run.sh --build   # only build (do this before start_server:
#                                             # a first build takes minutes, more than
#                                             # start_server's 30 s deadline)
#
# Target dir: $SIOXIDE_TARGET_DIR, default bench/peers/socketioxide/target.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${SIOXIDE_TARGET_DIR:-$here/target}"
# Cargo's own output goes to stderr: stdout carries only the ready line.
CARGO_TARGET_DIR="$target" cargo build --release --locked --quiet \
  --manifest-path "$here/Cargo.toml" >&2
if [ "${1:-}" = --build ]; then
  exit 0
fi
exec "$target/release/switchboard-bench-socketioxide"
