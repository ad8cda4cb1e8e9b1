//! A bad day, with the real processes: the database dies under load and comes back.

use std::time::{Duration, Instant};

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::*;
use crate::local_servers::{spawn_secantus, start_secantus};
use crate::smtp_sink::SmtpSink;

/// How long the database stays away. Long enough for the driver's own server selection (5 s)
/// to time out several times over, short enough for the suite.
const OUTAGE: Duration = Duration::from_secs(12);

/// `grpc.health.v1` status of the whole server: 1 SERVING, 2 NOT_SERVING.
async fn health(app: &TestApp) -> i32 {
    app.health()
        .check(HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

/// Polls health until it is `want`; returns how long that took. Panics after `within`.
async fn wait_health(app: &TestApp, want: i32, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if health(app).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "health did not turn {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn losing_the_database_turns_health_not_serving_fails_fast_and_recovers_without_loss() {
    if std::env::var("KEYWARD_TEST_MONGODB_URI").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped: this test kills its own database server, not a shared one");
        return;
    }
    let base =
        std::env::temp_dir().join(format!("keyward-fault-{}", uuid::Uuid::new_v4().simple()));
    let (mut database, uri) = start_secantus(&base.join("db"), kill_with_parent);
    let port: u16 = uri
        .trim_start_matches("mongodb://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut sink = SmtpSink::start(&base.join("smtp"), kill_with_parent);
    let mut config = test_config();
    config.mongodb_uri = Some(uri);
    config.smtp_url = Some(sink.url());
    let app = TestApp::start_with(config).await;

    // Before: a session with its refresh token, and a verification mail queued (SMTP is down,
    // so it waits in the outbox).
    sink.pause();
    let who = email("outage");
    let pair = app.signed_in(&who).await;

    // Load while the database goes away: logins and refreshes from several tasks.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let channel = app.channel();
            let stop = stop.clone();
            let who = who.clone();
            tokio::spawn(async move {
                let mut client = AuthServiceClient::new(channel);
                let mut slowest = Duration::ZERO;
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = if i % 2 == 0 {
                        client
                            .login(LoginRequest {
                                email: who.clone(),
                                password: "not the password 123".into(),
                            })
                            .await
                            .map(|_| ())
                    } else {
                        client
                            .register(RegisterRequest {
                                email: format!(
                                    "load-{}@example.com",
                                    uuid::Uuid::new_v4().simple()
                                ),
                                password: PASSWORD.into(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                    };
                    slowest = slowest.max(started.elapsed());
                    if let Err(status) = result {
                        codes.push((status.code(), reason(&status)));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (slowest, codes)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    database.kill().unwrap();
    database.wait().unwrap();
    let down_at = Instant::now();
    let noticed = wait_health(&app, 2, Duration::from_secs(10)).await;
    assert!(
        noticed < Duration::from_secs(5),
        "NOT_SERVING after {noticed:?}"
    );

    // While it is gone every call fails at once, with UNAVAILABLE and a stable reason.
    let started = Instant::now();
    let status = app
        .auth()
        .refresh(RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "NOT_READY")
    );

    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    let (_database, _) = spawn_secantus(&base.join("db"), port, kill_with_parent);
    let back = wait_health(&app, 1, Duration::from_secs(30)).await;
    eprintln!("database away {OUTAGE:?}: NOT_SERVING after {noticed:?}, SERVING {back:?} after it returned");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let (slowest, codes) = task.await.unwrap();
        // A call caught mid-flight by the outage may wait for the driver (server selection,
        // one retry) but never past the request timeout; none failed as INTERNAL or UNKNOWN.
        assert!(
            slowest < app.config.request_timeout + Duration::from_secs(1),
            "a call took {slowest:?}"
        );
        for (code, why) in &codes {
            assert!(
                matches!(
                    code,
                    Code::Unavailable | Code::Unauthenticated | Code::ResourceExhausted
                ),
                "{code:?} {why}"
            );
        }
    }

    // Nothing was lost or used up: the refresh token refused during the outage works once now,
    // the session authenticates, and the queued mail goes out exactly once.
    let rotated = app
        .auth()
        .refresh(RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .expect("the refresh token survived the outage")
        .into_inner();
    app.authenticate(&rotated.access_token).await.unwrap();
    sink.resume(kill_with_parent);
    let mail = sink.wait_for(&who, 1, Duration::from_secs(30)).await;
    assert!(mail[0].code().is_some(), "{mail:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.to(&who).len(), 1, "the queued mail went out once");
}
