//! Second factors: TOTP (RFC 6238, through `totp-rs`) with single-use recovery codes, how a
//! session was authenticated (`amr`, `aal`), and the sealing of TOTP secrets at rest.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

/// Seconds per TOTP step.
pub const STEP_SECONDS: u64 = 30;
/// Digits of a TOTP code.
pub const DIGITS: usize = 6;
/// Recovery codes handed out at once.
pub const RECOVERY_CODES: usize = 10;
/// Wrong codes a login challenge survives.
pub const CHALLENGE_ATTEMPTS: i32 = 5;
/// What a challenge's holder may answer with.
pub const CHALLENGE_METHODS: [&str; 2] = ["totp", "recovery_code"];

/// How a factor was proved, as RFC 8176 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// A password.
    Password,
    /// A one-time code sent by email.
    EmailCode,
    /// A code from an authenticator app.
    Totp,
    /// A recovery code.
    RecoveryCode,
    /// A sign-in at an OpenID Connect provider.
    Federated,
}

impl Factor {
    pub fn amr(self) -> &'static str {
        match self {
            Factor::Password => "pwd",
            Factor::EmailCode => "otp",
            Factor::Totp => "totp",
            Factor::RecoveryCode => "rcode",
            Factor::Federated => "oidc",
        }
    }

    pub fn from_amr(amr: &str) -> Option<Self> {
        [
            Factor::Password,
            Factor::EmailCode,
            Factor::Totp,
            Factor::RecoveryCode,
            Factor::Federated,
        ]
        .into_iter()
        .find(|f| f.amr() == amr)
    }

    /// Second factors: proof of something held apart from the mailbox and the password.
    pub fn is_second(self) -> bool {
        matches!(self, Factor::Totp | Factor::RecoveryCode)
    }
}

/// Authenticator assurance level of a session whose factors are `amr`: 2 when a second factor
/// was proved, else 1.
pub fn aal(amr: &[String]) -> u8 {
    if amr
        .iter()
        .filter_map(|a| Factor::from_amr(a))
        .any(Factor::is_second)
    {
        2
    } else {
        1
    }
}

/// A new TOTP secret: 160 random bits, as RFC 4226 recommends.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    rand::thread_rng().fill(secret.as_mut_slice());
    secret
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> TOTP {
    // ':' separates issuer and account in the URI label; neither may carry one.
    TOTP::new_unchecked(
        Algorithm::SHA1,
        DIGITS,
        0,
        STEP_SECONDS,
        secret.to_vec(),
        Some(issuer.replace(':', "_")),
        account.replace(':', "_"),
    )
}

/// The secret as base32 without padding, for typing into an app.
pub fn secret_base32(secret: &[u8]) -> String {
    totp(secret, "", "").get_secret_base32()
}

/// `otpauth://totp/...` for a QR code.
pub fn otpauth_uri(secret: &[u8], issuer: &str, account: &str) -> String {
    totp(secret, issuer, account).get_url()
}

/// The TOTP step of unix time `now`.
pub fn step_at(now: i64) -> i64 {
    now.max(0) / STEP_SECONDS as i64
}

/// The step whose code `code` is, among the previous, current and next step at `now`
/// (compared in constant time); `None` when it is none of them or not 6 digits.
pub fn matching_step(secret: &[u8], code: &str, now: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "", "");
    let current = step_at(now);
    let mut found = None;
    for step in [current - 1, current, current + 1] {
        if step < 0 {
            continue;
        }
        let expected = totp.generate(step as u64 * STEP_SECONDS);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Letters and digits that cannot be misread for one another (no 0/o, 1/l/i).
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// Ten new recovery codes, `xxxxx-xxxxx` (about 49 bits each).
pub fn new_recovery_codes() -> Vec<String> {
    let mut rng = rand::thread_rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String = (0..10)
                .map(|_| RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())] as char)
                .collect();
            format!("{}-{}", &chars[..5], &chars[5..])
        })
        .collect()
}

/// A recovery code as typed (any case, with or without `-` and spaces) in its canonical form;
/// `None` when it cannot be one.
pub fn normalize_recovery_code(input: &str) -> Option<String> {
    if input.len() > 64 {
        return None;
    }
    let chars: String = input
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (chars.len() == 10 && chars.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)))
        .then(|| format!("{}-{}", &chars[..5], &chars[5..]))
}

