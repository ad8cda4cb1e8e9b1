//! `audit_events`: an append-only record of security-relevant actions (who, what, when, from
//! where, outcome). Never holds a password, code or token. Kept for `audit_retention` (TTL).

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::{bson_time, keyset_after};
use crate::domain::paging::Cursor;

pub use crate::domain::audit::Outcome;

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
    pub detail: Details,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub occurred_at: DateTime<Utc>,
    /// When the TTL index removes the event.
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
}

/// One value of an audit event's details, stored as the BSON value of its type.
#[derive(Debug, Clone, PartialEq)]
pub enum DetailValue {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
    List(Vec<String>),
}

impl From<bool> for DetailValue {
    fn from(v: bool) -> Self {
        DetailValue::Bool(v)
    }
}
impl From<i64> for DetailValue {
    fn from(v: i64) -> Self {
        DetailValue::Int(v)
    }
}
impl From<&str> for DetailValue {
    fn from(v: &str) -> Self {
        DetailValue::Text(v.to_string())
    }
}
impl From<&String> for DetailValue {
    fn from(v: &String) -> Self {
        DetailValue::Text(v.clone())
    }
}
impl From<String> for DetailValue {
    fn from(v: String) -> Self {
        DetailValue::Text(v)
    }
}
impl From<Vec<String>> for DetailValue {
    fn from(v: Vec<String>) -> Self {
        DetailValue::List(v)
    }
}
impl<T: Into<DetailValue>> From<Option<T>> for DetailValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(DetailValue::Null, Into::into)
    }
}

impl From<DetailValue> for Bson {
    fn from(v: DetailValue) -> Self {
        match v {
            DetailValue::Null => Bson::Null,
            DetailValue::Bool(b) => Bson::Boolean(b),
            DetailValue::Int(i) => Bson::Int64(i),
            DetailValue::Text(s) => Bson::String(s),
            DetailValue::List(l) => l.into(),
        }
    }
}

/// An audit event's details: named values, stored as one sub-document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Details(Document);

impl Details {
    /// Sets `key` (a later value for the same key replaces the earlier one).
    pub fn insert(&mut self, key: &str, value: impl Into<DetailValue>) {
        self.0.insert(key, Bson::from(value.into()));
    }

    /// Each detail as text, in stored order: a string as itself, anything else as its value
    /// printed (`true`, `3`, `["a", "b"]`, `null`).
    pub fn into_text(self) -> Vec<(String, String)> {
        self.0
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Bson::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect()
    }
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
        event.occurred_at = now;
        event.expires_at =
            now + chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::days(90));
        self.collection.insert_one(event).await.map(|_| ())
    }
}
