//! Services whose contract is declared but whose RPCs later work implements: every call answers
//! UNIMPLEMENTED (the generated default methods) until then.

use super::pb::org_service_server::OrgService;

/// `keyward.v1.OrgService`, not implemented yet.
pub struct Org;

#[tonic::async_trait]
impl OrgService for Org {}
