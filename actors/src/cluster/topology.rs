//! A Redis Cluster's topology as the backplane needs it: which master serves each
//! hash slot. Read with `CLUSTER SLOTS` from any node; a node answers with what it
//! believes, so a map is a snapshot that a failover or a slot migration outdates.

use std::fmt;

use redis::Value;

use super::slot::SLOTS;
use crate::Error;

/// A node's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// Its host name or IP address.
    pub host: String,
    /// Its client port.
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// One range of slots and the master that serves it.
#[derive(Debug, Clone, PartialEq)]
struct SlotRange {
    start: u16,
    end: u16,
    master: NodeAddr,
}

/// Which master serves each hash slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotMap {
    /// Sorted by `start`, not overlapping.
    ranges: Vec<SlotRange>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` answer. A node that announces no address is reached at
    /// `asked`'s host, the node that answered.
    pub fn from_cluster_slots(answer: &Value, asked: &NodeAddr) -> Result<SlotMap, Error> {
        let unexpected = || Error::Redis(format!("unexpected CLUSTER SLOTS answer: {answer:?}"));
        let Value::Array(entries) = answer else {
            return Err(unexpected());
        };
        let mut ranges = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(fields) = entry else {
                return Err(unexpected());
            };
            let [start, end, master, ..] = fields.as_slice() else {
                return Err(unexpected());
            };
            let slot = |v: &Value| {
                redis::from_redis_value_ref::<u16>(v)
                    .ok()
                    .filter(|&s| s < SLOTS)
            };
            let (Some(start), Some(end)) = (slot(start), slot(end)) else {
                return Err(unexpected());
            };
            let master = node(master, asked).ok_or_else(unexpected)?;
            if start > end {
                return Err(unexpected());
            }
            ranges.push(SlotRange { start, end, master });
        }
        ranges.sort_by_key(|r| r.start);
        if ranges.windows(2).any(|w| w[0].end >= w[1].start) {
            return Err(unexpected());
        }
        Ok(SlotMap { ranges })
    }

    /// The master serving `slot`, if any does.
    pub fn master(&self, slot: u16) -> Option<&NodeAddr> {
        let i = self.ranges.partition_point(|r| r.start <= slot);
        let range = self.ranges.get(i.checked_sub(1)?)?;
        (slot <= range.end).then_some(&range.master)
    }

    /// Every master, once each, in address order.
    pub fn masters(&self) -> Vec<NodeAddr> {
        let mut masters: Vec<NodeAddr> = self.ranges.iter().map(|r| r.master.clone()).collect();
        masters.sort();
        masters.dedup();
        masters
    }

    /// Whether every slot has a master (a cluster that is not fully formed, or that
    /// lost a master without a replica to promote, does not).
    pub fn covers_all(&self) -> bool {
        let mut next: u32 = 0;
        for range in &self.ranges {
            if u32::from(range.start) != next {
                return false;
            }
            next = u32::from(range.end) + 1;
        }
        next == u32::from(SLOTS)
    }
}

/// A node entry of `CLUSTER SLOTS`: `[host, port, id, ...]`.
fn node(value: &Value, asked: &NodeAddr) -> Option<NodeAddr> {
    let Value::Array(fields) = value else {
        return None;
    };
    let [host, port, ..] = fields.as_slice() else {
        return None;
    };
    // No address: `NULL` (`cluster-preferred-endpoint-type unknown-endpoint`), an
    // empty string, or `?` (not known yet): the node that answered is the best guess.
    let host: Option<String> = match host {
        Value::Nil => None,
        host => Some(redis::from_redis_value_ref(host).ok()?),
    };
    let port: u16 = redis::from_redis_value_ref(port).ok()?;
    let host = match host {
        Some(host) if !host.is_empty() && host != "?" => host,
        _ => asked.host.clone(),
    };
    Some(NodeAddr { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: i64, end: i64, port: i64) -> Value {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(format!("id{port}").into_bytes()),
            ])
        };
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            node(port),
            node(port + 3),
        ])
    }

    fn asked() -> NodeAddr {
        NodeAddr {
            host: "10.0.0.1".into(),
            port: 7000,
        }
    }

    #[test]
    fn every_slot_finds_the_master_of_its_range() {
        let answer = Value::Array(vec![
            entry(5461, 10922, 30002),
            entry(0, 5460, 30001),
            entry(10923, 16383, 30003),
        ]);
        let map = SlotMap::from_cluster_slots(&answer, &asked()).expect("a map");
        assert!(map.covers_all());
        let port = |slot| map.master(slot).map(|n| n.port);
        assert_eq!(port(0), Some(30001));
        assert_eq!(port(5460), Some(30001));
        assert_eq!(port(5461), Some(30002));
        assert_eq!(port(16383), Some(30003));
        assert_eq!(
            map.masters().iter().map(|n| n.port).collect::<Vec<_>>(),
            [30001, 30002, 30003]
        );
    }

    #[test]
    fn a_hole_in_the_slots_is_seen_and_has_no_master() {
        let answer = Value::Array(vec![entry(0, 5460, 30001), entry(10923, 16383, 30003)]);
        let map = SlotMap::from_cluster_slots(&answer, &asked()).expect("a map");
        assert!(!map.covers_all());
        assert_eq!(map.master(6000), None);
        assert_eq!(SlotMap::default().master(0), None);
    }

    #[test]
    fn a_node_without_an_address_is_the_one_asked_and_nonsense_is_refused() {
        let unnamed = Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![Value::BulkString(Vec::new()), Value::Int(7001)]),
        ]);
        let map =
            SlotMap::from_cluster_slots(&Value::Array(vec![unnamed]), &asked()).expect("a map");
        assert_eq!(
            map.master(42).map(|n| n.to_string()),
            Some("10.0.0.1:7001".into())
        );
        let null_host = Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![Value::Nil, Value::Int(7002)]),
        ]);
        let map =
            SlotMap::from_cluster_slots(&Value::Array(vec![null_host]), &asked()).expect("a map");
        assert_eq!(
            map.master(42).map(|n| n.to_string()),
            Some("10.0.0.1:7002".into())
        );

        let overlapping = Value::Array(vec![entry(0, 100, 30001), entry(100, 16383, 30002)]);
        assert!(SlotMap::from_cluster_slots(&overlapping, &asked()).is_err());
        assert!(SlotMap::from_cluster_slots(&Value::Int(1), &asked()).is_err());
        assert!(
            SlotMap::from_cluster_slots(&Value::Array(vec![entry(0, 16384, 30001)]), &asked())
                .is_err()
        );
    }
}
