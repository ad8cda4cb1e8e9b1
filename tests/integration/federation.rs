//! Federated sign-in (OpenID Connect) end to end, against real providers on loopback (see
//! `oidc_fixture.rs`): the certified `oidc-provider`, whose login and consent forms the tests
//! fill in over HTTP, and a hostile provider for what a certified one never sends.
//!
//! What a person notices: the first sign-in makes an account and the next ones find it; a
//! provider's word that an email is verified links to the account of that email, never
//! without it; states work once (one winner of 16 concurrent finishes); every forged or broken
//! ID token is refused and creates nothing; provider errors and outages come back as stable
//! reasons; and a signed-in person links, lists and unlinks identities, never the last way in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::config::OidcProvider;
use keyward::grpc::pb::federation_service_client::FederationServiceClient;
use keyward::grpc::pb::mfa_service_client::MfaServiceClient;
use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::*;
use mongodb::bson::{doc, Document};
use reqwest::Url;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::harness::*;
use crate::oidc_fixture::*;
use crate::users::{users, with_role};

// ---------------------------------------------------------------------------------------------
// Apps, clients and calls

/// The provider id the tests configure the certified provider as.
const REAL: &str = "certified";
/// The provider id the tests configure the hostile provider as.
const HOSTILE: &str = "hostile";

fn federation(app: &TestApp) -> FederationServiceClient<Channel> {
    FederationServiceClient::new(app.channel())
}

/// keyward with both test providers.
async fn app() -> TestApp {
    app_with(vec![real_provider(REAL), hostile_provider(HOSTILE)], |_| {}).await
}

async fn app_with(
    providers: Vec<OidcProvider>,
    change: impl FnOnce(&mut keyward::config::Config),
) -> TestApp {
    TestApp::start_with_config(|c| {
        c.oidc_providers = providers;
        change(c);
    })
    .await
}

/// Asserts a refusal with `code` and `why` (the ErrorInfo reason).
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, why: &str) -> Status {
    let status = result.expect_err(why);
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, why),
        "{status:?}"
    );
    status
}

#[track_caller]
fn state_invalid<T: std::fmt::Debug>(result: Result<T, Status>) {
    refused(result, Code::Unauthenticated, "FEDERATION_STATE_INVALID");
}

async fn start(app: &TestApp, provider: &str) -> Result<StartFederatedLoginResponse, Status> {
    start_at(app, provider, REDIRECT_URI).await
}

async fn start_at(
    app: &TestApp,
    provider: &str,
    redirect_uri: &str,
) -> Result<StartFederatedLoginResponse, Status> {
    federation(app)
        .start_federated_login(StartFederatedLoginRequest {
            provider: provider.into(),
            redirect_uri: redirect_uri.into(),
        })
        .await
        .map(|r| {
            let started = r.into_inner();
            remember_flow(&started.state, &started.flow_secret);
            started
        })
}

/// The authorization URL of a new sign-in at `provider`.
async fn authorization_url(app: &TestApp, provider: &str) -> String {
    start(app, provider)
        .await
        .expect("start a federated sign-in")
        .authorization_url
}

async fn finish(
    app: &TestApp,
    callback: &Callback,
) -> Result<FinishFederatedLoginResponse, Status> {
    federation(app)
        .finish_federated_login(callback.finish())
        .await
        .map(|r| r.into_inner())
}

/// FinishFederatedLogin with `flow_secret` instead of the one its state's start returned.
async fn finish_with_secret(
    app: &TestApp,
    callback: &Callback,
    flow_secret: &str,
) -> Result<FinishFederatedLoginResponse, Status> {
    let mut request = callback.finish();
    request.flow_secret = flow_secret.into();
    federation(app)
        .finish_federated_login(request)
        .await
        .map(|r| r.into_inner())
}

/// A whole sign-in at the certified provider as `login` (its sub and email).
async fn sign_in_real(app: &TestApp, login: &str) -> Result<FinishFederatedLoginResponse, Status> {
    let url = authorization_url(app, REAL).await;
    finish(app, &sign_in_at_real(&url, login).await).await
}

/// A whole sign-in at the hostile provider.
async fn sign_in_hostile(
    app: &TestApp,
    scenario: Scenario,
    sub: &str,
    email: &str,
    verified: bool,
) -> Result<FinishFederatedLoginResponse, Status> {
    let url = authorization_url(app, HOSTILE).await;
    finish(
        app,
        &callback_from_hostile(&url, scenario, sub, email, verified).await,
    )
    .await
}

