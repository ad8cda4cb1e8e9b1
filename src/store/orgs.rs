//! `orgs`: one document per organization, with its unique slug and a count of its owners.
//!
//! `owner_count` is what keeps an organization from losing its last owner without transactions.
//! It never exceeds the number of owner memberships: taking an owner away first decrements it
//! with one conditional update (`owner_count > 1`), then changes the membership (and gives the
//! count back if that change did not happen); making an owner first changes the membership, then
//! increments it. So after any successful decrement at least one owner membership is left, however
//! many demotions and removals race. A crash between the two steps leaves the count too low,
//! which can only refuse a later demotion, never allow a wrong one.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{bson_time, is_duplicate_key};

/// A stored organization.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    /// URL-safe and unique; fixed once the organization exists.
    pub slug: String,
    #[serde(default)]
    pub website: String,
    /// Owner memberships, never more (see the module comment).
    pub owner_count: i32,
    /// Members must hold two-factor sessions for this organization's permission checks.
    #[serde(default)]
    pub require_mfa: bool,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
    /// The account being registered with this organization, until its owner membership exists
    /// (see `UserDoc::pending_org`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_owner: Option<String>,
}

/// The `orgs` collection.
#[derive(Clone)]
pub struct Orgs(pub Collection<OrgDoc>);

impl Orgs {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique_slug = IndexModel::builder()
            .keys(doc! { "slug": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("slug_unique".to_string())
                    .build(),
            )
            .build();
        let pending = IndexModel::builder()
            .keys(doc! { "pending_owner": 1 })
            .options(IndexOptions::builder().sparse(true).build())
            .build();
        self.0
            .create_indexes([unique_slug, pending])
            .await
            .map(|_| ())
    }

    /// Organizations whose registration has not finished, created before `before`.
    pub async fn pending_before(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<OrgDoc>> {
        use futures::TryStreamExt;
        self.0
            .find(doc! {
                "pending_owner": { "$exists": true },
                "created_at": { "$lt": super::bson_time(before) },
            })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// Marks the registration of organization `id` finished.
    pub async fn clear_pending_owner(&self, id: &str) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": id },
                doc! { "$unset": { "pending_owner": "" } },
            )
            .await
            .map(|_| ())
    }

    /// Stores a new organization; `false` when its slug is taken.
    pub async fn insert(&self, org: &OrgDoc) -> mongodb::error::Result<bool> {
        match self.0.insert_one(org).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn find(&self, id: &str) -> mongodb::error::Result<Option<OrgDoc>> {
        self.0.find_one(doc! { "_id": id }).await
    }

    pub async fn exists(&self, id: &str) -> mongodb::error::Result<bool> {
        Ok(self.0.count_documents(doc! { "_id": id }).limit(1).await? > 0)
    }

    /// The organizations among `ids`, in no particular order.
    pub async fn find_many(&self, ids: &[String]) -> mongodb::error::Result<Vec<OrgDoc>> {
        use futures::TryStreamExt;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.0
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await
    }

    /// The slugs in use among `base` and `base-<n>`. `base` must be a valid slug (nothing in
    /// it needs escaping in a regular expression).
    pub async fn slugs_like(&self, base: &str) -> mongodb::error::Result<Vec<String>> {
        use futures::TryStreamExt;
        let docs: Vec<Document> = self
            .0
            .clone_with_type::<Document>()
            .find(doc! { "slug": { "$regex": format!("^{base}(-[0-9]+)?$") } })
            .projection(doc! { "slug": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get_str("slug").ok().map(str::to_string))
            .collect())
    }

    /// Sets the fields given; `None` when the organization does not exist.
    pub async fn update(
        &self,
        id: &str,
        name: Option<&str>,
        website: Option<&str>,
        require_mfa: Option<bool>,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<OrgDoc>> {
        let mut set = Document::new();
        if let Some(require_mfa) = require_mfa {
            set.insert("require_mfa", require_mfa);
        }
        if let Some(name) = name {
            set.insert("name", name);
        }
        if let Some(website) = website {
            set.insert("website", website);
        }
        set.insert("updated_at", bson_time(now));
        self.0
            .find_one_and_update(doc! { "_id": id }, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .await
    }

    /// Deletes the organization document; `false` when it was gone already.
    pub async fn delete(&self, id: &str) -> mongodb::error::Result<bool> {
        Ok(self.0.delete_one(doc! { "_id": id }).await?.deleted_count > 0)
    }

    /// Takes one owner away from the count, unless that would leave none: `false` means the
    /// organization has (as far as the count knows) a single owner, or does not exist.
    pub async fn take_owner(&self, id: &str) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .update_one(
                doc! { "_id": id, "owner_count": { "$gt": 1 } },
                doc! { "$inc": { "owner_count": -1 } },
            )
            .await?;
        Ok(r.modified_count > 0)
    }

    /// Counts one more owner (after the owner membership was written), or gives back one taken
    /// by [`Orgs::take_owner`] whose membership change did not happen.
    pub async fn add_owner(&self, id: &str) -> mongodb::error::Result<()> {
        self.0
            .update_one(doc! { "_id": id }, doc! { "$inc": { "owner_count": 1 } })
            .await
            .map(|_| ())
    }
}
