//! Every decision is a `tracing` span with the policy, result, source and latency, and the key
//! only as a digest.

use std::sync::{Arc, Mutex};

use ratelimit_core::Identity;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Every field recorded on `ratelimit.decision` spans, as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(String, String)>>>);

impl Visit for Capture {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if let Ok(mut fields) = self.0.lock() {
            fields.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if let Ok(mut fields) = self.0.lock() {
            fields.push((field.name().to_owned(), value.to_owned()));
        }
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == "ratelimit.decision" {
            attrs.record(&mut self.clone());
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if ctx
            .span(id)
            .is_some_and(|span| span.name() == "ratelimit.decision")
        {
            values.record(&mut self.clone());
        }
    }
}

#[test]
fn a_decision_is_a_span_without_the_raw_key() {
    decisions_are_spans_without_the_raw_key(false);
}

#[test]
fn a_decision_made_now_is_a_span_without_the_raw_key() {
    decisions_are_spans_without_the_raw_key(true);
}

/// The spans of two decisions, made with `allow_now` when `now`, with `allow` otherwise.
fn decisions_are_spans_without_the_raw_key(now: bool) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let key = "secret-api-key-123";
    let allowed = if now {
        ratelimit_tests::two_decisions_traced_now(subscriber, key)
    } else {
        ratelimit_tests::two_decisions_traced(subscriber, key)
    };
    assert_eq!(
        allowed,
        [true, false],
        "a limit of one: allowed, then denied"
    );
    let fields = capture.0.lock().expect("fields").clone();
    let values = |name: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(values("policy"), ["default", "default"]);
    assert_eq!(values("rule"), ["default", "default"]);
    assert_eq!(values("result"), ["allowed", "denied"]);
    assert_eq!(values("source"), ["memory", "memory"]);
    assert_eq!(values("latency_us").len(), 2);
    let digest = Identity::new(b"secret-api-key-123").digest();
    assert_eq!(values("key_hash"), [digest.as_str(), digest.as_str()]);
    assert!(
        fields.iter().all(|(_, v)| !v.contains("secret")),
        "the raw key leaked: {fields:?}"
    );
}
