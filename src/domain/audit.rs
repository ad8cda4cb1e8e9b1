//! The audit trail's vocabulary: every action keyward records, with the name it is stored
//! under. Use cases name actions with this type, so a misspelt action does not compile; the
//! stored names (and so `ListAuditEvents`' `action` filter) never change.

/// One kind of audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    AccountClaim,
    ApiKeyCreate,
    ApiKeyRevoke,
    CodeSend,
    CodeUse,
    EmailVerify,
    FederatedLogin,
    IdentityLink,
    IdentityUnlink,
    Lockout,
    LockoutLift,
    Login,
    Logout,
    MailDelivery,
    MfaChallenge,
    MfaReset,
    MfaStepUp,
    MfaVerify,
    OrgCreate,
    OrgDelete,
    OrgInvitationAccept,
    OrgInvite,
    OrgMemberCreate,
    OrgMemberRemove,
    OrgMemberUpdate,
    OrgRoleDefine,
    OrgRoleDelete,
    OrgRoleUpdate,
    OrgUpdate,
    PasswordChange,
    PasswordReset,
    PermissionDefine,
    PermissionDelete,
    PermissionUpdate,
    PermissionsApply,
    RecoveryCodesRegenerate,
    RefreshRetry,
    RefreshReuse,
    Register,
    ServiceAccountCreate,
    ServiceAccountDelete,
    ServiceAccountDisable,
    SessionRevoke,
    SessionsRevoke,
    TotpDisable,
    TotpEnroll,
    TotpEnrollmentStart,
    UserDelete,
    UserDisable,
    UserEnable,
    UserImport,
    UserSetRole,
    UserUpdate,
}

impl AuditAction {
    /// Every action, for listings and tests.
    pub const ALL: [AuditAction; 53] = [
        AuditAction::AccountClaim,
        AuditAction::ApiKeyCreate,
        AuditAction::ApiKeyRevoke,
        AuditAction::CodeSend,
        AuditAction::CodeUse,
        AuditAction::EmailVerify,
        AuditAction::FederatedLogin,
        AuditAction::IdentityLink,
        AuditAction::IdentityUnlink,
        AuditAction::Lockout,
        AuditAction::LockoutLift,
        AuditAction::Login,
        AuditAction::Logout,
        AuditAction::MailDelivery,
        AuditAction::MfaChallenge,
        AuditAction::MfaReset,
        AuditAction::MfaStepUp,
        AuditAction::MfaVerify,
        AuditAction::OrgCreate,
        AuditAction::OrgDelete,
        AuditAction::OrgInvitationAccept,
        AuditAction::OrgInvite,
        AuditAction::OrgMemberCreate,
        AuditAction::OrgMemberRemove,
        AuditAction::OrgMemberUpdate,
        AuditAction::OrgRoleDefine,
        AuditAction::OrgRoleDelete,
        AuditAction::OrgRoleUpdate,
        AuditAction::OrgUpdate,
        AuditAction::PasswordChange,
        AuditAction::PasswordReset,
        AuditAction::PermissionDefine,
        AuditAction::PermissionDelete,
        AuditAction::PermissionUpdate,
        AuditAction::PermissionsApply,
        AuditAction::RecoveryCodesRegenerate,
        AuditAction::RefreshRetry,
        AuditAction::RefreshReuse,
        AuditAction::Register,
        AuditAction::ServiceAccountCreate,
        AuditAction::ServiceAccountDelete,
        AuditAction::ServiceAccountDisable,
        AuditAction::SessionRevoke,
        AuditAction::SessionsRevoke,
        AuditAction::TotpDisable,
        AuditAction::TotpEnroll,
        AuditAction::TotpEnrollmentStart,
        AuditAction::UserDelete,
        AuditAction::UserDisable,
        AuditAction::UserEnable,
        AuditAction::UserImport,
        AuditAction::UserSetRole,
        AuditAction::UserUpdate,
    ];

    /// The name the action is stored (and filtered) under.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditAction::AccountClaim => "account_claim",
            AuditAction::ApiKeyCreate => "api_key_create",
            AuditAction::ApiKeyRevoke => "api_key_revoke",
            AuditAction::CodeSend => "code_send",
            AuditAction::CodeUse => "code_use",
            AuditAction::EmailVerify => "email_verify",
            AuditAction::FederatedLogin => "federated_login",
            AuditAction::IdentityLink => "identity_link",
            AuditAction::IdentityUnlink => "identity_unlink",
            AuditAction::Lockout => "lockout",
            AuditAction::LockoutLift => "lockout_lift",
            AuditAction::Login => "login",
            AuditAction::Logout => "logout",
            AuditAction::MailDelivery => "mail_delivery",
            AuditAction::MfaChallenge => "mfa_challenge",
            AuditAction::MfaReset => "mfa_reset",
            AuditAction::MfaStepUp => "mfa_step_up",
            AuditAction::MfaVerify => "mfa_verify",
            AuditAction::OrgCreate => "org.create",
            AuditAction::OrgDelete => "org.delete",
            AuditAction::OrgInvitationAccept => "org.invitation.accept",
            AuditAction::OrgInvite => "org.invite",
            AuditAction::OrgMemberCreate => "org.member.create",
            AuditAction::OrgMemberRemove => "org.member.remove",
            AuditAction::OrgMemberUpdate => "org.member.update",
            AuditAction::OrgRoleDefine => "org.role.define",
            AuditAction::OrgRoleDelete => "org.role.delete",
            AuditAction::OrgRoleUpdate => "org.role.update",
            AuditAction::OrgUpdate => "org.update",
            AuditAction::PasswordChange => "password_change",
            AuditAction::PasswordReset => "password_reset",
            AuditAction::PermissionDefine => "permission_define",
            AuditAction::PermissionDelete => "permission_delete",
            AuditAction::PermissionUpdate => "permission_update",
            AuditAction::PermissionsApply => "permissions_apply",
            AuditAction::RecoveryCodesRegenerate => "recovery_codes_regenerate",
            AuditAction::RefreshRetry => "refresh_retry",
            AuditAction::RefreshReuse => "refresh_reuse",
            AuditAction::Register => "register",
            AuditAction::ServiceAccountCreate => "service_account_create",
            AuditAction::ServiceAccountDelete => "service_account_delete",
            AuditAction::ServiceAccountDisable => "service_account_disable",
            AuditAction::SessionRevoke => "session_revoke",
            AuditAction::SessionsRevoke => "sessions_revoke",
            AuditAction::TotpDisable => "totp_disable",
            AuditAction::TotpEnroll => "totp_enroll",
            AuditAction::TotpEnrollmentStart => "totp_enrollment_start",
            AuditAction::UserDelete => "user.delete",
            AuditAction::UserDisable => "user.disable",
            AuditAction::UserEnable => "user.enable",
            AuditAction::UserImport => "user.import",
            AuditAction::UserSetRole => "user.set_role",
            AuditAction::UserUpdate => "user.update",
        }
    }

    /// The action stored under `name`, if keyward records one.
    pub fn from_name(name: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the audited attempt worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// Failed on the caller's input, e.g. a wrong password or code.
    Failure,
    /// Refused for lack of permission.
    Denied,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_are_unique_and_round_trip() {
        let names: std::collections::HashSet<&str> =
            AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), AuditAction::ALL.len());
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::from_name(a.as_str()), Some(a));
        }
        assert_eq!(AuditAction::Login.as_str(), "login");
        assert_eq!(
            AuditAction::OrgInvitationAccept.as_str(),
            "org.invitation.accept"
        );
        assert_eq!(AuditAction::UserSetRole.as_str(), "user.set_role");
    }
}
