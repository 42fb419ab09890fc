# Helpers shared by scripts/bench.sh and bench/smoke.sh: start Redis and servers on
# free loopback ports, wait for them with deadlines, and kill everything on exit.
# Source it; it sets an EXIT trap that kills every process started through it.

BENCH_PIDS=()
BENCH_TMP="$(mktemp -d)"

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pid in "${BENCH_PIDS[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$BENCH_TMP"
}
trap bench_cleanup EXIT INT TERM

# start_redis VAR: starts redis-server on a free port (no persistence); VAR=port.
start_redis() {
  local var="$1" port attempt
  for attempt in $(seq 1 20); do
    port=$((20000 + RANDOM % 20000))
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --maxclients 20000 --loglevel warning >"$BENCH_TMP/redis-$port.log" 2>&1 &
    local pid=$!
    BENCH_PIDS+=("$pid")
    local deadline=$((SECONDS + 5))
    while [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2>/dev/null; do
      if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
        printf -v "$var" '%s' "$port"
        return 0
      fi
      sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
  done
  echo "bench: could not start redis-server" >&2
  return 1
}

# start_server ADDR_VAR PID_VAR command...: runs the command (with PORT=0 in its
# environment) and waits up to 30 s for its line "... listening on http://HOST:PORT".
start_server() {
  local addr_var="$1" pid_var="$2"
  shift 2
  local out="$BENCH_TMP/server-$RANDOM$RANDOM.out"
  PORT=0 "$@" >"$out" 2>"$out.err" &
  local pid=$!
  BENCH_PIDS+=("$pid")
  local deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2>/dev/null; do
    local line
    line="$(grep -m1 -o 'listening on http://[0-9.:]*' "$out" 2>/dev/null || true)"
    if [ -n "$line" ]; then
      printf -v "$addr_var" '%s' "${line#listening on http://}"
      printf -v "$pid_var" '%s' "$pid"
      return 0
    fi
    sleep 0.05
  done
  echo "bench: server did not start: $*" >&2
  cat "$out.err" >&2 || true
  return 1
}

# start_proxy ADDR_VAR PID_VAR LOADGEN REDIS_PORT: a `switchboard-loadgen proxy` to the
# Redis on REDIS_PORT (SIGUSR1 cuts every connection through it, SIGUSR2 lets them
# through again); waits up to 10 s for its line "proxy listening on HOST:PORT".
start_proxy() {
  local addr_var="$1" pid_var="$2" loadgen="$3" port="$4"
  local out="$BENCH_TMP/proxy-$RANDOM$RANDOM.out"
  "$loadgen" proxy --to "127.0.0.1:$port" >"$out" 2>"$out.err" &
  local pid=$!
  BENCH_PIDS+=("$pid")
  local deadline=$((SECONDS + 10))
  while [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2>/dev/null; do
    local line
    line="$(grep -m1 -o 'proxy listening on [0-9.:]*' "$out" 2>/dev/null || true)"
    if [ -n "$line" ]; then
      printf -v "$addr_var" '%s' "${line#proxy listening on }"
      printf -v "$pid_var" '%s' "$pid"
      return 0
    fi
    sleep 0.05
  done
  echo "bench: the Redis proxy did not start" >&2
  cat "$out.err" >&2 || true
  return 1
}

# stop_pid PID: stops one process started here (SIGTERM, then SIGKILL after 5 s).
stop_pid() {
  local pid="$1" deadline=$((SECONDS + 5))
  kill "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
