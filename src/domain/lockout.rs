//! Login throttling rules: per-account lockout with growing delays, and per-address windows.
//!
//! NIST SP 800-63B 5.2.2 caps failed attempts at 100 per account per hour; seed 003 locks after
//! 5 failures for 15 minutes. keyward locks after `threshold` consecutive failures for
//! `base_delay`, doubling on every further failure up to `max_delay`, so a guesser gets at most a
//! handful of attempts per hour while a user who mistypes twice never notices.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Lockout settings (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub threshold: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl LockoutPolicy {
    /// How long the account is locked after its `failures`-th consecutive failure, if at all.
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        if self.threshold == 0 || failures < self.threshold {
            return None;
        }
        let doublings = (failures - self.threshold).min(20);
        Some(
            self.base_delay
                .saturating_mul(1 << doublings)
                .min(self.max_delay),
        )
    }
}

/// What is left of a lock at `now`, if anything.
pub fn remaining(locked_until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    let until = locked_until?;
    (until > now).then(|| (until - now).to_std().unwrap_or_default())
}

/// A fixed-window counter: the window `now` falls in and the time left in it.
pub fn window(now: DateTime<Utc>, length: Duration) -> (i64, Duration) {
    let len_ms = length.as_millis().max(1) as i64;
    let ms = now.timestamp_millis();
    let index = ms.div_euclid(len_ms);
    let left = len_ms - ms.rem_euclid(len_ms);
    (index, Duration::from_millis(left as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LockoutPolicy = LockoutPolicy {
        threshold: 5,
        base_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(15 * 60),
    };

    #[test]
    fn delays_start_at_threshold_double_and_cap() {
        assert_eq!(POLICY.delay_after(4), None);
        assert_eq!(POLICY.delay_after(5), Some(Duration::from_secs(30)));
        assert_eq!(POLICY.delay_after(6), Some(Duration::from_secs(60)));
        assert_eq!(POLICY.delay_after(9), Some(Duration::from_secs(480)));
        assert_eq!(POLICY.delay_after(10), Some(Duration::from_secs(900)));
        assert_eq!(POLICY.delay_after(1000), Some(Duration::from_secs(900)));
    }

    #[test]
    fn never_more_than_100_failures_per_hour() {
        // A guesser who retries the moment each lock ends.
        let mut elapsed = Duration::ZERO;
        let mut failures = 0;
        while elapsed < Duration::from_secs(3600) {
            failures += 1;
            elapsed += POLICY.delay_after(failures).unwrap_or_default();
        }
        assert!(failures <= 100, "{failures} attempts in an hour");
    }

    #[test]
    fn remaining_lock_and_windows() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        assert_eq!(remaining(None, now), None);
        assert_eq!(
            remaining(Some(now - chrono::Duration::seconds(1)), now),
            None
        );
        assert_eq!(
            remaining(Some(now + chrono::Duration::seconds(7)), now),
            Some(Duration::from_secs(7))
        );
        let (i, left) = window(now + chrono::Duration::seconds(10), Duration::from_secs(60));
        assert_eq!(i, (1_000_010_000i64).div_euclid(60_000));
        assert!(left <= Duration::from_secs(60) && left > Duration::ZERO);
    }
}
