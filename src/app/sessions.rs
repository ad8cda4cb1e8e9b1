//! Sessions and tokens: issuing a session, refresh-token rotation with reuse detection,
//! Authenticate's hot path, logout and session management.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::users::Account;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::mfa::Factor;
use crate::domain::secrets::{hash_token, new_id, new_refresh_token, REFRESH_TOKEN_PREFIX};
use crate::domain::tokens::AccessClaims;
use crate::error::{Error, Result};
use crate::store::sessions::SessionDoc;
use crate::store::users::{UserDoc, UserStatus};

/// One of a person's sessions, as the use cases show it (no token hashes).
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user_agent: String,
    pub client_address: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    /// Absolute end of the session (and of its refresh token).
    pub expires_at: DateTime<Utc>,
}

impl From<&SessionDoc> for Session {
    fn from(s: &SessionDoc) -> Self {
        Self {
            id: s.id.clone(),
            user_agent: s.user_agent.clone(),
            client_address: s.client_address.clone(),
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
        }
    }
}

/// What a successful login or refresh hands out.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    /// Shown to the client once; only its hash is stored.
    pub refresh_token: String,
    pub session: Session,
    pub user: Account,
    /// What the access token says.
    pub claims: AccessClaims,
}

/// Authenticate's memory: verified tokens (so Ed25519 is checked once per token, not per call)
/// and session states (so the database is asked at most once per `ttl` per session).
/// Revocations made by this replica are seen at once (kept in `revoked` while it has room, and
/// in the database, which is asked again after eviction); those made by another replica are
/// seen when the cached state expires (`session_cache_ttl`).
pub struct SessionCache {
    verified: quick_cache::sync::Cache<String, Arc<AccessClaims>>,
    states: quick_cache::sync::Cache<String, (bool, Instant)>,
    revoked: quick_cache::sync::Cache<String, ()>,
    ttl: Duration,
}

impl SessionCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            verified: quick_cache::sync::Cache::new(20_000),
            states: quick_cache::sync::Cache::new(50_000),
            revoked: quick_cache::sync::Cache::new(100_000),
            ttl,
        }
    }

    /// Marks sessions revoked on this replica, effective immediately.
    pub fn revoked(&self, session_ids: impl IntoIterator<Item = impl AsRef<str>>) {
        for id in session_ids {
            self.revoked.insert(id.as_ref().to_string(), ());
            self.states.remove(id.as_ref());
        }
    }

    fn fresh_state(&self, session_id: &str) -> Option<bool> {
        let fresh = if self.revoked.get(session_id).is_some() {
            Some(false)
        } else {
            match self.states.get(session_id) {
                Some((active, at)) if at.elapsed() < self.ttl => Some(active),
                _ => None,
            }
        };
        crate::metrics::cache(crate::metrics::Cache::SessionState, fresh.is_some());
        fresh
    }
}

impl App {
    /// Starts a new session for `user`, authenticated by `factors`, and signs its first token
    /// pair.
    pub async fn start_session(
        &self,
        user: UserDoc,
        factors: &[Factor],
        caller: &Caller,
    ) -> Result<IssuedTokens> {
        let now = self.now();
        let refresh_token = new_refresh_token();
        let lifetime = chrono::Duration::from_std(self.config.session_lifetime)
            .unwrap_or(chrono::Duration::days(30));
        let session = SessionDoc {
            id: new_id(),
            user_id: user.id.clone(),
            refresh_hash: hash_token(&refresh_token),
            previous_refresh_hash: None,
            used_refresh_hashes: Vec::new(),
            rotated_at: None,
            created_at: now,
            last_used_at: now,
            expires_at: now + lifetime,
            revoked_at: None,
            revoked_reason: None,
            user_agent: caller.user_agent.clone(),
            client_address: caller.client_address.clone(),
            amr: factors.iter().map(|f| f.amr().to_string()).collect(),
            authenticated_at: Some(now),
        };
        self.store.sessions.insert(&session).await?;
        Ok(self.sign(user, session, refresh_token, now))
    }

