//! Authorize: Authenticate's session check, then the permission matrix against the caller's
//! *current* global role and org membership — not the role in the token, so a role change,
//! disable or membership removal counts from the next call. A member's custom role adds the
//! catalogue permissions it lists (GRANTED_BY_CUSTOM_ROLE; see `domain::org_roles`).
//!
//! Current state is cached per replica for `session_cache_ttl` (as session states are): changes
//! made on this replica are seen at once (the cache entry is dropped), changes made on another
//! replica within that TTL. Custom roles are cached per organization the same way, and read only
//! when a member holding one is checked for a permission their role is too low for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::App;
use crate::domain::org_roles::decide_with_custom_role;
use crate::domain::permissions::{
    decide, decide_scope, is_known, Decision, OrgRole, OrgStanding, Permission,
};
use crate::domain::roles::Role;
use crate::domain::secrets::is_id;
use crate::domain::tokens::{AccessClaims, ServiceAccountGrant};
use crate::domain::validation::FieldViolation;
use crate::error::{Error, Result};
use crate::store::users::UserStatus;

/// Most checks one BatchAuthorize may carry.
pub const MAX_BATCH: usize = 100;

/// The part of an account that decides what it may do, and who it is now (the email may have
/// changed since a token was issued).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub role: Role,
    pub active: bool,
    pub email: std::sync::Arc<str>,
}

/// A member's place in one organization: their role and, if they hold one, the id of their
/// custom role (whose permissions are looked up only when a check needs them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgPlace {
    pub role: OrgRole,
    pub custom_role_id: Option<Arc<str>>,
}

/// An organization's custom roles: id -> its extra permissions.
type CustomRoles = Arc<HashMap<String, Arc<HashSet<String>>>>;

/// Current roles and memberships, briefly cached.
pub struct AccessCache {
    users: quick_cache::sync::Cache<String, (Option<Standing>, Instant)>,
    memberships: quick_cache::sync::Cache<(String, String), (Option<OrgPlace>, Instant)>,
    /// Each organization's custom roles, asked only when a member with a custom role is checked
    /// for a permission their role is too low for.
    custom_roles: quick_cache::sync::Cache<String, (CustomRoles, Instant)>,
    /// Whether a user has a second factor; asked only when a check needs two factors.
    second_factors: quick_cache::sync::Cache<String, (bool, Instant)>,
    /// Whether an organization requires two factors of its members.
    org_policies: quick_cache::sync::Cache<String, (bool, Instant)>,
    ttl: Duration,
    /// Bumped by every local change. A database read that started before a change must not
    /// put what it read back into the cache after the change dropped it.
    generation: std::sync::atomic::AtomicU64,
}

impl AccessCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            users: quick_cache::sync::Cache::new(50_000),
            memberships: quick_cache::sync::Cache::new(100_000),
            custom_roles: quick_cache::sync::Cache::new(20_000),
            second_factors: quick_cache::sync::Cache::new(50_000),
            org_policies: quick_cache::sync::Cache::new(20_000),
            ttl,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A token's verdict: who (as the token says), their current standing, and one decision per
/// check.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub claims: Arc<AccessClaims>,
    pub standing: Standing,
    pub decisions: Vec<Decision>,
}

/// The field violations of checks whose organization id is malformed (`field` names the
/// check, e.g. `org_id` or `checks[3].org_id`); the gRPC calls refuse them up front.
/// (On a plain list: the adapters collect these before calling in.)
pub fn check_org_id(field: &str, org_id: &str, out: &mut Vec<FieldViolation>) {
    if !org_id.is_empty() && !is_id(org_id) {
        out.push(FieldViolation::new(
            field,
            "must be an organization id (32 lower-case hex digits) or empty",
        ));
    }
}

/// One permission question.
#[derive(Debug, Clone)]
pub struct Check {
    pub permission: String,
    /// Empty: a platform-wide check.
    pub org_id: String,
}

