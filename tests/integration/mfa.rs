//! TOTP multi-factor authentication end to end: enrolment, the second login step, step-up,
//! recovery codes, MFA-gated permissions (Authorize, ext_authz, organization policy), disabling
//! and the admin reset — and the attacker's view: replayed and far-off codes, races on one
//! challenge, another account's codes, brute force into the lockout, forged challenges, and
//! secrets at rest.
//!
//! TOTP codes come from an independent implementation, Python's `pyotp` (installed by
//! scripts/setup.sh), fed the `otpauth://` URI keyward hands out, as an authenticator app would.
//! keyward accepts each time step once, so the tests keep track of the steps they used and never
//! pick a code of the previous step unless they have just made sure a step boundary is not near.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use keyward::grpc::pb::mfa_service_client::MfaServiceClient;
use keyward::grpc::pb::org_service_client::OrgServiceClient;
use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::*;
use mongodb::bson::{doc, Document};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::harness::*;
use crate::smtp_sink::Received;
use crate::users::with_role;

// ---------------------------------------------------------------------------------------------
// An authenticator app (pyotp)

/// Runs `script` with `python3 -c` and returns its stdout.
fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 failed (is pyotp installed? run scripts/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The codes an authenticator app set up from `uri` shows at the start of each of `steps`
/// (30-second periods since the epoch).
pub(crate) fn totp_codes(uri: &str, steps: &[i64]) -> Vec<String> {
    const SCRIPT: &str = "import sys, pyotp\n\
        t = pyotp.parse_uri(sys.argv[1])\n\
        for s in sys.argv[2:]:\n    print(t.at(int(s) * 30))\n";
    let mut args = vec![uri.to_string()];
    args.extend(steps.iter().map(i64::to_string));
    python(SCRIPT, &args).lines().map(str::to_string).collect()
}

/// What an authenticator app reads out of an `otpauth://` URI.
fn describe_uri(uri: &str) -> serde_json::Value {
    const SCRIPT: &str = "import sys, json, urllib.parse, pyotp\n\
        u = sys.argv[1]\n\
        t = pyotp.parse_uri(u)\n\
        p = urllib.parse.urlparse(u)\n\
        print(json.dumps({'scheme': p.scheme, 'type': p.netloc,\n\
            'label': urllib.parse.unquote(p.path[1:]), 'secret': t.secret, 'issuer': t.issuer,\n\
            'name': t.name, 'digits': t.digits, 'interval': t.interval,\n\
            'digest': t.digest().name}))\n";
    serde_json::from_str(&python(SCRIPT, &[uri.to_string()])).unwrap()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The current TOTP time step.
pub(crate) fn current_step() -> i64 {
    (unix_now() / 30.0).floor() as i64
}

/// Waits, if a step boundary is less than 6 seconds away, until just after it: the previous
/// step's code then stays acceptable for the next few seconds.
async fn away_from_a_step_boundary() {
    let into_step = unix_now() % 30.0;
    if into_step > 24.0 {
        tokio::time::sleep(Duration::from_secs_f64(30.0 - into_step + 0.5)).await;
    }
}

/// An authenticator app set up from keyward's enrolment answer.
struct Authenticator {
    uri: String,
    secret: String,
    /// The latest step whose code a test handed to keyward as a right one.
    last_step: i64,
}

impl Authenticator {
    fn new(started: &StartTotpEnrollmentResponse) -> Self {
        Self {
            uri: started.otpauth_uri.clone(),
            secret: started.secret.clone(),
            last_step: 0,
        }
    }

    fn code(&self, step: i64) -> String {
        totp_codes(&self.uri, &[step]).remove(0)
    }

    /// A code keyward accepts now: of the current or the next step, and of a step later than any
    /// used before (a code is accepted once). Waits for the next step when both are used.
    async fn fresh_code(&mut self) -> String {
        loop {
            let now = current_step();
            let step = (self.last_step + 1).max(now);
            if step <= now + 1 {
                self.last_step = step;
                return self.code(step);
            }
            let wait = 30.0 - unix_now() % 30.0 + 0.3;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }

    /// A 6-digit code that is none of this app's codes for the steps around now.
    fn wrong_code(&self) -> String {
        let now = current_step();
        let near: HashSet<String> = totp_codes(&self.uri, &(now - 4..=now + 4).collect::<Vec<_>>())
            .into_iter()
            .collect();
        let mut n: u32 = near.iter().next().unwrap().parse().unwrap();
        loop {
            n = (n + 1) % 1_000_000;
            let code = format!("{n:06}");
            if !near.contains(&code) {
                return code;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients and calls

fn mfa(app: &TestApp) -> MfaServiceClient<Channel> {
    MfaServiceClient::new(app.channel())
}

fn otp(app: &TestApp) -> OtpServiceClient<Channel> {
    OtpServiceClient::new(app.channel())
}

fn orgs(app: &TestApp) -> OrgServiceClient<Channel> {
    OrgServiceClient::new(app.channel())
}

/// Asserts a refusal with `code` and `reason`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, why: &str) {
    let status = result.expect_err(why);
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, why),
        "{status:?}"
    );
}

#[track_caller]
fn code_invalid<T: std::fmt::Debug>(result: Result<T, Status>) {
    refused(result, Code::Unauthenticated, "MFA_CODE_INVALID");
}

async fn start(app: &TestApp, token: &str) -> Result<StartTotpEnrollmentResponse, Status> {
    mfa(app)
        .start_totp_enrollment(bearer(StartTotpEnrollmentRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

async fn confirm(
    app: &TestApp,
    token: &str,
    code: &str,
) -> Result<ConfirmTotpEnrollmentResponse, Status> {
    let request = ConfirmTotpEnrollmentRequest { code: code.into() };
    mfa(app)
        .confirm_totp_enrollment(bearer(request, token))
        .await
        .map(|r| r.into_inner())
}

async fn complete(
    app: &TestApp,
    challenge: &str,
    totp_code: &str,
    recovery_code: &str,
) -> Result<TokenPair, Status> {
    mfa(app)
        .complete_mfa(CompleteMfaRequest {
            challenge: challenge.into(),
            totp_code: totp_code.into(),
            recovery_code: recovery_code.into(),
        })
        .await
        .map(|r| r.into_inner().tokens.expect("CompleteMfa gives tokens"))
}

async fn complete_totp(app: &TestApp, challenge: &str, code: &str) -> Result<TokenPair, Status> {
    complete(app, challenge, code, "").await
}

async fn complete_recovery(
    app: &TestApp,
    challenge: &str,
    code: &str,
) -> Result<TokenPair, Status> {
    complete(app, challenge, "", code).await
}

pub(crate) async fn step_up(
    app: &TestApp,
    token: &str,
    totp_code: &str,
    recovery_code: &str,
) -> Result<StepUpResponse, Status> {
    let request = StepUpRequest {
        totp_code: totp_code.into(),
        recovery_code: recovery_code.into(),
    };
    mfa(app)
        .step_up(bearer(request, token))
        .await
        .map(|r| r.into_inner())
}

async fn methods(app: &TestApp, token: &str) -> ListMfaMethodsResponse {
    mfa(app)
        .list_mfa_methods(bearer(ListMfaMethodsRequest {}, token))
        .await
        .expect("list mfa methods")
        .into_inner()
}

async fn disable(
    app: &TestApp,
    token: &str,
    totp_code: &str,
    recovery_code: &str,
) -> Result<DisableTotpResponse, Status> {
    let request = DisableTotpRequest {
        totp_code: totp_code.into(),
        recovery_code: recovery_code.into(),
    };
    mfa(app)
        .disable_totp(bearer(request, token))
        .await
        .map(|r| r.into_inner())
}

async fn regenerate(app: &TestApp, token: &str, totp_code: &str) -> Result<Vec<String>, Status> {
    let request = RegenerateRecoveryCodesRequest {
        totp_code: totp_code.into(),
    };
    mfa(app)
        .regenerate_recovery_codes(bearer(request, token))
        .await
        .map(|r| r.into_inner().recovery_codes)
}

async fn reset_user_mfa(
    app: &TestApp,
    token: &str,
    user_id: &str,
) -> Result<ResetUserMfaResponse, Status> {
    let request = ResetUserMfaRequest {
        user_id: user_id.into(),
    };
    mfa(app)
        .reset_user_mfa(bearer(request, token))
        .await
        .map(|r| r.into_inner())
}

async fn principal(app: &TestApp, token: &str) -> Principal {
    app.auth()
        .authenticate(AuthenticateRequest {
            access_token: token.into(),
        })
        .await
        .expect("the token is valid")
        .into_inner()
        .principal
        .unwrap()
}

async fn authorize(app: &TestApp, token: &str, permission: &str, org_id: &str) -> (bool, String) {
    let answer = app
        .auth()
        .authorize(AuthorizeRequest {
            access_token: token.into(),
            permission: permission.into(),
            org_id: org_id.into(),
        })
        .await
        .expect("authorize answers")
        .into_inner();
    (answer.allowed, answer.reason)
}

async fn refresh(app: &TestApp, refresh_token: &str) -> Result<TokenPair, Status> {
    app.auth()
        .refresh(RefreshRequest {
            refresh_token: refresh_token.into(),
        })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

async fn session_count(app: &TestApp, token: &str) -> usize {
    app.auth()
        .list_sessions(bearer(ListSessionsRequest::default(), token))
        .await
        .expect("list sessions")
        .into_inner()
        .sessions
        .len()
}

/// Asserts that `token`'s session has ended.
async fn assert_ended(app: &TestApp, token: &str) {
    let status = app.authenticate(token).await.expect_err("session ended");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Mail

fn same_mail(a: &Received, b: &Received) -> bool {
    a.subject == b.subject && a.text == b.text && a.received == b.received
}

/// The messages `to` has received, once no new one has come for half a second (so a notice
/// still in flight from an earlier step is not taken for the next one).
async fn settled_mail(to: &str) -> Vec<Received> {
    let mut seen = shared_sink().to(to).len();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = shared_sink().to(to);
        if now.len() == seen {
            return now;
        }
        seen = now.len();
    }
}

/// Waits (30 s at most) for a message to `to` that is not among `before` and satisfies `want`.
async fn new_mail(to: &str, before: &[Received], want: impl Fn(&Received) -> bool) -> Received {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = shared_sink()
            .to(to)
            .into_iter()
            .find(|m| !before.iter().any(|b| same_mail(b, m)) && want(m));
        if let Some(m) = found {
            return m;
        }
        assert!(Instant::now() < deadline, "no new mail to {to}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks for a code for `purpose` and reads it from the mail that brings it.
async fn mailed_code(app: &TestApp, email: &str, purpose: CodePurpose) -> String {
    let before = shared_sink().to(email);
    otp(app)
        .send_code(SendCodeRequest {
            email: email.into(),
            purpose: purpose as i32,
        })
        .await
        .expect("send code");
    new_mail(email, &before, |m| m.code().is_some())
        .await
        .code()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Accounts

/// Registers `email`, proves the mailbox with the code Register mailed (message 1), and signs
/// in.
async fn verified_signed_in(app: &TestApp, email: &str) -> TokenPair {
    app.register(email).await;
    let code = shared_sink().code(email, 1).await;
    otp(app)
        .verify_email(VerifyEmailRequest {
            email: email.into(),
            code,
        })
        .await
        .expect("verify email");
    app.login(email, PASSWORD).await.expect("login")
}

/// A user with a confirmed authenticator.
pub(crate) struct Enrolled {
    pub(crate) email: String,
    pub(crate) user_id: String,
    /// The session that enrolled: still signed in with one factor.
    pub(crate) session: TokenPair,
    totp: Authenticator,
    pub(crate) recovery_codes: Vec<String>,
}

pub(crate) async fn enrolled(app: &TestApp, tag: &str) -> Enrolled {
    let email = email(tag);
    let session = verified_signed_in(app, &email).await;
    let started = start(app, &session.access_token)
        .await
        .expect("start enrolment");
    let mut totp = Authenticator::new(&started);
    let code = totp.fresh_code().await;
    let confirmed = confirm(app, &session.access_token, &code)
        .await
        .expect("confirm enrolment");
    Enrolled {
        email,
        user_id: session.user.as_ref().unwrap().id.clone(),
        session,
        totp,
        recovery_codes: confirmed.recovery_codes,
    }
}

/// Logs `email` in with the password and returns the challenge the login answered with.
async fn challenge(app: &TestApp, email: &str) -> String {
    let answer = app.login_response(email, PASSWORD).await.expect("login");
    assert!(
        answer.tokens.is_none(),
        "no tokens before the second factor: {answer:?}"
    );
    answer.mfa_challenge.expect("an MFA challenge").challenge
}

/// Asserts that a login of `email` gives tokens at once, without a challenge.
async fn assert_logs_in_with_one_factor(app: &TestApp, email: &str) -> TokenPair {
    let answer = app.login_response(email, PASSWORD).await.expect("login");
    assert!(answer.mfa_challenge.is_none(), "{answer:?}");
    let pair = answer.tokens.expect("tokens");
    assert!(!pair.access_token.is_empty() && !pair.refresh_token.is_empty());
    pair
}

#[track_caller]
fn assert_recovery_code_shape(codes: &[String]) {
    assert_eq!(codes.len(), 10, "{codes:?}");
    assert_eq!(
        codes.iter().collect::<HashSet<_>>().len(),
        10,
        "distinct: {codes:?}"
    );
    for code in codes {
        let ok = code.len() == 11
            && code.as_bytes()[5] == b'-'
            && code
                .bytes()
                .enumerate()
                .all(|(i, b)| i == 5 || b.is_ascii_lowercase() || b.is_ascii_digit());
        assert!(ok, "not xxxxx-xxxxx: {code:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy ext_authz

fn http_request(token: &str, context: &[(&str, &str)]) -> CheckRequest {
    crate::ext_authz::http_request(&[("authorization", &format!("Bearer {token}"))], context)
}

async fn check(app: &TestApp, token: &str, context: &[(&str, &str)]) -> CheckResponse {
    AuthorizationClient::new(app.channel())
        .check(http_request(token, context))
        .await
        .expect("Check answers")
        .into_inner()
}

/// (grpc code, http status, body `reason`) of a denial.
fn denial(r: &CheckResponse) -> (i32, i32, String) {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}")
    };
    let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    (
        r.status.as_ref().unwrap().code,
        d.status.as_ref().unwrap().code,
        body["reason"].as_str().unwrap_or_default().to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// Enrolment

#[tokio::test]
async fn enrolment_needs_a_verified_email_and_a_recent_sign_in() {
    let app =
        TestApp::start_with_config(|c| c.privileged_session_max_age = Duration::from_secs(4)).await;
    let email = email("mfa-precondition");
    let unverified = app.signed_in(&email).await;

    let status = mfa(&app)
        .start_totp_enrollment(StartTotpEnrollmentRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    refused(
        start(&app, &unverified.access_token).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );

    let code = shared_sink().code(&email, 1).await;
    otp(&app)
        .verify_email(VerifyEmailRequest {
            email: email.clone(),
            code,
        })
        .await
        .expect("verify email");
    // That session signed in longer ago than privileged_session_max_age.
    tokio::time::sleep(Duration::from_secs(5)).await;
    refused(
        start(&app, &unverified.access_token).await,
        Code::FailedPrecondition,
        "REAUTHENTICATION_REQUIRED",
    );
    refused(
        confirm(&app, &unverified.access_token, "123456").await,
        Code::FailedPrecondition,
        "REAUTHENTICATION_REQUIRED",
    );

    let fresh = app.login(&email, PASSWORD).await.unwrap();
    refused(
        confirm(&app, &fresh.access_token, "123456").await,
        Code::FailedPrecondition,
        "MFA_ENROLLMENT_NOT_STARTED",
    );
    start(&app, &fresh.access_token)
        .await
        .expect("a fresh sign-in with a verified email may enrol");
}

#[tokio::test]
async fn enrolment_gives_an_app_ready_uri_and_ten_recovery_codes_and_ends_other_sessions() {
    let app = TestApp::start_with_config(|c| c.totp_issuer = "Acme Health".into()).await;
    let email = email("mfa-enrol");
    let session = verified_signed_in(&app, &email).await;
    let other_a = app.login(&email, PASSWORD).await.unwrap();
    let other_b = app.login(&email, PASSWORD).await.unwrap();

    let first = start(&app, &session.access_token).await.unwrap();
    let started = start(&app, &session.access_token).await.unwrap();
    assert_ne!(
        first.secret, started.secret,
        "starting again replaces the unconfirmed secret"
    );

    let secret = &started.secret;
    assert!(
        secret.len() >= 16
            && secret
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
        "base32 without padding: {secret:?}"
    );
    let uri = describe_uri(&started.otpauth_uri);
    assert_eq!(uri["scheme"], "otpauth", "{uri}");
    assert_eq!(uri["type"], "totp", "{uri}");
    assert_eq!(uri["label"], format!("Acme Health:{email}"), "{uri}");
    assert_eq!(uri["issuer"], "Acme Health", "{uri}");
    assert_eq!(uri["name"], email.as_str(), "{uri}");
    assert_eq!(uri["secret"], secret.as_str(), "{uri}");
    assert_eq!(uri["digits"], 6, "{uri}");
    assert_eq!(uri["interval"], 30, "{uri}");
    assert_eq!(uri["digest"], "sha1", "{uri}");
    let expires_in = started.expires_at.unwrap().seconds - unix_now() as i64;
    assert!(
        (570..=630).contains(&expires_in),
        "about ten minutes: {expires_in}"
    );

    let mut totp = Authenticator::new(&started);
    let replaced = Authenticator::new(&first);
    code_invalid(confirm(&app, &session.access_token, &replaced.code(current_step())).await);
    code_invalid(confirm(&app, &session.access_token, &totp.wrong_code()).await);
    let confirmed = confirm(&app, &session.access_token, &totp.fresh_code().await)
        .await
        .unwrap();
    assert_recovery_code_shape(&confirmed.recovery_codes);
    assert_eq!(confirmed.sessions_ended, 2);
    assert_ended(&app, &other_a.access_token).await;
    assert_ended(&app, &other_b.access_token).await;
    refresh(&app, &other_a.refresh_token)
        .await
        .expect_err("an ended session does not refresh");

    // The enrolling session goes on, still with one factor.
    let p = principal(&app, &session.access_token).await;
    assert_eq!((p.amr.as_slice(), p.aal), (&["pwd".to_string()][..], 1));
    refused(
        start(&app, &session.access_token).await,
        Code::AlreadyExists,
        "MFA_ALREADY_ENROLLED",
    );
}

// ---------------------------------------------------------------------------------------------
// Signing in with two factors

#[tokio::test]
async fn with_an_authenticator_a_password_login_needs_a_code_and_the_session_records_both_factors()
{
    let app = TestApp::start().await;
    let mut user = enrolled(&app, "mfa-login").await;
    let before = principal(&app, &user.session.access_token).await;
    assert_eq!(before.amr, ["pwd"]);
    assert_eq!(before.aal, 1);
    assert!(before.auth_time.is_some());
    let listed = methods(&app, &user.session.access_token).await;
    assert!(listed.totp_enrolled && listed.totp_enrolled_at.is_some());
    assert_eq!(listed.recovery_codes_remaining, 10);

    let answer = app.login_response(&user.email, PASSWORD).await.unwrap();
    assert!(
        answer.tokens.is_none(),
        "no tokens before the second factor: {answer:?}"
    );
    let ch = answer.mfa_challenge.expect("a challenge");
    assert_eq!(ch.methods, ["totp", "recovery_code"]);
    let expires_in = ch.expires_at.unwrap().seconds - unix_now() as i64;
    assert!((1..=330).contains(&expires_in), "{expires_in}");

    let tokens = complete_totp(&app, &ch.challenge, &user.totp.fresh_code().await)
        .await
        .unwrap();
    assert!(!tokens.access_token.is_empty() && !tokens.refresh_token.is_empty());
    assert_eq!(tokens.user.as_ref().unwrap().id, user.user_id);
    let p = principal(&app, &tokens.access_token).await;
    assert_eq!(p.amr, ["pwd", "totp"]);
    assert_eq!(p.aal, 2);
    let auth_time = p.auth_time.expect("auth_time").seconds;
    assert!((unix_now() as i64 - auth_time).abs() < 120, "{auth_time}");
    refused(
        complete_recovery(&app, &ch.challenge, &user.recovery_codes[0]).await,
        Code::Unauthenticated,
        "MFA_CHALLENGE_INVALID",
    );
    assert!(methods(&app, &tokens.access_token)
        .await
        .totp_last_used_at
        .is_some());

    // A recovery code, typed in capitals with a space for the dash.
    let typed = format!(
        " {} ",
        user.recovery_codes[1].to_uppercase().replace('-', " ")
    );
    let ch = challenge(&app, &user.email).await;
    let tokens = complete_recovery(&app, &ch, &typed).await.unwrap();
    let p = principal(&app, &tokens.access_token).await;
    assert_eq!(p.amr, ["pwd", "rcode"]);
    assert_eq!(p.aal, 2);
    assert_eq!(
        methods(&app, &tokens.access_token)
            .await
            .recovery_codes_remaining,
        9
    );
    let ch = challenge(&app, &user.email).await;
    code_invalid(complete_recovery(&app, &ch, &user.recovery_codes[1]).await);
}

#[tokio::test]
async fn a_sign_in_by_emailed_code_also_asks_for_the_second_factor() {
    let app = TestApp::start().await;
    let mut user = enrolled(&app, "mfa-code-login").await;
    let code = mailed_code(&app, &user.email, CodePurpose::Login).await;
    let pair = otp(&app)
        .login_with_code(LoginWithCodeRequest {
            email: user.email.clone(),
            code,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pair.tokens.is_none(), "{pair:?}");
    let ch = pair.mfa_challenge.expect("a challenge").challenge;
    let tokens = complete_totp(&app, &ch, &user.totp.fresh_code().await)
        .await
        .unwrap();
    let p = principal(&app, &tokens.access_token).await;
    assert_eq!(p.amr, ["otp", "totp"]);
    assert_eq!(p.aal, 2);
}

// ---------------------------------------------------------------------------------------------
// The attacker's view of codes and challenges

#[tokio::test]
async fn codes_one_step_off_work_but_far_off_and_already_used_ones_do_not() {
    let app = TestApp::start_with_config(|c| c.lockout_threshold = 100).await;
    let email = email("mfa-window");
    let session = verified_signed_in(&app, &email).await;
    away_from_a_step_boundary().await;
    let s = current_step();
    let started = start(&app, &session.access_token).await.unwrap();
    let totp = Authenticator::new(&started);
    let codes = totp_codes(&totp.uri, &[s - 3, s - 1, s, s + 1, s + 3]);
    let [back3, back1, now, next, ahead3] = codes.as_slice() else {
        unreachable!()
    };

    // An app whose clock is a step behind confirms.
    let confirmed = confirm(&app, &session.access_token, back1).await.unwrap();

    let ch = challenge(&app, &email).await;
    code_invalid(complete_totp(&app, &ch, back3).await);
    code_invalid(complete_totp(&app, &ch, ahead3).await);
    // Replay of the code that confirmed the enrolment.
    code_invalid(complete_totp(&app, &ch, back1).await);
    // An app whose clock is a step ahead signs in; the challenge survived the wrong codes.
    complete_totp(&app, &ch, next).await.unwrap();

    // That code is spent, and so is every earlier step's, though still inside the window.
    let ch = challenge(&app, &email).await;
    code_invalid(complete_totp(&app, &ch, next).await);
    code_invalid(complete_totp(&app, &ch, now).await);
    complete_recovery(&app, &ch, &confirmed.recovery_codes[0])
        .await
        .expect("the challenge still works");
}

#[tokio::test]
async fn a_challenge_survives_a_wrong_code_but_dies_after_five() {
    let app = TestApp::start_with_config(|c| c.lockout_threshold = 100).await;
    let mut user = enrolled(&app, "mfa-attempts").await;

    let ch = challenge(&app, &user.email).await;
    code_invalid(complete_totp(&app, &ch, &user.totp.wrong_code()).await);
    complete_totp(&app, &ch, &user.totp.fresh_code().await)
        .await
        .expect("a typo does not end the challenge");

    let ch = challenge(&app, &user.email).await;
    for attempt in 1..=5 {
        let status = complete_totp(&app, &ch, &user.totp.wrong_code())
            .await
            .unwrap_err();
        let why = reason(&status);
        assert!(
            why == "MFA_CODE_INVALID" || (attempt == 5 && why == "MFA_CHALLENGE_INVALID"),
            "attempt {attempt}: {status:?}"
        );
    }
    refused(
        complete_recovery(&app, &ch, &user.recovery_codes[0]).await,
        Code::Unauthenticated,
        "MFA_CHALLENGE_INVALID",
    );
    // Only that challenge is dead: the account signs in.
    let ch = challenge(&app, &user.email).await;
    complete_recovery(&app, &ch, &user.recovery_codes[0])
        .await
        .expect("a new challenge works");
}

#[tokio::test]
async fn wrong_codes_lock_the_second_factor_and_the_right_password_buys_no_more_guesses() {
    let app = TestApp::start_with_config(|c| {
        c.lockout_threshold = 3;
        c.lockout_base_delay = Duration::from_secs(120);
        c.login_attempts_per_address_per_minute = 0;
    })
    .await;
    let mut user = enrolled(&app, "mfa-lock").await;
    let ch = challenge(&app, &user.email).await;
    for attempt in 1..=3 {
        let status = complete_totp(&app, &ch, &user.totp.wrong_code())
            .await
            .unwrap_err();
        let why = reason(&status);
        assert!(
            why == "MFA_CODE_INVALID" || (attempt == 3 && why == "ACCOUNT_LOCKED"),
            "attempt {attempt}: {status:?}"
        );
    }
    // Locked: the right code is refused, on this challenge and on a fresh one. The second
    // factor has a counter of its own under the lockout policy, which a right password does
    // not clear (the password gets the attacker new challenges, never new guesses).
    refused(
        complete_totp(&app, &ch, &user.totp.fresh_code().await).await,
        Code::ResourceExhausted,
        "ACCOUNT_LOCKED",
    );
    let fresh = challenge(&app, &user.email).await;
    refused(
        complete_totp(&app, &fresh, &user.totp.fresh_code().await).await,
        Code::ResourceExhausted,
        "ACCOUNT_LOCKED",
    );
}

#[tokio::test]
async fn knowing_the_password_gives_no_unlimited_guesses_at_the_code() {
    // An attacker with the password asks for a new challenge after every wrong code.
    let app = TestApp::start_with_config(|c| {
        c.lockout_threshold = 3;
        c.lockout_base_delay = Duration::from_secs(120);
        c.login_attempts_per_address_per_minute = 0;
    })
    .await;
    let mut user = enrolled(&app, "mfa-brute").await;
    for attempt in 1..=3 {
        let ch = challenge(&app, &user.email).await;
        let status = complete_totp(&app, &ch, &user.totp.wrong_code())
            .await
            .unwrap_err();
        let why = reason(&status);
        assert!(
            why == "MFA_CODE_INVALID" || (attempt == 3 && why == "ACCOUNT_LOCKED"),
            "attempt {attempt}: {status:?}"
        );
    }
    let locked = match app.login_response(&user.email, PASSWORD).await {
        Err(status) => status,
        Ok(answer) => {
            let ch = answer.mfa_challenge.expect("a challenge").challenge;
            complete_totp(&app, &ch, &user.totp.fresh_code().await)
                .await
                .expect_err("three wrong codes in a row lock the account, whatever the password")
        }
    };
    assert_eq!(
        (locked.code(), reason(&locked).as_str()),
        (Code::ResourceExhausted, "ACCOUNT_LOCKED"),
        "{locked:?}"
    );
}

#[tokio::test]
async fn of_sixteen_concurrent_completions_of_one_challenge_exactly_one_signs_in() {
    let app = TestApp::start_with_config(|c| c.lockout_threshold = 100).await;
    let mut user = enrolled(&app, "mfa-race").await;
    let ch = challenge(&app, &user.email).await;
    let totp = user.totp.fresh_code().await;
    // Nine distinct recovery codes and seven copies of the current TOTP code, all valid.
    let mut attempts: Vec<(String, String)> = user.recovery_codes[..9]
        .iter()
        .map(|rc| (String::new(), rc.clone()))
        .collect();
    attempts.extend((0..7).map(|_| (totp.clone(), String::new())));

    let outcomes = race(&app, attempts.into_iter().map(|(t, r)| (ch.clone(), t, r))).await;
    let winners: Vec<&TokenPair> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    // The losers are told the challenge (or the code) is spent, or, when too many attempts hit
    // the account's counter at the same instant, to come back in a second (ACCOUNT_LOCKED with
    // RetryInfo 1 s; the account is not locked: lockout_threshold = 100).
    for status in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        let why = reason(status);
        assert!(
            (status.code() == Code::Unauthenticated
                && ["MFA_CHALLENGE_INVALID", "MFA_CODE_INVALID"].contains(&why.as_str()))
                || (status.code() == Code::ResourceExhausted && why == "ACCOUNT_LOCKED"),
            "a loser of the race: {status:?}"
        );
    }
    // One new session: the enrolling one and the winner's.
    assert_eq!(session_count(&app, &winners[0].access_token).await, 2);
    // The losers' recovery codes are not spent: at most the winner's is gone.
    let left = methods(&app, &winners[0].access_token)
        .await
        .recovery_codes_remaining;
    assert!(left == 10 || left == 9, "recovery codes left: {left}");

    // One recovery code, eight challenges at once: it opens one of them.
    let mut challenges = Vec::new();
    for _ in 0..8 {
        challenges.push(challenge(&app, &user.email).await);
    }
    let spare = user.recovery_codes[9].clone();
    let outcomes = race(
        &app,
        challenges
            .into_iter()
            .map(|c| (c, String::new(), spare.clone())),
    )
    .await;
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 1, "a recovery code is used once: {outcomes:?}");
    // Attempts on one account at the same instant may also be answered as a lockout would
    // (RESOURCE_EXHAUSTED with RetryInfo), as password attempts are.
    for status in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        let why = reason(status);
        assert!(
            why == "MFA_CODE_INVALID"
                || (status.code() == Code::ResourceExhausted && why == "ACCOUNT_LOCKED"),
            "{status:?}"
        );
    }
}

/// Runs every (challenge, totp_code, recovery_code) CompleteMfa at the same moment.
async fn race(
    app: &TestApp,
    attempts: impl Iterator<Item = (String, String, String)>,
) -> Vec<Result<TokenPair, Status>> {
    let attempts: Vec<_> = attempts.collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(attempts.len()));
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(challenge, totp_code, recovery_code)| {
            let barrier = barrier.clone();
            // Each on its own connection, as separate clients would be.
            let addr = app.addr;
            tokio::spawn(async move {
                let channel = Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = MfaServiceClient::new(channel);
                barrier.wait().await;
                client
                    .complete_mfa(CompleteMfaRequest {
                        challenge,
                        totp_code,
                        recovery_code,
                    })
                    .await
                    .map(|r| r.into_inner().tokens.expect("tokens"))
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

#[tokio::test]
async fn another_accounts_codes_do_not_complete_a_challenge() {
    let app = TestApp::start_with_config(|c| c.lockout_threshold = 100).await;
    let mut alice = enrolled(&app, "mfa-alice").await;
    let mut mallory = enrolled(&app, "mfa-mallory").await;

    let ch = challenge(&app, &alice.email).await;
    code_invalid(complete_totp(&app, &ch, &mallory.totp.fresh_code().await).await);
    code_invalid(complete_recovery(&app, &ch, &mallory.recovery_codes[0]).await);
    code_invalid(
        step_up(
            &app,
            &alice.session.access_token,
            "",
            &mallory.recovery_codes[0],
        )
        .await,
    );

    let tokens = complete_totp(&app, &ch, &alice.totp.fresh_code().await)
        .await
        .expect("alice's own code");
    assert_eq!(tokens.user.unwrap().id, alice.user_id);
    // Mallory's recovery code was not spent on Alice's challenge.
    let ch = challenge(&app, &mallory.email).await;
    let tokens = complete_recovery(&app, &ch, &mallory.recovery_codes[0])
        .await
        .unwrap();
    assert_eq!(tokens.user.unwrap().id, mallory.user_id);
}

#[tokio::test]
async fn forged_and_malformed_challenges_and_codes_are_refused_without_internal_errors() {
    let app = TestApp::start_with_config(|c| c.lockout_threshold = 100).await;
    let mut user = enrolled(&app, "mfa-forged").await;
    let ch = challenge(&app, &user.email).await;
    let code = user.totp.fresh_code().await;

    let mut flipped = ch.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let random: String = {
        use rand::Rng;
        rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(ch.len().max(43))
            .map(char::from)
            .collect()
    };
    let forged = [
        String::new(),
        "x".into(),
        random,
        flipped,
        format!("{ch}A"),
        ch[..ch.len() / 2].to_string(),
        "c".repeat(10 * 1024),
        "ч🙂\u{0}\u{202e}".into(),
        user.session.access_token.clone(),
        user.session.refresh_token.clone(),
    ];
    for forged in &forged {
        let status = complete_totp(&app, forged, &code).await.unwrap_err();
        let ok = status.code() == Code::InvalidArgument
            || (status.code() == Code::Unauthenticated
                && reason(&status) == "MFA_CHALLENGE_INVALID");
        assert!(
            ok,
            "challenge {:?}: {status:?}",
            &forged[..forged.len().min(40)]
        );
    }

    // Exactly one of the two codes.
    let status = complete(&app, &ch, &code, &user.recovery_codes[0])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = complete(&app, &ch, "", "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for garbage in ["abcdef", "1234567", &"9".repeat(10 * 1024)] {
        let status = complete_totp(&app, &ch, garbage).await.unwrap_err();
        assert!(
            status.code() == Code::InvalidArgument || reason(&status) == "MFA_CODE_INVALID",
            "code {:?}: {status:?}",
            &garbage[..garbage.len().min(10)]
        );
    }

    // None of that used up the real challenge.
    complete_totp(&app, &ch, &code)
        .await
        .expect("the real challenge still works");
}

// ---------------------------------------------------------------------------------------------
// Step-up and MFA-gated permissions

#[tokio::test]
async fn step_up_raises_a_session_to_two_factors_for_permissions_that_require_them() {
    let app = TestApp::start_with_config(|c| {
        c.mfa_required_permissions = vec!["orgs.create".into()];
    })
    .await;
    let plain = app.signed_in(&email("mfa-plain")).await;
    let (_, guest) = with_role(&app, &email("mfa-guest"), "guest").await;
    let (_, moderator) = with_role(&app, &email("mfa-moderator"), "moderator").await;

    assert_eq!(
        authorize(&app, &plain.access_token, "orgs.create", "").await,
        (false, "MFA_ENROLLMENT_REQUIRED".into())
    );
    // A role that does not hold the permission keeps its own reason.
    assert_eq!(
        authorize(&app, &guest.access_token, "orgs.create", "").await,
        (false, "ROLE_TOO_LOW".into())
    );
    // Permissions not on the list are unaffected.
    assert!(
        authorize(&app, &moderator.access_token, "users.read", "")
            .await
            .0
    );
    assert_eq!(
        authorize(&app, &plain.access_token, "users.read", "").await,
        (false, "ROLE_TOO_LOW".into())
    );
    refused(
        step_up(&app, &plain.access_token, "123456", "").await,
        Code::FailedPrecondition,
        "MFA_NOT_ENROLLED",
    );

    let mut user = enrolled(&app, "mfa-stepup").await;
    let session = user.session.clone();
    assert_eq!(
        authorize(&app, &session.access_token, "orgs.create", "").await,
        (false, "MFA_REQUIRED".into())
    );
    code_invalid(step_up(&app, &session.access_token, &user.totp.wrong_code(), "").await);
    let up = step_up(
        &app,
        &session.access_token,
        &user.totp.fresh_code().await,
        "",
    )
    .await
    .unwrap();
    assert!(up.access_token_expires_at.is_some());
    let p = up.principal.unwrap();
    assert_eq!(p.aal, 2);
    assert_eq!(p.session_id, session.session_id, "the same session");
    assert!(p.amr.contains(&"totp".to_string()), "{:?}", p.amr);
    assert!(
        authorize(&app, &up.access_token, "orgs.create", "").await.0,
        "allowed after step-up"
    );
    // keyward's own RPCs follow the same rule.
    let create = |token: &str| {
        let request = bearer(
            CreateOrgRequest {
                name: "Stepped Up".into(),
                slug: String::new(),
                website: String::new(),
            },
            token,
        );
        let mut client = orgs(&app);
        async move { client.create_org(request).await.map(|r| r.into_inner()) }
    };
    let status = create(&plain.access_token).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    create(&up.access_token)
        .await
        .expect("a stepped-up session creates an organization");
    assert_eq!(principal(&app, &up.access_token).await.aal, 2);

    // The session's refreshes keep the level.
    let refreshed = refresh(&app, &session.refresh_token).await.unwrap();
    assert_eq!(principal(&app, &refreshed.access_token).await.aal, 2);
    assert!(
        authorize(&app, &refreshed.access_token, "orgs.create", "")
            .await
            .0
    );

    // A session that signed in with two factors needs no step-up.
    let ch = challenge(&app, &user.email).await;
    let tokens = complete_recovery(&app, &ch, &user.recovery_codes[0])
        .await
        .unwrap();
    assert!(
        authorize(&app, &tokens.access_token, "orgs.create", "")
            .await
            .0
    );
}

#[tokio::test]
async fn envoy_routes_that_require_mfa_deny_one_factor_sessions() {
    let app = TestApp::start_with_config(|c| {
        c.mfa_required_permissions = vec!["orgs.create".into()];
    })
    .await;
    let plain = app.signed_in(&email("mfa-envoy-plain")).await;
    let user = enrolled(&app, "mfa-envoy").await;
    let one_factor = user.session.access_token.clone();
    let two_factors = step_up(&app, &one_factor, "", &user.recovery_codes[0])
        .await
        .unwrap()
        .access_token;

    for route in [
        &[("mfa", "required")][..],
        &[("permission", "orgs.create")][..],
    ] {
        assert_eq!(
            denial(&check(&app, &plain.access_token, route).await),
            (7, 403, "MFA_ENROLLMENT_REQUIRED".into()),
            "{route:?}"
        );
        assert_eq!(
            denial(&check(&app, &one_factor, route).await),
            (7, 403, "MFA_REQUIRED".into()),
            "{route:?}"
        );
        let r = check(&app, &two_factors, route).await;
        assert_eq!(r.status.as_ref().unwrap().code, 0, "{route:?}: {r:?}");
    }
    // A route that asks for neither lets one factor through.
    let r = check(&app, &one_factor, &[]).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
}

#[tokio::test]
async fn an_organization_that_requires_mfa_asks_two_factors_for_every_check_in_it() {
    let app = TestApp::start().await;
    let mut owner = enrolled(&app, "mfa-org-owner").await;
    let ch = challenge(&app, &owner.email).await;
    let owner2 = complete_totp(&app, &ch, &owner.totp.fresh_code().await)
        .await
        .unwrap()
        .access_token;
    let owner1 = owner.session.access_token.clone();

    let org = orgs(&app)
        .create_org(bearer(
            CreateOrgRequest {
                name: "Two Factor Clinic".into(),
                slug: String::new(),
                website: String::new(),
            },
            &owner2,
        ))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    let mut members = Vec::new();
    for (tag, role) in [
        ("mfa-org-admin", OrgRole::Admin),
        ("mfa-org-member", OrgRole::Member),
    ] {
        let email = email(tag);
        orgs(&app)
            .create_member(bearer(
                CreateMemberRequest {
                    org_id: org.id.clone(),
                    email: email.clone(),
                    display_name: tag.into(),
                    password: PASSWORD.into(),
                    role: role as i32,
                    department: "cardiology".into(),
                },
                &owner2,
            ))
            .await
            .expect("create member");
        members.push(app.login(&email, PASSWORD).await.unwrap().access_token);
    }
    let (admin, member) = (members[0].as_str(), members[1].as_str());
    let outsider = app.signed_in(&email("mfa-org-outsider")).await.access_token;

    let require = |token: &str, on: bool| {
        let request = UpdateOrgRequest {
            org_id: org.id.clone(),
            require_mfa: Some(on),
            ..Default::default()
        };
        let mut client = orgs(&app);
        let request = bearer(request, token);
        async move { client.update_org(request).await.map(|r| r.into_inner()) }
    };
    let get = |token: &str| {
        let request = bearer(
            GetOrgRequest {
                org_id: org.id.clone(),
            },
            token,
        );
        let mut client = orgs(&app);
        async move {
            client
                .get_org(request)
                .await
                .unwrap()
                .into_inner()
                .organization
                .unwrap()
        }
    };

    assert!(!get(&owner2).await.require_mfa);
    refused(
        require(admin, true).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert!(
        !get(&owner2).await.require_mfa,
        "an admin may not turn it on"
    );
    let updated = require(&owner2, true).await.expect("the owner turns it on");
    assert!(updated.organization.unwrap().require_mfa);
    assert!(get(&owner2).await.require_mfa);
    let status = require(admin, false).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(get(&owner2).await.require_mfa);

    // keyward's own RPCs in the organization follow the same rule.
    let status = orgs(&app)
        .get_org(bearer(
            GetOrgRequest {
                org_id: org.id.clone(),
            },
            member,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let id = org.id.as_str();
    assert_eq!(
        authorize(&app, member, "org.read", id).await,
        (false, "MFA_ENROLLMENT_REQUIRED".into())
    );
    assert_eq!(
        authorize(&app, admin, "org.write", id).await,
        (false, "MFA_ENROLLMENT_REQUIRED".into())
    );
    assert_eq!(
        authorize(&app, &owner1, "org.read", id).await,
        (false, "MFA_REQUIRED".into())
    );
    assert!(authorize(&app, &owner2, "org.read", id).await.0);
    assert!(authorize(&app, &owner2, "org.delete", id).await.0);
    // Role and membership denials keep their reasons.
    assert_eq!(
        authorize(&app, member, "org.delete", id).await,
        (false, "ORG_ROLE_TOO_LOW".into())
    );
    assert_eq!(
        authorize(&app, &outsider, "org.read", id).await,
        (false, "NOT_A_MEMBER".into())
    );
    // Checks outside the organization are unaffected.
    assert_eq!(
        authorize(&app, member, "orgs.create", "").await,
        (true, "GRANTED_BY_ROLE".into())
    );

    // Behind Envoy, a route that names the organization (`org_id_header`) without asking for a
    // permission still needs two factors of its members: the upstream would otherwise trust
    // `x-keyward-org-role` from a one-factor session. A non-member passes without org headers.
    let org_route = |token: &str| {
        let mut request = http_request(token, &[("org_id_header", "x-org-id")]);
        let http = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.headers.insert("x-org-id".into(), org.id.clone());
        let mut client = AuthorizationClient::new(app.channel());
        async move { client.check(request).await.unwrap().into_inner() }
    };
    let refused_member = org_route(member).await;
    assert_eq!(
        denial(&refused_member),
        (
            Code::PermissionDenied as i32,
            403,
            "MFA_ENROLLMENT_REQUIRED".into()
        )
    );
    let refused_owner = org_route(&owner1).await;
    assert_eq!(denial(&refused_owner).2, "MFA_REQUIRED");
    let allowed = |r: &CheckResponse| {
        matches!(r.http_response, Some(HttpResponse::OkResponse(_)))
            && r.status.as_ref().is_some_and(|s| s.code == 0)
    };
    let passed = org_route(&owner2).await;
    assert!(allowed(&passed), "{passed:?}");
    let outsider_passes = org_route(&outsider).await;
    assert!(allowed(&outsider_passes), "{outsider_passes:?}");
}

// ---------------------------------------------------------------------------------------------
// Managing the second factor

#[tokio::test]
async fn disabling_totp_ends_other_sessions_mails_a_notice_and_logins_give_tokens_again() {
    let app = TestApp::start().await;
    let mut user = enrolled(&app, "mfa-disable").await;
    let ch = challenge(&app, &user.email).await;
    let other = complete_totp(&app, &ch, &user.totp.fresh_code().await)
        .await
        .unwrap();
    let token = user.session.access_token.clone();

    code_invalid(disable(&app, &token, &user.totp.wrong_code(), "").await);
    let mail_before = settled_mail(&user.email).await;
    let disabled = disable(&app, &token, "", &user.recovery_codes[0])
        .await
        .unwrap();
    assert_eq!(disabled.sessions_ended, 1);
    assert_ended(&app, &other.access_token).await;
    app.authenticate(&token)
        .await
        .expect("the calling session goes on");

    let notice = new_mail(&user.email, &mail_before, |_| true).await;
    assert!(
        !notice.text.contains(&user.totp.secret) && !notice.html.contains(&user.totp.secret),
        "{notice:?}"
    );

    let pair = assert_logs_in_with_one_factor(&app, &user.email).await;
    let p = principal(&app, &pair.access_token).await;
    assert_eq!((p.amr, p.aal), (vec!["pwd".to_string()], 1));
    let listed = methods(&app, &token).await;
    assert!(!listed.totp_enrolled, "{listed:?}");
    assert_eq!(listed.recovery_codes_remaining, 0);
    refused(
        disable(&app, &token, "", &user.recovery_codes[1]).await,
        Code::FailedPrecondition,
        "MFA_NOT_ENROLLED",
    );
    refused(
        step_up(&app, &token, "", &user.recovery_codes[1]).await,
        Code::FailedPrecondition,
        "MFA_NOT_ENROLLED",
    );
}

#[tokio::test]
async fn regenerated_recovery_codes_replace_the_old_ones() {
    let app = TestApp::start().await;
    let mut user = enrolled(&app, "mfa-regenerate").await;
    let token = user.session.access_token.clone();
    code_invalid(regenerate(&app, &token, &user.totp.wrong_code()).await);
    let fresh = regenerate(&app, &token, &user.totp.fresh_code().await)
        .await
        .unwrap();
    assert_recovery_code_shape(&fresh);
    assert!(
        fresh.iter().all(|c| !user.recovery_codes.contains(c)),
        "{fresh:?}"
    );
    assert_eq!(methods(&app, &token).await.recovery_codes_remaining, 10);

    let ch = challenge(&app, &user.email).await;
    code_invalid(complete_recovery(&app, &ch, &user.recovery_codes[0]).await);
    complete_recovery(&app, &ch, &fresh[0])
        .await
        .expect("a new recovery code works");
}

#[tokio::test]
async fn an_admin_resets_a_users_mfa_but_not_a_peers() {
    let app = TestApp::start().await;
    let mut target = enrolled(&app, "mfa-lost-phone").await;
    let ch = challenge(&app, &target.email).await;
    let second = complete_totp(&app, &ch, &target.totp.fresh_code().await)
        .await
        .unwrap();
    let peer = enrolled(&app, "mfa-peer-admin").await;
    app.db()
        .await
        .collection::<Document>("users")
        .update_one(
            doc! { "_id": &peer.user_id },
            doc! { "$set": { "role": "admin" } },
        )
        .await
        .unwrap();
    let (_, admin) = with_role(&app, &email("mfa-admin"), "admin").await;
    let (_, user) = with_role(&app, &email("mfa-user"), "user").await;

    refused(
        reset_user_mfa(&app, &user.access_token, &target.user_id).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        reset_user_mfa(&app, &admin.access_token, &peer.user_id).await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    challenge(&app, &peer.email).await; // the peer still has a second factor
    refused(
        reset_user_mfa(
            &app,
            &admin.access_token,
            &uuid::Uuid::new_v4().simple().to_string(),
        )
        .await,
        Code::NotFound,
        "USER_NOT_FOUND",
    );

    let mail_before = settled_mail(&target.email).await;
    let reset = reset_user_mfa(&app, &admin.access_token, &target.user_id)
        .await
        .unwrap();
    assert_eq!(reset.sessions_ended, 2);
    assert_ended(&app, &target.session.access_token).await;
    assert_ended(&app, &second.access_token).await;
    new_mail(&target.email, &mail_before, |_| true).await;
    assert_logs_in_with_one_factor(&app, &target.email).await;
    refused(
        reset_user_mfa(&app, &admin.access_token, &target.user_id).await,
        Code::FailedPrecondition,
        "MFA_NOT_ENROLLED",
    );
}

// ---------------------------------------------------------------------------------------------
// At rest

/// Every collection of the test's database: (name, JSON text, debug text).
async fn dump_all(app: &TestApp) -> Vec<(String, String, String)> {
    use futures::TryStreamExt;
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
        out.push((
            name,
            serde_json::to_string(&docs).unwrap(),
            format!("{docs:?}"),
        ));
    }
    out
}

#[track_caller]
fn assert_nowhere(dump: &[(String, String, String)], needles: &[String]) {
    for (collection, json, debug) in dump {
        for needle in needles {
            assert!(
                !json.contains(needle.as_str()) && !debug.contains(needle.as_str()),
                "{collection} holds {needle:?} in clear"
            );
        }
    }
}

#[tokio::test]
async fn the_database_and_the_audit_trail_hold_no_secret_and_no_code() {
    let app = TestApp::start().await;
    let email = email("mfa-at-rest");
    let session = verified_signed_in(&app, &email).await;
    let started = start(&app, &session.access_token).await.unwrap();
    let secret = started.secret.clone();
    let secrets = vec![secret.clone(), secret.to_lowercase()];
    assert_nowhere(&dump_all(&app).await, &secrets);

    let mut totp = Authenticator::new(&started);
    let mut used = vec![totp.wrong_code()];
    code_invalid(confirm(&app, &session.access_token, &used[0]).await);
    used.push(totp.fresh_code().await);
    let codes = confirm(&app, &session.access_token, &used[1])
        .await
        .unwrap()
        .recovery_codes;
    let ch = challenge(&app, &email).await;
    complete_recovery(&app, &ch, &codes[0]).await.unwrap();
    let ch = challenge(&app, &email).await;
    used.push(totp.wrong_code());
    code_invalid(complete_totp(&app, &ch, &used[2]).await);
    used.push(totp.fresh_code().await);
    complete_totp(&app, &ch, &used[3]).await.unwrap();

    let mfa_docs = app
        .db()
        .await
        .collection::<Document>("mfa")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(mfa_docs, 1, "one mfa document per user");
    let mut needles = secrets;
    for code in &codes {
        needles.push(code.clone());
        needles.push(code.replace('-', ""));
        needles.push(code.to_uppercase());
    }
    let dump = dump_all(&app).await;
    assert_nowhere(&dump, &needles);

    // No six-digit code, right or wrong, in the audit trail (as a value of its own: other
    // numbers may contain the same digits).
    let (_, audit, _) = dump
        .iter()
        .find(|(name, _, _)| name == "audit_events")
        .expect("an audit trail");
    let words: HashSet<&str> = audit.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    for code in &used {
        assert!(!words.contains(code.as_str()), "audit_events holds {code}");
    }
}
