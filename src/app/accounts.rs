//! Accounts and passwords: registration, password login with lockout and throttling, password
//! change, and the signed-in user's own account.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::mfa::SignIn;
use super::users::Account;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::email;
use crate::domain::lockout::{remaining, window};
use crate::domain::mfa::Factor;
use crate::domain::password::{self, Verification};
use crate::domain::roles::Role;
use crate::domain::secrets::new_id;
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::users::{Inserted, UserDoc, UserStatus};

/// Longest display name, in characters.
pub use crate::domain::validation::MAX_DISPLAY_NAME;
/// How long consecutive login failures are remembered without a new one.
const FAILURE_MEMORY: Duration = Duration::from_secs(3600);
/// Compare-and-set rounds before a contended password attempt is refused.
const ADMISSION_RETRIES: usize = 4;
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// An admitted password attempt: its number in the run of consecutive attempts, and the lock
/// already set in case it fails.
#[derive(Debug, Clone, Copy)]
pub(super) struct PasswordAttempt {
    pub count: u32,
    pub lock: Option<Duration>,
}

/// A new account as asked for.
#[derive(Debug, Clone, Default)]
pub struct NewAccount {
    pub email: String,
    pub password: String,
    pub display_name: String,
    pub role: Role,
    /// Set only by trusted paths (the bootstrap CLI); self-registration is always unverified.
    pub email_verified: bool,
}

pub(crate) fn lockout_key(email: &str) -> String {
    // Hashed so the counters do not make a second list of addresses.
    format!(
        "login_email:{}",
        hex::encode(Sha256::digest(email.as_bytes()))
    )
}

