//! Organizations' own rules: what a name, slug and website may be, the slug a name suggests,
//! invitation tokens and when an invitation can still be accepted.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use unicode_normalization::UnicodeNormalization;

use super::validation::Violations;

/// How long an invitation can be accepted.
pub const INVITATION_LIFETIME: Duration = Duration::from_secs(72 * 3600);
/// Invitations one organization may send per hour (a guard against mail abuse).
pub const INVITES_PER_ORG_PER_HOUR: u32 = 100;
/// Prefix that makes invitation tokens recognisable to secret scanners.
pub const INVITATION_TOKEN_PREFIX: &str = "kwi_";
pub const MAX_ORG_NAME: usize = 200;
pub const MAX_SLUG: usize = 63;
pub const MAX_WEBSITE: usize = 2048;
pub const MAX_DEPARTMENT: usize = 100;

/// A validated organization: trimmed name and website, and the slug if one was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgFields {
    pub name: String,
    pub slug: Option<String>,
    pub website: String,
}

/// Checks the fields of a new organization (an empty `slug`: derive one from the name);
/// `prefix` names them inside a larger request (`organization.`).
pub fn org_fields(
    name: &str,
    slug: &str,
    website: &str,
    prefix: &str,
    out: &mut Violations,
) -> Option<OrgFields> {
    let before = out.len();
    let name = name.trim().to_string();
    check_name(&format!("{prefix}name"), &name, out);
    let slug = slug.trim().to_string();
    if !slug.is_empty() {
        out.check(&format!("{prefix}slug"), check_slug(&slug));
    }
    let website = website.trim().to_string();
    out.check(&format!("{prefix}website"), check_website(&website));
    (out.len() == before).then(|| OrgFields {
        name,
        slug: (!slug.is_empty()).then_some(slug),
        website,
    })
}

/// An organization's name: required, at most [`MAX_ORG_NAME`] characters.
pub fn check_name(field: &str, name: &str, out: &mut Violations) {
    out.required_text(field, name, MAX_ORG_NAME);
}

/// A member's department: optional, at most [`MAX_DEPARTMENT`] characters.
pub fn check_department(department: &str, out: &mut Violations) {
    out.text("department", department, MAX_DEPARTMENT);
}

/// A slug is 1 to 63 of `a-z`, `0-9` and inner single hyphens (a DNS label, lowercase).
pub fn check_slug(slug: &str) -> Result<(), String> {
    let ok_chars = slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if slug.len() > MAX_SLUG
        || !ok_chars
        || slug.starts_with('-')
        || slug.ends_with('-')
        || slug.contains("--")
    {
        return Err(format!(
            "must be 1 to {MAX_SLUG} lowercase letters, digits and single inner hyphens"
        ));
    }
    Ok(())
}

/// Empty, or an absolute `http(s)` URL with a host.
pub fn check_website(website: &str) -> Result<(), String> {
    if website.is_empty() {
        return Ok(());
    }
    let rest = website
        .strip_prefix("https://")
        .or_else(|| website.strip_prefix("http://"));
    let host = rest
        .map(|r| r.split(['/', '?', '#']).next().unwrap_or_default())
        .unwrap_or_default();
    let host_ok = !host.is_empty()
        && !host.contains('@')
        && host
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if website.len() > MAX_WEBSITE
        || !host_ok
        || website.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "must be an http:// or https:// URL of at most {MAX_WEBSITE} bytes"
        ));
    }
    Ok(())
}

/// The slug a name suggests: ASCII letters and digits (accents dropped), words joined by single
/// hyphens, apostrophes dropped ("St. Mary's" -> "st-marys"); "org" when nothing is left.
/// Short enough to take a numeric suffix.
pub fn derive_slug(name: &str) -> String {
    let mut slug = String::new();
    let mut gap = false;
    for c in name.nfkd() {
        if c.is_ascii_alphanumeric() {
            if gap && !slug.is_empty() {
                slug.push('-');
            }
            gap = false;
            slug.push(c.to_ascii_lowercase());
        } else if matches!(c, '\'' | '\u{2019}')
            || unicode_normalization::char::is_combining_mark(c)
        {
            // Inside a word: "mary's" is one word, "é" is "e".
        } else {
            gap = true;
        }
    }
    // Room for "-" and a suffix within MAX_SLUG.
    slug.truncate(MAX_SLUG - 8);
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "org".to_string()
    } else {
        slug
    }
}

/// The `n`th slug tried for `base`: `base` itself, then `base-2`, `base-3`, …
pub fn numbered_slug(base: &str, n: usize) -> String {
    if n <= 1 {
        base.to_string()
    } else {
        format!("{base}-{n}")
    }
}

