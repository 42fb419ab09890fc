#!/usr/bin/env bash
# The standard benchmark (issue 3), end to end on this machine: builds release
# binaries (and the socketioxide peer, bench/peers/socketioxide), installs the
# Socket.IO peer (npm), starts Redis and two servers of each kind (Switchboard,
# Socket.IO, socketioxide; each kind on its own Redis), runs scenarios 1-4 and writes
# docs/benchmarks.md and its chart. Every process it starts is killed on exit.
#
# Each run keeps its raw results in bench/results/RUN/ (RUN is the UTC start time):
# compact JSON, one file per scenario and system, and manifest.json (command, commit,
# machine). Commit that folder with the page: docs/benchmarks.md is generated from
# it alone and names it. Console logs go to bench/results/RUN/log/ (not committed).
#
# Durable rooms (issue 9) run in the same run, after scenarios 1-4: Switchboard alone,
# on a Redis of their own, servers started with DURABLE_ROOMS=dur:* (rooms `dur:NAME`
# durable, every other room plain): D1 the publish path (scenario 4) into a plain and
# a durable room; D2 scenario 1's shape at 2,000 publishes/s in plain rooms, then in
# durable rooms, on the same servers; D3 the catch-up after a blip (1,000 subscribers,
# 1,000 events published while their server's Redis link is cut through a
# `switchboard-loadgen proxy`), set against scenario 2's ceiling on the page; D4 the
# recovery storm (5,000 clients back at once with `since`, 100 events missed each).
# Results: d1-publish-path-{plain,durable}.json, d2-latency-{plain,durable}.json,
# d3-catch-up.json, d4-storm.json. The page's "Durable rooms" section is made from
# them (with s2-fanout-1000-switchboard.json).
#
# Presence runs after them, also Switchboard alone on a Redis of its own, servers
# started with PRESENCE_ROOMS=pres:* : P1, PRESENCE_MEMBERS (5,000) members join one
# presence room over both servers (each reading the join frames of those after it),
# then 50 rounds, one read at a time and the servers in turn, each timed: a WebSocket
# `presence` (the whole member list), a `presence_count` and a `GET /presence/ROOM`;
# then every member leaves at once. Result: p1-presence.json; the page's "Presence"
# section is made from it when the run has it.
#
# The soak (issue 8, item 16) is off unless asked for: two Switchboard servers on one
# Redis, 1,000 subscribers in 50 rooms, 1,000 events/s, each server's RSS sampled from
# /proc every minute, the growth after the warm-up fitted by least squares, and a
# chart (bench/results/RUN/soak-switchboard.json and soak-rss.svg).
#
#   scripts/bench.sh                    # the full run (about 15 minutes before the
#                                       # socketioxide peer was added; longer now)
#   BENCH_DURATION=5 scripts/bench.sh   # shorter phases
#   scripts/bench.sh --soak             # the full run, then an hour's soak
#   SOAK_MINUTES=90 scripts/bench.sh    # the same, with a soak of 90 minutes
#   scripts/bench.sh --soak-only        # the soak alone (docs/benchmarks.md untouched)
#   SOAK_MINUTES=2 SOAK_WARMUP_MINUTES=0.5 SOAK_SAMPLE_SECONDS=10 scripts/bench.sh --soak-only
#   BENCH_ONLY=durable scripts/bench.sh # the durable-room scenarios alone, about two
#                                       # minutes (docs/benchmarks.md untouched: the
#                                       # page comes from a full run only)
#   BENCH_ONLY=durable BENCH_DURATION=3 DURABLE_STORM_CLIENTS=1000 scripts/bench.sh
#                                       # a quick trial of them
#   BENCH_ONLY=presence scripts/bench.sh                      # P1 alone (page untouched)
#   BENCH_ONLY=presence PRESENCE_MEMBERS=500 scripts/bench.sh # a quick trial of it
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
soak_minutes="${SOAK_MINUTES:-}"
soak_warmup="${SOAK_WARMUP_MINUTES:-5}"
soak_every="${SOAK_SAMPLE_SECONDS:-60}"
standard=1
durable=1
presence=1
case "${BENCH_ONLY:-}" in
  "") ;;
  durable) standard=0 presence=0 ;;
  presence) standard=0 durable=0 ;;
  *) echo "bench: BENCH_ONLY is durable, presence or unset" >&2; exit 2 ;;
