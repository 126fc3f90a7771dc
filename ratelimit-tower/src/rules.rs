//! Routing rules: which policy, and which key, applies to a request.
//!
//! [`RuleSet`] is the [`Planner`] built from a configuration's `rules`. It needs no framework:
//! a plain hyper or tower stack applies the same rules as an axum app
//! ([`RateLimitLayer::from_limiter`](crate::RateLimitLayer::from_limiter) plans with it when the
//! configuration has rules). Patterns, methods and headers are compiled once, when the set is
//! built; planning a request walks the rules in order without allocating, and the first rule
//! that matches decides. A request that no rule matches gets the top-level policy, under the
//! rule name `default`.
//!
//! # A rule governs what the router sends to the handler it names
//!
//! A rule is only as good as its agreement with the router: a spelling of a path that reaches a
//! handler without matching its rule is a way around the limit. So matching follows what
//! routers do (axum's in particular), spelling by spelling:
//!
//! | request | router | rule `path: /api/users/me`, `methods: [GET]` |
//! | --- | --- | --- |
//! | `HEAD /api/users/me` | runs the `GET` handler | matches: `GET` covers `HEAD` |
//! | `GET /api/users/%6De`, `/api/users/%6de` | `/api/users/{id}` with `id = "me"` (decoded) | matches: segments are compared percent-decoded |
//! | `GET /api/users%2Fme` | one segment `users/me` once decoded | no match (a `%2F` stays inside its segment, as in the router) |
//! | `GET /api/users/me/`, `/api//users/me` | no route (`/a/` is not `/a`; no empty segments) | no match |
//! | `GET /api/users/me;x=1` | `me;x=1` is another segment | no match |
//! | `GET /api/x/%2e%2e/users/me` | `..` is a segment like any other; not resolved | no match |
//!
//! Patterns that could never match what their author means (`//`, a trailing `/`, `%`,
//! `.`/`..`, axum 0.7's `:id`) are refused when the configuration is read, with the file, line
//! and field (see [`PathPattern`]).
//!
//! A limit is applied generously and an exemption sparingly, because an extra limit costs a
//! client some quota while an extra exemption is a way around every limit. So an `exempt` rule
//! compares literal segments byte for byte, as the router does (`/%68ealth` is not exempt even
//! if a catch-all handler decodes it to `/health`), never matches a path with a `.` or `..`
//! segment (a proxy or file server behind a catch-all could resolve it to another path), and,
//! where the router's matched route is known, applies only to the routes the rule names (an
//! exempt `/health` does not exempt a request the router sent to `/{*page}`).
//!
//! | pattern | matches | does not match |
//! | --- | --- | --- |
//! | `/health` | `/health` | `/health/`, `/healthz`, `/health/x` |
//! | `/users/{id}` | `/users/7`, `/users/%37` | `/users`, `/users/`, `/users/7/posts` |
//! | `/files/{*rest}` | `/files/a`, `/files/a/b`, `/files//` | `/files`, `/files/` |
//! | `/api/*` | `/api`, `/api/`, `/api/x/y` | `/apix` |
//! | `/` | `/` | `/x` |
//!
//! - a literal segment matches a path segment equal to it once percent-decoded
//!   (case-sensitively);
//! - `{name}` matches exactly one non-empty segment;
//! - a final `{*name}` matches the rest of the path when it is not empty, as axum's catch-all;
//! - a final `*` matches zero or more remaining segments.
//!
//! Methods are compared exactly, except that a rule for `GET` also governs `HEAD` (which axum
//! and most routers answer with the `GET` handler). An empty list matches any method. Each
//! listed header must be present with exactly the given value (for a repeated header, any of
//! its values).
//!
//! # The path a rule sees
//!
//! By default the request's URI path. Two lookups, set by framework integrations, refine it:
//!
//! - [`with_original_path`](RuleSet::with_original_path): where a router rewrites the URI for a
//!   nested router, the path as the client sent it, so rules are written against public paths
//!   whichever router the layer sits on (ratelimit-axum reads axum's `OriginalUri`).
//! - [`with_matched_route`](RuleSet::with_matched_route): the route template the router
//!   matched, when the layer runs after routing (ratelimit-axum reads axum's `MatchedPath`).
//!   A rule whose pattern is that template (parameter names aside), or a prefix of it with a
//!   final `*`, then matches whatever the path looks like: the router's word is final. The
//!   path is matched as well, so a rule for a literal path inside a parameter route
//!   (`/api/users/me` inside `/api/users/{id}`) keeps working, and a layer that runs before
//!   routing (no template yet) decides by the path alone.
//!
//! Paths are not normalized beyond decoding each segment: `.`/`..` are not resolved and `//`
//! is not merged, as axum's router does neither. A stack whose router is more lenient (it
//! ignores trailing slashes, merges slashes, or resolves dot segments) should normalize the
//! path before this layer, so that the rules see what the router sees.

use std::sync::Arc;

use http::{Extensions, HeaderName, Method};
use ratelimit_core::Config;
use ratelimit_core::{
    AllowList, KeySource, MissingKey, PathPattern, PatternSegment, PatternTail, Rule, RuleMatch,
};

use crate::extract::{ClientIp, KeyExtractor, RequestInfo, from_source};
use crate::plan::{Exemptions, Plan, Planner, Target};

