//! Local servers shared by the integration tests and the load benchmark (included by path in
//! both): secantusd-rs on a free port, and a gRPC channel to a keyward that is SERVING.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Starts secantusd-rs on port 0 with its data in `dir` and returns it with its URI. `prepare`
/// may adjust the command first (e.g. tie the server's life to the caller's). Its output is
/// drained on a thread of its own.
pub fn start_secantus(dir: &Path, prepare: impl FnOnce(&mut Command)) -> (Child, String) {
    let _ = std::fs::remove_dir_all(dir);
    spawn_secantus(dir, 0, prepare)
}

/// Starts secantusd-rs on `port` (0: a free one) over the data already in `dir` (a restart after
/// a crash reopens it intact) and returns it with its URI.
pub fn spawn_secantus(
    dir: &Path,
    port: u16,
    prepare: impl FnOnce(&mut Command),
) -> (Child, String) {
    let mut cmd = Command::new("secantusd-rs");
    cmd.arg("--port")
        .arg(port.to_string())
        .args([
            "--log-level",
            "WARNING",
            "--log-file-max",
            "16MB",
            "--cache-size",
            "512M",
        ])
        .arg("--storage-path")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    prepare(&mut cmd);
    let mut child = cmd
        .spawn()
        .expect("secantusd-rs not found: run scripts/setup.sh first");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("secantusd-rs exited").unwrap();
        if let Some(addr) = line.strip_prefix("secantusd-rs listening on ") {
            break addr.trim().rsplit(':').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (
        child,
        format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
    )
}

/// Connects to keyward at `addr` (`host:port`), retrying while it starts, and returns once its
/// health says SERVING. Panics after 30 s.
pub async fn connect_serving(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    let pause = || tokio::time::sleep(Duration::from_millis(50));
    let channel = loop {
        match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => break channel,
            Err(e) => assert!(
                Instant::now() < deadline,
                "keyward at {addr} unreachable: {e}"
            ),
        }
        pause().await;
    };
    let mut health = HealthClient::new(channel.clone());
    loop {
        let status = health.check(HealthCheckRequest::default()).await;
        if status.is_ok_and(|s| s.into_inner().status == 1) {
            return channel;
        }
        assert!(
            Instant::now() < deadline,
            "keyward at {addr} did not become SERVING"
        );
        pause().await;
    }
}
