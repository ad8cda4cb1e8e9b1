//! Two keyward processes on one database: revocation on one is seen by the other within 2 s,
//! and the real binary shuts down cleanly on SIGTERM.

use std::time::{Duration, Instant};

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::AuthenticateRequest;

use crate::harness::*;

#[tokio::test]
async fn revocation_reaches_another_replica_within_two_seconds() {
    let a = TestApp::start().await;
    let mut b_process = Keyward::serve(&a.config)
        .env("KEYWARD_LOG_LEVEL", "warn")
        .spawn();
    let mut b = AuthServiceClient::new(b_process.channel().await);

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
    let status = b_process.terminate().await;
    assert!(status.success(), "exit status {status:?}");
}