/// The rule name of the top-level policy, for requests that no rule matches.
const DEFAULT_RULE: &str = "default";

/// Finds a path in a request's extensions: the original path of a rewritten request, or the
/// route template a router matched. See [`RuleSet::with_original_path`] and
/// [`RuleSet::with_matched_route`].
pub type PathLookup = for<'a> fn(&'a Extensions) -> Option<&'a str>;

/// A configuration's routing rules, as a [`Planner`].
///
/// For each request, in order: a client IP on the allow-list is exempt; the first matching rule
/// decides (exempt, or its policy and key source); a request matching no rule gets the
/// top-level policy and key source; a key on the allow-list is exempt; a request whose key
/// cannot be found is handled as `on_missing_key` says. Without rules, this is exactly the
/// configuration's single policy.
///
/// Client IPs, for `ip` keys and for the allow-list alike, are found as the single policy finds
/// them ([`ClientIp::from_config`]): from the one `client_ip_header`, only when the peer is a
/// trusted proxy, and IPv6 keys cut to `ipv6_prefix` bits.
///
/// ```
/// use ratelimit_core::Config;
/// use ratelimit_core::Overrides;
/// use ratelimit_tower::{PeerAddr, Plan, Planner, RequestInfo, RuleSet};
///
/// let config = Config::from_yaml_str_with(
///     r#"
/// rate_limiter:
///   windows: [{ max_requests: 100, duration: 1m }]
///   rules:
///     - name: health
///       match: { path: /health }
///       exempt: true
///     - name: users
///       match: { path: "/users/{id}", methods: [GET] }
///       windows: [{ max_requests: 5, duration: 1m }]
/// "#,
///     None,
///     &Overrides::default(),
/// )?;
/// let rules = RuleSet::from_config(&config);
/// assert_eq!(rules.rule_names(), ["health", "users"]);
///
/// // `HEAD /users/%37` is served by the `GET /users/{id}` handler: the `users` rule applies.
/// let request = http::Request::head("/users/%37").body(())?;
/// let plan = rules.plan(&RequestInfo::new(&request, Some("192.0.2.1:4000".parse()?)));
/// assert!(matches!(plan, Plan::Limit { target, .. } if target.rule() == Some("users")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Arc<[CompiledRule]>,
    default_target: Arc<Target>,
    default_key: Arc<dyn KeyExtractor>,
    on_missing_key: MissingKey,
    /// Allow-listed client IPs, checked before any rule.
    exempt_ips: Exemptions,
    /// Allow-listed keys, checked against the key the request would be limited by.
    exempt_keys: Exemptions,
    has_exempt_keys: bool,
    original_path: Option<PathLookup>,
    matched_route: Option<PathLookup>,
}

impl RuleSet {
    /// The rules, policies, key sources and allow-list of `config` (already validated, as every
    /// [`Config`] a limiter holds is).
    pub fn from_config(config: &Config) -> Self {
        let http = config.http();
        let client_ip = ClientIp::from_config(http);
        let default_key = from_source(&http.default_key(), &client_ip);
        let rules = http
            .rules
            .iter()
            .map(|rule| CompiledRule::new(rule, &default_key, &client_ip))
            .collect();
        let exempt_ips = Exemptions::new(
            AllowList {
                ips: http.allow_list.ips.clone(),
                keys: Vec::new(),
            },
            client_ip,
        );
        let exempt_keys = Exemptions::new(
            AllowList {
                ips: Vec::new(),
                keys: http.allow_list.keys.clone(),
            },
            ClientIp::default(),
        );
        Self {
            rules,
            default_target: Arc::new(Target::new(
                config.policy().clone(),
                Some(Arc::from(DEFAULT_RULE)),
                false,
            )),
            default_key,
            on_missing_key: http.on_missing_key,
            exempt_ips,
            exempt_keys,
            has_exempt_keys: !http.allow_list.keys.is_empty(),
            original_path: None,
            matched_route: None,
        }
    }

    /// Matches paths against what `lookup` finds in a request's extensions (the path as the
    /// client sent it, before a router rewrote the URI), or the URI's path when it finds
    /// nothing.
    ///
    /// ```
    /// use ratelimit_core::Config;
    /// use ratelimit_tower::RuleSet;
    ///
    /// /// Left by an outer router that strips prefixes.
    /// #[derive(Clone)]
    /// struct Original(String);
    ///
    /// let rules = RuleSet::from_config(&Config::new(10, std::time::Duration::from_secs(60)))
    ///     .with_original_path(|extensions| extensions.get::<Original>().map(|o| o.0.as_str()));
    /// # drop(rules);
    /// ```
    pub fn with_original_path(mut self, lookup: PathLookup) -> Self {
        self.original_path = Some(lookup);
        self
    }

