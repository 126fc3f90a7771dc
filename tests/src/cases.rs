//! One test per case of a shared test body: [`tokio_test_cases!`](crate::tokio_test_cases).
//!
//! Suites often run one `async fn` under several arguments (a fallback mode, a backend, an
//! outage). Each argument stays its own `#[tokio::test]`, so it runs in parallel, fails on its
//! own and keeps its name on the command line; the macro writes the wrappers.

/// Generates one multi-threaded `#[tokio::test]` (4 worker threads) per case, each awaiting
/// `body(argument)`. Attributes and doc comments before a case go onto its test.
///
/// ```
/// # #[derive(Clone, Copy, Debug)] enum Mode { Open, Closed }
/// async fn survives(mode: Mode) {
///     let _ = mode;
/// }
///
/// ratelimit_tests::tokio_test_cases!(survives {
///     /// Fails open.
///     survives_open => Mode::Open,
///     survives_closed => Mode::Closed,
/// });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! tokio_test_cases {
    ($body:path { $($(#[$meta:meta])* $name:ident => $case:expr),* $(,)? }) => {
        $(
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $body($case).await
            }
        )*
    };
}
