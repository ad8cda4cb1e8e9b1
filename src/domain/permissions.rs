//! Who may do what: the one permission matrix, and the rules for granting roles.
//!
//! Platform permissions follow the global role (`guest < user < moderator < admin <
//! super_admin`); organization permissions follow only the caller's role in that organization
//! (`member < admin < owner`) — a global role grants nothing inside an organization, and a role in
//! org A grants nothing in org B. The README's permission table is this matrix.

use std::fmt;
use std::str::FromStr;

use super::roles::Role;

/// A user's role inside one organization. `Ord` follows power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrgRole {
    Member,
    Admin,
    Owner,
}

impl OrgRole {
    pub const ALL: [OrgRole; 3] = [OrgRole::Member, OrgRole::Admin, OrgRole::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::Member => "member",
            OrgRole::Admin => "admin",
            OrgRole::Owner => "owner",
        }
    }
}

impl fmt::Display for OrgRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrgRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrgRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown organization role {s:?}"))
    }
}

/// Where a permission applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Platform-wide: decided by the global role.
    Platform(Role),
    /// Inside one organization: decided by the org role.
    Org(OrgRole),
}

/// One of keyward's built-in permissions. Use cases name the permission they need as a value
/// of this type, so a misspelt permission does not compile; names from clients (Authorize,
/// custom roles, the catalogue) are resolved with [`Permission::from_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    UsersRead,
    UsersWrite,
    UsersRolesWrite,
    PermissionsWrite,
    AuditRead,
    OrgsCreate,
    OrgRead,
    OrgMembersRead,
    OrgWrite,
    OrgMembersWrite,
    OrgDelete,
}

impl Permission {
    /// Every built-in permission, in the order they are listed.
    pub const ALL: [Permission; 11] = [
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::UsersRolesWrite,
        Permission::PermissionsWrite,
        Permission::AuditRead,
        Permission::OrgsCreate,
        Permission::OrgRead,
        Permission::OrgMembersRead,
        Permission::OrgWrite,
        Permission::OrgMembersWrite,
        Permission::OrgDelete,
    ];

    /// The permission's name, as clients and the configuration write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::UsersRead => "users.read",
            Permission::UsersWrite => "users.write",
            Permission::UsersRolesWrite => "users.roles.write",
            Permission::PermissionsWrite => "permissions.write",
            Permission::AuditRead => "audit.read",
            Permission::OrgsCreate => "orgs.create",
            Permission::OrgRead => "org.read",
            Permission::OrgMembersRead => "org.members.read",
            Permission::OrgWrite => "org.write",
            Permission::OrgMembersWrite => "org.members.write",
            Permission::OrgDelete => "org.delete",
        }
    }

    /// Where it applies and the least role that holds it (the matrix).
    pub const fn scope(self) -> Scope {
        match self {
            Permission::UsersRead => Scope::Platform(Role::Moderator),
            Permission::UsersWrite => Scope::Platform(Role::Admin),
            Permission::UsersRolesWrite => Scope::Platform(Role::Admin),
            Permission::PermissionsWrite => Scope::Platform(Role::Admin),
            Permission::AuditRead => Scope::Platform(Role::Moderator),
            Permission::OrgsCreate => Scope::Platform(Role::User),
            Permission::OrgRead => Scope::Org(OrgRole::Member),
            Permission::OrgMembersRead => Scope::Org(OrgRole::Member),
            Permission::OrgWrite => Scope::Org(OrgRole::Admin),
            Permission::OrgMembersWrite => Scope::Org(OrgRole::Admin),
            Permission::OrgDelete => Scope::Org(OrgRole::Owner),
        }
    }

    /// What it allows, for ListPermissions.
    pub const fn description(self) -> &'static str {
        match self {
            Permission::UsersRead => "list and read accounts",
            Permission::UsersWrite => "change, disable, enable and delete accounts",
            Permission::UsersRolesWrite => {
                "change global roles (never above one's own; super_admin only by a super_admin)"
            }
            Permission::PermissionsWrite => "define, change and delete catalogue permissions",
            Permission::AuditRead => "read the audit trail",
            Permission::OrgsCreate => "create an organization",
            Permission::OrgRead => "read the organization",
            Permission::OrgMembersRead => "list members",
            Permission::OrgWrite => "change the organization",
            Permission::OrgMembersWrite => {
                "invite, create, change and remove members (never above one's own role)"
            }
            Permission::OrgDelete => "delete the organization",
        }
    }

    /// The built-in permission of this name, if any.
    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `permission` is one of keyward's permissions.
pub fn is_known(permission: &str) -> bool {
    Permission::from_name(permission).is_some()
}

/// The scope and least role of a built-in permission.
pub fn builtin_scope(permission: &str) -> Option<Scope> {
    Permission::from_name(permission).map(Permission::scope)
}

/// Longest catalogue permission name.
pub const MAX_PERMISSION_NAME: usize = 128;

