//! deploy/grafana's dashboard and deploy/prometheus's alerting rules, checked with the real
//! Prometheus tools (Debian's `prometheus` package, installed by scripts/setup.sh):
//! - `promtool check rules` accepts alerts.yaml, and `promtool test rules` passes its unit tests
//!   (alerts_test.yaml: some alerts fire, others stay quiet);
//! - every metric either file names is one keyward exports (src/metrics.rs);
//! - a real Prometheus scrapes a test keyward every second while the test drives a few RPCs,
//!   loads alerts.yaml (every rule evaluates without error), and answers every query of every
//!   dashboard panel and every alert through its HTTP API; the key panels (RPC rate, logins by
//!   outcome, token checks) show the calls the test made.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

const DASHBOARD: &str = "deploy/grafana/keyward.json";
const RULES_DIR: &str = "deploy/prometheus";
const RULES: &str = "deploy/prometheus/alerts.yaml";

/// Runs `promtool args` in deploy/prometheus (where alerts_test.yaml names alerts.yaml) and
/// returns its combined output, failing the test unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_path(RULES_DIR))
        .output()
        .expect("promtool runs (scripts/setup.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let out = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every rule is an alert, and every alert says what it is, how bad, and what to do.
    let rules = std::fs::read_to_string(repo_path(RULES)).unwrap();
    let alerts = rules.matches("- alert: ").count();
    assert!(alerts >= 6, "{alerts} alerts");
    assert!(out.contains(&format!("{alerts} rules found")), "{out}");
    for key in [
        "for: ",
        "severity: ",
        "summary: ",
        "description: ",
        "runbook: ",
    ] {
        assert_eq!(rules.matches(key).count(), alerts, "every alert has {key}");
    }
}

#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    let out = promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The dashboard, parsed.
fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path(DASHBOARD)).unwrap())
        .expect("the dashboard is JSON")
}

/// Every panel of the dashboard (rows' nested panels included), rows excluded.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            if panel["type"] == "row" {
                walk(&panel["panels"], out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, expr) of every query of every panel.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap().to_string();
            panel["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect()
}

/// A panel's expr as Grafana would send it, with its variables filled in: `$__rate_interval`
/// as 1m, the job and instance selectors matching everything (their "All" value).
fn to_promql(expr: &str) -> String {
    let mut q = expr.to_string();
    for (var, value) in [
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__interval}", "15s"),
        ("$__interval", "15s"),
        ("${__range}", "5m"),
        ("$__range", "5m"),
        ("${job}", ".*"),
        ("$job", ".*"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
    ] {
        q = q.replace(var, value);
    }
    assert!(!q.contains('$'), "a variable left unreplaced in {expr}");
    q
}

/// The metric names `text` mentions (histograms' `_bucket`/`_sum`/`_count` series by their
/// histogram's name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("keyward_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let preceded_by_word = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded_by_word {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_is_plain_grafana_json_on_keywards_metrics() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_i64().unwrap();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert_eq!(d["uid"], "keyward");
    let vars = d["templating"]["list"].as_array().unwrap();
    let datasource = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    // No panel or query names a fixed data source, and only Grafana's own panel types are used.
    let mut ids = BTreeSet::new();
    let builtin = [
        "timeseries",
        "stat",
        "table",
        "gauge",
        "bargauge",
        "text",
        "row",
    ];
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "duplicate id");
        let kind = panel["type"].as_str().unwrap();
        assert!(builtin.contains(&kind), "{title}: panel type {kind}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    // What the dashboard is for: each of these shows somewhere.
    let titles: Vec<String> = panels(&d)
        .iter()
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for wanted in [
        "rpc rate",
        "error ratio",
        "p50",
        "p99",
        "authenticate",
        "ext_authz",
        "logins by outcome",
        "lockouts",
        "one-time codes",
        "outbox depth",
        "oldest age",
        "hash pool queue",
        "utilisation",
        "refusals",
        "cache hit ratio",
        "mongodb command latency",
        "mongodb command failures",
        "build info",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted}"
        );
    }
}

#[test]
fn the_dashboard_and_alerts_name_only_metrics_keyward_exports() {
    // The names src/metrics.rs declares: `const X: &str = "keyward_...";`.
    let source = std::fs::read_to_string(repo_path("src/metrics.rs")).unwrap();
    let declarations: String = source
        .lines()
        .filter(|l| l.starts_with("const ") && l.contains(": &str = \"keyward_"))
        .collect::<Vec<_>>()
        .join("\n");
    let exported = metric_names(&declarations);
    assert!(exported.len() >= 19, "{exported:?}");
    let d = dashboard();
    let mut used: BTreeSet<String> = dashboard_queries(&d)
        .iter()
        .flat_map(|(_, q)| metric_names(q))
        .collect();
    let dashboard_count = used.len();
    used.extend(metric_names(
        &std::fs::read_to_string(repo_path(RULES)).unwrap(),
    ));
    for name in &used {
        assert!(exported.contains(name), "{name} is not a keyward metric");
    }
    // The dashboard covers every metric keyward exports.
    assert_eq!(
        dashboard_count,
        exported.len(),
        "metrics without a panel: {:?}",
        exported
            .difference(
                &dashboard_queries(&d)
                    .iter()
                    .flat_map(|(_, q)| metric_names(q))
                    .collect()
            )
            .collect::<Vec<_>>()
    );
}

