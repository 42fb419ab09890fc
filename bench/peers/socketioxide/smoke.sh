#!/usr/bin/env bash
# A few seconds of light load on the socketioxide peer, driven as scripts/bench.sh
# drives the Socket.IO peer (two nodes on one Redis, --protocol socketio), and on the
# Socket.IO peer beside it when its node_modules are installed (`npm ci` in
# bench/peers/socketio). Fails unless every event arrived once and in order.
#
#   bench/peers/socketioxide/smoke.sh                 # 300 and 600 publishes/s
#   SMOKE_RATES=1000,2000 bench/peers/socketioxide/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
source bench/lib.sh

cargo build --release --quiet -p switchboard-loadgen
loadgen="${CARGO_TARGET_DIR:-target}/release/switchboard-loadgen"
bench/peers/socketioxide/run.sh --build
systems=(socketioxide)
[ -d bench/peers/socketio/node_modules ] && systems+=(socketio)

export RUST_LOG=warn
failed=0
for system in "${systems[@]}"; do
  if [ "$system" = socketioxide ]; then
    node_cmd=(bench/peers/socketioxide/run.sh)
  else
    node_cmd=(node bench/peers/socketio/server.js)
  fi
  start_redis redis_port
  start_server a a_pid env REDIS_URL="redis://127.0.0.1:$redis_port" "${node_cmd[@]}"
  start_server b b_pid env REDIS_URL="redis://127.0.0.1:$redis_port" "${node_cmd[@]}"
  echo "== $system: $a $b (redis $redis_port)"
  out="$BENCH_TMP/smoke-$system.json"
  timeout 120 "$loadgen" run --protocol socketio --servers "$a,$b" --server-pids "$a_pid,$b_pid" \
    --label "$system" --room-prefix smoke --clients 200 --rooms 20 --rooms-per-client 2 \
    --publishers 4 --workers 2 --rates "${SMOKE_RATES:-300,600}" --duration 1.5 --drain 3 \
    --hold 0.2 --out "$out"
  if ! grep -q '"sustained": true' "$out" || grep -q '"sustained": false' "$out"; then
    echo "smoke: $system: the run was not clean" >&2
    failed=1
  fi
  stop_pid "$a_pid"
  stop_pid "$b_pid"
done
[ "$failed" = 0 ] && echo "smoke: ok (${systems[*]})"
exit "$failed"
