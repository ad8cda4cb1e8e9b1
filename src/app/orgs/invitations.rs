//! Invitations: emailed to an address with a role, accepted by the signed-in invitee while
//! their inviter still stands behind them.

use super::{grant, require_id, Invitation, Org, OrgMember, HOUR};
use crate::app::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::email;
use crate::domain::lockout::window;
use crate::domain::orgs::{
    check_department, invitation_limit_key, new_invitation_token, INVITATION_LIFETIME,
    INVITES_PER_ORG_PER_HOUR,
};
use crate::domain::permissions::OrgRole;
use crate::domain::permissions::Permission;
use crate::domain::secrets::{hash_token, new_id};
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::invitations::{InvitationDoc, InvitationStatus, KEEP_AFTER_EXPIRY};
use crate::store::memberships::MembershipDoc;

impl App {
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
    ) -> Result<Invitation> {
        require_id("org_id", org_id)?;
        let actor = self
            .require_org(who, org_id, Permission::OrgMembersWrite)
            .await?;
        grant(actor, None, Some(role))?;
        let mut violations = Violations::new();
        let email = violations
            .check("email", email::normalize(raw_email))
            .unwrap_or_default();
        let department = department.trim().to_string();
        check_department(&department, &mut violations);
        violations.finish()?;
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
            AuditRecord::new(AuditAction::OrgInvite, Outcome::Success, caller)
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
        Ok(invitation.into())
    }

    /// Joins the organization of the invitation `token` names, as the signed-in invitee.
    pub async fn accept_invitation(
        &self,
        who: &AccessClaims,
        token: &str,
        caller: &Caller,
    ) -> Result<(Org, OrgMember)> {
        let token = token.trim();
        require_id("token", token)?;
        self.acting(who).await?;
        let now = self.now();
        let invitation = self
            .store
            .invitations
            .find_by_token_hash(&hash_token(token))
            .await?
            .map(Invitation::from)
            .ok_or(Error::InvitationNotFound)?;
        let org = self
            .store
            .orgs
            .find(&invitation.org_id)
            .await?
            .ok_or(Error::InvitationNotFound)?;
        invitation.usable(now)?;
        // An invitation is only as good as its inviter's standing today: one sent by an admin
        // who has since been demoted or removed, or whose account was disabled or deleted, no
        // longer works.
        let inviter = self
            .store
            .memberships
            .find(&org.id, &invitation.invited_by)
            .await?;
        if inviter.is_none_or(|m| grant(m.role, None, Some(invitation.role)).is_err()) {
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
                AuditRecord::new(AuditAction::OrgInvitationAccept, Outcome::Denied, caller)
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
            .map(Invitation::from)
        else {
            // Someone else used it (or it expired) between our read and our update.
            let seen = self
                .store
                .invitations
                .find_by_token_hash(&hash_token(token))
                .await?
                .map(Invitation::from)
                .ok_or(Error::InvitationNotFound)?;
            seen.usable(now)?;
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
            AuditRecord::new(AuditAction::OrgInvitationAccept, Outcome::Success, caller)
                .user(&user.id)
                .actor(&user.id)
                .session(&who.session_id)
                .detail("org_id", &org.id)
                .detail("invitation_id", &invitation.id)
                .detail("role", invitation.role.as_str()),
        )
        .await;
        Ok((org.into(), OrgMember::new(membership, user)))
    }

    /// At most [`INVITES_PER_ORG_PER_HOUR`] invitations and created members per organization per
    /// clock hour, counted in `rate_limits` so every replica shares the count.
    pub(super) async fn throttle_invitations(&self, org_id: &str) -> Result<()> {
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
