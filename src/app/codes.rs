//! One-time codes by email: proving an address, signing in without a password, and resetting a
//! forgotten password.
//!
//! Enumeration: `send_code` answers the same, and does the same writes (a code stored, an
//! outbox record, a send counter, an audit event), whether or not a mail goes out. Using a code
//! fails with CODE_INVALID alike for a wrong, expired, used, replaced or dead code and for an
//! email without an account.

use std::time::Duration;

use super::accounts::lockout_key;
use super::mfa::SignIn;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::codes::{
    self, Purpose, SendCounter, SendLimits, MAX_ATTEMPTS, MAX_FOREIGN_ATTEMPTS,
};
use crate::domain::email;
use crate::domain::mfa::Factor;
use crate::domain::password;
use crate::domain::roles::Role;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::one_time_codes::slot;
use crate::store::users::{UserDoc, UserStatus};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Wrong code attempts per address and purpose an hour from all clients the account never
/// signed in from, together.
const MAX_STRANGER_GUESSES_PER_HOUR: u32 = 10;
/// Compare-and-set rounds on a contended send counter.
const SEND_RETRIES: usize = 4;

/// The answer to a code request (the same whether or not a code was sent).
#[derive(Debug, Clone, Copy)]
pub struct CodeRequested {
    /// Before this, another code for the address and purpose is refused.
    pub retry_after: Duration,
    /// How long the code works.
    pub expires_in: Duration,
}

/// How long a client an account signed in from counts as the owner's when it asks for codes.
const KNOWN_FOR: Duration = Duration::from_secs(90 * 24 * 3600);

fn known_key(user_id: &str, requester: &str) -> String {
    format!("known_requester:{user_id}:{requester}")
}

/// Who asks for or tries a code, as stored with it: a hash of the client's rate-limit key (its
/// address, or its IPv6 /64), so the collection holds no addresses.
fn requester(caller: &Caller) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(caller.rate_limit_key.as_bytes()))
}

fn template(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::VerifyEmail => "verify_email",
        Purpose::Login => "login_code",
        Purpose::ResetPassword => "reset_password",
    }
}

fn check_email(raw: &str, out: &mut Violations) -> String {
    out.check("email", email::normalize(raw))
        .unwrap_or_default()
}

/// The normalised email of a request that uses a code, once both fields are well formed.
fn email_and_code(raw_email: &str, code: &str) -> Result<String> {
    let mut violations = Violations::new();
    let email = check_email(raw_email, &mut violations);
    codes::check_code("code", code, &mut violations);
    violations.finish()?;
    Ok(email)
}

impl App {
    /// Emails a code for `purpose` if, and only if, the account may use one; answers the same
    /// either way. Limits: per client address, and a cool-down plus hourly cap per email and
    /// purpose, counted for every request.
    pub async fn send_code(
        &self,
        raw_email: &str,
        purpose: Purpose,
        caller: &Caller,
    ) -> Result<CodeRequested> {
        let mut violations = Violations::new();
        let email = check_email(raw_email, &mut violations);
        violations.finish()?;
        self.throttle_codes(caller).await?;
        let user = self.active_user(&email).await?;
        // Asked for the same way whether or not the account exists (no enumeration by time).
        let known = self
            .is_known_requester(user.as_ref().map_or("", |u| u.id.as_str()), caller)
            .await?;
        if let Err(e) = self.admit_send(&email, purpose, caller, known).await {
            crate::metrics::code_request(purpose, crate::metrics::CodeRequest::RateLimited);
            self.audit(
                AuditRecord::new(AuditAction::CodeSend, Outcome::Failure, caller)
                    .email(&email)
                    .detail("purpose", purpose.as_str())
                    .detail("reason", "rate_limited"),
            )
            .await;
            return Err(e);
        }
        let eligible = match (purpose, &user) {
            (Purpose::VerifyEmail, Some(u)) => !u.email_verified,
            (Purpose::Login | Purpose::ResetPassword, Some(_)) => true,
            (Purpose::Login, None) => self.config.passwordless_signup,
            _ => false,
        };
        // A stranger's request never replaces a live code that a client the account has signed
        // in from asked for: the owner can type the code they were sent.
        let protected = match (&user, known) {
            (Some(u), false) => {
                self.live_code_is_known_requesters(&email, purpose, u)
                    .await?
            }
            _ => false,
        };
        if protected {
            self.store
                .mail_outbox
                .record_suppressed(
                    &crate::domain::secrets::new_id(),
                    template(purpose),
                    self.now(),
                )
                .await?;
        } else {
            self.issue_code(&email, purpose, user.as_ref(), eligible, caller)
                .await?;
        }
        let eligible = eligible && !protected;
        crate::metrics::code_request(
            purpose,
            if eligible {
                crate::metrics::CodeRequest::Sent
            } else {
                crate::metrics::CodeRequest::Suppressed
            },
        );
        let mut event = AuditRecord::new(AuditAction::CodeSend, Outcome::Success, caller)
            .email(&email)
            .detail("purpose", purpose.as_str())
            .detail("sent", eligible);
        if let Some(u) = &user {
            event = event.user(&u.id);
        }
        self.audit(event).await;
        Ok(CodeRequested {
            retry_after: self.config.code_send_cooldown,
            expires_in: self.config.code_lifetime,
        })
    }

