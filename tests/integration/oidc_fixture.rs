//! OpenID Connect providers for the federation tests: `tests/oidc/provider.mjs` (node, packages
//! installed by scripts/setup.sh), started once per test process like the SMTP sink, with two
//! issuers:
//!
//! - **real**: `oidc-provider`, a certified OpenID Provider, with its development login and
//!   consent forms, which [`sign_in_at_real`] fills in over HTTP as a browser would. The login
//!   name typed in is the account's `sub` and `email`; one starting with `unverified` has
//!   `email_verified: false`.
//! - **hostile**: a hand-written provider that sends what a certified one never does (a wrong
//!   nonce, an expired token, a token signed by another key, `alg: none`, ...): the test picks
//!   the [`Scenario`] in the authorization URL and [`callback_from_hostile`] brings back the code.
//!
//! Both trust one client, [`CLIENT_ID`], whose only redirect URI is [`REDIRECT_URI`]. Nothing
//! listens there: the helpers stop at the provider's redirect to it and read its query.

use std::sync::OnceLock;
use std::time::Duration;

use keyward::config::OidcProvider;
use keyward::grpc::pb::{FinishFederatedLoginRequest, FinishLinkIdentityRequest};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::Url;

use crate::harness::kill_with_parent;

/// The client both providers know.
pub const CLIENT_ID: &str = "keyward-test";
/// Its secret.
pub const CLIENT_SECRET: &str = "keyward-test-secret-0123456789abcdef";
/// Its one registered redirect URI.
pub const REDIRECT_URI: &str = "https://app.example.test/callback";

pub use crate::oidc_providers::Issuers;

/// The providers of this test process, started on first use.
pub fn issuers() -> &'static Issuers {
    static ISSUERS: OnceLock<Issuers> = OnceLock::new();
    ISSUERS.get_or_init(start)
}

