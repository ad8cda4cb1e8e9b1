//! Readiness as one layer: while the database is not ready (before it first answered with every
//! index in place, or during an outage the server's database watch noticed), every keyward RPC
//! that needs it is answered at once with UNAVAILABLE / NOT_READY (`Error::NotReady` through the
//! one error mapping), instead of each adapter checking for itself.
//!
//! Not covered, on purpose:
//! - health, liveness and reflection, which must answer whatever the database does;
//! - RPCs that never touch the database (`GetPublicKeys`, `ListProviders`);
//! - Envoy's `Authorization/Check`: Envoy must get a CheckResponse it can act on (a 503 denial,
//!   fail closed, counted as an ext_authz decision), not a gRPC error that its
//!   `failure_mode_allow` setting might let through; `grpc::ext_authz` answers not-ready itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::app::App;

/// Services whose RPCs wait for the database (paths `/<service>/<method>`).
const GUARDED_PREFIX: &str = "/keyward.v1.";

/// Methods of keyward's services that answer from memory and so keep answering while the
/// database is away.
const WITHOUT_DATABASE: &[&str] = &[
    "/keyward.v1.AuthService/GetPublicKeys",
    "/keyward.v1.FederationService/ListProviders",
];

/// Whether the RPC at `path` must wait for the database.
fn needs_database(path: &str) -> bool {
    path.starts_with(GUARDED_PREFIX) && !WITHOUT_DATABASE.contains(&path)
}

/// Tower layer (added with `Server::layer`, inside `telemetry::RpcOutcomeLayer` so these answers
/// are traced and counted like any other) that answers NOT_READY while `App::ensure_ready`
/// fails.
#[derive(Clone)]
pub struct ReadinessLayer {
    app: Arc<App>,
}

impl ReadinessLayer {
    pub fn new(app: Arc<App>) -> Self {
        Self { app }
    }
}

impl<S> tower::Layer<S> for ReadinessLayer {
    type Service = Readiness<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Readiness {
            inner,
            app: Arc::clone(&self.app),
        }
    }
}

/// See [`ReadinessLayer`].
#[derive(Clone)]
pub struct Readiness<S> {
    inner: S,
    app: Arc<App>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Readiness<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if needs_database(request.uri().path()) {
            if let Err(e) = self.app.ensure_ready() {
                let status = tonic::Status::from(e);
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::needs_database;

    #[test]
    fn keyward_rpcs_wait_for_the_database_but_health_reflection_and_envoy_do_not() {
        assert!(needs_database("/keyward.v1.AuthService/Login"));
        assert!(needs_database("/keyward.v1.UserService/ListUsers"));
        assert!(!needs_database("/keyward.v1.AuthService/GetPublicKeys"));
        assert!(!needs_database(
            "/keyward.v1.FederationService/ListProviders"
        ));
        assert!(!needs_database("/grpc.health.v1.Health/Check"));
        assert!(!needs_database(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!needs_database(
            "/envoy.service.auth.v3.Authorization/Check"
        ));
    }
}
