//! PASETO v4.public access tokens and the key ring that signs and verifies them.
//!
//! Claims: `sub` (user id), `sid` (session id), `iss`, `aud`, `iat`, `nbf`, `exp`, `role`,
//! `email`. The footer carries `kid`, the PASERK `k4.pid` of the signing key, so verifiers pick
//! the right key during a rotation.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::footer::Footer;
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{public, Public};

use super::roles::Role;

/// What an access token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: String,
    pub session_id: String,
    pub email: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    /// How the session was authenticated (RFC 8176 values, see [`crate::domain::mfa::Factor`]).
    pub amr: Vec<String>,
    /// When the user last proved a factor in this session (sign-in or step-up).
    pub auth_time: DateTime<Utc>,
    /// Set when the caller is a service account presenting an API key (never in a token):
    /// `user_id` is the account's id, `session_id` the key's, `email` the account's name.
    pub service_account: Option<std::sync::Arc<ServiceAccountGrant>>,
}

/// What a service account may hold, as its key was last checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountGrant {
    /// The owning organization and the account's role in it; `None` for a platform account.
    pub org: Option<(String, crate::domain::permissions::OrgRole)>,
    /// When not empty, the only permissions it may hold.
    pub allowed_permissions: Vec<String>,
}

impl AccessClaims {
    /// Authenticator assurance level: 2 once a second factor was proved.
    pub fn aal(&self) -> u8 {
        crate::domain::mfa::aal(&self.amr)
    }
}

/// Why a token was refused. Callers map all of these to one answer (TOKEN_INVALID); the variants
/// exist for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a v4.public token")]
    Malformed,
    #[error("unknown key id")]
    UnknownKey,
    #[error("bad signature or claims: {0}")]
    Rejected(String),
    #[error("missing or malformed claim {0}")]
    BadClaim(&'static str),
}

/// A public key that verifies tokens, with its PASERK id.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key_id: String,
    pub public: AsymmetricPublicKey<V4>,
}

impl VerifyingKey {
    pub fn paserk(&self) -> String {
        paserk(&self.public)
    }
}

/// The signing key and every key whose tokens are still accepted.
#[derive(Clone)]
pub struct KeyRing {
    secret: AsymmetricSecretKey<V4>,
    signing: VerifyingKey,
    /// All accepted keys, the signing key first.
    verifying: Vec<VerifyingKey>,
    issuer: String,
    audience: String,
}

/// A new Ed25519 key pair as PASERK strings: (`k4.secret`, `k4.public`, `k4.pid`).
pub fn generate_key() -> (String, String, String) {
    let kp = AsymmetricKeyPair::<V4>::generate().expect("the OS CSPRNG is available");
    (paserk(&kp.secret), paserk(&kp.public), key_id(&kp.public))
}

fn paserk<K: FormatAsPaserk>(key: &K) -> String {
    let mut out = String::new();
    key.fmt(&mut out).expect("writing to a String cannot fail");
    out
}

