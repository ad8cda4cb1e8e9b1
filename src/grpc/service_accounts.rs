//! `keyward.v1.ServiceAccountService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::service_account_service_server::ServiceAccountService;
use super::pb::*;
use super::{convert, inbound, RequestContext};
use crate::app::service_accounts::{self as app, NewServiceAccount};
use crate::app::App;

/// The ServiceAccountService adapter.
pub struct ServiceAccounts {
    pub app: Arc<App>,
}

fn service_account(a: &app::ServiceAccount) -> ServiceAccount {
    ServiceAccount {
        id: a.id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        org_id: a.org_id.clone().unwrap_or_default(),
        role: a.role.map_or(Role::Unspecified, convert::role) as i32,
        org_role: a.org_role.map_or(OrgRole::Unspecified, convert::org_role) as i32,
        allowed_permissions: a.allowed_permissions.clone(),
        disabled: a.disabled,
        created_by: a.created_by.clone(),
        created_at: convert::timestamp(a.created_at),
    }
}

fn api_key(k: &app::ApiKey) -> ApiKey {
    ApiKey {
        id: k.id.clone(),
        service_account_id: k.service_account_id.clone(),
        prefix: k.prefix.clone(),
        description: k.description.clone(),
        created_at: convert::timestamp(k.created_at),
        expires_at: k.expires_at.and_then(convert::timestamp),
        last_used_at: k.last_used_at.and_then(convert::timestamp),
        last_used_address: k.last_used_address.clone(),
        revoked_at: k.revoked_at.and_then(convert::timestamp),
    }
}

#[tonic::async_trait]
impl ServiceAccountService for ServiceAccounts {
    #[instrument(skip(self, request))]
    async fn create_service_account(
        &self,
        request: Request<CreateServiceAccountRequest>,
    ) -> Result<Response<CreateServiceAccountResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let new = NewServiceAccount {
            name: r.name,
            description: r.description,
            org_id: r.org_id,
            role: inbound::role(r.role, "role")?,
            org_role: inbound::org_role(r.org_role, "org_role")?,
            allowed_permissions: r.allowed_permissions,
        };
        let account = self
            .app
            .create_service_account(&who, new, &ctx.caller)
            .await?;
        Ok(Response::new(CreateServiceAccountResponse {
            service_account: Some(service_account(&account)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_service_accounts(
        &self,
        request: Request<ListServiceAccountsRequest>,
    ) -> Result<Response<ListServiceAccountsResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let org_id = r.org_id;
        let accounts = self.app.list_service_accounts(&who, &org_id).await?;
        Ok(Response::new(ListServiceAccountsResponse {
            service_accounts: accounts.iter().map(service_account).collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn disable_service_account(
        &self,
        request: Request<DisableServiceAccountRequest>,
    ) -> Result<Response<DisableServiceAccountResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let id = r.service_account_id;
        self.app
            .disable_service_account(&who, &id, &ctx.caller)
            .await?;
        Ok(Response::new(DisableServiceAccountResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn delete_service_account(
        &self,
        request: Request<DeleteServiceAccountRequest>,
    ) -> Result<Response<DeleteServiceAccountResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let id = r.service_account_id;
        self.app
            .delete_service_account(&who, &id, &ctx.caller)
            .await?;
        Ok(Response::new(DeleteServiceAccountResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let expires_at = inbound::time(r.expires_at, "expires_at")?;
        let created = self
            .app
            .create_api_key(
                &who,
                &r.service_account_id,
                &r.description,
                expires_at,
                &ctx.caller,
            )
            .await?;
        Ok(Response::new(CreateApiKeyResponse {
            api_key: Some(api_key(&created.key)),
            secret: created.secret,
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let id = r.service_account_id;
        let keys = self.app.list_api_keys(&who, &id).await?;
        Ok(Response::new(ListApiKeysResponse {
            api_keys: keys.iter().map(api_key).collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        self.app
            .revoke_api_key(&who, &r.service_account_id, &r.api_key_id, &ctx.caller)
            .await?;
        Ok(Response::new(RevokeApiKeyResponse {}))
    }
}
