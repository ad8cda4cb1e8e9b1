//! The `keyward` command as an operator meets it: key generation, bootstrap of the first
//! super_admin, and start-up refusals that name the bad setting.

use std::io::Write;
use std::process::{Command, Stdio};

use keyward::grpc::pb::{AuthenticateRequest, Role};

use crate::harness::*;

#[tokio::test]
async fn keys_generate_then_bootstrap_a_super_admin_who_can_log_in() {
    let out = Keyward::command(["keys", "generate"]).output();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("KEYWARD_SIGNING_KEY="))
        .unwrap()
        .to_string();
    assert!(secret.starts_with("k4.secret."));
    assert!(text.contains("k4.public.") && text.contains("k4.pid."));

    let mut config = test_config();
    config.signing_key = Some(secret.clone());
    let email = email("root");
    let mut child = Keyward::on(
        &config,
        [
            "admin",
            "create-user",
            "--role",
            "super_admin",
            "--display-name",
            "Root",
            "--email",
            &email,
        ],
    )
    .cmd()
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created super_admin user"));

    let app = TestApp::start_with(config).await;
    let pair = app
        .login(&email, PASSWORD)
        .await
        .expect("bootstrapped admin logs in");
    assert!(pair.user.as_ref().unwrap().email_verified);
    let p = app
        .auth()
        .authenticate(AuthenticateRequest {
            access_token: pair.access_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.principal.unwrap().role, Role::SuperAdmin as i32);
}

#[test]
fn serve_refuses_to_start_on_bad_configuration_and_names_the_key() {
    let uri = "mongodb://127.0.0.1:9";
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("KEYWARD_MONGODB_URI", uri)], "KEYWARD_SIGNING_KEY"),
        (
            &[
                ("KEYWARD_MONGODB_URI", uri),
                ("KEYWARD_DEV", "1"),
                ("KEYWARD_GRPC_ADRESS", "x"),
            ],
            "KEYWARD_GRPC_ADRESS",
        ),
        (
            &[
                ("KEYWARD_MONGODB_URI", uri),
                ("KEYWARD_DEV", "1"),
                ("KEYWARD_GRPC_ADDR", "nowhere"),
            ],
            "KEYWARD_GRPC_ADDR",
        ),
    ];
    for (env, named) in cases {
        let mut keyward = Keyward::command(["serve"]);
        keyward.cmd().envs(env.iter().copied());
        let out = keyward.output();
        assert!(!out.status.success(), "started with {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{named} not named in: {stderr}");
    }
}

/// What `scripts/dev.sh` prints for a newcomer works pasted as it is: register, verify the email
/// with the code from the dev mailbox, log in, authenticate — against the real binary in dev
/// mode, without SMTP, through the real grpcurl.
#[tokio::test]
async fn the_dev_walkthrough_works_pasted_as_printed() {
    let data_dir =
        std::env::temp_dir().join(format!("keyward-dev-{}", uuid::Uuid::new_v4().simple()));
    let config = test_config();
    std::fs::create_dir_all(&data_dir).unwrap();
    let log_path = data_dir.join("keyward.log");
    let mut server = Keyward::command(["serve", "--dev"]);
    server
        .env(
            "KEYWARD_MONGODB_URI",
            config.mongodb_uri.as_deref().unwrap(),
        )
        .env("KEYWARD_MONGODB_DATABASE", &config.mongodb_database)
        .listen_on_free_ports()
        .env("KEYWARD_DATA_DIR", &data_dir)
        .cmd()
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(Stdio::inherit());
    let mut server = server.spawn();
    server.channel().await;
    let addr = server.addr.clone();

    let root = env!("CARGO_MANIFEST_DIR");
    let printed = Command::new("bash")
        .arg(format!("{root}/scripts/dev-walkthrough.sh"))
        .arg(&addr)
        .arg(data_dir.join("mail"))
        .output()
        .unwrap();
    assert!(printed.status.success());
    let script = String::from_utf8(printed.stdout).unwrap();
    // Pasted line by line into a shell somewhere else; each line must succeed.
    let run = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", &script])
            .current_dir(std::env::temp_dir())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the walk-through finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walk-through failed:\n{stdout}\n{stderr}"
    );
    // The last call, Authenticate, answers with Ada's principal.
    assert!(
        stdout.contains("\"email\": \"ada@example.com\"") && stdout.contains("\"principal\""),
        "{stdout}"
    );
    let code = std::fs::read_to_string(data_dir.join("mail/ada@example.com.code")).unwrap();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code:?}"
    );

    let _ = server.terminate().await;
    // The log has the one-line marker a newcomer looks for.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("DEV MAIL to ada@example.com") && log.contains(&format!("code: {code}")),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Runs `keyward admin <args>` against `app`'s database; returns (success, stdout + stderr).
fn admin_cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = Keyward::on(&app.config, ["admin"].iter().chain(args)).output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An operator in an incident: lifts a lockout an attacker caused, ends every session of an
/// account, disables it — each from the command line, at once for the serving replica (within
/// `session_cache_ttl`), and audited with the actor `cli`.
#[tokio::test]
async fn an_operator_unlocks_revokes_sessions_and_disables_from_the_command_line() {
    let app = TestApp::start_with_config(|c| c.lockout_threshold = 3).await;
    let victim = email("incident");
    let pair = app.signed_in(&victim).await;
    for _ in 0..3 {
        let _ = app.login(&victim, "not the password").await;
    }
    let locked = app.login(&victim, PASSWORD).await.unwrap_err();
    assert_eq!(reason(&locked), "ACCOUNT_LOCKED");

    let (ok, out) = admin_cli(&app, &["unlock", "--email", &victim]);
    assert!(ok, "{out}");
    let second = app.login(&victim, PASSWORD).await.expect("unlocked");

    let (ok, out) = admin_cli(&app, &["revoke-sessions", "--email", &victim]);
    assert!(ok && out.contains("2 session(s)"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for token in [&pair.access_token, &second.access_token] {
        loop {
            match app.authenticate(token).await {
                Err(e) => {
                    assert_eq!(reason(&e), "SESSION_REVOKED");
                    break;
                }
                Ok(()) => {
                    assert!(std::time::Instant::now() < deadline, "session still alive");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    let (ok, out) = admin_cli(&app, &["disable-user", "--email", &victim]);
    assert!(ok, "{out}");
    let refused = app.login(&victim, PASSWORD).await.unwrap_err();
    assert_eq!(reason(&refused), "ACCOUNT_DISABLED");

    // Each action is in the audit trail with the actor `cli`.
    let events: Vec<mongodb::bson::Document> = {
        use futures::TryStreamExt;
        app.db()
            .await
            .collection::<mongodb::bson::Document>("audit_events")
            .find(mongodb::bson::doc! { "actor_id": "cli" })
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    let actions: Vec<&str> = events
        .iter()
        .filter_map(|e| e.get_str("action").ok())
        .collect();
    for action in ["lockout_lift", "sessions_revoke", "user.disable"] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }

    // An address without an account is told so, with a failing exit.
    let (ok, out) = admin_cli(&app, &["disable-user", "--email", &email("nobody")]);
    assert!(!ok && out.contains("user not found"), "{out}");
}
