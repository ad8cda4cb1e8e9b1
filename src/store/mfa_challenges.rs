//! `mfa_challenges`: the second step of a login to an account with a second factor. The id is
//! the SHA-256 of the challenge handed to the client (never the challenge itself); a TTL index
//! removes it after it expires. It is used up by one conditional update, so of any number of
//! concurrent CompleteMfa calls exactly one gets tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, DateTime as BsonDateTime};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;

/// A pending second step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfaChallengeDoc {
    #[serde(rename = "_id")]
    pub challenge_hash: String,
    pub user_id: String,
    /// The first factor already proved (RFC 8176 `amr` value).
    pub first_factor: String,
    /// Wrong codes so far.
    pub attempts: i32,
    pub used: bool,
    pub created_at: BsonDateTime,
    pub expires_at: BsonDateTime,
}

/// The `mfa_challenges` collection.
#[derive(Clone)]
pub struct MfaChallenges(pub Collection<MfaChallengeDoc>);

fn live(hash: &str, max_attempts: i32, now: DateTime<Utc>) -> mongodb::bson::Document {
    doc! {
        "_id": hash,
        "used": false,
        "attempts": { "$lt": max_attempts },
        "expires_at": { "$gt": bson_time(now) },
    }
}

impl MfaChallenges {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.0.create_index(ttl).await.map(|_| ())
    }

    pub async fn insert(&self, challenge: &MfaChallengeDoc) -> mongodb::error::Result<()> {
        self.0.insert_one(challenge).await.map(|_| ())
    }

    /// The challenge if it is unused, unexpired and has attempts left.
    pub async fn find_live(
        &self,
        hash: &str,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<MfaChallengeDoc>> {
        self.0.find_one(live(hash, max_attempts, now)).await
    }

    /// Counts a wrong code against a live challenge.
    pub async fn count_failure(
        &self,
        hash: &str,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                live(hash, max_attempts, now),
                doc! { "$inc": { "attempts": 1 } },
            )
            .await
            .map(|_| ())
    }

    /// Uses the challenge up; `Some` for exactly one caller.
    pub async fn use_up(
        &self,
        hash: &str,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<MfaChallengeDoc>> {
        self.0
            .find_one_and_update(
                live(hash, max_attempts, now),
                doc! { "$set": { "used": true } },
            )
            .return_document(ReturnDocument::After)
            .await
    }
}
