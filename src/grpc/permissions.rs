//! `keyward.v1.PermissionService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::permission_service_server::PermissionService;
use super::pb::*;
use super::{caller, convert};
use crate::app::permissions::{Definition, NewPermission};
use crate::app::App;
use crate::domain::permissions::Scope;
use crate::error::Error;
use crate::store::permissions::PermissionChange;

/// The PermissionService adapter.
pub struct Permissions {
    pub app: Arc<App>,
}

impl Permissions {}

fn permission(d: &Definition) -> Permission {
    let (scope, least_role, least_org_role) = match d.rule.scope {
        Scope::Platform(role) => (
            PermissionScope::Platform,
            convert::role(role),
            OrgRole::Unspecified,
        ),
        Scope::Org(role) => (
            PermissionScope::Organization,
            Role::Unspecified,
            convert::org_role(role),
        ),
    };
    Permission {
        name: d.name.clone(),
        description: d.description.clone(),
        scope: scope as i32,
        least_role: least_role as i32,
        least_org_role: least_org_role as i32,
        requires_mfa: d.rule.requires_mfa,
        built_in: d.built_in,
        created_at: d
            .doc
            .as_ref()
            .and_then(|doc| convert::timestamp(doc.created_at.to_chrono())),
        updated_at: d
            .doc
            .as_ref()
            .and_then(|doc| convert::timestamp(doc.updated_at.to_chrono())),
    }
}

/// A global role's name, `""` when unspecified; INVALID_ARGUMENT when not a role at all.
fn role_name(value: i32, field: &str) -> Result<&'static str, Error> {
    match Role::try_from(value) {
        Ok(Role::Unspecified) => Ok(""),
        Ok(Role::Guest) => Ok("guest"),
        Ok(Role::User) => Ok("user"),
        Ok(Role::Moderator) => Ok("moderator"),
        Ok(Role::Admin) => Ok("admin"),
        Ok(Role::SuperAdmin) => Ok("super_admin"),
        Err(_) => Err(Error::invalid(field, "is not a known role")),
    }
}

/// An organization role's name, `""` when unspecified.
fn org_role_name(value: i32, field: &str) -> Result<&'static str, Error> {
    match OrgRole::try_from(value) {
        Ok(OrgRole::Unspecified) => Ok(""),
        Ok(OrgRole::Member) => Ok("member"),
        Ok(OrgRole::Admin) => Ok("admin"),
        Ok(OrgRole::Owner) => Ok("owner"),
        Err(_) => Err(Error::invalid(field, "is not a known organization role")),
    }
}

#[tonic::async_trait]
impl PermissionService for Permissions {
    #[instrument(skip(self, request))]
    async fn define_permission(
        &self,
        request: Request<DefinePermissionRequest>,
    ) -> Result<Response<DefinePermissionResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let (scope, least_role) = match PermissionScope::try_from(r.scope) {
            Ok(PermissionScope::Platform) => ("platform", role_name(r.least_role, "least_role")?),
            Ok(PermissionScope::Organization) => (
                "organization",
                org_role_name(r.least_org_role, "least_org_role")?,
            ),
            _ => ("", ""),
        };
        let new = NewPermission {
            name: r.name,
            description: r.description,
            scope: scope.into(),
            least_role: least_role.into(),
            requires_mfa: r.requires_mfa,
        };
        let org_scope = new.scope == "organization";
        let defined = match self.app.define_permission(&who, new, &caller).await {
            // The proto names the organization role's field apart.
            Err(Error::InvalidArgument(mut violations)) if org_scope => {
                for v in &mut violations {
                    if v.field == "least_role" {
                        v.field = "least_org_role".into();
                    }
                }
                return Err(Error::InvalidArgument(violations).into());
            }
            other => other?,
        };
        Ok(Response::new(DefinePermissionResponse {
            permission: Some(permission(&defined)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_permissions(
        &self,
        request: Request<ListPermissionsRequest>,
    ) -> Result<Response<ListPermissionsResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let all = self.app.list_permissions(&who).await?;
        Ok(Response::new(ListPermissionsResponse {
            permissions: all.iter().map(permission).collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn update_permission(
        &self,
        request: Request<UpdatePermissionRequest>,
    ) -> Result<Response<UpdatePermissionResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let least_role = match (r.least_role, r.least_org_role) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "least_role",
                    "set least_role or least_org_role, not both",
                )
                .into())
            }
            (Some(v), None) => Some(role_name(v, "least_role")?),
            (None, Some(v)) => Some(org_role_name(v, "least_org_role")?),
            (None, None) => None,
        };
        let change = PermissionChange {
            description: r.description,
            least_role: least_role.map(str::to_string),
            requires_mfa: r.requires_mfa,
        };
        let global = r.least_role.is_some();
        let updated = match self
            .app
            .update_permission(&who, &r.name, change, global, &caller)
            .await
        {
            // An organization role comes in least_org_role: name that field.
            Err(Error::InvalidArgument(mut violations)) if r.least_org_role.is_some() => {
                for v in &mut violations {
                    if v.field == "least_role" {
                        v.field = "least_org_role".into();
                    }
                }
                return Err(Error::InvalidArgument(violations).into());
            }
            other => other?,
        };
        Ok(Response::new(UpdatePermissionResponse {
            permission: Some(permission(&updated)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn delete_permission(
        &self,
        request: Request<DeletePermissionRequest>,
    ) -> Result<Response<DeletePermissionResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let name = request.into_inner().name;
        self.app.delete_permission(&who, &name, &caller).await?;
        Ok(Response::new(DeletePermissionResponse {}))
    }
}
