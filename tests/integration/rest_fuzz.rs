//! The REST API fuzzed from outside, as an attacker would: schemathesis (pinned, run through
//! `scripts/schemathesis.sh`) generates requests from the project's own OpenAPI file
//! (gateway/openapi/keyward.swagger.json), valid and invalid, and sends them through the real
//! gateway to a real keyward, signed in as a platform admin so the authenticated routes are
//! reached. No answer may be a 5xx, and every answer must match the OpenAPI file (status,
//! content type, body schema). A bounded number of examples and a fixed seed keep the run short
//! and repeatable; gateway/README.md shows how to run a longer campaign.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::*;
use crate::harness::*;

/// Test cases per operation and phase, and the seed: about a minute on 2 idle cores.
const MAX_EXAMPLES: u32 = 20;
const SEED: u64 = 20_261_129;
/// schemathesis is stopped, and the test fails, after this long.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What every response is checked for. The file declares a `default` error response on every
/// operation, so status_code_conformance holds for any status it has a schema for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A finished schemathesis run: whether it passed, and its report.
struct Run {
    passed: bool,
    report: String,
}

/// Runs `scripts/schemathesis.sh --config-file <config> run <openapi> --url <gateway> ...` with
/// `token` as the bearer on every request and `args` added; installs schemathesis first if
/// needed. Blocks, at most [`RUN_LIMIT`].
fn schemathesis(dir: &Path, gw: &Gateway, config: &str, token: &str, args: &[&str]) -> Run {
    let config_path = dir.join(format!(
        "schemathesis-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&config_path, config).unwrap();
    let out_path = config_path.with_extension("out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = Command::new(repo_root().join("scripts/schemathesis.sh"));
    cmd.arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(repo_root().join("gateway/openapi/keyward.swagger.json"))
        .arg("--url")
        .arg(format!("http://{}", gw.addr))
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &SEED.to_string()])
        // One worker: CPython 3.11.7's ast module is not safe to use from several threads,
        // which hypothesis does while describing strategies.
        .args(["--workers", "1"])
        // Nothing remembered between runs: the same seed, the same requests.
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "40"])
        .arg("--no-color")
        .args(args)
        // Anything schemathesis writes stays out of the repository.
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    kill_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("cannot run scripts/schemathesis.sh");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut report = std::fs::read_to_string(&out_path).unwrap_or_default();
    // What was run and how much, for the test log (the report is shown only on failure).
    let generated = report
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or("no summary")
        .trim()
        .to_string();
    eprintln!(
        "rest_fuzz: schemathesis {}: {generated}, {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    if status.is_none() {
        report.push_str(&format!("\n(stopped after {RUN_LIMIT:?})\n"));
    }
    Run {
        passed: status.is_some_and(|s| s.success()),
        report,
    }
}

/// A schemathesis config that sends the given real values half the time in place of generated
/// ones, so that requests also reach the code behind the lookups (an existing organization, a
/// member, a valid token) rather than only NOT_FOUND.
fn config(bindings: &[(&str, &[&str])]) -> String {
    let mut dictionaries = String::new();
    let mut parameters = String::from("[parameters]\n");
    for (i, (key, values)) in bindings.iter().enumerate() {
        // Ids and tokens: nothing TOML would need escaped.
        let quoted: Vec<String> = values
            .iter()
            .map(|v| {
                assert!(
                    v.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
                    "{v:?}"
                );
                format!("\"{v}\"")
            })
            .collect();
        dictionaries.push_str(&format!(
            "[dictionaries.d{i}]\nvalues = [{}]\n",
            quoted.join(", ")
        ));
        parameters.push_str(&format!(
            "\"{key}\" = {{ dictionary = \"d{i}\", probability = 0.5 }}\n"
        ));
    }
    format!("{dictionaries}{parameters}")
}

fn bearer_of(r: &Response) -> String {
    r.body["tokens"]["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token: {r:?}"))
        .to_string()
}

/// A new session of `email` (whose password is [`PASSWORD`]), through REST.
async fn login(gw: &Gateway, email: &str) -> Response {
    let r = gw
        .post("/v1/auth/login", credentials(email, PASSWORD), &[])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r
}

