//! Password policy (NIST SP 800-63B / OWASP ASVS 5) and password hashing.
//!
//! Hashing is CPU-heavy and blocking: callers run these functions on the hash pool
//! (`crate::hash_pool`), never on async workers.

use std::cell::RefCell;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::validation::FieldViolation;

/// What a new password must satisfy. By default only NIST's rules apply (length and "not a
/// common or easily guessed password"); composition rules are opt-in, for deployers who must
/// match a policy like the seeds' upper/lower/digit/special rule.
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub max_length: usize,
    /// zxcvbn score 0..=4 a password must reach. 0 turns the guessability check off.
    pub min_strength: u8,
    pub require_uppercase: bool,
    pub require_lowercase: bool,
    pub require_digit: bool,
    pub require_symbol: bool,
}

/// Longest prefix of a password the guessability check looks at.
const ZXCVBN_MAX_CHARS: usize = 64;

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 128,
            min_strength: 2,
            require_uppercase: false,
            require_lowercase: false,
            require_digit: false,
            require_symbol: false,
        }
    }
}

impl PasswordPolicy {
    /// Every rule `password` breaks, as violations of `field`. `user_inputs` (email, name) count
    /// as guessable words. Length is counted in Unicode characters and nothing is truncated.
    pub fn check(&self, field: &str, password: &str, user_inputs: &[&str]) -> Vec<FieldViolation> {
        let mut out = Vec::new();
        let mut violation = |d: String| out.push(FieldViolation::new(field, d));
        let len = password.chars().count();
        if len == 0 {
            violation("is required".into());
            return out;
        }
        if len < self.min_length {
            violation(format!(
                "must be at least {} characters long",
                self.min_length
            ));
        }
        if len > self.max_length {
            violation(format!(
                "must be at most {} characters long",
                self.max_length
            ));
            // zxcvbn on a huge input is slow and pointless.
            return out;
        }
        if self.require_uppercase && !password.chars().any(char::is_uppercase) {
            violation("must contain an uppercase letter".into());
        }
        if self.require_lowercase && !password.chars().any(char::is_lowercase) {
            violation("must contain a lowercase letter".into());
        }
        if self.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
            violation("must contain a digit".into());
        }
        if self.require_symbol
            && !password
                .chars()
                .any(|c| !c.is_alphanumeric() && !c.is_whitespace())
        {
            violation("must contain a special character".into());
        }
        if self.min_strength > 0 && len >= self.min_length {
            // The user's own words (email parts, name) count as a dictionary.
            let words: Vec<&str> = user_inputs
                .iter()
                .flat_map(|input| {
                    std::iter::once(*input).chain(input.split(|c: char| !c.is_alphanumeric()))
                })
                .filter(|w| w.chars().count() >= 3)
                .collect();
            // zxcvbn's cost grows faster than the length: judge a bounded prefix. A prefix is
            // no stronger than the whole, so this never passes a weak password.
            let judged: String = password.chars().take(ZXCVBN_MAX_CHARS).collect();
            let score = u8::from(zxcvbn::zxcvbn(&judged, &words).score());
            if score < self.min_strength {
                violation("is too common or too easy to guess; try a longer passphrase".into());
            }
        }
        out
    }
}

/// OWASP's argon2id parameters: m = 19 MiB, t = 2, p = 1.
pub fn argon2id() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

thread_local! {
    /// argon2's working memory, allocated once per hashing thread and reused. Allocating 19 MiB
    /// per hash made glibc keep hundreds of MiB of freed blocks resident under load.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs argon2 into `out` with this thread's reusable memory.
fn compute(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        let blocks = argon.params().block_count();
        if memory.len() != blocks {
            memory.clear();
            memory.shrink_to_fit();
            memory.resize(blocks, Block::default());
        }
        let result = argon.hash_password_into_with_memory(password, salt, out, &mut memory[..]);
        // Only today's parameters keep their memory; an imported hash asking more (up to
        // MAX_ARGON2_MEMORY_KIB) gives it back at once instead of holding it per thread.
        if blocks > argon2id().params().block_count() {
            *memory = Vec::new();
        }
        result
    })
}