impl App {
    /// The current role and state of `user_id` (`None`: no such account, or deleted).
    pub async fn standing(&self, user_id: &str) -> Result<Option<Standing>> {
        if let Some((standing, at)) = self.access.users.get(user_id) {
            if at.elapsed() < self.access.ttl {
                crate::metrics::cache(crate::metrics::Cache::AccessUser, true);
                return Ok(standing);
            }
        }
        crate::metrics::cache(crate::metrics::Cache::AccessUser, false);
        let generation = self.access.generation();
        let standing = self
            .store
            .users
            .find_by_id(user_id)
            .await?
            .filter(|u| u.status != UserStatus::Deleted)
            .map(|u| Standing {
                role: u.role,
                active: u.status == UserStatus::Active,
                email: u.email.into(),
            });
        if self.access.generation() == generation {
            self.access
                .users
                .insert(user_id.to_string(), (standing.clone(), Instant::now()));
        }
        Ok(standing)
    }

    /// `user_id`'s current role in `org_id`, `None` when not a member.
    pub async fn org_role(&self, org_id: &str, user_id: &str) -> Result<Option<OrgRole>> {
        Ok(self.org_place(org_id, user_id).await?.map(|p| p.role))
    }

    /// `user_id`'s current role and custom role in `org_id`, `None` when not a member.
    pub async fn org_place(&self, org_id: &str, user_id: &str) -> Result<Option<OrgPlace>> {
        let key = (org_id.to_string(), user_id.to_string());
        if let Some((place, at)) = self.access.memberships.get(&key) {
            if at.elapsed() < self.access.ttl {
                crate::metrics::cache(crate::metrics::Cache::AccessMembership, true);
                return Ok(place);
            }
        }
        crate::metrics::cache(crate::metrics::Cache::AccessMembership, false);
        let generation = self.access.generation();
        let place = self
            .store
            .memberships
            .find(org_id, user_id)
            .await?
            .map(|m| OrgPlace {
                role: m.role,
                custom_role_id: m.custom_role_id.map(Into::into),
            });
        if self.access.generation() == generation {
            self.access
                .memberships
                .insert(key, (place.clone(), Instant::now()));
        }
        Ok(place)
    }

    /// The extra permissions of `org_id`'s custom role `role_id` (`None`: no such role, e.g.
    /// deleted), from the briefly cached roles of that organization.
    pub async fn custom_role_permissions(
        &self,
        org_id: &str,
        role_id: &str,
    ) -> Result<Option<Arc<HashSet<String>>>> {
        if let Some((roles, at)) = self.access.custom_roles.get(org_id) {
            if at.elapsed() < self.access.ttl {
                crate::metrics::cache(crate::metrics::Cache::AccessCustomRoles, true);
                return Ok(roles.get(role_id).cloned());
            }
        }
        crate::metrics::cache(crate::metrics::Cache::AccessCustomRoles, false);
        let generation = self.access.generation();
        let roles: CustomRoles = Arc::new(
            self.store
                .org_roles
                .list(org_id)
                .await?
                .into_iter()
                .map(|r| (r.id, Arc::new(r.permissions.into_iter().collect())))
                .collect(),
        );
        if self.access.generation() == generation {
            self.access
                .custom_roles
                .insert(org_id.to_string(), (roles.clone(), Instant::now()));
        }
        Ok(roles.get(role_id).cloned())
    }

    /// The decision on `permission` for a member of `org_id` in `place`: their role's, or their
    /// custom role's for a catalogue permission the role is too low for.
    pub async fn decide_as_member(
        &self,
        permission: &str,
        role: Role,
        org_id: &str,
        place: &OrgPlace,
    ) -> Result<Decision> {
        let standing = OrgStanding::Member(place.role);
        let decision = self.decide(permission, role, standing);
        let Some(custom_role) = place.custom_role_id.as_deref() else {
            return Ok(decision);
        };
        if decision.allowed || decision.reason != "ORG_ROLE_TOO_LOW" || is_known(permission) {
            return Ok(decision);
        }
        let listed = self
            .custom_role_permissions(org_id, custom_role)
            .await?
            .is_some_and(|p| p.contains(permission));
        let scope = self.permission_rule(permission).map(|r| r.scope);
        Ok(decide_with_custom_role(scope, role, standing, listed))
    }