esac
storm_clients="${DURABLE_STORM_CLIENTS:-5000}"
presence_members="${PRESENCE_MEMBERS:-5000}"
for arg in "$@"; do
  case "$arg" in
    --soak) soak_minutes="${soak_minutes:-60}" ;;
    --soak-only) soak_minutes="${soak_minutes:-60}" standard=0 durable=0 presence=0 ;;
    *) echo "usage: scripts/bench.sh [--soak | --soak-only]" >&2; exit 2 ;;
  esac
done
bench_command="scripts/bench.sh $* (BENCH_DURATION=$duration, BENCH_RAMP_DURATION=$ramp_secs"
if [ -n "${BENCH_ONLY:-}" ]; then bench_command+=", BENCH_ONLY=$BENCH_ONLY"; fi
if [ "$durable" = 1 ]; then bench_command+=", DURABLE_STORM_CLIENTS=$storm_clients"; fi
if [ "$presence" = 1 ]; then bench_command+=", PRESENCE_MEMBERS=$presence_members"; fi
if [ -n "$soak_minutes" ]; then
  bench_command+=", SOAK_MINUTES=$soak_minutes, SOAK_WARMUP_MINUTES=$soak_warmup"
  bench_command+=", SOAK_SAMPLE_SECONDS=$soak_every"
fi
bench_command+=")"

echo "== build (release)"
cargo build --release -p switchboard -p switchboard-loadgen
bin="${CARGO_TARGET_DIR:-target}/release"
loadgen="$bin/switchboard-loadgen"

if [ "$standard" = 1 ]; then
  # Built here, not by start_server: a first build takes minutes, past its 30 s deadline.
  # Target dir: $SIOXIDE_TARGET_DIR (default bench/peers/socketioxide/target).
  echo "== socketioxide peer (release)"
  bench/peers/socketioxide/run.sh --build
  echo "== Socket.IO peer (npm)"
  (cd bench/peers/socketio && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
fi
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
# run.sh execs the binary, so the PID start_server records is the server's.
start_socketioxides() {
  start_server ox_a ox_a_pid env REDIS_URL="redis://127.0.0.1:$ox_redis" bench/peers/socketioxide/run.sh
  start_server ox_b ox_b_pid env REDIS_URL="redis://127.0.0.1:$ox_redis" bench/peers/socketioxide/run.sh
}
stop_all_servers() {
  for pid in "$sb_a_pid" "$sb_b_pid" "$io_a_pid" "$io_b_pid" "$ox_a_pid" "$ox_b_pid"; do
    stop_pid "$pid"
  done
}

# Scenarios 1-4: Switchboard, Socket.IO and socketioxide side by side, and the bare
# actix floor.
standard_scenarios() {
  start_redis sb_redis
  start_redis io_redis
  start_redis ox_redis
  start_switchboards
  start_socketios
  start_socketioxides
  echo "switchboard: $sb_a $sb_b (redis $sb_redis); socket.io: $io_a $io_b (redis $io_redis);" \
    "socketioxide: $ox_a $ox_b (redis $ox_redis)"

  # run NAME SYSTEM FLAGS..: one loadgen run against both servers of SYSTEM.
  run() {
    local name="$1" system="$2"
    shift 2
    local servers pids protocol
    case "$system" in
      switchboard) servers="$sb_a,$sb_b" pids="$sb_a_pid,$sb_b_pid" protocol=switchboard ;;
      socketio) servers="$io_a,$io_b" pids="$io_a_pid,$io_b_pid" protocol=socketio ;;
      socketioxide) servers="$ox_a,$ox_b" pids="$ox_a_pid,$ox_b_pid" protocol=socketio ;;
      *) echo "bench: unknown system $system" >&2; return 1 ;;
    esac
    echo "== $name ($system)"
    timeout 900 "$loadgen" run --protocol "$protocol" --servers "$servers" --server-pids "$pids" \
      --label "$system" --room-prefix "$name" --out "$results/$name-$system.json" "$@" \
      | tee "$logs/$name-$system.txt"
  }

  for system in switchboard socketio socketioxide; do
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
  start_socketioxides
  idle_flags=(--clients 20000 --rooms 1000 --publishers 0 --workers 2 --hold 5 --connect-concurrency 100)
  run s3-idle switchboard "${idle_flags[@]}"
  run s3-idle socketio "${idle_flags[@]}"
  run s3-idle socketioxide "${idle_flags[@]}"
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
}

