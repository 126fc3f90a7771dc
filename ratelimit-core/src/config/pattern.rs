//! Path patterns of routing rules: their syntax, checked when a configuration is read.
//!
//! A rule's `match.path` is written the way axum 0.8 writes a route (`/api/users/{id}`,
//! `/files/{*rest}`), plus a final `*` for "this prefix and everything under it". The HTTP crate
//! matches requests against the parsed [`PathPattern`]; this module only decides what a
//! pattern means, and refuses the ones that could never mean what their author expects: a rule
//! that silently matches nothing is a rule an attacker walks around.
//!
//! | pattern | matches |
//! | --- | --- |
//! | `/api/users/{id}` | one non-empty segment in place of `{id}` |
//! | `/files/{*rest}` | `/files/` followed by anything non-empty (axum's catch-all) |
//! | `/api/*` | `/api`, `/api/`, and everything under `/api/` |
//! | `/` | the root only |
//!
//! Refused: no leading `/`; an empty segment (`//`); a trailing `/` (in axum `/a/` is a route of
//! its own, not `/a`); a wildcard before the last segment; percent-encoding (requests are
//! matched once each segment is decoded, so a pattern is written decoded); `.` and `..`
//! segments; axum 0.7's `:id` and `*rest`; braces anywhere but around a whole segment; `?`, `#`
//! and control characters.

use std::fmt;
use std::str::FromStr;

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternSegment {
    /// A path segment equal to this text once percent-decoded.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param,
}

/// What a [`PathPattern`] accepts after its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternTail {
    /// Nothing: the path ends with the last segment.
    End,
    /// A final `*`: zero or more further segments (`/api/*` matches `/api` too).
    Any,
    /// A final `{*name}`: a `/` and at least one more character, as axum's catch-all.
    CatchAll,
}

/// A parsed, checked path pattern.
///
/// ```
/// use ratelimit_core::{PathPattern, PatternSegment, PatternTail};
///
/// let pattern: PathPattern = "/api/users/{id}".parse()?;
/// assert_eq!(
///     pattern.segments(),
///     [
///         PatternSegment::Literal("api".into()),
///         PatternSegment::Literal("users".into()),
///         PatternSegment::Param,
///     ]
/// );
/// assert_eq!(pattern.tail(), PatternTail::End);
/// assert_eq!("/files/{*rest}".parse::<PathPattern>()?.tail(), PatternTail::CatchAll);
/// assert!("/api/users/:id".parse::<PathPattern>().is_err());
/// assert!("/api/hello/".parse::<PathPattern>().is_err());
/// # Ok::<(), ratelimit_core::PatternError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<PatternSegment>,
    tail: PatternTail,
}

/// Why a path pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern does not start with `/`.
    #[error("a path pattern starts with `/`")]
    NoLeadingSlash,
    /// `//` somewhere in the pattern.
    #[error("`//` makes an empty segment, which no route has: write a single `/`")]
    EmptySegment,
    /// The pattern ends with `/` (and is not `/`).
    #[error(
        "a trailing `/` is a route of its own in axum (`/a/` is not `/a`): write the path without \
         it, or `/a/*` for everything under `/a`"
    )]
    TrailingSlash,
    /// `*` or `{*name}` before the last segment.
    #[error("`{0}` is only allowed as the last segment")]
    WildcardNotLast(String),
    /// A `%` in the pattern.
    #[error(
        "`{0}` is percent-encoded: requests are matched once each segment is decoded, so write \
         the character itself"
    )]
    PercentEncoded(String),
    /// A `*` inside a segment (`/a*`): not a wildcard, and no route is written so.
    #[error("`{0}`: `*` is a wildcard only as a whole last segment (`/a/*`, or `/a/{{*name}}`)")]
    StarInSegment(String),
    /// A `.` or `..` segment.
    #[error("`{0}` segments are not routed as written: write the path they stand for")]
    DotSegment(String),
    /// axum 0.7's `:name` or `*name`.
    #[error(
        "`{0}` is axum 0.7 syntax: axum 0.8 writes `{{name}}` for one segment and `{{*name}}` for the rest"
    )]
    OldSyntax(String),
    /// A brace that is not part of a whole-segment `{name}` or `{*name}`.
    #[error("`{0}`: braces only go around a whole segment, as `{{name}}` or `{{*name}}`")]
    Brace(String),
    /// `?`, `#` or a control character.
    #[error("`{0}`: a path pattern holds no query (`?`), fragment (`#`) or control character")]
    Character(String),
}

/// Parses and checks a pattern.
impl FromStr for PathPattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, PatternError> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(PatternError::NoLeadingSlash);
        };
        if let Some(bad) = text
            .chars()
            .find(|&c| c == '?' || c == '#' || c.is_control())
        {
            return Err(PatternError::Character(bad.escape_default().to_string()));
        }
        if rest.is_empty() {
            return Ok(Self {
                segments: Vec::new(),
                tail: PatternTail::End,
            });
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        let mut tail = PatternTail::End;
        for (index, part) in parts.iter().copied().enumerate() {
            if part.is_empty() {
                return Err(if index == last {
                    PatternError::TrailingSlash
                } else {
                    PatternError::EmptySegment
                });
            }
            let wildcard = match part {
                "*" => Some(PatternTail::Any),
                _ if part.starts_with("{*") => Some(PatternTail::CatchAll),
                _ => None,
            };
            if let Some(kind) = wildcard {
                if index != last {
                    return Err(PatternError::WildcardNotLast(part.to_owned()));
                }
                if kind == PatternTail::CatchAll && !is_param(part, true) {
                    return Err(PatternError::Brace(part.to_owned()));
                }
                tail = kind;
                continue;
            }
            segments.push(segment(part)?);
        }
        Ok(Self { segments, tail })
    }
}

