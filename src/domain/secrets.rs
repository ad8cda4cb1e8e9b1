//! Random secrets and their at-rest form.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix that makes keyward refresh tokens recognisable to secret scanners.
pub const REFRESH_TOKEN_PREFIX: &str = "kwr_";

/// A new opaque refresh token: 256 bits from the OS CSPRNG.
pub fn new_refresh_token() -> String {
    new_secret(REFRESH_TOKEN_PREFIX)
}

/// `prefix` and 256 bits from the OS CSPRNG, URL-safe base64.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a high-entropy secret. A fast hash is enough here: with 256 random bits
/// there is nothing to brute-force, and lookups by hash need a deterministic function.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random identifier (sessions, users).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `id` has the form [`new_id`] gives every identifier (32 lower-case hex digits), so
/// that anything else is refused before it reaches a query or a cache key.
pub fn is_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_one_form() {
        assert!(is_id(&new_id()));
        assert!(!is_id(""));
        assert!(!is_id(&new_id().to_uppercase()));
        assert!(!is_id(&format!("{}0", new_id())));
        assert!(!is_id(&"x".repeat(60 * 1024)));
    }

    #[test]
    fn refresh_tokens_are_unique_and_never_stored_in_clear() {
        let a = new_refresh_token();
        let b = new_refresh_token();
        assert_ne!(a, b);
        assert!(a.starts_with(REFRESH_TOKEN_PREFIX) && a.len() >= 4 + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert!(!hash_token(&a).contains(&a[4..]));
    }
}