# Durable rooms (issue 9): D1-D4 on a Redis and servers of their own.
durable_scenarios() {
  local durable_env=(DURABLE_ROOMS='dur:*')
  start_redis dur_redis
  start_server dur_a dur_a_pid env REDIS_URL="redis://127.0.0.1:$dur_redis" "${durable_env[@]}" "$bin/switchboard"
  start_server dur_b dur_b_pid env REDIS_URL="redis://127.0.0.1:$dur_redis" "${durable_env[@]}" "$bin/switchboard"
  echo "durable rooms: switchboard $dur_a $dur_b (redis $dur_redis, DURABLE_ROOMS=dur:*)"

  echo "== D1: publish path into a plain room, then into a durable one"
  timeout 120 "$loadgen" publish-path --redis-url "redis://127.0.0.1:$dur_redis" --duration 5 \
    --concurrency 1024 --room d1-plain --out "$results/d1-publish-path-plain.json"
  timeout 120 "$loadgen" publish-path --redis-url "redis://127.0.0.1:$dur_redis" --duration 5 \
    --concurrency 1024 --room dur:d1 --durable --out "$results/d1-publish-path-durable.json"

  # Scenario 1's flags at 2,000/s; plain rooms first, then durable ones.
  local kind prefix
  for kind in plain durable; do
    prefix=d2-plain
    if [ "$kind" = durable ]; then prefix=dur:d2; fi
    echo "== D2: latency at 2,000 publishes/s, $kind rooms"
    timeout 300 "$loadgen" run --servers "$dur_a,$dur_b" --server-pids "$dur_a_pid,$dur_b_pid" \
      --label "switchboard-$kind" --room-prefix "$prefix" --clients 1000 --rooms 100 \
      --publishers 10 --workers 2 --rates 2000 --duration "$duration" --drain 5 \
      --out "$results/d2-latency-$kind.json" | tee "$logs/d2-latency-$kind.txt"
  done

  echo "== D4: recovery storm, $storm_clients clients back at once with since"
  timeout 300 "$loadgen" storm --servers "$dur_a,$dur_b" --clients "$storm_clients" --rooms 5 \
    --room-prefix dur:d4 --missed 100 --live-every-ms 100 --timeout 120 \
    --out "$results/d4-storm.json" | tee "$logs/d4-storm.txt"

  # The subscribers' server reaches Redis through the proxy, which the loadgen cuts.
  echo "== D3: catch-up after a blip, 1,000 subscribers, 1,000 events missed"
  stop_pid "$dur_b_pid"
  start_proxy dur_proxy dur_proxy_pid "$loadgen" "$dur_redis"
  start_server dur_c dur_c_pid env REDIS_URL="redis://$dur_proxy" "${durable_env[@]}" "$bin/switchboard"
  timeout 300 "$loadgen" catch-up --publish-server "$dur_a" --subscribe-server "$dur_c" \
    --proxy-pid "$dur_proxy_pid" --redis-url "redis://127.0.0.1:$dur_redis" --clients 1000 \
    --events 1000 --room dur:d3 --timeout 60 --out "$results/d3-catch-up.json" \
    | tee "$logs/d3-catch-up.txt"
  stop_pid "$dur_a_pid"
  stop_pid "$dur_c_pid"
  stop_pid "$dur_proxy_pid"
}

