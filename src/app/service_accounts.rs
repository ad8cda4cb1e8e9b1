//! Service accounts and their API keys: non-human principals that Authenticate, Authorize and
//! ext_authz accept wherever they accept a person's access token.
//!
//! A key check is cached like a session check: this replica asks the database about a key at
//! most once per `session_cache_ttl`, and forgets every cached key at once when it revokes a key
//! or disables or deletes an account itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::permissions::Permission;
use crate::domain::permissions::{
    may_set_global_role, may_set_org_role, GrantDenied, OrgRole, OrgStanding, Scope,
};
use crate::domain::roles::Role;
use crate::domain::secrets::{hash_token, is_id, new_id, new_secret};
use crate::domain::tokens::{AccessClaims, ServiceAccountGrant};
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::api_keys::ApiKeyDoc;
use crate::store::service_accounts::ServiceAccountDoc;

/// Prefix that makes API keys recognisable (to keyward and to secret scanners).
pub const API_KEY_PREFIX: &str = "kwk_";
/// Unrevoked keys an account may have at once (enough to rotate; an expired key counts until
/// it is revoked).
pub const MAX_LIVE_KEYS: usize = 5;
/// Longest name and description kept.
const MAX_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 512;

/// Verified keys, by the hash of their secret: the principal, or `None` for a key that is not
/// valid (so a flood of bad keys is answered from memory too, for the TTL).
pub struct KeyCache {
    keys: quick_cache::sync::Cache<String, (Option<Arc<AccessClaims>>, Instant)>,
    ttl: Duration,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            keys: quick_cache::sync::Cache::new(20_000),
            ttl,
        }
    }
}

/// An account as asked for.
#[derive(Debug, Clone, Default)]
pub struct NewServiceAccount {
    pub name: String,
    pub description: String,
    /// Empty: platform-wide.
    pub org_id: String,
    pub role: Option<Role>,
    pub org_role: Option<OrgRole>,
    pub allowed_permissions: Vec<String>,
}

/// A service account as the use cases hand it out.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `None`: platform-wide.
    pub org_id: Option<String>,
    /// The platform role of a platform-wide account; `None` for an organization's.
    pub role: Option<Role>,
    /// The organization role of an organization's account.
    pub org_role: Option<OrgRole>,
    pub allowed_permissions: Vec<String>,
    pub disabled: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl From<&ServiceAccountDoc> for ServiceAccount {
    fn from(a: &ServiceAccountDoc) -> Self {
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            description: a.description.clone(),
            org_id: a.org_id.clone(),
            role: match a.org_id {
                Some(_) => None,
                None => Some(a.role.parse().unwrap_or(Role::Guest)),
            },
            org_role: org_role_of(a),
            allowed_permissions: a.allowed_permissions.clone(),
            disabled: a.disabled,
            created_by: a.created_by.clone(),
            created_at: a.created_at,
        }
    }
}

/// An API key as the use cases hand it out (never its secret or the secret's hash).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub service_account_id: String,
    /// The secret's first characters, to tell keys apart.
    pub prefix: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_address: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<&ApiKeyDoc> for ApiKey {
    fn from(k: &ApiKeyDoc) -> Self {
        Self {
            id: k.id.clone(),
            service_account_id: k.service_account_id.clone(),
            prefix: k.prefix.clone(),
            description: k.description.clone(),
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            last_used_address: k.last_used_address.clone(),
            revoked_at: k.revoked_at,
        }
    }
}

/// A new key: its record and the secret, shown once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

fn org_role_of(account: &ServiceAccountDoc) -> Option<OrgRole> {
    account.org_role.as_deref().and_then(|r| r.parse().ok())
}

impl App {
    /// A person's access token or a service account's API key, checked.
    pub async fn authenticate_principal(
        &self,
        token: &str,
        client_address: &str,
    ) -> Result<Arc<AccessClaims>> {
        if token.starts_with(API_KEY_PREFIX) {
            self.authenticate_key(token, client_address).await
        } else {
            self.authenticate(token).await
        }
    }

