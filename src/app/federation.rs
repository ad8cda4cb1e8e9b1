//! Federated sign-in: signing in (and up) with an OpenID Connect provider, and the identities
//! linked to accounts. The provider conversation is `crate::oidc`'s; this decides what a verified
//! identity may do here.
//!
//! Rules (see `proto/keyward/v1/federation_service.proto` for the contract):
//! - a flow's state is used up by the first finish that presents it with its flow secret,
//!   whatever the outcome;
//! - a linked identity signs into its account;
//! - an unknown identity creates an account, or links to the account of its email, only when
//!   the provider asserts the email verified and is trusted for that; an unverified account of
//!   that email is claimed first (its password and sessions end, as when a mailbox code claims
//!   it), so whoever registered the address without proving it gains nothing;
//! - a second factor, when the account has one, is still asked for;
//! - an account keeps at least one way to sign in.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::accounts::MAX_DISPLAY_NAME;
use super::mfa::SignIn;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::federation::{self, tidy_provider_text, FlowKeys, MAX_CALLBACK_FIELD};
use crate::domain::mfa::Factor;
use crate::domain::password;
use crate::domain::roles::Role;
use crate::domain::secrets::new_id;
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::oidc::{OidcError, Provider, VerifiedIdentity};
use crate::store::federation_flows::{FlowDoc, FlowIntent};
use crate::store::identities::{IdentityDoc, Linked, MAX_PER_USER};
use crate::store::users::{UserDoc, UserStatus};

/// How long a started flow may be finished.
const FLOW_LIFETIME: Duration = Duration::from_secs(10 * 60);
const MINUTE: Duration = Duration::from_secs(60);

/// A started flow, as handed to the client.
#[derive(Debug, Clone)]
pub struct Started {
    pub authorization_url: String,
    pub state: String,
    pub expires_at: DateTime<Utc>,
    /// Kept by the client, never in a URL; the PKCE verifier is derived from it.
    pub flow_secret: String,
}

/// What the provider sent back to the redirect URI.
#[derive(Debug, Clone, Default)]
pub struct Callback {
    pub state: String,
    pub code: String,
    pub error: String,
    pub error_description: String,
    pub iss: String,
    /// `Started::flow_secret`.
    pub flow_secret: String,
}

/// An identity at a provider linked to an account, as the use cases hand it out.
#[derive(Debug, Clone)]
pub struct LinkedIdentity {
    pub provider: String,
    /// The provider's `sub`.
    pub subject: String,
    /// The email the provider gave at link or last use (may be empty).
    pub email: String,
    pub linked_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&IdentityDoc> for LinkedIdentity {
    fn from(i: &IdentityDoc) -> Self {
        Self {
            provider: i.provider.clone(),
            subject: i.subject.clone(),
            email: i.email.clone(),
            linked_at: i.linked_at,
            last_used_at: i.last_used_at,
        }
    }
}

/// A finished federated sign-in.
#[derive(Debug)]
pub struct FederatedSignIn {
    pub sign_in: SignIn,
    pub account_created: bool,
    pub identity: LinkedIdentity,
}

impl App {
    /// The configured providers: (id, display name).
    pub fn list_providers(&self) -> Vec<(String, String)> {
        self.providers
            .all()
            .map(|p| (p.id.clone(), p.display_name.clone()))
            .collect()
    }

    /// Starts a sign-in at `provider`.
    pub async fn start_federated_login(
        &self,
        provider: &str,
        redirect_uri: &str,
        caller: &Caller,
    ) -> Result<Started> {
        let provider = self.provider_and_redirect(provider, redirect_uri)?;
        self.throttle_address(
            caller,
            "federation",
            self.config.login_attempts_per_address_per_minute,
            MINUTE,
        )
        .await?;
        self.start_flow(provider, redirect_uri, FlowIntent::Login, None)
            .await
    }

