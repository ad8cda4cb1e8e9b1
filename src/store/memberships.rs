//! `memberships`: one document per (organization, user) — the user's role in that organization
//! and their department. The id is `<org_id>:<user_id>`, so a user is a member at most once.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, DateTime as BsonDateTime};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{bson_time, is_duplicate_key};
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
    pub joined_at: BsonDateTime,
}

mod org_role_str {
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
            joined_at: bson_time(now),
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
}
