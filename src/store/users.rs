//! `users`: one document per account. The normalised email is unique.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{bson_time, is_duplicate_key, keyset_after};
use crate::domain::paging::Cursor;
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
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub updated_at: DateTime<Utc>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub last_login_at: Option<DateTime<Utc>>,
    /// The organization this account is being registered with (`Register` with `organization`),
    /// until its owner membership exists. Left set only by a registration that died midway;
    /// `App::finish_interrupted_registrations` completes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_org: Option<String>,
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

/// Which accounts a listing shows.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub statuses: Vec<UserStatus>,
    pub role: Option<Role>,
    /// Compared against the normalised (lower-case) email.
    pub email_prefix: String,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

fn status_str(status: UserStatus) -> &'static str {
    match status {
        UserStatus::Active => "active",
        UserStatus::Disabled => "disabled",
        UserStatus::Deleted => "deleted",
    }
}

/// The outcome of inserting an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Created,
    EmailTaken,
}

/// The filter for account `id`, not deleted, with one of `roles`. An admin's change carries the
/// roles its check allowed, so a concurrent promotion above the admin makes the write miss
/// instead of landing on an account the admin may no longer touch.
fn live_with_role(id: &str, roles: &[Role]) -> Document {
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    doc! { "_id": id, "status": { "$ne": "deleted" }, "role": { "$in": roles } }
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
        let by_creation = IndexModel::builder()
            .keys(doc! { "created_at": 1, "_id": 1 })
            .build();
        // Only the few accounts of unfinished registrations carry it.
        let pending = IndexModel::builder()
            .keys(doc! { "pending_org": 1 })
            .options(IndexOptions::builder().sparse(true).build())
            .build();
        self.0
            .create_indexes([unique_email, by_creation, pending])
            .await?;
        Ok(())
    }

    /// One page of accounts matching `filter`, oldest first, strictly after `after`.
    pub async fn list(
        &self,
        filter: &UserFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> mongodb::error::Result<Vec<UserDoc>> {
        use futures::TryStreamExt;
        let mut query = Document::new();
        match &filter.statuses[..] {
            [one] => {
                query.insert("status", status_str(*one));
            }
            many => {
                let list: Vec<&str> = many.iter().map(|s| status_str(*s)).collect();
                query.insert("status", doc! { "$in": list });
            }
        }
        if let Some(role) = filter.role {
            query.insert("role", role.as_str());
        }
        if !filter.email_prefix.is_empty() {
            // A range, not a regular expression: every string starting with the prefix sorts
            // between it and the prefix followed by the highest code point, and a range needs no
            // escaping and uses the unique email index.
            query.insert(
                "email",
                doc! {
                    "$gte": &filter.email_prefix,
                    "$lt": format!("{}{}", filter.email_prefix, char::MAX),
                },
            );
        }
        let mut created = Document::new();
        if let Some(t) = filter.created_after {
            created.insert("$gte", bson_time(t));
        }
        if let Some(t) = filter.created_before {
            created.insert("$lt", bson_time(t));
        }
        if !created.is_empty() {
            query.insert("created_at", created);
        }
        if let Some(c) = after {
            query.insert("$and", keyset_after("created_at", "_id", c, true).to_vec());
        }
        self.0
            .find(query)
            .sort(doc! { "created_at": 1, "_id": 1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await
    }

    /// Applies the profile changes that are set to a live account whose role is one of `roles`;
    /// returns the account as it is now (`None`: no such account, deleted, or another role).
    pub async fn update_profile(
        &self,
        id: &str,
        roles: &[Role],
        display_name: Option<&str>,
        email: Option<&str>,
        email_verified: Option<bool>,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Result<Option<UserDoc>, Inserted>> {
        let mut set = doc! { "updated_at": bson_time(now) };
        if let Some(name) = display_name {
            set.insert("display_name", name);
        }
        if let Some(email) = email {
            set.insert("email", email);
        }
        if let Some(verified) = email_verified {
            set.insert("email_verified", verified);
        }
        match self
            .0
            .find_one_and_update(live_with_role(id, roles), doc! { "$set": set })
            .return_document(mongodb::options::ReturnDocument::After)
            .await
        {
            Ok(user) => Ok(Ok(user)),
            Err(e) if is_duplicate_key(&e) => Ok(Err(Inserted::EmailTaken)),
            Err(e) => Err(e),
        }
    }

    /// Sets the global role of a live account whose role is one of `roles`; returns it as it is
    /// now (`None`: no such account, deleted, or another role).
    pub async fn set_role(
        &self,
        id: &str,
        roles: &[Role],
        role: Role,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<UserDoc>> {
        self.0
            .find_one_and_update(
                live_with_role(id, roles),
                doc! { "$set": { "role": role.as_str(), "updated_at": bson_time(now) } },
            )
            .return_document(mongodb::options::ReturnDocument::After)
            .await
    }

    /// Moves a live account whose role is one of `roles` to `status` (and optionally renames its
    /// email, for a deletion that frees the address); returns it as it is now (`None`: no such
    /// account, deleted, or another role).
    pub async fn set_status(
        &self,
        id: &str,
        roles: &[Role],
        status: UserStatus,
        rename_email: Option<&str>,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<UserDoc>> {
        let mut set = doc! { "status": status_str(status), "updated_at": bson_time(now) };
        if let Some(email) = rename_email {
            set.insert("email", email);
        }
        self.0
            .find_one_and_update(live_with_role(id, roles), doc! { "$set": set })
            .return_document(mongodb::options::ReturnDocument::After)
            .await
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

    /// Accounts whose registration with an organization has not finished (at most `limit`).
    pub async fn with_pending_org(&self, limit: i64) -> mongodb::error::Result<Vec<UserDoc>> {
        use futures::TryStreamExt;
        self.0
            .find(doc! { "pending_org": { "$exists": true } })
            .limit(limit)
            .await?
            .try_collect()
            .await
    }

    /// Marks the registration of `id` with an organization finished.
    pub async fn clear_pending_org(&self, id: &str) -> mongodb::error::Result<()> {
        self.0
            .update_one(doc! { "_id": id }, doc! { "$unset": { "pending_org": "" } })
            .await
            .map(|_| ())
    }

    /// The accounts among `ids` (any state).
    pub async fn find_many(&self, ids: &[String]) -> mongodb::error::Result<Vec<UserDoc>> {
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

    /// Removes an account outright (only one created moments ago by a call that then failed).
    pub async fn remove(&self, id: &str) -> mongodb::error::Result<()> {
        self.0.delete_one(doc! { "_id": id }).await.map(|_| ())
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

    /// The first proof of an unverified account's mailbox by a code: marks it verified and drops
    /// the password its creator set (whoever that was, they never proved the address). Returns
    /// the account as it is now if this call did it, `None` if it was already verified (or
    /// gone).
    pub async fn claim_unverified(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<UserDoc>> {
        self.0
            .find_one_and_update(
                doc! { "_id": id, "email_verified": false, "status": { "$ne": "deleted" } },
                doc! { "$set": {
                    "email_verified": true,
                    "password_hash": "",
                    "updated_at": bson_time(now),
                } },
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
