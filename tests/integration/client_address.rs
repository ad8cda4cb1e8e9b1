//! Which client address per-address limits, sessions and audit events see, through the real REST
//! sidecar: only what the trusted proxies wrote counts, never what the client claims.

use serde_json::Value;

use crate::gateway::{credentials, Gateway};
use crate::harness::*;

/// Registers a new address through the gateway with extra request headers; returns the status.
async fn register_via(gw: &Gateway, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = gw
        .post(
            "/v1/auth/register",
            credentials(&email("addr"), PASSWORD),
            headers,
        )
        .await;
    (r.status, r.body)
}

/// The client address the session made by a login with `headers` records.
async fn session_address(gw: &Gateway, headers: &[(&str, &str)]) -> String {
    let who = email("addr-session");
    let r = gw
        .post("/v1/auth/register", credentials(&who, PASSWORD), headers)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let login = gw
        .post("/v1/auth/login", credentials(&who, PASSWORD), headers)
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    let bearer = format!(
        "Bearer {}",
        login.body["tokens"]["access_token"].as_str().unwrap()
    );
    let r = gw
        .get("/v1/auth/sessions", &[("Authorization", &bearer)])
        .await;
    r.body["sessions"][0]["client_address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn made_up_forwarding_headers_do_not_buy_a_client_more_registrations() {
    let app = TestApp::start_with_config(|c| {
        c.registrations_per_address_per_hour = 2;
        c.trusted_proxy_hops = 1;
    })
    .await;
    let gw = Gateway::start(&app).await;
    let mut statuses = Vec::new();
    for n in 1..=5 {
        let forged = format!("198.51.100.{n}");
        let (status, _) = register_via(
            &gw,
            &[
                ("Grpc-Metadata-X-Forwarded-For", &forged),
                ("X-Forwarded-For", &forged),
                ("Grpc-Metadata-X-Real-Ip", &forged),
            ],
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
}

#[tokio::test]
async fn sessions_record_the_address_the_gateway_saw_not_the_claimed_one() {
    let app = TestApp::start_with_config(|c| c.trusted_proxy_hops = 1).await;
    let gw = Gateway::start(&app).await;
    let recorded = session_address(
        &gw,
        &[
            ("Grpc-Metadata-X-Forwarded-For", "198.51.100.77"),
            ("X-Forwarded-For", "198.51.100.78"),
        ],
    )
    .await;
    assert_eq!(recorded, "127.0.0.1");
}

#[tokio::test]
async fn behind_an_ingress_and_the_sidecar_each_client_has_its_own_bucket() {
    // Two trusted hops: the ingress appends the client it saw (the test plays the ingress by
    // sending X-Forwarded-For), the sidecar appends the ingress.
    let app = TestApp::start_with_config(|c| {
        c.registrations_per_address_per_hour = 2;
        c.trusted_proxy_hops = 2;
    })
    .await;
    let gw = Gateway::start(&app).await;
    let from = |client: &'static str| [("X-Forwarded-For", client)];
    let mut a = Vec::new();
    for _ in 0..3 {
        // What the client wrote before the ingress appended counts for nothing.
        a.push(
            register_via(&gw, &[("X-Forwarded-For", "6.6.6.6, 192.0.2.10")])
                .await
                .0,
        );
    }
    assert_eq!(a, [200, 200, 429]);
    assert_eq!(register_via(&gw, &from("192.0.2.20")).await.0, 200);
    let (status, body) = register_via(
        &gw,
        &[
            ("X-Forwarded-For", "192.0.2.10"),
            ("Grpc-Metadata-X-Forwarded-For", "192.0.2.99"),
        ],
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        session_address(&gw, &from("192.0.2.30")).await,
        "192.0.2.30"
    );
}

#[tokio::test]
async fn ipv6_clients_are_limited_per_64() {
    let app = TestApp::start_with_config(|c| {
        c.registrations_per_address_per_hour = 1;
        c.trusted_proxy_hops = 2;
    })
    .await;
    let gw = Gateway::start(&app).await;
    let mut statuses = Vec::new();
    for addr in [
        "2001:db8:1:2::1",
        // Another address of the same /64 is the same subscriber.
        "2001:db8:1:2:ffff::9",
        "2001:db8:1:3::1",
    ] {
        statuses.push(register_via(&gw, &[("X-Forwarded-For", addr)]).await.0);
    }
    assert_eq!(statuses, [200, 429, 200]);
}

#[tokio::test]
async fn a_direct_client_outside_the_trusted_networks_cannot_name_its_address() {
    // keyward trusts forwarding only from 10.0.0.0/8; this client connects from loopback and
    // forges the header, so it is counted (and recorded) as itself.
    let app = TestApp::start_with_config(|c| {
        c.trusted_proxy_hops = 1;
        c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        c.registrations_per_address_per_hour = 1;
    })
    .await;
    let mut reasons = Vec::new();
    for forged in ["192.0.2.1", "192.0.2.2"] {
        let mut request = tonic::Request::new(keyward::grpc::pb::RegisterRequest {
            email: email("direct"),
            password: PASSWORD.into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-forwarded-for", forged.parse().unwrap());
        reasons.push(match app.auth().register(request).await {
            Ok(_) => "OK".to_string(),
            Err(status) => reason(&status),
        });
    }
    assert_eq!(reasons, ["OK", "RATE_LIMITED"]);
}

#[tokio::test]
async fn a_proxy_that_adds_its_own_forwarding_line_is_still_the_one_believed() {
    // HAProxy's `option forwardfor` adds a line instead of extending the client's: the lines
    // are one list, and the client's own line is the untrusted start of it.
    let app = TestApp::start_with_config(|c| c.trusted_proxy_hops = 2).await;
    let gw = Gateway::start(&app).await;
    let recorded = session_address(
        &gw,
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", "192.0.2.40"),
        ],
    )
    .await;
    assert_eq!(recorded, "192.0.2.40");
}

#[tokio::test]
async fn a_non_ascii_forwarding_entry_does_not_hide_the_trusted_ones() {
    let app = TestApp::start_with_config(|c| c.trusted_proxy_hops = 2).await;
    let gw = Gateway::start(&app).await;
    let recorded = session_address(&gw, &[("X-Forwarded-For", "\u{e9}, 192.0.2.50")]).await;
    assert_eq!(recorded, "192.0.2.50");
}
