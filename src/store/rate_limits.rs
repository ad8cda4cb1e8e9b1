//! `rate_limits`: counters shared by every replica — per-email login lockout and per-address
//! fixed windows. Documents expire by TTL; reads still check the times they hold.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, DateTime as BsonDateTime};
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
    pub locked_until: Option<BsonDateTime>,
    pub expires_at: BsonDateTime,
}

/// The `rate_limits` collection.
#[derive(Clone)]
pub struct RateLimits(pub Collection<RateLimitDoc>);

fn later(now: DateTime<Utc>, d: Duration) -> BsonDateTime {
    bson_time(now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1)))
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

    /// The counter for `key` if it has not expired.
    pub async fn get(
        &self,
        key: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<RateLimitDoc>> {
        self.0
            .find_one(doc! { "_id": key, "expires_at": { "$gt": bson_time(now) } })
            .await
    }

    /// Counts a consecutive failure on `key` (kept for `memory`), returning the new count.
    pub async fn record_failure(
        &self,
        key: &str,
        now: DateTime<Utc>,
        memory: Duration,
    ) -> mongodb::error::Result<u32> {
        // An expired counter that the TTL monitor has not removed yet starts over.
        self.0
            .delete_one(doc! { "_id": key, "expires_at": { "$lte": bson_time(now) } })
            .await?;
        let doc = self
            .0
            .find_one_and_update(
                doc! { "_id": key },
                doc! { "$inc": { "count": 1 }, "$set": { "expires_at": later(now, memory) } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?;
        Ok(doc.map_or(1, |d| d.count))
    }

    pub async fn lock_until(
        &self,
        key: &str,
        until: DateTime<Utc>,
        memory: Duration,
    ) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": key },
                doc! { "$set": { "locked_until": bson_time(until), "expires_at": later(until, memory) } },
            )
            .await
            .map(|_| ())
    }

    pub async fn clear(&self, key: &str) -> mongodb::error::Result<()> {
        self.0.delete_one(doc! { "_id": key }).await.map(|_| ())
    }
}
