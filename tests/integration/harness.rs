//! Test harness: a real MongoDB-compatible server (`secantusd-rs`, started once per test
//! process on port 0, or any MongoDB named by `KEYWARD_TEST_MONGODB_URI`), a fresh database per
//! test, and keyward itself on 127.0.0.1:0 with real tonic clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use keyward::config::Config;
use keyward::grpc::pb::auth_service_client::AuthServiceClient;
use keyward::grpc::pb::{
    LoginRequest, LoginResponse, RegisterRequest, RegisterResponse, TokenPair,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

pub use crate::clients::*;
pub use crate::local_servers::connect_serving;
use crate::local_servers::start_secantus as start_secantus_at;
use crate::smtp_sink::SmtpSink;

/// A password every default policy accepts.
pub const PASSWORD: &str = "correct horse battery staple";

/// The MongoDB URI tests run against.
pub fn mongo_uri() -> String {
    static URI: OnceLock<String> = OnceLock::new();
    URI.get_or_init(|| match std::env::var("KEYWARD_TEST_MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => uri,
        _ => start_secantus(),
    })
    .clone()
}

/// Starts secantusd-rs for the whole test process. It is started from a thread that lives as
/// long as the process and asks the kernel to kill it when that thread's process dies, so no
/// server outlives the tests.
fn start_secantus() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let dir = std::env::temp_dir().join(format!("keyward-test-mongo-{}", std::process::id()));
        let (mut child, uri) = start_secantus_at(&dir, kill_with_parent);
        tx.send(uri).unwrap();
        // Keep this thread (the child's parent thread) alive.
        let _ = child.wait();
        std::thread::park();
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("secantusd-rs did not start")
}

/// The SMTP server (aiosmtpd) every test keyward delivers to unless a test brings its own; one
/// per test process. Tests tell their messages apart by recipient.
pub fn shared_sink() -> &'static SmtpSink {
    static SINK: OnceLock<SmtpSink> = OnceLock::new();
    SINK.get_or_init(|| {
        // Started from a thread that lives as long as the process (see `start_secantus`).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let dir =
                std::env::temp_dir().join(format!("keyward-test-smtp-{}", std::process::id()));
            tx.send(SmtpSink::start(&dir, kill_with_parent)).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("aiosmtpd did not start")
    })
}

/// Makes `cmd`'s process die with the thread that spawned it (Linux PR_SET_PDEATHSIG).
pub fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `keyward` binary, to run as a process of its own: an empty environment but `PATH`,
/// the settings a test gives it, and it dies with the test's thread that spawned it.
pub struct Keyward {
    cmd: Command,
    port: Option<u16>,
}

impl Keyward {
    /// `keyward <args>` with no settings at all.
    pub fn command<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        kill_with_parent(&mut cmd);
        Self { cmd, port: None }
    }

    /// `keyward <args>` on `config`'s database and signing key.
    pub fn on<I, S>(config: &Config, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut keyward = Self::command(args);
        keyward
            .env(
                "KEYWARD_MONGODB_URI",
                config.mongodb_uri.as_deref().unwrap(),
            )
            .env("KEYWARD_MONGODB_DATABASE", &config.mongodb_database)
            .env(
                "KEYWARD_SIGNING_KEY",
                config.signing_key.as_deref().unwrap(),
            );
        keyward
    }

    /// `keyward serve` as another replica on `config`'s database, key and SMTP sink, listening
    /// on a free loopback port; stdout dropped, stderr the test's.
    pub fn serve(config: &Config) -> Self {
        let mut keyward = Self::on(config, ["serve"]);
        keyward
            .listen_on_free_ports()
            .env("KEYWARD_SMTP_URL", config.smtp_url.as_deref().unwrap());
        keyward
            .cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        keyward
    }

    /// gRPC on a free loopback port (see [`KeywardProcess::addr`]), metrics on another.
    pub fn listen_on_free_ports(&mut self) -> &mut Self {
        let port = free_port();
        self.port = Some(port);
        self.env("KEYWARD_GRPC_ADDR", format!("127.0.0.1:{port}"))
            // Not the default 0.0.0.0:9090, which two replicas could not share.
            .env("KEYWARD_METRICS_ADDR", "127.0.0.1:0")
    }

    /// One more setting.
    pub fn env(&mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// The command itself, for what the builder does not cover (stdin, pipes).
    pub fn cmd(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Runs it to the end, collecting its output.
    pub fn output(&mut self) -> std::process::Output {
        self.cmd.output().expect("run keyward")
    }

    /// Starts it (a `serve`'s address is known at once; see [`KeywardProcess::channel`]).
    pub fn spawn(&mut self) -> KeywardProcess {
        let child = self.cmd.spawn().expect("start keyward");
        KeywardProcess {
            child,
            addr: format!("127.0.0.1:{}", self.port.unwrap_or(0)),
        }
    }
}

/// A running `keyward` process.
pub struct KeywardProcess {
    pub child: std::process::Child,
    /// Where a `serve` listens for gRPC.
    pub addr: String,
}

impl KeywardProcess {
    /// A channel to it once its health reports SERVING.
    pub async fn channel(&self) -> Channel {
        connect_serving(&self.addr).await
    }

    /// SIGTERM, then its exit (see [`terminate`]).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child).await
    }
}