    /// Also matches rules against the route template the router matched, as `lookup` finds it
    /// in a request's extensions (such as axum's `MatchedPath`): a rule whose pattern is that
    /// template, parameter names aside, or a prefix of it followed by `*`, matches.
    ///
    /// ```
    /// use ratelimit_core::Config;
    /// use ratelimit_tower::RuleSet;
    ///
    /// /// Left by a router after it matched a route.
    /// #[derive(Clone)]
    /// struct Route(&'static str);
    ///
    /// let rules = RuleSet::from_config(&Config::new(10, std::time::Duration::from_secs(60)))
    ///     .with_matched_route(|extensions| extensions.get::<Route>().map(|r| r.0));
    /// # drop(rules);
    /// ```
    pub fn with_matched_route(mut self, lookup: PathLookup) -> Self {
        self.matched_route = Some(lookup);
        self
    }

    /// The names of the configured rules, in order of precedence (the top-level policy's
    /// `default` is not among them).
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|rule| &*rule.name).collect()
    }

    /// The first rule matching `request`.
    fn find(&self, request: &RequestInfo<'_>) -> Option<&CompiledRule> {
        let path = self
            .original_path
            .and_then(|lookup| lookup(request.extensions))
            .unwrap_or_else(|| request.uri.path());
        let route = self
            .matched_route
            .and_then(|lookup| lookup(request.extensions));
        self.rules
            .iter()
            .find(|rule| rule.matches(request, path, route))
    }
}

impl Planner for RuleSet {
    fn plan(&self, request: &RequestInfo<'_>) -> Plan {
        if self.exempt_ips.exempts(request, None) {
            return Plan::Exempt;
        }
        let (target, extractor) = match self.find(request) {
            Some(CompiledRule {
                action: Action::Exempt,
                ..
            }) => return Plan::Exempt,
            Some(CompiledRule {
                action: Action::Limit { target, key },
                ..
            }) => (target, key),
            None => (&self.default_target, &self.default_key),
        };
        let Some(key) = extractor.extract(request) else {
            return Plan::NoKey(self.on_missing_key);
        };
        if self.has_exempt_keys && self.exempt_keys.exempts(request, Some(&key)) {
            return Plan::Exempt;
        }
        Plan::Limit {
            target: target.clone(),
            key,
        }
    }
}

/// One rule, ready to match.
#[derive(Debug)]
struct CompiledRule {
    name: Arc<str>,
    path: Option<CompiledPath>,
    methods: Box<[Method]>,
    /// `GET` is listed: `HEAD`, served by the `GET` handler, is governed too.
    covers_head: bool,
    headers: Box<[HeaderMatch]>,
    /// A pattern, method or header name that cannot occur in a request: the rule matches
    /// nothing. (All three are checked when the configuration is read; this is for a
    /// configuration built in code.)
    never: bool,
    action: Action,
}

#[derive(Debug)]
enum Action {
    Exempt,
    Limit {
        target: Arc<Target>,
        key: Arc<dyn KeyExtractor>,
    },
}

/// A header that must be present with exactly this value.
#[derive(Debug)]
struct HeaderMatch {
    name: HeaderName,
    value: Box<[u8]>,
}

impl CompiledRule {
    fn new(rule: &Rule, default_key: &Arc<dyn KeyExtractor>, client_ip: &ClientIp) -> Self {
        let name: Arc<str> = Arc::from(rule.name.as_str());
        let RuleMatch {
            path,
            methods,
            headers,
        } = &rule.matches;
        let action = match &rule.policy {
            None => Action::Exempt,
            Some(policy) => Action::Limit {
                target: Arc::new(Target::new(policy.clone(), Some(name.clone()), rule.shadow)),
                key: rule.key.as_ref().map_or_else(
                    || default_key.clone(),
                    |source: &KeySource| from_source(source, client_ip),
                ),
            },
        };
        let parsed_path = path.as_deref().map(str::parse::<PathPattern>);
        let parsed_methods: Box<[Method]> = methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let parsed_headers: Box<[HeaderMatch]> = headers
            .iter()
            .filter_map(|(name, value)| {
                Some(HeaderMatch {
                    name: HeaderName::from_bytes(name.as_bytes()).ok()?,
                    value: value.as_bytes().into(),
                })
            })
            .collect();
        Self {
            never: parsed_methods.len() != methods.len()
                || parsed_headers.len() != headers.len()
                || matches!(parsed_path, Some(Err(_))),
            path: parsed_path.and_then(Result::ok).map(CompiledPath::new),
            covers_head: parsed_methods.contains(&Method::GET),
            methods: parsed_methods,
            headers: parsed_headers,
            name,
            action,
        }
    }

    fn matches(&self, request: &RequestInfo<'_>, path: &str, route: Option<&str>) -> bool {
        if self.never {
            return false;
        }
        let method = request.method;
        let method_fits = self.methods.is_empty()
            || self.methods.contains(method)
            || (self.covers_head && method == Method::HEAD);
        if !method_fits {
            return false;
        }
        let headers_match = self.headers.iter().all(|header| {
            request
                .headers
                .get_all(&header.name)
                .iter()
                .any(|v| v.as_bytes() == &*header.value)
        });
        if !headers_match {
            return false;
        }
        let Some(pattern) = &self.path else {
            return true;
        };
        match self.action {
            // A limit is applied generously: every spelling a handler would decode alike, and
            // every request the router sent to the route the rule names.
            Action::Limit { .. } => {
                pattern.matches(path, Spelling::Decoded)
                    || route.is_some_and(|route| pattern.covers_route(route))
            }
            // An exemption is granted sparingly: never by spelling a path differently from how
            // the router compares it, never to a path with dot segments (which a proxy or file
            // server behind the handler may resolve elsewhere), and, where the router's route
            // is known, only to the routes the rule names.
            Action::Exempt => {
                pattern.matches(path, Spelling::AsSent)
                    && !has_dot_segment(path)
                    && route.is_none_or(|route| pattern.exempts_route(route, path))
            }
        }
    }
}

