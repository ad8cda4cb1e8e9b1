//! The `keyward` command as an operator meets it: key generation, bootstrap of the first
//! super_admin, and start-up refusals that name the bad setting.

use std::io::Write;
use std::process::{Command, Stdio};

use keyward::grpc::pb::{AuthenticateRequest, Role};

use crate::harness::*;

fn keyward() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[tokio::test]
async fn keys_generate_then_bootstrap_a_super_admin_who_can_log_in() {
    let out = keyward().args(["keys", "generate"]).output().unwrap();
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
    let mut child = keyward()
        .args([
            "admin",
            "create-user",
            "--role",
            "super_admin",
            "--display-name",
            "Root",
            "--email",
            &email,
        ])
        .env(
            "KEYWARD_MONGODB_URI",
            config.mongodb_uri.as_deref().unwrap(),
        )
        .env("KEYWARD_MONGODB_DATABASE", &config.mongodb_database)
        .env("KEYWARD_SIGNING_KEY", &secret)
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
        let out = keyward()
            .arg("serve")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{named} not named in: {stderr}");
    }
}
