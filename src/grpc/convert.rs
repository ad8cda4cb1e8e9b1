//! Domain and storage types -> protobuf messages.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::pb;
use crate::app::mfa::SignIn;
use crate::app::sessions::IssuedTokens;
use crate::app::sessions::Session;
use crate::app::users::{Account, AccountStatus};
use crate::domain::mfa::CHALLENGE_METHODS;
use crate::domain::roles::Role;
use crate::domain::tokens::AccessClaims;

pub fn timestamp(t: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

pub fn role(r: Role) -> pb::Role {
    match r {
        Role::Guest => pb::Role::Guest,
        Role::User => pb::Role::User,
        Role::Moderator => pb::Role::Moderator,
        Role::Admin => pb::Role::Admin,
        Role::SuperAdmin => pb::Role::SuperAdmin,
    }
}

pub fn user(u: &Account) -> pb::User {
    pb::User {
        id: u.id.clone(),
        email: u.email.clone(),
        display_name: u.display_name.clone(),
        role: role(u.role) as i32,
        status: match u.status {
            AccountStatus::Active => pb::UserStatus::Active,
            AccountStatus::Disabled => pb::UserStatus::Disabled,
            AccountStatus::Deleted => pb::UserStatus::Deleted,
        } as i32,
        email_verified: u.email_verified,
        created_at: timestamp(u.created_at),
        updated_at: timestamp(u.updated_at),
        last_login_at: u.last_login_at.and_then(timestamp),
    }
}

pub fn token_pair(t: IssuedTokens, now: DateTime<Utc>) -> pb::TokenPair {
    pb::TokenPair {
        expires_in: seconds((t.access_token_expires_at - now).num_seconds()),
        access_token_expires_at: timestamp(t.access_token_expires_at),
        refresh_token_expires_at: timestamp(t.session.expires_at),
        session_id: t.session.id.clone(),
        user: Some(user(&t.user)),
        token_type: "Bearer".into(),
        access_token: t.access_token,
        refresh_token: t.refresh_token,
    }
}

/// A duration in whole seconds as the API's `int32` (a JSON number): negative becomes 0, and
/// anything beyond `i32::MAX` (68 years) saturates.
pub fn seconds(s: i64) -> i32 {
    i32::try_from(s.max(0)).unwrap_or(i32::MAX)
}

/// An identity linked to an account.
pub fn linked_identity(i: &crate::app::federation::LinkedIdentity) -> pb::LinkedIdentity {
    pb::LinkedIdentity {
        provider: i.provider.clone(),
        subject: i.subject.clone(),
        email: i.email.clone(),
        linked_at: timestamp(i.linked_at),
        last_used_at: i.last_used_at.and_then(timestamp),
    }
}

/// The two fields every sign-in response (Login, LoginWithCode, FinishFederatedLogin) answers
/// with: exactly one is set.
pub struct SignInAnswer {
    pub tokens: Option<pb::TokenPair>,
    pub mfa_challenge: Option<pb::MfaChallenge>,
}

/// A sign-in's answer: tokens, or only the challenge of the second step.
pub fn sign_in(s: SignIn, now: DateTime<Utc>) -> SignInAnswer {
    match s {
        SignIn::Tokens(issued) => SignInAnswer {
            tokens: Some(token_pair(*issued, now)),
            mfa_challenge: None,
        },
        SignIn::SecondFactor(c) => SignInAnswer {
            tokens: None,
            mfa_challenge: Some(pb::MfaChallenge {
                challenge: c.challenge,
                expires_at: timestamp(c.expires_at),
                methods: CHALLENGE_METHODS.iter().map(|m| m.to_string()).collect(),
            }),
        },
    }
}

/// The caller of a verified token, with their current global role and email (either may have
/// changed since the token was issued).
pub fn principal(c: &AccessClaims, now: &crate::app::authorization::Standing) -> pb::Principal {
    pb::Principal {
        user_id: c.user_id.clone(),
        session_id: c.session_id.clone(),
        email: now.email.to_string(),
        role: role(now.role) as i32,
        expires_at: timestamp(c.expires_at),
        amr: c.amr.clone(),
        aal: i32::from(c.aal()),
        auth_time: timestamp(c.auth_time),
        kind: if c.service_account.is_some() {
            "service_account"
        } else {
            "user"
        }
        .into(),
    }
}

pub fn session(s: &Session, current_session_id: &str) -> pb::Session {
    pb::Session {
        id: s.id.clone(),
        user_agent: s.user_agent.clone(),
        client_address: s.client_address.clone(),
        created_at: timestamp(s.created_at),
        last_used_at: timestamp(s.last_used_at),
        expires_at: timestamp(s.expires_at),
        current: s.id == current_session_id,
    }
}

pub fn org_role(r: crate::domain::permissions::OrgRole) -> pb::OrgRole {
    use crate::domain::permissions::OrgRole;
    match r {
        OrgRole::Member => pb::OrgRole::Member,
        OrgRole::Admin => pb::OrgRole::Admin,
        OrgRole::Owner => pb::OrgRole::Owner,
    }
}

pub fn organization(o: &crate::app::orgs::Org) -> pb::Organization {
    pb::Organization {
        id: o.id.clone(),
        name: o.name.clone(),
        slug: o.slug.clone(),
        website: o.website.clone(),
        created_at: timestamp(o.created_at),
        updated_at: timestamp(o.updated_at),
        require_mfa: o.require_mfa,
    }
}

pub fn member(m: &crate::app::orgs::OrgMember) -> pb::Member {
    pb::Member {
        org_id: m.membership.org_id.clone(),
        user: Some(user(&m.user)),
        role: org_role(m.membership.role) as i32,
        department: m.membership.department.clone(),
        joined_at: timestamp(m.membership.joined_at),
        custom_role: m.membership.custom_role.clone().unwrap_or_default(),
    }
}

pub fn org_membership(m: &crate::app::orgs::MyOrg) -> pb::OrgMembership {
    pb::OrgMembership {
        organization: Some(organization(&m.org)),
        role: org_role(m.membership.role) as i32,
        department: m.membership.department.clone(),
        joined_at: timestamp(m.membership.joined_at),
        custom_role: m.membership.custom_role.clone().unwrap_or_default(),
    }
}

pub fn org_custom_role(r: &crate::app::org_roles::OrgCustomRole) -> pb::OrgCustomRole {
    pb::OrgCustomRole {
        org_id: r.org_id.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        base_role: org_role(r.base_role) as i32,
        permissions: r.permissions.clone(),
        created_at: timestamp(r.created_at),
        updated_at: timestamp(r.updated_at),
    }
}

/// An invitation, without its token (only its hash is stored anyway).
pub fn invitation(i: &crate::app::orgs::Invitation) -> pb::Invitation {
    pb::Invitation {
        id: i.id.clone(),
        org_id: i.org_id.clone(),
        email: i.email.clone(),
        role: org_role(i.role) as i32,
        department: i.department.clone(),
        expires_at: timestamp(i.expires_at),
        created_at: timestamp(i.created_at),
        invited_by: i.invited_by.clone(),
    }
}
