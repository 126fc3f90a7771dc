//! Seeds of randomized tests: random each run, and replayable from an environment variable.

/// The seed of a randomized test: the value of the environment variable `var` when it is set
/// to a number, a random one otherwise. Tests print the seed they used, so a failure can be
/// replayed with `var=<seed>`.
///
/// ```
/// let seed = ratelimit_tests::seed_from_env("EXAMPLE_SEED");
/// let _ = seed;
/// ```
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}
