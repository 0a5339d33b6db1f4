//! Logs and traces: the one place the CLI, the coordinator and the workers set up `tracing`.
//!
//! - Logs go to stderr through `tracing`'s formatter, filtered by `FLOTILLA_LOG` (default
//!   `warn`).
//! - Traces go to an OpenTelemetry collector over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with `OTEL_EXPORTER_OTLP_PROTOCOL` `grpc`
//!   or `http/protobuf` (the default, as the OpenTelemetry specification says), and the
//!   service named by `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (default `flotilla`).
//!   Only spans with the target [`TARGET`] are exported: the sweep's submission, each
//!   assignment, and each shard's work on its worker; unset, those spans are disabled at
//!   their call sites and cost nothing.
//! - The trace context travels as W3C `traceparent`: in gRPC metadata from the CLI to the
//!   coordinator ([`inject`] in the client's interceptor, [`set_parent_from_metadata`] in the
//!   coordinator), and in each `Assignment` from the coordinator to the worker (work is
//!   pulled over one long stream, so the context rides in the message that starts the work).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of spans exported as traces (`tracing::info_span!(target: TARGET, ...)`).
pub const TARGET: &str = "flotilla_trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint was configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Keeps the exporter alive; dropping it flushes the spans not yet sent (at most a few
/// seconds) and stops the exporter's runtime.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Send what is buffered and stop exporting (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "cannot flush the trace exporter");
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Which OTLP transport the environment asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`.
pub fn protocol_from_env() -> Result<Protocol, String> {
    let (name, value) = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
        None => match env("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
            None => return Ok(Protocol::HttpProtobuf),
        },
    };
    match value.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(format!(
            "{name}={other:?}: flotilla exports traces over `grpc` or `http/protobuf`"
        )),
    }
}

/// Set up logging (and tracing, where the environment asks for it) for this process. Call
/// once, outside any async runtime, and keep the returned value until the process ends.
/// An OTLP setting that cannot work is an error naming the variable; logs still go to
/// stderr then.
pub fn init() -> Result<Telemetry, String> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // No colour codes where stderr is a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            EnvFilter::try_from_env("FLOTILLA_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        );
    let endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(Telemetry {
            provider: None,
            runtime: None,
        });
    };
    match exporter() {
        Ok((provider, runtime)) => {
            use opentelemetry::trace::TracerProvider as _;
            let tracer = provider.tracer("flotilla");
            let otel = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target(TARGET, tracing::Level::INFO),
                );
            tracing_subscriber::registry().with(fmt).with(otel).init();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            ENABLED.store(true, Ordering::Relaxed);
            tracing::info!(endpoint, "exporting traces over OTLP");
            Ok(Telemetry {
                provider: Some(provider),
                runtime: Some(runtime),
            })
        }
        Err(e) => {
            tracing_subscriber::registry().with(fmt).init();
            Err(e)
        }
    }
}

/// The tracer provider with a batching OTLP exporter, and the runtime its gRPC channel lives
/// on (the batch processor exports from its own thread, which has no reactor).
fn exporter() -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    let protocol = protocol_from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the trace exporter's runtime: {e}"))?;
    let built = match protocol {
        Protocol::Grpc => {
            let _guard = runtime.enter();
            SpanExporter::builder().with_tonic().build()
        }
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
    }
    .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("flotilla");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(built)
        .with_resource(resource)
        .build();
    Ok((provider, runtime))
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct ReadMetadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for ReadMetadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Put the current span's trace context into outgoing gRPC metadata (`traceparent`).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
    }
}

/// Make `span` a child of the trace context in incoming gRPC metadata, if any.
pub fn set_parent_from_metadata(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&ReadMetadata(metadata));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of `span` (`None` when nothing is exported or the span is off).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Make `span` a child of a W3C `traceparent` (ignored when empty or malformed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() || traceparent.is_empty() {
        return;
    }
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx: Context = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
