//! Logout, logout-all, session listing and revocation, and the published keys.

use keyward::grpc::pb::{
    GetPublicKeysRequest, ListSessionsRequest, RefreshRequest, RevokeSessionRequest,
};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn logout_ends_this_session_at_once_and_only_this_one() {
    let app = TestApp::start().await;
    let email = email("logout");
    let one = app.signed_in(&email).await;
    let two = app.login(&email, PASSWORD).await.unwrap();
    app.authenticate(&one.access_token).await.unwrap(); // now cached as active

    assert_eq!(app.logout(&one.access_token, false).await, 1);
    let err = app.authenticate(&one.access_token).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "SESSION_REVOKED")
    );
    let err = app
        .auth()
        .refresh(RefreshRequest {
            refresh_token: one.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "REFRESH_TOKEN_INVALID");
    app.authenticate(&two.access_token)
        .await
        .expect("the other session lives on");
}

#[tokio::test]
async fn logout_all_ends_every_session_at_once() {
    let app = TestApp::start().await;
    let email = email("logout-all");
    let sessions = [
        app.signed_in(&email).await,
        app.login(&email, PASSWORD).await.unwrap(),
        app.login(&email, PASSWORD).await.unwrap(),
    ];
    for s in &sessions {
        app.authenticate(&s.access_token).await.unwrap();
    }
    let other_user = app.signed_in(&crate::harness::email("bystander")).await;
    assert_eq!(app.logout(&sessions[1].access_token, true).await, 3);
    for s in &sessions {
        assert_eq!(
            reason(&app.authenticate(&s.access_token).await.unwrap_err()),
            "SESSION_REVOKED"
        );
    }
    app.authenticate(&other_user.access_token)
        .await
        .expect("other users are untouched");
}

#[tokio::test]
async fn sessions_list_devices_and_can_be_revoked_by_their_owner_only() {
    let app = TestApp::start().await;
    let email = email("devices");
    app.register(&email).await;
    let mut login = tonic::Request::new(keyward::grpc::pb::LoginRequest {
        email: email.clone(),
        password: PASSWORD.into(),
    });
    login
        .metadata_mut()
        .insert("user-agent", "Phone/1.0".parse().unwrap());
    let phone = app
        .auth()
        .login(login)
        .await
        .unwrap()
        .into_inner()
        .tokens
        .expect("tokens");
    let laptop = app.login(&email, PASSWORD).await.unwrap();

    let list = app
        .auth()
        .list_sessions(bearer(ListSessionsRequest {}, &laptop.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions.len(), 2);
    let p = list
        .sessions
        .iter()
        .find(|s| s.id == phone.session_id)
        .unwrap();
    assert!(p.user_agent.contains("Phone/1.0"), "{}", p.user_agent);
    assert_eq!(p.client_address, "127.0.0.1");
    assert!(p.created_at.is_some() && p.last_used_at.is_some() && !p.current);
    assert!(list
        .sessions
        .iter()
        .any(|s| s.id == laptop.session_id && s.current));

    // Another user cannot revoke (or even confirm) this session.
    let mallory = app.signed_in(&crate::harness::email("mallory")).await;
    let err = app
        .auth()
        .revoke_session(bearer(
            RevokeSessionRequest {
                session_id: phone.session_id.clone(),
            },
            &mallory.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "SESSION_NOT_FOUND")
    );
    app.authenticate(&phone.access_token).await.unwrap();

    app.auth()
        .revoke_session(bearer(
            RevokeSessionRequest {
                session_id: phone.session_id.clone(),
            },
            &laptop.access_token,
        ))
        .await
        .unwrap();
    assert_eq!(
        reason(&app.authenticate(&phone.access_token).await.unwrap_err()),
        "SESSION_REVOKED"
    );
    let list = app
        .auth()
        .list_sessions(bearer(ListSessionsRequest {}, &laptop.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.sessions.len(), 1);
}

#[tokio::test]
async fn published_keys_verify_access_tokens_locally() {
    use pasetors::claims::ClaimsValidationRules;
    use pasetors::keys::AsymmetricPublicKey;
    use pasetors::token::UntrustedToken;
    use pasetors::version4::V4;
    use pasetors::{public, Public};

    let (_, old_public, old_id) = keyward::domain::tokens::generate_key();
    let app = TestApp::start_with_config(|c| c.verification_keys = vec![old_public]).await;
    let keys = app
        .auth()
        .get_public_keys(GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        keys.keys.len(),
        2,
        "signing key and the key being rotated out"
    );
    assert!(keys.keys.iter().any(|k| k.key_id == old_id && !k.signing));
    let signing = keys.keys.iter().find(|k| k.signing).unwrap();
    assert!(signing.public_key.starts_with("k4.public.") && signing.key_id.starts_with("k4.pid."));

    let pair = app.signed_in(&email("local")).await;
    let key = AsymmetricPublicKey::<V4>::try_from(signing.public_key.as_str()).unwrap();
    let token = UntrustedToken::<Public, V4>::try_from(pair.access_token.as_str()).unwrap();
    let mut rules = ClaimsValidationRules::new();
    rules.validate_issuer_with(&keys.issuer);
    rules.validate_audience_with(&keys.audience);
    let trusted =
        public::verify(&key, &token, &rules, None, None).expect("verifies with the published key");
    let claims = trusted.payload_claims().unwrap();
    assert_eq!(
        claims.get_claim("sid").unwrap().as_str().unwrap(),
        pair.session_id
    );
    assert!(String::from_utf8_lossy(token.untrusted_footer()).contains(&signing.key_id));
}
