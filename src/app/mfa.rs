//! Second factors: enrolling an authenticator app, the second step of a login, step-up,
//! recovery codes, and removing a factor (by its owner or an admin).
//!
//! Wrong second-factor codes count in a lockout counter of their own per account (same policy
//! as passwords), which only a right code clears: a correct password does not buy more guesses.

use chrono::{DateTime, Utc};

use super::sessions::IssuedTokens;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::lockout::LockoutPolicy;
use crate::domain::mfa::{self, Factor, CHALLENGE_ATTEMPTS};
use crate::domain::permissions::Permission;
use crate::domain::secrets::{hash_token, new_refresh_token};
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::audit_events::DetailValue;
use crate::store::mfa::MfaDoc;
use crate::store::mfa_challenges::MfaChallengeDoc;
use crate::store::users::{UserDoc, UserStatus};

/// How long an unconfirmed enrolment may be confirmed.
const ENROLLMENT_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);
/// How long a login's second step may take.
const CHALLENGE_LIFETIME: chrono::Duration = chrono::Duration::minutes(5);
/// Longest challenge string accepted (ours are 47 characters).
const MAX_CHALLENGE_LEN: usize = 128;

/// The lockout counter of wrong second-factor codes of one account.
pub(super) fn mfa_lockout_key(user_id: &str) -> String {
    format!("mfa_user:{user_id}")
}

/// What a login gives: tokens, or the second step when the account has a second factor.
#[derive(Debug)]
pub enum SignIn {
    Tokens(Box<IssuedTokens>),
    SecondFactor(Challenge),
}

impl SignIn {
    /// Whether the answer is the second step rather than tokens.
    pub fn asks_second_factor(&self) -> bool {
        matches!(self, SignIn::SecondFactor(_))
    }
}

/// The second step of a login, as handed to the client.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub challenge: String,
    pub expires_at: DateTime<Utc>,
}

/// A second factor as presented: a TOTP code or a recovery code.
#[derive(Debug, Clone)]
pub enum Proof {
    Totp(String),
    RecoveryCode(String),
}

impl Proof {
    /// Exactly one of the two request fields, named `totp_code` and `recovery_code`.
    pub fn from_fields(totp_code: String, recovery_code: String) -> Result<Self> {
        match (totp_code.is_empty(), recovery_code.is_empty()) {
            (false, true) => Ok(Proof::Totp(totp_code)),
            (true, false) => Ok(Proof::RecoveryCode(recovery_code)),
            (true, true) => Err(Error::invalid(
                "totp_code",
                "one of totp_code and recovery_code is required",
            )),
            (false, false) => {
                let mut violations = Violations::new();
                for field in ["totp_code", "recovery_code"] {
                    violations.push(field, "give totp_code or recovery_code, not both");
                }
                Err(violations.into())
            }
        }
    }
}

/// Which change to a second factor a notice tells of.
#[derive(Debug, Clone, Copy)]
enum MfaChange {
    Added,
    RecoveryCodesReplaced,
    Removed,
    RemovedByAdmin,
}

impl MfaChange {
    fn as_str(self) -> &'static str {
        match self {
            MfaChange::Added => "added",
            MfaChange::RecoveryCodesReplaced => "recovery_codes",
            MfaChange::Removed => "removed",
            MfaChange::RemovedByAdmin => "removed_by_admin",
        }
    }
}

/// A proof found right, not yet used up.
#[derive(Debug, Clone)]
enum Proven {
    TotpStep(i64),
    /// The keyed hash of the recovery code.
    RecoveryCode(String),
}

/// A started enrolment.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub secret_base32: String,
    pub otpauth_uri: String,
    pub expires_at: DateTime<Utc>,
}

/// A confirmed second factor, as ListMfaMethods shows it.
#[derive(Debug, Clone)]
pub struct MfaMethods {
    pub totp_enrolled_at: Option<DateTime<Utc>>,
    pub totp_last_used_at: Option<DateTime<Utc>>,
    pub recovery_codes_remaining: usize,
}

/// A session raised to two factors.
#[derive(Debug, Clone)]
pub struct SteppedUp {
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub claims: AccessClaims,
}

