//! The OpenID Connect relying party: keyward's side of a sign-in at a configured provider.
//!
//! It speaks to providers over HTTPS (`openidconnect` over `reqwest` with rustls, redirects never
//! followed, every request bounded by `oidc_http_timeout`): discovery and keys (cached for an
//! hour, keys fetched again when a token names an unknown `kid`), the authorization URL
//! (authorization-code flow, PKCE S256, state, nonce) and the code exchange, after which the ID
//! token is checked: signature from the provider's keys with an asymmetric algorithm only (no
//! `none`, no HMAC, so a public key can never serve as a shared secret), `iss`, `aud` (no other
//! audience), `azp`, `exp`, `iat` and the nonce. What the application does with the verified
//! identity is `app::federation`'s business.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreErrorResponseType, CoreIdToken, CoreIdTokenVerifier,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, JsonWebKeySet, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse,
};

use crate::config::{Config, ConfigError, OidcProvider};

/// How long discovery and keys are trusted before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Least time between two key fetches forced by unknown `kid`s (a flood of made-up key ids must
/// not make keyward hammer the provider).
const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock skew allowed for an ID token's `iat`.
const IAT_SKEW_SECS: i64 = 120;
/// Oldest `iat` accepted: a flow lives 10 minutes.
const IAT_MAX_AGE_SECS: i64 = 15 * 60;

/// Signature algorithms an ID token may use: asymmetric ones only.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// What went wrong talking to a provider, in the words clients get (see `error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider did not answer, or not in time, or not with a document we can read.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The token endpoint refused the code (`invalid_grant`).
    #[error("the provider refused the code")]
    CodeInvalid,
    /// The token endpoint answered another OAuth error.
    #[error("provider error {0}")]
    Provider(String),
    /// The ID token failed a check.
    #[error("ID token invalid: {0}")]
    TokenInvalid(String),
}

/// Who the provider says signed in, after every check passed.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    pub subject: String,
    pub email: Option<String>,
    /// The provider's `email_verified` (false when absent).
    pub email_verified: bool,
    pub name: Option<String>,
    /// Google's `hd`: the Workspace domain of the account, if it is one.
    pub hosted_domain: Option<String>,
}

/// A provider's settings after presets and secret files are applied.
pub struct Provider {
    pub id: String,
    pub display_name: String,
    pub issuer: String,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    scopes: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub trust_email_verified: bool,
    /// The google preset: Google vouches only for its own and Workspace addresses.
    pub google: bool,
    cache: std::sync::Mutex<Cache>,
}

/// What is known of a provider's discovery document and keys. The lock guarding it is never held
/// across a request to the provider: one slow provider must not queue every call behind it.
#[derive(Default)]
struct Cache {
    metadata: Option<Arc<CoreProviderMetadata>>,
    fetched: Option<Instant>,
    /// A fetch is under way; others use the copy they have (if any) meanwhile.
    fetching: bool,
    /// The last failed fetch: no new attempt for [`RETRY_AFTER_FAILURE`].
    failed: Option<Instant>,
    keys_refreshed: Option<Instant>,
}

/// Least time between two discovery attempts after one failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Every configured provider, and the HTTP client they are reached with.
pub struct Providers {
    http: openidconnect::reqwest::Client,
    by_id: BTreeMap<String, Provider>,
}