/// What one hashing thread keeps allocated between hashes, in bytes (argon2id at m = 19 MiB).
pub fn memory_per_hash_thread() -> usize {
    argon2id().params().block_count() * std::mem::size_of::<Block>()
}

/// A new argon2id PHC string for `password`.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("argon2 hashing failed: {e}");
    let argon = argon2id();
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| err(&e))?;
    let mut out = [0u8; 32];
    compute(&argon, password.as_bytes(), salt_bytes, &mut out).map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(|e| err(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| err(&e))?),
    };
    Ok(phc.to_string())
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Mismatch,
    Match,
    /// Correct, but the stored hash is bcrypt or weaker argon2 and should be replaced.
    MatchNeedsRehash,
}

/// Checks `password` against a stored argon2 PHC string or an imported bcrypt hash
/// (`$2a$`, `$2b$`, `$2y$`). Both comparisons are constant-time.
pub fn verify(password: &str, stored: &str) -> Verification {
    if !is_verifiable_hash(stored) {
        return Verification::Mismatch;
    }
    if is_bcrypt(stored) {
        return match bcrypt::verify(password, stored) {
            Ok(true) => Verification::MatchNeedsRehash,
            _ => Verification::Mismatch,
        };
    }
    match verify_argon2(password, stored) {
        Some((true, up_to_date)) if up_to_date => Verification::Match,
        Some((true, _)) => Verification::MatchNeedsRehash,
        _ => Verification::Mismatch,
    }
}

/// The most work one stored hash may ask of a login: above this a single attempt would hold a
/// hash thread for minutes or allocate more memory than a replica has. Generous for real
/// deployments (bcrypt's usual cost is 10-12; OWASP's argon2id settings use 19-46 MiB).
pub const MAX_BCRYPT_COST: u32 = 14;
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
pub const MAX_ARGON2_ITERATIONS: u32 = 10;
pub const MAX_ARGON2_LANES: u32 = 4;

fn is_bcrypt(stored: &str) -> bool {
    stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$")
}

/// Whether `stored` is a hash keyward can verify within the work limits above: an argon2 PHC
/// string or a bcrypt `$2a$`/`$2b$`/`$2y$` hash (the formats an import may bring).
pub fn is_verifiable_hash(stored: &str) -> bool {
    if is_bcrypt(stored) {
        return stored.len() == 60
            && stored
                .parse::<bcrypt::HashParts>()
                .is_ok_and(|h| h.get_cost() <= MAX_BCRYPT_COST);
    }
    PasswordHash::new(stored).ok().is_some_and(|h| {
        Algorithm::try_from(h.algorithm).is_ok()
            && h.hash.is_some()
            && h.salt.is_some()
            && Params::try_from(&h).is_ok_and(|p| {
                p.m_cost() <= MAX_ARGON2_MEMORY_KIB
                    && p.t_cost() <= MAX_ARGON2_ITERATIONS
                    && p.p_cost() <= MAX_ARGON2_LANES
            })
    })
}

