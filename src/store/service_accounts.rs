//! `service_accounts`: machine identities, platform-wide or owned by one organization.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;

/// A stored service account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceAccountDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The owning organization; `None` for a platform-wide account.
    pub org_id: Option<String>,
    /// Global role (platform accounts; `guest` for an organization's).
    pub role: String,
    /// Role in the owning organization.
    pub org_role: Option<String>,
    #[serde(default)]
    pub allowed_permissions: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    /// Unrevoked keys, counted by the same conditional updates that make and revoke them.
    #[serde(default)]
    pub key_count: i32,
    pub created_by: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

/// The `service_accounts` collection.
#[derive(Clone)]
pub struct ServiceAccounts(pub Collection<ServiceAccountDoc>);

impl ServiceAccounts {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        self.0
            .create_index(IndexModel::builder().keys(doc! { "org_id": 1 }).build())
            .await
            .map(|_| ())
    }

    pub async fn insert(&self, account: &ServiceAccountDoc) -> mongodb::error::Result<()> {
        self.0.insert_one(account).await.map(|_| ())
    }

    pub async fn find(&self, id: &str) -> mongodb::error::Result<Option<ServiceAccountDoc>> {
        self.0.find_one(doc! { "_id": id }).await
    }

    /// The platform's accounts (`org_id` `None`) or one organization's, oldest first.
    pub async fn list(
        &self,
        org_id: Option<&str>,
    ) -> mongodb::error::Result<Vec<ServiceAccountDoc>> {
        self.0
            .find(doc! { "org_id": org_id })
            .sort(doc! { "created_at": 1, "_id": 1 })
            .limit(1000)
            .await?
            .try_collect()
            .await
    }

    /// Disables an account; `None` when there is none.
    pub async fn disable(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<ServiceAccountDoc>> {
        self.0
            .find_one_and_update(
                doc! { "_id": id },
                doc! { "$set": { "disabled": true, "updated_at": bson_time(now) } },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Takes one of the account's `max` key slots; `false` when all are taken (or the account
    /// is gone). One conditional update: concurrent calls never take more than `max`.
    pub async fn take_key_slot(&self, id: &str, max: i32) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .update_one(
                doc! { "_id": id, "key_count": { "$lt": max } },
                doc! { "$inc": { "key_count": 1 } },
            )
            .await?;
        Ok(r.modified_count == 1)
    }

    /// Gives a key slot back (a key revoked, or never stored).
    pub async fn free_key_slot(&self, id: &str) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": id, "key_count": { "$gt": 0 } },
                doc! { "$inc": { "key_count": -1 } },
            )
            .await
            .map(|_| ())
    }

    /// Deletes an account; `false` when there was none.
    pub async fn remove(&self, id: &str) -> mongodb::error::Result<bool> {
        Ok(self.0.delete_one(doc! { "_id": id }).await?.deleted_count == 1)
    }
}
