//! keyward's configuration: an optional TOML file, then `KEYWARD_*` environment variables on top
//! (the environment wins). Every key has the same name in both places (`grpc_addr` in the file is
//! `KEYWARD_GRPC_ADDR` in the environment). Unknown keys are rejected by name, and `validate()`
//! runs before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::domain::lockout::LockoutPolicy;
use crate::domain::password::PasswordPolicy;

/// Prefix of every environment variable keyward reads.
pub const ENV_PREFIX: &str = "KEYWARD_";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// All settings, flat so that file keys and environment names map one to one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    // --- server ---
    /// Address the gRPC server listens on.
    pub grpc_addr: SocketAddr,
    /// A call running longer than this is cancelled with DEADLINE_EXCEEDED.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request keyward decodes; larger ones get INVALID_ARGUMENT.
    #[serde(deserialize_with = "flexible")]
    pub max_message_bytes: usize,
    /// In-flight calls per connection; beyond it calls are shed with UNAVAILABLE.
    #[serde(deserialize_with = "flexible")]
    pub concurrency_per_connection: usize,
    /// Cookie that carries the access token for ext_authz checks when a request has no
    /// `Authorization: Bearer` header (browser sessions behind Envoy). Unset: header only.
    pub ext_authz_cookie: Option<String>,
    /// Proxies between clients and keyward that append to `x-forwarded-for` (the REST sidecar
    /// is one; an ingress in front of it makes two). The client is the entry the outermost of
    /// them appended. 0: the header is ignored and the TCP peer is the client.
    #[serde(deserialize_with = "flexible")]
    pub trusted_proxy_hops: usize,
    /// Networks (CIDR or single addresses, comma separated in the environment) whose TCP
    /// connections may carry `x-forwarded-for`; from any other peer it is ignored. Default:
    /// 127.0.0.1 and ::1, where the sidecar connects from (not all of 127.0.0.0/8: Istio's
    /// sidecar connects from 127.0.0.6 on behalf of any caller in the mesh).
    #[serde(deserialize_with = "net_list")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Address of the Prometheus endpoint (`/metrics`), off the gRPC port. Empty: no endpoint
    /// and no metrics kept.
    #[serde(deserialize_with = "optional_addr")]
    pub metrics_addr: Option<SocketAddr>,

    // --- storage ---
    /// MongoDB connection string (any MongoDB-compatible server).
    pub mongodb_uri: Option<String>,
    pub mongodb_database: String,

    // --- dev mode ---
    /// Development mode: a generated signing key kept in `data_dir`. Never in production.
    #[serde(deserialize_with = "flexible")]
    pub dev: bool,
    pub data_dir: PathBuf,

    // --- tokens and sessions ---
    /// PASERK `k4.secret` that signs access tokens.
    pub signing_key: Option<String>,
    /// File holding the PASERK `k4.secret` (e.g. a mounted Kubernetes secret).
    pub signing_key_file: Option<PathBuf>,
    /// Extra PASERK `k4.public` keys whose tokens are still accepted (rotation), comma separated
    /// in the environment.
    #[serde(deserialize_with = "string_list")]
    pub verification_keys: Vec<String>,
    pub token_issuer: String,
    pub token_audience: String,
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Absolute session lifetime: refreshing never extends a session past it.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// How long the refresh token rotated just before the current one may be presented again
    /// (a client retrying a lost response) without revoking the session.
    #[serde(with = "humantime_serde")]
    pub refresh_reuse_grace: Duration,
    /// How long a replica trusts its cached view of a session; bounds how late a revocation made
    /// by another replica is seen.
    #[serde(with = "humantime_serde")]
    pub session_cache_ttl: Duration,

    // --- second factors ---
    /// Permissions that a one-factor session is refused (MFA_REQUIRED) until it steps up.
    #[serde(deserialize_with = "string_list")]
    pub mfa_required_permissions: Vec<String>,
    /// How recently a session must have signed in to enrol a second factor.
    #[serde(with = "humantime_serde")]
    pub privileged_session_max_age: Duration,
    /// The issuer authenticator apps show beside the account.
    pub totp_issuer: String,

    // --- permission catalogue ---
    /// A catalogue file (`[[permission]]` tables) applied once the database is ready.
    pub permissions_file: Option<PathBuf>,

    // --- federated sign-in ---
    /// OpenID Connect providers: `[[oidc_providers]]` tables in the file, a JSON array of the
    /// same objects in the environment.
    #[serde(deserialize_with = "oidc_providers")]
    pub oidc_providers: Vec<OidcProvider>,
    /// Longest wait for one request to a provider (discovery document, keys, token endpoint).
    #[serde(with = "humantime_serde")]
    pub oidc_http_timeout: Duration,

    // --- passwords ---
    #[serde(deserialize_with = "flexible")]
    pub password_min_length: usize,
    #[serde(deserialize_with = "flexible")]
    pub password_max_length: usize,
    /// zxcvbn score (0..=4) a new password must reach; 0 turns the check off.
    #[serde(deserialize_with = "flexible")]
    pub password_min_strength: u8,
    #[serde(deserialize_with = "flexible")]
    pub password_require_uppercase: bool,
    #[serde(deserialize_with = "flexible")]
    pub password_require_lowercase: bool,
    #[serde(deserialize_with = "flexible")]
    pub password_require_digit: bool,
    #[serde(deserialize_with = "flexible")]
    pub password_require_symbol: bool,
    /// Threads that hash passwords; 0 means one per CPU core.
    #[serde(deserialize_with = "flexible")]
    pub hash_workers: usize,

    // --- login throttling ---
    /// Consecutive failures for one email before it is locked; 0 turns lockout off.
    #[serde(deserialize_with = "flexible")]
    pub lockout_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub lockout_base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub lockout_max_delay: Duration,
    /// Login attempts allowed per client address per minute; 0 turns the limit off.
    #[serde(deserialize_with = "flexible")]
    pub login_attempts_per_address_per_minute: u32,
    /// Registrations allowed per client address per hour; 0 turns the limit off.
    #[serde(deserialize_with = "flexible")]
    pub registrations_per_address_per_hour: u32,

    // --- email and one-time codes ---
    /// SMTP server for outgoing mail: `smtp://host:25`, `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS) or `smtps://user:pass@host:465`. Required to serve, except in dev mode, where
    /// mail goes to the log.
    pub smtp_url: Option<String>,
    /// Sender of every mail, `Name <address>` or `address`.
    pub mail_from: String,
    /// Directory whose template files (e.g. `login_code.html`) replace the built-in ones.
    pub mail_templates_dir: Option<PathBuf>,
    /// First wait before retrying a failed delivery; doubles per attempt up to the max.
    #[serde(with = "humantime_serde")]
    pub mail_retry_base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub mail_retry_max_delay: Duration,
    /// How long a code works (at most 10 minutes).
    #[serde(with = "humantime_serde")]
    pub code_lifetime: Duration,
    /// Least time between two codes for one email address and purpose.
    #[serde(with = "humantime_serde")]
    pub code_send_cooldown: Duration,
    /// Most codes per email address and purpose per hour.
    #[serde(deserialize_with = "flexible")]
    pub code_sends_per_hour: u32,
    /// Code requests and code attempts allowed per client address per minute; 0 turns it off.
    #[serde(deserialize_with = "flexible")]
    pub code_requests_per_address_per_minute: u32,
    /// Password login needs a verified email (EMAIL_NOT_VERIFIED after a correct password).
    #[serde(deserialize_with = "flexible")]
    pub require_verified_email: bool,
    /// LoginWithCode for an email without an account creates the account (passwordless
    /// sign-up). Off by default.
    #[serde(deserialize_with = "flexible")]
    pub passwordless_signup: bool,
    /// Secret (32+ characters) keying stored codes and sealing queued mail. Unset: derived from
    /// the signing key, so rotating that key voids codes and queued mail of the moment.
    pub code_secret: Option<String>,

    // --- administration ---
    /// After DeleteUser, the deleted account's email may be registered again (the deleted record
    /// keeps it under a form no login matches). Off: the address stays taken.
    #[serde(deserialize_with = "flexible")]
    pub reuse_deleted_emails: bool,

    // --- audit ---
    #[serde(with = "humantime_serde")]
    pub audit_retention: Duration,

    // --- telemetry ---
    pub log_format: LogFormat,
    /// tracing filter, e.g. `info` or `keyward=debug,info`.
    pub log_level: String,
    /// OTLP/gRPC endpoint for traces, e.g. `http://otel-collector:4317`. Unset: no export.
    pub otlp_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: "0.0.0.0:50051".parse().expect("static address"),
            request_timeout: Duration::from_secs(10),
            max_message_bytes: 64 * 1024,
            concurrency_per_connection: 256,
            ext_authz_cookie: None,
            trusted_proxy_hops: 0,
            trusted_proxies: vec![
                "127.0.0.1/32".parse().expect("static network"),
                "::1/128".parse().expect("static network"),
            ],
            metrics_addr: Some("0.0.0.0:9090".parse().expect("static address")),
            mongodb_uri: None,
            mongodb_database: "keyward".into(),
            dev: false,
            data_dir: PathBuf::from(".keyward-dev"),
            signing_key: None,
            signing_key_file: None,
            verification_keys: Vec::new(),
            token_issuer: "keyward".into(),
            token_audience: "keyward".into(),
            access_token_ttl: Duration::from_secs(15 * 60),
            session_lifetime: Duration::from_secs(30 * 24 * 3600),
            refresh_reuse_grace: Duration::from_secs(10),
            session_cache_ttl: Duration::from_secs(1),
            mfa_required_permissions: Vec::new(),
            privileged_session_max_age: Duration::from_secs(15 * 60),
            totp_issuer: "keyward".into(),
            permissions_file: None,
            oidc_providers: Vec::new(),
            oidc_http_timeout: Duration::from_secs(10),
            password_min_length: 8,
            password_max_length: 128,
            password_min_strength: 2,
            password_require_uppercase: false,
            password_require_lowercase: false,
            password_require_digit: false,
            password_require_symbol: false,
            hash_workers: 0,
            lockout_threshold: 5,
            lockout_base_delay: Duration::from_secs(30),
            lockout_max_delay: Duration::from_secs(15 * 60),
            login_attempts_per_address_per_minute: 30,
            registrations_per_address_per_hour: 30,
            smtp_url: None,
            mail_from: "keyward <no-reply@keyward.localhost>".into(),
            mail_templates_dir: None,
            mail_retry_base_delay: Duration::from_secs(5),
            mail_retry_max_delay: Duration::from_secs(5 * 60),
            code_lifetime: Duration::from_secs(10 * 60),
            code_send_cooldown: Duration::from_secs(60),
            code_sends_per_hour: 5,
            code_requests_per_address_per_minute: 30,
            require_verified_email: true,
            passwordless_signup: false,
            code_secret: None,
            reuse_deleted_emails: false,
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            otlp_endpoint: None,
        }
    }
}

