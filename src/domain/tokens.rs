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
        let expires_at = DateTime::parse_from_rfc3339(&text("exp")?)
            .map_err(|_| TokenError::BadClaim("exp"))?
            .with_timezone(&Utc);
        Ok(AccessClaims {
            user_id: text("sub")?,
            session_id: text("sid")?,
            email: text("email")?,
            role: text("role")?
                .parse()
                .map_err(|_| TokenError::BadClaim("role"))?,
            expires_at,
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
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_claims() {
        let r = ring("keyward");
        let (t, exp) = r.issue(&claims(), Utc::now(), Duration::from_secs(900));
        assert!(t.starts_with("v4.public."));
        let got = r.verify(&t).unwrap();
        assert_eq!(got.user_id, "u1");
        assert_eq!(got.session_id, "s1");
        assert_eq!(got.role, Role::User);
        assert_eq!(got.expires_at.timestamp(), exp.timestamp());
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
}
