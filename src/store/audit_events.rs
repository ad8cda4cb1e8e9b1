//! `audit_events`: an append-only record of security-relevant actions (who, what, when, from
//! where, outcome). Never holds a password, code or token. Kept for `audit_retention` (TTL).

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, DateTime as BsonDateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{bson_time, keyset_after};
use crate::domain::paging::Cursor;

/// Whether the audited attempt worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// Failed on the caller's input, e.g. a wrong password or code.
    Failure,
    /// Refused for lack of permission.
    Denied,
}

/// One audited action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(rename = "_id")]
    pub id: String,
    /// e.g. `login`, `lockout`, `refresh_reuse`, `logout`, `password_change`, `register`.
    pub action: String,
    pub outcome: Outcome,
    pub user_id: Option<String>,
    /// The admin acting on someone else's account, when not the user themself.
    pub actor_id: Option<String>,
    pub session_id: Option<String>,
    /// The email the attempt named (for failed logins of unknown accounts too).
    pub email: Option<String>,
    pub client_address: String,
    pub user_agent: String,
    /// Small non-secret facts, e.g. `reason`.
    pub detail: Document,
    pub occurred_at: BsonDateTime,
    /// When the TTL index removes the event.
    pub expires_at: BsonDateTime,
}

/// Which events a listing shows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Events about this user or done by them.
    pub user_id: String,
    pub action: String,
    pub after: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
}

/// The `audit_events` collection.
#[derive(Clone)]
pub struct AuditEvents {
    pub collection: Collection<AuditEvent>,
    pub retention: Duration,
}

impl AuditEvents {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let indexes = [
            IndexModel::builder()
                .keys(doc! { "user_id": 1, "occurred_at": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "action": 1, "occurred_at": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "actor_id": 1, "occurred_at": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "occurred_at": -1, "_id": -1 })
                .build(),
            IndexModel::builder()
                .keys(doc! { "expires_at": 1 })
                .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                .build(),
        ];
        self.collection.create_indexes(indexes).await.map(|_| ())
    }

    /// One page of events matching `filter`, newest first, strictly before `after`.
    pub async fn list(
        &self,
        filter: &AuditFilter,
        after: Option<&Cursor>,
        limit: usize,
    ) -> mongodb::error::Result<Vec<AuditEvent>> {
        use futures::TryStreamExt;
        let mut and = Vec::new();
        if !filter.user_id.is_empty() {
            and.push(
                doc! { "$or": [ { "user_id": &filter.user_id }, { "actor_id": &filter.user_id } ] },
            );
        }
        if !filter.action.is_empty() {
            and.push(doc! { "action": &filter.action });
        }
        let mut when = Document::new();
        if let Some(t) = filter.after {
            when.insert("$gte", bson_time(t));
        }
        if let Some(t) = filter.before {
            when.insert("$lt", bson_time(t));
        }
        if !when.is_empty() {
            and.push(doc! { "occurred_at": when });
        }
        if let Some(c) = after {
            and.extend(keyset_after("occurred_at", "_id", c, false));
        }
        let query = if and.is_empty() {
            Document::new()
        } else {
            doc! { "$and": and }
        };
        self.collection
            .find(query)
            .sort(doc! { "occurred_at": -1, "_id": -1 })
            .limit(limit as i64)
            .await?
            .try_collect()
            .await
    }

    pub async fn record(
        &self,
        mut event: AuditEvent,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<()> {
        event.occurred_at = bson_time(now);
        event.expires_at = bson_time(
            now + chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::days(90)),
        );
        self.collection.insert_one(event).await.map(|_| ())
    }
}
