//! `envoy.service.auth.v3.Authorization/Check`: Envoy's ext_authz filter (and Istio's CUSTOM
//! authorization provider) ask keyward about every request a sidecar sees. The decision is
//! Authorize's own (`App::authorize`); this adapter only speaks HTTP through Envoy's types.
//!
//! Per route, Envoy's `context_extensions` may name a required `permission`, an
//! `org_id_header` (the request header carrying the organization id the request is about), and
//! `mfa: required` (only two-factor sessions pass; see MfaService).
//!
//! - Allow: OK, with identity headers for the upstream (`x-keyward-user-id`, `-session-id`,
//!   `-role` (current), `-email`, and `-org-id` / `-org-role` when an organization is in play)
//!   that overwrite anything the client sent under those names; org headers keyward does not
//!   set are removed, so they cannot be spoofed.
//! - Deny: 401 (no, invalid, expired or revoked token) with `WWW-Authenticate` and a small JSON
//!   body; 403 with Authorize's reason when the route's permission is not held (or
//!   MFA_REQUIRED / MFA_ENROLLMENT_REQUIRED for a one-factor session); 503 when
//!   keyward cannot decide (fail closed).

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Code, Request, Response, Status};
use tracing::instrument;

use crate::app::authorization::Check;
use crate::app::App;
use crate::error::Error;

/// Headers keyward sets for the upstream on allow.
pub const USER_ID_HEADER: &str = "x-keyward-user-id";
pub const SESSION_ID_HEADER: &str = "x-keyward-session-id";
pub const ROLE_HEADER: &str = "x-keyward-role";
pub const EMAIL_HEADER: &str = "x-keyward-email";
/// `user` for a person's token, `service_account` for an API key.
pub const PRINCIPAL_KIND_HEADER: &str = "x-keyward-principal-kind";
/// Set when the route names an organization (`context_extensions.org_id_header`) and the caller
/// is a member; removed from the client's request otherwise.
pub const ORG_ID_HEADER: &str = "x-keyward-org-id";
pub const ORG_ROLE_HEADER: &str = "x-keyward-org-role";

/// The ext_authz adapter.
pub struct ExtAuthz {
    pub app: Arc<App>,
}

/// The bearer token of the HTTP request: `Authorization: Bearer …`, else the configured cookie.
fn token_of(request: &CheckRequest, cookie_name: Option<&str>) -> Option<String> {
    let headers = request.get_client_headers()?;
    if let Some(value) = headers.get("authorization") {
        let (scheme, token) = value.split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .then(|| token.trim().to_string());
    }
    let name = cookie_name?;
    headers.get("cookie")?.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

fn deny(
    http: HttpStatusCode,
    grpc: Code,
    reason: &str,
    message: &str,
    challenge: Option<&str>,
) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(http);
    denied.add_header("content-type", "application/json", None, false);
    if let Some(challenge) = challenge {
        denied.add_header("www-authenticate", challenge, None, false);
    }
    let body = serde_json::json!({ "error": message, "reason": reason });
    denied.set_body(body.to_string());
    let denied: DeniedHttpResponse = denied.build();
    let mut response = CheckResponse::with_status(Status::new(grpc, message));
    response.set_http_response(denied);
    response
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    #[instrument(skip(self, request))]
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let response = self.decide(request).await;
        if let Ok(response) = &response {
            let code = response.get_ref().status.as_ref().map_or(0, |s| s.code);
            crate::metrics::ext_authz(crate::metrics::Decision::of_code(code));
        }
        response
    }
}