fn key_id(public: &AsymmetricPublicKey<V4>) -> String {
    paserk(&Id::from(public))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl KeyRing {
    /// Builds the ring from a PASERK `k4.secret` and any number of extra `k4.public` keys (keys
    /// being rotated out, or in).
    pub fn new(
        secret_paserk: &str,
        extra_public: &[String],
        issuer: &str,
        audience: &str,
    ) -> Result<Self, String> {
        let secret = AsymmetricSecretKey::<V4>::try_from(secret_paserk.trim())
            .map_err(|_| "signing_key is not a PASERK k4.secret key".to_string())?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret)
            .map_err(|_| "signing_key does not yield a public key".to_string())?;
        let signing = VerifyingKey {
            key_id: key_id(&public),
            public,
        };
        let mut verifying = vec![signing.clone()];
        for (i, p) in extra_public.iter().enumerate() {
            let public = AsymmetricPublicKey::<V4>::try_from(p.trim())
                .map_err(|_| format!("verification_keys[{i}] is not a PASERK k4.public key"))?;
            let key = VerifyingKey {
                key_id: key_id(&public),
                public,
            };
            if !verifying.iter().any(|k| k.key_id == key.key_id) {
                verifying.push(key);
            }
        }
        Ok(Self {
            secret,
            signing,
            verifying,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    pub fn signing_key_id(&self) -> &str {
        &self.signing.key_id
    }

    pub fn verifying_keys(&self) -> &[VerifyingKey] {
        &self.verifying
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs an access token valid from `now` for `ttl`.
    pub fn issue(
        &self,
        claims: &AccessClaims,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> (String, DateTime<Utc>) {
        let expires_at =
            now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(15));
        let mut c = Claims::new().expect("system clock is after 1970");
        let set = |c: &mut Claims| -> Result<(), pasetors::errors::Error> {
            c.subject(&claims.user_id)?;
            c.issuer(&self.issuer)?;
            c.audience(&self.audience)?;
            c.issued_at(&rfc3339(now))?;
            c.not_before(&rfc3339(now))?;
            c.expiration(&rfc3339(expires_at))?;
            c.add_additional("sid", claims.session_id.as_str())?;
            c.add_additional("role", claims.role.as_str())?;
            c.add_additional("email", claims.email.as_str())?;
            c.add_additional("amr", claims.amr.clone())?;
            c.add_additional("auth_time", rfc3339(claims.auth_time))?;
            Ok(())
        };
        set(&mut c).expect("claim names are not reserved and values are strings");
        let mut footer = Footer::new();
        footer.key_id(&Id::try_from(self.signing.key_id.as_str()).expect("our own key id parses"));
        let token = public::sign(&self.secret, &c, Some(&footer), None)
            .expect("Ed25519 signing cannot fail");
        (token, expires_at.with_timezone(&Utc))
    }

    /// Verifies signature, `exp`/`nbf`/`iat` against the clock, issuer and audience, and reads
    /// the claims. Only `v4.public` tokens from a key in the ring pass.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let untrusted =
            UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
        let mut footer = Footer::new();
        footer
            .parse_bytes(untrusted.untrusted_footer())
            .map_err(|_| TokenError::Malformed)?;
        let kid = footer
            .get_claim("kid")
            .and_then(|v| v.as_str())
            .ok_or(TokenError::UnknownKey)?;
        let key = self
            .verifying
            .iter()
            .find(|k| k.key_id == kid)
            .ok_or(TokenError::UnknownKey)?;
        let mut rules = ClaimsValidationRules::new();
        rules.validate_issuer_with(&self.issuer);
        rules.validate_audience_with(&self.audience);
        let trusted = public::verify(&key.public, &untrusted, &rules, None, None)
            .map_err(|e| TokenError::Rejected(e.to_string()))?;
        let claims = trusted
            .payload_claims()
            .ok_or(TokenError::BadClaim("payload"))?;
        let text = |name: &'static str| {
            claims
                .get_claim(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or(TokenError::BadClaim(name))
        };
        let time = |name: &'static str| -> Result<DateTime<Utc>, TokenError> {
            Ok(DateTime::parse_from_rfc3339(&text(name)?)
                .map_err(|_| TokenError::BadClaim(name))?
                .with_timezone(&Utc))
        };
        let expires_at = time("exp")?;
        // Tokens signed before second factors existed carry neither claim: one factor, signed
        // in at an unknown time (the epoch), so they cannot do what needs a recent sign-in.
        let amr = match claims.get_claim("amr") {
            None => Vec::new(),
            Some(value) => value
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or(TokenError::BadClaim("amr"))?,
        };
        let auth_time = match claims.get_claim("auth_time") {
            None => DateTime::<Utc>::UNIX_EPOCH,
            Some(_) => time("auth_time")?,
        };
        Ok(AccessClaims {
            user_id: text("sub")?,
            session_id: text("sid")?,
            email: text("email")?,
            role: text("role")?
                .parse()
                .map_err(|_| TokenError::BadClaim("role"))?,
            expires_at,
            amr,
            auth_time,
            service_account: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(aud: &str) -> KeyRing {
        let (secret, _, _) = generate_key();
        KeyRing::new(&secret, &[], "keyward", aud).unwrap()
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            user_id: "u1".into(),
            session_id: "s1".into(),
            email: "a@example.com".into(),
            role: Role::User,
            expires_at: Utc::now(),
            amr: vec!["pwd".into(), "totp".into()],
            auth_time: Utc::now() - chrono::Duration::minutes(3),
            service_account: None,
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_claims() {
        let r = ring("keyward");
        // One set of claims: `claims()` reads the clock, and a second can tick between two calls.
        let claims = claims();
        let (t, exp) = r.issue(&claims, Utc::now(), Duration::from_secs(900));
        assert!(t.starts_with("v4.public."));
        let got = r.verify(&t).unwrap();
        assert_eq!(got.user_id, "u1");
        assert_eq!(got.session_id, "s1");
        assert_eq!(got.role, Role::User);
        assert_eq!(got.expires_at.timestamp(), exp.timestamp());
        assert_eq!(got.amr, ["pwd", "totp"]);
        assert_eq!(got.aal(), 2);
        assert_eq!(got.auth_time.timestamp(), claims.auth_time.timestamp());
    }

    #[test]
    fn expired_wrong_key_wrong_audience_and_tampered_tokens_fail() {
        let r = ring("keyward");
        let (expired, _) = r.issue(
            &claims(),
            Utc::now() - chrono::Duration::hours(1),
            Duration::from_secs(60),
        );
        assert!(matches!(r.verify(&expired), Err(TokenError::Rejected(_))));

        let (other, _) = ring("keyward").issue(&claims(), Utc::now(), Duration::from_secs(60));
        assert_eq!(r.verify(&other), Err(TokenError::UnknownKey));

        let (aud, _) = KeyRing {
            audience: "billing".into(),
            ..r.clone()
        }
        .issue(&claims(), Utc::now(), Duration::from_secs(60));
        assert!(matches!(r.verify(&aud), Err(TokenError::Rejected(_))));

        let (good, _) = r.issue(&claims(), Utc::now(), Duration::from_secs(60));
        let mut bytes = good.into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        assert!(r.verify(&String::from_utf8(bytes).unwrap()).is_err());
        assert_eq!(r.verify("v4.local.abc"), Err(TokenError::Malformed));
        assert_eq!(r.verify(""), Err(TokenError::Malformed));
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_through_extra_public_keys() {
        let (old_secret, old_public, old_id) = generate_key();
        let old = KeyRing::new(&old_secret, &[], "keyward", "keyward").unwrap();
        let (token, _) = old.issue(&claims(), Utc::now(), Duration::from_secs(60));
        let (new_secret, _, _) = generate_key();
        let new = KeyRing::new(&new_secret, &[old_public], "keyward", "keyward").unwrap();
        assert_eq!(new.verifying_keys().len(), 2);
        assert_eq!(new.verifying_keys()[1].key_id, old_id);
        assert!(new.verify(&token).is_ok());
        assert!(KeyRing::new("k4.secret.nope", &[], "i", "a").is_err());
    }

    // Property-based fuzzing. Deterministic: a fixed seed and no regression files, so CI sees
    // the same inputs every run. A longer campaign: `PROPTEST_CASES=100000 cargo test --lib
    // domain::tokens` (and `PROPTEST_RNG_SEED=<u64>` for other inputs); both override the
    // config below, as proptest's macro applies its environment variables last.
    use std::sync::OnceLock;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use proptest::prelude::*;
    use proptest::test_runner::{RngAlgorithm, RngSeed};

    fn fuzz_config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_algorithm: RngAlgorithm::ChaCha,
            rng_seed: RngSeed::Fixed(0x6b65_7977_6172_6402),
            max_shrink_iters: 4096,
            ..ProptestConfig::default()
        }
    }

    /// A ring that signs with one key and also accepts a second (as during a rotation), a token
    /// it issued, and the second key's id.
    struct Fixture {
        ring: KeyRing,
        token: String,
        other_kid: String,
    }

    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let (secret, _, _) = generate_key();
            let (_, other_public, other_kid) = generate_key();
            let ring = KeyRing::new(&secret, &[other_public], "keyward", "keyward").unwrap();
            let (token, _) = ring.issue(&claims(), Utc::now(), Duration::from_secs(3600));
            assert!(ring.verify(&token).is_ok());
            Fixture {
                ring,
                token,
                other_kid,
            }
        })
    }

    /// (header with payload, footer) of a v4.public token.
    fn split_footer(token: &str) -> (&str, &str) {
        token.rsplit_once('.').unwrap()
    }

    fn footer_with_kid(kid: &str) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::json!({ "kid": kid }).to_string())
    }

    /// Strings that look more or less like tokens, and plain garbage.
    fn token_like() -> impl Strategy<Value = String> {
        let f = fixture();
        let own_footer = footer_with_kid(f.ring.signing_key_id());
        prop_oneof![
            2 => any::<String>(),
            2 => "v4\\.public\\.[A-Za-z0-9_-]{0,300}(\\.[A-Za-z0-9_-]{0,120})?",
            1 => "(v[0-9]|V4|v4)\\.(public|local|secret|PUBLIC)\\.[ -~]{0,200}",
            1 => "v4\\.public\\.[A-Za-z0-9_=+/.-]{0,200}\\.{0,3}",
            // A payload of any bytes under our own key id: the signature never matches.
            3 => proptest::collection::vec(any::<u8>(), 0..400).prop_map(move |payload| {
                format!("v4.public.{}.{own_footer}", URL_SAFE_NO_PAD.encode(payload))
            }),
        ]
    }

    proptest! {
        #![proptest_config(fuzz_config(512))]

        #[test]
        fn arbitrary_strings_never_verify(s in token_like()) {
            prop_assert!(fixture().ring.verify(&s).is_err(), "{s:?} verified");
        }

        #[test]
        fn a_token_with_one_byte_changed_never_verifies(
            at in any::<proptest::sample::Index>(),
            replacement in proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00~"
                    .to_vec(),
            ),
        ) {
            let mut bytes = fixture().token.clone().into_bytes();
            let at = at.index(bytes.len());
            prop_assume!(bytes[at] != replacement);
            bytes[at] = replacement;
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert!(fixture().ring.verify(&tampered).is_err(), "{tampered:?} verified");
        }

        #[test]
        fn a_truncated_or_extended_token_never_verifies(
            cut in any::<proptest::sample::Index>(),
            suffix in "[ -~]{1,20}|\\PC{1,4}",
        ) {
            let token = &fixture().token;
            let truncated = &token[..cut.index(token.len())];
            prop_assert!(fixture().ring.verify(truncated).is_err(), "{truncated:?} verified");
            let extended = format!("{token}{suffix}");
            prop_assert!(fixture().ring.verify(&extended).is_err(), "{extended:?} verified");
        }

        #[test]
        fn a_token_with_another_footer_never_verifies(
            footer in prop_oneof![
                Just(String::new()),
                Just("kid-of-the-other-key".to_string()),
                any::<String>().prop_map(|s| URL_SAFE_NO_PAD.encode(s)),
                "[A-Za-z0-9_-]{1,120}",
                any::<String>().prop_map(|kid| footer_with_kid(&kid)),
                any::<String>().prop_map(|junk| {
                    let kid = fixture().ring.signing_key_id();
                    URL_SAFE_NO_PAD.encode(format!(r#"{{"kid":"{kid}","x":{junk:?}}}"#))
                }),
            ],
        ) {
            let f = fixture();
            let footer = if footer == "kid-of-the-other-key" {
                footer_with_kid(&f.other_kid)
            } else {
                footer
            };
            let (head, own) = split_footer(&f.token);
            prop_assume!(footer != own);
            let token = if footer.is_empty() {
                head.to_string()
            } else {
                format!("{head}.{footer}")
            };
            prop_assert!(f.ring.verify(&token).is_err(), "{token:?} verified");
        }
    }

    proptest! {
        #![proptest_config(fuzz_config(64))]

        /// Tokens from a key the ring does not hold never verify, not even when their footer
        /// names a key the ring does hold; and they do verify under their own key.
        #[test]
        fn tokens_signed_by_another_key_never_verify(
            user_id in "\\PC{1,40}",
            email in "\\PC{1,60}",
            role in proptest::sample::select(Role::ALL.to_vec()),
            claim_other_kid in any::<bool>(),
        ) {
            let f = fixture();
            let (secret, _, _) = generate_key();
            let foreign = KeyRing::new(&secret, &[], "keyward", "keyward").unwrap();
            let claims = AccessClaims {
                user_id,
                email,
                role,
                ..claims()
            };
            let (token, _) = foreign.issue(&claims, Utc::now(), Duration::from_secs(3600));
            let own = foreign.verify(&token).unwrap();
            prop_assert_eq!((&own.user_id, &own.email, own.role), (&claims.user_id, &claims.email, claims.role));
            prop_assert_eq!(f.ring.verify(&token), Err(TokenError::UnknownKey));
            let kid = if claim_other_kid { &f.other_kid } else { f.ring.signing_key_id() };
            let (head, _) = split_footer(&token);
            let relabelled = format!("{head}.{}", footer_with_kid(kid));
            prop_assert!(
                matches!(f.ring.verify(&relabelled), Err(TokenError::Rejected(_))),
                "{:?}",
                f.ring.verify(&relabelled)
            );
        }
    }
}