/// A provider subject no other test uses.
fn subject(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// The tokens of a sign-in that must have given them.
#[track_caller]
fn tokens(answer: &FinishFederatedLoginResponse) -> &TokenPair {
    assert!(answer.mfa_challenge.is_none(), "{answer:?}");
    let pair = answer.tokens.as_ref().expect("a TokenPair");
    assert!(!pair.access_token.is_empty(), "{pair:?}");
    pair
}

#[track_caller]
fn user_id(answer: &FinishFederatedLoginResponse) -> String {
    tokens(answer).user.as_ref().expect("the user").id.clone()
}

async fn principal(app: &TestApp, token: &str) -> Principal {
    app.auth()
        .authenticate(AuthenticateRequest {
            access_token: token.into(),
        })
        .await
        .expect("the access token is accepted")
        .into_inner()
        .principal
        .unwrap()
}

async fn identities(app: &TestApp, token: &str) -> Vec<LinkedIdentity> {
    federation(app)
        .list_identities(bearer(ListIdentitiesRequest {}, token))
        .await
        .expect("list identities")
        .into_inner()
        .identities
}

async fn start_link(app: &TestApp, token: &str, provider: &str) -> StartLinkIdentityResponse {
    let request = StartLinkIdentityRequest {
        provider: provider.into(),
        redirect_uri: REDIRECT_URI.into(),
    };
    let started = federation(app)
        .start_link_identity(bearer(request, token))
        .await
        .expect("start linking")
        .into_inner();
    remember_flow(&started.state, &started.flow_secret);
    started
}

async fn finish_link(
    app: &TestApp,
    token: &str,
    callback: &Callback,
) -> Result<FinishLinkIdentityResponse, Status> {
    federation(app)
        .finish_link_identity(bearer(callback.finish_link(), token))
        .await
        .map(|r| r.into_inner())
}

/// Links the hostile provider's `sub` (with an unverified, unrelated email) to `token`'s account.
async fn link_hostile(
    app: &TestApp,
    token: &str,
    sub: &str,
) -> Result<FinishLinkIdentityResponse, Status> {
    let url = start_link(app, token, HOSTILE).await.authorization_url;
    let callback = callback_from_hostile(&url, Scenario::Good, sub, &email("other"), false).await;
    finish_link(app, token, &callback).await
}

async fn unlink(
    app: &TestApp,
    token: &str,
    provider: &str,
    subject: &str,
) -> Result<UnlinkIdentityResponse, Status> {
    let request = UnlinkIdentityRequest {
        provider: provider.into(),
        subject: subject.into(),
    };
    federation(app)
        .unlink_identity(bearer(request, token))
        .await
        .map(|r| r.into_inner())
}

/// How many accounts the test's database holds.
async fn account_count(app: &TestApp) -> u64 {
    app.db()
        .await
        .collection::<Document>("users")
        .count_documents(doc! {})
        .await
        .unwrap()
}

/// Every document in the test's database, as text, by collection.
async fn everything_stored(app: &TestApp) -> Vec<(String, String)> {
    use futures::TryStreamExt as _;
    let db = app.db().await;
    let mut out = Vec::new();
    for name in db.list_collection_names().await.unwrap() {
        let docs: Vec<Document> = db
            .collection::<Document>(&name)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        out.push((name, format!("{docs:?}")));
    }
    out
}

/// Registers `email` and proves the mailbox with the code keyward mailed.
async fn verified_account(app: &TestApp, email: &str) -> TokenPair {
    app.register(email).await;
    let code = shared_sink().code(email, 1).await;
    OtpServiceClient::new(app.channel())
        .verify_email(VerifyEmailRequest {
            email: email.into(),
            code,
        })
        .await
        .expect("verify email");
    let pair = app.login(email, PASSWORD).await.expect("login");
    assert!(pair.user.as_ref().unwrap().email_verified);
    pair
}

// ---------------------------------------------------------------------------------------------
// The fixture itself

/// The certified provider's flow driven from a hand-built authorization URL, without keyward:
/// the fixture's login, consent and decline work, and the ID token says what the tests expect.
#[tokio::test]
async fn fixture_the_certified_provider_signs_in_over_http() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let real = &issuers().real;
    let verifier = "a-pkce-verifier-of-at-least-forty-three-characters-0123";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut url = Url::parse(&format!("{real}/auth")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", "fixture-state")
        .append_pair("nonce", "fixture-nonce")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let login = email("fixture");
    let callback = sign_in_at_real(url.as_str(), &login).await;
    assert_eq!(callback.state, "fixture-state");
    assert_eq!(callback.iss, *real);
    assert!(
        !callback.code.is_empty() && callback.error.is_empty(),
        "{callback:?}"
    );

    let http = reqwest::Client::new();
    let exchange = |code: String, verifier: &'static str| {
        http.post(format!("{real}/token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=authorization_code&code={code}&code_verifier={verifier}&redirect_uri={}",
                "https%3A%2F%2Fapp.example.test%2Fcallback"
            ))
            .send()
    };
    // PKCE is required: a wrong verifier gets nothing (and uses the code up).
    let wrong = exchange(
        callback.code.clone(),
        "a-wrong-verifier-of-at-least-forty-three-characters-01",
    )
    .await
    .unwrap();
    assert_eq!(wrong.status(), 400);
    let callback = sign_in_at_real(url.as_str(), &login).await;
    let answer = exchange(callback.code.clone(), verifier).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    let id_token = body["id_token"].as_str().unwrap();
    let payload = id_token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], login.as_str());
    assert_eq!(claims["email"], login.as_str());
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["nonce"], "fixture-nonce");
    assert_eq!(claims["aud"], CLIENT_ID);

    let declined = decline_at_real(url.as_str(), &login).await;
    assert_eq!(declined.error, "access_denied", "{declined:?}");
    assert_eq!(declined.state, "fixture-state");
    assert!(declined.code.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Providers and the start

#[tokio::test]
async fn list_providers_names_the_configured_ones() {
    let app = app().await;
    let providers = federation(&app)
        .list_providers(ListProvidersRequest {})
        .await
        .expect("list providers")
        .into_inner()
        .providers;
    let mut ids: Vec<_> = providers.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, [REAL, HOSTILE]);
    assert!(
        providers.iter().all(|p| !p.display_name.is_empty()),
        "{providers:?}"
    );
}

