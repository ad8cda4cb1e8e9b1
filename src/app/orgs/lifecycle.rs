//! An organization's life: created (with a free slug), read, changed, deleted.

use std::collections::HashSet;

use super::{require_id, Org};
use crate::app::{App, AuditRecord, Caller};
use crate::domain::audit::AuditAction;
use crate::domain::audit::Outcome;
use crate::domain::orgs::{
    check_name, check_website, derive_slug, numbered_slug, org_fields, random_slug, OrgFields,
};
use crate::domain::permissions::OrgRole;
use crate::domain::permissions::Permission;
use crate::domain::secrets::new_id;
use crate::domain::tokens::AccessClaims;
use crate::domain::validation::Violations;
use crate::error::{Error, Result};
use crate::store::memberships::MembershipDoc;
use crate::store::orgs::OrgDoc;

use super::NewOrg;

/// Numbered slugs tried (`st-marys-2`, `-3`, …) before a random suffix.
const SLUG_ATTEMPTS: usize = 8;

impl App {
    /// Creates an organization owned by the caller.
    pub async fn create_org(
        &self,
        who: &AccessClaims,
        new: NewOrg,
        caller: &Caller,
    ) -> Result<Org> {
        self.require(who, Permission::OrgsCreate).await?;
        let mut violations = Violations::new();
        let fields = org_fields(&new.name, &new.slug, &new.website, "", &mut violations);
        violations.finish()?;
        let fields = fields.expect("checked");
        let now = self.now();
        let org = self.insert_org(fields, now, None).await?;
        let owner = MembershipDoc::new(&org.id, &who.user_id, OrgRole::Owner, "", now);
        if let Err(e) = self.store.memberships.insert(&owner).await {
            // The organization is unreachable without its owner: take it back.
            let _ = self.store.orgs.delete(&org.id).await;
            return Err(e.into());
        }
        self.forget_membership(&org.id, &who.user_id);
        self.audit(
            AuditRecord::new(AuditAction::OrgCreate, Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", &org.id)
                .detail("slug", &org.slug),
        )
        .await;
        Ok(org.into())
    }

    /// One organization and the caller's role in it.
    pub async fn get_org(&self, who: &AccessClaims, org_id: &str) -> Result<(Org, OrgRole)> {
        require_id("org_id", org_id)?;
        let role = self.require_org(who, org_id, Permission::OrgRead).await?;
        let org = self
            .store
            .orgs
            .find(org_id)
            .await?
            .ok_or(Error::OrgNotFound)?;
        Ok((org.into(), role))
    }

    /// Changes the name and/or website (`Some("")` clears the website).
    pub async fn update_org(
        &self,
        who: &AccessClaims,
        org_id: &str,
        name: Option<String>,
        website: Option<String>,
        require_mfa: Option<bool>,
        caller: &Caller,
    ) -> Result<Org> {
        require_id("org_id", org_id)?;
        let role = self.require_org(who, org_id, Permission::OrgWrite).await?;
        // Who must prove a second factor is the owners' decision.
        if require_mfa.is_some() && role != OrgRole::Owner {
            return Err(Error::PermissionDenied);
        }
        let mut violations = Violations::new();
        let name = name.map(|n| n.trim().to_string());
        if let Some(name) = &name {
            check_name("name", name, &mut violations);
        }
        let website = website.map(|w| w.trim().to_string());
        if let Some(website) = &website {
            violations.check("website", check_website(website));
        }
        violations.finish()?;
        let org = self
            .store
            .orgs
            .update(
                org_id,
                name.as_deref(),
                website.as_deref(),
                require_mfa,
                self.now(),
            )
            .await?
            .ok_or(Error::OrgNotFound)?;
        if require_mfa.is_some() {
            self.forget_org_policy(org_id);
        }
        self.audit(
            AuditRecord::new(AuditAction::OrgUpdate, Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("name_changed", name.is_some())
                .detail("website_changed", website.is_some())
                .detail("require_mfa", require_mfa),
        )
        .await;
        Ok(org.into())
    }

    /// Deletes an organization with its memberships and invitations; accounts stay.
    ///
    /// The organization document goes first: from then on nobody can join (joining checks the
    /// organization again after writing the membership and takes it back if it is gone), and
    /// the memberships left are removed next. A retry after a call that failed between the two
    /// (the caller still an owner of a deleted organization) finishes the clean-up, then answers
    /// ORG_NOT_FOUND.
    pub async fn delete_org(
        &self,
        who: &AccessClaims,
        org_id: &str,
        caller: &Caller,
    ) -> Result<()> {
        require_id("org_id", org_id)?;
        self.require_org(who, org_id, Permission::OrgDelete).await?;
        let deleted = self.store.orgs.delete(org_id).await?;
        let members = self.store.memberships.remove_all_for_org(org_id).await?;
        let invitations = self.store.invitations.remove_all_for_org(org_id).await?;
        // Its service accounts and their keys go with it.
        let service_accounts = self.remove_org_service_accounts(org_id).await?;
        let roles = self.remove_org_roles(org_id).await?;
        self.forget_all_memberships();
        if !deleted {
            return Err(Error::OrgNotFound);
        }
        self.audit(
            AuditRecord::new(AuditAction::OrgDelete, Outcome::Success, caller)
                .user(&who.user_id)
                .actor(&who.user_id)
                .session(&who.session_id)
                .detail("org_id", org_id)
                .detail("memberships_removed", members as i64)
                .detail("invitations_removed", invitations as i64)
                .detail("service_accounts_removed", service_accounts as i64)
                .detail("custom_roles_removed", roles as i64),
        )
        .await;
        Ok(())
    }

    /// Stores a new organization with one owner counted, finding a free slug when none was
    /// asked for: the name's slug, then `-2`, `-3`, …, then a random suffix.
    pub(super) async fn insert_org(
        &self,
        fields: OrgFields,
        now: chrono::DateTime<chrono::Utc>,
        pending_owner: Option<&str>,
    ) -> Result<OrgDoc> {
        let mut org = OrgDoc {
            pending_owner: pending_owner.map(str::to_string),
            id: new_id(),
            name: fields.name,
            slug: String::new(),
            website: fields.website,
            owner_count: 1,
            require_mfa: false,
            created_at: now,
            updated_at: now,
        };
        if let Some(slug) = fields.slug {
            org.slug = slug;
            return match self.store.orgs.insert(&org).await? {
                true => Ok(org),
                false => Err(Error::SlugTaken),
            };
        }
        let base = derive_slug(&org.name);
        let mut taken: HashSet<String> = self
            .store
            .orgs
            .slugs_like(&base)
            .await?
            .into_iter()
            .collect();
        let mut n = 1;
        for _ in 0..SLUG_ATTEMPTS {
            while taken.contains(&numbered_slug(&base, n)) {
                n += 1;
            }
            org.slug = numbered_slug(&base, n);
            if self.store.orgs.insert(&org).await? {
                return Ok(org);
            }
            taken.insert(org.slug.clone());
        }
        // Many organizations of this name created at this very moment: stop counting.
        loop {
            org.slug = random_slug(&base);
            if self.store.orgs.insert(&org).await? {
                return Ok(org);
            }
        }
    }
}
