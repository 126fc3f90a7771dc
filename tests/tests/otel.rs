//! Decisions reach OpenTelemetry: through `tracing-opentelemetry`, each decision's span is
//! exported with its fields as attributes, and the key only as a digest.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use ratelimit_core::Identity;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn each_decision_is_an_exported_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let allowed = ratelimit_tests::two_decisions_traced(subscriber, "alice@example.com");
    assert_eq!(
        allowed,
        [true, false],
        "a limit of one: allowed, then denied"
    );
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let decisions: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "ratelimit.decision")
        .collect();
    assert_eq!(decisions.len(), 2, "{spans:?}");
    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let digest = Identity::new(b"alice@example.com").digest();
    for (span, result) in decisions.iter().zip(["allowed", "denied"]) {
        assert_eq!(attribute(span, "result").as_deref(), Some(result));
        assert_eq!(attribute(span, "source").as_deref(), Some("memory"));
        assert_eq!(attribute(span, "policy").as_deref(), Some("default"));
        assert_eq!(
            attribute(span, "key_hash").as_deref(),
            Some(digest.as_str())
        );
        assert!(attribute(span, "latency_us").is_some());
        assert!(
            span.attributes
                .iter()
                .all(|kv| !kv.value.to_string().contains("alice")),
            "the raw key was exported: {:?}",
            span.attributes
        );
    }
}
