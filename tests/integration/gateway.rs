//! REST through the real grpc-gateway sidecar (`target/gateway/keyward-gateway`, built by
//! `scripts/gateway.sh build`) in front of a real keyward: plain HTTP/1.0 requests over a socket,
//! as any REST client would send them. Also the drift check of the committed OpenAPI file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/<args>`, returning whether it succeeded and everything it printed.
fn run_script(args: &[&str]) -> (bool, String) {
    let out = Command::new(repo_root().join("scripts/gateway.sh"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("cannot run scripts/gateway.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The gateway binary, (re)built once per test process: `scripts/gateway.sh build` is a no-op
/// when nothing changed, and otherwise keeps the test from exercising stale routes.
pub(crate) fn gateway_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let (ok, out) = run_script(&["build"]);
            let binary = repo_root().join("target/gateway/keyward-gateway");
            if ok && binary.exists() {
                Ok(binary)
            } else {
                Err(out)
            }
        })
        .clone()
        .unwrap_or_else(|out| {
            panic!(
                "scripts/gateway.sh build failed, so target/gateway/keyward-gateway is missing \
                 (it needs Debian's Go and grpc-gateway packages; see gateway/README.md):\n{out}"
            )
        })
}

/// A keyward-gateway process in front of a test keyward, killed when dropped.
pub(crate) struct Gateway {
    pub(crate) addr: SocketAddr,
    pub(crate) child: Child,
}

impl Gateway {
    /// Starts the gateway on a free loopback port and waits until it answers `/healthz`.
    /// Spawned from the test's own thread, so it dies with the test process at the latest.
    pub(crate) async fn start(app: &TestApp) -> Self {
        Self::start_on(app, free_port()).await
    }

    /// As [`Gateway::start`], on `port` (for a provider that must know the callback's address
    /// before the gateway starts).
    pub(crate) async fn start_on(app: &TestApp, port: u16) -> Self {
        let binary = gateway_binary();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(binary);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--grpc-endpoint")
            .arg(app.addr.to_string())
            // Its start/stop lines would land between the test results.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kill_with_parent(&mut cmd);
        let child = cmd.spawn().expect("cannot start keyward-gateway");
        let mut gateway = Self { addr, child };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = gateway.try_request("GET", "/healthz", None, &[]).await {
                assert_eq!(r.status, 200, "{r:?}");
                break;
            }
            if let Some(exit) = gateway.child.try_wait().unwrap() {
                panic!("keyward-gateway exited at start: {exit}");
            }
            assert!(Instant::now() < deadline, "keyward-gateway did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }

    pub(crate) async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", path, None, headers).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Response {
        self.request("POST", path, Some(body), headers).await
    }

    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        self.try_request(method, path, body, headers)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One HTTP/1.0 request on its own connection: the answer ends when the server closes, so
    /// there is no chunked encoding or keep-alive to handle.
    pub(crate) async fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: keyward-gateway-test/1.0\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .map_err(|_| std::io::Error::other("no answer within 30 s"))??;
        Ok(Response::parse(&raw))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// Header names in lower case.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Value,
}

impl Response {
    pub(crate) fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        // JSON, as every answer of the gateway's routes is; anything else (a server's own
        // plain-text refusal) is kept as a JSON string for the assertion to show.
        let body = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
        };
        Self {
            status,
            headers,
            body,
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// keyward's stable reason, which the gateway puts at the top of every error body.
    pub(crate) fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or_default()
    }
}

/// A loopback port free at the moment.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn credentials(email: &str, password: &str) -> Value {
    json!({ "email": email, "password": password })
}

