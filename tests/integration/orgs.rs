//! OrgService end to end: organizations, members and invitations against the real server, real
//! MongoDB-compatible database and real SMTP (invitation tokens are read out of the mail).
//! Cross-tenant isolation, role escalation, the last-owner rule under races, every invitation
//! refusal, keyset pagination under inserts, the seed's hospital registration and assistant
//! creation, and grpcurl.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::*;
use mongodb::bson::{doc, Document};
use tonic::Code;

use crate::harness::*;

fn uid(pair: &TokenPair) -> String {
    pair.user.as_ref().unwrap().id.clone()
}

/// A new account made a member of `org_id` with `role` by `owner`, signed in.
async fn member_signed_in(
    app: &TestApp,
    owner: &str,
    org_id: &str,
    tag: &str,
    role: OrgRole,
) -> TokenPair {
    let email = email(tag);
    app.as_token(owner)
        .orgs()
        .create_member(CreateMemberRequest {
            org_id: org_id.to_string(),
            email: email.clone(),
            display_name: "Assistant".into(),
            password: PASSWORD.into(),
            role: role as i32,
            department: "cardiology".into(),
        })
        .await
        .expect("create member")
        .into_inner()
        .member
        .unwrap();
    app.login(&email, PASSWORD).await.expect("member login")
}

/// Authorize's verdict and reason for `token` on `permission` in `org_id`.
async fn authorize(app: &TestApp, token: &str, permission: &str, org_id: &str) -> (bool, String) {
    let r = app
        .auth()
        .authorize(AuthorizeRequest {
            access_token: token.into(),
            permission: permission.into(),
            org_id: org_id.into(),
        })
        .await
        .expect("authorize")
        .into_inner();
    (r.allowed, r.reason)
}

/// Registers `email`, verifies it with the code mailed to it, and signs in.
async fn verified(app: &TestApp, email: &str) -> TokenPair {
    app.register(email).await;
    let code = shared_sink().code(email, 1).await;
    OtpServiceClient::new(app.channel())
        .verify_email(VerifyEmailRequest {
            email: email.into(),
            code,
        })
        .await
        .expect("verify email");
    app.login(email, PASSWORD).await.expect("login")
}

