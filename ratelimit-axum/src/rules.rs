//! Routing rules: which policy, and which key, applies to a request.
//!
//! [`RuleSet`] is the [`Planner`] built from a configuration's `rules`. Patterns, methods and
//! headers are compiled once, when the set is built; planning a request walks the rules in
//! order without allocating, and the first rule that matches decides. A request that no rule
//! matches gets the top-level policy, under the rule name `default`.
//!
//! Methods are compared exactly (an empty list matches any). Each listed header must be
//! present with exactly the given value (compared byte for byte; for a repeated header, any of
//! its values).
//!
//! # Path patterns
//!
//! A pattern is a `/`-separated list of segments:
//!
//! | pattern | matches | does not match |
//! | --- | --- | --- |
//! | `/health` | `/health`, `/health/` | `/healthz`, `/health/x` |
//! | `/users/{id}` | `/users/7` | `/users`, `/users/`, `/users/7/posts` |
//! | `/api/*` | `/api`, `/api/`, `/api/x/y` | `/apix` |
//! | `/` | `/` | `/x` |
//!
//! - a literal segment matches itself, case-sensitively;
//! - `{name}` matches exactly one non-empty segment;
//! - a final `*` matches zero or more remaining segments.
//!
//! One trailing slash is ignored, on the pattern and on the request: `/a/` is `/a`. Paths are
//! compared as they arrive, percent-encoded, as axum's router compares them. Behind a
//! [`Router::nest`](axum::Router::nest) the full path is used (axum's `OriginalUri`), so rules
//! are written against the public paths whichever router the layer is installed on.

use std::sync::Arc;

use axum::extract::OriginalUri;
use http::{HeaderName, Method};
use ratelimit_core::Config;
use ratelimit_core::config::{AllowList, KeySource, MissingKey, Rule, RuleMatch};
use ratelimit_tower::extract::from_source;
use ratelimit_tower::plan::Exemptions;
use ratelimit_tower::{ClientIp, KeyExtractor, Plan, Planner, RequestInfo, Target};

/// The rule name of the top-level policy, for requests that no rule matches.
const DEFAULT_RULE: &str = "default";

/// A configuration's routing rules, as a [`Planner`].
///
/// For each request, in order: a client IP on the allow-list is exempt; the first matching rule
/// decides (exempt, or its policy and key source); a request matching no rule gets the
/// top-level policy and key source; a key on the allow-list is exempt; a request whose key
/// cannot be found is handled as `on_missing_key` says. Without rules, this is exactly the
/// configuration's single policy.
///
/// ```
/// use ratelimit_axum::RuleSet;
/// use ratelimit_core::Config;
/// use ratelimit_core::config::Overrides;
///
/// let config = Config::from_yaml_str_with(
///     r#"
/// rate_limiter:
///   windows: [{ max_requests: 100, duration: 1m }]
///   rules:
///     - name: health
///       match: { path: /health }
///       exempt: true
///     - name: login
///       match: { path: /login, methods: [POST] }
///       windows: [{ max_requests: 5, duration: 1m }]
/// "#,
///     None,
///     &Overrides::default(),
/// )?;
/// let rules = RuleSet::from_config(&config);
/// assert_eq!(rules.rule_names(), ["health", "login"]);
/// # Ok::<(), ratelimit_core::ConfigError>(())
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
}

impl RuleSet {
    /// The rules, policies, key sources and allow-list of `config` (already validated, as every
    /// [`Config`] a limiter holds is).
    pub fn from_config(config: &Config) -> Self {
        let http = config.http();
        let trusted = &ClientIp::from_config(http);
        let default_key = from_source(&http.default_key(), trusted);
        let rules = http
            .rules
            .iter()
            .map(|rule| CompiledRule::new(rule, &default_key, trusted))
            .collect();
        let exempt_ips = Exemptions::new(
            AllowList {
                ips: http.allow_list.ips.clone(),
                keys: Vec::new(),
            },
            trusted.clone(),
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
        }
    }

    /// The names of the configured rules, in order of precedence (the top-level policy's
    /// `default` is not among them).
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|rule| &*rule.name).collect()
    }
}