/// A new active account with a fresh id, as stored.
pub(crate) fn new_account(
    email: String,
    display_name: String,
    password_hash: String,
    role: Role,
    email_verified: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> UserDoc {
    UserDoc {
        id: new_id(),
        email,
        display_name,
        password_hash,
        role,
        status: UserStatus::Active,
        email_verified,
        created_at: now,
        updated_at: now,
        last_login_at: None,
        pending_org: None,
    }
}

impl App {
    /// Creates an account. Concurrent registrations of one email create exactly one account
    /// (the unique index decides); the others get EMAIL_TAKEN.
    pub async fn register(&self, account: NewAccount, caller: &Caller) -> Result<Account> {
        // Before any work: EMAIL_TAKEN answers and argon2id time are what this limit protects.
        self.throttle_address(
            caller,
            "register",
            self.config.registrations_per_address_per_hour,
            HOUR,
        )
        .await?;
        let mut violations = Violations::new();
        let email = violations
            .check("email", email::normalize(&account.email))
            .unwrap_or_default();
        let display_name = account.display_name.trim().to_string();
        violations.display_name("display_name", &display_name);
        violations.extend(self.password_policy.check(
            "password",
            &account.password,
            &[&email, &display_name],
        ));
        violations.finish()?;
        let plain = account.password;
        let hash = self.hasher.run(move || password::hash(&plain)).await??;
        let user = self
            .insert_account(
                email,
                display_name,
                hash,
                account.role,
                account.email_verified,
                caller,
            )
            .await?;
        if !user.email_verified {
            self.send_verification_after_register(&user, caller).await;
        }
        Ok(user.into())
    }

    /// Stores a new account (`password_hash` empty: no password yet) and audits it.
    pub(crate) async fn insert_account(
        &self,
        email: String,
        display_name: String,
        password_hash: String,
        role: Role,
        email_verified: bool,
        caller: &Caller,
    ) -> Result<UserDoc> {
        let user = new_account(
            email,
            display_name,
            password_hash,
            role,
            email_verified,
            self.now(),
        );
        self.insert_user(user, caller).await
    }

    /// Stores `user` and audits it; EMAIL_TAKEN when the address is.
    pub(crate) async fn insert_user(&self, user: UserDoc, caller: &Caller) -> Result<UserDoc> {
        match self.store.users.insert(&user).await? {
            Inserted::Created => {
                self.audit(
                    AuditRecord::new(AuditAction::Register, Outcome::Success, caller)
                        .user(&user.id)
                        .email(&user.email),
                )
                .await;
                Ok(user)
            }
            Inserted::EmailTaken => Err(Error::EmailTaken),
        }
    }

    /// Password login. An unknown email and a wrong password take the same path (a real argon2id
    /// verify, a failure count, an audit event) and give the same answer. Account state
    /// (disabled) is told only after a correct password.
    pub async fn login(&self, raw_email: &str, plain: &str, caller: &Caller) -> Result<SignIn> {
        let result = self.password_login(raw_email, plain, caller).await;
        let asks_second_factor = result.as_ref().map(SignIn::asks_second_factor);
        crate::metrics::login(crate::metrics::LoginMethod::Password, asks_second_factor);
        result
    }

    async fn password_login(
        &self,
        raw_email: &str,
        plain: &str,
        caller: &Caller,
    ) -> Result<SignIn> {
        let mut violations = Violations::new();
        let email = violations
            .check("email", email::normalize(raw_email))
            .unwrap_or_default();
        if plain.is_empty() {
            violations.push("password", "is required");
        } else if plain.chars().count() > self.password_policy.max_length {
            violations.push(
                "password",
                format!(
                    "must be at most {} characters long",
                    self.password_policy.max_length
                ),
            );
        }
        violations.finish()?;
        let now = self.now();
        self.throttle_address(
            caller,
            "login",
            self.config.login_attempts_per_address_per_minute,
            MINUTE,
        )
        .await?;
        let key = lockout_key(&email);
        let attempt = match self.admit_password_attempt(&key).await {
            Ok(attempt) => attempt,
            Err(e) => {
                self.audit(
                    AuditRecord::new(AuditAction::Login, Outcome::Failure, caller)
                        .email(&email)
                        .detail("reason", "account_locked"),
                )
                .await;
                return Err(e);
            }
        };

        let user = self
            .store
            .users
            .find_by_email(&email)
            .await?
            .filter(|u| u.status != UserStatus::Deleted);
        // An account without a usable password (signed up by code, claimed by its mailbox's
        // owner, or an unusable import) costs the same verify as an unknown email.
        let usable = user
            .as_ref()
            .filter(|u| password::is_verifiable_hash(&u.password_hash));
        let stored = usable.map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let has_password = usable.is_some();
        let given = plain.to_string();
        let verdict = self
            .hasher
            .run(move || password::verify(&given, &stored))
            .await?;
        let user = match user {
            Some(user) if has_password && verdict != Verification::Mismatch => user,
            user => {
                self.password_failed(
                    attempt,
                    user.as_ref().map(|u| u.id.as_str()),
                    &email,
                    caller,
                )
                .await;
                return Err(Error::InvalidCredentials);
            }
        };

        if attempt.count > 0 {
            self.store.rate_limits.clear(&key).await?;
        }
        if user.status == UserStatus::Disabled {
            self.audit(
                AuditRecord::new(AuditAction::Login, Outcome::Failure, caller)
                    .user(&user.id)
                    .detail("reason", "account_disabled"),
            )
            .await;
            return Err(Error::AccountDisabled);
        }
        if self.config.require_verified_email && !user.email_verified {
            self.audit(
                AuditRecord::new(AuditAction::Login, Outcome::Failure, caller)
                    .user(&user.id)
                    .detail("reason", "email_not_verified"),
            )
            .await;
            return Err(Error::EmailNotVerified);
        }
        let mut verified_hash = user.password_hash.clone();
        if verdict == Verification::MatchNeedsRehash {
            if let Some(upgraded) = self.upgrade_hash(&user, plain).await {
                verified_hash = upgraded;
            }
        }
        if let Some(challenge) = self.second_step(&user, Factor::Password, caller).await? {
            return Ok(SignIn::SecondFactor(challenge));
        }
        let issued = self
            .start_session(user.clone(), &[Factor::Password], caller)
            .await?;
        // A password change (or disable) between our verify and the session insert ended every
        // session but could not see this one: look again now that it exists.
        let current = self.store.users.record_login(&issued.user.id, now).await?;
        if current
            .is_none_or(|u| u.password_hash != verified_hash || u.status != UserStatus::Active)
        {
            self.store
                .sessions
                .revoke(&issued.session.id, None, "credentials_changed", self.now())
                .await?;
            self.revoke_sessions([issued.session.id.as_str()]);
            return Err(Error::InvalidCredentials);
        }
        if let Some(second_step) = self
            .enrolled_meanwhile(&issued, &user, Factor::Password, caller)
            .await?
        {
            return Ok(second_step);
        }
        self.remember_requester(&issued.user, caller).await;
        self.audit(
            AuditRecord::new(AuditAction::Login, Outcome::Success, caller)
                .user(&issued.user.id)
                .session(&issued.session.id)
                .detail("method", "password"),
        )
        .await;
        Ok(SignIn::Tokens(Box::new(issued)))
    }

    /// Replaces an imported (bcrypt) or outdated hash after a correct password and returns the
    /// new one. Best effort: a failure leaves the old hash, which still verifies.
    async fn upgrade_hash(&self, user: &UserDoc, plain: &str) -> Option<String> {
        let plain = plain.to_string();
        let hash = self
            .hasher
            .run(move || password::hash(&plain))
            .await
            .ok()?
            .ok()?;
        match self
            .store
            .users
            .replace_password_hash(&user.id, &user.password_hash, &hash, self.now())
            .await
        {
            Ok(true) => {
                tracing::info!(user_id = %user.id, "password hash upgraded to argon2id");
                Some(hash)
            }
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(user_id = %user.id, error = %e, "password hash upgrade failed");
                None
            }
        }
    }

    /// Per-address fixed window on one kind of call (`login`, `register`), shared by replicas.
    pub(crate) async fn throttle_address(
        &self,
        caller: &Caller,
        kind: &str,
        limit: u32,
        window_len: Duration,
    ) -> Result<()> {
        if limit == 0 || caller.rate_limit_key.is_empty() {
            return Ok(());
        }
        let now = self.now();
        let (index, left) = window(now, window_len);
        let key = format!("{kind}_addr:{}:{index}", caller.rate_limit_key);
        let count = self
            .store
            .rate_limits
            .hit(&key, now, window_len * 2)
            .await?;
        if count > limit {
            return Err(Error::RateLimited { retry_after: left });
        }
        Ok(())
    }

    /// Admits one password attempt for the email behind `key`, or refuses it while the email is
    /// locked. Admission is one compare-and-set on a shared counter, so concurrent attempts
    /// (from any number of addresses and replicas) are admitted one by one, never past a lock:
    /// the attempt that reaches the threshold sets the lock before its password is even
    /// checked, and a correct password lifts it again.
    pub(super) async fn admit_password_attempt(&self, key: &str) -> Result<PasswordAttempt> {
        self.admit_attempt(key, &self.lockout).await
    }

    /// Counts one attempt on `key` under `policy` before it is checked (see
    /// [`Self::admit_password_attempt`]).
    pub(super) async fn admit_attempt(
        &self,
        key: &str,
        policy: &crate::domain::lockout::LockoutPolicy,
    ) -> Result<PasswordAttempt> {
        if policy.threshold == 0 {
            // Lockout is off: nothing to count, nothing to clear.
            return Ok(PasswordAttempt {
                count: 0,
                lock: None,
            });
        }
        for _ in 0..ADMISSION_RETRIES {
            let now = self.now();
            let seen = self.store.rate_limits.find_raw(key).await?;
            let live = seen.as_ref().filter(|d| d.expires_at > now);
            if let Some(left) = live.and_then(|d| remaining(d.locked_until, now)) {
                return Err(Error::AccountLocked { retry_after: left });
            }
            let count = live.map_or(0, |d| d.count) + 1;
            let lock = policy.delay_after(count);
            let locked_until =
                lock.map(|d| now + chrono::Duration::from_std(d).unwrap_or_default());
            let expires_at = locked_until.unwrap_or(now)
                + chrono::Duration::from_std(FAILURE_MEMORY).unwrap_or_default();
            if self
                .store
                .rate_limits
                .compare_and_set(seen.as_ref(), key, count, locked_until, expires_at)
                .await?
            {
                return Ok(PasswordAttempt { count, lock });
            }
        }
        // Many attempts on one email at the same instant: answer as a lock would.
        Err(Error::AccountLocked {
            retry_after: Duration::from_secs(1),
        })
    }

    /// Records a wrong password (for an existing email or not) in the audit trail, and the
    /// lockout it caused, if any.
    async fn password_failed(
        &self,
        attempt: PasswordAttempt,
        user_id: Option<&str>,
        email: &str,
        caller: &Caller,
    ) {
        let mut event = AuditRecord::new(AuditAction::Login, Outcome::Failure, caller)
            .email(email)
            .detail("reason", "invalid_credentials")
            .detail("consecutive_failures", attempt.count as i64);
        if let Some(id) = user_id {
            event = event.user(id);
        }
        self.audit(event).await;
        if let Some(delay) = attempt.lock {
            crate::metrics::lockout_started(crate::metrics::Lockout::Password);
            tracing::warn!(
                failures = attempt.count,
                lock_seconds = delay.as_secs(),
                "login locked for an email after repeated failures"
            );
            let mut event = AuditRecord::new(AuditAction::Lockout, Outcome::Failure, caller)
                .email(email)
                .detail("lock_seconds", delay.as_secs() as i64);
            if let Some(id) = user_id {
                event = event.user(id);
            }
            self.audit(event).await;
        }
    }

    /// The signed-in user's account.
    /// The caller's own account.
    pub async fn my_account(&self, who: &AccessClaims) -> Result<Account> {
        self.me(who).await.map(Account::from)
    }

    pub(crate) async fn me(&self, who: &AccessClaims) -> Result<UserDoc> {
        self.store
            .users
            .find_by_id(&who.user_id)
            .await?
            .filter(|u| u.status == UserStatus::Active)
            .ok_or(Error::TokenInvalid)
    }

    /// Changes the password after checking the current one; ends the user's other sessions
    /// unless asked not to. Returns how many sessions ended.
    pub async fn change_password(
        &self,
        who: &AccessClaims,
        current: &str,
        new: &str,
        keep_other_sessions: bool,
        caller: &Caller,
    ) -> Result<usize> {
        let user = self.me(who).await?;
        let mut violations = Violations::new();
        if current.is_empty() {
            violations.push("current_password", "is required");
        }
        violations.extend(self.password_policy.check(
            "new_password",
            new,
            &[&user.email, &user.display_name],
        ));
        violations.finish()?;
        let key = lockout_key(&user.email);
        let attempt = self.admit_password_attempt(&key).await?;
        let (given, stored) = (current.to_string(), user.password_hash.clone());
        let verdict = self
            .hasher
            .run(move || password::verify(&given, &stored))
            .await?;
        if verdict == Verification::Mismatch {
            self.password_failed(attempt, Some(&user.id), &user.email, caller)
                .await;
            return Err(Error::InvalidCredentials);
        }
        let plain = new.to_string();
        let hash = self.hasher.run(move || password::hash(&plain)).await??;
        let now = self.now();
        if !self
            .store
            .users
            .replace_password_hash(&user.id, &user.password_hash, &hash, now)
            .await?
        {
            // Someone changed the password between our read and write: the current one we
            // checked is no longer current.
            return Err(Error::InvalidCredentials);
        }
        if attempt.count > 0 {
            self.store.rate_limits.clear(&key).await?;
        }
        let ended = if keep_other_sessions {
            Vec::new()
        } else {
            self.store
                .sessions
                .revoke_all_for_user(&user.id, Some(&who.session_id), "password_changed", now)
                .await?
        };
        self.revoke_sessions(ended.iter().map(String::as_str));
        self.notify_password_changed(&user, ended.len()).await;
        self.audit(
            AuditRecord::new(AuditAction::PasswordChange, Outcome::Success, caller)
                .user(&user.id)
                .session(&who.session_id)
                .detail("sessions_ended", ended.len() as i64),
        )
        .await;
        Ok(ended.len())
    }
}
