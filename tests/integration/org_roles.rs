//! Organizations' custom roles end to end: defined by an organization's admins with extra
//! catalogue permissions, assigned to members through UpdateMember, decided by Authorize,
//! BatchAuthorize and ext_authz (GRANTED_BY_CUSTOM_ROLE), and the no-escalation rule — nobody
//! (a member, an org admin, an admin of another organization, a service account's key) grants a
//! role or a permission beyond their own.

use std::sync::Arc;

use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::*;
use mongodb::bson::{doc, Document};
use tonic::Code;

use crate::harness::*;
use crate::permissions::{
    allowed, decide, denied, envoy_allowed, envoy_denied, in_org, invalid, member_signed_in,
    through_envoy,
};
use crate::users::with_role;

const READ: &str = "notes.notes.read";
const SIGN: &str = "notes.notes.sign";
const PURGE: &str = "notes.notes.purge";

fn uid(pair: &TokenPair) -> String {
    pair.user.as_ref().unwrap().id.clone()
}

fn role_request(
    org_id: &str,
    name: &str,
    base: OrgRole,
    permissions: &[&str],
) -> DefineOrgRoleRequest {
    DefineOrgRoleRequest {
        org_id: org_id.into(),
        name: name.into(),
        description: format!("{name}, for the tests"),
        base_role: base as i32,
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
    }
}

