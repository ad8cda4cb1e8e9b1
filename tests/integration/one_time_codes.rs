//! One-time codes end to end: keyward sends through lettre to a real SMTP server (aiosmtpd), the
//! test reads the code out of the received message and uses it. Limits, races, brute force,
//! enumeration and an SMTP outage, all against the real MongoDB-compatible server.

use std::time::Duration;

use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::*;
use mongodb::bson::{doc, Document};
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::*;
use crate::smtp_sink::SmtpSink;

const NEW_PASSWORD: &str = "a brand new passphrase for 2026";

fn otp(app: &TestApp) -> OtpServiceClient<Channel> {
    OtpServiceClient::new(app.channel())
}

/// keyward with email verification required (the product default), mail to the shared sink.
async fn verifying_app(change: impl FnOnce(&mut keyward::config::Config)) -> TestApp {
    TestApp::start_with_config(|c| {
        c.require_verified_email = true;
        change(c);
    })
    .await
}

async fn send(
    app: &TestApp,
    email: &str,
    purpose: CodePurpose,
) -> Result<SendCodeResponse, tonic::Status> {
    otp(app)
        .send_code(SendCodeRequest {
            email: email.into(),
            purpose: purpose as i32,
        })
        .await
        .map(|r| r.into_inner())
}

async fn verify(app: &TestApp, email: &str, code: &str) -> Result<User, tonic::Status> {
    otp(app)
        .verify_email(VerifyEmailRequest {
            email: email.into(),
            code: code.into(),
        })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn login_with_code(
    app: &TestApp,
    email: &str,
    code: &str,
) -> Result<TokenPair, tonic::Status> {
    otp(app)
        .login_with_code(LoginWithCodeRequest {
            email: email.into(),
            code: code.into(),
        })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

async fn reset(
    app: &TestApp,
    email: &str,
    code: &str,
    password: &str,
) -> Result<i32, tonic::Status> {
    otp(app)
        .reset_password(ResetPasswordRequest {
            email: email.into(),
            code: code.into(),
            new_password: password.into(),
        })
        .await
        .map(|r| r.into_inner().sessions_ended)
}

fn assert_code_invalid(result: Result<impl std::fmt::Debug, tonic::Status>) {
    let status = result.expect_err("the code must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "CODE_INVALID", "{status:?}");
}

/// A code other than `code`.
fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

/// Every document of `collection`, as JSON text.
async fn dump(app: &TestApp, collection: &str) -> String {
    use futures::TryStreamExt;
    let docs: Vec<Document> = app
        .db()
        .await
        .collection::<Document>(collection)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    serde_json::to_string(&docs).unwrap()
}

#[tokio::test]
async fn register_verify_email_then_login_over_real_smtp() {
    let app = verifying_app(|_| {}).await;
    let sink = shared_sink();
    let email = email("verify");
    let registered = app.try_register(&email).await.unwrap();
    assert!(registered.pending_verification);

    // Not verified: a correct password is told so; a wrong one is not.
    let status = app.login(&email, PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "EMAIL_NOT_VERIFIED");
    let status = app
        .login(&email, "not the password at all")
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");

    // Register itself sent the code.
    let mail = sink.wait_for(&email, 1, Duration::from_secs(30)).await;
    let code = mail[0].code().expect("a code in the mail");
    assert!(mail[0].subject.contains(&code), "{:?}", mail[0].subject);
    assert!(mail[0].html.contains(&code));

    // The database holds neither the code nor a readable copy of the mail.
    for collection in [
        "one_time_codes",
        "mail_outbox",
        "audit_events",
        "rate_limits",
    ] {
        let dumped = dump(&app, collection).await;
        assert!(
            !dumped.contains(&code),
            "{collection} holds the code: {dumped}"
        );
        assert!(
            collection == "audit_events" || !dumped.contains(&email),
            "{collection} holds the address"
        );
    }

    assert_code_invalid(verify(&app, &email, &wrong(&code)).await);
    let user = verify(&app, &email, &code).await.unwrap();
    assert!(user.email_verified);
    assert_code_invalid(verify(&app, &email, &code).await);
    let tokens = app.login(&email, PASSWORD).await.unwrap();
    app.authenticate(&tokens.access_token).await.unwrap();
}

#[tokio::test]
async fn login_with_code_starts_a_session_once() {
    let app = verifying_app(|_| {}).await;
    let sink = shared_sink();
    let email = email("code-login");
    app.register(&email).await;
    sink.wait_for(&email, 1, Duration::from_secs(30)).await;

    let sent = send(&app, &email, CodePurpose::Login).await.unwrap();
    assert_eq!(sent.expires_in, 600);
    assert_eq!(sent.retry_after_seconds, 60);
    let code = sink.code(&email, 2).await;
    let pair = login_with_code(&app, &email, &code).await.unwrap();
    assert!(!pair.refresh_token.is_empty() && pair.expires_in > 0);
    let user = pair.user.clone().unwrap();
    assert!(user.email_verified, "the code proved the mailbox");
    app.authenticate(&pair.access_token).await.unwrap();
    // Used up; and a login code is not a verification code.
    assert_code_invalid(login_with_code(&app, &email, &code).await);
    assert_code_invalid(verify(&app, &email, &code).await);
    // The first code sign-in of an unverified account claimed it for the mailbox's owner: the
    // password set at registration (by whoever that was) no longer opens it.
    let status = app.login(&email, PASSWORD).await.unwrap_err();
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
}

#[tokio::test]
async fn reset_password_ends_every_session_and_sends_a_notice() {
    let app = verifying_app(|c| c.require_verified_email = false).await;
    let sink = shared_sink();
    let email = email("reset");
    let first = app.signed_in(&email).await;
    let second = app.login(&email, PASSWORD).await.unwrap();
    sink.wait_for(&email, 1, Duration::from_secs(30)).await; // the verification mail

    send(&app, &email, CodePurpose::ResetPassword)
        .await
        .unwrap();
    let code = sink.code(&email, 2).await;

    // A weak password is refused before the code is looked at, and does not use it up.
    let status = reset(&app, &email, &code, "password").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(violations(&status).iter().any(|(f, _)| f == "new_password"));

    assert_eq!(reset(&app, &email, &code, NEW_PASSWORD).await.unwrap(), 2);
    for pair in [&first, &second] {
        let status = app.authenticate(&pair.access_token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let refreshed = app
            .auth()
            .refresh(RefreshRequest {
                refresh_token: pair.refresh_token.clone(),
            })
            .await;
        assert_eq!(refreshed.unwrap_err().code(), Code::Unauthenticated);
    }
    assert_eq!(
        reason(&app.login(&email, PASSWORD).await.unwrap_err()),
        "INVALID_CREDENTIALS"
    );
    app.login(&email, NEW_PASSWORD).await.unwrap();
    assert_code_invalid(reset(&app, &email, &code, "yet another passphrase 2026").await);

    let notice = sink.wait_for(&email, 3, Duration::from_secs(30)).await;
    assert!(
        notice
            .iter()
            .any(|m| m.subject == "Your password was changed"
                && m.text.contains("2 signed-in session(s) were ended")),
        "{notice:?}"
    );
}

#[tokio::test]
async fn concurrent_uses_of_the_right_code_succeed_exactly_once() {
    let app = verifying_app(|c| c.code_requests_per_address_per_minute = 0).await;
    let sink = shared_sink();

    // LoginWithCode: one session, fifteen refusals.
    let email_a = email("race-login");
    app.register(&email_a).await;
    sink.wait_for(&email_a, 1, Duration::from_secs(30)).await;
    send(&app, &email_a, CodePurpose::Login).await.unwrap();
    let code = sink.code(&email_a, 2).await;
    let results = race(16, |_| {
        let (app_channel, email, code) = (app.channel(), email_a.clone(), code.clone());
        async move {
            OtpServiceClient::new(app_channel)
                .login_with_code(LoginWithCodeRequest { email, code })
                .await
        }
    })
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    let sessions = app
        .db()
        .await
        .collection::<Document>("sessions")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(sessions, 1);

    // VerifyEmail: one success.
    let email_b = email("race-verify");
    app.register(&email_b).await;
    let code = sink.code(&email_b, 1).await;
    let results = race(16, |_| {
        let (app_channel, email, code) = (app.channel(), email_b.clone(), code.clone());
        async move {
            OtpServiceClient::new(app_channel)
                .verify_email(VerifyEmailRequest { email, code })
                .await
        }
    })
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
}

#[tokio::test]
async fn a_code_dies_after_five_attempts_and_when_replaced() {
    let app = verifying_app(|c| c.code_send_cooldown = Duration::ZERO).await;
    let sink = shared_sink();
    let email = email("brute");
    app.register(&email).await;
    sink.wait_for(&email, 1, Duration::from_secs(30)).await;

    // Four wrong guesses leave the code alive.
    send(&app, &email, CodePurpose::Login).await.unwrap();
    let code = sink.code(&email, 2).await;
    for _ in 0..4 {
        assert_code_invalid(login_with_code(&app, &email, &wrong(&code)).await);
    }
    login_with_code(&app, &email, &code).await.unwrap();

    // Five wrong guesses kill it: the sixth attempt fails even with the right digits.
    send(&app, &email, CodePurpose::Login).await.unwrap();
    let code = sink.code(&email, 3).await;
    for _ in 0..5 {
        assert_code_invalid(login_with_code(&app, &email, &wrong(&code)).await);
    }
    assert_code_invalid(login_with_code(&app, &email, &code).await);

    // A new code replaces the old one.
    send(&app, &email, CodePurpose::Login).await.unwrap();
    let old = sink.code(&email, 4).await;
    send(&app, &email, CodePurpose::Login).await.unwrap();
    let new = sink.code(&email, 5).await;
    if old != new {
        assert_code_invalid(login_with_code(&app, &email, &old).await);
    }
    login_with_code(&app, &email, &new).await.unwrap();
}

#[tokio::test]
async fn cooldown_and_hourly_cap_count_for_every_address() {
    let app = verifying_app(|_| {}).await;
    let known = email("limits");
    app.register(&known).await; // sends VERIFY_EMAIL: that purpose is cooling down now
    let unknown = email("nobody");

    for address in [&known, &unknown] {
        send(&app, address, CodePurpose::Login).await.unwrap();
        let status = send(&app, address, CodePurpose::Login).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(reason(&status), "RATE_LIMITED");
        let wait = retry_delay(&status);
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        // Another purpose has its own limits.
        send(&app, address, CodePurpose::ResetPassword)
            .await
            .unwrap();
    }

    let app = verifying_app(|c| c.code_send_cooldown = Duration::ZERO).await;
    let address = email("cap");
    for _ in 0..5 {
        send(&app, &address, CodePurpose::Login).await.unwrap();
    }
    let status = send(&app, &address, CodePurpose::Login).await.unwrap_err();
    assert_eq!(reason(&status), "RATE_LIMITED");
    assert!(
        retry_delay(&status) > Duration::from_secs(3000),
        "waits for the hour"
    );
}

fn retry_delay(status: &tonic::Status) -> Duration {
    use tonic_types::StatusExt;
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo")
}

#[tokio::test]
async fn answers_do_not_tell_whether_an_account_exists() {
    let app = verifying_app(|c| c.code_send_cooldown = Duration::ZERO).await;
    let sink = shared_sink();
    let verified = email("enum-verified");
    app.register(&verified).await;
    let code = sink.code(&verified, 1).await;
    verify(&app, &verified, &code).await.unwrap();
    let unknown = email("enum-unknown");

    // Same answer for an account and for nobody, for each purpose.
    for purpose in [
        CodePurpose::Login,
        CodePurpose::ResetPassword,
        CodePurpose::VerifyEmail,
    ] {
        let a = send(&app, &verified, purpose).await;
        let b = send(&app, &unknown, purpose).await;
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{purpose:?}"),
            (Err(a), Err(b)) => {
                assert_eq!(
                    (a.code(), reason(&a)),
                    (b.code(), reason(&b)),
                    "{purpose:?}"
                )
            }
            (a, b) => panic!("{purpose:?}: {a:?} vs {b:?}"),
        }
    }
    // Using a code: wrong code for an account == any code for nobody.
    let a = login_with_code(&app, &verified, "000000")
        .await
        .unwrap_err();
    let b = login_with_code(&app, &unknown, "000000").await.unwrap_err();
    assert_eq!(
        (a.code(), reason(&a), a.message()),
        (b.code(), reason(&b), b.message())
    );

    // Mail went only where it should: the verified account got LOGIN and RESET codes (plus its
    // first verification mail), nobody else anything.
    sink.wait_for(&verified, 3, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.to(&verified).len(), 3);
    assert!(sink.to(&unknown).is_empty());
}

#[tokio::test]
async fn passwordless_signup_only_when_turned_on() {
    let sink = shared_sink();
    let off = verifying_app(|_| {}).await;
    let nobody = email("passwordless-off");
    send(&off, &nobody, CodePurpose::Login).await.unwrap();
    assert_code_invalid(login_with_code(&off, &nobody, "123456").await);

    let on = verifying_app(|c| c.passwordless_signup = true).await;
    let newcomer = email("passwordless-on");
    send(&on, &newcomer, CodePurpose::Login).await.unwrap();
    let code = sink.code(&newcomer, 1).await;
    let pair = login_with_code(&on, &newcomer, &code).await.unwrap();
    let user = pair.user.unwrap();
    assert_eq!(user.email, newcomer);
    assert!(user.email_verified);
    // No password was set, so none works.
    assert_eq!(
        reason(&on.login(&newcomer, "").await.unwrap_err()),
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        reason(&on.login(&newcomer, PASSWORD).await.unwrap_err()),
        "INVALID_CREDENTIALS"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.to(&nobody).is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_by_field() {
    let app = verifying_app(|_| {}).await;
    for bad in ["a@example.com\r\nBcc: x@evil.example", "not-an-email", ""] {
        let status = send(&app, bad, CodePurpose::Login).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            violations(&status).iter().any(|(f, _)| f == "email"),
            "{bad:?}"
        );
    }
    let status = send(&app, "a@example.com", CodePurpose::Unspecified)
        .await
        .unwrap_err();
    assert!(violations(&status).iter().any(|(f, _)| f == "purpose"));
    for bad in ["12345", "1234567", "12345a", ""] {
        let status = verify(&app, "a@example.com", bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            violations(&status).iter().any(|(f, _)| f == "code"),
            "{bad:?}"
        );
    }
}

/// Codes requested while the SMTP server is down arrive once it is back: each exactly once.
#[tokio::test]
async fn smtp_outage_delays_mail_but_loses_none_and_sends_none_twice() {
    let dir = std::env::temp_dir().join(format!(
        "keyward-smtp-outage-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut sink = SmtpSink::start(&dir, kill_with_parent);
    let url = sink.url();
    let app = verifying_app(|c| {
        c.smtp_url = Some(url);
        c.mail_retry_base_delay = Duration::from_millis(100);
        c.mail_retry_max_delay = Duration::from_millis(400);
    })
    .await;
    sink.pause();

    let people: Vec<String> = (0..6).map(|n| email(&format!("outage{n}"))).collect();
    for person in &people {
        app.register(person).await; // queues the verification mail
        send(&app, person, CodePurpose::ResetPassword)
            .await
            .unwrap();
    }
    // Delivery is being retried while the server is down.
    let outbox = app.db().await.collection::<Document>("mail_outbox");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let retried = outbox
            .count_documents(doc! { "status": "pending", "attempts": { "$gte": 2 } })
            .await
            .unwrap();
        if retried == 12 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{retried} of 12 retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sink.all().is_empty());

    sink.resume(kill_with_parent);
    for person in &people {
        sink.wait_for(person, 2, Duration::from_secs(30)).await;
    }
    // Give any duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.all().len(), 12);
    for person in &people {
        let got = sink.to(person);
        assert_eq!(got.len(), 2, "{person}: {got:?}");
        assert!(got.iter().all(|m| m.code().is_some()));
    }
    let sent = outbox
        .count_documents(doc! { "status": "sent", "sealed": { "$exists": false } })
        .await
        .unwrap();
    assert_eq!(sent, 12, "delivered messages keep no body");
}

/// Expiry, with the clock as a parameter: the store refuses a code after its lifetime.
#[tokio::test]
async fn a_code_expires_after_its_lifetime() {
    use keyward::store::one_time_codes::{slot, OneTimeCodes};
    let app = TestApp::start().await;
    let db = app.db().await;
    let codes = OneTimeCodes(db.collection("one_time_codes"));
    let slot = slot(keyward::domain::codes::Purpose::Login, "late@example.com");
    let t0 = chrono::Utc::now();
    let lifetime = Duration::from_secs(600);
    codes
        .replace(&slot, "requester", "hash", t0, lifetime)
        .await
        .unwrap();
    let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
    assert!(codes
        .admit_attempt(&slot, "requester", at(599), 5, 3)
        .await
        .unwrap()
        .is_some());
    assert!(codes
        .admit_attempt(&slot, "requester", at(600), 5, 3)
        .await
        .unwrap()
        .is_none());
    assert!(!codes.consume(&slot, "hash", at(601)).await.unwrap());
    assert!(codes.consume(&slot, "hash", at(599)).await.unwrap());
}

#[tokio::test]
async fn grpcurl_sends_and_verifies_a_code_in_json() {
    let app = verifying_app(|_| {}).await;
    let sink = shared_sink();
    let addr = app.addr.to_string();
    let email = email("grpcurl-otp");
    app.register(&email).await;
    let code = sink.code(&email, 1).await;
    let run = |method: &'static str, body: String| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || grpcurl(&["-plaintext", "-d", &body, &addr, method]))
    };
    let (ok, out) = run(
        "keyward.v1.OtpService/SendCode",
        format!(r#"{{"email":"{email}","purpose":"CODE_PURPOSE_LOGIN"}}"#),
    )
    .await
    .unwrap();
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Seconds are int32 in the contract: a JSON number, not an int64's string.
    assert_eq!(answer["expiresIn"], 600, "{out}");
    let (ok, out) = run(
        "keyward.v1.OtpService/VerifyEmail",
        format!(r#"{{"email":"{email}","code":"{code}"}}"#),
    )
    .await
    .unwrap();
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["user"]["emailVerified"], true, "{out}");
    let (ok, out) = run(
        "keyward.v1.OtpService/VerifyEmail",
        format!(r#"{{"email":"{email}","code":"{code}"}}"#),
    )
    .await
    .unwrap();
    assert!(!ok && out.contains("CODE_INVALID"), "{out}");
}

#[tokio::test]
async fn a_deleted_account_never_signs_in_by_code_even_with_passwordless_signup() {
    let app = TestApp::start_with_config(|c| c.passwordless_signup = true).await;
    let deleted = email("deleted");
    let session = app.signed_in(&deleted).await;
    let id = session.user.unwrap().id;
    let (_, admin) = crate::users::with_role(&app, &email("admin"), "admin").await;
    crate::users::users(&app)
        .delete_user(bearer(
            DeleteUserRequest {
                user_id: id,
                reason: String::new(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap();

    // The address is still taken by the deleted record (reuse_deleted_emails is off), so a
    // passwordless sign-up cannot create a new account: the code opens nothing.
    send(&app, &deleted, CodePurpose::Login).await.unwrap();
    let code = shared_sink().code(&deleted, 2).await;
    assert_code_invalid(login_with_code(&app, &deleted, &code).await);
}
