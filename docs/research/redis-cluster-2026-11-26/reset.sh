#!/bin/bash
# recreate a fresh 3x2 cluster on 30001-30006
cd /tmp/cluster-research/nodes || exit 1
for p in 30001 30002 30003 30004 30005 30006; do
  if [ -f $p/redis.pid ]; then kill -9 $(cat $p/redis.pid) 2>/dev/null; fi
done
sleep 0.5
rm -rf 3000?
for p in 30001 30002 30003 30004 30005 30006; do
  mkdir -p $p
  (cd $p && redis-server --port $p --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 --appendonly no --save '' --daemonize yes --pidfile /tmp/cluster-research/nodes/$p/redis.pid --logfile /tmp/cluster-research/nodes/$p/redis.log --bind 127.0.0.1)
done
sleep 1
redis-cli --cluster create 127.0.0.1:30001 127.0.0.1:30002 127.0.0.1:30003 127.0.0.1:30004 127.0.0.1:30005 127.0.0.1:30006 --cluster-replicas 1 --cluster-yes >/dev/null 2>&1
# wait until all nodes see cluster ok and replicas are synced
for i in $(seq 1 60); do
  ok=1
  for p in 30001 30002 30003 30004 30005 30006; do
    redis-cli -p $p cluster info | grep -q 'cluster_state:ok' || ok=0
  done
  n=$(redis-cli -p 30001 cluster slots | grep -c '^3000')
  [ "$ok" = 1 ] && [ "$n" = 6 ] && break
  sleep 0.5
done
redis-cli -p 30001 cluster nodes | awk '{print $2, $3, $4, $9}'
