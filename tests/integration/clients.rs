//! Typed, signed-in test clients: `app.as_user(&pair).orgs()` is the generated OrgService
//! client with `authorization: Bearer <access token>` on every call, so a test reads as the
//! scenario it checks (`alice.orgs().create_org(..)`) instead of going through a wrapper per
//! RPC. Tests that deliberately send odd headers keep using `harness::bearer`.

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::federation_service_client::FederationServiceClient;
use keyward::grpc::pb::mfa_service_client::MfaServiceClient;
use keyward::grpc::pb::org_service_client::OrgServiceClient;
use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::permission_service_client::PermissionServiceClient;
use keyward::grpc::pb::service_account_service_client::ServiceAccountServiceClient;
use keyward::grpc::pb::user_service_client::UserServiceClient;
use keyward::grpc::pb::TokenPair;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::harness::TestApp;

/// Puts `authorization: Bearer <token>` on every request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose every call carries one bearer token.
pub type Signed = InterceptedService<Channel, BearerToken>;

/// Someone signed in (a user's access token or a service account's API key), with one typed
/// client per service.
#[derive(Clone)]
pub struct SignedIn {
    channel: Channel,
    token: BearerToken,
}

// One accessor per service, whether or not a test calls it yet.
#[allow(dead_code)]
impl SignedIn {
    /// Calls on `channel` carrying `token` (an access token or an API key).
    pub fn new(channel: Channel, token: &str) -> Self {
        let value = format!("Bearer {token}")
            .parse()
            .expect("a token fits in a header");
        Self {
            channel,
            token: BearerToken(value),
        }
    }

    fn signed(&self) -> Signed {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    pub fn auth(&self) -> AuthServiceClient<Signed> {
        AuthServiceClient::new(self.signed())
    }

    pub fn orgs(&self) -> OrgServiceClient<Signed> {
        OrgServiceClient::new(self.signed())
    }

    pub fn users(&self) -> UserServiceClient<Signed> {
        UserServiceClient::new(self.signed())
    }

    pub fn mfa(&self) -> MfaServiceClient<Signed> {
        MfaServiceClient::new(self.signed())
    }

    pub fn permissions(&self) -> PermissionServiceClient<Signed> {
        PermissionServiceClient::new(self.signed())
    }

    pub fn service_accounts(&self) -> ServiceAccountServiceClient<Signed> {
        ServiceAccountServiceClient::new(self.signed())
    }

    pub fn federation(&self) -> FederationServiceClient<Signed> {
        FederationServiceClient::new(self.signed())
    }

    pub fn otp(&self) -> OtpServiceClient<Signed> {
        OtpServiceClient::new(self.signed())
    }
}

impl TestApp {
    /// Calls as the user `pair` signed in.
    pub fn as_user(&self, pair: &TokenPair) -> SignedIn {
        self.as_token(&pair.access_token)
    }

    /// Calls carrying `token` (an access token, or a service account's API key).
    pub fn as_token(&self, token: &str) -> SignedIn {
        SignedIn::new(self.channel(), token)
    }
}
