//! YAML configuration: any text must parse or fail cleanly, and the error must format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimit_core::Config;
use ratelimit_core::Overrides;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = Config::from_yaml_str_with(text, None, &Overrides::default()) {
        let _ = err.to_string();
    }
});
