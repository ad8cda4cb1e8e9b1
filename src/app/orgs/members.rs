//! Members: created straight into an organization, changed, removed — and the owner-count
//! protocol that keeps every organization with at least one owner without transactions.

use super::{grant, require_id, NewMember, OrgMember, HOUR};
use crate::app::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::email;
use crate::domain::orgs::check_department;
use crate::domain::password;
use crate::domain::permissions::OrgRole;
use crate::domain::permissions::Permission;
use crate::domain::roles::Role;
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::memberships::{CustomRoleRef, MembershipChange, MembershipDoc};

/// Re-reads of a membership that changed between our read and our conditional write.
const CONTENDED_RETRIES: usize = 8;

impl App {
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
        let actor = self
            .require_org(who, org_id, Permission::OrgMembersWrite)
            .await?;
        grant(actor, None, Some(new.role))?;
        let mut violations = Violations::new();
        let email = violations
            .check("email", email::normalize(&new.email))
            .unwrap_or_default();
        let display_name = new.display_name.trim().to_string();
        violations.display_name("display_name", &display_name);
        let department = new.department.trim().to_string();
        check_department(&department, &mut violations);
        violations.finish()?;
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
        let mut violations = Violations::new();
        violations.extend(self.password_policy.check(
            "password",
            &new.password,
            &[&email, &display_name],
        ));
        violations.finish()?;
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
            AuditRecord::new(AuditAction::OrgMemberCreate, Outcome::Success, caller)
                .user(&user.id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("role", new.role.as_str()),
        )
        .await;
        self.send_verification_after_register(&user, caller).await;
        Ok(OrgMember::new(membership, user))
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
        let actor = self
            .require_org(who, org_id, Permission::OrgMembersWrite)
            .await?;
        let department = department.map(|d| d.trim().to_string());
        if let Some(d) = &department {
            let mut violations = Violations::new();
            check_department(d, &mut violations);
            violations.finish()?;
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
            AuditRecord::new(AuditAction::OrgMemberUpdate, Outcome::Success, caller)
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
        Ok(OrgMember::new(after, user))
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
            Some(
                self.require_org(who, org_id, Permission::OrgMembersWrite)
                    .await?,
            )
        };
        if leaving {
            self.require_org(who, org_id, Permission::OrgRead).await?;
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
            AuditRecord::new(AuditAction::OrgMemberRemove, Outcome::Success, caller)
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
    pub(super) async fn joined(&self, membership: &MembershipDoc) -> Result<()> {
        self.forget_membership(&membership.org_id, &membership.user_id);
        if membership.role == OrgRole::Owner {
            self.store.orgs.add_owner(&membership.org_id).await?;
        }
        Ok(())
    }
}
