//! keyward SIGKILLed in the middle of a flood of Register, Login, Refresh and SendCode, then
//! started again on the same database.
//!
//! Covered, by `keyward_killed_mid_flood_loses_no_mail_and_leaves_no_half_made_account` (the
//! flood registers accounts without an organization): nothing is left half made (every account
//! complete, every session with its user, no stray organization or membership), every
//! acknowledged call is still there (accounts log in, sessions refresh, mail is queued), a client
//! retrying a Register the kill cut off ends up with the whole account, and every message queued
//! before the kill is delivered exactly once.
//!
//! Also covered, by
//! `a_registration_with_organization_killed_between_its_writes_leaves_neither_half` (two in
//! three registrations of its flood come with an organization): Register with an organization
//! writes the organization, the account and its owner membership one after the other, without a
//! transaction (`App::register_with_org`); the restarted keyward finishes a registration whose
//! account was stored and takes back an organization whose account never was, so the test asks
//! for "the account and the organization it owns, or neither" (waiting up to 45 s for the
//! second kind, which is only taken back once no request could still be writing it).
//!
//! SMTP is down from before the flood until after the restart, so no delivery can be in flight
//! when the process dies: a message could go out twice only if the kill fell between SMTP
//! accepting it and keyward recording that (README, "Mail is never lost"), which the first test
//! rules out so that it can ask for exactly once.
//!
//! Where the kill lands: keyward reaches the database through a proxy in these tests that, once
//! the flood has run a while, SIGKILLs keyward the moment the database acknowledges the insert of
//! an account of the kind the test watches, before keyward reads that acknowledgement. A SIGKILL
//! (the OOM killer, a node lost) can come at any instant; this one is the instant that matters
//! every time instead of now and then: in the first test an account is stored but its Register
//! unanswered and its verification mail not queued; in the second the account is stored after its
//! organization and before its owner membership (the writes of one registration are a few
//! milliseconds apart). Everything else of the flood is in flight around it. If no such insert
//! comes (a fix may write differently), keyward is killed at a fixed time instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use keyward::config::Config;
use keyward::domain::permissions::OrgRole as StoredOrgRole;
use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::org_service_client::OrgServiceClient;
use keyward::grpc::pb::otp_service_client::OtpServiceClient;
use keyward::grpc::pb::{
    CodePurpose, ListMyOrgsRequest, LoginRequest, OrgRole, OrganizationSignup, RefreshRequest,
    RegisterRequest, SendCodeRequest,
};
use keyward::store::mail_outbox::{MailStatus, OutboxDoc};
use keyward::store::memberships::MembershipDoc;
use keyward::store::orgs::OrgDoc;
use keyward::store::sessions::SessionDoc;
use keyward::store::users::{UserDoc, UserStatus};
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use tonic::transport::Channel;

use crate::harness::*;
use crate::smtp_sink::SmtpSink;

/// Client tasks flooding keyward.
const FLOODERS: usize = 8;
/// The flood runs at least this long, and until this many registrations were answered, before
/// the kill switch is armed…
const MIN_FLOOD: Duration = Duration::from_millis(1500);
const MIN_REGISTERED: usize = 4;
/// …and keyward is killed by this time at the latest.
const MAX_FLOOD: Duration = Duration::from_secs(6);
/// keyward's mail lease (`app::mail::LEASE`, 3 × the SMTP timeout): a message a worker had
/// claimed when the process died is claimed again only after it.
const MAIL_LEASE: Duration = Duration::from_secs(30);

/// Emails of accounts registered with an organization start with this; the others with
/// `SOLO`.
const WITH_ORG: &str = "crash-org-";
const SOLO: &str = "crash-solo-";

/// What a flood registers, and so where its kill lands.
#[derive(Clone, Copy, Debug)]
enum Registrations {
    /// Every account without an organization; keyward is killed as the database acknowledges
    /// storing one (Register unanswered, its verification mail not yet queued).
    WithoutOrganization,
    /// Two in three with an organization; keyward is killed as the database acknowledges storing
    /// the account of one (after its organization, before its owner membership).
    MostlyWithOrganization,
}

impl Registrations {
    /// Whether the `n`th registration of a flooder comes with an organization.
    fn with_organization(self, n: usize) -> bool {
        match self {
            Registrations::WithoutOrganization => false,
            Registrations::MostlyWithOrganization => !n.is_multiple_of(3),
        }
    }

    /// The start of the emails of the accounts whose insert the kill answers.
    fn killed_on_insert_of(self) -> &'static str {
        match self {
            Registrations::WithoutOrganization => SOLO,
            Registrations::MostlyWithOrganization => WITH_ORG,
        }
    }
}