impl App {
    /// After a right first factor: the challenge of the second step when `user` has one.
    pub(crate) async fn second_step(
        &self,
        user: &UserDoc,
        first: Factor,
        caller: &Caller,
    ) -> Result<Option<Challenge>> {
        if !self.has_second_factor(&user.id).await? {
            return Ok(None);
        }
        let now = self.now();
        let challenge = new_refresh_token().replacen("kwr_", "kwm_", 1);
        let expires_at = now + CHALLENGE_LIFETIME;
        self.store
            .mfa_challenges
            .insert(&MfaChallengeDoc {
                challenge_hash: hash_token(&challenge),
                user_id: user.id.clone(),
                first_factor: first.amr().to_string(),
                attempts: 0,
                credential: hash_token(&user.password_hash),
                used: false,
                created_at: now,
                expires_at,
            })
            .await?;
        self.audit(
            AuditRecord::new(AuditAction::MfaChallenge, Outcome::Success, caller)
                .user(&user.id)
                .detail("first_factor", first.amr()),
        )
        .await;
        Ok(Some(Challenge {
            challenge,
            expires_at,
        }))
    }

    /// After a one-factor session was stored: when an authenticator was confirmed since the
    /// caller's first look (its confirmation ended every other session, but could not see this
    /// one), the session ends and the caller gets the second step instead (for `user` as it was
    /// when the session started).
    pub(crate) async fn enrolled_meanwhile(
        &self,
        issued: &IssuedTokens,
        user: &UserDoc,
        first: Factor,
        caller: &Caller,
    ) -> Result<Option<SignIn>> {
        if !self.has_second_factor(&issued.user.id).await? {
            return Ok(None);
        }
        self.store
            .sessions
            .revoke(&issued.session.id, None, "mfa_enrolled", self.now())
            .await?;
        self.revoke_sessions([issued.session.id.as_str()]);
        match self.second_step(user, first, caller).await? {
            Some(challenge) => Ok(Some(SignIn::SecondFactor(challenge))),
            None => Err(Error::MfaChallengeInvalid),
        }
    }

    /// Signs in an active `user` whose first factor was right: the second step when the
    /// account has one; else a new session, looked at again once stored (a disable or delete
    /// between our read and the insert ended every session but could not see this one: then
    /// the session ends and the answer is `inactive`), and an audited login with `details`.
    pub(crate) async fn sign_in_after_first_factor(
        &self,
        user: UserDoc,
        first: Factor,
        inactive: Error,
        details: Vec<(&str, DetailValue)>,
        caller: &Caller,
    ) -> Result<SignIn> {
        if let Some(challenge) = self.second_step(&user, first, caller).await? {
            return Ok(SignIn::SecondFactor(challenge));
        }
        let issued = self.start_session(user.clone(), &[first], caller).await?;
        let current = self
            .store
            .users
            .record_login(&issued.user.id, self.now())
            .await?;
        if current.is_none_or(|u| u.status != UserStatus::Active) {
            self.store
                .sessions
                .revoke(&issued.session.id, None, "account_inactive", self.now())
                .await?;
            self.revoke_sessions([issued.session.id.as_str()]);
            return Err(inactive);
        }
        if let Some(second_step) = self
            .enrolled_meanwhile(&issued, &user, first, caller)
            .await?
        {
            return Ok(second_step);
        }
        self.remember_requester(&issued.user, caller).await;
        let mut record = AuditRecord::new(AuditAction::Login, Outcome::Success, caller)
            .user(&issued.user.id)
            .session(&issued.session.id);
        for (key, value) in details {
            record = record.detail(key, value);
        }
        self.audit(record).await;
        Ok(SignIn::Tokens(Box::new(issued)))
    }

    /// Whether `user_id` has a confirmed second factor.
    pub async fn has_second_factor(&self, user_id: &str) -> Result<bool> {
        Ok(self
            .store
            .mfa
            .find(user_id)
            .await?
            .is_some_and(|m| m.enrolled()))
    }

    /// The second step of a login: the challenge and a second factor give the session.
    pub async fn complete_mfa(
        &self,
        challenge: &str,
        proof: Proof,
        caller: &Caller,
    ) -> Result<IssuedTokens> {
        let result = self.second_factor_login(challenge, proof, caller).await;
        crate::metrics::login(
            crate::metrics::LoginMethod::Mfa,
            result.as_ref().map(|_| false),
        );
        result
    }

