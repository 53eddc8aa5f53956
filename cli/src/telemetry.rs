//! Logs and traces of the `tasker` binary.
//!
//! Logs go to stderr as text or JSON lines (`--log-format`), filtered by `TASKER_LOG`
//! (EnvFilter syntax, default `warn`). Traces are exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans of HTTP
//! requests (`tasker serve`), worker cycles (`tasker.report`, `tasker.claim`), steps
//! (`tasker.step`, a child of its task's root span `tasker.task`), filtered by `TASKER_TRACE`
//! (EnvFilter syntax, default `tasker_core=debug,tasker_server=info,tasker=info`).
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (default) or `http/json`;
//! `OTEL_SERVICE_NAME` names the service (default `tasker`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans not yet exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("tasker: warning: exporting the last spans failed: {e}");
            }
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Installs the log layer and, when an OTLP endpoint is configured, the trace exporter.
pub fn init(log_format: &str) -> Result<Telemetry, String> {
    let log_filter =
        EnvFilter::try_from_env("TASKER_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if log_format == "json" {
        fmt.json()
            .with_current_span(true)
            .with_filter(log_filter)
            .boxed()
    } else {
        fmt.with_filter(log_filter).boxed()
    }];
    let mut provider = None;
    if env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Err(_) | Ok("http/protobuf") => Protocol::HttpBinary,
            Ok("http/json") => Protocol::HttpJson,
            Ok(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: this build exports http/protobuf or http/json (not grpc)"
                ))
            }
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .map_err(|e| format!("OTLP trace exporter: {e}"))?;
        let mut resource = Resource::builder();
        if !env_set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name("tasker");
        }
        let p = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(tasker_core::telemetry::TaskIdGenerator::default())
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_tracer_provider(p.clone());
        let trace_filter = EnvFilter::try_from_env("TASKER_TRACE")
            .unwrap_or_else(|_| EnvFilter::new("tasker_core=debug,tasker_server=info,tasker=info"));
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("tasker"))
                .with_filter(trace_filter)
                .boxed(),
        );
        provider = Some(p);
    }
    tracing_subscriber::registry().with(layers).init();
    Ok(Telemetry { provider })
}
