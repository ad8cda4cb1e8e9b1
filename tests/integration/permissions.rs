//! The permission catalogue end to end: PermissionService (who may change it, the names and
//! roles it refuses, the audit trail), catalogue permissions decided by Authorize,
//! BatchAuthorize and ext_authz exactly like built-in ones (global role, organization role,
//! cross-tenant, requires_mfa), changes seen at once on the replica that made them and within
//! seconds on another keyward process, and the catalogue file: `keyward permissions apply FILE
//! [--dry-run]` through the real binary, and `permissions_file` applied at start-up.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use keyward::config::Config;
use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::permission_service_client::PermissionServiceClient;
use keyward::grpc::pb::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::ext_authz::{check, http_request};
use crate::harness::*;
use crate::mfa::{current_step, totp_codes};
use crate::users::with_role;

// ---------------------------------------------------------------------------------------------
// PermissionService

/// A platform permission held from global role `least` up.
fn platform(name: &str, least: Role) -> DefinePermissionRequest {
    DefinePermissionRequest {
        name: name.into(),
        description: format!("{name}, for the tests"),
        scope: PermissionScope::Platform as i32,
        least_role: least as i32,
        ..Default::default()
    }
}

/// An organization permission held from organization role `least` up.
pub(crate) fn in_org(name: &str, least: OrgRole) -> DefinePermissionRequest {
    DefinePermissionRequest {
        name: name.into(),
        description: format!("{name}, for the tests"),
        scope: PermissionScope::Organization as i32,
        least_org_role: least as i32,
        ..Default::default()
    }
}

/// The catalogue (not built-in) permissions' names, as listed.
async fn catalogue_names(app: &TestApp, token: &str) -> Vec<String> {
    app.as_token(token)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions
        .into_iter()
        .filter(|p| !p.built_in)
        .map(|p| p.name)
        .collect()
}