/// What keyward acknowledged during the flood.
#[derive(Default)]
struct Ledger {
    /// Registrations answered OK: (email, org_id; empty without an organization).
    registered: Vec<(String, String)>,
    /// Mail keyward answered it had queued: (recipient, template kind).
    mail: Vec<(String, &'static str)>,
    /// Calls answered OK, by RPC.
    ok: BTreeMap<&'static str, usize>,
    /// Errors answered before the kill was sent (there should be none).
    errors: Vec<String>,
}

/// A flooder's session when the flood ended.
#[derive(Default)]
struct Held {
    /// The latest refresh token keyward gave it.
    refresh_token: Option<String>,
    /// A Refresh of that token was in flight when keyward died (it may have rotated it).
    refresh_in_flight: bool,
    /// A Register in flight when keyward died, to retry once it is back.
    register_in_flight: Option<RegisterRequest>,
}

/// `keyward serve` on `config`'s database as a process of its own (see `Keyward::serve`), with
/// the settings this test changes passed on as well (the harness passes the connection ones).
fn spawn_keyward(config: &Config) -> KeywardProcess {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    Keyward::serve(config)
        .env("KEYWARD_HASH_WORKERS", config.hash_workers.to_string())
        .env(
            "KEYWARD_REGISTRATIONS_PER_ADDRESS_PER_HOUR",
            config.registrations_per_address_per_hour.to_string(),
        )
        .env(
            "KEYWARD_LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE",
            config.login_attempts_per_address_per_minute.to_string(),
        )
        .env(
            "KEYWARD_CODE_REQUESTS_PER_ADDRESS_PER_MINUTE",
            config.code_requests_per_address_per_minute.to_string(),
        )
        .env("KEYWARD_CODE_SEND_COOLDOWN", ms(config.code_send_cooldown))
        .env(
            "KEYWARD_MAIL_RETRY_BASE_DELAY",
            ms(config.mail_retry_base_delay),
        )
        .env(
            "KEYWARD_MAIL_RETRY_MAX_DELAY",
            ms(config.mail_retry_max_delay),
        )
        .env(
            "KEYWARD_REQUIRE_VERIFIED_EMAIL",
            config.require_verified_email.to_string(),
        )
        // Mail retries while SMTP is down would flood the test's stderr.
        .env("KEYWARD_LOG_LEVEL", "error")
        .spawn()
}

/// Whether the flood is over for a flooder whose call failed with `e`: it is once keyward was
/// killed; before that the error is recorded (and the flood goes on).
fn flood_over(killed: &AtomicBool, ledger: &Mutex<Ledger>, rpc: &str, e: &tonic::Status) -> bool {
    if killed.load(Ordering::SeqCst) {
        return true;
    }
    let mut ledger = ledger.lock().unwrap();
    if ledger.errors.len() < 20 {
        ledger.errors.push(format!(
            "{rpc}: {:?} {} {}",
            e.code(),
            reason(e),
            e.message()
        ));
    }
    false
}

/// One flooder: register an account (with an organization as `registrations` says), log in
/// (every other time: hashing is the bottleneck), refresh twice, ask for a LOGIN and a
/// VERIFY_EMAIL code; again, until keyward is gone.
async fn flood(
    task: usize,
    registrations: Registrations,
    channel: Channel,
    killed: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) -> Held {
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut otp = OtpServiceClient::new(channel);
    let mut held = Held::default();
    let ok = |rpc: &'static str| *ledger.lock().unwrap().ok.entry(rpc).or_default() += 1;
    for n in 0.. {
        if killed.load(Ordering::SeqCst) {
            break;
        }
        let with_org = registrations.with_organization(n);
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let prefix = if with_org { WITH_ORG } else { SOLO };
        let email = format!("{prefix}{task}-{n}-{tag}@example.com");
        let request = RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            display_name: format!("Crash {task}-{n}"),
            organization: with_org.then(|| OrganizationSignup {
                name: format!("Crash Clinic {task} {n} {tag}"),
                ..Default::default()
            }),
        };
        held.register_in_flight = Some(request.clone());
        let answer = auth.register(request).await;
        if answer.is_ok() || !killed.load(Ordering::SeqCst) {
            held.register_in_flight = None;
        }
        match answer {
            Ok(r) => {
                ok("Register");
                let mut ledger = ledger.lock().unwrap();
                ledger
                    .registered
                    .push((email.clone(), r.into_inner().org_id));
                ledger.mail.push((email.clone(), "verify_email"));
            }
            Err(e) if flood_over(&killed, &ledger, "Register", &e) => break,
            Err(_) => continue,
        }
        if n % 2 == 0 {
            let login = LoginRequest {
                email: email.clone(),
                password: PASSWORD.into(),
            };
            match auth.login(login).await {
                Ok(pair) => {
                    ok("Login");
                    held.refresh_token =
                        Some(pair.into_inner().tokens.expect("tokens").refresh_token);
                    held.refresh_in_flight = false;
                }
                Err(e) if flood_over(&killed, &ledger, "Login", &e) => break,
                Err(_) => {}
            }
        }
        for _ in 0..2 {
            let Some(refresh_token) = held.refresh_token.clone() else {
                break;
            };
            held.refresh_in_flight = true;
            match auth.refresh(RefreshRequest { refresh_token }).await {
                Ok(pair) => {
                    ok("Refresh");
                    held.refresh_token =
                        Some(pair.into_inner().tokens.expect("tokens").refresh_token);
                    held.refresh_in_flight = false;
                }
                Err(e) if flood_over(&killed, &ledger, "Refresh", &e) => return held,
                Err(_) => break,
            }
        }
        for (purpose, kind) in [
            (CodePurpose::Login, "login_code"),
            (CodePurpose::VerifyEmail, "verify_email"),
        ] {
            let request = SendCodeRequest {
                email: email.clone(),
                purpose: purpose as i32,
            };
            match otp.send_code(request).await {
                Ok(_) => {
                    ok("SendCode");
                    ledger.lock().unwrap().mail.push((email.clone(), kind));
                }
                Err(e) if flood_over(&killed, &ledger, "SendCode", &e) => return held,
                Err(_) => {}
            }
        }
    }
    held
}