    /// Stores a fresh code for `email` and `purpose` (replacing any earlier one) and, when
    /// `send`, queues the mail that carries it; otherwise records a suppressed send of the same
    /// cost.
    async fn issue_code(
        &self,
        email: &str,
        purpose: Purpose,
        user: Option<&UserDoc>,
        send: bool,
        caller: &Caller,
    ) -> Result<()> {
        let code = codes::generate();
        let hash = self.code_hasher.hash(purpose, email, &code);
        let now = self.now();
        self.store
            .one_time_codes
            .replace(
                &slot(purpose, email),
                &requester(caller),
                &hash,
                now,
                self.config.code_lifetime,
            )
            .await?;
        if send {
            let name = user.map_or("", |u| u.display_name.as_str());
            let context = minijinja::context! {
                code => code,
                email => email,
                display_name => name,
                expires_in_minutes => self.config.code_lifetime.as_secs().div_ceil(60),
            };
            self.queue_mail(template(purpose), email, name, context)
                .await
        } else {
            self.store
                .mail_outbox
                .record_suppressed(&crate::domain::secrets::new_id(), template(purpose), now)
                .await
                .map_err(Into::into)
        }
    }

    /// Counts one code request for `email` + `purpose`: against the requesting client's own
    /// hourly cap, then — unless the client is one the account has signed in from — against the
    /// address's cool-down and its hourly cap for everyone else together. Strangers asking again
    /// and again use up their own caps and the shared one, never the owner's, so the owner can
    /// still get a code; the cool-down keeps a fresh code from being replaced at once, and the
    /// shared cap bounds how much mail and how many guesses strangers get at one mailbox.
    async fn admit_send(
        &self,
        email: &str,
        purpose: Purpose,
        caller: &Caller,
        known: bool,
    ) -> Result<()> {
        let mailbox = format!("code_send:{}", slot(purpose, email));
        let own = format!("{mailbox}:{}", requester(caller));
        self.count_send(&own, &self.send_limits.per_requester())
            .await?;
        if known {
            return Ok(());
        }
        self.count_send(&mailbox, &self.send_limits.per_mailbox())
            .await
    }

    /// Remembers that `user` signed in from the client of `caller` (its address or IPv6 /64),
    /// for [`KNOWN_FOR`]. Only for a verified account: a sign-in to an account whose mailbox was
    /// never proven (a planted registration) makes nobody the owner. Best effort.
    pub(crate) async fn remember_requester(&self, user: &super::users::Account, caller: &Caller) {
        if caller.rate_limit_key.is_empty() || !user.email_verified {
            return;
        }
        let user_id = user.id.as_str();
        let key = known_key(user_id, &requester(caller));
        if let Err(e) = self
            .store
            .rate_limits
            .hit(&key, self.now(), KNOWN_FOR)
            .await
        {
            tracing::warn!(user_id, error = %e, "could not remember a sign-in client");
        }
    }

    /// Forgets every client `user_id` signed in from: the mailbox's owner has just taken the
    /// account over (a claim or a reset), and whoever signed in before may not have been them.
    pub(crate) async fn forget_requesters(&self, user_id: &str) -> Result<()> {
        self.store
            .rate_limits
            .clear_prefixed(&known_key(user_id, ""))
            .await?;
        Ok(())
    }

    /// Whether `user_id` (empty: no account) has signed in from the client of `caller`.
    async fn is_known_requester(&self, user_id: &str, caller: &Caller) -> Result<bool> {
        self.is_known(user_id, &requester(caller)).await
    }

    async fn is_known(&self, user_id: &str, requester: &str) -> Result<bool> {
        let now = self.now();
        Ok(self
            .store
            .rate_limits
            .find_raw(&known_key(user_id, requester))
            .await?
            .is_some_and(|d| !user_id.is_empty() && d.expires_at > now))
    }

