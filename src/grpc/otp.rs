//! `keyward.v1.OtpService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::otp_service_server::OtpService;
use super::pb::*;
use super::{convert, inbound, RequestContext};
use crate::app::App;

/// The OtpService adapter.
pub struct Otp {
    pub app: Arc<App>,
}

#[tonic::async_trait]
impl OtpService for Otp {
    #[instrument(skip(self, request))]
    async fn send_code(
        &self,
        request: Request<SendCodeRequest>,
    ) -> Result<Response<SendCodeResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let purpose = inbound::purpose(r.purpose)?;
        let sent = self.app.send_code(&r.email, purpose, &ctx.caller).await?;
        Ok(Response::new(SendCodeResponse {
            retry_after_seconds: convert::seconds(sent.retry_after.as_secs() as i64),
            expires_in: convert::seconds(sent.expires_in.as_secs() as i64),
        }))
    }

    #[instrument(skip(self, request))]
    async fn verify_email(
        &self,
        request: Request<VerifyEmailRequest>,
    ) -> Result<Response<VerifyEmailResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let user = self
            .app
            .verify_email(&r.email, &r.code, &ctx.caller)
            .await?;
        Ok(Response::new(VerifyEmailResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn login_with_code(
        &self,
        request: Request<LoginWithCodeRequest>,
    ) -> Result<Response<LoginWithCodeResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let signed_in = self
            .app
            .login_with_code(&r.email, &r.code, &ctx.caller)
            .await?;
        let answer = convert::sign_in(signed_in, self.app.now());
        Ok(Response::new(LoginWithCodeResponse {
            tokens: answer.tokens,
            mfa_challenge: answer.mfa_challenge,
        }))
    }

    #[instrument(skip(self, request))]
    async fn reset_password(
        &self,
        request: Request<ResetPasswordRequest>,
    ) -> Result<Response<ResetPasswordResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let ended = self
            .app
            .reset_password(&r.email, &r.code, &r.new_password, &ctx.caller)
            .await?;
        Ok(Response::new(ResetPasswordResponse {
            sessions_ended: ended as i32,
        }))
    }
}
