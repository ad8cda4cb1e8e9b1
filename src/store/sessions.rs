//! `sessions`: one document per signed-in device. A session is also its refresh-token family:
//! every rotation replaces `refresh_hash` in place, and the hashes already used are kept so a
//! replay of any of them is recognised and revokes the family.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;

/// How many used refresh-token hashes a session remembers for reuse detection. At one refresh
/// per 15-minute access token that covers ten days of a session; older replays are simply
/// unknown tokens (refused, without revoking).
pub const USED_HASHES_KEPT: i32 = 1000;

/// A stored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: String,
    /// SHA-256 of the current refresh token.
    pub refresh_hash: String,
    /// SHA-256 of the token rotated just before the current one (the grace-window token).
    pub previous_refresh_hash: Option<String>,
    /// Hashes of every token already rotated out (newest last, capped).
    #[serde(default)]
    pub used_refresh_hashes: Vec<String>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub rotated_at: Option<DateTime<Utc>>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub last_used_at: DateTime<Utc>,
    /// Absolute end of the session; the TTL index deletes it after this.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    pub user_agent: String,
    pub client_address: String,
    /// The factors proved for this session (RFC 8176 `amr` values), first factor first.
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the last factor was proved (sign-in or step-up); sessions from before second
    /// factors existed have none and count from `created_at`.
    #[serde(default)]
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional")]
    pub authenticated_at: Option<DateTime<Utc>>,
}

impl SessionDoc {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// The `sessions` collection.
#[derive(Clone)]
pub struct Sessions(pub Collection<SessionDoc>);

/// Leaves out the used-hash list (up to ~70 KB) wherever it is not needed.
fn without_used_hashes() -> Document {
    doc! { "used_refresh_hashes": 0 }
}

fn active(now: DateTime<Utc>) -> Document {
    doc! { "revoked_at": null, "expires_at": { "$gt": bson_time(now) } }
}

impl Sessions {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let indexes = [
            IndexModel::builder().keys(doc! { "user_id": 1 }).build(),
            IndexModel::builder()
                .keys(doc! { "refresh_hash": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! { "used_refresh_hashes": 1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "expires_at": 1 })
                .options(
                    IndexOptions::builder()
                        .expire_after(std::time::Duration::ZERO)
                        .build(),
                )
                .build(),
        ];
        self.0.create_indexes(indexes).await?;
        Ok(())
    }

    pub async fn insert(&self, session: &SessionDoc) -> mongodb::error::Result<()> {
        self.0.insert_one(session).await.map(|_| ())
    }

    /// Rotates the refresh token of the active session whose current token hashes to
    /// `old_hash`, as one conditional update: of any number of concurrent calls with the same
    /// token, exactly one gets the session back.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<SessionDoc>> {
        let mut filter = active(now);
        filter.insert("refresh_hash", old_hash);
        let update = doc! {
            "$set": {
                "refresh_hash": new_hash,
                "previous_refresh_hash": old_hash,
                "rotated_at": bson_time(now),
                "last_used_at": bson_time(now),
            },
            "$push": { "used_refresh_hashes": { "$each": [old_hash], "$slice": -USED_HASHES_KEPT } },
        };
        self.0
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .projection(without_used_hashes())
            .await
    }

    /// Adds a proved factor to an active session of `user_id` (step-up) and returns the
    /// session as it is now; `None` when it is no longer active.
    pub async fn add_factor(
        &self,
        id: &str,
        user_id: &str,
        amr: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<SessionDoc>> {
        let mut filter = active(now);
        filter.insert("_id", id);
        filter.insert("user_id", user_id);
        self.0
            .find_one_and_update(
                filter,
                doc! {
                    "$addToSet": { "amr": amr },
                    "$set": { "authenticated_at": bson_time(now), "last_used_at": bson_time(now) },
                },
            )
            .return_document(ReturnDocument::After)
            .projection(without_used_hashes())
            .await
    }

    /// The session that once had a refresh token hashing to `hash` (already rotated out).
    pub async fn find_by_used_refresh_hash(
        &self,
        hash: &str,
    ) -> mongodb::error::Result<Option<SessionDoc>> {
        self.0
            .find_one(doc! { "used_refresh_hashes": hash })
            .projection(without_used_hashes())
            .await
    }

    pub async fn find(&self, id: &str) -> mongodb::error::Result<Option<SessionDoc>> {
        self.0
            .find_one(doc! { "_id": id })
            .projection(without_used_hashes())
            .await
    }

    /// Revokes one session if it is still active; returns whether this call revoked it.
    /// With `user_id`, only that user's session (so users cannot revoke each other's).
    pub async fn revoke(
        &self,
        id: &str,
        user_id: Option<&str>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let mut filter = active(now);
        filter.insert("_id", id);
        if let Some(user_id) = user_id {
            filter.insert("user_id", user_id);
        }
        let r = self
            .0
            .update_one(
                filter,
                doc! { "$set": { "revoked_at": bson_time(now), "revoked_reason": reason } },
            )
            .await?;
        Ok(r.modified_count == 1)
    }

    /// Revokes every active session of `user_id` except `keep`, and returns the ids it revoked.
    pub async fn revoke_all_for_user(
        &self,
        user_id: &str,
        keep: Option<&str>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Vec<String>> {
        // A revocation marker unique to this call finds exactly the sessions it ended.
        let marker = crate::domain::secrets::new_id();
        let mut filter = active(now);
        filter.insert("user_id", user_id);
        if let Some(keep) = keep {
            filter.insert("_id", doc! { "$ne": keep });
        }
        self.0
            .update_many(
                filter,
                doc! { "$set": { "revoked_at": bson_time(now), "revoked_reason": reason, "revocation": &marker } },
            )
            .await?;
        let ids: Vec<Document> = self
            .0
            .clone_with_type::<Document>()
            .find(doc! { "user_id": user_id, "revocation": &marker })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(ids
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// The user's active sessions, newest first.
    pub async fn list_active(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Vec<SessionDoc>> {
        let mut filter = active(now);
        filter.insert("user_id", user_id);
        self.0
            .find(filter)
            .sort(doc! { "created_at": -1 })
            .limit(1000)
            .projection(without_used_hashes())
            .await?
            .try_collect()
            .await
    }
}
