//! The use cases behind the RPCs: each combines domain rules with storage. gRPC adapters call
//! these with plain Rust values; nothing here knows about protobuf.

pub mod accounts;
pub mod authorization;
pub mod codes;
pub mod federation;
pub mod import;
pub mod incidents;
pub mod mail;
pub mod mfa;
pub mod org_roles;
pub mod orgs;
pub mod permissions;
pub mod service_accounts;
pub mod sessions;
pub mod users;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::client_address::ProxyTrust;
use crate::domain::codes::{CodeHasher, SendLimits};
use crate::domain::lockout::LockoutPolicy;
use crate::domain::paging::FilterKey;
use crate::domain::password::{self, PasswordPolicy};
use crate::domain::tokens::KeyRing;
use crate::error::{Error, Result};
use crate::hash_pool::HashPool;
use crate::mail::{Sealer, Templates};
use crate::store::audit_events::{DetailValue, Details};
use crate::store::{AuditEvent, Store};

pub use sessions::SessionCache;

/// One page of a listing and the token for the next one (empty on the last page).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// Page size and cursor of a listing request under `filters` (the token only fits the filters
/// it was issued for).
fn page_request(
    page_size: i32,
    token: &str,
    filters: &FilterKey,
) -> Result<(usize, Option<crate::domain::paging::Cursor>)> {
    use crate::domain::paging;
    let size = paging::page_size(page_size)
        .ok_or_else(|| Error::invalid("page_size", "must not be negative"))?;
    let after = paging::decode(token, filters.as_str())
        .map_err(|paging::InvalidPageToken| Error::PageTokenInvalid)?;
    Ok((size, after))
}

