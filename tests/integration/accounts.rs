//! Registration, password login, GetMe, ChangePassword and the audit trail.

use std::time::{Duration, Instant};

use keyward::grpc::pb::{
    AuthenticateRequest, ChangePasswordRequest, GetMeRequest, LoginRequest, RegisterRequest, Role,
};
use mongodb::bson::{doc, Document};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn register_login_authenticate_and_get_me() {
    let app = TestApp::start().await;
    let email = email("alice");
    let r = app
        .auth()
        .register(RegisterRequest {
            email: format!("  {}  ", email.to_uppercase()),
            password: PASSWORD.into(),
            display_name: "Alice".into(),
            organization: None,
        })
        .await
        .unwrap()
        .into_inner();
    let user = r.user.unwrap();
    assert_eq!(user.email, email, "email is normalised");
    assert!(r.pending_verification && !user.email_verified);
    assert_eq!(user.role, Role::User as i32);

    let pair = app.login(&email.to_uppercase(), PASSWORD).await.unwrap();
    assert_eq!(pair.token_type, "Bearer");
    assert!(pair.access_token.starts_with("v4.public."));
    assert!(pair.refresh_token.starts_with("kwr_"));
    assert!(
        (800..=900).contains(&pair.expires_in),
        "about 15 minutes: {}",
        pair.expires_in
    );
    assert_eq!(pair.user.as_ref().unwrap().id, user.id);

    let p = app
        .auth()
        .authenticate(AuthenticateRequest {
            access_token: pair.access_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap();
    assert_eq!(
        (p.user_id.as_str(), p.session_id.as_str(), p.email.as_str()),
        (user.id.as_str(), pair.session_id.as_str(), email.as_str())
    );
    assert_eq!(p.role, Role::User as i32);

    let me = app
        .auth()
        .get_me(bearer(GetMeRequest {}, &pair.access_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.display_name, "Alice");
    assert!(me.last_login_at.is_some());
    let err = app.auth().get_me(GetMeRequest {}).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "TOKEN_INVALID")
    );
}

#[tokio::test]
async fn duplicate_email_is_already_exists_whatever_its_case() {
    let app = TestApp::start().await;
    let email = email("dup");
    app.register(&email).await;
    let err = app.try_register(&email.to_uppercase()).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::AlreadyExists, "EMAIL_TAKEN")
    );
}

