//! `api_keys`: the keys of service accounts. Only the SHA-256 of a key's secret is stored (a
//! secret has 256 random bits, so no slow hash is needed), with its first characters to
//! recognise it by.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;

/// A stored key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub service_account_id: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// `kwk_` and the secret's next 8 characters.
    pub prefix: String,
    #[serde(default)]
    pub description: String,
    pub created_by: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_used_address: String,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyDoc {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

/// The `api_keys` collection.
#[derive(Clone)]
pub struct ApiKeys(pub Collection<ApiKeyDoc>);

impl ApiKeys {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let indexes = [
            IndexModel::builder()
                .keys(doc! { "secret_hash": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder()
                .keys(doc! { "service_account_id": 1 })
                .build(),
        ];
        self.0.create_indexes(indexes).await.map(|_| ())
    }

    pub async fn insert(&self, key: &ApiKeyDoc) -> mongodb::error::Result<()> {
        self.0.insert_one(key).await.map(|_| ())
    }

    /// The unrevoked key whose secret hashes to `hash`, recording this use.
    pub async fn use_key(
        &self,
        hash: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<ApiKeyDoc>> {
        self.0
            .find_one_and_update(
                doc! { "secret_hash": hash, "revoked_at": null },
                doc! { "$set": { "last_used_at": bson_time(now), "last_used_address": address } },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// An account's keys, newest first.
    pub async fn list(&self, service_account_id: &str) -> mongodb::error::Result<Vec<ApiKeyDoc>> {
        self.0
            .find(doc! { "service_account_id": service_account_id })
            .sort(doc! { "created_at": -1, "_id": 1 })
            .await?
            .try_collect()
            .await
    }

    /// Revokes one key of an account; `false` when there is no such live key.
    pub async fn revoke(
        &self,
        service_account_id: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .update_one(
                doc! { "_id": id, "service_account_id": service_account_id, "revoked_at": null },
                doc! { "$set": { "revoked_at": bson_time(now) } },
            )
            .await?;
        Ok(r.modified_count == 1)
    }

    /// Deletes every key of an account.
    pub async fn remove_all(&self, service_account_id: &str) -> mongodb::error::Result<u64> {
        Ok(self
            .0
            .delete_many(doc! { "service_account_id": service_account_id })
            .await?
            .deleted_count)
    }
}