    /// Whether the live code of `email` + `purpose` was asked for by a client `user` has signed
    /// in from.
    async fn live_code_is_known_requesters(
        &self,
        email: &str,
        purpose: Purpose,
        user: &UserDoc,
    ) -> Result<bool> {
        let live = self
            .store
            .one_time_codes
            .find_live(&slot(purpose, email), self.now())
            .await?;
        match live {
            Some(code) => self.is_known(&user.id, &code.requested_by).await,
            None => Ok(false),
        }
    }

    /// One compare-and-set round trip on the send counter `key` under `limits`.
    async fn count_send(&self, key: &str, limits: &SendLimits) -> Result<()> {
        for _ in 0..SEND_RETRIES {
            let now = self.now();
            let seen = self.store.rate_limits.find_raw(key).await?;
            let counter = seen.as_ref().map(|d| SendCounter {
                count: d.count,
                next_allowed: d.locked_until.unwrap_or(now),
                window_ends: d.expires_at,
            });
            let next = limits
                .admit(counter, now)
                .map_err(|retry_after| Error::RateLimited { retry_after })?;
            if self
                .store
                .rate_limits
                .compare_and_set(
                    seen.as_ref(),
                    key,
                    next.count,
                    Some(next.next_allowed),
                    next.window_ends,
                )
                .await?
            {
                return Ok(());
            }
        }
        Err(Error::RateLimited {
            retry_after: Duration::from_secs(1),
        })
    }

    /// The account of `email` unless it is deleted or disabled.
    async fn active_user(&self, email: &str) -> Result<Option<UserDoc>> {
        Ok(self
            .store
            .users
            .find_by_email(email)
            .await?
            .filter(|u| u.status == UserStatus::Active))
    }

    /// Counts a code request or attempt against the client address's limit.
    async fn throttle_codes(&self, caller: &Caller) -> Result<()> {
        self.throttle_address(
            caller,
            "code",
            self.config.code_requests_per_address_per_minute,
            MINUTE,
        )
        .await
    }

    /// Uses up the code of `email` + `purpose` if `code` is it (the caller has counted the
    /// attempt against its address with `throttle_codes`). Every attempt counts first (one
    /// conditional update), so at most `MAX_ATTEMPTS` attempts ever compare; of concurrent
    /// attempts with the right code exactly one consumes it.
    async fn use_code(
        &self,
        email: &str,
        purpose: Purpose,
        code: &str,
        caller: &Caller,
    ) -> Result<()> {
        let now = self.now();
        let slot = slot(purpose, email);
        let codes = &self.store.one_time_codes;
        // Strangers (clients the account never signed in from) share a few wrong guesses per
        // address and purpose an hour, across every code they ask for: asking for new codes
        // buys no new guesses. The owner on a known client is not held back by them.
        let owner = self.live_user(email).await?;
        let known = self
            .is_known_requester(owner.as_ref().map_or("", |u| u.id.as_str()), caller)
            .await?;
        let (hour, _) = crate::domain::lockout::window(now, HOUR);
        let wrong_key = format!("code_wrong:{slot}:{hour}");
        let strangers_spent = !known
            && self
                .store
                .rate_limits
                .find_raw(&wrong_key)
                .await?
                .is_some_and(|d| d.count >= MAX_STRANGER_GUESSES_PER_HOUR);
        let attempt = if strangers_spent {
            None
        } else {
            codes
                .admit_attempt(
                    &slot,
                    &requester(caller),
                    now,
                    MAX_ATTEMPTS,
                    MAX_FOREIGN_ATTEMPTS,
                )
                .await?
        };
        let used = match attempt {
            Some(doc)
                if self
                    .code_hasher
                    .matches(&doc.code_hash, purpose, email, code) =>
            {
                codes.consume(&slot, &doc.code_hash, now).await?
            }
            _ => false,
        };
        if !used {
            crate::metrics::code_attempt_failed(purpose);
            if !known {
                self.store
                    .rate_limits
                    .hit(&wrong_key, now, HOUR * 2)
                    .await?;
            }
            self.audit(
                AuditRecord::new(AuditAction::CodeUse, Outcome::Failure, caller)
                    .email(email)
                    .detail("purpose", purpose.as_str())
                    .detail("reason", "code_invalid"),
            )
            .await;
            return Err(Error::CodeInvalid);
        }
        Ok(())
    }