    /// Whether `user_id` has a second factor, briefly cached.
    async fn cached_second_factor(&self, user_id: &str) -> Result<bool> {
        if let Some((enrolled, at)) = self.access.second_factors.get(user_id) {
            if at.elapsed() < self.access.ttl {
                crate::metrics::cache(crate::metrics::Cache::AccessSecondFactor, true);
                return Ok(enrolled);
            }
        }
        crate::metrics::cache(crate::metrics::Cache::AccessSecondFactor, false);
        let generation = self.access.generation();
        let enrolled = self.has_second_factor(user_id).await?;
        if self.access.generation() == generation {
            self.access
                .second_factors
                .insert(user_id.to_string(), (enrolled, Instant::now()));
        }
        Ok(enrolled)
    }

    /// Whether organization `org_id` requires two factors of its members, briefly cached.
    async fn org_requires_mfa(&self, org_id: &str) -> Result<bool> {
        if let Some((required, at)) = self.access.org_policies.get(org_id) {
            if at.elapsed() < self.access.ttl {
                crate::metrics::cache(crate::metrics::Cache::AccessOrgPolicy, true);
                return Ok(required);
            }
        }
        crate::metrics::cache(crate::metrics::Cache::AccessOrgPolicy, false);
        let generation = self.access.generation();
        let required = self
            .store
            .orgs
            .find(org_id)
            .await?
            .is_some_and(|o| o.require_mfa);
        if self.access.generation() == generation {
            self.access
                .org_policies
                .insert(org_id.to_string(), (required, Instant::now()));
        }
        Ok(required)
    }

    /// Why a one-factor session of `claims` is refused where two factors are needed:
    /// MFA_REQUIRED (it has a second factor: step up) or MFA_ENROLLMENT_REQUIRED (it has none
    /// yet). `None` for a two-factor session.
    pub async fn second_factor_refusal(&self, claims: &AccessClaims) -> Result<Option<Decision>> {
        if claims.aal() >= 2 {
            return Ok(None);
        }
        Ok(Some(if self.cached_second_factor(&claims.user_id).await? {
            Decision {
                allowed: false,
                reason: "MFA_REQUIRED",
            }
        } else {
            Decision {
                allowed: false,
                reason: "MFA_ENROLLMENT_REQUIRED",
            }
        }))
    }

    /// The refusal of a one-factor session in an organization that requires two factors
    /// (`None`: no such requirement, or the session has two factors).
    pub async fn org_second_factor_refusal(
        &self,
        claims: &AccessClaims,
        org_id: &str,
    ) -> Result<Option<Decision>> {
        if claims.aal() >= 2 || !is_id(org_id) || !self.org_requires_mfa(org_id).await? {
            return Ok(None);
        }
        self.second_factor_refusal(claims).await
    }

    /// The matrix's (or the catalogue's) decision on `permission`.
    fn decide(&self, permission: &str, role: Role, standing: OrgStanding) -> Decision {
        let scope = self.permission_rule(permission).map(|r| r.scope);
        decide_scope(scope, role, standing)
    }

    /// Whether a granted check still needs a second factor: the permission is listed in
    /// `mfa_required_permissions` or defined as needing one in the catalogue, or the
    /// organization asked about requires it.
    async fn needs_second_factor(&self, check: &Check) -> Result<bool> {
        if self
            .config
            .mfa_required_permissions
            .contains(&check.permission)
            || self
                .permission_rule(&check.permission)
                .is_some_and(|r| r.requires_mfa)
        {
            return Ok(true);
        }
        if check.org_id.is_empty() || !is_id(&check.org_id) {
            return Ok(false);
        }
        self.org_requires_mfa(&check.org_id).await
    }

