//! `users`: one document per account. The normalised email is unique.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, DateTime as BsonDateTime};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{bson_time, is_duplicate_key};
use crate::domain::roles::Role;

/// Account state; only `Active` accounts may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    #[default]
    Active,
    Disabled,
    Deleted,
}

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// Normalised (see `domain::email::normalize`).
    pub email: String,
    pub display_name: String,
    /// argon2id PHC string, or an imported bcrypt hash until the next successful login.
    pub password_hash: String,
    #[serde(with = "role_str")]
    pub role: Role,
    pub status: UserStatus,
    pub email_verified: bool,
    pub created_at: BsonDateTime,
    pub updated_at: BsonDateTime,
    pub last_login_at: Option<BsonDateTime>,
}

mod role_str {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::roles::Role;

    pub fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(role.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The outcome of inserting an account.
pub enum Inserted {
    Created,
    EmailTaken,
}

/// The `users` collection.
#[derive(Clone)]
pub struct Users(pub Collection<UserDoc>);

impl Users {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let unique_email = IndexModel::builder()
            .keys(doc! { "email": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("email_unique".to_string())
                    .build(),
            )
            .build();
        self.0.create_index(unique_email).await?;
        Ok(())
    }

    /// Inserts a new account; the unique index makes concurrent registrations of one email
    /// create exactly one.
    pub async fn insert(&self, user: &UserDoc) -> mongodb::error::Result<Inserted> {
        match self.0.insert_one(user).await {
            Ok(_) => Ok(Inserted::Created),
            Err(e) if is_duplicate_key(&e) => Ok(Inserted::EmailTaken),
            Err(e) => Err(e),
        }
    }

    pub async fn find_by_email(&self, email: &str) -> mongodb::error::Result<Option<UserDoc>> {
        self.0.find_one(doc! { "email": email }).await
    }

    pub async fn find_by_id(&self, id: &str) -> mongodb::error::Result<Option<UserDoc>> {
        self.0.find_one(doc! { "_id": id }).await
    }

    /// Replaces the password hash only if it is still `expected` (so a concurrent password
    /// change is never overwritten by a re-hash). Returns whether it changed.
    pub async fn replace_password_hash(
        &self,
        id: &str,
        expected: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .update_one(
                doc! { "_id": id, "password_hash": expected },
                doc! { "$set": { "password_hash": new_hash, "updated_at": bson_time(now) } },
            )
            .await?;
        Ok(r.modified_count == 1)
    }

    /// Marks the email verified; returns the account as it is now.
    pub async fn mark_verified(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<UserDoc>> {
        self.0
            .find_one_and_update(
                doc! { "_id": id },
                doc! { "$set": { "email_verified": true, "updated_at": bson_time(now) } },
            )
            .return_document(mongodb::options::ReturnDocument::After)
            .await
    }

    /// Sets a new password hash whatever the old one was (a reset proves the mailbox, not the
    /// old password) and marks the email verified.
    pub async fn reset_password_hash(
        &self,
        id: &str,
        new_hash: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let r = self
            .0
            .update_one(
                doc! { "_id": id },
                doc! { "$set": {
                    "password_hash": new_hash,
                    "email_verified": true,
                    "updated_at": bson_time(now),
                } },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Stamps the login time and returns the account as it is now.
    pub async fn record_login(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<UserDoc>> {
        self.0
            .find_one_and_update(
                doc! { "_id": id },
                doc! { "$set": { "last_login_at": bson_time(now) } },
            )
            .return_document(mongodb::options::ReturnDocument::After)
            .await
    }
}