    /// Starts linking an identity at `provider` to the signed-in caller.
    pub async fn start_link_identity(
        &self,
        who: &AccessClaims,
        provider: &str,
        redirect_uri: &str,
        caller: &Caller,
    ) -> Result<Started> {
        self.throttle_address(
            caller,
            "federation",
            self.config.login_attempts_per_address_per_minute,
            MINUTE,
        )
        .await?;
        self.acting(who).await?;
        self.require_recent_sign_in(who)?;
        self.require_verified_email(&who.user_id).await?;
        let provider = self.provider_and_redirect(provider, redirect_uri)?;
        self.start_flow(
            provider,
            redirect_uri,
            FlowIntent::Link,
            Some(who.user_id.clone()),
        )
        .await
    }

    /// Linking needs a proven mailbox: whoever proves an unverified account's address later takes
    /// the account over, and must not find someone else's identity linked to it.
    async fn require_verified_email(&self, user_id: &str) -> Result<()> {
        match self.store.users.find_by_id(user_id).await? {
            Some(u) if u.email_verified => Ok(()),
            Some(_) => Err(Error::EmailNotVerified),
            None => Err(Error::SessionRevoked),
        }
    }

    fn provider_and_redirect(&self, provider: &str, redirect_uri: &str) -> Result<&Provider> {
        let mut violations = Violations::new();
        if provider.is_empty() {
            violations.push("provider", "is required");
        }
        if redirect_uri.is_empty() {
            violations.push("redirect_uri", "is required");
        }
        violations.finish()?;
        let found = self
            .providers
            .get(provider)
            .ok_or(Error::ProviderNotFound)?;
        if federation::allowed_redirect(&found.redirect_uris, redirect_uri).is_none() {
            return Err(Error::invalid(
                "redirect_uri",
                "is not one of the provider's allowed redirect URIs (compared exactly)",
            ));
        }
        Ok(found)
    }

    async fn start_flow(
        &self,
        provider: &Provider,
        redirect_uri: &str,
        intent: FlowIntent,
        user_id: Option<String>,
    ) -> Result<Started> {
        let state = FlowKeys::new_state();
        let flow_secret = FlowKeys::new_flow_secret();
        let url = provider
            .authorization_url(
                self.providers.http(),
                redirect_uri,
                &state,
                &self.flow_keys.nonce(&state),
                &self.flow_keys.pkce_verifier(&flow_secret),
            )
            .await
            .map_err(|e| provider_failure(&provider.id, e))?;
        let now = self.now();
        let expires_at = now + FLOW_LIFETIME;
        self.store
            .federation_flows
            .insert(&FlowDoc {
                state_hash: FlowKeys::hash(&state),
                secret_hash: FlowKeys::hash(&flow_secret),
                provider: provider.id.clone(),
                redirect_uri: redirect_uri.to_string(),
                intent,
                user_id,
                created_at: now,
                expires_at,
            })
            .await?;
        Ok(Started {
            authorization_url: url,
            state,
            expires_at,
            flow_secret,
        })
    }

    /// Finishes a sign-in with what the provider sent back.
    pub async fn finish_federated_login(
        &self,
        callback: &Callback,
        caller: &Caller,
    ) -> Result<FederatedSignIn> {
        let result = self.federated_login(callback, caller).await;
        let asks_second_factor = result.as_ref().map(|s| s.sign_in.asks_second_factor());
        crate::metrics::login(crate::metrics::LoginMethod::Oidc, asks_second_factor);
        result
    }

    async fn federated_login(
        &self,
        callback: &Callback,
        caller: &Caller,
    ) -> Result<FederatedSignIn> {
        let (provider, identity) = self
            .verified_callback(callback, FlowIntent::Login, None, caller)
            .await?;
        // Twice at most: a concurrent first sign-in of the same identity may create the account
        // or the link between our look and our write; the second round finds what it made.
        let mut round = 0;
        let (user, link, created) = loop {
            round += 1;
            match self.account_for(provider, &identity, caller).await {
                Err(Error::EmailTaken | Error::IdentityAlreadyLinked) if round < 2 => continue,
                Err(Error::EmailTaken | Error::IdentityAlreadyLinked) => {
                    return Err(Error::FederationStateInvalid)
                }
                other => break other?,
            }
        };
        self.sign_in_federated(user, link, created, &identity, caller)
            .await
    }

