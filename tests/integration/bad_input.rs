//! Bad input gets INVALID_ARGUMENT with field violations — never a panic, never INTERNAL.

use keyward::grpc::pb::{AuthenticateRequest, LoginRequest, RegisterRequest};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Code;

use crate::harness::*;

/// LoginRequest's wire shape with raw bytes where the real message has strings.
#[derive(Clone, PartialEq, prost::Message)]
struct RawLogin {
    #[prost(bytes = "vec", tag = "1")]
    email: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    password: Vec<u8>,
}

async fn raw_login(app: &TestApp, message: RawLogin) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawLogin, keyward::grpc::pb::TokenPair>::default();
    grpc.unary(
        tonic::Request::new(message),
        PathAndQuery::from_static("/keyward.v1.AuthService/Login"),
        codec,
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn empty_malformed_and_oversized_fields_are_named() {
    let app = TestApp::start().await;
    let err = app
        .auth()
        .register(RegisterRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "INVALID_ARGUMENT")
    );
    let v = violations(&err);
    assert!(v.contains(&("email".into(), "is required".into())), "{v:?}");
    assert!(
        v.contains(&("password".into(), "is required".into())),
        "{v:?}"
    );

    let cases = [
        (
            RegisterRequest {
                email: "not-an-email".into(),
                password: PASSWORD.into(),
                ..Default::default()
            },
            "email",
            "is not a valid email address",
        ),
        (
            RegisterRequest {
                email: format!("{}@example.com", "a".repeat(300)),
                password: PASSWORD.into(),
                ..Default::default()
            },
            "email",
            "must be at most 254 bytes",
        ),
        (
            RegisterRequest {
                email: "bob\r\n@example.com".into(),
                password: PASSWORD.into(),
                ..Default::default()
            },
            "email",
            "must not contain control characters",
        ),
        (
            RegisterRequest {
                email: email("long"),
                password: "p".repeat(129),
                ..Default::default()
            },
            "password",
            "must be at most 128 characters long",
        ),
        (
            RegisterRequest {
                email: email("name"),
                password: PASSWORD.into(),
                display_name: "x".repeat(101),
                organization: None,
            },
            "display_name",
            "must be at most 100 characters",
        ),
    ];
    for (request, field, description) in cases {
        let err = app.auth().register(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            violations(&err).contains(&(field.into(), description.into())),
            "{field}: {:?}",
            violations(&err)
        );
    }
    let err = app
        .auth()
        .login(LoginRequest {
            email: "x@example.com".into(),
            password: "p".repeat(5000),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "password");
    let err = app
        .auth()
        .authenticate(AuthenticateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        [("access_token".to_string(), "is required".to_string())]
    );
}

#[tokio::test]
async fn invalid_utf8_and_a_10_mb_message_are_invalid_argument_and_the_server_lives_on() {
    let app = TestApp::start().await;
    let err = raw_login(
        &app,
        RawLogin {
            email: vec![0xff, 0xfe, b'@'],
            password: b"whatever1".to_vec(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let v = violations(&err);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, "email");
    assert!(v[0].1.contains("UTF-8"), "{v:?}");

    let err = raw_login(
        &app,
        RawLogin {
            email: b"a@example.com".to_vec(),
            password: vec![b'x'; 10 * 1024 * 1024],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        violations(&err)[0].1.contains("the limit is"),
        "{:?}",
        violations(&err)
    );

    // Still serving, and nothing was stored.
    let pair = app.signed_in(&email("after")).await;
    assert!(!pair.access_token.is_empty());
}
