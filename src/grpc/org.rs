//! `keyward.v1.OrgService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::org_service_server::OrgService;
use super::pb::*;
use super::{convert, inbound, RequestContext};
use crate::app::org_roles::NewOrgRole;
use crate::app::orgs::{NewMember, NewOrg};
use crate::app::App;
use crate::domain::permissions::OrgRole as DomainOrgRole;

/// The OrgService adapter.
pub struct Org {
    pub app: Arc<App>,
}

/// An org role from the wire; `None` for ORG_ROLE_UNSPECIFIED (each RPC says what that means).
#[tonic::async_trait]
impl OrgService for Org {
    #[instrument(skip(self, request))]
    async fn create_org(
        &self,
        request: Request<CreateOrgRequest>,
    ) -> Result<Response<CreateOrgResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let new = NewOrg {
            name: r.name,
            slug: r.slug,
            website: r.website,
        };
        let org = self.app.create_org(&who, new, &ctx.caller).await?;
        Ok(Response::new(CreateOrgResponse {
            organization: Some(convert::organization(&org)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn get_org(
        &self,
        request: Request<GetOrgRequest>,
    ) -> Result<Response<GetOrgResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let (org, role) = self.app.get_org(&who, &r.org_id).await?;
        Ok(Response::new(GetOrgResponse {
            organization: Some(convert::organization(&org)),
            role: convert::org_role(role) as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn update_org(
        &self,
        request: Request<UpdateOrgRequest>,
    ) -> Result<Response<UpdateOrgResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let org = self
            .app
            .update_org(
                &who,
                &r.org_id,
                r.name,
                r.website,
                r.require_mfa,
                &ctx.caller,
            )
            .await?;
        Ok(Response::new(UpdateOrgResponse {
            organization: Some(convert::organization(&org)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn delete_org(
        &self,
        request: Request<DeleteOrgRequest>,
    ) -> Result<Response<DeleteOrgResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        self.app.delete_org(&who, &r.org_id, &ctx.caller).await?;
        Ok(Response::new(DeleteOrgResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn list_my_orgs(
        &self,
        request: Request<ListMyOrgsRequest>,
    ) -> Result<Response<ListMyOrgsResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let page = self
            .app
            .list_my_orgs(&who, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListMyOrgsResponse {
            orgs: page.items.iter().map(convert::org_membership).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[instrument(skip(self, request))]
    async fn invite_member(
        &self,
        request: Request<InviteMemberRequest>,
    ) -> Result<Response<InviteMemberResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let role = inbound::org_role(r.role, "role")?.unwrap_or(DomainOrgRole::Member);
        let invitation = self
            .app
            .invite_member(&who, &r.org_id, &r.email, role, &r.department, &ctx.caller)
            .await?;
        Ok(Response::new(InviteMemberResponse {
            invitation: Some(convert::invitation(&invitation)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn accept_invitation(
        &self,
        request: Request<AcceptInvitationRequest>,
    ) -> Result<Response<AcceptInvitationResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let (org, member) = self
            .app
            .accept_invitation(&who, &r.token, &ctx.caller)
            .await?;
        Ok(Response::new(AcceptInvitationResponse {
            organization: Some(convert::organization(&org)),
            member: Some(convert::member(&member)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn create_member(
        &self,
        request: Request<CreateMemberRequest>,
    ) -> Result<Response<CreateMemberResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let new = NewMember {
            role: inbound::org_role(r.role, "role")?.unwrap_or(DomainOrgRole::Member),
            email: r.email,
            display_name: r.display_name,
            password: r.password,
            department: r.department,
        };
        let member = self
            .app
            .create_member(&who, &r.org_id, new, &ctx.caller)
            .await?;
        Ok(Response::new(CreateMemberResponse {
            member: Some(convert::member(&member)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let role = inbound::org_role(r.role, "role")?;
        let page = self
            .app
            .list_members(&who, &r.org_id, role, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListMembersResponse {
            members: page.items.iter().map(convert::member).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[instrument(skip(self, request))]
    async fn update_member(
        &self,
        request: Request<UpdateMemberRequest>,
    ) -> Result<Response<UpdateMemberResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let role = inbound::org_role(r.role, "role")?;
        let member = self
            .app
            .update_member(
                &who,
                &r.org_id,
                &r.user_id,
                role,
                r.custom_role,
                r.department,
                &ctx.caller,
            )
            .await?;
        Ok(Response::new(UpdateMemberResponse {
            member: Some(convert::member(&member)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        self.app
            .remove_member(&who, &r.org_id, &r.user_id, &ctx.caller)
            .await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn define_org_role(
        &self,
        request: Request<DefineOrgRoleRequest>,
    ) -> Result<Response<DefineOrgRoleResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let new = NewOrgRole {
            name: r.name,
            description: r.description,
            base_role: inbound::org_role(r.base_role, "base_role")?,
            permissions: r.permissions,
        };
        let role = self
            .app
            .define_org_role(&who, &r.org_id, new, &ctx.caller)
            .await?;
        Ok(Response::new(DefineOrgRoleResponse {
            role: Some(convert::org_custom_role(&role)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_org_roles(
        &self,
        request: Request<ListOrgRolesRequest>,
    ) -> Result<Response<ListOrgRolesResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let roles = self.app.list_org_roles(&who, &r.org_id).await?;
        Ok(Response::new(ListOrgRolesResponse {
            roles: roles.iter().map(convert::org_custom_role).collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn update_org_role(
        &self,
        request: Request<UpdateOrgRoleRequest>,
    ) -> Result<Response<UpdateOrgRoleResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let role = self
            .app
            .update_org_role(
                &who,
                &r.org_id,
                &r.name,
                r.description,
                r.permissions.map(|p| p.names),
                &ctx.caller,
            )
            .await?;
        Ok(Response::new(UpdateOrgRoleResponse {
            role: Some(convert::org_custom_role(&role)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn delete_org_role(
        &self,
        request: Request<DeleteOrgRoleRequest>,
    ) -> Result<Response<DeleteOrgRoleResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        self.app
            .delete_org_role(&who, &r.org_id, &r.name, &ctx.caller)
            .await?;
        Ok(Response::new(DeleteOrgRoleResponse {}))
    }
}