#[tokio::test]
async fn rest_register_login_me_refresh_and_logout() {
    let app = TestApp::start().await;
    let gw = Gateway::start(&app).await;
    let email = email("rest");

    let mut register = credentials(&email, PASSWORD);
    register["display_name"] = json!("Ada");
    let r = gw.post("/v1/auth/register", register, &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user"]["email"], email.as_str());
    assert_eq!(r.body["user"]["display_name"], "Ada");
    // Fields at their default value are sent too, so clients need not guess.
    assert_eq!(r.body["pending_verification"], true);
    assert_eq!(r.body["user"]["role"], "ROLE_USER");

    // Durations are JSON numbers of seconds, not the strings an int64 would be. (Another address:
    // the registration just sent this one a code, and its cool-down has begun.)
    let r = gw
        .post(
            "/v1/otp/send",
            json!({ "email": crate::harness::email("rest-code"), "purpose": "CODE_PURPOSE_LOGIN" }),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body["retry_after_seconds"]
            .as_u64()
            .is_some_and(|s| s > 0)
            && r.body["expires_in"].as_u64().is_some_and(|s| s > 0),
        "{r:?}"
    );

    let r = gw
        .post("/v1/auth/login", credentials(&email, PASSWORD), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["mfa_challenge"].is_null(), "{r:?}");
    let tokens = &r.body["tokens"];
    assert_eq!(tokens["token_type"], "Bearer");
    // A JSON number of seconds, as OAuth 2.0's expires_in (not an int64 string).
    let expires_in = tokens["expires_in"]
        .as_u64()
        .unwrap_or_else(|| panic!("expires_in is not a number: {r:?}"));
    assert!((1..=900).contains(&expires_in), "{r:?}");
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();

    // The HTTP Authorization header reaches keyward as `authorization` metadata.
    let bearer = format!("Bearer {access}");
    let r = gw.get("/v1/auth/me", &[("Authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user"]["email"], email.as_str());

    let r = gw.get("/v1/auth/me", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.reason(), "TOKEN_INVALID");
    assert_eq!(r.body["status"], "UNAUTHENTICATED");

    // The session records the REST client's user agent and the address the gateway saw.
    let r = gw
        .get("/v1/auth/sessions", &[("Authorization", &bearer)])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let session = &r.body["sessions"][0];
    assert_eq!(session["user_agent"], "keyward-gateway-test/1.0", "{r:?}");
    assert_eq!(session["current"], true);

    let r = gw
        .post(
            "/v1/auth/refresh",
            json!({ "refresh_token": refresh.as_str() }),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let new_access = r.body["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(r.body["tokens"]["refresh_token"], refresh.as_str());
    let new_bearer = format!("Bearer {new_access}");
    let r = gw
        .get("/v1/auth/me", &[("Authorization", &new_bearer)])
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    let r = gw
        .post(
            "/v1/auth/logout",
            json!({}),
            &[("Authorization", &new_bearer)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["sessions_ended"], 1);
    let r = gw
        .get("/v1/auth/me", &[("Authorization", &new_bearer)])
        .await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn rest_errors_carry_http_status_and_stable_reason() {
    let app = TestApp::start().await;
    let gw = Gateway::start(&app).await;
    let email = email("rest-errors");
    app.register(&email).await;

    let r = gw
        .post(
            "/v1/auth/login",
            credentials(&email, "not the password at all"),
            &[],
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.reason(), "INVALID_CREDENTIALS");
    assert_eq!(r.body["code"], 16);
    assert_eq!(r.body["status"], "UNAUTHENTICATED");
    let info = r.body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .unwrap_or_else(|| panic!("no ErrorInfo detail: {r:?}"));
    assert_eq!(info["domain"], "keyward");
    assert_eq!(info["reason"], "INVALID_CREDENTIALS");

    let r = gw
        .post("/v1/auth/register", credentials(&email, PASSWORD), &[])
        .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.reason(), "EMAIL_TAKEN");

    let r = gw
        .post(
            "/v1/auth/register",
            credentials("not-an-email", PASSWORD),
            &[],
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.reason(), "INVALID_ARGUMENT");
    let fields: Vec<&str> = r.body["field_violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no field_violations: {r:?}"))
        .iter()
        .filter_map(|v| v["field"].as_str())
        .collect();
    assert_eq!(fields, ["email"], "{r:?}");

    // Malformed JSON never reaches keyward; the gateway answers in the same shape.
    let r = gw
        .request("POST", "/v1/auth/login", Some(json!("not an object")), &[])
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.body["status"], "INVALID_ARGUMENT");

    let r = gw.get("/v1/no/such/route", &[]).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.reason(), "ROUTE_NOT_FOUND");
    let r = gw.get("/v1/auth/login", &[]).await;
    assert_eq!(r.status, 405, "{r:?}");
}

#[tokio::test]
async fn rest_rate_limit_answers_429_with_retry_after_and_ignores_forged_forwarding() {
    // keyward trusts x-forwarded-for, as it would behind the gateway; the gateway appends the
    // peer it saw, so an address the client claims cannot dodge the per-address limit.
    let app = TestApp::start_with_config(|c| {
        c.registrations_per_address_per_hour = 1;
        c.trusted_proxy_hops = 1;
    })
    .await;
    let gw = Gateway::start(&app).await;

    let first = email("rest-limit");
    let r = gw
        .post(
            "/v1/auth/register",
            credentials(&first, PASSWORD),
            &[("X-Forwarded-For", "203.0.113.7")],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    let r = gw
        .post(
            "/v1/auth/register",
            credentials(&email("rest-limit"), PASSWORD),
            &[("X-Forwarded-For", "198.51.100.99")],
        )
        .await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.reason(), "RATE_LIMITED");
    let retry_after: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {r:?}"))
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=3600).contains(&retry_after), "{r:?}");
    assert_eq!(r.body["retry_after_seconds"], retry_after);

    // The session remembers the address the gateway saw, not the one the client claimed.
    let login = gw
        .post(
            "/v1/auth/login",
            credentials(&first, PASSWORD),
            &[("X-Forwarded-For", "203.0.113.7")],
        )
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    let bearer = format!(
        "Bearer {}",
        login.body["tokens"]["access_token"].as_str().unwrap()
    );
    let r = gw
        .get("/v1/auth/sessions", &[("Authorization", &bearer)])
        .await;
    assert_eq!(
        r.body["sessions"][0]["client_address"], "127.0.0.1",
        "{r:?}"
    );
}

