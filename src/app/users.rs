//! Platform administration of accounts (UserService) and the audit log.
//!
//! Reading needs `users.read` / `audit.read` (moderator and up), changing needs `users.write` or
//! `users.roles.write` (admin and up). Nobody acts on an account whose role is above their own,
//! grants a role above their own, or changes their own role or state. Every change is audited
//! with the acting admin, and role or state changes count from the target's next call.

use chrono::{DateTime, Utc};

use super::{page_of, page_request, App, AuditRecord, Caller, Page};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::email;
use crate::domain::paging::{Cursor, FilterKey, PageFilter};
use crate::domain::permissions::Permission;
use crate::domain::permissions::{may_set_global_role, GrantDenied};
use crate::domain::roles::Role;
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::audit_events::{AuditEvent, AuditFilter};
use crate::store::users::{Inserted, UserDoc, UserFilter, UserStatus};

/// Whether an account may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccountStatus {
    #[default]
    Active,
    Disabled,
    Deleted,
}

impl From<UserStatus> for AccountStatus {
    fn from(s: UserStatus) -> Self {
        match s {
            UserStatus::Active => AccountStatus::Active,
            UserStatus::Disabled => AccountStatus::Disabled,
            UserStatus::Deleted => AccountStatus::Deleted,
        }
    }
}

impl From<AccountStatus> for UserStatus {
    fn from(s: AccountStatus) -> Self {
        match s {
            AccountStatus::Active => UserStatus::Active,
            AccountStatus::Disabled => UserStatus::Disabled,
            AccountStatus::Deleted => UserStatus::Deleted,
        }
    }
}

/// A person's account as the use cases hand it out: everything but its password hash.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    /// Normalised (see `domain::email::normalize`).
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub status: AccountStatus,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<UserDoc> for Account {
    fn from(u: UserDoc) -> Self {
        Self {
            id: u.id,
            email: u.email,
            display_name: u.display_name,
            role: u.role,
            status: u.status.into(),
            email_verified: u.email_verified,
            created_at: u.created_at,
            updated_at: u.updated_at,
            last_login_at: u.last_login_at,
        }
    }
}

impl From<&UserDoc> for Account {
    fn from(u: &UserDoc) -> Self {
        u.clone().into()
    }
}

/// Which accounts a listing shows.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Empty: active and disabled accounts.
    pub statuses: Vec<AccountStatus>,
    pub role: Option<Role>,
    /// Compared against the normalised (lower-case) email.
    pub email_prefix: String,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

impl UserQuery {
    fn stored(self) -> UserFilter {
        let statuses = if self.statuses.is_empty() {
            vec![UserStatus::Active, UserStatus::Disabled]
        } else {
            self.statuses.into_iter().map(Into::into).collect()
        };
        UserFilter {
            statuses,
            role: self.role,
            email_prefix: self.email_prefix,
            created_after: self.created_after,
            created_before: self.created_before,
        }
    }
}

/// Which audit events a listing shows.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Events about this user or done by them.
    pub user_id: String,
    pub action: String,
    pub after: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
}

impl AuditQuery {
    fn stored(self) -> AuditFilter {
        AuditFilter {
            user_id: self.user_id,
            action: self.action,
            after: self.after,
            before: self.before,
        }
    }
}

/// One audited action, as the audit log shows it.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: String,
    pub action: String,
    pub outcome: Outcome,
    pub user_id: Option<String>,
    pub actor_id: Option<String>,
    pub session_id: Option<String>,
    pub client_address: String,
    pub user_agent: String,
    /// Each detail as text (see `store::audit_events::Details::into_text`).
    pub detail: Vec<(String, String)>,
    pub occurred_at: DateTime<Utc>,
}

impl From<AuditEvent> for AuditEntry {
    fn from(e: AuditEvent) -> Self {
        Self {
            id: e.id,
            action: e.action,
            outcome: e.outcome,
            user_id: e.user_id,
            actor_id: e.actor_id,
            session_id: e.session_id,
            client_address: e.client_address,
            user_agent: e.user_agent,
            detail: e.detail.into_text(),
            occurred_at: e.occurred_at,
        }
    }
}

/// Profile changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileChanges {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
}

/// The roles an admin with `actor` may act on: their own and below.
fn within(actor: Role) -> Vec<Role> {
    Role::ALL.into_iter().filter(|r| *r <= actor).collect()
}

/// The roles strictly below `actor`.
fn below(actor: Role) -> Vec<Role> {
    Role::ALL.into_iter().filter(|r| *r < actor).collect()
}