    /// The account a verified identity signs into, its link, and whether the account is new.
    async fn account_for(
        &self,
        provider: &Provider,
        identity: &VerifiedIdentity,
        caller: &Caller,
    ) -> Result<(UserDoc, IdentityDoc, bool)> {
        let subject_hash = federation::subject_hash(&provider.id, &identity.subject);
        if let Some(link) = self
            .store
            .identities
            .find(&provider.id, &identity.subject)
            .await?
        {
            match self.store.users.find_by_id(&link.user_id).await? {
                Some(user) if user.status != UserStatus::Deleted => {
                    return Ok((user, link, false));
                }
                // The account went away and left its link behind: the identity is unknown again.
                _ => {
                    self.store.identities.remove_user(&link.user_id).await?;
                }
            }
        }
        let email = identity
            .email
            .as_deref()
            .and_then(|e| crate::domain::email::normalize(e).ok());
        let vouched = identity.email_verified
            && provider.trust_email_verified
            && email.as_deref().is_some_and(|e| {
                !provider.google || federation::google_vouches(e, identity.hosted_domain.as_deref())
            });
        let Some(email) = email.filter(|_| vouched) else {
            self.audit(
                AuditRecord::new(AuditAction::FederatedLogin, Outcome::Failure, caller)
                    .detail("provider", provider.id.as_str())
                    .detail("subject_hash", subject_hash.as_str())
                    .detail("reason", "email_unverified"),
            )
            .await;
            return Err(Error::FederatedEmailUnverified);
        };
        let (user, created) = match self.store.users.find_by_email(&email).await? {
            Some(user) if user.status == UserStatus::Deleted => {
                return Err(self
                    .refused(provider, &subject_hash, Some(&user.id), caller)
                    .await)
            }
            Some(user) if user.status == UserStatus::Disabled => {
                return Err(self
                    .refused(provider, &subject_hash, Some(&user.id), caller)
                    .await)
            }
            Some(user) if !user.email_verified => {
                (self.claim_account(&user, "oidc", caller).await?, false)
            }
            Some(user) => {
                // The account has another identity at this provider: a second one with the same
                // address is more likely a recycled mailbox than the same person.
                let others = self.store.identities.of_user(&user.id).await?;
                if others
                    .iter()
                    .any(|l| l.provider == provider.id && l.subject != identity.subject)
                {
                    self.audit(
                        AuditRecord::new(AuditAction::FederatedLogin, Outcome::Failure, caller)
                            .user(&user.id)
                            .detail("provider", provider.id.as_str())
                            .detail("subject_hash", subject_hash.as_str())
                            .detail("reason", "other_identity_at_provider"),
                    )
                    .await;
                    return Err(Error::FederatedEmailUnverified);
                }
                (user, false)
            }
            None => {
                let name = federation::display_name_from_claim(identity.name.as_deref());
                let name: String = name.chars().take(MAX_DISPLAY_NAME).collect();
                let user = self
                    .insert_account(email.clone(), name, String::new(), Role::User, true, caller)
                    .await?;
                (user, true)
            }
        };
        let link = self.link(provider, identity, &user.id).await?;
        self.audit(
            AuditRecord::new(AuditAction::IdentityLink, Outcome::Success, caller)
                .user(&user.id)
                .detail("provider", provider.id.as_str())
                .detail("subject_hash", subject_hash.as_str())
                .detail("by", if created { "sign_up" } else { "email" }),
        )
        .await;
        if !created {
            self.notify_identity_changed(&user, provider, "linked")
                .await;
        }
        Ok((user, link, created))
    }

