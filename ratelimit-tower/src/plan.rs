//! What to do with a request: pass it, refuse it, or limit it under a policy for a key.

use std::fmt;
use std::sync::Arc;

use ratelimit_core::Policy;
use ratelimit_core::{AllowList, MissingKey};

use crate::extract::{ClientIp, KeyExtractor, RequestInfo};
use crate::headers::PolicyFields;

/// A policy as the layer applies it: with its rule's name, shadow flag, and its header items
/// written once ([`PolicyFields`]).
#[derive(Debug)]
pub struct Target {
    policy: Policy,
    rule: Option<Arc<str>>,
    shadow: bool,
    fields: PolicyFields,
}

impl Target {
    /// `policy`, applied by the rule named `rule` (if any); in shadow mode nothing is denied.
    pub fn new(policy: Policy, rule: Option<Arc<str>>, shadow: bool) -> Self {
        Self {
            fields: PolicyFields::new(&policy),
            policy,
            rule,
            shadow,
        }
    }

    /// The identifier of the policy's window `index` (`hello-1m`), as `RateLimit-Policy` and
    /// `RateLimit` name it and a problem document's `violated-policies` lists it.
    pub fn policy_id(&self, index: usize) -> Option<&str> {
        self.fields.policy_id(index)
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The policy as the rate-limit headers name it.
    pub fn fields(&self) -> &PolicyFields {
        &self.fields
    }

    /// The rule that chose this policy, if rules are in use.
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }

    /// Whether decisions are made and counted but never enforced.
    pub fn shadow(&self) -> bool {
        self.shadow
    }
}

/// The plan for one request.
#[derive(Debug)]
pub enum Plan {
    /// Not limited (an exempt route, an allow-listed client).
    Exempt,
    /// Limited under `target` for `key`.
    Limit {
        /// The policy to apply.
        target: Arc<Target>,
        /// The identity.
        key: Vec<u8>,
    },
    /// No key could be extracted: handled as configured.
    NoKey(MissingKey),
}

/// Decides the [`Plan`] of each request.
pub trait Planner: Send + Sync + 'static {
    /// The plan for `request`.
    fn plan(&self, request: &RequestInfo<'_>) -> Plan;
}

impl fmt::Debug for dyn Planner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Planner")
    }
}

/// Requests that are never limited, by client IP or by key.
#[derive(Debug, Clone, Default)]
pub struct Exemptions {
    list: AllowList,
    client_ip: ClientIp,
}

impl Exemptions {
    /// Exempts what `list` names; client IPs are found as `client_ip` finds them (its trusted
    /// proxies and header), and matched whole, whatever its IPv6 prefix.
    pub fn new(list: AllowList, client_ip: ClientIp) -> Self {
        Self { list, client_ip }
    }

    /// Whether `request` (whose key is `key`, when found) is exempt.
    pub fn exempts(&self, request: &RequestInfo<'_>, key: Option<&[u8]>) -> bool {
        if let Some(key) = key
            && self.list.keys.iter().any(|k| k.as_bytes() == key)
        {
            return true;
        }
        if self.list.ips.is_empty() {
            return false;
        }
        matches!(
            self.client_ip.address(request),
            Ok(Some(ip)) if self.list.ips.iter().any(|block| block.contains(ip))
        )
    }
}

/// One policy for every request, keyed by one extractor: the planner of a configuration
/// without rules.
#[derive(Debug, Clone)]
pub struct SinglePolicy {
    target: Arc<Target>,
    key: Arc<dyn KeyExtractor>,
    on_missing_key: MissingKey,
    exemptions: Exemptions,
}

impl SinglePolicy {
    /// Limits every request under `target`, keyed by `key`.
    pub fn new(target: Arc<Target>, key: Arc<dyn KeyExtractor>) -> Self {
        Self {
            target,
            key,
            on_missing_key: MissingKey::default(),
            exemptions: Exemptions::default(),
        }
    }

    /// What to do when `key` finds nothing.
    pub fn on_missing_key(mut self, action: MissingKey) -> Self {
        self.on_missing_key = action;
        self
    }

    /// Requests never limited.
    pub fn with_exemptions(mut self, exemptions: Exemptions) -> Self {
        self.exemptions = exemptions;
        self
    }
}

impl Planner for SinglePolicy {
    fn plan(&self, request: &RequestInfo<'_>) -> Plan {
        let key = self.key.extract(request);
        if self.exemptions.exempts(request, key.as_deref()) {
            return Plan::Exempt;
        }
        match key {
            Some(key) => Plan::Limit {
                target: self.target.clone(),
                key,
            },
            None => Plan::NoKey(self.on_missing_key),
        }
    }
}
