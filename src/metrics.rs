//! Prometheus metrics: every metric's name and labels, the process-wide recorder, `/metrics`
//! over HTTP on its own listener (`metrics_addr`), the tower layer that counts and times RPCs,
//! and one small typed helper per thing counted, so call sites are one line and no name is
//! spelled twice.
//!
//! Built on the `metrics` facade with `metrics-exporter-prometheus`'s recorder. The recorder is
//! global to the process and installed once ([`install`]); until then every helper here is a
//! no-op costing an atomic load. Several keyward instances in one process (the integration
//! tests) share it, and each instance's `/metrics` serves that one registry.
//!
//! Label values come only from fixed sets (enums here, the services and methods keyward
//! serves, an allow-list of MongoDB commands): never an email, token, id, address or any other
//! value a caller chooses.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::error::Error;

// --- names ---
const BUILD_INFO: &str = "keyward_build_info";
const RPC_REQUESTS: &str = "keyward_rpc_requests_total";
const RPC_DURATION: &str = "keyward_rpc_duration_seconds";
const EXT_AUTHZ_DECISIONS: &str = "keyward_ext_authz_decisions_total";
const LOGINS: &str = "keyward_logins_total";
const LOCKOUTS: &str = "keyward_lockouts_total";
const REFRESH_REUSE: &str = "keyward_refresh_token_reuse_total";
const CODE_REQUESTS: &str = "keyward_code_requests_total";
const CODE_FAILED_ATTEMPTS: &str = "keyward_code_failed_attempts_total";
const MAIL_OUTBOX_PENDING: &str = "keyward_mail_outbox_pending_messages";
const MAIL_OUTBOX_OLDEST: &str = "keyward_mail_outbox_oldest_age_seconds";
const MAIL_DELIVERIES: &str = "keyward_mail_deliveries_total";
const HASH_QUEUE: &str = "keyward_hash_pool_queued_jobs";
const HASH_WORKERS: &str = "keyward_hash_pool_workers";
const HASH_BUSY: &str = "keyward_hash_pool_job_duration_seconds";
const HASH_REFUSALS: &str = "keyward_hash_pool_refusals_total";
const CACHE_LOOKUPS: &str = "keyward_cache_lookups_total";
const MONGODB_DURATION: &str = "keyward_mongodb_command_duration_seconds";
const MONGODB_FAILURES: &str = "keyward_mongodb_command_failures_total";

/// Histogram buckets (seconds): from a cached token check (~100 µs) to a slow login (seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The commit keyward was built from, when the build set `KEYWARD_BUILD_COMMIT`.
pub const BUILD_COMMIT: &str = match option_env!("KEYWARD_BUILD_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (the first call; later calls return the same handle) and
/// sets the metrics that are known at start (build info).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("static, non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        let commit: String = BUILD_COMMIT.chars().take(40).collect();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => commit).set(1.0);
        handle
    })
}

fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labelled with the version and commit keyward was built from."
    );
    describe_counter!(
        RPC_REQUESTS,
        "RPCs answered, by service, method and gRPC status code."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its response, by service and method."
    );
    describe_counter!(
        EXT_AUTHZ_DECISIONS,
        "Envoy ext_authz checks by decision (allow, deny, unauthenticated, error)."
    );
    describe_counter!(
        LOGINS,
        "Sign-in attempts by method (password, email_code, oidc, mfa) and outcome."
    );
    describe_counter!(
        LOCKOUTS,
        "Lockouts started after repeated wrong passwords or second-factor codes."
    );
    describe_counter!(
        REFRESH_REUSE,
        "Refresh tokens presented again after rotation (the session was revoked)."
    );
    describe_counter!(
        CODE_REQUESTS,
        "One-time code requests by purpose and outcome (sent, suppressed, rate_limited)."
    );
    describe_counter!(
        CODE_FAILED_ATTEMPTS,
        "Wrong, expired or used-up one-time codes presented, by purpose."
    );
    describe_gauge!(
        MAIL_OUTBOX_PENDING,
        "Messages in the mail outbox waiting for delivery (including retries)."
    );
    describe_gauge!(
        MAIL_OUTBOX_OLDEST,
        Unit::Seconds,
        "Age of the oldest message waiting in the mail outbox (0: none)."
    );
    describe_counter!(
        MAIL_DELIVERIES,
        "Mail delivery attempts by outcome (sent, retry, failed = given up)."
    );
    describe_gauge!(
        HASH_QUEUE,
        "Password hashing jobs waiting for a hashing thread."
    );
    describe_gauge!(HASH_WORKERS, "Password hashing threads.");
    describe_histogram!(
        HASH_BUSY,
        Unit::Seconds,
        "Time a hashing thread spent on one job; the sum is the pool's busy time."
    );
    describe_counter!(
        HASH_REFUSALS,
        "Hashing jobs refused because the queue was full (answered UNAVAILABLE)."
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "In-memory cache lookups by cache and result (hit, miss)."
    );
    describe_histogram!(
        MONGODB_DURATION,
        Unit::Seconds,
        "MongoDB command round trips by command name."
    );
    describe_counter!(
        MONGODB_FAILURES,
        "MongoDB commands that failed (server error or network), by command name."
    );
}