    pub(super) fn sign(
        &self,
        user: UserDoc,
        session: SessionDoc,
        refresh_token: String,
        now: DateTime<Utc>,
    ) -> IssuedTokens {
        // Login, LoginWithCode and Refresh all end here: their RPC span names the user (id only).
        crate::telemetry::record_user_id(&user.id);
        let claims = AccessClaims {
            user_id: user.id.clone(),
            session_id: session.id.clone(),
            email: user.email.clone(),
            role: user.role,
            expires_at: now,
            amr: session.amr.clone(),
            auth_time: session.authenticated_at.unwrap_or(session.created_at),
            service_account: None,
        };
        // An access token never outlives its session.
        let left = (session.expires_at - now).to_std().unwrap_or_default();
        let (access_token, access_token_expires_at) =
            self.keys
                .issue(&claims, now, self.config.access_token_ttl.min(left));
        IssuedTokens {
            access_token,
            access_token_expires_at,
            refresh_token,
            session: Session::from(&session),
            user: user.into(),
            claims: AccessClaims {
                expires_at: access_token_expires_at,
                ..claims
            },
        }
    }

    /// Rotates a refresh token. Exactly one of any number of concurrent calls with the same
    /// token wins; replaying a token that was already rotated out revokes the session, except
    /// the immediate parent within `refresh_reuse_grace` (a client retrying a lost response).
    pub async fn refresh(&self, refresh_token: &str, caller: &Caller) -> Result<IssuedTokens> {
        if refresh_token.is_empty() {
            return Err(Error::invalid("refresh_token", "is required"));
        }
        if !refresh_token.starts_with(REFRESH_TOKEN_PREFIX) || refresh_token.len() > 128 {
            return Err(Error::RefreshTokenInvalid);
        }
        let now = self.now();
        let presented = hash_token(refresh_token);
        let next = new_refresh_token();
        if let Some(session) = self
            .store
            .sessions
            .rotate_refresh_token(&presented, &hash_token(&next), now)
            .await?
        {
            let user = self.store.users.find_by_id(&session.user_id).await?;
            return match user {
                Some(user) if user.status == UserStatus::Active => {
                    Ok(self.sign(user, session, next, now))
                }
                _ => {
                    self.revoke_sessions([session.id.as_str()]);
                    self.store
                        .sessions
                        .revoke(&session.id, None, "account_inactive", now)
                        .await?;
                    Err(Error::RefreshTokenInvalid)
                }
            };
        }
        let Some(session) = self
            .store
            .sessions
            .find_by_used_refresh_hash(&presented)
            .await?
        else {
            return Err(Error::RefreshTokenInvalid);
        };
        if !session.is_active(now) {
            return Err(Error::RefreshTokenInvalid);
        }
        let grace = chrono::Duration::from_std(self.config.refresh_reuse_grace).unwrap_or_default();
        let is_parent = session.previous_refresh_hash.as_deref() == Some(presented.as_str());
        if is_parent && session.rotated_at.is_some_and(|at| now - at <= grace) {
            // Usually a client retrying a lost response; recorded, since it could also be a
            // thief who refreshed first.
            self.audit(
                AuditRecord::new(AuditAction::RefreshRetry, Outcome::Failure, caller)
                    .user(&session.user_id)
                    .session(&session.id),
            )
            .await;
            return Err(Error::RefreshTokenAlreadyRotated);
        }
        self.store
            .sessions
            .revoke(&session.id, None, "refresh_token_reused", now)
            .await?;
        self.revoke_sessions([session.id.as_str()]);
        crate::metrics::refresh_reuse_detected();
        tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reuse: session revoked");
        self.audit(
            AuditRecord::new(AuditAction::RefreshReuse, Outcome::Failure, caller)
                .user(&session.user_id)
                .session(&session.id)
                .detail("revoked", true),
        )
        .await;
        Err(Error::RefreshTokenReused)
    }

