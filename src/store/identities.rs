//! `identities`: accounts' identities at OpenID Connect providers. (provider, subject) is unique:
//! one identity belongs to one account at most.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{bson_time, is_duplicate_key};

/// Most identities one account may link.
pub const MAX_PER_USER: u64 = 20;

/// A linked identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub provider: String,
    /// The provider's `sub`.
    pub subject: String,
    pub user_id: String,
    /// The email the provider gave at link or last use (may be empty).
    pub email: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub linked_at: DateTime<Utc>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The `identities` collection.
#[derive(Clone)]
pub struct Identities(pub Collection<IdentityDoc>);

/// The answer to `link`.
#[derive(Debug)]
pub enum Linked {
    Created(IdentityDoc),
    /// The identity is linked already (to the account in the document).
    Exists(IdentityDoc),
}

impl Identities {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique = IndexModel::builder()
            .keys(doc! { "provider": 1, "subject": 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build();
        let by_user = IndexModel::builder()
            .keys(doc! { "user_id": 1, "linked_at": 1 })
            .build();
        self.0.create_indexes([unique, by_user]).await.map(|_| ())
    }

    pub async fn find(
        &self,
        provider: &str,
        subject: &str,
    ) -> mongodb::error::Result<Option<IdentityDoc>> {
        self.0
            .find_one(doc! { "provider": provider, "subject": subject })
            .await
    }

    /// Stores `identity` unless (provider, subject) is linked already.
    pub async fn link(&self, identity: &IdentityDoc) -> mongodb::error::Result<Linked> {
        match self.0.insert_one(identity).await {
            Ok(_) => Ok(Linked::Created(identity.clone())),
            Err(e) if is_duplicate_key(&e) => {
                match self.find(&identity.provider, &identity.subject).await? {
                    Some(existing) => Ok(Linked::Exists(existing)),
                    // Unlinked in between: the caller may try again.
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The account's identities, oldest first.
    pub async fn of_user(&self, user_id: &str) -> mongodb::error::Result<Vec<IdentityDoc>> {
        self.0
            .find(doc! { "user_id": user_id })
            .sort(doc! { "linked_at": 1, "_id": 1 })
            .limit(MAX_PER_USER as i64 + 1)
            .await?
            .try_collect()
            .await
    }

    pub async fn count_of_user(&self, user_id: &str) -> mongodb::error::Result<u64> {
        self.0.count_documents(doc! { "user_id": user_id }).await
    }

    /// Records a sign-in with the identity (and the email it came with).
    pub async fn record_use(
        &self,
        id: &str,
        email: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "last_used_at": bson_time(now), "email": email } },
            )
            .await
            .map(|_| ())
    }

    /// Unlinks one identity of `user_id`; false when it has no such identity.
    pub async fn unlink(
        &self,
        user_id: &str,
        provider: &str,
        subject: &str,
    ) -> mongodb::error::Result<bool> {
        let deleted = self
            .0
            .delete_one(doc! { "user_id": user_id, "provider": provider, "subject": subject })
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    /// Unlinks every identity of a deleted account.
    pub async fn remove_user(&self, user_id: &str) -> mongodb::error::Result<()> {
        self.0
            .delete_many(doc! { "user_id": user_id })
            .await
            .map(|_| ())
    }
}