    async fn second_factor_login(
        &self,
        challenge: &str,
        proof: Proof,
        caller: &Caller,
    ) -> Result<IssuedTokens> {
        if challenge.is_empty() {
            return Err(Error::invalid("challenge", "is required"));
        }
        if challenge.len() > MAX_CHALLENGE_LEN {
            return Err(Error::MfaChallengeInvalid);
        }
        let hash = hash_token(challenge);
        let challenges = &self.store.mfa_challenges;
        // One of the challenge's attempts is taken before the code is looked at, so concurrent
        // guesses share its 5 attempts.
        let Some(pending) = challenges
            .take_attempt(&hash, CHALLENGE_ATTEMPTS, self.now())
            .await?
        else {
            return Err(Error::MfaChallengeInvalid);
        };
        let user = self.signing_in_user(&pending.user_id).await?;
        // A password change since the first step voids it (`credential` is empty only for
        // challenges made before it was recorded).
        if !pending.credential.is_empty() && pending.credential != hash_token(&user.password_hash) {
            return Err(Error::MfaChallengeInvalid);
        }
        let proven = self.check_proof(&user.id, &proof, caller).await?;
        // The challenge first: a right code that loses a race for it is not spent.
        let Some(used) = challenges.use_up(&hash, self.now()).await? else {
            return Err(Error::MfaChallengeInvalid);
        };
        let factor = self.use_proof(&user.id, &proven).await?;
        let first = Factor::from_amr(&used.first_factor).unwrap_or(Factor::Password);
        let issued = self.start_session(user, &[first, factor], caller).await?;
        // A disable or delete between our read and the session insert ended every session but
        // could not see this one: look again now that it exists.
        let current = self
            .store
            .users
            .record_login(&issued.user.id, self.now())
            .await?;
        if current.is_none_or(|u| u.status != UserStatus::Active) {
            self.store
                .sessions
                .revoke(&issued.session.id, None, "account_inactive", self.now())
                .await?;
            self.revoke_sessions([issued.session.id.as_str()]);
            return Err(Error::MfaChallengeInvalid);
        }
        self.remember_requester(&issued.user, caller).await;
        self.audit(
            AuditRecord::new(AuditAction::Login, Outcome::Success, caller)
                .user(&issued.user.id)
                .session(&issued.session.id)
                .detail("method", first.amr())
                .detail("second_factor", factor.amr()),
        )
        .await;
        Ok(issued)
    }

    /// The account behind a challenge or session, if it may still sign in.
    async fn signing_in_user(&self, user_id: &str) -> Result<UserDoc> {
        match self.store.users.find_by_id(user_id).await? {
            Some(u) if u.status == UserStatus::Active => Ok(u),
            Some(u) if u.status == UserStatus::Disabled => Err(Error::AccountDisabled),
            _ => Err(Error::MfaChallengeInvalid),
        }
    }

    /// Checks `proof` against `user_id`'s second factor without using it up: a code of a
    /// step after the last accepted one, or an unused recovery code. Every check counts toward
    /// the account's second-factor lockout until a right code clears it; wrong ones are audited.
    async fn check_proof(&self, user_id: &str, proof: &Proof, caller: &Caller) -> Result<Proven> {
        let Some(mfa) = self.store.mfa.find(user_id).await?.filter(MfaDoc::enrolled) else {
            return Err(Error::MfaNotEnrolled);
        };
        let key = mfa_lockout_key(user_id);
        let attempt = self
            .admit_attempt(&key, &self.second_factor_lockout())
            .await?;
        let now = self.now();
        let proven = match proof {
            Proof::Totp(code) => {
                let secret = mfa
                    .totp_secret
                    .as_ref()
                    .and_then(|s| self.mfa_keys.open(user_id, &s.bytes))
                    .ok_or_else(|| anyhow::anyhow!("the TOTP secret of {user_id} does not open"))?;
                mfa::matching_step(&secret, code, now.timestamp())
                    .filter(|step| *step > mfa.last_step)
                    .map(Proven::TotpStep)
            }
            Proof::RecoveryCode(code) => mfa::normalize_recovery_code(code)
                .map(|code| self.mfa_keys.recovery_hash(user_id, &code))
                .filter(|hash| mfa.recovery_hashes.iter().any(|h| h == hash))
                .map(Proven::RecoveryCode),
        };
        match proven {
            Some(proven) => {
                if attempt.count > 0 {
                    self.store.rate_limits.clear(&key).await?;
                }
                Ok(proven)
            }
            None => {
                let mut event = AuditRecord::new(AuditAction::MfaVerify, Outcome::Failure, caller)
                    .user(user_id)
                    .detail("reason", "code_invalid")
                    .detail("consecutive_failures", attempt.count as i64);
                if let Some(lock) = attempt.lock {
                    event = event.detail("lock_seconds", lock.as_secs() as i64);
                    crate::metrics::lockout_started(crate::metrics::Lockout::SecondFactor);
                    tracing::warn!(
                        failures = attempt.count,
                        "second factor locked for an account after repeated failures"
                    );
                }
                self.audit(event).await;
                Err(Error::MfaCodeInvalid)
            }
        }
    }

