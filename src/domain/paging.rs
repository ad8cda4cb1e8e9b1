//! Keyset pagination: page sizes and opaque page tokens.
//!
//! A page token holds the sort key of the last item returned (a time and an id, so ties are
//! broken) and a fingerprint of the filters it was issued for; a token used with other filters,
//! or not made by keyward, is refused. Pages never repeat or skip an item because others were
//! inserted meanwhile: each page starts strictly after the previous page's last key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page; bigger requests are capped.
pub const MAX_PAGE_SIZE: usize = 200;

/// Where the previous page ended: the sort time (milliseconds) and id of its last item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at_millis: i64,
    pub id: String,
}

/// The page size for a requested one, or `None` when it is negative.
pub fn page_size(requested: i32) -> Option<usize> {
    match requested {
        n if n < 0 => None,
        0 => Some(DEFAULT_PAGE_SIZE),
        n => Some((n as usize).min(MAX_PAGE_SIZE)),
    }
}

fn fingerprint(filters: &str) -> String {
    hex::encode(&Sha256::digest(filters.as_bytes())[..8])
}

/// The token for the page after `cursor`, under `filters` (any canonical text of them).
pub fn encode(cursor: &Cursor, filters: &str) -> String {
    let raw = format!(
        "{}|{}|{}",
        cursor.at_millis,
        fingerprint(filters),
        cursor.id
    );
    URL_SAFE_NO_PAD.encode(raw)
}

/// The cursor in `token` (`Ok(None)` for an empty token), or `Err` when it is malformed or was
/// issued for other filters.
pub fn decode(token: &str, filters: &str) -> Result<Option<Cursor>, ()> {
    if token.is_empty() {
        return Ok(None);
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| ())?;
    let raw = String::from_utf8(raw).map_err(|_| ())?;
    let mut parts = raw.splitn(3, '|');
    let (Some(at), Some(print), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(());
    };
    if print != fingerprint(filters) || id.is_empty() {
        return Err(());
    }
    Ok(Some(Cursor {
        at_millis: at.parse().map_err(|_| ())?,
        id: id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_only_under_their_own_filters() {
        let cursor = Cursor {
            at_millis: 1_700_000_000_123,
            id: "abc".into(),
        };
        let token = encode(&cursor, "role=admin");
        assert_eq!(decode(&token, "role=admin"), Ok(Some(cursor)));
        assert_eq!(decode(&token, "role=user"), Err(()));
        assert_eq!(decode("", "role=admin"), Ok(None));
        assert_eq!(decode("not a token!", "role=admin"), Err(()));
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode("x|y"), ""), Err(()));
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), Some(50));
        assert_eq!(page_size(7), Some(7));
        assert_eq!(page_size(10_000), Some(200));
        assert_eq!(page_size(-1), None);
    }
}
