//! `org_roles`: organizations' custom roles, one document per role, unique by (org_id, name).
//! Members hold one through `MembershipDoc::custom_role` (its name).

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::memberships::org_role_str;
use super::{bson_time, is_duplicate_key};
use crate::domain::permissions::OrgRole;

/// A stored custom role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgRoleDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub org_id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Member or admin: how the role ranks.
    #[serde(with = "org_role_str")]
    pub base_role: OrgRole,
    /// Extra organization permissions from the catalogue.
    #[serde(default)]
    pub permissions: Vec<String>,
    pub created_by: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
}

/// The `org_roles` collection.
#[derive(Clone)]
pub struct OrgRoles(pub Collection<OrgRoleDoc>);

impl OrgRoles {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique_name = IndexModel::builder()
            .keys(doc! { "org_id": 1, "name": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("org_name_unique".to_string())
                    .build(),
            )
            .build();
        self.0.create_index(unique_name).await.map(|_| ())
    }

    /// Stores a new role; `false` when the organization has one of that name.
    pub async fn insert(&self, role: &OrgRoleDoc) -> mongodb::error::Result<bool> {
        match self.0.insert_one(role).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The roles of `org_id`, by name.
    pub async fn list(&self, org_id: &str) -> mongodb::error::Result<Vec<OrgRoleDoc>> {
        self.0
            .find(doc! { "org_id": org_id })
            .sort(doc! { "name": 1 })
            .await?
            .try_collect()
            .await
    }

    pub async fn count(&self, org_id: &str) -> mongodb::error::Result<u64> {
        self.0.count_documents(doc! { "org_id": org_id }).await
    }

    pub async fn find(
        &self,
        org_id: &str,
        name: &str,
    ) -> mongodb::error::Result<Option<OrgRoleDoc>> {
        self.0
            .find_one(doc! { "org_id": org_id, "name": name })
            .await
    }

    /// Sets the description and/or the permissions of a role; `None` when there is none.
    pub async fn update(
        &self,
        org_id: &str,
        name: &str,
        description: Option<&str>,
        permissions: Option<&[String]>,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<OrgRoleDoc>> {
        let mut set = Document::new();
        if let Some(description) = description {
            set.insert("description", description);
        }
        if let Some(permissions) = permissions {
            set.insert("permissions", permissions.to_vec());
        }
        set.insert("updated_at", bson_time(now));
        self.0
            .find_one_and_update(
                doc! { "org_id": org_id, "name": name },
                doc! { "$set": set },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Removes a role; `false` when there was none.
    pub async fn remove(&self, org_id: &str, name: &str) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .delete_one(doc! { "org_id": org_id, "name": name })
            .await?;
        Ok(r.deleted_count > 0)
    }

    /// Removes every role of an organization (it is being deleted).
    pub async fn remove_all_for_org(&self, org_id: &str) -> mongodb::error::Result<u64> {
        Ok(self
            .0
            .delete_many(doc! { "org_id": org_id })
            .await?
            .deleted_count)
    }
}