#[tokio::test]
async fn the_authorization_url_asks_for_a_code_with_pkce_state_and_nonce() {
    let app = app().await;
    let started = start(&app, REAL).await.expect("start");
    let url = Url::parse(&started.authorization_url).unwrap();
    assert_eq!(
        format!("{}://{}{}", url.scheme(), url.authority(), url.path()),
        format!("{}/auth", issuers().real)
    );
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    assert_eq!(get("response_type"), "code");
    assert_eq!(get("client_id"), CLIENT_ID);
    assert_eq!(get("redirect_uri"), REDIRECT_URI);
    assert_eq!(get("code_challenge_method"), "S256");
    assert_eq!(
        get("code_challenge").len(),
        43,
        "a SHA-256 in base64url: {query:?}"
    );
    assert_eq!(get("state"), started.state);
    assert!(started.state.len() >= 22, "{}", started.state);
    assert!(!get("nonce").is_empty());
    assert!(get("scope").split(' ').any(|s| s == "openid"), "{query:?}");
    assert!(started.expires_at.is_some());

    // Every start is a new flow.
    let again = start(&app, REAL).await.unwrap();
    let again: std::collections::HashMap<String, String> = Url::parse(&again.authorization_url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    for k in ["state", "nonce", "code_challenge"] {
        assert_ne!(again[k], query[k], "{k} repeated");
    }
}

#[tokio::test]
async fn a_redirect_uri_must_be_one_of_the_allowed_exactly() {
    let app = app().await;
    for redirect_uri in [
        "https://evil.example.test/callback",
        "https://app.example.test/callback/",
        "https://app.example.test/callback/../evil",
        "https://app.example.test/callbackx",
        "https://app.example.test/call",
        "https://app.example.test/callback?next=https://evil.example.test",
        "https://APP.example.test/callback",
        "http://app.example.test/callback",
        "",
    ] {
        let status = refused(
            start_at(&app, REAL, redirect_uri).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert!(
            violations(&status).iter().any(|(f, _)| f == "redirect_uri"),
            "{redirect_uri:?}: {status:?}"
        );
    }
    // Linking checks it the same way.
    let pair = verified_account(&app, &email("fed-link-redirect")).await;
    let status = federation(&app)
        .start_link_identity(bearer(
            StartLinkIdentityRequest {
                provider: REAL.into(),
                redirect_uri: "https://app.example.test/callback/".into(),
            },
            &pair.access_token,
        ))
        .await;
    let status = refused(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(violations(&status).iter().any(|(f, _)| f == "redirect_uri"));
}

#[tokio::test]
async fn an_unknown_provider_is_not_found() {
    let app = app().await;
    refused(
        start(&app, "nosuchprovider").await,
        Code::NotFound,
        "PROVIDER_NOT_FOUND",
    );
}

#[tokio::test]
async fn a_provider_that_is_down_is_unavailable() {
    let app = app_with(vec![provider_at("down", &closed_issuer())], |_| {}).await;
    refused(
        start(&app, "down").await,
        Code::Unavailable,
        "PROVIDER_UNAVAILABLE",
    );
}

#[tokio::test]
async fn a_token_endpoint_slower_than_the_timeout_is_unavailable() {
    let app = app_with(vec![hostile_provider(HOSTILE)], |c| {
        c.oidc_http_timeout = Duration::from_secs(1)
    })
    .await;
    let url = authorization_url(&app, HOSTILE).await;
    let callback = callback_from_hostile(
        &url,
        Scenario::Slow,
        &subject("slow"),
        &email("fed-slow"),
        true,
    )
    .await;
    let began = Instant::now();
    refused(
        finish(&app, &callback).await,
        Code::Unavailable,
        "PROVIDER_UNAVAILABLE",
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(account_count(&app).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Signing in

#[tokio::test]
async fn the_first_sign_in_creates_an_account_and_the_next_finds_it() {
    let app = app().await;
    let login = email("fed-new");
    let first = sign_in_real(&app, &login).await.expect("first sign-in");
    assert!(first.account_created);
    let pair = tokens(&first);
    let user = pair.user.as_ref().unwrap();
    assert_eq!(user.email, login);
    assert!(user.email_verified, "the provider vouched for it: {user:?}");
    let identity = first.identity.as_ref().expect("the identity");
    assert_eq!(
        (identity.provider.as_str(), identity.subject.as_str()),
        (REAL, login.as_str())
    );
    let who = principal(&app, &pair.access_token).await;
    assert_eq!(who.user_id, user.id);
    assert!(who.amr.iter().any(|m| m == "oidc"), "{:?}", who.amr);
    assert!(!pair.refresh_token.is_empty());

    let second = sign_in_real(&app, &login).await.expect("second sign-in");
    assert!(!second.account_created);
    assert_eq!(user_id(&second), user.id);
    assert_eq!(account_count(&app).await, 1);

    let listed = identities(&app, &tokens(&second).access_token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].provider.as_str(), listed[0].subject.as_str()),
        (REAL, login.as_str())
    );

    // No password was ever set: a password login fails like a wrong password.
    refused(
        app.login(&login, PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

#[tokio::test]
async fn a_state_works_once_and_a_made_up_one_never() {
    let app = app().await;
    let login = email("fed-replay");
    let url = authorization_url(&app, REAL).await;
    let callback = sign_in_at_real(&url, &login).await;
    finish(&app, &callback).await.expect("first finish");
    state_invalid(finish(&app, &callback).await);

    // No state at all is bad input.
    let status = refused(
        finish(
            &app,
            &Callback {
                code: callback.code.clone(),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert!(
        violations(&status).iter().any(|(f, _)| f == "state"),
        "{status:?}"
    );

    // A state keyward never handed out, with a real code from the provider.
    let url = authorization_url(&app, REAL).await;
    let mut forged = sign_in_at_real(&url, &login).await;
    let secret = flow_secret_for(&forged.state);
    forged.state = "bm90LWEtc3RhdGUta2V5d2FyZC1oYW5kZWQtb3V0LWV2ZXI".into();
    state_invalid(finish_with_secret(&app, &forged, &secret).await);
    // The state of a flow keyward started, with the code of another flow.
    let other = authorization_url(&app, REAL).await;
    let mut swapped = sign_in_at_real(&other, &login).await;
    swapped.code = sign_in_at_real(&url, &login).await.code;
    let answer = finish(&app, &swapped).await;
    assert!(
        answer.is_err(),
        "a code bound to another flow's PKCE and nonce: {answer:?}"
    );
}

/// Sixteen finishes with one state and code, released together: one session.
#[tokio::test]
async fn sixteen_concurrent_finishes_with_one_state_give_one_session() {
    let app = Arc::new(app().await);
    let url = authorization_url(&app, REAL).await;
    let callback = Arc::new(sign_in_at_real(&url, &email("fed-race")).await);
    let results = race(16, |_| {
        let (mut client, request) = (federation(&app), callback.finish());
        async move {
            client
                .finish_federated_login(request)
                .await
                .map(|r| r.into_inner())
        }
    })
    .await;
    let mut won = 0;
    let mut lost = 0;
    for result in results {
        match result {
            Ok(answer) => {
                tokens(&answer);
                won += 1;
            }
            Err(status) => {
                assert_eq!(
                    (status.code(), reason(&status).as_str()),
                    (Code::Unauthenticated, "FEDERATION_STATE_INVALID"),
                    "{status:?}"
                );
                lost += 1;
            }
        }
    }
    assert_eq!((won, lost), (1, 15));
    assert_eq!(account_count(&app).await, 1);
}

/// One person finishing the first sign-in of a new identity in several tabs at once (each its
/// own flow): one account, every tab signed in to it.
#[tokio::test]
async fn concurrent_first_sign_ins_of_one_identity_make_one_account() {
    let app = Arc::new(app().await);
    let sub = subject("tabs");
    let address = email("fed-tabs");
    let mut callbacks = Vec::new();
    for _ in 0..6 {
        let url = authorization_url(&app, HOSTILE).await;
        callbacks.push(callback_from_hostile(&url, Scenario::Good, &sub, &address, true).await);
    }
    let results = race(callbacks.len(), |i| {
        let (mut client, request) = (federation(&app), callbacks[i].finish());
        async move {
            client
                .finish_federated_login(request)
                .await
                .map(|r| r.into_inner())
        }
    })
    .await;
    let mut ids = std::collections::HashSet::new();
    let mut created = 0;
    for result in results {
        let answer = result.expect("every tab signs in");
        ids.insert(user_id(&answer));
        created += answer.account_created as usize;
    }
    assert_eq!((ids.len(), created), (1, 1));
    assert_eq!(account_count(&app).await, 1);
}

/// Every ID token a certified provider would never send is refused, and nothing is created.
#[tokio::test]
async fn forged_and_broken_id_tokens_are_refused() {
    let app = app_with(vec![hostile_provider(HOSTILE)], |c| {
        c.login_attempts_per_address_per_minute = 0
    })
    .await;
    for scenario in [
        Scenario::WrongNonce,
        Scenario::Expired,
        Scenario::FutureIat,
        Scenario::OtherKey,
        Scenario::WrongAud,
        Scenario::WrongIss,
        Scenario::AzpMismatch,
        Scenario::AlgNone,
        Scenario::Hs256PublicKey,
    ] {
        let answer = sign_in_hostile(
            &app,
            scenario,
            &subject(scenario.name()),
            &email(&format!("fed-{}", scenario.name())),
            true,
        )
        .await;
        let status = answer.expect_err(scenario.name());
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::Unauthenticated, "FEDERATION_TOKEN_INVALID"),
            "{scenario:?}: {status:?}"
        );
    }
    // An `iss` parameter in the callback that is not the provider's issuer (RFC 9207).
    let url = authorization_url(&app, HOSTILE).await;
    let sub = subject("iss-param");
    let verified = email("fed-iss-param");
    let extra = [
        ("scenario", "good"),
        ("sub", sub.as_str()),
        ("email", verified.as_str()),
        ("iss_param", "wrong"),
    ];
    let callback = callback_from_hostile_with(&url, &extra).await;
    assert!(!callback.iss.is_empty());
    refused(
        finish(&app, &callback).await,
        Code::Unauthenticated,
        "FEDERATION_TOKEN_INVALID",
    );
    assert_eq!(account_count(&app).await, 0);

    // The same provider's good tokens are accepted, with or without a right `iss` parameter:
    // the refusals above were the tokens', not the setup's.
    let url = authorization_url(&app, HOSTILE).await;
    let extra = [
        ("scenario", "good"),
        ("sub", sub.as_str()),
        ("email", verified.as_str()),
        ("iss_param", "right"),
    ];
    let callback = callback_from_hostile_with(&url, &extra).await;
    assert_eq!(callback.iss, issuers().hostile);
    assert!(
        finish(&app, &callback)
            .await
            .expect("good token")
            .account_created
    );
    let answer = sign_in_hostile(&app, Scenario::Good, &sub, &verified, true).await;
    assert!(!answer.expect("good token again").account_created);
}

#[tokio::test]
async fn provider_errors_come_back_as_stable_reasons() {
    use tonic_types::StatusExt;
    let app = app().await;
    let sub = subject("errors");
    let address = email("fed-errors");

    let answer = sign_in_hostile(&app, Scenario::InvalidGrant, &sub, &address, true).await;
    refused(answer, Code::Unauthenticated, "FEDERATION_CODE_INVALID");

    let answer = sign_in_hostile(&app, Scenario::AccessDenied, &sub, &address, true).await;
    refused(answer, Code::PermissionDenied, "FEDERATION_ACCESS_DENIED");

    let answer = sign_in_hostile(&app, Scenario::ServerError, &sub, &address, true).await;
    let status = refused(
        answer,
        Code::FailedPrecondition,
        "FEDERATION_PROVIDER_ERROR",
    );
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("provider_error").map(String::as_str),
        Some("server_error"),
        "{info:?}"
    );

    // A person who declines at the certified provider's consent page.
    let url = authorization_url(&app, REAL).await;
    let declined = decline_at_real(&url, &address).await;
    assert_eq!(declined.error, "access_denied");
    refused(
        finish(&app, &declined).await,
        Code::PermissionDenied,
        "FEDERATION_ACCESS_DENIED",
    );
    assert_eq!(account_count(&app).await, 0);
}

/// The provider signs with a key it publishes only now: keyward fetches the keys again for the
/// unknown kid.
#[tokio::test]
async fn a_rotated_signing_key_is_fetched_and_accepted() {
    let app = app().await;
    // Keys fetched and cached.
    let answer = sign_in_hostile(
        &app,
        Scenario::Good,
        &subject("before"),
        &email("fed-before"),
        true,
    )
    .await;
    tokens(&answer.expect("before the rotation"));
    let answer = sign_in_hostile(
        &app,
        Scenario::RotatedKey,
        &subject("after"),
        &email("fed-after"),
        true,
    )
    .await;
    assert!(answer.expect("after the rotation").account_created);
}

// ---------------------------------------------------------------------------------------------
// Which account: verified emails only

#[tokio::test]
async fn an_unverified_or_missing_email_creates_nothing() {
    let app = app().await;
    let answer = sign_in_real(&app, &format!("unverified-{}", email("fed"))).await;
    refused(
        answer,
        Code::FailedPrecondition,
        "FEDERATED_EMAIL_UNVERIFIED",
    );
    let answer = sign_in_hostile(&app, Scenario::NoEmail, &subject("no-email"), "", true).await;
    refused(
        answer,
        Code::FailedPrecondition,
        "FEDERATED_EMAIL_UNVERIFIED",
    );
    assert_eq!(account_count(&app).await, 0);
}

#[tokio::test]
async fn an_unverified_email_never_links_to_the_account_of_that_email() {
    let app = app().await;
    let address = email("fed-victim");
    let owner = verified_account(&app, &address).await;
    let sub = subject("attacker");
    for _ in 0..2 {
        let answer = sign_in_hostile(&app, Scenario::Good, &sub, &address, false).await;
        refused(
            answer,
            Code::FailedPrecondition,
            "FEDERATED_EMAIL_UNVERIFIED",
        );
        assert!(identities(&app, &owner.access_token).await.is_empty());
    }
    assert_eq!(account_count(&app).await, 1);
    app.login(&address, PASSWORD)
        .await
        .expect("the owner still signs in");
}

#[tokio::test]
async fn a_provider_not_trusted_for_email_verified_creates_and_links_nothing() {
    let mut untrusted = hostile_provider(HOSTILE);
    untrusted.trust_email_verified = Some(false);
    let app = app_with(vec![untrusted], |_| {}).await;
    let answer = sign_in_hostile(
        &app,
        Scenario::Good,
        &subject("untrusted"),
        &email("fed-new"),
        true,
    )
    .await;
    refused(
        answer,
        Code::FailedPrecondition,
        "FEDERATED_EMAIL_UNVERIFIED",
    );
    let address = email("fed-existing");
    let owner = verified_account(&app, &address).await;
    let answer = sign_in_hostile(&app, Scenario::Good, &subject("untrusted"), &address, true).await;
    refused(
        answer,
        Code::FailedPrecondition,
        "FEDERATED_EMAIL_UNVERIFIED",
    );
    assert!(identities(&app, &owner.access_token).await.is_empty());
    assert_eq!(account_count(&app).await, 1);
}

/// Someone registered the address without ever proving the mailbox; its owner then signs in
/// with a provider that vouches for it: the owner gets the account, and the registrant's
/// password stops working.
#[tokio::test]
async fn a_verified_sign_in_takes_over_an_unproven_registration() {
    let app = app().await;
    let address = email("fed-squatted");
    let registered = app.try_register(&address).await.expect("register");
    let squatter_id = registered.user.as_ref().map(|u| u.id.clone());
    let before = app.login(&address, PASSWORD).await.expect("login before");
    let id = before.user.as_ref().unwrap().id.clone();
    if let Some(squatter_id) = squatter_id {
        assert_eq!(squatter_id, id);
    }

    let answer = sign_in_real(&app, &address)
        .await
        .expect("federated sign-in");
    assert!(!answer.account_created);
    assert_eq!(user_id(&answer), id);
    assert!(tokens(&answer).user.as_ref().unwrap().email_verified);
    refused(
        app.login(&address, PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // The registrant's sessions went with the claim.
    assert!(app.authenticate(&before.access_token).await.is_err());
    assert_eq!(account_count(&app).await, 1);
}

/// Where unverified accounts may sign in (require_verified_email off, as in these tests), the
/// registrant of someone else's address links an identity of their own while they hold the
/// account. When the address's owner then claims the account, that identity must go with the
/// registrant's password and sessions, or it signs the registrant back in.
#[tokio::test]
async fn a_claimed_account_keeps_none_of_the_registrants_identities() {
    let app = app().await;
    let address = email("fed-squatted");
    let squatter = app.signed_in(&address).await;
    let id = squatter.user.as_ref().unwrap().id.clone();
    let squatter_sub = subject("squatter");
    // keyward may refuse the link until the mailbox is proven; either way the identity must not
    // end up on the account the owner claims.
    let request = StartLinkIdentityRequest {
        provider: HOSTILE.into(),
        redirect_uri: REDIRECT_URI.into(),
    };
    match federation(&app)
        .start_link_identity(bearer(request, &squatter.access_token))
        .await
    {
        Err(status) => assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::FailedPrecondition, "EMAIL_NOT_VERIFIED"),
            "{status:?}"
        ),
        Ok(started) => {
            let started = started.into_inner();
            remember_flow(&started.state, &started.flow_secret);
            let callback = callback_from_hostile(
                &started.authorization_url,
                Scenario::Good,
                &squatter_sub,
                &email("sq"),
                false,
            )
            .await;
            finish_link(&app, &squatter.access_token, &callback)
                .await
                .expect("the registrant links an identity");
        }
    }

    let owner = sign_in_real(&app, &address)
        .await
        .expect("the owner signs in");
    assert_eq!(user_id(&owner), id);
    let listed: Vec<_> = identities(&app, &tokens(&owner).access_token)
        .await
        .into_iter()
        .map(|i| (i.provider, i.subject))
        .collect();
    assert_eq!(listed, [(REAL.to_string(), address.clone())]);
    let again = sign_in_hostile(&app, Scenario::Good, &squatter_sub, &email("sq"), false).await;
    if let Ok(answer) = &again {
        assert_ne!(
            user_id(answer),
            id,
            "the registrant's identity signs in to the claimed account"
        );
    }
}

#[tokio::test]
async fn a_verified_sign_in_links_to_the_verified_account_of_that_email() {
    let app = app().await;
    let address = email("fed-owner");
    let owner = verified_account(&app, &address).await;
    let id = owner.user.as_ref().unwrap().id.clone();

    let answer = sign_in_real(&app, &address)
        .await
        .expect("federated sign-in");
    assert!(!answer.account_created);
    assert_eq!(user_id(&answer), id);
    let listed = identities(&app, &owner.access_token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].provider.as_str(), listed[0].subject.as_str()),
        (REAL, address.as_str())
    );
    // The owner proved the mailbox: their password stays.
    app.login(&address, PASSWORD)
        .await
        .expect("password still works");
}

#[tokio::test]
async fn an_account_with_a_second_factor_still_needs_it() {
    let app = app().await;
    let address = email("fed-mfa");
    let pair = verified_account(&app, &address).await;
    let mut mfa = MfaServiceClient::new(app.channel());
    let started = mfa
        .start_totp_enrollment(bearer(StartTotpEnrollmentRequest {}, &pair.access_token))
        .await
        .expect("start enrolment")
        .into_inner();
    let code =
        crate::mfa::totp_codes(&started.otpauth_uri, &[crate::mfa::current_step()]).remove(0);
    mfa.confirm_totp_enrollment(bearer(
        ConfirmTotpEnrollmentRequest { code },
        &pair.access_token,
    ))
    .await
    .expect("confirm enrolment");

    let answer = sign_in_real(&app, &address)
        .await
        .expect("first factor accepted");
    assert!(
        answer.tokens.is_none(),
        "no tokens before the second factor: {answer:?}"
    );
    assert!(!answer
        .mfa_challenge
        .expect("an MFA challenge")
        .challenge
        .is_empty());
}

#[tokio::test]
async fn a_disabled_account_cannot_sign_in() {
    let app = app().await;
    let (_, admin) = with_role(&app, &email("fed-admin"), "admin").await;
    let address = email("fed-disabled");
    let created = sign_in_real(&app, &address).await.expect("first sign-in");
    let id = user_id(&created);
    users(&app)
        .disable_user(bearer(
            DisableUserRequest {
                user_id: id,
                reason: "test".into(),
            },
            &admin.access_token,
        ))
        .await
        .expect("disable");
    refused(
        sign_in_real(&app, &address).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
}

#[tokio::test]
async fn a_deleted_account_cannot_sign_in() {
    let app = app().await;
    let (_, admin) = with_role(&app, &email("fed-admin"), "admin").await;
    let address = email("fed-deleted");
    let created = sign_in_real(&app, &address).await.expect("first sign-in");
    let id = user_id(&created);
    users(&app)
        .delete_user(bearer(
            DeleteUserRequest {
                user_id: id.clone(),
                reason: "test".into(),
            },
            &admin.access_token,
        ))
        .await
        .expect("delete");
    refused(
        sign_in_real(&app, &address).await,
        Code::PermissionDenied,
        "ACCOUNT_DISABLED",
    );
    assert!(app
        .authenticate(&tokens(&created).access_token)
        .await
        .is_err());
}

/// Neither the state nor the nonce of a flow is stored, and the audit trail names a subject only
/// by its hash.
#[tokio::test]
async fn flow_secrets_and_subjects_are_not_kept_in_the_clear() {
    let app = app().await;
    let started = start(&app, HOSTILE).await.expect("start");
    let query: std::collections::HashMap<String, String> = Url::parse(&started.authorization_url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let sub = subject("private");
    let callback = callback_from_hostile(
        &started.authorization_url,
        Scenario::Good,
        &sub,
        &email("fed-at-rest"),
        true,
    )
    .await;
    for (name, stored) in everything_stored(&app).await {
        for secret in [&query["state"], &query["nonce"]] {
            assert!(
                !stored.contains(secret.as_str()),
                "{name} holds {secret}: {stored}"
            );
        }
    }
    finish(&app, &callback).await.expect("sign-in");
    for (name, stored) in everything_stored(&app).await {
        for secret in [&query["state"], &query["nonce"], &callback.code] {
            assert!(
                !stored.contains(secret.as_str()),
                "{name} holds {secret}: {stored}"
            );
        }
        if name == "audit_events" {
            assert!(
                stored.contains("federat") || stored.contains("identity"),
                "{stored}"
            );
            assert!(
                !stored.contains(&sub),
                "the audit trail names the subject: {stored}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Linking and unlinking

#[tokio::test]
async fn a_signed_in_user_links_an_identity_and_then_signs_in_with_it() {
    let app = app().await;
    let address = email("fed-linker");
    let pair = verified_account(&app, &address).await;
    let id = pair.user.as_ref().unwrap().id.clone();
    let sub = subject("linked");

    let linked = link_hostile(&app, &pair.access_token, &sub)
        .await
        .expect("link");
    let identity = linked.identity.expect("the identity");
    assert_eq!(
        (identity.provider.as_str(), identity.subject.as_str()),
        (HOSTILE, sub.as_str())
    );
    let listed = identities(&app, &pair.access_token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].provider.as_str(), listed[0].subject.as_str()),
        (HOSTILE, sub.as_str())
    );

    // The identity signs into that account whatever email the provider gives now, verified or
    // not.
    for verified in [false, true] {
        let answer = sign_in_hostile(
            &app,
            Scenario::Good,
            &sub,
            &email("fed-elsewhere"),
            verified,
        )
        .await;
        let answer = answer.expect("sign in with the linked identity");
        assert!(!answer.account_created);
        assert_eq!(user_id(&answer), id);
    }
    assert_eq!(account_count(&app).await, 1);

    // A second identity, at the certified provider, listed after the first.
    let url = start_link(&app, &pair.access_token, REAL)
        .await
        .authorization_url;
    let login = email("fed-second-identity");
    let callback = sign_in_at_real(&url, &login).await;
    finish_link(&app, &pair.access_token, &callback)
        .await
        .expect("link a second identity");
    let listed: Vec<_> = identities(&app, &pair.access_token)
        .await
        .into_iter()
        .map(|i| (i.provider, i.subject))
        .collect();
    assert_eq!(
        listed,
        [
            (HOSTILE.to_string(), sub.clone()),
            (REAL.to_string(), login.clone())
        ]
    );
    let answer = sign_in_real(&app, &login).await.expect("sign in with it");
    assert_eq!(user_id(&answer), id);
}

#[tokio::test]
async fn a_link_state_belongs_to_its_user_and_to_linking() {
    let app = app().await;
    let alice = verified_account(&app, &email("fed-alice")).await;
    let mallory = verified_account(&app, &email("fed-mallory")).await;

    // Mallory finishes Alice's link.
    let url = start_link(&app, &alice.access_token, HOSTILE)
        .await
        .authorization_url;
    let callback =
        callback_from_hostile(&url, Scenario::Good, &subject("a"), &email("x"), true).await;
    state_invalid(finish_link(&app, &mallory.access_token, &callback).await);
    assert!(identities(&app, &mallory.access_token).await.is_empty());

    // A link state finishing a sign-in.
    let url = start_link(&app, &alice.access_token, HOSTILE)
        .await
        .authorization_url;
    let callback =
        callback_from_hostile(&url, Scenario::Good, &subject("b"), &email("y"), true).await;
    state_invalid(finish(&app, &callback).await);

    // A sign-in state finishing a link.
    let url = authorization_url(&app, HOSTILE).await;
    let callback =
        callback_from_hostile(&url, Scenario::Good, &subject("c"), &email("z"), true).await;
    state_invalid(finish_link(&app, &alice.access_token, &callback).await);

    assert!(identities(&app, &alice.access_token).await.is_empty());
    assert_eq!(account_count(&app).await, 2);
}

#[tokio::test]
async fn an_identity_linked_to_another_account_cannot_be_linked_again() {
    let app = app().await;
    let sub = subject("taken");
    let created = sign_in_hostile(&app, Scenario::Good, &sub, &email("fed-first"), true)
        .await
        .expect("first sign-in");
    let pair = verified_account(&app, &email("fed-second")).await;
    refused(
        link_hostile(&app, &pair.access_token, &sub).await,
        Code::AlreadyExists,
        "IDENTITY_ALREADY_LINKED",
    );
    assert!(identities(&app, &pair.access_token).await.is_empty());
    assert_eq!(
        identities(&app, &tokens(&created).access_token).await.len(),
        1
    );
}

#[tokio::test]
async fn unlinking_never_removes_the_last_way_in() {
    let app = app().await;
    // An account made by a sign-in has no password: its one identity stays.
    let sub = subject("only");
    let created = sign_in_hostile(&app, Scenario::Good, &sub, &email("fed-passwordless"), true)
        .await
        .expect("sign-in");
    let token = tokens(&created).access_token.clone();
    refused(
        unlink(&app, &token, HOSTILE, &sub).await,
        Code::FailedPrecondition,
        "LAST_SIGN_IN_METHOD",
    );
    assert_eq!(identities(&app, &token).await.len(), 1);

    // A password account can drop its identity, and then that identity is a stranger.
    let pair = verified_account(&app, &email("fed-password")).await;
    let linked = subject("linked");
    link_hostile(&app, &pair.access_token, &linked)
        .await
        .expect("link");
    refused(
        unlink(&app, &pair.access_token, HOSTILE, "no-such-subject").await,
        Code::NotFound,
        "IDENTITY_NOT_FOUND",
    );
    // Another account's identity is not this one's to unlink.
    refused(
        unlink(&app, &pair.access_token, HOSTILE, &sub).await,
        Code::NotFound,
        "IDENTITY_NOT_FOUND",
    );
    unlink(&app, &pair.access_token, HOSTILE, &linked)
        .await
        .expect("unlink");
    assert!(identities(&app, &pair.access_token).await.is_empty());
    refused(
        unlink(&app, &pair.access_token, HOSTILE, &linked).await,
        Code::NotFound,
        "IDENTITY_NOT_FOUND",
    );
}

/// The flow secret stays with the client that started: a callback URL alone (from a log, a
/// history entry, another app on the redirect URI) finishes nothing, and does not use the flow
/// up for its owner.
#[tokio::test]
async fn a_callback_without_its_flow_secret_finishes_nothing() {
    let app = app().await;
    let started = start(&app, HOSTILE).await.expect("start");
    assert!(started.flow_secret.len() >= 22, "{started:?}");
    assert!(
        !started.authorization_url.contains(&started.flow_secret),
        "the flow secret travels in the URL"
    );
    let callback = callback_from_hostile(
        &started.authorization_url,
        Scenario::Good,
        &subject("intercepted"),
        &email("fed-intercepted"),
        true,
    )
    .await;
    let status = refused(
        finish_with_secret(&app, &callback, "").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert!(
        violations(&status).iter().any(|(f, _)| f == "flow_secret"),
        "{status:?}"
    );
    let other = start(&app, HOSTILE).await.unwrap().flow_secret;
    state_invalid(finish_with_secret(&app, &callback, &other).await);
    state_invalid(finish_with_secret(&app, &callback, &"A".repeat(43)).await);
    assert_eq!(account_count(&app).await, 0);

    let answer = finish_with_secret(&app, &callback, &started.flow_secret).await;
    assert!(answer.expect("the owner finishes").account_created);
    state_invalid(finish_with_secret(&app, &callback, &started.flow_secret).await);
}

#[tokio::test]
async fn an_account_links_at_most_twenty_identities() {
    let app = app_with(vec![hostile_provider(HOSTILE)], |c| {
        c.login_attempts_per_address_per_minute = 0
    })
    .await;
    let pair = verified_account(&app, &email("fed-collector")).await;
    for i in 0..20 {
        link_hostile(&app, &pair.access_token, &subject(&format!("n{i}")))
            .await
            .unwrap_or_else(|s| panic!("link {i}: {s:?}"));
    }
    refused(
        link_hostile(&app, &pair.access_token, &subject("n20")).await,
        Code::FailedPrecondition,
        "TOO_MANY_IDENTITIES",
    );
    assert_eq!(identities(&app, &pair.access_token).await.len(), 20);
}

/// Oversized callback fields are bad input, named field by field, and use nothing up: the
/// owner's flow still finishes afterwards.
#[tokio::test]
async fn oversized_callback_fields_are_refused_without_using_the_flow() {
    let app = app().await;
    let started = start(&app, HOSTILE).await.expect("start");
    let callback = callback_from_hostile(
        &started.authorization_url,
        Scenario::Good,
        &subject("oversized"),
        &email("fed-oversized"),
        true,
    )
    .await;
    let huge = "x".repeat(64 * 1024 - 1024);
    for field in ["state", "code", "error_description", "iss", "flow_secret"] {
        let mut request = callback.finish();
        request.flow_secret = started.flow_secret.clone();
        match field {
            "state" => request.state = huge.clone(),
            "code" => request.code = huge.clone(),
            "error_description" => request.error_description = huge.clone(),
            "iss" => request.iss = huge.clone(),
            _ => request.flow_secret = huge.clone(),
        }
        let status = federation(&app)
            .finish_federated_login(request)
            .await
            .expect_err("an oversized field");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            violations(&status).iter().any(|(f, _)| f == field),
            "{field}: {status:?}"
        );
    }
    let answer = finish_with_secret(&app, &callback, &started.flow_secret).await;
    assert!(answer.expect("the owner finishes").account_created);
}
