//! A bad day, with the real processes: the database dies under load and comes back; the SMTP
//! server refuses every message, or takes 20 s to accept each.

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

    // Liveness does not follow the database: a probe on it must not restart every replica.
    let liveness = app
        .health()
        .check(HealthCheckRequest {
            service: keyward::server::LIVENESS_SERVICE.into(),
        })
        .await
        .map(|r| r.into_inner().status);
    assert_eq!(
        liveness.ok(),
        Some(1),
        "liveness is SERVING during the outage"
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
        eprintln!(
            "load task: slowest call {slowest:?}, {} failed",
            codes.len()
        );
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
        .into_inner()
        .tokens
        .expect("tokens");
    app.authenticate(&rotated.access_token).await.unwrap();
    sink.resume(kill_with_parent);
    let mail = sink.wait_for(&who, 1, Duration::from_secs(30)).await;
    assert!(mail[0].code().is_some(), "{mail:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.to(&who).len(), 1, "the queued mail went out once");
}

/// The misbehaving SMTP server of `tests/support/smtp_faulty.py` in `mode`, with the file it
/// logs every offered recipient to. Killed with the test.
fn faulty_smtp(mode: &str) -> (std::process::Child, String, std::path::PathBuf) {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!("keyward-smtp-{mode}-{port}.log"));
    let _ = std::fs::remove_file(&log);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_faulty.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script)
        .arg(port.to_string())
        .arg(mode)
        .arg(&log)
        .stdout(std::process::Stdio::piped());
    kill_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .expect("python3 with aiosmtpd (scripts/setup.sh)");
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    (child, format!("smtp://127.0.0.1:{port}"), log)
}

fn offered(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |s| s.lines().count())
}

/// The one outbox message of this test's database, once `done` says it is where it should be.
async fn outbox_message(
    app: &TestApp,
    within: Duration,
    done: impl Fn(&mongodb::bson::Document) -> bool,
) -> mongodb::bson::Document {
    use mongodb::bson::doc;
    let outbox = app
        .db()
        .await
        .collection::<mongodb::bson::Document>("mail_outbox");
    let start = Instant::now();
    loop {
        if let Some(d) = outbox
            .find_one(doc! { "kind": "verify_email" })
            .await
            .unwrap()
        {
            if done(&d) {
                return d;
            }
        }
        let all: Vec<mongodb::bson::Document> = {
            use futures::TryStreamExt;
            outbox
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap()
        };
        assert!(
            start.elapsed() < within,
            "outbox message not settled: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_refusing_smtp_server_is_tried_once_and_the_message_given_up_and_audited() {
    let (_smtp, url, log) = faulty_smtp("refuse");
    let app = TestApp::start_with_config(|c| c.smtp_url = Some(url)).await;
    let started = Instant::now();
    app.register(&email("refused")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let message = outbox_message(&app, Duration::from_secs(20), |d| {
        d.get_str("status") == Ok("failed")
    })
    .await;
    assert_eq!(
        message
            .get_i32("attempts")
            .ok()
            .or(message.get_i64("attempts").ok().map(|n| n as i32)),
        Some(1),
        "{message:?}"
    );
    assert!(
        message
            .get_str("last_error")
            .unwrap_or_default()
            .contains("550"),
        "{message:?}"
    );
    // Given up for good: no retry reaches the server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(offered(&log), 1);
    let audited = app
        .db()
        .await
        .collection::<mongodb::bson::Document>("audit_events")
        .count_documents(mongodb::bson::doc! { "action": "mail_delivery", "outcome": "failure" })
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn a_slow_smtp_server_never_slows_the_rpcs_and_gets_each_message_once() {
    let (_smtp, url, log) = faulty_smtp("slow");
    let app = TestApp::start_with_config(|c| c.smtp_url = Some(url)).await;
    let started = Instant::now();
    app.register(&email("slow")).await;
    // While the workers wait on the server, registrations and logins answer as usual.
    for n in 0..5 {
        let who = email(&format!("slow-{n}"));
        app.signed_in(&who).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The server takes 20 s per message; workers wait for it (the lease outlasts that), so
    // every message goes out once, none twice.
    let message = outbox_message(&app, Duration::from_secs(60), |d| {
        d.get_str("status") == Ok("sent")
    })
    .await;
    assert_eq!(message.get_i64("attempts").ok(), Some(1), "{message:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recipients = std::fs::read_to_string(&log).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for line in recipients.lines() {
        let to = line.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            seen.insert(to.to_string()),
            "{to} offered twice:\n{recipients}"
        );
    }
}
