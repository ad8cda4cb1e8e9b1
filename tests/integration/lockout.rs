//! Per-email lockout with growing delays, its reset, and per-address throttling.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use keyward::grpc::pb::otp_service_client::OtpServiceClient;

use crate::harness::*;

#[tokio::test]
async fn five_failures_lock_the_email_even_for_the_right_password_then_it_unlocks() {
    let app = TestApp::start_with_config(|c| {
        c.lockout_base_delay = Duration::from_secs(2);
        c.login_attempts_per_address_per_minute = 0;
    })
    .await;
    let email = email("locked");
    app.register(&email).await;
    for _ in 0..5 {
        assert_eq!(
            reason(&app.login(&email, "wrong guess 123").await.unwrap_err()),
            "INVALID_CREDENTIALS"
        );
    }
    let err = app.login(&email, PASSWORD).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "ACCOUNT_LOCKED")
    );
    let retry = err
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(2),
        "{retry:?}"
    );

    tokio::time::sleep(retry + Duration::from_millis(200)).await;
    app.login(&email, PASSWORD)
        .await
        .expect("unlocked after the delay");
    // Success reset the count: four more failures do not lock.
    for _ in 0..4 {
        let _ = app.login(&email, "wrong guess 123").await;
    }
    app.login(&email, PASSWORD)
        .await
        .expect("not locked after 4 failures");

    let events = {
        use mongodb::bson::{doc, Document};
        app.db()
            .await
            .collection::<Document>("audit_events")
            .count_documents(doc! { "action": "lockout" })
            .await
            .unwrap()
    };
    assert_eq!(events, 1);
}

#[tokio::test]
async fn unknown_emails_lock_exactly_like_real_ones() {
    let app = TestApp::start_with_config(|c| c.login_attempts_per_address_per_minute = 0).await;
    let (real, ghost) = (email("real"), email("ghost"));
    app.register(&real).await;
    let mut answers = Vec::new();
    for who in [&real, &ghost] {
        let mut seq = Vec::new();
        for _ in 0..7 {
            let e = app.login(who, "wrong guess 123").await.unwrap_err();
            seq.push((e.code(), reason(&e)));
        }
        answers.push(seq);
    }
    assert_eq!(
        answers[0], answers[1],
        "lockout must not reveal which emails have accounts"
    );
    assert_eq!(
        answers[0][5],
        (Code::ResourceExhausted, "ACCOUNT_LOCKED".to_string())
    );
}

#[tokio::test]
async fn one_address_is_throttled_with_retry_info() {
    let app = TestApp::start_with_config(|c| c.login_attempts_per_address_per_minute = 3).await;
    let mut reasons = Vec::new();
    for i in 0..4 {
        let e = app
            .login(&format!("spray{i}@example.com"), "wrong guess 123")
            .await
            .unwrap_err();
        reasons.push(reason(&e));
        if i == 3 {
            assert_eq!(e.code(), Code::ResourceExhausted);
            let retry = e
                .get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .expect("RetryInfo");
            assert!(retry <= Duration::from_secs(60));
        }
    }
    assert_eq!(
        reasons,
        [
            "INVALID_CREDENTIALS",
            "INVALID_CREDENTIALS",
            "INVALID_CREDENTIALS",
            "RATE_LIMITED"
        ]
    );
}

#[tokio::test]
async fn concurrent_guesses_cannot_slip_past_the_lock() {
    let app = TestApp::start_with_config(|c| c.login_attempts_per_address_per_minute = 0).await;
    let email = email("burst");
    app.register(&email).await;
    let results = race(16, |_| {
        let mut client = app.auth();
        let email = email.clone();
        async move {
            client
                .login(keyward::grpc::pb::LoginRequest {
                    email,
                    password: "wrong guess 123".into(),
                })
                .await
                .unwrap_err()
        }
    })
    .await;
    let checked = results
        .iter()
        .filter(|e| reason(e) == "INVALID_CREDENTIALS")
        .count();
    let locked = results
        .iter()
        .filter(|e| reason(e) == "ACCOUNT_LOCKED")
        .count();
    assert_eq!(checked + locked, 16);
    assert!(
        checked <= 5,
        "{checked} passwords were checked in one burst; the threshold is 5"
    );
    assert_eq!(
        reason(&app.login(&email, PASSWORD).await.unwrap_err()),
        "ACCOUNT_LOCKED"
    );
}

