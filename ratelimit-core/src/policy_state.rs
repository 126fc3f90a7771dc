//! What a limiter keeps for each policy it decides under: the sub-policies of a spread policy,
//! the largest cost one decision can fit, and the policy's metric counters.
//!
//! A [`Policy`] is a plain value; what is derived from it for one limiter lives here, built
//! when the limiter is built (for every policy its configuration names) and again by
//! `reconfigure`. A decision finds its state by the address of the policy's windows (clones
//! share them) and an equality check, so it neither allocates nor hashes. Policies the
//! configuration does not name (`allow_with` with a policy built in code) get their state on
//! first use, in a small fixed table.

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::OnceLock;

use crate::config::Config;
use crate::metrics::{DecisionCounters, Metrics};
use crate::policy::{Policy, PolicyError};

/// Room for the states of policies the configuration does not name. Beyond it, such a
/// policy's state is built for each decision (correct, only slower).
const UNNAMED_POLICIES: usize = 32;

/// One policy's state in one limiter.
#[derive(Debug)]
pub(crate) struct PolicyState {
    policy: Policy,
    /// The sub-counters' policies when the policy is spread; empty otherwise.
    parts: Box<[Policy]>,
    /// The largest cost one decision can fit: the smallest limit, or for a spread policy the
    /// largest sub-counter's (a spread key's request is decided by one sub-counter).
    largest_cost: u64,
    counters: DecisionCounters,
}

impl PolicyState {
    fn new(policy: &Policy, metrics: &Metrics) -> Self {
        let parts = policy.parts();
        let largest_cost = if parts.is_empty() {
            policy.smallest_limit()
        } else {
            parts.iter().map(Policy::smallest_limit).max().unwrap_or(0)
        };
        Self {
            policy: policy.clone(),
            counters: metrics.decision_counters(policy),
            parts,
            largest_cost,
        }
    }

    /// The policy.
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The sub-counters' policies (see [`Policy::with_spread`]); empty when not spread.
    pub(crate) fn parts(&self) -> &[Policy] {
        &self.parts
    }

    /// The largest cost one decision under this policy can fit.
    pub(crate) fn largest_cost(&self) -> u64 {
        self.largest_cost
    }

    /// The policy's request counters.
    pub(crate) fn counters(&self) -> &DecisionCounters {
        &self.counters
    }
}

/// The states of one limiter's policies.
#[derive(Debug)]
pub(crate) struct PolicyTable {
    /// The configuration's policies: the default one first, then the rules'.
    named: Box<[PolicyState]>,
    /// `(windows address, index in named)`, sorted by address.
    by_address: Box<[(usize, usize)]>,
    /// Policies met in `allow_with` and the like that the configuration does not name.
    unnamed: Box<[OnceLock<PolicyState>]>,
    metrics: Metrics,
}

impl PolicyTable {
    /// The states of every policy `config` names, counted in `metrics` (their decision
    /// series are created at zero here).
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Self {
        let rules = config
            .http()
            .rules
            .iter()
            .filter_map(|rule| rule.policy.as_ref());
        let named: Box<[PolicyState]> = std::iter::once(config.policy())
            .chain(rules)
            .map(|policy| PolicyState::new(policy, metrics))
            .collect();
        let mut by_address: Vec<(usize, usize)> = named
            .iter()
            .enumerate()
            .map(|(index, state)| (state.policy.windows_addr(), index))
            .collect();
        by_address.sort_unstable();
        Self {
            named,
            by_address: by_address.into(),
            unnamed: (0..UNNAMED_POLICIES).map(|_| OnceLock::new()).collect(),
            metrics: metrics.clone(),
        }
    }

    /// The default policy's state.
    pub(crate) fn default_policy(&self) -> &PolicyState {
        // `new` always puts the default policy first.
        &self.named[0]
    }

