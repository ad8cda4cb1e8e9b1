//! Pure rules: no tonic, no MongoDB. Everything here takes time (`now`) as a parameter.

pub mod audit;
pub mod client_address;
pub mod codes;
pub mod email;
pub mod federation;
pub mod lockout;
pub mod mfa;
pub mod org_roles;
pub mod orgs;
pub mod paging;
pub mod password;
pub mod permissions;
pub mod roles;
pub mod secrets;
pub mod tokens;
pub mod validation;
