//! MongoDB storage: one file per collection, each owning its document struct, its indexes and
//! its queries. No multi-document transactions: every exactly-once change is one conditional
//! single-document update. Credential collections (users, sessions, rate_limits,
//! one_time_codes, mfa, mfa_challenges, federation_flows, identities) and the mail outbox write with majority write concern and read from the
//! primary.

pub mod api_keys;
pub mod audit_events;
pub mod federation_flows;
pub mod identities;
pub mod invitations;
pub mod mail_outbox;
pub mod memberships;
pub mod mfa;
pub mod mfa_challenges;
pub mod one_time_codes;
pub mod org_roles;
pub mod orgs;
pub mod permissions;
pub mod rate_limits;
pub mod service_accounts;
pub mod sessions;
pub mod users;

use std::time::Duration;

use mongodb::bson::doc;
use mongodb::options::{
    ClientOptions, CollectionOptions, ReadPreference, SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Collection, Database};

pub use api_keys::ApiKeys;
pub use audit_events::{AuditEvent, AuditEvents};
pub use federation_flows::FederationFlows;
pub use identities::Identities;
pub use invitations::Invitations;
pub use mail_outbox::MailOutbox;
pub use memberships::Memberships;
pub use mfa::Mfa;
pub use mfa_challenges::MfaChallenges;
pub use one_time_codes::OneTimeCodes;
pub use org_roles::OrgRoles;
pub use orgs::Orgs;
pub use permissions::Permissions;
pub use rate_limits::RateLimits;
pub use service_accounts::ServiceAccounts;
pub use sessions::Sessions;
pub use users::Users;

/// Handles to every collection keyward uses.
#[derive(Clone)]
pub struct Store {
    pub db: Database,
    /// The same database over a one-connection client of its own, for health pings.
    watch: Database,
    pub users: Users,
    pub sessions: Sessions,
    pub audit_events: AuditEvents,
    pub rate_limits: RateLimits,
    pub one_time_codes: OneTimeCodes,
    pub mail_outbox: MailOutbox,
    pub memberships: Memberships,
    pub orgs: Orgs,
    pub org_roles: OrgRoles,
    pub invitations: Invitations,
    pub mfa: Mfa,
    pub mfa_challenges: MfaChallenges,
    pub permissions: Permissions,
    pub service_accounts: ServiceAccounts,
    pub api_keys: ApiKeys,
    pub federation_flows: FederationFlows,
    pub identities: Identities,
}

