//! The REST sidecar under attack: client-sent metadata it must not pass on, oversized and slow
//! requests, and malformed bodies that must never produce a 5xx.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::*;
use crate::harness::*;

/// Starts the gateway in front of `grpc_endpoint` with `extra` flags (`Gateway::start` takes
/// none), on a free loopback port, and waits until it answers `/healthz`.
async fn start_gateway(grpc_endpoint: SocketAddr, extra: &[&str]) -> Gateway {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(gateway_binary());
    cmd.arg("--listen")
        .arg(addr.to_string())
        .arg("--grpc-endpoint")
        .arg(grpc_endpoint.to_string())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    kill_with_parent(&mut cmd);
    let child = cmd.spawn().expect("cannot start keyward-gateway");
    let mut gateway = Gateway { addr, child };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = gateway.try_request("GET", "/healthz", None, &[]).await {
            assert_eq!(r.status, 200, "{r:?}");
            return gateway;
        }
        if let Some(exit) = gateway.child.try_wait().unwrap() {
            panic!("keyward-gateway {extra:?} exited at start: {exit}");
        }
        assert!(Instant::now() < deadline, "keyward-gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` (raw bytes) on a new connection while reading the answer, until the server
/// closes. The two run side by side so that a server answering before it has read the whole
/// request (a 413) is heard, and the socket's write half stays open until the answer is in
/// (a half-closed request is one the client gave up on).
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> Response {
    let stream = TcpStream::connect(addr).await.expect("connect to gateway");
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        // The server may stop reading and close early (413); that error is expected.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A reset after the answer (the server closing on unread body bytes) ends it.
                Err(_) => break,
            }
        }
    })
    .await;
    sending.abort();
    assert!(read.is_ok(), "no answer within 30 s; got so far: {raw:?}");
    Response::parse(&raw)
}

/// One HTTP/1.1 request with a raw body (`Content-Length`), on its own connection.
async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keyward-gateway-test/1.0\r\n\
         Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        gw.addr,
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    exchange(gw.addr, request).await
}

/// The same body sent with `Transfer-Encoding: chunked`, so the gateway cannot tell its size
/// from the headers.
async fn send_chunked(gw: &Gateway, path: &str, body: &[u8]) -> Response {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        gw.addr
    )
    .into_bytes();
    for chunk in body.chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    exchange(gw.addr, request).await
}

/// A login body of about `len` bytes: valid JSON, with a very long password.
fn login_body(len: usize) -> Vec<u8> {
    json!({ "email": "big@example.com", "password": "a".repeat(len) })
        .to_string()
        .into_bytes()
}

/// Signs `email` in through the gateway with `headers` on both calls; returns the bearer header.
async fn rest_sign_in(gw: &Gateway, email: &str, headers: &[(&str, &str)]) -> String {
    let r = gw
        .post("/v1/auth/register", credentials(email, PASSWORD), headers)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = gw
        .post("/v1/auth/login", credentials(email, PASSWORD), headers)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    format!(
        "Bearer {}",
        r.body["tokens"]["access_token"].as_str().unwrap()
    )
}

/// The session keyward recorded for `bearer` (the only one of its user).
async fn only_session(gw: &Gateway, bearer: &str) -> Value {
    let r = gw
        .get("/v1/auth/sessions", &[("Authorization", bearer)])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let sessions = r.body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{r:?}");
    sessions[0].clone()
}

/// Metadata names a client tries to set through `Grpc-Metadata-*` (and plain headers) that
/// keyward, or what sits behind it, reads as written by the gateway or a trusted proxy.
const FORGED: &[(&str, &str)] = &[
    ("Grpc-Metadata-X-Forwarded-For", "198.51.100.7"),
    ("Grpc-Metadata-X-Forwarded-Host", "evil.example"),
    ("Grpc-Metadata-X-Forwarded-User-Agent", "forged-agent/6.6"),
    ("Grpc-Metadata-Forwarded", "for=198.51.100.7"),
    ("Grpc-Metadata-X-Real-Ip", "198.51.100.7"),
    ("Grpc-Metadata-X-Keyward-User-Id", "x"),
    ("Grpc-Metadata-X-Keyward-Role", "ROLE_ADMIN"),
    ("Grpc-Metadata-Grpcgateway-User-Agent", "forged-agent/6.6"),
    ("X-Forwarded-User-Agent", "forged-agent/6.6"),
    ("X-Real-Ip", "198.51.100.7"),
];

