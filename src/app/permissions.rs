//! The permission catalogue: services' own permissions, defined by platform admins (or applied
//! from a file), decided by Authorize like the built-in ones.
//!
//! Each replica keeps the whole catalogue in memory (it is small) and reloads it every
//! `session_cache_ttl` and after each change it makes, so Authorize never asks the database
//! about a permission's definition.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::permissions::Permission;
use crate::domain::permissions::PermissionChange;
use crate::domain::permissions::{builtin_scope, check_catalogue_name, OrgRole, Scope};
use crate::domain::roles::Role;
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::permissions::PermissionDoc;

/// Longest description kept.
const MAX_DESCRIPTION: usize = 512;

/// What Authorize needs of a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub scope: Scope,
    pub requires_mfa: bool,
}

/// This replica's copy of the catalogue.
#[derive(Default)]
pub struct Catalogue {
    rules: RwLock<Arc<HashMap<String, Rule>>>,
}

impl Catalogue {
    fn get(&self, name: &str) -> Option<Rule> {
        self.rules
            .read()
            .expect("catalogue lock is never poisoned")
            .get(name)
            .copied()
    }

    fn replace(&self, rules: HashMap<String, Rule>) {
        *self
            .rules
            .write()
            .expect("catalogue lock is never poisoned") = Arc::new(rules);
    }
}

/// A permission as defined, built in or from the catalogue.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    pub description: String,
    pub rule: Rule,
    pub built_in: bool,
    /// When the catalogue entry was defined and last changed; `None` for a built-in one.
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A definition as asked for (by RPC or in a file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPermission {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `platform` or `organization`.
    pub scope: String,
    /// A global role (`guest` … `super_admin`) for platform scope, an organization role
    /// (`member`, `admin`, `owner`) for organization scope.
    pub least_role: String,
    #[serde(default)]
    pub requires_mfa: bool,
}

/// A catalogue file: `[[permission]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionFile {
    #[serde(default)]
    pub permission: Vec<NewPermission>,
}

/// What applying a file changed (or would change, in a dry run), by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
    pub unchanged: Vec<String>,
}

fn scope_str(scope: Scope) -> (&'static str, &'static str) {
    match scope {
        Scope::Platform(role) => ("platform", role.as_str()),
        Scope::Org(role) => ("organization", role.as_str()),
    }
}

/// The rule of a stored definition; `None` if it does not parse (never stored by keyward).
fn rule_of(doc: &PermissionDoc) -> Option<Rule> {
    let scope = match doc.scope.as_str() {
        "platform" => Scope::Platform(doc.least_role.parse::<Role>().ok()?),
        "organization" => Scope::Org(doc.least_role.parse::<OrgRole>().ok()?),
        _ => return None,
    };
    Some(Rule {
        scope,
        requires_mfa: doc.requires_mfa,
    })
}

/// Checks a definition; `field` prefixes the names of its violations (`permission[3].`).
fn check_new(p: &NewPermission, field: &str, out: &mut Violations) -> Option<Scope> {
    if let Err(why) = check_catalogue_name(&p.name) {
        out.push(format!("{field}name"), why);
    }
    out.text(
        &format!("{field}description"),
        &p.description,
        MAX_DESCRIPTION,
    );
    let scope = match p.scope.as_str() {
        "platform" => match p.least_role.parse::<Role>() {
            Ok(role) => Some(Scope::Platform(role)),
            Err(_) => {
                out.push(format!("{field}least_role"),
                    "must be a global role (guest, user, moderator, admin, super_admin) for platform scope");
                None
            }
        },
        "organization" => {
            match p.least_role.parse::<OrgRole>() {
                Ok(role) => Some(Scope::Org(role)),
                Err(_) => {
                    out.push(format!("{field}least_role"),
                    "must be an organization role (member, admin, owner) for organization scope");
                    None
                }
            }
        }
        _ => {
            out.push(format!("{field}scope"), "must be platform or organization");
            None
        }
    };
    scope
}

