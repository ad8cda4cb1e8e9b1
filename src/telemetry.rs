//! Logs and traces: `tracing` to stdout (text or JSON), OpenTelemetry OTLP export when an
//! endpoint is configured, and W3C trace context taken from incoming gRPC metadata.
//!
//! Each RPC gets one server span ([`rpc_span`], installed with tonic's `trace_fn`) carrying
//! `rpc.system`/`rpc.service`/`rpc.method`, the gRPC status code ([`RpcOutcomeLayer`]) and, once
//! a bearer or checked access token has been verified, `enduser.id` ([`record_user_id`]).
//! Tokens, passwords, codes and emails are never recorded on it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Keeps the trace exporter alive; dropping it flushes pending spans.
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(
    format: LogFormat,
    filter: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(filter)?;
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name("keyward").build())
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("keyward")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true))
            .try_init()?,
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init()?,
    }
    Ok(TelemetryGuard(provider))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one incoming RPC, joined to the caller's trace (`traceparent` metadata).
pub fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        // Filled in by `RpcOutcomeLayer` and `record_user_id`.
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        enduser.id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    span
}

tokio::task_local! {
    /// The span of the RPC being served, for [`record_user_id`] (the handler's own spans sit
    /// below it, so `Span::current()` there is not the RPC's span).
    static RPC_SPAN: tracing::Span;
}

/// Records the authenticated user's id as `enduser.id` on the current RPC's span. Outside an RPC
/// (tests, CLI commands) it does nothing.
pub fn record_user_id(user_id: &str) {
    let _ = RPC_SPAN.try_with(|span| {
        span.record("enduser.id", user_id);
    });
}

/// Records a gRPC status code on an RPC span; the codes OpenTelemetry counts as server faults
/// also mark the span as an error.
fn record_status(span: &tracing::Span, code: i32) {
    use tonic::Code;
    span.record("rpc.grpc.status_code", i64::from(code));
    if matches!(
        Code::from_i32(code),
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

/// The gRPC status of a response as far as its headers tell. Failures are trailers-only
/// responses, so their `grpc-status` is in the headers; a successful unary response carries
/// `grpc-status: 0` in its trailers, which this does not wait for: HTTP 200 without
/// `grpc-status` counts as OK. (A failure while the body is being sent, which keyward's unary
/// RPCs do not have, would therefore be reported as OK.)
pub(crate) fn grpc_status<B>(response: &http::Response<B>) -> Option<i32> {
    match response.headers().get("grpc-status") {
        Some(value) => value.to_str().ok()?.parse().ok(),
        None if response.status() == http::StatusCode::OK => Some(0),
        None => None,
    }
}

/// Tower layer (added with `Server::layer`) that completes each RPC's span: the status code
/// when the response is ready, CANCELLED when the call is dropped unanswered (the server's
/// request timeout, which tonic answers with CANCELLED, or the client going away), and the
/// scope [`record_user_id`] writes into. Calls shed before they reach it (load shedding) keep a
/// span without a status code.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcOutcomeLayer;

impl<S> tower::Layer<S> for RpcOutcomeLayer {
    type Service = RpcOutcome<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcOutcome { inner }
    }
}

/// See [`RpcOutcomeLayer`].
#[derive(Clone, Debug)]
pub struct RpcOutcome<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcOutcome<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            // tonic enters the RPC's span (`trace_fn`) whenever it polls this future.
            let span = tracing::Span::current();
            let mut unanswered = Unanswered(Some(span.clone()));
            let result = RPC_SPAN.scope(span.clone(), response).await;
            unanswered.0 = None;
            if let Some(code) = result.as_ref().ok().and_then(grpc_status) {
                record_status(&span, code);
            }
            result
        })
    }
}

/// Marks an RPC span CANCELLED if its call is dropped before an answer.
struct Unanswered(Option<tracing::Span>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            record_status(&span, tonic::Code::Cancelled as i32);
        }
    }
}