/// keyward takes the user agent it records from `x-forwarded-user-agent` before
/// `grpcgateway-user-agent`, so a client able to send the former through the gateway picks what
/// its sessions and audit events show.
#[tokio::test]
async fn client_cannot_forge_the_recorded_user_agent_through_metadata_headers() {
    let app = TestApp::start().await;
    let gw = Gateway::start(&app).await;
    let bearer = rest_sign_in(&gw, &email("gw-forge-ua"), FORGED).await;
    let session = only_session(&gw, &bearer).await;
    assert_eq!(
        session["user_agent"], "keyward-gateway-test/1.0",
        "{session}"
    );
    assert_eq!(session["client_address"], "127.0.0.1", "{session}");
}

/// With keyward trusting the gateway's `x-forwarded-for`, the address it rate-limits by and
/// records is the one the gateway and the proxies in front of it wrote, never one the client
/// sent as `Grpc-Metadata-X-Forwarded-For`; the gateway's own forwarding still works.
#[tokio::test]
async fn client_cannot_forge_the_forwarded_address_through_metadata_headers() {
    // One trusted hop: the gateway. Its x-forwarded-for ends with the peer it saw (127.0.0.1).
    let app = TestApp::start_with_config(|c| {
        c.trusted_proxy_hops = 1;
        c.registrations_per_address_per_hour = 1;
    })
    .await;
    let gw = Gateway::start(&app).await;
    let first = email("gw-forge-xff");
    let bearer = rest_sign_in(&gw, &first, FORGED).await;
    let session = only_session(&gw, &bearer).await;
    assert_eq!(session["client_address"], "127.0.0.1", "{session}");
    // A different forged address does not make a fresh registration bucket.
    let r = gw
        .post(
            "/v1/auth/register",
            credentials(&email("gw-forge-xff"), PASSWORD),
            &[("Grpc-Metadata-X-Forwarded-For", "198.51.100.8")],
        )
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.reason(), "RATE_LIMITED");

    // Two trusted hops (an ingress, then the gateway): the ingress's X-Forwarded-For entry is
    // the client, as the gateway passes it on with the peer appended. A forged metadata value
    // must not count as an entry either.
    let app = TestApp::start_with_config(|c| c.trusted_proxy_hops = 2).await;
    let gw = Gateway::start(&app).await;
    let mut headers = vec![("X-Forwarded-For", "203.0.113.9")];
    headers.extend_from_slice(FORGED);
    let bearer = rest_sign_in(&gw, &email("gw-ingress"), &headers).await;
    let session = only_session(&gw, &bearer).await;
    assert_eq!(session["client_address"], "203.0.113.9", "{session}");
    assert_eq!(
        session["user_agent"], "keyward-gateway-test/1.0",
        "{session}"
    );
    // Without an ingress entry, two hops end at the gateway's own: the client sent nothing
    // keyward may believe, so a forged metadata address must not fill the gap.
    let bearer = rest_sign_in(&gw, &email("gw-no-ingress"), FORGED).await;
    let session = only_session(&gw, &bearer).await;
    assert_eq!(session["client_address"], "127.0.0.1", "{session}");
}

/// Stands where keyward would and records the metadata of every AuthService call, answering
/// UNAUTHENTICATED: what a client sends through the gateway, exactly as a server receives it.
#[derive(Clone, Default)]
struct MetadataRecorder(Arc<Mutex<Vec<http::HeaderMap>>>);

impl tonic::server::NamedService for MetadataRecorder {
    const NAME: &'static str = "keyward.v1.AuthService";
}

impl tower::Service<http::Request<tonic::body::Body>> for MetadataRecorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.lock().unwrap().push(request.headers().clone());
        std::future::ready(Ok(tonic::Status::unauthenticated("recorded").into_http()))
    }
}