/// Starts the providers from a thread that lives as long as the process (the child dies with
/// that thread, see `kill_with_parent`).
fn start() -> Issuers {
    let log = std::env::temp_dir().join(format!("keyward-test-oidc-{}.log", std::process::id()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = crate::oidc_providers::start_oidc_providers(
            CLIENT_ID,
            CLIENT_SECRET,
            REDIRECT_URI,
            &log,
            kill_with_parent,
        );
        match started {
            Ok((mut child, issuers)) => {
                let _ = tx.send(Ok(issuers));
                // Keep this thread (the child's parent) alive.
                let _ = child.wait();
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the OpenID Connect providers did not start")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// keyward's settings for a provider `id` at `issuer`, with the test client, trusted for
/// `email_verified`.
pub fn provider_at(id: &str, issuer: &str) -> OidcProvider {
    OidcProvider {
        id: id.into(),
        preset: None,
        display_name: None,
        issuer: Some(issuer.into()),
        client_id: CLIENT_ID.into(),
        client_secret: Some(CLIENT_SECRET.into()),
        client_secret_file: None,
        scopes: vec![],
        redirect_uris: vec![REDIRECT_URI.into()],
        trust_email_verified: Some(true),
    }
}

/// The certified provider, as `id`.
pub fn real_provider(id: &str) -> OidcProvider {
    provider_at(id, &issuers().real)
}

/// The hostile provider, as `id`.
pub fn hostile_provider(id: &str) -> OidcProvider {
    provider_at(id, &issuers().hostile)
}

/// An issuer nothing listens on (a port just freed).
pub fn closed_issuer() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// What a provider sent back to the redirect URI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callback {
    pub state: String,
    pub code: String,
    pub error: String,
    pub error_description: String,
    pub iss: String,
}

/// The flow secrets the tests' client keeps, by state, as an app keeps each sign-in's secret
/// beside it (in memory or a cookie) while the browser is away at the provider.
fn flow_secrets() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static SECRETS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        OnceLock::new();
    SECRETS.get_or_init(Default::default)
}

/// Keeps the flow secret a start returned for `state`.
pub fn remember_flow(state: &str, flow_secret: &str) {
    flow_secrets()
        .lock()
        .unwrap()
        .insert(state.to_string(), flow_secret.to_string());
}

/// The flow secret kept for `state` (empty if none was).
pub fn flow_secret_for(state: &str) -> String {
    flow_secrets()
        .lock()
        .unwrap()
        .get(state)
        .cloned()
        .unwrap_or_default()
}

impl Callback {
    /// Reads the query of the redirect to [`REDIRECT_URI`].
    pub fn parse(location: &str) -> Self {
        assert!(
            location.starts_with(REDIRECT_URI)
                && matches!(
                    location.as_bytes().get(REDIRECT_URI.len()),
                    Some(b'?') | None
                ),
            "not a redirect to the redirect URI: {location}"
        );
        let url = Url::parse(location).unwrap();
        let mut callback = Self::default();
        for (k, v) in url.query_pairs() {
            let v = v.into_owned();
            match k.as_ref() {
                "state" => callback.state = v,
                "code" => callback.code = v,
                "error" => callback.error = v,
                "error_description" => callback.error_description = v,
                "iss" => callback.iss = v,
                _ => {}
            }
        }
        callback
    }

    /// FinishFederatedLogin with everything the provider sent back.
    pub fn finish(&self) -> FinishFederatedLoginRequest {
        FinishFederatedLoginRequest {
            state: self.state.clone(),
            code: self.code.clone(),
            error: self.error.clone(),
            error_description: self.error_description.clone(),
            iss: self.iss.clone(),
            flow_secret: flow_secret_for(&self.state),
        }
    }

    /// FinishLinkIdentity with everything the provider sent back.
    pub fn finish_link(&self) -> FinishLinkIdentityRequest {
        FinishLinkIdentityRequest {
            state: self.state.clone(),
            code: self.code.clone(),
            error: self.error.clone(),
            error_description: self.error_description.clone(),
            iss: self.iss.clone(),
            flow_secret: flow_secret_for(&self.state),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A browser, as far as the providers need one

/// Follows redirects by hand (to stop at the redirect URI) and keeps cookies by path.
struct Browser {
    http: reqwest::Client,
    /// (path, name, value)
    cookies: Vec<(String, String, String)>,
}

/// What a provider page asks for.
enum Page {
    /// A redirect.
    Redirect(Url),
    /// A form: its action, its `prompt` field, and the page's abort link.
    Form {
        action: Url,
        prompt: String,
        abort: Option<Url>,
    },
}

impl Browser {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self, url: &Url) -> String {
        let path = url.path();
        self.cookies
            .iter()
            .filter(|(p, _, _)| {
                path == p
                    || (path.starts_with(p.as_str())
                        && (p.ends_with('/') || path.as_bytes()[p.len()] == b'/'))
            })
            .map(|(_, n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, url: &Url, response: &reqwest::Response) {
        for header in response.headers().get_all(SET_COOKIE) {
            let header = header.to_str().unwrap();
            let mut parts = header.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let mut path = url.path()[..=url.path().rfind('/').unwrap_or(0)].to_string();
            let mut gone = value.is_empty();
            for attribute in parts {
                let (k, v) = attribute.split_once('=').unwrap_or((attribute, ""));
                match k.to_ascii_lowercase().as_str() {
                    "path" => path = v.to_string(),
                    "expires" => gone |= v.contains("1970"),
                    "max-age" => gone |= v.starts_with('0') || v.starts_with('-'),
                    _ => {}
                }
            }
            self.cookies.retain(|(p, n, _)| !(p == &path && n == name));
            if !gone {
                self.cookies
                    .push((path, name.to_string(), value.to_string()));
            }
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder, url: &Url) -> Page {
        let cookie = self.cookie_header(url);
        let request = if cookie.is_empty() {
            request
        } else {
            request.header(COOKIE, cookie)
        };
        let response = request.send().await.expect("the provider answers");
        self.keep_cookies(url, &response);
        let status = response.status();
        if status.is_redirection() {
            let location = response.headers()[LOCATION].to_str().unwrap();
            return Page::Redirect(url.join(location).unwrap());
        }
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{url} answered {status}: {body}");
        let form = attribute_after(&body, "<form", "action")
            .unwrap_or_else(|| panic!("no form at {url}: {body}"));
        let prompt = body
            .find("name=\"prompt\"")
            .and_then(|i| attribute_after(&body[i..], "", "value"))
            .unwrap_or_default();
        let abort = body
            .split("href=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(unescape)
            .find(|h| h.ends_with("/abort"))
            .map(|h| url.join(&h).unwrap());
        Page::Form {
            action: url.join(&form).unwrap(),
            prompt,
            abort,
        }
    }

    async fn get(&mut self, url: &Url) -> Page {
        let request = self.http.get(url.clone());
        self.send(request, url).await
    }

    async fn post(&mut self, url: &Url, form: &[(&str, &str)]) -> Page {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = self
            .http
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request, url).await
    }
}

/// The value of `name="..."` in the first tag starting with `tag` (or anywhere when `tag` is
/// empty).
fn attribute_after(html: &str, tag: &str, name: &str) -> Option<String> {
    let start = html.find(tag)?;
    let rest = &html[start..];
    let end = rest.find('>').unwrap_or(rest.len());
    let tag_text = &rest[..end];
    let at = tag_text.find(&format!("{name}=\""))? + name.len() + 2;
    let value = tag_text[at..].split('"').next()?;
    Some(unescape(value))
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// application/x-www-form-urlencoded encoding of one name or value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What the person does at the real provider's consent page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AtConsent {
    Allow,
    Decline,
}

async fn visit_real(authorization_url: &str, login: &str, choice: AtConsent) -> Callback {
    let mut browser = Browser::new();
    let mut page = browser.get(&Url::parse(authorization_url).unwrap()).await;
    for _ in 0..20 {
        page = match page {
            Page::Redirect(to) if to.as_str().starts_with(REDIRECT_URI) => {
                return Callback::parse(to.as_str())
            }
            Page::Redirect(to) => browser.get(&to).await,
            Page::Form { action, prompt, .. } if prompt == "login" => {
                let form = [("prompt", "login"), ("login", login), ("password", "any")];
                browser.post(&action, &form).await
            }
            Page::Form { action, prompt, .. }
                if prompt == "consent" && choice == AtConsent::Allow =>
            {
                browser.post(&action, &[("prompt", "consent")]).await
            }
            Page::Form {
                prompt,
                abort: Some(abort),
                ..
            } if prompt == "consent" => browser.get(&abort).await,
            Page::Form { action, prompt, .. } => {
                panic!("unexpected form at {action}: prompt {prompt:?}")
            }
        };
    }
    panic!("the real provider never redirected to {REDIRECT_URI}");
}

/// Signs in at the real provider as `login` (its account id and email) from keyward's
/// `authorization_url`, consents, and returns what the provider sends to the redirect URI.
pub async fn sign_in_at_real(authorization_url: &str, login: &str) -> Callback {
    visit_real(authorization_url, login, AtConsent::Allow).await
}

/// Signs in at the real provider as `login` and then declines its consent page: the provider
/// sends `error=access_denied`.
pub async fn decline_at_real(authorization_url: &str, login: &str) -> Callback {
    visit_real(authorization_url, login, AtConsent::Decline).await
}

/// What the hostile provider's token endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A valid ID token.
    Good,
    /// An ID token whose nonce is not the flow's.
    WrongNonce,
    /// An ID token that expired half an hour ago.
    Expired,
    /// An ID token issued an hour from now.
    FutureIat,
    /// Signed by a key that is not in the JWKS (under the published kid).
    OtherKey,
    /// For another client.
    WrongAud,
    /// From another issuer.
    WrongIss,
    /// For the client and another, authorized party the other.
    AzpMismatch,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256 keyed with the published RSA public key (PEM).
    Hs256PublicKey,
    /// The token endpoint refuses the code (400 invalid_grant).
    InvalidGrant,
    /// The token endpoint answers after 5 s.
    Slow,
    /// Signed by a new key, published in the JWKS only now.
    RotatedKey,
    /// A valid ID token without email.
    NoEmail,
    /// The authorize endpoint sends `error=access_denied` instead of a code.
    AccessDenied,
    /// The authorize endpoint sends `error=server_error` instead of a code.
    ServerError,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::WrongNonce => "wrong_nonce",
            Self::Expired => "expired",
            Self::FutureIat => "future_iat",
            Self::OtherKey => "other_key",
            Self::WrongAud => "wrong_aud",
            Self::WrongIss => "wrong_iss",
            Self::AzpMismatch => "azp_mismatch",
            Self::AlgNone => "alg_none",
            Self::Hs256PublicKey => "hs256_public_key",
            Self::InvalidGrant => "invalid_grant",
            Self::Slow => "slow",
            Self::RotatedKey => "rotated_key",
            Self::NoEmail => "no_email",
            Self::AccessDenied => "access_denied",
            Self::ServerError => "server_error",
        }
    }
}

/// Takes keyward's `authorization_url` to the hostile provider with `scenario` and the identity
/// (`sub`, `email`, `email_verified`) it should assert, and returns its redirect's query.
pub async fn callback_from_hostile(
    authorization_url: &str,
    scenario: Scenario,
    sub: &str,
    email: &str,
    verified: bool,
) -> Callback {
    let verified = if verified { "true" } else { "false" };
    let extra = [
        ("scenario", scenario.name()),
        ("sub", sub),
        ("email", email),
        ("email_verified", verified),
    ];
    callback_from_hostile_with(authorization_url, &extra).await
}

/// Like [`callback_from_hostile`] with any extra query parameters (e.g. `iss_param=wrong`).
pub async fn callback_from_hostile_with(
    authorization_url: &str,
    extra: &[(&str, &str)],
) -> Callback {
    let mut url = Url::parse(authorization_url).unwrap();
    url.query_pairs_mut().extend_pairs(extra);
    let response = Browser::new().http.get(url.clone()).send().await.unwrap();
    let status = response.status();
    let Some(location) = response.headers().get(LOCATION) else {
        panic!(
            "{url} answered {status}: {}",
            response.text().await.unwrap()
        );
    };
    Callback::parse(location.to_str().unwrap())
}
