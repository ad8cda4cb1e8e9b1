//! Organizations, their members and invitations (OrgService), and the organization half of a
//! "hospital registration" (Register with an organization).
//!
//! What a caller may do in an organization follows from their own membership only (see
//! `domain::permissions`). Two rules hold for every change: nobody grants, changes or removes a
//! role above their own, and an organization never loses its last owner — the latter without
//! transactions, through the owner count kept in `orgs` (see `store::orgs`).
//!
//! Every membership change drops the changed entry from the Authorize cache on this replica, so
//! Authorize sees it from the next call (other replicas within `session_cache_ttl`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use unicode_normalization::UnicodeNormalization;

use super::accounts::{new_account, NewAccount, MAX_DISPLAY_NAME};
use super::{page_of, page_request, App, AuditRecord, Caller, Page};
use crate::domain::lockout::window;
use crate::domain::paging::Cursor;
use crate::domain::password;
use crate::domain::permissions::{may_set_org_role, GrantDenied, OrgRole};
use crate::domain::roles::Role;
use crate::domain::secrets::{hash_token, new_id};
use crate::domain::{email, tokens::AccessClaims};
use crate::error::{Error, FieldViolation, Result};
use crate::store::audit_events::Outcome;
use crate::store::invitations::{InvitationDoc, InvitationStatus, KEEP_AFTER_EXPIRY};
use crate::store::memberships::{CustomRoleRef, MembershipChange, MembershipDoc};
use crate::store::orgs::OrgDoc;
use crate::store::users::UserDoc;

/// How long an invitation can be accepted.
pub const INVITATION_LIFETIME: Duration = Duration::from_secs(72 * 3600);
/// Invitations one organization may send per hour (a guard against mail abuse).
pub const INVITES_PER_ORG_PER_HOUR: u32 = 100;
/// Prefix that makes invitation tokens recognisable to secret scanners.
pub const INVITATION_TOKEN_PREFIX: &str = "kwi_";
pub const MAX_ORG_NAME: usize = 200;
pub const MAX_SLUG: usize = 63;
pub const MAX_WEBSITE: usize = 2048;
pub const MAX_DEPARTMENT: usize = 100;
/// Re-reads of a membership that changed between our read and our conditional write.
const CONTENDED_RETRIES: usize = 8;
/// Numbered slugs tried (`st-marys-2`, `-3`, …) before a random suffix.
const SLUG_ATTEMPTS: usize = 8;
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

/// One member with their account.
#[derive(Debug, Clone)]
pub struct OrgMember {
    pub membership: MembershipDoc,
    pub user: UserDoc,
}

/// One organization the caller belongs to, with the caller's membership.
#[derive(Debug, Clone)]
pub struct MyOrg {
    pub membership: MembershipDoc,
    pub org: OrgDoc,
}

/// A validated organization: trimmed name and website, and the slug if one was asked for.
struct OrgFields {
    name: String,
    slug: Option<String>,
    website: String,
}