/// Every invitation token mailed to `email` so far.
fn invitation_tokens(email: &str) -> HashSet<String> {
    shared_sink()
        .to(email)
        .iter()
        .flat_map(|m| {
            m.text
                .split_whitespace()
                .filter(|w| w.starts_with("kwi_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits for an invitation token mailed to `email` that is not in `seen`.
async fn new_invitation_token(email: &str, seen: &HashSet<String>) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = invitation_tokens(email).difference(seen).next() {
            return t.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new invitation mail for {email}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn collection(app: &TestApp, name: &str) -> mongodb::Collection<Document> {
    app.db().await.collection(name)
}

#[tokio::test]
async fn organizations_are_created_read_changed_and_their_slugs_stay_unique() {
    let app = TestApp::start().await;
    let owner = app.signed_in(&email("founder")).await;
    let t = &owner.access_token;

    let first = app
        .as_token(t)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "St. Mary's".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(first.slug, "st-marys");
    let second = app
        .as_token(t)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "St Marys".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(second.slug, "st-marys-2", "a derived slug gets a suffix");
    let third = app
        .as_token(t)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "ST. MARY’S".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(third.slug, "st-marys-3");
    refused(
        app.as_token(t)
            .orgs()
            .create_org(CreateOrgRequest {
                name: "Another".into(),
                slug: "st-marys".into(),
                website: String::new(),
            })
            .await,
        Code::AlreadyExists,
        "SLUG_TAKEN",
    );
    let explicit = app
        .as_token(t)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Another".into(),
            slug: "another-one".into(),
            website: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(explicit.slug, "another-one");

    let status = app
        .as_token(t)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "  ".into(),
            slug: "Not A Slug".into(),
            website: "ftp://example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "INVALID_ARGUMENT");
    let fields: HashSet<String> = violations(&status).into_iter().map(|v| v.0).collect();
    assert_eq!(
        fields,
        HashSet::from(["name".into(), "slug".into(), "website".into()])
    );

    let got = app
        .as_token(t)
        .orgs()
        .get_org(GetOrgRequest {
            org_id: first.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.organization.as_ref().unwrap().name, "St. Mary's");
    assert_eq!(got.role, OrgRole::Owner as i32);

    // Only the fields set change; an empty website clears it.
    let updated = app
        .as_token(t)
        .orgs()
        .update_org(UpdateOrgRequest {
            org_id: first.id.clone(),
            name: None,
            website: Some("https://st-marys.example".into()),
            require_mfa: None,
        })
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(
        (
            updated.name.as_str(),
            updated.website.as_str(),
            updated.slug.as_str()
        ),
        ("St. Mary's", "https://st-marys.example", "st-marys")
    );
    let updated = app
        .as_token(t)
        .orgs()
        .update_org(UpdateOrgRequest {
            org_id: first.id.clone(),
            name: Some("St. Mary's Hospital".into()),
            website: Some(String::new()),
            require_mfa: None,
        })
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.website.as_str()),
        ("St. Mary's Hospital", "")
    );
    refused(
        app.as_token(t)
            .orgs()
            .update_org(UpdateOrgRequest {
                org_id: first.id.clone(),
                name: Some(" ".into()),
                website: None,
                require_mfa: None,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );

    refused(
        app.as_token(t)
            .orgs()
            .get_org(GetOrgRequest {
                org_id: "no-such-org".into(),
            })
            .await,
        Code::NotFound,
        "ORG_NOT_FOUND",
    );
    refused(
        app.as_token("not a token")
            .orgs()
            .get_org(GetOrgRequest {
                org_id: first.id.clone(),
            })
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );

    let mine = app
        .as_token(t)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let slugs: Vec<&str> = mine
        .orgs
        .iter()
        .map(|m| m.organization.as_ref().unwrap().slug.as_str())
        .collect();
    assert_eq!(
        slugs,
        ["st-marys", "st-marys-2", "st-marys-3", "another-one"]
    );
    assert!(mine.orgs.iter().all(|m| m.role == OrgRole::Owner as i32));
    assert!(mine.next_page_token.is_empty());

    // Audited with the acting user.
    let audit = collection(&app, "audit_events").await;
    let event = audit
        .find_one(doc! { "action": "org.update", "detail.org_id": &first.id })
        .await
        .unwrap()
        .expect("org.update audited");
    assert_eq!(event.get_str("actor_id").unwrap(), uid(&owner));
}

/// Every admin RPC of OrgService on `org_id`, by `token`: all must be refused with `why`.
async fn assert_no_admin_rpc(app: &TestApp, token: &str, org_id: &str, victim: &str, why: &str) {
    let code = Code::PermissionDenied;
    let update = UpdateOrgRequest {
        org_id: org_id.into(),
        name: Some("Taken over".into()),
        website: None,
        require_mfa: None,
    };
    refused(
        app.as_token(token).orgs().update_org(update).await,
        code,
        why,
    );
    refused(
        app.as_token(token)
            .orgs()
            .invite_member(InviteMemberRequest {
                org_id: org_id.to_string(),
                email: email("intruder"),
                role: OrgRole::Member as i32,
                department: "radiology".into(),
            })
            .await
            .map(|r| r.into_inner().invitation.unwrap()),
        code,
        why,
    );
    refused(
        app.as_token(token)
            .orgs()
            .create_member(CreateMemberRequest {
                org_id: org_id.to_string(),
                email: email("planted"),
                display_name: "Assistant".into(),
                password: PASSWORD.into(),
                role: OrgRole::Member as i32,
                department: "cardiology".into(),
            })
            .await
            .map(|r| r.into_inner().member.unwrap()),
        code,
        why,
    );
    refused(
        app.as_token(token)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org_id.to_string(),
                user_id: victim.to_string(),
                role: OrgRole::Member as i32,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().member.unwrap()),
        code,
        why,
    );
    refused(
        app.as_token(token)
            .orgs()
            .remove_member(RemoveMemberRequest {
                org_id: org_id.to_string(),
                user_id: victim.to_string(),
            })
            .await
            .map(|_| ()),
        code,
        why,
    );
    refused(
        app.as_token(token)
            .orgs()
            .delete_org(DeleteOrgRequest {
                org_id: org_id.to_string(),
            })
            .await
            .map(|_| ()),
        code,
        why,
    );
}

#[tokio::test]
async fn cross_tenant_matrix_admin_of_a_can_do_nothing_in_b() {
    let app = TestApp::start().await;
    let alice = app.signed_in(&email("alice")).await;
    let bob = app.signed_in(&email("bob")).await;
    let a = app
        .as_user(&alice)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Hospital A".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let b = app
        .as_user(&bob)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Hospital B".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let carol = member_signed_in(&app, &alice.access_token, &a.id, "carol", OrgRole::Admin).await;
    let dave = member_signed_in(&app, &alice.access_token, &a.id, "dave", OrgRole::Member).await;
    let erin = member_signed_in(&app, &bob.access_token, &b.id, "erin", OrgRole::Member).await;

    // Admin of A in B: every RPC, reads included, is refused; so is Authorize.
    let c = &carol.access_token;
    refused(
        app.as_token(c)
            .orgs()
            .get_org(GetOrgRequest {
                org_id: b.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(c)
            .orgs()
            .list_members(ListMembersRequest {
                org_id: b.id.clone(),
                page_size: 0,
                page_token: String::new(),
                role: OrgRole::Unspecified as i32,
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_no_admin_rpc(&app, c, &b.id, &uid(&erin), "PERMISSION_DENIED").await;
    for permission in [
        "org.read",
        "org.members.read",
        "org.write",
        "org.members.write",
    ] {
        let (allowed, why) = authorize(&app, c, permission, &b.id).await;
        assert!(!allowed, "{permission}");
        assert_eq!(why, "NOT_A_MEMBER");
    }
    let (allowed, _) = authorize(&app, c, "org.members.write", &a.id).await;
    assert!(allowed, "carol is an admin of A");
    // The owner of A is no one in B either, and a global role counts for nothing.
    assert_no_admin_rpc(
        &app,
        &alice.access_token,
        &b.id,
        &uid(&erin),
        "PERMISSION_DENIED",
    )
    .await;
    // An admin of A cannot delete A (owners only).
    refused(
        app.as_token(c)
            .orgs()
            .delete_org(DeleteOrgRequest {
                org_id: a.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // An invitation to B does not let someone from A in.
    let b_invite_for = email("b-invitee");
    let seen = invitation_tokens(&b_invite_for);
    app.as_user(&bob)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: b.id.clone(),
            email: b_invite_for.clone(),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = new_invitation_token(&b_invite_for, &seen).await;
    refused(
        app.as_token(c)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: token.clone(),
            })
            .await,
        Code::PermissionDenied,
        "INVITATION_EMAIL_MISMATCH",
    );
    let carols: Vec<String> = app
        .as_token(c)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .orgs
        .into_iter()
        .map(|m| m.organization.unwrap().id)
        .collect();
    assert_eq!(carols, std::slice::from_ref(&a.id));

    // A member of A reads A but cannot administer it.
    let d = &dave.access_token;
    let got = app
        .as_token(d)
        .orgs()
        .get_org(GetOrgRequest {
            org_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.role, OrgRole::Member as i32);
    let members = app
        .as_token(d)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: a.id.clone(),
            page_size: 0,
            page_token: String::new(),
            role: OrgRole::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 3);
    assert_no_admin_rpc(&app, d, &a.id, &uid(&carol), "PERMISSION_DENIED").await;
    let (allowed, why) = authorize(&app, d, "org.write", &a.id).await;
    assert!(!allowed);
    assert_eq!(why, "ORG_ROLE_TOO_LOW");

    // Nothing changed in B.
    let b_now = app
        .as_user(&bob)
        .orgs()
        .get_org(GetOrgRequest {
            org_id: b.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b_now.organization.unwrap().name, "Hospital B");
    let b_members = app
        .as_user(&bob)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: b.id.clone(),
            page_size: 0,
            page_token: String::new(),
            role: OrgRole::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b_members.members.len(), 2);

    // A removed member loses access at once: the very next Authorize says no.
    let (allowed, _) = authorize(&app, d, "org.read", &a.id).await;
    assert!(allowed);
    app.as_user(&alice)
        .orgs()
        .remove_member(RemoveMemberRequest {
            org_id: a.id.clone(),
            user_id: uid(&dave),
        })
        .await
        .unwrap();
    let (allowed, why) = authorize(&app, d, "org.read", &a.id).await;
    assert!(!allowed, "removal counts from the next call");
    assert_eq!(why, "NOT_A_MEMBER");
    refused(
        app.as_token(d)
            .orgs()
            .get_org(GetOrgRequest {
                org_id: a.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_user(&alice)
            .orgs()
            .remove_member(RemoveMemberRequest {
                org_id: a.id.clone(),
                user_id: uid(&dave),
            })
            .await,
        Code::NotFound,
        "MEMBER_NOT_FOUND",
    );
    // Their account stays.
    app.login(&members_email(&members, &uid(&dave)), PASSWORD)
        .await
        .unwrap();

    let audit = collection(&app, "audit_events").await;
    let event = audit
        .find_one(doc! { "action": "org.member.remove", "user_id": uid(&dave) })
        .await
        .unwrap()
        .expect("removal audited");
    assert_eq!(event.get_str("actor_id").unwrap(), uid(&alice));
    assert_eq!(
        event
            .get_document("detail")
            .unwrap()
            .get_str("org_id")
            .unwrap(),
        a.id
    );
}

fn members_email(list: &ListMembersResponse, user_id: &str) -> String {
    list.members
        .iter()
        .map(|m| m.user.as_ref().unwrap())
        .find(|u| u.id == user_id)
        .unwrap()
        .email
        .clone()
}

#[tokio::test]
async fn nobody_rises_above_their_role_and_the_last_owner_stays() {
    let app = TestApp::start().await;
    let alice = app.signed_in(&email("owner")).await;
    let org = app
        .as_user(&alice)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Escalation General".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let carol = member_signed_in(&app, &alice.access_token, &org.id, "admin", OrgRole::Admin).await;
    let dave = member_signed_in(
        &app,
        &alice.access_token,
        &org.id,
        "member",
        OrgRole::Member,
    )
    .await;
    let (a, c) = (&alice.access_token, &carol.access_token);

    // An org admin makes nobody owner, themself least of all, and touches no owner.
    for (target, who) in [(uid(&carol), "themself"), (uid(&dave), "a member")] {
        let result = app
            .as_token(c)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.id.clone(),
                user_id: target.clone(),
                role: OrgRole::Owner as i32,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().member.unwrap());
        assert_eq!(reason(&result.unwrap_err()), "ROLE_TOO_HIGH", "{who}");
    }
    refused(
        app.as_token(c)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.id.clone(),
                user_id: uid(&alice),
                role: OrgRole::Member as i32,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    refused(
        app.as_token(c)
            .orgs()
            .remove_member(RemoveMemberRequest {
                org_id: org.id.clone(),
                user_id: uid(&alice),
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    refused(
        app.as_token(c)
            .orgs()
            .invite_member(InviteMemberRequest {
                org_id: org.id.clone(),
                email: email("would-be-owner"),
                role: OrgRole::Owner as i32,
                department: "radiology".into(),
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    refused(
        app.as_token(c)
            .orgs()
            .create_member(CreateMemberRequest {
                org_id: org.id.clone(),
                email: email("would-be-owner"),
                display_name: "Assistant".into(),
                password: PASSWORD.into(),
                role: OrgRole::Owner as i32,
                department: "cardiology".into(),
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    // Department-only changes to an owner are out of an admin's reach too.
    let dept_change = UpdateMemberRequest {
        org_id: org.id.clone(),
        user_id: uid(&alice),
        role: OrgRole::Unspecified as i32,
        department: Some("basement".into()),
        custom_role: None,
    };
    refused(
        app.as_token(c).orgs().update_member(dept_change).await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
    // Within their reach: a member's role and department.
    let changed = app
        .as_token(c)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.id.clone(),
            user_id: uid(&dave),
            role: OrgRole::Admin as i32,
            department: Some("oncology".into()),
            custom_role: None,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(changed.role, OrgRole::Admin as i32);
    assert_eq!(changed.department, "oncology");
    refused(
        app.as_token(c)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.id.clone(),
                user_id: "nobody".into(),
                role: OrgRole::Member as i32,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "MEMBER_NOT_FOUND",
    );

    // The only owner can neither step down nor leave.
    refused(
        app.as_token(a)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.id.clone(),
                user_id: uid(&alice),
                role: OrgRole::Admin as i32,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "LAST_OWNER",
    );
    refused(
        app.as_token(a)
            .orgs()
            .remove_member(RemoveMemberRequest {
                org_id: org.id.clone(),
                user_id: uid(&alice),
            })
            .await,
        Code::FailedPrecondition,
        "LAST_OWNER",
    );

    // With a second owner both work, and a lowered role counts from the next call.
    app.as_token(a)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.id.clone(),
            user_id: uid(&carol),
            role: OrgRole::Owner as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    let (allowed, _) = authorize(&app, c, "org.delete", &org.id).await;
    assert!(allowed, "carol is an owner now");
    app.as_token(a)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.id.clone(),
            user_id: uid(&alice),
            role: OrgRole::Member as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    let (allowed, why) = authorize(&app, a, "org.write", &org.id).await;
    assert!(!allowed, "the demotion counts at once");
    assert_eq!(why, "ORG_ROLE_TOO_LOW");
    refused(
        app.as_token(a)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.id.clone(),
                user_id: uid(&alice),
                role: OrgRole::Owner as i32,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // A member may leave; carol, now the only owner, may not.
    app.as_token(a)
        .orgs()
        .remove_member(RemoveMemberRequest {
            org_id: org.id.clone(),
            user_id: uid(&alice),
        })
        .await
        .unwrap();
    refused(
        app.as_token(a)
            .orgs()
            .get_org(GetOrgRequest {
                org_id: org.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(c)
            .orgs()
            .remove_member(RemoveMemberRequest {
                org_id: org.id.clone(),
                user_id: uid(&carol),
            })
            .await,
        Code::FailedPrecondition,
        "LAST_OWNER",
    );
    let owners = app
        .as_token(c)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: org.id.clone(),
            page_size: 0,
            page_token: String::new(),
            role: OrgRole::Owner as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owners.members.len(), 1);
    assert_eq!(owners.members[0].user.as_ref().unwrap().id, uid(&carol));
}

/// The number of owners, as the members list and the stored count see them.
async fn owners(app: &TestApp, token: &str, org_id: &str) -> (usize, i32) {
    let listed = app
        .as_token(token)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: org_id.to_string(),
            page_size: 200,
            page_token: String::new(),
            role: OrgRole::Owner as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .members
        .len();
    let org = collection(app, "orgs")
        .await
        .find_one(doc! { "_id": org_id })
        .await
        .unwrap()
        .unwrap();
    (listed, org.get_i32("owner_count").unwrap())
}

#[tokio::test]
async fn owners_racing_to_demote_or_remove_each_other_leave_exactly_one_owner() {
    let app = Arc::new(TestApp::start().await);
    let alice = app.signed_in(&email("race-a")).await;
    let org = app
        .as_user(&alice)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Race Clinic".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let bob = member_signed_in(&app, &alice.access_token, &org.id, "race-b", OrgRole::Owner).await;
    let mut pair = [alice, bob];

    for round in 0..8 {
        // Both owners demote (even rounds) or remove (odd rounds) the other, released together.
        let results = race(2, |i| {
            let (app, org_id) = (app.clone(), org.id.clone());
            let (me, other) = (pair[i].access_token.clone(), uid(&pair[1 - i]));
            async move {
                if round % 2 == 0 {
                    app.as_token(&me)
                        .orgs()
                        .update_member(UpdateMemberRequest {
                            org_id: org_id.clone(),
                            user_id: other.clone(),
                            role: OrgRole::Admin as i32,
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.into_inner().member.unwrap())
                        .map(|_| ())
                } else {
                    app.as_token(&me)
                        .orgs()
                        .remove_member(RemoveMemberRequest {
                            org_id: org_id.clone(),
                            user_id: other.clone(),
                        })
                        .await
                        .map(|_| ())
                }
            }
        })
        .await;
        let mut winners = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(()) => winners.push(i),
                // Refused by the owner count, or (when the other call finished first) because
                // the caller is no owner any more.
                Err(status) => assert!(
                    ["LAST_OWNER", "ROLE_TOO_HIGH", "PERMISSION_DENIED"]
                        .contains(&reason(&status).as_str()),
                    "round {round}: {status:?}"
                ),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one wins");
        let (w, l) = (winners[0], 1 - winners[0]);
        let winner = pair[w].access_token.clone();
        assert_eq!(
            owners(&app, &winner, &org.id).await,
            (1, 1),
            "round {round}"
        );
        // A second owner again for the next round: the demoted one promoted back, or a new one
        // in place of the removed one.
        if round % 2 == 0 {
            app.as_token(&winner)
                .orgs()
                .update_member(UpdateMemberRequest {
                    org_id: org.id.clone(),
                    user_id: uid(&pair[l]),
                    role: OrgRole::Owner as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .member
                .unwrap();
        } else {
            pair[l] = member_signed_in(&app, &winner, &org.id, "race-new", OrgRole::Owner).await;
        }
        assert_eq!(owners(&app, &winner, &org.id).await, (2, 2));
    }

    // Five owners all leaving at once: four go, one stays.
    let mut all = pair.to_vec();
    for i in 0..3 {
        all.push(
            member_signed_in(
                &app,
                &all[0].access_token.clone(),
                &org.id,
                &format!("race-{i}"),
                OrgRole::Owner,
            )
            .await,
        );
    }
    let results = race(all.len(), |i| {
        let (app, org_id) = (app.clone(), org.id.clone());
        let (token, me) = (all[i].access_token.clone(), uid(&all[i]));
        async move {
            app.as_token(&token)
                .orgs()
                .remove_member(RemoveMemberRequest {
                    org_id: org_id.clone(),
                    user_id: me.clone(),
                })
                .await
                .map(|_| ())
        }
    })
    .await;
    let mut left = 0;
    let mut stayed = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(()) => left += 1,
            Err(status) => {
                assert_eq!(reason(&status), "LAST_OWNER");
                stayed.push(i);
            }
        }
    }
    assert_eq!((left, stayed.len()), (4, 1));
    assert_eq!(
        owners(&app, &all[stayed[0]].access_token, &org.id).await,
        (1, 1)
    );
}

#[tokio::test]
async fn invitations_arrive_by_mail_work_once_and_each_refusal_has_its_reason() {
    let app = TestApp::start().await;
    let owner = app.signed_in(&email("inviter")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Invitation Infirmary".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let o = &owner.access_token;

    // The invitee's verified email gets a token; accepting it joins with the preassigned role.
    let invitee_email = email("invitee");
    let invitee = verified(&app, &invitee_email).await;
    let seen = invitation_tokens(&invitee_email);
    let invitation = app
        .as_token(o)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: invitee_email.to_uppercase(),
            role: OrgRole::Admin as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    assert_eq!(invitation.email, invitee_email, "normalised");
    assert_eq!(invitation.role, OrgRole::Admin as i32);
    assert_eq!(invitation.invited_by, uid(&owner));
    let lifetime = invitation.expires_at.unwrap().seconds - invitation.created_at.unwrap().seconds;
    assert_eq!(lifetime, 72 * 3600);
    let token = new_invitation_token(&invitee_email, &seen).await;
    let mail = shared_sink()
        .to(&invitee_email)
        .into_iter()
        .find(|m| m.text.contains(&token))
        .unwrap();
    assert!(mail.text.contains("Invitation Infirmary") && mail.text.contains("admin"));
    assert!(mail.html.contains(&token));
    // Stored only as a hash.
    let stored = collection(&app, "invitations").await;
    let raw = stored
        .find_one(doc! { "_id": &invitation.id })
        .await
        .unwrap()
        .unwrap();
    assert!(!format!("{raw:?}").contains(&token[4..]));

    let (allowed, _) = authorize(&app, &invitee.access_token, "org.read", &org.id).await;
    assert!(!allowed);
    let joined = app
        .as_user(&invitee)
        .orgs()
        .accept_invitation(AcceptInvitationRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let member = joined.member.unwrap();
    assert_eq!(member.role, OrgRole::Admin as i32);
    assert_eq!(member.department, "radiology");
    assert_eq!(joined.organization.unwrap().id, org.id);
    let (allowed, _) = authorize(&app, &invitee.access_token, "org.members.write", &org.id).await;
    assert!(allowed, "membership counts from the next call");

    // Reused.
    refused(
        app.as_user(&invitee)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: token.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "INVITATION_USED",
    );
    // Unknown, and missing.
    refused(
        app.as_user(&invitee)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: "kwi_not-a-real-token".into(),
            })
            .await,
        Code::NotFound,
        "INVITATION_NOT_FOUND",
    );
    refused(
        app.as_user(&invitee)
            .orgs()
            .accept_invitation(AcceptInvitationRequest { token: "".into() })
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    // Inviting a member again.
    refused(
        app.as_token(o)
            .orgs()
            .invite_member(InviteMemberRequest {
                org_id: org.id.clone(),
                email: invitee_email.clone(),
                role: OrgRole::Member as i32,
                department: "radiology".into(),
            })
            .await,
        Code::AlreadyExists,
        "ALREADY_MEMBER",
    );

    // Wrong email, then unverified email: refused without using the invitation up.
    let target_email = email("target");
    let target = verified(&app, &target_email).await;
    let stranger = verified(&app, &email("stranger")).await;
    let seen = invitation_tokens(&target_email);
    app.as_token(o)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: target_email.clone(),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = new_invitation_token(&target_email, &seen).await;
    refused(
        app.as_user(&stranger)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: token.clone(),
            })
            .await,
        Code::PermissionDenied,
        "INVITATION_EMAIL_MISMATCH",
    );
    let unverified_email = email("unverified");
    let unverified = app.signed_in(&unverified_email).await;
    let seen_unverified = invitation_tokens(&unverified_email);
    app.as_token(o)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: unverified_email.clone(),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let unverified_token = new_invitation_token(&unverified_email, &seen_unverified).await;
    refused(
        app.as_user(&unverified)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: unverified_token.clone(),
            })
            .await,
        Code::PermissionDenied,
        "INVITATION_EMAIL_MISMATCH",
    );
    app.as_user(&target)
        .orgs()
        .accept_invitation(AcceptInvitationRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // Revoked: a newer invitation replaces the pending one.
    let late_email = email("late");
    let late = verified(&app, &late_email).await;
    let seen = invitation_tokens(&late_email);
    app.as_token(o)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: late_email.clone(),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let older = new_invitation_token(&late_email, &seen).await;
    let seen = invitation_tokens(&late_email);
    app.as_token(o)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: late_email.clone(),
            role: OrgRole::Admin as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let newer = new_invitation_token(&late_email, &seen).await;
    refused(
        app.as_user(&late)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: older.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "INVITATION_REVOKED",
    );

    // Expired: moved into the past in the database (no sleeping).
    stored
        .update_one(
            doc! { "email": &late_email, "status": "pending" },
            doc! { "$set": { "expires_at": mongodb::bson::DateTime::from_millis(
                chrono::Utc::now().timestamp_millis() - 1000
            ) } },
        )
        .await
        .unwrap();
    refused(
        app.as_user(&late)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: newer.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "INVITATION_EXPIRED",
    );

    // The inviter lost the right to grant the role: the invitation stops working.
    let deputy_email = email("deputy");
    let deputy = verified(&app, &deputy_email).await;
    let seen = invitation_tokens(&deputy_email);
    app.as_user(&invitee)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: deputy_email.clone(),
            role: OrgRole::Admin as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = new_invitation_token(&deputy_email, &seen).await;
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.id.clone(),
            user_id: uid(&invitee),
            role: OrgRole::Member as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    refused(
        app.as_user(&deputy)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: token.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "INVITATION_REVOKED",
    );

    // Organization deleted: its invitations are gone with it.
    let gone_email = email("gone");
    let gone = verified(&app, &gone_email).await;
    let seen = invitation_tokens(&gone_email);
    app.as_token(o)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: gone_email.clone(),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = new_invitation_token(&gone_email, &seen).await;
    app.as_token(o)
        .orgs()
        .delete_org(DeleteOrgRequest {
            org_id: org.id.clone(),
        })
        .await
        .unwrap();
    refused(
        app.as_user(&gone)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: token.clone(),
            })
            .await,
        Code::NotFound,
        "INVITATION_NOT_FOUND",
    );
}

#[tokio::test]
async fn sixteen_concurrent_accepts_of_one_invitation_join_exactly_once() {
    let app = TestApp::start().await;
    let owner = app.signed_in(&email("race-owner")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Race Clinic".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let invitee_email = email("race-invitee");
    let invitee = verified(&app, &invitee_email).await;
    let seen = invitation_tokens(&invitee_email);
    app.as_user(&owner)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: invitee_email.clone(),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = new_invitation_token(&invitee_email, &seen).await;

    let invitee_calls = app.as_user(&invitee);
    let results = race(16, |_| {
        let (mut orgs, token) = (invitee_calls.orgs(), token.clone());
        async move {
            orgs.accept_invitation(AcceptInvitationRequest { token })
                .await
        }
    })
    .await;
    let mut joined = 0;
    for result in results {
        match result {
            Ok(_) => joined += 1,
            Err(status) => assert!(
                ["INVITATION_USED", "ALREADY_MEMBER"].contains(&reason(&status).as_str()),
                "{status:?}"
            ),
        }
    }
    assert_eq!(joined, 1, "exactly one accept succeeds");
    let memberships = collection(&app, "memberships")
        .await
        .count_documents(doc! { "org_id": &org.id, "user_id": uid(&invitee) })
        .await
        .unwrap();
    assert_eq!(memberships, 1);
    let listed = app
        .as_user(&owner)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: org.id.clone(),
            page_size: 0,
            page_token: String::new(),
            role: OrgRole::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.members.len(), 2, "the owner and the invitee, once");
    let invitation = collection(&app, "invitations")
        .await
        .find_one(doc! { "org_id": &org.id, "email": &invitee_email })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(invitation.get_str("status").unwrap(), "accepted");
}

#[tokio::test]
async fn invitations_and_created_members_are_rate_limited_per_organization() {
    let app = TestApp::start().await;
    let owner = app.signed_in(&email("busy")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Busy Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let other = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Quiet Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    // This hour's (and, at a boundary, the next hour's) counter is already at the limit.
    let now = chrono::Utc::now();
    let (index, _) = keyward::domain::lockout::window(now, Duration::from_secs(3600));
    let limits = collection(&app, "rate_limits").await;
    for i in [index, index + 1] {
        limits
            .insert_one(doc! {
                "_id": keyward::app::orgs::invitation_limit_key(&org.id, i),
                "count": keyward::app::orgs::INVITES_PER_ORG_PER_HOUR as i32,
                "expires_at": mongodb::bson::DateTime::from_millis(now.timestamp_millis() + 7_200_000),
            })
            .await
            .unwrap();
    }
    let status = app
        .as_user(&owner)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: email("x"),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .map(|r| r.into_inner().invitation.unwrap())
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::ResourceExhausted, "RATE_LIMITED")
    );
    // Creating accounts directly mails strangers too, and draws on the same budget — before it
    // could tell whether the address has an account.
    let taken = email("taken");
    app.register(&taken).await;
    for address in [email("z"), taken] {
        refused(
            app.as_user(&owner)
                .orgs()
                .create_member(CreateMemberRequest {
                    org_id: org.id.clone(),
                    email: address.clone(),
                    display_name: "Assistant".into(),
                    password: PASSWORD.into(),
                    role: OrgRole::Member as i32,
                    department: "cardiology".into(),
                })
                .await,
            Code::ResourceExhausted,
            "RATE_LIMITED",
        );
    }
    // Another organization has its own budget.
    app.as_user(&owner)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: other.id.clone(),
            email: email("y"),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
}

#[tokio::test]
async fn deleting_an_organization_ends_every_members_access_at_once() {
    let app = TestApp::start().await;
    let owner = app.signed_in(&email("deleter")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Short Lived".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let keep = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Long Lived".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let member = member_signed_in(&app, &owner.access_token, &org.id, "m", OrgRole::Member).await;
    let admin = member_signed_in(&app, &owner.access_token, &org.id, "a", OrgRole::Admin).await;
    app.as_user(&owner)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: email("pending"),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    for p in [&member, &admin, &owner] {
        assert!(
            authorize(&app, &p.access_token, "org.read", &org.id)
                .await
                .0
        );
    }

    refused(
        app.as_user(&admin)
            .orgs()
            .delete_org(DeleteOrgRequest {
                org_id: org.id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    app.as_user(&owner)
        .orgs()
        .delete_org(DeleteOrgRequest {
            org_id: org.id.clone(),
        })
        .await
        .unwrap();
    for p in [&member, &admin, &owner] {
        let (allowed, why) = authorize(&app, &p.access_token, "org.read", &org.id).await;
        assert!(!allowed && why == "NOT_A_MEMBER", "{why}");
        refused(
            app.as_user(p)
                .orgs()
                .get_org(GetOrgRequest {
                    org_id: org.id.clone(),
                })
                .await,
            Code::NotFound,
            "ORG_NOT_FOUND",
        );
    }
    refused(
        app.as_user(&owner)
            .orgs()
            .delete_org(DeleteOrgRequest {
                org_id: org.id.clone(),
            })
            .await,
        Code::NotFound,
        "ORG_NOT_FOUND",
    );
    for name in ["memberships", "invitations"] {
        let left = collection(&app, name)
            .await
            .count_documents(doc! { "org_id": &org.id })
            .await
            .unwrap();
        assert_eq!(left, 0, "{name}");
    }
    // The other organization and the accounts stay.
    let mine = app
        .as_user(&owner)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.orgs.len(), 1);
    assert_eq!(mine.orgs[0].organization.as_ref().unwrap().id, keep.id);
    assert!(app
        .as_user(&member)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest {
            page_size: 0,
            page_token: String::new()
        })
        .await
        .unwrap()
        .into_inner()
        .orgs
        .is_empty());
    app.authenticate(&member.access_token).await.unwrap();
}

/// Stores `n` members of `org_id` straight into the database, several sharing one `joined_at`
/// millisecond so the tie-breaker matters. Returns their user ids.
async fn seed_members(app: &TestApp, org_id: &str, n: usize, base_millis: i64) -> Vec<String> {
    let users = collection(app, "users").await;
    let memberships = collection(app, "memberships").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let at = mongodb::bson::DateTime::from_millis(base_millis + (i / 3) as i64);
        users
            .insert_one(doc! {
                "_id": &id,
                "email": format!("seeded-{id}@example.com"),
                "display_name": format!("Seeded {i}"),
                "password_hash": "",
                "role": "user",
                "status": "active",
                "email_verified": true,
                "created_at": at,
                "updated_at": at,
                "last_login_at": null,
            })
            .await
            .unwrap();
        memberships
            .insert_one(doc! {
                "_id": format!("{org_id}:{id}"),
                "org_id": org_id,
                "user_id": &id,
                "role": if i % 2 == 0 { "member" } else { "admin" },
                "department": "",
                "joined_at": at,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn member_pages_have_no_duplicates_and_no_gaps_while_members_join() {
    let app = TestApp::start().await;
    let owner = app.signed_in(&email("pager")).await;
    let t = &owner.access_token;
    let org = app
        .as_token(t)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Paged Practice".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let past = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut expected: HashSet<String> = seed_members(&app, &org.id, 40, past)
        .await
        .into_iter()
        .collect();
    expected.insert(uid(&owner));

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .as_token(t)
            .orgs()
            .list_members(ListMembersRequest {
                org_id: org.id.clone(),
                page_size: 7,
                page_token: token.clone(),
                role: OrgRole::Unspecified as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.members.len() <= 7);
        seen.extend(
            page.members
                .iter()
                .map(|m| m.user.as_ref().unwrap().id.clone()),
        );
        pages += 1;
        if pages <= 3 {
            // Members joining between pages show up on a later page, pushing nobody out.
            for i in 0..2 {
                let m = app
                    .as_token(t)
                    .orgs()
                    .create_member(CreateMemberRequest {
                        org_id: org.id.clone(),
                        email: email(&format!("joiner{i}")),
                        display_name: "Assistant".into(),
                        password: PASSWORD.into(),
                        role: OrgRole::Member as i32,
                        department: "cardiology".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .member
                    .unwrap();
                expected.insert(m.user.unwrap().id);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert_eq!(unique, expected, "no gaps");

    // Oldest first; a role filter pages through that role only.
    let mut admins = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .as_token(t)
            .orgs()
            .list_members(ListMembersRequest {
                org_id: org.id.clone(),
                page_size: 4,
                page_token: token.clone(),
                role: OrgRole::Admin as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.members.iter().all(|m| m.role == OrgRole::Admin as i32));
        admins.extend(
            page.members
                .iter()
                .map(|m| m.user.as_ref().unwrap().id.clone()),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        // The token is only good for the filter it was issued for.
        refused(
            app.as_token(t)
                .orgs()
                .list_members(ListMembersRequest {
                    org_id: org.id.clone(),
                    page_size: 4,
                    page_token: page.next_page_token.clone(),
                    role: OrgRole::Member as i32,
                })
                .await,
            Code::InvalidArgument,
            "PAGE_TOKEN_INVALID",
        );
        token = page.next_page_token;
    }
    assert_eq!(admins.len(), 20);
    refused(
        app.as_token(t)
            .orgs()
            .list_members(ListMembersRequest {
                org_id: org.id.clone(),
                page_size: 4,
                page_token: "garbage!".into(),
                role: OrgRole::Unspecified as i32,
            })
            .await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );
    let first = app
        .as_token(t)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: org.id.clone(),
            page_size: 1,
            page_token: String::new(),
            role: OrgRole::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let other = app
        .as_token(t)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Other Practice".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    refused(
        app.as_token(t)
            .orgs()
            .list_members(ListMembersRequest {
                org_id: other.id.clone(),
                page_size: 1,
                page_token: first.next_page_token.clone(),
                role: OrgRole::Unspecified as i32,
            })
            .await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );
    // Page sizes: 0 means 50, more than 200 means 200.
    let default = app
        .as_token(t)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: org.id.clone(),
            page_size: 0,
            page_token: String::new(),
            role: OrgRole::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.members.len(), 47);
    assert!(default.next_page_token.is_empty());
}

#[tokio::test]
async fn my_organizations_page_without_duplicates_while_i_join_more() {
    let app = TestApp::start().await;
    let me = app.signed_in(&email("joiner")).await;
    let t = &me.access_token;
    let mut expected = HashSet::new();
    for i in 0..5 {
        expected.insert(
            app.as_token(t)
                .orgs()
                .create_org(CreateOrgRequest {
                    name: format!("Clinic {i}"),
                    ..Default::default()
                })
                .await
                .expect("create org")
                .into_inner()
                .organization
                .unwrap()
                .id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .as_token(t)
            .orgs()
            .list_my_orgs(ListMyOrgsRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(
            page.orgs
                .iter()
                .map(|m| m.organization.as_ref().unwrap().id.clone()),
        );
        pages += 1;
        if pages == 1 {
            expected.insert(
                app.as_token(t)
                    .orgs()
                    .create_org(CreateOrgRequest {
                        name: "Joined Meanwhile".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("create org")
                    .into_inner()
                    .organization
                    .unwrap()
                    .id,
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len());
    assert_eq!(unique, expected);
    // Another user's token is not mine.
    let other = app.signed_in(&email("other")).await;
    app.as_user(&other)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Theirs".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let theirs = app
        .as_user(&other)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.next_page_token.is_empty());
    let mine = app
        .as_token(t)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    refused(
        app.as_user(&other)
            .orgs()
            .list_my_orgs(ListMyOrgsRequest {
                page_size: 1,
                page_token: mine.next_page_token.clone(),
            })
            .await,
        Code::InvalidArgument,
        "PAGE_TOKEN_INVALID",
    );
}

#[tokio::test]
async fn a_hospital_creates_an_assistant_who_must_verify_before_signing_in() {
    let app = TestApp::start_with_config(|c| c.require_verified_email = true).await;
    let sink = shared_sink();
    let hospital = verified(&app, &email("hospital")).await;
    let org = app
        .as_user(&hospital)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "General Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();

    let assistant_email = email("assistant");
    let member = app
        .as_user(&hospital)
        .orgs()
        .create_member(CreateMemberRequest {
            org_id: org.id.clone(),
            email: assistant_email.clone(),
            display_name: "Assistant".into(),
            password: PASSWORD.into(),
            role: OrgRole::Member as i32,
            department: "cardiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    let user = member.user.unwrap();
    assert!(!user.email_verified);
    assert_eq!(user.role, Role::User as i32);
    assert_eq!(member.department, "cardiology");
    assert_eq!(member.role, OrgRole::Member as i32);

    refused(
        app.login(&assistant_email, PASSWORD).await,
        Code::FailedPrecondition,
        "EMAIL_NOT_VERIFIED",
    );
    // The verification code went out with the account.
    let code = sink.code(&assistant_email, 1).await;
    OtpServiceClient::new(app.channel())
        .verify_email(VerifyEmailRequest {
            email: assistant_email.clone(),
            code,
        })
        .await
        .unwrap();
    let assistant = app.login(&assistant_email, PASSWORD).await.unwrap();
    let (allowed, _) = authorize(&app, &assistant.access_token, "org.read", &org.id).await;
    assert!(allowed);
    let (allowed, _) = authorize(&app, &assistant.access_token, "org.members.write", &org.id).await;
    assert!(!allowed);

    refused(
        app.as_user(&hospital)
            .orgs()
            .create_member(CreateMemberRequest {
                org_id: org.id.clone(),
                email: assistant_email.clone(),
                display_name: "Assistant".into(),
                password: PASSWORD.into(),
                role: OrgRole::Member as i32,
                department: "cardiology".into(),
            })
            .await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    let weak = app
        .as_user(&hospital)
        .orgs()
        .create_member(CreateMemberRequest {
            org_id: org.id.clone(),
            email: email("weak"),
            display_name: String::new(),
            password: "password".into(),
            role: OrgRole::Member as i32,
            department: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&weak), "INVALID_ARGUMENT");
    assert!(violations(&weak).iter().any(|(f, _)| f == "password"));
    refused(
        app.as_user(&hospital)
            .orgs()
            .create_member(CreateMemberRequest {
                org_id: "no-such-org".into(),
                email: email("lost"),
                display_name: "Assistant".into(),
                password: PASSWORD.into(),
                role: OrgRole::Member as i32,
                department: "cardiology".into(),
            })
            .await,
        Code::NotFound,
        "ORG_NOT_FOUND",
    );

    let audit = collection(&app, "audit_events").await;
    let event = audit
        .find_one(doc! { "action": "org.member.create", "user_id": &user.id })
        .await
        .unwrap()
        .expect("creation audited");
    assert_eq!(event.get_str("actor_id").unwrap(), uid(&hospital));
}

#[tokio::test]
async fn hospital_registration_creates_the_account_and_its_organization_or_neither() {
    let app = TestApp::start().await;
    let register = |email: &str, name: &str, slug: &str| {
        let request = RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: "Admin".into(),
            organization: Some(OrganizationSignup {
                name: name.into(),
                slug: slug.into(),
                website: "https://hospital.example".into(),
            }),
        };
        let mut auth = app.auth();
        async move { auth.register(request).await.map(|r| r.into_inner()) }
    };

    let founder = email("hospital");
    let registered = register(&founder, "General Hospital", "").await.unwrap();
    assert!(registered.pending_verification);
    assert!(!registered.org_id.is_empty());
    let pair = app.login(&founder, PASSWORD).await.unwrap();
    let got = app
        .as_user(&pair)
        .orgs()
        .get_org(GetOrgRequest {
            org_id: registered.org_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.role, OrgRole::Owner as i32);
    let org = got.organization.unwrap();
    assert_eq!(
        (org.name.as_str(), org.slug.as_str(), org.website.as_str()),
        (
            "General Hospital",
            "general-hospital",
            "https://hospital.example"
        )
    );
    // The verification code was sent as for any registration.
    shared_sink()
        .wait_for(&founder, 1, Duration::from_secs(30))
        .await;

    // A taken slug: no account is left behind.
    let second = email("second");
    refused(
        register(&second, "Another", "general-hospital").await,
        Code::AlreadyExists,
        "SLUG_TAKEN",
    );
    refused(
        app.login(&second, PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // A taken email: no organization is left behind (its slug is still free).
    refused(
        register(&founder, "Duplicate", "duplicate-hospital").await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
    );
    let orgs_stored = collection(&app, "orgs")
        .await
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(orgs_stored, 1);
    // Organization fields are checked with the account's, before anything is stored.
    let status = register(&second, " ", "Bad Slug").await.unwrap_err();
    let fields: HashSet<String> = violations(&status).into_iter().map(|v| v.0).collect();
    assert_eq!(
        fields,
        HashSet::from(["organization.name".into(), "organization.slug".into()])
    );
    // An individual registers without one.
    let individual = app.try_register(&second).await.unwrap();
    assert!(individual.org_id.is_empty());
    let pair = app.login(&second, PASSWORD).await.unwrap();
    assert!(app
        .as_user(&pair)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest {
            page_size: 0,
            page_token: String::new()
        })
        .await
        .unwrap()
        .into_inner()
        .orgs
        .is_empty());
}

#[tokio::test]
async fn grpcurl_creates_an_org_invites_accepts_and_authorizes() {
    let app = TestApp::start().await;
    let addr = app.addr.to_string();
    let owner = app.signed_in(&email("grpcurl-owner")).await;
    let invitee_email = email("grpcurl-invitee");
    let invitee = verified(&app, &invitee_email).await;

    let created = grpcurl_call(
        &addr,
        &owner.access_token,
        "OrgService/CreateOrg",
        r#"{"name":"Grpcurl General","website":"https://grpcurl.example"}"#.into(),
    )
    .await;
    let org_id = created["organization"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["organization"]["slug"], "grpcurl-general");

    let seen = invitation_tokens(&invitee_email);
    let invited = grpcurl_call(
        &addr,
        &owner.access_token,
        "OrgService/InviteMember",
        format!(
            r#"{{"org_id":"{org_id}","email":"{invitee_email}","role":"ORG_ROLE_MEMBER","department":"triage"}}"#
        ),
    )
    .await;
    assert_eq!(invited["invitation"]["email"], invitee_email.as_str());
    assert!(
        !invited.to_string().contains("kwi_"),
        "the API never returns the token"
    );
    let token = new_invitation_token(&invitee_email, &seen).await;

    let accepted = grpcurl_call(
        &addr,
        &invitee.access_token,
        "OrgService/AcceptInvitation",
        format!(r#"{{"token":"{token}"}}"#),
    )
    .await;
    assert_eq!(accepted["member"]["role"], "ORG_ROLE_MEMBER");
    assert_eq!(accepted["member"]["department"], "triage");

    let check = |permission: &str| {
        format!(
            r#"{{"access_token":"{}","permission":"{permission}","org_id":"{org_id}"}}"#,
            invitee.access_token
        )
    };
    let allowed = grpcurl_call(&addr, "", "AuthService/Authorize", check("org.read")).await;
    assert_eq!(allowed["allowed"], true, "{allowed}");
    let denied = grpcurl_call(&addr, "", "AuthService/Authorize", check("org.delete")).await;
    assert_ne!(denied["allowed"], true, "{denied}");
    assert_eq!(denied["reason"], "ORG_ROLE_TOO_LOW");

    // A refusal shows the status and the reason.
    let (addr2, header) = (
        addr.clone(),
        format!("authorization: Bearer {}", invitee.access_token),
    );
    let body = format!(r#"{{"org_id":"{org_id}"}}"#);
    let (ok, out) = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-H",
            &header,
            "-d",
            &body,
            &addr2,
            "keyward.v1.OrgService/DeleteOrg",
        ])
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        out.contains("Code: PermissionDenied") && out.contains("PERMISSION_DENIED"),
        "{out}"
    );
}

#[tokio::test]
async fn an_invitation_dies_with_its_inviters_account() {
    // The inviter keeps the admin membership but their account is disabled: nothing they sent
    // while it was active may still let anyone in.
    let app = TestApp::start().await;
    let owner = verified(&app, &email("owner")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Inviter Clinic".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let inviter_email = email("inviter");
    let inviter = verified(&app, &inviter_email).await;
    let inviter_id = uid(&inviter);
    let seen = invitation_tokens(&inviter_email);
    app.as_user(&owner)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: inviter_email.clone(),
            role: OrgRole::Admin as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = new_invitation_token(&inviter_email, &seen).await;
    app.as_user(&inviter)
        .orgs()
        .accept_invitation(AcceptInvitationRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let guest_email = email("guest");
    let guest = verified(&app, &guest_email).await;
    let seen = invitation_tokens(&guest_email);
    app.as_user(&inviter)
        .orgs()
        .invite_member(InviteMemberRequest {
            org_id: org.id.clone(),
            email: guest_email.clone(),
            role: OrgRole::Member as i32,
            department: "radiology".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .invitation
        .unwrap();
    let token = new_invitation_token(&guest_email, &seen).await;

    let (_, admin) = crate::users::with_role(&app, &email("platform-admin"), "admin").await;
    app.as_user(&admin)
        .users()
        .disable_user(DisableUserRequest {
            user_id: inviter_id,
            reason: "left the company".into(),
        })
        .await
        .unwrap();
    refused(
        app.as_user(&guest)
            .orgs()
            .accept_invitation(AcceptInvitationRequest {
                token: token.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "INVITATION_REVOKED",
    );
}