impl Providers {
    /// The providers of `config` (checked by `Config::validate`); reads client secret files.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let http = openidconnect::reqwest::Client::builder()
            // A provider's endpoints answer directly; following redirects would let a
            // compromised or misconfigured one point keyward anywhere.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(config.oidc_http_timeout)
            .connect_timeout(config.oidc_http_timeout)
            .user_agent(concat!("keyward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError(format!("cannot build the OpenID Connect client: {e}")))?;
        let mut by_id = BTreeMap::new();
        for p in &config.oidc_providers {
            let provider = Provider::from_config(p)?;
            by_id.insert(provider.id.clone(), provider);
        }
        Ok(Self { http, by_id })
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.by_id.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &Provider> {
        self.by_id.values()
    }

    pub fn http(&self) -> &openidconnect::reqwest::Client {
        &self.http
    }
}

impl Provider {
    fn from_config(p: &OidcProvider) -> Result<Self, ConfigError> {
        let resolved = p.resolved();
        let client_secret = match (&p.client_secret, &p.client_secret_file) {
            (Some(secret), _) => Some(secret.trim().to_string()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        ConfigError(format!(
                            "oidc provider `{}`: cannot read client_secret_file {}: {e}",
                            p.id,
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(Self {
            id: p.id.clone(),
            display_name: resolved.display_name,
            issuer: resolved.issuer,
            client_id: ClientId::new(p.client_id.clone()),
            client_secret: client_secret.map(ClientSecret::new),
            scopes: resolved.scopes,
            redirect_uris: p.redirect_uris.clone(),
            trust_email_verified: resolved.trust_email_verified,
            google: p.preset.as_deref() == Some("google"),
            cache: std::sync::Mutex::new(Cache::default()),
        })
    }

    /// The provider's discovery document and keys, fetched when missing or older than an hour.
    /// While a fetch is under way, or for a few seconds after one failed, callers get the copy
    /// there is (however old) or, with none, PROVIDER_UNAVAILABLE at once.
    async fn metadata(
        &self,
        http: &openidconnect::reqwest::Client,
    ) -> Result<Arc<CoreProviderMetadata>, OidcError> {
        {
            let mut cache = self.cache.lock().expect("cache lock");
            let fresh = cache.fetched.is_some_and(|t| t.elapsed() < METADATA_TTL);
            let backing_off = cache
                .failed
                .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE);
            match cache.metadata.clone() {
                Some(m) if fresh || cache.fetching || backing_off => return Ok(m),
                None if backing_off => {
                    return Err(OidcError::Unavailable(
                        "discovery failed moments ago".into(),
                    ))
                }
                _ => cache.fetching = true,
            }
        }
        let fetched = self.discover(http).await;
        let mut cache = self.cache.lock().expect("cache lock");
        cache.fetching = false;
        match fetched {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                cache.metadata = Some(metadata.clone());
                cache.fetched = Some(Instant::now());
                cache.failed = None;
                Ok(metadata)
            }
            Err(e) => {
                cache.failed = Some(Instant::now());
                match cache.metadata.clone() {
                    Some(stale) => {
                        tracing::warn!(provider = %self.id, error = %e, "provider discovery failed; using the cached document");
                        Ok(stale)
                    }
                    None => Err(e),
                }
            }
        }
    }

    async fn discover(
        &self,
        http: &openidconnect::reqwest::Client,
    ) -> Result<CoreProviderMetadata, OidcError> {
        let issuer = IssuerUrl::new(self.issuer.clone())
            .map_err(|e| OidcError::Unavailable(format!("issuer: {e}")))?;
        CoreProviderMetadata::discover_async(issuer, http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("discovery: {}", chain(&e))))
    }

    /// Fetches the keys again after a token named a key we do not know (the provider rotated
    /// its keys), at most once per [`KEY_REFRESH_INTERVAL`].
    async fn refresh_keys(
        &self,
        http: &openidconnect::reqwest::Client,
    ) -> Result<Option<Arc<CoreProviderMetadata>>, OidcError> {
        let current = {
            let mut cache = self.cache.lock().expect("cache lock");
            let Some(current) = cache.metadata.clone() else {
                return Ok(None);
            };
            if cache
                .keys_refreshed
                .is_some_and(|t| t.elapsed() < KEY_REFRESH_INTERVAL)
            {
                return Ok(None);
            }
            cache.keys_refreshed = Some(Instant::now());
            current
        };
        let keys = JsonWebKeySet::fetch_async(current.jwks_uri(), http)
            .await
            .map_err(|e| OidcError::Unavailable(format!("keys: {}", chain(&e))))?;
        let refreshed = Arc::new((*current).clone().set_jwks(keys));
        self.cache.lock().expect("cache lock").metadata = Some(refreshed.clone());
        Ok(Some(refreshed))
    }

    fn client(
        &self,
        metadata: &CoreProviderMetadata,
        redirect_uri: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        OidcError,
    > {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::Provider(format!("redirect uri: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata.clone(),
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_redirect_uri(redirect))
    }

    /// The URL to send the browser to.
    pub async fn authorization_url(
        &self,
        http: &openidconnect::reqwest::Client,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<String, OidcError> {
        let metadata = self.metadata(http).await?;
        let client = self.client(&metadata, redirect_uri)?;
        let (state, nonce) = (state.to_string(), nonce.to_string());
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            pkce_verifier.to_string(),
        ));
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(challenge);
        for scope in self.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.url();
        Ok(url.to_string())
    }

    /// Exchanges `code` (with the flow's PKCE verifier) and checks the ID token; `nonce_ok`
    /// decides whether the token's nonce is the flow's.
    pub async fn finish(
        &self,
        http: &openidconnect::reqwest::Client,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: &str,
        nonce_ok: impl Fn(&str) -> bool,
    ) -> Result<VerifiedIdentity, OidcError> {
        let metadata = self.metadata(http).await?;
        let client = self.client(&metadata, redirect_uri)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(http)
            .await
            .map_err(token_error)?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::TokenInvalid("the token response has no id_token".into()))?;
        match self.verify(&metadata, id_token, &nonce_ok) {
            Err(OidcError::TokenInvalid(why)) if why.contains(UNKNOWN_KEY) => {
                match self.refresh_keys(http).await? {
                    Some(fresh) => self.verify(&fresh, id_token, &nonce_ok),
                    None => Err(OidcError::TokenInvalid(why)),
                }
            }
            other => other,
        }
    }

    fn verify(
        &self,
        metadata: &CoreProviderMetadata,
        id_token: &CoreIdToken,
        nonce_ok: &impl Fn(&str) -> bool,
    ) -> Result<VerifiedIdentity, OidcError> {
        let verifier = CoreIdTokenVerifier::new_public_client(
            self.client_id.clone(),
            metadata.issuer().clone(),
            metadata.jwks().clone(),
        )
        .set_allowed_algs(ALLOWED_ALGS)
        .set_issue_time_verifier_fn(|iat| {
            let now = chrono::Utc::now().timestamp();
            if crate::domain::federation::issue_time_ok(
                iat.timestamp(),
                now,
                IAT_SKEW_SECS,
                IAT_MAX_AGE_SECS,
            ) {
                Ok(())
            } else {
                Err(format!("issued at {iat}, too far from now"))
            }
        });
        let claims = id_token
            .claims(&verifier, |nonce: Option<&Nonce>| match nonce {
                Some(n) if nonce_ok(n.secret()) => Ok(()),
                Some(_) => Err("nonce mismatch".to_string()),
                None => Err("no nonce".to_string()),
            })
            .map_err(|e| {
                use openidconnect::{ClaimsVerificationError, SignatureVerificationError};
                match e {
                    ClaimsVerificationError::SignatureVerification(
                        SignatureVerificationError::NoMatchingKey,
                    ) => OidcError::TokenInvalid(UNKNOWN_KEY.into()),
                    other => OidcError::TokenInvalid(chain(&other)),
                }
            })?;
        // The authorized party, when named, must be us; several audiences need one (OpenID
        // Connect Core 3.1.3.7, steps 4 and 5). Other audiences are refused by the verifier.
        match claims.authorized_party() {
            Some(azp) if **azp != *self.client_id => {
                return Err(OidcError::TokenInvalid(format!("azp is `{}`", **azp)));
            }
            None if claims.audiences().len() > 1 => {
                return Err(OidcError::TokenInvalid(
                    "several audiences and no azp".into(),
                ));
            }
            _ => {}
        }
        Ok(VerifiedIdentity {
            hosted_domain: payload_claim(id_token, "hd"),
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
        })
    }
}

/// A string claim the core claim set does not model, read from a token whose signature and
/// claims were verified already.
fn payload_claim(id_token: &CoreIdToken, name: &str) -> Option<String> {
    use base64::Engine as _;
    let compact = id_token.to_string();
    let payload = compact.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get(name)?.as_str().map(str::to_string)
}

const UNKNOWN_KEY: &str = "no key of the provider matches the token";

fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<
        openidconnect::HttpClientError<RE>,
        openidconnect::StandardErrorResponse<CoreErrorResponseType>,
    >,
) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(response) => match response.error() {
            CoreErrorResponseType::InvalidGrant => OidcError::CodeInvalid,
            other => OidcError::Provider(other.as_ref().to_string()),
        },
        RequestTokenError::Request(e) => {
            OidcError::Unavailable(format!("token endpoint: {}", chain(&e)))
        }
        RequestTokenError::Parse(e, _) => {
            OidcError::Unavailable(format!("token endpoint answer: {e}"))
        }
        RequestTokenError::Other(e) => OidcError::Unavailable(format!("token endpoint: {e}")),
    }
}

/// An error and its causes on one line (reqwest hides the useful part in `source()`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
