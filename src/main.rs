//! The `keyward` command: parse the CLI, load config, start telemetry, call the library.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keyward::app::accounts::NewAccount;
use keyward::app::Caller;
use keyward::config::{Config, LogFormat, ENV_PREFIX};
use keyward::domain::roles::Role;

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "A small, fast, gRPC-native identity service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML config file; KEYWARD_* environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Development mode (same as KEYWARD_DEV=1): generated signing key kept in data_dir.
    #[arg(long)]
    dev: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Log format (overrides KEYWARD_LOG_FORMAT).
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Create the collections' indexes and exit (the server also does this at start-up).
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The permission catalogue.
    Permissions {
        #[command(subcommand)]
        command: PermissionsCommand,
    },
    /// Operator tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum PermissionsCommand {
    /// Make the catalogue say what FILE says for the namespaces FILE names: its permissions are
    /// created or updated, the others of those namespaces deleted; other namespaces are left
    /// alone. Prints what changed. Idempotent.
    Apply {
        #[command(flatten)]
        config: ConfigArgs,
        /// A TOML file of `[[permission]]` tables (name, description, scope, least_role,
        /// requires_mfa).
        file: PathBuf,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new Ed25519 signing key (PASERK k4.secret), its public key and key id.
    Generate,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a verified account, e.g. the first super_admin. Reads the password from stdin.
    CreateUser {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "user")]
        role: Role,
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// Incident: end every session of an account (all replicas within session_cache_ttl).
    RevokeSessions {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        email: String,
    },
    /// Incident: disable an account (any role) and end its sessions.
    DisableUser {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        email: String,
    },
    /// Incident: lift the password lockout of an email and the second-factor lockout of its
    /// account.
    Unlock {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        email: String,
    },
    /// Import accounts with their existing password hashes (bcrypt or argon2) from a JSON Lines
    /// file (`-` for stdin): {"email", "password_hash", "display_name"?, "role"?,
    /// "email_verified"?} per line. Existing emails are left alone; each hash is re-hashed to
    /// argon2id on its owner's first login.
    Import {
        #[command(flatten)]
        config: ConfigArgs,
        /// The JSON Lines file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    if args.dev {
        env.entry("KEYWARD_DEV".into())
            .or_insert_with(|| "true".into());
    }
    Config::load(args.config.as_deref(), &env)
        .map_err(|e| anyhow::anyhow!("configuration error: {e}"))
}

