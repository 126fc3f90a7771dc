//! The rate-limit headers: the IETF draft's structured fields and the legacy `X-RateLimit-*`.
//!
//! The draft followed is [draft-ietf-httpapi-ratelimit-headers-10] (the field syntax is that of
//! revision 09 too):
//!
//! ```text
//! RateLimit-Policy: "hello-1m";q=10;w=60, "hello-1h";q=100;w=3600
//! RateLimit: "hello-1m";r=0;t=17
//! X-RateLimit-Limit: 10
//! X-RateLimit-Remaining: 0
//! X-RateLimit-Reset: 1767225617
//! ```
//!
//! - A policy item is named after the policy (a rule's name, `default` for the top-level
//!   policy) and the window (`hello-1m`), so a client can tell the policies of one response
//!   apart, and `RateLimit` names the binding one. `q` and `r` count requests, the draft's
//!   default quota unit: a policy that charges several permits a request (a rule's `cost`)
//!   reports `max_requests / cost` and `remaining / cost`, what the client can still send.
//! - `t` is "the number of seconds until additional quota is made available". On a `429` it is
//!   the number `Retry-After` carries, computed once, so both name the same moment. On an
//!   allowed response it is the time until the binding window has its whole quota back: never
//!   earlier than the moment more quota is made available, so a client that waits `t` is not
//!   refused for coming early.
//! - A response that passes through two layers (a global layer around a route layer) carries
//!   both layers' items: the structured-field lists are appended, not overwritten. The legacy
//!   family has room for one policy only, and keeps the one with the fewest requests left.
//! - `X-RateLimit-Reset` holds Unix epoch seconds by default (GitHub's convention), or the
//!   delta in seconds (`legacy_reset: delta_seconds`).
//!
//! Every number of seconds is rounded up: a client that waits what it was told must not be
//! refused again for coming a fraction of a second early.
//!
//! [draft-ietf-httpapi-ratelimit-headers-10]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/10/

