//! `permissions`: the permission catalogue, one document per permission (`_id` = its name).
//! Built-in permissions are not stored; they live in `domain::permissions::MATRIX`.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use serde::{Deserialize, Serialize};

use super::{bson_time, is_duplicate_key};
use crate::domain::permissions::PermissionChange;

/// A catalogue permission as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionDoc {
    #[serde(rename = "_id")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `platform` or `organization`.
    pub scope: String,
    /// The least global role (platform) or organization role (organization) that holds it.
    pub least_role: String,
    #[serde(default)]
    pub requires_mfa: bool,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

/// The `permissions` collection.
#[derive(Clone)]
pub struct Permissions(pub Collection<PermissionDoc>);

impl Permissions {
    /// The whole catalogue, by name. A document that does not read as a permission (written by
    /// something else) is logged and left out, so it cannot hold back the rest.
    pub async fn all(&self) -> mongodb::error::Result<Vec<PermissionDoc>> {
        let raw: Vec<Document> = self
            .0
            .clone_with_type::<Document>()
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|d| match mongodb::bson::from_document::<PermissionDoc>(d.clone()) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(id = ?d.get("_id"), error = %e, "catalogue document left out");
                    None
                }
            })
            .collect())
    }

    pub async fn find(&self, name: &str) -> mongodb::error::Result<Option<PermissionDoc>> {
        self.0.find_one(doc! { "_id": name }).await
    }

    /// Stores a new permission; `false` when one of that name exists.
    pub async fn insert(&self, permission: &PermissionDoc) -> mongodb::error::Result<bool> {
        match self.0.insert_one(permission).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Applies `change` to the permission `name`; `None` when there is none.
    pub async fn update(
        &self,
        name: &str,
        change: &PermissionChange,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<PermissionDoc>> {
        let mut set = Document::new();
        if let Some(description) = &change.description {
            set.insert("description", description);
        }
        if let Some(least_role) = &change.least_role {
            set.insert("least_role", least_role);
        }
        if let Some(requires_mfa) = change.requires_mfa {
            set.insert("requires_mfa", requires_mfa);
        }
        set.insert("updated_at", bson_time(now));
        self.0
            .find_one_and_update(doc! { "_id": name }, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .await
    }

    /// Replaces the permission `name` whole (a file applied over it); `false` when gone.
    pub async fn replace(&self, permission: &PermissionDoc) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .replace_one(doc! { "_id": &permission.name }, permission)
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Removes the permission `name`; `false` when there was none.
    pub async fn remove(&self, name: &str) -> mongodb::error::Result<bool> {
        Ok(self.0.delete_one(doc! { "_id": name }).await?.deleted_count == 1)
    }
}