// --- RPCs ---

/// The canonical names of gRPC status codes, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A gRPC status code's name (`UNKNOWN` for a number outside the 17 codes, or no code at all).
pub fn code_name(code: Option<i32>) -> &'static str {
    code.and_then(|c| usize::try_from(c).ok())
        .and_then(|c| CODE_NAMES.get(c).copied())
        .unwrap_or("UNKNOWN")
}

/// What the `service` and `method` labels of anything that is not a known route say.
pub const OTHER: &str = "other";

/// Every route keyward serves: `/package.Service/Method` -> (service, method).
struct Routes {
    methods: HashMap<String, (String, String)>,
    services: HashSet<String>,
}

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        use prost::Message;
        let mut pairs: Vec<(String, String)> = [
            ("envoy.service.auth.v3.Authorization", "Check"),
            ("grpc.health.v1.Health", "Check"),
            ("grpc.health.v1.Health", "Watch"),
            (
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo",
            ),
            (
                "grpc.reflection.v1alpha.ServerReflection",
                "ServerReflectionInfo",
            ),
        ]
        .iter()
        .map(|(s, m)| (s.to_string(), m.to_string()))
        .collect();
        let set = prost_types::FileDescriptorSet::decode(crate::grpc::pb::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    pairs.push((name.clone(), method.name().to_string()));
                }
            }
        }
        Routes {
            services: pairs.iter().map(|(s, _)| s.clone()).collect(),
            methods: pairs
                .into_iter()
                .map(|(s, m)| (format!("/{s}/{m}"), (s, m)))
                .collect(),
        }
    })
}

/// The `service` and `method` labels of a request path: a method keyward serves is named as it
/// is; an unknown method of a known service is `other`, and any other path is `other`/`other`,
/// so a client cannot mint label values.
pub fn rpc_labels(path: &str) -> (&'static str, &'static str) {
    let routes = routes();
    if let Some((service, method)) = routes.methods.get(path) {
        return (service.as_str(), method.as_str());
    }
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(s, _)| routes.services.get(s))
        .map_or(OTHER, String::as_str);
    (service, OTHER)
}

/// Counts and times one answered RPC.
fn rpc_done(labels: (&'static str, &'static str), code: Option<i32>, elapsed: Duration) {
    let (service, method) = labels;
    counter!(RPC_REQUESTS, "service" => service, "method" => method, "code" => code_name(code))
        .increment(1);
    histogram!(RPC_DURATION, "service" => service, "method" => method).record(elapsed);
}

/// An RPC under way, started by `telemetry::RpcOutcomeLayer` (the one layer that sees each
/// call's outcome): counted and timed by service, method and status code when answered, and as
/// CANCELLED if dropped before its answer.
pub struct RpcTimer {
    labels: (&'static str, &'static str),
    started: Instant,
    done: bool,
}

