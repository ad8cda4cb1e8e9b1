//! OpenTelemetry export as an operator meets it: the real binary with `KEYWARD_OTLP_ENDPOINT`
//! pointing at an in-process OTLP trace receiver. Each RPC arrives as a server span joined to the
//! caller's `traceparent`, with the RPC's names, its gRPC status code and, once a token has been
//! checked, the user's id — and no secret anywhere.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::{AuthenticateRequest, GetMeRequest, LoginRequest, RegisterRequest};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};
use tonic::transport::Channel;

use crate::harness::*;

/// Keeps every export it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Starts the receiver on a loopback port; returns its endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    fn exports(&self) -> Vec<ExportTraceServiceRequest> {
        self.0.lock().unwrap().clone()
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for export in self.exports() {
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| string_attr(&r.attributes, "service.name"))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push((service.clone(), span));
                    }
                }
            }
        }
        out
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key) {
        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// `request` carrying W3C trace context: the caller's trace and span.
fn traced<T>(mut request: tonic::Request<T>, traceparent: &str) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

fn random_hex(bytes: usize) -> String {
    let mut hex = String::new();
    while hex.len() < bytes * 2 {
        hex.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    hex.truncate(bytes * 2);
    hex
}

#[tokio::test]
async fn each_rpc_is_exported_as_a_span_joined_to_the_callers_trace() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;

    let config = test_config();
    let mut child = Keyward::serve(&config)
        .env("KEYWARD_REQUIRE_VERIFIED_EMAIL", "false")
        .env("KEYWARD_OTLP_ENDPOINT", &endpoint)
        // The batch exporter's default 5 s between exports, shortened (milliseconds).
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .spawn();

    let channel = child.channel().await;
    let mut auth = AuthServiceClient::new(channel.clone());

    // The caller's trace and its span, which keyward's spans must hang under.
    let trace_id = random_hex(16);
    let parent_span_id = random_hex(8);
    let traceparent = format!("00-{trace_id}-{parent_span_id}-01");

    let email = email("otel");
    let user_id = auth
        .register(traced(
            tonic::Request::new(RegisterRequest {
                email: email.clone(),
                password: PASSWORD.into(),
                ..Default::default()
            }),
            &traceparent,
        ))
        .await
        .expect("register")
        .into_inner()
        .user
        .unwrap()
        .id;
    let pair = auth
        .login(traced(
            tonic::Request::new(LoginRequest {
                email: email.clone(),
                password: PASSWORD.into(),
            }),
            &traceparent,
        ))
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens");
    let me = auth
        .get_me(traced(
            bearer(GetMeRequest {}, &pair.access_token),
            &traceparent,
        ))
        .await
        .expect("get_me")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.id, user_id);
    auth.authenticate(traced(
        tonic::Request::new(AuthenticateRequest {
            access_token: pair.access_token.clone(),
        }),
        &traceparent,
    ))
    .await
    .expect("authenticate");
    // A client-side failure: wrong password.
    let wrong_password = "not the right password at all";
    let refused = auth
        .login(traced(
            tonic::Request::new(LoginRequest {
                email: email.clone(),
                password: wrong_password.into(),
            }),
            &traceparent,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // A server-side failure: a method keyward does not have.
    let missing = unimplemented_call(channel.clone(), &traceparent).await;
    assert_eq!(missing.code(), tonic::Code::Unimplemented);

    // (name, expected gRPC status code, whether the span names the user)
    let expected: [(&str, i64, bool); 6] = [
        ("keyward.v1.AuthService/Register", 0, false),
        // A session was issued to this user: the span names them.
        ("keyward.v1.AuthService/Login", 0, true),
        ("keyward.v1.AuthService/GetMe", 0, true),
        ("keyward.v1.AuthService/Authenticate", 0, true),
        ("keyward.v1.AuthService/Login", 16, false),
        ("keyward.v1.AuthService/NoSuchMethod", 12, false),
    ];
    let trace_id_bytes = hex::decode(&trace_id).unwrap();
    let parent_bytes = hex::decode(&parent_span_id).unwrap();
    let find = |spans: &[(String, Span)], name: &str, code: i64| {
        spans
            .iter()
            .find(|(_, s)| {
                s.name == name
                    && s.trace_id == trace_id_bytes
                    && int_attr(&s.attributes, "rpc.grpc.status_code") == Some(code)
            })
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.spans();
        if expected
            .iter()
            .all(|(name, code, _)| find(&spans, name, *code).is_some())
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "not every RPC span arrived within 20 s; got: {:#?}",
            spans
                .iter()
                .map(|(_, s)| (&s.name, hex::encode(&s.trace_id), &s.attributes))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    for (name, code, names_user) in expected {
        let (service_name, span) = find(&spans, name, code).unwrap();
        let (service, method) = name.split_once('/').unwrap();
        assert_eq!(service_name, "keyward", "{name}: resource service.name");
        assert_eq!(span.kind, span::SpanKind::Server as i32, "{name}: kind");
        assert_eq!(span.parent_span_id, parent_bytes, "{name}: parent span");
        let attrs = &span.attributes;
        assert_eq!(string_attr(attrs, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(string_attr(attrs, "rpc.service").as_deref(), Some(service));
        assert_eq!(string_attr(attrs, "rpc.method").as_deref(), Some(method));
        let user = string_attr(attrs, "enduser.id");
        if names_user {
            assert_eq!(
                user.as_deref(),
                Some(user_id.as_str()),
                "{name}: enduser.id"
            );
        } else {
            assert_eq!(user, None, "{name}: enduser.id");
        }
        // Only server faults mark the span as an error; a refused login is the caller's.
        let status = span.status.clone().unwrap_or_default();
        let expect_error = code == 12;
        assert_eq!(
            status.code == status::StatusCode::Error as i32,
            expect_error,
            "{name} ({code}): span status {status:?}"
        );
    }

    // Nothing exported — attributes, events, resources — carries a secret or the email.
    let everything = format!("{:?}", receiver.exports());
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", wrong_password),
        ("access token", pair.access_token.as_str()),
        ("refresh token", pair.refresh_token.as_str()),
        ("email", email.as_str()),
    ] {
        assert!(!everything.contains(secret), "the {what} was exported");
    }

    // SIGTERM: drains and exits 0 (dropping the exporter flushes what is left).
    let status = child.terminate().await;
    assert!(status.success(), "exit status {status:?}");
}

/// Calls `/keyward.v1.AuthService/NoSuchMethod`, which keyward answers UNIMPLEMENTED.
async fn unimplemented_call(channel: Channel, traceparent: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary::<(), (), _>(
        traced(tonic::Request::new(()), traceparent),
        http::uri::PathAndQuery::from_static("/keyward.v1.AuthService/NoSuchMethod"),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .unwrap_err()
}
