//! Organizations' custom roles (DefineOrgRole, ListOrgRoles, UpdateOrgRole, DeleteOrgRole) and
//! what assigning one through UpdateMember means.
//!
//! A custom role ranks exactly as its base role (member or admin) for every membership rule, and
//! adds the organization catalogue permissions it lists (see `domain::org_roles`). Nobody
//! defines, widens or assigns one beyond their own reach: base role above their own
//! (ROLE_TOO_HIGH) or a permission they do not hold themself (PERMISSION_NOT_HELD).
//!
//! The base role cannot change once defined: members hold it as their `role`, inside the
//! owner-count protocol of `app::orgs`; a different rank is a different role.
//!
//! Every change drops this replica's cached roles of the organization, so Authorize sees it from
//! the next call (other replicas within `session_cache_ttl`).

use std::collections::HashSet;

use super::authorization::OrgPlace;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::org_roles::{
    check_base_role, check_role_name, check_role_permission, decide_with_custom_role,
    may_grant_custom_role, RoleGrantDenied, MAX_ROLES_PER_ORG, MAX_ROLE_DESCRIPTION,
    MAX_ROLE_PERMISSIONS,
};
use crate::domain::permissions::Permission;
use crate::domain::permissions::{is_known, OrgRole, OrgStanding};
use crate::domain::roles::Role;
use crate::domain::secrets::new_id;
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::memberships::MembershipDoc;
use crate::store::org_roles::OrgRoleDoc;

