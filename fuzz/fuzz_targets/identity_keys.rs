//! Redis keys built from hostile identities stay in one hash tag, printable and short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::{Algorithm, Identity, KeyBuilder, Policy, Window};

fuzz_target!(|data: &[u8]| {
    let policy = Policy::new("api", [Window::per_minute(10), Window::per_hour(100)])
        .with_algorithm(Algorithm::TokenBucket);
    let identity = Identity::new(data);
    let keys = KeyBuilder::default().keys(&policy, identity);
    assert_eq!(keys.len(), 2, "one key a window: {keys:?}");
    for key in &keys {
        assert_eq!(key.matches('{').count(), 1, "one `{{` in {key:?}");
        assert_eq!(key.matches('}').count(), 1, "one `}}` in {key:?}");
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "not ASCII graphic: {key:?}");
        assert!(key.len() <= 200, "key too long ({}): {key:?}", key.len());
    }
    let digest = identity.digest();
    assert_eq!(digest.as_str().len(), 16, "digest {:?}", digest.as_str());
    assert!(
        digest.as_str().bytes().all(|b| b.is_ascii_hexdigit()),
        "digest {:?}",
        digest.as_str()
    );
});
