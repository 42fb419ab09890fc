#!/usr/bin/env bash
# Scenario 1's shape (1,000 subscribers, 100 rooms, 10 publishers, 1k and 10k/s), the
# build at the session's start (f965b48) and HEAD alternating, two rounds.
set -euo pipefail
cd /work/main
source bench/lib.sh
lg=/work/main/target/release/switchboard-loadgen
out=/work/main/bench/results/ab-s1-2026-11-26T2321Z
mkdir -p $out
for round in 1 2; do
for which in old new; do
  if [ $which = old ]; then bin=/work/target-old/release/switchboard; else bin=/work/main/target/release/switchboard; fi
  start_redis rp
  export REDIS_URL="redis://127.0.0.1:$rp" RUST_LOG=warn LIMIT_PUBLISH_RATE=0
  start_server a a_pid "$bin"
  start_server b b_pid "$bin"
  timeout 120 $lg run --servers "$a,$b" --server-pids "$a_pid,$b_pid" --clients 1000 --rooms 100 \
    --publishers 10 --workers 2 --rates 1000,10000 --duration 10 --drain 3 \
    --label $which-$round --out /tmp/ab6-$which-$round.json > /tmp/ab6-$which-$round.txt 2>&1 || echo "loadgen failed"
  kill $a_pid $b_pid; wait $a_pid $b_pid 2>/dev/null || true
  python3 -c "import json;d=json.load(open('/tmp/ab6-$which-$round.json'));open('$out/$which-$round.json','w').write(json.dumps(d,separators=(',',':'))+'\n')"
  echo "== $which round $round"; grep -E "^ *[0-9]" /tmp/ab6-$which-$round.txt | head -2
done
done
