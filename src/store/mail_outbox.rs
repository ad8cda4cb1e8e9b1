//! `mail_outbox`: email waiting to be delivered. An RPC that sends mail only inserts here (so
//! mail survives a slow or dead SMTP server and a restart); delivery workers on every replica
//! claim due messages with a lease, one findAndModify each, so a message is handed to SMTP by one
//! worker at a time. The message itself (recipient, subject, bodies, and so any code in it) is
//! sealed with a server key and dropped once delivered.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, spec::BinarySubtype, Binary};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStatus {
    Pending,
    Sent,
    Failed,
    /// Written where a code was asked for but no mail may go out (no such account, …), so
    /// that answer costs the same writes as a real send. Holds no address and no body.
    Suppressed,
}

/// One message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// Template name, e.g. `login_code` (no secrets).
    pub kind: String,
    /// The sealed message; removed once it is delivered or given up.
    pub sealed: Option<Binary>,
    pub status: MailStatus,
    /// Delivery attempts started.
    pub attempts: u32,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub next_attempt_at: DateTime<Utc>,
    /// A worker holds the message until then.
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub lease_until: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub last_error: Option<String>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(
        default,
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub sent_at: Option<DateTime<Utc>>,
    /// When the TTL index removes the record.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
}

/// How long a delivered or abandoned message's record is kept.
const KEEP_RECORD: Duration = Duration::from_secs(7 * 24 * 3600);

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))
}

/// The `mail_outbox` collection.
#[derive(Clone)]
pub struct MailOutbox(pub Collection<OutboxDoc>);

impl MailOutbox {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let due = IndexModel::builder()
            .keys(doc! { "status": 1, "next_attempt_at": 1 })
            .build();
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.0.create_indexes([due, ttl]).await.map(|_| ())
    }

    /// Queues a sealed message for delivery now. `give_up_after` bounds how long it is retried.
    pub async fn enqueue(
        &self,
        id: &str,
        kind: &str,
        sealed: Vec<u8>,
        now: DateTime<Utc>,
        give_up_after: Duration,
    ) -> mongodb::error::Result<()> {
        let doc = OutboxDoc {
            id: id.to_string(),
            kind: kind.to_string(),
            sealed: Some(Binary {
                subtype: BinarySubtype::Generic,
                bytes: sealed,
            }),
            status: MailStatus::Pending,
            attempts: 0,
            next_attempt_at: now,
            lease_until: None,
            lease_owner: None,
            last_error: None,
            created_at: now,
            sent_at: None,
            // Kept past the last retry, then removed whatever happened.
            expires_at: after(now, give_up_after + KEEP_RECORD),
        };
        self.0.insert_one(&doc).await.map(|_| ())
    }

    /// Records a request that sends nothing (see [`MailStatus::Suppressed`]).
    pub async fn record_suppressed(
        &self,
        id: &str,
        kind: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<()> {
        let doc = OutboxDoc {
            id: id.to_string(),
            kind: kind.to_string(),
            sealed: None,
            status: MailStatus::Suppressed,
            attempts: 0,
            next_attempt_at: now,
            lease_until: None,
            lease_owner: None,
            last_error: None,
            created_at: now,
            sent_at: None,
            expires_at: after(now, Duration::from_secs(3600)),
        };
        self.0.insert_one(&doc).await.map(|_| ())
    }

    /// Claims the oldest due message for `owner` until `now + lease`: pending, due, and not
    /// leased by a live worker. Returns it with `attempts` already counted.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> mongodb::error::Result<Option<OutboxDoc>> {
        let now_b = bson_time(now);
        self.0
            .find_one_and_update(
                doc! {
                    "status": "pending",
                    "next_attempt_at": { "$lte": now_b },
                    "$or": [ { "lease_until": null }, { "lease_until": { "$lte": now_b } } ],
                },
                doc! {
                    "$set": { "lease_until": after(now, lease), "lease_owner": owner },
                    "$inc": { "attempts": 1 },
                },
            )
            .sort(doc! { "next_attempt_at": 1 })
            .return_document(ReturnDocument::After)
            .await
    }

    /// Records delivery by `owner` and drops the message body.
    pub async fn mark_sent(
        &self,
        id: &str,
        owner: &str,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": id, "lease_owner": owner },
                doc! {
                    "$set": { "status": "sent", "sent_at": bson_time(now), "lease_until": null },
                    "$unset": { "sealed": "" },
                },
            )
            .await
            .map(|_| ())
    }

    /// Puts a message back for another try at `next`, remembering why it failed.
    pub async fn retry_at(
        &self,
        id: &str,
        owner: &str,
        next: DateTime<Utc>,
        error: &str,
    ) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": id, "lease_owner": owner },
                doc! { "$set": {
                    "next_attempt_at": bson_time(next),
                    "lease_until": null,
                    "last_error": error,
                } },
            )
            .await
            .map(|_| ())
    }

    /// Messages waiting for delivery (due now or later, for a retry) and how long the oldest
    /// of them has waited (zero when none is waiting).
    pub async fn backlog(&self, now: DateTime<Utc>) -> mongodb::error::Result<(u64, Duration)> {
        let pending = doc! { "status": "pending" };
        let count = self.0.count_documents(pending.clone()).await?;
        if count == 0 {
            return Ok((0, Duration::ZERO));
        }
        let oldest = self
            .0
            .clone_with_type::<mongodb::bson::Document>()
            .find_one(pending)
            .sort(doc! { "created_at": 1 })
            .projection(doc! { "_id": 0, "created_at": 1 })
            .await?
            .and_then(|d| d.get_datetime("created_at").ok().copied())
            .map_or(Duration::ZERO, |created| {
                (now - created.to_chrono()).to_std().unwrap_or_default()
            });
        Ok((count, oldest))
    }

    /// Gives up on a message (too old, or it can never be delivered) and drops its body.
    pub async fn mark_failed(
        &self,
        id: &str,
        owner: &str,
        error: &str,
    ) -> mongodb::error::Result<()> {
        self.0
            .update_one(
                doc! { "_id": id, "lease_owner": owner },
                doc! {
                    "$set": { "status": "failed", "lease_until": null, "last_error": error },
                    "$unset": { "sealed": "" },
                },
            )
            .await
            .map(|_| ())
    }
}
