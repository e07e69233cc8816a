//! Slows down token guessing: wrong bearer tokens and failed log-ins are counted per client
//! address (an IPv6 address by its /64, which one host usually holds whole), and an address
//! with more than [`MAX_FAILURES`] failures in a [`WINDOW`] has its further failures answered
//! 429 until the window ends. A good token always passes, so clients behind the same proxy or
//! NAT cannot lock each other out; tokens are at least 32 characters, so guessing is hopeless
//! anyway, and this keeps it cheap for verdict and visible in the log and metrics.
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
/// Addresses tracked at once; past it, windows that have ended are dropped first, then the
/// addresses not throttled, never a throttled one (a new address is then not tracked), so
/// memory stays bounded and a flood of addresses cannot reset a throttled one.
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
    /// Records a failed authentication from `addr`: `Err(wait)` when the address has failed
    /// too often (answer 429 with `Retry-After: wait`), else answer 401.
    pub fn failed(&self, addr: IpAddr) -> Result<(), Duration> {
        self.failed_at(addr, Instant::now())
    }

    fn failed_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let Ok(mut map) = self.windows.lock() else {
            return Ok(());
        };
        let k = key(addr);
        if !map.contains_key(&k) && map.len() >= MAX_ADDRESSES {
            // Make room: windows that ended, then addresses not throttled; never a throttled
            // one (that would let it start over).
            map.retain(|_, w| now < w.start + WINDOW);
            if map.len() >= MAX_ADDRESSES {
                map.retain(|_, w| w.failures >= MAX_FAILURES);
            }
            if map.len() >= MAX_ADDRESSES {
                tracing::debug!(client = %addr, "too many throttled addresses to track another");
                metrics::counter!(crate::metrics::AUTH_FAILURES, "result" => "bad_token")
                    .increment(1);
                return Ok(());
            }
        }
        let w = map.entry(k).or_insert(Window {
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
        if w.failures > MAX_FAILURES {
            metrics::counter!(crate::metrics::AUTH_FAILURES, "result" => "throttled").increment(1);
            tracing::debug!(client = %addr, failures = w.failures, "authentication failed (throttled)");
            return Err((w.start + WINDOW).saturating_duration_since(now));
        }
        metrics::counter!(crate::metrics::AUTH_FAILURES, "result" => "bad_token").increment(1);
        match w.failures {
            1 => tracing::warn!(client = %addr, "authentication failed (a bad token or log-in)"),
            MAX_FAILURES => tracing::warn!(
                client = %addr,
                failures = MAX_FAILURES,
                window_secs = WINDOW.as_secs(),
                "too many failed authentications: this address's next failures are answered 429 until the window ends"
            ),
            n => tracing::debug!(client = %addr, failures = n, "authentication failed"),
        }
        Ok(())
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
        for _ in 0..MAX_FAILURES {
            assert!(t.failed_at(a, t0).is_ok());
        }
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.failed_at(a, later), Err(WINDOW - Duration::from_secs(10)));
        assert!(
            t.failed_at(b, later).is_ok(),
            "another address is not affected"
        );
        // A new window starts from zero.
        assert!(t.failed_at(a, t0 + WINDOW).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let t = AuthThrottle::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            let addr: IpAddr = format!("2001:db8:1:2::{:x}", i + 1)
                .parse()
                .unwrap_or(IpAddr::from([0u8; 16]));
            assert!(t.failed_at(addr, t0).is_ok());
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert!(t.failed_at(same_64, t0).is_err());
        assert!(t.failed_at(other_64, t0).is_ok());
    }

    #[test]
    fn a_full_table_never_forgets_a_throttled_address() {
        let t = AuthThrottle::default();
        let t0 = Instant::now();
        let bad: IpAddr = "198.51.100.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        for _ in 0..MAX_FAILURES {
            let _ = t.failed_at(bad, t0);
        }
        for i in 0..MAX_ADDRESSES as u32 + 10 {
            let _ = t.failed_at(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), t0);
        }
        assert!(t.failed_at(bad, t0).is_err(), "still throttled");
    }
}