/// Sends SIGTERM and waits (15 s at most) for the process to exit; returns how it exited.
pub async fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keyward did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds `n` tasks with `task(i)`, releases them together (each waits on one barrier before its
/// first step) and returns their results in order. Race tests then assert exactly one winner.
pub async fn race<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let run = task(i);
            tokio::spawn(async move {
                barrier.wait().await;
                run.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for handle in handles {
        results.push(handle.await.expect("a racer panicked"));
    }
    results
}

/// The real grpcurl with `args`: whether it succeeded, and its stdout then stderr.
pub fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl not found: run scripts/setup.sh first");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// [`grpcurl`] off the test's runtime threads.
pub async fn grpcurl_blocking(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        grpcurl(&args)
    })
    .await
    .unwrap()
}

/// grpcurl calling `keyward.v1.<method>` at `addr` with a bearer token (if not empty) and a JSON
/// body; panics unless it succeeds, returns the JSON answer.
pub async fn grpcurl_call(
    addr: &str,
    token: &str,
    method: &str,
    body: String,
) -> serde_json::Value {
    let method = format!("keyward.v1.{method}");
    let mut args = vec!["-plaintext".to_string()];
    if !token.is_empty() {
        args.extend(["-H".to_string(), format!("authorization: Bearer {token}")]);
    }
    args.extend(["-d".to_string(), body, addr.to_string(), method.clone()]);
    let (ok, out) = grpcurl_blocking(args).await;
    assert!(ok, "{method}: {out}");
    json(&out)
}

