//! Importing accounts from another system with their password hashes (`keyward admin import`),
//! so people keep their passwords: bcrypt (`$2a$/$2b$/$2y$`) and argon2 PHC hashes verify as
//! they are and are re-hashed to keyward's argon2id on the first successful login.
//!
//! Input is JSON Lines, one account per line:
//! `{"email": "...", "password_hash": "$2b$12$...", "display_name": "...", "role": "user",
//!   "email_verified": true}` — only `email` and `password_hash` are required.

use std::io::BufRead;

use serde::Deserialize;

use super::accounts::new_account;
use super::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::roles::Role;
use crate::domain::{email, password};
use crate::error::Result;
use crate::store::users::Inserted;

/// One line of an import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportedUser {
    email: String,
    password_hash: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    email_verified: bool,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub created: usize,
    /// Emails that already had an account (left untouched).
    pub existing: usize,
    /// (line number, why) for every line that was refused.
    pub refused: Vec<(usize, String)>,
}

fn account(line: &str) -> std::result::Result<(String, String, String, Role, bool), String> {
    let u: ImportedUser = serde_json::from_str(line).map_err(|e| format!("not an account: {e}"))?;
    let email = email::normalize(&u.email).map_err(|why| format!("email {why}"))?;
    if !password::is_verifiable_hash(&u.password_hash) {
        return Err(format!(
            "password_hash is not a bcrypt (cost <= {}) or argon2 (m <= {} KiB, t <= {}, p <= {}) hash",
            password::MAX_BCRYPT_COST,
            password::MAX_ARGON2_MEMORY_KIB,
            password::MAX_ARGON2_ITERATIONS,
            password::MAX_ARGON2_LANES
        ));
    }
    let role = match u.role.as_deref() {
        None | Some("") => Role::User,
        Some(r) => r.parse()?,
    };
    if role == Role::SuperAdmin {
        return Err("super_admin cannot be imported; use admin create-user".into());
    }
    let name = u.display_name.trim().to_string();
    if name.chars().count() > super::accounts::MAX_DISPLAY_NAME
        || name.chars().any(char::is_control)
    {
        return Err("display_name too long or has control characters".into());
    }
    Ok((email, u.password_hash, name, role, u.email_verified))
}

impl App {
    /// Creates an account for every valid line of `input`; existing emails are left alone.
    pub async fn import_users(&self, input: impl BufRead, caller: &Caller) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        for (n, line) in input.lines().enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("reading line {}: {e}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let (email, hash, display_name, role, email_verified) = match account(&line) {
                Ok(a) => a,
                Err(why) => {
                    report.refused.push((n + 1, why));
                    continue;
                }
            };
            let user = new_account(email, display_name, hash, role, email_verified, self.now());
            match self.store.users.insert(&user).await? {
                Inserted::Created => {
                    report.created += 1;
                    self.audit(
                        AuditRecord::new(AuditAction::UserImport, Outcome::Success, caller)
                            .user(&user.id)
                            .email(&user.email)
                            .detail("role", user.role.as_str())
                            .detail("email_verified", user.email_verified),
                    )
                    .await;
                }
                Inserted::EmailTaken => report.existing += 1,
            }
        }
        Ok(report)
    }
}