impl MetadataRecorder {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(self.clone())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr
    }
}

/// The exact metadata that leaves the gateway: none of the forged names arrive (x-keyward-*
/// identity headers included, which keyward itself does not read), while the trusted
/// forwarding, the bearer token, the user agent and trace context do.
#[tokio::test]
async fn gateway_passes_trusted_and_trace_metadata_but_drops_forged_names() {
    let recorder = MetadataRecorder::default();
    let upstream = recorder.start().await;
    let gw = start_gateway(upstream, &[]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = vec![
        ("Authorization", "Bearer some-token"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("traceparent", traceparent),
        ("tracestate", "vendor=1"),
        ("Grpc-Metadata-X-Request-Id", "req-1"),
    ];
    headers.extend_from_slice(FORGED);
    let r = gw.get("/v1/auth/me", &headers).await;
    assert_eq!(r.status, 401, "{r:?}");

    let calls = recorder.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let md = &calls[0];
    let all = |name: &str| -> Vec<&str> {
        md.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<binary>"))
            .collect()
    };
    for name in [
        "x-forwarded-user-agent",
        "forwarded",
        "x-real-ip",
        "x-keyward-user-id",
        "x-keyward-role",
    ] {
        assert!(all(name).is_empty(), "{name} reached keyward: {md:?}");
    }
    assert!(
        md.keys().all(|k| !k.as_str().starts_with("x-keyward-")),
        "{md:?}"
    );
    // Exactly the gateway's own forwarding, one value each.
    assert_eq!(all("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"], "{md:?}");
    assert_eq!(all("x-forwarded-host"), [gw.addr.to_string()], "{md:?}");
    assert_eq!(
        all("grpcgateway-user-agent"),
        ["keyward-gateway-test/1.0"],
        "{md:?}"
    );
    assert_eq!(all("authorization"), ["Bearer some-token"], "{md:?}");
    assert_eq!(all("traceparent"), [traceparent], "{md:?}");
    assert_eq!(all("tracestate"), ["vendor=1"], "{md:?}");
    // Other Grpc-Metadata-* headers keep the default mapping.
    assert_eq!(all("x-request-id"), ["req-1"], "{md:?}");
}

/// Bodies over `--max-body-bytes` (1 MiB by default) answer 413 in the gateway's error shape,
/// whether the size is announced or only found out while reading a chunked body; under the
/// limit they reach keyward, whose own message limit answers 400.
#[tokio::test]
async fn oversized_bodies_answer_413_and_never_reach_keyward() {
    let app = TestApp::start().await;
    let gw = Gateway::start(&app).await;
    let big = login_body(2 * 1024 * 1024);

    let r = send(&gw, "POST", "/v1/auth/login", &[], &big).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.reason(), "REQUEST_TOO_LARGE", "{r:?}");
    assert_eq!(r.body["status"], "INVALID_ARGUMENT", "{r:?}");
    assert_eq!(r.body["details"], json!([]), "{r:?}");

    let r = send_chunked(&gw, "/v1/auth/login", &big).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.reason(), "REQUEST_TOO_LARGE", "{r:?}");

    // Over keyward's max_message_bytes (64 KiB by default), under the gateway's limit.
    let r = send(&gw, "POST", "/v1/auth/login", &[], &login_body(512 * 1024)).await;
    assert!((400..500).contains(&r.status), "{r:?}");
    assert_ne!(r.status, 413, "{r:?}");

    // The flag sets the limit.
    let small = start_gateway(app.addr, &["--max-body-bytes", "4096"]).await;
    let r = send(&small, "POST", "/v1/auth/login", &[], &login_body(8 * 1024)).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.reason(), "REQUEST_TOO_LARGE", "{r:?}");
    let r = send_chunked(&small, "/v1/auth/login", &login_body(8 * 1024)).await;
    assert_eq!(r.status, 413, "{r:?}");
    let email = email("gw-small-limit");
    app.register(&email).await;
    let body = credentials(&email, PASSWORD).to_string();
    let r = send(&small, "POST", "/v1/auth/login", &[], body.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A client that trickles its headers in, a byte at a time (slowloris), is disconnected once
/// `--read-header-timeout` has passed since it connected; one that stops sending its body gets
/// 408 at `--read-timeout`. Neither holds the gateway up for anyone else.
#[tokio::test]
async fn slow_clients_are_cut_off_at_the_read_timeouts() {
    let app = TestApp::start().await;
    let gw = start_gateway(
        app.addr,
        &["--read-header-timeout", "1s", "--read-timeout", "2s"],
    )
    .await;

    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let head = b"POST /v1/auth/login HTTP/1.1\r\nHost: gw\r\nX-Padding: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        writer
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(
        closed.is_ok(),
        "still connected after 10 s of trickled headers"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(6),
        "disconnected after {elapsed:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer:?}");

    // Complete headers, then a body that stops halfway.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let started = Instant::now();
    writer
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let mut reader = reader;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    drop(writer);
    assert!(read.is_ok(), "a stalled body held the connection for 15 s");
    assert!(
        elapsed < Duration::from_secs(8),
        "answered after {elapsed:?}"
    );
    let r = Response::parse(&raw);
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.reason(), "REQUEST_TIMEOUT", "{r:?}");

    // The gateway still serves.
    let r = gw.get("/v1/auth/public-keys", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// What fuzzing sends: JSON null where a message belongs, wrong types, invalid JSON, numbers out
/// of range, invalid UTF-8 in paths and queries, odd headers. Every answer is a 4xx (or a 2xx
/// where the input is harmless) in the gateway's error shape, never a 5xx.
#[tokio::test]
async fn malformed_requests_answer_4xx_never_5xx() {
    let app = TestApp::start().await;
    let gw = Gateway::start(&app).await;

    // The fuzzer's find: a null element of a repeated message field cannot be encoded.
    for body in [
        r#"{"access_token": "x", "checks": [null]}"#,
        r#"{"access_token": "x", "checks": [{"permission": "users.read"}, null]}"#,
        r#"{"checks": [null, null, null]}"#,
    ] {
        let r = send(
            &gw,
            "POST",
            "/v1/auth/batch-authorize",
            &[],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.reason(), "INVALID_ARGUMENT", "{body}: {r:?}");
        assert_eq!(r.body["status"], "INVALID_ARGUMENT", "{body}: {r:?}");
        assert_eq!(r.body["code"], 3, "{body}: {r:?}");
    }

    // Headers become metadata, and keyward's HTTP/2 server takes header lists up to 16 KiB:
    // more is the client's 431, not an INTERNAL from grpc-go. A large cookie that fits passes.
    let huge = format!("c={}", "x".repeat(20 * 1024));
    for header in [("Cookie", huge.as_str()), ("Grpc-Metadata-X-Big", &huge)] {
        let r = send(&gw, "GET", "/v1/auth/public-keys", &[header], b"").await;
        assert_eq!(r.status, 431, "{}: {r:?}", header.0);
        assert_eq!(r.reason(), "HEADERS_TOO_LARGE", "{}: {r:?}", header.0);
    }
    let large = format!("c={}", "x".repeat(8 * 1024));
    let r = send(
        &gw,
        "GET",
        "/v1/auth/public-keys",
        &[("Cookie", &large)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");

    let deep = "[".repeat(100_000);
    // (method, path, extra header, body)
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        // Null, and wrong types, in and around the repeated field.
        (
            "POST",
            "/v1/auth/batch-authorize",
            None,
            r#"{"access_token": "x", "checks": null}"#,
        ),
        (
            "POST",
            "/v1/auth/batch-authorize",
            None,
            r#"{"checks": [[null]]}"#,
        ),
        (
            "POST",
            "/v1/auth/batch-authorize",
            None,
            r#"{"checks": [1]}"#,
        ),
        (
            "POST",
            "/v1/auth/batch-authorize",
            None,
            r#"{"checks": "x"}"#,
        ),
        (
            "POST",
            "/v1/auth/batch-authorize",
            None,
            r#"{"checks": {"permission": "x"}}"#,
        ),
        (
            "POST",
            "/v1/auth/batch-authorize",
            None,
            r#"{"checks": [{"permission": null, "org_id": 5}]}"#,
        ),
        (
            "POST",
            "/v1/auth/batch-authorize",
            None,
            r#"{"checks": [{"permission": ["a", null]}]}"#,
        ),
        (
            "POST",
            "/v1/auth/login",
            None,
            r#"{"email": null, "password": null}"#,
        ),
        (
            "POST",
            "/v1/auth/login",
            None,
            r#"{"email": 5, "password": true}"#,
        ),
        (
            "POST",
            "/v1/auth/login",
            None,
            r#"{"email": ["a@example.com", null]}"#,
        ),
        ("POST", "/v1/auth/login", None, r#"{"email": {"x": null}}"#),
        (
            "POST",
            "/v1/auth/login",
            None,
            r#"{"email": "a\u0000b@example.com", "password": "\ud800"}"#,
        ),
        // Not JSON, or not an object.
        ("POST", "/v1/auth/login", None, "not json"),
        ("POST", "/v1/auth/login", None, "{"),
        ("POST", "/v1/auth/login", None, "[]"),
        ("POST", "/v1/auth/login", None, "null"),
        ("POST", "/v1/auth/login", None, r#""x""#),
        ("POST", "/v1/auth/login", None, ""),
        ("POST", "/v1/auth/login", None, "\u{feff}{}"),
        ("POST", "/v1/auth/login", None, &deep),
        // Numbers out of range and wrong scalar types.
        (
            "POST",
            "/v1/auth/logout",
            None,
            r#"{"all_sessions": 1e999}"#,
        ),
        (
            "POST",
            "/v1/auth/logout",
            None,
            r#"{"all_sessions": "yes"}"#,
        ),
        ("POST", "/v1/auth/logout", None, r#"{"all_sessions": null}"#),
        ("PUT", "/v1/users/u1/role", None, r#"{"role": "ROLE_NOPE"}"#),
        (
            "PUT",
            "/v1/users/u1/role",
            None,
            r#"{"role": 99999999999999999999}"#,
        ),
        ("PUT", "/v1/users/u1/role", None, r#"{"role": -1}"#),
        ("PUT", "/v1/users/u1/role", None, r#"{"role": 1.5}"#),
        (
            "PATCH",
            "/v1/users/u1",
            None,
            r#"{"email_verified": "maybe"}"#,
        ),
        (
            "PATCH",
            "/v1/users/u1",
            None,
            r#"{"email_verified": null, "display_name": null}"#,
        ),
        ("GET", "/v1/users?page_size=1e400", None, ""),
        ("GET", "/v1/users?page_size=99999999999999999999", None, ""),
        ("GET", "/v1/users?page_size=-1", None, ""),
        ("GET", "/v1/users?page_size=abc", None, ""),
        ("GET", "/v1/users?role=ROLE_NOPE", None, ""),
        // Invalid UTF-8 in a path parameter or a query string field has no protobuf encoding.
        ("GET", "/v1/users/%FF%FE", None, ""),
        ("GET", "/v1/users?email_prefix=%C0", None, ""),
        ("POST", "/v1/orgs/%FF/members", None, "{}"),
        // Headers that could upset the HTTP/2 call to keyward.
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Metadata-Connection", "keep-alive")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Metadata-Transfer-Encoding", "chunked")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Metadata-Upgrade", "h2c")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Metadata-Keep-Alive", "1")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Metadata-Te", "gzip")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Metadata-Host", "other")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Metadata-Foo-Bin", "!!not base64!!")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Grpc-Timeout", "soon")),
            "",
        ),
        (
            "GET",
            "/v1/auth/public-keys",
            Some(("Authorization", "Bearer \u{e9}")),
            "",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, header, body) in &cases {
        let r = send(&gw, method, path, header.as_slice(), body.as_bytes()).await;
        let shaped = r.body["reason"].is_string() && r.body["status"].is_string();
        let ok = (200..300).contains(&r.status) || ((400..500).contains(&r.status) && shaped);
        if !ok {
            let shown: String = body.chars().take(80).collect();
            failures.push(format!("{method} {path} {header:?} {shown:?}: {r:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