#[tokio::test]
async fn registrations_are_throttled_per_address() {
    let app = TestApp::start_with_config(|c| c.registrations_per_address_per_hour = 2).await;
    app.register(&email("first")).await;
    app.register(&email("second")).await;
    let err = app.try_register(&email("third")).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::ResourceExhausted, "RATE_LIMITED")
    );
    assert!(err.get_details_retry_info().is_some());
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_address_is_the_hop_it_appended() {
    let app = TestApp::start_with_config(|c| {
        c.trusted_proxy_hops = 1;
        c.login_attempts_per_address_per_minute = 2;
    })
    .await;
    let mut reasons = Vec::new();
    for forged in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        // The client forges the left part; the proxy appends the address it saw.
        let mut req = tonic::Request::new(keyward::grpc::pb::LoginRequest {
            email: email("proxied"),
            password: "wrong guess 123".into(),
        });
        req.metadata_mut().insert(
            "x-forwarded-for",
            format!("{forged}, 203.0.113.7").parse().unwrap(),
        );
        reasons.push(reason(&app.auth().login(req).await.unwrap_err()));
    }
    assert_eq!(
        reasons,
        ["INVALID_CREDENTIALS", "INVALID_CREDENTIALS", "RATE_LIMITED"]
    );
}

/// `message` as sent through the trusted sidecar by a client at `address`.
fn from<T>(address: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", address.parse().unwrap());
    request
}

/// A password login for `email` from a client at `address`.
async fn password_login_from(
    app: &TestApp,
    address: &str,
    email: &str,
    password: &str,
) -> Result<keyward::grpc::pb::TokenPair, tonic::Status> {
    let request = keyward::grpc::pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    };
    app.auth()
        .login(from(address, request))
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

/// A LOGIN code request for `email` from a client at `address`: Ok, or the refusal's reason.
async fn send_login_code_from(app: &TestApp, address: &str, email: &str) -> Result<(), String> {
    let request = keyward::grpc::pb::SendCodeRequest {
        email: email.into(),
        purpose: keyward::grpc::pb::CodePurpose::Login as i32,
    };
    OtpServiceClient::new(app.channel())
        .send_code(from(address, request))
        .await
        .map(|_| ())
        .map_err(|s| reason(&s))
}

/// `LoginWithCode` for `email` from a client at `address`.
async fn code_login_from(
    app: &TestApp,
    address: &str,
    email: &str,
    code: String,
) -> Result<keyward::grpc::pb::TokenPair, tonic::Status> {
    let request = keyward::grpc::pb::LoginWithCodeRequest {
        email: email.into(),
        code,
    };
    OtpServiceClient::new(app.channel())
        .login_with_code(from(address, request))
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

/// Verifies `email` with the code of its registration mail (message 1).
async fn verify_with_first_code(app: &TestApp, email: &str) {
    let code = shared_sink().code(email, 1).await;
    OtpServiceClient::new(app.channel())
        .verify_email(keyward::grpc::pb::VerifyEmailRequest {
            email: email.into(),
            code,
        })
        .await
        .expect("verified");
}

#[tokio::test]
async fn a_targeted_owner_still_signs_in_by_a_fresh_code_while_strangers_keep_guessing() {
    const OWNER: &str = "192.0.2.10";
    const STRANGERS: [&str; 3] = ["198.51.100.66", "198.51.100.67", "2001:db8:66::1"];
    let app = TestApp::start_with_config(|c| {
        c.trusted_proxy_hops = 1;
        c.code_send_cooldown = Duration::from_millis(200);
        c.login_attempts_per_address_per_minute = 0;
        c.code_requests_per_address_per_minute = 0;
    })
    .await;
    let victim = email("targeted");
    app.register(&victim).await;
    verify_with_first_code(&app, &victim).await;
    let (app, victim) = (&app, victim.as_str());
    let password_login = |address: &'static str, password: &'static str| {
        password_login_from(app, address, victim, password)
    };
    // The owner has signed in from their usual address before.
    password_login(OWNER, PASSWORD)
        .await
        .expect("owner signs in");
    let send = |address: &'static str| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        send_login_code_from(app, address, victim).await
    };
    let code_login =
        |address: &'static str, code: String| code_login_from(app, address, victim, code);

    // Strangers lock password login...
    for _ in 0..5 {
        let _ = password_login(STRANGERS[0], "a wrong guess 123").await;
    }
    let status = password_login(OWNER, PASSWORD).await.unwrap_err();
    assert_eq!(reason(&status), "ACCOUNT_LOCKED");
    // ...and ask for codes from several addresses: each has its own cap of 5.
    let mut sends = Vec::new();
    for _ in 0..6 {
        sends.push(send(STRANGERS[0]).await);
    }
    assert_eq!(sends[..5], [Ok(()), Ok(()), Ok(()), Ok(()), Ok(())]);
    assert_eq!(sends[5], Err("RATE_LIMITED".to_string()));
    for _ in 0..4 {
        send(STRANGERS[1]).await.unwrap();
    }
    // The owner, from a client the account knows, still gets a code of their own...
    shared_sink()
        .wait_for(victim, 10, Duration::from_secs(30))
        .await;
    send(OWNER).await.expect("the owner's own code request");
    let code = shared_sink().code(victim, 11).await;
    // ...which a stranger's next request does not replace (the answer is the same, no mail),
    // and after which the strangers' shared hourly cap (2 x 5) is spent.
    send(STRANGERS[1]).await.expect("answered as usual");
    assert_eq!(send(STRANGERS[2]).await, Err("RATE_LIMITED".to_string()));

    // Strangers guess at the owner's code until their shared attempts (3) run out.
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    for stranger in STRANGERS {
        let status = code_login(stranger, wrong.clone()).await.unwrap_err();
        assert_eq!(reason(&status), "CODE_INVALID");
    }
    assert_eq!(
        reason(&code_login(STRANGERS[0], code.clone()).await.unwrap_err()),
        "CODE_INVALID",
        "the strangers' budget is spent, even for the right code"
    );
    code_login(OWNER, code)
        .await
        .expect("the owner signs in with the code sent to them");
    // Signing in by code proved the mailbox: the password lockout is lifted.
    password_login(OWNER, PASSWORD)
        .await
        .expect("password login works again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        shared_sink().to(victim).len(),
        11,
        "the stranger's request after the owner's mailed nothing"
    );
}