/// Asserts INVALID_ARGUMENT with a field violation naming `field`.
#[track_caller]
pub(crate) fn invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str, case: &str) {
    let status = match result {
        Ok(v) => panic!("{case}: accepted: {v:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    let fields: Vec<String> = violations(&status).into_iter().map(|(f, _)| f).collect();
    assert!(
        fields.iter().any(|f| f == field),
        "{case}: no violation of {field:?} in {fields:?} ({status:?})"
    );
}

/// Asserts a refusal that is the caller's fault, never keyward's (INTERNAL, UNKNOWN, …).
#[track_caller]
fn refused_as_bad_input<T: std::fmt::Debug>(
    result: Result<T, Status>,
    allowed: &[Code],
    case: &str,
) {
    let status = match result {
        Ok(v) => panic!("{case}: accepted: {v:?}"),
        Err(status) => status,
    };
    assert!(
        allowed.contains(&status.code()),
        "{case}: {:?} is none of {allowed:?}: {status:?}",
        status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// Authorize

/// Authorize's (allowed, reason) for `permission` (in `org_id` unless empty).
async fn decide_on(
    channel: Channel,
    token: &str,
    permission: &str,
    org_id: &str,
) -> (bool, String) {
    let r = AuthServiceClient::new(channel)
        .authorize(AuthorizeRequest {
            access_token: token.into(),
            permission: permission.into(),
            org_id: org_id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("Authorize {permission} answers: {e:?}"))
        .into_inner();
    (r.allowed, r.reason)
}

pub(crate) async fn decide(
    app: &TestApp,
    token: &str,
    permission: &str,
    org_id: &str,
) -> (bool, String) {
    decide_on(app.channel(), token, permission, org_id).await
}

pub(crate) fn allowed(reason: &str) -> (bool, String) {
    (true, reason.to_string())
}

pub(crate) fn denied(reason: &str) -> (bool, String) {
    (false, reason.to_string())
}

/// Polls Authorize on `channel` until it answers `want`; panics after `within`. Returns how
/// long it took.
async fn until_decided(
    channel: &Channel,
    token: &str,
    permission: &str,
    org_id: &str,
    want: (bool, String),
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = decide_on(channel.clone(), token, permission, org_id).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{permission}: still {got:?} after {within:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Organizations

/// A new account made a member of `org_id` with `role` by `owner`, signed in.
pub(crate) async fn member_signed_in(
    app: &TestApp,
    owner: &str,
    org_id: &str,
    tag: &str,
    role: OrgRole,
) -> TokenPair {
    let email = email(tag);
    let request = CreateMemberRequest {
        org_id: org_id.into(),
        email: email.clone(),
        display_name: tag.into(),
        password: PASSWORD.into(),
        role: role as i32,
        department: String::new(),
    };
    app.as_token(owner)
        .orgs()
        .create_member(request)
        .await
        .expect("create member");
    app.login(&email, PASSWORD).await.expect("member login")
}

// ---------------------------------------------------------------------------------------------
// Envoy ext_authz

/// Envoy asking about a route that requires `permission` in the organization named by the
/// request's `x-org-id` header (none when `org_id` is empty).
pub(crate) async fn through_envoy(
    app: &TestApp,
    token: &str,
    permission: &str,
    org_id: &str,
) -> CheckResponse {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if !org_id.is_empty() {
        headers.push(("x-org-id", org_id));
    }
    check(
        app,
        http_request(
            &headers,
            &[("permission", permission), ("org_id_header", "x-org-id")],
        ),
    )
    .await
}

/// The headers an allowed request goes upstream with.
#[track_caller]
pub(crate) fn envoy_allowed(r: &CheckResponse) -> std::collections::HashMap<String, String> {
    assert_eq!(r.status.as_ref().unwrap().code, 0, "not allowed: {r:?}");
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not allowed: {r:?}")
    };
    ok.headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

/// (grpc code, http status, body reason) of a denial.
#[track_caller]
pub(crate) fn envoy_denied(r: &CheckResponse) -> (i32, i32, String) {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not a denial: {r:?}")
    };
    let body: serde_json::Value = serde_json::from_str(&d.body).expect("a JSON body");
    (
        r.status.as_ref().unwrap().code,
        d.status.as_ref().unwrap().code,
        body["reason"].as_str().unwrap_or_default().to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The catalogue file and the real `keyward permissions apply`

/// A scratch file for one test, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!(
            "keyward-permissions-{tag}-{}.toml",
            uuid::Uuid::new_v4().simple()
        )))
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One `[[permission]]` table.
fn entry(name: &str, scope: &str, least_role: &str, requires_mfa: bool) -> String {
    format!(
        "[[permission]]\nname = \"{name}\"\ndescription = \"{name} from the file\"\n\
         scope = \"{scope}\"\nleast_role = \"{least_role}\"\nrequires_mfa = {requires_mfa}\n\n"
    )
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// `keyward permissions apply FILE [--dry-run]` against `config`'s database.
fn apply(config: &Config, file: &Path, dry_run: bool) -> Run {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["permissions".as_ref(), "apply".as_ref(), file.as_os_str()];
    if dry_run {
        args.push("--dry-run".as_ref());
    }
    let out = Keyward::on(config, args)
        .env("KEYWARD_LOG_LEVEL", "warn")
        .output();
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn assert_applied(run: &Run, lines: &[&str], summary: &str) {
    assert!(run.success, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let printed: Vec<&str> = run.stdout.lines().map(str::trim).collect();
    for line in lines {
        assert!(
            printed.contains(line),
            "{line:?} not printed:\n{}",
            run.stdout
        );
    }
    assert!(
        printed.iter().any(|l| l.starts_with(summary)),
        "summary {summary:?} not printed:\n{}",
        run.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Who may change the catalogue

#[tokio::test]
async fn only_admins_change_the_catalogue_anyone_signed_in_reads_it_and_every_change_is_audited() {
    let app = TestApp::start().await;
    let (admin_id, admin) = with_role(&app, &email("admin"), "admin").await;
    let (_, root) = with_role(&app, &email("root"), "super_admin").await;
    let (_, guest) = with_role(&app, &email("guest"), "guest").await;
    let (_, user) = with_role(&app, &email("user"), "user").await;
    let (_, moderator) = with_role(&app, &email("mod"), "moderator").await;
    let name = "notes.reports.export";

    // Not signed in: nothing at all.
    refused(
        PermissionServiceClient::new(app.channel())
            .list_permissions(ListPermissionsRequest {})
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    refused(
        PermissionServiceClient::new(app.channel())
            .define_permission(platform(name, Role::User))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );

    // Users and moderators may not define, change or delete, whether the name exists or not.
    app.as_user(&admin)
        .permissions()
        .define_permission(platform(name, Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    for pair in [&guest, &user, &moderator] {
        let t = &pair.access_token;
        refused(
            app.as_token(t)
                .permissions()
                .define_permission(platform("notes.reports.print", Role::User))
                .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
        for target in [name, "notes.reports.missing"] {
            refused(
                app.as_token(t)
                    .permissions()
                    .update_permission(UpdatePermissionRequest {
                        name: target.into(),
                        least_role: Some(Role::Guest as i32),
                        ..Default::default()
                    })
                    .await,
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            );
            refused(
                app.as_token(t)
                    .permissions()
                    .delete_permission(DeletePermissionRequest {
                        name: target.to_string(),
                    })
                    .await,
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            );
        }
        // …but every signed-in user reads the catalogue.
        assert!(app
            .as_token(t)
            .permissions()
            .list_permissions(ListPermissionsRequest {})
            .await
            .expect("list permissions")
            .into_inner()
            .permissions
            .iter()
            .any(|p| p.name == name));
    }
    // The refused calls changed nothing.
    assert_eq!(catalogue_names(&app, &user.access_token).await, [name]);
    assert_eq!(
        decide(&app, &moderator.access_token, name, "").await,
        allowed("GRANTED_BY_ROLE")
    );
    assert_eq!(
        decide(&app, &user.access_token, name, "").await,
        denied("ROLE_TOO_LOW")
    );

    // The admin changes and deletes it; a super_admin may too.
    let updated = app
        .as_user(&admin)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: name.to_string(),
            least_role: Some(Role::Admin as i32),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("update {name}: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(updated.least_role, Role::Admin as i32);
    app.as_user(&admin)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: name.to_string(),
        })
        .await
        .expect("admin deletes");
    app.as_user(&root)
        .permissions()
        .define_permission(platform("notes.reports.print", Role::User))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_user(&root)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: "notes.reports.print".into(),
        })
        .await
        .expect("super_admin deletes");

    // Audited, with who and what.
    let audit = |action: &'static str| audit_events(&app, &admin.access_token, action);
    let defined = audit("permission_define").await;
    assert_eq!(defined.len(), 2, "{defined:?}");
    let first = defined
        .iter()
        .find(|e| e.detail.get("permission").map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no permission_define of {name}: {defined:?}"));
    assert_eq!(first.actor_id, admin_id);
    assert_eq!(first.outcome, AuditOutcome::Success as i32);
    assert_eq!(first.detail["scope"], "platform");
    assert_eq!(first.detail["least_role"], "moderator");

    let updates = audit("permission_update").await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].actor_id, admin_id);
    assert_eq!(updates[0].detail["permission"], name);
    assert_eq!(updates[0].detail["least_role"], "admin");

    let deletes = audit("permission_delete").await;
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(deletes
        .iter()
        .any(|e| e.actor_id == admin_id && e.detail["permission"] == name));
}

// ---------------------------------------------------------------------------------------------
// What the catalogue refuses

#[tokio::test]
async fn malformed_built_in_and_taken_names_and_roles_that_do_not_fit_the_scope_are_refused() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let t = &admin.access_token;

    // The name: three lower-case parts, and not one of keyward's own.
    for bad in [
        "notes",
        "notes.read",
        "notes.notes.read.all",
        "Notes.notes.read",
        "notes.NOTES.read",
        "notes..read",
        ".notes.read",
        "1notes.notes.read",
        "notes.notes.read!",
        "notes notes read",
        "users.read",
        "users.roles.write",
        "org.members.read",
        "permissions.write",
    ] {
        invalid(
            app.as_token(t)
                .permissions()
                .define_permission(platform(bad, Role::User))
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            "name",
            bad,
        );
        invalid(
            app.as_token(t)
                .permissions()
                .define_permission(in_org(bad, OrgRole::Member))
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            "name",
            bad,
        );
    }

    // The scope: platform or organization.
    for scope in [PermissionScope::Unspecified as i32, 3, 99, -1] {
        let request = DefinePermissionRequest {
            scope,
            ..platform("notes.notes.read", Role::User)
        };
        invalid(
            app.as_token(t)
                .permissions()
                .define_permission(request)
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            "scope",
            &format!("scope {scope}"),
        );
    }

    // The role must fit the scope: a global role for platform scope, an organization role for
    // organization scope, each in its own field.
    let cases = [
        (
            "platform without a role",
            platform("notes.notes.read", Role::Unspecified),
            "least_role",
        ),
        (
            "platform with only an organization role",
            DefinePermissionRequest {
                least_org_role: OrgRole::Member as i32,
                ..platform("notes.notes.read", Role::Unspecified)
            },
            "least_role",
        ),
        (
            "platform with an unknown role",
            DefinePermissionRequest {
                least_role: 42,
                ..platform("notes.notes.read", Role::User)
            },
            "least_role",
        ),
        (
            "organization without a role",
            in_org("notes.notes.read", OrgRole::Unspecified),
            "least_org_role",
        ),
        (
            "organization with only a global role",
            DefinePermissionRequest {
                least_role: Role::Admin as i32,
                ..in_org("notes.notes.read", OrgRole::Unspecified)
            },
            "least_org_role",
        ),
        (
            "organization with an unknown role",
            DefinePermissionRequest {
                least_org_role: 42,
                ..in_org("notes.notes.read", OrgRole::Member)
            },
            "least_org_role",
        ),
    ];
    for (case, request, field) in cases {
        invalid(
            app.as_token(t)
                .permissions()
                .define_permission(request)
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            field,
            case,
        );
    }
    // Nothing refused was stored.
    assert!(catalogue_names(&app, t).await.is_empty());

    // Taken: the second definition of a name is refused, whatever it says.
    app.as_token(t)
        .permissions()
        .define_permission(in_org("notes.notes.read", OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    refused(
        app.as_token(t)
            .permissions()
            .define_permission(in_org("notes.notes.read", OrgRole::Owner))
            .await,
        Code::AlreadyExists,
        "PERMISSION_EXISTS",
    );
    refused(
        app.as_token(t)
            .permissions()
            .define_permission(platform("notes.notes.read", Role::Admin))
            .await,
        Code::AlreadyExists,
        "PERMISSION_EXISTS",
    );
    let listed = app
        .as_token(t)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions;
    let stored = listed
        .iter()
        .find(|p| p.name == "notes.notes.read")
        .unwrap();
    assert_eq!(
        (stored.scope, stored.least_org_role),
        (PermissionScope::Organization as i32, OrgRole::Member as i32),
        "the first definition stays"
    );

    // Changing or deleting something that is not in the catalogue: built-in names included.
    for name in [
        "notes.notes.write",
        "users.read",
        "permissions.write",
        "org.delete",
    ] {
        refused(
            app.as_token(t)
                .permissions()
                .update_permission(UpdatePermissionRequest {
                    name: name.into(),
                    description: Some("mine now".into()),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "PERMISSION_NOT_FOUND",
        );
        refused(
            app.as_token(t)
                .permissions()
                .delete_permission(DeletePermissionRequest {
                    name: name.to_string(),
                })
                .await,
            Code::NotFound,
            "PERMISSION_NOT_FOUND",
        );
    }
    // The built-ins are untouched.
    let (_, user) = with_role(&app, &email("user"), "user").await;
    assert_eq!(
        decide(&app, &user.access_token, "users.read", "").await,
        denied("ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, &admin.access_token, "permissions.write", "").await,
        allowed("GRANTED_BY_ROLE")
    );
    // A role that does not fit on update is refused too.
    invalid(
        app.as_token(t)
            .permissions()
            .update_permission(UpdatePermissionRequest {
                name: "notes.notes.read".into(),
                least_role: Some(Role::Moderator as i32),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().permission.expect("a permission")),
        "least_role",
        "a moderator least role on an organization permission",
    );
    refused_as_bad_input(
        app.as_token(t)
            .permissions()
            .update_permission(UpdatePermissionRequest {
                name: "notes.notes.read".into(),
                least_role: Some(Role::User as i32),
                least_org_role: Some(OrgRole::Admin as i32),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().permission.expect("a permission")),
        &[Code::InvalidArgument],
        "both roles at once",
    );
}

#[tokio::test]
async fn an_update_cannot_give_a_permission_a_role_of_the_other_scope() {
    // UpdatePermission's roles "must match the permission's scope": an organization permission
    // takes least_org_role, a platform permission least_role. `admin` is a name both kinds of
    // role share, so a mix-up there cannot be caught by the name alone.
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let t = &admin.access_token;
    app.as_token(t)
        .permissions()
        .define_permission(in_org("notes.notes.read", OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(t)
        .permissions()
        .define_permission(platform("notes.reports.export", Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    let (_, moderator) = with_role(&app, &email("mod"), "moderator").await;
    let owner = app.signed_in(&email("owner")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Scoped".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member = member_signed_in(&app, &owner.access_token, &org, "member", OrgRole::Member).await;

    let global_role_on_org_permission = app
        .as_token(t)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: "notes.notes.read".into(),
            least_role: Some(Role::Admin as i32),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().permission.expect("a permission"));
    let org_role_on_platform_permission = app
        .as_token(t)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: "notes.reports.export".into(),
            least_org_role: Some(OrgRole::Admin as i32),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().permission.expect("a permission"));
    // The decisions are the old ones…
    assert_eq!(
        decide(&app, &member.access_token, "notes.notes.read", &org).await,
        allowed("GRANTED_BY_ORG_ROLE"),
        "a member lost an organization permission to a global role set on it"
    );
    assert_eq!(
        decide(&app, &moderator.access_token, "notes.reports.export", "").await,
        allowed("GRANTED_BY_ROLE"),
        "a moderator lost a platform permission to an organization role set on it"
    );
    // …and so is the catalogue…
    let listed = app
        .as_token(t)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions;
    let get = |name: &str| listed.iter().find(|p| p.name == name).unwrap().clone();
    assert_eq!(
        get("notes.notes.read").least_org_role,
        OrgRole::Member as i32,
        "an organization permission was given the global role admin as its organization role"
    );
    assert_eq!(
        get("notes.reports.export").least_role,
        Role::Moderator as i32,
        "a platform permission was given the organization role admin as its global role"
    );
    // …because both updates were refused, naming the field that does not fit.
    invalid(
        global_role_on_org_permission,
        "least_role",
        "least_role (global) on an organization permission",
    );
    invalid(
        org_role_on_platform_permission,
        "least_org_role",
        "least_org_role on a platform permission",
    );
}

#[tokio::test]
async fn garbage_is_refused_as_invalid_argument_and_never_breaks_keyward() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let t = &admin.access_token;
    let huge = "a".repeat(10 * 1024);
    let huge_dotted = format!("notes.notes.{}", "r".repeat(10 * 1024));
    let longest = format!("a.b.{}", "c".repeat(124));
    let too_long = format!("a.b.{}", "c".repeat(125));
    let garbage: Vec<String> = vec![
        String::new(),
        " ".into(),
        huge.clone(),
        huge_dotted.clone(),
        too_long.clone(),
        "notes.notes.réad".into(),
        "ノート.メモ.読む".into(),
        "💥.💥.💥".into(),
        "notes.notes.read\u{0}".into(),
        "notes.notes.read\n".into(),
        " notes.notes.read".into(),
        "notes.notes.read\u{202e}".into(),
        "notes.notes.*".into(),
        "notes/notes/read".into(),
        "notes.notes.read;drop".into(),
        "$where.notes.read".into(),
        "\u{feff}notes.notes.read".into(),
    ];
    for name in &garbage {
        let case = format!("name {:?}", name.chars().take(40).collect::<String>());
        invalid(
            app.as_token(t)
                .permissions()
                .define_permission(platform(name, Role::User))
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            "name",
            &case,
        );
        invalid(
            app.as_token(t)
                .permissions()
                .define_permission(in_org(name, OrgRole::Member))
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            "name",
            &case,
        );
        // Not in the catalogue, so nothing to change: refused, never an internal error.
        let codes = [Code::InvalidArgument, Code::NotFound];
        refused_as_bad_input(
            app.as_token(t)
                .permissions()
                .update_permission(UpdatePermissionRequest {
                    name: name.clone(),
                    requires_mfa: Some(true),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            &codes,
            &case,
        );
        refused_as_bad_input(
            app.as_token(t)
                .permissions()
                .delete_permission(DeletePermissionRequest {
                    name: name.to_string(),
                })
                .await
                .map(|_| ()),
            &codes,
            &case,
        );
    }
    // Empty is a missing name, not a missing permission.
    invalid(
        app.as_token(t)
            .permissions()
            .update_permission(UpdatePermissionRequest {
                name: String::new(),
                requires_mfa: Some(true),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().permission.expect("a permission")),
        "name",
        "update without a name",
    );
    invalid(
        app.as_token(t)
            .permissions()
            .delete_permission(DeletePermissionRequest { name: "".into() })
            .await
            .map(|_| ()),
        "name",
        "delete without a name",
    );

    // Descriptions: at most 512 characters, no control characters.
    for description in [
        "d".repeat(513),
        "x".repeat(10 * 1024),
        "line\nbreak".into(),
        "bell\u{7}".into(),
    ] {
        invalid(
            app.as_token(t)
                .permissions()
                .define_permission(DefinePermissionRequest {
                    description: description.clone(),
                    ..platform("notes.notes.read", Role::User)
                })
                .await
                .map(|r| r.into_inner().permission.expect("a permission")),
            "description",
            &format!("description of {} chars", description.chars().count()),
        );
    }
    assert!(catalogue_names(&app, t).await.is_empty(), "nothing stored");

    // The limits themselves are fine.
    app.as_token(t)
        .permissions()
        .define_permission(platform(&longest, Role::User))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    let unicode = "é".repeat(512);
    let kept = app
        .as_token(t)
        .permissions()
        .define_permission(DefinePermissionRequest {
            description: unicode.clone(),
            ..in_org("notes.notes.read", OrgRole::Member)
        })
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(kept.description, unicode);
    invalid(
        app.as_token(t)
            .permissions()
            .update_permission(UpdatePermissionRequest {
                name: "notes.notes.read".into(),
                description: Some(huge.clone()),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().permission.expect("a permission")),
        "description",
        "a huge description on update",
    );

    // Authorize on garbage permission names: unknown, refused, never an error.
    let (_, root) = with_role(&app, &email("root"), "super_admin").await;
    for name in garbage.iter().filter(|n| !n.is_empty()) {
        assert_eq!(
            decide(&app, &root.access_token, name, "").await,
            denied("UNKNOWN_PERMISSION"),
            "{:?}",
            name.chars().take(40).collect::<String>()
        );
    }
    // keyward is still fine.
    assert_eq!(
        decide(&app, &root.access_token, &longest, "").await,
        allowed("GRANTED_BY_ROLE")
    );
    assert_eq!(
        catalogue_names(&app, t).await,
        [longest.clone(), "notes.notes.read".to_string()]
    );
}

#[tokio::test]
async fn the_list_shows_every_built_in_permission_first_then_the_catalogue_by_name() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let (_, guest) = with_role(&app, &email("guest"), "guest").await;
    let t = &admin.access_token;
    app.as_token(t)
        .permissions()
        .define_permission(platform("zeta.reports.export", Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    let org_defined = app
        .as_token(t)
        .permissions()
        .define_permission(DefinePermissionRequest {
            description: "purge a notebook".into(),
            ..in_org("notes.notebooks.purge", OrgRole::Owner)
        })
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(t)
        .permissions()
        .define_permission(platform("alpha.things.read", Role::Guest))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");

    let all = app
        .as_user(&guest)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions;
    let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
    let built_in = [
        "users.read",
        "users.write",
        "users.roles.write",
        "permissions.write",
        "audit.read",
        "orgs.create",
        "org.read",
        "org.members.read",
        "org.write",
        "org.members.write",
        "org.delete",
    ];
    let first = all.iter().take_while(|p| p.built_in).count();
    assert_eq!(first, built_in.len(), "built-ins first: {names:?}");
    let mut listed_built_in = names[..first].to_vec();
    listed_built_in.sort();
    let mut expected = built_in.to_vec();
    expected.sort();
    assert_eq!(listed_built_in, expected);
    assert_eq!(
        &names[first..],
        [
            "alpha.things.read",
            "notes.notebooks.purge",
            "zeta.reports.export"
        ],
        "the catalogue after, by name"
    );
    assert!(all[first..].iter().all(|p| !p.built_in));

    let get = |name: &str| all.iter().find(|p| p.name == name).unwrap().clone();
    let write = get("permissions.write");
    assert_eq!(
        (write.scope, write.least_role, write.built_in),
        (PermissionScope::Platform as i32, Role::Admin as i32, true)
    );
    assert!(!write.description.is_empty());
    let delete = get("org.delete");
    assert_eq!(
        (delete.scope, delete.least_org_role, delete.least_role),
        (
            PermissionScope::Organization as i32,
            OrgRole::Owner as i32,
            Role::Unspecified as i32
        )
    );

    let purge = get("notes.notebooks.purge");
    assert_eq!(purge.description, "purge a notebook");
    assert_eq!(purge.scope, PermissionScope::Organization as i32);
    assert_eq!(purge.least_org_role, OrgRole::Owner as i32);
    assert_eq!(purge.least_role, Role::Unspecified as i32);
    assert!(!purge.requires_mfa);
    assert!(purge.created_at.is_some() && purge.updated_at.is_some());
    assert_eq!(purge.created_at, org_defined.created_at);
    let zeta = get("zeta.reports.export");
    assert_eq!(
        (
            zeta.scope,
            zeta.least_role,
            zeta.least_org_role,
            zeta.requires_mfa
        ),
        (
            PermissionScope::Platform as i32,
            Role::Moderator as i32,
            OrgRole::Unspecified as i32,
            false
        )
    );

    // An update changes only what it sets, and the update time.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let updated = app
        .as_token(t)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: "notes.notebooks.purge".into(),
            requires_mfa: Some(true),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .permission
        .expect("a permission");
    assert!(updated.requires_mfa);
    assert_eq!(updated.description, "purge a notebook");
    assert_eq!(updated.least_org_role, OrgRole::Owner as i32);
    assert_eq!(updated.created_at, purge.created_at);
    let (before, after) = (purge.updated_at.unwrap(), updated.updated_at.unwrap());
    assert!(
        (after.seconds, after.nanos) > (before.seconds, before.nanos),
        "{before:?} → {after:?}"
    );
    assert_eq!(get_after(&app, t, "notes.notebooks.purge").await, updated);
}

async fn audit_events(app: &TestApp, token: &str, action: &str) -> Vec<AuditEvent> {
    app.as_token(token)
        .users()
        .list_audit_events(ListAuditEventsRequest {
            action: action.into(),
            ..Default::default()
        })
        .await
        .expect("list audit events")
        .into_inner()
        .events
}

async fn get_after(app: &TestApp, token: &str, name: &str) -> Permission {
    app.as_token(token)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Authorize decides catalogue permissions like built-in ones

#[tokio::test]
async fn a_platform_catalogue_permission_is_decided_by_the_global_role() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let (_, user) = with_role(&app, &email("user"), "user").await;
    let (_, moderator) = with_role(&app, &email("mod"), "moderator").await;
    let (_, root) = with_role(&app, &email("root"), "super_admin").await;
    let export = "notes.reports.export";

    // Not defined yet: unknown, for everyone (fails closed).
    for pair in [&user, &moderator, &admin, &root] {
        assert_eq!(
            decide(&app, &pair.access_token, export, "").await,
            denied("UNKNOWN_PERMISSION")
        );
    }

    app.as_user(&admin)
        .permissions()
        .define_permission(platform(export, Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, &user.access_token, export, "").await,
        denied("ROLE_TOO_LOW")
    );
    for pair in [&moderator, &admin, &root] {
        assert_eq!(
            decide(&app, &pair.access_token, export, "").await,
            allowed("GRANTED_BY_ROLE")
        );
    }
    // A near miss is still unknown.
    assert_eq!(
        decide(&app, &root.access_token, "notes.reports.exports", "").await,
        denied("UNKNOWN_PERMISSION")
    );

    // Asked inside an organization, a platform permission is not granted (as for built-ins).
    let org = app
        .as_user(&moderator)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Moderated".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    assert_eq!(
        decide(&app, &moderator.access_token, export, &org).await,
        decide(&app, &moderator.access_token, "users.read", &org).await,
    );
    assert!(!decide(&app, &moderator.access_token, export, &org).await.0);

    // BatchAuthorize: the same decisions, in order, next to built-in ones.
    let checks = [
        (export, ""),
        ("users.read", ""),
        ("notes.reports.unknown", ""),
        (export, org.as_str()),
        ("orgs.create", ""),
    ];
    for pair in [&user, &moderator] {
        let batch = AuthServiceClient::new(app.channel())
            .batch_authorize(BatchAuthorizeRequest {
                access_token: pair.access_token.clone(),
                checks: checks
                    .iter()
                    .map(|(p, o)| PermissionCheck {
                        permission: p.to_string(),
                        org_id: o.to_string(),
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
        let mut one_by_one = Vec::new();
        for (p, o) in checks {
            one_by_one.push(decide(&app, &pair.access_token, p, o).await);
        }
        assert_eq!(got, one_by_one);
    }
    let batch = AuthServiceClient::new(app.channel())
        .batch_authorize(BatchAuthorizeRequest {
            access_token: user.access_token.clone(),
            checks: vec![
                PermissionCheck {
                    permission: export.into(),
                    org_id: String::new(),
                },
                PermissionCheck {
                    permission: "orgs.create".into(),
                    org_id: String::new(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        batch
            .decisions
            .iter()
            .map(|d| (d.allowed, d.reason.as_str()))
            .collect::<Vec<_>>(),
        [(false, "ROLE_TOO_LOW"), (true, "GRANTED_BY_ROLE")]
    );
}

#[tokio::test]
async fn an_organization_catalogue_permission_is_decided_by_the_role_in_that_organization() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let (_, root) = with_role(&app, &email("root"), "super_admin").await;
    let owner = app.signed_in(&email("owner")).await;
    let outsider = app.signed_in(&email("outsider")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Clinic".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member = member_signed_in(&app, &owner.access_token, &org, "member", OrgRole::Member).await;
    let org_admin =
        member_signed_in(&app, &owner.access_token, &org, "oadmin", OrgRole::Admin).await;
    let (read, purge) = ("notes.notes.read", "notes.notes.purge");
    app.as_user(&admin)
        .permissions()
        .define_permission(in_org(read, OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_user(&admin)
        .permissions()
        .define_permission(in_org(purge, OrgRole::Admin))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");

    let m = &member.access_token;
    assert_eq!(
        decide(&app, m, read, &org).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    assert_eq!(
        decide(&app, m, purge, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    assert_eq!(decide(&app, m, read, "").await, denied("ORG_REQUIRED"));
    for pair in [&org_admin, &owner] {
        for permission in [read, purge] {
            assert_eq!(
                decide(&app, &pair.access_token, permission, &org).await,
                allowed("GRANTED_BY_ORG_ROLE")
            );
        }
    }
    // Not a member: nothing, whatever the global role.
    for pair in [&outsider, &root, &admin] {
        for permission in [read, purge] {
            assert_eq!(
                decide(&app, &pair.access_token, permission, &org).await,
                denied("NOT_A_MEMBER")
            );
        }
    }
    // An organization that does not exist (a well-formed id) is no better.
    let nowhere = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        decide(&app, &owner.access_token, read, nowhere).await,
        decide(&app, &owner.access_token, "org.read", nowhere).await
    );
    assert!(!decide(&app, &owner.access_token, read, nowhere).await.0);
    // Undefined names fail closed inside the organization too.
    assert_eq!(
        decide(&app, &owner.access_token, "notes.notes.write", &org).await,
        denied("UNKNOWN_PERMISSION")
    );

    // BatchAuthorize gives the same decisions, in order.
    let checks = [
        (read, org.as_str()),
        (purge, org.as_str()),
        (read, ""),
        ("notes.notes.write", org.as_str()),
        ("org.read", org.as_str()),
        ("org.write", org.as_str()),
    ];
    let batch = AuthServiceClient::new(app.channel())
        .batch_authorize(BatchAuthorizeRequest {
            access_token: m.clone(),
            checks: checks
                .iter()
                .map(|(p, o)| PermissionCheck {
                    permission: p.to_string(),
                    org_id: o.to_string(),
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
            allowed("GRANTED_BY_ORG_ROLE"),
            denied("ORG_ROLE_TOO_LOW"),
            denied("ORG_REQUIRED"),
            denied("UNKNOWN_PERMISSION"),
            allowed("GRANTED_BY_ORG_ROLE"),
            denied("ORG_ROLE_TOO_LOW"),
        ]
    );
}

#[tokio::test]
async fn a_member_of_one_organization_gets_no_catalogue_permission_in_another() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let owner_a = app.signed_in(&email("owner-a")).await;
    let owner_b = app.signed_in(&email("owner-b")).await;
    let org_a = app
        .as_user(&owner_a)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Tenant A".into(),
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
            name: "Tenant B".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member_a =
        member_signed_in(&app, &owner_a.access_token, &org_a, "a", OrgRole::Member).await;
    let admin_a = member_signed_in(
        &app,
        &owner_a.access_token,
        &org_a,
        "a-admin",
        OrgRole::Admin,
    )
    .await;
    app.as_user(&admin)
        .permissions()
        .define_permission(in_org("notes.notes.read", OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_user(&admin)
        .permissions()
        .define_permission(in_org("notes.notes.purge", OrgRole::Owner))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");

    for pair in [&member_a, &admin_a, &owner_a] {
        let t = &pair.access_token;
        assert_eq!(
            decide(&app, t, "notes.notes.read", &org_a).await,
            allowed("GRANTED_BY_ORG_ROLE")
        );
        for permission in ["notes.notes.read", "notes.notes.purge"] {
            assert_eq!(
                decide(&app, t, permission, &org_b).await,
                denied("NOT_A_MEMBER"),
                "{permission} in the other tenant"
            );
        }
    }
    assert_eq!(
        decide(&app, &owner_a.access_token, "notes.notes.purge", &org_a).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    // And the other way round.
    assert_eq!(
        decide(&app, &owner_b.access_token, "notes.notes.read", &org_a).await,
        denied("NOT_A_MEMBER")
    );
    // Through Envoy, with the organization in a header.
    let (grpc, http, why) = envoy_denied(
        &through_envoy(&app, &member_a.access_token, "notes.notes.read", &org_b).await,
    );
    assert_eq!((grpc, http, why.as_str()), (7, 403, "NOT_A_MEMBER"));
}

#[tokio::test]
async fn updates_and_deletions_change_the_decision_at_once_on_the_same_replica() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let (_, user) = with_role(&app, &email("user"), "user").await;
    let (_, moderator) = with_role(&app, &email("mod"), "moderator").await;
    let a = &admin.access_token;
    let export = "notes.reports.export";

    app.as_token(a)
        .permissions()
        .define_permission(platform(export, Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, &user.access_token, export, "").await,
        denied("ROLE_TOO_LOW")
    );
    // Lowered: the user holds it now — the very next call.
    app.as_token(a)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: export.to_string(),
            least_role: Some(Role::User as i32),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("update {export}: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, &user.access_token, export, "").await,
        allowed("GRANTED_BY_ROLE")
    );
    // Raised: the moderator no longer does.
    app.as_token(a)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: export.to_string(),
            least_role: Some(Role::Admin as i32),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("update {export}: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, &moderator.access_token, export, "").await,
        denied("ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, a, export, "").await,
        allowed("GRANTED_BY_ROLE")
    );
    // A description-only change keeps the decision.
    app.as_token(a)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: export.into(),
            description: Some("export reports as CSV".into()),
            ..Default::default()
        })
        .await
        .expect("update the description")
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, &moderator.access_token, export, "").await,
        denied("ROLE_TOO_LOW")
    );
    // Deleted: unknown again, at once; and deleting twice is NOT_FOUND.
    app.as_token(a)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: export.to_string(),
        })
        .await
        .expect("delete");
    for pair in [&user, &moderator, &admin] {
        assert_eq!(
            decide(&app, &pair.access_token, export, "").await,
            denied("UNKNOWN_PERMISSION")
        );
    }
    refused(
        app.as_token(a)
            .permissions()
            .delete_permission(DeletePermissionRequest {
                name: export.to_string(),
            })
            .await,
        Code::NotFound,
        "PERMISSION_NOT_FOUND",
    );
    // The name is free again, and the new definition is the one decided.
    app.as_token(a)
        .permissions()
        .define_permission(platform(export, Role::User))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, &user.access_token, export, "").await,
        allowed("GRANTED_BY_ROLE")
    );

    // The same for an organization permission.
    let owner = app.signed_in(&email("owner")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Notebooks".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member = member_signed_in(&app, &owner.access_token, &org, "member", OrgRole::Member).await;
    let read = "notes.notes.read";
    app.as_token(a)
        .permissions()
        .define_permission(in_org(read, OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    let m = &member.access_token;
    assert_eq!(
        decide(&app, m, read, &org).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    app.as_token(a)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: read.to_string(),
            least_org_role: Some(OrgRole::Owner as i32),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("update {read}: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, m, read, &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, &owner.access_token, read, &org).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    app.as_token(a)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: read.to_string(),
            least_org_role: Some(OrgRole::Member as i32),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("update {read}: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, m, read, &org).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    app.as_token(a)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: read.to_string(),
        })
        .await
        .expect("delete");
    assert_eq!(
        decide(&app, m, read, &org).await,
        denied("UNKNOWN_PERMISSION")
    );
    assert_eq!(
        decide(&app, &owner.access_token, read, &org).await,
        denied("UNKNOWN_PERMISSION")
    );
}

#[tokio::test]
async fn a_catalogue_change_made_on_one_replica_is_decided_on_another_within_seconds() {
    let a = TestApp::start().await;
    let mut b_process = Keyward::serve(&a.config)
        .env("KEYWARD_LOG_LEVEL", "warn")
        .spawn();
    let b = b_process.channel().await;
    let within = Duration::from_secs(5);

    let (_, admin) = with_role(&a, &email("admin"), "admin").await;
    let (_, user) = with_role(&a, &email("user"), "user").await;
    let (_, moderator) = with_role(&a, &email("mod"), "moderator").await;
    let export = "notes.reports.export";
    let (m, u) = (&moderator.access_token, &user.access_token);
    assert_eq!(
        decide_on(b.clone(), m, export, "").await,
        denied("UNKNOWN_PERMISSION")
    );

    // Defined on A: decided on A at once, and on B within a few seconds.
    a.as_user(&admin)
        .permissions()
        .define_permission(platform(export, Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(decide(&a, m, export, "").await, allowed("GRANTED_BY_ROLE"));
    let took = until_decided(&b, m, export, "", allowed("GRANTED_BY_ROLE"), within).await;
    println!("replica B decided the new permission after {took:?}");
    assert_eq!(
        decide_on(b.clone(), u, export, "").await,
        denied("ROLE_TOO_LOW")
    );

    // Raised on A.
    a.as_user(&admin)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: export.to_string(),
            least_role: Some(Role::Admin as i32),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("update {export}: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(decide(&a, m, export, "").await, denied("ROLE_TOO_LOW"));
    until_decided(&b, m, export, "", denied("ROLE_TOO_LOW"), within).await;

    // Deleted on A: unknown on B within a few seconds.
    a.as_user(&admin)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: export.to_string(),
        })
        .await
        .expect("delete");
    assert_eq!(
        decide(&a, m, export, "").await,
        denied("UNKNOWN_PERMISSION")
    );
    let took = until_decided(
        &b,
        &admin.access_token,
        export,
        "",
        denied("UNKNOWN_PERMISSION"),
        within,
    )
    .await;
    println!("replica B refused the deleted permission after {took:?}");

    // The other way: defined through B's PermissionService, decided on A.
    let owner = a.signed_in(&email("owner")).await;
    let org = a
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Replicated".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member = member_signed_in(&a, &owner.access_token, &org, "member", OrgRole::Member).await;
    SignedIn::new(b.clone(), &admin.access_token)
        .permissions()
        .define_permission(in_org("notes.notes.read", OrgRole::Member))
        .await
        .expect("define on B")
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide_on(b.clone(), &member.access_token, "notes.notes.read", &org).await,
        allowed("GRANTED_BY_ORG_ROLE"),
        "at once on the replica that made the change"
    );
    until_decided(
        &a.channel(),
        &member.access_token,
        "notes.notes.read",
        &org,
        allowed("GRANTED_BY_ORG_ROLE"),
        within,
    )
    .await;
    SignedIn::new(b.clone(), &admin.access_token)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: "notes.notes.read".into(),
        })
        .await
        .expect("delete on B");
    until_decided(
        &a.channel(),
        &member.access_token,
        "notes.notes.read",
        &org,
        denied("UNKNOWN_PERMISSION"),
        within,
    )
    .await;

    let status = b_process.terminate().await;
    assert!(status.success(), "replica B exit status {status:?}");
}

// ---------------------------------------------------------------------------------------------
// requires_mfa

#[tokio::test]
async fn a_catalogue_permission_that_requires_mfa_refuses_one_factor_sessions_until_they_step_up() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let a = &admin.access_token;
    let (records, reports) = ("notes.records.export", "notes.reports.export");
    app.as_token(a)
        .permissions()
        .define_permission(DefinePermissionRequest {
            requires_mfa: true,
            ..platform(records, Role::User)
        })
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(a)
        .permissions()
        .define_permission(platform(reports, Role::User))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");

    // No authenticator: told to enrol, not allowed; the permission without the flag is granted.
    let plain = app.signed_in(&email("plain")).await;
    let p = &plain.access_token;
    assert_eq!(
        decide(&app, p, records, "").await,
        denied("MFA_ENROLLMENT_REQUIRED")
    );
    assert_eq!(
        decide(&app, p, reports, "").await,
        allowed("GRANTED_BY_ROLE")
    );
    // A role too low is told so first.
    let (_, guest) = with_role(&app, &email("guest"), "guest").await;
    assert_eq!(
        decide(&app, &guest.access_token, records, "").await,
        denied("ROLE_TOO_LOW")
    );
    // Through Envoy too.
    let (grpc, http, why) = envoy_denied(&through_envoy(&app, p, records, "").await);
    assert_eq!(
        (grpc, http, why.as_str()),
        (7, 403, "MFA_ENROLLMENT_REQUIRED")
    );

    // An organization permission with the flag: the same for a member.
    let org = app
        .as_token(p)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Records".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    app.as_token(a)
        .permissions()
        .define_permission(DefinePermissionRequest {
            requires_mfa: true,
            ..in_org("notes.records.read", OrgRole::Member)
        })
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, p, "notes.records.read", &org).await,
        denied("MFA_ENROLLMENT_REQUIRED")
    );

    // With an authenticator: one factor must step up (MFA_REQUIRED); two factors pass.
    let email = email("enrolled");
    app.register(&email).await;
    let code = shared_sink().code(&email, 1).await;
    OtpServiceClient::new(app.channel())
        .verify_email(VerifyEmailRequest {
            email: email.clone(),
            code,
        })
        .await
        .expect("verify email");
    let session = app.login(&email, PASSWORD).await.expect("login");
    let s = &session.access_token;
    let mut mfa = app.as_token(s).mfa();
    let started = mfa
        .start_totp_enrollment(StartTotpEnrollmentRequest {})
        .await
        .expect("start enrolment")
        .into_inner();
    let step = current_step();
    let codes = totp_codes(&started.otpauth_uri, &[step, step + 1]);
    mfa.confirm_totp_enrollment(ConfirmTotpEnrollmentRequest {
        code: codes[0].clone(),
    })
    .await
    .expect("confirm enrolment");
    assert_eq!(decide(&app, s, records, "").await, denied("MFA_REQUIRED"));
    assert_eq!(
        decide(&app, s, reports, "").await,
        allowed("GRANTED_BY_ROLE")
    );
    let stepped = mfa
        .step_up(StepUpRequest {
            totp_code: codes[1].clone(),
            recovery_code: String::new(),
        })
        .await
        .expect("step up")
        .into_inner();
    assert_eq!(
        decide(&app, &stepped.access_token, records, "").await,
        allowed("GRANTED_BY_ROLE")
    );

    // Dropping the flag needs a two-factor session: a one-factor admin (a stolen token, say)
    // cannot weaken the permission; an admin who stepped up can.
    let drop_flag = || UpdatePermissionRequest {
        name: records.into(),
        requires_mfa: Some(false),
        ..Default::default()
    };
    let refused = app
        .as_token(a)
        .permissions()
        .update_permission(drop_flag())
        .await
        .map(|r| r.into_inner().permission.expect("a permission"))
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::PermissionDenied, "MFA_REQUIRED"),
        "{refused:?}"
    );
    assert_eq!(
        decide(&app, p, records, "").await,
        denied("MFA_ENROLLMENT_REQUIRED")
    );
    app.db()
        .await
        .collection::<mongodb::bson::Document>("users")
        .update_one(
            mongodb::bson::doc! { "email": &email },
            mongodb::bson::doc! { "$set": { "role": "admin" } },
        )
        .await
        .unwrap();
    // A change made behind keyward's back counts once the cached standing expires
    // (session_cache_ttl, 1 s).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Dropping the flag lets one-factor sessions through at once; setting it again refuses them.
    app.as_token(&stepped.access_token)
        .permissions()
        .update_permission(drop_flag())
        .await
        .expect("update")
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, p, records, "").await,
        allowed("GRANTED_BY_ROLE")
    );
    app.as_token(a)
        .permissions()
        .update_permission(UpdatePermissionRequest {
            name: reports.into(),
            requires_mfa: Some(true),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .permission
        .expect("a permission");
    assert_eq!(
        decide(&app, p, reports, "").await,
        denied("MFA_ENROLLMENT_REQUIRED")
    );
    assert_eq!(decide(&app, s, reports, "").await, denied("MFA_REQUIRED"));
}

// ---------------------------------------------------------------------------------------------
// Envoy ext_authz

#[tokio::test]
async fn envoy_routes_naming_a_catalogue_permission_pass_members_and_refuse_everyone_else() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let a = &admin.access_token;
    let owner = app.signed_in(&email("owner")).await;
    let outsider = app.signed_in(&email("outsider")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Envoyed".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member = member_signed_in(&app, &owner.access_token, &org, "member", OrgRole::Member).await;
    let m = &member.access_token;
    app.as_token(a)
        .permissions()
        .define_permission(in_org("notes.notes.read", OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(a)
        .permissions()
        .define_permission(in_org("notes.notes.purge", OrgRole::Admin))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_token(a)
        .permissions()
        .define_permission(platform("notes.reports.export", Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");

    // A member: allowed, the organization and role passed upstream.
    let headers = envoy_allowed(&through_envoy(&app, m, "notes.notes.read", &org).await);
    assert_eq!(headers["x-keyward-org-id"], org);
    assert_eq!(headers["x-keyward-org-role"], "member");
    assert_eq!(
        headers["x-keyward-user-id"],
        member.user.as_ref().unwrap().id
    );
    let headers =
        envoy_allowed(&through_envoy(&app, &owner.access_token, "notes.notes.purge", &org).await);
    assert_eq!(headers["x-keyward-org-role"], "owner");

    // Everyone else: 403 with Authorize's reason.
    let cases = [
        (&outsider, "notes.notes.read", org.as_str(), "NOT_A_MEMBER"),
        (&admin, "notes.notes.read", org.as_str(), "NOT_A_MEMBER"),
        (
            &member,
            "notes.notes.purge",
            org.as_str(),
            "ORG_ROLE_TOO_LOW",
        ),
        (&member, "notes.notes.read", "", "ORG_REQUIRED"),
        (
            &member,
            "notes.notes.write",
            org.as_str(),
            "UNKNOWN_PERMISSION",
        ),
        (&member, "notes.reports.export", "", "ROLE_TOO_LOW"),
    ];
    for (pair, permission, org_id, why) in cases {
        let got = envoy_denied(&through_envoy(&app, &pair.access_token, permission, org_id).await);
        assert_eq!(got, (7, 403, why.to_string()), "{permission} in {org_id:?}");
    }
    // A platform catalogue permission on a route without an organization.
    let (_, moderator) = with_role(&app, &email("mod"), "moderator").await;
    let headers = envoy_allowed(
        &through_envoy(&app, &moderator.access_token, "notes.reports.export", "").await,
    );
    assert_eq!(headers["x-keyward-role"], "moderator");

    // Deleted: the route fails closed at once.
    app.as_token(a)
        .permissions()
        .delete_permission(DeletePermissionRequest {
            name: "notes.notes.read".into(),
        })
        .await
        .expect("delete");
    assert_eq!(
        envoy_denied(&through_envoy(&app, m, "notes.notes.read", &org).await),
        (7, 403, "UNKNOWN_PERMISSION".to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// The catalogue file

#[tokio::test]
async fn permissions_apply_creates_previews_applies_and_changes_nothing_the_second_time() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let (_, user) = with_role(&app, &email("user"), "user").await;
    let (_, moderator) = with_role(&app, &email("mod"), "moderator").await;
    let a = &admin.access_token;
    let owner = app.signed_in(&email("owner")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Filed".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member = member_signed_in(&app, &owner.access_token, &org, "member", OrgRole::Member).await;
    let m = &member.access_token;
    // Another service's permission, defined by RPC: no file of the notes service touches it.
    app.as_token(a)
        .permissions()
        .define_permission(platform("billing.invoices.approve", Role::Moderator))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    let settle = Duration::from_secs(4);

    let file = TempFile::new("apply");
    file.write(&format!(
        "# The notes service's permissions.\n{}{}{}",
        entry("notes.notes.read", "organization", "member", false),
        entry("notes.reports.export", "platform", "moderator", false),
        entry("notes.notes.purge", "organization", "admin", true),
    ));
    let run = apply(&app.config, file.path(), false);
    assert_applied(
        &run,
        &[
            "created: notes.notes.read",
            "created: notes.reports.export",
            "created: notes.notes.purge",
        ],
        "3 created, 0 updated, 0 deleted",
    );
    assert!(!run.stdout.contains("would be"), "{}", run.stdout);
    // The running keyward decides them within its reload period.
    until_decided(
        &app.channel(),
        m,
        "notes.notes.read",
        &org,
        allowed("GRANTED_BY_ORG_ROLE"),
        settle,
    )
    .await;
    assert_eq!(
        decide(&app, &user.access_token, "notes.reports.export", "").await,
        denied("ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, &moderator.access_token, "notes.reports.export", "").await,
        allowed("GRANTED_BY_ROLE")
    );
    assert_eq!(
        decide(&app, m, "notes.notes.purge", &org).await,
        denied("ORG_ROLE_TOO_LOW")
    );
    let listed = app
        .as_token(a)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions;
    let purge = listed
        .iter()
        .find(|p| p.name == "notes.notes.purge")
        .unwrap();
    assert_eq!(purge.description, "notes.notes.purge from the file");
    assert!(purge.requires_mfa && !purge.built_in);
    assert_eq!(purge.least_org_role, OrgRole::Admin as i32);
    let before = catalogue_names(&app, a).await;
    assert_eq!(
        before,
        [
            "billing.invoices.approve",
            "notes.notes.purge",
            "notes.notes.read",
            "notes.reports.export"
        ]
    );

    // The file changes: export is lowered to user, purge dropped, read kept.
    file.write(&format!(
        "{}{}",
        entry("notes.notes.read", "organization", "member", false),
        entry("notes.reports.export", "platform", "user", false),
    ));
    let run = apply(&app.config, file.path(), true);
    assert_applied(
        &run,
        &[
            "would be updated: notes.reports.export",
            "would be deleted: notes.notes.purge",
        ],
        "0 created, 1 updated, 1 deleted",
    );
    assert!(run.stdout.contains("dry run"), "{}", run.stdout);
    assert!(!run.stdout.contains("notes.notes.read"), "{}", run.stdout);
    // Nothing written: the stored catalogue, and (after a reload period) the decisions, are the
    // old ones.
    assert_eq!(
        app.as_token(a)
            .permissions()
            .list_permissions(ListPermissionsRequest {})
            .await
            .expect("list permissions")
            .into_inner()
            .permissions,
        listed
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        decide(&app, &user.access_token, "notes.reports.export", "").await,
        denied("ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, &owner.access_token, "notes.notes.purge", &org).await,
        denied("MFA_ENROLLMENT_REQUIRED"),
        "still defined (and still needing a second factor)"
    );

    // Applied for real.
    let run = apply(&app.config, file.path(), false);
    assert_applied(
        &run,
        &[
            "updated: notes.reports.export",
            "deleted: notes.notes.purge",
        ],
        "0 created, 1 updated, 1 deleted, 1 unchanged",
    );
    until_decided(
        &app.channel(),
        &user.access_token,
        "notes.reports.export",
        "",
        allowed("GRANTED_BY_ROLE"),
        settle,
    )
    .await;
    until_decided(
        &app.channel(),
        &owner.access_token,
        "notes.notes.purge",
        &org,
        denied("UNKNOWN_PERMISSION"),
        settle,
    )
    .await;
    assert_eq!(
        decide(&app, m, "notes.notes.read", &org).await,
        allowed("GRANTED_BY_ORG_ROLE")
    );
    // The other namespace is left alone.
    assert_eq!(
        catalogue_names(&app, a).await,
        [
            "billing.invoices.approve",
            "notes.notes.read",
            "notes.reports.export"
        ]
    );
    assert_eq!(
        decide(
            &app,
            &moderator.access_token,
            "billing.invoices.approve",
            ""
        )
        .await,
        allowed("GRANTED_BY_ROLE")
    );

    // Idempotent.
    let listed = app
        .as_token(a)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions;
    let run = apply(&app.config, file.path(), false);
    assert_applied(&run, &[], "0 created, 0 updated, 0 deleted, 2 unchanged");
    assert!(
        !run.stdout.contains("created:") && !run.stdout.contains("deleted:"),
        "{}",
        run.stdout
    );
    assert_eq!(
        app.as_token(a)
            .permissions()
            .list_permissions(ListPermissionsRequest {})
            .await
            .expect("list permissions")
            .into_inner()
            .permissions,
        listed,
        "not even rewritten"
    );

    // The applications that changed something are audited.
    let applied = audit_events(&app, a, "permissions_apply").await;
    assert_eq!(applied.len(), 2, "{applied:?}");
}

#[tokio::test]
async fn a_malformed_catalogue_file_is_refused_whole_naming_the_entry_and_field() {
    let app = TestApp::start().await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let a = &admin.access_token;
    app.as_token(a)
        .permissions()
        .define_permission(in_org("notes.keep.read", OrgRole::Member))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    let listed = app
        .as_token(a)
        .permissions()
        .list_permissions(ListPermissionsRequest {})
        .await
        .expect("list permissions")
        .into_inner()
        .permissions;
    let ok = entry("notes.notes.read", "organization", "member", false);

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "an unknown role",
            format!(
                "{ok}{}",
                entry("notes.notes.write", "platform", "boss", false)
            ),
            vec!["permission[1].least_role"],
        ),
        (
            "a global role for organization scope",
            format!(
                "{ok}{}",
                entry("notes.notes.write", "organization", "moderator", false)
            ),
            vec!["permission[1].least_role"],
        ),
        (
            "an organization role for platform scope",
            format!(
                "{ok}{}",
                entry("notes.reports.export", "platform", "member", false)
            ),
            vec!["permission[1].least_role"],
        ),
        (
            "a duplicate name",
            format!(
                "{ok}{}{ok}",
                entry("notes.notes.write", "organization", "admin", false)
            ),
            vec!["permission[2].name"],
        ),
        (
            "an unknown scope",
            entry("notes.notes.write", "global", "user", false),
            vec!["permission[0].scope"],
        ),
        (
            "a malformed name",
            format!("{ok}{}", entry("Notes.Notes", "platform", "user", false)),
            vec!["permission[1].name"],
        ),
        (
            "a built-in name",
            format!(
                "{ok}{}",
                entry("org.members.read", "organization", "member", false)
            ),
            vec!["permission[1].name"],
        ),
        (
            "two bad entries",
            format!(
                "{}{ok}{}",
                entry("notes.a.b", "platform", "root", false),
                entry("notes.c.d", "organization", "member", false).replace("notes.c.d", "bad")
            ),
            vec!["permission[0].least_role", "permission[2].name"],
        ),
        (
            "an unknown key",
            format!(
                "{ok}{}colour = \"red\"\n",
                entry("notes.notes.write", "platform", "user", false)
            ),
            // Refused by the TOML reader, which names the key and its line rather than the
            // entry's index.
            vec!["unknown field `colour`", "line 15"],
        ),
        (
            "a missing role",
            format!("{ok}[[permission]]\nname = \"notes.notes.write\"\nscope = \"platform\"\n"),
            vec!["missing field `least_role`", "line 8"],
        ),
        ("not TOML at all", "{ \"permission\": [] }".into(), vec![]),
    ];
    for (case, text, named) in cases {
        let file = TempFile::new("malformed");
        file.write(&text);
        let run = apply(&app.config, file.path(), false);
        assert!(!run.success, "{case}: applied:\n{}", run.stdout);
        for name in named {
            assert!(
                run.stderr.contains(name),
                "{case}: {name} not named in:\n{}",
                run.stderr
            );
        }
        assert!(!run.stdout.contains("created:"), "{case}: {}", run.stdout);
        // A dry run refuses it the same way.
        let dry = apply(&app.config, file.path(), true);
        assert!(!dry.success, "{case}: dry run accepted:\n{}", dry.stdout);
        // Nothing changed: the valid entries were not created, the namespace's other
        // permission was not deleted.
        assert_eq!(
            app.as_token(a)
                .permissions()
                .list_permissions(ListPermissionsRequest {})
                .await
                .expect("list permissions")
                .into_inner()
                .permissions,
            listed,
            "{case}"
        );
    }
    // A file that is not there.
    let run = apply(
        &app.config,
        Path::new("/nonexistent/permissions.toml"),
        false,
    );
    assert!(!run.success);
    assert!(
        run.stderr.contains("/nonexistent/permissions.toml"),
        "{}",
        run.stderr
    );
    assert_eq!(
        app.as_token(a)
            .permissions()
            .list_permissions(ListPermissionsRequest {})
            .await
            .expect("list permissions")
            .into_inner()
            .permissions,
        listed
    );
}

#[tokio::test]
async fn a_permissions_file_in_the_configuration_is_decided_once_keyward_serves() {
    let file = TempFile::new("config");
    file.write(&format!(
        "{}{}",
        entry("notes.notes.read", "organization", "member", false),
        entry("notes.reports.export", "platform", "moderator", true),
    ));
    let path = file.path().to_path_buf();
    let app = TestApp::start_with_config(|c| c.permissions_file = Some(path)).await;
    let (_, admin) = with_role(&app, &email("admin"), "admin").await;
    let (_, user) = with_role(&app, &email("user"), "user").await;
    let (_, moderator) = with_role(&app, &email("mod"), "moderator").await;
    let owner = app.signed_in(&email("owner")).await;
    let org = app
        .as_user(&owner)
        .orgs()
        .create_org(CreateOrgRequest {
            name: "Configured".into(),
            ..Default::default()
        })
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap()
        .id;
    let member = member_signed_in(&app, &owner.access_token, &org, "member", OrgRole::Member).await;
    let soon = Duration::from_secs(3);

    until_decided(
        &app.channel(),
        &member.access_token,
        "notes.notes.read",
        &org,
        allowed("GRANTED_BY_ORG_ROLE"),
        soon,
    )
    .await;
    assert_eq!(
        decide(&app, &user.access_token, "notes.reports.export", "").await,
        denied("ROLE_TOO_LOW")
    );
    assert_eq!(
        decide(&app, &moderator.access_token, "notes.reports.export", "").await,
        denied("MFA_ENROLLMENT_REQUIRED"),
        "requires_mfa from the file"
    );
    assert_eq!(
        catalogue_names(&app, &admin.access_token).await,
        ["notes.notes.read", "notes.reports.export"]
    );
    // Defined by RPC meanwhile: one in the file's namespace, one in another.
    app.as_user(&admin)
        .permissions()
        .define_permission(platform("notes.notes.print", Role::User))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    app.as_user(&admin)
        .permissions()
        .define_permission(platform("billing.invoices.approve", Role::Admin))
        .await
        .unwrap_or_else(|e| panic!("define permission: {e:?}"))
        .into_inner()
        .permission
        .expect("a permission");
    let config = app.config.clone();
    app.stop().await;

    // Restarted on the same database with a changed file: the file's namespace says what the
    // file says; the other namespace is left alone.
    file.write(&entry("notes.notes.read", "organization", "admin", false));
    let app = TestApp::start_with(config).await;
    let member = app.login(&member_email(&member), PASSWORD).await.unwrap();
    until_decided(
        &app.channel(),
        &member.access_token,
        "notes.notes.read",
        &org,
        denied("ORG_ROLE_TOO_LOW"),
        soon,
    )
    .await;
    assert_eq!(
        catalogue_names(&app, &member.access_token).await,
        ["billing.invoices.approve", "notes.notes.read"]
    );
    let moderator = app
        .login(&member_email(&moderator), PASSWORD)
        .await
        .unwrap();
    assert_eq!(
        decide(&app, &moderator.access_token, "notes.reports.export", "").await,
        denied("UNKNOWN_PERMISSION")
    );
}

fn member_email(pair: &TokenPair) -> String {
    pair.user.as_ref().unwrap().email.clone()
}