# Presence: P1 on a Redis and servers of its own.
presence_scenario() {
  local presence_env=(PRESENCE_ROOMS='pres:*')
  start_redis pres_redis
  start_server pres_a pres_a_pid env REDIS_URL="redis://127.0.0.1:$pres_redis" "${presence_env[@]}" "$bin/switchboard"
  start_server pres_b pres_b_pid env REDIS_URL="redis://127.0.0.1:$pres_redis" "${presence_env[@]}" "$bin/switchboard"
  echo "presence: switchboard $pres_a $pres_b (redis $pres_redis, PRESENCE_ROOMS=pres:*)"
  echo "== P1: presence reads in a room of $presence_members members"
  timeout 900 "$loadgen" presence --servers "$pres_a,$pres_b" --members "$presence_members" \
    --room pres:p1 --reads 50 --timeout 180 --out "$results/p1-presence.json" \
    | tee "$logs/p1-presence.txt"
  stop_pid "$pres_a_pid"
  stop_pid "$pres_b_pid"
}

# The soak: RSS of two servers under steady load for SOAK_MINUTES.
soak_scenario() {
  local seconds warmup_s
  seconds="$(awk -v m="$soak_minutes" 'BEGIN { print m * 60 }')"
  warmup_s="$(awk -v m="$soak_warmup" 'BEGIN { print m * 60 }')"
  echo "== soak: $soak_minutes minutes, RSS every $soak_every s, growth after $soak_warmup minutes"
  start_redis soak_redis
  start_server soak_a soak_a_pid env REDIS_URL="redis://127.0.0.1:$soak_redis" "$bin/switchboard"
  start_server soak_b soak_b_pid env REDIS_URL="redis://127.0.0.1:$soak_redis" "$bin/switchboard"
  timeout "$(awk -v s="$seconds" 'BEGIN { print int(s) + 600 }')" "$loadgen" run \
    --servers "$soak_a,$soak_b" --server-pids "$soak_a_pid,$soak_b_pid" --label switchboard \
    --room-prefix soak --clients 1000 --rooms 50 --publishers 10 --workers 2 \
    --rates 1000 --duration "$seconds" --drain 5 \
    --rss-every "$soak_every" --rss-warmup "$warmup_s" --out "$results/soak-switchboard.json" \
    | tee "$logs/soak-switchboard.txt"
  stop_pid "$soak_a_pid"
  stop_pid "$soak_b_pid"
  "$loadgen" chart --rss --out "$results/soak-rss.svg" "$results/soak-switchboard.json"
}

write_page() {
  echo "== chart and docs/benchmarks.md"
  "$loadgen" chart --out docs/benchmarks-latency.svg \
    "$results/s2-fanout-1000-switchboard.json" "$results/s2-fanout-1000-socketio.json" \
    "$results/s2-fanout-1000-socketioxide.json"
  node bench/summarize.js "$results" >"$logs/benchmarks.md"
  mv "$logs/benchmarks.md" docs/benchmarks.md
  echo "bench: wrote docs/benchmarks.md from $results; commit both"
}

if [ "$standard" = 1 ]; then standard_scenarios; fi
if [ "$durable" = 1 ]; then durable_scenarios; fi
if [ "$presence" = 1 ]; then presence_scenario; fi
if [ -n "$soak_minutes" ]; then soak_scenario; fi
if [ "$standard" = 1 ]; then
  write_page
elif [ "$durable" = 1 ] || [ "$presence" = 1 ]; then
  echo "bench: results in $results (docs/benchmarks.md untouched: the page comes from a full run)"
else
  echo "bench: soak results in $results (docs/benchmarks.md untouched; summarize.js --soak $results adds them to a page)"
fi
