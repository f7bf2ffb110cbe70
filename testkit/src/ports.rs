//! Free loopback ports for the servers the kit starts.
//!
//! Ports are picked outside the kernel's ephemeral range (`ip_local_port_range`), so
//! no outgoing socket (a test's client, courier's Redis connections, a load
//! generator's 19,000 connections) can take one between the pick and the server's
//! bind, nor while a killed server is down before its restart on the same port. Two
//! pickers (parallel tests, other worktrees) may still choose the same port: the
//! servers detect it and start again on another one ([`START_ATTEMPTS`]).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many free ports a server is tried on before the kit gives up.
pub const START_ATTEMPTS: usize = 5;

/// The lowest port the kit picks: below it live well-known development services
/// (6379, 8080, ...).
const LOWEST: u16 = 10_000;

/// A port on 127.0.0.1 that nobody listens on or is bound to right now, outside the
/// ephemeral range.
pub fn free_port() -> u16 {
    let ranges = non_ephemeral_ranges(ephemeral_range());
    let total: u32 = ranges
        .iter()
        .map(|(low, high)| u32::from(high - low) + 1)
        .sum();
    for _ in 0..1000 {
        let mut pick = (random() % u64::from(total.max(1))) as u32;
        for (low, high) in &ranges {
            let size = u32::from(high - low) + 1;
            if pick < size {
                let port = low + pick as u16;
                if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    return port;
                }
                break;
            }
            pick -= size;
        }
    }
    // Every pick was taken (or the ranges are empty): let the kernel choose.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// `(low, high)` of `/proc/sys/net/ipv4/ip_local_port_range` (Linux's default when
/// it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|n| n.parse::<u16>());
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// The port ranges from [`LOWEST`] up that lie outside `ephemeral`.
fn non_ephemeral_ranges((low, high): (u16, u16)) -> Vec<(u16, u16)> {
    let mut ranges = Vec::new();
    if low > LOWEST {
        ranges.push((LOWEST, low - 1));
    }
    if high < u16::MAX {
        ranges.push((high.max(LOWEST - 1) + 1, u16::MAX));
    }
    ranges
}

/// A random number (std's per-process random hash keys, mixed with a counter).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_picked_outside_the_ephemeral_range() {
        assert_eq!(
            non_ephemeral_ranges((32_768, 60_999)),
            [(10_000, 32_767), (61_000, 65_535)]
        );
        assert_eq!(non_ephemeral_ranges((1_024, 65_535)), []);
        let (low, high) = ephemeral_range();
        for _ in 0..50 {
            let port = free_port();
            assert!(port >= LOWEST && !(low..=high).contains(&port), "{port}");
        }
    }
}
