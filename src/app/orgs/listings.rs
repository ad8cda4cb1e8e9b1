//! Listings: the caller's organizations, and an organization's members.

use std::collections::HashMap;

use super::{joined_cursor, require_id, MyOrg, OrgMember};
use crate::app::{page_of, page_request, App, Page};
use crate::domain::paging::{FilterKey, PageFilter};
use crate::domain::permissions::OrgRole;
use crate::domain::permissions::Permission;
use crate::domain::tokens::AccessClaims;
use crate::error::Result;
use crate::store::orgs::OrgDoc;
use crate::store::users::UserDoc;

/// ListMyOrgs' filter: whose organizations.
struct MyOrgsFilter<'a> {
    user_id: &'a str,
}

impl PageFilter for MyOrgsFilter<'_> {
    fn filter_key(&self) -> FilterKey {
        FilterKey::new("my_orgs").text("user", self.user_id)
    }
}

/// ListMembers' filters: which organization, and optionally one role.
struct MembersFilter<'a> {
    org_id: &'a str,
    role: Option<OrgRole>,
}

impl PageFilter for MembersFilter<'_> {
    fn filter_key(&self) -> FilterKey {
        FilterKey::new("members")
            .text("org", self.org_id)
            .text("role", self.role.map_or("", OrgRole::as_str))
    }
}

impl App {
    /// The caller's organizations, oldest membership first.
    pub async fn list_my_orgs(
        &self,
        who: &AccessClaims,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<MyOrg>> {
        self.acting(who).await?;
        let filters = MyOrgsFilter {
            user_id: &who.user_id,
        }
        .filter_key();
        let (size, after) = page_request(page_size, page_token, &filters)?;
        let memberships = self
            .store
            .memberships
            .list_by_user(&who.user_id, after.as_ref(), size + 1)
            .await?;
        let Page {
            items: memberships,
            next_page_token,
        } = page_of(memberships, size, &filters, |m| joined_cursor(m, &m.org_id));
        let ids: Vec<String> = memberships.iter().map(|m| m.org_id.clone()).collect();
        let mut orgs: HashMap<String, OrgDoc> = self
            .store
            .orgs
            .find_many(&ids)
            .await?
            .into_iter()
            .map(|o| (o.id.clone(), o))
            .collect();
        // A membership whose organization is being deleted is skipped.
        let items = memberships
            .into_iter()
            .filter_map(|m| {
                orgs.remove(&m.org_id).map(|org| MyOrg {
                    membership: m.into(),
                    org: org.into(),
                })
            })
            .collect();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The members of an organization, oldest membership first, optionally with one role only.
    pub async fn list_members(
        &self,
        who: &AccessClaims,
        org_id: &str,
        role: Option<OrgRole>,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<OrgMember>> {
        require_id("org_id", org_id)?;
        self.require_org(who, org_id, Permission::OrgMembersRead)
            .await?;
        let filters = MembersFilter { org_id, role }.filter_key();
        let (size, after) = page_request(page_size, page_token, &filters)?;
        let memberships = self
            .store
            .memberships
            .list_by_org(org_id, role, after.as_ref(), size + 1)
            .await?;
        let Page {
            items: memberships,
            next_page_token,
        } = page_of(memberships, size, &filters, |m| {
            joined_cursor(m, &m.user_id)
        });
        let ids: Vec<String> = memberships.iter().map(|m| m.user_id.clone()).collect();
        let mut users = self.users_by_id(&ids).await?;
        let items = memberships
            .into_iter()
            .filter_map(|m| users.remove(&m.user_id).map(|user| OrgMember::new(m, user)))
            .collect();
        Ok(Page {
            items,
            next_page_token,
        })
    }

    async fn users_by_id(&self, ids: &[String]) -> Result<HashMap<String, UserDoc>> {
        let users = self.store.users.find_many(ids).await?;
        Ok(users.into_iter().map(|u| (u.id.clone(), u)).collect())
    }
}
