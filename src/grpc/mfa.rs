//! `keyward.v1.MfaService`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::mfa_service_server::MfaService;
use super::pb::*;
use super::{convert, RequestContext};
use crate::app::mfa::Proof;
use crate::app::App;

/// The MfaService adapter.
pub struct Mfa {
    pub app: Arc<App>,
}

impl Mfa {}

#[tonic::async_trait]
impl MfaService for Mfa {
    #[instrument(skip(self, request))]
    async fn start_totp_enrollment(
        &self,
        request: Request<StartTotpEnrollmentRequest>,
    ) -> Result<Response<StartTotpEnrollmentResponse>, Status> {
        let (ctx, _) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let started = self.app.start_totp_enrollment(&who, &ctx.caller).await?;
        Ok(Response::new(StartTotpEnrollmentResponse {
            secret: started.secret_base32,
            otpauth_uri: started.otpauth_uri,
            expires_at: convert::timestamp(started.expires_at),
        }))
    }

    #[instrument(skip(self, request))]
    async fn confirm_totp_enrollment(
        &self,
        request: Request<ConfirmTotpEnrollmentRequest>,
    ) -> Result<Response<ConfirmTotpEnrollmentResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let code = r.code;
        let (recovery_codes, ended) = self
            .app
            .confirm_totp_enrollment(&who, &code, &ctx.caller)
            .await?;
        Ok(Response::new(ConfirmTotpEnrollmentResponse {
            recovery_codes,
            sessions_ended: ended as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn complete_mfa(
        &self,
        request: Request<CompleteMfaRequest>,
    ) -> Result<Response<CompleteMfaResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let proof = Proof::from_fields(r.totp_code, r.recovery_code)?;
        let issued = self
            .app
            .complete_mfa(&r.challenge, proof, &ctx.caller)
            .await?;
        Ok(Response::new(CompleteMfaResponse {
            tokens: Some(convert::token_pair(issued, self.app.now())),
        }))
    }

    #[instrument(skip(self, request))]
    async fn step_up(
        &self,
        request: Request<StepUpRequest>,
    ) -> Result<Response<StepUpResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let proof = Proof::from_fields(r.totp_code, r.recovery_code)?;
        let stepped = self.app.step_up(&who, proof, &ctx.caller).await?;
        let standing = self.app.acting(&stepped.claims).await?;
        Ok(Response::new(StepUpResponse {
            principal: Some(convert::principal(&stepped.claims, &standing)),
            access_token: stepped.access_token,
            access_token_expires_at: convert::timestamp(stepped.access_token_expires_at),
        }))
    }

    #[instrument(skip(self, request))]
    async fn list_mfa_methods(
        &self,
        request: Request<ListMfaMethodsRequest>,
    ) -> Result<Response<ListMfaMethodsResponse>, Status> {
        let (ctx, _) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let methods = self.app.mfa_methods(&who).await?;
        Ok(Response::new(match methods {
            Some(m) => ListMfaMethodsResponse {
                totp_enrolled: true,
                totp_enrolled_at: m.totp_enrolled_at.and_then(convert::timestamp),
                totp_last_used_at: m.totp_last_used_at.and_then(convert::timestamp),
                recovery_codes_remaining: m.recovery_codes_remaining as i32,
            },
            None => ListMfaMethodsResponse::default(),
        }))
    }

    #[instrument(skip(self, request))]
    async fn disable_totp(
        &self,
        request: Request<DisableTotpRequest>,
    ) -> Result<Response<DisableTotpResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let proof = Proof::from_fields(r.totp_code, r.recovery_code)?;
        let ended = self.app.disable_totp(&who, proof, &ctx.caller).await?;
        Ok(Response::new(DisableTotpResponse {
            sessions_ended: ended as i32,
        }))
    }

    #[instrument(skip(self, request))]
    async fn regenerate_recovery_codes(
        &self,
        request: Request<RegenerateRecoveryCodesRequest>,
    ) -> Result<Response<RegenerateRecoveryCodesResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let code = r.totp_code;
        let recovery_codes = self
            .app
            .regenerate_recovery_codes(&who, &code, &ctx.caller)
            .await?;
        Ok(Response::new(RegenerateRecoveryCodesResponse {
            recovery_codes,
        }))
    }

    #[instrument(skip(self, request))]
    async fn reset_user_mfa(
        &self,
        request: Request<ResetUserMfaRequest>,
    ) -> Result<Response<ResetUserMfaResponse>, Status> {
        let (ctx, r) = RequestContext::new(&self.app, request);
        let who = ctx.signed_in().await?;
        let user_id = r.user_id;
        let ended = self.app.reset_user_mfa(&who, &user_id, &ctx.caller).await?;
        Ok(Response::new(ResetUserMfaResponse {
            sessions_ended: ended as i32,
        }))
    }
}