impl ExtAuthz {
    /// The answer to one check (every decision is an OK gRPC response; its status says which).
    async fn decide(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let Some(token) = token_of(&request, self.app.config.ext_authz_cookie.as_deref()) else {
            return Ok(Response::new(deny(
                HttpStatusCode::Unauthorized,
                Code::Unauthenticated,
                "TOKEN_MISSING",
                "a bearer token is required",
                Some(r#"Bearer realm="keyward""#),
            )));
        };
        // Per-route rules from Envoy: a required permission, and the request header that names
        // the organization it is about.
        let extensions = request.attributes.as_ref().map(|a| &a.context_extensions);
        let permission = extensions.and_then(|e| e.get("permission")).cloned();
        let org_id = extensions
            .and_then(|e| e.get("org_id_header"))
            .and_then(|name| {
                request
                    .get_client_headers()?
                    .get(&name.to_ascii_lowercase())
                    .cloned()
            })
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        // The end client as Envoy saw it (recorded as an API key's last use).
        let client = request
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .and_then(|p| p.address.as_ref())
            .and_then(|a| match &a.address {
                Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s),
                ) => Some(s.address.chars().take(64).collect::<String>()),
                _ => None,
            })
            .unwrap_or_default();
        let checks: Vec<Check> = permission
            .iter()
            .map(|p| Check {
                permission: p.clone(),
                org_id: org_id.clone(),
            })
            .collect();
        let verdict = match self.app.ensure_ready() {
            Ok(()) => self.app.authorize(&token, &checks, &client).await,
            Err(e) => Err(e),
        };
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(e @ (Error::TokenInvalid | Error::SessionRevoked | Error::InvalidArgument(_))) => {
                let (_, reason) = e.code_and_reason();
                return Ok(Response::new(deny(
                    HttpStatusCode::Unauthorized,
                    Code::Unauthenticated,
                    reason,
                    "the access token is not valid",
                    Some(r#"Bearer realm="keyward", error="invalid_token""#),
                )));
            }
            Err(e) => {
                return Ok(Response::new(undecided(e)));
            }
        };
        // A route may require two factors whatever its permission (`mfa: required`).
        // Fails closed: any value but `optional`/`none`/`false` (or none at all) requires it.
        let route_needs_mfa = extensions.and_then(|e| e.get("mfa")).is_some_and(|v| {
            !["", "optional", "none", "false"].contains(&v.trim().to_ascii_lowercase().as_str())
        });
        let mfa_refusal = if route_needs_mfa {
            self.app.second_factor_refusal(&verdict.claims).await
        } else {
            Ok(None)
        };
        let mfa_refusal = {
            match mfa_refusal {
                Ok(refusal) => refusal,
                Err(e) => {
                    return Ok(Response::new(undecided(e)));
                }
            }
        };
        if let Some(refused) = verdict
            .decisions
            .iter()
            .chain(mfa_refusal.iter())
            .find(|d| !d.allowed)
        {
            return Ok(Response::new(deny(
                HttpStatusCode::Forbidden,
                Code::PermissionDenied,
                refused.reason,
                "not allowed",
                None,
            )));
        }
        let claims = &verdict.claims;
        // A service account limited to some permissions passes only routes that name one of
        // them: a route without a permission would let it act on its role alone.
        if permission.is_none()
            && claims
                .service_account
                .as_ref()
                .is_some_and(|g| !g.allowed_permissions.is_empty())
        {
            return Ok(Response::new(deny(
                HttpStatusCode::Forbidden,
                Code::PermissionDenied,
                "NOT_GRANTED_TO_SERVICE_ACCOUNT",
                "not allowed",
                None,
            )));
        }
        let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        let mut ok = OkHttpResponseBuilder::new();
        ok.add_header(USER_ID_HEADER, claims.user_id.as_str(), overwrite, false)
            .add_header(
                SESSION_ID_HEADER,
                claims.session_id.as_str(),
                overwrite,
                false,
            )
            .add_header(
                ROLE_HEADER,
                verdict.standing.role.as_str(),
                overwrite,
                false,
            )
            .add_header(EMAIL_HEADER, &*verdict.standing.email, overwrite, false)
            .add_header(
                PRINCIPAL_KIND_HEADER,
                if claims.service_account.is_some() {
                    "service_account"
                } else {
                    "user"
                },
                overwrite,
                false,
            );
        // The organization in play, when the route names one and the caller belongs to it;
        // otherwise whatever the client sent under these names is removed.
        let org_role = if !crate::domain::secrets::is_id(&org_id) {
            // No organization (or a made-up id, which no lookup or cache entry may cost).
            None
        } else if let Some(grant) = &claims.service_account {
            // A service account's place is its own organization, from its key's check.
            grant
                .org
                .as_ref()
                .filter(|(own, _)| *own == org_id)
                .map(|(_, role)| *role)
        } else {
            self.app
                .org_role(&org_id, &claims.user_id)
                .await
                .ok()
                .flatten()
        };
        // An organization that requires two factors of its members requires them on every
        // route naming it, with or without a permission.
        if org_role.is_some() {
            match self.app.org_second_factor_refusal(claims, &org_id).await {
                Ok(None) => {}
                Ok(Some(refused)) => {
                    return Ok(Response::new(deny(
                        HttpStatusCode::Forbidden,
                        Code::PermissionDenied,
                        refused.reason,
                        "not allowed",
                        None,
                    )));
                }
                Err(e) => {
                    return Ok(Response::new(undecided(e)));
                }
            }
        }
        match org_role {
            Some(role) => {
                ok.add_header(ORG_ID_HEADER, org_id.as_str(), overwrite, false)
                    .add_header(ORG_ROLE_HEADER, role.as_str(), overwrite, false);
            }
            None => {
                ok.remove_header(ORG_ID_HEADER)
                    .remove_header(ORG_ROLE_HEADER);
            }
        }
        let mut response = CheckResponse::with_status(Status::ok("allowed"));
        response.set_http_response(ok.build());
        Ok(Response::new(response))
    }
}

/// 503 (fail closed) when keyward cannot decide, e.g. its database is gone. The cause is logged
/// once by the error mapping; Envoy gets a generic answer with the reason.
fn undecided(e: Error) -> CheckResponse {
    let (_, reason) = e.code_and_reason();
    let _ = Status::from(e);
    deny(
        HttpStatusCode::ServiceUnavailable,
        Code::Unavailable,
        reason,
        "the authorization service cannot decide right now",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    fn request(headers: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn token_from_bearer_header_or_configured_cookie_only() {
        assert_eq!(
            token_of(&request(&[("authorization", "Bearer abc")]), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_of(&request(&[("authorization", "bearer  abc ")]), None).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_of(&request(&[("authorization", "Basic abc")]), None),
            None
        );
        assert_eq!(token_of(&request(&[("cookie", "a=1; kw=tok")]), None), None);
        assert_eq!(
            token_of(&request(&[("cookie", "a=1; kw=tok")]), Some("kw")).as_deref(),
            Some("tok")
        );
        assert_eq!(token_of(&request(&[]), Some("kw")), None);
    }
}
