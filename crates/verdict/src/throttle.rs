//! Slows down token guessing: bad bearer tokens and failed log-ins are counted per client
//! address (an IPv6 address by its /64, which one host usually holds whole), and an address
//! with [`MAX_FAILURES`] failures in a [`WINDOW`] is answered 429 until the window ends, even
//! with a good token. Tokens are at least 32 characters, so guessing is hopeless anyway; this
//! keeps it cheap for verdict and visible in the log and metrics.
//!
//! Logging stays bounded whatever the traffic: one warning at an address's first failure in a
//! window and one when it becomes throttled; the rest are counted in
//! `verdict_auth_failures_total` and logged at debug level.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have in one window before it is throttled.
pub const MAX_FAILURES: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past it, windows that have ended are dropped first, then (under
/// a flood from very many addresses) all, so memory stays bounded.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Failed authentications per client address.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

/// The key of an address: itself for IPv4, its /64 for IPv6.
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

impl AuthThrottle {
    /// `Err(wait)` while `addr` is throttled: answer 429 with `Retry-After: wait`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        self.check_at(addr, Instant::now())
    }

    /// Records a failed authentication from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        self.failed_at(addr, Instant::now());
    }

    fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let Ok(map) = self.windows.lock() else {
            return Ok(());
        };
        match map.get(&key(addr)) {
            Some(w) if w.failures >= MAX_FAILURES && now < w.start + WINDOW => {
                metrics::counter!(crate::metrics::AUTH_FAILURES, "result" => "throttled")
                    .increment(1);
                Err((w.start + WINDOW).saturating_duration_since(now))
            }
            _ => Ok(()),
        }
    }

    fn failed_at(&self, addr: IpAddr, now: Instant) {
        let Ok(mut map) = self.windows.lock() else {
            return;
        };
        if map.len() >= MAX_ADDRESSES {
            map.retain(|_, w| now < w.start + WINDOW);
            if map.len() >= MAX_ADDRESSES {
                tracing::warn!(
                    addresses = map.len(),
                    "failed authentications from too many addresses to track; starting over"
                );
                map.clear();
            }
        }
        let w = map.entry(key(addr)).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now >= w.start + WINDOW {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        metrics::counter!(crate::metrics::AUTH_FAILURES, "result" => "bad_token").increment(1);
        match w.failures {
            1 => tracing::warn!(client = %addr, "authentication failed (a bad token or log-in)"),
            MAX_FAILURES => tracing::warn!(
                client = %addr,
                failures = MAX_FAILURES,
                window_secs = WINDOW.as_secs(),
                "too many failed authentications: this address is answered 429 until the window ends"
            ),
            n => tracing::debug!(client = %addr, failures = n, "authentication failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_its_failures_until_the_window_ends() {
        let t = AuthThrottle::default();
        let a: IpAddr = "203.0.113.7".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "203.0.113.8".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            t.failed_at(a, t0);
        }
        assert!(t.check_at(a, t0).is_ok());
        t.failed_at(a, t0);
        assert_eq!(
            t.check_at(a, t0 + Duration::from_secs(10)),
            Err(WINDOW - Duration::from_secs(10))
        );
        assert!(t.check_at(b, t0).is_ok(), "another address is not affected");
        assert!(t.check_at(a, t0 + WINDOW).is_ok(), "the window ends");
        // A new window starts from zero.
        t.failed_at(a, t0 + WINDOW);
        assert!(t.check_at(a, t0 + WINDOW).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let t = AuthThrottle::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            let addr: IpAddr = format!("2001:db8:1:2::{:x}", i + 1)
                .parse()
                .unwrap_or(IpAddr::from([0u8; 16]));
            t.failed_at(addr, t0);
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert!(t.check_at(same_64, t0).is_err());
        assert!(t.check_at(other_64, t0).is_ok());
    }
}
