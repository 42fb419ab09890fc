#!/usr/bin/env bash
# A few seconds of load: Redis, two Switchboard servers, 200 clients over 20 rooms
# at 500 publishes/s. Fails unless every event arrived once and in order.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

cargo build --quiet -p switchboard -p switchboard-loadgen
bin="${CARGO_TARGET_DIR:-target}/debug"
start_redis redis_port
export REDIS_URL="redis://127.0.0.1:$redis_port" RUST_LOG=warn LIMIT_PUBLISH_RATE=0
start_server a a_pid "$bin/switchboard"
start_server b b_pid "$bin/switchboard"
out="$BENCH_TMP/smoke.json"
timeout 60 "$bin/switchboard-loadgen" run --servers "$a,$b" --server-pids "$a_pid,$b_pid" \
  --clients 200 --rooms 20 --rooms-per-client 2 --publishers 4 --workers 2 \
  --rates 300,600 --duration 1.5 --drain 3 --hold 0.2 --out "$out"
grep -q '"sustained":true' "$out" && ! grep -q '"sustained":false' "$out" || {
  echo "loadgen smoke: the run was not clean" >&2
  exit 1
}
echo "loadgen smoke: ok"