/// `text` as JSON, or a panic showing it.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A config for a test: fresh database, fresh signing key, loopback port 0 (gRPC and metrics).
pub fn test_config() -> Config {
    let (secret, _, _) = keyward::domain::tokens::generate_key();
    let env: BTreeMap<String, String> = [
        ("KEYWARD_MONGODB_URI", mongo_uri()),
        (
            "KEYWARD_MONGODB_DATABASE",
            format!("kw_test_{}", uuid::Uuid::new_v4().simple()),
        ),
        ("KEYWARD_SIGNING_KEY", secret),
        ("KEYWARD_GRPC_ADDR", "127.0.0.1:0".into()),
        ("KEYWARD_METRICS_ADDR", "127.0.0.1:0".into()),
        ("KEYWARD_HASH_WORKERS", "2".into()),
        ("KEYWARD_SMTP_URL", shared_sink().url()),
        ("KEYWARD_MAIL_RETRY_BASE_DELAY", "100ms".into()),
        ("KEYWARD_MAIL_RETRY_MAX_DELAY", "1s".into()),
        // Most tests sign in right after registering; the email-code tests turn this back on.
        ("KEYWARD_REQUIRE_VERIFIED_EMAIL", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Config::load(None, &env).expect("test config is valid")
}

/// A running keyward.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` answers (`None` when the config turned metrics off).
    pub metrics_addr: Option<SocketAddr>,
    pub config: Config,
    channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    /// keyward runs on its own runtime and thread, as it would in its own process, so a test's
    /// runtime ending never tears it down mid-call.
    server: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with_config(change: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config();
        change(&mut config);
        Self::start_with(config).await
    }

    pub async fn start_with(config: Config) -> Self {
        let listener = std::net::TcpListener::bind(config.grpc_addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics_listener = config.metrics_addr.map(|addr| {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        });
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let server_config = config.clone();
        let server = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let metrics_listener = metrics_listener
                    .map(tokio::net::TcpListener::from_std)
                    .transpose()?;
                keyward::run_with_metrics(server_config, listener, metrics_listener, async {
                    let _ = rx.await;
                })
                .await
            })
        });
        let channel = connect_serving(&addr.to_string()).await;

        Self {
            addr,
            metrics_addr,
            config,
            channel,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// A handle on the test's database, to look at what keyward stored.
    pub async fn db(&self) -> mongodb::Database {
        let client = mongodb::Client::with_uri_str(self.config.mongodb_uri.as_deref().unwrap())
            .await
            .unwrap();
        client.database(&self.config.mongodb_database)
    }

    /// Whether the database server drops a unique-index key when the indexed field changes, as
    /// MongoDB does. secantusd-rs 0.5.3-beta.196 keeps the old key, so an address or slug that was
    /// renamed away stays taken there.
    pub async fn frees_replaced_unique_keys(&self) -> bool {
        use mongodb::bson::{doc, Document};
        let probe = self.db().await.collection::<Document>("probe_unique_keys");
        let index = mongodb::IndexModel::builder()
            .keys(doc! { "k": 1 })
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build();
        probe.create_index(index).await.unwrap();
        probe
            .insert_one(doc! { "_id": 1, "k": "old" })
            .await
            .unwrap();
        probe
            .update_one(doc! { "_id": 1 }, doc! { "$set": { "k": "new" } })
            .await
            .unwrap();
        let freed = probe
            .insert_one(doc! { "_id": 2, "k": "old" })
            .await
            .is_ok();
        probe.drop().await.unwrap();
        freed
    }

    /// Registers `email` with [`PASSWORD`].
    pub async fn register(&self, email: &str) {
        self.try_register(email).await.expect("register");
    }

    /// Registers `email` with [`PASSWORD`], returning keyward's answer.
    pub async fn try_register(&self, email: &str) -> Result<RegisterResponse, tonic::Status> {
        let request = RegisterRequest {
            email: email.into(),
            password: PASSWORD.into(),
            ..Default::default()
        };
        self.auth().register(request).await.map(|r| r.into_inner())
    }

    /// Logs out the session of `token` (or all of its user's sessions); returns how many ended.
    pub async fn logout(&self, token: &str, all_sessions: bool) -> i32 {
        let request = bearer(keyward::grpc::pb::LogoutRequest { all_sessions }, token);
        self.auth()
            .logout(request)
            .await
            .expect("logout")
            .into_inner()
            .sessions_ended
    }

    /// Registers and logs in `email`.
    pub async fn signed_in(&self, email: &str) -> TokenPair {
        self.register(email).await;
        self.login(email, PASSWORD).await.expect("login")
    }

    /// Logs in an account without a second factor: its tokens.
    pub async fn login(&self, email: &str, password: &str) -> Result<TokenPair, tonic::Status> {
        let answer = self.login_response(email, password).await?;
        assert!(
            answer.mfa_challenge.is_none(),
            "login answered an mfa_challenge"
        );
        Ok(answer.tokens.expect("login answered no tokens"))
    }

    /// Logs in, keeping keyward's whole answer (`tokens` or `mfa_challenge`).
    pub async fn login_response(
        &self,
        email: &str,
        password: &str,
    ) -> Result<LoginResponse, tonic::Status> {
        self.auth()
            .login(LoginRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Authenticate `token`, keeping only the verdict.
    pub async fn authenticate(&self, token: &str) -> Result<(), tonic::Status> {
        self.auth()
            .authenticate(keyward::grpc::pb::AuthenticateRequest {
                access_token: token.into(),
            })
            .await
            .map(|_| ())
    }

    /// Graceful stop: returns once keyward has drained and exited.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let result = tokio::task::spawn_blocking(move || server.join())
                .await
                .unwrap();
            result
                .expect("keyward thread panicked")
                .expect("keyward exited with an error");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Ask keyward to stop; its thread finishes on its own once connections drain.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `authorization: Bearer <token>` on a request.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The stable `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Asserts a refusal with `code` and `why` (the `ErrorInfo` reason).
#[track_caller]
pub fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, why: &str) {
    let status = result.expect_err(why);
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, why),
        "{status:?}"
    );
}

/// The `BadRequest` field violations of a status, as (field, description).
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// A unique email for a test.
pub fn email(tag: &str) -> String {
    format!(
        "{tag}-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
