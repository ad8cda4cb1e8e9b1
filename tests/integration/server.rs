//! Health, readiness, graceful drain and restarts.

use std::time::Duration;

use keyward::grpc::pb::{AuthenticateRequest, RefreshRequest, RegisterRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::*;

async fn status(
    app_health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    service: &str,
) -> i32 {
    app_health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn every_service_reports_serving_once_the_database_is_ready() {
    let app = TestApp::start().await;
    let mut health = app.health();
    for service in [
        "",
        "keyward.v1.AuthService",
        "keyward.v1.OtpService",
        "keyward.v1.OrgService",
        "keyward.v1.UserService",
        "envoy.service.auth.v3.Authorization",
    ] {
        assert_eq!(status(&mut health, service).await, 1, "{service:?} SERVING");
    }
}

#[tokio::test]
async fn without_a_database_health_is_not_serving_and_calls_say_not_ready() {
    let mut config = test_config();
    config.mongodb_uri = Some("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keyward::run(config, listener, async {
        let _ = rx.await;
    }));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&mut health, "").await, 2, "NOT_SERVING");
    assert_eq!(status(&mut health, "keyward.v1.AuthService").await, 2);
    let err = keyward::grpc::pb::auth_service_client::AuthServiceClient::new(channel)
        .register(RegisterRequest {
            email: email("early"),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "NOT_READY")
    );
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    // One hashing thread so the logins queue and are still running when shutdown starts.
    let app = TestApp::start_with_config(|c| c.hash_workers = 1).await;
    let email = email("drain");
    app.register(&email).await;
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut client = app.auth();
            let email = email.clone();
            tokio::spawn(async move {
                client
                    .login(keyward::grpc::pb::LoginRequest {
                        email,
                        password: PASSWORD.into(),
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    app.stop().await;
    for call in calls {
        call.await
            .unwrap()
            .expect("in-flight call finished during shutdown");
    }
}

#[tokio::test]
async fn a_restart_keeps_users_and_sessions() {
    let first = TestApp::start().await;
    let config = first.config.clone();
    let email = email("restart");
    let pair = first.signed_in(&email).await;
    first.stop().await;

    let second = TestApp::start_with(config).await;
    second
        .auth()
        .authenticate(AuthenticateRequest {
            access_token: pair.access_token.clone(),
        })
        .await
        .expect("session survives");
    second
        .auth()
        .refresh(RefreshRequest {
            refresh_token: pair.refresh_token,
        })
        .await
        .expect("refresh token survives");
    second.login(&email, PASSWORD).await.expect("user survives");
}
