//! `keyward.v1.UserService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::user_service_server::UserService;
use super::pb::*;
use super::{convert, inbound, RequestContext};
use crate::app::users::ProfileChanges;
use crate::app::users::{AuditEntry, AuditQuery, UserQuery};
use crate::app::App;
use crate::domain::audit::Outcome;
use crate::error::Error;

/// The UserService adapter.
pub struct Users {
    pub app: Arc<App>,
}

fn audit_event(e: AuditEntry) -> AuditEvent {
    AuditEvent {
        id: e.id,
        action: e.action,
        outcome: match e.outcome {
            Outcome::Success => AuditOutcome::Success,
            Outcome::Failure => AuditOutcome::Failure,
            Outcome::Denied => AuditOutcome::Denied,
        } as i32,
        user_id: e.user_id.unwrap_or_default(),
        actor_id: e.actor_id.unwrap_or_default(),
        session_id: e.session_id.unwrap_or_default(),
        client_address: e.client_address,
        user_agent: e.user_agent,
        detail: e.detail.into_iter().collect(),
        occurred_at: convert::timestamp(e.occurred_at),
    }
}

#[tonic::async_trait]
impl UserService for Users {
    #[instrument(skip(self, request))]
    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let statuses = inbound::account_status(r.status, "status")?
            .into_iter()
            .collect();
        let email_prefix = crate::domain::email::normalize_prefix(&r.email_prefix);
        // Longer than any stored email can be, or with characters none has: match nothing, and
        // must not reach the database as a query it refuses.
        if email_prefix.len() > crate::domain::email::MAX_EMAIL_LEN
            || email_prefix.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                "email_prefix",
                format!(
                    "must be at most {} bytes, without control characters",
                    crate::domain::email::MAX_EMAIL_LEN
                ),
            )
            .into());
        }
        let query = UserQuery {
            statuses,
            role: inbound::role(r.role, "role")?,
            email_prefix,
            created_after: inbound::time_bound(r.created_after),
            created_before: inbound::time_bound(r.created_before),
        };
        let page = self
            .app
            .list_users(&who, query, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListUsersResponse {
            users: page.items.iter().map(convert::user).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[instrument(skip(self, request))]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let user = self.app.get_user(&who, &r.user_id).await?;
        Ok(Response::new(GetUserResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let changes = ProfileChanges {
            display_name: r.display_name,
            email: r.email,
            email_verified: r.email_verified,
        };
        let user = self
            .app
            .update_user(&who, &r.user_id, changes, &ctx.caller)
            .await?;
        Ok(Response::new(UpdateUserResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn set_user_role(
        &self,
        request: Request<SetUserRoleRequest>,
    ) -> Result<Response<SetUserRoleResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let role =
            inbound::role(r.role, "role")?.ok_or_else(|| Error::invalid("role", "is required"))?;
        let user = self
            .app
            .set_user_role(&who, &r.user_id, role, &ctx.caller)
            .await?;
        Ok(Response::new(SetUserRoleResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn disable_user(
        &self,
        request: Request<DisableUserRequest>,
    ) -> Result<Response<DisableUserResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let (user, ended) = self
            .app
            .disable_user(&who, &r.user_id, &r.reason, &ctx.caller)
            .await?;
        Ok(Response::new(DisableUserResponse {
            user: Some(convert::user(&user)),
            sessions_ended: ended as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn enable_user(
        &self,
        request: Request<EnableUserRequest>,
    ) -> Result<Response<EnableUserResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let user = self.app.enable_user(&who, &r.user_id, &ctx.caller).await?;
        Ok(Response::new(EnableUserResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let ended = self
            .app
            .delete_user(&who, &r.user_id, &r.reason, &ctx.caller)
            .await?;
        Ok(Response::new(DeleteUserResponse {
            sessions_ended: ended as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let query = AuditQuery {
            user_id: r.user_id,
            action: r.action,
            after: inbound::time_bound(r.after),
            before: inbound::time_bound(r.before),
        };
        let page = self
            .app
            .list_audit_events(&who, query, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListAuditEventsResponse {
            events: page.items.into_iter().map(audit_event).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
