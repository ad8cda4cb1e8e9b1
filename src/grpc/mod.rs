//! Thin gRPC adapters, one file per service: unwrap the request, call `app`, convert the result.

pub mod auth;
pub mod codec;
pub mod convert;
pub mod ext_authz;
pub mod federation;
pub mod inbound;
pub mod mfa;
pub mod org;
pub mod otp;
pub mod permissions;
pub mod readiness;
pub mod service_accounts;
pub mod users;

use std::sync::Arc;

use tonic::metadata::MetadataMap;

use crate::app::{App, Caller};
use crate::domain::client_address::{rate_limit_key, ProxyTrust};
use crate::domain::tokens::AccessClaims;
use crate::error::Error;

/// What an RPC knows about its call besides the message: who is calling (address and user
/// agent, see [`caller`]) and, on demand, the signed-in person behind the bearer token. Every
/// adapter method starts with [`RequestContext::new`], then calls `app` and converts the result.
pub struct RequestContext<'a> {
    app: &'a App,
    metadata: MetadataMap,
    /// Where the call came from, for sessions, throttling and the audit trail.
    pub caller: Caller,
}

impl<'a> RequestContext<'a> {
    /// Splits `request` into its context and its message.
    pub fn new<T>(app: &'a App, request: tonic::Request<T>) -> (Self, T) {
        let caller = caller(&request, &app.proxy_trust);
        let (metadata, _, message) = request.into_parts();
        (
            Self {
                app,
                metadata,
                caller,
            },
            message,
        )
    }

    /// The signed-in person calling, from the bearer token in the request's metadata (an API
    /// key is refused: these are the RPCs for people).
    pub async fn signed_in(&self) -> Result<Arc<AccessClaims>, Error> {
        let token = bearer_token(&self.metadata)?;
        self.app.authenticate(token).await
    }
}

/// Generated protobuf types and service stubs for `keyward.v1`.
// prost copies the protos' comments into doc comments verbatim; their wrapped list items read
// well in the protos, buf and the OpenAPI file, and only rustdoc's markdown objects to them.
#[allow(clippy::doc_lazy_continuation)]
pub mod pb {
    tonic::include_proto!("keyward.v1");

    /// Descriptor set served by the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("keyward_descriptor");
}

/// Longest user agent kept for a session.
const MAX_USER_AGENT: usize = 256;

/// Who is calling: the client address (the TCP peer, or what the trusted proxies in front of
/// keyward say it is; see `domain::client_address`) and user agent.
pub fn caller<T>(request: &tonic::Request<T>, trust: &ProxyTrust) -> Caller {
    let md = request.metadata();
    // Read as bytes: a client's non-ASCII entry must not make the whole header (with the
    // entries our proxies appended after it) unreadable.
    let forwarded: Vec<String> = md
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let address = trust.client_address(
        request.remote_addr().map(|a| a.ip()),
        forwarded.iter().map(String::as_str),
    );
    // grpc clients put their own library name in user-agent; a gateway forwards the browser's
    // in x-forwarded-user-agent or grpcgateway-user-agent.
    let user_agent = [
        "x-forwarded-user-agent",
        "grpcgateway-user-agent",
        "user-agent",
    ]
    .iter()
    .find_map(|k| md.get(*k).and_then(|v| v.to_str().ok()))
    .unwrap_or_default()
    .chars()
    .filter(|c| !c.is_control())
    .take(MAX_USER_AGENT)
    .collect();
    Caller {
        client_address: address.map(|a| a.to_string()).unwrap_or_default(),
        rate_limit_key: address.map(rate_limit_key).unwrap_or_default(),
        user_agent,
    }
}

/// The access token from `authorization: Bearer <token>` metadata.
pub fn bearer_token(md: &MetadataMap) -> Result<&str, Error> {
    let value = md
        .get("authorization")
        .ok_or(Error::TokenInvalid)?
        .to_str()
        .map_err(|_| Error::TokenInvalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(Error::TokenInvalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Error::TokenInvalid);
    }
    Ok(token.trim())
}