impl Store {
    /// Connects lazily: the driver dials on first use, so this succeeds while the database is
    /// still down and `ready()` tells when it answers.
    pub async fn connect(
        uri: &str,
        database: &str,
        audit_retention: Duration,
    ) -> anyhow::Result<Self> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "keyward".into());
        // Short, so that a call caught by a lost database fails with UNAVAILABLE well within
        // `request_timeout` (a retried operation selects twice) instead of being cancelled by
        // it. A URI's own `serverSelectionTimeoutMS` wins.
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(2));
        // The health watch pings over a client of its own, so a pool saturated by load (all
        // connections busy) is not mistaken for a database that is gone.
        let mut watch_options = options.clone();
        watch_options.max_pool_size = Some(1);
        watch_options.min_pool_size = None;
        watch_options.server_selection_timeout = Some(Duration::from_secs(1));
        let watch = Client::with_options(watch_options)?.database(database);
        // Command timings and failures for `/metrics` (the health pings above are not counted).
        options.command_event_handler = Some(crate::metrics::mongodb_event_handler());
        let client = Client::with_options(options)?;
        Ok(Self::new(client.database(database), watch, audit_retention))
    }

    pub fn new(db: Database, watch: Database, audit_retention: Duration) -> Self {
        Self {
            watch,
            users: Users(credential_collection(&db, "users")),
            sessions: Sessions(credential_collection(&db, "sessions")),
            audit_events: AuditEvents {
                collection: db.collection("audit_events"),
                retention: audit_retention,
            },
            rate_limits: RateLimits(credential_collection(&db, "rate_limits")),
            one_time_codes: OneTimeCodes(credential_collection(&db, "one_time_codes")),
            mail_outbox: MailOutbox(credential_collection(&db, "mail_outbox")),
            memberships: Memberships(credential_collection(&db, "memberships")),
            orgs: Orgs(credential_collection(&db, "orgs")),
            org_roles: OrgRoles(credential_collection(&db, "org_roles")),
            invitations: Invitations(credential_collection(&db, "invitations")),
            mfa: Mfa(credential_collection(&db, "mfa")),
            mfa_challenges: MfaChallenges(credential_collection(&db, "mfa_challenges")),
            permissions: Permissions(credential_collection(&db, "permissions")),
            service_accounts: ServiceAccounts(credential_collection(&db, "service_accounts")),
            api_keys: ApiKeys(credential_collection(&db, "api_keys")),
            federation_flows: FederationFlows(credential_collection(&db, "federation_flows")),
            identities: Identities(credential_collection(&db, "identities")),
            db,
        }
    }

    /// One round trip to the server, over the health watch's own connection.
    pub async fn ping(&self) -> mongodb::error::Result<()> {
        self.watch.run_command(doc! { "ping": 1 }).await.map(|_| ())
    }

    /// Closes both clients once their pending operations (e.g. the clean-up of a dropped
    /// cursor) have finished, waiting `grace` at most. Call it before the runtime that made the
    /// clients ends: a driver task still running when its connection pool's task is dropped with
    /// the runtime panics inside the driver.
    pub async fn shutdown(&self, grace: Duration) {
        for client in [self.db.client(), self.watch.client()] {
            let closed = tokio::time::timeout(grace, client.clone().shutdown()).await;
            if closed.is_err() {
                client.clone().shutdown().immediate(true).await;
            }
        }
    }

    /// Pings the server and creates every index (idempotent). Health turns SERVING after this.
    pub async fn ready(&self) -> anyhow::Result<()> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        self.users.ensure_indexes().await?;
        self.sessions.ensure_indexes().await?;
        self.audit_events.ensure_indexes().await?;
        self.rate_limits.ensure_indexes().await?;
        self.one_time_codes.ensure_indexes().await?;
        self.mail_outbox.ensure_indexes().await?;
        self.memberships.ensure_indexes().await?;
        self.orgs.ensure_indexes().await?;
        self.org_roles.ensure_indexes().await?;
        self.invitations.ensure_indexes().await?;
        self.mfa_challenges.ensure_indexes().await?;
        self.service_accounts.ensure_indexes().await?;
        self.api_keys.ensure_indexes().await?;
        self.federation_flows.ensure_indexes().await?;
        self.identities.ensure_indexes().await?;
        Ok(())
    }
}

/// Collections holding credentials and their guards: majority writes, and reads from the
/// primary (a lagging secondary could show a revoked session as active).
fn credential_collection<T: Send + Sync>(db: &Database, name: &str) -> Collection<T> {
    let options = CollectionOptions::builder()
        .write_concern(WriteConcern::majority())
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        .build();
    db.collection_with_options(name, options)
}

/// True when `err` is a unique-index violation (E11000).
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::Command(e) => e.code == 11000,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|w| w.iter().any(|e| e.code == 11000)),
        _ => err.to_string().contains("E11000"),
    }
}

/// The filter clauses (to be and-ed into a query) for "strictly after `cursor`" in a listing
/// sorted by (`field`, `tie`), ascending or descending. Besides the exact `$or`, they bound
/// `field` itself, so the planner scans the (`field`, `tie`) index from the cursor on instead of
/// from its start — page N costs what page 1 costs.
pub fn keyset_after(
    field: &str,
    tie: &str,
    cursor: &crate::domain::paging::Cursor,
    ascending: bool,
) -> [mongodb::bson::Document; 2] {
    use mongodb::bson::doc;
    let at = mongodb::bson::DateTime::from_millis(cursor.at_millis);
    let (bound, beyond) = if ascending {
        ("$gte", "$gt")
    } else {
        ("$lte", "$lt")
    };
    [
        doc! { field: { bound: at } },
        doc! { "$or": [
            { field: { beyond: at } },
            { field: at, tie: { beyond: &cursor.id } },
        ] },
    ]
}

/// chrono -> BSON date.
pub fn bson_time(t: chrono::DateTime<chrono::Utc>) -> mongodb::bson::DateTime {
    mongodb::bson::DateTime::from_chrono(t)
}
