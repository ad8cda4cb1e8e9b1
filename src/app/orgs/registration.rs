//! Registering an account together with the organization it owns, without transactions: the
//! write order, taking back a failed registration, and finishing registrations that died midway.

use super::{NewOrg, Org, HOUR};
use crate::app::accounts::{new_account, NewAccount};
use crate::app::users::Account;
use crate::app::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::email;
use crate::domain::orgs::org_fields;
use crate::domain::password;
use crate::domain::permissions::OrgRole;
use crate::domain::roles::Role;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::memberships::MembershipDoc;

impl App {
    /// Creates an account and an organization it owns, in one call (Register with
    /// `organization`).
    ///
    /// No transactions, so the order decides what a failure can leave behind: the organization
    /// is stored first (its slug decides SLUG_TAKEN before any account exists), then the
    /// account, then the owner membership, and a failure takes back what was stored before it.
    /// Until its owner membership exists the organization is unreachable (nobody is a member),
    /// so nobody sees the half state; the verification mail goes out only once all three exist.
    pub async fn register_with_org(
        &self,
        account: NewAccount,
        new_org: NewOrg,
        caller: &Caller,
    ) -> Result<(Account, Org)> {
        self.throttle_address(
            caller,
            "register",
            self.config.registrations_per_address_per_hour,
            HOUR,
        )
        .await?;
        let mut violations = Violations::new();
        let email = violations
            .check("email", email::normalize(&account.email))
            .unwrap_or_default();
        let display_name = account.display_name.trim().to_string();
        violations.display_name("display_name", &display_name);
        violations.extend(self.password_policy.check(
            "password",
            &account.password,
            &[&email, &display_name, new_org.name.trim()],
        ));
        let fields = org_fields(
            &new_org.name,
            &new_org.slug,
            &new_org.website,
            "organization.",
            &mut violations,
        );
        violations.finish()?;
        let fields = fields.expect("checked");
        // Cheap early answer; the unique index still decides a race below.
        if self.store.users.find_by_email(&email).await?.is_some() {
            return Err(Error::EmailTaken);
        }
        let plain = account.password;
        let hash = self.hasher.run(move || password::hash(&plain)).await??;

        let now = self.now();
        // Written so that a process dying between these writes (or the request timing out) leaves
        // something `finish_interrupted_registrations` can finish or take back: the
        // organization first, naming its owner-to-be; then the account, naming its organization;
        // then the membership; then both marks go.
        let mut user = new_account(email, display_name, hash, Role::User, false, now);
        let org = self.insert_org(fields, now, Some(&user.id)).await?;
        user.pending_org = Some(org.id.clone());
        let user = match self.insert_user(user, caller).await {
            Ok(user) => user,
            Err(e) => {
                self.discard_org(&org.id).await;
                return Err(e);
            }
        };
        let owner = MembershipDoc::new(&org.id, &user.id, OrgRole::Owner, "", now);
        if let Err(e) = self.store.memberships.insert(&owner).await {
            self.discard_org(&org.id).await;
            self.discard_account(&user.id).await;
            return Err(e.into());
        }
        self.forget_membership(&org.id, &user.id);
        self.finish_registration(&org.id, &user.id).await?;
        self.audit(
            AuditRecord::new(AuditAction::OrgCreate, Outcome::Success, caller)
                .user(&user.id)
                .detail("org_id", &org.id)
                .detail("slug", &org.slug)
                .detail("with_registration", true),
        )
        .await;
        self.send_verification_after_register(&user, caller).await;
        Ok((user.into(), org.into()))
    }

    /// Marks a registration with an organization finished (both documents complete).
    async fn finish_registration(&self, org_id: &str, user_id: &str) -> Result<()> {
        self.store.orgs.clear_pending_owner(org_id).await?;
        self.store.users.clear_pending_org(user_id).await?;
        Ok(())
    }

    /// Finishes or takes back registrations with an organization that died midway (the process
    /// was killed, or the request timed out, between their writes), so that each ends as the
    /// account and the organization it owns, or neither:
    /// - an account that names its organization gets its owner membership (the organization was
    ///   written first, so it exists), and both marks go;
    /// - an organization whose owner-to-be never got an account is deleted, once it is older
    ///   than any request can live (`request_timeout`), so a registration still in flight is
    ///   never taken from under it.
    ///
    /// Every step is idempotent, so replicas may run this at the same time. Returns how many
    /// registrations it settled.
    pub async fn finish_interrupted_registrations(&self) -> Result<usize> {
        const BATCH: i64 = 100;
        let mut settled = 0;
        for user in self.store.users.with_pending_org(BATCH).await? {
            let Some(org_id) = user.pending_org.as_deref() else {
                continue;
            };
            if let Some(org) = self.store.orgs.find(org_id).await? {
                let owner =
                    MembershipDoc::new(org_id, &user.id, OrgRole::Owner, "", org.created_at);
                // `false`: it exists already (a duplicate), which is as good.
                self.store.memberships.insert(&owner).await?;
                self.forget_membership(org_id, &user.id);
                tracing::warn!(user_id = %user.id, org_id, "finished a registration that died midway");
            }
            self.finish_registration(org_id, &user.id).await?;
            settled += 1;
        }
        let dead_before = self.now()
            - chrono::Duration::from_std(self.config.request_timeout).unwrap_or_default()
            - chrono::Duration::seconds(5);
        for org in self.store.orgs.pending_before(dead_before, BATCH).await? {
            let Some(owner) = org.pending_owner.as_deref() else {
                continue;
            };
            match self.store.users.find_by_id(owner).await? {
                // Its account exists: the first loop finishes it (now or on its next run).
                Some(user) if user.pending_org.is_some() => {}
                Some(_) => self.store.orgs.clear_pending_owner(&org.id).await?,
                None => {
                    tracing::warn!(org_id = %org.id, "took back an organization whose registration died midway");
                    self.store.memberships.remove_all_for_org(&org.id).await?;
                    self.discard_org(&org.id).await;
                    settled += 1;
                }
            }
        }
        Ok(settled)
    }

    /// Takes back an organization created moments ago by a call that then failed.
    pub(super) async fn discard_org(&self, org_id: &str) {
        if let Err(e) = self.store.orgs.delete(org_id).await {
            tracing::error!(org_id, error = %e, "could not take back a half-created organization");
        }
    }
}
