//! `keyward.v1.AuthService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::auth_service_server::AuthService;
use super::pb::*;
use super::{caller, convert};
use crate::app::accounts::NewAccount;
use crate::app::authorization::{check_org_id, Check};
use crate::app::orgs::NewOrg;
use crate::app::App;
use crate::error::Error;

/// The AuthService adapter.
pub struct Auth {
    pub app: Arc<App>,
}

impl Auth {
    fn caller<T>(&self, request: &Request<T>) -> crate::app::Caller {
        caller(request, &self.app.proxy_trust)
    }
}

#[tonic::async_trait]
impl AuthService for Auth {
    #[instrument(skip(self, request))]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.app.ensure_ready()?;
        let caller = self.caller(&request);
        let r = request.into_inner();
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
                let (user, org) = self.app.register_with_org(account, org, &caller).await?;
                (user, org.id)
            }
            None => (self.app.register(account, &caller).await?, String::new()),
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
        self.app.ensure_ready()?;
        let caller = self.caller(&request);
        let r = request.into_inner();
        let signed_in = self.app.login(&r.email, &r.password, &caller).await?;
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
        self.app.ensure_ready()?;
        let caller = self.caller(&request);
        let issued = self
            .app
            .refresh(&request.into_inner().refresh_token, &caller)
            .await?;
        Ok(Response::new(RefreshResponse {
            tokens: Some(convert::token_pair(issued, self.app.now())),
        }))
    }

    #[instrument(skip(self, request))]
    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = self.caller(&request);
        let ended = self
            .app
            .logout(&who, request.into_inner().all_sessions, &caller)
            .await?;
        Ok(Response::new(LogoutResponse {
            sessions_ended: ended as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.app.ensure_ready()?;
        let caller = self.caller(&request);
        let verdict = self
            .app
            .authorize(
                &request.into_inner().access_token,
                &[],
                &caller.client_address,
            )
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
        self.app.ensure_ready()?;
        let caller = self.caller(&request);
        let r = request.into_inner();
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
            .authorize(&r.access_token, &[check], &caller.client_address)
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
        self.app.ensure_ready()?;
        let caller = self.caller(&request);
        let r = request.into_inner();
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
            .authorize(&r.access_token, &checks, &caller.client_address)
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
        let who = super::signed_in(&self.app, &request).await?;
        let user = self.app.me(&who).await?;
        Ok(Response::new(GetMeResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let who = super::signed_in(&self.app, &request).await?;
        let caller = self.caller(&request);
        let r = request.into_inner();
        let ended = self
            .app
            .change_password(
                &who,
                &r.current_password,
                &r.new_password,
                r.keep_other_sessions,
                &caller,
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
        let who = super::signed_in(&self.app, &request).await?;
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
        let who = super::signed_in(&self.app, &request).await?;
        let caller = self.caller(&request);
        self.app
            .revoke_session(&who, &request.into_inner().session_id, &caller)
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