/// The namespace (first part) of a permission name.
fn namespace(name: &str) -> &str {
    name.split('.').next().unwrap_or_default()
}

impl App {
    /// The rule of `permission`: built in, or from this replica's copy of the catalogue.
    pub fn permission_rule(&self, permission: &str) -> Option<Rule> {
        match builtin_scope(permission) {
            Some(scope) => Some(Rule {
                scope,
                requires_mfa: false,
            }),
            None => self.catalogue.get(permission),
        }
    }

    /// Reloads this replica's copy of the catalogue.
    pub async fn reload_catalogue(&self) -> Result<()> {
        let docs = self.store.permissions.all().await?;
        let rules = docs
            .iter()
            .filter_map(|d| Some((d.name.clone(), rule_of(d)?)))
            .collect();
        self.catalogue.replace(rules);
        Ok(())
    }

    /// Every permission: built in first, then the catalogue. Caller: any signed-in user.
    pub async fn list_permissions(&self, who: &AccessClaims) -> Result<Vec<Definition>> {
        self.acting(who).await?;
        let mut all: Vec<Definition> = Permission::ALL
            .into_iter()
            .map(|permission| Definition {
                name: permission.as_str().to_string(),
                description: permission.description().to_string(),
                rule: Rule {
                    scope: permission.scope(),
                    requires_mfa: self
                        .config
                        .mfa_required_permissions
                        .iter()
                        .any(|p| p == permission.as_str()),
                },
                built_in: true,
                created_at: None,
                updated_at: None,
            })
            .collect();
        for doc in self.store.permissions.all().await? {
            if let Some(rule) = rule_of(&doc) {
                all.push(Definition {
                    name: doc.name.clone(),
                    description: doc.description.clone(),
                    rule,
                    built_in: false,
                    created_at: Some(doc.created_at),
                    updated_at: Some(doc.updated_at),
                });
            }
        }
        Ok(all)
    }

    /// Fails unless `who` may set a permission to (or from) `scope`, `requires_mfa`: never a
    /// platform permission above their own global role (a super_admin's only by a super_admin),
    /// and one that needs a second factor only from a two-factor session.
    fn may_shape(
        &self,
        who: &AccessClaims,
        actor: Role,
        scope: Scope,
        requires_mfa: bool,
    ) -> Result<()> {
        if let Scope::Platform(least) = scope {
            if least > actor {
                return Err(Error::RoleTooHigh);
            }
        }
        if requires_mfa && who.aal() < 2 {
            return Err(Error::MfaRequired);
        }
        Ok(())
    }

    /// Adds a permission to the catalogue.
    pub async fn define_permission(
        &self,
        who: &AccessClaims,
        new: NewPermission,
        caller: &Caller,
    ) -> Result<Definition> {
        let actor = self.require(who, Permission::PermissionsWrite).await?;
        let mut violations = Violations::new();
        let scope = check_new(&new, "", &mut violations);
        let Some(scope) = scope.filter(|_| violations.is_empty()) else {
            return Err(violations.into());
        };
        self.may_shape(who, actor.role, scope, false)?;
        let now = self.now();
        let doc = PermissionDoc {
            name: new.name.clone(),
            description: new.description.clone(),
            scope: scope_str(scope).0.into(),
            least_role: scope_str(scope).1.into(),
            requires_mfa: new.requires_mfa,
            created_at: now,
            updated_at: now,
        };
        if !self.store.permissions.insert(&doc).await? {
            return Err(Error::PermissionExists);
        }
        self.reload_catalogue().await?;
        self.audit(
            AuditRecord::new(AuditAction::PermissionDefine, Outcome::Success, caller)
                .actor(&who.user_id)
                .detail("permission", new.name.as_str())
                .detail("scope", scope_str(scope).0)
                .detail("least_role", scope_str(scope).1)
                .detail("requires_mfa", new.requires_mfa),
        )
        .await;
        Ok(Definition {
            name: doc.name.clone(),
            description: doc.description.clone(),
            rule: Rule {
                scope,
                requires_mfa: doc.requires_mfa,
            },
            built_in: false,
            created_at: Some(doc.created_at),
            updated_at: Some(doc.updated_at),
        })
    }

