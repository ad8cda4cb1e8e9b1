//! Refresh-token rotation, the grace window, reuse detection and the exactly-once race.

use futures::future::join_all;
use keyward::grpc::pb::{RefreshRequest, TokenPair};
use mongodb::bson::{doc, Document};
use tonic::Code;

use crate::harness::*;

async fn refresh(app: &TestApp, token: &str) -> Result<TokenPair, tonic::Status> {
    app.auth()
        .refresh(RefreshRequest {
            refresh_token: token.into(),
        })
        .await
        .map(|r| r.into_inner().tokens.expect("tokens"))
}

#[tokio::test]
async fn refresh_rotates_and_keeps_the_session() {
    let app = TestApp::start().await;
    let first = app.signed_in(&email("rotate")).await;
    let second = refresh(&app, &first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(
        second.refresh_token_expires_at, first.refresh_token_expires_at,
        "absolute lifetime does not slide"
    );
    app.authenticate(&second.access_token).await.unwrap();
    let third = refresh(&app, &second.refresh_token).await.unwrap();
    app.authenticate(&third.access_token).await.unwrap();

    // Only hashes are stored.
    let stored = app
        .db()
        .await
        .collection::<Document>("sessions")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert!(!format!("{stored:?}").contains(&third.refresh_token[4..]));
}

#[tokio::test]
async fn the_previous_token_within_grace_fails_without_revoking() {
    let app = TestApp::start().await;
    let first = app.signed_in(&email("grace")).await;
    let second = refresh(&app, &first.refresh_token).await.unwrap();
    let err = refresh(&app, &first.refresh_token).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Aborted, "REFRESH_TOKEN_ALREADY_ROTATED")
    );
    refresh(&app, &second.refresh_token)
        .await
        .expect("the session lives on with the newer token");
}

#[tokio::test]
async fn reuse_outside_the_grace_window_revokes_the_whole_family() {
    let app =
        TestApp::start_with_config(|c| c.refresh_reuse_grace = std::time::Duration::ZERO).await;
    let first = app.signed_in(&email("reuse")).await;
    let second = refresh(&app, &first.refresh_token).await.unwrap();
    app.authenticate(&second.access_token).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    let err = refresh(&app, &first.refresh_token).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "REFRESH_TOKEN_REUSED")
    );
    // The thief's newest token and every access token of the family are dead at once.
    assert_eq!(
        reason(&refresh(&app, &second.refresh_token).await.unwrap_err()),
        "REFRESH_TOKEN_INVALID"
    );
    assert_eq!(
        reason(&app.authenticate(&second.access_token).await.unwrap_err()),
        "SESSION_REVOKED"
    );
    let events = app
        .db()
        .await
        .collection::<Document>("audit_events")
        .count_documents(doc! { "action": "refresh_reuse" })
        .await
        .unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn grace_covers_the_immediate_parent_only() {
    let app = TestApp::start().await;
    let first = app.signed_in(&email("grandparent")).await;
    let second = refresh(&app, &first.refresh_token).await.unwrap();
    let third = refresh(&app, &second.refresh_token).await.unwrap();
    // `first` is two rotations old: replaying it is theft even inside the grace window.
    assert_eq!(
        reason(&refresh(&app, &first.refresh_token).await.unwrap_err()),
        "REFRESH_TOKEN_REUSED"
    );
    assert_eq!(
        reason(&app.authenticate(&third.access_token).await.unwrap_err()),
        "SESSION_REVOKED"
    );
}

#[tokio::test]
async fn sixteen_concurrent_refreshes_with_one_token_yield_exactly_one_pair() {
    let app = TestApp::start().await;
    let first = app.signed_in(&email("refresh-race")).await;
    let results = join_all((0..16).map(|_| {
        let mut client = app.auth();
        let token = first.refresh_token.clone();
        async move {
            client
                .refresh(RefreshRequest {
                    refresh_token: token,
                })
                .await
                .map(|r| r.into_inner().tokens.expect("tokens"))
        }
    }))
    .await;
    let winners: Vec<&TokenPair> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(reason)
            .collect::<Vec<_>>()
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(r), "REFRESH_TOKEN_ALREADY_ROTATED");
    }
    refresh(&app, &winners[0].refresh_token)
        .await
        .expect("the one new pair works");
}

#[tokio::test]
async fn unknown_empty_and_expired_refresh_tokens_are_refused() {
    let app = TestApp::start().await;
    let err = refresh(&app, "kwr_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "REFRESH_TOKEN_INVALID")
    );
    let err = refresh(&app, "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&err),
        [("refresh_token".to_string(), "is required".to_string())]
    );

    // A session past its absolute lifetime is dead even before the TTL monitor removes it.
    let pair = app.signed_in(&email("expired")).await;
    let past = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() - 1000,
    );
    app.db()
        .await
        .collection::<Document>("sessions")
        .update_one(
            doc! { "_id": &pair.session_id },
            doc! { "$set": { "expires_at": past } },
        )
        .await
        .unwrap();
    assert_eq!(
        reason(&refresh(&app, &pair.refresh_token).await.unwrap_err()),
        "REFRESH_TOKEN_INVALID"
    );
    assert_eq!(
        reason(&app.authenticate(&pair.access_token).await.unwrap_err()),
        "SESSION_REVOKED"
    );
}
