//! `/metrics` as Prometheus scrapes it: plain HTTP on its own port. A scripted mix of calls to a
//! keyward process of its own moves each counter by exactly what the calls did, and no label
//! value anywhere carries personal data, a token, an id or an address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::{AuthenticateRequest, CodePurpose, LoginRequest, SendCodeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ext_authz::http_request;
use crate::harness::*;

/// The raw answer to `GET path` over HTTP/1.0 (read to the end).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// One sample of the exposition: its name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// A scrape: every sample by series.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<Series, f64>,
    body: String,
}

impl Scrape {
    /// Scrapes `/metrics` at `addr`, checking the status line and content type.
    async fn take(addr: SocketAddr) -> Self {
        let raw = http_get(addr, "/metrics").await.expect("/metrics answers");
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        Self::parse(body)
    }

    /// Parses the text exposition format (the subset the exporter writes).
    fn parse(body: &str) -> Self {
        let mut samples = BTreeMap::new();
        for line in body.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.strip_suffix('}').expect("closing brace")),
                ),
                None => (series, BTreeMap::new()),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "metric name {name:?}"
            );
            samples.insert(
                Series {
                    name: name.to_string(),
                    labels,
                },
                value,
            );
        }
        Self {
            samples,
            body: body.to_string(),
        }
    }

    /// The value of the series `name` with exactly `labels` (0 when absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let series = Series {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.samples.get(&series).copied().unwrap_or(0.0)
    }

    /// The sum over every series named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(s, _)| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.keys().any(|s| s.name == name)
    }
}

/// `k="v",k2="v2"` with the format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} is quoted");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// Why a label value must not be exposed, if it looks like personal data, a secret, an id or
/// an address.
fn unsafe_label(value: &str) -> Option<&'static str> {
    if value.contains('@') {
        return Some("an email address");
    }
    if ["v4.public.", "v4.local.", "kwr_", "kwk_", "k4."]
        .iter()
        .any(|p| value.contains(p))
    {
        return Some("a token or key");
    }
    let hex_run = value
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    if hex_run >= 16 {
        return Some("a hex id");
    }
    let looks_like_ip = value
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .any(|part| part.parse::<std::net::IpAddr>().is_ok());
    if looks_like_ip {
        return Some("an IP address");
    }
    None
}

/// Asserts that no label value of `scrape` is unsafe, and that none of `secrets` (emails,
/// tokens, ids the test used) appears anywhere in the exposition.
fn assert_no_personal_data(scrape: &Scrape, secrets: &[&str]) {
    for series in scrape.samples.keys() {
        for (key, value) in &series.labels {
            if let Some(why) = unsafe_label(value) {
                panic!("{}{{{key}={value:?}}} looks like {why}", series.name);
            }
        }
    }
    for secret in secrets {
        assert!(
            !scrape.body.contains(secret),
            "the exposition contains {secret:?}"
        );
    }
}