/// The catalogue the tests use: READ for members, SIGN for admins, PURGE for owners, and a
/// platform permission. Returns the platform admin's token.
async fn notes_catalogue(app: &TestApp) -> String {
    let (_, admin) = with_role(app, &email("platform-admin"), "admin").await;
    let a = &admin.access_token;
    app.as_token(a)
        .permissions()
        .define_permission(in_org(READ, OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(a)
        .permissions()
        .define_permission(in_org(SIGN, OrgRole::Admin))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(a)
        .permissions()
        .define_permission(in_org(PURGE, OrgRole::Owner))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(a)
        .permissions()
        .define_permission(DefinePermissionRequest {
            name: "notes.reports.export".into(),
            scope: PermissionScope::Platform as i32,
            least_role: Role::User as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    admin.access_token
}

async fn audit_events(app: &TestApp, action: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    app.db()
        .await
        .collection::<Document>("audit_events")
        .find(doc! { "action": action })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_custom_role_grants_its_permissions_to_its_members_until_taken_away_or_deleted() {
    let app = TestApp::start().await;
    notes_catalogue(&app).await;
    let owner = app.signed_in(&email("owner")).await;
    let o = &owner.access_token;
    let org = app
        .as_token(o)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let other_org = app
        .as_token(o)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Other hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let assistant = member_signed_in(&app, o, &org, "assistant", OrgRole::Member).await;
    let colleague = member_signed_in(&app, o, &org, "colleague", OrgRole::Member).await;
    let (a, c) = (&assistant.access_token, &colleague.access_token);

    let role = app
        .as_token(o)
        .orgs()
        .define_org_role(role_request(&org, "assistant", OrgRole::Member, &[SIGN]))
        .await
        .unwrap_or_else(|e| panic!("define role assistant: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    assert_eq!(
        (
            role.org_id.as_str(),
            role.base_role,
            role.permissions.as_slice()
        ),
        (
            org.as_str(),
            OrgRole::Member as i32,
            &[SIGN.to_string()][..]
        )
    );
    assert!(role.created_at.is_some() && role.updated_at.is_some());
    // Defined, nothing granted yet.
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );

    let member = app
        .as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&assistant),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("assistant".into()),
        })
        .await
        .expect("assign")
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(
        (member.role, member.custom_role.as_str()),
        (OrgRole::Member as i32, "assistant")
    );
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        allowed("GRANTED_BY_CUSTOM_ROLE")
    );
    // Its base role still decides the rest; nothing outside the organization or the catalogue.
    assert_eq!(
        decide(&app, a, READ, &org).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    assert_eq!(
        decide(&app, a, PURGE, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, a, "org.write", &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, a, SIGN, &other_org).await,
        denied("NOT_A_MEMBER")
    );
    assert_eq!(decide(&app, a, SIGN, "").await, denied("ORG_REQUIRED"));
    // A member without it is refused.
    assert_eq!(
        decide(&app, c, SIGN, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );

    // BatchAuthorize and Envoy decide the same.
    let batch = AuthServiceClient::new(app.channel())
        .batch_authorize(BatchAuthorizeRequest {
            access_token: a.clone(),
            checks: [SIGN, PURGE, READ]
                .iter()
                .map(|p| PermissionCheck {
                    permission: p.to_string(),
                    org_id: org.clone(),
                })
                .collect(),
        })
        .await
        .expect("batch authorize")
        .into_inner();
    let got: Vec<(bool, String)> = batch
        .decisions
        .into_iter()
        .map(|d| (d.allowed, d.reason))
        .collect();
    assert_eq!(
        got,
        [
            allowed("GRANTED_BY_CUSTOM_ROLE"),
            denied("ORG_ROLE_TOO_LOW"),
            allowed("GRANTED_BY_ORG_ROLE")
        ]
    );
    let headers = envoy_allowed(&through_envoy(&app, a, SIGN, &org).await);
    assert_eq!(headers["x-keyward-org-role"], "member");
    assert_eq!(
        envoy_denied(&through_envoy(&app, c, SIGN, &org).await),
        (7, 403, "ORG_ROLE_TOO_LOW".to_string())
    );

    // Members see it in the listings.
    let listed = app
        .as_token(c)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: org.clone(),
            page_size: 200,
            ..Default::default()
        })
        .await
        .expect("list members")
        .into_inner()
        .members;
    let shown = listed
        .iter()
        .find(|m| m.user.as_ref().unwrap().id == uid(&assistant))
        .unwrap();
    assert_eq!(shown.custom_role, "assistant");
    let mine = app
        .as_token(a)
        .orgs()
        .list_my_orgs(ListMyOrgsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .orgs;
    assert_eq!(mine[0].custom_role, "assistant");
    let roles = app
        .as_token(c)
        .orgs()
        .list_org_roles(ListOrgRolesRequest {
            org_id: org.clone(),
        })
        .await
        .expect("members list roles")
        .into_inner()
        .roles;
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].name, "assistant");

    // Taken away: refused from the next call.
    let member = app
        .as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&assistant),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(
        (member.role, member.custom_role.as_str()),
        (OrgRole::Member as i32, "")
    );
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );

    // A change of built-in role takes it away too.
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&assistant),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("assistant".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    let member = app
        .as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&assistant),
            role: OrgRole::Admin as i32,
            department: None,
            custom_role: None,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(
        (member.role, member.custom_role.as_str()),
        (OrgRole::Admin as i32, "")
    );
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&assistant),
            role: OrgRole::Member as i32,
            department: None,
            custom_role: None,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    // Asking its own base role with it is fine; another role is not.
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&assistant),
            role: OrgRole::Member as i32,
            department: None,
            custom_role: Some("assistant".into()),
        })
        .await
        .expect("assign with its base role")
        .into_inner()
        .member
        .expect("a member");
    invalid(
        app.as_token(o)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.clone(),
                user_id: uid(&assistant),
                role: OrgRole::Admin as i32,
                department: None,
                custom_role: Some("assistant".into()),
            })
            .await
            .map(|r| r.into_inner().member.expect("a member")),
        "role",
        "a role other than the base role",
    );

    // A widened role grants more from the next call.
    app.as_token(o)
        .orgs()
        .update_org_role(UpdateOrgRoleRequest {
            org_id: org.clone(),
            name: "assistant".into(),
            description: None,
            permissions: Some(PermissionNames {
                names: [SIGN, PURGE].iter().map(|p| p.to_string()).collect(),
            }),
        })
        .await
        .expect("owner widens the role")
        .into_inner()
        .role
        .expect("a role");
    assert_eq!(
        decide(&app, a, PURGE, &org).await,
        allowed("GRANTED_BY_CUSTOM_ROLE")
    );

    // Deleted: its members keep the base role and lose its permissions at once.
    let old_role_id = app
        .db()
        .await
        .collection::<Document>("org_roles")
        .find_one(doc! { "org_id": &org, "name": "assistant" })
        .await
        .unwrap()
        .unwrap()
        .get_str("_id")
        .unwrap()
        .to_string();
    app.as_token(o)
        .orgs()
        .delete_org_role(DeleteOrgRoleRequest {
            org_id: org.clone(),
            name: "assistant".into(),
        })
        .await
        .expect("delete role");
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, a, READ, &org).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    let listed = app
        .as_token(o)
        .orgs()
        .list_members(ListMembersRequest {
            org_id: org.clone(),
            page_size: 200,
            ..Default::default()
        })
        .await
        .expect("list members")
        .into_inner()
        .members;
    let shown = listed
        .iter()
        .find(|m| m.user.as_ref().unwrap().id == uid(&assistant))
        .unwrap();
    assert_eq!(
        (shown.role, shown.custom_role.as_str()),
        (OrgRole::Member as i32, "")
    );
    assert!(app
        .as_token(o)
        .orgs()
        .list_org_roles(ListOrgRolesRequest {
            org_id: org.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .roles
        .is_empty());
    refused(
        app.as_token(o)
            .orgs()
            .delete_org_role(DeleteOrgRoleRequest {
                org_id: org.clone(),
                name: "assistant".into(),
            })
            .await,
        Code::NotFound,
        "ORG_ROLE_NOT_FOUND",
    );
    // A new role of the same name starts with nobody — even for a member a deletion cut short
    // left naming the old one (memberships name their role by id).
    app.as_token(o)
        .orgs()
        .define_org_role(role_request(&org, "assistant", OrgRole::Member, &[SIGN]))
        .await
        .unwrap_or_else(|e| panic!("define role assistant: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    app.db()
        .await
        .collection::<Document>("memberships")
        .update_one(
            doc! { "org_id": &org, "user_id": uid(&assistant) },
            doc! { "$set": { "custom_role": "assistant", "custom_role_id": &old_role_id } },
        )
        .await
        .unwrap();
    // Written behind keyward's back: seen once the cached membership expires (1 s).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );

    // Every change is audited with who made it.
    let owner_id = uid(&owner);
    for action in ["org.role.define", "org.role.update", "org.role.delete"] {
        let events = audit_events(&app, action).await;
        assert!(!events.is_empty(), "{action} audited");
        for e in events {
            assert_eq!(e.get_str("actor_id").unwrap(), owner_id, "{action}: {e:?}");
            assert_eq!(
                e.get_document("detail").unwrap().get_str("org_id").unwrap(),
                org
            );
        }
    }
    let assigned = audit_events(&app, "org.member.update").await;
    assert!(assigned.iter().any(|e| {
        let d = e.get_document("detail").unwrap();
        d.get_str("custom_role_after") == Ok("assistant")
    }));
}

#[tokio::test]
async fn permissions_names_and_caps_that_do_not_fit_are_refused_naming_the_field() {
    let app = TestApp::start().await;
    notes_catalogue(&app).await;
    let owner = app.signed_in(&email("owner")).await;
    let o = &owner.access_token;
    let org = app
        .as_token(o)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let request =
        |name: &str, permissions: &[&str]| role_request(&org, name, OrgRole::Member, permissions);

    for (permission, case) in [
        ("notes.reports.export", "a platform permission"),
        ("org.members.write", "a built-in permission"),
        ("org.delete", "a built-in owner permission"),
        ("notes.notes.unknown", "not in the catalogue"),
        ("", "empty"),
        ("NOTES", "malformed"),
    ] {
        invalid(
            app.as_token(o)
                .orgs()
                .define_org_role(request("assistant", &[permission]))
                .await
                .map(|r| r.into_inner().role.expect("a role")),
            "permissions[0]",
            case,
        );
    }
    invalid(
        app.as_token(o)
            .orgs()
            .define_org_role(request("assistant", &[SIGN, READ, SIGN]))
            .await
            .map(|r| r.into_inner().role.expect("a role")),
        "permissions[2]",
        "a repeated permission",
    );
    let many: Vec<String> = (0..65).map(|i| format!("notes.n{i}.read")).collect();
    invalid(
        app.as_token(o)
            .orgs()
            .define_org_role(DefineOrgRoleRequest {
                permissions: many,
                ..request("assistant", &[])
            })
            .await
            .map(|r| r.into_inner().role.expect("a role")),
        "permissions",
        "65 permissions",
    );
    for name in [
        "",
        "a",
        "Assistant",
        "1st-shift",
        "-assistant",
        "ward nurse",
        "ward_nurse",
        "infirmière",
        &"a".repeat(41),
        "admin",
        "owner",
        "member",
    ] {
        invalid(
            app.as_token(o)
                .orgs()
                .define_org_role(request(name, &[SIGN]))
                .await
                .map(|r| r.into_inner().role.expect("a role")),
            "name",
            &format!("name {name:?}"),
        );
    }
    invalid(
        app.as_token(o)
            .orgs()
            .define_org_role(DefineOrgRoleRequest {
                description: "x".repeat(501),
                ..request("assistant", &[])
            })
            .await
            .map(|r| r.into_inner().role.expect("a role")),
        "description",
        "a long description",
    );
    invalid(
        app.as_token(o)
            .orgs()
            .define_org_role(role_request(&org, "boss", OrgRole::Owner, &[]))
            .await
            .map(|r| r.into_inner().role.expect("a role")),
        "base_role",
        "an owner base role",
    );
    invalid(
        app.as_token(o)
            .orgs()
            .define_org_role(DefineOrgRoleRequest {
                base_role: 42,
                ..request("assistant", &[])
            })
            .await
            .map(|r| r.into_inner().role.expect("a role")),
        "base_role",
        "an unknown base role",
    );
    invalid(
        app.as_token(o)
            .orgs()
            .update_org_role(UpdateOrgRoleRequest {
                org_id: org.clone(),
                name: "assistant".into(),
                description: None,
                permissions: Some(PermissionNames {
                    names: ["notes.reports.export"]
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                }),
            })
            .await
            .map(|r| r.into_inner().role.expect("a role")),
        "permissions[0]",
        "update with a platform permission",
    );
    assert!(app
        .as_token(o)
        .orgs()
        .list_org_roles(ListOrgRolesRequest {
            org_id: org.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .roles
        .is_empty());

    // Unspecified base role: member. The longest name and description fit.
    let longest = "a".repeat(40);
    let role = app
        .as_token(o)
        .orgs()
        .define_org_role(DefineOrgRoleRequest {
            base_role: OrgRole::Unspecified as i32,
            description: "é".repeat(500),
            ..request(&longest, &[])
        })
        .await
        .expect("the limits fit")
        .into_inner()
        .role
        .expect("a role");
    assert_eq!(role.base_role, OrgRole::Member as i32);

    // A name is unique per organization, not across them.
    app.as_token(o)
        .orgs()
        .define_org_role(role_request(&org, "assistant", OrgRole::Member, &[SIGN]))
        .await
        .unwrap_or_else(|e| panic!("define role assistant: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    refused(
        app.as_token(o)
            .orgs()
            .define_org_role(request("assistant", &[]))
            .await,
        Code::AlreadyExists,
        "ORG_ROLE_EXISTS",
    );
    let other = app
        .as_token(o)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Other".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    app.as_token(o)
        .orgs()
        .define_org_role(role_request(&other, "assistant", OrgRole::Member, &[]))
        .await
        .unwrap_or_else(|e| panic!("define role assistant: {e:?}"))
        .into_inner()
        .role
        .expect("a role");

    // Unknown roles.
    let member = member_signed_in(&app, o, &org, "member", OrgRole::Member).await;
    refused(
        app.as_token(o)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.clone(),
                user_id: uid(&member),
                role: OrgRole::Unspecified as i32,
                department: None,
                custom_role: Some("nurse".into()),
            })
            .await,
        Code::NotFound,
        "ORG_ROLE_NOT_FOUND",
    );
    refused(
        app.as_token(o)
            .orgs()
            .update_org_role(UpdateOrgRoleRequest {
                org_id: org.clone(),
                name: "nurse".into(),
                description: None,
                permissions: Some(PermissionNames { names: vec![] }),
            })
            .await,
        Code::NotFound,
        "ORG_ROLE_NOT_FOUND",
    );

    // At most 50 roles per organization.
    for i in 2..50 {
        app.as_token(o)
            .orgs()
            .define_org_role(role_request(
                &org,
                &format!("role-{i}"),
                OrgRole::Member,
                &[],
            ))
            .await
            .unwrap_or_else(|e| panic!("define role role-{i}: {e:?}"))
            .into_inner()
            .role
            .expect("a role");
    }
    assert_eq!(
        app.as_token(o)
            .orgs()
            .list_org_roles(ListOrgRolesRequest {
                org_id: org.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .roles
            .len(),
        50
    );
    refused(
        app.as_token(o)
            .orgs()
            .define_org_role(request("one-too-many", &[]))
            .await,
        Code::FailedPrecondition,
        "TOO_MANY_ORG_ROLES",
    );
}

#[tokio::test]
async fn nobody_grants_a_custom_role_or_permission_above_their_own() {
    let app = TestApp::start().await;
    notes_catalogue(&app).await;
    let owner = app.signed_in(&email("owner")).await;
    let o = &owner.access_token;
    let org = app
        .as_token(o)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let admin = member_signed_in(&app, o, &org, "org-admin", OrgRole::Admin).await;
    let ad = &admin.access_token;
    let member = member_signed_in(&app, o, &org, "member", OrgRole::Member).await;
    let m = &member.access_token;
    let nurse = member_signed_in(&app, o, &org, "nurse", OrgRole::Member).await;

    // An org admin defines roles up to admin with what an admin holds.
    app.as_token(ad)
        .orgs()
        .define_org_role(role_request(&org, "signer", OrgRole::Member, &[SIGN, READ]))
        .await
        .unwrap_or_else(|e| panic!("define role signer: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    app.as_token(ad)
        .orgs()
        .define_org_role(role_request(&org, "deputy", OrgRole::Admin, &[SIGN]))
        .await
        .unwrap_or_else(|e| panic!("define role deputy: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    // Not a permission they lack, nor a role above their own.
    refused(
        app.as_token(ad)
            .orgs()
            .define_org_role(role_request(
                &org,
                "purger",
                OrgRole::Member,
                &[SIGN, PURGE],
            ))
            .await,
        Code::PermissionDenied,
        "PERMISSION_NOT_HELD",
    );
    refused(
        app.as_token(ad)
            .orgs()
            .update_org_role(UpdateOrgRoleRequest {
                org_id: org.clone(),
                name: "signer".into(),
                description: None,
                permissions: Some(PermissionNames {
                    names: [SIGN, PURGE].iter().map(|p| p.to_string()).collect(),
                }),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_NOT_HELD",
    );
    // The owner may; the admin still cannot hand that role out.
    app.as_token(o)
        .orgs()
        .define_org_role(role_request(&org, "purger", OrgRole::Member, &[PURGE]))
        .await
        .unwrap_or_else(|e| panic!("define role purger: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    refused(
        app.as_token(ad)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.clone(),
                user_id: uid(&nurse),
                role: OrgRole::Unspecified as i32,
                department: None,
                custom_role: Some("purger".into()),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_NOT_HELD",
    );
    assert_eq!(
        decide(&app, &nurse.access_token, PURGE, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    // But may take it away from someone (nothing is granted by that).
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&nurse),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("purger".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    app.as_token(ad)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&nurse),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("".into()),
        })
        .await
        .expect("admin clears")
        .into_inner()
        .member
        .expect("a member");

    // An admin assigns roles based on admin, within their reach.
    let promoted = app
        .as_token(ad)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&nurse),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("deputy".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(promoted.role, OrgRole::Admin as i32);
    // Never to an owner (their role is above the admin's).
    refused(
        app.as_token(ad)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.clone(),
                user_id: uid(&owner),
                role: OrgRole::Unspecified as i32,
                department: None,
                custom_role: Some("signer".into()),
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );

    // A member can define, change, delete and assign nothing — themself included, and a custom
    // role with extra permissions changes nothing of that.
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&member),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("signer".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(
        decide(&app, m, SIGN, &org).await,
        allowed("GRANTED_BY_CUSTOM_ROLE")
    );
    refused(
        app.as_token(m)
            .orgs()
            .define_org_role(role_request(&org, "mine", OrgRole::Member, &[]))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(m)
            .orgs()
            .update_org_role(UpdateOrgRoleRequest {
                org_id: org.clone(),
                name: "signer".into(),
                description: None,
                permissions: Some(PermissionNames {
                    names: [SIGN, PURGE].iter().map(|p| p.to_string()).collect(),
                }),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(m)
            .orgs()
            .delete_org_role(DeleteOrgRoleRequest {
                org_id: org.clone(),
                name: "purger".into(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    for name in ["deputy", "purger", ""] {
        refused(
            app.as_token(m)
                .orgs()
                .update_member(UpdateMemberRequest {
                    org_id: org.clone(),
                    user_id: uid(&member),
                    role: OrgRole::Unspecified as i32,
                    department: None,
                    custom_role: Some(name.to_string()),
                })
                .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    assert_eq!(
        decide(&app, m, PURGE, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );

    // What an admin holds through their own custom role, they may grant.
    let chief = member_signed_in(&app, o, &org, "chief", OrgRole::Admin).await;
    app.as_token(o)
        .orgs()
        .define_org_role(role_request(&org, "chief", OrgRole::Admin, &[PURGE]))
        .await
        .unwrap_or_else(|e| panic!("define role chief: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&chief),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("chief".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    app.as_user(&chief)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&nurse),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("purger".into()),
        })
        .await
        .expect("the chief holds purge")
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(
        decide(&app, &nurse.access_token, PURGE, &org).await,
        allowed("GRANTED_BY_CUSTOM_ROLE")
    );
    app.as_user(&chief)
        .orgs()
        .define_org_role(role_request(&org, "cleaner", OrgRole::Member, &[PURGE]))
        .await
        .unwrap_or_else(|e| panic!("define role cleaner: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    // Once it is gone, so is that reach.
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&chief),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    refused(
        app.as_user(&chief)
            .orgs()
            .define_org_role(role_request(&org, "cleaner-2", OrgRole::Member, &[PURGE]))
            .await,
        Code::PermissionDenied,
        "PERMISSION_NOT_HELD",
    );

    // Nobody rises above their own role either: an admin's self-assignment of a role based on
    // member is a demotion they may make, never a promotion to owner.
    refused(
        app.as_token(ad)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org.clone(),
                user_id: uid(&admin),
                role: OrgRole::Owner as i32,
                department: None,
                custom_role: None,
            })
            .await,
        Code::PermissionDenied,
        "ROLE_TOO_HIGH",
    );
}

#[tokio::test]
async fn other_organizations_admins_and_service_account_keys_can_do_nothing_with_roles() {
    let app = TestApp::start().await;
    let platform_admin = notes_catalogue(&app).await;
    let owner_a = app.signed_in(&email("owner-a")).await;
    let owner_b = app.signed_in(&email("owner-b")).await;
    let org_a = app
        .as_user(&owner_a)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "A".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let org_b = app
        .as_user(&owner_b)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "B".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let admin_a = member_signed_in(
        &app,
        &owner_a.access_token,
        &org_a,
        "admin-a",
        OrgRole::Admin,
    )
    .await;
    let aa = &admin_a.access_token;
    let member_b = member_signed_in(
        &app,
        &owner_b.access_token,
        &org_b,
        "member-b",
        OrgRole::Member,
    )
    .await;
    app.as_user(&owner_a)
        .orgs()
        .define_org_role(role_request(&org_a, "signer", OrgRole::Member, &[SIGN]))
        .await
        .unwrap_or_else(|e| panic!("define role signer: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    app.as_user(&owner_b)
        .orgs()
        .define_org_role(role_request(&org_b, "reader", OrgRole::Member, &[]))
        .await
        .unwrap_or_else(|e| panic!("define role reader: {e:?}"))
        .into_inner()
        .role
        .expect("a role");

    // Admin of A in B: nothing.
    refused(
        app.as_token(aa)
            .orgs()
            .define_org_role(role_request(&org_b, "signer", OrgRole::Member, &[SIGN]))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(aa)
            .orgs()
            .list_org_roles(ListOrgRolesRequest {
                org_id: org_b.clone(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(aa)
            .orgs()
            .update_org_role(UpdateOrgRoleRequest {
                org_id: org_b.clone(),
                name: "reader".into(),
                description: None,
                permissions: Some(PermissionNames {
                    names: [SIGN].iter().map(|p| p.to_string()).collect(),
                }),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(aa)
            .orgs()
            .delete_org_role(DeleteOrgRoleRequest {
                org_id: org_b.clone(),
                name: "reader".into(),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // Nor A's role to B's member, through either organization.
    refused(
        app.as_token(aa)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org_b.clone(),
                user_id: uid(&member_b),
                role: OrgRole::Unspecified as i32,
                department: None,
                custom_role: Some("signer".into()),
            })
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    refused(
        app.as_token(aa)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org_a.clone(),
                user_id: uid(&member_b),
                role: OrgRole::Unspecified as i32,
                department: None,
                custom_role: Some("signer".into()),
            })
            .await,
        Code::NotFound,
        "MEMBER_NOT_FOUND",
    );
    // B's owner cannot use A's role name in B.
    refused(
        app.as_user(&owner_b)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org_b.clone(),
                user_id: uid(&member_b),
                role: OrgRole::Unspecified as i32,
                department: None,
                custom_role: Some("signer".into()),
            })
            .await,
        Code::NotFound,
        "ORG_ROLE_NOT_FOUND",
    );
    assert_eq!(
        decide(&app, &member_b.access_token, SIGN, &org_b).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    // Not even a platform admin, who is no member.
    refused(
        app.as_token(&platform_admin)
            .orgs()
            .define_org_role(role_request(&org_a, "root", OrgRole::Member, &[]))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // An organization that does not exist.
    refused(
        app.as_user(&owner_a)
            .orgs()
            .define_org_role(role_request(
                "0123456789abcdef0123456789abcdef",
                "x1",
                OrgRole::Member,
                &[],
            ))
            .await,
        Code::NotFound,
        "ORG_NOT_FOUND",
    );

    // A service account's key — an admin of A — is refused every role RPC.
    let account = app
        .as_user(&owner_a)
        .service_accounts()
        .create_service_account(crate::service_accounts::in_org(
            "robot",
            &org_a,
            OrgRole::Admin,
        ))
        .await
        .expect("create service account")
        .into_inner()
        .service_account
        .unwrap();
    let (_, key) =
        crate::service_accounts::create_key(&app, &owner_a.access_token, &account.id).await;
    let member_a = member_signed_in(
        &app,
        &owner_a.access_token,
        &org_a,
        "member-a",
        OrgRole::Member,
    )
    .await;
    refused(
        app.as_token(&key)
            .orgs()
            .define_org_role(role_request(&org_a, "robots", OrgRole::Member, &[]))
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .orgs()
            .list_org_roles(ListOrgRolesRequest {
                org_id: org_a.clone(),
            })
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .orgs()
            .update_org_role(UpdateOrgRoleRequest {
                org_id: org_a.clone(),
                name: "signer".into(),
                description: None,
                permissions: Some(PermissionNames {
                    names: [SIGN, PURGE].iter().map(|p| p.to_string()).collect(),
                }),
            })
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .orgs()
            .delete_org_role(DeleteOrgRoleRequest {
                org_id: org_a.clone(),
                name: "signer".into(),
            })
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    refused(
        app.as_token(&key)
            .orgs()
            .update_member(UpdateMemberRequest {
                org_id: org_a.clone(),
                user_id: uid(&member_a),
                role: OrgRole::Unspecified as i32,
                department: None,
                custom_role: Some("signer".into()),
            })
            .await,
        Code::PermissionDenied,
        "HUMAN_ONLY",
    );
    assert_eq!(
        decide(&app, &member_a.access_token, SIGN, &org_a).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    let roles = app
        .as_user(&owner_a)
        .orgs()
        .list_org_roles(ListOrgRolesRequest {
            org_id: org_a.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].permissions, [SIGN.to_string()]);
}

#[tokio::test]
async fn sixteen_concurrent_definitions_of_one_name_create_exactly_one_role() {
    let app = Arc::new(TestApp::start().await);
    notes_catalogue(&app).await;
    let owner = app.signed_in(&email("owner")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let results = race(16, |i| {
        let (app, token) = (app.clone(), owner.access_token.clone());
        let mut request = role_request(&org, "assistant", OrgRole::Member, &[SIGN]);
        request.description = format!("attempt {i}");
        async move {
            app.as_token(&token)
                .orgs()
                .define_org_role(request)
                .await
                .map(|r| r.into_inner().role.expect("a role"))
        }
    })
    .await;
    let mut created = 0;
    for result in results {
        match result {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(
                (e.code(), reason(&e).as_str()),
                (Code::AlreadyExists, "ORG_ROLE_EXISTS"),
                "{e:?}"
            ),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(
        app.as_user(&owner)
            .orgs()
            .list_org_roles(ListOrgRolesRequest {
                org_id: org.clone()
            })
            .await
            .unwrap()
            .into_inner()
            .roles
            .len(),
        1
    );
}

#[tokio::test]
async fn a_permission_deleted_from_the_catalogue_grants_nothing_and_a_deleted_org_takes_its_roles()
{
    let app = TestApp::start().await;
    let platform_admin = notes_catalogue(&app).await;
    let owner = app.signed_in(&email("owner")).await;
    let o = &owner.access_token;
    let org = app
        .as_token(o)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Hospital".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let assistant = member_signed_in(&app, o, &org, "assistant", OrgRole::Member).await;
    let a = &assistant.access_token;
    app.as_token(o)
        .orgs()
        .define_org_role(role_request(&org, "assistant", OrgRole::Member, &[SIGN]))
        .await
        .unwrap_or_else(|e| panic!("define role assistant: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    app.as_token(o)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: uid(&assistant),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("assistant".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        allowed("GRANTED_BY_CUSTOM_ROLE")
    );

    // Deleted from the catalogue: unknown, whatever the role lists; through Envoy too.
    app.as_token(&platform_admin)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: SIGN.to_string(),
        })
        .await
        .expect("delete permission");
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("UNKNOWN_PERMISSION")
    );
    assert_eq!(
        envoy_denied(&through_envoy(&app, a, SIGN, &org).await),
        (7, 403, "UNKNOWN_PERMISSION".to_string())
    );
    // Defined again as a platform permission, the old listing grants nothing in the organization.
    app.as_token(&platform_admin)
        .permissions()
        .define_permission(DefinePermissionRequest {
            name: SIGN.into(),
            scope: PermissionScope::Platform as i32,
            least_role: Role::Admin as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, a, SIGN, &org).await,
        denied("NOT_AN_ORG_PERMISSION")
    );
    assert_eq!(decide(&app, a, SIGN, "").await, denied("ROLE_TOO_LOW"));

    // Deleting the organization deletes its roles.
    let roles = app.db().await.collection::<Document>("org_roles");
    assert_eq!(
        roles
            .count_documents(doc! { "org_id": &org })
            .await
            .unwrap(),
        1
    );
    app.as_token(o)
        .orgs()
        .delete_org(DeleteOrgRequest {
            org_id: org.clone(),
        })
        .await
        .expect("delete org");
    assert_eq!(
        roles
            .count_documents(doc! { "org_id": &org })
            .await
            .unwrap(),
        0
    );
    assert_eq!(decide(&app, a, READ, &org).await, denied("NOT_A_MEMBER"));
}

#[tokio::test]
async fn a_custom_role_permission_that_requires_mfa_still_needs_a_two_factor_session() {
    let app = TestApp::start().await;
    let platform_admin = notes_catalogue(&app).await;
    let export = "notes.records.export";
    app.as_token(&platform_admin)
        .permissions()
        .define_permission(DefinePermissionRequest {
            requires_mfa: true,
            ..in_org(export, OrgRole::Admin)
        })
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    // A user with an authenticator owns an organization, makes a second owner, who then gives
    // them a custom role based on member.
    let enrolled = crate::mfa::enrolled(&app, "mfa-assistant").await;
    let e = &enrolled.session.access_token;
    let org = app
        .as_token(e)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Two factors".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let second = member_signed_in(&app, e, &org, "second-owner", OrgRole::Owner).await;
    let s = &second.access_token;
    app.as_token(s)
        .orgs()
        .define_org_role(role_request(
            &org,
            "exporter",
            OrgRole::Member,
            &[export, SIGN],
        ))
        .await
        .unwrap_or_else(|e| panic!("define role exporter: {e:?}"))
        .into_inner()
        .role
        .expect("a role");
    let member = app
        .as_token(s)
        .orgs()
        .update_member(UpdateMemberRequest {
            org_id: org.clone(),
            user_id: enrolled.user_id.clone(),
            role: OrgRole::Unspecified as i32,
            department: None,
            custom_role: Some("exporter".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .expect("a member");
    assert_eq!(member.role, OrgRole::Member as i32);

    assert_eq!(
        decide(&app, e, SIGN, &org).await,
        allowed("GRANTED_BY_CUSTOM_ROLE")
    );
    assert_eq!(decide(&app, e, export, &org).await, denied("MFA_REQUIRED"));
    let stepped = crate::mfa::step_up(&app, e, "", &enrolled.recovery_codes[0])
        .await
        .expect("step up");
    assert_eq!(
        decide(&app, &stepped.access_token, export, &org).await,
        allowed("GRANTED_BY_CUSTOM_ROLE")
    );
    // A member without the role is refused for the role, not the factor.
    let plain = member_signed_in(&app, s, &org, "plain", OrgRole::Member).await;
    assert_eq!(
        decide(&app, &plain.access_token, export, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
}