use std::cell::RefCell;
use std::fmt::Write as _;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use ratelimit_core::{Decision, Policy, Window};
use ratelimit_core::{HeaderFamilies, LegacyReset};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: when the quota is back, in epoch seconds or as a delta (see
/// [`LegacyReset`]).
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which headers responses carry, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderSettings {
    /// The families written.
    pub families: HeaderFamilies,
    /// What `X-RateLimit-Reset` holds.
    pub legacy_reset: LegacyReset,
}

/// Whole seconds, rounded up.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_tower::headers::ceil_secs;
/// assert_eq!(ceil_secs(Duration::from_millis(16_001)), 17);
/// assert_eq!(ceil_secs(Duration::from_secs(17)), 17);
/// assert_eq!(ceil_secs(Duration::ZERO), 0);
/// ```
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` for a denial: whole seconds rounded up, at least 1.
pub fn retry_after_secs(decision: &Decision) -> u64 {
    decision.retry_after().map_or(1, ceil_secs).max(1)
}

/// The draft's `t` for `decision`: on a denial, [`retry_after_secs`] (the value `Retry-After`
/// carries); when allowed, the time until the binding window's quota is all back, rounded up.
pub fn reset_secs(decision: &Decision) -> u64 {
    if decision.allowed() {
        ceil_secs(decision.reset_after())
    } else {
        retry_after_secs(decision)
    }
}

/// The identifier of `policy`'s `window` in the headers and in problem documents: the policy's
/// name and the window's label, such as `hello-1m`.
///
/// ```
/// use ratelimit_core::{Policy, Window};
/// use ratelimit_tower::headers::policy_id;
/// let policy = Policy::new("hello", [Window::per_minute(10), Window::per_hour(100)]);
/// assert_eq!(policy_id(&policy, &policy.windows()[1]), "hello-1h");
/// ```
pub fn policy_id(policy: &Policy, window: &Window) -> String {
    format!("{}-{}", policy.name(), window.label())
}

/// `text` as a structured-field String (quoted, `\` and `"` escaped), or `None` when it holds
/// bytes a String cannot.
pub(crate) fn sf_string(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

/// Requests that `permits` pay for when each request costs `cost` permits.
fn in_requests(permits: u64, cost: u64) -> u64 {
    permits / cost.max(1)
}

/// The `RateLimit-Policy` value of `policy`: one item per window.
///
/// ```
/// use ratelimit_core::{Policy, Window};
/// use ratelimit_tower::headers::policy_header;
/// let policy = Policy::new("uploads", [Window::per_minute(10)]).with_cost(2);
/// assert_eq!(policy_header(&policy).unwrap(), r#""uploads-1m";q=5;w=60"#);
/// ```
pub fn policy_header(policy: &Policy) -> Option<HeaderValue> {
    let mut value = String::new();
    for (i, window) in policy.windows().iter().enumerate() {
        if i > 0 {
            value.push_str(", ");
        }
        let id = sf_string(&policy_id(policy, window))?;
        // Writing to a String cannot fail.
        let _ = write!(
            value,
            "{id};q={};w={}",
            in_requests(window.max_requests(), policy.cost()),
            ceil_secs(window.duration()).max(1)
        );
    }
    HeaderValue::from_str(&value).ok()
}

/// `X-RateLimit-Reset` for a reset `secs` seconds from now.
fn legacy_reset(secs: u64, format: LegacyReset) -> u64 {
    match format {
        LegacyReset::DeltaSeconds => secs,
        LegacyReset::EpochSeconds => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            // The next whole second, plus the delta: `reset - now` is never below `secs`.
            ceil_secs(now).saturating_add(secs)
        }
    }
}

/// A policy as the headers name it, written once when the policy is: its `RateLimit-Policy`
/// value and the identifier of each window, so that a response only formats the numbers that
/// change.
///
/// ```
/// use ratelimit_core::{Policy, Window};
/// use ratelimit_tower::headers::PolicyFields;
/// let fields = PolicyFields::new(&Policy::new("hello", [Window::per_minute(10), Window::per_hour(100)]));
/// assert_eq!(fields.policy_id(1), Some("hello-1h"));
/// assert_eq!(fields.policy_id(2), None);
/// ```
#[derive(Debug)]
pub struct PolicyFields {
    /// `RateLimit-Policy`, or `None` when the policy's name cannot be written in a header.
    policy_header: Option<HeaderValue>,
    windows: Box<[WindowId]>,
    /// Permits a request takes: the headers count requests.
    cost: u64,
}

/// A window's identifier (`hello-1m`), the same as a structured-field String (`None` when it
/// cannot be one), and its `X-RateLimit-Limit` value.
#[derive(Debug)]
struct WindowId {
    id: Box<str>,
    item: Option<Box<str>>,
    /// The window's quota in requests, the value every response of this window carries.
    limit: (u64, HeaderValue),
}

impl PolicyFields {
    /// The header items of `policy`.
    pub fn new(policy: &Policy) -> Self {
        let windows = policy
            .windows()
            .iter()
            .map(|window| {
                let id = policy_id(policy, window);
                let limit = window.max_requests();
                WindowId {
                    item: sf_string(&id).map(String::into_boxed_str),
                    id: id.into_boxed_str(),
                    limit: (limit, HeaderValue::from(in_requests(limit, policy.cost()))),
                }
            })
            .collect();
        Self {
            policy_header: policy_header(policy),
            windows,
            cost: policy.cost(),
        }
    }

    /// The identifier of window `index` (`hello-1m`), as `RateLimit-Policy` and `RateLimit`
    /// name it and a problem document's `violated-policies` lists it.
    pub fn policy_id(&self, index: usize) -> Option<&str> {
        self.windows.get(index).map(|w| &*w.id)
    }

    /// Window `index`'s identifier as a structured-field String.
    fn item(&self, index: usize) -> Option<&str> {
        self.windows.get(index).and_then(|w| w.item.as_deref())
    }

    /// The `X-RateLimit-Limit` value written once for window `index`, when `limit` (in
    /// permits) is that window's.
    fn limit_value(&self, index: usize, limit: u64) -> Option<&HeaderValue> {
        self.windows
            .get(index)
            .filter(|w| w.limit.0 == limit)
            .map(|w| &w.limit.1)
    }

    /// Requests that `permits` pay for under this policy.
    pub(crate) fn in_requests(&self, permits: u64) -> u64 {
        in_requests(permits, self.cost)
    }
}

/// Writes the enabled families for `decision` under the policy of `fields` into `headers`; `reset` is the
/// draft's `t` ([`reset_secs`]), computed once by the caller so that a `429`'s `Retry-After`
/// names the same moment.
pub fn write(
    headers: &mut HeaderMap,
    settings: HeaderSettings,
    fields: &PolicyFields,
    decision: &Decision,
    reset: u64,
) {
    let remaining = fields.in_requests(decision.remaining());
    // Room for these headers and one more (the server's `content-length`, written after this
    // layer), made at once: a map grown while it is nearly empty moves one entry, not six.
    let added =
        if settings.families.ietf { 2 } else { 0 } + if settings.families.legacy { 3 } else { 0 };
    let _ = headers.try_reserve(added + 1);
    // `RateLimit` and `X-RateLimit-Remaining` are written into one buffer, which the values
    // then share: one allocation for them all. `RateLimit-Policy` and `X-RateLimit-Limit` are
    // written once per policy, `X-RateLimit-Reset` once per number ([`reset_value`]).
    let mut values = Values::new();
    let mut item = None;
    if settings.families.ietf
        && let Some(id) = fields.item(decision.window_index())
    {
        item = values.push_item(id, remaining, reset);
    }
    // One policy fits the legacy family: an inner layer's, unless this one leaves fewer.
    let legacy = settings.families.legacy
        && legacy_remaining(headers)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|existing| remaining < existing);
    let mut numbers = None;
    if legacy {
        let limit = match fields.limit_value(decision.window_index(), decision.limit()) {
            Some(value) => Number::Written(value.clone()),
            None => Number::At(values.push_number(fields.in_requests(decision.limit()))),
        };
        let remaining = Number::At(values.push_number(remaining));
        let reset = Number::Written(reset_value(legacy_reset(reset, settings.legacy_reset)));
        numbers = Some([limit, remaining, reset]);
    }
    let values = Bytes::from_owner(values);
    let value = |range: Range<usize>| HeaderValue::from_maybe_shared(values.slice(range)).ok();
    let item = item.and_then(|item| match item {
        Ok(range) => value(range),
        Err(long) => Some(long),
    });
    if settings.families.ietf {
        if let Some(policy) = &fields.policy_header {
            headers.append(RATELIMIT_POLICY.clone(), policy.clone());
        }
        if let Some(item) = item {
            headers.append(RATELIMIT.clone(), item);
        }
    }
    if let Some(numbers) = numbers {
        let names = [
            &X_RATELIMIT_LIMIT,
            &X_RATELIMIT_REMAINING,
            &X_RATELIMIT_RESET,
        ];
        for (name, number) in names.into_iter().zip(numbers) {
            let number = match number {
                Number::Written(number) => Some(number),
                Number::At(range) => value(range),
            };
            if let Some(number) = number {
                headers.insert(name.clone(), number);
            }
        }
    }
}

