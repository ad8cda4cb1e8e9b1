//! The one place where keyward's errors become gRPC statuses.
//!
//! Every error carries a `google.rpc.ErrorInfo` whose `reason` is a stable, documented string
//! (clients switch on it), invalid input carries `google.rpc.BadRequest` field violations, and
//! rate limits carry `google.rpc.RetryInfo`. Internal causes are logged here, once, and the client
//! only ever sees a generic message.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every keyward error.
pub const ERROR_DOMAIN: &str = "keyward";

pub use crate::domain::validation::{FieldViolation, Violations};

/// Everything that can go wrong in a keyward call, in the words of the domain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("too many failed logins for this account; try again later")]
    AccountLocked { retry_after: Duration },
    #[error("too many requests; try again later")]
    RateLimited { retry_after: Duration },
    #[error("this account is disabled")]
    AccountDisabled,
    #[error("the access token is missing, malformed, expired or not valid")]
    TokenInvalid,
    #[error("the session of this token has ended")]
    SessionRevoked,
    #[error("the refresh token is not valid")]
    RefreshTokenInvalid,
    #[error("the refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    #[error("the refresh token was rotated moments ago; use the newer token")]
    RefreshTokenAlreadyRotated,
    #[error("the code is wrong, expired or used up; request a new one")]
    CodeInvalid,
    #[error("the email address is not verified yet; verify it with the code sent to it")]
    EmailNotVerified,
    #[error("session not found")]
    SessionNotFound,
    #[error("the caller may not do this")]
    PermissionDenied,
    #[error("that role is above the caller's own")]
    RoleTooHigh,
    #[error("the caller does not hold {0}, so cannot grant it")]
    PermissionNotHeld(String),
    #[error("this organization has a custom role of this name already")]
    OrgRoleExists,
    #[error("no custom role of this name in this organization")]
    OrgRoleNotFound,
    #[error("this organization has the most custom roles it may have; delete one first")]
    TooManyOrgRoles,
    #[error("an organization must keep at least one owner")]
    LastOwner,
    #[error("organization not found")]
    OrgNotFound,
    #[error("an organization with this slug already exists")]
    SlugTaken,
    #[error("this person is a member already")]
    AlreadyMember,
    #[error("member not found")]
    MemberNotFound,
    #[error("invitation not found")]
    InvitationNotFound,
    #[error("the invitation has expired")]
    InvitationExpired,
    #[error("the invitation was used already")]
    InvitationUsed,
    #[error("the invitation was replaced by a newer one")]
    InvitationRevoked,
    #[error("the invitation is for another (or an unverified) email address")]
    InvitationEmailMismatch,
    #[error("user not found")]
    UserNotFound,
    #[error("the authentication code is wrong or was used already")]
    MfaCodeInvalid,
    #[error("the MFA challenge is unknown, expired, used or out of attempts; sign in again")]
    MfaChallengeInvalid,
    #[error("an authenticator is enrolled already")]
    MfaAlreadyEnrolled,
    #[error("no authenticator enrolment is pending; start one")]
    MfaEnrollmentNotStarted,
    #[error("no second factor is enrolled")]
    MfaNotEnrolled,
    #[error("this needs a session that signed in recently; sign in again")]
    ReauthenticationRequired,
    #[error("this call is for people; a service account's API key cannot make it")]
    HumanOnly,
    #[error("service account not found")]
    ServiceAccountNotFound,
    #[error("API key not found (or revoked already)")]
    ApiKeyNotFound,
    #[error("the service account has the most live API keys it may have; revoke one first")]
    TooManyApiKeys,
    #[error("a permission of this name exists already")]
    PermissionExists,
    #[error("no such permission in the catalogue")]
    PermissionNotFound,
    #[error("this needs a second factor; step up the session with StepUp")]
    MfaRequired,
    #[error("this needs a second factor; enrol an authenticator first")]
    MfaEnrollmentRequired,
    #[error("no sign-in provider of this name is configured")]
    ProviderNotFound,
    #[error("the sign-in provider did not answer in time; try again shortly")]
    ProviderUnavailable,
    #[error("this sign-in is unknown, expired or finished already; start again")]
    FederationStateInvalid,
    #[error("the sign-in was declined at the provider")]
    FederationAccessDenied,
    #[error("the sign-in provider answered with an error")]
    FederationProviderError { provider_error: String },
    #[error("the sign-in provider refused the authorization code; start again")]
    FederationCodeInvalid,
    #[error("the sign-in provider's ID token failed a check")]
    FederationTokenInvalid,
    #[error("the provider does not vouch for this email address; sign in another way and link the provider from your account")]
    FederatedEmailUnverified,
    #[error("this provider identity is linked to another account")]
    IdentityAlreadyLinked,
    #[error("no such identity is linked to this account")]
    IdentityNotFound,
    #[error(
        "this is the account's last way to sign in; set a password or link another provider first"
    )]
    LastSignInMethod,
    #[error("the account has the most linked identities it may have; unlink one first")]
    TooManyIdentities,
    #[error("the page token is not valid for this request")]
    PageTokenInvalid,
    #[error("keyward cannot reach its database yet; try again shortly")]
    NotReady,
    #[error("keyward is overloaded; try again shortly")]
    Overloaded,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A single-field `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The gRPC code and the stable `ErrorInfo.reason` of this error.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Error::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Error::InvalidCredentials => (Code::Unauthenticated, "INVALID_CREDENTIALS"),
            Error::EmailTaken => (Code::AlreadyExists, "EMAIL_TAKEN"),
            Error::AccountLocked { .. } => (Code::ResourceExhausted, "ACCOUNT_LOCKED"),
            Error::RateLimited { .. } => (Code::ResourceExhausted, "RATE_LIMITED"),
            Error::AccountDisabled => (Code::PermissionDenied, "ACCOUNT_DISABLED"),
            Error::TokenInvalid => (Code::Unauthenticated, "TOKEN_INVALID"),
            Error::SessionRevoked => (Code::Unauthenticated, "SESSION_REVOKED"),
            Error::RefreshTokenInvalid => (Code::Unauthenticated, "REFRESH_TOKEN_INVALID"),
            Error::RefreshTokenReused => (Code::Unauthenticated, "REFRESH_TOKEN_REUSED"),
            Error::RefreshTokenAlreadyRotated => (Code::Aborted, "REFRESH_TOKEN_ALREADY_ROTATED"),
            Error::CodeInvalid => (Code::Unauthenticated, "CODE_INVALID"),
            Error::EmailNotVerified => (Code::FailedPrecondition, "EMAIL_NOT_VERIFIED"),
            Error::SessionNotFound => (Code::NotFound, "SESSION_NOT_FOUND"),
            Error::PermissionDenied => (Code::PermissionDenied, "PERMISSION_DENIED"),
            Error::RoleTooHigh => (Code::PermissionDenied, "ROLE_TOO_HIGH"),
            Error::PermissionNotHeld(_) => (Code::PermissionDenied, "PERMISSION_NOT_HELD"),
            Error::OrgRoleExists => (Code::AlreadyExists, "ORG_ROLE_EXISTS"),
            Error::OrgRoleNotFound => (Code::NotFound, "ORG_ROLE_NOT_FOUND"),
            Error::TooManyOrgRoles => (Code::FailedPrecondition, "TOO_MANY_ORG_ROLES"),
            Error::LastOwner => (Code::FailedPrecondition, "LAST_OWNER"),
            Error::OrgNotFound => (Code::NotFound, "ORG_NOT_FOUND"),
            Error::SlugTaken => (Code::AlreadyExists, "SLUG_TAKEN"),
            Error::AlreadyMember => (Code::AlreadyExists, "ALREADY_MEMBER"),
            Error::MemberNotFound => (Code::NotFound, "MEMBER_NOT_FOUND"),
            Error::InvitationNotFound => (Code::NotFound, "INVITATION_NOT_FOUND"),
            Error::InvitationExpired => (Code::FailedPrecondition, "INVITATION_EXPIRED"),
            Error::InvitationUsed => (Code::FailedPrecondition, "INVITATION_USED"),
            Error::InvitationRevoked => (Code::FailedPrecondition, "INVITATION_REVOKED"),
            Error::InvitationEmailMismatch => (Code::PermissionDenied, "INVITATION_EMAIL_MISMATCH"),
            Error::UserNotFound => (Code::NotFound, "USER_NOT_FOUND"),
            Error::MfaCodeInvalid => (Code::Unauthenticated, "MFA_CODE_INVALID"),
            Error::MfaChallengeInvalid => (Code::Unauthenticated, "MFA_CHALLENGE_INVALID"),
            Error::MfaAlreadyEnrolled => (Code::AlreadyExists, "MFA_ALREADY_ENROLLED"),
            Error::MfaEnrollmentNotStarted => {
                (Code::FailedPrecondition, "MFA_ENROLLMENT_NOT_STARTED")
            }
            Error::MfaNotEnrolled => (Code::FailedPrecondition, "MFA_NOT_ENROLLED"),
            Error::ReauthenticationRequired => {
                (Code::FailedPrecondition, "REAUTHENTICATION_REQUIRED")
            }
            Error::HumanOnly => (Code::PermissionDenied, "HUMAN_ONLY"),
            Error::ServiceAccountNotFound => (Code::NotFound, "SERVICE_ACCOUNT_NOT_FOUND"),
            Error::ApiKeyNotFound => (Code::NotFound, "API_KEY_NOT_FOUND"),
            Error::TooManyApiKeys => (Code::FailedPrecondition, "TOO_MANY_API_KEYS"),
            Error::PermissionExists => (Code::AlreadyExists, "PERMISSION_EXISTS"),
            Error::PermissionNotFound => (Code::NotFound, "PERMISSION_NOT_FOUND"),
            Error::MfaRequired => (Code::PermissionDenied, "MFA_REQUIRED"),
            Error::MfaEnrollmentRequired => (Code::PermissionDenied, "MFA_ENROLLMENT_REQUIRED"),
            Error::ProviderNotFound => (Code::NotFound, "PROVIDER_NOT_FOUND"),
            Error::ProviderUnavailable => (Code::Unavailable, "PROVIDER_UNAVAILABLE"),
            Error::FederationStateInvalid => (Code::Unauthenticated, "FEDERATION_STATE_INVALID"),
            Error::FederationAccessDenied => (Code::PermissionDenied, "FEDERATION_ACCESS_DENIED"),
            Error::FederationProviderError { .. } => {
                (Code::FailedPrecondition, "FEDERATION_PROVIDER_ERROR")
            }
            Error::FederationCodeInvalid => (Code::Unauthenticated, "FEDERATION_CODE_INVALID"),
            Error::FederationTokenInvalid => (Code::Unauthenticated, "FEDERATION_TOKEN_INVALID"),
            Error::FederatedEmailUnverified => {
                (Code::FailedPrecondition, "FEDERATED_EMAIL_UNVERIFIED")
            }
            Error::IdentityAlreadyLinked => (Code::AlreadyExists, "IDENTITY_ALREADY_LINKED"),
            Error::IdentityNotFound => (Code::NotFound, "IDENTITY_NOT_FOUND"),
            Error::LastSignInMethod => (Code::FailedPrecondition, "LAST_SIGN_IN_METHOD"),
            Error::TooManyIdentities => (Code::FailedPrecondition, "TOO_MANY_IDENTITIES"),
            Error::PageTokenInvalid => (Code::InvalidArgument, "PAGE_TOKEN_INVALID"),
            Error::NotReady => (Code::Unavailable, "NOT_READY"),
            Error::Overloaded => (Code::Unavailable, "OVERLOADED"),
            Error::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }
}

/// Collected field violations are invalid input.
impl From<Violations> for Error {
    fn from(violations: Violations) -> Self {
        Error::InvalidArgument(violations.into_vec())
    }
}

impl From<crate::hash_pool::PoolError> for Error {
    fn from(err: crate::hash_pool::PoolError) -> Self {
        match err {
            crate::hash_pool::PoolError::Busy => Error::Overloaded,
            gone => Error::Internal(gone.into()),
        }
    }
}

impl From<mongodb::error::Error> for Error {
    fn from(err: mongodb::error::Error) -> Self {
        use mongodb::error::ErrorKind;
        // The database cannot be reached (down, failing over, network): the client may retry
        // elsewhere or later; nothing about its request was wrong or half-done by us.
        match err.kind.as_ref() {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. } => {
                tracing::warn!(error = %err, "database unreachable");
                Error::NotReady
            }
            _ => Error::Internal(err.into()),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let (code, reason) = err.code_and_reason();
        let mut details = ErrorDetails::new();
        let mut metadata = std::collections::HashMap::new();
        if let Error::FederationProviderError { provider_error } = &err {
            metadata.insert("provider_error".to_string(), provider_error.clone());
        }
        details.set_error_info(reason, ERROR_DOMAIN, metadata);
        match &err {
            Error::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
            }
            Error::PageTokenInvalid => {
                // Invalid input like any other: it names its field.
                details.add_bad_request_violation("page_token", err.to_string());
            }
            Error::AccountLocked { retry_after } | Error::RateLimited { retry_after } => {
                details.set_retry_info(Some(*retry_after));
            }
            Error::Overloaded => {
                details.set_retry_info(Some(Duration::from_secs(1)));
            }
            Error::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "internal error");
            }
            _ => {}
        }
        let message = match &err {
            Error::InvalidArgument(violations) => violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        Status::with_error_details(code, message, details)
    }
}