impl RpcTimer {
    /// Starts timing the RPC of request path `path`.
    pub fn start(path: &str) -> Self {
        Self {
            labels: rpc_labels(path),
            started: Instant::now(),
            done: false,
        }
    }

    /// The RPC was answered with `code` (None: not a gRPC answer).
    pub fn answered(mut self, code: Option<i32>) {
        self.done = true;
        rpc_done(self.labels, code, self.started.elapsed());
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        if !self.done {
            let cancelled = Some(tonic::Code::Cancelled as i32);
            rpc_done(self.labels, cancelled, self.started.elapsed());
        }
    }
}

// --- ext_authz ---

/// An ext_authz check's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The caller is known but may not do this (403).
    Deny,
    /// No token, or one that is not valid (401).
    Unauthenticated,
    /// keyward could not decide (503, fail closed).
    Error,
}

impl Decision {
    /// The decision a `CheckResponse` carries, from its status code.
    pub fn of_code(code: i32) -> Self {
        match tonic::Code::from_i32(code) {
            tonic::Code::Ok => Decision::Allow,
            tonic::Code::PermissionDenied => Decision::Deny,
            tonic::Code::Unauthenticated => Decision::Unauthenticated,
            _ => Decision::Error,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Error => "error",
        }
    }
}

pub fn ext_authz(decision: Decision) {
    counter!(EXT_AUTHZ_DECISIONS, "decision" => decision.as_str()).increment(1);
}

// --- sign-in ---

/// How someone signed in (the first step, or `Mfa` for the second).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginMethod {
    Password,
    EmailCode,
    Oidc,
    Mfa,
}

impl LoginMethod {
    fn as_str(self) -> &'static str {
        match self {
            LoginMethod::Password => "password",
            LoginMethod::EmailCode => "email_code",
            LoginMethod::Oidc => "oidc",
            LoginMethod::Mfa => "mfa",
        }
    }
}

/// How a sign-in attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    Success,
    /// The first step passed; a second factor is asked for.
    MfaRequired,
    /// Wrong password, code, second factor or provider answer.
    InvalidCredentials,
    Locked,
    Disabled,
    Unverified,
    RateLimited,
    /// The request itself was malformed.
    InvalidRequest,
    /// keyward could not answer (database, overload, provider down, …).
    Error,
}

impl LoginOutcome {
    /// The outcome of a sign-in's result: `Ok(true)` when the answer is a second-factor
    /// challenge.
    pub fn of(result: Result<bool, &Error>) -> Self {
        match result {
            Ok(false) => LoginOutcome::Success,
            Ok(true) => LoginOutcome::MfaRequired,
            Err(e) => match e {
                Error::InvalidCredentials
                | Error::CodeInvalid
                | Error::MfaCodeInvalid
                | Error::MfaChallengeInvalid
                | Error::FederationStateInvalid
                | Error::FederationAccessDenied
                | Error::FederationCodeInvalid
                | Error::FederationTokenInvalid => LoginOutcome::InvalidCredentials,
                Error::AccountLocked { .. } => LoginOutcome::Locked,
                Error::AccountDisabled => LoginOutcome::Disabled,
                Error::EmailNotVerified | Error::FederatedEmailUnverified => {
                    LoginOutcome::Unverified
                }
                Error::RateLimited { .. } => LoginOutcome::RateLimited,
                Error::InvalidArgument(_) => LoginOutcome::InvalidRequest,
                _ => LoginOutcome::Error,
            },
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Success => "success",
            LoginOutcome::MfaRequired => "mfa_required",
            LoginOutcome::InvalidCredentials => "invalid_credentials",
            LoginOutcome::Locked => "locked",
            LoginOutcome::Disabled => "disabled",
            LoginOutcome::Unverified => "unverified",
            LoginOutcome::RateLimited => "rate_limited",
            LoginOutcome::InvalidRequest => "invalid_request",
            LoginOutcome::Error => "error",
        }
    }
}

/// Counts one sign-in attempt; `result` is `Ok(second factor asked for)` or the error.
pub fn login(method: LoginMethod, result: Result<bool, &Error>) {
    let outcome = LoginOutcome::of(result);
    counter!(LOGINS, "method" => method.as_str(), "outcome" => outcome.as_str()).increment(1);
}