    /// Uses up a checked proof: of concurrent calls with one code exactly one succeeds, and a
    /// TOTP step is never accepted twice (nor one before the last accepted).
    async fn use_proof(&self, user_id: &str, proven: &Proven) -> Result<Factor> {
        let now = self.now();
        let used = match proven {
            Proven::TotpStep(step) => self.store.mfa.accept_step(user_id, *step, now).await?,
            Proven::RecoveryCode(hash) => {
                self.store.mfa.use_recovery_code(user_id, hash, now).await?
            }
        };
        match (used, proven) {
            (true, Proven::TotpStep(_)) => Ok(Factor::Totp),
            (true, Proven::RecoveryCode(_)) => Ok(Factor::RecoveryCode),
            (false, _) => Err(Error::MfaCodeInvalid),
        }
    }

    /// [`Self::check_proof`] then [`Self::use_proof`].
    async fn prove(&self, user_id: &str, proof: &Proof, caller: &Caller) -> Result<Factor> {
        let proven = self.check_proof(user_id, proof, caller).await?;
        self.use_proof(user_id, &proven).await
    }

    /// The lockout of wrong second-factor codes: the password lockout's policy, and never off
    /// (with `lockout_threshold = 0` the defaults apply), since a code has only 10^6 values.
    fn second_factor_lockout(&self) -> LockoutPolicy {
        if self.lockout.threshold > 0 {
            self.lockout
        } else {
            LockoutPolicy {
                threshold: 5,
                base_delay: std::time::Duration::from_secs(30),
                max_delay: std::time::Duration::from_secs(15 * 60),
            }
        }
    }

    /// Fails unless `who`'s session proved a factor within `privileged_session_max_age`.
    pub(super) fn require_recent_sign_in(&self, who: &AccessClaims) -> Result<()> {
        let max_age = chrono::Duration::from_std(self.config.privileged_session_max_age)
            .unwrap_or(chrono::Duration::minutes(15));
        if self.now() - who.auth_time > max_age {
            return Err(Error::ReauthenticationRequired);
        }
        Ok(())
    }

    /// Starts enrolling an authenticator app for the signed-in caller.
    pub async fn start_totp_enrollment(
        &self,
        who: &AccessClaims,
        caller: &Caller,
    ) -> Result<Enrollment> {
        self.acting(who).await?;
        let user = self.signing_in_user(&who.user_id).await?;
        if !user.email_verified {
            return Err(Error::EmailNotVerified);
        }
        self.require_recent_sign_in(who)?;
        let secret = mfa::new_secret();
        let expires_at = self.now() + ENROLLMENT_LIFETIME;
        if !self
            .store
            .mfa
            .start_enrollment(&user.id, self.mfa_keys.seal(&user.id, &secret), expires_at)
            .await?
        {
            return Err(Error::MfaAlreadyEnrolled);
        }
        self.audit(
            AuditRecord::new(AuditAction::TotpEnrollmentStart, Outcome::Success, caller)
                .user(&user.id)
                .session(&who.session_id),
        )
        .await;
        Ok(Enrollment {
            secret_base32: mfa::secret_base32(&secret),
            otpauth_uri: mfa::otpauth_uri(&secret, &self.config.totp_issuer, &user.email),
            expires_at,
        })
    }

