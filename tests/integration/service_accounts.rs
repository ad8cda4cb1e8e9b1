//! Service accounts and their API keys (ServiceAccountService), seen from outside: a key is a
//! principal for Authenticate, Authorize, BatchAuthorize and ext_authz, never for the RPCs meant
//! for people; its secret is shown once and kept nowhere; revocation, expiry, disabling and
//! deletion count at once; nobody makes an account stronger than themself or reaches another
//! organization's.

use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use keyward::grpc::pb::service_account_service_client::ServiceAccountServiceClient;
use keyward::grpc::pb::*;
use mongodb::bson::{doc, Document};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::ext_authz::{check, http_request};
use crate::harness::*;
use crate::users::with_role;

fn accounts(app: &TestApp) -> ServiceAccountServiceClient<Channel> {
    ServiceAccountServiceClient::new(app.channel())
}

/// The field names of an INVALID_ARGUMENT answer.
#[track_caller]
fn invalid_fields<T: std::fmt::Debug>(result: Result<T, Status>) -> Vec<String> {
    let status = result.expect_err("must be refused as invalid");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = violations(&status).into_iter().map(|(f, _)| f).collect();
    assert!(!fields.is_empty(), "no field violations: {status:?}");
    fields
}

fn platform(name: &str, role: Role) -> CreateServiceAccountRequest {
    CreateServiceAccountRequest {
        name: name.into(),
        description: "built by the tests".into(),
        role: role as i32,
        ..Default::default()
    }
}

pub(crate) fn in_org(name: &str, org_id: &str, org_role: OrgRole) -> CreateServiceAccountRequest {
    CreateServiceAccountRequest {
        name: name.into(),
        org_id: org_id.into(),
        org_role: org_role as i32,
        ..Default::default()
    }
}

/// A new key of `account_id`: (its id, its secret).
pub(crate) async fn create_key(app: &TestApp, token: &str, account_id: &str) -> (String, String) {
    let r = app
        .as_token(token)
        .service_accounts()
        .create_api_key(CreateApiKeyRequest {
            service_account_id: account_id.to_string(),
            description: "ci".into(),
            expires_at: None,
        })
        .await
        .expect("create api key")
        .into_inner();
    (r.api_key.unwrap().id, r.secret)
}

/// Authenticate with `key` as the access token.
async fn principal(app: &TestApp, key: &str) -> Result<Principal, Status> {
    app.auth()
        .authenticate(AuthenticateRequest {
            access_token: key.into(),
        })
        .await
        .map(|r| r.into_inner().principal.unwrap())
}

/// Asserts that Authenticate refuses `key` as UNAUTHENTICATED/TOKEN_INVALID.
#[track_caller]
fn assert_key_refused(result: Result<Principal, Status>, why: &str) {
    let status = result.expect_err(why);
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "TOKEN_INVALID"),
        "{why}: {status:?}"
    );
}

/// Authorize `key` for `permission` (in `org_id`, empty for the platform): (allowed, reason).
async fn decide(app: &TestApp, key: &str, permission: &str, org_id: &str) -> (bool, String) {
    let r = app
        .auth()
        .authorize(AuthorizeRequest {
            access_token: key.into(),
            permission: permission.into(),
            org_id: org_id.into(),
        })
        .await
        .expect("authorize answers")
        .into_inner();
    assert_eq!(r.principal.unwrap().kind, "service_account");
    (r.allowed, r.reason)
}

/// A signed-in platform admin: (user id, access token).
async fn admin(app: &TestApp) -> (String, String) {
    let (id, pair) = with_role(app, &email("sa-admin"), "admin").await;
    (id, pair.access_token)
}

