//! `one_time_codes`: the live code of each (purpose, email), at most one. The document id is a
//! hash of purpose + email, so the collection is no list of addresses; the code itself is only
//! its keyed hash (see `domain::codes`). Every use is one conditional single-document update.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bson_time;
use crate::domain::codes::Purpose;

/// A stored code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneTimeCodeDoc {
    #[serde(rename = "_id")]
    pub key: String,
    /// HMAC of purpose + email + code.
    pub code_hash: String,
    /// Who asked for it: a hash of the requesting client's rate-limit key (address or IPv6 /64).
    #[serde(default)]
    pub requested_by: String,
    /// Attempts made on this code so far (right or wrong) from the client that asked for it.
    pub attempts: u32,
    /// Attempts from anywhere else. A separate budget, so a stranger guessing at someone's
    /// address cannot use up the attempts of the code its owner is about to type.
    #[serde(default)]
    pub foreign_attempts: u32,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
}

/// The `one_time_codes` collection.
#[derive(Clone)]
pub struct OneTimeCodes(pub Collection<OneTimeCodeDoc>);

/// The id of the code slot of `email` (normalised) for `purpose`.
pub fn slot(purpose: Purpose, email: &str) -> String {
    format!(
        "{}:{}",
        purpose.as_str(),
        hex::encode(Sha256::digest(email.as_bytes()))
    )
}

impl OneTimeCodes {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.0.create_index(ttl).await.map(|_| ())
    }

    /// Stores a new code in `slot` for `requested_by`, replacing (and so killing) any earlier one.
    pub async fn replace(
        &self,
        slot: &str,
        requested_by: &str,
        code_hash: &str,
        now: DateTime<Utc>,
        lifetime: Duration,
    ) -> mongodb::error::Result<()> {
        let doc = OneTimeCodeDoc {
            key: slot.to_string(),
            code_hash: code_hash.to_string(),
            requested_by: requested_by.to_string(),
            attempts: 0,
            foreign_attempts: 0,
            created_at: now,
            expires_at: now + chrono::Duration::from_std(lifetime).unwrap_or_default(),
        };
        self.0
            .replace_one(doc! { "_id": slot }, &doc)
            .upsert(true)
            .await
            .map(|_| ())
    }

    /// The live code of `slot`, if any.
    pub async fn find_live(
        &self,
        slot: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<OneTimeCodeDoc>> {
        self.0
            .find_one(doc! { "_id": slot, "expires_at": { "$gt": bson_time(now) } })
            .await
    }

    /// Counts one attempt by `attempted_by` on the live code of `slot` and returns it, or `None`
    /// when there is no code, it expired, or the attempter's budget (the requester's own
    /// `max_attempts`, or everyone else's `max_foreign_attempts` together) is spent. Counting comes first, so
    /// however many attempts race, at most `max_attempts` per budget ever get to compare.
    pub async fn admit_attempt(
        &self,
        slot: &str,
        attempted_by: &str,
        now: DateTime<Utc>,
        max_attempts: u32,
        max_foreign_attempts: u32,
    ) -> mongodb::error::Result<Option<OneTimeCodeDoc>> {
        let live = doc! { "_id": slot, "expires_at": { "$gt": bson_time(now) } };
        let Some(seen) = self.0.find_one(live.clone()).await? else {
            return Ok(None);
        };
        let (budget, max) = if seen.requested_by == attempted_by {
            ("attempts", max_attempts)
        } else {
            ("foreign_attempts", max_foreign_attempts)
        };
        let mut filter = live;
        // The same code still (a replacement resets both budgets and may change the requester).
        filter.insert("code_hash", &seen.code_hash);
        filter.insert(budget, doc! { "$lt": max as i64 });
        self.0
            .find_one_and_update(filter, doc! { "$inc": { budget: 1 } })
            .return_document(ReturnDocument::After)
            .await
    }

    /// Uses up the code `code_hash` of `slot`. Of any number of concurrent callers holding the
    /// right code, exactly one gets `true`.
    pub async fn consume(
        &self,
        slot: &str,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .delete_one(doc! {
                "_id": slot,
                "code_hash": code_hash,
                "expires_at": { "$gt": bson_time(now) },
            })
            .await?;
        Ok(r.deleted_count == 1)
    }
}