    /// Links `identity` to `user_id`; IDENTITY_ALREADY_LINKED when another account has it.
    async fn link(
        &self,
        provider: &Provider,
        identity: &VerifiedIdentity,
        user_id: &str,
    ) -> Result<IdentityDoc> {
        let now = self.now();
        let doc = IdentityDoc {
            id: new_id(),
            provider: provider.id.clone(),
            subject: identity.subject.clone(),
            user_id: user_id.to_string(),
            email: identity.email.clone().unwrap_or_default(),
            linked_at: now,
            last_used_at: Some(now),
        };
        if self.store.identities.count_of_user(user_id).await? >= MAX_PER_USER {
            return Err(Error::TooManyIdentities);
        }
        for _ in 0..2 {
            match self.store.identities.link(&doc).await? {
                Linked::Created(doc) => return Ok(doc),
                Linked::Exists(doc) if doc.user_id == user_id => return Ok(doc),
                Linked::Exists(other) => {
                    let owner = self.store.users.find_by_id(&other.user_id).await?;
                    if owner.is_some_and(|u| u.status != UserStatus::Deleted) {
                        return Err(Error::IdentityAlreadyLinked);
                    }
                    // Left behind by a deleted account: the identity is free again.
                    self.store.identities.remove_user(&other.user_id).await?;
                }
            }
        }
        Err(Error::IdentityAlreadyLinked)
    }

    async fn refused(
        &self,
        provider: &Provider,
        subject_hash: &str,
        user_id: Option<&str>,
        caller: &Caller,
    ) -> Error {
        let mut record = AuditRecord::new(AuditAction::FederatedLogin, Outcome::Failure, caller)
            .detail("provider", provider.id.as_str())
            .detail("subject_hash", subject_hash)
            .detail("reason", "account_disabled");
        if let Some(id) = user_id {
            record = record.user(id);
        }
        self.audit(record).await;
        Error::AccountDisabled
    }

    /// Signs `user` in after the provider vouched for `identity`: the same steps as a password
    /// login after a right password.
    async fn sign_in_federated(
        &self,
        user: UserDoc,
        link: IdentityDoc,
        created: bool,
        identity: &VerifiedIdentity,
        caller: &Caller,
    ) -> Result<FederatedSignIn> {
        let provider = link.provider.clone();
        let subject_hash = federation::subject_hash(&provider, &identity.subject);
        if user.status != UserStatus::Active {
            return Err(self
                .refused_by_id(&provider, &subject_hash, &user.id, caller)
                .await);
        }
        if self.config.require_verified_email && !user.email_verified {
            return Err(Error::EmailNotVerified);
        }
        let now = self.now();
        self.store
            .identities
            .record_use(&link.id, identity.email.as_deref().unwrap_or_default(), now)
            .await?;
        let sign_in = self
            .sign_in_after_first_factor(
                user,
                Factor::Federated,
                Error::AccountDisabled,
                vec![
                    ("method", "oidc".into()),
                    ("provider", provider.as_str().into()),
                    ("subject_hash", subject_hash.as_str().into()),
                    ("account_created", created.into()),
                ],
                caller,
            )
            .await?;
        Ok(FederatedSignIn {
            sign_in,
            account_created: created,
            identity: LinkedIdentity::from(&link),
        })
    }

    async fn refused_by_id(
        &self,
        provider: &str,
        subject_hash: &str,
        user_id: &str,
        caller: &Caller,
    ) -> Error {
        self.audit(
            AuditRecord::new(AuditAction::FederatedLogin, Outcome::Failure, caller)
                .user(user_id)
                .detail("provider", provider)
                .detail("subject_hash", subject_hash)
                .detail("reason", "account_disabled"),
        )
        .await;
        Error::AccountDisabled
    }