/// Accepts a native TOML value or its text form (environment values are always text), and
/// `1`/`0`/`yes`/`no` for booleans.
fn flexible<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr + serde::de::DeserializeOwned,
    T::Err: std::fmt::Display,
{
    let value = toml::Value::deserialize(d)?;
    match value {
        toml::Value::String(s) => {
            let s = match s.trim().to_ascii_lowercase().as_str() {
                "1" | "yes" | "on" if std::any::type_name::<T>() == "bool" => "true".to_string(),
                "0" | "no" | "off" if std::any::type_name::<T>() == "bool" => "false".to_string(),
                _ => s.trim().to_string(),
            };
            s.parse().map_err(serde::de::Error::custom)
        }
        other => T::deserialize(other).map_err(serde::de::Error::custom),
    }
}

/// A TOML array of strings, or one comma-separated string.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(match List::deserialize(d)? {
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        List::Many(v) => v,
    })
}

/// An address, or nothing for an empty value (the way a setting is turned off).
fn optional_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("`{addr}` is not an address such as 0.0.0.0:9090"))
        }),
    }
}

/// One OpenID Connect provider keyward signs people in with.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// Short stable name clients pass as `provider`, e.g. `google`; also stored with each linked
    /// identity, so it must not change once people have signed in.
    pub id: String,
    /// `google` fills in Google's issuer, display name and scopes, and trusts its
    /// `email_verified`.
    #[serde(default)]
    pub preset: Option<String>,
    /// Shown on sign-in pages (ListProviders); default: the id.
    #[serde(default)]
    pub display_name: Option<String>,
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`. HTTPS, except
    /// on a loopback address.
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// File holding the client secret (e.g. a mounted Kubernetes secret).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked for; `openid` is always included. Default: `openid email profile`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The redirect URIs clients may pass, compared exactly.
    pub redirect_uris: Vec<String>,
    /// Whether the provider's `email_verified` claim is believed: only then may a sign-in create
    /// an account or link to an existing one by email. Default: false (true for the google
    /// preset).
    #[serde(default)]
    pub trust_email_verified: Option<bool>,
}

/// A provider's settings with its preset applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProvider {
    pub display_name: String,
    pub issuer: String,
    pub scopes: Vec<String>,
    pub trust_email_verified: bool,
}

/// Google's issuer.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";

impl OidcProvider {
    /// The settings with the preset filled in where the provider leaves them unset.
    pub fn resolved(&self) -> ResolvedProvider {
        let google = self.preset.as_deref() == Some("google");
        let mut scopes = if self.scopes.is_empty() {
            vec!["openid".into(), "email".into(), "profile".into()]
        } else {
            self.scopes.clone()
        };
        if !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        ResolvedProvider {
            display_name: self.display_name.clone().unwrap_or_else(|| {
                if google {
                    "Google".into()
                } else {
                    self.id.clone()
                }
            }),
            issuer: self.issuer.clone().unwrap_or_else(|| {
                if google {
                    GOOGLE_ISSUER.into()
                } else {
                    String::new()
                }
            }),
            scopes,
            trust_email_verified: self.trust_email_verified.unwrap_or(google),
        }
    }

    /// Why this provider cannot be used, if it cannot.
    fn problem(&self) -> Option<String> {
        use crate::domain::federation::{check_issuer, check_provider_id, check_redirect_uri};
        if let Err(why) = check_provider_id(&self.id) {
            return Some(format!("id `{}` {why}", self.id));
        }
        if let Some(preset) = self.preset.as_deref().filter(|p| *p != "google") {
            return Some(format!("unknown preset `{preset}` (known: google)"));
        }
        let resolved = self.resolved();
        if self.preset.as_deref() == Some("google")
            && self.issuer.as_deref().is_some_and(|i| i != GOOGLE_ISSUER)
        {
            return Some(format!(
                "the google preset trusts Google's email_verified and needs issuer {GOOGLE_ISSUER}; \
                 for another issuer leave preset unset"
            ));
        }
        if resolved.issuer.is_empty() {
            return Some("issuer is required (or preset = \"google\")".into());
        }
        if let Err(why) = check_issuer(&resolved.issuer) {
            return Some(format!("issuer {why}"));
        }
        if self.client_id.trim().is_empty() {
            return Some("client_id is required".into());
        }
        if self.client_secret.is_some() && self.client_secret_file.is_some() {
            return Some("set client_secret or client_secret_file, not both".into());
        }
        if self.redirect_uris.is_empty() {
            return Some("redirect_uris must list at least one URI".into());
        }
        self.redirect_uris
            .iter()
            .find_map(|u| check_redirect_uri(u).err())
    }
}

/// Providers as TOML tables (file) or one JSON array (environment).
fn oidc_providers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OidcProvider>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Providers {
        Json(String),
        Tables(Vec<OidcProvider>),
    }
    match Providers::deserialize(d)? {
        Providers::Tables(v) => Ok(v),
        Providers::Json(s) if s.trim().is_empty() => Ok(Vec::new()),
        Providers::Json(s) => serde_json::from_str(&s)
            .map_err(|e| serde::de::Error::custom(format!("not a JSON array of providers: {e}"))),
    }
}

/// Networks as a TOML array or one comma-separated string; a bare address is its own /32 or
/// /128.
fn net_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    string_list(d)?
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a network or address")))
        })
        .collect()
}

/// A setting that could not be used, named the way the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads `file` (if any), then overlays every `KEYWARD_*` entry of `env`, then validates.
    /// `env` is passed in so tests can build any configuration.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let known = Self::known_keys();
        if let Some(bad) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConfigError(format!(
                "unknown setting `{bad}` in config file"
            )));
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if !known.contains(&key.as_str()) {
                return Err(ConfigError(format!(
                    "unknown setting {name} in the environment"
                )));
            }
            table.insert(key, toml::Value::String(value.clone()));
        }
        let config: Config = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(describe(&e, &table)))?;
        config.validate()?;
        Ok(config)
    }

    /// The names of all settings (file keys; the environment adds `KEYWARD_` and upper case).
    pub fn known_keys() -> Vec<&'static str> {
        KEYS.to_vec()
    }

    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| {
            Err(ConfigError(format!(
                "{}{}: {why}",
                ENV_PREFIX,
                key.to_ascii_uppercase()
            )))
        };
        if self
            .mongodb_uri
            .as_deref()
            .is_none_or(|u| !(u.starts_with("mongodb://") || u.starts_with("mongodb+srv://")))
        {
            return bad(
                "mongodb_uri",
                "must be set to a mongodb:// or mongodb+srv:// URI",
            );
        }
        if self.mongodb_database.is_empty() {
            return bad("mongodb_database", "must not be empty");
        }
        if !self.dev && self.signing_key.is_none() && self.signing_key_file.is_none() {
            return bad(
                "signing_key",
                "no signing key configured; set KEYWARD_SIGNING_KEY (see `keyward keys generate`) or run with --dev",
            );
        }
        if self.signing_key.is_some() && self.signing_key_file.is_some() {
            return bad(
                "signing_key_file",
                "set either signing_key or signing_key_file, not both",
            );
        }
        if self.access_token_ttl < Duration::from_secs(10)
            || self.access_token_ttl > Duration::from_secs(24 * 3600)
        {
            return bad("access_token_ttl", "must be between 10s and 24h");
        }
        if self.session_lifetime <= self.access_token_ttl {
            return bad("session_lifetime", "must be longer than access_token_ttl");
        }
        if self.refresh_reuse_grace > Duration::from_secs(60) {
            return bad("refresh_reuse_grace", "must be at most 60s");
        }
        if self.session_cache_ttl > Duration::from_secs(2) {
            return bad(
                "session_cache_ttl",
                "must be at most 2s so revocations reach every replica in time",
            );
        }
        if let Some(unknown) = self
            .mfa_required_permissions
            .iter()
            .find(|p| !crate::domain::permissions::is_known(p))
        {
            return bad(
                "mfa_required_permissions",
                &format!("`{unknown}` is not a permission keyward knows"),
            );
        }
        if self.totp_issuer.trim().is_empty() || self.totp_issuer.contains(':') {
            return bad("totp_issuer", "must be a non-empty name without `:`");
        }
        let mut provider_ids = std::collections::BTreeSet::new();
        for p in &self.oidc_providers {
            if let Some(why) = p.problem() {
                return bad("oidc_providers", &format!("provider `{}`: {why}", p.id));
            }
            if !provider_ids.insert(p.id.as_str()) {
                return bad(
                    "oidc_providers",
                    &format!("provider id `{}` appears twice", p.id),
                );
            }
        }
        if self.oidc_http_timeout < Duration::from_millis(100)
            || self.oidc_http_timeout > Duration::from_secs(60)
        {
            return bad("oidc_http_timeout", "must be between 100ms and 60s");
        }
        if self.privileged_session_max_age < Duration::from_secs(60) {
            return bad("privileged_session_max_age", "must be at least 1m");
        }
        if self.password_min_length < 8 {
            return bad(
                "password_min_length",
                "must be at least 8 (NIST SP 800-63B)",
            );
        }
        if self.password_max_length < 64 || self.password_max_length > 4096 {
            return bad("password_max_length", "must be between 64 and 4096");
        }
        if self.password_min_strength > 4 {
            return bad("password_min_strength", "must be between 0 and 4");
        }
        if self.max_message_bytes < 1024 || self.max_message_bytes > 4 * 1024 * 1024 {
            return bad("max_message_bytes", "must be between 1024 and 4194304");
        }
        if self.trusted_proxy_hops > 10 {
            return bad("trusted_proxy_hops", "must be between 0 and 10");
        }
        if self
            .metrics_addr
            .is_some_and(|m| m == self.grpc_addr && m.port() != 0)
        {
            return bad("metrics_addr", "must differ from grpc_addr");
        }
        if self.concurrency_per_connection == 0 {
            return bad("concurrency_per_connection", "must be at least 1");
        }
        if self.lockout_threshold > 0 && self.lockout_base_delay.is_zero() {
            return bad(
                "lockout_base_delay",
                "must be positive when lockout_threshold is set",
            );
        }
        if self.code_lifetime < Duration::from_secs(60)
            || self.code_lifetime > crate::domain::codes::MAX_LIFETIME
        {
            return bad("code_lifetime", "must be between 1m and 10m");
        }
        if self.code_sends_per_hour == 0 {
            return bad("code_sends_per_hour", "must be at least 1");
        }
        if self.mail_retry_base_delay.is_zero()
            || self.mail_retry_max_delay < self.mail_retry_base_delay
        {
            return bad(
                "mail_retry_max_delay",
                "mail_retry_base_delay must be positive and at most mail_retry_max_delay",
            );
        }
        if let Some(url) = &self.smtp_url {
            if let Err(why) = crate::mail::check_smtp_url(url) {
                return bad("smtp_url", &why);
            }
        }
        if crate::mail::mailbox_from(&self.mail_from).is_err() {
            return bad("mail_from", "must be `Name <address>` or an address");
        }
        if self.code_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return bad("code_secret", "must be at least 32 characters");
        }
        if self.token_issuer.is_empty() || self.token_audience.is_empty() {
            return bad(
                "token_issuer",
                "token_issuer and token_audience must not be empty",
            );
        }
        Ok(())
    }

    pub fn password_policy(&self) -> PasswordPolicy {
        PasswordPolicy {
            min_length: self.password_min_length,
            max_length: self.password_max_length,
            min_strength: self.password_min_strength,
            require_uppercase: self.password_require_uppercase,
            require_lowercase: self.password_require_lowercase,
            require_digit: self.password_require_digit,
            require_symbol: self.password_require_symbol,
        }
    }

    /// How far the proxies in front of keyward are trusted with the client's address.
    pub fn proxy_trust(&self) -> crate::domain::client_address::ProxyTrust {
        crate::domain::client_address::ProxyTrust {
            hops: self.trusted_proxy_hops,
            proxies: self.trusted_proxies.clone(),
        }
    }

    pub fn lockout_policy(&self) -> LockoutPolicy {
        LockoutPolicy {
            threshold: self.lockout_threshold,
            base_delay: self.lockout_base_delay,
            max_delay: self.lockout_max_delay,
        }
    }

    /// Where mail goes: the SMTP server, or in dev mode without one the log and the dev mailbox
    /// in `data_dir`. Serving without SMTP outside dev mode is refused here.
    pub fn mail_outlet(&self) -> Result<crate::mail::Outlet, ConfigError> {
        match &self.smtp_url {
            Some(url) => Ok(crate::mail::Outlet::Smtp { url: url.clone() }),
            None if self.dev => Ok(crate::mail::Outlet::DevLog {
                mailbox: self.data_dir.join("mail"),
            }),
            None => Err(ConfigError(
                "no SMTP server configured: set KEYWARD_SMTP_URL (e.g. smtp://mail:587?tls=required) or run with --dev".into(),
            )),
        }
    }

    /// The signing key's PASERK, from the setting or its file. `None` only in dev mode.
    pub fn signing_key_paserk(&self) -> Result<Option<String>, ConfigError> {
        if let Some(key) = &self.signing_key {
            return Ok(Some(key.trim().to_string()));
        }
        match &self.signing_key_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|e| {
                    ConfigError(format!(
                        "KEYWARD_SIGNING_KEY_FILE: cannot read {}: {e}",
                        path.display()
                    ))
                }),
            None => Ok(None),
        }
    }
}

/// Every setting: its name, its default as an operator would write it (`None`: unset), and what
/// it means. The one source of README's settings table, and checked by tests against the struct
/// (names) and against `Config::default()` (defaults), so neither can drift.
pub const SETTINGS: &[(&str, Option<&str>, &str)] = &[
    ("grpc_addr", Some("0.0.0.0:50051"), "gRPC listen address"),
    ("request_timeout", Some("10s"), "a call running longer is cancelled"),
    ("max_message_bytes", Some("65536"), "largest request keyward reads; larger ones are refused (INVALID_ARGUMENT) from their length prefix, before they are buffered"),
    ("concurrency_per_connection", Some("256"), "in-flight calls per connection; excess calls are shed (UNAVAILABLE)"),
    ("ext_authz_cookie", None, "cookie carrying the access token for ext_authz when a request has no `Authorization: Bearer` header"),
    ("trusted_proxy_hops", Some("0"), "proxies in front of keyward that append to `x-forwarded-for` (REST sidecar = 1, ingress + sidecar = 2); 0: the TCP peer is the client"),
    ("trusted_proxies", Some("127.0.0.1/32,::1/128"), "networks whose connections may carry `x-forwarded-for` at all (not all of 127.0.0.0/8: a mesh sidecar such as Istio's connects from 127.0.0.6)"),
    ("metrics_addr", Some("0.0.0.0:9090"), "Prometheus endpoint (`/metrics`, see Metrics), off the gRPC port; empty: none"),
    ("mongodb_uri", None, "any MongoDB-compatible server; required"),
    ("mongodb_database", Some("keyward"), "database name"),
    ("dev", Some("false"), "development mode: a generated signing key in `data_dir`, mail to the log"),
    ("data_dir", Some(".keyward-dev"), "where dev mode keeps its key and its mailbox (`mail/`)"),
    ("signing_key", None, "PASERK `k4.secret` that signs access tokens"),
    ("signing_key_file", None, "file holding that key (e.g. a mounted secret)"),
    ("verification_keys", None, "extra `k4.public` keys still accepted (rotation), comma separated"),
    ("token_issuer", Some("keyward"), "`iss` of access tokens"),
    ("token_audience", Some("keyward"), "`aud` of access tokens"),
    ("access_token_ttl", Some("15m"), "access token lifetime"),
    ("session_lifetime", Some("30d"), "absolute session lifetime; refreshing never extends it"),
    ("refresh_reuse_grace", Some("10s"), "the previous refresh token may be retried this long without revoking"),
    ("session_cache_ttl", Some("1s"), "how long a replica trusts its cached session state (max 2s)"),
    ("mfa_required_permissions", None, "permissions a one-factor session is refused (MFA_REQUIRED) until it steps up, comma separated"),
    ("privileged_session_max_age", Some("15m"), "how recently a session must have signed in to enrol an authenticator"),
    ("totp_issuer", Some("keyward"), "the name authenticator apps show for keyward accounts"),
    ("permissions_file", None, "a permission catalogue file applied at start-up (see Permission catalogue)"),
    ("oidc_providers", None, "OpenID Connect providers for federated sign-in (see Sign in with Google or any OpenID Connect provider)"),
    ("oidc_http_timeout", Some("10s"), "longest wait for one request to a provider (discovery, keys, token endpoint)"),
    ("password_min_length", Some("8"), "NIST SP 800-63B minimum, in characters"),
    ("password_max_length", Some("128"), "maximum, in characters; nothing is truncated"),
    ("password_min_strength", Some("2"), "zxcvbn score a new password must reach (common-password check); 0 = off"),
    ("password_require_uppercase", Some("false"), "optional composition rule"),
    ("password_require_lowercase", Some("false"), "optional composition rule"),
    ("password_require_digit", Some("false"), "optional composition rule"),
    ("password_require_symbol", Some("false"), "optional composition rule"),
    ("hash_workers", Some("0"), "argon2id threads, each keeping ~19 MiB; 0 = the CPUs the container may use, at most 4"),
    ("lockout_threshold", Some("5"), "consecutive password failures per email before it locks; 0 = off"),
    ("lockout_base_delay", Some("30s"), "first lock; doubles per further failure"),
    ("lockout_max_delay", Some("15m"), "longest lock"),
    ("login_attempts_per_address_per_minute", Some("30"), "password logins per client address; 0 = off"),
    ("registrations_per_address_per_hour", Some("30"), "Register and CreateMember calls per client address; 0 = off"),
    ("smtp_url", None, "`smtp://host:25`, `smtp://user:pass@host:587?tls=required` (STARTTLS) or `smtps://user:pass@host:465`; required to serve except in dev"),
    ("mail_from", Some("keyward <no-reply@keyward.localhost>"), "sender of every mail"),
    ("mail_templates_dir", None, "files here (e.g. `login_code.html`) replace the built-in templates in `src/mail/templates/`"),
    ("mail_retry_base_delay", Some("5s"), "first wait before retrying a delivery; doubles per attempt"),
    ("mail_retry_max_delay", Some("5m"), "longest wait between attempts; a message is given up after 24 h"),
    ("code_lifetime", Some("10m"), "one-time code lifetime (1m..10m)"),
    ("code_send_cooldown", Some("60s"), "least time between two codes per email address and purpose"),
    ("code_sends_per_hour", Some("5"), "most codes per email address and purpose per hour from one client; clients the account never signed in from get twice that together"),
    ("code_requests_per_address_per_minute", Some("30"), "code requests and attempts per client address; 0 = off"),
    ("require_verified_email", Some("true"), "password login needs a verified email"),
    ("passwordless_signup", Some("false"), "`LoginWithCode` for an unknown email creates the account"),
    ("code_secret", None, "32+ characters keying stored codes and sealing queued mail; unset: derived from the signing key (set it so a key rotation does not void codes in flight)"),
    ("reuse_deleted_emails", Some("false"), "a deleted account's email may be registered again"),
    ("audit_retention", Some("90d"), "audit events expire after this"),
    ("log_format", Some("text"), "`text` or `json`"),
    ("log_level", Some("info"), "tracing filter, e.g. `keyward=debug,info`"),
    ("otlp_endpoint", None, "OTLP/gRPC endpoint for traces, e.g. `http://otel-collector:4317`"),
];

