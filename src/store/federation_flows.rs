//! `federation_flows`: sign-ins (and identity links) started with a provider and not yet
//! finished. The id is the SHA-256 of the `state` handed to the browser, never the state itself,
//! and the flow secret is kept only as its SHA-256; the PKCE verifier and the nonce are derived
//! with a server key (see `domain::federation`), so this collection holds nothing a reader could
//! finish a flow with. A
//! TTL index removes flows after they expire; finishing deletes the flow in one operation, so of
//! any number of concurrent finishes at most one gets it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use super::bson_time;

/// What a flow was started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowIntent {
    /// StartFederatedLogin: sign in (or sign up).
    Login,
    /// StartLinkIdentity: link an identity to `user_id`.
    Link,
}

/// A started flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowDoc {
    #[serde(rename = "_id")]
    pub state_hash: String,
    /// SHA-256 of the flow secret the client keeps.
    pub secret_hash: String,
    pub provider: String,
    pub redirect_uri: String,
    pub intent: FlowIntent,
    /// For a link: the account that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub expires_at: DateTime<Utc>,
}

/// The `federation_flows` collection.
#[derive(Clone)]
pub struct FederationFlows(pub Collection<FlowDoc>);

impl FederationFlows {
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        self.0.create_index(ttl).await.map(|_| ())
    }

    pub async fn insert(&self, flow: &FlowDoc) -> mongodb::error::Result<()> {
        self.0.insert_one(flow).await.map(|_| ())
    }

    /// Removes and returns the live flow with this state hash, secret hash and intent (and, for a
    /// link, this user); `Some` for exactly one caller. Any other flow is left alone.
    pub async fn take(
        &self,
        state_hash: &str,
        secret_hash: &str,
        intent: FlowIntent,
        user_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> mongodb::error::Result<Option<FlowDoc>> {
        let intent = mongodb::bson::to_bson(&intent).expect("an enum serializes");
        let mut filter = doc! {
            "_id": state_hash,
            "secret_hash": secret_hash,
            "intent": intent,
            "expires_at": { "$gt": bson_time(now) },
        };
        if let Some(user_id) = user_id {
            filter.insert("user_id", user_id);
        }
        self.0.find_one_and_delete(filter).await
    }
}