    /// Links the identity the provider vouched for to the signed-in caller who started the link.
    pub async fn finish_link_identity(
        &self,
        who: &AccessClaims,
        callback: &Callback,
        caller: &Caller,
    ) -> Result<LinkedIdentity> {
        self.acting(who).await?;
        self.require_verified_email(&who.user_id).await?;
        let (provider, identity) = self
            .verified_callback(callback, FlowIntent::Link, Some(&who.user_id), caller)
            .await?;
        let subject_hash = federation::subject_hash(&provider.id, &identity.subject);
        let linked = self.link(provider, &identity, &who.user_id).await;
        self.audit(
            AuditRecord::new(
                AuditAction::IdentityLink,
                if linked.is_ok() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
                caller,
            )
            .user(&who.user_id)
            .session(&who.session_id)
            .detail("provider", provider.id.as_str())
            .detail("subject_hash", subject_hash.as_str())
            .detail("by", "link"),
        )
        .await;
        if linked.is_ok() {
            if let Some(user) = self.store.users.find_by_id(&who.user_id).await? {
                self.notify_identity_changed(&user, provider, "linked")
                    .await;
            }
        }
        linked.map(|l| LinkedIdentity::from(&l))
    }

    /// Tells the user a way into their account was added or removed, so that one they did not
    /// add does not go unnoticed.
    async fn notify_identity_changed(&self, user: &UserDoc, provider: &Provider, change: &str) {
        let context = minijinja::context! {
            email => user.email,
            display_name => user.display_name,
            provider => provider.display_name,
            change => change,
        };
        if let Err(e) = self
            .queue_mail("identity_changed", &user.email, &user.display_name, context)
            .await
        {
            tracing::error!(user_id = %user.id, error = %e, "could not queue the identity notice");
        }
    }

    /// The caller's linked identities, oldest first.
    pub async fn list_identities(&self, who: &AccessClaims) -> Result<Vec<LinkedIdentity>> {
        self.acting(who).await?;
        let linked = self.store.identities.of_user(&who.user_id).await?;
        Ok(linked.iter().map(LinkedIdentity::from).collect())
    }

    /// Unlinks one of the caller's identities, unless it is the account's last way in.
    pub async fn unlink_identity(
        &self,
        who: &AccessClaims,
        provider: &str,
        subject: &str,
        caller: &Caller,
    ) -> Result<()> {
        self.acting(who).await?;
        self.require_recent_sign_in(who)?;
        let mut violations = Violations::new();
        if provider.is_empty() {
            violations.push("provider", "is required");
        }
        if subject.is_empty() {
            violations.push("subject", "is required");
        }
        violations.finish()?;
        let Some(link) = self
            .store
            .identities
            .find(provider, subject)
            .await?
            .filter(|l| l.user_id == who.user_id)
        else {
            return Err(Error::IdentityNotFound);
        };
        let has_password = |user: &Option<UserDoc>| {
            user.as_ref()
                .is_some_and(|u| password::is_verifiable_hash(&u.password_hash))
        };
        let user = self.store.users.find_by_id(&who.user_id).await?;
        if !has_password(&user) && self.store.identities.count_of_user(&who.user_id).await? <= 1 {
            return Err(Error::LastSignInMethod);
        }
        if !self
            .store
            .identities
            .unlink(&who.user_id, provider, subject)
            .await?
        {
            return Err(Error::IdentityNotFound);
        }
        // Two concurrent unlinks (or a password reset clearing the password) may both have seen
        // another way in: look again now, and put this one back if none is left.
        let user = self.store.users.find_by_id(&who.user_id).await?;
        if !has_password(&user) && self.store.identities.count_of_user(&who.user_id).await? == 0 {
            self.store.identities.link(&link).await?;
            return Err(Error::LastSignInMethod);
        }
        if let (Some(user), Some(p)) = (user.as_ref(), self.providers.get(provider)) {
            self.notify_identity_changed(user, p, "unlinked").await;
        }
        self.audit(
            AuditRecord::new(AuditAction::IdentityUnlink, Outcome::Success, caller)
                .user(&who.user_id)
                .session(&who.session_id)
                .detail("provider", provider)
                .detail(
                    "subject_hash",
                    federation::subject_hash(provider, subject).as_str(),
                ),
        )
        .await;
        Ok(())
    }