/// Every setting name (file keys; the environment adds `KEYWARD_` and upper case).
const KEYS: &[&str] = &{
    let mut keys = [""; SETTINGS.len()];
    let mut i = 0;
    while i < SETTINGS.len() {
        keys[i] = SETTINGS[i].0;
        i += 1;
    }
    keys
};

/// README's settings table, rendered from [`SETTINGS`].
pub fn settings_table() -> String {
    let mut out = String::from("| setting | default | meaning |\n| --- | --- | --- |\n");
    for (key, default, meaning) in SETTINGS {
        let default = default.map_or("—".to_string(), |d| format!("`{d}`"));
        out.push_str(&format!("| `{key}` | {default} | {meaning} |\n"));
    }
    out
}

/// Turns serde's message into one naming the offending key the way the operator set it.
fn describe(err: &toml::de::Error, table: &toml::Table) -> String {
    let msg = err.message().to_string();
    // toml reports the key path in its own Display; find which of our keys it is about.
    let full = err.to_string();
    let key = table.keys().find(|k| full.contains(&format!("`{k}`")));
    match key {
        Some(k) => format!(
            "{}{} (or `{k}` in the config file): {msg}",
            ENV_PREFIX,
            k.to_ascii_uppercase()
        ),
        None => format!("invalid configuration: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const URI: (&str, &str) = ("KEYWARD_MONGODB_URI", "mongodb://127.0.0.1:27017");

    #[test]
    fn key_list_matches_the_struct() {
        // serde's unknown-field error lists every field the struct has.
        let mut table = toml::Table::new();
        table.insert("no_such_key".into(), toml::Value::Boolean(true));
        let err = toml::Value::Table(table)
            .try_into::<Config>()
            .unwrap_err()
            .to_string();
        let mut fields: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        fields.sort_unstable();
        let mut keys = KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(fields, keys, "{err}");
    }

    #[test]
    fn documented_defaults_are_the_real_defaults() {
        // Load every documented default the way an operator would set it; the result must be
        // exactly the built-in defaults.
        let mut pairs: Vec<(String, String)> = SETTINGS
            .iter()
            .filter_map(|(k, d, _)| d.map(|d| (format!("KEYWARD_{}", k.to_uppercase()), d.into())))
            .collect();
        pairs.push((URI.0.into(), URI.1.into()));
        pairs.push(("KEYWARD_DEV".into(), "true".into()));
        let loaded = Config::load(None, &pairs.into_iter().collect()).unwrap();
        let expected = Config {
            mongodb_uri: Some(URI.1.into()),
            dev: true,
            ..Config::default()
        };
        assert_eq!(format!("{loaded:?}"), format!("{expected:?}"));
        // And every unset-by-default setting is None or empty in the defaults.
        for (key, default, _) in SETTINGS {
            if default.is_none() {
                let shown = format!("{expected:?}");
                let field = format!("{key}: ");
                let at = shown
                    .find(&field)
                    .unwrap_or_else(|| panic!("{key} not in Debug"));
                let value = &shown[at + field.len()..];
                assert!(
                    value.starts_with("None") || value.starts_with("[]") || key == &"mongodb_uri",
                    "{key} is documented as unset but defaults to {}",
                    &value[..value.len().min(40)]
                );
            }
        }
    }

    #[test]
    fn readme_settings_table_is_rendered_from_the_settings() {
        let readme_path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(readme_path).unwrap();
        let (start, end) = ("<!-- settings:start -->\n", "<!-- settings:end -->");
        let from = readme.find(start).expect("README has the settings markers") + start.len();
        let to = readme
            .find(end)
            .expect("README has the settings end marker");
        let table = settings_table();
        if readme[from..to] != table {
            if std::env::var_os("KEYWARD_BLESS").is_some() {
                let updated = format!("{}{table}{}", &readme[..from], &readme[to..]);
                std::fs::write(readme_path, updated).unwrap();
            } else {
                panic!(
                    "README's settings table is out of date; rerun with KEYWARD_BLESS=1 to \
                     rewrite it from config::SETTINGS:\n{table}"
                );
            }
        }
    }

    #[test]
    fn environment_wins_over_file_and_unknown_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("keyward-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keyward.toml");
        std::fs::write(
            &file,
            "grpc_addr = \"127.0.0.1:1000\"\ndev = true\nlockout_threshold = 7\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            &env(&[URI, ("KEYWARD_GRPC_ADDR", "127.0.0.1:2000")]),
        )
        .unwrap();
        assert_eq!(c.grpc_addr.port(), 2000);
        assert_eq!(c.lockout_threshold, 7);
        assert!(c.dev);

        let err = Config::load(
            None,
            &env(&[URI, ("KEYWARD_DEV", "1"), ("KEYWARD_MONGO_URL", "x")]),
        )
        .unwrap_err();
        assert!(err.0.contains("KEYWARD_MONGO_URL"), "{err}");
        std::fs::write(&file, "grpc_adress = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(Some(&file), &env(&[URI])).unwrap_err();
        assert!(err.0.contains("grpc_adress"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Config::load(
            None,
            &env(&[
                URI,
                ("KEYWARD_DEV", "1"),
                ("KEYWARD_ACCESS_TOKEN_TTL", "soon"),
            ]),
        )
        .unwrap_err();
        assert!(err.0.contains("KEYWARD_ACCESS_TOKEN_TTL"), "{err}");
        let err = Config::load(
            None,
            &env(&[
                URI,
                ("KEYWARD_DEV", "1"),
                ("KEYWARD_PASSWORD_MIN_LENGTH", "4"),
            ]),
        )
        .unwrap_err();
        assert!(err.0.contains("KEYWARD_PASSWORD_MIN_LENGTH"), "{err}");
        let err = Config::load(None, &env(&[("KEYWARD_DEV", "yes")])).unwrap_err();
        assert!(err.0.contains("KEYWARD_MONGODB_URI"), "{err}");
    }

    #[test]
    fn metrics_addr_is_an_address_or_empty_for_none() {
        let dev = ("KEYWARD_DEV", "1");
        let c = Config::load(None, &env(&[URI, dev])).unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9090".parse().unwrap()));
        let c = Config::load(None, &env(&[URI, dev, ("KEYWARD_METRICS_ADDR", "")])).unwrap();
        assert_eq!(c.metrics_addr, None);
        let c = Config::load(
            None,
            &env(&[URI, dev, ("KEYWARD_METRICS_ADDR", "127.0.0.1:9464")]),
        )
        .unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        for bad in ["9090", "localhost:9090", "0.0.0.0:50051"] {
            let err =
                Config::load(None, &env(&[URI, dev, ("KEYWARD_METRICS_ADDR", bad)])).unwrap_err();
            assert!(err.0.contains("KEYWARD_METRICS_ADDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn production_refuses_to_start_without_a_signing_key() {
        let err = Config::load(None, &env(&[URI])).unwrap_err();
        assert!(err.0.contains("KEYWARD_SIGNING_KEY"), "{err}");
        let c = Config::load(None, &env(&[URI, ("KEYWARD_DEV", "1")])).unwrap();
        assert!(c.dev);
        let (secret, public, _) = crate::domain::tokens::generate_key();
        let c = Config::load(
            None,
            &env(&[
                URI,
                ("KEYWARD_SIGNING_KEY", &secret),
                ("KEYWARD_VERIFICATION_KEYS", &format!("{public}, {public}")),
            ]),
        )
        .unwrap();
        assert_eq!(c.verification_keys.len(), 2);
    }

    #[test]
    fn mail_goes_to_smtp_or_in_dev_mode_to_the_log_and_production_without_smtp_is_refused() {
        let (secret, _, _) = crate::domain::tokens::generate_key();
        let key = ("KEYWARD_SIGNING_KEY", secret.as_str());
        let production = Config::load(None, &env(&[URI, key])).unwrap();
        let err = production.mail_outlet().unwrap_err();
        assert!(err.0.contains("KEYWARD_SMTP_URL"), "{err}");

        let dev = Config::load(None, &env(&[URI, ("KEYWARD_DEV", "1")])).unwrap();
        assert_eq!(
            dev.mail_outlet().unwrap(),
            crate::mail::Outlet::DevLog {
                mailbox: dev.data_dir.join("mail")
            }
        );

        let url = "smtp://mail.example:587?tls=required";
        let smtp = Config::load(None, &env(&[URI, key, ("KEYWARD_SMTP_URL", url)])).unwrap();
        assert_eq!(
            smtp.mail_outlet().unwrap(),
            crate::mail::Outlet::Smtp { url: url.into() }
        );
        // Refused when the settings are read, not at the first mail.
        for bad in [
            "mail.example:25",
            "http://mail.example",
            "smtp://mail.example?tls=maybe",
        ] {
            let err = Config::load(None, &env(&[URI, key, ("KEYWARD_SMTP_URL", bad)])).unwrap_err();
            assert!(err.0.contains("KEYWARD_SMTP_URL"), "{bad}: {err}");
        }
    }
}