/// A legacy header's number: a value written before, or where it is in [`Values`].
enum Number {
    Written(HeaderValue),
    At(Range<usize>),
}

thread_local! {
    /// The last `X-RateLimit-Reset` value this thread wrote, with its number. In epoch seconds
    /// it changes once a second, and the responses in between share it.
    static LAST_RESET: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
}

/// `n` as a header value, shared with the previous response of this thread when it wrote the
/// same number.
fn reset_value(n: u64) -> HeaderValue {
    LAST_RESET.with_borrow_mut(|last| match last {
        Some((written, value)) if *written == n => value.clone(),
        _ => {
            let value = HeaderValue::from(n);
            *last = Some((n, value.clone()));
            value
        }
    })
}

/// Maps at most this long are searched entry by entry: cheaper than hashing a name.
const SCANNED_MAP_LEN: usize = 8;

/// The `X-RateLimit-Remaining` an inner layer wrote, if any.
fn legacy_remaining(headers: &HeaderMap) -> Option<&HeaderValue> {
    if headers.len() <= SCANNED_MAP_LEN {
        headers
            .iter()
            .find_map(|(name, value)| (*name == X_RATELIMIT_REMAINING).then_some(value))
    } else {
        headers.get(&X_RATELIMIT_REMAINING)
    }
}