/// How long a command waits for the database driver's pending work before closing it.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_format } => {
            let mut config = load_config(&config)?;
            if let Some(f) = log_format {
                config.log_format = match f {
                    LogFormatArg::Text => LogFormat::Text,
                    LogFormatArg::Json => LogFormat::Json,
                };
            }
            let _telemetry = keyward::telemetry::init(
                config.log_format,
                &config.log_level,
                config.otlp_endpoint.as_deref(),
            )?;
            if config.dev {
                tracing::warn!(
                    data_dir = %config.data_dir.display(),
                    "DEV MODE: a missing signing key is generated and kept in data_dir; never run dev mode in production"
                );
            }
            let listener = tokio::net::TcpListener::bind(config.grpc_addr)
                .await
                .with_context(|| format!("binding {}", config.grpc_addr))?;
            keyward::run(config, listener, shutdown_signal()).await
        }
        Command::Migrate { config } => {
            let config = load_config(&config)?;
            let app = keyward::build_app(config).await?;
            let ready = app.store.ready().await;
            app.store.shutdown(CLOSE_GRACE).await;
            ready?;
            println!("indexes are in place");
            Ok(())
        }
        Command::Permissions {
            command:
                PermissionsCommand::Apply {
                    config,
                    file,
                    dry_run,
                },
        } => {
            let config = load_config(&config)?;
            let catalogue = keyward::app::permissions::load_permission_file(&file)?;
            let app = keyward::build_app(config).await?;
            let caller = Caller {
                client_address: "cli".into(),
                rate_limit_key: String::new(),
                user_agent: "keyward permissions apply".into(),
            };
            let applied = match app.store.ready().await {
                Ok(()) => app
                    .apply_permissions(&catalogue, dry_run, &caller)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}")),
                Err(e) => Err(e),
            };
            app.store.shutdown(CLOSE_GRACE).await;
            let report = applied?;
            let verb = if dry_run { "would be " } else { "" };
            for (what, names) in [
                ("created", &report.created),
                ("updated", &report.updated),
                ("deleted", &report.deleted),
            ] {
                for name in names {
                    println!("{verb}{what}: {name}");
                }
            }
            println!(
                "{} created, {} updated, {} deleted, {} unchanged{}",
                report.created.len(),
                report.updated.len(),
                report.deleted.len(),
                report.unchanged.len(),
                if dry_run {
                    " (dry run: nothing written)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Generate,
        } => {
            let (secret, public, key_id) = keyward::domain::tokens::generate_key();
            println!("KEYWARD_SIGNING_KEY={secret}");
            println!("# public key (k4.public): {public}");
            println!("# key id (k4.pid):        {key_id}");
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::CreateUser {
                    config,
                    email,
                    role,
                    display_name,
                },
        } => {
            let config = load_config(&config)?;
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password from stdin")?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            let app = keyward::build_app(config).await?;
            app.store.ready().await?;
            let account = NewAccount {
                email,
                password,
                display_name,
                role,
                email_verified: true,
            };
            let caller = Caller {
                client_address: "cli".into(),
                rate_limit_key: String::new(),
                user_agent: "keyward admin create-user".into(),
            };
            let registered = app.register(account, &caller).await;
            app.store.shutdown(CLOSE_GRACE).await;
            match registered {
                Ok(user) => {
                    println!("created {} user {} ({})", user.role, user.email, user.id);
                    Ok(())
                }
                Err(keyward::error::Error::InvalidArgument(v)) => {
                    let lines: Vec<String> = v
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect();
                    anyhow::bail!("{}", lines.join("\n"))
                }
                Err(e) => Err(anyhow::anyhow!("{e}")),
            }
        }
        Command::Admin {
            command:
                command @ (AdminCommand::RevokeSessions { .. }
                | AdminCommand::DisableUser { .. }
                | AdminCommand::Unlock { .. }),
        } => incident(command).await,
        Command::Admin {
            command: AdminCommand::Import { config, file },
        } => {
            let config = load_config(&config)?;
            let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("opening {}", file.display()))?,
                ))
            };
            let app = keyward::build_app(config).await?;
            app.store.ready().await?;
            let caller = Caller {
                client_address: "cli".into(),
                rate_limit_key: String::new(),
                user_agent: "keyward admin import".into(),
            };
            let report = app.import_users(input, &caller).await;
            app.store.shutdown(CLOSE_GRACE).await;
            let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
            for (line, why) in &report.refused {
                eprintln!("line {line}: {why}");
            }
            println!(
                "imported {} accounts; {} already existed; {} lines refused",
                report.created,
                report.existing,
                report.refused.len()
            );
            anyhow::ensure!(report.refused.is_empty(), "some lines were refused");
            Ok(())
        }
    }
}

/// `keyward admin revoke-sessions | disable-user | unlock`: one audited operator action.
async fn incident(command: AdminCommand) -> anyhow::Result<()> {
    let (config, email, what) = match &command {
        AdminCommand::RevokeSessions { config, email } => (config, email, "revoke-sessions"),
        AdminCommand::DisableUser { config, email } => (config, email, "disable-user"),
        AdminCommand::Unlock { config, email } => (config, email, "unlock"),
        _ => unreachable!("only incident commands come here"),
    };
    let config = load_config(config)?;
    let app = keyward::build_app(config).await?;
    let caller = Caller {
        client_address: "cli".into(),
        rate_limit_key: String::new(),
        user_agent: format!("keyward admin {what}"),
    };
    let done = match app.store.ready().await {
        Err(e) => Err(e),
        Ok(()) => match &command {
            AdminCommand::RevokeSessions { .. } => app
                .operator_revoke_sessions(email, &caller)
                .await
                .map(|n| format!("{n} session(s) of {email} ended")),
            AdminCommand::DisableUser { .. } => app
                .operator_disable_user(email, &caller)
                .await
                .map(|n| format!("{email} disabled; {n} session(s) ended")),
            _ => app
                .operator_unlock(email, &caller)
                .await
                .map(|()| format!("lockouts of {email} lifted")),
        }
        .map_err(|e| anyhow::anyhow!("{e}")),
    };
    app.store.shutdown(CLOSE_GRACE).await;
    println!("{}", done?);
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