    /// Marks the email verified with a VERIFY_EMAIL code.
    pub async fn verify_email(
        &self,
        raw_email: &str,
        code: &str,
        caller: &Caller,
    ) -> Result<super::users::Account> {
        let email = email_and_code(raw_email, code)?;
        self.throttle_codes(caller).await?;
        self.use_code(&email, Purpose::VerifyEmail, code, caller)
            .await?;
        let user = self.active_user(&email).await?.ok_or(Error::CodeInvalid)?;
        let user = self
            .store
            .users
            .mark_verified(&user.id, self.now())
            .await?
            .ok_or(Error::CodeInvalid)?;
        self.audit(
            AuditRecord::new(AuditAction::EmailVerify, Outcome::Success, caller)
                .user(&user.id)
                .email(&user.email),
        )
        .await;
        Ok(user.into())
    }

    /// Signs in with a LOGIN code: a new session, as a password login makes. With
    /// `passwordless_signup`, an email without an account gets one. Only an active account
    /// signs in; a deleted one is as unknown as an address that never had an account.
    ///
    /// The first code ever used for an unverified account claims it for the mailbox's owner
    /// (see [`App::claim_account`]): whoever registered the address without proving it loses
    /// the password they set and every session.
    pub async fn login_with_code(
        &self,
        raw_email: &str,
        code: &str,
        caller: &Caller,
    ) -> Result<SignIn> {
        let result = self.code_login(raw_email, code, caller).await;
        let asks_second_factor = result.as_ref().map(SignIn::asks_second_factor);
        crate::metrics::login(crate::metrics::LoginMethod::EmailCode, asks_second_factor);
        result
    }

    async fn code_login(&self, raw_email: &str, code: &str, caller: &Caller) -> Result<SignIn> {
        let email = email_and_code(raw_email, code)?;
        self.throttle_codes(caller).await?;
        self.use_code(&email, Purpose::Login, code, caller).await?;
        let user = match self.live_user(&email).await? {
            Some(user) => user,
            None if self.config.passwordless_signup => {
                self.passwordless_account(&email, caller).await?
            }
            None => return Err(Error::CodeInvalid),
        };
        if user.status == UserStatus::Disabled {
            self.audit(
                AuditRecord::new(AuditAction::Login, Outcome::Failure, caller)
                    .user(&user.id)
                    .detail("method", "email_code")
                    .detail("reason", "account_disabled"),
            )
            .await;
            return Err(Error::AccountDisabled);
        }
        let user = if user.email_verified {
            user
        } else {
            self.claim_account(&user, "email_code", caller).await?
        };
        // The owner of the mailbox is back in control: a password lockout (someone guessing)
        // is lifted, as a reset lifts it.
        self.store.rate_limits.clear(&lockout_key(&email)).await?;
        self.sign_in_after_first_factor(
            user,
            Factor::EmailCode,
            Error::CodeInvalid,
            vec![("method", "email_code".into())],
            caller,
        )
        .await
    }

    /// The account of `email` unless it is deleted.
    async fn live_user(&self, email: &str) -> Result<Option<UserDoc>> {
        Ok(self
            .store
            .users
            .find_by_email(email)
            .await?
            .filter(|u| u.status != UserStatus::Deleted))
    }

    /// The first proof of an unverified account's mailbox by a code (LoginWithCode): the
    /// account now belongs to whoever reads that mailbox. Whoever created it (a self-registration
    /// or an organization admin's CreateMember) never proved the address, so nothing they set up
    /// survives: the password is dropped (the owner sets one with ResetPassword) and every
    /// session ends; provider identities linked to it are unlinked. Returns the account as it is
    /// now; when a concurrent call claimed it first,
    /// that call did the clean-up.
    pub(crate) async fn claim_account(
        &self,
        user: &UserDoc,
        method: &str,
        caller: &Caller,
    ) -> Result<UserDoc> {
        let now = self.now();
        // Sessions end before the claim and again after it: if anything fails between the two
        // writes, the account is still unverified (the next code claims it again) or its
        // creator's sessions are already gone — never verified with them alive.
        let before = self
            .store
            .sessions
            .revoke_all_for_user(&user.id, None, "account_claimed", now)
            .await?;
        self.revoke_sessions(before.iter().map(String::as_str));
        let Some(claimed) = self.store.users.claim_unverified(&user.id, now).await? else {
            return self
                .store
                .users
                .find_by_id(&user.id)
                .await?
                .filter(|u| u.status != UserStatus::Deleted)
                .ok_or(Error::CodeInvalid);
        };
        self.forget_requesters(&user.id).await?;
        // Identities linked by whoever registered the address are theirs, not the owner's.
        self.store.identities.remove_user(&user.id).await?;
        let ended = self
            .store
            .sessions
            .revoke_all_for_user(&user.id, None, "account_claimed", now)
            .await?;
        self.revoke_sessions(ended.iter().map(String::as_str));
        self.audit(
            AuditRecord::new(AuditAction::AccountClaim, Outcome::Success, caller)
                .user(&user.id)
                .email(&user.email)
                .detail("method", method)
                .detail("password_cleared", !user.password_hash.is_empty())
                .detail("sessions_ended", (before.len() + ended.len()) as i64),
        )
        .await;
        Ok(claimed)
    }

