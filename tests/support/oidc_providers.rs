//! The test OpenID Connect providers (`tests/oidc/provider.mjs`, node, packages installed by
//! scripts/setup.sh), shared by the integration tests and the load benchmark (included by path
//! in both): a certified one (`oidc-provider`) and a hostile hand-written one, each on a free
//! loopback port.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The issuers of a started `provider.mjs`.
#[derive(Debug, Clone)]
pub struct Issuers {
    /// The certified provider's issuer.
    pub real: String,
    /// The hostile provider's issuer.
    pub hostile: String,
}

/// Starts `node provider.mjs` for a client (`client_id`, `client_secret`, `redirect_uri`), its
/// stderr to `log`, and returns it with its issuers once it listens. `prepare` may adjust the
/// command first (e.g. tie the provider's life to the caller's). Its stdout is drained on a
/// thread of its own.
pub fn start_oidc_providers(
    client_id: &str,
    client_secret: &str,
    redirect_uri: &str,
    log: &Path,
    prepare: impl FnOnce(&mut Command),
) -> Result<(Child, Issuers), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if !dir.join("node_modules/oidc-provider").is_dir() {
        return Err(
            "tests/oidc/node_modules is missing: run scripts/setup.sh (npm ci in tests/oidc)"
                .into(),
        );
    }
    let mut cmd = Command::new("node");
    cmd.arg("provider.mjs")
        .current_dir(&dir)
        .env("OIDC_CLIENT_ID", client_id)
        .env("OIDC_CLIENT_SECRET", client_secret)
        .env("OIDC_REDIRECT_URI", redirect_uri)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).map_err(|e| e.to_string())?);
    prepare(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start node ({e}); run scripts/setup.sh to install it"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let started: serde_json::Value = serde_json::from_str(&first).map_err(|_| {
        format!(
            "provider.mjs did not print its issuers ({first:?}); its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })?;
    let issuer = |k: &str| started[k].as_str().map(str::to_string);
    match (issuer("real"), issuer("hostile")) {
        (Some(real), Some(hostile)) => Ok((child, Issuers { real, hostile })),
        _ => Err(format!("provider.mjs printed {first:?}")),
    }
}
