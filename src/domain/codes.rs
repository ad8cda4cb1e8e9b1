//! One-time codes sent by email: how they are made, how they are kept, and when another may be
//! sent. Pure rules; time is a parameter.
//!
//! A code is 6 digits from the OS CSPRNG. It is stored only as HMAC-SHA256 under a server secret,
//! over purpose + email + code, so a database dump alone neither shows a code nor lets anyone try
//! the million candidates offline, and a code only ever matches the address and purpose it was
//! made for.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::validation::{Violations, REQUIRED};

/// Digits in a code.
pub const CODE_DIGITS: usize = 6;
/// Wrong (or any) attempts a code survives; the next attempt fails even with the right digits.
pub const MAX_ATTEMPTS: u32 = 5;
/// Attempts on one code from clients other than the one that asked for it, all together: the
/// owner typing on another device, or a stranger guessing. Few, so that strangers' odds stay low.
pub const MAX_FOREIGN_ATTEMPTS: u32 = 3;
/// The longest a code may live (NIST SP 800-63B out-of-band authenticators).
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// What a code may be used for; it works only for that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    Login,
    ResetPassword,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::Login => "login",
            Purpose::ResetPassword => "reset_password",
        }
    }
}

/// A fresh code: `CODE_DIGITS` decimal digits, uniformly random, leading zeros kept.
pub fn generate() -> String {
    let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
    format!("{n:06}")
}

/// True when `code` has the shape of a code (checked before any lookup).
pub fn well_formed(code: &str) -> bool {
    code.len() == CODE_DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// A code as typed into a request: required, and [`CODE_DIGITS`] digits.
pub fn check_code(field: &str, code: &str, out: &mut Violations) {
    if code.is_empty() {
        out.push(field, REQUIRED);
    } else if !well_formed(code) {
        out.push(field, format!("must be {CODE_DIGITS} digits"));
    }
}

/// Keys the at-rest form of codes.
#[derive(Clone)]
pub struct CodeHasher {
    key: [u8; 32],
}

impl CodeHasher {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The stored form of `code` for `email` (normalised) and `purpose`.
    pub fn hash(&self, purpose: Purpose, email: &str, code: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        // Length-prefixed parts so no two (purpose, email, code) triples share an input.
        for part in [purpose.as_str(), email, code] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `code` is the one `stored` was made from, compared in constant time.
    pub fn matches(&self, stored: &str, purpose: Purpose, email: &str, code: &str) -> bool {
        let candidate = self.hash(purpose, email, code);
        candidate.as_bytes().ct_eq(stored.as_bytes()).into()
    }
}

/// How often codes may be sent to one address for one purpose.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    /// Least time between two sends.
    pub cooldown: Duration,
    /// Most sends in an hour (counted from the first send of the hour).
    pub per_hour: u32,
}

/// The send counter of one address and purpose as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendCounter {
    /// Sends in the current hour.
    pub count: u32,
    /// No send before this.
    pub next_allowed: DateTime<Utc>,
    /// When the hour that `count` covers ends.
    pub window_ends: DateTime<Utc>,
}

const HOUR: Duration = Duration::from_secs(3600);

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))
}

/// How many times more codes one mailbox may receive per hour from all requesters it does not know
/// (clients the account never signed in from) together than from any one of them.
pub const MAILBOX_FACTOR: u32 = 2;

impl SendLimits {
    /// What one requesting client may ask for one address and purpose: the hourly cap, no
    /// cool-down of its own (the mailbox's applies).
    pub fn per_requester(&self) -> SendLimits {
        SendLimits {
            cooldown: Duration::ZERO,
            per_hour: self.per_hour,
        }
    }

    /// What all requesters together may ask for one address and purpose: the cool-down, and
    /// [`MAILBOX_FACTOR`] times the hourly cap.
    pub fn per_mailbox(&self) -> SendLimits {
        SendLimits {
            cooldown: self.cooldown,
            per_hour: self.per_hour.saturating_mul(MAILBOX_FACTOR),
        }
    }

    /// Admits one send given the counter as stored (`None`: no send this hour) and returns the
    /// counter to store, or how long to wait.
    pub fn admit(
        &self,
        seen: Option<SendCounter>,
        now: DateTime<Utc>,
    ) -> Result<SendCounter, Duration> {
        let live = seen.filter(|c| c.window_ends > now);
        if let Some(c) = live {
            if c.next_allowed > now {
                return Err((c.next_allowed - now).to_std().unwrap_or_default());
            }
            if c.count >= self.per_hour {
                return Err((c.window_ends - now).to_std().unwrap_or_default());
            }
        }
        Ok(SendCounter {
            count: live.map_or(0, |c| c.count) + 1,
            next_allowed: add(now, self.cooldown),
            window_ends: live.map_or_else(|| add(now, HOUR), |c| c.window_ends),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_codes_are_required_and_six_digits() {
        let reasons = |code: &str| {
            let mut v = Violations::new();
            check_code("code", code, &mut v);
            v.into_iter().map(|f| f.description).collect::<Vec<_>>()
        };
        assert!(reasons("123456").is_empty());
        assert_eq!(reasons(""), ["is required"]);
        assert_eq!(reasons("12345"), ["must be 6 digits"]);
        assert_eq!(reasons("12345a"), ["must be 6 digits"]);
    }

    fn hasher() -> CodeHasher {
        CodeHasher::new([7; 32])
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> = (0..200).map(|_| generate()).collect();
        assert!(codes.iter().all(|c| well_formed(c)));
        assert!(codes.len() > 190, "codes repeat too often: {}", codes.len());
        assert!(!well_formed("12345") && !well_formed("12345a") && !well_formed("１２３４５６"));
    }

    #[test]
    fn a_code_matches_only_its_email_purpose_and_key() {
        let h = hasher();
        let stored = h.hash(Purpose::Login, "a@example.com", "123456");
        assert!(!stored.contains("123456"));
        assert!(h.matches(&stored, Purpose::Login, "a@example.com", "123456"));
        assert!(!h.matches(&stored, Purpose::Login, "a@example.com", "123457"));
        assert!(!h.matches(&stored, Purpose::ResetPassword, "a@example.com", "123456"));
        assert!(!h.matches(&stored, Purpose::Login, "b@example.com", "123456"));
        let other_key = CodeHasher::new([8; 32]);
        assert!(!other_key.matches(&stored, Purpose::Login, "a@example.com", "123456"));
    }

    #[test]
    fn cooldown_then_hourly_cap_then_a_new_hour() {
        let limits = SendLimits {
            cooldown: Duration::from_secs(60),
            per_hour: 5,
        };
        let t0 = Utc::now();
        let mut counter = limits.admit(None, t0).unwrap();
        assert_eq!(counter.count, 1);
        // Within the cool-down: wait for the rest of it.
        let wait = limits
            .admit(Some(counter), t0 + chrono::Duration::seconds(20))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        let mut t = t0;
        for n in 2..=5 {
            t += chrono::Duration::seconds(61);
            counter = limits.admit(Some(counter), t).unwrap();
            assert_eq!(counter.count, n);
        }
        // Sixth in the hour: wait until the hour ends, not just the cool-down.
        t += chrono::Duration::seconds(61);
        let wait = limits.admit(Some(counter), t).unwrap_err();
        assert_eq!(
            wait,
            (counter.window_ends - t).to_std().unwrap(),
            "the cap waits for the window"
        );
        assert!(wait > Duration::from_secs(60));
        // A new hour starts a new count.
        let later = counter.window_ends + chrono::Duration::seconds(1);
        assert_eq!(limits.admit(Some(counter), later).unwrap().count, 1);
    }
}
