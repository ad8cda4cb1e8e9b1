//! Services whose contract is declared but whose RPCs later work implements: every call answers
//! UNIMPLEMENTED (the generated default methods) until then.

use super::pb::org_service_server::OrgService;
use super::pb::user_service_server::UserService;

/// `keyward.v1.OrgService`, not implemented yet.
pub struct Org;
/// `keyward.v1.UserService`, not implemented yet.
pub struct Users;

#[tonic::async_trait]
impl OrgService for Org {}
#[tonic::async_trait]
impl UserService for Users {}
