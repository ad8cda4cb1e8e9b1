//! `invitations`: invitations to join an organization. The token is stored only as its SHA-256
//! hash; an invitation is used up by one conditional update (`status: pending` -> `accepted`), so
//! it works once however many accept it at the same instant.
//!
//! Used, revoked and expired invitations are kept until `purge_at` (TTL), so that a late click
//! is told what happened instead of "not found".

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;
use crate::domain::permissions::OrgRole;

/// How long an invitation is kept after it expires.
pub const KEEP_AFTER_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where an invitation stands. Expiry is not a status: it follows from `expires_at` and the
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitationStatus {
    Pending,
    Accepted,
    /// Replaced by a newer invitation to the same email for the same organization.
    Revoked,
}

/// A stored invitation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub org_id: String,
    /// Normalised.
    pub email: String,
    #[serde(with = "super::memberships::org_role_str")]
    pub role: OrgRole,
    #[serde(default)]
    pub department: String,
    /// SHA-256 of the token (see `domain::secrets::hash_token`).
    pub token_hash: String,
    pub status: InvitationStatus,
    /// User id of the member who sent it.
    pub invited_by: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub purge_at: DateTime<Utc>,
    #[serde(default)]
    pub accepted_by: Option<String>,
    #[serde(default)]
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional")]
    pub accepted_at: Option<DateTime<Utc>>,
}

/// The `invitations` collection.
#[derive(Clone)]
pub struct Invitations(pub Collection<InvitationDoc>);

impl Invitations {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let by_token = IndexModel::builder()
            .keys(doc! { "token_hash": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("token_hash_unique".to_string())
                    .build(),
            )
            .build();
        let by_invitee = IndexModel::builder()
            .keys(doc! { "org_id": 1, "email": 1, "status": 1 })
            .build();
        let ttl = IndexModel::builder()
            .keys(doc! { "purge_at": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.0
            .create_indexes([by_token, by_invitee, ttl])
            .await
            .map(|_| ())
    }

    pub async fn insert(&self, invitation: &InvitationDoc) -> mongodb::error::Result<()> {
        self.0.insert_one(invitation).await.map(|_| ())
    }

    /// Revokes the pending invitations to the same email for the same organization that are
    /// older than `newer` — ordered by (created_at, id), so when two invitations are sent at
    /// once exactly the later one stays pending whichever revokes first.
    pub async fn revoke_older(&self, newer: &InvitationDoc) -> mongodb::error::Result<u64> {
        let r = self
            .0
            .update_many(
                doc! {
                    "org_id": &newer.org_id,
                    "email": &newer.email,
                    "status": "pending",
                    "$or": [
                        { "created_at": { "$lt": newer.created_at } },
                        { "created_at": newer.created_at, "_id": { "$lt": &newer.id } },
                    ],
                },
                doc! { "$set": { "status": "revoked" } },
            )
            .await?;
        Ok(r.modified_count)
    }

    pub async fn find_by_token_hash(
        &self,
        token_hash: &str,
    ) -> mongodb::error::Result<Option<InvitationDoc>> {
        self.0.find_one(doc! { "token_hash": token_hash }).await
    }

    /// Uses up a pending, unexpired invitation for `user_id`; `None` when it is no longer
    /// pending or has expired (the caller reads it again to tell which).
    pub async fn accept(
        &self,
        id: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<InvitationDoc>> {
        self.0
            .find_one_and_update(
                doc! {
                    "_id": id,
                    "status": "pending",
                    "expires_at": { "$gt": bson_time(now) },
                },
                doc! { "$set": {
                    "status": "accepted",
                    "accepted_by": user_id,
                    "accepted_at": bson_time(now),
                } },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Makes an invitation `user_id` accepted pending again (the membership could not be
    /// written after all).
    pub async fn unaccept(&self, id: &str, user_id: &str) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": id, "status": "accepted", "accepted_by": user_id },
                doc! {
                    "$set": { "status": "pending" },
                    "$unset": { "accepted_by": "", "accepted_at": "" },
                },
            )
            .await
            .map(|_| ())
    }

    /// Removes every invitation of an organization (it is being deleted).
    pub async fn remove_all_for_org(&self, org_id: &str) -> mongodb::error::Result<u64> {
        Ok(self
            .0
            .delete_many(doc! { "org_id": org_id })
            .await?
            .deleted_count)
    }
}
