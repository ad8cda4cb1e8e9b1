//! A real SMTP server for tests and the bench: `aiosmtpd` (installed by scripts/setup.sh) on a
//! loopback port, storing every message it accepts in a Maildir that tests read back.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One received message, decoded.
#[derive(Debug, Clone)]
pub struct Received {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// When the sink stored it.
    pub received: std::time::SystemTime,
}

impl Received {
    /// The 6-digit code in the plain-text body.
    pub fn code(&self) -> Option<String> {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
    }
}

pub struct SmtpSink {
    pub port: u16,
    pub maildir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SmtpSink {
    /// Starts a sink on a free port with an empty Maildir under `dir`.
    pub fn start(dir: &Path, prepare: impl Fn(&mut Command)) -> Self {
        let maildir = dir.join("maildir");
        let _ = std::fs::remove_dir_all(&maildir);
        std::fs::create_dir_all(dir).unwrap();
        let mut sink = Self {
            port: free_port(),
            maildir,
            child: None,
        };
        sink.resume(prepare);
        sink
    }

    /// `smtp://` URL of the sink.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops the server (the port refuses connections) and keeps what it received.
    pub fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port and waits until it accepts connections.
    pub fn resume(&mut self, prepare: impl Fn(&mut Command)) {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&self.maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        prepare(&mut cmd);
        self.child = Some(cmd.spawn().expect(
            "cannot start aiosmtpd (python3 -m aiosmtpd); run scripts/setup.sh to install it",
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Every message received so far.
    pub fn all(&self) -> Vec<Received> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(raw) = std::fs::read(entry.path()) else {
                    continue;
                };
                let received = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                if let Some(m) = parse(&raw, received) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// Messages received so far for `to`.
    pub fn to(&self, to: &str) -> Vec<Received> {
        self.all().into_iter().filter(|m| m.to == to).collect()
    }

    /// Waits (up to `timeout`) until `to` has at least `count` messages; returns them.
    pub async fn wait_for(&self, to: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.to(to);
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{to} received {} message(s) in {timeout:?}, expected {count}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for message number `n` (1-based) to `to` and returns the code in it.
    pub async fn code(&self, to: &str, n: usize) -> String {
        let mut got = self.wait_for(to, n, Duration::from_secs(30)).await;
        got.sort_by_key(|m| m.received);
        got[n - 1]
            .code()
            .unwrap_or_else(|| panic!("no code in {:?}", got[n - 1]))
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.pause();
    }
}

fn parse(raw: &[u8], received: std::time::SystemTime) -> Option<Received> {
    let mail = mailparse::parse_mail(raw).ok()?;
    let header = |name: &str| {
        use mailparse::MailHeaderMap;
        mail.headers.get_first_value(name).unwrap_or_default()
    };
    let to = header("To");
    let to = to
        .rsplit_once('<')
        .map_or(to.as_str(), |(_, rest)| rest.trim_end_matches('>'))
        .trim()
        .to_string();
    let mut text = String::new();
    let mut html = String::new();
    for part in mail.parts() {
        match part.ctype.mimetype.as_str() {
            "text/plain" => text = part.get_body().ok()?,
            "text/html" => html = part.get_body().ok()?,
            _ => {}
        }
    }
    Some(Received {
        to,
        subject: header("Subject"),
        text,
        html,
        received,
    })
}
