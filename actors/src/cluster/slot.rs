//! Redis Cluster's hash slots: which of the 16,384 slots a key or a sharded channel
//! belongs to (the cluster specification's `HASH_SLOT = CRC16(key) mod 16384`, with
//! hash tags). redis-rs computes slots too, but does not expose the number, and the
//! backplane needs it to choose a shard for a room before it sends anything.

/// How many hash slots a Redis Cluster has.
pub const SLOTS: u16 = 16_384;

/// The hash slot of `key`: of the part between the first `{` and the next `}` when
/// that part is not empty (a hash tag), else of the whole key. A room's channel `C`
/// and its keys `{C}:...` therefore share a slot.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// The part of `key` that is hashed.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses it.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem() {
        // The check value of CRC-16/XMODEM, which the cluster specification quotes.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn a_hash_tag_is_the_first_non_empty_braces() {
        // The cluster specification's examples.
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no braces"), b"no braces");
        assert_eq!(hash_tag(b"open{only"), b"open{only");
    }

    #[test]
    fn a_rooms_keys_share_its_channels_slot() {
        for channel in ["leaderboard:updates", "chat:42", "p:dur:x"] {
            let slot = key_slot(channel.as_bytes());
            assert!(slot < SLOTS);
            for key in ["log", "ids", "meta", "presence"] {
                let key = format!("{{{channel}}}:{key}");
                assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
            }
        }
    }
}