fn check_range(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>, field: &str) -> Result<()> {
    match (from, to) {
        (Some(a), Some(b)) if a >= b => {
            Err(Error::invalid(field, "must be before the end of the range"))
        }
        _ => Ok(()),
    }
}

impl PageFilter for UserFilter {
    fn filter_key(&self) -> FilterKey {
        let statuses = self.statuses.iter().map(|s| match s {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
            UserStatus::Deleted => "deleted",
        });
        FilterKey::new("users")
            .set("status", statuses)
            .text("role", self.role.map_or("", Role::as_str))
            .text("email_prefix", &self.email_prefix)
            .time("created_after", self.created_after)
            .time("created_before", self.created_before)
    }
}

impl PageFilter for AuditFilter {
    fn filter_key(&self) -> FilterKey {
        FilterKey::new("audit_events")
            .text("user_id", &self.user_id)
            .text("action", &self.action)
            .time("after", self.after)
            .time("before", self.before)
    }
}

impl App {
    /// Accounts matching `filter`, oldest first, one keyset page at a time.
    pub async fn list_users(
        &self,
        who: &AccessClaims,
        query: UserQuery,
        page_size_requested: i32,
        page_token: &str,
    ) -> Result<Page<Account>> {
        self.require(who, Permission::UsersRead).await?;
        let filter = query.stored();
        check_range(filter.created_after, filter.created_before, "created_after")?;
        let filters = filter.filter_key();
        let (limit, cursor) = page_request(page_size_requested, page_token, &filters)?;
        let users = self
            .store
            .users
            .list(&filter, cursor.as_ref(), limit + 1)
            .await?;
        let users = users.into_iter().map(Account::from).collect();
        Ok(page_of(users, limit, &filters, |u: &Account| Cursor {
            at_millis: u.created_at.timestamp_millis(),
            id: u.id.clone(),
        }))
    }

    /// One account, whatever its state.
    pub async fn get_user(&self, who: &AccessClaims, user_id: &str) -> Result<Account> {
        self.require(who, Permission::UsersRead).await?;
        self.store
            .users
            .find_by_id(user_id)
            .await?
            .map(Account::from)
            .ok_or(Error::UserNotFound)
    }

    /// The account an admin is about to change: it exists, is not deleted, is not the admin
    /// themself (unless `self_allowed`), and its role is not above the admin's.
    async fn target(
        &self,
        who: &AccessClaims,
        actor_role: Role,
        user_id: &str,
        self_allowed: bool,
    ) -> Result<UserDoc> {
        if !self_allowed && user_id == who.user_id {
            return Err(Error::PermissionDenied);
        }
        let user = self
            .store
            .users
            .find_by_id(user_id)
            .await?
            .filter(|u| u.status != UserStatus::Deleted)
            .ok_or(Error::UserNotFound)?;
        if user.role > actor_role {
            return Err(Error::RoleTooHigh);
        }
        Ok(user)
    }

    /// The account a role-guarded write returned, or why it matched nothing: the account is
    /// gone (USER_NOT_FOUND) or its role moved out of the caller's reach meanwhile
    /// (ROLE_TOO_HIGH).
    async fn written(&self, user: Option<UserDoc>, user_id: &str) -> Result<UserDoc> {
        if let Some(user) = user {
            return Ok(user);
        }
        let now = self.store.users.find_by_id(user_id).await?;
        Err(match now {
            Some(u) if u.status != UserStatus::Deleted => Error::RoleTooHigh,
            _ => Error::UserNotFound,
        })
    }

