//! Organizations, their members and invitations (OrgService), and the organization half of a
//! "hospital registration" (Register with an organization).
//!
//! What a caller may do in an organization follows from their own membership only (see
//! `domain::permissions`). Two rules hold for every change: nobody grants, changes or removes a
//! role above their own, and an organization never loses its last owner — the latter without
//! transactions, through the owner count kept in `orgs` (see `store::orgs` and `members.rs`).
//!
//! Every membership change drops the changed entry from the Authorize cache on this replica, so
//! Authorize sees it from the next call (other replicas within `session_cache_ttl`).
//!
//! - `lifecycle.rs`: create, read, change and delete an organization (and find it a slug);
//! - `registration.rs`: an account registered together with the organization it owns, and
//!   finishing registrations that died midway;
//! - `listings.rs`: the caller's organizations, an organization's members;
//! - `invitations.rs`: inviting by email, and accepting;
//! - `members.rs`: creating, changing and removing members, and the owner-count protocol.
//!
//! The rules that need no I/O (names, slugs, websites, invitation usability) are in
//! `domain::orgs`.

mod invitations;
mod lifecycle;
mod listings;
mod members;
mod registration;

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::App;
use crate::app::users::Account;
use crate::domain::orgs::{invitation_usable, InvitationState, InvitationUnusable};
use crate::domain::paging::Cursor;
use crate::domain::permissions::{may_set_org_role, GrantDenied, OrgRole, Permission};
use crate::domain::tokens::AccessClaims;
use crate::error::{Error, Result};
use crate::store::invitations::{InvitationDoc, InvitationStatus};
use crate::store::memberships::MembershipDoc;
use crate::store::orgs::OrgDoc;
use crate::store::users::UserDoc;

pub use crate::domain::orgs::{
    invitation_limit_key, INVITATION_LIFETIME, INVITATION_TOKEN_PREFIX, INVITES_PER_ORG_PER_HOUR,
};

const HOUR: Duration = Duration::from_secs(3600);

/// The fields of a new organization, as asked for.
#[derive(Debug, Clone, Default)]
pub struct NewOrg {
    pub name: String,
    /// Empty: derived from the name.
    pub slug: String,
    pub website: String,
}

/// An account created directly into an organization (CreateMember).
#[derive(Debug, Clone)]
pub struct NewMember {
    pub email: String,
    pub display_name: String,
    pub password: String,
    pub role: OrgRole,
    pub department: String,
}

/// An organization.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub name: String,
    /// URL-safe and unique; fixed once the organization exists.
    pub slug: String,
    pub website: String,
    /// Members must hold two-factor sessions for this organization's permission checks.
    pub require_mfa: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Someone's place in one organization.
#[derive(Debug, Clone)]
pub struct Membership {
    pub org_id: String,
    pub user_id: String,
    pub role: OrgRole,
    pub department: String,
    pub joined_at: DateTime<Utc>,
    /// The organization's custom role the member holds (`role` is then its base role).
    pub custom_role: Option<String>,
}

