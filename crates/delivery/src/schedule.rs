//! The retry schedule: exponential backoff with jitter, bounded attempts.

use std::time::Duration;

/// When to try again after a failed attempt, and when to give up.
///
/// After the `n`th failed attempt the next one waits `initial * 2^(n-1)`, capped at
/// `max_delay`, times a jitter factor drawn uniformly from `[1 - jitter, 1 + jitter)` (so
/// deliveries that failed together do not retry together). After `max_attempts` attempts the
/// delivery is dead-lettered. The default reaches about a day: 2 s, 4 s, 8 s, ... 4 h, with 19
/// attempts spread over about 24.5 hours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait between two attempts (also caps `Retry-After`).
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Relative jitter, 0 to 1.
    pub jitter: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            max_delay: Duration::from_secs(4 * 3600),
            max_attempts: 19,
            jitter: 0.2,
        }
    }
}

impl Schedule {
    /// The wait before the next attempt after `failed` failed attempts (at least 1), given a
    /// `random` number in `[0, 1)` for the jitter and the sink's `Retry-After`, if it sent one
    /// (honoured as given, up to `max_delay`).
    pub fn delay(&self, failed: u32, retry_after: Option<Duration>, random: f64) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_delay);
        }
        let base = self.base(failed);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter + 2.0 * jitter * random.clamp(0.0, 1.0);
        base.mul_f64(factor).min(self.max_delay)
    }

    /// The wait without jitter.
    pub fn base(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1);
        if doublings >= 32 {
            return self.max_delay;
        }
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Whether a delivery that has had `attempts` attempts is out of attempts.
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts.max(1)
    }

    /// From the first attempt to the last, without jitter.
    pub fn span(&self) -> Duration {
        (1..self.max_attempts.max(1))
            .map(|n| self.base(n))
            .fold(Duration::ZERO, |a, b| a.saturating_add(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let s = Schedule::default();
        let secs: Vec<u64> = (1..=16).map(|n| s.base(n).as_secs()).collect();
        assert_eq!(
            secs,
            [
                2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 14400, 14400, 14400
            ]
        );
        assert_eq!(s.base(1000), s.max_delay);
    }

    #[test]
    fn the_default_reaches_about_a_day() {
        let hours = Schedule::default().span().as_secs_f64() / 3600.0;
        assert!((23.0..26.0).contains(&hours), "{hours}");
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let s = Schedule::default();
        assert_eq!(s.delay(3, None, 0.0), Duration::from_millis(6400));
        assert_eq!(s.delay(3, None, 0.5), Duration::from_secs(8));
        assert!(s.delay(3, None, 0.999_999) < Duration::from_millis(9600));
        let none = Schedule {
            jitter: 0.0,
            ..Schedule::default()
        };
        assert_eq!(none.delay(3, None, 0.9), Duration::from_secs(8));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let s = Schedule::default();
        assert_eq!(
            s.delay(1, Some(Duration::from_secs(30)), 0.7),
            Duration::from_secs(30)
        );
        assert_eq!(
            s.delay(1, Some(Duration::from_secs(10 * 86_400)), 0.7),
            s.max_delay
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let s = Schedule::default();
        assert!(!s.exhausted(18));
        assert!(s.exhausted(19));
        let zero = Schedule {
            max_attempts: 0,
            ..s
        };
        assert!(zero.exhausted(1));
    }
}