    /// `decision` for `check`, refused when it needs a second factor `claims` lacks.
    async fn with_second_factor(
        &self,
        claims: &AccessClaims,
        check: &Check,
        decision: Decision,
    ) -> Result<Decision> {
        if !decision.allowed || claims.aal() >= 2 || !self.needs_second_factor(check).await? {
            return Ok(decision);
        }
        Ok(self
            .second_factor_refusal(claims)
            .await?
            .unwrap_or(decision))
    }

    /// Drops the cached second-factor state of `user_id` after a change made here.
    pub fn forget_second_factor(&self, user_id: &str) {
        self.access.changed();
        self.access.second_factors.remove(user_id);
    }

    /// Drops the cached policy of `org_id` after a change made here.
    pub fn forget_org_policy(&self, org_id: &str) {
        self.access.changed();
        self.access.org_policies.remove(org_id);
    }

    /// The access caches' generation (see `AccessCache::generation`), for other caches that
    /// must not put back what a concurrent local change dropped.
    pub(super) fn access_generation(&self) -> u64 {
        self.access.generation()
    }

    /// Marks a local change (see `AccessCache::changed`).
    pub(super) fn access_changed(&self) {
        self.access.changed();
    }

    /// Drops the cached standing of `user_id` after a change made here.
    pub fn forget_user(&self, user_id: &str) {
        self.access.changed();
        self.access.users.remove(user_id);
    }

    /// Drops a cached membership after a change made here.
    pub fn forget_membership(&self, org_id: &str, user_id: &str) {
        self.access.changed();
        self.access
            .memberships
            .remove(&(org_id.to_string(), user_id.to_string()));
    }

    /// Drops every cached membership (an organization went away).
    pub fn forget_all_memberships(&self) {
        self.access.changed();
        self.access.memberships.clear();
    }

    /// Drops the cached custom roles of `org_id` after a change made here.
    pub fn forget_custom_roles(&self, org_id: &str) {
        self.access.changed();
        self.access.custom_roles.remove(org_id);
    }

    /// Authenticates `access_token` and answers each check, in order. With no checks this is
    /// Authenticate plus the caller's current standing (role and state, not the token's).
    /// `access_token` may also be a service account's API key (`client_address` is recorded as
    /// the key's last use).
    pub async fn authorize(
        &self,
        access_token: &str,
        checks: &[Check],
        client_address: &str,
    ) -> Result<Authorized> {
        if checks.len() > MAX_BATCH {
            return Err(Error::invalid(
                "checks",
                format!("must hold at most {MAX_BATCH} checks"),
            ));
        }
        let claims = self
            .authenticate_principal(access_token, client_address)
            .await?;
        if let Some(grant) = claims.service_account.clone() {
            return self.authorize_service_account(claims, &grant, checks).await;
        }
        // Deleted or disabled: disabling ends every session, so a session still alive here is one
        // that should have ended — treated as revoked, for Authenticate too.
        let Some(standing) = self.standing(&claims.user_id).await?.filter(|s| s.active) else {
            return Err(Error::SessionRevoked);
        };
        let mut decisions = Vec::with_capacity(checks.len());
        for check in checks {
            let decision = if check.org_id.is_empty() {
                self.decide(&check.permission, standing.role, OrgStanding::NoOrg)
            } else if !is_id(&check.org_id) {
                // No organization has such an id: answered without a lookup, and never cached
                // (a flood of made-up ids must not fill the membership cache).
                self.decide(&check.permission, standing.role, OrgStanding::NotMember)
            } else {
                match self.org_place(&check.org_id, &claims.user_id).await? {
                    Some(place) => {
                        self.decide_as_member(
                            &check.permission,
                            standing.role,
                            &check.org_id,
                            &place,
                        )
                        .await?
                    }
                    None => self.decide(&check.permission, standing.role, OrgStanding::NotMember),
                }
            };
            let decision = self.with_second_factor(&claims, check, decision).await?;
            decisions.push(decision);
        }
        Ok(Authorized {
            claims,
            standing,
            decisions,
        })
    }

