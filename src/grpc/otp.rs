//! `keyward.v1.OtpService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::otp_service_server::OtpService;
use super::pb::*;
use super::{caller, convert};
use crate::app::App;
use crate::domain::codes::Purpose;
use crate::error::Error;

/// The OtpService adapter.
pub struct Otp {
    pub app: Arc<App>,
}

fn purpose(value: i32) -> Result<Purpose, Error> {
    match CodePurpose::try_from(value) {
        Ok(CodePurpose::VerifyEmail) => Ok(Purpose::VerifyEmail),
        Ok(CodePurpose::Login) => Ok(Purpose::Login),
        Ok(CodePurpose::ResetPassword) => Ok(Purpose::ResetPassword),
        _ => Err(Error::invalid(
            "purpose",
            "must be CODE_PURPOSE_VERIFY_EMAIL, CODE_PURPOSE_LOGIN or CODE_PURPOSE_RESET_PASSWORD",
        )),
    }
}

#[tonic::async_trait]
impl OtpService for Otp {
    #[instrument(skip(self, request))]
    async fn send_code(
        &self,
        request: Request<SendCodeRequest>,
    ) -> Result<Response<SendCodeResponse>, Status> {
        self.app.ensure_ready()?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let purpose = purpose(r.purpose)?;
        let sent = self.app.send_code(&r.email, purpose, &caller).await?;
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
        self.app.ensure_ready()?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let user = self.app.verify_email(&r.email, &r.code, &caller).await?;
        Ok(Response::new(VerifyEmailResponse {
            user: Some(convert::user(&user)),
        }))
    }

    #[instrument(skip(self, request))]
    async fn login_with_code(
        &self,
        request: Request<LoginWithCodeRequest>,
    ) -> Result<Response<LoginWithCodeResponse>, Status> {
        self.app.ensure_ready()?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let signed_in = self.app.login_with_code(&r.email, &r.code, &caller).await?;
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
        self.app.ensure_ready()?;
        let caller = caller(&request, &self.app.proxy_trust);
        let r = request.into_inner();
        let ended = self
            .app
            .reset_password(&r.email, &r.code, &r.new_password, &caller)
            .await?;
        Ok(Response::new(ResetPasswordResponse {
            sessions_ended: ended as i32,
        }))
    }
}