impl App {
    /// Creates an organization owned by the caller.
    pub async fn create_org(
        &self,
        who: &AccessClaims,
        new: NewOrg,
        caller: &Caller,
    ) -> Result<OrgDoc> {
        self.require(who, "orgs.create").await?;
        let fields = org_fields(&new, "").map_err(Error::InvalidArgument)?;
        let now = self.now();
        let org = self.insert_org(fields, now, None).await?;
        let owner = MembershipDoc::new(&org.id, &who.user_id, OrgRole::Owner, "", now);
        if let Err(e) = self.store.memberships.insert(&owner).await {
            // The organization is unreachable without its owner: take it back.
            let _ = self.store.orgs.delete(&org.id).await;
            return Err(e.into());
        }
        self.forget_membership(&org.id, &who.user_id);
        self.audit(
            AuditRecord::new("org.create", Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", &org.id)
                .detail("slug", &org.slug),
        )
        .await;
        Ok(org)
    }

    /// Creates an account and an organization it owns, in one call (Register with
    /// `organization`).
    ///
    /// No transactions, so the order decides what a failure can leave behind: the organization
    /// is stored first (its slug decides SLUG_TAKEN before any account exists), then the
    /// account, then the owner membership, and a failure takes back what was stored before it.
    /// Until its owner membership exists the organization is unreachable (nobody is a member),
    /// so nobody sees the half state; the verification mail goes out only once all three exist.
    pub async fn register_with_org(
        &self,
        account: NewAccount,
        new_org: NewOrg,
        caller: &Caller,
    ) -> Result<(UserDoc, OrgDoc)> {
        self.throttle_address(
            caller,
            "register",
            self.config.registrations_per_address_per_hour,
            HOUR,
        )
        .await?;
        let mut violations = Vec::new();
        let email = email::normalize(&account.email)
            .map_err(|why| violations.push(FieldViolation::new("email", why)))
            .unwrap_or_default();
        let display_name = account.display_name.trim().to_string();
        check_text(
            "display_name",
            &display_name,
            MAX_DISPLAY_NAME,
            &mut violations,
        );
        violations.extend(self.password_policy.check(
            "password",
            &account.password,
            &[&email, &display_name, new_org.name.trim()],
        ));
        let fields = org_fields(&new_org, "organization.").map_err(|v| violations.extend(v));
        let fields = match fields {
            Ok(fields) if violations.is_empty() => fields,
            _ => return Err(Error::InvalidArgument(violations)),
        };
        // Cheap early answer; the unique index still decides a race below.
        if self.store.users.find_by_email(&email).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        let plain = account.password;
        let hash = self.hasher.run(move || password::hash(&plain)).await??;

        let now = self.now();
        // Written so that a process dying between these writes (or the request timing out) leaves
        // something `finish_interrupted_registrations` can finish or take back: the
        // organization first, naming its owner-to-be; then the account, naming its organization;
        // then the membership; then both marks go.
        let mut user = new_account(email, display_name, hash, Role::User, false, now);
        let org = self.insert_org(fields, now, Some(&user.id)).await?;
        user.pending_org = Some(org.id.clone());
        let user = match self.insert_user(user, caller).await {
            Ok(user) => user,
            Err(e) => {
                self.discard_org(&org.id).await;
                return Err(e);
            }
        };
        let owner = MembershipDoc::new(&org.id, &user.id, OrgRole::Owner, "", now);
        if let Err(e) = self.store.memberships.insert(&owner).await {
            self.discard_org(&org.id).await;
            self.discard_account(&user.id).await;
            return Err(e.into());
        }
        self.forget_membership(&org.id, &user.id);
        self.finish_registration(&org.id, &user.id).await?;
        self.audit(
            AuditRecord::new("org.create", Outcome::Success, caller)
                .user(&user.id)
                .detail("org_id", &org.id)
                .detail("slug", &org.slug)
                .detail("with_registration", true),
        )
        .await;
        self.send_verification_after_register(&user, caller).await;
        Ok((user, org))
    }

    /// One organization and the caller's role in it.
    pub async fn get_org(&self, who: &AccessClaims, org_id: &str) -> Result<(OrgDoc, OrgRole)> {
        require_id("org_id", org_id)?;
        let role = self.require_org(who, org_id, "org.read").await?;
        let org = self
            .store
            .orgs
            .find(org_id)
            .await?
            .ok_or(Error::OrgNotFound)?;
        Ok((org, role))
    }

    /// Changes the name and/or website (`Some("")` clears the website).
    pub async fn update_org(
        &self,
        who: &AccessClaims,
        org_id: &str,
        name: Option<String>,
        website: Option<String>,
        require_mfa: Option<bool>,
        caller: &Caller,
    ) -> Result<OrgDoc> {
        require_id("org_id", org_id)?;
        let role = self.require_org(who, org_id, "org.write").await?;
        // Who must prove a second factor is the owners' decision.
        if require_mfa.is_some() && role != OrgRole::Owner {
            return Err(Error::PermissionDenied);
        }
        let mut violations = Vec::new();
        let name = name.map(|n| n.trim().to_string());
        if let Some(name) = &name {
            check_name("name", name, &mut violations);
        }
        let website = website.map(|w| w.trim().to_string());
        if let Some(website) = &website {
            check_website("website", website, &mut violations);
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let org = self
            .store
            .orgs
            .update(
                org_id,
                name.as_deref(),
                website.as_deref(),
                require_mfa,
                self.now(),
            )
            .await?
            .ok_or(Error::OrgNotFound)?;
        if require_mfa.is_some() {
            self.forget_org_policy(org_id);
        }
        self.audit(
            AuditRecord::new("org.update", Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("name_changed", name.is_some())
                .detail("website_changed", website.is_some())
                .detail("require_mfa", require_mfa),
        )
        .await;
        Ok(org)
    }

    /// Deletes an organization with its memberships and invitations; accounts stay.
    ///
    /// The organization document goes first: from then on nobody can join (joining checks the
    /// organization again after writing the membership and takes it back if it is gone), and
    /// the memberships left are removed next. A retry after a call that failed between the two
    /// (the caller still an owner of a deleted organization) finishes the clean-up, then answers
    /// ORG_NOT_FOUND.
    pub async fn delete_org(
        &self,
        who: &AccessClaims,
        org_id: &str,
        caller: &Caller,
    ) -> Result<()> {
        require_id("org_id", org_id)?;
        self.require_org(who, org_id, "org.delete").await?;
        let deleted = self.store.orgs.delete(org_id).await?;
        let members = self.store.memberships.remove_all_for_org(org_id).await?;
        let invitations = self.store.invitations.remove_all_for_org(org_id).await?;
        // Its service accounts and their keys go with it.
        let service_accounts = self.remove_org_service_accounts(org_id).await?;
        let roles = self.remove_org_roles(org_id).await?;
        self.forget_all_memberships();
        if !deleted {
            return Err(Error::OrgNotFound);
        }
        self.audit(
            AuditRecord::new("org.delete", Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("memberships_removed", members as i64)
                .detail("invitations_removed", invitations as i64)
                .detail("service_accounts_removed", service_accounts as i64)
                .detail("custom_roles_removed", roles as i64),
        )
        .await;
        Ok(())
    }

    /// The caller's organizations, oldest membership first.
    pub async fn list_my_orgs(
        &self,
        who: &AccessClaims,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<MyOrg>> {
        self.acting(who).await?;
        let filters = format!("my_orgs;user={}", who.user_id);
        let (size, after) = page_request(page_size, page_token, &filters)?;
        let memberships = self
            .store
            .memberships
            .list_by_user(&who.user_id, after.as_ref(), size + 1)
            .await?;
        let Page {
            items: memberships,
            next_page_token,
        } = page_of(memberships, size, &filters, |m| joined_cursor(m, &m.org_id));
        let ids: Vec<String> = memberships.iter().map(|m| m.org_id.clone()).collect();
        let mut orgs: HashMap<String, OrgDoc> = self
            .store
            .orgs
            .find_many(&ids)
            .await?
            .into_iter()
            .map(|o| (o.id.clone(), o))
            .collect();
        // A membership whose organization is being deleted is skipped.
        let items = memberships
            .into_iter()
            .filter_map(|m| {
                orgs.remove(&m.org_id)
                    .map(|org| MyOrg { membership: m, org })
            })
            .collect();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The members of an organization, oldest membership first, optionally with one role only.
    pub async fn list_members(
        &self,
        who: &AccessClaims,
        org_id: &str,
        role: Option<OrgRole>,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<OrgMember>> {
        require_id("org_id", org_id)?;
        self.require_org(who, org_id, "org.members.read").await?;
        let filters = format!(
            "members;org={org_id};role={}",
            role.map_or("", OrgRole::as_str)
        );
        let (size, after) = page_request(page_size, page_token, &filters)?;
        let memberships = self
            .store
            .memberships
            .list_by_org(org_id, role, after.as_ref(), size + 1)
            .await?;
        let Page {
            items: memberships,
            next_page_token,
        } = page_of(memberships, size, &filters, |m| {
            joined_cursor(m, &m.user_id)
        });
        let ids: Vec<String> = memberships.iter().map(|m| m.user_id.clone()).collect();
        let mut users = self.users_by_id(&ids).await?;
        let items = memberships
            .into_iter()
            .filter_map(|m| {
                users.remove(&m.user_id).map(|user| OrgMember {
                    membership: m,
                    user,
                })
            })
            .collect();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Emails an invitation to join `org_id` with `role`. A newer invitation to the same email
    /// revokes the pending one.
    pub async fn invite_member(
        &self,
        who: &AccessClaims,
        org_id: &str,
        raw_email: &str,
        role: OrgRole,
        department: &str,
        caller: &Caller,
    ) -> Result<InvitationDoc> {
        require_id("org_id", org_id)?;
        let actor = self.require_org(who, org_id, "org.members.write").await?;
        grant(actor, None, Some(role))?;
        let mut violations = Vec::new();
        let email = email::normalize(raw_email)
            .map_err(|why| violations.push(FieldViolation::new("email", why)))
            .unwrap_or_default();
        let department = department.trim().to_string();
        check_text("department", &department, MAX_DEPARTMENT, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let org = self
            .store
            .orgs
            .find(org_id)
            .await?
            .ok_or(Error::OrgNotFound)?;
        if let Some(invitee) = self.store.users.find_by_email(&email).await? {
            if self
                .store
                .memberships
                .find(org_id, &invitee.id)
                .await?
                .is_some()
            {
                return Err(Error::AlreadyMember);
            }
        }
        self.throttle_invitations(org_id).await?;

        let now = self.now();
        let token = new_invitation_token();
        let expires_at = now + chrono::Duration::from_std(INVITATION_LIFETIME).unwrap_or_default();
        let invitation = InvitationDoc {
            id: new_id(),
            org_id: org_id.to_string(),
            email: email.clone(),
            role,
            department,
            token_hash: hash_token(&token),
            status: InvitationStatus::Pending,
            invited_by: who.user_id.clone(),
            created_at: now,
            expires_at,
            purge_at: expires_at
                + chrono::Duration::from_std(KEEP_AFTER_EXPIRY).unwrap_or_default(),
            accepted_by: None,
            accepted_at: None,
        };
        self.store.invitations.insert(&invitation).await?;
        let inviter_name = match self.store.users.find_by_id(&who.user_id).await? {
            Some(u) if !u.display_name.is_empty() => u.display_name,
            _ => who.email.clone(),
        };
        let context = minijinja::context! {
            email => email,
            org_name => org.name,
            role => role.as_str(),
            inviter_name => inviter_name,
            invitation_token => token,
            expires_in_hours => INVITATION_LIFETIME.as_secs() / 3600,
        };
        self.queue_mail("org_invitation", &email, "", context)
            .await?;
        // Only once the new invitation is on its way does the older one stop working.
        let revoked = self.store.invitations.revoke_older(&invitation).await?;
        self.audit(
            AuditRecord::new("org.invite", Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("invitation_id", &invitation.id)
                .detail("invitee_email", &email)
                .detail("role", role.as_str())
                .detail("revoked_pending", revoked as i64),
        )
        .await;
        Ok(invitation)
    }

    /// Joins the organization of the invitation `token` names, as the signed-in invitee.
    pub async fn accept_invitation(
        &self,
        who: &AccessClaims,
        token: &str,
        caller: &Caller,
    ) -> Result<(OrgDoc, OrgMember)> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::invalid("token", "is required"));
        }
        self.acting(who).await?;
        let now = self.now();
        let invitation = self
            .store
            .invitations
            .find_by_token_hash(&hash_token(token))
            .await?
            .ok_or(Error::InvitationNotFound)?;
        let org = self
            .store
            .orgs
            .find(&invitation.org_id)
            .await?
            .ok_or(Error::InvitationNotFound)?;
        invitation_usable(&invitation, now)?;
        // An invitation is only as good as its inviter's standing today: one sent by an admin
        // who has since been demoted or removed, or whose account was disabled or deleted, no
        // longer works.
        let inviter = self
            .store
            .memberships
            .find(&org.id, &invitation.invited_by)
            .await?;
        if !inviter.is_some_and(|m| grant(m.role, None, Some(invitation.role)).is_ok()) {
            return Err(Error::InvitationRevoked);
        }
        if !self
            .standing(&invitation.invited_by)
            .await?
            .is_some_and(|s| s.active)
        {
            return Err(Error::InvitationRevoked);
        }
        let user = self.me(who).await?;
        if user.email != invitation.email || !user.email_verified {
            self.audit(
                AuditRecord::new("org.invitation.accept", Outcome::Denied, caller)
                    .user(&user.id)
                    .session(&who.session_id)
                    .detail("org_id", &org.id)
                    .detail("invitation_id", &invitation.id)
                    .detail("reason", "email_mismatch"),
            )
            .await;
            return Err(Error::InvitationEmailMismatch);
        }
        if self
            .store
            .memberships
            .find(&org.id, &user.id)
            .await?
            .is_some()
        {
            return Err(Error::AlreadyMember);
        }
        let Some(invitation) = self
            .store
            .invitations
            .accept(&invitation.id, &user.id, now)
            .await?
        else {
            // Someone else used it (or it expired) between our read and our update.
            let seen = self
                .store
                .invitations
                .find_by_token_hash(&hash_token(token))
                .await?
                .ok_or(Error::InvitationNotFound)?;
            invitation_usable(&seen, now)?;
            return Err(Error::InvitationUsed);
        };
        let membership = MembershipDoc::new(
            &org.id,
            &user.id,
            invitation.role,
            &invitation.department,
            now,
        );
        let inserted = self.store.memberships.insert(&membership).await;
        if !matches!(inserted, Ok(true)) {
            // Joined by another path meanwhile, or the write failed: give the invitation back so
            // it is not used up by a join that did not happen.
            self.store
                .invitations
                .unaccept(&invitation.id, &user.id)
                .await?;
            inserted?;
            return Err(Error::AlreadyMember);
        }
        if let Err(e) = self.joined(&membership).await {
            let _ = self
                .store
                .memberships
                .remove(&org.id, &user.id, membership.role)
                .await;
            let _ = self
                .store
                .invitations
                .unaccept(&invitation.id, &user.id)
                .await;
            return Err(e);
        }
        if !self.store.orgs.exists(&org.id).await? {
            self.store
                .memberships
                .remove(&org.id, &user.id, membership.role)
                .await?;
            self.forget_membership(&org.id, &user.id);
            return Err(Error::InvitationNotFound);
        }
        self.audit(
            AuditRecord::new("org.invitation.accept", Outcome::Success, caller)
                .user(&user.id)
                .actor(&user.id)
                .session(&who.session_id)
                .detail("org_id", &org.id)
                .detail("invitation_id", &invitation.id)
                .detail("role", invitation.role.as_str()),
        )
        .await;
        Ok((org, OrgMember { membership, user }))
    }

    /// Creates an account (global role user, unverified) straight into an organization, and
    /// sends it the verification code: the seed's hospital creating an assistant.
    pub async fn create_member(
        &self,
        who: &AccessClaims,
        org_id: &str,
        new: NewMember,
        caller: &Caller,
    ) -> Result<OrgMember> {
        require_id("org_id", org_id)?;
        let actor = self.require_org(who, org_id, "org.members.write").await?;
        grant(actor, None, Some(new.role))?;
        let mut violations = Vec::new();
        let email = email::normalize(&new.email)
            .map_err(|why| violations.push(FieldViolation::new("email", why)))
            .unwrap_or_default();
        let display_name = new.display_name.trim().to_string();
        check_text(
            "display_name",
            &display_name,
            MAX_DISPLAY_NAME,
            &mut violations,
        );
        let department = new.department.trim().to_string();
        check_text("department", &department, MAX_DEPARTMENT, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        // It mails a stranger and answers EMAIL_TAKEN: limited like Register per client address,
        // and with invitations per organization.
        self.throttle_address(
            caller,
            "register",
            self.config.registrations_per_address_per_hour,
            HOUR,
        )
        .await?;
        self.throttle_invitations(org_id).await?;
        // The guessability check costs real CPU: only after the throttles.
        let violations =
            self.password_policy
                .check("password", &new.password, &[&email, &display_name]);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        if self.store.users.find_by_email(&email).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        let plain = new.password;
        let hash = self.hasher.run(move || password::hash(&plain)).await??;
        let user = self
            .insert_account(email, display_name, hash, Role::User, false, caller)
            .await?;
        let membership = MembershipDoc::new(org_id, &user.id, new.role, &department, self.now());
        let joined = match self.store.memberships.insert(&membership).await {
            Ok(_) => self.joined(&membership).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = joined {
            let _ = self
                .store
                .memberships
                .remove(org_id, &user.id, membership.role)
                .await;
            self.discard_account(&user.id).await;
            return Err(e);
        }
        if !self.store.orgs.exists(org_id).await.unwrap_or(false) {
            // Deleted while we worked: nothing of this call may stay.
            let _ = self
                .store
                .memberships
                .remove(org_id, &user.id, membership.role)
                .await;
            self.forget_membership(org_id, &user.id);
            self.discard_account(&user.id).await;
            return Err(Error::OrgNotFound);
        }
        self.audit(
            AuditRecord::new("org.member.create", Outcome::Success, caller)
                .user(&user.id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("role", new.role.as_str()),
        )
        .await;
        self.send_verification_after_register(&user, caller).await;
        Ok(OrgMember { membership, user })
    }

    /// Changes a member's role, custom role (`Some("")`: none; see `app::org_roles`) and/or
    /// department.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_member(
        &self,
        who: &AccessClaims,
        org_id: &str,
        user_id: &str,
        role: Option<OrgRole>,
        custom_role: Option<String>,
        department: Option<String>,
        caller: &Caller,
    ) -> Result<OrgMember> {
        require_id("org_id", org_id)?;
        require_id("user_id", user_id)?;
        let actor = self.require_org(who, org_id, "org.members.write").await?;
        let department = department.map(|d| d.trim().to_string());
        if let Some(d) = &department {
            let mut violations = Vec::new();
            check_text("department", d, MAX_DEPARTMENT, &mut violations);
            if !violations.is_empty() {
                return Err(Error::InvalidArgument(violations));
            }
        }
        let (before, after) = self
            .contended(|| async {
                let current = self
                    .store
                    .memberships
                    .find(org_id, user_id)
                    .await?
                    .ok_or(Error::MemberNotFound)?;
                let change = self
                    .resolve_role_change(who, actor, &current, role, custom_role.as_deref())
                    .await?;
                let new_role = change.role.unwrap_or(current.role);
                grant(actor, Some(current.role), Some(new_role))?;
                let changed = self
                    .change_membership(
                        &current,
                        MembershipChange {
                            role: change.role,
                            department: department.as_deref(),
                            custom_role: change
                                .custom_role
                                .as_ref()
                                .map(|c| c.as_ref().map(|(name, id)| CustomRoleRef { name, id })),
                        },
                    )
                    .await?;
                Ok(changed.map(|m| (current, m)))
            })
            .await?;
        self.forget_membership(org_id, user_id);
        self.audit(
            AuditRecord::new("org.member.update", Outcome::Success, caller)
                .user(user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("role_before", before.role.as_str())
                .detail("role_after", after.role.as_str())
                .detail(
                    "custom_role_before",
                    before.custom_role.clone().unwrap_or_default(),
                )
                .detail(
                    "custom_role_after",
                    after.custom_role.clone().unwrap_or_default(),
                )
                .detail("department_changed", department.is_some()),
        )
        .await;
        let user = self
            .store
            .users
            .find_by_id(user_id)
            .await?
            .ok_or(Error::MemberNotFound)?;
        Ok(OrgMember {
            membership: after,
            user,
        })
    }

    /// Removes a member; a member may remove themself (leave), an admin anyone up to their own
    /// role. The last owner can do neither.
    pub async fn remove_member(
        &self,
        who: &AccessClaims,
        org_id: &str,
        user_id: &str,
        caller: &Caller,
    ) -> Result<()> {
        require_id("org_id", org_id)?;
        require_id("user_id", user_id)?;
        let leaving = user_id == who.user_id;
        let actor = if leaving {
            None
        } else {
            Some(self.require_org(who, org_id, "org.members.write").await?)
        };
        if leaving {
            self.require_org(who, org_id, "org.read").await?;
        }
        let removed = self
            .contended(|| async {
                let current = self
                    .store
                    .memberships
                    .find(org_id, user_id)
                    .await?
                    .ok_or(Error::MemberNotFound)?;
                if let Some(actor) = actor {
                    grant(actor, Some(current.role), None)?;
                }
                let gone = if current.role == OrgRole::Owner {
                    if !self.store.orgs.take_owner(org_id).await? {
                        return Err(Error::LastOwner);
                    }
                    let gone = self
                        .store
                        .memberships
                        .remove(org_id, user_id, OrgRole::Owner)
                        .await;
                    // Give the count back only when the removal certainly did not happen; after
                    // an error it may have, and a count below the owners is the safe side.
                    if matches!(gone, Ok(false)) {
                        self.store.orgs.add_owner(org_id).await?;
                    }
                    gone?
                } else {
                    self.store
                        .memberships
                        .remove(org_id, user_id, current.role)
                        .await?
                };
                Ok(gone.then_some(current.role))
            })
            .await?;
        self.forget_membership(org_id, user_id);
        self.audit(
            AuditRecord::new("org.member.remove", Outcome::Success, caller)
                .user(user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("role", removed.as_str())
                .detail("left", leaving),
        )
        .await;
        Ok(())
    }

    /// Writes a role, custom role and/or department change to a membership still in the state
    /// `current` shows, keeping the owner count right; `None` when the membership changed
    /// meanwhile.
    async fn change_membership(
        &self,
        current: &MembershipDoc,
        change: MembershipChange<'_>,
    ) -> Result<Option<MembershipDoc>> {
        let memberships = &self.store.memberships;
        let orgs = &self.store.orgs;
        let (org_id, user_id) = (current.org_id.as_str(), current.user_id.as_str());
        let role = change.role.filter(|r| *r != current.role);
        let change = MembershipChange { role, ..change };
        match role {
            // Losing an owner: count first, so two owners demoting each other cannot both pass.
            Some(_) if current.role == OrgRole::Owner => {
                if !orgs.take_owner(org_id).await? {
                    return Err(Error::LastOwner);
                }
                let changed = memberships
                    .update(org_id, user_id, OrgRole::Owner, change)
                    .await;
                // As in `remove_member`: give the count back only when nothing was written.
                if matches!(changed, Ok(None)) {
                    orgs.add_owner(org_id).await?;
                }
                Ok(changed?)
            }
            // Gaining an owner: membership first, so the count is never ahead of the owners.
            Some(OrgRole::Owner) => {
                let changed = memberships
                    .update(org_id, user_id, current.role, change)
                    .await?;
                if changed.is_some() {
                    orgs.add_owner(org_id).await?;
                }
                Ok(changed)
            }
            _ => Ok(memberships
                .update(org_id, user_id, current.role, change)
                .await?),
        }
    }

    /// Runs `attempt` until it returns `Some` (it returns `None` when a membership changed
    /// between its read and its conditional write).
    async fn contended<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        for _ in 0..CONTENDED_RETRIES {
            if let Some(done) = attempt().await? {
                return Ok(done);
            }
        }
        Err(Error::Internal(anyhow::anyhow!(
            "membership kept changing under concurrent updates"
        )))
    }

    /// After a membership was written: counts a new owner, and drops the cached "not a
    /// member" answer Authorize may hold.
    async fn joined(&self, membership: &MembershipDoc) -> Result<()> {
        self.forget_membership(&membership.org_id, &membership.user_id);
        if membership.role == OrgRole::Owner {
            self.store.orgs.add_owner(&membership.org_id).await?;
        }
        Ok(())
    }

    /// `require_in_org`, telling a missing organization from a refusal.
    async fn require_org(
        &self,
        who: &AccessClaims,
        org_id: &str,
        permission: &str,
    ) -> Result<OrgRole> {
        let exists = async { Ok(self.store.orgs.exists(org_id).await?) };
        self.require_in_org(who, org_id, permission, exists).await
    }

    /// Stores a new organization with one owner counted, finding a free slug when none was
    /// asked for: the name's slug, then `-2`, `-3`, …, then a random suffix.
    async fn insert_org(
        &self,
        fields: OrgFields,
        now: chrono::DateTime<chrono::Utc>,
        pending_owner: Option<&str>,
    ) -> Result<OrgDoc> {
        let mut org = OrgDoc {
            pending_owner: pending_owner.map(str::to_string),
            id: new_id(),
            name: fields.name,
            slug: String::new(),
            website: fields.website,
            owner_count: 1,
            require_mfa: false,
            created_at: now,
            updated_at: now,
        };
        if let Some(slug) = fields.slug {
            org.slug = slug;
            return match self.store.orgs.insert(&org).await? {
                true => Ok(org),
                false => Err(Error::SlugTaken),
            };
        }
        let base = derive_slug(&org.name);
        let mut taken: HashSet<String> = self
            .store
            .orgs
            .slugs_like(&base)
            .await?
            .into_iter()
            .collect();
        let mut n = 1;
        for _ in 0..SLUG_ATTEMPTS {
            while taken.contains(&numbered_slug(&base, n)) {
                n += 1;
            }
            org.slug = numbered_slug(&base, n);
            if self.store.orgs.insert(&org).await? {
                return Ok(org);
            }
            taken.insert(org.slug.clone());
        }
        // Many organizations of this name created at this very moment: stop counting.
        loop {
            org.slug = random_slug(&base);
            if self.store.orgs.insert(&org).await? {
                return Ok(org);
            }
        }
    }

    /// Takes back an organization created moments ago by a call that then failed.
    /// Marks a registration with an organization finished (both documents complete).
    async fn finish_registration(&self, org_id: &str, user_id: &str) -> Result<()> {
        self.store.orgs.clear_pending_owner(org_id).await?;
        self.store.users.clear_pending_org(user_id).await?;
        Ok(())
    }

    /// Finishes or takes back registrations with an organization that died midway (the process
    /// was killed, or the request timed out, between their writes), so that each ends as the
    /// account and the organization it owns, or neither:
    /// - an account that names its organization gets its owner membership (the organization was
    ///   written first, so it exists), and both marks go;
    /// - an organization whose owner-to-be never got an account is deleted, once it is older
    ///   than any request can live (`request_timeout`), so a registration still in flight is
    ///   never taken from under it.
    ///
    /// Every step is idempotent, so replicas may run this at the same time. Returns how many
    /// registrations it settled.
    pub async fn finish_interrupted_registrations(&self) -> Result<usize> {
        const BATCH: i64 = 100;
        let mut settled = 0;
        for user in self.store.users.with_pending_org(BATCH).await? {
            let Some(org_id) = user.pending_org.as_deref() else {
                continue;
            };
            if let Some(org) = self.store.orgs.find(org_id).await? {
                let owner =
                    MembershipDoc::new(org_id, &user.id, OrgRole::Owner, "", org.created_at);
                // `false`: it exists already (a duplicate), which is as good.
                self.store.memberships.insert(&owner).await?;
                self.forget_membership(org_id, &user.id);
                tracing::warn!(user_id = %user.id, org_id, "finished a registration that died midway");
            }
            self.finish_registration(org_id, &user.id).await?;
            settled += 1;
        }
        let dead_before = self.now()
            - chrono::Duration::from_std(self.config.request_timeout).unwrap_or_default()
            - chrono::Duration::seconds(5);
        for org in self.store.orgs.pending_before(dead_before, BATCH).await? {
            let Some(owner) = org.pending_owner.as_deref() else {
                continue;
            };
            match self.store.users.find_by_id(owner).await? {
                // Its account exists: the first loop finishes it (now or on its next run).
                Some(user) if user.pending_org.is_some() => {}
                Some(_) => self.store.orgs.clear_pending_owner(&org.id).await?,
                None => {
                    tracing::warn!(org_id = %org.id, "took back an organization whose registration died midway");
                    self.store.memberships.remove_all_for_org(&org.id).await?;
                    self.discard_org(&org.id).await;
                    settled += 1;
                }
            }
        }
        Ok(settled)
    }

    async fn discard_org(&self, org_id: &str) {
        if let Err(e) = self.store.orgs.delete(org_id).await {
            tracing::error!(org_id, error = %e, "could not take back a half-created organization");
        }
    }

    /// Takes back an account created moments ago by a call that then failed (it has no
    /// sessions and was never told about).
    async fn discard_account(&self, user_id: &str) {
        if let Err(e) = self.store.users.remove(user_id).await {
            tracing::error!(user_id, error = %e, "could not take back a half-created account");
        }
    }

    async fn users_by_id(&self, ids: &[String]) -> Result<HashMap<String, UserDoc>> {
        let users = self.store.users.find_many(ids).await?;
        Ok(users.into_iter().map(|u| (u.id.clone(), u)).collect())
    }

    /// At most [`INVITES_PER_ORG_PER_HOUR`] invitations and created members per organization per
    /// clock hour, counted in `rate_limits` so every replica shares the count.
    async fn throttle_invitations(&self, org_id: &str) -> Result<()> {
        let now = self.now();
        let (index, left) = window(now, HOUR);
        let key = invitation_limit_key(org_id, index);
        let count = self.store.rate_limits.hit(&key, now, HOUR * 2).await?;
        if count > INVITES_PER_ORG_PER_HOUR {
            return Err(Error::RateLimited { retry_after: left });
        }
        Ok(())
    }
}

/// The `rate_limits` key counting `org_id`'s invitations in hour window `index`.
pub fn invitation_limit_key(org_id: &str, index: i64) -> String {
    format!("invite_org:{org_id}:{index}")
}

/// A new invitation token: 256 bits from the OS CSPRNG.
fn new_invitation_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{INVITATION_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Fails with the reason an invitation cannot be accepted at `now`, if any.
fn invitation_usable(invitation: &InvitationDoc, now: chrono::DateTime<chrono::Utc>) -> Result<()> {
    match invitation.status {
        InvitationStatus::Accepted => Err(Error::InvitationUsed),
        InvitationStatus::Revoked => Err(Error::InvitationRevoked),
        InvitationStatus::Pending if invitation.expires_at <= now => Err(Error::InvitationExpired),
        InvitationStatus::Pending => Ok(()),
    }
}

/// The role-grant rule as errors.
fn grant(actor: OrgRole, current: Option<OrgRole>, new: Option<OrgRole>) -> Result<()> {
    may_set_org_role(actor, current, new).map_err(|denied| match denied {
        GrantDenied::NotAllowed => Error::PermissionDenied,
        GrantDenied::RoleTooHigh => Error::RoleTooHigh,
    })
}

fn require_id(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Ok(())
}

/// Where a membership listing stands after `m`: its join time, ties broken by `tie` (the
/// listing's other key).
fn joined_cursor(m: &MembershipDoc, tie: &str) -> Cursor {
    Cursor {
        at_millis: m.joined_at.timestamp_millis(),
        id: tie.to_string(),
    }
}

/// Validates the fields of a new organization (`prefix` names them inside a larger request).
fn org_fields(new: &NewOrg, prefix: &str) -> Result<OrgFields, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let name = new.name.trim().to_string();
    check_name(&format!("{prefix}name"), &name, &mut violations);
    let slug = new.slug.trim().to_string();
    if !slug.is_empty() {
        if let Err(why) = check_slug(&slug) {
            violations.push(FieldViolation::new(format!("{prefix}slug"), why));
        }
    }
    let website = new.website.trim().to_string();
    check_website(&format!("{prefix}website"), &website, &mut violations);
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(OrgFields {
        name,
        slug: (!slug.is_empty()).then_some(slug),
        website,
    })
}

fn check_text(field: &str, value: &str, max: usize, out: &mut Vec<FieldViolation>) {
    if value.chars().count() > max {
        out.push(FieldViolation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    } else if value.chars().any(char::is_control) {
        out.push(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
}

fn check_name(field: &str, name: &str, out: &mut Vec<FieldViolation>) {
    if name.is_empty() {
        out.push(FieldViolation::new(field, "is required"));
    } else {
        check_text(field, name, MAX_ORG_NAME, out);
    }
}

/// A slug is 1 to 63 of `a-z`, `0-9` and inner single hyphens (a DNS label, lowercase).
fn check_slug(slug: &str) -> Result<(), String> {
    let ok_chars = slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if slug.len() > MAX_SLUG
        || !ok_chars
        || slug.starts_with('-')
        || slug.ends_with('-')
        || slug.contains("--")
    {
        return Err(format!(
            "must be 1 to {MAX_SLUG} lowercase letters, digits and single inner hyphens"
        ));
    }
    Ok(())
}

/// Empty, or an absolute `http(s)` URL with a host.
fn check_website(field: &str, website: &str, out: &mut Vec<FieldViolation>) {
    if website.is_empty() {
        return;
    }
    let rest = website
        .strip_prefix("https://")
        .or_else(|| website.strip_prefix("http://"));
    let host = rest
        .map(|r| r.split(['/', '?', '#']).next().unwrap_or_default())
        .unwrap_or_default();
    let host_ok = !host.is_empty()
        && !host.contains('@')
        && host
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if website.len() > MAX_WEBSITE
        || !host_ok
        || website.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        out.push(FieldViolation::new(
            field,
            format!("must be an http:// or https:// URL of at most {MAX_WEBSITE} bytes"),
        ));
    }
}

/// The slug a name suggests: ASCII letters and digits (accents dropped), words joined by single
/// hyphens, apostrophes dropped ("St. Mary's" -> "st-marys"); "org" when nothing is left.
/// Short enough to take a numeric suffix.
pub fn derive_slug(name: &str) -> String {
    let mut slug = String::new();
    let mut gap = false;
    for c in name.nfkd() {
        if c.is_ascii_alphanumeric() {
            if gap && !slug.is_empty() {
                slug.push('-');
            }
            gap = false;
            slug.push(c.to_ascii_lowercase());
        } else if matches!(c, '\'' | '\u{2019}')
            || unicode_normalization::char::is_combining_mark(c)
        {
            // Inside a word: "mary's" is one word, "é" is "e".
        } else {
            gap = true;
        }
    }
    // Room for "-" and a suffix within MAX_SLUG.
    slug.truncate(MAX_SLUG - 8);
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "org".to_string()
    } else {
        slug
    }
}

fn numbered_slug(base: &str, n: usize) -> String {
    if n <= 1 {
        base.to_string()
    } else {
        format!("{base}-{n}")
    }
}

fn random_slug(base: &str) -> String {
    let mut bytes = [0u8; 3];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{base}-{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_come_from_names() {
        assert_eq!(derive_slug("St. Mary's"), "st-marys");
        assert_eq!(derive_slug("  Hôpital Saint-Éloi  "), "hopital-saint-eloi");
        assert_eq!(derive_slug("ACME  --  Clinic #2"), "acme-clinic-2");
        assert_eq!(derive_slug("北京协和医院"), "org");
        let long = derive_slug(&"a".repeat(100));
        assert!(long.len() <= MAX_SLUG - 8);
        assert_eq!(numbered_slug("st-marys", 1), "st-marys");
        assert_eq!(numbered_slug("st-marys", 2), "st-marys-2");
        for name in ["St. Mary's", "x", "--a--b--", "Ünïcödé Hospital"] {
            assert_eq!(check_slug(&derive_slug(name)), Ok(()), "{name}");
        }
    }

    #[test]
    fn explicit_slugs_are_dns_labels() {
        for ok in ["a", "st-marys", "clinic-42", &"a".repeat(63)] {
            assert_eq!(check_slug(ok), Ok(()), "{ok}");
        }
        for bad in [
            "St-Marys",
            "-a",
            "a-",
            "a--b",
            "a b",
            "a_b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn websites_are_http_urls() {
        let check = |w: &str| {
            let mut v = Vec::new();
            check_website("website", w, &mut v);
            v.is_empty()
        };
        assert!(check(""));
        assert!(check("https://st-marys.example"));
        assert!(check("http://localhost:8080/path?q=1"));
        assert!(!check("st-marys.example"));
        assert!(!check("javascript:alert(1)"));
        assert!(!check("https://"));
        assert!(!check("https://user@evil.example"));
        assert!(!check("https://a b.example"));
    }

    #[test]
    fn invitation_states_have_their_own_reasons() {
        let now = chrono::Utc::now();
        let mut inv = InvitationDoc {
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
        assert!(invitation_usable(&inv, now).is_ok());
        assert!(matches!(
            invitation_usable(&inv, now + chrono::Duration::hours(72)),
            Err(Error::InvitationExpired)
        ));
        inv.status = InvitationStatus::Accepted;
        assert!(matches!(
            invitation_usable(&inv, now),
            Err(Error::InvitationUsed)
        ));
        inv.status = InvitationStatus::Revoked;
        assert!(matches!(
            invitation_usable(&inv, now),
            Err(Error::InvitationRevoked)
        ));
        assert!(new_invitation_token().starts_with(INVITATION_TOKEN_PREFIX));
        assert_ne!(new_invitation_token(), new_invitation_token());
    }
}