    /// Authenticate's hot path: a verified, unexpired token whose session is still active.
    pub async fn authenticate(&self, access_token: &str) -> Result<Arc<AccessClaims>> {
        if access_token.is_empty() {
            return Err(Error::invalid("access_token", "is required"));
        }
        // The RPCs for people take only people's tokens (see `authenticate_principal`).
        if access_token.starts_with(super::service_accounts::API_KEY_PREFIX) {
            return Err(Error::HumanOnly);
        }
        let now = self.now();
        let cached = self.sessions.verified.get(access_token);
        crate::metrics::cache(crate::metrics::Cache::SessionToken, cached.is_some());
        let claims = match cached {
            Some(claims) if claims.expires_at > now => claims,
            Some(_) => return Err(Error::TokenInvalid),
            None => {
                let claims = Arc::new(self.keys.verify(access_token).map_err(|e| {
                    tracing::debug!(reason = %e, "access token refused");
                    Error::TokenInvalid
                })?);
                self.sessions
                    .verified
                    .insert(access_token.to_string(), Arc::clone(&claims));
                claims
            }
        };
        let active = match self.sessions.fresh_state(&claims.session_id) {
            Some(active) => active,
            None => {
                let active = self
                    .store
                    .sessions
                    .find(&claims.session_id)
                    .await?
                    .is_some_and(|s| s.is_active(now));
                self.sessions
                    .states
                    .insert(claims.session_id.clone(), (active, Instant::now()));
                active
            }
        };
        if active {
            // Every bearer-authenticated RPC, and Authenticate/Authorize/ext_authz checking a
            // user's token, comes through here: the RPC's span names the user (id only).
            crate::telemetry::record_user_id(&claims.user_id);
            Ok(claims)
        } else {
            Err(Error::SessionRevoked)
        }
    }

    /// Records local revocations in the cache (the store update is the caller's).
    pub fn revoke_sessions<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.sessions.revoked(ids);
    }

    /// Ends the caller's session, or all of the user's sessions. Returns how many ended.
    pub async fn logout(
        &self,
        who: &AccessClaims,
        all_sessions: bool,
        caller: &Caller,
    ) -> Result<usize> {
        let now = self.now();
        let ended = if all_sessions {
            let ids = self
                .store
                .sessions
                .revoke_all_for_user(&who.user_id, None, "logout_all", now)
                .await?;
            self.revoke_sessions(ids.iter().map(String::as_str));
            self.revoke_sessions([who.session_id.as_str()]);
            ids.len()
        } else {
            let ended = self
                .store
                .sessions
                .revoke(&who.session_id, Some(&who.user_id), "logout", now)
                .await?;
            self.revoke_sessions([who.session_id.as_str()]);
            usize::from(ended)
        };
        self.audit(
            AuditRecord::new(AuditAction::Logout, Outcome::Success, caller)
                .user(&who.user_id)
                .session(&who.session_id)
                .detail("all_sessions", all_sessions)
                .detail("sessions_ended", ended as i64),
        )
        .await;
        Ok(ended)
    }

    pub async fn list_sessions(&self, who: &AccessClaims) -> Result<Vec<Session>> {
        let sessions = self
            .store
            .sessions
            .list_active(&who.user_id, self.now())
            .await?;
        Ok(sessions.iter().map(Session::from).collect())
    }

    /// Ends one of the caller's own sessions. Another user's session id answers NOT_FOUND.
    pub async fn revoke_session(
        &self,
        who: &AccessClaims,
        session_id: &str,
        caller: &Caller,
    ) -> Result<()> {
        if session_id.is_empty() {
            return Err(Error::invalid("session_id", "is required"));
        }
        if !self
            .store
            .sessions
            .revoke(
                session_id,
                Some(&who.user_id),
                "revoked_by_user",
                self.now(),
            )
            .await?
        {
            return Err(Error::SessionNotFound);
        }
        self.revoke_sessions([session_id]);
        self.audit(
            AuditRecord::new(AuditAction::SessionRevoke, Outcome::Success, caller)
                .user(&who.user_id)
                .session(session_id),
        )
        .await;
        Ok(())
    }
}