#[tokio::test]
async fn gateway_reports_readiness_and_drains_on_sigterm() {
    let app = TestApp::start().await;
    let mut gw = Gateway::start(&app).await;
    let r = gw.get("/readyz", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["status"], "serving");

    // SAFETY: signals our own child, whose pid we hold and have not reaped.
    unsafe {
        libc::kill(gw.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = gw.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
}

/// The committed gateway/openapi/keyward.swagger.json must be what the protos and
/// gateway/keyward.yaml generate today, and every RPC must have a route.
#[test]
fn openapi_file_matches_protos_and_routes() {
    let (ok, out) = run_script(&["check"]);
    assert!(ok, "{out}");
}

/// Registers and signs in `email` through REST, returning its user id and bearer header.
async fn rest_signed_in(gw: &Gateway, email: &str) -> (String, String) {
    let r = gw
        .post("/v1/auth/register", credentials(email, PASSWORD), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.body["user"]["id"].as_str().unwrap().to_string();
    let r = gw
        .post("/v1/auth/login", credentials(email, PASSWORD), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    (
        id,
        format!(
            "Bearer {}",
            r.body["tokens"]["access_token"].as_str().unwrap()
        ),
    )
}

/// The admin routes exercise what the auth routes do not: path parameters, custom verbs
/// (`:disable`), query parameters, PATCH with presence-tracked fields, and 403/404 mapping.
#[tokio::test]
async fn rest_admin_routes_fill_path_query_and_optional_fields() {
    let app = TestApp::start().await;
    let gw = Gateway::start(&app).await;
    let admin_email = email("rest-admin");
    app.register(&admin_email).await;
    app.db()
        .await
        .collection::<bson::Document>("users")
        .update_one(
            bson::doc! { "email": &admin_email },
            bson::doc! { "$set": { "role": keyward::domain::roles::Role::Admin.as_str() } },
        )
        .await
        .unwrap();
    let login = gw
        .post("/v1/auth/login", credentials(&admin_email, PASSWORD), &[])
        .await;
    assert_eq!(login.status, 200, "{login:?}");
    let admin = format!(
        "Bearer {}",
        login.body["tokens"]["access_token"].as_str().unwrap()
    );
    let user_email = email("rest-user");
    let (user_id, user) = rest_signed_in(&gw, &user_email).await;

    let r = gw.get("/v1/users", &[("Authorization", &user)]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.reason(), "PERMISSION_DENIED");

    let r = gw
        .get(
            &format!("/v1/users/{user_id}"),
            &[("Authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user"]["email"], user_email.as_str());

    let prefix = &user_email[..user_email.find('@').unwrap()];
    let r = gw
        .get(
            &format!("/v1/users?email_prefix={prefix}&role=ROLE_USER"),
            &[("Authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let emails: Vec<&str> = r.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(emails, [user_email.as_str()], "{r:?}");

    // A field sent empty is "set to empty", not "unset": presence survives the gateway.
    let path = format!("/v1/users/{user_id}");
    let r = gw
        .request(
            "PATCH",
            &path,
            Some(json!({ "display_name": "" })),
            &[("Authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.body["field_violations"][0]["field"], "display_name");
    let r = gw
        .request(
            "PATCH",
            &path,
            Some(json!({ "display_name": "Grace" })),
            &[("Authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user"]["display_name"], "Grace");
    assert_eq!(r.body["user"]["email"], user_email.as_str());

    let r = gw
        .post(
            &format!("/v1/users/{user_id}:disable"),
            json!({ "reason": "test" }),
            &[("Authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["user"]["status"], "USER_STATUS_DISABLED");
    assert_eq!(r.body["sessions_ended"], 1);
    let r = gw.get("/v1/auth/me", &[("Authorization", &user)]).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = gw
        .post("/v1/auth/login", credentials(&user_email, PASSWORD), &[])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.reason(), "ACCOUNT_DISABLED");

    let r = gw
        .request(
            "DELETE",
            &format!("/v1/users/{user_id}?reason=cleanup"),
            None,
            &[("Authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = gw
        .post(
            &format!("/v1/users/{user_id}:enable"),
            json!({}),
            &[("Authorization", &admin)],
        )
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.reason(), "USER_NOT_FOUND");
}

/// Two-step sign-in over REST: enrolment, a login answered with only `mfa_challenge`, the second
/// step at /v1/auth/mfa (once), and no cache may keep the secrets on the way.
#[tokio::test]
async fn rest_second_factor_enrolment_and_two_step_login() {
    let app = TestApp::start().await;
    let gw = Gateway::start(&app).await;
    let email = email("rest-mfa");
    let (_, bearer) = rest_signed_in(&gw, &email).await;
    // Set-up, not under test here: the address counts as proven (the code flow has its tests).
    app.db()
        .await
        .collection::<bson::Document>("users")
        .update_one(
            bson::doc! { "email": &email },
            bson::doc! { "$set": { "email_verified": true } },
        )
        .await
        .unwrap();

    let r = gw
        .post(
            "/v1/mfa/totp:start",
            json!({}),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    let uri = r.body["otpauth_uri"].as_str().unwrap().to_string();
    let code = crate::mfa::totp_codes(&uri, &[crate::mfa::current_step()]).remove(0);
    let r = gw
        .post(
            "/v1/mfa/totp:confirm",
            json!({ "code": code }),
            &[("Authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let recovery: Vec<String> = serde_json::from_value(r.body["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);

    let r = gw
        .post("/v1/auth/login", credentials(&email, PASSWORD), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Only the challenge: no tokens before the second factor.
    assert!(r.body["tokens"].is_null(), "{r:?}");
    let challenge = r.body["mfa_challenge"]["challenge"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        r.body["mfa_challenge"]["methods"],
        json!(["totp", "recovery_code"])
    );

    let second = json!({ "challenge": challenge, "recovery_code": recovery[0] });
    let r = gw.post("/v1/auth/mfa", second.clone(), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.body["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = gw
        .post(
            "/v1/auth/authenticate",
            json!({ "access_token": access }),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["principal"]["amr"], json!(["pwd", "rcode"]));
    assert_eq!(r.body["principal"]["aal"], 2);

    // The challenge and the recovery code are spent.
    let r = gw.post("/v1/auth/mfa", second, &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.reason(), "MFA_CHALLENGE_INVALID");
    let r = gw
        .get("/v1/mfa", &[("Authorization", &format!("Bearer {access}"))])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["totp_enrolled"], true);
    assert_eq!(r.body["recovery_codes_remaining"], 9);
}

/// A browser signs in with a provider through the sidecar alone: the start route redirects it to
/// the provider with a cookie that binds the flow to it, and the callback route finishes only for
/// the browser with that cookie — someone else's browser opening the same callback URL (login
/// CSRF) gets 401 and the flow stays usable by its owner.
#[tokio::test]
async fn rest_browser_federated_sign_in_is_bound_to_the_browser() {
    use crate::oidc_fixture::{
        callback_from_hostile, hostile_provider, issuers, Scenario, REDIRECT_URI,
    };
    // The test provider sends browsers back to its one registered URI; the test, as the
    // browser, then opens the gateway's callback route with that query, as a browser would when
    // the gateway's route is the registered URI.
    let app =
        TestApp::start_with_config(|c| c.oidc_providers = vec![hostile_provider("corp")]).await;
    let gw = Gateway::start(&app).await;
    let callback_uri = REDIRECT_URI.to_string();

    let start = format!(
        "/v1/federation/corp/authorize?redirect_uri={}",
        url::form_urlencoded::byte_serialize(callback_uri.as_bytes()).collect::<String>()
    );
    let r = gw.get(&start, &[]).await;
    assert_eq!(r.status, 302, "{r:?}");
    let location = r.header("location").expect("a Location").to_string();
    assert!(location.starts_with(&issuers().hostile), "{location}");
    assert!(
        location.contains("code_challenge_method=S256"),
        "{location}"
    );
    let cookie = r.header("set-cookie").expect("a cookie").to_string();
    for part in [
        "__Host-keyward_federation=",
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/;",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();

    let email = email("rest-federated");
    let back = callback_from_hostile(&location, Scenario::Good, &email, &email, true).await;
    let query = format!(
        "/v1/federation/callback?state={}&code={}&scope=openid+email&authuser=0",
        back.state, back.code
    );
    // Another browser opening the callback URL: without the cookie, with its own flow's
    // cookie, with a flow secret smuggled into the URL, or on a path variant the router also
    // sends to the callback route.
    let with_secret = format!("{query}&flow_secret={}", "x".repeat(43));
    let variant = query.replacen("/callback?", "/callback:?", 1);
    for (path, headers) in [
        (&query, vec![]),
        (
            &query,
            vec![("Cookie", "__Host-keyward_federation=someone-elses-secret")],
        ),
        (&with_secret, vec![]),
        (&variant, vec![]),
    ] {
        let r = gw.get(path, &headers).await;
        assert_eq!(r.status, 401, "{path} {headers:?}: {r:?}");
        assert_eq!(r.reason(), "FEDERATION_STATE_INVALID");
    }
    let r = gw.post(&query, json!({}), &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 405, "{r:?}");
    // The browser that started it: signed in, with the provider's extra parameters ignored.
    let r = gw.get(&query, &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["account_created"], true, "{r:?}");
    let access = r.body["tokens"]["access_token"]
        .as_str()
        .unwrap_or_default();
    assert!(!access.is_empty(), "{r:?}");
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the cookie is cleared: {r:?}"
    );
    app.authenticate(access).await.expect("the session works");
    // The same callback again, even with the cookie: the state was used.
    let r = gw.get(&query, &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.reason(), "FEDERATION_STATE_INVALID");

    // Apps that handle the callback themselves use the POST routes.
    let r = gw.get("/v1/federation/providers", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["providers"][0]["id"], "corp");
}