    pub async fn update_user(
        &self,
        who: &AccessClaims,
        user_id: &str,
        changes: ProfileChanges,
        caller: &Caller,
    ) -> Result<Account> {
        let actor = self.require(who, Permission::UsersWrite).await?;
        let mut violations = Violations::new();
        let display_name = changes.display_name.map(|n| n.trim().to_string());
        if let Some(name) = &display_name {
            if violations.required("display_name", name) {
                violations.display_name("display_name", name);
            }
        }
        let new_email = match changes.email.as_deref().map(email::normalize) {
            Some(Ok(e)) => Some(e),
            Some(Err(why)) => {
                violations.push("email", why);
                None
            }
            None => None,
        };
        violations.finish()?;
        let before = self.target(who, actor.role, user_id, true).await?;
        let email_changed = new_email.as_ref().filter(|e| **e != before.email);
        // The address is where codes and resets go: whoever sets it (or vouches for it) could
        // take the account over by a reset. Only over accounts strictly below one's own role
        // (or one's own account): an admin cannot take over another admin.
        let touches_address = email_changed.is_some() || changes.email_verified.is_some();
        let reach = if touches_address && user_id != who.user_id {
            if before.role >= actor.role {
                return Err(Error::RoleTooHigh);
            }
            below(actor.role)
        } else {
            within(actor.role)
        };
        // A new address is unverified unless the same request says otherwise.
        let verified = changes.email_verified.or(email_changed.map(|_| false));
        let user = self
            .store
            .users
            .update_profile(
                user_id,
                &reach,
                display_name.as_deref(),
                email_changed.map(String::as_str),
                verified,
                self.now(),
            )
            .await?
            .map_err(|_: Inserted| Error::EmailTaken)?;
        let user = self.written(user, user_id).await?;
        self.forget_user(user_id);
        let mut event = AuditRecord::new(AuditAction::UserUpdate, Outcome::Success, caller)
            .user(&user.id)
            .actor(&who.user_id)
            .session(&who.session_id);
        if email_changed.is_some() {
            // Sessions opened under the old address end (the acting admin's own stays), and the
            // old address hears of it: its owner may not be the one who asked.
            let ended = self
                .store
                .sessions
                .revoke_all_for_user(&user.id, Some(&who.session_id), "email_changed", self.now())
                .await?;
            self.revoke_sessions(ended.iter().map(String::as_str));
            self.notify_email_changed(&before, &user, ended.len()).await;
            event = event
                .detail("email_changed", true)
                .detail("sessions_ended", ended.len() as i64);
        }
        if display_name.is_some() {
            event = event.detail("display_name_changed", true);
        }
        if let Some(v) = changes.email_verified {
            event = event.detail("email_verified", v);
        }
        self.audit(event).await;
        Ok(user.into())
    }

    /// Tells the old address that the account's email changed. A failure to queue is logged;
    /// it does not undo the change.
    async fn notify_email_changed(&self, before: &UserDoc, after: &UserDoc, sessions_ended: usize) {
        let context = minijinja::context! {
            display_name => after.display_name,
            old_email => before.email,
            // The old mailbox may no longer be the owner's: it learns that the address changed,
            // not where to.
            new_email => crate::domain::email::masked(&after.email),
            sessions_ended => sessions_ended,
        };
        if let Err(e) = self
            .queue_mail(
                "email_changed",
                &before.email,
                &before.display_name,
                context,
            )
            .await
        {
            tracing::error!(user_id = %after.id, error = %e, "could not queue the email-changed notice");
        }
    }

    pub async fn set_user_role(
        &self,
        who: &AccessClaims,
        user_id: &str,
        role: Role,
        caller: &Caller,
    ) -> Result<Account> {
        // Checked first, for every target (it also applies `mfa_required_permissions`).
        let actor = self.require(who, Permission::UsersRolesWrite).await?;
        if user_id == who.user_id {
            // Even a super_admin does not change their own role.
            return Err(Error::PermissionDenied);
        }
        let current = self
            .store
            .users
            .find_by_id(user_id)
            .await?
            .filter(|u| u.status != UserStatus::Deleted);
        let refused = match &current {
            Some(user) => may_set_global_role(actor.role, user.role, role).err(),
            None => may_set_global_role(actor.role, Role::Guest, role).err(),
        };
        if let Some(why) = refused {
            self.audit(
                AuditRecord::new(AuditAction::UserSetRole, Outcome::Denied, caller)
                    .user(user_id)
                    .actor(&who.user_id)
                    .session(&who.session_id)
                    .detail("new_role", role.as_str())
                    .detail("reason", format!("{why:?}")),
            )
            .await;
            return Err(match why {
                GrantDenied::NotAllowed => Error::PermissionDenied,
                GrantDenied::RoleTooHigh => Error::RoleTooHigh,
            });
        }
        let before = current.ok_or(Error::UserNotFound)?;
        let changeable: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| may_set_global_role(actor.role, *r, role).is_ok())
            .collect();
        let user = self
            .store
            .users
            .set_role(user_id, &changeable, role, self.now())
            .await?;
        let user = self.written(user, user_id).await?;
        self.forget_user(user_id);
        self.audit(
            AuditRecord::new(AuditAction::UserSetRole, Outcome::Success, caller)
                .user(user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("old_role", before.role.as_str())
                .detail("new_role", role.as_str()),
        )
        .await;
        Ok(user.into())
    }

