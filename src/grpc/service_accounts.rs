//! `keyward.v1.ServiceAccountService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::service_account_service_server::ServiceAccountService;
use super::pb::*;
use super::{caller, convert};
use crate::app::service_accounts::NewServiceAccount;
use crate::app::App;
use crate::domain::permissions::OrgRole as DomainOrgRole;
use crate::domain::roles::Role as DomainRole;
use crate::error::Error;
use crate::store::api_keys::ApiKeyDoc;
use crate::store::service_accounts::ServiceAccountDoc;

/// The ServiceAccountService adapter.
pub struct ServiceAccounts {
    pub app: Arc<App>,
}

impl ServiceAccounts {}

fn bson_ts(t: mongodb::bson::DateTime) -> Option<prost_types::Timestamp> {
    convert::timestamp(t.to_chrono())
}

fn service_account(a: &ServiceAccountDoc) -> ServiceAccount {
    ServiceAccount {
        id: a.id.clone(),
        name: a.name.clone(),
        description: a.description.clone(),
        org_id: a.org_id.clone().unwrap_or_default(),
        role: match a.org_id {
            Some(_) => Role::Unspecified,
            None => convert::role(a.role.parse().unwrap_or(DomainRole::Guest)),
        } as i32,
        org_role: a
            .org_role
            .as_deref()
            .and_then(|r| r.parse::<DomainOrgRole>().ok())
            .map_or(OrgRole::Unspecified, convert::org_role) as i32,
        allowed_permissions: a.allowed_permissions.clone(),
        disabled: a.disabled,
        created_by: a.created_by.clone(),
        created_at: bson_ts(a.created_at),
    }
}

fn api_key(k: &ApiKeyDoc) -> ApiKey {
    ApiKey {
        id: k.id.clone(),
        service_account_id: k.service_account_id.clone(),
        prefix: k.prefix.clone(),
        description: k.description.clone(),
        created_at: bson_ts(k.created_at),
        expires_at: k.expires_at.and_then(bson_ts),
        last_used_at: k.last_used_at.and_then(bson_ts),
        last_used_address: k.last_used_address.clone(),
        revoked_at: k.revoked_at.and_then(bson_ts),
    }
}

fn global_role(value: i32) -> Result<Option<DomainRole>, Error> {
    Ok(match Role::try_from(value) {
        Ok(Role::Unspecified) => None,
        Ok(Role::Guest) => Some(DomainRole::Guest),
        Ok(Role::User) => Some(DomainRole::User),
        Ok(Role::Moderator) => Some(DomainRole::Moderator),
        Ok(Role::Admin) => Some(DomainRole::Admin),
        Ok(Role::SuperAdmin) => Some(DomainRole::SuperAdmin),
        Err(_) => return Err(Error::invalid("role", "is not a known role")),
    })
}

fn org_role(value: i32) -> Result<Option<DomainOrgRole>, Error> {
    Ok(match OrgRole::try_from(value) {
        Ok(OrgRole::Unspecified) => None,
        Ok(OrgRole::Member) => Some(DomainOrgRole::Member),
        Ok(OrgRole::Admin) => Some(DomainOrgRole::Admin),
        Ok(OrgRole::Owner) => Some(DomainOrgRole::Owner),
        Err(_) => {
            return Err(Error::invalid(
                "org_role",
                "is not a known organization role",
            ))
        }
    })
}

#[tonic::async_trait]
impl ServiceAccountService for ServiceAccounts {
    #[instrument(skip(self, request))]
    async fn create_service_account(
        &self,
        request: Request<CreateServiceAccountRequest>,
    ) -> Result<Response<CreateServiceAccountResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let new = NewServiceAccount {
            name: r.name,
            description: r.description,
            org_id: r.org_id,
            role: global_role(r.role)?,
            org_role: org_role(r.org_role)?,
            allowed_permissions: r.allowed_permissions,
        };
        let account = self.app.create_service_account(&who, new, &caller).await?;
        Ok(Response::new(CreateServiceAccountResponse {
            service_account: Some(service_account(&account)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_service_accounts(
        &self,
        request: Request<ListServiceAccountsRequest>,
    ) -> Result<Response<ListServiceAccountsResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let org_id = request.into_inner().org_id;
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
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let id = request.into_inner().service_account_id;
        self.app.disable_service_account(&who, &id, &caller).await?;
        Ok(Response::new(DisableServiceAccountResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn delete_service_account(
        &self,
        request: Request<DeleteServiceAccountRequest>,
    ) -> Result<Response<DeleteServiceAccountResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let id = request.into_inner().service_account_id;
        self.app.delete_service_account(&who, &id, &caller).await?;
        Ok(Response::new(DeleteServiceAccountResponse {}))
    }

    #[instrument(skip(self, request))]
    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let expires_at = match r.expires_at {
            None => None,
            Some(t) => Some(
                chrono::DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
                    .ok_or_else(|| Error::invalid("expires_at", "is not a valid time"))?,
            ),
        };
        let created = self
            .app
            .create_api_key(
                &who,
                &r.service_account_id,
                &r.description,
                expires_at,
                &caller,
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
        let who = super::signed_in(&self.app, &request).await?;
        let id = request.into_inner().service_account_id;
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
        let who = super::signed_in(&self.app, &request).await?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        self.app
            .revoke_api_key(&who, &r.service_account_id, &r.api_key_id, &caller)
            .await?;
        Ok(Response::new(RevokeApiKeyResponse {}))
    }
}