#[tokio::test]
async fn strangers_get_ten_guesses_an_hour_however_many_codes_they_ask_for() {
    const OWNER: &str = "192.0.2.20";
    const STRANGER: &str = "198.51.100.77";
    let app = TestApp::start_with_config(|c| {
        c.trusted_proxy_hops = 1;
        c.code_send_cooldown = Duration::ZERO;
        c.login_attempts_per_address_per_minute = 0;
        c.code_requests_per_address_per_minute = 0;
    })
    .await;
    let victim = email("guessed");
    app.register(&victim).await;
    // A sign-in to an account whose mailbox was never proven makes nobody its owner: verified
    // first, then signed in from the owner's address.
    verify_with_first_code(&app, &victim).await;
    password_login_from(&app, OWNER, &victim, PASSWORD)
        .await
        .expect("the owner signed in from their address before");
    let (app, victim) = (&app, victim.as_str());
    let send = |address: &'static str| async move {
        send_login_code_from(app, address, victim)
            .await
            .expect("code sent")
    };
    let code_login =
        |address: &'static str, code: String| code_login_from(app, address, victim, code);
    // Two codes of the stranger's own, five wrong guesses at each: ten in all.
    for n in 0..2 {
        send(STRANGER).await;
        let code = shared_sink().code(victim, 2 + n).await;
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        for _ in 0..5 {
            let status = code_login(STRANGER, wrong.clone()).await.unwrap_err();
            assert_eq!(reason(&status), "CODE_INVALID");
        }
    }
    // A third code buys no new guess: even its right digits fail.
    send(STRANGER).await;
    let code = shared_sink().code(victim, 4).await;
    let status = code_login(STRANGER, code).await.unwrap_err();
    assert_eq!(reason(&status), "CODE_INVALID");
    // The owner, on the client the account knows, is not held back.
    send(OWNER).await;
    let code = shared_sink().code(victim, 5).await;
    code_login(OWNER, code).await.expect("the owner signs in");
}

#[tokio::test]
async fn a_planted_sign_in_does_not_make_its_client_the_owners() {
    const PLANTER: &str = "198.51.100.88";
    // Without verification required, whoever registered someone else's address can sign in.
    let app = TestApp::start_with_config(|c| {
        c.trusted_proxy_hops = 1;
        c.code_send_cooldown = Duration::ZERO;
        c.login_attempts_per_address_per_minute = 0;
        c.code_requests_per_address_per_minute = 0;
    })
    .await;
    let victim = email("planted");
    app.register(&victim).await; // mail 1
    password_login_from(&app, PLANTER, &victim, PASSWORD)
        .await
        .expect("the planter signs in to the unverified account");
    // So the planter is a stranger like any other: ten wrong guesses an hour, then nothing.
    for n in 0..3 {
        send_login_code_from(&app, PLANTER, &victim)
            .await
            .expect("code sent");
        let code = shared_sink().code(&victim, 2 + n).await;
        let guesses = if n < 2 {
            vec![format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000); 5]
        } else {
            vec![code]
        };
        for guess in guesses {
            let status = code_login_from(&app, PLANTER, &victim, guess)
                .await
                .unwrap_err();
            assert_eq!(reason(&status), "CODE_INVALID");
        }
    }
}