    /// Changes a catalogue permission. A new least role must be of its scope: a global role
    /// (`least_role_is_global`) for a platform permission, an organization role for an
    /// organization permission — `admin` is both, so the caller says which it means.
    pub async fn update_permission(
        &self,
        who: &AccessClaims,
        name: &str,
        change: PermissionChange,
        least_role_is_global: bool,
        caller: &Caller,
    ) -> Result<Definition> {
        let actor = self.require(who, Permission::PermissionsWrite).await?;
        if name.is_empty() {
            return Err(Error::invalid("name", "is required"));
        }
        let Some(current) = self.store.permissions.find(name).await? else {
            return Err(Error::PermissionNotFound);
        };
        let asked = NewPermission {
            name: name.to_string(),
            description: change
                .description
                .clone()
                .unwrap_or(current.description.clone()),
            scope: current.scope.clone(),
            least_role: change
                .least_role
                .clone()
                .unwrap_or(current.least_role.clone()),
            requires_mfa: change.requires_mfa.unwrap_or(current.requires_mfa),
        };
        let mut violations = Violations::new();
        let platform = current.scope == "platform";
        if change.least_role.is_some() && least_role_is_global != platform {
            let (field, why) = if platform {
                (
                    "least_org_role",
                    "this is a platform permission: set least_role",
                )
            } else {
                (
                    "least_role",
                    "this is an organization permission: set least_org_role",
                )
            };
            violations.push(field, why);
        }
        let new_scope = check_new(&asked, "", &mut violations);
        violations.finish()?;
        // Both what it was and what it becomes must be within the caller's reach.
        if let Some(old) = rule_of(&current) {
            self.may_shape(who, actor.role, old.scope, old.requires_mfa)?;
        }
        if let Some(scope) = new_scope {
            self.may_shape(who, actor.role, scope, false)?;
        }
        let Some(doc) = self
            .store
            .permissions
            .update(name, &change, self.now())
            .await?
        else {
            return Err(Error::PermissionNotFound);
        };
        self.reload_catalogue().await?;
        self.audit(
            AuditRecord::new(AuditAction::PermissionUpdate, Outcome::Success, caller)
                .actor(&who.user_id)
                .detail("permission", name)
                .detail("least_role", doc.least_role.as_str())
                .detail("requires_mfa", doc.requires_mfa),
        )
        .await;
        let rule = rule_of(&doc)
            .ok_or_else(|| anyhow::anyhow!("stored permission {name} does not parse"))?;
        Ok(Definition {
            name: doc.name.clone(),
            description: doc.description.clone(),
            rule,
            built_in: false,
            created_at: Some(doc.created_at),
            updated_at: Some(doc.updated_at),
        })
    }

    /// Removes a catalogue permission.
    pub async fn delete_permission(
        &self,
        who: &AccessClaims,
        name: &str,
        caller: &Caller,
    ) -> Result<()> {
        let actor = self.require(who, Permission::PermissionsWrite).await?;
        if name.is_empty() {
            return Err(Error::invalid("name", "is required"));
        }
        let current = self.store.permissions.find(name).await?;
        if let Some(old) = current.as_ref().and_then(rule_of) {
            self.may_shape(who, actor.role, old.scope, old.requires_mfa)?;
        }
        if !self.store.permissions.remove(name).await? {
            return Err(Error::PermissionNotFound);
        }
        self.reload_catalogue().await?;
        self.audit(
            AuditRecord::new(AuditAction::PermissionDelete, Outcome::Success, caller)
                .actor(&who.user_id)
                .detail("permission", name),
        )
        .await;
        Ok(())
    }

