//! Logs and traces: `tracing` to stdout (text or JSON), OpenTelemetry OTLP export when an
//! endpoint is configured, and W3C trace context taken from incoming gRPC metadata.
//!
//! Each RPC gets one server span ([`rpc_span`], installed with tonic's `trace_fn`) carrying
//! `rpc.system`/`rpc.service`/`rpc.method`, the gRPC status code ([`RpcOutcomeLayer`]) and, once
//! a bearer or checked access token has been verified, `enduser.id` ([`record_user_id`]).
//! Tokens, passwords, codes and emails are never recorded on it.
//!
//! JSON log lines written inside a traced span start with its `trace_id` and `span_id`
//! ([`WithTraceIds`]), so a log line leads to its trace.

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
        LogFormat::Json => registry.with(json_layer(std::io::stdout)).try_init()?,
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init()?,
    }
    Ok(TelemetryGuard(provider))
}

/// The JSON log layer: one flat object per event, with the trace's ids when there is one.
fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(WithTraceIds(
            tracing_subscriber::fmt::format().json().flatten_event(true),
        ))
        .with_writer(writer)
}

/// A JSON event format that puts `"trace_id"` and `"span_id"` (W3C hex, as trace backends
/// show them) first in each line written inside a span that OpenTelemetry traces: the ids of
/// the innermost such span. Lines outside any traced span (or with no trace exporter
/// configured) are written as the inner format writes them.
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = ctx.event_scope().and_then(|mut scope| {
            scope.find_map(|span| {
                let extensions = span.extensions();
                let data = extensions.get::<tracing_opentelemetry::OtelData>()?;
                let (trace_id, span_id) = (data.trace_id()?, data.span_id()?);
                (trace_id != opentelemetry::TraceId::INVALID).then_some((trace_id, span_id))
            })
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
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

/// Tower layer (added with `Server::layer`) that completes each RPC's span and its metrics
/// (`metrics::RpcTimer`): the status code when the response is ready, CANCELLED when the call is dropped unanswered (the server's
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
        let timer = crate::metrics::RpcTimer::start(request.uri().path());
        let response = self.inner.call(request);
        Box::pin(async move {
            // tonic enters the RPC's span (`trace_fn`) whenever it polls this future.
            let span = tracing::Span::current();
            let mut unanswered = Unanswered(Some(span.clone()));
            let result = RPC_SPAN.scope(span.clone(), response).await;
            unanswered.0 = None;
            let code = result.as_ref().ok().and_then(grpc_status);
            if let Some(code) = code {
                record_status(&span, code);
            }
            timer.answered(code);
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use std::sync::{Arc, Mutex};

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn json(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    #[test]
    fn json_lines_inside_a_trace_carry_its_ids() {
        let lines = Lines::default();
        let writer = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_layer(move || writer.clone()));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!("rpc", rpc.method = "Login");
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            let inner = tracing::info_span!("inner");
            inner.in_scope(|| tracing::info!("deeper"));
            let context = span.context();
            let ids = context.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let logged = lines.json();
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert!(logged[0].get("trace_id").is_none(), "{}", logged[0]);
        assert_eq!(logged[0]["message"], "outside");
        assert_eq!(logged[1]["trace_id"], trace_id.as_str());
        assert_eq!(logged[1]["span_id"], span_id.as_str());
        assert_eq!(logged[1]["answer"], 42);
        assert_eq!(logged[1]["span"]["rpc.method"], "Login");
        // The innermost span's own id, in the same trace.
        assert_eq!(logged[2]["trace_id"], trace_id.as_str());
        assert_ne!(logged[2]["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        assert_eq!(span_id.len(), 16);
    }

    #[test]
    fn json_lines_without_a_tracer_are_unchanged() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc");
            let _entered = span.enter();
            tracing::info!("inside");
        });
        let logged = lines.json();
        assert_eq!(logged.len(), 1);
        assert!(logged[0].get("trace_id").is_none(), "{}", logged[0]);
        assert_eq!(logged[0]["message"], "inside");
    }
}
