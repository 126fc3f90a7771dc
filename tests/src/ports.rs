//! Choosing free loopback ports for throwaway redis servers.
//!
//! Ports are drawn at random from 20000..30000 so that test binaries running
//! at the same time rarely pick the same one, checked by binding
//! `127.0.0.1:p` (and `p + 10000`, the cluster bus port, for cluster nodes),
//! and remembered in a process-wide set until released so that two threads
//! of one binary never hand out the same port. A check can still race with
//! another process; callers retry on a fresh port when redis fails to start.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port handed out (inclusive).
pub const PORT_MIN: u16 = 20000;
/// Highest port handed out (exclusive).
pub const PORT_MAX: u16 = 30000;
/// Offset of the cluster bus port from the client port (fixed by redis).
pub const CLUSTER_BUS_OFFSET: u16 = 10000;

/// Ports handed out by this process and not yet released.
static RESERVED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Whether `127.0.0.1:port` can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Whether `port` (and, when `cluster_bus`, `port + 10000`) can be bound now.
pub fn ports_are_free(port: u16, cluster_bus: bool) -> bool {
    port_is_free(port)
        && (!cluster_bus
            || port
                .checked_add(CLUSTER_BUS_OFFSET)
                .is_some_and(port_is_free))
}

/// Picks and reserves a random free port in `PORT_MIN..PORT_MAX`; with
/// `cluster_bus`, its bus port `p + 10000` is free too. Release it with
/// [`release_port`]. Panics if none is found after many attempts.
pub fn reserve_port(cluster_bus: bool) -> u16 {
    let span = u64::from(PORT_MAX - PORT_MIN);
    for attempt in 0u64..2000 {
        let offset = u16::try_from(random_u64(attempt) % span).expect("offset < span fits u16");
        let port = PORT_MIN + offset;
        let mut reserved = RESERVED.lock().unwrap_or_else(PoisonError::into_inner);
        if reserved.contains(&port) || !ports_are_free(port, cluster_bus) {
            continue;
        }
        reserved.push(port);
        return port;
    }
    panic!(
        "no free loopback port found in {PORT_MIN}..{PORT_MAX} (cluster bus needed: {cluster_bus})"
    );
}

/// Returns a port obtained from [`reserve_port`] to the pool.
pub fn release_port(port: u16) {
    RESERVED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|&p| p != port);
}

/// A random number without a `rand` dependency: `RandomState` is seeded from
/// the OS once per thread and changes on every `new()`.
fn random_u64(salt: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u32(std::process::id());
    if let Ok(d) = SystemTime::now().duration_since(UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reserved_ports_are_distinct_and_in_range() {
        let ports: Vec<u16> = (0..50).map(|_| reserve_port(true)).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|p| (PORT_MIN..PORT_MAX).contains(p)));
        ports.into_iter().for_each(release_port);
    }
}
