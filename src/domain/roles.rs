//! Global (platform-wide) roles, ordered from least to most powerful (seed 002's five tiers).

use std::fmt;
use std::str::FromStr;

/// A user's global role. `Ord` follows power: `Guest < User < … < SuperAdmin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Role {
    Guest,
    #[default]
    User,
    Moderator,
    Admin,
    SuperAdmin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Guest,
        Role::User,
        Role::Moderator,
        Role::Admin,
        Role::SuperAdmin,
    ];

    /// The stored and claimed form, e.g. `super_admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::User => "user",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
            Role::SuperAdmin => "super_admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (expected one of guest, user, moderator, admin, super_admin)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_are_ordered_by_power() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!(Role::SuperAdmin > Role::Admin && Role::Admin > Role::Moderator);
        assert!(Role::Moderator > Role::User && Role::User > Role::Guest);
        assert!("root".parse::<Role>().is_err());
    }
}