/// `base` with a random suffix, for when the numbered slugs keep being taken.
pub fn random_slug(base: &str) -> String {
    let mut bytes = [0u8; 3];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{base}-{}", hex::encode(bytes))
}

/// The `rate_limits` key counting `org_id`'s invitations in hour window `index`.
pub fn invitation_limit_key(org_id: &str, index: i64) -> String {
    format!("invite_org:{org_id}:{index}")
}

/// A new invitation token: 256 bits from the OS CSPRNG.
pub fn new_invitation_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{INVITATION_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Where an invitation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationState {
    Pending,
    Accepted,
    /// Replaced by a newer invitation, or taken back.
    Revoked,
}

/// Why an invitation cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationUnusable {
    Used,
    Revoked,
    Expired,
}

/// Whether an invitation in `state`, expiring at `expires_at`, can be accepted at `now`.
pub fn invitation_usable(
    state: InvitationState,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), InvitationUnusable> {
    match state {
        InvitationState::Accepted => Err(InvitationUnusable::Used),
        InvitationState::Revoked => Err(InvitationUnusable::Revoked),
        InvitationState::Pending if expires_at <= now => Err(InvitationUnusable::Expired),
        InvitationState::Pending => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_come_from_names() {
        assert_eq!(derive_slug("St. Mary's"), "st-marys");
        assert_eq!(derive_slug("  Hôpital Saint-Éloi  "), "hopital-saint-eloi");
        assert_eq!(derive_slug("ACME  --  Clinic #2"), "acme-clinic-2");
        assert_eq!(derive_slug("北京协和医院"), "org");
        let long = derive_slug(&"a".repeat(100));
        assert!(long.len() <= MAX_SLUG - 8);
        assert_eq!(numbered_slug("st-marys", 1), "st-marys");
        assert_eq!(numbered_slug("st-marys", 2), "st-marys-2");
        for name in ["St. Mary's", "x", "--a--b--", "Ünïcödé Hospital"] {
            assert_eq!(check_slug(&derive_slug(name)), Ok(()), "{name}");
        }
        let random = random_slug("st-marys");
        assert!(random.starts_with("st-marys-") && check_slug(&random).is_ok());
    }

    #[test]
    fn explicit_slugs_are_dns_labels() {
        for ok in ["a", "st-marys", "clinic-42", &"a".repeat(63)] {
            assert_eq!(check_slug(ok), Ok(()), "{ok}");
        }
        for bad in [
            "St-Marys",
            "-a",
            "a-",
            "a--b",
            "a b",
            "a_b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn websites_are_http_urls() {
        let ok = |w: &str| check_website(w).is_ok();
        assert!(ok(""));
        assert!(ok("https://st-marys.example"));
        assert!(ok("http://localhost:8080/path?q=1"));
        assert!(!ok("st-marys.example"));
        assert!(!ok("javascript:alert(1)"));
        assert!(!ok("https://"));
        assert!(!ok("https://user@evil.example"));
        assert!(!ok("https://a b.example"));
    }

    #[test]
    fn new_org_fields_are_trimmed_and_checked_under_their_prefix() {
        let mut v = Violations::new();
        let fields = org_fields(" St. Mary's ", "", " https://x.example ", "", &mut v);
        assert_eq!(
            fields,
            Some(OrgFields {
                name: "St. Mary's".into(),
                slug: None,
                website: "https://x.example".into(),
            })
        );
        assert!(v.is_empty());
        let mut v = Violations::new();
        v.push("email", "is not an email address");
        assert_eq!(
            org_fields(" ", "Bad Slug", "ftp://x", "organization.", &mut v),
            None
        );
        let fields: Vec<String> = v.into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            [
                "email",
                "organization.name",
                "organization.slug",
                "organization.website"
            ]
        );
    }

    #[test]
    fn invitation_states_have_their_own_reasons() {
        let now = Utc::now();
        let expires = now + chrono::Duration::hours(72);
        assert_eq!(
            invitation_usable(InvitationState::Pending, expires, now),
            Ok(())
        );
        assert_eq!(
            invitation_usable(InvitationState::Pending, expires, expires),
            Err(InvitationUnusable::Expired)
        );
        assert_eq!(
            invitation_usable(InvitationState::Accepted, expires, now),
            Err(InvitationUnusable::Used)
        );
        assert_eq!(
            invitation_usable(InvitationState::Revoked, expires, now),
            Err(InvitationUnusable::Revoked)
        );
        assert!(new_invitation_token().starts_with(INVITATION_TOKEN_PREFIX));
        assert_ne!(new_invitation_token(), new_invitation_token());
        assert_eq!(invitation_limit_key("o1", 7), "invite_org:o1:7");
    }
}