    /// The state of a policy the configuration does not name: its slot among the unnamed ones,
    /// taken on first use, or a state for this decision alone when they are all taken.
    fn unnamed(&self, policy: &Policy) -> StateRef<'_> {
        for slot in self.unnamed.iter() {
            let state = slot.get_or_init(|| PolicyState::new(policy, &self.metrics));
            if state.policy == *policy {
                return StateRef::Kept(state);
            }
        }
        StateRef::Once(Box::new(PolicyState::new(policy, &self.metrics)))
    }

    /// The state of a policy a caller passed in, built on first use when the configuration does
    /// not name it: checked first, unless it is one the configuration names (checked with the
    /// configuration, and found by address at no cost).
    pub(crate) fn get_valid(&self, policy: &Policy) -> Result<StateRef<'_>, PolicyError> {
        if let Some(state) = self.named(policy) {
            return Ok(StateRef::Kept(state));
        }
        policy.validate()?;
        Ok(self.unnamed(policy))
    }

    /// The sub-counters' policies of `policy`, without keeping a state for it.
    pub(crate) fn parts(&self, policy: &Policy) -> Cow<'_, [Policy]> {
        match self.find(policy) {
            Some(state) => Cow::Borrowed(state.parts()),
            None => Cow::Owned(policy.parts().into_vec()),
        }
    }

    /// The state of `policy` if it has one already.
    fn find(&self, policy: &Policy) -> Option<&PolicyState> {
        self.named(policy).or_else(|| {
            self.unnamed
                .iter()
                .map_while(OnceLock::get)
                .find(|state| state.policy == *policy)
        })
    }

    /// The state of a clone of a policy the configuration names, found by address. The same
    /// policy built again elsewhere is not found here: it gets a state of its own among the
    /// unnamed ones, with the same counters (the families hand out one series a label set).
    fn named(&self, policy: &Policy) -> Option<&PolicyState> {
        let address = policy.windows_addr();
        let start = self.by_address.partition_point(|&(a, _)| a < address);
        self.by_address[start..]
            .iter()
            .take_while(|&&(a, _)| a == address)
            .map(|&(_, index)| &self.named[index])
            .find(|state| state.policy == *policy)
    }
}

/// A policy's state: kept in the table, or built for one decision when the table is full
/// (boxed, so the futures that hold it stay small).
#[derive(Debug)]
pub(crate) enum StateRef<'a> {
    Kept(&'a PolicyState),
    Once(Box<PolicyState>),
}

impl Deref for StateRef<'_> {
    type Target = PolicyState;

    fn deref(&self) -> &PolicyState {
        match self {
            Self::Kept(state) => state,
            Self::Once(state) => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Algorithm, Window};

    fn spread() -> Policy {
        Policy::new("hot", [Window::per_second(10)])
            .with_algorithm(Algorithm::TokenBucket)
            .with_spread(4)
    }

    #[test]
    fn a_clone_of_a_configured_policy_finds_its_state() {
        let config = Config::with_policy(spread());
        let table = PolicyTable::new(&config, &Metrics::new());
        let state = table.get_valid(&config.policy().clone());
        assert!(
            matches!(state, Ok(StateRef::Kept(kept)) if std::ptr::eq(kept, table.default_policy()))
        );
    }

    #[test]
    fn a_policy_built_in_code_keeps_one_state() {
        let table = PolicyTable::new(&Config::with_policy(spread()), &Metrics::new());
        let other = Policy::new("other", [Window::per_minute(5)]);
        let first: *const PolicyState = &*table.get_valid(&other).expect("a valid policy");
        let again: *const PolicyState = &*table.get_valid(&other.clone()).expect("a valid policy");
        let rebuilt: *const PolicyState = &*table
            .get_valid(&Policy::new("other", [Window::per_minute(5)]))
            .expect("a valid policy");
        assert_eq!(first, again);
        assert_eq!(first, rebuilt);
        assert!(!std::ptr::eq(first, table.default_policy()));
        // Another cost is another policy, though it shares the windows.
        let costlier = other.clone().with_cost(2);
        assert_eq!(
            table
                .get_valid(&costlier)
                .expect("a valid policy")
                .policy()
                .cost(),
            2
        );
    }

    #[test]
    fn a_policy_built_in_code_is_checked_before_it_gets_a_state() {
        let table = PolicyTable::new(&Config::with_policy(spread()), &Metrics::new());
        let no_window = Policy::new("empty", []);
        assert!(matches!(
            table.get_valid(&no_window),
            Err(PolicyError::NoWindow)
        ));
        let zero = Policy::new("zero", [Window::new(0, std::time::Duration::from_secs(1))]);
        assert!(table.get_valid(&zero).is_err());
        assert!(table.find(&zero).is_none(), "a refused policy took a slot");
    }

    #[test]
    fn a_spread_policy_shares_its_limit_among_its_parts() {
        let table = PolicyTable::new(&Config::with_policy(spread()), &Metrics::new());
        let state = table.default_policy();
        let limits: Vec<u64> = state.parts().iter().map(Policy::smallest_limit).collect();
        assert_eq!(limits, [3, 3, 2, 2]);
        assert_eq!(state.largest_cost(), 3);
        assert!(
            table
                .parts(&Policy::new("plain", [Window::per_second(10)]))
                .is_empty()
        );
    }

    #[test]
    fn beyond_the_table_a_state_is_built_for_the_decision() {
        let table = PolicyTable::new(&Config::with_policy(spread()), &Metrics::new());
        for n in 1..=UNNAMED_POLICIES as u64 {
            assert!(matches!(
                table.get_valid(&Policy::new("many", [Window::per_minute(n)])),
                Ok(StateRef::Kept(_))
            ));
        }
        let extra = Policy::new("many", [Window::per_minute(1000)]);
        let state = table.get_valid(&extra).expect("a valid policy");
        assert!(matches!(state, StateRef::Once(_)));
        assert_eq!(state.policy(), &extra);
    }
}