    /// Confirms the pending enrolment with a first code; returns the recovery codes and how
    /// many other sessions ended.
    pub async fn confirm_totp_enrollment(
        &self,
        who: &AccessClaims,
        code: &str,
        caller: &Caller,
    ) -> Result<(Vec<String>, usize)> {
        if code.is_empty() {
            return Err(Error::invalid("code", "is required"));
        }
        self.acting(who).await?;
        self.require_recent_sign_in(who)?;
        let now = self.now();
        let mfa = self.store.mfa.find(&who.user_id).await?;
        if mfa.as_ref().is_some_and(MfaDoc::enrolled) {
            return Err(Error::MfaAlreadyEnrolled);
        }
        let Some((sealed, secret)) = mfa
            .filter(|m| m.pending_expires_at.is_some_and(|t| t > now))
            .and_then(|m| m.pending_secret)
            .and_then(|s| {
                let secret = self.mfa_keys.open(&who.user_id, &s.bytes)?;
                Some((s, secret))
            })
        else {
            return Err(Error::MfaEnrollmentNotStarted);
        };
        let Some(step) = mfa::matching_step(&secret, code, now.timestamp()) else {
            self.audit(
                AuditRecord::new(AuditAction::TotpEnroll, Outcome::Failure, caller)
                    .user(&who.user_id)
                    .detail("reason", "code_invalid"),
            )
            .await;
            return Err(Error::MfaCodeInvalid);
        };
        let codes = mfa::new_recovery_codes();
        let hashes = self.recovery_hashes(&who.user_id, &codes);
        if self
            .store
            .mfa
            .confirm_enrollment(&who.user_id, &sealed, step, hashes, now)
            .await?
            .is_none()
        {
            return Err(Error::MfaEnrollmentNotStarted);
        }
        self.forget_second_factor(&who.user_id);
        // Sessions signed in with one factor (perhaps by whoever knows the password) end.
        let ended = self
            .end_sessions(&who.user_id, Some(&who.session_id), "mfa_enrolled")
            .await?;
        if let Ok(user) = self.signing_in_user(&who.user_id).await {
            self.notify_mfa_changed(&user, MfaChange::Added, ended)
                .await;
        }
        self.audit(
            AuditRecord::new(AuditAction::TotpEnroll, Outcome::Success, caller)
                .user(&who.user_id)
                .session(&who.session_id)
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok((codes, ended))
    }

    fn recovery_hashes(&self, user_id: &str, codes: &[String]) -> Vec<String> {
        codes
            .iter()
            .map(|c| self.mfa_keys.recovery_hash(user_id, c))
            .collect()
    }

    async fn end_sessions(&self, user_id: &str, keep: Option<&str>, reason: &str) -> Result<usize> {
        let ids = self
            .store
            .sessions
            .revoke_all_for_user(user_id, keep, reason, self.now())
            .await?;
        self.revoke_sessions(ids.iter().map(String::as_str));
        Ok(ids.len())
    }

    /// Raises the caller's session to two factors.
    pub async fn step_up(
        &self,
        who: &AccessClaims,
        proof: Proof,
        caller: &Caller,
    ) -> Result<SteppedUp> {
        self.acting(who).await?;
        let factor = self.prove(&who.user_id, &proof, caller).await?;
        let now = self.now();
        let Some(session) = self
            .store
            .sessions
            .add_factor(&who.session_id, &who.user_id, factor.amr(), now)
            .await?
        else {
            return Err(Error::SessionRevoked);
        };
        let user = self.signing_in_user(&who.user_id).await?;
        let issued = self.sign(user, session, String::new(), now);
        self.audit(
            AuditRecord::new(AuditAction::MfaStepUp, Outcome::Success, caller)
                .user(&who.user_id)
                .session(&who.session_id)
                .detail("second_factor", factor.amr()),
        )
        .await;
        Ok(SteppedUp {
            access_token: issued.access_token,
            access_token_expires_at: issued.access_token_expires_at,
            claims: issued.claims,
        })
    }

    /// The caller's second factors (`None`: none enrolled).
    pub async fn mfa_methods(&self, who: &AccessClaims) -> Result<Option<MfaMethods>> {
        self.acting(who).await?;
        Ok(self
            .store
            .mfa
            .find(&who.user_id)
            .await?
            .filter(MfaDoc::enrolled)
            .map(|m| MfaMethods {
                totp_enrolled_at: m.enrolled_at,
                totp_last_used_at: m.last_used_at,
                recovery_codes_remaining: m.recovery_hashes.len(),
            }))
    }

    /// Removes the caller's second factor, given one; ends the other sessions and tells the
    /// user by mail. Returns how many sessions ended.
    pub async fn disable_totp(
        &self,
        who: &AccessClaims,
        proof: Proof,
        caller: &Caller,
    ) -> Result<usize> {
        self.acting(who).await?;
        self.prove(&who.user_id, &proof, caller).await?;
        if !self.store.mfa.remove(&who.user_id).await? {
            return Err(Error::MfaNotEnrolled);
        }
        self.forget_second_factor(&who.user_id);
        let ended = self
            .end_sessions(&who.user_id, Some(&who.session_id), "mfa_removed")
            .await?;
        let user = self.signing_in_user(&who.user_id).await?;
        self.notify_mfa_changed(&user, MfaChange::Removed, ended)
            .await;
        self.audit(
            AuditRecord::new(AuditAction::TotpDisable, Outcome::Success, caller)
                .user(&who.user_id)
                .session(&who.session_id)
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok(ended)
    }

    /// New recovery codes for the caller (the old ones stop working), given a TOTP code.
    pub async fn regenerate_recovery_codes(
        &self,
        who: &AccessClaims,
        totp_code: &str,
        caller: &Caller,
    ) -> Result<Vec<String>> {
        if totp_code.is_empty() {
            return Err(Error::invalid("totp_code", "is required"));
        }
        self.acting(who).await?;
        self.prove(&who.user_id, &Proof::Totp(totp_code.to_string()), caller)
            .await?;
        let codes = mfa::new_recovery_codes();
        if !self
            .store
            .mfa
            .replace_recovery_codes(&who.user_id, self.recovery_hashes(&who.user_id, &codes))
            .await?
        {
            return Err(Error::MfaNotEnrolled);
        }
        if let Ok(user) = self.signing_in_user(&who.user_id).await {
            self.notify_mfa_changed(&user, MfaChange::RecoveryCodesReplaced, 0)
                .await;
        }
        self.audit(
            AuditRecord::new(
                AuditAction::RecoveryCodesRegenerate,
                Outcome::Success,
                caller,
            )
            .user(&who.user_id)
            .session(&who.session_id),
        )
        .await;
        Ok(codes)
    }

    /// An admin removes another user's second factor: every session of theirs ends and they
    /// are told by mail. Only for users whose global role is below the admin's.
    pub async fn reset_user_mfa(
        &self,
        who: &AccessClaims,
        user_id: &str,
        caller: &Caller,
    ) -> Result<usize> {
        if user_id.is_empty() {
            return Err(Error::invalid("user_id", "is required"));
        }
        let actor = self.require(who, Permission::UsersWrite).await?;
        let target = match self.store.users.find_by_id(user_id).await? {
            Some(u) if u.status != UserStatus::Deleted => u,
            _ => return Err(Error::UserNotFound),
        };
        // One's own factor goes by DisableTotp, which asks for a code.
        if target.id == who.user_id {
            return Err(Error::PermissionDenied);
        }
        if target.role >= actor.role {
            return Err(Error::RoleTooHigh);
        }
        if !self.store.mfa.remove(&target.id).await? {
            return Err(Error::MfaNotEnrolled);
        }
        self.forget_second_factor(&target.id);
        let ended = self.end_sessions(&target.id, None, "mfa_reset").await?;
        self.notify_mfa_changed(&target, MfaChange::RemovedByAdmin, ended)
            .await;
        self.audit(
            AuditRecord::new(AuditAction::MfaReset, Outcome::Success, caller)
                .user(&target.id)
                .actor(&who.user_id)
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok(ended)
    }

    /// Tells the user their second factor changed, so that a change they did not make (someone
    /// with their password enrolling an authenticator of their own) does not go unnoticed.
    async fn notify_mfa_changed(&self, user: &UserDoc, change: MfaChange, sessions_ended: usize) {
        let context = minijinja::context! {
            email => user.email,
            display_name => user.display_name,
            sessions_ended => sessions_ended,
            change => change.as_str(),
        };
        if let Err(e) = self
            .queue_mail("mfa_changed", &user.email, &user.display_name, context)
            .await
        {
            tracing::error!(user_id = %user.id, error = %e, "could not queue the MFA notice");
        }
    }
}