/// An organization created by a new signed-in user: (owner's access token, org id).
async fn org_with_owner(app: &TestApp, name: &str) -> (String, String) {
    let owner = app.signed_in(&email("sa-owner")).await.access_token;
    let org = app
        .as_token(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: name.into(),
            slug: String::new(),
            website: String::new(),
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    (owner, org.id)
}

/// A new account made a member of `org_id` with `role` by `owner`, signed in.
async fn member(app: &TestApp, owner: &str, org_id: &str, role: OrgRole) -> String {
    let email = email("sa-member");
    app.as_token(owner)
        .orgs()
        .create_member(CreateMemberRequest {
            org_id: org_id.into(),
            email: email.clone(),
            display_name: "Member".into(),
            password: PASSWORD.into(),
            role: role as i32,
            department: String::new(),
        })
        .await
        .expect("create member");
    app.login(&email, PASSWORD)
        .await
        .expect("member login")
        .access_token
}

async fn collection(app: &TestApp, name: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    app.db()
        .await
        .collection::<Document>(name)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// Sleeps until `at` (at once if it has passed).
async fn sleep_until(at: SystemTime) {
    if let Ok(left) = at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

// --- ext_authz ---

/// The headers an allowed Check sets for the upstream.
fn allowed_headers(r: &CheckResponse) -> Vec<(String, String)> {
    assert_eq!(r.status.as_ref().unwrap().code, 0, "not allowed: {r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not allowed: {r:?}")
    };
    ok.headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// (http status, body) of a denied Check.
fn denied(r: &CheckResponse) -> (i32, String) {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}")
    };
    (d.status.as_ref().unwrap().code, d.body.clone())
}

// --- tests ---

#[tokio::test]
async fn a_platform_key_signs_in_as_its_account_and_holds_exactly_its_role() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("nightly-export", Role::Moderator))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(account.role, Role::Moderator as i32);
    assert!(account.org_id.is_empty() && !account.disabled);

    let created = app
        .as_token(&admin)
        .service_accounts()
        .create_api_key(CreateApiKeyRequest {
            service_account_id: account.id.clone(),
            description: "ci".into(),
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner();
    let key = created.secret.clone();
    assert!(key.starts_with("kwk_"), "{key}");
    let listed = created.api_key.unwrap();
    assert_eq!(
        listed.prefix,
        key[..12],
        "the prefix is the secret's first 12 chars"
    );
    assert_eq!(listed.service_account_id, account.id);

    let p = principal(&app, &key).await.expect("the key authenticates");
    assert_eq!(p.kind, "service_account");
    assert_eq!(p.user_id, account.id);
    // Never the account's name: a name chosen to look like someone's address is no email.
    assert_eq!(p.email, "", "{p:?}");
    assert_eq!(
        p.session_id, listed.id,
        "the principal's session is the key"
    );
    assert_eq!(p.role, Role::Moderator as i32);

    assert_eq!(
        decide(&app, &key, "users.read", "").await,
        (true, "GRANTED_BY_ROLE".into())
    );
    assert_eq!(
        decide(&app, &key, "users.write", "").await,
        (false, "ROLE_TOO_LOW".into())
    );
    let batch = app
        .auth()
        .batch_authorize(BatchAuthorizeRequest {
            access_token: key.clone(),
            checks: [
                "users.read",
                "audit.read",
                "users.write",
                "users.roles.write",
            ]
            .into_iter()
            .map(|p| PermissionCheck {
                permission: p.into(),
                org_id: String::new(),
            })
            .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let verdicts: Vec<(bool, &str)> = batch
        .decisions
        .iter()
        .map(|d| (d.allowed, d.reason.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [
            (true, "GRANTED_BY_ROLE"),
            (true, "GRANTED_BY_ROLE"),
            (false, "ROLE_TOO_LOW"),
            (false, "ROLE_TOO_LOW"),
        ]
    );
    assert_eq!(batch.principal.unwrap().kind, "service_account");

    // A person's token still says it is a person.
    let person = app.signed_in(&email("person")).await;
    let me = principal(&app, &person.access_token).await.unwrap();
    assert_eq!(me.kind, "user");

    // The platform list (for users.read holders) shows the account.
    let (_, moderator) = with_role(&app, &email("sa-mod"), "moderator").await;
    let listed = app
        .as_user(&moderator)
        .service_accounts()
        .list_service_accounts(ListServiceAccountsRequest { org_id: "".into() })
        .await
        .unwrap()
        .into_inner()
        .service_accounts;
    assert_eq!(
        listed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        [account.id.as_str()]
    );
}

#[tokio::test]
async fn a_key_secret_is_shown_once_and_kept_nowhere_not_even_in_the_audit_trail() {
    let app = TestApp::start().await;
    let (admin_id, admin) = admin(&app).await;
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("billing-sync", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (key_id, key) = create_key(&app, &admin, &account.id).await;
    let (old_id, old_key) = create_key(&app, &admin, &account.id).await;

    let before = app
        .as_token(&admin)
        .service_accounts()
        .list_api_keys(ListApiKeysRequest {
            service_account_id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|k| k.last_used_at.is_none()));

    principal(&app, &key).await.expect("the key works");
    let after = app
        .as_token(&admin)
        .service_accounts()
        .list_api_keys(ListApiKeysRequest {
            service_account_id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    let used = after.iter().find(|k| k.id == key_id).unwrap();
    assert!(used.last_used_at.is_some(), "{used:?}");
    assert!(used.prefix.starts_with("kwk_") && used.prefix.len() == 12);
    let unused = after.iter().find(|k| k.id == old_id).unwrap();
    assert!(unused.last_used_at.is_none(), "{unused:?}");
    app.as_token(&admin)
        .service_accounts()
        .revoke_api_key(RevokeApiKeyRequest {
            service_account_id: account.id.clone(),
            api_key_id: old_id.clone(),
        })
        .await
        .unwrap();
    let revoked = app
        .as_token(&admin)
        .service_accounts()
        .list_api_keys(ListApiKeysRequest {
            service_account_id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(revoked
        .iter()
        .find(|k| k.id == old_id)
        .unwrap()
        .revoked_at
        .is_some());

    // Neither the answers nor the database hold a secret; the key table holds its SHA-256.
    for secret in [&key, &old_key] {
        let body = &secret[4..];
        let text = format!("{after:?}{revoked:?}");
        assert!(!text.contains(body), "a listing shows a secret");
        for name in ["api_keys", "service_accounts", "audit_events"] {
            let stored = format!("{:?}", collection(&app, name).await);
            assert!(!stored.contains(body), "{name} holds a secret: {stored}");
        }
    }
    let stored_keys = collection(&app, "api_keys").await;
    let hashes: Vec<&str> = stored_keys
        .iter()
        .map(|d| d.get_str("secret_hash").unwrap())
        .collect();
    assert!(
        hashes.contains(&sha256_hex(&key).as_str()),
        "{stored_keys:?}"
    );
    assert!(hashes.contains(&sha256_hex(&old_key).as_str()));

    let audit = collection(&app, "audit_events").await;
    for action in ["service_account_create", "api_key_create", "api_key_revoke"] {
        let event = audit
            .iter()
            .find(|e| e.get_str("action").ok() == Some(action))
            .unwrap_or_else(|| panic!("no {action} event in {audit:?}"));
        assert_eq!(
            event.get_str("actor_id").ok(),
            Some(admin_id.as_str()),
            "{event:?}"
        );
        assert_eq!(
            event.get_str("user_id").ok(),
            Some(account.id.as_str()),
            "{event:?}"
        );
    }
}

#[tokio::test]
async fn a_revoked_key_stops_at_once_while_the_rotated_one_works_and_live_keys_are_capped() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("deployer", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (old_id, old) = create_key(&app, &admin, &account.id).await;
    // Used (and so cached) before the rotation.
    principal(&app, &old).await.expect("the old key works");
    let (new_id, new) = create_key(&app, &admin, &account.id).await;
    principal(&app, &new).await.expect("the new key works");

    app.as_token(&admin)
        .service_accounts()
        .revoke_api_key(RevokeApiKeyRequest {
            service_account_id: account.id.clone(),
            api_key_id: old_id.clone(),
        })
        .await
        .unwrap();
    assert_key_refused(principal(&app, &old).await, "revoked key, right after");
    let status = app
        .auth()
        .authorize(AuthorizeRequest {
            access_token: old.clone(),
            permission: "orgs.create".into(),
            org_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        principal(&app, &new).await.unwrap().session_id,
        new_id,
        "the other key of the account keeps working"
    );
    refused(
        app.as_token(&admin)
            .service_accounts()
            .revoke_api_key(RevokeApiKeyRequest {
                service_account_id: account.id.clone(),
                api_key_id: old_id.clone(),
            })
            .await,
        Code::NotFound,
        "API_KEY_NOT_FOUND",
    );
    // Still refused after the cache would have expired.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_key_refused(principal(&app, &old).await, "revoked key, later");

    // 1 live key now: four more, then the sixth live one is refused.
    for _ in 0..4 {
        create_key(&app, &admin, &account.id).await;
    }
    refused(
        app.as_token(&admin)
            .service_accounts()
            .create_api_key(CreateApiKeyRequest {
                service_account_id: account.id.clone(),
                description: "ci".into(),
                expires_at: None,
            })
            .await,
        Code::FailedPrecondition,
        "TOO_MANY_API_KEYS",
    );
    // Revoking one makes room again (rotation).
    app.as_token(&admin)
        .service_accounts()
        .revoke_api_key(RevokeApiKeyRequest {
            service_account_id: account.id.clone(),
            api_key_id: new_id.clone(),
        })
        .await
        .unwrap();
    create_key(&app, &admin, &account.id).await;
    refused(
        app.as_token(&admin)
            .service_accounts()
            .create_api_key(CreateApiKeyRequest {
                service_account_id: account.id.clone(),
                description: "ci".into(),
                expires_at: None,
            })
            .await,
        Code::FailedPrecondition,
        "TOO_MANY_API_KEYS",
    );
}

#[tokio::test]
async fn a_key_stops_working_when_it_expires_and_cannot_be_made_already_expired() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("short-lived", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();

    let past = SystemTime::now() - Duration::from_secs(60);
    let fields = invalid_fields(
        app.as_token(&admin)
            .service_accounts()
            .create_api_key(CreateApiKeyRequest {
                service_account_id: account.id.clone(),
                description: "ci".into(),
                expires_at: Some(prost_types::Timestamp::from(past)),
            })
            .await
            .map(Response::into_inner),
    );
    assert_eq!(fields, ["expires_at"]);

    let expires = SystemTime::now() + Duration::from_secs(2);
    let created = app
        .as_token(&admin)
        .service_accounts()
        .create_api_key(CreateApiKeyRequest {
            service_account_id: account.id.clone(),
            description: "ci".into(),
            expires_at: Some(prost_types::Timestamp::from(expires)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(created.api_key.unwrap().expires_at.is_some());
    let key = created.secret;
    // Used once shortly before it expires: a fresh check, which this replica may then cache...
    sleep_until(expires - Duration::from_millis(300)).await;
    principal(&app, &key)
        .await
        .expect("works before it expires");
    // ...but a cached check must not outlive the key (a person's token is not accepted past
    // its expiry either): 150 ms after it, the key is refused.
    sleep_until(expires + Duration::from_millis(150)).await;
    let just_after = principal(&app, &key).await;

    // At the latest, it is refused within 5 s.
    let deadline = expires + Duration::from_secs(5);
    loop {
        match principal(&app, &key).await {
            Err(status) => {
                assert_key_refused(Err(status), "expired key");
                break;
            }
            Ok(_) => assert!(
                SystemTime::now() < deadline,
                "the key still works 5 s after it expired"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And stays refused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_key_refused(principal(&app, &key).await, "expired key, later");
    assert_key_refused(just_after, "the key 150 ms after its expires_at");
}

#[tokio::test]
async fn disabling_or_deleting_an_account_stops_its_keys_at_once() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let disabled = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("to-disable", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let deleted = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("to-delete", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let bystander = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("bystander", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (_, k1) = create_key(&app, &admin, &disabled.id).await;
    let (_, k2) = create_key(&app, &admin, &disabled.id).await;
    let (_, k3) = create_key(&app, &admin, &deleted.id).await;
    let (_, k4) = create_key(&app, &admin, &bystander.id).await;
    for k in [&k1, &k2, &k3, &k4] {
        principal(&app, k).await.expect("works at first");
    }

    app.as_token(&admin)
        .service_accounts()
        .disable_service_account(DisableServiceAccountRequest {
            service_account_id: disabled.id.clone(),
        })
        .await
        .unwrap();
    assert_key_refused(principal(&app, &k1).await, "key of a disabled account");
    assert_key_refused(principal(&app, &k2).await, "key of a disabled account");
    let listed = app
        .as_token(&admin)
        .service_accounts()
        .list_service_accounts(ListServiceAccountsRequest { org_id: "".into() })
        .await
        .unwrap()
        .into_inner()
        .service_accounts;
    assert!(
        listed
            .iter()
            .find(|a| a.id == disabled.id)
            .unwrap()
            .disabled
    );

    app.as_token(&admin)
        .service_accounts()
        .delete_service_account(DeleteServiceAccountRequest {
            service_account_id: deleted.id.clone(),
        })
        .await
        .unwrap();
    assert_key_refused(principal(&app, &k3).await, "key of a deleted account");
    refused(
        app.as_token(&admin)
            .service_accounts()
            .list_api_keys(ListApiKeysRequest {
                service_account_id: deleted.id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    refused(
        app.as_token(&admin)
            .service_accounts()
            .create_api_key(CreateApiKeyRequest {
                service_account_id: deleted.id.clone(),
                description: "ci".into(),
                expires_at: None,
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    refused(
        app.as_token(&admin)
            .service_accounts()
            .delete_service_account(DeleteServiceAccountRequest {
                service_account_id: deleted.id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    assert!(collection(&app, "api_keys")
        .await
        .iter()
        .all(|k| k.get_str("service_account_id").ok() != Some(deleted.id.as_str())));

    principal(&app, &k4)
        .await
        .expect("another account's key is untouched");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (k, why) in [(&k1, "disabled"), (&k3, "deleted")] {
        assert_key_refused(principal(&app, k).await, why);
    }
}

#[tokio::test]
async fn a_key_is_refused_by_every_rpc_meant_for_people() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    // Even an admin-role account's key gets nothing from the people's RPCs.
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("robot", Role::Admin))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (_, key) = create_key(&app, &admin, &account.id).await;
    principal(&app, &key).await.expect("the key is valid");

    refused(
        app.as_token(&key)
            .auth()
            .get_me(GetMeRequest::default())
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .auth()
            .change_password(ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "another correct horse battery".into(),
                keep_other_sessions: false,
            })
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .auth()
            .list_sessions(ListSessionsRequest::default())
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .mfa()
            .start_totp_enrollment(StartTotpEnrollmentRequest::default())
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .users()
            .list_users(ListUsersRequest::default())
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .orgs()
            .create_org(CreateOrgRequest {
                name: "Robot Org".into(),
                slug: String::new(),
                website: String::new(),
            })
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    // Nor can a key mint keys or accounts for itself.
    refused(
        app.as_token(&key)
            .service_accounts()
            .create_api_key(CreateApiKeyRequest {
                service_account_id: account.id.clone(),
                description: "ci".into(),
                expires_at: None,
            })
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .service_accounts()
            .create_service_account(platform("child", Role::User))
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    // Nothing was made on the key's behalf.
    assert_eq!(
        app.as_token(&admin)
            .service_accounts()
            .list_api_keys(ListApiKeysRequest {
                service_account_id: account.id.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .api_keys
            .len(),
        1
    );
    assert!(collection(&app, "orgs").await.is_empty());
}

#[tokio::test]
async fn an_organizations_account_holds_its_role_there_and_nothing_in_another_organization() {
    let app = TestApp::start().await;
    let (owner_a, org_a) = org_with_owner(&app, "Clinic A").await;
    let (owner_b, org_b) = org_with_owner(&app, "Clinic B").await;
    let admin_a = member(&app, &owner_a, &org_a, OrgRole::Admin).await;

    let account = app
        .as_token(&admin_a)
        .service_accounts()
        .create_service_account(in_org("lab-import", &org_a, OrgRole::Member))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(account.org_id, org_a);
    assert_eq!(account.org_role, OrgRole::Member as i32);
    assert_eq!(account.role, Role::Unspecified as i32);
    let (_, key) = create_key(&app, &admin_a, &account.id).await;

    assert_eq!(
        decide(&app, &key, "org.read", &org_a).await,
        (true, "GRANTED_BY_ORG_ROLE".into())
    );
    assert_eq!(
        decide(&app, &key, "org.write", &org_a).await,
        (false, "ORG_ROLE_TOO_LOW".into())
    );
    assert_eq!(
        decide(&app, &key, "org.read", &org_b).await,
        (false, "NOT_A_MEMBER".into()),
        "cross-tenant"
    );
    // An organization's account has no platform role worth anything.
    assert!(!decide(&app, &key, "users.read", "").await.0);
    assert!(!decide(&app, &key, "orgs.create", "").await.0);

    // Listing: org A's members see it, org B and the platform list do not.
    let listed = app
        .as_token(&owner_a)
        .service_accounts()
        .list_service_accounts(ListServiceAccountsRequest {
            org_id: org_a.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .service_accounts;
    assert_eq!(listed.len(), 1);
    assert!(app
        .as_token(&owner_b)
        .service_accounts()
        .list_service_accounts(ListServiceAccountsRequest {
            org_id: org_b.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .service_accounts
        .is_empty());
    let (_, platform_admin) = admin(&app).await;
    assert!(app
        .as_token(&platform_admin)
        .service_accounts()
        .list_service_accounts(ListServiceAccountsRequest { org_id: "".into() })
        .await
        .unwrap()
        .into_inner()
        .service_accounts
        .is_empty());

    // ext_authz agrees: allowed in A, forbidden in B.
    let auth = format!("Bearer {key}");
    let route = [("permission", "org.read"), ("org_id_header", "x-org-id")];
    let ok = check(
        &app,
        http_request(&[("authorization", &auth), ("x-org-id", &org_a)], &route),
    )
    .await;
    let headers = allowed_headers(&ok);
    assert_eq!(
        header(&headers, "x-keyward-user-id"),
        Some(account.id.as_str())
    );
    let (http, body) = denied(
        &check(
            &app,
            http_request(&[("authorization", &auth), ("x-org-id", &org_b)], &route),
        )
        .await,
    );
    assert_eq!(http, 403);
    assert!(body.contains("NOT_A_MEMBER"), "{body}");
    // A spoofed org header is dropped; and, as for a person who belongs to it, the upstream is
    // told which organization the allowed request is in.
    let ok = check(
        &app,
        http_request(
            &[
                ("authorization", &auth),
                ("x-org-id", &org_a),
                ("x-keyward-org-id", &org_b),
            ],
            &route,
        ),
    )
    .await;
    let headers = allowed_headers(&ok);
    assert_ne!(header(&headers, "x-keyward-org-id"), Some(org_b.as_str()));
    assert_eq!(
        (
            header(&headers, "x-keyward-org-id"),
            header(&headers, "x-keyward-org-role")
        ),
        (Some(org_a.as_str()), Some("member")),
        "ext_authz allowed the organization's account in its organization without saying so: {headers:?}"
    );
}

#[tokio::test]
async fn organization_admins_cannot_escalate_and_other_tenants_cannot_see_or_touch_an_account() {
    let app = TestApp::start().await;
    let (owner_a, org_a) = org_with_owner(&app, "Tenant A").await;
    let (owner_b, org_b) = org_with_owner(&app, "Tenant B").await;
    let admin_a = member(&app, &owner_a, &org_a, OrgRole::Admin).await;
    let member_a = member(&app, &owner_a, &org_a, OrgRole::Member).await;
    let admin_b = member(&app, &owner_b, &org_b, OrgRole::Admin).await;

    refused(
        app.as_token(&admin_a)
            .service_accounts()
            .create_service_account(in_org("boss", &org_a, OrgRole::Owner))
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    refused(
        app.as_token(&member_a)
            .service_accounts()
            .create_service_account(in_org("sneaky", &org_a, OrgRole::Member))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // A person of another organization, even its owner, cannot make one in A.
    refused(
        app.as_token(&owner_b)
            .service_accounts()
            .create_service_account(in_org("implant", &org_a, OrgRole::Member))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // An owner may make an owner-level account, an admin one of its own level.
    app.as_token(&owner_a)
        .service_accounts()
        .create_service_account(in_org("owner-made", &org_a, OrgRole::Owner))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let account = app
        .as_token(&admin_a)
        .service_accounts()
        .create_service_account(in_org("a-admin", &org_a, OrgRole::Admin))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (key_id, key) = create_key(&app, &admin_a, &account.id).await;

    // Org B's admin: A's account is simply not there; A's list is refused.
    refused(
        app.as_token(&admin_b)
            .service_accounts()
            .list_service_accounts(ListServiceAccountsRequest {
                org_id: org_a.clone(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(&admin_b)
            .service_accounts()
            .list_api_keys(ListApiKeysRequest {
                service_account_id: account.id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    refused(
        app.as_token(&admin_b)
            .service_accounts()
            .create_api_key(CreateApiKeyRequest {
                service_account_id: account.id.clone(),
                description: "ci".into(),
                expires_at: None,
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    refused(
        app.as_token(&admin_b)
            .service_accounts()
            .revoke_api_key(RevokeApiKeyRequest {
                service_account_id: account.id.clone(),
                api_key_id: key_id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    refused(
        app.as_token(&admin_b)
            .service_accounts()
            .disable_service_account(DisableServiceAccountRequest {
                service_account_id: account.id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    refused(
        app.as_token(&admin_b)
            .service_accounts()
            .delete_service_account(DeleteServiceAccountRequest {
                service_account_id: account.id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    // Nor through an account of B's own: the key id belongs to A's account.
    let b_account = app
        .as_token(&admin_b)
        .service_accounts()
        .create_service_account(in_org("b-bot", &org_b, OrgRole::Member))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    refused(
        app.as_token(&admin_b)
            .service_accounts()
            .revoke_api_key(RevokeApiKeyRequest {
                service_account_id: b_account.id.clone(),
                api_key_id: key_id.clone(),
            })
            .await,
        Code::NotFound,
        "API_KEY_NOT_FOUND",
    );
    // A's plain member cannot manage it either, and a platform admin is not org A's admin.
    refused(
        app.as_token(&member_a)
            .service_accounts()
            .disable_service_account(DisableServiceAccountRequest {
                service_account_id: account.id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );
    let (_, platform_admin) = admin(&app).await;
    refused(
        app.as_token(&platform_admin)
            .service_accounts()
            .revoke_api_key(RevokeApiKeyRequest {
                service_account_id: account.id.clone(),
                api_key_id: key_id.clone(),
            })
            .await,
        Code::NotFound,
        "SERVICE_ACCOUNT_NOT_FOUND",
    );

    // After all that the key still works and still has one key listed.
    assert_eq!(
        decide(&app, &key, "org.members.write", &org_a).await,
        (true, "GRANTED_BY_ORG_ROLE".into())
    );
    let keys = app
        .as_token(&admin_a)
        .service_accounts()
        .list_api_keys(ListApiKeysRequest {
            service_account_id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].revoked_at.is_none());
    let listed = app
        .as_token(&owner_a)
        .service_accounts()
        .list_service_accounts(ListServiceAccountsRequest {
            org_id: org_a.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .service_accounts;
    assert_eq!(listed.len(), 2);
    assert!(!listed.iter().find(|a| a.id == account.id).unwrap().disabled);
}

#[tokio::test]
async fn platform_accounts_never_exceed_their_creator_and_only_admins_create_them() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let (_, super_admin) = with_role(&app, &email("sa-super"), "super_admin").await;
    let super_admin = super_admin.access_token;

    refused(
        app.as_token(&admin)
            .service_accounts()
            .create_service_account(platform("root-bot", Role::SuperAdmin))
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    for role in ["user", "moderator"] {
        let (_, pair) = with_role(&app, &email(role), role).await;
        refused(
            app.as_user(&pair)
                .service_accounts()
                .create_service_account(platform("mine", Role::Guest))
                .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    // An admin may make an account of its own level; a super_admin one of theirs, which an
    // admin then cannot touch.
    let peer = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("peer-bot", Role::Admin))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let root = app
        .as_token(&super_admin)
        .service_accounts()
        .create_service_account(platform("root-bot", Role::SuperAdmin))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (root_key_id, root_key) = create_key(&app, &super_admin, &root.id).await;
    refused(
        app.as_token(&admin)
            .service_accounts()
            .create_api_key(CreateApiKeyRequest {
                service_account_id: root.id.clone(),
                description: "ci".into(),
                expires_at: None,
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    refused(
        app.as_token(&admin)
            .service_accounts()
            .revoke_api_key(RevokeApiKeyRequest {
                service_account_id: root.id.clone(),
                api_key_id: root_key_id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    refused(
        app.as_token(&admin)
            .service_accounts()
            .disable_service_account(DisableServiceAccountRequest {
                service_account_id: root.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    principal(&app, &root_key).await.expect("still works");

    // allowed_permissions: unknown names are named; a permission the creator lacks is refused.
    let mut request = platform("typo", Role::User);
    request.allowed_permissions = vec!["users.read".into(), "users.raed".into()];
    let fields = invalid_fields(
        app.as_token(&admin)
            .service_accounts()
            .create_service_account(request)
            .await
            .map(|r| r.into_inner().service_account.unwrap()),
    );
    assert_eq!(fields, ["allowed_permissions[1]"]);
    let mut request = platform("org-perm", Role::Admin);
    request.allowed_permissions = vec!["org.read".into()];
    invalid_fields(
        app.as_token(&admin)
            .service_accounts()
            .create_service_account(request)
            .await
            .map(|r| r.into_inner().service_account.unwrap()),
    );
    // An org admin (global role user) cannot hand out a platform permission or an owner's.
    let (owner, org) = org_with_owner(&app, "Perm Org").await;
    let org_admin = member(&app, &owner, &org, OrgRole::Admin).await;
    for p in ["users.read", "org.delete"] {
        let mut request = in_org("greedy", &org, OrgRole::Admin);
        request.allowed_permissions = vec!["org.read".into(), p.into()];
        refused(
            app.as_token(&org_admin)
                .service_accounts()
                .create_service_account(request)
                .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }

    // An admin account limited to users.read holds only that.
    let mut request = platform("reader", Role::Admin);
    request.allowed_permissions = vec!["users.read".into()];
    let reader = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(request)
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    assert_eq!(reader.allowed_permissions, ["users.read"]);
    let (_, key) = create_key(&app, &admin, &reader.id).await;
    assert_eq!(
        decide(&app, &key, "users.read", "").await,
        (true, "GRANTED_BY_ROLE".into())
    );
    assert_eq!(
        decide(&app, &key, "users.write", "").await,
        (false, "NOT_GRANTED_TO_SERVICE_ACCOUNT".into())
    );
    assert_eq!(
        decide(&app, &key, "audit.read", "").await,
        (false, "NOT_GRANTED_TO_SERVICE_ACCOUNT".into())
    );
    let (http, body) = denied(
        &check(
            &app,
            http_request(
                &[("authorization", &format!("Bearer {key}"))],
                &[("permission", "users.write")],
            ),
        )
        .await,
    );
    assert_eq!(http, 403);
    assert!(body.contains("NOT_GRANTED_TO_SERVICE_ACCOUNT"), "{body}");
    // Nor may it slip through a route that names no permission on its admin role alone.
    let (http, body) = denied(
        &check(
            &app,
            http_request(&[("authorization", &format!("Bearer {key}"))], &[]),
        )
        .await,
    );
    assert_eq!(http, 403);
    assert!(body.contains("NOT_GRANTED_TO_SERVICE_ACCOUNT"), "{body}");
    // An unlimited account's key passes such a route.
    let (_, unlimited) = create_key(&app, &admin, &peer.id).await;
    allowed_headers(
        &check(
            &app,
            http_request(&[("authorization", &format!("Bearer {unlimited}"))], &[]),
        )
        .await,
    );
}

#[tokio::test]
async fn envoy_lets_a_key_through_as_its_account_until_the_key_is_revoked() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("gateway-bot", Role::Moderator))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (key_id, key) = create_key(&app, &admin, &account.id).await;
    let auth = format!("Bearer {key}");
    let route = [("permission", "users.read")];

    let r = check(
        &app,
        http_request(
            &[
                ("authorization", &auth),
                ("x-keyward-user-id", "someone-else"),
                ("x-keyward-principal-kind", "user"),
                ("x-keyward-email", "ceo@example.com"),
            ],
            &route,
        ),
    )
    .await;
    let headers = allowed_headers(&r);
    assert_eq!(
        header(&headers, "x-keyward-principal-kind"),
        Some("service_account")
    );
    assert_eq!(
        header(&headers, "x-keyward-user-id"),
        Some(account.id.as_str())
    );
    assert_eq!(
        header(&headers, "x-keyward-session-id"),
        Some(key_id.as_str())
    );
    assert_eq!(header(&headers, "x-keyward-role"), Some("moderator"));
    assert_eq!(header(&headers, "x-keyward-email"), Some(""));
    // A person still passes as a person.
    let person = app.signed_in(&email("envoy-person")).await;
    let person_auth = format!("Bearer {}", person.access_token);
    let headers = allowed_headers(
        &check(
            &app,
            http_request(
                &[
                    ("authorization", &person_auth),
                    ("x-keyward-principal-kind", "service_account"),
                ],
                &[],
            ),
        )
        .await,
    );
    assert_eq!(header(&headers, "x-keyward-principal-kind"), Some("user"));

    let (http, body) = denied(
        &check(
            &app,
            http_request(
                &[("authorization", &auth)],
                &[("permission", "users.write")],
            ),
        )
        .await,
    );
    assert_eq!((http, body.contains("ROLE_TOO_LOW")), (403, true), "{body}");

    // The envoy use is the key's last use.
    let keys = app
        .as_token(&admin)
        .service_accounts()
        .list_api_keys(ListApiKeysRequest {
            service_account_id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(keys[0].last_used_at.is_some());

    app.as_token(&admin)
        .service_accounts()
        .revoke_api_key(RevokeApiKeyRequest {
            service_account_id: account.id.clone(),
            api_key_id: key_id.clone(),
        })
        .await
        .unwrap();
    let r = check(&app, http_request(&[("authorization", &auth)], &route)).await;
    let (http, body) = denied(&r);
    assert_eq!(http, 401, "{body}");
    assert_eq!(r.status.unwrap().code, Code::Unauthenticated as i32);
    assert!(body.contains("TOKEN_INVALID"), "{body}");
}

#[tokio::test]
async fn malformed_and_forged_keys_are_unauthenticated_never_an_internal_error() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("real", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (_, key) = create_key(&app, &admin, &account.id).await;

    // One character changed, still well formed.
    let mut flipped = key.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let upper = format!("KWK_{}", &key[4..]);
    let garbage = [
        "kwk_".to_string(),
        "kwk_short".to_string(),
        format!("{key}A"),
        key[..key.len() - 1].to_string(),
        format!("kwk_{}", "!".repeat(43)),
        format!("kwk_{}", "é".repeat(21)) + "a",
        format!("kwk_{}+/", &key[4..45]),
        format!("kwk_{}", "a".repeat(43)),
        format!("kwk_{}", "A".repeat(10 * 1024)),
        format!("{key}\u{0}"),
        key[..12].to_string(),
        flipped,
        upper,
    ];
    for bad in &garbage {
        let shown: String = bad.chars().take(60).collect();
        assert_key_refused(principal(&app, bad).await, &shown);
        assert_key_refused(principal(&app, bad).await, &shown); // cached answer, same verdict
        let r = check(
            &app,
            http_request(
                &[("authorization", &format!("Bearer {bad}"))],
                &[("permission", "orgs.create")],
            ),
        )
        .await;
        let (http, _) = denied(&r);
        assert_eq!(http, 401, "{shown}: {r:?}");
    }
    // None of that hurt the real key.
    principal(&app, &key).await.expect("the real key works");
}

#[tokio::test]
async fn malformed_account_requests_name_each_offending_field() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let (owner, org) = org_with_owner(&app, "Validation Org").await;

    let cases: Vec<(CreateServiceAccountRequest, &str)> = vec![
        (platform("", Role::User), "name"),
        (platform("   ", Role::User), "name"),
        (platform(&"n".repeat(1000), Role::User), "name"),
        (platform("line\nbreak", Role::User), "name"),
        (
            CreateServiceAccountRequest {
                name: "both".into(),
                role: Role::User as i32,
                org_role: OrgRole::Member as i32,
                ..Default::default()
            },
            "role",
        ),
        (
            CreateServiceAccountRequest {
                name: "neither".into(),
                ..Default::default()
            },
            "role",
        ),
        (
            CreateServiceAccountRequest {
                name: "org-both".into(),
                org_id: org.clone(),
                role: Role::User as i32,
                org_role: OrgRole::Member as i32,
                ..Default::default()
            },
            "org_role",
        ),
        (
            CreateServiceAccountRequest {
                name: "org-neither".into(),
                org_id: org.clone(),
                ..Default::default()
            },
            "org_role",
        ),
        (in_org("bad-org", "not-an-id", OrgRole::Member), "org_id"),
        (
            in_org("bad-org", &"a".repeat(5000), OrgRole::Member),
            "org_id",
        ),
        (
            CreateServiceAccountRequest {
                name: "bad-role".into(),
                role: 42,
                ..Default::default()
            },
            "role",
        ),
    ];
    for (request, field) in cases {
        let shown = format!("{request:?}").chars().take(200).collect::<String>();
        for token in [&admin, &owner] {
            let fields = invalid_fields(
                app.as_token(token)
                    .service_accounts()
                    .create_service_account(request.clone())
                    .await
                    .map(|r| r.into_inner().service_account.unwrap()),
            );
            assert!(fields.iter().any(|f| f == field), "{shown}: {fields:?}");
        }
    }
    // A well-formed id of no organization is NOT_FOUND, and nothing was created.
    refused(
        app.as_token(&owner)
            .service_accounts()
            .create_service_account(in_org("ghost", &"0".repeat(32), OrgRole::Member))
            .await,
        Code::NotFound,
        "ORG_NOT_FOUND",
    );
    assert!(collection(&app, "service_accounts").await.is_empty());
    // Unauthenticated callers get nothing.
    refused(
        accounts(&app)
            .create_service_account(platform("anon", Role::User))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

#[tokio::test]
async fn deleting_an_organization_ends_its_service_accounts_access_there_at_once() {
    let app = TestApp::start().await;
    let (owner, org) = org_with_owner(&app, "Closing Down").await;
    let member = member(&app, &owner, &org, OrgRole::Member).await;
    let account = app
        .as_token(&owner)
        .service_accounts()
        .create_service_account(in_org("archiver", &org, OrgRole::Admin))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (_, key) = create_key(&app, &owner, &account.id).await;
    assert!(decide(&app, &key, "org.read", &org).await.0);
    let auth = format!("Bearer {key}");
    let route = [("permission", "org.read"), ("org_id_header", "x-org-id")];
    allowed_headers(
        &check(
            &app,
            http_request(&[("authorization", &auth), ("x-org-id", &org)], &route),
        )
        .await,
    );

    app.as_token(&owner)
        .orgs()
        .delete_org(DeleteOrgRequest {
            org_id: org.clone(),
        })
        .await
        .expect("delete org");
    // Like its people, its account holds nothing there any more.
    let person = app
        .auth()
        .authorize(AuthorizeRequest {
            access_token: member.clone(),
            permission: "org.read".into(),
            org_id: org.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (person.allowed, person.reason.as_str()),
        (false, "NOT_A_MEMBER")
    );
    // The account and its keys went with the organization.
    assert_key_refused(
        principal(&app, &key).await,
        "key of a deleted organization's account",
    );
    let status = app
        .auth()
        .authorize(AuthorizeRequest {
            access_token: key.clone(),
            permission: "org.read".into(),
            org_id: org.clone(),
        })
        .await
        .expect_err("the key is granted nothing in the deleted organization");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (http, _) = denied(
        &check(
            &app,
            http_request(&[("authorization", &auth), ("x-org-id", &org)], &route),
        )
        .await,
    );
    assert_eq!(http, 401);
    assert!(collection(&app, "service_accounts").await.is_empty());
    assert!(collection(&app, "api_keys").await.is_empty());
}

#[tokio::test]
async fn live_keys_stay_capped_at_five_when_created_all_at_once() {
    let app = TestApp::start().await;
    let (_, admin) = admin(&app).await;
    let account = app
        .as_token(&admin)
        .service_accounts()
        .create_service_account(platform("racy", Role::User))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let as_admin = app.as_token(&admin);
    let results = race(12, |_| {
        let (mut keys, id) = (as_admin.service_accounts(), account.id.clone());
        async move {
            keys.create_api_key(CreateApiKeyRequest {
                service_account_id: id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().secret)
        }
    })
    .await;
    let mut made = Vec::new();
    for result in results {
        match result {
            Ok(secret) => made.push(secret),
            Err(status) => assert_eq!(
                (status.code(), reason(&status).as_str()),
                (Code::FailedPrecondition, "TOO_MANY_API_KEYS"),
                "{status:?}"
            ),
        }
    }
    let live = app
        .as_token(&admin)
        .service_accounts()
        .list_api_keys(ListApiKeysRequest {
            service_account_id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .api_keys
        .into_iter()
        .filter(|k| k.revoked_at.is_none())
        .count();
    assert_eq!(
        (made.len(), live),
        (5, 5),
        "12 concurrent CreateApiKey: (answered with a key, live keys listed)"
    );
}