/// (matches, hashed with at least today's parameters), or `None` for an unusable hash.
fn verify_argon2(password: &str, stored: &str) -> Option<(bool, bool)> {
    let parsed = PasswordHash::new(stored).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .ok()?;
    let params = Params::try_from(&parsed).ok()?;
    let expected = parsed.hash?;
    let mut salt_buf = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt_buf).ok()?;
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    compute(&argon, password.as_bytes(), salt, &mut out).ok()?;
    // `Output`'s equality is constant-time.
    let matches = Output::new(&out).ok()? == expected;
    let current = argon2id();
    let up_to_date = algorithm == Algorithm::Argon2id
        && params.m_cost() >= current.params().m_cost()
        && params.t_cost() >= current.params().t_cost();
    Some((matches, up_to_date))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptions(v: Vec<FieldViolation>) -> Vec<String> {
        v.into_iter().map(|v| v.description).collect()
    }

    #[test]
    fn nist_default_accepts_passphrases_and_rejects_short_long_and_common() {
        let p = PasswordPolicy::default();
        assert!(p
            .check("password", "correct horse battery staple", &[])
            .is_empty());
        assert!(p.check("password", "Xq7#mLp2vR", &[]).is_empty());
        assert_eq!(
            descriptions(p.check("password", "aB3$", &[])),
            ["must be at least 8 characters long"]
        );
        assert_eq!(
            descriptions(p.check("password", &"x".repeat(129), &[])),
            ["must be at most 128 characters long"]
        );
        for common in [
            "password",
            "12345678",
            "Password1",
            "qwertyuiop",
            "iloveyou1",
        ] {
            assert!(
                !p.check("password", common, &[]).is_empty(),
                "{common} accepted"
            );
        }
        // The user's own email is a guessable word.
        assert!(!p
            .check(
                "password",
                "jane.doe@example.com",
                &["jane.doe@example.com"]
            )
            .is_empty());
        assert!(!p
            .check("password", "zebrafinch", &["zebrafinch@example.com"])
            .is_empty());
        assert!(p.check("password", "zebrafinch", &[]).is_empty());
    }

    #[test]
    fn composition_rules_apply_only_when_configured() {
        let p = PasswordPolicy {
            require_uppercase: true,
            require_lowercase: true,
            require_digit: true,
            require_symbol: true,
            ..PasswordPolicy::default()
        };
        let v = descriptions(p.check("new_password", "correct horse battery staple", &[]));
        assert_eq!(
            v,
            [
                "must contain an uppercase letter",
                "must contain a digit",
                "must contain a special character"
            ]
        );
        assert!(p
            .check("new_password", "Correct-horse-battery-9", &[])
            .is_empty());
    }

    #[test]
    fn argon2id_round_trip_and_no_truncation() {
        let long = format!("{}A", "b".repeat(127));
        let h = hash(&long).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(verify(&long, &h), Verification::Match);
        // A password differing only after byte 72 (where bcrypt would truncate) must fail.
        let other = format!("{}B", "b".repeat(127));
        assert_eq!(verify(&other, &h), Verification::Mismatch);
    }

    #[test]
    fn hashes_asking_too_much_work_are_refused() {
        let light = bcrypt::hash("x", 4).unwrap();
        let heavy_bcrypt = light.replacen("$04$", "$31$", 1);
        assert!(heavy_bcrypt.parse::<bcrypt::HashParts>().is_ok());
        assert!(!is_verifiable_hash(&heavy_bcrypt));
        assert_eq!(verify("x", &heavy_bcrypt), Verification::Mismatch);
        let heavy_argon2 = "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!is_verifiable_hash(heavy_argon2));
        assert_eq!(verify("x", heavy_argon2), Verification::Mismatch);
        let usual = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(is_verifiable_hash(usual));
        assert!(is_verifiable_hash(&bcrypt::hash("x", 4).unwrap()));
    }

    #[test]
    fn bcrypt_imports_verify_and_ask_for_rehash() {
        let h = bcrypt::hash("hunter2hunter2", 4).unwrap();
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let variant = format!("{prefix}{}", &h[4..]);
            assert_eq!(
                verify("hunter2hunter2", &variant),
                Verification::MatchNeedsRehash
            );
            assert_eq!(verify("hunter3hunter3", &variant), Verification::Mismatch);
        }
    }

    #[test]
    fn weaker_argon2_asks_for_rehash_and_garbage_never_matches() {
        use argon2::PasswordHasher;
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let h = weak
            .hash_password(b"pw-pw-pw-pw", &salt)
            .unwrap()
            .to_string();
        assert_eq!(verify("pw-pw-pw-pw", &h), Verification::MatchNeedsRehash);
        assert_eq!(verify("anything", "not a hash"), Verification::Mismatch);
        assert_eq!(verify("anything", ""), Verification::Mismatch);
    }
}