    /// An API key's principal: a live key of an enabled account.
    async fn authenticate_key(
        &self,
        secret: &str,
        client_address: &str,
    ) -> Result<Arc<AccessClaims>> {
        // Only what `new_secret` makes (43 URL-safe base64 characters after the prefix) is
        // looked up; anything else is refused without asking the database.
        let body = &secret[API_KEY_PREFIX.len()..];
        if body.len() != 43
            || !body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::TokenInvalid);
        }
        let hash = hash_token(secret);
        if let Some((principal, at)) = self.key_cache.keys.get(&hash) {
            if at.elapsed() < self.key_cache.ttl {
                crate::metrics::cache(crate::metrics::Cache::ApiKey, true);
                // An expiry counts to the instant, as a token's does.
                return principal
                    .filter(|p| p.expires_at > self.now())
                    .ok_or(Error::TokenInvalid);
            }
        }
        crate::metrics::cache(crate::metrics::Cache::ApiKey, false);
        let generation = self.access_generation();
        let now = self.now();
        let principal = match self
            .store
            .api_keys
            .use_key(&hash, client_address, now)
            .await?
            .filter(|k| k.is_live(now))
        {
            Some(key) => self
                .store
                .service_accounts
                .find(&key.service_account_id)
                .await?
                .filter(|a| !a.disabled)
                .map(|account| Arc::new(self.key_principal(&account, &key, now))),
            None => None,
        };
        if self.access_generation() == generation {
            self.key_cache
                .keys
                .insert(hash.clone(), (principal.clone(), Instant::now()));
            // A revocation made here between the check above and the insert must win.
            if self.access_generation() != generation {
                self.key_cache.keys.remove(&hash);
            }
        }
        if let Some(p) = &principal {
            crate::telemetry::record_user_id(&p.user_id);
        }
        principal.ok_or(Error::TokenInvalid)
    }

    fn key_principal(
        &self,
        account: &ServiceAccountDoc,
        key: &ApiKeyDoc,
        now: DateTime<Utc>,
    ) -> AccessClaims {
        let org = account.org_id.clone().zip(org_role_of(account));
        AccessClaims {
            user_id: account.id.clone(),
            session_id: key.id.clone(),
            // Never the name: a name chosen to look like someone's address must not reach an
            // upstream as an email (`x-keyward-email`).
            email: String::new(),
            role: account.role.parse().unwrap_or(Role::Guest),
            expires_at: key.expires_at.unwrap_or(now + chrono::Duration::days(3650)),
            amr: vec!["key".into()],
            auth_time: now,
            service_account: Some(Arc::new(ServiceAccountGrant {
                org,
                allowed_permissions: account.allowed_permissions.clone(),
            })),
        }
    }

    /// Deletes an organization's service accounts and their keys (the organization is gone).
    pub(crate) async fn remove_org_service_accounts(&self, org_id: &str) -> Result<usize> {
        let accounts = self.store.service_accounts.list(Some(org_id)).await?;
        for account in &accounts {
            self.store.service_accounts.remove(&account.id).await?;
            self.store.api_keys.remove_all(&account.id).await?;
        }
        if !accounts.is_empty() {
            self.forget_keys();
        }
        Ok(accounts.len())
    }

    /// Forgets every cached key (after a revocation, disable or delete made here).
    fn forget_keys(&self) {
        self.access_changed();
        self.key_cache.keys.clear();
    }

    /// What `who` may do to accounts of `account`'s scope: fails unless `who` manages that
    /// scope and the account's role is not above `who`'s own there.
    async fn require_manager(
        &self,
        who: &AccessClaims,
        org_id: Option<&str>,
        role: Role,
        org_role: Option<OrgRole>,
    ) -> Result<()> {
        match org_id {
            None => {
                let actor = self.require(who, Permission::UsersWrite).await?;
                may_set_global_role(actor.role, Role::Guest, role).map_err(|why| match why {
                    GrantDenied::NotAllowed => Error::PermissionDenied,
                    GrantDenied::RoleTooHigh => Error::RoleTooHigh,
                })
            }
            Some(org_id) => {
                let exists = async { Ok(self.store.orgs.exists(org_id).await?) };
                let actor = self
                    .require_in_org(who, org_id, Permission::OrgMembersWrite, exists)
                    .await?;
                may_set_org_role(actor, None, org_role).map_err(|why| match why {
                    GrantDenied::NotAllowed => Error::PermissionDenied,
                    GrantDenied::RoleTooHigh => Error::RoleTooHigh,
                })
            }
        }
    }

    /// Creates a service account.
    pub async fn create_service_account(
        &self,
        who: &AccessClaims,
        new: NewServiceAccount,
        caller: &Caller,
    ) -> Result<ServiceAccount> {
        let mut violations = Violations::new();
        violations.required_text("name", &new.name, MAX_NAME);
        violations.text("description", &new.description, MAX_DESCRIPTION);
        let org_id = (!new.org_id.is_empty()).then_some(new.org_id.as_str());
        if org_id.is_some_and(|id| !is_id(id)) {
            violations.push("org_id", "must be an organization id or empty");
        }
        let (role, org_role) = match (org_id, new.role, new.org_role) {
            (None, Some(role), None) => (role, None),
            (Some(_), None, Some(org_role)) => (Role::Guest, Some(org_role)),
            (None, _, _) => {
                violations.push(
                    "role",
                    "a platform-wide account needs a role (and no org_role)",
                );
                (Role::Guest, None)
            }
            (Some(_), _, _) => {
                violations.push(
                    "org_role",
                    "an organization's account needs an org_role (and no role)",
                );
                (Role::Guest, None)
            }
        };
        if new.allowed_permissions.len() > 100 {
            violations.push("allowed_permissions", "must hold at most 100 permissions");
        }
        for (i, p) in new.allowed_permissions.iter().enumerate() {
            if self.permission_rule(p).is_none() {
                violations.push(
                    format!("allowed_permissions[{i}]"),
                    "is not a known permission",
                );
            }
        }
        violations.finish()?;
        self.require_manager(who, org_id, role, org_role).await?;
        // Nobody gives an account a permission they do not hold themself.
        for p in &new.allowed_permissions {
            let standing = match (self.permission_rule(p).map(|r| r.scope), org_id) {
                (Some(Scope::Org(_)), Some(org)) => match self.org_role(org, &who.user_id).await? {
                    Some(r) => OrgStanding::Member(r),
                    None => OrgStanding::NotMember,
                },
                (Some(Scope::Org(_)), None) => {
                    return Err(Error::invalid(
                        "allowed_permissions",
                        format!(
                            "{p} is an organization permission; a platform-wide account holds none"
                        ),
                    ))
                }
                _ => OrgStanding::NoOrg,
            };
            let actor = self.acting(who).await?;
            let scope = self.permission_rule(p).map(|r| r.scope);
            if !crate::domain::permissions::decide_scope(scope, actor.role, standing).allowed {
                return Err(Error::PermissionDenied);
            }
        }
        let now = self.now();
        let account = ServiceAccountDoc {
            id: new_id(),
            name: new.name.trim().to_string(),
            description: new.description,
            org_id: org_id.map(str::to_string),
            role: role.as_str().into(),
            org_role: org_role.map(|r| r.as_str().to_string()),
            allowed_permissions: new.allowed_permissions,
            disabled: false,
            key_count: 0,
            created_by: who.user_id.clone(),
            created_at: now,
            updated_at: now,
        };
        self.store.service_accounts.insert(&account).await?;
        self.audit(
            AuditRecord::new(AuditAction::ServiceAccountCreate, Outcome::Success, caller)
                .user(&account.id)
                .actor(&who.user_id)
                .detail("org_id", account.org_id.clone().unwrap_or_default())
                .detail("role", account.role.as_str())
                .detail("org_role", account.org_role.clone().unwrap_or_default())
                .detail("allowed_permissions", account.allowed_permissions.clone()),
        )
        .await;
        Ok(ServiceAccount::from(&account))
    }

    /// The platform's accounts (`org_id` empty; `users.read`) or one organization's
    /// (`org.members.read` there).
    pub async fn list_service_accounts(
        &self,
        who: &AccessClaims,
        org_id: &str,
    ) -> Result<Vec<ServiceAccount>> {
        let listed = |accounts: Vec<ServiceAccountDoc>| -> Vec<ServiceAccount> {
            accounts.iter().map(ServiceAccount::from).collect()
        };
        if org_id.is_empty() {
            self.require(who, Permission::UsersRead).await?;
            return Ok(listed(self.store.service_accounts.list(None).await?));
        }
        if !is_id(org_id) {
            return Err(Error::invalid(
                "org_id",
                "must be an organization id or empty",
            ));
        }
        let exists = async { Ok(self.store.orgs.exists(org_id).await?) };
        self.require_in_org(who, org_id, Permission::OrgMembersRead, exists)
            .await?;
        Ok(listed(
            self.store.service_accounts.list(Some(org_id)).await?,
        ))
    }

    /// The account `id` if `who` manages it; NOT_FOUND for an account `who` may not see.
    async fn managed_account(&self, who: &AccessClaims, id: &str) -> Result<ServiceAccountDoc> {
        if id.is_empty() {
            return Err(Error::invalid("service_account_id", "is required"));
        }
        let Some(account) = self.store.service_accounts.find(id).await? else {
            return Err(Error::ServiceAccountNotFound);
        };
        let role = account.role.parse().unwrap_or(Role::Guest);
        match self
            .require_manager(who, account.org_id.as_deref(), role, org_role_of(&account))
            .await
        {
            Ok(()) => Ok(account),
            // Another tenant's account is not there, as far as this caller can tell.
            Err(Error::PermissionDenied | Error::OrgNotFound) if account.org_id.is_some() => {
                Err(Error::ServiceAccountNotFound)
            }
            Err(e) => Err(e),
        }
    }

    /// Disables an account; its keys stop working.
    pub async fn disable_service_account(
        &self,
        who: &AccessClaims,
        id: &str,
        caller: &Caller,
    ) -> Result<()> {
        let account = self.managed_account(who, id).await?;
        if account.disabled {
            return Ok(());
        }
        self.store
            .service_accounts
            .disable(&account.id, self.now())
            .await?;
        self.forget_keys();
        self.audit(
            AuditRecord::new(AuditAction::ServiceAccountDisable, Outcome::Success, caller)
                .user(&account.id)
                .actor(&who.user_id),
        )
        .await;
        Ok(())
    }

    /// Deletes an account and its keys.
    pub async fn delete_service_account(
        &self,
        who: &AccessClaims,
        id: &str,
        caller: &Caller,
    ) -> Result<()> {
        let account = self.managed_account(who, id).await?;
        // The account first: a key left behind by a failure in between opens nothing.
        self.store.service_accounts.remove(&account.id).await?;
        let keys = self.store.api_keys.remove_all(&account.id).await?;
        self.forget_keys();
        self.audit(
            AuditRecord::new(AuditAction::ServiceAccountDelete, Outcome::Success, caller)
                .user(&account.id)
                .actor(&who.user_id)
                .detail("keys_deleted", keys as i64),
        )
        .await;
        Ok(())
    }

    /// A new key for an account; the secret is in the answer only.
    pub async fn create_api_key(
        &self,
        who: &AccessClaims,
        service_account_id: &str,
        description: &str,
        expires_at: Option<DateTime<Utc>>,
        caller: &Caller,
    ) -> Result<CreatedKey> {
        let mut violations = Violations::new();
        violations.text("description", description, MAX_DESCRIPTION);
        let now = self.now();
        if expires_at.is_some_and(|t| t <= now) {
            violations.push("expires_at", "must be in the future");
        }
        violations.finish()?;
        let account = self.managed_account(who, service_account_id).await?;
        if !self
            .store
            .service_accounts
            .take_key_slot(&account.id, MAX_LIVE_KEYS as i32)
            .await?
        {
            return Err(Error::TooManyApiKeys);
        }
        let secret = new_secret(API_KEY_PREFIX);
        let key = ApiKeyDoc {
            id: new_id(),
            service_account_id: account.id.clone(),
            secret_hash: hash_token(&secret),
            prefix: secret.chars().take(API_KEY_PREFIX.len() + 8).collect(),
            description: description.to_string(),
            created_by: who.user_id.clone(),
            created_at: now,
            expires_at,
            last_used_at: None,
            last_used_address: String::new(),
            revoked_at: None,
        };
        if let Err(e) = self.store.api_keys.insert(&key).await {
            self.store
                .service_accounts
                .free_key_slot(&account.id)
                .await?;
            return Err(e.into());
        }
        self.audit(
            AuditRecord::new(AuditAction::ApiKeyCreate, Outcome::Success, caller)
                .user(&account.id)
                .actor(&who.user_id)
                .detail("api_key_id", key.id.as_str())
                .detail("prefix", key.prefix.as_str()),
        )
        .await;
        Ok(CreatedKey {
            key: ApiKey::from(&key),
            secret,
        })
    }

    /// An account's keys (no secrets: only their hashes are stored).
    pub async fn list_api_keys(
        &self,
        who: &AccessClaims,
        service_account_id: &str,
    ) -> Result<Vec<ApiKey>> {
        let account = self.managed_account(who, service_account_id).await?;
        let keys = self.store.api_keys.list(&account.id).await?;
        Ok(keys.iter().map(ApiKey::from).collect())
    }

    /// Revokes one key: at once here, within `session_cache_ttl` elsewhere.
    pub async fn revoke_api_key(
        &self,
        who: &AccessClaims,
        service_account_id: &str,
        api_key_id: &str,
        caller: &Caller,
    ) -> Result<()> {
        let account = self.managed_account(who, service_account_id).await?;
        if !self
            .store
            .api_keys
            .revoke(&account.id, api_key_id, self.now())
            .await?
        {
            return Err(Error::ApiKeyNotFound);
        }
        self.store
            .service_accounts
            .free_key_slot(&account.id)
            .await?;
        self.forget_keys();
        self.audit(
            AuditRecord::new(AuditAction::ApiKeyRevoke, Outcome::Success, caller)
                .user(&account.id)
                .actor(&who.user_id)
                .detail("api_key_id", api_key_id),
        )
        .await;
        Ok(())
    }
}
