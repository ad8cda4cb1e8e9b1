//! Access tokens that must not pass Authenticate.

use std::time::Duration;

use chrono::Utc;
use keyward::domain::roles::Role;
use keyward::domain::tokens::{generate_key, AccessClaims, KeyRing};
use keyward::grpc::pb::AuthenticateRequest;
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn tampered_expired_wrong_key_wrong_audience_and_local_tokens_are_rejected() {
    let app = TestApp::start().await;
    let pair = app.signed_in(&email("tokens")).await;
    let principal = AccessClaims {
        user_id: pair.user.as_ref().unwrap().id.clone(),
        session_id: pair.session_id.clone(),
        email: pair.user.as_ref().unwrap().email.clone(),
        role: Role::SuperAdmin,
        expires_at: Utc::now(),
        amr: vec!["pwd".into()],
        auth_time: chrono::Utc::now(),
        service_account: None,
    };
    let secret = app.config.signing_key.clone().unwrap();
    let ours = |iss: &str, aud: &str| KeyRing::new(&secret, &[], iss, aud).unwrap();

    // Control: a token we sign ourselves for the live session passes.
    let (good, _) =
        ours("keyward", "keyward").issue(&principal, Utc::now(), Duration::from_secs(60));
    app.auth()
        .authenticate(AuthenticateRequest {
            access_token: good.clone(),
        })
        .await
        .expect("control token");

    let (expired, _) = ours("keyward", "keyward").issue(
        &principal,
        Utc::now() - chrono::Duration::minutes(20),
        Duration::from_secs(900),
    );
    let (wrong_audience, _) =
        ours("keyward", "billing-api").issue(&principal, Utc::now(), Duration::from_secs(60));
    let (wrong_issuer, _) =
        ours("someone-else", "keyward").issue(&principal, Utc::now(), Duration::from_secs(60));
    let (other_secret, _, _) = generate_key();
    let (wrong_key, _) = KeyRing::new(&other_secret, &[], "keyward", "keyward")
        .unwrap()
        .issue(&principal, Utc::now(), Duration::from_secs(60));
    // Same key id in the footer, different key: the signature must fail.
    let forged_kid = {
        let footer_start = good.rfind('.').unwrap();
        let body_start = wrong_key[..wrong_key.rfind('.').unwrap()].to_string();
        format!("{body_start}{}", &good[footer_start..])
    };
    let tampered = {
        let mut b = pair.access_token.clone().into_bytes();
        let i = "v4.public.".len() + 10;
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).unwrap()
    };
    let local = {
        use pasetors::claims::Claims;
        use pasetors::keys::{Generate, SymmetricKey};
        use pasetors::version4::V4;
        let mut c = Claims::new().unwrap();
        c.subject(&principal.user_id).unwrap();
        c.add_additional("sid", principal.session_id.as_str())
            .unwrap();
        pasetors::local::encrypt(&SymmetricKey::<V4>::generate().unwrap(), &c, None, None).unwrap()
    };

    for (name, token) in [
        ("expired", expired),
        ("wrong audience", wrong_audience),
        ("wrong issuer", wrong_issuer),
        ("wrong key", wrong_key),
        ("forged key id", forged_kid),
        ("tampered", tampered),
        ("v4.local", local),
        ("garbage", "not-a-token".to_string()),
    ] {
        let err = app
            .auth()
            .authenticate(AuthenticateRequest {
                access_token: token,
            })
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::Unauthenticated, "TOKEN_INVALID"),
            "{name}"
        );
    }
}
