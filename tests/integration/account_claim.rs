//! Pre-account takeover: someone registers (or, as an organization admin, creates) an account for
//! an address that is not theirs, with a password they know. Whatever they set up before the
//! mailbox was proven must not survive its owner proving it with a code.

use std::time::Duration;

use keyward::grpc::pb::org_service_client::OrgServiceClient;
use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::*;
use mongodb::bson::{doc, Document};
use tonic::Code;

use crate::harness::*;

const OWNER_PASSWORD: &str = "the real owner's own passphrase";

/// Sends a code for `purpose` to `email` and returns it, read from the mail that arrived (the
/// `nth` message to that address).
async fn code_by_mail(app: &TestApp, email: &str, purpose: CodePurpose, nth: usize) -> String {
    OtpServiceClient::new(app.channel())
        .send_code(SendCodeRequest {
            email: email.into(),
            purpose: purpose as i32,
        })
        .await
        .expect("send code");
    shared_sink().code(email, nth).await
}

async fn login_with_code(
    app: &TestApp,
    email: &str,
    code: &str,
) -> Result<TokenPair, tonic::Status> {
    OtpServiceClient::new(app.channel())
        .login_with_code(LoginWithCodeRequest {
            email: email.into(),
            code: code.into(),
        })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Result<TokenPair, tonic::Status> {
    app.auth()
        .refresh(RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

/// The attacker's tokens are dead and their password opens nothing.
async fn assert_attacker_locked_out(app: &TestApp, victim: &str, attacker: &TokenPair) {
    let status = app.login(victim, PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    let status = app.authenticate(&attacker.access_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "SESSION_REVOKED");
    let status = refresh(app, &attacker.refresh_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

async fn audit_actions(app: &TestApp, user_id: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    app.db()
        .await
        .collection::<Document>("audit_events")
        .find(doc! { "user_id": user_id, "action": "account_claim" })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_self_registration_by_someone_else_does_not_survive_the_owner_signing_in_by_code() {
    // The harness runs with require_verified_email = false: the attacker even signs in.
    let app = TestApp::start_with_config(|c| c.code_send_cooldown = Duration::ZERO).await;
    let victim = email("victim");
    let registered = app.try_register(&victim).await.unwrap();
    let victim_id = registered.user.unwrap().id;
    let attacker = app
        .login(&victim, PASSWORD)
        .await
        .expect("attacker signs in");

    // The owner finds the address taken and proves the mailbox with a sign-in code (message 1
    // is the verification mail the attacker's registration sent).
    let code = code_by_mail(&app, &victim, CodePurpose::Login, 2).await;
    let owner = login_with_code(&app, &victim, &code)
        .await
        .expect("owner signs in");
    assert!(owner.user.as_ref().unwrap().email_verified);
    assert_eq!(owner.user.unwrap().id, victim_id);

    assert_attacker_locked_out(&app, &victim, &attacker).await;
    app.authenticate(&owner.access_token)
        .await
        .expect("the owner's session works");
    let sessions = app
        .auth()
        .list_sessions(bearer(ListSessionsRequest::default(), &owner.access_token))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(
        sessions.len(),
        1,
        "only the owner's session is left: {sessions:?}"
    );

    let events = audit_actions(&app, &victim_id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let details = events[0].get_document("detail").unwrap();
    assert!(details.get_bool("password_cleared").unwrap(), "{events:?}");
    assert_eq!(details.get_i64("sessions_ended").unwrap(), 1, "{events:?}");

    // The owner sets a password of their own by a reset; it works, the attacker's does not.
    let code = code_by_mail(&app, &victim, CodePurpose::ResetPassword, 3).await;
    OtpServiceClient::new(app.channel())
        .reset_password(ResetPasswordRequest {
            email: victim.clone(),
            code,
            new_password: OWNER_PASSWORD.into(),
        })
        .await
        .expect("reset");
    app.login(&victim, OWNER_PASSWORD)
        .await
        .expect("owner's password");
    assert_eq!(
        reason(&app.login(&victim, PASSWORD).await.unwrap_err()),
        "INVALID_CREDENTIALS"
    );
    // A second code sign-in of the now verified account claims nothing again.
    let code = code_by_mail(&app, &victim, CodePurpose::Login, 5).await;
    login_with_code(&app, &victim, &code)
        .await
        .expect("second code sign-in");
    app.login(&victim, OWNER_PASSWORD)
        .await
        .expect("a verified account keeps its password");
    assert_eq!(audit_actions(&app, &victim_id).await.len(), 1);
}

#[tokio::test]
async fn an_account_created_by_an_org_admin_is_claimed_cleanly_by_the_mailbox_owner() {
    // With verification required, the planted password only becomes usable once verified: the
    // claim must not hand the creator a working password.
    let app = TestApp::start_with_config(|c| c.require_verified_email = true).await;
    let admin_email = email("org-admin");
    app.register(&admin_email).await;
    let code = shared_sink().code(&admin_email, 1).await;
    OtpServiceClient::new(app.channel())
        .verify_email(VerifyEmailRequest {
            email: admin_email.clone(),
            code,
        })
        .await
        .expect("admin verifies");
    let admin = app.login(&admin_email, PASSWORD).await.unwrap();
    let org = OrgServiceClient::new(app.channel())
        .create_org(bearer(
            CreateOrgRequest {
                name: "Planted Clinic".into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    let victim = email("assistant");
    OrgServiceClient::new(app.channel())
        .create_member(bearer(
            CreateMemberRequest {
                org_id: org.id.clone(),
                email: victim.clone(),
                password: PASSWORD.into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("create member");
    assert_eq!(
        reason(&app.login(&victim, PASSWORD).await.unwrap_err()),
        "EMAIL_NOT_VERIFIED"
    );

    let code = code_by_mail(&app, &victim, CodePurpose::Login, 2).await;
    let owner = login_with_code(&app, &victim, &code)
        .await
        .expect("owner signs in");
    assert_eq!(
        reason(&app.login(&victim, PASSWORD).await.unwrap_err()),
        "INVALID_CREDENTIALS",
        "the password the admin chose must not open the verified account"
    );
    app.authenticate(&owner.access_token).await.unwrap();
}

#[tokio::test]
async fn an_org_admins_sessions_as_a_created_member_end_when_the_owner_claims_it() {
    let app = TestApp::start().await;
    let admin = app.signed_in(&email("org-admin")).await;
    let org = OrgServiceClient::new(app.channel())
        .create_org(bearer(
            CreateOrgRequest {
                name: "Second Clinic".into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    let victim = email("assistant");
    OrgServiceClient::new(app.channel())
        .create_member(bearer(
            CreateMemberRequest {
                org_id: org.id,
                email: victim.clone(),
                password: PASSWORD.into(),
                ..Default::default()
            },
            &admin.access_token,
        ))
        .await
        .expect("create member");
    let planted = app
        .login(&victim, PASSWORD)
        .await
        .expect("admin signs in as the member");

    let code = code_by_mail(&app, &victim, CodePurpose::Login, 2).await;
    login_with_code(&app, &victim, &code)
        .await
        .expect("owner signs in");
    assert_attacker_locked_out(&app, &victim, &planted).await;
}

#[tokio::test]
async fn a_password_reset_by_the_owner_ends_everything_the_registrant_set_up() {
    let app = TestApp::start().await;
    let victim = email("victim");
    app.register(&victim).await;
    let attacker = app.login(&victim, PASSWORD).await.unwrap();

    let code = code_by_mail(&app, &victim, CodePurpose::ResetPassword, 2).await;
    let ended = OtpServiceClient::new(app.channel())
        .reset_password(ResetPasswordRequest {
            email: victim.clone(),
            code,
            new_password: OWNER_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions_ended;
    assert_eq!(ended, 1);
    assert_attacker_locked_out(&app, &victim, &attacker).await;
    app.login(&victim, OWNER_PASSWORD)
        .await
        .expect("owner's password");
}

#[tokio::test]
async fn the_verification_mail_tells_a_stranger_how_to_take_the_account_over() {
    let app = TestApp::start_with_config(|c| c.require_verified_email = true).await;
    let victim = email("stranger");
    app.register(&victim).await;
    let mail = shared_sink()
        .wait_for(&victim, 1, Duration::from_secs(30))
        .await;
    for body in [&mail[0].text, &mail[0].html] {
        let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("did not create"), "{flat}");
        assert!(flat.contains("do not enter this code"), "{flat}");
        assert!(flat.contains("reset"), "{flat}");
    }
    // The ordinary sign-up still works: the registrant verifies and keeps their password.
    let code = mail[0].code().unwrap();
    OtpServiceClient::new(app.channel())
        .verify_email(VerifyEmailRequest {
            email: victim.clone(),
            code,
        })
        .await
        .expect("verify");
    app.login(&victim, PASSWORD)
        .await
        .expect("password login after verification");
}

#[tokio::test]
async fn concurrent_code_sign_ins_racing_a_password_login_leave_no_planted_session() {
    // The attacker keeps logging in with the planted password while the owner claims the
    // account: whichever order the writes land in, no attacker session outlives the claim.
    let app = TestApp::start().await;
    let victim = email("race");
    app.register(&victim).await;
    let code = code_by_mail(&app, &victim, CodePurpose::Login, 2).await;
    let attempts: Vec<_> = (0..6)
        .map(|_| {
            let channel = app.channel();
            let victim = victim.clone();
            tokio::spawn(async move {
                keyward::grpc::pb::auth_service_client::AuthServiceClient::new(channel)
                    .login(LoginRequest {
                        email: victim,
                        password: PASSWORD.into(),
                    })
                    .await
                    .map(|r| r.into_inner().tokens.expect("tokens"))
            })
        })
        .collect();
    let owner = login_with_code(&app, &victim, &code).await.expect("owner");
    for attempt in attempts {
        if let Ok(pair) = attempt.await.unwrap() {
            let status = app.authenticate(&pair.access_token).await.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        }
    }
    app.authenticate(&owner.access_token).await.unwrap();
}