    /// Makes the catalogue say what `file` says for the namespaces it names: its permissions
    /// are created or updated, and the others of those namespaces deleted (a service's file
    /// owns its namespaces; other namespaces are left alone). With `dry_run` nothing is
    /// written. Idempotent.
    pub async fn apply_permissions(
        &self,
        file: &PermissionFile,
        dry_run: bool,
        caller: &Caller,
    ) -> Result<ApplyReport> {
        let wanted = check_file(file)?;
        let namespaces: std::collections::BTreeSet<&str> =
            wanted.keys().map(|n| namespace(n)).collect();
        let existing: HashMap<String, PermissionDoc> = self
            .store
            .permissions
            .all()
            .await?
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        let mut report = ApplyReport::default();
        let now = self.now();
        for (name, (scope, p)) in &wanted {
            let (scope_name, least_role) = scope_str(*scope);
            let doc = PermissionDoc {
                name: name.clone(),
                description: p.description.clone(),
                scope: scope_name.into(),
                least_role: least_role.into(),
                requires_mfa: p.requires_mfa,
                created_at: existing.get(name).map_or(now, |d| d.created_at),
                updated_at: now,
            };
            match existing.get(name) {
                Some(old)
                    if old.description == doc.description
                        && old.scope == doc.scope
                        && old.least_role == doc.least_role
                        && old.requires_mfa == doc.requires_mfa =>
                {
                    report.unchanged.push(name.clone());
                }
                Some(_) => {
                    if !dry_run && !self.store.permissions.replace(&doc).await? {
                        self.store.permissions.insert(&doc).await?;
                    }
                    report.updated.push(name.clone());
                }
                None => {
                    if !dry_run && !self.store.permissions.insert(&doc).await? {
                        self.store.permissions.replace(&doc).await?;
                    }
                    report.created.push(name.clone());
                }
            }
        }
        for name in existing.keys() {
            if namespaces.contains(namespace(name)) && !wanted.contains_key(name) {
                if !dry_run {
                    self.store.permissions.remove(name).await?;
                }
                report.deleted.push(name.clone());
            }
        }
        report.deleted.sort();
        if !dry_run {
            self.reload_catalogue().await?;
            if report.created.len() + report.updated.len() + report.deleted.len() > 0 {
                self.audit(
                    AuditRecord::new(AuditAction::PermissionsApply, Outcome::Success, caller)
                        .detail("created", report.created.clone())
                        .detail("updated", report.updated.clone())
                        .detail("deleted", report.deleted.clone()),
                )
                .await;
            }
        }
        Ok(report)
    }
}

/// The file's permissions by name, each with its scope; every problem at once, as field
/// violations named `permission[i].field`.
pub fn check_file(file: &PermissionFile) -> Result<BTreeMap<String, (Scope, &NewPermission)>> {
    let mut violations = Violations::new();
    let mut wanted = BTreeMap::new();
    for (i, p) in file.permission.iter().enumerate() {
        let field = format!("permission[{i}].");
        if let Some(scope) = check_new(p, &field, &mut violations) {
            if wanted.insert(p.name.clone(), (scope, p)).is_some() {
                violations.push(format!("{field}name"), "appears more than once");
            }
        }
    }
    violations.finish()?;
    Ok(wanted)
}

/// Reads a catalogue file (TOML) and checks every definition in it.
pub fn load_permission_file(path: &std::path::Path) -> anyhow::Result<PermissionFile> {
    let file = read_permission_file(path)?;
    if let Err(Error::InvalidArgument(violations)) = check_file(&file) {
        let lines: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect();
        anyhow::bail!("{}: {}", path.display(), lines.join("; "));
    }
    Ok(file)
}

/// Reads a catalogue file (TOML).
fn read_permission_file(path: &std::path::Path) -> anyhow::Result<PermissionFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
