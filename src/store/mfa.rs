//! `mfa`: each user's second factors, one document per user (`_id` = user id). The TOTP secret
//! is stored sealed for its user (see `domain::mfa::MfaKeys`), recovery codes only as keyed
//! hashes. Every use is one conditional single-document update: a TOTP step is accepted once
//! (`last_step` only grows) and a recovery code is pulled by the call that uses it.

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, spec::BinarySubtype, Binary};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use serde::{Deserialize, Serialize};

use super::{bson_time, is_duplicate_key};

/// A user's second factors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfaDoc {
    #[serde(rename = "_id")]
    pub user_id: String,
    /// The confirmed TOTP secret, sealed; `None` while only an enrolment is pending.
    pub totp_secret: Option<Binary>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub enrolled_at: Option<DateTime<Utc>>,
    /// The last TOTP step accepted; codes of this step or earlier are refused.
    #[serde(default)]
    pub last_step: i64,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Keyed hashes of the unused recovery codes.
    #[serde(default)]
    pub recovery_hashes: Vec<String>,
    /// An enrolment waiting for its first code, sealed, and until when it may be confirmed.
    pub pending_secret: Option<Binary>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub pending_expires_at: Option<DateTime<Utc>>,
}

impl MfaDoc {
    pub fn enrolled(&self) -> bool {
        self.totp_secret.is_some()
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// The `mfa` collection.
#[derive(Clone)]
pub struct Mfa(pub Collection<MfaDoc>);

impl Mfa {
    pub async fn find(&self, user_id: &str) -> mongodb::error::Result<Option<MfaDoc>> {
        self.0.find_one(doc! { "_id": user_id }).await
    }

    /// Stores a pending enrolment, replacing an earlier pending one. `false` when the user is
    /// already enrolled.
    pub async fn start_enrollment(
        &self,
        user_id: &str,
        sealed: Vec<u8>,
        expires_at: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let result = self
            .0
            .update_one(
                doc! { "_id": user_id, "totp_secret": null },
                doc! { "$set": {
                    "pending_secret": binary(sealed),
                    "pending_expires_at": bson_time(expires_at),
                } },
            )
            .upsert(true)
            .await;
        match result {
            Ok(_) => Ok(true),
            // The document exists with a confirmed secret: the upsert's insert collided.
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes the pending secret `sealed` the confirmed one, with `step` as used and the given
    /// recovery codes. `None` when that enrolment is no longer pending (confirmed by a
    /// concurrent call, replaced, or expired).
    pub async fn confirm_enrollment(
        &self,
        user_id: &str,
        sealed: &Binary,
        step: i64,
        recovery_hashes: Vec<String>,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<MfaDoc>> {
        self.0
            .find_one_and_update(
                doc! {
                    "_id": user_id,
                    "totp_secret": null,
                    "pending_secret": sealed,
                    "pending_expires_at": { "$gt": bson_time(now) },
                },
                doc! {
                    "$set": {
                        "totp_secret": sealed,
                        "enrolled_at": bson_time(now),
                        "last_step": step,
                        "last_used_at": bson_time(now),
                        "recovery_hashes": recovery_hashes,
                    },
                    "$unset": { "pending_secret": "", "pending_expires_at": "" },
                },
            )
            .return_document(ReturnDocument::After)
            .await
    }

    /// Accepts TOTP step `step` for `user_id` if no later or equal step was accepted before.
    /// Of concurrent calls with one code exactly one gets `true`.
    pub async fn accept_step(
        &self,
        user_id: &str,
        step: i64,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let result = self
            .0
            .update_one(
                doc! { "_id": user_id, "totp_secret": { "$ne": null }, "last_step": { "$lt": step } },
                doc! { "$set": { "last_step": step, "last_used_at": bson_time(now) } },
            )
            .await?;
        Ok(result.modified_count == 1)
    }

    /// Uses up the recovery code hashing to `hash`; `true` for the one call that did.
    pub async fn use_recovery_code(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<bool> {
        let result = self
            .0
            .update_one(
                doc! { "_id": user_id, "totp_secret": { "$ne": null }, "recovery_hashes": hash },
                doc! {
                    "$pull": { "recovery_hashes": hash },
                    "$set": { "last_used_at": bson_time(now) },
                },
            )
            .await?;
        Ok(result.modified_count == 1)
    }

    /// Replaces the recovery codes of an enrolled user; `false` when not enrolled.
    pub async fn replace_recovery_codes(
        &self,
        user_id: &str,
        hashes: Vec<String>,
    ) -> mongodb::error::Result<bool> {
        let result = self
            .0
            .update_one(
                doc! { "_id": user_id, "totp_secret": { "$ne": null } },
                doc! { "$set": { "recovery_hashes": hashes } },
            )
            .await?;
        Ok(result.matched_count == 1)
    }

    /// Removes every second factor of `user_id`; `true` when one was enrolled.
    pub async fn remove(&self, user_id: &str) -> mongodb::error::Result<bool> {
        let removed = self.0.find_one_and_delete(doc! { "_id": user_id }).await?;
        Ok(removed.is_some_and(|d| d.enrolled()))
    }
}
