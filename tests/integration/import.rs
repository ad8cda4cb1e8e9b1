//! Accounts imported from another system: `keyward admin import` takes bcrypt or argon2 hashes
//! and refuses the lines it cannot take by number; imported accounts log in with their old
//! passwords and are re-hashed to argon2id.

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::LoginRequest;
use mongodb::bson::{doc, Document};

use crate::harness::*;

/// 1,000 accounts from a bcrypt system log in with their old passwords and come out argon2id.
#[tokio::test]
async fn imported_bcrypt_accounts_log_in_with_old_passwords_and_are_rehashed() {
    let app = TestApp::start_with_config(|c| {
        c.login_attempts_per_address_per_minute = 0;
        c.hash_workers = 2;
    })
    .await;
    const N: usize = 1000;
    let dir =
        std::env::temp_dir().join(format!("keyward-import-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.jsonl");
    let people: Vec<(String, String)> = (0..N)
        .map(|n| {
            (
                format!("imported{n}@legacy.example"),
                format!("old password number {n}"),
            )
        })
        .collect();
    let lines = tokio::task::spawn_blocking({
        let people = people.clone();
        move || {
            people
                .iter()
                .map(|(email, password)| {
                    // Cost 4 keeps the fixture quick; keyward verifies costs up to 14.
                    let hash = bcrypt::hash(password, 4).unwrap();
                    serde_json::json!({ "email": email, "password_hash": hash, "email_verified": true })
                        .to_string()
                })
                .chain([
                    "{\"email\": \"bad@legacy.example\", \"password_hash\": \"md5:abc\"}".to_string(),
                    // A hash one login attempt would spend hours on is refused at the door.
                    serde_json::json!({
                        "email": "heavy@legacy.example",
                        "password_hash": bcrypt::hash("x", 4).unwrap().replacen("$04$", "$31$", 1),
                    })
                    .to_string(),
                ])
                .collect::<Vec<_>>()
                .join("\n")
        }
    })
    .await
    .unwrap();
    std::fs::write(&file, lines).unwrap();

    let out = Keyward::on(
        &app.config,
        ["admin".as_ref(), "import".as_ref(), file.as_os_str()],
    )
    .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused line fails the command");
    assert!(
        stdout.contains(&format!("imported {N} accounts")),
        "{stdout}{stderr}"
    );
    assert!(
        stderr.contains("line 1001: password_hash is not a bcrypt (cost <= 14) or argon2"),
        "{stderr}"
    );
    assert!(stderr.contains("line 1002: password_hash"), "{stderr}");
    assert!(stdout.contains("2 lines refused"), "{stdout}");

    let ok = futures::future::join_all(people.chunks(N / 16).map(|chunk| {
        let chunk = chunk.to_vec();
        let channel = app.channel();
        async move {
            let mut auth = AuthServiceClient::new(channel);
            let mut ok = 0;
            for (email, password) in chunk {
                if auth.login(LoginRequest { email, password }).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }
    }))
    .await
    .into_iter()
    .sum::<usize>();
    assert_eq!(ok, N);
    let users = app
        .db()
        .await
        .collection::<mongodb::bson::Document>("users");
    let rehashed = users
        .count_documents(doc! { "email": { "$regex": "@legacy\\.example$" }, "password_hash": { "$regex": "^\\$argon2id\\$" } })
        .await
        .unwrap();
    assert_eq!(rehashed, N as u64);
    // Old passwords keep working after the re-hash; wrong ones still do not.
    app.login(&people[7].0, &people[7].1).await.unwrap();
    assert!(app.login(&people[7].0, &people[8].1).await.is_err());
}

/// An account stored with a bcrypt hash (as an import leaves it) logs in with its old password
/// and comes out argon2id.
#[tokio::test]
async fn imported_bcrypt_hashes_log_in_and_are_rehashed_to_argon2id() {
    let app = TestApp::start().await;
    let db = app.db().await;
    let email = email("imported");
    let bcrypt_hash = bcrypt::hash("legacy password 1", 10)
        .unwrap()
        .replacen("$2b$", "$2y$", 1);
    let now = mongodb::bson::DateTime::now();
    db.collection::<Document>("users")
        .insert_one(doc! {
            "_id": "imported-user-1", "email": &email, "display_name": "Legacy", "password_hash": &bcrypt_hash,
            "role": "user", "status": "active", "email_verified": true, "created_at": now, "updated_at": now,
            "last_login_at": null,
        })
        .await
        .unwrap();
    assert_eq!(
        reason(&app.login(&email, "legacy password 2").await.unwrap_err()),
        "INVALID_CREDENTIALS"
    );
    app.login(&email, "legacy password 1")
        .await
        .expect("bcrypt hash verifies");
    let stored = db
        .collection::<Document>("users")
        .find_one(doc! { "_id": "imported-user-1" })
        .await
        .unwrap()
        .unwrap();
    let hash = stored.get_str("password_hash").unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    app.login(&email, "legacy password 1")
        .await
        .expect("argon2id hash verifies");
}
