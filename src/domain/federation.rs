//! Rules of federated sign-in (OpenID Connect) that need no network and no database: the
//! secrets of a flow, the checks of provider settings and of what a provider claims.
//!
//! A flow's `state` is 256 random bits handed to the browser. Only its hash is stored; the PKCE
//! verifier and the nonce are derived from it with a server key (HMAC-SHA-256), so a copy of the
//! database cannot finish a flow, and nothing but the state has to travel.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::secrets::new_secret;

/// Longest `state`, `code` or provider error field keyward reads.
pub const MAX_CALLBACK_FIELD: usize = 2048;
/// Longest display name taken from a provider's `name` claim, in characters.
pub const MAX_NAME_FROM_PROVIDER: usize = 100;

/// Derives a flow's PKCE verifier and nonce from its state.
#[derive(Clone)]
pub struct FlowKeys {
    key: [u8; 32],
}

impl FlowKeys {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A new state: 256 random bits, URL-safe.
    pub fn new_state() -> String {
        new_secret("")
    }

    /// The stored form of a state.
    pub fn state_hash(state: &str) -> String {
        hex::encode(Sha256::digest(state.as_bytes()))
    }

    fn derive(&self, label: &str, state: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(state.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The PKCE code verifier of the flow (43 URL-safe characters, RFC 7636).
    pub fn pkce_verifier(&self, state: &str) -> String {
        self.derive("pkce", state)
    }

    /// The nonce of the flow.
    pub fn nonce(&self, state: &str) -> String {
        self.derive("nonce", state)
    }

    /// Whether `nonce` (from an ID token) is the flow's, in constant time.
    pub fn nonce_matches(&self, state: &str, nonce: &str) -> bool {
        self.nonce(state).as_bytes().ct_eq(nonce.as_bytes()).into()
    }
}

/// Whether `id` can name a provider: 1 to 32 of `a-z 0-9 _ -`, starting with a letter.
pub fn check_provider_id(id: &str) -> Result<(), &'static str> {
    let ok = (1..=32).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 32 of a-z, 0-9, _ and -, starting with a letter")
    }
}

/// Whether `issuer` may be a provider's issuer: an absolute `https` URL without query or
/// fragment, or `http` on a loopback address (a provider on the same machine, as in tests).
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = url::Url::parse(issuer).map_err(|e| format!("is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() || url.host_str().is_none() {
        return Err("must be an absolute URL without query or fragment".into());
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        _ => Err("must be https (http only on a loopback address)".into()),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Whether `uri` may be registered as a redirect URI: absolute, no fragment.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let url = url::Url::parse(uri).map_err(|e| format!("`{uri}` is not a URL: {e}"))?;
    if url.fragment().is_some() || url.host_str().is_none() {
        return Err(format!("`{uri}` must be absolute, without a fragment"));
    }
    Ok(())
}

/// The allowed redirect URI equal to `given`, byte for byte (no prefix, case or
/// normalisation games).
pub fn allowed_redirect<'a>(allowed: &'a [String], given: &str) -> Option<&'a str> {
    allowed.iter().map(String::as_str).find(|a| *a == given)
}

/// A display name from a provider's `name` claim: control characters dropped, spaces
/// collapsed, at most [`MAX_NAME_FROM_PROVIDER`] characters.
pub fn display_name_from_claim(name: Option<&str>) -> String {
    let Some(name) = name else {
        return String::new();
    };
    name.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_FROM_PROVIDER)
        .collect()
}

/// What an audit event keeps of a provider subject: a short hash, so the log links events of one
/// identity without being a directory of them.
pub fn subject_hash(provider: &str, subject: &str) -> String {
    let digest = Sha256::digest(format!("{provider}\0{subject}").as_bytes());
    hex::encode(&digest[..8])
}

/// Whether an ID token's issue time is acceptable: not more than `skew` seconds ahead of `now`,
/// and not older than `max_age` seconds (a flow lives 10 minutes).
pub fn issue_time_ok(iat: i64, now: i64, skew: i64, max_age: i64) -> bool {
    iat <= now + skew && iat >= now - max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_secrets_derive_from_the_state_and_the_key() {
        let keys = FlowKeys::new([7; 32]);
        let state = FlowKeys::new_state();
        assert_eq!(state.len(), 43);
        let verifier = keys.pkce_verifier(&state);
        assert_eq!(verifier.len(), 43, "RFC 7636 wants 43..=128 characters");
        assert_ne!(verifier, keys.nonce(&state));
        assert_eq!(verifier, keys.pkce_verifier(&state));
        assert_ne!(verifier, FlowKeys::new([8; 32]).pkce_verifier(&state));
        assert_ne!(verifier, keys.pkce_verifier(&FlowKeys::new_state()));
        assert!(keys.nonce_matches(&state, &keys.nonce(&state)));
        assert!(!keys.nonce_matches(&state, "x"));
        assert_ne!(FlowKeys::state_hash(&state), state);
    }

    #[test]
    fn provider_ids() {
        for ok in ["google", "corp-sso", "a", "okta_2"] {
            assert!(check_provider_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Google", "1x", "a b", "x".repeat(33).as_str(), "é"] {
            assert!(check_provider_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issuers_are_https_except_on_loopback() {
        assert!(check_issuer("https://accounts.google.com").is_ok());
        assert!(check_issuer("http://127.0.0.1:8080/oidc").is_ok());
        assert!(check_issuer("http://[::1]:9/").is_ok());
        assert!(check_issuer("http://localhost:9").is_ok());
        assert!(check_issuer("http://idp.example.com").is_err());
        assert!(check_issuer("https://idp.example.com/?x=1").is_err());
        assert!(check_issuer("ftp://idp.example.com").is_err());
        assert!(check_issuer("not a url").is_err());
    }

    #[test]
    fn redirect_uris_match_exactly() {
        let allowed = vec!["https://app.example.com/cb".to_string()];
        assert!(allowed_redirect(&allowed, "https://app.example.com/cb").is_some());
        for bad in [
            "https://app.example.com/cb/",
            "https://app.example.com/cb?x=1",
            "https://app.example.com/c",
            "https://APP.example.com/cb",
            "https://app.example.com/cb#",
            "https://app.example.com.evil.test/cb",
        ] {
            assert!(allowed_redirect(&allowed, bad).is_none(), "{bad}");
        }
        assert!(check_redirect_uri("https://app.example.com/cb#frag").is_err());
        assert!(check_redirect_uri("/cb").is_err());
    }

    #[test]
    fn names_from_providers_are_tidied() {
        assert_eq!(
            display_name_from_claim(Some("  Ada \n\t Lovelace\u{7} ")),
            "Ada Lovelace"
        );
        assert_eq!(display_name_from_claim(None), "");
        assert_eq!(
            display_name_from_claim(Some(&"x".repeat(500)))
                .chars()
                .count(),
            MAX_NAME_FROM_PROVIDER
        );
    }

    #[test]
    fn issue_times() {
        assert!(issue_time_ok(1000, 1000, 60, 600));
        assert!(issue_time_ok(1050, 1000, 60, 600));
        assert!(!issue_time_ok(1100, 1000, 60, 600));
        assert!(!issue_time_ok(300, 1000, 60, 600));
    }

    #[test]
    fn subject_hashes_are_short_and_provider_bound() {
        assert_eq!(subject_hash("google", "1").len(), 16);
        assert_ne!(subject_hash("google", "1"), subject_hash("okta", "1"));
    }
}