    /// A service account's decisions: its role (platform) or its role in its own organization
    /// (nothing in any other), within its allowed permissions if it has a list. Its key was
    /// checked live (enabled account, unrevoked, unexpired) at most `session_cache_ttl` ago.
    async fn authorize_service_account(
        &self,
        claims: Arc<AccessClaims>,
        grant: &ServiceAccountGrant,
        checks: &[Check],
    ) -> Result<Authorized> {
        let standing = Standing {
            role: claims.role,
            active: true,
            email: claims.email.as_str().into(),
        };
        let mut decisions = Vec::with_capacity(checks.len());
        for check in checks {
            let org = match &grant.org {
                _ if check.org_id.is_empty() => OrgStanding::NoOrg,
                Some((org_id, role)) if *org_id == check.org_id => OrgStanding::Member(*role),
                _ => OrgStanding::NotMember,
            };
            let decision = self.decide(&check.permission, standing.role, org);
            let decision = if decision.allowed
                && !grant.allowed_permissions.is_empty()
                && !grant.allowed_permissions.contains(&check.permission)
            {
                Decision {
                    allowed: false,
                    reason: "NOT_GRANTED_TO_SERVICE_ACCOUNT",
                }
            } else {
                decision
            };
            decisions.push(self.with_second_factor(&claims, check, decision).await?);
        }
        Ok(Authorized {
            claims,
            standing,
            decisions,
        })
    }

    /// The signed-in caller's current standing for use cases that check permissions themselves;
    /// refuses callers whose account is gone or disabled.
    pub async fn acting(&self, who: &AccessClaims) -> Result<Standing> {
        if who.service_account.is_some() {
            return Err(Error::HumanOnly);
        }
        match self.standing(&who.user_id).await? {
            Some(s) if s.active => Ok(s),
            Some(_) => Err(Error::AccountDisabled),
            None => Err(Error::SessionRevoked),
        }
    }

    /// Fails with PERMISSION_DENIED unless `who` holds the platform `permission` now.
    pub async fn require(&self, who: &AccessClaims, permission: Permission) -> Result<Standing> {
        let standing = self.acting(who).await?;
        let check = Check {
            permission: permission.as_str().to_string(),
            org_id: String::new(),
        };
        let decision = decide(permission, standing.role, OrgStanding::NoOrg);
        let decision = self.with_second_factor(who, &check, decision).await?;
        match decision.reason {
            _ if decision.allowed => Ok(standing),
            "MFA_REQUIRED" => Err(Error::MfaRequired),
            "MFA_ENROLLMENT_REQUIRED" => Err(Error::MfaEnrollmentRequired),
            _ => Err(Error::PermissionDenied),
        }
    }

    /// The caller's role in `org_id` if it holds the org `permission`: NOT_FOUND when the
    /// organization does not exist, PERMISSION_DENIED when the caller is not a member or its
    /// role is too low. (`org_exists` is asked only after a miss, to tell the two apart.)
    pub async fn require_in_org(
        &self,
        who: &AccessClaims,
        org_id: &str,
        permission: Permission,
        org_exists: impl std::future::Future<Output = Result<bool>>,
    ) -> Result<OrgRole> {
        let standing = self.acting(who).await?;
        let check = Check {
            permission: permission.as_str().to_string(),
            org_id: org_id.to_string(),
        };
        match self.org_role(org_id, &who.user_id).await? {
            Some(role) => {
                let decision = decide(permission, standing.role, OrgStanding::Member(role));
                let decision = self.with_second_factor(who, &check, decision).await?;
                match decision.reason {
                    _ if decision.allowed => Ok(role),
                    "MFA_REQUIRED" => Err(Error::MfaRequired),
                    "MFA_ENROLLMENT_REQUIRED" => Err(Error::MfaEnrollmentRequired),
                    _ => Err(Error::PermissionDenied),
                }
            }
            None if org_exists.await? => Err(Error::PermissionDenied),
            None => Err(Error::OrgNotFound),
        }
    }
}