    /// Uses up the flow of `callback.state` and returns its provider and the identity the
    /// provider vouched for, after every check.
    async fn verified_callback(
        &self,
        callback: &Callback,
        intent: FlowIntent,
        user_id: Option<&str>,
        caller: &Caller,
    ) -> Result<(&Provider, VerifiedIdentity)> {
        let mut violations = Violations::new();
        for (field, value) in [
            ("state", &callback.state),
            ("code", &callback.code),
            ("error", &callback.error),
            ("error_description", &callback.error_description),
            ("iss", &callback.iss),
            ("flow_secret", &callback.flow_secret),
        ] {
            if value.len() > MAX_CALLBACK_FIELD {
                violations.push(field, format!("must be at most {MAX_CALLBACK_FIELD} bytes"));
            }
        }
        if callback.state.is_empty() {
            violations.push("state", "is required");
        }
        if callback.code.is_empty() && callback.error.is_empty() {
            violations.push("code", "is required (or error)");
        }
        if callback.flow_secret.is_empty() {
            violations.push(
                "flow_secret",
                "is required (the one the start of this sign-in returned)",
            );
        }
        violations.finish()?;
        let flow = self
            .store
            .federation_flows
            .take(
                &FlowKeys::hash(&callback.state),
                &FlowKeys::hash(&callback.flow_secret),
                intent,
                user_id,
                self.now(),
            )
            .await?
            .ok_or(Error::FederationStateInvalid)?;
        let Some(provider) = self.providers.get(&flow.provider) else {
            // The provider was removed from the configuration since the flow started.
            return Err(Error::FederationStateInvalid);
        };
        let fail = |reason: &'static str, err: Error| async move {
            let mut record = AuditRecord::new(
                if intent == FlowIntent::Link {
                    AuditAction::IdentityLink
                } else {
                    AuditAction::FederatedLogin
                },
                Outcome::Failure,
                caller,
            )
            .detail("provider", provider.id.as_str())
            .detail("reason", reason);
            if let Some(id) = user_id {
                record = record.user(id);
            }
            self.audit(record).await;
            Err(err)
        };
        if !callback.iss.is_empty() && callback.iss != provider.issuer {
            return fail("issuer_mismatch", Error::FederationTokenInvalid).await;
        }
        if !callback.error.is_empty() {
            tracing::info!(
                provider = %provider.id,
                error = %tidy_provider_text(&callback.error),
                description = %tidy_provider_text(&callback.error_description),
                "provider sent an error back"
            );
            if callback.error == "access_denied" {
                return fail("access_denied", Error::FederationAccessDenied).await;
            }
            return fail(
                "provider_error",
                Error::FederationProviderError {
                    provider_error: tidy_provider_text(&callback.error),
                },
            )
            .await;
        }
        let state = callback.state.clone();
        let verified = provider
            .finish(
                self.providers.http(),
                &flow.redirect_uri,
                &callback.code,
                &self.flow_keys.pkce_verifier(&callback.flow_secret),
                |nonce| self.flow_keys.nonce_matches(&state, nonce),
            )
            .await;
        match verified {
            Ok(identity) => Ok((provider, identity)),
            Err(e) => {
                let reason = match &e {
                    OidcError::Unavailable(_) => "provider_unavailable",
                    OidcError::CodeInvalid => "code_invalid",
                    OidcError::Provider(_) => "provider_error",
                    OidcError::TokenInvalid(_) => "token_invalid",
                };
                fail(reason, provider_failure(&provider.id, e)).await
            }
        }
    }
}

/// A provider's error in keyward's words, logged with its detail (which clients never see).
fn provider_failure(provider: &str, e: OidcError) -> Error {
    tracing::warn!(provider, error = %e, "federated sign-in failed at the provider");
    match e {
        OidcError::Unavailable(_) => Error::ProviderUnavailable,
        OidcError::CodeInvalid => Error::FederationCodeInvalid,
        OidcError::Provider(code) => Error::FederationProviderError {
            provider_error: tidy_provider_text(&code),
        },
        OidcError::TokenInvalid(_) => Error::FederationTokenInvalid,
    }
}
