//! `memberships`: one document per (organization, user) — the user's role in that organization
//! and their department. The id is `<org_id>:<user_id>`, so a user is a member at most once.
//!
//! Changes to a membership are conditional on the role the caller saw (`expected`), so a role
//! change never lands on a membership whose role moved meanwhile — the owner count in `orgs`
//! depends on it. Listings are keyset-paginated on (`joined_at`, other id).

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{is_duplicate_key, keyset_after};
use crate::domain::paging::Cursor;
use crate::domain::permissions::OrgRole;

/// A stored membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    #[serde(with = "org_role_str")]
    pub role: OrgRole,
    #[serde(default)]
    pub department: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub joined_at: DateTime<Utc>,
    /// The name of the organization's custom role the member holds (`role` is then its base
    /// role), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_role: Option<String>,
    /// That role's id: only the role with this id grants anything, so a name left behind by a
    /// deleted role never picks up a new role of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_role_id: Option<String>,
}

/// A change to one membership; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct MembershipChange<'a> {
    pub role: Option<OrgRole>,
    pub department: Option<&'a str>,
    /// `Some(None)`: no custom role any more.
    pub custom_role: Option<Option<CustomRoleRef<'a>>>,
}

/// A custom role as a membership names it.
#[derive(Debug, Clone, Copy)]
pub struct CustomRoleRef<'a> {
    pub name: &'a str,
    pub id: &'a str,
}

/// (De)serialises an [`OrgRole`] as its name.
pub(super) mod org_role_str {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::permissions::OrgRole;

    pub fn serialize<S: Serializer>(role: &OrgRole, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(role.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OrgRole, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The id of `user_id`'s membership in `org_id`.
pub fn membership_id(org_id: &str, user_id: &str) -> String {
    format!("{org_id}:{user_id}")
}

impl MembershipDoc {
    pub fn new(
        org_id: &str,
        user_id: &str,
        role: OrgRole,
        department: &str,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: membership_id(org_id, user_id),
            org_id: org_id.to_string(),
            user_id: user_id.to_string(),
            role,
            department: department.to_string(),
            joined_at: now,
            custom_role: None,
            custom_role_id: None,
        }
    }
}

/// The `memberships` collection.
#[derive(Clone)]
pub struct Memberships(pub Collection<MembershipDoc>);

impl Memberships {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let by_user = IndexModel::builder()
            .keys(doc! { "user_id": 1, "joined_at": 1, "org_id": 1 })
            .build();
        let by_org = IndexModel::builder()
            .keys(doc! { "org_id": 1, "joined_at": 1, "user_id": 1 })
            .build();
        self.0.create_indexes([by_user, by_org]).await.map(|_| ())
    }

    /// Adds a membership; `false` when the user is a member already.
    pub async fn insert(&self, m: &MembershipDoc) -> mongodb::error::Result<bool> {
        match self.0.insert_one(m).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn find(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> mongodb::error::Result<Option<MembershipDoc>> {
        self.0
            .find_one(doc! { "_id": membership_id(org_id, user_id) })
            .await
    }

    /// The members of `org_id` (only those with `role`, if given), oldest membership first,
    /// starting after `after` (joined_at, user_id).
    pub async fn list_by_org(
        &self,
        org_id: &str,
        role: Option<OrgRole>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> mongodb::error::Result<Vec<MembershipDoc>> {
        let mut filter = doc! { "org_id": org_id };
        if let Some(role) = role {
            filter.insert("role", role.as_str());
        }
        self.page(filter, "user_id", after, limit).await
    }

    /// The memberships of `user_id`, oldest first, starting after `after` (joined_at, org_id).
    pub async fn list_by_user(
        &self,
        user_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> mongodb::error::Result<Vec<MembershipDoc>> {
        self.page(doc! { "user_id": user_id }, "org_id", after, limit)
            .await
    }

    /// One keyset page ordered by (joined_at, `tie`): strictly after the cursor, so items
    /// inserted meanwhile neither repeat nor push others out of the next page.
    async fn page(
        &self,
        mut filter: Document,
        tie: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> mongodb::error::Result<Vec<MembershipDoc>> {
        if let Some(c) = after {
            filter.insert("$and", keyset_after("joined_at", tie, c, true).to_vec());
        }
        self.0
            .find(filter)
            .sort(doc! { "joined_at": 1, tie: 1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await
    }

    /// Sets the role, department and/or custom role (`Some(None)`: none) of a membership whose
    /// role is still `expected`; `None` when it is gone or its role changed meanwhile.
    pub async fn update(
        &self,
        org_id: &str,
        user_id: &str,
        expected: OrgRole,
        change: MembershipChange<'_>,
    ) -> mongodb::error::Result<Option<MembershipDoc>> {
        let mut set = Document::new();
        let mut unset = Document::new();
        if let Some(role) = change.role {
            set.insert("role", role.as_str());
        }
        if let Some(department) = change.department {
            set.insert("department", department);
        }
        match change.custom_role {
            Some(Some(custom)) => {
                set.insert("custom_role", custom.name);
                set.insert("custom_role_id", custom.id);
            }
            Some(None) => {
                unset.insert("custom_role", "");
                unset.insert("custom_role_id", "");
            }
            None => {}
        }
        let filter = doc! { "_id": membership_id(org_id, user_id), "role": expected.as_str() };
        let mut update = Document::new();
        if !set.is_empty() {
            update.insert("$set", set);
        }
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        if update.is_empty() {
            return self.0.find_one(filter).await;
        }
        self.0
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
    }

    /// Takes the custom role `role_id` of `org_id` away from every member holding it (they keep
    /// its base role); how many held it.
    pub async fn clear_custom_role(
        &self,
        org_id: &str,
        role_id: &str,
    ) -> mongodb::error::Result<u64> {
        Ok(self
            .0
            .update_many(
                doc! { "org_id": org_id, "custom_role_id": role_id },
                doc! { "$unset": { "custom_role": "", "custom_role_id": "" } },
            )
            .await?
            .modified_count)
    }

    /// Removes a membership whose role is still `expected`; `false` when it is gone or its role
    /// changed meanwhile.
    pub async fn remove(
        &self,
        org_id: &str,
        user_id: &str,
        expected: OrgRole,
    ) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .delete_one(doc! { "_id": membership_id(org_id, user_id), "role": expected.as_str() })
            .await?;
        Ok(r.deleted_count > 0)
    }

    /// Removes every membership of an organization (it is being deleted).
    pub async fn remove_all_for_org(&self, org_id: &str) -> mongodb::error::Result<u64> {
        Ok(self
            .0
            .delete_many(doc! { "org_id": org_id })
            .await?
            .deleted_count)
    }
}
