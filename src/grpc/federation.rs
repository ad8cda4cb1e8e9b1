//! `keyward.v1.FederationService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::federation_service_server::FederationService;
use super::pb::*;
use super::{convert, RequestContext};
use crate::app::federation::{Callback, Started};
use crate::app::App;

/// The FederationService adapter.
pub struct Federation {
    pub app: Arc<App>,
}

fn started(s: Started) -> (String, String, Option<prost_types::Timestamp>, String) {
    (
        s.authorization_url,
        s.state,
        convert::timestamp(s.expires_at),
        s.flow_secret,
    )
}

#[tonic::async_trait]
impl FederationService for Federation {
    #[instrument(skip(self, _request))]
    async fn list_providers(
        &self,
        _request: Request<ListProvidersRequest>,
    ) -> Result<Response<ListProvidersResponse>, Status> {
        let providers = self
            .app
            .list_providers()
            .into_iter()
            .map(|(id, display_name)| FederationProvider { id, display_name })
            .collect();
        Ok(Response::new(ListProvidersResponse { providers }))
    }

    #[instrument(skip(self, request))]
    async fn start_federated_login(
        &self,
        request: Request<StartFederatedLoginRequest>,
    ) -> Result<Response<StartFederatedLoginResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let s = self
            .app
            .start_federated_login(&r.provider, &r.redirect_uri, &ctx.caller)
            .await?;
        let (authorization_url, state, expires_at, flow_secret) = started(s);
        Ok(Response::new(StartFederatedLoginResponse {
            authorization_url,
            state,
            expires_at,
            flow_secret,
        }))
    }

    #[instrument(skip(self, request))]
    async fn finish_federated_login(
        &self,
        request: Request<FinishFederatedLoginRequest>,
    ) -> Result<Response<FinishFederatedLoginResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let callback = Callback {
            state: r.state,
            code: r.code,
            error: r.error,
            error_description: r.error_description,
            iss: r.iss,
            flow_secret: r.flow_secret,
        };
        let done = self
            .app
            .finish_federated_login(&callback, &ctx.caller)
            .await?;
        let answer = convert::sign_in(done.sign_in, self.app.now());
        Ok(Response::new(FinishFederatedLoginResponse {
            tokens: answer.tokens,
            mfa_challenge: answer.mfa_challenge,
            account_created: done.account_created,
            identity: Some(convert::linked_identity(&done.identity)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn start_link_identity(
        &self,
        request: Request<StartLinkIdentityRequest>,
    ) -> Result<Response<StartLinkIdentityResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let s = self
            .app
            .start_link_identity(&who, &r.provider, &r.redirect_uri, &ctx.caller)
            .await?;
        let (authorization_url, state, expires_at, flow_secret) = started(s);
        Ok(Response::new(StartLinkIdentityResponse {
            authorization_url,
            state,
            expires_at,
            flow_secret,
        }))
    }

    #[instrument(skip(self, request))]
    async fn finish_link_identity(
        &self,
        request: Request<FinishLinkIdentityRequest>,
    ) -> Result<Response<FinishLinkIdentityResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let callback = Callback {
            state: r.state,
            code: r.code,
            error: r.error,
            error_description: r.error_description,
            iss: r.iss,
            flow_secret: r.flow_secret,
        };
        let identity = self
            .app
            .finish_link_identity(&who, &callback, &ctx.caller)
            .await?;
        Ok(Response::new(FinishLinkIdentityResponse {
            identity: Some(convert::linked_identity(&identity)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_identities(
        &self,
        request: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesResponse>, Status> {
        let (ctx, _) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let identities = self.app.list_identities(&who).await?;
        Ok(Response::new(ListIdentitiesResponse {
            identities: identities.iter().map(convert::linked_identity).collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn unlink_identity(
        &self,
        request: Request<UnlinkIdentityRequest>,
    ) -> Result<Response<UnlinkIdentityResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        self.app
            .unlink_identity(&who, &r.provider, &r.subject, &ctx.caller)
            .await?;
        Ok(Response::new(UnlinkIdentityResponse {}))
    }
}