/// Why `name` cannot name a catalogue permission: it must be `<namespace>.<resource>.<action>`,
/// each part a lower-case letter followed by letters, digits, `_` or `-`, and not built in.
pub fn check_catalogue_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is required");
    }
    if name.len() > MAX_PERMISSION_NAME {
        return Err("must be at most 128 characters");
    }
    let parts: Vec<&str> = name.split('.').collect();
    let well_formed = parts.len() == 3
        && parts.iter().all(|p| {
            let mut chars = p.chars();
            chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        });
    if !well_formed {
        return Err("must be <namespace>.<resource>.<action> in lower case, e.g. notes.notes.read");
    }
    if is_known(name) {
        return Err("is a built-in permission");
    }
    Ok(())
}

/// The outcome of one permission check, with a short machine-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: &'static str,
}

const fn decision(allowed: bool, reason: &'static str) -> Decision {
    Decision { allowed, reason }
}

/// What the check knows about the caller's place in the organization asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgStanding {
    /// The check names no organization.
    NoOrg,
    /// The caller is not a member (or the organization does not exist).
    NotMember,
    Member(OrgRole),
}

/// Decides a built-in `permission` for a caller with `role` and `standing`. Fails closed: an org
/// permission without an organization, or a platform permission asked inside an organization,
/// is denied.
pub fn decide(permission: Permission, role: Role, standing: OrgStanding) -> Decision {
    decide_scope(Some(permission.scope()), role, standing)
}

/// [`decide`] for a permission whose scope is known (built in or from the catalogue); `None`:
/// an unknown permission, refused.
pub fn decide_scope(scope: Option<Scope>, role: Role, standing: OrgStanding) -> Decision {
    let Some(scope) = scope else {
        return decision(false, "UNKNOWN_PERMISSION");
    };
    match (scope, standing) {
        (Scope::Platform(least), OrgStanding::NoOrg) if role >= least => {
            decision(true, "GRANTED_BY_ROLE")
        }
        (Scope::Platform(_), OrgStanding::NoOrg) => decision(false, "ROLE_TOO_LOW"),
        (Scope::Platform(_), _) => decision(false, "NOT_AN_ORG_PERMISSION"),
        (Scope::Org(_), OrgStanding::NoOrg) => decision(false, "ORG_REQUIRED"),
        (Scope::Org(_), OrgStanding::NotMember) => decision(false, "NOT_A_MEMBER"),
        (Scope::Org(least), OrgStanding::Member(r)) if r >= least => {
            decision(true, "GRANTED_BY_ORG_ROLE")
        }
        (Scope::Org(_), OrgStanding::Member(_)) => decision(false, "ORG_ROLE_TOO_LOW"),
    }
}

/// Why a role change is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantDenied {
    /// The actor lacks the permission at all.
    NotAllowed,
    /// The new role, or the target's current role, is above the actor's.
    RoleTooHigh,
}

/// May `actor` move someone from global role `current` to `new`? Admins and up may change
/// roles, never to or from a role above their own, and only a super_admin makes (or unmakes) a
/// super_admin.
pub fn may_set_global_role(actor: Role, current: Role, new: Role) -> Result<(), GrantDenied> {
    if actor < Role::Admin {
        return Err(GrantDenied::NotAllowed);
    }
    let top = current.max(new);
    if top > actor || (top == Role::SuperAdmin && actor != Role::SuperAdmin) {
        return Err(GrantDenied::RoleTooHigh);
    }
    Ok(())
}

/// May an org member with `actor` role move a member from `current` (None: not yet a member)
/// to `new` (None: removed)? Admins and owners manage members, never to or from a role above
/// their own. (Keeping an owner is checked against the stored owners, not here.)
pub fn may_set_org_role(
    actor: OrgRole,
    current: Option<OrgRole>,
    new: Option<OrgRole>,
) -> Result<(), GrantDenied> {
    if actor < OrgRole::Admin {
        return Err(GrantDenied::NotAllowed);
    }
    let top = current.max(new);
    if top.is_some_and(|r| r > actor) {
        return Err(GrantDenied::RoleTooHigh);
    }
    Ok(())
}

