//! Windows aligned to the Unix epoch (fixed windows, sliding counters) begin and end at fixed
//! instants: a test that takes a day-long window on faith passes at noon and fails when a
//! boundary falls in the middle of it. These windows are chosen so that one began just before
//! the test and the next boundary is about a window away, whatever the hour and date.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratelimit_core::Window;

/// A window of `max_requests` about `length` long, whose current epoch-aligned period began
/// about `ago` before now (this machine's clock, which the local Redis servers share).
///
/// ```
/// use std::time::Duration;
/// let day = Duration::from_secs(86_400);
/// let w = ratelimit_tests::window_starting_now(10, day);
/// assert!(w.duration() >= day && w.duration() < day + Duration::from_secs(10));
/// ```
pub fn window_starting_now(max_requests: u64, length: Duration) -> Window {
    window_started(max_requests, length, Duration::from_secs(2))
}

/// Like [`window_starting_now`], with the period begun `ago` before now.
pub fn window_started(max_requests: u64, length: Duration, ago: Duration) -> Window {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_micros() as u64;
    let start = now - ago.as_micros() as u64;
    let wanted = (length.as_micros() as u64).max(1);
    // `start` is the beginning of period `n` of a window of `start / n` µs (rounded down, so
    // the period begins within `n` µs before `start`).
    let n = (start / wanted).max(1);
    let micros = start / n;
    Window::new(max_requests, Duration::from_micros(micros))
}