/// How literal segments are compared with a request path's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// Percent-decoded, as a handler sees them.
    Decoded,
    /// Byte for byte, as the router compares them.
    AsSent,
}

/// A path pattern, ready to match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CompiledPath {
    segments: Box<[Segment]>,
    tail: PatternTail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<[u8]>),
    Param,
}

impl CompiledPath {
    fn new(pattern: PathPattern) -> Self {
        Self {
            segments: pattern
                .segments()
                .iter()
                .map(|segment| match segment {
                    PatternSegment::Literal(text) => Segment::Literal(text.as_bytes().into()),
                    PatternSegment::Param => Segment::Param,
                })
                .collect(),
            tail: pattern.tail(),
        }
    }

    /// Whether the request path `path` (as sent, percent-encoded) matches, literal segments
    /// compared as `spelling` says.
    fn matches(&self, path: &str, spelling: Spelling) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            // `*` (OPTIONS) or an authority (CONNECT): no rule's path.
            return false;
        };
        // What is left after the segments matched so far; `/` alone has no segment.
        let mut remaining = (!rest.is_empty()).then_some(rest);
        for segment in &*self.segments {
            let Some(left) = remaining else {
                return false;
            };
            let (part, next) = match left.split_once('/') {
                Some((part, next)) => (part, Some(next)),
                None => (left, None),
            };
            let fits = match segment {
                Segment::Literal(literal) => match spelling {
                    Spelling::Decoded => decoded_eq(part.as_bytes(), literal),
                    Spelling::AsSent => part.as_bytes() == &**literal,
                },
                Segment::Param => !part.is_empty(),
            };
            if !fits {
                return false;
            }
            remaining = next;
        }
        match self.tail {
            PatternTail::End => remaining.is_none(),
            PatternTail::Any => true,
            PatternTail::CatchAll => remaining.is_some_and(|left| !left.is_empty()),
        }
    }

    /// Whether the route template `route` (axum syntax: `/users/{id}`, `/files/{*rest}`) is
    /// this pattern, parameter names aside, or lies under a final `*`.
    fn covers_route(&self, route: &str) -> bool {
        let Some(rest) = route.strip_prefix('/') else {
            return false;
        };
        let mut parts = (!rest.is_empty())
            .then(|| rest.split('/'))
            .into_iter()
            .flatten();
        for segment in &*self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let fits = match segment {
                Segment::Literal(literal) => part.as_bytes() == &**literal,
                Segment::Param => is_template_param(part) && !part.starts_with("{*"),
            };
            if !fits {
                return false;
            }
        }
        match self.tail {
            PatternTail::End => parts.next().is_none(),
            PatternTail::Any => true,
            PatternTail::CatchAll => {
                parts.next().is_some_and(|part| part.starts_with("{*")) && parts.next().is_none()
            }
        }
    }
}

impl CompiledPath {
    /// Whether the router's route `route`, which matched `path`, lies within this pattern:
    /// where the route has a literal the pattern has the same literal or a parameter; where
    /// the route has a parameter the pattern's literal equals the path's segment as sent;
    /// where the route has a catch-all, the pattern has one too (or a final `*`).
    fn exempts_route(&self, route: &str, path: &str) -> bool {
        let (Some(route), Some(path)) = (route.strip_prefix('/'), path.strip_prefix('/')) else {
            return false;
        };
        let mut route_parts = (!route.is_empty())
            .then(|| route.split('/'))
            .into_iter()
            .flatten();
        let mut path_parts = (!path.is_empty())
            .then(|| path.split('/'))
            .into_iter()
            .flatten();
        for segment in &*self.segments {
            let (Some(part), sent) = (route_parts.next(), path_parts.next()) else {
                return false;
            };
            let fits = match (segment, classify(part)) {
                (_, RoutePart::CatchAll) => false,
                (Segment::Literal(literal), RoutePart::Literal) => part.as_bytes() == &**literal,
                (Segment::Literal(literal), RoutePart::Param) => {
                    sent.is_some_and(|sent| sent.as_bytes() == &**literal)
                }
                (Segment::Param, _) => true,
            };
            if !fits {
                return false;
            }
        }
        match self.tail {
            PatternTail::End => route_parts.next().is_none(),
            PatternTail::Any => true,
            PatternTail::CatchAll => route_parts.next().is_some(),
        }
    }
}

/// What a segment of a route template is.
enum RoutePart {
    Literal,
    Param,
    CatchAll,
}

fn classify(part: &str) -> RoutePart {
    if !is_template_param(part) {
        RoutePart::Literal
    } else if part.starts_with("{*") {
        RoutePart::CatchAll
    } else {
        RoutePart::Param
    }
}

/// Whether a segment of `path` is `.` or `..`, as sent or percent-encoded.
fn has_dot_segment(path: &str) -> bool {
    path.split('/')
        .any(|part| decoded_eq(part.as_bytes(), b".") || decoded_eq(part.as_bytes(), b".."))
}

