//! A real browser — Debian's Chromium, headless, installed by scripts/setup.sh — signs in with an
//! OpenID Connect provider through the REST sidecar alone, as a person would: the sidecar's start
//! route redirects it to the provider, the provider sends it back to the sidecar's callback, and
//! the flow secret rides in the sidecar's `__Host-` cookie, which the browser must accept and send
//! back for the sign-in to finish.

use std::process::Stdio;
use std::time::Duration;

use crate::gateway::{free_port, Gateway};
use crate::harness::*;
use crate::oidc_fixture::{provider_at, CLIENT_ID, CLIENT_SECRET};

/// Opens `url` in a fresh headless Chromium profile and returns the DOM it ends on.
async fn chromium_dom(url: &str) -> String {
    let profile = tempdir("chromium-profile");
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("--dump-dom")
    .arg(url)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium answered within 60 s")
        .expect("chromium runs (scripts/setup.sh installs it)");
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keyward-test-{tag}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The string value of `"key":"..."` in a JSON text (the page Chromium shows for a JSON answer).
fn json_string(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = text[start..].find('"')?;
    Some(text[start..start + end].to_string())
}

#[tokio::test]
async fn a_real_browser_signs_in_with_a_provider_through_the_sidecar() {
    let port = free_port();
    let callback = format!("http://localhost:{port}/v1/federation/callback");
    let email = email("browser");
    // A provider of this test's own, whose client comes back to the sidecar's callback and
    // vouches for `email` (the browser follows keyward's URL as it is).
    let log = tempdir("oidc-browser").join("provider.log");
    let (_provider, issuers) = crate::oidc_providers::start_oidc_providers(
        CLIENT_ID,
        CLIENT_SECRET,
        &callback,
        &log,
        |cmd| {
            cmd.env("OIDC_DEFAULT_EMAIL", &email);
            kill_with_parent(cmd);
        },
    )
    .expect("the test providers start");
    let mut provider = provider_at("corp", &issuers.hostile);
    provider.redirect_uris = vec![callback.clone()];
    let app = TestApp::start_with_config(|c| c.oidc_providers = vec![provider]).await;
    let _gw = Gateway::start_on(&app, port).await;

    let start = format!(
        "http://localhost:{port}/v1/federation/corp/authorize?redirect_uri={}",
        url::form_urlencoded::byte_serialize(callback.as_bytes()).collect::<String>()
    );
    let page = chromium_dom(&start).await;
    assert!(page.contains("\"account_created\":true"), "{page}");
    let access = json_string(&page, "access_token").unwrap_or_else(|| panic!("{page}"));
    app.authenticate(&access)
        .await
        .expect("the browser's session works");

    // A browser that did not start a sign-in gets nowhere at the callback.
    let stray = chromium_dom(&format!("{callback}?state=made-up&code=made-up")).await;
    assert!(stray.contains("FEDERATION_STATE_INVALID"), "{stray}");
    assert!(!stray.contains("access_token"), "{stray}");
}
