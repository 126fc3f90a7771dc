//! Logs, and with the `otel` feature an OpenTelemetry export of every span.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`). With `--features otel` and
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans (one per rate-limit decision, at debug level, so
//! `RUST_LOG` must let them through, e.g. `info,ratelimit_core=debug`) are exported over
//! OTLP/HTTP; the exporter reads the other standard `OTEL_*` variables itself.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes exported spans when dropped; keep it until the process ends.
pub struct TelemetryGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber.
pub fn init() -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer());
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TracerProvider as _;
        let provider = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| eprintln!("api-server: OpenTelemetry export disabled: {e}"))
                .ok()?;
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .build(),
            )
        });
        let layer = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("api-server")));
        registry.with(layer).init();
        TelemetryGuard { provider }
    }
    #[cfg(not(feature = "otel"))]
    {
        registry.init();
        TelemetryGuard {}
    }
}