/// Bytes [`Values`] holds: a `RateLimit` item with a policy identifier of up to 90 bytes (its
/// numbers take 46 at most), and room left for the legacy numbers written per response.
const VALUES_CAPACITY: usize = 176;

/// Bytes the legacy numbers written per response take at most (20 digits each): the
/// remaining requests, and a limit that is not its window's.
const NUMBERS_ROOM: usize = 40;

/// The header values of one response, side by side; the values are slices of it.
struct Values {
    bytes: [u8; VALUES_CAPACITY],
    len: usize,
}

impl AsRef<[u8]> for Values {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Values {
    fn new() -> Self {
        Self {
            bytes: [0; VALUES_CAPACITY],
            len: 0,
        }
    }

    /// Appends `parts`, one after the other, and returns where they are; `None`, and nothing
    /// appended, when they do not fit.
    fn push(&mut self, parts: &[&[u8]]) -> Option<Range<usize>> {
        let start = self.len;
        let end = start + parts.iter().map(|part| part.len()).sum::<usize>();
        let mut room = self.bytes.get_mut(start..end)?;
        for part in parts {
            let (this, rest) = room.split_at_mut(part.len());
            this.copy_from_slice(part);
            room = rest;
        }
        self.len = end;
        Some(start..end)
    }

    /// `n`. Two numbers always fit: an item leaves them [`NUMBERS_ROOM`].
    fn push_number(&mut self, n: u64) -> Range<usize> {
        let start = self.len;
        self.push(&[itoa::Buffer::new().format(n).as_bytes()])
            .unwrap_or(start..start)
    }