/// The fields of a catalogue permission's change; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct PermissionChange {
    pub description: Option<String>,
    pub least_role: Option<String>,
    pub requires_mfa: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_permissions_follow_the_global_role_only() {
        assert!(decide(Permission::UsersRead, Role::Moderator, OrgStanding::NoOrg).allowed);
        assert_eq!(
            decide(Permission::UsersRead, Role::User, OrgStanding::NoOrg).reason,
            "ROLE_TOO_LOW"
        );
        assert!(!decide(Permission::UsersWrite, Role::Moderator, OrgStanding::NoOrg).allowed);
        assert!(decide(Permission::AuditRead, Role::Moderator, OrgStanding::NoOrg).allowed);
        assert!(!decide(Permission::AuditRead, Role::User, OrgStanding::NoOrg).allowed);
        assert!(!decide(Permission::OrgsCreate, Role::Guest, OrgStanding::NoOrg).allowed);
        // A platform permission is not granted inside an organization.
        assert!(
            !decide(
                Permission::UsersRead,
                Role::SuperAdmin,
                OrgStanding::Member(OrgRole::Owner)
            )
            .allowed
        );
    }

    #[test]
    fn org_permissions_follow_the_membership_only() {
        // A super_admin who is not a member gets nothing in the organization.
        assert_eq!(
            decide(
                Permission::OrgRead,
                Role::SuperAdmin,
                OrgStanding::NotMember
            )
            .reason,
            "NOT_A_MEMBER"
        );
        assert!(
            decide(
                Permission::OrgRead,
                Role::Guest,
                OrgStanding::Member(OrgRole::Member)
            )
            .allowed
        );
        assert_eq!(
            decide(
                Permission::OrgWrite,
                Role::Admin,
                OrgStanding::Member(OrgRole::Member)
            )
            .reason,
            "ORG_ROLE_TOO_LOW"
        );
        assert!(
            !decide(
                Permission::OrgDelete,
                Role::User,
                OrgStanding::Member(OrgRole::Admin)
            )
            .allowed
        );
        assert!(
            decide(
                Permission::OrgDelete,
                Role::User,
                OrgStanding::Member(OrgRole::Owner)
            )
            .allowed
        );
        assert_eq!(
            decide(Permission::OrgRead, Role::User, OrgStanding::NoOrg).reason,
            "ORG_REQUIRED"
        );
        assert_eq!(
            decide_scope(
                builtin_scope("org.everything"),
                Role::SuperAdmin,
                OrgStanding::NoOrg
            )
            .reason,
            "UNKNOWN_PERMISSION"
        );
    }

    #[test]
    fn nobody_grants_above_their_own_role() {
        use Role::{Guest, Moderator, SuperAdmin, User};
        assert_eq!(
            may_set_global_role(User, User, Role::Admin),
            Err(GrantDenied::NotAllowed)
        );
        assert_eq!(may_set_global_role(Role::Admin, User, Role::Admin), Ok(()));
        assert_eq!(
            may_set_global_role(Role::Admin, User, SuperAdmin),
            Err(GrantDenied::RoleTooHigh)
        );
        assert_eq!(
            may_set_global_role(Role::Admin, SuperAdmin, User),
            Err(GrantDenied::RoleTooHigh),
            "an admin cannot demote a super_admin"
        );
        assert_eq!(
            may_set_global_role(SuperAdmin, Role::Admin, SuperAdmin),
            Ok(())
        );
        assert_eq!(
            may_set_global_role(Moderator, Guest, User),
            Err(GrantDenied::NotAllowed)
        );

        use OrgRole::{Member, Owner};
        assert_eq!(
            may_set_org_role(Member, None, Some(Member)),
            Err(GrantDenied::NotAllowed)
        );
        assert_eq!(may_set_org_role(OrgRole::Admin, None, Some(Member)), Ok(()));
        assert_eq!(
            may_set_org_role(OrgRole::Admin, Some(Member), Some(Owner)),
            Err(GrantDenied::RoleTooHigh),
            "an org admin cannot make anyone (themself included) owner"
        );
        assert_eq!(
            may_set_org_role(OrgRole::Admin, Some(Owner), None),
            Err(GrantDenied::RoleTooHigh)
        );
        assert_eq!(may_set_org_role(Owner, Some(Owner), Some(Member)), Ok(()));
    }

    #[test]
    fn built_in_names_round_trip_and_are_unique() {
        let names: std::collections::HashSet<&str> =
            Permission::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), Permission::ALL.len());
        for p in Permission::ALL {
            assert_eq!(Permission::from_name(p.as_str()), Some(p));
            assert_eq!(builtin_scope(p.as_str()), Some(p.scope()));
        }
        assert_eq!(Permission::from_name("users.reads"), None);
    }

    #[test]
    fn catalogue_names_are_three_lower_case_parts_and_never_built_in() {
        for good in [
            "notes.notes.read",
            "billing.invoices.approve-all",
            "a.b.c",
            "x1.y_2.z-3",
        ] {
            assert_eq!(check_catalogue_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "notes.read",
            "notes.notes.read.extra",
            "Notes.notes.read",
            "notes..read",
            "1notes.notes.read",
            "notes.notes.réad",
            "notes.notes.read ",
            "users.read",
        ] {
            assert!(check_catalogue_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_catalogue_name(&format!("a.b.{}", "c".repeat(200))).is_err());
        // Built-in names are refused even when they would be well formed.
        assert!(check_catalogue_name("org.members.read").is_err());
        assert_eq!(
            decide_scope(None, Role::SuperAdmin, OrgStanding::NoOrg).reason,
            "UNKNOWN_PERMISSION"
        );
    }
}
