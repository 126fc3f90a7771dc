//! Looking at what a test left behind in redis, and computing cluster slots.
//!
//! [`keys_without_ttl`] is the main use: a rate limiter must never leave a key
//! that lives forever, so tests scan every node afterwards. [`key_slot`]
//! mirrors `CLUSTER KEYSLOT` locally, so tests can pick keys that land on
//! chosen slots or check that related keys share one. [`command_calls`] and [`evalsha_calls`]
//! read `INFO commandstats`, for tests about how often the limiter asks Redis.

use std::collections::BTreeMap;

use crate::tools;

/// Calls so far of each command on one server, by command name in lower case, as reported by
/// `INFO commandstats` (`cmdstat_<name>:calls=<n>,...`). Panics if the server is unreachable.
///
/// ```no_run
/// let server = ratelimit_tests::RedisServer::start();
/// let calls = ratelimit_tests::command_calls(&server.url());
/// assert!(calls.contains_key("info") || calls.is_empty());
/// ```
pub fn command_calls(url: &str) -> BTreeMap<String, u64> {
    let mut conn = tools::connect(url)
        .unwrap_or_else(|e| panic!("cannot connect to {url} for INFO commandstats: {e}"));
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap_or_else(|e| panic!("INFO commandstats failed on {url}: {e}"));
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls = rest.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// `EVALSHA` calls so far on one server (0 before the first): [`command_calls`]'s `evalsha`.
pub fn evalsha_calls(url: &str) -> u64 {
    command_calls(url).get("evalsha").copied().unwrap_or(0)
}

/// Every key on the given nodes whose `PTTL` is -1 (no expiry), sorted and
/// deduplicated. For a cluster pass the masters
/// ([`crate::RedisCluster::master_urls`]). Panics if a node is unreachable.
pub fn keys_without_ttl(urls: &[String]) -> Vec<String> {
    scan_nodes(urls, true)
}

/// Every key on the given nodes, sorted and deduplicated (non-UTF-8 bytes are
/// replaced lossily). For a cluster pass the masters. Panics if a node is
/// unreachable.
pub fn all_keys(urls: &[String]) -> Vec<String> {
    scan_nodes(urls, false)
}

fn scan_nodes(urls: &[String], only_without_ttl: bool) -> Vec<String> {
    let mut found = Vec::new();
    for url in urls {
        let mut conn = tools::connect(url)
            .unwrap_or_else(|e| panic!("cannot connect to {url} to scan keys: {e}"));
        // Lets a cluster replica answer PTTL instead of redirecting; fails
        // harmlessly on a standalone server.
        let _ = redis::cmd("READONLY").query::<()>(&mut conn);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn)
                .unwrap_or_else(|e| panic!("SCAN failed on {url}: {e}"));
            if only_without_ttl && !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("PTTL").arg(key);
                }
                let ttls: Vec<i64> = pipe
                    .query(&mut conn)
                    .unwrap_or_else(|e| panic!("PTTL failed on {url}: {e}"));
                found.extend(
                    keys.iter()
                        .zip(ttls)
                        .filter(|(_, ttl)| *ttl == -1)
                        .map(|(k, _)| String::from_utf8_lossy(k).into_owned()),
                );
            } else if !only_without_ttl {
                found.extend(keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The Redis Cluster hash slot of `key`: CRC16/XMODEM of the key (or of its
/// hash tag, the part between the first `{` and the next `}`, when non-empty)
/// modulo 16384. Same result as `CLUSTER KEYSLOT`.
pub fn key_slot(key: &str) -> u16 {
    key_slot_bytes(key.as_bytes())
}

/// [`key_slot`] for binary keys.
pub fn key_slot_bytes(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key)) % 16384
}

/// The part of `key` that is hashed, per the cluster spec's hash tag rule.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}')
            && close > 0
        {
            return &rest[..close];
        }
    }
    key
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection).
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
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
    fn crc16_reference_vector() {
        // The check value of CRC16/XMODEM, also quoted by the cluster spec.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    }

    #[test]
    fn hash_tag_rules() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no tag"), b"no tag");
        assert_eq!(hash_tag(b"open{only"), b"open{only");
    }
}
