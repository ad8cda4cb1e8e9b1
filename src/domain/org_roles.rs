//! Organizations' custom roles: a name, a base role (member or admin — it ranks exactly as that
//! role for every other rule) and extra organization permissions from the catalogue.
//!
//! The no-escalation rule extended to them: nobody defines, changes or assigns a custom role
//! whose base role is above their own, or that lists a permission they do not hold themself
//! (by their own role or their own custom role).

use super::permissions::{decide_scope, Decision, OrgRole, OrgStanding, Scope};
use super::roles::Role;

/// Most custom roles one organization may define.
pub const MAX_ROLES_PER_ORG: usize = 50;
/// Most extra permissions one custom role may list.
pub const MAX_ROLE_PERMISSIONS: usize = 64;
/// Longest description, in characters.
pub const MAX_ROLE_DESCRIPTION: usize = 500;
/// Longest name.
pub const MAX_ROLE_NAME: usize = 40;

/// Why `name` cannot name a custom role: 2 to 40 of `a-z`, `0-9` and `-`, starting with a
/// letter, and not the name of a built-in role.
pub fn check_role_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is required");
    }
    let mut chars = name.chars();
    let well_formed = name.len() >= 2
        && name.len() <= MAX_ROLE_NAME
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !well_formed {
        return Err("must be 2 to 40 lower-case letters, digits and hyphens, starting with a letter, e.g. assistant");
    }
    if name.parse::<OrgRole>().is_ok() {
        return Err("is the name of a built-in organization role");
    }
    Ok(())
}

/// Why a permission cannot be listed by a custom role (`scope`: its catalogue scope, `None` when
/// it is not in the catalogue; `built_in`: one of keyward's own).
pub fn check_role_permission(built_in: bool, scope: Option<Scope>) -> Result<(), &'static str> {
    match scope {
        _ if built_in => {
            Err("is a built-in permission; a custom role adds catalogue permissions only")
        }
        None => Err("is not in the permission catalogue"),
        Some(Scope::Platform(_)) => {
            Err("is a platform permission; a custom role adds organization permissions only")
        }
        Some(Scope::Org(_)) => Ok(()),
    }
}

/// Why a base role is refused: a custom role ranks between member and owner.
pub fn check_base_role(base: OrgRole) -> Result<(), &'static str> {
    if base == OrgRole::Owner {
        return Err("must be member or admin (a custom role ranks below owner)");
    }
    Ok(())
}

/// [`decide_scope`] for a member whose custom role does (`listed`) or does not list the
/// permission: an organization permission their role is too low for is granted by the custom
/// role (GRANTED_BY_CUSTOM_ROLE). Nothing else changes: an unknown (or deleted) permission, a
/// platform permission or another organization stay refused.
pub fn decide_with_custom_role(
    scope: Option<Scope>,
    role: Role,
    standing: OrgStanding,
    listed: bool,
) -> Decision {
    let decision = decide_scope(scope, role, standing);
    if !decision.allowed && decision.reason == "ORG_ROLE_TOO_LOW" && listed {
        return Decision {
            allowed: true,
            reason: "GRANTED_BY_CUSTOM_ROLE",
        };
    }
    decision
}

/// Why granting (defining, changing or assigning) a custom role is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleGrantDenied {
    /// The actor does not manage members (below admin).
    NotAllowed,
    /// The role's base role is above the actor's.
    RoleTooHigh,
    /// The actor does not hold this permission the role lists.
    PermissionNotHeld(String),
}