/// Keys recovery codes at rest (HMAC-SHA-256 with a key derived from the master secret) and
/// seals TOTP secrets (XChaCha20-Poly1305, bound to their user's id).
#[derive(Clone)]
pub struct MfaKeys {
    hash_key: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl MfaKeys {
    pub fn new(hash_key: [u8; 32], seal_key: [u8; 32]) -> Self {
        Self {
            hash_key,
            cipher: XChaCha20Poly1305::new(&seal_key.into()),
        }
    }

    /// The stored form of a canonical recovery code of `user_id`.
    pub fn recovery_hash(&self, user_id: &str, code: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.hash_key).expect("any key length");
        for part in [user_id, code] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// `secret` sealed for `user_id`: it opens only with this key and for that user.
    pub fn seal(&self, user_id: &str, secret: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        let payload = Payload {
            msg: secret,
            aad: user_id.as_bytes(),
        };
        out.extend(
            self.cipher
                .encrypt(&nonce, payload)
                .expect("encryption of a small secret"),
        );
        out
    }

    /// The secret sealed for `user_id`; `None` when it was sealed for someone else, with another
    /// key, or altered.
    pub fn open(&self, user_id: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() <= 24 {
            return None;
        }
        let (nonce, body) = sealed.split_at(24);
        let payload = Payload {
            msg: body,
            aad: user_id.as_bytes(),
        };
        self.cipher.decrypt(XNonce::from_slice(nonce), payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, truncated to 6 digits.
    #[test]
    fn codes_match_the_rfc_6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
        ] {
            assert_eq!(matching_step(secret, code, time), Some(step_at(time)));
        }
    }

    #[test]
    fn one_step_of_skew_either_way_and_no_more() {
        let secret = new_secret();
        let now = 1_700_000_015;
        let code_at = |t: i64| totp(&secret, "", "").generate(t as u64);
        assert_eq!(
            matching_step(&secret, &code_at(now - 30), now),
            Some(step_at(now) - 1)
        );
        assert_eq!(
            matching_step(&secret, &code_at(now + 30), now),
            Some(step_at(now) + 1)
        );
        for far in [now - 90, now + 90, now - 3600] {
            let code = code_at(far);
            // A far code may collide with a near one by chance (1 in 10^6 per step).
            if [now - 30, now, now + 30]
                .iter()
                .all(|t| code_at(*t) != code)
            {
                assert_eq!(matching_step(&secret, &code, now), None);
            }
        }
        assert_eq!(matching_step(&secret, "12345", now), None);
        assert_eq!(matching_step(&secret, "12345a", now), None);
        assert_eq!(matching_step(&secret, "", now), None);
    }

    #[test]
    fn the_uri_names_issuer_account_and_secret() {
        let secret = new_secret();
        let uri = otpauth_uri(&secret, "Acme ID", "ana@example.com");
        assert!(
            uri.starts_with("otpauth://totp/Acme%20ID:ana%40example.com?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={}", secret_base32(&secret))));
        assert!(uri.contains("issuer=Acme%20ID"));
        assert!(!secret_base32(&secret).contains('='));
    }

    #[test]
    fn recovery_codes_are_distinct_and_read_back_however_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        for code in &codes {
            assert_eq!(normalize_recovery_code(code).as_ref(), Some(code));
            let typed = format!(" {} ", code.to_uppercase().replace('-', " "));
            assert_eq!(normalize_recovery_code(&typed).as_ref(), Some(code));
        }
        assert_eq!(normalize_recovery_code("abcde-fghj"), None);
        assert_eq!(normalize_recovery_code("0bcde-fghjk"), None);
        assert_eq!(normalize_recovery_code(&"a".repeat(1000)), None);
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_key() {
        let keys = MfaKeys::new([1; 32], [2; 32]);
        let secret = new_secret();
        let sealed = keys.seal("u1", &secret);
        assert_eq!(keys.open("u1", &sealed), Some(secret.clone()));
        assert_eq!(keys.open("u2", &sealed), None);
        assert_eq!(MfaKeys::new([1; 32], [3; 32]).open("u1", &sealed), None);
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(keys.open("u1", &altered), None);
        assert_eq!(keys.open("u1", &[0; 10]), None);
    }

    #[test]
    fn recovery_hashes_are_per_user() {
        let keys = MfaKeys::new([1; 32], [2; 32]);
        assert_ne!(
            keys.recovery_hash("u1", "abcde-fghjk"),
            keys.recovery_hash("u2", "abcde-fghjk")
        );
        assert_eq!(
            keys.recovery_hash("u1", "abcde-fghjk"),
            keys.recovery_hash("u1", "abcde-fghjk")
        );
    }

    #[test]
    fn a_second_factor_makes_aal_2() {
        let amr = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(aal(&amr(&["pwd"])), 1);
        assert_eq!(aal(&amr(&["otp"])), 1);
        assert_eq!(aal(&amr(&["pwd", "otp"])), 1);
        assert_eq!(aal(&amr(&["pwd", "totp"])), 2);
        assert_eq!(aal(&amr(&["otp", "rcode"])), 2);
        assert_eq!(aal(&amr(&["made-up"])), 1);
        assert_eq!(aal(&[]), 1);
    }
}
