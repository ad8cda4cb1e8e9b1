//! Operator actions for incidents, run from the CLI by whoever holds the database credentials
//! (`keyward admin revoke-sessions | disable-user | unlock`): no token, no role check — the
//! operator already has more power than any role — but every action is audited (actor `cli`).

use super::accounts::lockout_key;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::email;
use crate::domain::roles::Role;
use crate::error::{Error, Result};
use crate::store::users::{UserDoc, UserStatus};

impl App {
    /// The account of `raw_email` (not deleted), for an operator.
    async fn operator_target(&self, raw_email: &str) -> Result<UserDoc> {
        let email = email::normalize(raw_email).map_err(|why| Error::invalid("email", why))?;
        self.store
            .users
            .find_by_email(&email)
            .await?
            .filter(|u| u.status != UserStatus::Deleted)
            .ok_or(Error::UserNotFound)
    }

    /// Ends every session of the account of `email`; returns how many ended.
    pub async fn operator_revoke_sessions(&self, email: &str, caller: &Caller) -> Result<usize> {
        let user = self.operator_target(email).await?;
        let ended = self
            .end_all_sessions(&user.id, "revoked_by_operator")
            .await?;
        self.audit(
            AuditRecord::new(AuditAction::SessionsRevoke, Outcome::Success, caller)
                .user(&user.id)
                .actor("cli")
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok(ended)
    }

    /// Disables the account of `email` (any role) and ends its sessions.
    pub async fn operator_disable_user(&self, email: &str, caller: &Caller) -> Result<usize> {
        let user = self.operator_target(email).await?;
        if user.status != UserStatus::Disabled {
            self.store
                .users
                .set_status(&user.id, &Role::ALL, UserStatus::Disabled, None, self.now())
                .await?
                .ok_or(Error::UserNotFound)?;
        }
        let ended = self.end_all_sessions(&user.id, "account_disabled").await?;
        self.audit(
            AuditRecord::new(AuditAction::UserDisable, Outcome::Success, caller)
                .user(&user.id)
                .actor("cli")
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok(ended)
    }

    /// Lifts the password lockout of `email` and the second-factor lockout of its account
    /// (someone locked out by an attacker's guesses, once the attack is dealt with).
    pub async fn operator_unlock(&self, raw_email: &str, caller: &Caller) -> Result<()> {
        let email = email::normalize(raw_email).map_err(|why| Error::invalid("email", why))?;
        // The password lockout counts per address, account or not.
        self.store.rate_limits.clear(&lockout_key(&email)).await?;
        let user = self.store.users.find_by_email(&email).await?;
        if let Some(user) = &user {
            self.store
                .rate_limits
                .clear(&super::mfa::mfa_lockout_key(&user.id))
                .await?;
        }
        let mut event =
            AuditRecord::new(AuditAction::LockoutLift, Outcome::Success, caller).actor("cli");
        if let Some(user) = &user {
            event = event.user(&user.id);
        } else {
            event = event.email(&email);
        }
        self.audit(event).await;
        Ok(())
    }
}