fn is_template_param(part: &str) -> bool {
    part.len() >= 3 && part.starts_with('{') && part.ends_with('}')
}

/// Whether `raw`, percent-decoded (a `%` not followed by two hex digits is kept as is), is
/// `literal`. Compares as it decodes: nothing is allocated.
fn decoded_eq(raw: &[u8], literal: &[u8]) -> bool {
    if !raw.contains(&b'%') {
        return raw == literal;
    }
    let mut expected = literal.iter();
    let mut i = 0;
    while i < raw.len() {
        let byte = match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                i += 3;
                high << 4 | low
            }
            (byte, _, _) => {
                i += 1;
                byte
            }
        };
        if expected.next() != Some(&byte) {
            return false;
        }
    }
    expected.next().is_none()
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use ratelimit_core::Overrides;

    use super::*;
    use crate::test_support::TestRequest;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str_with(yaml, None, &Overrides::default()).expect("valid config")
    }

    fn compile(pattern: &str) -> CompiledPath {
        CompiledPath::new(pattern.parse::<PathPattern>().expect("valid pattern"))
    }

    /// `method uri` from 192.0.2.1.
    fn request(method: &str, uri: &str) -> TestRequest {
        TestRequest::new(method, uri).peer(Some("192.0.2.1:4000"))
    }

    /// `exempt`, `no-key`, or `rule:key`.
    fn outcome(plan: &Plan) -> String {
        match plan {
            Plan::Exempt => "exempt".into(),
            Plan::NoKey(action) => format!("no-key:{action:?}"),
            Plan::Limit { target, key } => format!(
                "{}:{}",
                target.rule().unwrap_or("?"),
                String::from_utf8_lossy(key)
            ),
        }
    }

    const RULES: &str = r#"
rate_limiter:
  windows: [{ max_requests: 100, duration: 1m }]
  rules:
    - name: health
      match: { path: /health }
      exempt: true
    - name: user-posts
      match: { path: "/users/{id}/posts" }
      windows: [{ max_requests: 5, duration: 1s }]
    - name: users
      match: { path: "/users/*" }
      windows: [{ max_requests: 10, duration: 1s }]
    - name: login
      match: { path: /login, methods: [POST] }
      windows: [{ max_requests: 3, duration: 1m }]
      key: header:x-user
    - name: beta
      match: { headers: { x-beta: "on" } }
      windows: [{ max_requests: 2, duration: 1m }]
      shadow: true