/// Which lockout started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lockout {
    Password,
    SecondFactor,
}

pub fn lockout_started(kind: Lockout) {
    let factor = match kind {
        Lockout::Password => "password",
        Lockout::SecondFactor => "second_factor",
    };
    counter!(LOCKOUTS, "factor" => factor).increment(1);
}

pub fn refresh_reuse_detected() {
    counter!(REFRESH_REUSE).increment(1);
}

// --- one-time codes ---

/// What became of a code request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeRequest {
    /// A code was stored and its mail queued.
    Sent,
    /// Answered as if sent, but nothing went out (no such account, a protected live code, …).
    Suppressed,
    RateLimited,
}

pub fn code_request(purpose: crate::domain::codes::Purpose, outcome: CodeRequest) {
    let outcome = match outcome {
        CodeRequest::Sent => "sent",
        CodeRequest::Suppressed => "suppressed",
        CodeRequest::RateLimited => "rate_limited",
    };
    counter!(CODE_REQUESTS, "purpose" => purpose.as_str(), "outcome" => outcome).increment(1);
}

pub fn code_attempt_failed(purpose: crate::domain::codes::Purpose) {
    counter!(CODE_FAILED_ATTEMPTS, "purpose" => purpose.as_str()).increment(1);
}

// --- mail ---

/// How one delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailDelivery {
    Sent,
    /// Failed; tried again later.
    Retry,
    /// Failed for good (permanent error, or too old).
    Failed,
}

pub fn mail_delivery(outcome: MailDelivery) {
    let outcome = match outcome {
        MailDelivery::Sent => "sent",
        MailDelivery::Retry => "retry",
        MailDelivery::Failed => "failed",
    };
    counter!(MAIL_DELIVERIES, "outcome" => outcome).increment(1);
}

/// The outbox as last looked at: messages waiting and the age of the oldest.
pub fn mail_outbox(pending: u64, oldest_age: Duration) {
    gauge!(MAIL_OUTBOX_PENDING).set(pending as f64);
    gauge!(MAIL_OUTBOX_OLDEST).set(oldest_age.as_secs_f64());
}

// --- hash pool ---

/// Hashing threads started (`delta` > 0) or ended.
pub fn hash_workers(delta: f64) {
    gauge!(HASH_WORKERS).increment(delta);
}

pub fn hash_job_queued() {
    gauge!(HASH_QUEUE).increment(1.0);
}

pub fn hash_job_dequeued() {
    gauge!(HASH_QUEUE).decrement(1.0);
}

pub fn hash_job_done(busy: Duration) {
    histogram!(HASH_BUSY).record(busy);
}

pub fn hash_job_refused() {
    counter!(HASH_REFUSALS).increment(1);
}

// --- caches ---

/// keyward's in-memory caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// Verified access tokens (Authenticate).
    SessionToken,
    /// Whether a session is active (Authenticate).
    SessionState,
    /// A user's role and state (Authorize).
    AccessUser,
    /// A member's place in an organization (Authorize).
    AccessMembership,
    /// An organization's custom roles (Authorize).
    AccessCustomRoles,
    /// Whether a user has a second factor (Authorize).
    AccessSecondFactor,
    /// Whether an organization requires two factors (Authorize).
    AccessOrgPolicy,
    /// Verified API keys.
    ApiKey,
}

impl Cache {
    fn as_str(self) -> &'static str {
        match self {
            Cache::SessionToken => "session_token",
            Cache::SessionState => "session_state",
            Cache::AccessUser => "access_user",
            Cache::AccessMembership => "access_membership",
            Cache::AccessCustomRoles => "access_custom_roles",
            Cache::AccessSecondFactor => "access_second_factor",
            Cache::AccessOrgPolicy => "access_org_policy",
            Cache::ApiKey => "api_key",
        }
    }
}

/// Counts one lookup in `cache`.
pub fn cache(cache: Cache, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!(CACHE_LOOKUPS, "cache" => cache.as_str(), "result" => result).increment(1);
}

