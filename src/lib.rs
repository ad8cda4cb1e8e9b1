//! keyward: a small, fast, gRPC-native identity service.
//!
//! # Layout
//! - [`config`]: settings from a TOML file and `KEYWARD_*` environment, validated at start.
//! - [`telemetry`]: logs (text/JSON, the latter with the `trace_id`/`span_id` of an active
//!   trace), OTLP traces, one span per RPC joined to the caller's trace (status code, user id).
//! - [`metrics`]: Prometheus metrics — every name and label, the process-wide recorder, the
//!   `/metrics` endpoint on `metrics_addr`, the RPC-counting layer, and one typed helper per
//!   thing counted (logins, ext_authz decisions, codes, mail, hash pool, caches, MongoDB).
//! - [`server`]: the tonic server — limits, health that follows the database, reflection,
//!   services, the metrics endpoint beside them, graceful shutdown.
//! - [`grpc`]: thin adapters, one file per service (`auth.rs`, `otp.rs`, `org.rs`, `users.rs`,
//!   `mfa.rs`, `permissions.rs`, `service_accounts.rs`, `federation.rs`, and Envoy's
//!   `ext_authz.rs`), the request context (who is calling: client address from trusted proxies,
//!   and the signed-in principal), the readiness layer (NOT_READY while the database is not),
//!   the codec that turns bad input and oversized messages into INVALID_ARGUMENT, and proto
//!   conversions both ways (`inbound.rs`, `convert.rs`) from and to app types, never documents.
//! - [`app`]: the use cases (register, login, refresh, authenticate, logout, one-time codes,
//!   the mail outbox and its delivery workers, Authorize, organizations (`orgs/`: lifecycle,
//!   registration with an organization, listings, invitations, members and the owner-count
//!   protocol), platform user management, importing accounts, second factors (`mfa.rs`), the
//!   permission catalogue (`permissions.rs`), organizations' custom roles (`org_roles.rs`),
//!   service accounts and API keys (`service_accounts.rs`), sign-in with an OpenID Connect
//!   provider and linked identities (`federation.rs`)) combining domain rules with storage;
//!   knows nothing of protobuf, and returns its own types, never store documents.
//! - [`domain`]: pure rules, free of tonic and MongoDB — one validation toolkit (`validation`:
//!   field violations, a collector, the shared text rules), emails, password policy and hashing,
//!   tokens, roles, the built-in permissions as a type and the permission matrix, catalogue
//!   names, custom organization roles and who may grant them (`org_roles`), organizations' names,
//!   slugs, websites and invitations (`orgs`), audit actions as a type (`audit`), lockout,
//!   one-time codes and their send limits, TOTP and recovery codes (`mfa`), federated sign-in
//!   flows' secrets and checks (`federation`), keyset page tokens bound to typed filters,
//!   which client address to believe behind proxies (and its IPv6 /64 rate-limit key).
//! - [`store`]: MongoDB, one file per collection (`users`, `sessions`, `rate_limits`,
//!   `one_time_codes`, `mail_outbox`, `audit_events`, `orgs`, `org_roles`, `memberships`,
//!   `invitations`, `mfa`, `mfa_challenges`, `permissions`, `service_accounts`, `api_keys`,
//!   `federation_flows`, `identities`) with its documents, indexes and queries.
//! - [`oidc`]: the OpenID Connect relying party (discovery, keys, authorization URL, code
//!   exchange, ID token checks) that federated sign-in talks to providers through.
//! - [`mail`]: mail templates, sealing for the outbox, and the SMTP / dev-log transports.
//! - [`hash_pool`]: the bounded, low-priority thread pool that runs argon2id.
//! - [`error`]: the one mapping from domain errors to gRPC status + ErrorInfo/BadRequest/RetryInfo.
//!
//! Entry points: [`run`] serves until a shutdown future resolves (tests pass their own;
//! [`run_with_metrics`] also takes the metrics listener);
//! [`build_app`] wires config -> keys + store -> [`app::App`] for the CLI commands.

pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod hash_pool;
pub mod mail;
pub mod metrics;
pub mod oidc;
pub mod server;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Config;
use crate::domain::tokens::{generate_key, KeyRing};
use crate::store::Store;

/// Serves keyward on `listener` until `shutdown` resolves, then drains and returns. The metrics
/// endpoint, if `metrics_addr` is set, listens there.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics_addr {addr}"))?,
        ),
        None => None,
    };
    run_with_metrics(config, listener, metrics_listener, shutdown).await
}

/// [`run`] with the metrics endpoint on `metrics_listener` (`None`: no endpoint, and no metrics
/// kept unless another instance in this process keeps them) instead of `metrics_addr`.
pub async fn run_with_metrics(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if metrics_listener.is_some() {
        // Before the app is built, so what it records at start (its hashing threads) is kept.
        crate::metrics::install();
    }
    let transport = preflight(&config)?;
    let app = build_app(config).await?;
    server::serve(app, transport, listener, metrics_listener, shutdown).await
}

