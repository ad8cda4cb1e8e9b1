//! Rules of federated sign-in (OpenID Connect) that need no network and no database: the
//! secrets of a flow, the checks of provider settings and of what a provider claims.
//!
//! A flow has two random 256-bit values: the `state`, which travels through the browser to the
//! provider and back, and the flow secret, which the client keeps and never puts in a URL. Only
//! their hashes are stored. The PKCE verifier is derived from the flow secret and the nonce from
//! the state, each with a server key (HMAC-SHA-256): a copy of the database cannot finish a flow,
//! and neither can whoever intercepts the callback URL (it carries the state and the code, never
//! the flow secret).

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

    /// A new flow secret: 256 random bits, URL-safe.
    pub fn new_flow_secret() -> String {
        new_secret("")
    }

    /// The stored form of a state or a flow secret.
    pub fn hash(value: &str) -> String {
        hex::encode(Sha256::digest(value.as_bytes()))
    }

    fn derive(&self, label: &str, state: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(state.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The PKCE code verifier of the flow with this secret (43 URL-safe characters, RFC 7636).
    pub fn pkce_verifier(&self, flow_secret: &str) -> String {
        self.derive("pkce", flow_secret)
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

/// A display name from a provider's `name` claim: control and format characters (including
/// bidirectional overrides) dropped, spaces collapsed, at most [`MAX_NAME_FROM_PROVIDER`]
/// characters.
pub fn display_name_from_claim(name: Option<&str>) -> String {
    let Some(name) = name else {
        return String::new();
    };
    name.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control() && !is_format(*c))
        .take(MAX_NAME_FROM_PROVIDER)
        .collect()
}

/// Invisible formatting characters that can disguise a name: zero-width ones, bidirectional
/// marks, embeddings, overrides and isolates, the byte-order mark.
fn is_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// Whether Google vouches for `email` in an ID token whose `email_verified` is true: Google is
/// authoritative only for its own addresses (`gmail.com`, `googlemail.com`) and for Workspace
/// accounts, whose token names their domain in `hd`. A consumer Google account made on another
/// address keeps `email_verified` after that mailbox changes hands.
pub fn google_vouches(email: &str, hosted_domain: Option<&str>) -> bool {
    let Some((_, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let domain = domain.to_ascii_lowercase();
    matches!(domain.as_str(), "gmail.com" | "googlemail.com")
        || hosted_domain.is_some_and(|hd| hd.eq_ignore_ascii_case(&domain))
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

/// A provider-supplied string safe to log and echo: printable ASCII, at most 64 characters.
pub fn tidy_provider_text(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_is_printable_ascii_and_short() {
        assert_eq!(tidy_provider_text("access_denied"), "access_denied");
        assert_eq!(
            tidy_provider_text("bad\r\nX-Injected: 1\u{1b}[31m é"),
            "badX-Injected: 1[31m "
        );
        assert_eq!(tidy_provider_text(&"a".repeat(100)).len(), 64);
    }

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
        assert_ne!(FlowKeys::hash(&state), state);
        assert_eq!(FlowKeys::new_flow_secret().len(), 43);
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
    fn google_vouches_only_for_its_own_and_workspace_domains() {
        assert!(google_vouches("ada@gmail.com", None));
        assert!(google_vouches("ada@corp.example", Some("corp.example")));
        assert!(!google_vouches("ada@corp.example", None));
        assert!(!google_vouches("ada@corp.example", Some("other.example")));
        assert!(!google_vouches("no-at-sign", None));
    }

    #[test]
    fn invisible_characters_are_dropped_from_names() {
        assert_eq!(
            display_name_from_claim(Some("Ada\u{202E}ecalevol\u{200B}")),
            "Adaecalevol"
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
