//! Redis keys and the identities inside them.
//!
//! Every key is `<prefix>{<policy>:<identity>}:<suffix>`: the hash tag puts every key of one
//! decision in one cluster slot, so multi-key scripts never fail with CROSSSLOT. An identity is
//! used as given only when it is short (at most 64 bytes) and plain (printable ASCII other than
//! `{`, `}` and `#`); anything else is replaced by `#` and a SHA-256 prefix, so no client can
//! pick the slot its keys land in, nor make a large key. A plain identity never holds `#`, so
//! none can equal a hashed one (`#<hex>`) or a sub-counter of a spread key (`<identity>#<i>`).

use sha2::{Digest as _, Sha256};

use crate::policy::Policy;

/// The longest identity kept verbatim.
pub const MAX_PLAIN_IDENTITY: usize = 64;

/// Length of a hashed identity: `#` and 32 hex digits (128 bits of SHA-256).
const HASHED_LEN: usize = 33;

/// An identity as it goes into a key: borrowed when plain, hashed in place otherwise.
///
/// Building one never allocates.
///
/// ```
/// use ratelimit_core::Identity;
/// assert_eq!(Identity::new(b"user:42").as_str(), "user:42");
/// let hostile = Identity::new(b"{slot}x");
/// assert!(hostile.as_str().starts_with('#'));
/// assert_eq!(hostile.as_str().len(), 33);
/// // Something that looks like a hash is hashed too: it cannot stand for another identity.
/// let lookalike = Identity::new(hostile.as_str().as_bytes());
/// assert_ne!(lookalike.as_str(), hostile.as_str());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    repr: Repr<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Repr<'a> {
    /// Printable ASCII only (so also UTF-8).
    Plain(&'a [u8]),
    Hashed([u8; HASHED_LEN]),
}

/// Whether `raw` may stand as itself in a key: printable ASCII other than `{`, `}` and `#`.
/// Eight bytes at a time ([`plain_word`]), the last eight overlapping the ones before; shorter
/// identities are read as two overlapping halves, or byte by byte up to three, in one word.
fn is_plain(raw: &[u8]) -> bool {
    /// The eight bytes from `at` (none out of bounds: `0`, which is not plain).
    fn eight(raw: &[u8], at: usize) -> u64 {
        raw.get(at..at + 8)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }
    /// The four bytes from `at`, likewise.
    fn four(raw: &[u8], at: usize) -> u64 {
        raw.get(at..at + 4)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, |bytes| u64::from(u32::from_le_bytes(bytes)))
    }
    let len = raw.len();
    match len {
        8.. => {
            let mut plain = true;
            let mut at = 0;
            while at + 8 < len {
                plain &= plain_word(eight(raw, at));
                at += 8;
            }
            plain & plain_word(eight(raw, len - 8))
        }
        4..8 => plain_word(four(raw, 0) | four(raw, len - 4) << 32),
        1..4 => {
            let byte = |at: usize| u64::from(raw.get(at).copied().unwrap_or(0));
            // The first, middle and last bytes are every byte; the rest is a plain `a`.
            let padding = u64::from_le_bytes([0, 0, 0, b'a', b'a', b'a', b'a', b'a']);
            plain_word(byte(0) | byte(len / 2) << 8 | byte(len - 1) << 16 | padding)
        }
        0 => true,
    }
}

/// Whether each of the eight bytes of `word` is plain (see [`is_plain`]).
///
/// With every byte below 0x80, adding a constant to each byte cannot carry into the next one
/// (at most 0x7F + 0x7F): a byte's high bit after `+ 0x5F` says it is at least `!` (0x21),
/// after `+ 0x01` that it is DEL (0x7F), and after `+ 0x7F` on the byte XOR `c` that it is not
/// `c`.
#[inline]
fn plain_word(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    let not = |c: u8| (word ^ (ONES * u64::from(c))).wrapping_add(ONES * 0x7F);
    let printable = word.wrapping_add(ONES * (0x80 - u64::from(b'!'))) & !word.wrapping_add(ONES);
    let plain = printable & not(b'{') & not(b'}') & not(b'#');
    word & HIGH == 0 && plain & HIGH == HIGH
}