// --- MongoDB ---

/// The commands keyward's queries send; anything else is labelled `other`.
const MONGODB_COMMANDS: &[&str] = &[
    "find",
    "insert",
    "update",
    "delete",
    "findAndModify",
    "aggregate",
    "count",
    "distinct",
    "getMore",
    "killCursors",
    "createIndexes",
    "listIndexes",
    "dropIndexes",
    "listCollections",
    "drop",
    "ping",
    "hello",
    "endSessions",
];

/// A command's `command` label: its name if on the allow-list, else `other`.
pub fn mongodb_command_label(name: &str) -> &'static str {
    MONGODB_COMMANDS
        .iter()
        .find(|c| **c == name)
        .copied()
        .unwrap_or(OTHER)
}

/// The driver's command event handler (`ClientOptions::command_event_handler`): times each
/// command and counts failures, labelled by the command's name only.
pub fn mongodb_event_handler() -> mongodb::event::EventHandler<mongodb::event::command::CommandEvent>
{
    use mongodb::event::command::CommandEvent;
    mongodb::event::EventHandler::callback(|event: CommandEvent| match event {
        CommandEvent::Started(_) => {}
        CommandEvent::Succeeded(e) => {
            let command = mongodb_command_label(&e.command_name);
            histogram!(MONGODB_DURATION, "command" => command).record(e.duration);
        }
        CommandEvent::Failed(e) => {
            let command = mongodb_command_label(&e.command_name);
            histogram!(MONGODB_DURATION, "command" => command).record(e.duration);
            counter!(MONGODB_FAILURES, "command" => command).increment(1);
        }
        _ => {}
    })
}

// --- the endpoint ---

