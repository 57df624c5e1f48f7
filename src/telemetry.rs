//! Logging and tracing setup: `tracing` to stderr, human-readable or JSON, filtered by `RUST_LOG`
//! (default `info`, with whisper.cpp's own messages off); with the `otlp` cargo feature, the same
//! spans (session, asr, response, retrieval, llm) can also go to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf).
//!
//! Export is on when an endpoint is given (`--otlp-endpoint`, the collector's base URL such as
//! `http://localhost:4318`, to which `/v1/traces` is added) or when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables are set. The
//! other standard variables apply too (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Errors setting up trace export.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An endpoint was configured but this binary was built without the `otlp` feature.
    #[error("OTLP export needs voxd built with the `otlp` cargo feature (on by default)")]
    NotBuilt,
    /// The exporter could not be built (a malformed endpoint, for one).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Keeps trace export running; dropping it sends the spans still buffered and stops the exporter.
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        return self.provider.is_some();
        #[cfg(not(feature = "otlp"))]
        false
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing the last spans to the OTLP collector failed");
            }
        }
    }
}

/// The OTLP traces URL for a collector base URL (`http://host:4318` -> `.../v1/traces`); a URL
/// already ending in `/v1/traces` is kept.
pub fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Whether the standard OpenTelemetry variables ask for export.
fn endpoint_in_environment() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// `RUST_LOG`, else `info` with whisper.cpp's own messages off: its failures reach voxd as errors
/// (logged as such), and it reports a partial transcription that gave way to a final one as
/// "failed to encode". `RUST_LOG=info,whisper_rs=info` shows them.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,whisper_rs=off"))
}

fn format_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let layer = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

/// Installs the global subscriber (logs only). Safe to call more than once (later calls do
/// nothing).
pub fn init(format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(format_layer(format))
        .try_init();
}

/// Installs the global subscriber with trace export when `otlp_endpoint` or the standard
/// variables ask for it. Keep the returned value alive for as long as spans should be exported.
pub fn init_with_export(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, TelemetryError> {
    let wanted = otlp_endpoint.is_some() || endpoint_in_environment();
    if !wanted {
        init(format);
        return Ok(Telemetry::default());
    }
    export(format, otlp_endpoint)
}

#[cfg(not(feature = "otlp"))]
fn export(_format: LogFormat, _endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    Err(TelemetryError::NotBuilt)
}

#[cfg(feature = "otlp")]
fn export(format: LogFormat, endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(base) = endpoint {
        builder = builder.with_endpoint(traces_url(base));
    }
    let exporter = builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("voxd");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("voxd");
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(format_layer(format))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    tracing::info!(
        endpoint = endpoint
            .map(traces_url)
            .as_deref()
            .unwrap_or("from OTEL_* variables"),
        "exporting traces over OTLP/HTTP"
    );
    Ok(Telemetry {
        provider: Some(provider),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_adds_the_signal_path_once() {
        assert_eq!(
            traces_url("http://localhost:4318"),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://gw.example/otel/"),
            "https://gw.example/otel/v1/traces"
        );
    }
}