impl<'a> Identity<'a> {
    /// Normalizes raw identity bytes (a header value, an IP, a user id).
    pub fn new(raw: &'a [u8]) -> Self {
        if raw.len() <= MAX_PLAIN_IDENTITY && is_plain(raw) {
            return Self {
                repr: Repr::Plain(raw),
            };
        }
        let digest = Sha256::digest(raw);
        let mut out = [0u8; HASHED_LEN];
        out[0] = b'#';
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, byte) in digest.iter().take((HASHED_LEN - 1) / 2).enumerate() {
            out[1 + 2 * i] = HEX[usize::from(byte >> 4)];
            out[2 + 2 * i] = HEX[usize::from(byte & 0x0f)];
        }
        Self {
            repr: Repr::Hashed(out),
        }
    }

    /// An identity built by the limiter itself (a sub-counter's `<identity>#<i>`), kept as is:
    /// its `#` marks it as one no client can name.
    pub(crate) fn internal(text: &'a str) -> Self {
        Self {
            repr: Repr::Plain(text.as_bytes()),
        }
    }

    /// A short, stable digest of the identity (16 hex digits of SHA-256), for logs and traces,
    /// where the identity itself (an IP, an API key) must not appear.
    ///
    /// ```
    /// use ratelimit_core::Identity;
    /// let digest = Identity::new(b"user:42").digest();
    /// assert_eq!(digest.as_str().len(), 16);
    /// assert!(digest.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    /// ```
    pub fn digest(&self) -> Digest {
        let hash = Sha256::digest(self.as_bytes());
        let mut out = [0u8; 16];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, byte) in hash.iter().take(8).enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        Digest(out)
    }

    /// The identity as it appears in keys.
    pub fn as_str(&self) -> &str {
        // Only printable ASCII is kept plain, and only ASCII hex and '#' are written hashed.
        std::str::from_utf8(self.as_bytes()).unwrap_or("#")
    }

    /// The identity's bytes as they appear in keys (those of [`Self::as_str`]).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            Repr::Plain(bytes) => bytes,
            Repr::Hashed(bytes) => bytes,
        }
    }
}

/// A digest of an identity, printable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 16]);

impl Digest {
    /// The digest as 16 hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Builds the Redis keys of a policy for an identity.
///
/// ```
/// use ratelimit_core::{Identity, KeyBuilder, Policy, Window, Algorithm};
/// let keys = KeyBuilder::new("ratelimit:");
/// let policy = Policy::new("api", [Window::per_minute(10), Window::per_hour(100)])
///     .with_algorithm(Algorithm::TokenBucket);
/// let built = keys.keys(&policy, Identity::new(b"user:1"));
/// assert_eq!(
///     built,
///     ["ratelimit:{api:user:1}:tb:60000000", "ratelimit:{api:user:1}:tb:3600000000"],
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBuilder {
    prefix: String,
}

impl KeyBuilder {
    /// The default prefix.
    pub const DEFAULT_PREFIX: &'static str = "ratelimit:";

    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every key a decision of `policy` for `identity` touches.
    ///
    /// They share the hash-tagged part `<prefix>{<policy>:<identity>}`, so that they are all in
    /// one hash slot of a cluster. A sliding log keeps all windows in one sorted set (`:sw`); the other algorithms keep one
    /// value a window, suffixed by the window's length in microseconds, the unit the scripts
    /// and the in-memory backend count in (so `1ms` and `1500us` windows never share a key).
    /// The sliding counter keeps two a window, the counts of its even and its odd fixed
    /// windows: `…:sc:<µs>` and `…:sc:<µs>:1`.
    pub fn keys(&self, policy: &Policy, identity: Identity<'_>) -> Vec<String> {
        let mut keys = Vec::new();
        self.write_keys(policy, identity, |pieces| {
            keys.push(String::from_utf8_lossy(&pieces.concat()).into_owned());
        });
        keys
    }