/// A custom role as defined.
#[derive(Debug, Clone)]
pub struct OrgCustomRole {
    pub org_id: String,
    pub name: String,
    pub description: String,
    pub base_role: OrgRole,
    pub permissions: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<OrgRoleDoc> for OrgCustomRole {
    fn from(d: OrgRoleDoc) -> Self {
        Self {
            org_id: d.org_id,
            name: d.name,
            description: d.description,
            base_role: d.base_role,
            permissions: d.permissions,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// A new custom role, as asked for.
#[derive(Debug, Clone)]
pub struct NewOrgRole {
    pub name: String,
    pub description: String,
    /// `None`: member.
    pub base_role: Option<OrgRole>,
    pub permissions: Vec<String>,
}

/// What an UpdateMember asks of the member's role, resolved against their custom role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RoleChange {
    pub role: Option<OrgRole>,
    /// `Some(None)`: take the custom role away; `Some(Some((name, id)))`: give this one.
    pub custom_role: Option<Option<(String, String)>>,
}

/// The role-grant refusals as errors.
fn refusal(denied: RoleGrantDenied) -> Error {
    match denied {
        RoleGrantDenied::NotAllowed => Error::PermissionDenied,
        RoleGrantDenied::RoleTooHigh => Error::RoleTooHigh,
        RoleGrantDenied::PermissionNotHeld(p) => Error::PermissionNotHeld(p),
    }
}

fn check_description(description: &str, out: &mut Violations) {
    out.text("description", description, MAX_ROLE_DESCRIPTION);
}

/// Whether a membership names a custom role.
fn holds_one(m: &MembershipDoc) -> bool {
    m.custom_role.is_some() || m.custom_role_id.is_some()
}

fn require_org_id(org_id: &str) -> Result<()> {
    if org_id.trim().is_empty() {
        return Err(Error::invalid("org_id", "is required"));
    }
    Ok(())
}

impl App {
    /// Checks a role's permission list: organization catalogue permissions, each once, at most
    /// [`MAX_ROLE_PERMISSIONS`].
    fn check_role_permissions(&self, permissions: &[String], out: &mut Violations) {
        if permissions.len() > MAX_ROLE_PERMISSIONS {
            out.push(
                "permissions",
                format!("must hold at most {MAX_ROLE_PERMISSIONS} permissions"),
            );
            return;
        }
        let mut seen = HashSet::new();
        for (i, p) in permissions.iter().enumerate() {
            let field = format!("permissions[{i}]");
            let scope = self.permission_rule(p).map(|r| r.scope);
            if let Err(why) = check_role_permission(is_known(p), scope) {
                out.push(field, why);
            } else if !seen.insert(p.as_str()) {
                out.push(field, "appears more than once");
            }
        }
    }

    /// Fails unless `who` (with `actor` role in `org_id`) may grant a role of `base` listing
    /// `permissions`: not above their own role, and each permission held by their own role or
    /// their own custom role.
    async fn may_grant(
        &self,
        who: &AccessClaims,
        org_id: &str,
        actor: OrgRole,
        base: OrgRole,
        permissions: &[String],
    ) -> Result<()> {
        let own = match self.org_place(org_id, &who.user_id).await? {
            Some(OrgPlace {
                custom_role_id: Some(id),
                ..
            }) => self.custom_role_permissions(org_id, &id).await?,
            _ => None,
        };
        let holds = |p: &str| {
            let scope = self.permission_rule(p).map(|r| r.scope);
            let listed = own.as_ref().is_some_and(|own| own.contains(p));
            // The global role never counts inside an organization.
            decide_with_custom_role(scope, Role::Guest, OrgStanding::Member(actor), listed).allowed
        };
        may_grant_custom_role(actor, holds, base, permissions).map_err(refusal)
    }

    /// Defines a custom role in `org_id`. Caller: an admin or owner of the organization.
    pub async fn define_org_role(
        &self,
        who: &AccessClaims,
        org_id: &str,
        new: NewOrgRole,
        caller: &Caller,
    ) -> Result<OrgCustomRole> {
        require_org_id(org_id)?;
        let actor = self.require_org_admin(who, org_id).await?;
        let base = new.base_role.unwrap_or(OrgRole::Member);
        let mut violations = Violations::new();
        if let Err(why) = check_role_name(&new.name) {
            violations.push("name", why);
        }
        check_description(&new.description, &mut violations);
        if let Err(why) = check_base_role(base) {
            violations.push("base_role", why);
        }
        self.check_role_permissions(&new.permissions, &mut violations);
        violations.finish()?;
        self.may_grant(who, org_id, actor, base, &new.permissions)
            .await?;
        // Checked before the insert: concurrent definitions may pass the cap by a few.
        if self.store.org_roles.count(org_id).await? >= MAX_ROLES_PER_ORG as u64 {
            return Err(Error::TooManyOrgRoles);
        }
        let now = self.now();
        let doc = OrgRoleDoc {
            id: new_id(),
            org_id: org_id.to_string(),
            name: new.name.clone(),
            description: new.description.clone(),
            base_role: base,
            permissions: new.permissions.clone(),
            created_by: who.user_id.clone(),
            created_at: now,
            updated_at: now,
        };
        if !self.store.org_roles.insert(&doc).await? {
            return Err(Error::OrgRoleExists);
        }
        self.forget_custom_roles(org_id);
        self.audit(
            AuditRecord::new(AuditAction::OrgRoleDefine, Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("role", new.name.as_str())
                .detail("base_role", base.as_str())
                .detail("permissions", new.permissions.clone()),
        )
        .await;
        Ok(doc.into())
    }

    /// The custom roles of `org_id`, by name. Caller: any member of the organization.
    pub async fn list_org_roles(
        &self,
        who: &AccessClaims,
        org_id: &str,
    ) -> Result<Vec<OrgCustomRole>> {
        require_org_id(org_id)?;
        let exists = async { Ok(self.store.orgs.exists(org_id).await?) };
        self.require_in_org(who, org_id, Permission::OrgRead, exists)
            .await?;
        Ok(self
            .store
            .org_roles
            .list(org_id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Changes a custom role's description and/or permissions (`Some`: replaced). Permissions it
    /// gains must be held by the caller; its base role must not be above the caller's.
    pub async fn update_org_role(
        &self,
        who: &AccessClaims,
        org_id: &str,
        name: &str,
        description: Option<String>,
        permissions: Option<Vec<String>>,
        caller: &Caller,
    ) -> Result<OrgCustomRole> {
        require_org_id(org_id)?;
        let actor = self.require_org_admin(who, org_id).await?;
        let mut violations = Violations::new();
        if name.is_empty() {
            violations.push("name", "is required");
        }
        if let Some(description) = &description {
            check_description(description, &mut violations);
        }
        if let Some(permissions) = &permissions {
            self.check_role_permissions(permissions, &mut violations);
        }
        violations.finish()?;
        let current = self
            .store
            .org_roles
            .find(org_id, name)
            .await?
            .ok_or(Error::OrgRoleNotFound)?;
        let gained: Vec<String> = permissions
            .iter()
            .flatten()
            .filter(|p| !current.permissions.contains(p))
            .cloned()
            .collect();
        self.may_grant(who, org_id, actor, current.base_role, &gained)
            .await?;
        let updated = self
            .store
            .org_roles
            .update(
                org_id,
                name,
                description.as_deref(),
                permissions.as_deref(),
                self.now(),
            )
            .await?
            .ok_or(Error::OrgRoleNotFound)?;
        self.forget_custom_roles(org_id);
        self.audit(
            AuditRecord::new(AuditAction::OrgRoleUpdate, Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("role", name)
                .detail("description_changed", description.is_some())
                .detail("permissions", updated.permissions.clone()),
        )
        .await;
        Ok(updated.into())
    }

    /// Deletes a custom role; its members keep its base role and lose its permissions at once.
    ///
    /// The role goes first (from then on it grants nothing: memberships name it by id, and a
    /// new role of the same name has another), then it is cleared from the memberships; a
    /// failure between the two leaves names that grant nothing, until the member's role next
    /// changes.
    pub async fn delete_org_role(
        &self,
        who: &AccessClaims,
        org_id: &str,
        name: &str,
        caller: &Caller,
    ) -> Result<()> {
        require_org_id(org_id)?;
        let actor = self.require_org_admin(who, org_id).await?;
        if name.is_empty() {
            return Err(Error::invalid("name", "is required"));
        }
        let current = self
            .store
            .org_roles
            .find(org_id, name)
            .await?
            .ok_or(Error::OrgRoleNotFound)?;
        if current.base_role > actor {
            return Err(Error::RoleTooHigh);
        }
        if !self.store.org_roles.remove(org_id, name).await? {
            return Err(Error::OrgRoleNotFound);
        }
        self.forget_custom_roles(org_id);
        let members = self
            .store
            .memberships
            .clear_custom_role(org_id, &current.id)
            .await?;
        self.audit(
            AuditRecord::new(AuditAction::OrgRoleDelete, Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("role", name)
                .detail("members_cleared", members as i64),
        )
        .await;
        Ok(())
    }

    /// What an UpdateMember by `who` (with `actor` role) asking `role` and `custom_role`
    /// (`Some("")`: none) does to `current`: assigning a custom role sets the member's role to
    /// its base role (a different `role` asked with it is refused); changing the role to another
    /// built-in role takes the custom role away.
    pub(super) async fn resolve_role_change(
        &self,
        who: &AccessClaims,
        actor: OrgRole,
        current: &MembershipDoc,
        role: Option<OrgRole>,
        custom_role: Option<&str>,
    ) -> Result<RoleChange> {
        let org_id = current.org_id.as_str();
        match custom_role {
            Some("") => Ok(RoleChange {
                role,
                custom_role: holds_one(current).then_some(None),
            }),
            Some(name) => {
                let assigned = self
                    .store
                    .org_roles
                    .find(org_id, name)
                    .await?
                    .ok_or(Error::OrgRoleNotFound)?;
                if role.is_some_and(|r| r != assigned.base_role) {
                    return Err(Error::invalid(
                        "role",
                        format!(
                            "must be unspecified or {} (the base role of {name})",
                            assigned.base_role
                        ),
                    ));
                }
                self.may_grant(
                    who,
                    org_id,
                    actor,
                    assigned.base_role,
                    &assigned.permissions,
                )
                .await?;
                Ok(RoleChange {
                    role: Some(assigned.base_role),
                    custom_role: Some(Some((assigned.name, assigned.id))),
                })
            }
            None => Ok(RoleChange {
                role,
                custom_role: (role.is_some_and(|r| r != current.role) && holds_one(current))
                    .then_some(None),
            }),
        }
    }

    /// Removes an organization's custom roles (it is being deleted).
    pub(super) async fn remove_org_roles(&self, org_id: &str) -> Result<u64> {
        let removed = self.store.org_roles.remove_all_for_org(org_id).await?;
        self.forget_custom_roles(org_id);
        Ok(removed)
    }

    /// The caller's role in `org_id` if they manage its members (admin or owner).
    async fn require_org_admin(&self, who: &AccessClaims, org_id: &str) -> Result<OrgRole> {
        let exists = async { Ok(self.store.orgs.exists(org_id).await?) };
        self.require_in_org(who, org_id, Permission::OrgMembersWrite, exists)
            .await
    }
}
