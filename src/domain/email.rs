//! Email addresses as account identifiers.

use unicode_normalization::UnicodeNormalization;

/// RFC 5321 limit on the length of a forward path.
pub const MAX_EMAIL_LEN: usize = 254;

/// Normalises an email so that one person cannot hold two accounts by changing case, Unicode form
/// or surrounding spaces: trim, NFC, lowercase (as Ory Kratos does for identifiers).
/// Returns a description of the problem when the address is not a plausible mailbox.
pub fn normalize(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err("is required");
    }
    if trimmed.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let normalized: String = trimmed.nfc().collect::<String>().to_lowercase();
    if normalized.len() > MAX_EMAIL_LEN {
        return Err("must be at most 254 bytes");
    }
    if !email_address::EmailAddress::is_valid(&normalized) {
        return Err("is not a valid email address");
    }
    // Display names, quoted local parts and IP-literal domains are valid RFC 5322 but never a
    // login identifier.
    let (_, domain) = normalized
        .rsplit_once('@')
        .ok_or("is not a valid email address")?;
    if normalized.contains(['<', '>', ' ', '"', '\\'])
        || domain.starts_with('[')
        || !domain.contains('.')
    {
        return Err("is not a valid email address");
    }
    Ok(normalized)
}

/// The start of an email, normalised as [`normalize`] does, for prefix searches.
pub fn normalize_prefix(raw: &str) -> String {
    raw.trim().nfc().collect::<String>().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_space_and_unicode_forms_collapse_to_one_identifier() {
        assert_eq!(
            normalize("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        // "é" precomposed vs. "e" + combining acute accent.
        assert_eq!(
            normalize("jos\u{e9}@example.com"),
            normalize("jose\u{301}@example.com")
        );
    }

    #[test]
    fn a_prefix_matches_what_normalize_stores() {
        let stored = normalize("Jose\u{301}@Example.com").unwrap();
        assert!(stored.starts_with(&normalize_prefix(" JOSE\u{301}")));
    }

    #[test]
    fn rejects_what_is_not_a_mailbox() {
        for bad in [
            "",
            "   ",
            "no-at-sign",
            "a@b",
            "a@[127.0.0.1]",
            "Alice <a@example.com>",
            "a\r\n@example.com",
            "\"a b\"@example.com",
            "\":z\"@z.com",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(normalize(&long).is_err());
    }
}