    /// Hands the keys of [`Self::keys`] to `out` one by one, each as the pieces it is made of,
    /// to be written where the caller wants them: no key is assembled on its own.
    pub(crate) fn write_keys(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        mut out: impl FnMut(&[&[u8]]),
    ) {
        let (prefix, name, id) = (&self.prefix, policy.name(), identity.as_bytes());
        let tag = policy.algorithm().key_tag();
        // The pieces one by one, not through `write!`: on the Redis path this runs once a
        // decision, and the formatting machinery cost more than the rest of the command.
        let mut write = |window: Option<u64>, odd: bool| {
            let mut digits = itoa::Buffer::new();
            let suffix: &[u8] = match window {
                None => b"",
                Some(us) => digits.format(us).as_bytes(),
            };
            out(&[
                prefix.as_bytes(),
                b"{",
                name.as_bytes(),
                b":",
                id,
                b"}:",
                tag.as_bytes(),
                if window.is_some() { b":" } else { b"" },
                suffix,
                if odd { b":1" } else { b"" },
            ]);
        };
        match policy.algorithm() {
            crate::policy::Algorithm::SlidingWindow => write(None, false),
            crate::policy::Algorithm::SlidingCounter => {
                for window in policy.windows() {
                    write(Some(window.micros()), false);
                    write(Some(window.micros()), true);
                }
            }
            _ => {
                for window in policy.windows() {
                    write(Some(window.micros()), false);
                }
            }
        }
    }
}

impl Default for KeyBuilder {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}

/// The longest local key: policy name (≤ 64), separator, tag, separator, identity (≤ 64).
pub(crate) const MAX_KEY: usize = 64 + 1 + 2 + 1 + MAX_PLAIN_IDENTITY;

/// `<policy>\0<tag>\0<identity>` in `buffer`; never longer than [`MAX_KEY`].
pub(crate) fn store_key<'b>(
    buffer: &'b mut [u8; MAX_KEY],
    policy: &Policy,
    identity: Identity<'_>,
) -> &'b [u8] {
    let parts: [&[u8]; 5] = [
        policy.name().as_bytes(),
        b"\0",
        policy.algorithm().key_tag().as_bytes(),
        b"\0",
        identity.as_bytes(),
    ];
    let mut len = 0;
    for part in parts {
        let take = part.len().min(MAX_KEY - len);
        buffer[len..len + take].copy_from_slice(&part[..take]);
        len += take;
    }
    &buffer[..len]
}

/// Checks a key prefix: printable ASCII without braces, so it cannot open a hash tag.
pub(crate) fn is_valid_prefix(prefix: &str) -> bool {
    prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::{Algorithm, Window};

    /// [`is_plain`]'s rule, byte by byte.
    fn plain_by_bytes(raw: &[u8]) -> bool {
        raw.iter()
            .all(|&b| (b'!'..=b'~').contains(&b) && !matches!(b, b'{' | b'}' | b'#'))
    }

    #[test]
    fn every_byte_value_at_every_place_is_judged_as_the_rule_says() {
        for len in 1..=17 {
            for place in 0..len {
                for byte in 0..=u8::MAX {
                    let mut raw = vec![b'k'; len];
                    raw[place] = byte;
                    assert_eq!(
                        is_plain(&raw),
                        plain_by_bytes(&raw),
                        "byte {byte:#04x} at {place} of {len}"
                    );
                }
            }
        }
        assert!(is_plain(b""));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_judged_as_the_rule_says(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            proptest::prop_assert_eq!(is_plain(&raw), plain_by_bytes(&raw));
        }

        #[test]
        fn printable_bytes_are_judged_as_the_rule_says(raw in "[ -~]{0,40}") {
            proptest::prop_assert_eq!(is_plain(raw.as_bytes()), plain_by_bytes(raw.as_bytes()));
        }
    }

    #[test]
    fn keys_are_written_as_their_format_spells_them() {
        let identities: [&[u8]; 4] = [b"user:1", b"10.0.0.1", &[b'a'; 64], b"{hostile}\x01"];
        let prefixes = ["ratelimit:".to_owned(), String::new(), "p".repeat(300)];
        let algorithms = [
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
            Algorithm::FixedWindow,
            Algorithm::SlidingCounter,
        ];
        let windows = [
            Window::per_minute(10),
            Window::new(5, Duration::from_micros(1500)),
            Window::new(1, Duration::from_secs(u64::from(u32::MAX))),
        ];
        for prefix in &prefixes {
            let keys = KeyBuilder::new(prefix.as_str());
            for algorithm in algorithms {
                let policy = Policy::new("api", windows).with_algorithm(algorithm);
                for raw in identities {
                    let identity = Identity::new(raw);
                    let (name, id) = (policy.name(), identity.as_str());
                    let tag = algorithm.key_tag();
                    let expected: Vec<String> = match algorithm {
                        Algorithm::SlidingWindow => vec![format!("{prefix}{{{name}:{id}}}:{tag}")],
                        Algorithm::SlidingCounter => windows
                            .iter()
                            .flat_map(|w| {
                                let key = format!("{prefix}{{{name}:{id}}}:{tag}:{}", w.micros());
                                [key.clone(), format!("{key}:1")]
                            })
                            .collect(),
                        _ => windows
                            .iter()
                            .map(|w| format!("{prefix}{{{name}:{id}}}:{tag}:{}", w.micros()))
                            .collect(),
                    };
                    assert_eq!(keys.keys(&policy, identity), expected);
                }
            }
        }
    }
}