/// The exposition's content type (Prometheus text format 0.0.4).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to one HTTP request: `GET`/`HEAD /metrics` renders the registry; anything else is
/// 404 or 405.
fn respond(
    handle: &PrometheusHandle,
    method: &http::Method,
    path: &str,
) -> http::Response<Full<Bytes>> {
    let plain = |status: http::StatusCode, body: &'static str| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static response")
    };
    if path != "/metrics" {
        return plain(http::StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if method != http::Method::GET && method != http::Method::HEAD {
        return plain(http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    // Histogram samples reach the exposition through upkeep: run it on each scrape.
    handle.run_upkeep();
    let body = if method == http::Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(handle.render())
    };
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(body))
        .expect("static response")
}

/// Longest one scrape connection is kept (a slow or idle client is dropped).
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`] until the task is
/// dropped. The exporter keeps samples until upkeep runs; a scrape runs it too, but without
/// scrapes (no Prometheus yet, a long gap) the samples would pile up in memory.
pub async fn upkeep() {
    let handle = install();
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Serves `/metrics` on `listener` until the task is dropped (HTTP/1.1, plain text).
pub async fn serve(listener: TcpListener) {
    let handle = install();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let response = respond(handle, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_routes_keep_their_names_and_everything_else_is_other() {
        assert_eq!(
            rpc_labels("/keyward.v1.AuthService/Login"),
            ("keyward.v1.AuthService", "Login")
        );
        assert_eq!(
            rpc_labels("/envoy.service.auth.v3.Authorization/Check"),
            ("envoy.service.auth.v3.Authorization", "Check")
        );
        assert_eq!(
            rpc_labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(
            rpc_labels("/keyward.v1.OrgService/CreateOrg").0,
            "keyward.v1.OrgService"
        );
        // A known service's unknown method, unknown services and junk mint no label values.
        for path in [
            "/keyward.v1.AuthService/someone@example.com",
            "/keyward.v1.AuthService/Login/extra",
            "/keyward.v1.AuthService/",
        ] {
            assert_eq!(
                rpc_labels(path),
                ("keyward.v1.AuthService", OTHER),
                "{path:?}"
            );
        }
        for path in [
            "/x.Y/Z",
            "/",
            "",
            "/metrics",
            "/keyward.v1.AuthService",
            "keyward.v1.AuthService/Login",
        ] {
            assert_eq!(rpc_labels(path), (OTHER, OTHER), "{path:?}");
        }
    }

    #[test]
    fn every_served_service_is_a_known_route() {
        for service in crate::server::SERVICES {
            assert!(routes().services.contains(*service), "{service}");
        }
        // Every method name is an identifier, so labels stay tidy.
        for (service, method) in routes().methods.values() {
            assert!(!service.is_empty() && !method.is_empty());
            assert!(
                method.chars().all(|c| c.is_ascii_alphanumeric()),
                "{method}"
            );
        }
    }

    #[test]
    fn status_codes_have_their_canonical_names() {
        assert_eq!(code_name(Some(0)), "OK");
        assert_eq!(code_name(Some(3)), "INVALID_ARGUMENT");
        assert_eq!(code_name(Some(16)), "UNAUTHENTICATED");
        assert_eq!(code_name(Some(17)), "UNKNOWN");
        assert_eq!(code_name(Some(-1)), "UNKNOWN");
        assert_eq!(code_name(None), "UNKNOWN");
        for (i, name) in CODE_NAMES.iter().enumerate() {
            let code = tonic::Code::from_i32(i as i32);
            assert_eq!(
                name.replace('_', "").to_ascii_lowercase(),
                format!("{code:?}").to_ascii_lowercase(),
            );
        }
    }

    #[test]
    fn login_outcomes_follow_the_error() {
        use std::time::Duration;
        let of = |e: Error| LoginOutcome::of(Err(&e));
        assert_eq!(LoginOutcome::of(Ok(false)), LoginOutcome::Success);
        assert_eq!(LoginOutcome::of(Ok(true)), LoginOutcome::MfaRequired);
        assert_eq!(
            of(Error::InvalidCredentials),
            LoginOutcome::InvalidCredentials
        );
        assert_eq!(of(Error::CodeInvalid), LoginOutcome::InvalidCredentials);
        assert_eq!(of(Error::MfaCodeInvalid), LoginOutcome::InvalidCredentials);
        let retry_after = Duration::from_secs(1);
        assert_eq!(
            of(Error::AccountLocked { retry_after }),
            LoginOutcome::Locked
        );
        assert_eq!(
            of(Error::RateLimited { retry_after }),
            LoginOutcome::RateLimited
        );
        assert_eq!(of(Error::AccountDisabled), LoginOutcome::Disabled);
        assert_eq!(of(Error::EmailNotVerified), LoginOutcome::Unverified);
        assert_eq!(
            of(Error::invalid("email", "bad")),
            LoginOutcome::InvalidRequest
        );
        assert_eq!(of(Error::NotReady), LoginOutcome::Error);
        assert_eq!(of(Error::Overloaded), LoginOutcome::Error);
    }

    #[test]
    fn ext_authz_decisions_follow_the_check_status() {
        assert_eq!(Decision::of_code(0), Decision::Allow);
        assert_eq!(Decision::of_code(7), Decision::Deny);
        assert_eq!(Decision::of_code(16), Decision::Unauthenticated);
        assert_eq!(Decision::of_code(14), Decision::Error);
        assert_eq!(Decision::of_code(13), Decision::Error);
    }

    #[test]
    fn mongodb_commands_outside_the_allow_list_are_other() {
        assert_eq!(mongodb_command_label("find"), "find");
        assert_eq!(mongodb_command_label("findAndModify"), "findAndModify");
        assert_eq!(mongodb_command_label("users"), OTHER);
        assert_eq!(mongodb_command_label("saslStart"), OTHER);
        assert_eq!(mongodb_command_label(""), OTHER);
    }

    #[test]
    fn the_endpoint_serves_only_metrics() {
        // A recorder of its own: the test does not install the global one.
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let get = http::Method::GET;
        let ok = respond(&handle, &get, "/metrics");
        assert_eq!(ok.status(), http::StatusCode::OK);
        assert_eq!(ok.headers()[http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(
            respond(&handle, &get, "/").status(),
            http::StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&handle, &get, "/metrics/x").status(),
            http::StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&handle, &http::Method::POST, "/metrics").status(),
            http::StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
