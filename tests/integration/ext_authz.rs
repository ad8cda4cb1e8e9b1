//! Envoy ext_authz `Check`, driven by a real gRPC client built from Envoy's own messages.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};

use crate::harness::*;

/// A Check as Envoy asks it for `GET /api/things` with `headers` and the route's `context`.
pub(crate) fn http_request(headers: &[(&str, &str)], context: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/things".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

pub(crate) async fn check(app: &TestApp, request: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(app.channel())
        .check(request)
        .await
        .expect("Check answers")
        .into_inner()
}

/// (grpc code, http status, headers, body) of a denial.
fn denied(r: &CheckResponse) -> (i32, i32, HashMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}")
    };
    let headers = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (
        r.status.as_ref().unwrap().code,
        d.status.as_ref().unwrap().code,
        headers,
        d.body.clone(),
    )
}

#[tokio::test]
async fn a_valid_token_is_allowed_with_identity_headers_and_spoofed_ones_stripped() {
    let app = TestApp::start().await;
    let pair = app.signed_in(&email("envoy")).await;
    let auth = format!("Bearer {}", pair.access_token);
    let r = check(
        &app,
        http_request(
            &[
                ("authorization", &auth),
                ("x-keyward-user-id", "admin"),
                ("x-keyward-org-id", "acme"),
            ],
            &[],
        ),
    )
    .await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "OK");
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("not allowed: {r:?}")
    };
    let set: HashMap<String, (String, i32)> = ok
        .headers
        .iter()
        .map(|h| {
            (
                h.header.as_ref().unwrap().key.clone(),
                (h.header.as_ref().unwrap().value.clone(), h.append_action),
            )
        })
        .collect();
    let user = pair.user.unwrap();
    // OverwriteIfExistsOrAdd replaces a value the client sent itself.
    let overwrite =
        envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(set["x-keyward-user-id"], (user.id.clone(), overwrite));
    assert_eq!(set["x-keyward-session-id"].0, pair.session_id);
    assert_eq!(set["x-keyward-role"].0, "user");
    assert_eq!(set["x-keyward-email"].0, user.email);
    assert!(ok
        .headers_to_remove
        .contains(&"x-keyward-org-id".to_string()));
}

#[tokio::test]
async fn missing_invalid_and_revoked_tokens_get_401_with_a_challenge() {
    let app = TestApp::start().await;
    let pair = app.signed_in(&email("envoy-deny")).await;

    let (grpc, http, headers, body) = denied(&check(&app, http_request(&[], &[])).await);
    assert_eq!((grpc, http), (16, 401));
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="keyward""#);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"],
        "TOKEN_MISSING"
    );

    let (_, http, headers, body) = denied(
        &check(
            &app,
            http_request(&[("authorization", "Bearer v4.public.forged")], &[]),
        )
        .await,
    );
    assert_eq!(http, 401);
    assert!(headers["www-authenticate"].contains(r#"error="invalid_token""#));
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.contains("TOKEN_INVALID"), "{body}");

    let auth = format!("Bearer {}", pair.access_token);
    assert_eq!(
        check(&app, http_request(&[("authorization", &auth)], &[]))
            .await
            .status
            .unwrap()
            .code,
        0
    );
    app.logout(&pair.access_token, false).await;
    let (_, http, _, body) =
        denied(&check(&app, http_request(&[("authorization", &auth)], &[])).await);
    assert_eq!(http, 401, "a revoked session is denied at once");
    assert!(body.contains("SESSION_REVOKED"), "{body}");
}

#[tokio::test]
async fn a_route_that_requires_a_permission_fails_closed_and_cookies_work_when_configured() {
    let app = TestApp::start_with_config(|c| c.ext_authz_cookie = Some("kw_session".into())).await;
    let pair = app.signed_in(&email("envoy-route")).await;
    let auth = format!("Bearer {}", pair.access_token);
    let (grpc, http, _, _) = denied(
        &check(
            &app,
            http_request(
                &[("authorization", &auth)],
                &[("permission", "users.write")],
            ),
        )
        .await,
    );
    assert_eq!((grpc, http), (7, 403));

    let cookie = format!("theme=dark; kw_session={}", pair.access_token);
    assert_eq!(
        check(&app, http_request(&[("cookie", &cookie)], &[]))
            .await
            .status
            .unwrap()
            .code,
        0
    );
}

#[tokio::test]
async fn made_up_organization_ids_are_refused_before_any_lookup() {
    use keyward::grpc::pb::{AuthorizeRequest, BatchAuthorizeRequest, PermissionCheck};
    let app = TestApp::start().await;
    let pair = app.signed_in(&email("org-ids")).await;
    let huge = "a".repeat(60 * 1024);
    for org_id in [
        huge.as_str(),
        "not-an-id",
        "ABCDEF0123456789ABCDEF0123456789",
    ] {
        let status = app
            .auth()
            .authorize(AuthorizeRequest {
                access_token: pair.access_token.clone(),
                permission: "org.read".into(),
                org_id: org_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(violations(&status)[0].0, "org_id");
    }
    let status = app
        .auth()
        .batch_authorize(BatchAuthorizeRequest {
            access_token: pair.access_token.clone(),
            checks: vec![
                PermissionCheck {
                    permission: "org.read".into(),
                    org_id: String::new(),
                },
                PermissionCheck {
                    permission: "org.read".into(),
                    org_id: huge.clone(),
                },
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(violations(&status)[0].0, "checks[1].org_id");

    // Through Envoy the organization comes from a request header: a made-up one is simply not
    // an organization the caller belongs to.
    let auth = format!("Bearer {}", pair.access_token);
    let (grpc, http, _, body) = denied(
        &check(
            &app,
            http_request(
                &[("authorization", &auth), ("x-org-id", &huge[..8000])],
                &[("permission", "org.read"), ("org_id_header", "x-org-id")],
            ),
        )
        .await,
    );
    assert_eq!((grpc, http), (7, 403));
    assert!(body.contains("NOT_A_MEMBER"), "{body}");
}

#[tokio::test]
async fn a_route_without_a_permission_ignores_a_made_up_organization() {
    let app = TestApp::start().await;
    let pair = app.signed_in(&email("org-header")).await;
    let auth = format!("Bearer {}", pair.access_token);
    let huge = "b".repeat(8000);
    let r = check(
        &app,
        http_request(
            &[
                ("authorization", &auth),
                ("x-org-id", &huge),
                ("x-keyward-org-id", "forged"),
            ],
            &[("org_id_header", "x-org-id")],
        ),
    )
    .await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not allowed: {r:?}")
    };
    assert!(
        ok.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .all(|h| h.key != "x-keyward-org-id"),
        "{ok:?}"
    );
    assert!(
        ok.headers_to_remove.iter().any(|h| h == "x-keyward-org-id"),
        "{ok:?}"
    );
}