/// An invitation to join an organization (without its token: only its hash is stored).
#[derive(Debug, Clone)]
pub struct Invitation {
    pub id: String,
    pub org_id: String,
    /// Normalised.
    pub email: String,
    pub role: OrgRole,
    pub department: String,
    pub state: InvitationState,
    /// User id of the member who sent it.
    pub invited_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One member with their account.
#[derive(Debug, Clone)]
pub struct OrgMember {
    pub membership: Membership,
    pub user: Account,
}

/// One organization the caller belongs to, with the caller's membership.
#[derive(Debug, Clone)]
pub struct MyOrg {
    pub membership: Membership,
    pub org: Org,
}

// The one place stored organization documents become the app's types.

impl From<OrgDoc> for Org {
    fn from(d: OrgDoc) -> Self {
        Org {
            id: d.id,
            name: d.name,
            slug: d.slug,
            website: d.website,
            require_mfa: d.require_mfa,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

impl From<MembershipDoc> for Membership {
    fn from(d: MembershipDoc) -> Self {
        Membership {
            org_id: d.org_id,
            user_id: d.user_id,
            role: d.role,
            department: d.department,
            joined_at: d.joined_at,
            custom_role: d.custom_role,
        }
    }
}

impl From<InvitationDoc> for Invitation {
    fn from(d: InvitationDoc) -> Self {
        Invitation {
            id: d.id,
            org_id: d.org_id,
            email: d.email,
            role: d.role,
            department: d.department,
            state: match d.status {
                InvitationStatus::Pending => InvitationState::Pending,
                InvitationStatus::Accepted => InvitationState::Accepted,
                InvitationStatus::Revoked => InvitationState::Revoked,
            },
            invited_by: d.invited_by,
            created_at: d.created_at,
            expires_at: d.expires_at,
        }
    }
}

impl OrgMember {
    fn new(membership: MembershipDoc, user: UserDoc) -> Self {
        OrgMember {
            membership: membership.into(),
            user: user.into(),
        }
    }
}

impl Invitation {
    /// Fails with the reason this invitation cannot be accepted at `now`, if any.
    fn usable(&self, now: DateTime<Utc>) -> Result<()> {
        invitation_usable(self.state, self.expires_at, now).map_err(|why| match why {
            InvitationUnusable::Used => Error::InvitationUsed,
            InvitationUnusable::Revoked => Error::InvitationRevoked,
            InvitationUnusable::Expired => Error::InvitationExpired,
        })
    }
}

impl App {
    /// `require_in_org`, telling a missing organization from a refusal.
    async fn require_org(
        &self,
        who: &AccessClaims,
        org_id: &str,
        permission: Permission,
    ) -> Result<OrgRole> {
        let exists = async { Ok(self.store.orgs.exists(org_id).await?) };
        self.require_in_org(who, org_id, permission, exists).await
    }

    /// Takes back an account created moments ago by a call that then failed (it has no
    /// sessions and was never told about).
    async fn discard_account(&self, user_id: &str) {
        if let Err(e) = self.store.users.remove(user_id).await {
            tracing::error!(user_id, error = %e, "could not take back a half-created account");
        }
    }
}

/// The role-grant rule as errors.
fn grant(actor: OrgRole, current: Option<OrgRole>, new: Option<OrgRole>) -> Result<()> {
    may_set_org_role(actor, current, new).map_err(|denied| match denied {
        GrantDenied::NotAllowed => Error::PermissionDenied,
        GrantDenied::RoleTooHigh => Error::RoleTooHigh,
    })
}

/// `value` (an id) is required.
fn require_id(field: &str, value: &str) -> Result<()> {
    Ok(crate::domain::validation::require(field, value)?)
}

/// Where a membership listing stands after `m`: its join time, ties broken by `tie` (the
/// listing's other key).
fn joined_cursor(m: &MembershipDoc, tie: &str) -> Cursor {
    Cursor {
        at_millis: m.joined_at.timestamp_millis(),
        id: tie.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_invitations_keep_their_state_and_reasons() {
        let now = Utc::now();
        let mut doc = InvitationDoc {
            id: "i".into(),
            org_id: "o".into(),
            email: "a@example.com".into(),
            role: OrgRole::Member,
            department: String::new(),
            token_hash: "h".into(),
            status: InvitationStatus::Pending,
            invited_by: "u".into(),
            created_at: now,
            expires_at: now + chrono::Duration::hours(72),
            purge_at: now + chrono::Duration::days(30),
            accepted_by: None,
            accepted_at: None,
        };
        let usable = |doc: &InvitationDoc, at| Invitation::from(doc.clone()).usable(at);
        assert!(usable(&doc, now).is_ok());
        assert!(matches!(
            usable(&doc, now + chrono::Duration::hours(72)),
            Err(Error::InvitationExpired)
        ));
        doc.status = InvitationStatus::Accepted;
        assert!(matches!(usable(&doc, now), Err(Error::InvitationUsed)));
        doc.status = InvitationStatus::Revoked;
        assert!(matches!(usable(&doc, now), Err(Error::InvitationRevoked)));
    }
}