/// Every reason to refuse to serve that the settings alone do not show, checked before anything
/// listens or connects: where mail goes ([`Config::mail_outlet`]: SMTP, or the log only in dev
/// mode) and the permission catalogue file. The settings' own refusals are all in
/// [`Config::validate`], which [`Config::load`] runs (tests build configs outside its bounds, e.g.
/// a 4 s privileged-session age, so it is not run again here). Returns the mail transport.
fn preflight(config: &Config) -> anyhow::Result<mail::Transport> {
    let refused = |e: config::ConfigError| anyhow::anyhow!("configuration error: {e}");
    let transport = mail::Transport::for_outlet(&config.mail_outlet().map_err(refused)?)?;
    if let Some(path) = &config.permissions_file {
        app::permissions::load_permission_file(path)?;
    }
    Ok(transport)
}

/// Builds the application from a validated config (keys, store, caches, hash pool).
pub async fn build_app(config: Config) -> anyhow::Result<Arc<App>> {
    let (keys, signing_secret) = key_ring(&config)?;
    let master_secret = config.code_secret.clone().unwrap_or(signing_secret);
    let uri = config
        .mongodb_uri
        .clone()
        .context("mongodb_uri is not set")?;
    let store = Store::connect(&uri, &config.mongodb_database, config.audit_retention).await?;
    App::new(config, store, keys, master_secret.as_bytes()).await
}

/// The configured signing key, or in dev mode one generated once and kept in `data_dir`; with
/// its secret PASERK.
fn key_ring(config: &Config) -> anyhow::Result<(KeyRing, String)> {
    let secret = match config
        .signing_key_paserk()
        .map_err(|e| anyhow::anyhow!(e))?
    {
        Some(secret) => secret,
        None => {
            anyhow::ensure!(config.dev, "no signing key configured");
            dev_signing_key(&config.data_dir)?
        }
    };
    let ring = KeyRing::new(
        &secret,
        &config.verification_keys,
        &config.token_issuer,
        &config.token_audience,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok((ring, secret))
}

fn dev_signing_key(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("signing_key.paserk");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().to_string());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (secret, _, key_id) = generate_key();
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        match options.open(&path) {
            Ok(mut file) => file.write_all(secret.as_bytes())?,
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(std::fs::read_to_string(&path)?.trim().to_string())
            }
            Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
        }
    }
    tracing::info!(path = %path.display(), key_id, "generated a dev signing key");
    Ok(secret)
}

/// The layering of the crate, checked: each layer names what it must never reach. Adapters
/// (`grpc`) call use cases (`app`), which combine pure rules (`domain`) with storage (`store`);
/// only `store` speaks BSON, only `grpc`, `server` and the one error mapping speak gRPC.
#[cfg(test)]
mod layering {
    use std::path::{Path, PathBuf};

    /// (files under `src/`, what their code must not mention)
    const RULES: &[(&str, &[&str])] = &[
        (
            "domain",
            &[
                "tonic",
                "prost",
                "mongodb",
                "bson",
                "crate::error",
                "crate::app",
                "crate::store",
                "crate::grpc",
                "crate::server",
                "crate::config",
                "crate::mail",
                "crate::oidc",
            ],
        ),
        (
            "store",
            &[
                "tonic",
                "prost",
                "crate::app",
                "crate::grpc",
                "crate::server",
            ],
        ),
        (
            "app",
            &[
                "tonic",
                "prost",
                "mongodb",
                "bson",
                "crate::grpc",
                "crate::server",
            ],
        ),
        ("grpc", &["mongodb", "bson", "crate::store"]),
        (
            "mail",
            &[
                "tonic",
                "crate::config",
                "crate::app",
                "crate::store",
                "crate::grpc",
            ],
        ),
        (
            "config.rs",
            &["crate::app", "crate::store", "crate::grpc", "crate::server"],
        ),
    ];

    fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                rust_files(&entry.unwrap().path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_path_buf());
        }
    }

    #[test]
    fn each_layer_reaches_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut crossings = Vec::new();
        for (layer, forbidden) in RULES {
            let mut files = Vec::new();
            rust_files(&src.join(layer), &mut files);
            assert!(!files.is_empty(), "no files under src/{layer}");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or_default();
                    for word in *forbidden {
                        if code.contains(word) {
                            crossings.push(format!(
                                "{}:{}: {layer} must not use {word}: {}",
                                file.strip_prefix(&src).unwrap().display(),
                                n + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(crossings.is_empty(), "{}", crossings.join("\n"));
    }
}
