//! Two keyward processes on one database: revocation on one is seen by the other within 2 s,
//! and the real binary shuts down cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::AuthenticateRequest;

use crate::harness::*;

#[tokio::test]
async fn revocation_reaches_another_replica_within_two_seconds() {
    let a = TestApp::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.arg("serve")
        .env_clear()
        .env(
            "KEYWARD_MONGODB_URI",
            a.config.mongodb_uri.as_deref().unwrap(),
        )
        .env("KEYWARD_MONGODB_DATABASE", &a.config.mongodb_database)
        .env(
            "KEYWARD_SIGNING_KEY",
            a.config.signing_key.as_deref().unwrap(),
        )
        .env("KEYWARD_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .env("KEYWARD_SMTP_URL", a.config.smtp_url.as_deref().unwrap())
        .env("KEYWARD_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    kill_with_parent(&mut cmd);
    let mut b_process = cmd.spawn().unwrap();

    let channel = connect_serving(&format!("127.0.0.1:{port}")).await;
    let mut b = AuthServiceClient::new(channel);

    let pair = a.signed_in(&email("replicas")).await;
    let check = |token: String| AuthenticateRequest {
        access_token: token,
    };
    b.authenticate(check(pair.access_token.clone()))
        .await
        .expect("replica B accepts the token");
    a.auth()
        .authenticate(check(pair.access_token.clone()))
        .await
        .unwrap();

    a.logout(&pair.access_token, false).await;
    let revoked_at = Instant::now();
    assert_eq!(
        reason(
            &a.auth()
                .authenticate(check(pair.access_token.clone()))
                .await
                .unwrap_err()
        ),
        "SESSION_REVOKED"
    );
    let seen_after = loop {
        match b.authenticate(check(pair.access_token.clone())).await {
            Err(e) => {
                assert_eq!(reason(&e), "SESSION_REVOKED");
                break revoked_at.elapsed();
            }
            Ok(_) => {
                assert!(
                    revoked_at.elapsed() < Duration::from_secs(2),
                    "replica B still accepts a revoked session"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    println!("replica B saw the revocation after {seen_after:?}");

    // SIGTERM: NOT_SERVING, drain, exit 0.
    unsafe { libc::kill(b_process.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = b_process.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "keyward did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}