#[test]
fn the_label_check_catches_what_it_must() {
    for bad in [
        "someone@example.com",
        "0123456789abcdef0123456789abcdef",
        "v4.public.eyJzdWIiOiJ4In0",
        "kwr_abc",
        "kwk_abc",
        "127.0.0.1",
        "10.1.2.3",
        "::1",
        "2001:db8::1",
        "fe80::1%eth0",
    ] {
        assert!(unsafe_label(bad).is_some(), "{bad:?} passes");
    }
    for fine in [
        "keyward.v1.AuthService",
        "Login",
        "ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection",
        "UNAUTHENTICATED",
        "0.1.0",
        "unknown",
        "findAndModify",
        "0.00025",
        "+Inf",
        "access_custom_roles",
    ] {
        assert_eq!(unsafe_label(fine), None, "{fine:?}");
    }
    let labels = parse_labels(r#"a="x",b="y \"q\" \\ z""#);
    assert_eq!(labels["a"], "x");
    assert_eq!(labels["b"], r#"y "q" \ z"#);
}

const LOGINS: &str = "keyward_logins_total";
const RPCS: &str = "keyward_rpc_requests_total";
const DECISIONS: &str = "keyward_ext_authz_decisions_total";

fn rpc(
    service: &'static str,
    method: &'static str,
    code: &'static str,
) -> [(&'static str, &'static str); 3] {
    [("service", service), ("method", method), ("code", code)]
}

#[tokio::test]
async fn a_scripted_mix_of_calls_moves_each_counter_by_what_it_did() {
    // keyward in a process of its own, so nothing but this test moves its counters.
    let config = test_config();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Keyward::serve(&config)
        .env("KEYWARD_METRICS_ADDR", metrics_addr.to_string())
        .env("KEYWARD_REQUIRE_VERIFIED_EMAIL", "false")
        .env("KEYWARD_HASH_WORKERS", "2")
        .env("KEYWARD_LOG_LEVEL", "warn")
        .spawn();
    let grpc_addr: SocketAddr = child.addr.parse().unwrap();
    let channel = child.channel().await;
    let mut auth = AuthServiceClient::new(channel.clone());

    let before = Scrape::take(metrics_addr).await;
    assert_eq!(
        before.value(
            "keyward_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", keyward::metrics::BUILD_COMMIT)
            ]
        ),
        1.0,
        "{}",
        before.body
    );

    // The script: a registration, a wrong and a right password, two token checks, three
    // ext_authz checks (allowed, no token, bad token) and a code for an unknown address.
    let stranger = email("metrics-nobody");
    let email = email("metrics");
    let user_id = auth
        .register(keyward::grpc::pb::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .user
        .unwrap()
        .id;
    let login = |password: &str| LoginRequest {
        email: email.clone(),
        password: password.into(),
    };
    let refused = auth
        .login(login("not the password at all"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let pair = auth
        .login(login(PASSWORD))
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens");
    for _ in 0..2 {
        auth.authenticate(AuthenticateRequest {
            access_token: pair.access_token.clone(),
        })
        .await
        .expect("authenticate");
    }
    let mut authz =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            channel.clone(),
        );
    let bearer_header = format!("Bearer {}", pair.access_token);
    for headers in [
        vec![("authorization", bearer_header.as_str())],
        vec![],
        vec![("authorization", "Bearer v4.public.forged")],
    ] {
        authz
            .check(http_request(&headers, &[]))
            .await
            .expect("Check answers");
    }
    OtpServiceClient::new(channel.clone())
        .send_code(SendCodeRequest {
            email: stranger.clone(),
            purpose: CodePurpose::Login as i32,
        })
        .await
        .expect("send_code");

    let after = Scrape::take(metrics_addr).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    const AUTH: &str = "keyward.v1.AuthService";
    assert_eq!(moved(RPCS, &rpc(AUTH, "Register", "OK")), 1.0);
    assert_eq!(moved(RPCS, &rpc(AUTH, "Login", "OK")), 1.0);
    assert_eq!(moved(RPCS, &rpc(AUTH, "Login", "UNAUTHENTICATED")), 1.0);
    assert_eq!(moved(RPCS, &rpc(AUTH, "Authenticate", "OK")), 2.0);
    assert_eq!(
        moved(
            RPCS,
            &rpc("envoy.service.auth.v3.Authorization", "Check", "OK")
        ),
        3.0,
        "every decision is an OK answer"
    );
    assert_eq!(
        moved(RPCS, &rpc("keyward.v1.OtpService", "SendCode", "OK")),
        1.0
    );
    let histogram_count = |s: &Scrape, method: &str| {
        s.value(
            "keyward_rpc_duration_seconds_count",
            &[("service", AUTH), ("method", method)],
        )
    };
    assert_eq!(
        histogram_count(&after, "Login") - histogram_count(&before, "Login"),
        2.0
    );
    // Every Authenticate took less than 10 s: all of them are in a finite bucket.
    assert_eq!(
        after.value(
            "keyward_rpc_duration_seconds_bucket",
            &[("service", AUTH), ("method", "Authenticate"), ("le", "10")]
        ),
        histogram_count(&after, "Authenticate")
    );

    let login_outcome = |outcome| [("method", "password"), ("outcome", outcome)];
    assert_eq!(moved(LOGINS, &login_outcome("success")), 1.0);
    assert_eq!(moved(LOGINS, &login_outcome("invalid_credentials")), 1.0);
    assert_eq!(moved(DECISIONS, &[("decision", "allow")]), 1.0);
    assert_eq!(moved(DECISIONS, &[("decision", "unauthenticated")]), 2.0);
    assert_eq!(moved(DECISIONS, &[("decision", "deny")]), 0.0);
    assert_eq!(
        moved(
            "keyward_code_requests_total",
            &[("purpose", "login"), ("outcome", "suppressed")]
        ),
        1.0
    );
    // The first check of a token verifies it; the second finds it in the cache.
    let cache = |result| [("cache", "session_token"), ("result", result)];
    assert!(moved("keyward_cache_lookups_total", &cache("hit")) >= 1.0);
    assert!(moved("keyward_cache_lookups_total", &cache("miss")) >= 1.0);
    // Register hashed, both logins verified: three jobs on the hashing pool.
    assert!(
        after.sum("keyward_hash_pool_job_duration_seconds_count", &[])
            - before.sum("keyward_hash_pool_job_duration_seconds_count", &[])
            >= 3.0
    );
    assert_eq!(
        after.value("keyward_hash_pool_workers", &[]),
        2.0,
        "KEYWARD_HASH_WORKERS=2"
    );
    assert_eq!(after.value("keyward_hash_pool_queued_jobs", &[]), 0.0);
    // MongoDB commands are timed by command name.
    for command in ["insert", "find"] {
        assert!(
            after.value(
                "keyward_mongodb_command_duration_seconds_count",
                &[("command", command)]
            ) > before.value(
                "keyward_mongodb_command_duration_seconds_count",
                &[("command", command)]
            ),
            "{command}"
        );
    }

    // The outbox gauges are refreshed every few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = after;
    while !last.has("keyward_mail_outbox_pending_messages") {
        assert!(
            Instant::now() < deadline,
            "no outbox gauges:\n{}",
            last.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = Scrape::take(metrics_addr).await;
    }
    assert!(last.has("keyward_mail_outbox_oldest_age_seconds"));

    assert_no_personal_data(
        &last,
        &[
            &email,
            &stranger,
            &user_id,
            &pair.access_token,
            &pair.refresh_token,
            "127.0.0.1",
        ],
    );

    // `/metrics` is not on the gRPC port, and the metrics port serves nothing else.
    let on_grpc = http_get(grpc_addr, "/metrics").await.unwrap_or_default();
    assert!(!on_grpc.contains("keyward_"), "{on_grpc}");
    let elsewhere = http_get(metrics_addr, "/").await.unwrap();
    assert!(elsewhere.starts_with("HTTP/1.0 404"), "{elsewhere}");

    assert!(child.terminate().await.success());
}

#[tokio::test]
async fn every_test_keyward_serves_the_process_registry_and_no_label_is_personal() {
    // The in-process registry collects the calls of every test running beside this one, so
    // its labels are checked against the whole suite's traffic.
    let app = TestApp::start().await;
    let metrics_addr = app.metrics_addr.expect("tests serve /metrics");
    assert_ne!(metrics_addr.port(), app.addr.port());
    let email = email("metrics-inproc");
    let before = Scrape::take(metrics_addr).await;
    let pair = app.signed_in(&email).await;
    app.authenticate(&pair.access_token).await.unwrap();
    let after = Scrape::take(metrics_addr).await;
    let success = [("method", "password"), ("outcome", "success")];
    assert!(after.value(LOGINS, &success) - before.value(LOGINS, &success) >= 1.0);
    assert!(after.has("keyward_build_info"));
    assert_no_personal_data(&after, &[&email, &pair.access_token, &pair.refresh_token]);
    app.stop().await;
}
