//! `keyward.v1.AuthService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::auth_service_server::AuthService;
use super::pb::*;
use super::{convert, RequestContext};
use crate::app::accounts::NewAccount;
use crate::app::authorization::{check_org_id, Check};
use crate::app::orgs::NewOrg;
use crate::app::App;
use crate::error::Error;

/// The AuthService adapter.
pub struct Auth {
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl AuthService for Auth {
    #[instrument(skip(self, request))]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let account = NewAccount {
            email: r.email,
            password: r.password,
            display_name: r.display_name,
            ..Default::default()
        };
        // With an organization: a "hospital registration", the new user owning it.
        let (user, org_id) = match r.organization {
            Some(o) => {
                let org = NewOrg {
                    name: o.name,
                    slug: o.slug,
                    website: o.website,
                };
                let (user, org) = self
                    .app
                    .register_with_org(account, org, &ctx.caller)
                    .await?;
                (user, org.id)
            }
            None => (
                self.app.register(account, &ctx.caller).await?,
                String::new(),
            ),
        };
        Ok(Response::new(RegisterResponse {
            pending_verification: !user.email_verified,
            user: Some(convert::user(&user)),
            org_id,
        }))
    }

    #[instrument(skip(self, request))]
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let signed_in = self.app.login(&r.email, &r.password, &ctx.caller).await?;
        let answer = convert::sign_in(signed_in, self.app.now());
        Ok(Response::new(LoginResponse {
            tokens: answer.tokens,
            mfa_challenge: answer.mfa_challenge,
        }))
    }

    #[instrument(skip(self, request))]
    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let issued = self.app.refresh(&r.refresh_token, &ctx.caller).await?;
        Ok(Response::new(RefreshResponse {
            tokens: Some(convert::token_pair(issued, self.app.now())),
        }))
    }

    #[instrument(skip(self, request))]
    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let ended = self.app.logout(&who, r.all_sessions, &ctx.caller).await?;
        Ok(Response::new(LogoutResponse {
            sessions_ended: ended as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let verdict = self
            .app
            .authorize(&r.access_token, &[], &ctx.caller.client_address)
            .await?;
        Ok(Response::new(AuthenticateResponse {
            principal: Some(convert::principal(&verdict.claims, &verdict.standing)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let mut violations = Vec::new();
        check_org_id("org_id", &r.org_id, &mut violations);
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        let check = Check {
            permission: r.permission,
            org_id: r.org_id,
        };
        let verdict = self
            .app
            .authorize(&r.access_token, &[check], &ctx.caller.client_address)
            .await?;
        let decision = verdict.decisions[0];
        Ok(Response::new(AuthorizeResponse {
            allowed: decision.allowed,
            reason: decision.reason.to_string(),
            principal: Some(convert::principal(&verdict.claims, &verdict.standing)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn batch_authorize(
        &self,
        request: Request<BatchAuthorizeRequest>,
    ) -> Result<Response<BatchAuthorizeResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let mut violations = Vec::new();
        for (i, c) in r.checks.iter().enumerate() {
            check_org_id(&format!("checks[{i}].org_id"), &c.org_id, &mut violations);
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations).into());
        }
        let checks: Vec<Check> = r
            .checks
            .into_iter()
            .map(|c| Check {
                permission: c.permission,
                org_id: c.org_id,
            })
            .collect();
        let verdict = self
            .app
            .authorize(&r.access_token, &checks, &ctx.caller.client_address)
            .await?;
        Ok(Response::new(BatchAuthorizeResponse {
            decisions: verdict
                .decisions
                .into_iter()
                .map(|d| AuthorizeDecision {
                    allowed: d.allowed,
                    reason: d.reason.to_string(),
                })
                .collect(),
            principal: Some(convert::principal(&verdict.claims, &verdict.standing)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn get_me(
        &self,
        request: Request<GetMeRequest>,
    ) -> Result<Response<GetMeResponse>, Status> {
        let (ctx, _) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let user = self.app.my_account(&who).await?;
        Ok(Response::new(GetMeResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let ended = self
            .app
            .change_password(
                &who,
                &r.current_password,
                &r.new_password,
                r.keep_other_sessions,
                &ctx.caller,
            )
            .await?;
        Ok(Response::new(ChangePasswordResponse {
            sessions_ended: ended as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let (ctx, _) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let sessions = self.app.list_sessions(&who).await?;
        Ok(Response::new(ListSessionsResponse {
            sessions: sessions
                .iter()
                .map(|s| convert::session(s, &who.session_id))
                .collect(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        self.app
            .revoke_session(&who, &r.session_id, &ctx.caller)
            .await?;
        Ok(Response::new(RevokeSessionResponse {}))
    }

    #[instrument(skip(self, _request))]
    async fn get_public_keys(
        &self,
        _request: Request<GetPublicKeysRequest>,
    ) -> Result<Response<GetPublicKeysResponse>, Status> {
        let keys = &self.app.keys;
        Ok(Response::new(GetPublicKeysResponse {
            keys: keys
                .verifying_keys()
                .iter()
                .map(|k| PublicKey {
                    key_id: k.key_id.clone(),
                    public_key: k.paserk(),
                    signing: k.key_id == keys.signing_key_id(),
                })
                .collect(),
            issuer: keys.issuer().to_string(),
            audience: keys.audience().to_string(),
        }))
    }
}
