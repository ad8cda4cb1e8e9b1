//! `rate_limits`: counters shared by every replica — per-email password attempts (lockout) and
//! per-address fixed windows. Documents expire by TTL; reads still check the times they hold.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;

/// One counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateLimitDoc {
    #[serde(rename = "_id")]
    pub key: String,
    pub count: u32,
    #[serde(default)]
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional")]
    pub locked_until: Option<DateTime<Utc>>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
}

/// The `rate_limits` collection.
#[derive(Clone)]
pub struct RateLimits(pub Collection<RateLimitDoc>);

fn later(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))
}

impl RateLimits {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.0.create_index(ttl).await.map(|_| ())
    }

    /// Counts one hit on `key` in a window that ends after `ttl`; returns the count so far.
    pub async fn hit(
        &self,
        key: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> mongodb::error::Result<u32> {
        let doc = self
            .0
            .find_one_and_update(
                doc! { "_id": key },
                doc! { "$inc": { "count": 1 }, "$setOnInsert": { "expires_at": later(now, ttl) } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?;
        Ok(doc.map_or(1, |d| d.count))
    }

    /// The counter for `key` as stored, expired or not (for compare-and-set).
    pub async fn find_raw(&self, key: &str) -> mongodb::error::Result<Option<RateLimitDoc>> {
        self.0.find_one(doc! { "_id": key }).await
    }

    /// Moves the counter from what `seen` held (or from nothing) to `count`, with `locked_until`,
    /// only if nobody changed it since `seen` was read. Of concurrent callers that read the same
    /// state, exactly one succeeds.
    pub async fn compare_and_set(
        &self,
        seen: Option<&RateLimitDoc>,
        key: &str,
        count: u32,
        locked_until: Option<DateTime<Utc>>,
        expires_at: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        match seen {
            None => {
                let new = RateLimitDoc {
                    key: key.to_string(),
                    count,
                    locked_until,
                    expires_at,
                };
                match self.0.insert_one(&new).await {
                    Ok(_) => Ok(true),
                    Err(e) if super::is_duplicate_key(&e) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(old) => {
                let r = self
                    .0
                    .update_one(
                        doc! { "_id": key, "count": old.count, "expires_at": old.expires_at },
                        doc! { "$set": { "count": count, "locked_until": locked_until, "expires_at": bson_time(expires_at) } },
                    )
                    .await?;
                Ok(r.modified_count == 1)
            }
        }
    }

    pub async fn clear(&self, key: &str) -> mongodb::error::Result<()> {
        self.0.delete_one(doc! { "_id": key }).await.map(|_| ())
    }

    /// Removes every counter whose key starts with `prefix` (a range on `_id`, no expression).
    pub async fn clear_prefixed(&self, prefix: &str) -> mongodb::error::Result<()> {
        self.0
            .delete_many(doc! { "_id": {
                "$gte": prefix,
                "$lt": format!("{prefix}{}", char::MAX),
            } })
            .await
            .map(|_| ())
    }
}
