//! `keyward.v1.PermissionService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::permission_service_server::PermissionService;
use super::pb::*;
use super::{convert, inbound, RequestContext};
use crate::app::permissions::{Definition, NewPermission};
use crate::app::App;
use crate::domain::permissions::PermissionChange;
use crate::domain::permissions::Scope;
use crate::error::Error;

/// The PermissionService adapter.
pub struct Permissions {
    pub app: Arc<App>,
}

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
        created_at: d.created_at.and_then(convert::timestamp),
        updated_at: d.updated_at.and_then(convert::timestamp),
    }
}

/// A global role's name, `""` when unspecified.
fn role_name(value: i32, field: &str) -> Result<&'static str, Error> {
    Ok(inbound::role(value, field)?.map_or("", |r| r.as_str()))
}

/// An organization role's name, `""` when unspecified.
fn org_role_name(value: i32, field: &str) -> Result<&'static str, Error> {
    Ok(inbound::org_role(value, field)?.map_or("", |r| r.as_str()))
}

#[tonic::async_trait]
impl PermissionService for Permissions {
    #[instrument(skip(self, request))]
    async fn define_permission(
        &self,
        request: Request<DefinePermissionRequest>,
    ) -> Result<Response<DefinePermissionResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
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
        let defined = match self.app.define_permission(&who, new, &ctx.caller).await {
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
        let (ctx, _) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
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
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
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
            .update_permission(&who, &r.name, change, global, &ctx.caller)
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
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let name = r.name;
        self.app.delete_permission(&who, &name, &ctx.caller).await?;
        Ok(Response::new(DeletePermissionResponse {}))
    }
}