    /// The `RateLimit` item of the window `id`: `"hello-1m";r=0;t=17`; written on its own when
    /// `id` is too long to share the buffer.
    fn push_item(
        &mut self,
        id: &str,
        remaining: u64,
        reset: u64,
    ) -> Option<Result<Range<usize>, HeaderValue>> {
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let parts: [&[u8]; 5] = [
            id.as_bytes(),
            b";r=",
            r.format(remaining).as_bytes(),
            b";t=",
            t.format(reset).as_bytes(),
        ];
        let len: usize = parts.iter().map(|part| part.len()).sum();
        let inline = (self.len + len + NUMBERS_ROOM <= VALUES_CAPACITY)
            .then(|| self.push(&parts))
            .flatten();
        match inline {
            Some(range) => Some(Ok(range)),
            None => HeaderValue::from_maybe_shared(Bytes::from(parts.concat()))
                .ok()
                .map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH_DELTA: HeaderSettings = HeaderSettings {
        families: HeaderFamilies {
            ietf: true,
            legacy: true,
        },
        legacy_reset: LegacyReset::DeltaSeconds,
    };

    fn written(name: &str) -> HeaderMap {
        let policy = Policy::new(name, [Window::per_minute(10)]);
        let fields = PolicyFields::new(&policy);
        let decision = Decision::fallback_open(&policy);
        let mut headers = HeaderMap::new();
        write(&mut headers, BOTH_DELTA, &fields, &decision, 17);
        headers
    }

    #[test]
    fn the_limit_is_written_once_for_its_window_and_anew_for_another() {
        let policy = Policy::new("hello", [Window::per_minute(10)]).with_cost(2);
        let fields = PolicyFields::new(&policy);
        let other = Policy::new("hello", [Window::per_minute(7)]);
        for (decision, limit) in [
            (Decision::fallback_open(&policy), "5"),
            (Decision::fallback_open(&other), "3"),
        ] {
            let mut headers = HeaderMap::new();
            write(&mut headers, BOTH_DELTA, &fields, &decision, 17);
            assert_eq!(headers[&X_RATELIMIT_LIMIT], limit);
        }
    }

    #[test]
    fn every_response_carries_its_own_reset_number() {
        let policy = Policy::new("hello", [Window::per_minute(10)]);
        let fields = PolicyFields::new(&policy);
        let decision = Decision::fallback_open(&policy);
        for reset in [17, 17, 18, 17, 0, u64::MAX] {
            let mut headers = HeaderMap::new();
            write(&mut headers, BOTH_DELTA, &fields, &decision, reset);
            assert_eq!(headers[&X_RATELIMIT_RESET], reset.to_string().as_str());
        }
        let epoch = HeaderSettings {
            legacy_reset: LegacyReset::EpochSeconds,
            ..BOTH_DELTA
        };
        for reset in [17, 18, 17] {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970");
            let mut headers = HeaderMap::new();
            write(&mut headers, epoch, &fields, &decision, reset);
            let written = headers[&X_RATELIMIT_RESET].to_str().ok();
            let written: u64 = written.and_then(|w| w.parse().ok()).expect("a number");
            let later = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970");
            assert!(written >= now.as_secs() + reset, "{written} {now:?}");
            assert!(written <= ceil_secs(later) + reset, "{written} {later:?}");
        }
    }

    #[test]
    fn an_inner_layers_legacy_headers_stay_when_they_leave_fewer_in_maps_of_any_size() {
        let policy = Policy::new("hello", [Window::per_minute(10)]);
        let fields = PolicyFields::new(&policy);
        let decision = Decision::fallback_open(&policy);
        for others in [0, SCANNED_MAP_LEN, SCANNED_MAP_LEN + 1, 20] {
            for (inner, kept) in [("3", true), ("30", false), ("not a number", false)] {
                let mut headers = HeaderMap::new();
                for i in 0..others {
                    headers.insert(
                        HeaderName::from_bytes(format!("x-other-{i}").as_bytes())
                            .expect("a valid name"),
                        HeaderValue::from_static("1"),
                    );
                }
                headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from_static("4"));
                headers.insert(
                    X_RATELIMIT_REMAINING.clone(),
                    HeaderValue::from_static(inner),
                );
                write(&mut headers, BOTH_DELTA, &fields, &decision, 17);
                let (limit, remaining) = if kept { ("4", inner) } else { ("10", "10") };
                assert_eq!(headers[&X_RATELIMIT_LIMIT], limit, "{others} {inner}");
                assert_eq!(
                    headers[&X_RATELIMIT_REMAINING], remaining,
                    "{others} {inner}"
                );
                assert_eq!(headers.get_all(&X_RATELIMIT_REMAINING).iter().count(), 1);
            }
        }
    }

    #[test]
    fn a_short_and_a_long_policy_name_write_the_same_values() {
        for name in ["hello", &"long".repeat(60)] {
            let headers = written(name);
            let item = format!("\"{name}-1m\";r=10;t=17");
            assert_eq!(headers[&RATELIMIT], item.as_str(), "{name}");
            assert_eq!(headers[&X_RATELIMIT_LIMIT], "10");
            assert_eq!(headers[&X_RATELIMIT_REMAINING], "10");
            assert_eq!(headers[&X_RATELIMIT_RESET], "17");
        }
    }
}