fn must(r: Response, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    r.body
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    // No per-address limits or lockouts: a 429 would hide what is behind it.
    let app = TestApp::start_with_config(|c| {
        c.registrations_per_address_per_hour = 0;
        c.login_attempts_per_address_per_minute = 0;
        c.code_requests_per_address_per_minute = 0;
        c.lockout_threshold = 0;
    })
    .await;
    let gw = Gateway::start(&app).await;

    // A platform admin (every route is open to one), signed in through REST after the role
    // change so the token carries it.
    let admin_email = email("fuzz-admin");
    let (admin_id, _) = crate::users::with_role(&app, &admin_email, "admin").await;
    let admin = bearer_of(&login(&gw, &admin_email).await);
    let auth = format!("Bearer {admin}");
    let auth = [("Authorization", auth.as_str())];

    // Organizations the admin owns, with a member each, for the org and user routes to find.
    let mut org_ids = Vec::new();
    let mut user_ids = Vec::new();
    for i in 0..3 {
        let org = must(
            gw.post(
                "/v1/orgs",
                json!({ "name": format!("Fuzz Clinic {i}") }),
                &auth,
            )
            .await,
            "create org",
        );
        let org_id = org["organization"]["id"].as_str().unwrap().to_string();
        let member = must(
            gw.post(
                &format!("/v1/orgs/{org_id}/members"),
                json!({
                    "email": email("fuzz-member"),
                    "password": PASSWORD,
                    "display_name": "Member",
                }),
                &auth,
            )
            .await,
            "create member",
        );
        user_ids.push(member["member"]["user"]["id"].as_str().unwrap().to_string());
        org_ids.push(org_id);
    }
    let orgs: Vec<&str> = org_ids.iter().map(String::as_str).collect();
    let users: Vec<&str> = user_ids.iter().map(String::as_str).collect();

    let dir = std::env::temp_dir().join(format!(
        "keyward-rest-fuzz-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();

    // Every operation but the two that end the admin's own session, which would turn the rest
    // of the run into 401s.
    let main_config = config(&[
        ("path.org_id", &orgs),
        ("path.user_id", &users),
        ("body.org_id", &orgs),
        ("body.checks[*].org_id", &orgs),
        ("body.access_token", &[admin.as_str()]),
        ("query.user_id", &users),
    ]);
    // Blocking here is fine: keyward runs on its own thread and the gateway is a process.
    let first = schemathesis(
        &dir,
        &gw,
        &main_config,
        &admin,
        &[
            "--exclude-operation-id",
            "Logout",
            "--exclude-operation-id",
            "RevokeSession",
            // The browser's sign-in callback answers 401 to any request without the cookie its
            // start route sets in that browser, by design (login CSRF); a fuzzer holds no such
            // cookie, so every case would be that 401. `gateway::rest_browser_*` and `browser::*`
            // drive it with and without the cookie.
            "--exclude-operation-id",
            "FinishFederatedLogin2",
        ],
    );

    // Then those two, on a session of their own: a user signed up only now, as the first run may
    // have changed the admin's email (which ends the admin's other sessions) or disabled any
    // user it found.
    let user_email = email("fuzz-user");
    must(
        gw.post("/v1/auth/register", credentials(&user_email, PASSWORD), &[])
            .await,
        "register",
    );
    let second_login = login(&gw, &user_email).await;
    let session = second_login.body["tokens"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = bearer_of(&second_login);
    let session_config = config(&[("path.session_id", &[session.as_str()])]);
    let second = schemathesis(
        &dir,
        &gw,
        &session_config,
        &token,
        &[
            "--include-operation-id",
            "Logout",
            "--include-operation-id",
            "RevokeSession",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        first.passed,
        "schemathesis found problems (admin {admin_id}):\n{}",
        tail(&first.report)
    );
    assert!(
        second.passed,
        "schemathesis found problems in Logout/RevokeSession:\n{}",
        tail(&second.report)
    );
    // The runs really reached keyward: a report with test cases, and the admin's token
    // worked for them (or the first run would have warned that authentication failed).
    assert!(first.report.contains("passed"), "{}", tail(&first.report));
    assert!(
        !first.report.contains("Authentication failed"),
        "{}",
        tail(&first.report)
    );
}

/// The end of a long report, where schemathesis puts its failures and summary.
fn tail(report: &str) -> &str {
    let limit = 60_000;
    if report.len() <= limit {
        return report;
    }
    let mut start = report.len() - limit;
    while !report.is_char_boundary(start) {
        start += 1;
    }
    &report[start..]
}