    /// Disables an account and ends its sessions; returns it and how many sessions ended.
    pub async fn disable_user(
        &self,
        who: &AccessClaims,
        user_id: &str,
        reason: &str,
        caller: &Caller,
    ) -> Result<(Account, usize)> {
        let actor = self.require(who, Permission::UsersWrite).await?;
        let target = self.target(who, actor.role, user_id, false).await?;
        let now = self.now();
        let user = if target.status == UserStatus::Disabled {
            target
        } else {
            let user = self
                .store
                .users
                .set_status(
                    user_id,
                    &within(actor.role),
                    UserStatus::Disabled,
                    None,
                    now,
                )
                .await?;
            self.written(user, user_id).await?
        };
        let ended = self.end_all_sessions(user_id, "account_disabled").await?;
        self.audit(
            AuditRecord::new(AuditAction::UserDisable, Outcome::Success, caller)
                .user(user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("reason", reason.chars().take(500).collect::<String>())
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok((user.into(), ended))
    }

    pub async fn enable_user(
        &self,
        who: &AccessClaims,
        user_id: &str,
        caller: &Caller,
    ) -> Result<Account> {
        let actor = self.require(who, Permission::UsersWrite).await?;
        let target = self.target(who, actor.role, user_id, true).await?;
        let user = if target.status == UserStatus::Active {
            target
        } else {
            let user = self
                .store
                .users
                .set_status(
                    user_id,
                    &within(actor.role),
                    UserStatus::Active,
                    None,
                    self.now(),
                )
                .await?;
            self.written(user, user_id).await?
        };
        self.forget_user(user_id);
        self.audit(
            AuditRecord::new(AuditAction::UserEnable, Outcome::Success, caller)
                .user(user_id)
                .actor(&who.user_id)
                .session(&who.session_id),
        )
        .await;
        Ok(user.into())
    }

    /// Soft-deletes an account and ends its sessions. With `reuse_deleted_emails`, the address
    /// is freed for a new registration (the deleted record keeps it in a form no login matches).
    pub async fn delete_user(
        &self,
        who: &AccessClaims,
        user_id: &str,
        reason: &str,
        caller: &Caller,
    ) -> Result<usize> {
        let actor = self.require(who, Permission::UsersWrite).await?;
        let target = self.target(who, actor.role, user_id, false).await?;
        let freed = self
            .config
            .reuse_deleted_emails
            .then(|| format!("deleted:{}:{}", target.id, target.email));
        let deleted = self
            .store
            .users
            .set_status(
                user_id,
                &within(actor.role),
                UserStatus::Deleted,
                freed.as_deref(),
                self.now(),
            )
            .await?;
        self.written(deleted, user_id).await?;
        self.store.identities.remove_user(user_id).await?;
        let ended = self.end_all_sessions(user_id, "account_deleted").await?;
        self.audit(
            AuditRecord::new(AuditAction::UserDelete, Outcome::Success, caller)
                .user(user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("reason", reason.chars().take(500).collect::<String>())
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok(ended)
    }

    /// Ends every session of `user_id` at once, here and (within `session_cache_ttl`) on every
    /// replica; returns how many ended.
    pub(super) async fn end_all_sessions(&self, user_id: &str, why: &str) -> Result<usize> {
        let ended = self
            .store
            .sessions
            .revoke_all_for_user(user_id, None, why, self.now())
            .await?;
        self.revoke_sessions(ended.iter().map(String::as_str));
        self.forget_user(user_id);
        Ok(ended.len())
    }

    /// Audit events matching `filter`, newest first, one keyset page at a time.
    pub async fn list_audit_events(
        &self,
        who: &AccessClaims,
        query: AuditQuery,
        page_size_requested: i32,
        page_token: &str,
    ) -> Result<Page<AuditEntry>> {
        self.require(who, Permission::AuditRead).await?;
        let filter = query.stored();
        check_range(filter.after, filter.before, "after")?;
        let filters = filter.filter_key();
        let (limit, cursor) = page_request(page_size_requested, page_token, &filters)?;
        let events = self
            .store
            .audit_events
            .list(&filter, cursor.as_ref(), limit + 1)
            .await?;
        let events = events.into_iter().map(AuditEntry::from).collect();
        Ok(page_of(events, limit, &filters, |e: &AuditEntry| Cursor {
            at_millis: e.occurred_at.timestamp_millis(),
            id: e.id.clone(),
        }))
    }
}