impl Planner for RuleSet {
    fn plan(&self, request: &RequestInfo<'_>) -> Plan {
        if self.exempt_ips.exempts(request, None) {
            return Plan::Exempt;
        }
        let (target, extractor) = match self.rules.iter().find(|rule| rule.matches(request)) {
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
    path: Option<PathPattern>,
    methods: Box<[Method]>,
    headers: Box<[HeaderMatch]>,
    /// A method or header name that cannot occur in a request: the rule matches nothing.
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
    fn new(rule: &Rule, default_key: &Arc<dyn KeyExtractor>, trusted: &ClientIp) -> Self {
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
                    |source: &KeySource| from_source(source, trusted),
                ),
            },
        };
        // Both are validated when the configuration is read; what still fails to parse can
        // never be in a request, so the rule is kept (its name stays listed) but never matches.
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
            never: parsed_methods.len() != methods.len() || parsed_headers.len() != headers.len(),
            path: path.as_deref().map(PathPattern::compile),
            methods: parsed_methods,
            headers: parsed_headers,
            name,
            action,
        }
    }

    fn matches(&self, request: &RequestInfo<'_>) -> bool {
        if self.never {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(request.method) {
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
        match &self.path {
            None => true,
            Some(pattern) => {
                let path = request
                    .extensions
                    .get::<OriginalUri>()
                    .map_or(request.uri.path(), |original| original.0.path());
                pattern.matches(path)
            }
        }
    }
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathPattern {
    segments: Box<[Segment]>,
    /// A final `*`: any number of further segments.
    rest: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
}

impl PathPattern {
    fn compile(pattern: &str) -> Self {
        let mut segments: Vec<Segment> = split(pattern)
            .map(|segment| {
                if segment.len() >= 2 && segment.starts_with('{') && segment.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(segment.into())
                }
            })
            .collect();
        let rest = segments.last() == Some(&Segment::Literal("*".into()));
        if rest {
            segments.pop();
        }
        Self {
            segments: segments.into(),
            rest,
        }
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = split(path);
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let fits = match segment {
                Segment::Literal(literal) => **literal == *part,
                Segment::Param => !part.is_empty(),
            };
            if !fits {
                return false;
            }
        }
        self.rest || parts.next().is_none()
    }
}

/// The segments of a path, without the leading slash and one trailing slash (so `/` is one
/// empty segment, which only the pattern `/` and a final `*` match).
fn split(path: &str) -> std::str::Split<'_, char> {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.strip_suffix('/').unwrap_or(path).split('/')
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::{Extensions, HeaderMap, HeaderValue, Uri};
    use ratelimit_core::config::Overrides;

    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml_str_with(yaml, None, &Overrides::default()).expect("valid config")
    }

    struct Request {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        extensions: Extensions,
        peer: Option<SocketAddr>,
    }

    fn request(method: &str, uri: &str) -> Request {
        Request {
            method: Method::from_bytes(method.as_bytes()).expect("method"),
            uri: uri.parse().expect("uri"),
            headers: HeaderMap::new(),
            extensions: Extensions::new(),
            peer: Some("192.0.2.1:4000".parse().expect("addr")),
        }
    }

    impl Request {
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.append(name, HeaderValue::from_static(value));
            self
        }

        fn peer(mut self, peer: Option<&str>) -> Self {
            self.peer = peer.map(|p| p.parse().expect("addr"));
            self
        }

        fn plan(&self, rules: &RuleSet) -> Plan {
            rules.plan(&RequestInfo {
                method: &self.method,
                uri: &self.uri,
                headers: &self.headers,
                extensions: &self.extensions,
                peer: self.peer,
            })
        }
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
            ("/health", "/health/", true),
            ("/health/", "/health", true),
            ("/health", "/healthz", false),
            ("/health", "/health/x", false),
            ("/health", "/", false),
            ("/health", "/Health", false),
            ("/users/{id}", "/users/7", true),
            ("/users/{id}", "/users/7/", true),
            ("/users/{id}", "/users", false),
            ("/users/{id}", "/users/", false),
            ("/users/{id}", "/users//", false),
            ("/users/{id}", "/users/7/posts", false),
            ("/users/{id}/posts/{post}", "/users/7/posts/9", true),
            ("/users/{id}/posts/{post}", "/users/7/posts", false),
            ("/users/{id}/posts/{post}", "/users/7/comments/9", false),
            ("/{a}/{b}", "/x/y", true),
            ("/{a}/{b}", "/x", false),
            ("/api/*", "/api", true),
            ("/api/*", "/api/", true),
            ("/api/*", "/api/x", true),
            ("/api/*", "/api/x/y/z", true),
            ("/api/*", "/apix", false),
            ("/api/*", "/", false),
            ("/api/{v}/*", "/api/v1/x/y", true),
            ("/api/{v}/*", "/api/v1", true),
            ("/api/{v}/*", "/api", false),
            ("/*", "/", true),
            ("/*", "/anything/at/all", true),
            ("/", "/", true),
            ("/", "/x", false),
            ("/a%20b", "/a%20b", true),
            ("/a b", "/a%20b", false),
        ];
        for &(pattern, path, expected) in table {
            assert_eq!(
                PathPattern::compile(pattern).matches(path),
                expected,
                "{pattern} against {path}"
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
        let listed = |r: Request| r.peer(Some("10.1.2.3:5000"));
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
    fn nested_routers_match_the_original_path() {
        let rules = RuleSet::from_config(&config(RULES));
        let mut nested = request("GET", "/7/posts");
        nested
            .extensions
            .insert(OriginalUri("/users/7/posts".parse().expect("uri")));
        assert_eq!(outcome(&nested.plan(&rules)), "user-posts:192.0.2.1");
    }
}
