#!/usr/bin/env bash
# The standard benchmark (issue 3), end to end on this machine: builds release
# binaries, installs the Socket.IO peer (npm), starts Redis and two servers of each
# kind, runs scenarios 1-4 and writes docs/benchmarks.md and its chart. Every
# process it starts is killed on exit.
#
# Each run keeps its raw results in bench/results/RUN/ (RUN is the UTC start time):
# compact JSON, one file per scenario and system, and manifest.json (command, commit,
# machine). Commit that folder with the page: docs/benchmarks.md is generated from
# it alone and names it. Console logs go to bench/results/RUN/log/ (not committed).
#
#   scripts/bench.sh                    # the full run (about 15 minutes)
#   BENCH_DURATION=5 scripts/bench.sh   # shorter phases
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

duration="${BENCH_DURATION:-10}"
ramp_secs="${BENCH_RAMP_DURATION:-5}"
run_id="${BENCH_RUN:-$(date -u +%Y-%m-%dT%H%MZ)}"
results="bench/results/$run_id"
logs="$results/log"
if [ -e "$results" ]; then
  echo "bench: $results exists; set BENCH_RUN to another name" >&2
  exit 1
fi
mkdir -p "$logs"
bench_command="scripts/bench.sh $* (BENCH_DURATION=$duration, BENCH_RAMP_DURATION=$ramp_secs)"

echo "== build (release)"
cargo build --release -p switchboard -p switchboard-loadgen
bin="${CARGO_TARGET_DIR:-target}/release"
loadgen="$bin/switchboard-loadgen"

echo "== Socket.IO peer (npm)"
(cd bench/peers/socketio && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
node bench/manifest.js "$run_id" "$bench_command" >"$results/manifest.json"

export RUST_LOG=warn LIMIT_PUBLISH_RATE=0 LIMIT_PUBLISH_BURST=1000000

start_switchboards() {
  start_server sb_a sb_a_pid env REDIS_URL="redis://127.0.0.1:$sb_redis" "$bin/switchboard"
  start_server sb_b sb_b_pid env REDIS_URL="redis://127.0.0.1:$sb_redis" "$bin/switchboard"
}
start_socketios() {
  start_server io_a io_a_pid env REDIS_URL="redis://127.0.0.1:$io_redis" node bench/peers/socketio/server.js
  start_server io_b io_b_pid env REDIS_URL="redis://127.0.0.1:$io_redis" node bench/peers/socketio/server.js
}
stop_all_servers() {
  for pid in "$sb_a_pid" "$sb_b_pid" "$io_a_pid" "$io_b_pid"; do stop_pid "$pid"; done
}

start_redis sb_redis
start_redis io_redis
start_switchboards
start_socketios
echo "switchboard: $sb_a $sb_b (redis $sb_redis); socket.io: $io_a $io_b (redis $io_redis)"

# run NAME SYSTEM FLAGS..: one loadgen run against both servers of SYSTEM.
run() {
  local name="$1" system="$2"
  shift 2
  local servers pids protocol
  if [ "$system" = switchboard ]; then
    servers="$sb_a,$sb_b" pids="$sb_a_pid,$sb_b_pid" protocol=switchboard
  else
    servers="$io_a,$io_b" pids="$io_a_pid,$io_b_pid" protocol=socketio
  fi
  echo "== $name ($system)"
  timeout 900 "$loadgen" run --protocol "$protocol" --servers "$servers" --server-pids "$pids" \
    --label "$system" --room-prefix "$name" --out "$results/$name-$system.json" "$@" \
    | tee "$logs/$name-$system.txt"
}

for system in switchboard socketio; do
  run s1-latency "$system" --clients 1000 --rooms 100 --publishers 10 --workers 2 \
    --rates 1000,5000,10000 --duration "$duration" --drain 5
  run s2-fanout-1000 "$system" --clients 1000 --rooms 1 --publishers 2 --workers 2 \
    --ramp 20,1.25,21 --duration "$ramp_secs" --drain 3
  run s2-fanout-5000 "$system" --clients 5000 --rooms 1 --publishers 2 --workers 2 \
    --ramp 4,1.25,18 --duration "$ramp_secs" --drain 3
done

echo "== scenario 3: fresh servers, 20,000 idle subscribed connections"
stop_all_servers
start_switchboards
start_socketios
idle_flags=(--clients 20000 --rooms 1000 --publishers 0 --workers 2 --hold 5 --connect-concurrency 100)
run s3-idle switchboard "${idle_flags[@]}"
run s3-idle socketio "${idle_flags[@]}"
stop_all_servers
start_server bare_a bare_a_pid "$bin/switchboard-bare-ws"
start_server bare_b bare_b_pid "$bin/switchboard-bare-ws"
echo "== s3-idle (bare actix-web-actors floor)"
timeout 600 "$loadgen" run --servers "$bare_a,$bare_b" --server-pids "$bare_a_pid,$bare_b_pid" \
  --label bare-actix --room-prefix s3-idle --out "$results/s3-idle-bare.json" "${idle_flags[@]}" \
  | tee "$logs/s3-idle-bare.txt"
stop_pid "$bare_a_pid"
stop_pid "$bare_b_pid"

echo "== scenario 4: publish path into Redis, beside redis-benchmark"
timeout 120 "$loadgen" publish-path --redis-url "redis://127.0.0.1:$sb_redis" --duration 5 \
  --concurrency 1024 --out "$results/s4-publish-path.json"
redis_bench_cmd=(redis-benchmark -p "$sb_redis" -n 200000 -P 16 -q PUBLISH ch hello)
timeout 120 "${redis_bench_cmd[@]}" | tr '\r' '\n' | tee "$logs/s4-redis-benchmark.txt"
rps="$(grep -a -o '[0-9.]* requests per second' "$logs/s4-redis-benchmark.txt" | tail -1 | cut -d' ' -f1)"
if [ -z "$rps" ]; then
  echo "bench: no requests-per-second figure from redis-benchmark" >&2
  exit 1
fi
printf '{"command":"%s","requests_per_s":%s}\n' "${redis_bench_cmd[*]}" "$rps" \
  >"$results/s4-redis-benchmark.json"

echo "== chart and docs/benchmarks.md"
"$loadgen" chart --out docs/benchmarks-latency.svg \
  "$results/s2-fanout-1000-switchboard.json" "$results/s2-fanout-1000-socketio.json"
node bench/summarize.js "$results" >"$logs/benchmarks.md"
mv "$logs/benchmarks.md" docs/benchmarks.md
echo "bench: wrote docs/benchmarks.md from $results; commit both"
