//! Protobuf request fields -> domain values, one function per type, each refusing what it
//! cannot convert with INVALID_ARGUMENT naming the field. (The results going out are in
//! `convert`.)

use chrono::{DateTime, Utc};

use super::pb;
use crate::app::users::AccountStatus;
use crate::domain::codes::Purpose;
use crate::domain::permissions::OrgRole;
use crate::domain::roles::Role;
use crate::error::Error;

/// A global role; `None` when unspecified.
pub fn role(value: i32, field: &str) -> Result<Option<Role>, Error> {
    Ok(match pb::Role::try_from(value) {
        Ok(pb::Role::Unspecified) => None,
        Ok(pb::Role::Guest) => Some(Role::Guest),
        Ok(pb::Role::User) => Some(Role::User),
        Ok(pb::Role::Moderator) => Some(Role::Moderator),
        Ok(pb::Role::Admin) => Some(Role::Admin),
        Ok(pb::Role::SuperAdmin) => Some(Role::SuperAdmin),
        Err(_) => return Err(Error::invalid(field, "is not a known role")),
    })
}

/// An organization role; `None` when unspecified.
pub fn org_role(value: i32, field: &str) -> Result<Option<OrgRole>, Error> {
    Ok(match pb::OrgRole::try_from(value) {
        Ok(pb::OrgRole::Unspecified) => None,
        Ok(pb::OrgRole::Member) => Some(OrgRole::Member),
        Ok(pb::OrgRole::Admin) => Some(OrgRole::Admin),
        Ok(pb::OrgRole::Owner) => Some(OrgRole::Owner),
        Err(_) => return Err(Error::invalid(field, "is not a known organization role")),
    })
}

/// An account state to list by; `None` when unspecified.
pub fn account_status(value: i32, field: &str) -> Result<Option<AccountStatus>, Error> {
    Ok(match pb::UserStatus::try_from(value) {
        Ok(pb::UserStatus::Unspecified) => None,
        Ok(pb::UserStatus::Active) => Some(AccountStatus::Active),
        Ok(pb::UserStatus::Disabled) => Some(AccountStatus::Disabled),
        Ok(pb::UserStatus::Deleted) => Some(AccountStatus::Deleted),
        Err(_) => return Err(Error::invalid(field, "is not a known status")),
    })
}

/// A one-time code's purpose (there is no default).
pub fn purpose(value: i32) -> Result<Purpose, Error> {
    match pb::CodePurpose::try_from(value) {
        Ok(pb::CodePurpose::VerifyEmail) => Ok(Purpose::VerifyEmail),
        Ok(pb::CodePurpose::Login) => Ok(Purpose::Login),
        Ok(pb::CodePurpose::ResetPassword) => Ok(Purpose::ResetPassword),
        _ => Err(Error::invalid(
            "purpose",
            "must be CODE_PURPOSE_VERIFY_EMAIL, CODE_PURPOSE_LOGIN or CODE_PURPOSE_RESET_PASSWORD",
        )),
    }
}

/// An optional point in time; `None` when absent. A time chrono cannot represent is refused.
pub fn time(
    t: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, Error> {
    t.map(|t| {
        DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
            .ok_or_else(|| Error::invalid(field, "is not a valid time"))
    })
    .transpose()
}

/// A listing's time bound: absent, or out of chrono's range, means no bound.
pub fn time_bound(t: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    time(t, "").ok().flatten()
}