/// Turns a listing fetched with one item to spare (`size + 1`) into a page: the spare item,
/// if there was one, becomes the next-page token, at the last item shown (`key`).
fn page_of<T>(
    mut items: Vec<T>,
    size: usize,
    filters: &FilterKey,
    key: impl Fn(&T) -> crate::domain::paging::Cursor,
) -> Page<T> {
    let next_page_token = if items.len() > size {
        items.truncate(size);
        items
            .last()
            .map(|last| crate::domain::paging::encode(&key(last), filters.as_str()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Page {
        items,
        next_page_token,
    }
}

/// Where a call came from, for sessions, throttling and the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The client's address as recorded on sessions and audit events.
    pub client_address: String,
    /// What per-address limits count against: the address, or its /64 for IPv6. Empty: none.
    pub rate_limit_key: String,
    pub user_agent: String,
}

/// Everything the use cases share. One per process, behind an `Arc`.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub keys: KeyRing,
    pub hasher: HashPool,
    pub password_policy: PasswordPolicy,
    pub lockout: LockoutPolicy,
    pub sessions: SessionCache,
    pub access: authorization::AccessCache,
    /// This replica's copy of the permission catalogue.
    pub catalogue: permissions::Catalogue,
    /// Checked API keys.
    pub key_cache: service_accounts::KeyCache,
    pub code_hasher: CodeHasher,
    /// Seals TOTP secrets and keys recovery codes.
    pub mfa_keys: crate::domain::mfa::MfaKeys,
    /// Which proxies may name the client's address (from `trusted_proxy_hops`/`_proxies`).
    pub proxy_trust: ProxyTrust,
    pub send_limits: SendLimits,
    pub mail: mail::Outbox,
    /// The OpenID Connect providers people may sign in with.
    pub providers: crate::oidc::Providers,
    /// Derives federated sign-in flows' PKCE verifiers and nonces from their states.
    pub flow_keys: crate::domain::federation::FlowKeys,
    /// A real argon2id hash of a random password: unknown emails are verified against it so they
    /// cost the same time as a wrong password.
    dummy_hash: String,
    ready: AtomicBool,
}

impl App {
    /// `master_secret` keys stored codes and seals queued mail (see `code_secret`).
    pub async fn new(
        config: Config,
        store: Store,
        keys: KeyRing,
        master_secret: &[u8],
    ) -> anyhow::Result<Arc<Self>> {
        let hasher = HashPool::new(config.hash_workers);
        // On the pool, so argon2's working memory stays with the hashing threads.
        let dummy_hash = hasher
            .run(|| password::hash(&crate::domain::secrets::new_refresh_token()))
            .await??;
        let mail = mail::Outbox {
            templates: Templates::load(config.mail_templates_dir.as_deref())?,
            sealer: Sealer::new(derive_key(master_secret, "keyward mail outbox v1")),
            from: crate::mail::mailbox_from(&config.mail_from)?,
            wakeup: tokio::sync::Notify::new(),
        };
        Ok(Arc::new(Self {
            providers: crate::oidc::Providers::from_config(&config)
                .map_err(|e| anyhow::anyhow!(e.0))?,
            flow_keys: crate::domain::federation::FlowKeys::new(derive_key(
                master_secret,
                "keyward federation flows v1",
            )),
            code_hasher: CodeHasher::new(derive_key(master_secret, "keyward one-time codes v1")),
            mfa_keys: crate::domain::mfa::MfaKeys::new(
                derive_key(master_secret, "keyward recovery codes v1"),
                derive_key(master_secret, "keyward totp secrets v1"),
            ),
            send_limits: SendLimits {
                cooldown: config.code_send_cooldown,
                per_hour: config.code_sends_per_hour,
            },
            mail,
            password_policy: config.password_policy(),
            proxy_trust: config.proxy_trust(),
            lockout: config.lockout_policy(),
            sessions: SessionCache::new(config.session_cache_ttl),
            access: authorization::AccessCache::new(config.session_cache_ttl),
            catalogue: permissions::Catalogue::default(),
            key_cache: service_accounts::KeyCache::new(config.session_cache_ttl),
            config,
            store,
            keys,
            hasher,
            dummy_hash,
            ready: AtomicBool::new(false),
        }))
    }

    /// Clock for the use cases. Domain rules take `now` explicitly; this is the one real clock.
    /// It ticks in milliseconds, the database's resolution, so a time an RPC answers with
    /// right after writing it is the one a later read gives back.
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }

    /// Whether the database answers (set by the server's database watch).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Fails with NOT_READY until the database answered and indexes exist.
    pub fn ensure_ready(&self) -> Result<()> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::NotReady)
        }
    }

    /// Writes one audit event. An audit failure is logged, never hidden, but does not undo the
    /// action it describes.
    pub async fn audit(&self, event: AuditRecord<'_>) {
        let doc = AuditEvent {
            id: crate::domain::secrets::new_id(),
            action: event.action.as_str().to_string(),
            outcome: event.outcome,
            user_id: event.user_id.map(str::to_owned),
            actor_id: event.actor_id.map(str::to_owned),
            session_id: event.session_id.map(str::to_owned),
            email: event.email.map(str::to_owned),
            client_address: event.caller.client_address.clone(),
            user_agent: event.caller.user_agent.clone(),
            detail: event.detail,
            // Both set by `record`.
            occurred_at: self.now(),
            expires_at: self.now(),
        };
        if let Err(e) = self.store.audit_events.record(doc, self.now()).await {
            tracing::error!(error = %e, action = event.action.as_str(), "failed to write audit event");
        }
    }
}

/// A 256-bit key for one purpose (`label`), derived from the server's master secret.
fn derive_key(master: &[u8], label: &str) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(master).expect("any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The facts of one audit event (see `store::audit_events`).
pub struct AuditRecord<'a> {
    pub action: AuditAction,
    pub outcome: Outcome,
    pub caller: &'a Caller,
    pub user_id: Option<&'a str>,
    /// Who did it, when not the user themself (an admin).
    pub actor_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub detail: Details,
}

impl<'a> AuditRecord<'a> {
    pub fn new(action: AuditAction, outcome: Outcome, caller: &'a Caller) -> Self {
        Self {
            action,
            outcome,
            caller,
            user_id: None,
            actor_id: None,
            session_id: None,
            email: None,
            detail: Details::default(),
        }
    }
    pub fn user(mut self, user_id: &'a str) -> Self {
        self.user_id = Some(user_id);
        self
    }
    pub fn actor(mut self, actor_id: &'a str) -> Self {
        self.actor_id = Some(actor_id);
        self
    }
    pub fn session(mut self, session_id: &'a str) -> Self {
        self.session_id = Some(session_id);
        self
    }
    pub fn email(mut self, email: &'a str) -> Self {
        self.email = Some(email);
        self
    }
    pub fn detail(mut self, key: &str, value: impl Into<DetailValue>) -> Self {
        self.detail.insert(key, value);
        self
    }
}