/// May a member with role `actor`, who holds exactly the permissions `actor_holds` says, grant
/// a custom role of `base` listing `permissions`? Admins and owners may, never above their own
/// role and never a permission they lack.
pub fn may_grant_custom_role<'a>(
    actor: OrgRole,
    actor_holds: impl Fn(&str) -> bool,
    base: OrgRole,
    permissions: impl IntoIterator<Item = &'a String>,
) -> Result<(), RoleGrantDenied> {
    if actor < OrgRole::Admin {
        return Err(RoleGrantDenied::NotAllowed);
    }
    if base > actor {
        return Err(RoleGrantDenied::RoleTooHigh);
    }
    match permissions.into_iter().find(|p| !actor_holds(p)) {
        Some(p) => Err(RoleGrantDenied::PermissionNotHeld(p.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lower_case_slugs_and_never_a_built_in_role() {
        for good in ["assistant", "ward-nurse", "a1", &"a".repeat(40)] {
            assert_eq!(check_role_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a",
            "Assistant",
            "1st",
            "-x",
            "ward nurse",
            "ward_nurse",
            "infirmière",
            &"a".repeat(41),
            "admin",
            "owner",
            "member",
        ] {
            assert!(check_role_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_organization_catalogue_permissions_and_ranks_below_owner() {
        assert!(check_role_permission(false, Some(Scope::Org(OrgRole::Admin))).is_ok());
        assert!(check_role_permission(true, Some(Scope::Org(OrgRole::Admin))).is_err());
        assert!(check_role_permission(false, Some(Scope::Platform(Role::User))).is_err());
        assert!(check_role_permission(false, None).is_err());
        assert!(check_base_role(OrgRole::Member).is_ok());
        assert!(check_base_role(OrgRole::Admin).is_ok());
        assert!(check_base_role(OrgRole::Owner).is_err());
    }

    #[test]
    fn a_custom_role_grants_only_what_the_base_role_lacks_in_its_organization() {
        let org = Some(Scope::Org(OrgRole::Admin));
        let member = OrgStanding::Member(OrgRole::Member);
        let granted = decide_with_custom_role(org, Role::User, member, true);
        assert_eq!(
            (granted.allowed, granted.reason),
            (true, "GRANTED_BY_CUSTOM_ROLE")
        );
        assert_eq!(
            decide_with_custom_role(org, Role::User, member, false).reason,
            "ORG_ROLE_TOO_LOW"
        );
        // The base role holds it anyway: the base role's reason.
        assert_eq!(
            decide_with_custom_role(org, Role::User, OrgStanding::Member(OrgRole::Admin), true)
                .reason,
            "GRANTED_BY_ORG_ROLE"
        );
        // Fail closed: deleted from the catalogue, asked outside the organization, a platform
        // permission.
        for (scope, standing) in [
            (None, member),
            (org, OrgStanding::NotMember),
            (org, OrgStanding::NoOrg),
            (Some(Scope::Platform(Role::Admin)), member),
            (Some(Scope::Platform(Role::Admin)), OrgStanding::NoOrg),
        ] {
            assert!(
                !decide_with_custom_role(scope, Role::User, standing, true).allowed,
                "{scope:?} {standing:?}"
            );
        }
    }

    #[test]
    fn nobody_grants_a_custom_role_above_their_own_reach() {
        let perms = vec![
            "notes.notes.read".to_string(),
            "notes.notes.sign".to_string(),
        ];
        let holds_all = |_: &str| true;
        let holds_read = |p: &str| p == "notes.notes.read";
        use OrgRole::{Admin, Member, Owner};
        assert_eq!(
            may_grant_custom_role(Member, holds_all, Member, &perms),
            Err(RoleGrantDenied::NotAllowed)
        );
        assert_eq!(
            may_grant_custom_role(Admin, holds_all, Admin, &perms),
            Ok(())
        );
        assert_eq!(
            may_grant_custom_role(Admin, holds_all, Owner, &perms),
            Err(RoleGrantDenied::RoleTooHigh)
        );
        assert_eq!(
            may_grant_custom_role(Admin, holds_read, Member, &perms),
            Err(RoleGrantDenied::PermissionNotHeld(
                "notes.notes.sign".into()
            ))
        );
        assert_eq!(
            may_grant_custom_role(Owner, holds_all, Admin, &perms),
            Ok(())
        );
        assert_eq!(
            may_grant_custom_role(Admin, holds_read, Member, &[]),
            Ok(())
        );
    }
}