"#;

    #[test]
    fn path_patterns() {
        let table: &[(&str, &str, bool)] = &[
            ("/health", "/health", true),
            ("/health", "/health/", false),
            ("/health", "/health//", false),
            ("/health", "/healthz", false),
            ("/health", "/health/x", false),
            ("/health", "/", false),
            ("/health", "/Health", false),
            ("/health", "/%68ealth", true),
            ("/health", "/%68EALTH", false),
            ("/health", "//health", false),
            ("/health", "/health;x=1", false),
            ("/health", "health", false),
            ("/health", "*", false),
            ("/users/{id}", "/users/7", true),
            ("/users/{id}", "/users/%37", true),
            ("/users/{id}", "/users/7/", false),
            ("/users/{id}", "/users", false),
            ("/users/{id}", "/users/", false),
            ("/users/{id}", "/users//", false),
            ("/users/{id}", "/users/7/posts", false),
            ("/users/{id}", "/users/a%2Fb", true),
            ("/users/{id}", "/users/%2e%2e", true),
            ("/users/me", "/users/me", true),
            ("/users/me", "/users/%6De", true),
            ("/users/me", "/users/%6de", true),
            ("/users/me", "/users/%6D%65", true),
            ("/users/me", "/%75sers/me", true),
            ("/users/me", "/users%2Fme", false),
            ("/users/me", "/users%2fme", false),
            ("/users/me", "/users/m%65/", false),
            ("/users/me", "/users/me%", false),
            ("/users/me", "/users/me%2", false),
            ("/users/me", "/users/%zzme", false),
            ("/users/me", "/users/x/../me", false),
            ("/users/me", "/users/x/%2e%2e/me", false),
            ("/users/{id}/posts/{post}", "/users/7/posts/9", true),
            ("/users/{id}/posts/{post}", "/users/7/posts", false),
            ("/users/{id}/posts/{post}", "/users/7/comments/9", false),
            ("/{a}/{b}", "/x/y", true),
            ("/{a}/{b}", "/x", false),
            ("/api/*", "/api", true),
            ("/api/*", "/api/", true),
            ("/api/*", "/api/x", true),
            ("/api/*", "/api//x", true),
            ("/api/*", "/api/x/y/z", true),
            ("/api/*", "/%61pi/x", true),
            ("/api/*", "/apix", false),
            ("/api/*", "/", false),
            ("/api/{v}/*", "/api/v1/x/y", true),
            ("/api/{v}/*", "/api/v1", true),
            ("/api/{v}/*", "/api", false),
            ("/files/{*rest}", "/files/a", true),
            ("/files/{*rest}", "/files/a/b/c", true),
            ("/files/{*rest}", "/files//", true),
            ("/files/{*rest}", "/files/", false),
            ("/files/{*rest}", "/files", false),
            ("/files/{*rest}", "/filesx/a", false),
            ("/{*rest}", "/", false),
            ("/{*rest}", "/x", true),
            ("/*", "/", true),
            ("/*", "/anything/at/all", true),
            ("/", "/", true),
            ("/", "/x", false),
            ("/", "//", false),
            ("/a b", "/a%20b", true),
            ("/café", "/caf%C3%A9", true),
            ("/café", "/caf%c3%a9", true),
        ];
        for &(pattern, path, expected) in table {
            assert_eq!(
                compile(pattern).matches(path, Spelling::Decoded),
                expected,
                "{pattern} against {path}"
            );
        }
    }

    #[test]
    fn exemptions_are_not_granted_by_spelling() {
        let table: &[(&str, &str, Option<&str>, bool)] = &[
            ("/health", "/health", None, true),
            ("/health", "/health", Some("/health"), true),
            ("/health", "/%68ealth", None, false),
            ("/health", "/health/", None, false),
            // The router sent it to a catch-all, not to the exempt route.
            ("/health", "/health", Some("/{*page}"), false),
            ("/public/*", "/public/x", None, true),
            ("/public/*", "/public/x", Some("/public/{*rest}"), true),
            ("/public/*", "/public/../api/x", None, false),
            ("/public/*", "/public/%2e%2E/api/x", None, false),
            ("/public/*", "/public/./x", None, false),
            ("/public/*", "/public/x", Some("/{*page}"), false),
            ("/users/me", "/users/me", Some("/users/{id}"), true),
            ("/users/me", "/users/%6De", Some("/users/{id}"), false),
            ("/users/{id}", "/users/me", Some("/users/me"), true),
            ("/users/{id}", "/users/7", Some("/users/{id}"), true),
            ("/files/{*rest}", "/files/a/b", Some("/files/{*path}"), true),
            ("/files/{*rest}", "/files/a", Some("/files/{name}"), true),
            ("/files/{*rest}", "/files/a", Some("/{*page}"), false),
            ("/", "/", Some("/"), true),
        ];
        let rules = |pattern: &str| {
            let yaml = format!(
                "rate_limiter:\n  windows: [{{ max_requests: 1, duration: 1m }}]\n  rules:\n    - name: free\n      match: {{ path: \"{pattern}\" }}\n      exempt: true\n"
            );
            RuleSet::from_config(&config(&yaml))
                .with_matched_route(|extensions| extensions.get::<Route>().map(|r| r.0))
        };
        for &(pattern, path, route, exempt) in table {
            let mut request = request("GET", path);
            if let Some(route) = route {
                request = request.extension(Route(Box::leak(route.into())));
            }
            assert_eq!(
                matches!(request.plan(&rules(pattern)), Plan::Exempt),
                exempt,
                "{pattern} against {path} routed to {route:?}"
            );
        }
    }

    #[test]
    fn route_templates() {
        let table: &[(&str, &str, bool)] = &[
            ("/users/{id}", "/users/{id}", true),
            ("/users/{id}", "/users/{user_id}", true),
            ("/users/{id}", "/users/me", false),
            ("/users/me", "/users/{id}", false),
            ("/users/{id}", "/users/{*rest}", false),
            ("/files/{*rest}", "/files/{*path}", true),
            ("/files/{*rest}", "/files/{name}", false),
            ("/files/{*rest}", "/files", false),
            ("/api/*", "/api/users/{id}", true),
            ("/api/*", "/api", true),
            ("/api/*", "/apix/users", false),
            ("/", "/", true),
            ("/", "/x", false),
            ("/*", "/", true),
            ("/health", "/health", true),
            ("/health", "/health/", false),
            ("/health", "health", false),
        ];
        for &(pattern, route, expected) in table {
            assert_eq!(
                compile(pattern).covers_route(route),
                expected,
                "{pattern} against route {route}"
            );
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = RuleSet::from_config(&config(RULES));
        // Both `user-posts` and `users` match; the first listed decides.
        let plan = request("GET", "/users/7/posts").plan(&rules);
        assert_eq!(outcome(&plan), "user-posts:192.0.2.1");
        assert_eq!(
            outcome(&request("GET", "/users/7/likes").plan(&rules)),
            "users:192.0.2.1"
        );
        let Plan::Limit { target, .. } = plan else {
            panic!("limited")
        };
        assert_eq!(target.policy().name(), "user-posts");
        assert_eq!(target.policy().windows()[0].max_requests(), 5);
        assert!(!target.shadow());
    }

    #[test]
    fn methods_restrict_a_rule() {
        let rules = RuleSet::from_config(&config(RULES));
        let post = request("POST", "/login").header("x-user", "ann");
        assert_eq!(outcome(&post.plan(&rules)), "login:ann");
        let get = request("GET", "/login").header("x-user", "ann");
        assert_eq!(outcome(&get.plan(&rules)), "default:192.0.2.1");
    }

    #[test]
    fn a_rule_for_get_governs_head() {
        let rules = RuleSet::from_config(&config(
            r#"
rate_limiter:
  windows: [{ max_requests: 100, duration: 1m }]
  rules:
    - name: hello
      match: { path: /hello, methods: [GET] }
      windows: [{ max_requests: 3, duration: 1m }]
    - name: probe
      match: { path: /probe, methods: [HEAD] }
      windows: [{ max_requests: 3, duration: 1m }]
"#,
        ));
        let plan = |method: &str, path: &str| outcome(&request(method, path).plan(&rules));
        assert_eq!(plan("GET", "/hello"), "hello:192.0.2.1");
        assert_eq!(plan("HEAD", "/hello"), "hello:192.0.2.1");
        for method in [
            "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get", "PURGE",
        ] {
            assert_eq!(plan(method, "/hello"), "default:192.0.2.1", "{method}");
        }
        // HEAD does not stand for GET.
        assert_eq!(plan("HEAD", "/probe"), "probe:192.0.2.1");
        assert_eq!(plan("GET", "/probe"), "default:192.0.2.1");
    }

    #[test]
    fn headers_restrict_a_rule() {
        let rules = RuleSet::from_config(&config(RULES));
        let on = request("GET", "/anything").header("x-beta", "on");
        let plan = on.plan(&rules);
        assert_eq!(outcome(&plan), "beta:192.0.2.1");
        assert!(matches!(plan, Plan::Limit { target, .. } if target.shadow()));
        let off = request("GET", "/anything").header("x-beta", "off");
        assert_eq!(outcome(&off.plan(&rules)), "default:192.0.2.1");
        let absent = request("GET", "/anything");
        assert_eq!(outcome(&absent.plan(&rules)), "default:192.0.2.1");
        let case = request("GET", "/anything").header("x-beta", "ON");
        assert_eq!(outcome(&case.plan(&rules)), "default:192.0.2.1");
    }

    #[test]
    fn exempt_rule() {
        let rules = RuleSet::from_config(&config(RULES));
        assert!(matches!(
            request("GET", "/health").plan(&rules),
            Plan::Exempt
        ));
        // Exempt before any key is looked for.
        assert!(matches!(
            request("GET", "/health").peer(None).plan(&rules),
            Plan::Exempt
        ));
        // Only the exact route: `/health/` is another route, limited by default.
        assert_eq!(
            outcome(&request("GET", "/health/").plan(&rules)),
            "default:192.0.2.1"
        );
    }

    #[test]
    fn unmatched_requests_get_the_default_policy() {
        let config = config(RULES);
        let rules = RuleSet::from_config(&config);
        let Plan::Limit { target, key } = request("DELETE", "/other").plan(&rules) else {
            panic!("limited")
        };
        assert_eq!(target.rule(), Some("default"));
        assert_eq!(target.policy(), config.policy());
        assert_eq!(key, b"192.0.2.1");
    }

    #[test]
    fn without_rules_every_request_gets_the_single_policy() {
        let rules = RuleSet::from_config(&config(
            "rate_limiter:\n  windows: [{ max_requests: 1, duration: 1s }]\n",
        ));
        assert!(rules.rule_names().is_empty());
        for path in ["/", "/health", "/users/7"] {
            assert_eq!(
                outcome(&request("GET", path).plan(&rules)),
                "default:192.0.2.1"
            );
        }
    }

    #[test]
    fn rule_names_in_order() {
        let rules = RuleSet::from_config(&config(RULES));
        assert_eq!(
            rules.rule_names(),
            ["health", "user-posts", "users", "login", "beta"]
        );
    }

    #[test]
    fn allow_list_by_ip_exempts_before_any_rule() {
        let rules = RuleSet::from_config(&config(&format!(
            "{RULES}  allow_list: {{ ips: [10.0.0.0/8] }}\n"
        )));
        let listed = |r: TestRequest| r.peer(Some("10.1.2.3:5000"));
        assert!(matches!(
            listed(request("GET", "/users/7")).plan(&rules),
            Plan::Exempt
        ));
        // Even where the rule's key is missing.
        assert!(matches!(
            listed(request("POST", "/login")).plan(&rules),
            Plan::Exempt
        ));
        assert_eq!(
            outcome(&request("GET", "/users/7").plan(&rules)),
            "users:192.0.2.1"
        );
    }

    #[test]
    fn allow_list_by_key_uses_the_key_the_request_is_limited_by() {
        let rules = RuleSet::from_config(&config(&format!(
            "{RULES}  allow_list: {{ keys: [ops, 192.0.2.9] }}\n"
        )));
        let login = |user: &'static str| request("POST", "/login").header("x-user", user);
        assert!(matches!(login("ops").plan(&rules), Plan::Exempt));
        assert_eq!(outcome(&login("ann").plan(&rules)), "login:ann");
        // The default key is the client IP.
        let from = |peer: &str| request("GET", "/other").peer(Some(peer));
        assert!(matches!(from("192.0.2.9:1").plan(&rules), Plan::Exempt));
        assert_eq!(
            outcome(&from("192.0.2.8:1").plan(&rules)),
            "default:192.0.2.8"
        );
    }

    #[test]
    fn missing_key_is_handled_as_configured() {
        let rules = RuleSet::from_config(&config(RULES));
        assert!(matches!(
            request("POST", "/login").plan(&rules),
            Plan::NoKey(MissingKey::Reject)
        ));
        assert!(matches!(
            request("GET", "/other").peer(None).plan(&rules),
            Plan::NoKey(MissingKey::Reject)
        ));
        let rules = RuleSet::from_config(&config(&format!("{RULES}  on_missing_key: allow\n")));
        assert!(matches!(
            request("POST", "/login").plan(&rules),
            Plan::NoKey(MissingKey::Allow)
        ));
    }

    #[test]
    fn rules_find_the_client_ip_as_configured() {
        let rules = RuleSet::from_config(&config(&format!(
            "{RULES}  trusted_proxies: [10.0.0.1]\n  client_ip_header: forwarded\n  ipv6_prefix: 48\n  allow_list: {{ ips: [198.51.100.7] }}\n"
        )));
        let proxied = |path: &str| request("GET", path).peer(Some("10.0.0.1:443"));
        // The one configured header is believed, from a trusted proxy, by rules and default.
        let forwarded = proxied("/users/7").header("forwarded", "for=203.0.113.5");
        assert_eq!(outcome(&forwarded.plan(&rules)), "users:203.0.113.5");
        let forwarded = proxied("/other").header("forwarded", "for=203.0.113.5");
        assert_eq!(outcome(&forwarded.plan(&rules)), "default:203.0.113.5");
        // Any other forwarding header is ignored: the client cannot pick its key (without the
        // configured header, the request is the proxy's own) ...
        let xff = proxied("/users/7").header("x-forwarded-for", "203.0.113.6");
        assert_eq!(outcome(&xff.plan(&rules)), "users:10.0.0.1");
        // ... nor make itself exempt.
        let xff = proxied("/users/7")
            .header("x-forwarded-for", "198.51.100.7")
            .header("forwarded", "for=203.0.113.5");
        assert_eq!(outcome(&xff.plan(&rules)), "users:203.0.113.5");
        let listed = proxied("/users/7").header("forwarded", "for=198.51.100.7");
        assert!(matches!(listed.plan(&rules), Plan::Exempt));
        // IPv6 clients are keyed by their /48, forwarded or peer.
        let v6 = proxied("/users/7").header("forwarded", "for=\"[2001:db8:1:2::9]\"");
        assert_eq!(outcome(&v6.plan(&rules)), "users:2001:db8:1::/48");
        let peer = request("GET", "/users/7").peer(Some("[2001:db8:1:3::1]:4000"));
        assert_eq!(outcome(&peer.plan(&rules)), "users:2001:db8:1::/48");
    }

    /// What an outer router leaves: the path before it stripped a prefix.
    #[derive(Clone)]
    struct Original(&'static str);

    /// What a router leaves: the route it matched.
    #[derive(Clone)]
    struct Route(&'static str);

    #[test]
    fn the_original_path_is_matched_when_a_lookup_finds_it() {
        let rules = RuleSet::from_config(&config(RULES))
            .with_original_path(|extensions| extensions.get::<Original>().map(|o| o.0));
        let nested = request("GET", "/7/posts");
        assert_eq!(outcome(&nested.plan(&rules)), "default:192.0.2.1");
        let nested = nested.extension(Original("/users/7/posts"));
        assert_eq!(outcome(&nested.plan(&rules)), "user-posts:192.0.2.1");
    }

    #[test]
    fn the_matched_route_decides_where_the_path_does_not() {
        let rules = RuleSet::from_config(&config(RULES))
            .with_matched_route(|extensions| extensions.get::<Route>().map(|r| r.0));
        // A router that routed this spelling to `/users/{id}/posts` (say it decodes `%2F`).
        let routed = request("GET", "/users/7%2Fposts");
        assert_eq!(outcome(&routed.plan(&rules)), "users:192.0.2.1");
        let routed = routed.extension(Route("/users/{user}/posts"));
        assert_eq!(outcome(&routed.plan(&rules)), "user-posts:192.0.2.1");
        // The path still matches on its own: a literal rule inside a parameter route.
        let health = request("GET", "/health").extension(Route("/{page}"));
        assert!(matches!(health.plan(&rules), Plan::Exempt));
    }

    #[test]
    fn a_pattern_refused_by_the_parser_matches_nothing() {
        let mut config = config(RULES);
        let mut http = config.http().clone();
        http.rules[0].matches.path = Some("/health/".into());
        config = config.with_http(http);
        let rules = RuleSet::from_config(&config);
        for path in ["/health", "/health/"] {
            assert_eq!(
                outcome(&request("GET", path).plan(&rules)),
                "default:192.0.2.1",
                "{path}"
            );
        }
    }

    #[test]
    fn decoding_compares_without_surprises() {
        assert!(decoded_eq(b"abc", b"abc"));
        assert!(decoded_eq(b"%41%42c", b"ABc"));
        assert!(!decoded_eq(b"%41%42c", b"ABcd"));
        assert!(!decoded_eq(b"%41%42cd", b"ABc"));
        assert!(decoded_eq(b"%", b"%"));
        assert!(decoded_eq(b"%4", b"%4"));
        assert!(decoded_eq(b"%g1", b"%g1"));
        assert!(decoded_eq(b"%2F", b"/"));
        assert!(decoded_eq(b"%00", b"\0"));
        assert!(!decoded_eq(b"", b"a"));
        assert!(decoded_eq(b"", b""));
    }
}