impl PathPattern {
    /// The segments before the tail.
    pub fn segments(&self) -> &[PatternSegment] {
        &self.segments
    }

    /// What follows the segments.
    pub fn tail(&self) -> PatternTail {
        self.tail
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() && self.tail == PatternTail::End {
            return f.write_str("/");
        }
        for segment in &self.segments {
            match segment {
                PatternSegment::Literal(text) => write!(f, "/{text}")?,
                PatternSegment::Param => f.write_str("/{param}")?,
            }
        }
        match self.tail {
            PatternTail::End => Ok(()),
            PatternTail::Any => f.write_str("/*"),
            PatternTail::CatchAll => f.write_str("/{*rest}"),
        }
    }
}

/// One segment that is neither empty nor a wildcard.
fn segment(part: &str) -> Result<PatternSegment, PatternError> {
    if part.starts_with('{') || part.ends_with('}') {
        return if is_param(part, false) {
            Ok(PatternSegment::Param)
        } else {
            Err(PatternError::Brace(part.to_owned()))
        };
    }
    if part.contains(['{', '}']) {
        return Err(PatternError::Brace(part.to_owned()));
    }
    if part.starts_with(':') || part.starts_with('*') {
        return Err(PatternError::OldSyntax(part.to_owned()));
    }
    if part.contains('*') {
        return Err(PatternError::StarInSegment(part.to_owned()));
    }
    if part.contains('%') {
        return Err(PatternError::PercentEncoded(part.to_owned()));
    }
    if part == "." || part == ".." {
        return Err(PatternError::DotSegment(part.to_owned()));
    }
    Ok(PatternSegment::Literal(part.to_owned()))
}

/// `{name}` (or `{*name}` when `catch_all`), with a non-empty name free of braces and `*`.
fn is_param(part: &str, catch_all: bool) -> bool {
    let open = if catch_all { "{*" } else { "{" };
    part.strip_prefix(open)
        .and_then(|inner| inner.strip_suffix('}'))
        .is_some_and(|name| !name.is_empty() && !name.contains(['{', '}', '*']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(text: &str) -> PatternSegment {
        PatternSegment::Literal(text.to_owned())
    }

    #[test]
    fn accepted_patterns() {
        let table: &[(&str, &[PatternSegment], PatternTail)] = &[
            ("/", &[], PatternTail::End),
            ("/*", &[], PatternTail::Any),
            ("/{*rest}", &[], PatternTail::CatchAll),
            ("/health", &[literal("health")], PatternTail::End),
            (
                "/api/users/{id}",
                &[literal("api"), literal("users"), PatternSegment::Param],
                PatternTail::End,
            ),
            ("/api/*", &[literal("api")], PatternTail::Any),
            ("/files/{*path}", &[literal("files")], PatternTail::CatchAll),
            (
                "/a b/café",
                &[literal("a b"), literal("café")],
                PatternTail::End,
            ),
            (
                "/v1.2/x;y",
                &[literal("v1.2"), literal("x;y")],
                PatternTail::End,
            ),
        ];
        for &(text, segments, tail) in table {
            let pattern = text
                .parse::<PathPattern>()
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(pattern.segments(), segments, "{text}");
            assert_eq!(pattern.tail(), tail, "{text}");
        }
    }

    #[test]
    fn refused_patterns() {
        use PatternError as E;
        let table: &[(&str, PatternError)] = &[
            ("", E::NoLeadingSlash),
            ("api/hello", E::NoLeadingSlash),
            ("/api//hello", E::EmptySegment),
            ("//api", E::EmptySegment),
            ("/api/hello/", E::TrailingSlash),
            ("/api/*/x", E::WildcardNotLast("*".into())),
            ("/files/{*rest}/x", E::WildcardNotLast("{*rest}".into())),
            ("/a*", E::StarInSegment("a*".into())),
            ("/users/%6De", E::PercentEncoded("%6De".into())),
            ("/a%2Fb", E::PercentEncoded("a%2Fb".into())),
            ("/api/../admin", E::DotSegment("..".into())),
            ("/./x", E::DotSegment(".".into())),
            ("/users/:id", E::OldSyntax(":id".into())),
            ("/files/*rest", E::OldSyntax("*rest".into())),
            ("/users/{}", E::Brace("{}".into())),
            ("/users/{id", E::Brace("{id".into())),
            ("/users/id}", E::Brace("id}".into())),
            ("/users/{id}.json", E::Brace("{id}.json".into())),
            ("/users/x{id}", E::Brace("x{id}".into())),
            ("/files/{*}", E::Brace("{*}".into())),
            ("/a/{{x}}", E::Brace("{{x}}".into())),
            ("/api?x=1", E::Character("?".into())),
            ("/api#x", E::Character("#".into())),
            ("/api\n", E::Character("\\n".into())),
        ];
        for (text, expected) in table {
            assert_eq!(
                text.parse::<PathPattern>().as_ref(),
                Err(expected),
                "{text:?}"
            );
        }
    }

    #[test]
    fn displays_as_written_up_to_parameter_names() {
        for (text, shown) in [
            ("/", "/"),
            ("/*", "/*"),
            ("/users/{id}/posts", "/users/{param}/posts"),
            ("/files/{*path}", "/files/{*rest}"),
        ] {
            let pattern = text.parse::<PathPattern>().expect("valid");
            assert_eq!(pattern.to_string(), shown);
        }
    }

    #[test]
    fn errors_explain_themselves() {
        let message = |text: &str| text.parse::<PathPattern>().expect_err(text).to_string();
        assert!(message("/users/:id").contains("{name}"));
        assert!(message("/x/").contains("trailing"));
        assert!(message("/users/%6De").contains("decoded"));
    }
}