#[tokio::test]
async fn sixteen_concurrent_registrations_of_one_email_create_one_account() {
    let app = TestApp::start().await;
    let email = email("race");
    let results = race(16, |_| {
        let mut client = app.auth();
        let email = email.clone();
        async move {
            client
                .register(RegisterRequest {
                    email,
                    password: PASSWORD.into(),
                    ..Default::default()
                })
                .await
        }
    })
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let taken = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| reason(e) == "EMAIL_TAKEN"))
        .count();
    assert_eq!((ok, taken), (1, 15));
    let n = app
        .db()
        .await
        .collection::<Document>("users")
        .count_documents(doc! { "email": &email })
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn weak_passwords_are_refused_with_field_violations() {
    let app = TestApp::start().await;
    for (password, expected) in [
        ("short", "must be at least 8 characters long"),
        (
            "password123",
            "is too common or too easy to guess; try a longer passphrase",
        ),
    ] {
        let err = app
            .auth()
            .register(RegisterRequest {
                email: email("weak"),
                password: password.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            violations(&err).contains(&("password".into(), expected.into())),
            "{:?}",
            violations(&err)
        );
    }
    // Composition rules are off by default and on when configured (the seeds' policy).
    let strict = TestApp::start_with_config(|c| {
        c.password_require_uppercase = true;
        c.password_require_digit = true;
    })
    .await;
    let err = strict.try_register(&email("strict")).await.unwrap_err();
    let v = violations(&err);
    assert!(v.contains(&("password".into(), "must contain an uppercase letter".into())));
    assert!(v.contains(&("password".into(), "must contain a digit".into())));
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer_in_the_same_time() {
    let app = TestApp::start_with_config(|c| {
        c.lockout_threshold = 0;
        c.login_attempts_per_address_per_minute = 0;
    })
    .await;
    let known = email("known");
    app.register(&known).await;
    let unknown = email("nobody");
    let (mut wrong_times, mut unknown_times) = (Vec::new(), Vec::new());
    let (mut wrong_err, mut unknown_err) = (None, None);
    for _ in 0..7 {
        let t = Instant::now();
        wrong_err = Some(
            app.login(&known, "not the password at all")
                .await
                .unwrap_err(),
        );
        wrong_times.push(t.elapsed());
        let t = Instant::now();
        unknown_err = Some(
            app.login(&unknown, "not the password at all")
                .await
                .unwrap_err(),
        );
        unknown_times.push(t.elapsed());
    }
    let (a, b) = (wrong_err.unwrap(), unknown_err.unwrap());
    assert_eq!(a.code(), Code::Unauthenticated);
    assert_eq!(reason(&a), "INVALID_CREDENTIALS");
    assert_eq!(
        (a.code(), a.message(), a.details()),
        (b.code(), b.message(), b.details())
    );
    // Both run a real argon2id verify; a missing dummy hash would make unknown emails answer in
    // a fraction of the time. Medians, with a wide margin for a busy machine.
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (w, u) = (median(wrong_times), median(unknown_times));
    let ratio = u.as_secs_f64() / w.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "wrong password {w:?} vs unknown email {u:?}"
    );
}

#[tokio::test]
async fn change_password_ends_other_sessions_and_replaces_the_password() {
    let app = TestApp::start().await;
    let email = email("changer");
    let here = app.signed_in(&email).await;
    let elsewhere = app.login(&email, PASSWORD).await.unwrap();
    let new_password = "an entirely new passphrase 42";

    let err = app
        .auth()
        .change_password(bearer(
            ChangePasswordRequest {
                current_password: "wrong wrong".into(),
                new_password: new_password.into(),
                keep_other_sessions: false,
            },
            &here.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "INVALID_CREDENTIALS");

    let r = app
        .auth()
        .change_password(bearer(
            ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: new_password.into(),
                keep_other_sessions: false,
            },
            &here.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.sessions_ended, 1);
    let gone = app
        .auth()
        .authenticate(AuthenticateRequest {
            access_token: elsewhere.access_token,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&gone), "SESSION_REVOKED");
    app.auth()
        .authenticate(AuthenticateRequest {
            access_token: here.access_token,
        })
        .await
        .expect("this session lives on");
    assert_eq!(
        reason(&app.login(&email, PASSWORD).await.unwrap_err()),
        "INVALID_CREDENTIALS"
    );
    app.login(&email, new_password)
        .await
        .expect("new password works");
}

#[tokio::test]
async fn audit_trail_records_who_what_where_and_never_secrets() {
    let app = TestApp::start().await;
    let email = email("audited");
    let pair = app.signed_in(&email).await;
    let _ = app.login(&email, "wrong password here").await;
    let mut req = bearer(
        ChangePasswordRequest {
            current_password: PASSWORD.into(),
            new_password: "another fine passphrase".into(),
            keep_other_sessions: true,
        },
        &pair.access_token,
    );
    req.metadata_mut()
        .insert("user-agent", "audit-test/1.0".parse().unwrap());
    app.auth().change_password(req).await.unwrap();
    app.logout(&pair.access_token, false).await;

    let events: Vec<Document> = {
        use futures::TryStreamExt;
        app.db()
            .await
            .collection::<Document>("audit_events")
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    let actions: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e.get_str("action").unwrap().to_string(),
                e.get_str("outcome").unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("register", "success"),
        ("login", "success"),
        ("login", "failure"),
        ("password_change", "success"),
        ("logout", "success"),
    ] {
        assert!(
            actions.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} missing from {actions:?}"
        );
    }
    let change = events
        .iter()
        .find(|e| e.get_str("action") == Ok("password_change"))
        .unwrap();
    assert_eq!(change.get_str("client_address").unwrap(), "127.0.0.1");
    assert!(change
        .get_str("user_agent")
        .unwrap()
        .contains("audit-test/1.0"));
    let all = format!("{events:?}");
    for secret in [
        PASSWORD,
        "wrong password here",
        "another fine passphrase",
        &pair.access_token,
        &pair.refresh_token,
    ] {
        assert!(!all.contains(secret), "audit trail holds a secret");
    }
}

#[tokio::test]
async fn login_returns_a_token_for_the_right_account_only() {
    let app = TestApp::start().await;
    let (a, b) = (email("a"), email("b"));
    app.register(&a).await;
    app.register(&b).await;
    let pair = app
        .auth()
        .login(LoginRequest {
            email: b.clone(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .expect("tokens");
    assert_eq!(pair.user.unwrap().email, b);
}
