//! `mfa_challenges`: the second step of a login to an account with a second factor. The id is
//! the SHA-256 of the challenge handed to the client (never the challenge itself); a TTL index
//! removes it after it expires. Every code tried takes one of its 5 attempts first, and it is
//! used up by one conditional update, so of any number of
//! concurrent CompleteMfa calls exactly one gets tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
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
    /// Codes tried so far (each counted before it is checked).
    pub attempts: i32,
    /// A hash of the account's password hash when the challenge was made: a password change
    /// in between voids the challenge.
    #[serde(default)]
    pub credential: String,
    pub used: bool,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
}

/// The `mfa_challenges` collection.
#[derive(Clone)]
pub struct MfaChallenges(pub Collection<MfaChallengeDoc>);

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

    /// Takes one attempt of a live challenge (unused, unexpired, attempts left) before the
    /// code is checked, so concurrent guesses cannot exceed `max_attempts` together.
    pub async fn take_attempt(
        &self,
        hash: &str,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<MfaChallengeDoc>> {
        self.0
            .find_one_and_update(
                doc! {
                    "_id": hash,
                    "used": false,
                    "attempts": { "$lt": max_attempts },
                    "expires_at": { "$gt": bson_time(now) },
                },
                doc! { "$inc": { "attempts": 1 } },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Uses the challenge up; `Some` for exactly one caller.
    pub async fn use_up(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<MfaChallengeDoc>> {
        self.0
            .find_one_and_update(
                doc! { "_id": hash, "used": false, "expires_at": { "$gt": bson_time(now) } },
                doc! { "$set": { "used": true } },
            )
            .return_document(ReturnDocument::After)
            .await
    }
}