    /// Creates the account of a first passwordless sign-in: verified (the code proved the
    /// mailbox), with no password until the user sets one through a reset.
    async fn passwordless_account(&self, email: &str, caller: &Caller) -> Result<UserDoc> {
        let created = self
            .insert_account(
                email.to_string(),
                String::new(),
                String::new(),
                Role::User,
                true,
                caller,
            )
            .await;
        match created {
            Ok(user) => Ok(user),
            // Created by a concurrent request in the meantime: sign in to that account. A
            // deleted account that still holds the address is no account to sign in to.
            Err(Error::EmailTaken) => self.live_user(email).await?.ok_or(Error::CodeInvalid),
            Err(e) => Err(e),
        }
    }

    /// Sets a new password with a RESET_PASSWORD code, ends every session of the user, and
    /// emails a notice. Returns how many sessions ended.
    pub async fn reset_password(
        &self,
        raw_email: &str,
        code: &str,
        new_password: &str,
        caller: &Caller,
    ) -> Result<usize> {
        let email = email_and_code(raw_email, code)?;
        self.throttle_codes(caller).await?;
        // The guessability check costs real CPU: only after the throttle, and before the code
        // is used up, so a refused password leaves the code for a second try.
        let mut violations = Violations::new();
        violations.extend(
            self.password_policy
                .check("new_password", new_password, &[&email]),
        );
        violations.finish()?;
        self.use_code(&email, Purpose::ResetPassword, code, caller)
            .await?;
        let user = self.live_user(&email).await?.ok_or(Error::CodeInvalid)?;
        let plain = new_password.to_string();
        let hash = self.hasher.run(move || password::hash(&plain)).await??;
        let now = self.now();
        self.store
            .users
            .reset_password_hash(&user.id, &hash, now)
            .await?;
        // A reset also lifts a lockout: the owner of the mailbox is back in control, and no
        // client counts as theirs until they sign in again.
        self.store.rate_limits.clear(&lockout_key(&email)).await?;
        self.forget_requesters(&user.id).await?;
        let ended = self
            .store
            .sessions
            .revoke_all_for_user(&user.id, None, "password_reset", now)
            .await?;
        self.revoke_sessions(ended.iter().map(String::as_str));
        self.notify_password_changed(&user, ended.len()).await;
        self.audit(
            AuditRecord::new(AuditAction::PasswordReset, Outcome::Success, caller)
                .user(&user.id)
                // The first proof of the mailbox: whoever created the account lost it here.
                .detail("account_claimed", !user.email_verified)
                .detail("sessions_ended", ended.len() as i64),
        )
        .await;
        Ok(ended.len())
    }

    /// Queues the "your password was changed" notice. A failure to queue is logged; it does not
    /// undo the change.
    pub(crate) async fn notify_password_changed(&self, user: &UserDoc, sessions_ended: usize) {
        let context = minijinja::context! {
            email => user.email,
            display_name => user.display_name,
            sessions_ended => sessions_ended,
        };
        if let Err(e) = self
            .queue_mail("password_changed", &user.email, &user.display_name, context)
            .await
        {
            tracing::error!(user_id = %user.id, error = %e, "could not queue the password-changed notice");
        }
    }

    /// After a registration: the VERIFY_EMAIL code, counted against the address's limits. A
    /// limit hit (someone asked for codes for this address before it existed) leaves the
    /// account to ask again with SendCode.
    pub(crate) async fn send_verification_after_register(&self, user: &UserDoc, caller: &Caller) {
        let result = match self
            .admit_send(&user.email, Purpose::VerifyEmail, caller, false)
            .await
        {
            Ok(()) => {
                self.issue_code(&user.email, Purpose::VerifyEmail, Some(user), true, caller)
                    .await
            }
            Err(e) => Err(e),
        };
        let (outcome, sent) = match &result {
            Ok(()) => (Outcome::Success, true),
            Err(e) => {
                tracing::warn!(user_id = %user.id, error = %e, "no verification code sent after registration");
                (Outcome::Failure, false)
            }
        };
        self.audit(
            AuditRecord::new(AuditAction::CodeSend, outcome, caller)
                .user(&user.id)
                .email(&user.email)
                .detail("purpose", Purpose::VerifyEmail.as_str())
                .detail("sent", sent),
        )
        .await;
    }
}