/// Kills keyward (once) and tells the flooders the flood is over.
struct KillSwitch {
    /// keyward's (0 until it is spawned).
    pid: AtomicI32,
    /// Set once the flood has run long enough.
    armed: AtomicBool,
    /// It fires when the database acknowledges inserting an account whose email starts with
    /// this.
    on_insert_of: &'static str,
    fired: AtomicBool,
    killed: Arc<AtomicBool>,
    /// Where it fired.
    at: Mutex<Option<(Instant, String)>>,
}

impl KillSwitch {
    /// SIGKILLs keyward unless it was already; `only_if_armed` waits for the flood to have run.
    fn fire(&self, only_if_armed: bool, at: String) -> bool {
        if only_if_armed && !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        let pid = self.pid.load(Ordering::SeqCst);
        if pid == 0 || self.fired.swap(true, Ordering::SeqCst) {
            return false;
        }
        *self.at.lock().unwrap() = Some((Instant::now(), at));
        self.killed.store(true, Ordering::SeqCst);
        // SAFETY: kill(2) on our own child, which is reaped only after this.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        true
    }
}

/// One MongoDB wire message (header included), or `None` at the end of the stream.
async fn read_message(from: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await.ok()?;
    let length = i32::from_le_bytes(length) as usize;
    if length < 16 {
        return None;
    }
    let mut message = vec![0u8; length];
    message[..4].copy_from_slice(&(length as i32).to_le_bytes());
    from.read_exact(&mut message[4..]).await.ok()?;
    Some(message)
}

fn le_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// When `message` is an OP_MSG inserting into `users` an account whose email starts with
/// `prefix`: that account's email.
fn account_insert(message: &[u8], prefix: &str) -> Option<String> {
    const OP_MSG: i32 = 2013;
    if le_i32(message, 12)? != OP_MSG {
        return None;
    }
    let flags = le_i32(message, 16)? as u32;
    let end = message
        .len()
        .checked_sub(if flags & 1 == 1 { 4 } else { 0 })?;
    let (mut command, mut documents) = (None, Vec::new());
    let mut at = 20;
    while at < end {
        let kind = *message.get(at)?;
        at += 1;
        let size = le_i32(message, at)? as usize;
        let section = message.get(at..at + size)?;
        match kind {
            0 => command = Some(Document::from_reader(section).ok()?),
            1 => {
                // Size, then the sequence's name (a C string), then its documents.
                let mut doc_at = 4 + section.get(4..)?.iter().position(|b| *b == 0)? + 1;
                while doc_at < size {
                    let doc_size = le_i32(section, doc_at)? as usize;
                    let doc = section.get(doc_at..doc_at + doc_size)?;
                    documents.push(Document::from_reader(doc).ok()?);
                    doc_at += doc_size;
                }
            }
            _ => return None,
        }
        at += size;
    }
    let command = command?;
    if command.get_str("insert").ok()? != "users" {
        return None;
    }
    if let Ok(inline) = command.get_array("documents") {
        documents.extend(inline.iter().filter_map(|d| d.as_document().cloned()));
    }
    documents
        .iter()
        .filter_map(|d| d.get_str("email").ok())
        .find(|email| email.starts_with(prefix))
        .map(str::to_string)
}