/// A real Prometheus on a free loopback port, with its own storage; killed when dropped (or
/// with the thread that started it).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second as job `keyward`, with
    /// alerts.yaml as its rules (evaluated every second), and waits until it is ready.
    async fn start(target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "keyward-test-prometheus-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: keyward\n    static_configs:\n      - targets: ['{target}']\n",
            rules = repo_path(RULES).display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .expect("prometheus runs (scripts/setup.sh installs Debian's prometheus package)");
        let mut prometheus = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            let ready = reqwest::get(format!("http://{addr}/-/ready")).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `/api/v1/{path}` with `params`: the HTTP status and the JSON answer.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("http://{}/api/v1/{path}", self.addr))
            .query(params)
            .send()
            .await
            .expect("prometheus answers");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}) from /api/v1/{path}: {body}"));
        (status, json)
    }

    /// Evaluates `query` now: the result vector, or Prometheus's error.
    async fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let (status, json) = self.api("query", &[("query", query)]).await;
        if status == 200 && json["status"] == "success" {
            Ok(json["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default())
        } else {
            Err(format!("HTTP {status}: {json}"))
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The label `name` of every series of `result`.
fn label_values(result: &[Value], name: &str) -> BTreeSet<String> {
    result
        .iter()
        .filter_map(|s| s["metric"][name].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_and_alert_query() {
    let app = TestApp::start().await;
    let prometheus = Prometheus::start(app.metrics_addr.expect("metrics are on")).await;

    // What an hour of traffic looks like, in miniature: a sign-up, a sign-in, a wrong password,
    // token checks through Authenticate and through Envoy's ext_authz.
    let user = email("observability");
    app.register(&user).await;
    let tokens = app.login(&user, PASSWORD).await.expect("login");
    let wrong = app.login(&user, "not the password at all").await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::Unauthenticated);
    app.authenticate(&tokens.access_token)
        .await
        .expect("authenticate");
    assert!(app.authenticate("v4.public.not-a-token").await.is_err());
    let bearer = format!("Bearer {}", tokens.access_token);
    let allowed = crate::ext_authz::check(
        &app,
        crate::ext_authz::http_request(&[("authorization", &bearer)], &[]),
    )
    .await;
    assert_eq!(allowed.status.unwrap().code, 0, "ext_authz allows");

    let d = dashboard();
    let queries = dashboard_queries(&d);
    let panel_query = |title: &str| -> String {
        let (_, expr) = queries
            .iter()
            .find(|(t, _)| t == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        to_promql(expr)
    };

    // Wait until Prometheus has scraped those calls twice (a rate needs two samples): the key
    // panels show them.
    let key_panels = [
        ("RPC rate by method", "method", "Login"),
        ("Logins by outcome", "outcome", "invalid_credentials"),
        ("Logins by outcome", "outcome", "success"),
        ("Authenticate by status code", "code", "OK"),
        ("Authenticate by status code", "code", "UNAUTHENTICATED"),
        ("ext_authz decisions", "decision", "allow"),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (title, label, value) in key_panels {
        let query = panel_query(title);
        loop {
            let result = prometheus.query(&query).await.expect(&query);
            if label_values(&result, label).contains(value) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{title}: no {label}={value} after 60 s ({query} -> {result:?})\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let up = prometheus.query("up{job=\"keyward\"}").await.unwrap();
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "the scrape succeeds");

    // Every query of every panel is valid PromQL that Prometheus evaluates.
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let query = to_promql(expr);
        let result = prometheus
            .query(&query)
            .await
            .unwrap_or_else(|e| panic!("panel {title:?}: {query}\n{e}"));
        if result.is_empty() {
            empty.push(title.as_str());
        }
    }
    eprintln!(
        "observability: {} dashboard queries accepted; {} empty on this little traffic: {:?}",
        queries.len(),
        empty.len(),
        empty
    );
    // The variables' queries (label_values(...)) have series to list.
    let (status, jobs) = prometheus
        .api("label/job/values", &[("match[]", "keyward_build_info")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(jobs["data"], serde_json::json!(["keyward"]));
    let build = prometheus.query(&panel_query("Build info")).await.unwrap();
    assert_eq!(label_values(&build, "version").len(), 1, "{build:?}");

    // Prometheus loaded alerts.yaml and evaluates every rule without error; every alert's
    // expression also answers as a query.
    let rules_in_file = std::fs::read_to_string(repo_path(RULES))
        .unwrap()
        .matches("- alert: ")
        .count();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let (status, json) = prometheus.api("rules", &[]).await;
        assert_eq!(status, 200, "{json}");
        let rules: Vec<Value> = json["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        assert_eq!(rules.len(), rules_in_file, "{json}");
        if rules.iter().all(|r| r["health"] == "ok") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all healthy after 30 s: {json}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut firing = Vec::new();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        let query = rule["query"].as_str().unwrap();
        prometheus
            .query(query)
            .await
            .unwrap_or_else(|e| panic!("alert {name}: {query}\n{e}"));
        if rule["state"] != "inactive" {
            firing.push(name);
        }
    }
    // A register, two logins and three checks are no reason to page anyone.
    assert!(firing.is_empty(), "alerts pending or firing: {firing:?}");

    drop(prometheus);
    app.stop().await;
}