/// A TCP proxy in front of the database at `upstream` (`host:port`) that fires `switch` when the
/// database answers an [`account_insert`] of `switch.on_insert_of`, instead of passing the
/// answer on. Returns its address.
async fn kill_switch_proxy(upstream: String, switch: Arc<KillSwitch>) -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let switch = switch.clone();
            tokio::spawn(async move {
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                // The request id of the insert to answer with a SIGKILL, and its account. A
                // connection carries one request at a time.
                let watched = Mutex::new(None::<(i32, String)>);
                let up = async {
                    while let Some(message) = read_message(&mut client_rx).await {
                        if let Some(email) = account_insert(&message, switch.on_insert_of) {
                            *watched.lock().unwrap() = le_i32(&message, 4).map(|id| (id, email));
                        }
                        if server_tx.write_all(&message).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    while let Some(message) = read_message(&mut server_rx).await {
                        let answered = watched
                            .lock()
                            .unwrap()
                            .take_if(|(id, _)| Some(*id) == le_i32(&message, 8));
                        if let Some((_, email)) = answered {
                            let at = format!("the database acknowledged the insert of {email}");
                            if switch.fire(true, at) {
                                break;
                            }
                        }
                        if client_tx.write_all(&message).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    addr
}

/// The `host:port` of a `mongodb://` URI naming a single host.
fn single_host(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("mongodb://")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host.contains(',')).then_some(host)
}

/// `uri` (see [`single_host`]) with its host replaced by `proxy`, connecting to it directly.
fn through(uri: &str, proxy: &str) -> String {
    let host = single_host(uri).unwrap();
    let mut out = uri.replacen(host, proxy, 1);
    if !out.contains("directConnection") {
        let query = out.find('?').is_some();
        let path = out["mongodb://".len()..].contains('/');
        out.push_str(match (query, path) {
            (true, _) => "&",
            (false, true) => "?",
            (false, false) => "/?",
        });
        out.push_str("directConnection=true");
    }
    out
}

async fn all(db: &Database, collection: &str, filter: Document) -> Vec<Document> {
    db.collection::<Document>(collection)
        .find(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

fn str_field(d: &Document, key: &str) -> String {
    d.get_str(key).unwrap_or_default().to_string()
}

/// A stored document as shown in a failure, without secrets.
fn shape(d: &Document) -> String {
    let mut d = d.clone();
    for secret in ["password_hash", "refresh_hash", "sealed"] {
        if d.contains_key(secret) {
            d.insert(secret, "<redacted>");
        }
    }
    d.remove("used_refresh_hashes");
    d.to_string()
}

/// Everything in the database that is not a complete, consistent whole: incomplete accounts,
/// sessions without their user, memberships without their organization or user, organizations
/// without an owner (or whose owner count disagrees), accounts registered with an organization
/// that own none, accounts registered without one that belong to one. Each with the documents
/// involved and the audit trail of the account.
async fn half_made_state(db: &Database) -> Vec<String> {
    let users = all(db, "users", doc! {}).await;
    let sessions = all(db, "sessions", doc! {}).await;
    let memberships = all(db, "memberships", doc! {}).await;
    let orgs = all(db, "orgs", doc! {}).await;
    let mut problems = Vec::new();

    let user_ids: HashSet<String> = users.iter().map(|u| str_field(u, "_id")).collect();
    let org_ids: HashSet<String> = orgs.iter().map(|o| str_field(o, "_id")).collect();
    let mut member_docs: Vec<MembershipDoc> = Vec::new();
    for m in &memberships {
        match mongodb::bson::from_document::<MembershipDoc>(m.clone()) {
            Ok(member) => {
                if !org_ids.contains(&member.org_id) || !user_ids.contains(&member.user_id) {
                    problems.push(format!(
                        "membership without its organization or user: {}",
                        shape(m)
                    ));
                }
                member_docs.push(member);
            }
            Err(e) => problems.push(format!("incomplete membership ({e}): {}", shape(m))),
        }
    }
    let owners_of = |org_id: &str| {
        member_docs
            .iter()
            .filter(|m| {
                m.org_id == org_id
                    && m.role == StoredOrgRole::Owner
                    && user_ids.contains(&m.user_id)
            })
            .count()
    };

    for u in &users {
        let user = match mongodb::bson::from_document::<UserDoc>(u.clone()) {
            Ok(user) => user,
            Err(e) => {
                problems.push(format!("incomplete account ({e}): {}", shape(u)));
                continue;
            }
        };
        let complete = user.status == UserStatus::Active
            && user.password_hash.starts_with("$argon2id$")
            && (user.email.starts_with(WITH_ORG) || user.email.starts_with(SOLO))
            && !user.display_name.is_empty();
        if !complete {
            problems.push(format!("incomplete account: {}", shape(u)));
        }
        let owned: Vec<&MembershipDoc> = member_docs
            .iter()
            .filter(|m| {
                m.user_id == user.id
                    && m.role == StoredOrgRole::Owner
                    && org_ids.contains(&m.org_id)
            })
            .collect();
        let member_of = member_docs.iter().filter(|m| m.user_id == user.id).count();
        let wrong = if user.email.starts_with(WITH_ORG) {
            (owned.len() != 1).then_some("registered with an organization, owns")
        } else {
            (member_of != 0).then_some("registered without an organization, belongs to")
        };
        if let Some(what) = wrong {
            let audit: Vec<String> = all(db, "audit_events", doc! { "user_id": &user.id })
                .await
                .iter()
                .map(|a| {
                    format!(
                        "{}/{}{}",
                        str_field(a, "action"),
                        str_field(a, "outcome"),
                        a.get_document("detail")
                            .map(|d| format!(" {d}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            problems.push(format!(
                "account {what} {} organization(s) ({member_of} membership(s)): {}; its audit \
                 trail: {audit:?}",
                owned.len(),
                shape(u)
            ));
        }
    }

    for s in &sessions {
        match mongodb::bson::from_document::<SessionDoc>(s.clone()) {
            Ok(session) if user_ids.contains(&session.user_id) => {}
            Ok(_) => problems.push(format!("session without its user: {}", shape(s))),
            Err(e) => problems.push(format!("incomplete session ({e}): {}", shape(s))),
        }
    }

    for o in &orgs {
        match mongodb::bson::from_document::<OrgDoc>(o.clone()) {
            Ok(org) => {
                let owners = owners_of(&org.id);
                if owners == 0 {
                    let with_org = all(db, "audit_events", doc! { "detail.org_id": &org.id })
                        .await
                        .len();
                    problems.push(format!(
                        "organization without an owner (no membership at all: {}; audit events \
                         naming it: {with_org}): {}",
                        !member_docs.iter().any(|m| m.org_id == org.id),
                        shape(o)
                    ));
                } else if owners as i32 != org.owner_count {
                    problems.push(format!(
                        "organization with {owners} owner membership(s) but owner_count {}: {}",
                        org.owner_count,
                        shape(o)
                    ));
                }
            }
            Err(e) => problems.push(format!("incomplete organization ({e}): {}", shape(o))),
        }
    }
    problems
}

/// The 6-digit code on a line of its own in a plain-text body.
fn code_in(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_default()
        .to_string()
}

/// A multiset.
fn counted<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut out = BTreeMap::new();
    for item in items {
        *out.entry(item).or_default() += 1;
    }
    out
}

/// Messages pending in the outbox at the kill, by id: (recipient, template kind, subject, code).
type Queued = HashMap<String, (String, &'static str, String, String)>;

/// keyward killed mid-flood, with what it acknowledged before.
struct Killed {
    started: Instant,
    /// Settings of a keyward on the flood's database, reached directly (not through the proxy).
    config: Config,
    db: Database,
    /// keyward's own sealer (same key), to read what the outbox holds.
    reader: Arc<keyward::app::App>,
    /// Down since before the flood.
    sink: SmtpSink,
    ledger: Ledger,
    /// Each flooder's session when the flood ended.
    held: Vec<Held>,
    killed_at: Instant,
}

impl Killed {
    /// A fresh keyward on the same database, once it is SERVING.
    async fn restart(&self) -> (KeywardProcess, Channel) {
        let second = spawn_keyward(&self.config);
        let channel = second.channel().await;
        println!(
            "restarted and SERVING {:?} after the kill",
            self.killed_at.elapsed()
        );
        (second, channel)
    }

    /// Stops the restarted keyward and fails with `failures`, if any.
    async fn finish(self, mut second: KeywardProcess, failures: Vec<String>) {
        let _ = second.terminate().await;
        // Closed before this test's runtime ends, which would otherwise drop the driver's pool
        // tasks under its own pending work (the driver panics then).
        self.reader.store.shutdown(Duration::from_secs(5)).await;
        self.db.client().clone().shutdown().await;
        println!("test took {:?}", self.started.elapsed());
        assert!(
            failures.is_empty(),
            "after a SIGKILL mid-flood and a restart:\n{}",
            failures.join("\n")
        );
    }
}

/// Floods a `keyward serve` process, registering as `registrations` says, until the kill switch
/// SIGKILLs it (see the module doc); checks that nothing failed before the kill and that enough
/// was registered to tell anything. `None` when the database cannot be proxied (skipped).
async fn flood_until_killed(registrations: Registrations) -> Option<Killed> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("keyward-crash-{}", uuid::Uuid::new_v4().simple()));
    let mut sink = SmtpSink::start(&dir, kill_with_parent);
    let mut config = test_config();
    let uri = config.mongodb_uri.clone().unwrap();
    let Some(upstream) = single_host(&uri) else {
        eprintln!("skipped: the kill switch proxies a single database host, not {uri}");
        return None;
    };
    config.smtp_url = Some(sink.url());
    // The flood comes from one address (127.0.0.1): per-address limits off.
    config.registrations_per_address_per_hour = 0;
    config.login_attempts_per_address_per_minute = 0;
    config.code_requests_per_address_per_minute = 0;
    // Every SendCode of the flood queues a message (the hourly cap per address stays).
    config.code_send_cooldown = Duration::ZERO;
    config.mail_retry_base_delay = Duration::from_millis(100);
    config.mail_retry_max_delay = Duration::from_secs(1);
    let db = mongodb::Client::with_uri_str(config.mongodb_uri.as_deref().unwrap())
        .await
        .unwrap()
        .database(&config.mongodb_database);
    let reader = keyward::build_app(config.clone()).await.unwrap();

    // keyward reaches the database through the kill switch.
    let killed = Arc::new(AtomicBool::new(false));
    let switch = Arc::new(KillSwitch {
        pid: AtomicI32::new(0),
        armed: AtomicBool::new(false),
        on_insert_of: registrations.killed_on_insert_of(),
        fired: AtomicBool::new(false),
        killed: killed.clone(),
        at: Mutex::new(None),
    });
    let proxy = kill_switch_proxy(upstream.to_string(), switch.clone()).await;
    let mut first_config = config.clone();
    first_config.mongodb_uri = Some(through(&uri, &proxy));

    // SMTP is down from here until after the restart: nothing can be delivered, so nothing can
    // be in flight at the kill.
    sink.pause();
    let mut first = spawn_keyward(&first_config);
    switch.pid.store(first.child.id() as i32, Ordering::SeqCst);
    let channel = first.channel().await;

    // The flood.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|task| {
            tokio::spawn(flood(
                task,
                registrations,
                channel.clone(),
                killed.clone(),
                ledger.clone(),
            ))
        })
        .collect();
    let flood_start = Instant::now();
    while !switch.fired.load(Ordering::SeqCst) {
        let registered = ledger.lock().unwrap().registered.len();
        if flood_start.elapsed() >= MIN_FLOOD && registered >= MIN_REGISTERED {
            switch.armed.store(true, Ordering::SeqCst);
        }
        if flood_start.elapsed() >= MAX_FLOOD {
            switch.fire(false, "the time limit".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = first.child.wait().unwrap();
    let (killed_at, kill_point) = switch.at.lock().unwrap().clone().unwrap();
    let flood_len = killed_at - flood_start;
    let mut held = Vec::new();
    for flooder in flooders {
        held.push(
            tokio::time::timeout(Duration::from_secs(15), flooder)
                .await
                .expect("a flooder did not stop after the kill")
                .unwrap(),
        );
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    println!(
        "{registrations:?}: killed after {flood_len:?} of flood ({status:?}) at {kill_point}: \
         {:?} answered OK, {} registrations, {} mails acknowledged",
        ledger.ok,
        ledger.registered.len(),
        ledger.mail.len()
    );
    assert!(
        ledger.errors.is_empty(),
        "errors before the kill: {:#?}",
        ledger.errors
    );
    assert!(
        ledger.registered.len() >= MIN_REGISTERED,
        "too little was registered to tell anything: {:?}",
        ledger.ok
    );

    // For the record: what the dead process left, before anything repairs it.
    let left_by_kill = half_made_state(&db).await;
    println!(
        "left by the kill, before the restart: {} problem(s){}",
        left_by_kill.len(),
        left_by_kill
            .iter()
            .map(|p| format!("\n  {p}"))
            .collect::<String>()
    );
    Some(Killed {
        started,
        config,
        db,
        reader,
        sink,
        ledger,
        held,
        killed_at,
    })
}

/// The outbox the dead process left (nothing sent: SMTP was down), and a failure for each mail
/// keyward acknowledged that is not in it.
async fn mail_queued_at_the_kill(killed: &Killed) -> (Queued, Vec<String>) {
    let outbox: Vec<OutboxDoc> = killed
        .db
        .collection::<OutboxDoc>("mail_outbox")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let mut queued = Queued::new();
    let mut leased_at_kill = 0;
    for m in &outbox {
        match m.status {
            MailStatus::Pending => {
                let sealed = m.sealed.as_ref().expect("a pending message keeps its body");
                let mail = killed.reader.mail.sealer.open(&sealed.bytes).unwrap();
                let kind = match m.kind.as_str() {
                    "verify_email" => "verify_email",
                    "login_code" => "login_code",
                    other => panic!("the flood queued unexpected mail: {other}"),
                };
                if m.lease_until.is_some_and(|t| t > now) {
                    leased_at_kill += 1;
                }
                queued.insert(
                    m.id.clone(),
                    (mail.to, kind, mail.subject, code_in(&mail.text)),
                );
            }
            MailStatus::Suppressed => {}
            MailStatus::Sent | MailStatus::Failed => {
                panic!("mail sent or given up while SMTP was down: {m:?}")
            }
        }
    }
    println!(
        "outbox at the kill: {} queued ({} under a worker's lease), {} suppressed",
        queued.len(),
        leased_at_kill,
        outbox.len() - queued.len()
    );
    // For the record (not a failure: such mail was never queued, SendCode VERIFY_EMAIL gets
    // another): accounts the kill left without their verification mail.
    let verifying: HashSet<&str> = queued
        .values()
        .filter(|(_, kind, ..)| *kind == "verify_email")
        .map(|(to, ..)| to.as_str())
        .collect();
    let unverifiable: Vec<String> = all(&killed.db, "users", doc! {})
        .await
        .iter()
        .map(|u| str_field(u, "email"))
        .filter(|email| !verifying.contains(email.as_str()))
        .collect();
    println!("accounts without a verification mail queued: {unverifiable:?}");
    // No acknowledged mail is missing from the outbox.
    let in_outbox = counted(queued.values().map(|(to, kind, ..)| (to.clone(), *kind)));
    let acknowledged = counted(killed.ledger.mail.iter().cloned());
    let mut failures = Vec::new();
    for ((to, kind), n) in &acknowledged {
        let have = in_outbox.get(&(to.clone(), *kind)).copied().unwrap_or(0);
        if have < *n {
            failures.push(format!(
                "{kind} to {to}: acknowledged {n}, in the outbox {have}"
            ));
        }
    }
    (queued, failures)
}

/// Sessions survive: each flooder's latest refresh token still refreshes, unless a Refresh of it
/// was cut off by the kill (then it may have been rotated, and presenting it again within the
/// grace period is told apart from a theft).
async fn refresh_tokens_still_refresh(held: &[Held], channel: &Channel) -> Vec<String> {
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut failures = Vec::new();
    for h in held {
        let Some(refresh_token) = h.refresh_token.clone() else {
            continue;
        };
        match auth.refresh(RefreshRequest { refresh_token }).await {
            Ok(_) => {}
            Err(e) if h.refresh_in_flight && reason(&e) == "REFRESH_TOKEN_ALREADY_ROTATED" => {}
            Err(e) => failures.push(format!(
                "refresh after the restart (in flight at the kill: {}): {:?} {}",
                h.refresh_in_flight,
                e.code(),
                reason(&e)
            )),
        }
    }
    failures
}

/// Why `access_token`'s account does not own organization `org_id` (any organization it owns
/// when `org_id` is `None`), if it does not.
async fn not_owner(channel: &Channel, access_token: &str, org_id: Option<&str>) -> Option<String> {
    let request = ListMyOrgsRequest {
        page_size: 10,
        ..Default::default()
    };
    let mine = OrgServiceClient::new(channel.clone())
        .list_my_orgs(bearer(request, access_token))
        .await
        .map(|r| r.into_inner().orgs);
    match mine {
        Ok(orgs)
            if orgs.iter().any(|m| {
                m.role == OrgRole::Owner as i32
                    && m.organization
                        .as_ref()
                        .is_some_and(|o| org_id.is_none_or(|id| o.id == id))
            }) =>
        {
            None
        }
        other => Some(format!("ListMyOrgs: {other:?}")),
    }
}

/// Every account registered before the kill logs in; every organization registered with one is
/// its owner's.
async fn registered_accounts_are_whole(ledger: &Ledger, channel: &Channel) -> Vec<String> {
    futures::stream::iter(ledger.registered.clone())
        .map(|(email, org_id)| async move {
            let mut auth = AuthServiceClient::new(channel.clone());
            let login = LoginRequest {
                email: email.clone(),
                password: PASSWORD.into(),
            };
            let pair = match auth.login(login).await {
                Ok(pair) => pair.into_inner().tokens.expect("tokens"),
                Err(e) => {
                    return Some(format!(
                        "{email} registered before the kill cannot log in: {:?} {}",
                        e.code(),
                        reason(&e)
                    ))
                }
            };
            if org_id.is_empty() {
                return None;
            }
            let why = not_owner(channel, &pair.access_token, Some(&org_id)).await?;
            Some(format!(
                "{email} registered with organization {org_id} does not own it: {why}"
            ))
        })
        .buffer_unordered(4)
        .filter_map(|f| async move { f })
        .collect()
        .await
}

/// With SMTP back, every message queued at the kill goes out, each exactly once, and nothing
/// else does.
async fn queued_mail_delivered_once(killed: &mut Killed, queued: &Queued) -> Vec<String> {
    let mut failures = Vec::new();
    killed.sink.resume(kill_with_parent);
    let ids: Vec<Bson> = queued.keys().map(|id| Bson::String(id.clone())).collect();
    let outbox_docs = killed.db.collection::<Document>("mail_outbox");
    // A message claimed by a worker of the dead process waits out that claim's lease.
    let deadline = killed.killed_at + MAIL_LEASE + Duration::from_secs(8);
    loop {
        let sent = outbox_docs
            .count_documents(doc! {
                "_id": { "$in": &ids },
                "status": "sent",
                "sealed": { "$exists": false },
            })
            .await
            .unwrap() as usize;
        if sent == queued.len() && killed.sink.all().len() >= queued.len() {
            break;
        }
        if Instant::now() > deadline {
            let stuck = all(
                &killed.db,
                "mail_outbox",
                doc! { "_id": { "$in": &ids }, "status": { "$ne": "sent" } },
            )
            .await;
            failures.push(format!(
                "{sent} of {} queued messages sent {:?} after the kill; not sent: {:#?}",
                queued.len(),
                killed.killed_at.elapsed(),
                stuck.iter().map(shape).collect::<Vec<_>>()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "outbox delivered {:?} after the kill",
        killed.killed_at.elapsed()
    );
    // Give any duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected = counted(
        queued
            .values()
            .map(|(to, _, subject, code)| (to.clone(), subject.clone(), code.clone())),
    );
    let received = killed.sink.all();
    let got = counted(received.iter().map(|m| {
        (
            m.to.clone(),
            m.subject.clone(),
            m.code().unwrap_or_default(),
        )
    }));
    for (message, n) in &expected {
        let have = got.get(message).copied().unwrap_or(0);
        if have != *n {
            failures.push(format!("{message:?}: queued {n}, delivered {have}"));
        }
    }
    for (message, n) in &got {
        if !expected.contains_key(message) {
            failures.push(format!("{message:?}: delivered {n}, never queued"));
        }
    }
    let pending = outbox_docs
        .count_documents(doc! { "status": { "$nin": ["sent", "suppressed"] } })
        .await
        .unwrap();
    if pending != 0 {
        failures.push(format!(
            "{pending} outbox messages neither sent nor suppressed"
        ));
    }
    println!(
        "SMTP received {} message(s) for {} queued",
        received.len(),
        queued.len()
    );
    failures
}

/// A client whose Register the kill cut off tries again: it is either done now, or it was done
/// before (EMAIL_TAKEN), and then the account is whole — it signs in and, when it asked for an
/// organization, owns one. (Queues mail of its own: check the mail before.)
async fn cut_off_registers_retried(held: &[Held], channel: &Channel) -> Vec<String> {
    let mut auth = AuthServiceClient::new(channel.clone());
    let mut failures = Vec::new();
    for request in held.iter().filter_map(|h| h.register_in_flight.clone()) {
        let email = request.email.clone();
        let with_org = request.organization.is_some();
        match auth.register(request).await {
            Ok(_) => println!("cut-off Register of {email} retried: done now"),
            Err(e) if reason(&e) == "EMAIL_TAKEN" => {
                println!("cut-off Register of {email} retried: EMAIL_TAKEN");
                let login = LoginRequest {
                    email: email.clone(),
                    password: PASSWORD.into(),
                };
                let pair = match auth.login(login).await {
                    Ok(pair) => pair.into_inner().tokens.expect("tokens"),
                    Err(e) => {
                        failures.push(format!(
                            "Register of {email} was cut off by the kill; retried it answers \
                             EMAIL_TAKEN, but the account cannot log in: {:?} {}",
                            e.code(),
                            reason(&e)
                        ));
                        continue;
                    }
                };
                if !with_org {
                    continue;
                }
                if let Some(why) = not_owner(channel, &pair.access_token, None).await {
                    failures.push(format!(
                        "Register of {email} with an organization was cut off by the kill; \
                         retried it answers EMAIL_TAKEN, yet the account owns no organization \
                         ({why}): it can neither finish nor redo its registration"
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "Register of {email} was cut off by the kill; retried it fails: {:?} {}",
                e.code(),
                reason(&e)
            )),
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyward_killed_mid_flood_loses_no_mail_and_leaves_no_half_made_account() {
    let Some(mut killed) = flood_until_killed(Registrations::WithoutOrganization).await else {
        return;
    };
    let (queued, mut failures) = mail_queued_at_the_kill(&killed).await;
    let (second, channel) = killed.restart().await;
    failures.extend(refresh_tokens_still_refresh(&killed.held, &channel).await);
    failures.extend(registered_accounts_are_whole(&killed.ledger, &channel).await);
    failures.extend(queued_mail_delivered_once(&mut killed, &queued).await);
    // Organizations and memberships are checked too: the flood must have made none.
    failures.extend(half_made_state(&killed.db).await);
    failures.extend(cut_off_registers_retried(&killed.held, &channel).await);
    killed.finish(second, failures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_with_organization_killed_between_its_writes_leaves_neither_half() {
    let Some(killed) = flood_until_killed(Registrations::MostlyWithOrganization).await else {
        return;
    };
    // Mail is the first test's business: SMTP stays down.
    let (second, channel) = killed.restart().await;
    // The restarted keyward finishes registrations whose account was stored at once; an
    // organization whose account never was is taken back once no request can still be writing
    // it (request_timeout + 5 s), on a check every 10 s.
    let settle_by = Instant::now() + Duration::from_secs(45);
    let mut half = half_made_state(&killed.db).await;
    while !half.is_empty() && Instant::now() < settle_by {
        tokio::time::sleep(Duration::from_secs(1)).await;
        half = half_made_state(&killed.db).await;
    }
    let mut failures = registered_accounts_are_whole(&killed.ledger, &channel).await;
    failures.extend(half);
    failures.extend(cut_off_registers_retried(&killed.held, &channel).await);
    killed.finish(second, failures).await;
}
