//! Policies numbered, so that a key's state is found by a number and the identity's bytes,
//! without writing the policy's name into every key.

use std::sync::{Arc, OnceLock};

use crate::key::{Identity, MAX_KEY, store_key};
use crate::policy::{Algorithm, Policy};

/// Policies (name and algorithm) a store numbers. Keys of any further policy carry the
/// policy's name and algorithm in their bytes instead, under [`UNNUMBERED`].
pub(crate) const NAMESPACES: usize = 256;

/// The number of every policy past the first [`NAMESPACES`].
pub(crate) const UNNUMBERED: u16 = u16::MAX;

/// The numbers given to policies, in order of first use; never renumbered, so a reloaded
/// policy of the same name and algorithm finds its keys' state.
#[derive(Debug)]
pub(crate) struct Namespaces {
    slots: Box<[OnceLock<Namespace>]>,
}

/// A policy as far as its keys' state goes: its name and algorithm.
type Namespace = (Arc<str>, Algorithm);

impl Namespaces {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..NAMESPACES).map(|_| OnceLock::new()).collect(),
        }
    }

    /// `policy`'s number, or [`UNNUMBERED`] when every number is taken. A clone of a policy
    /// seen before is found by the address of its name: one comparison.
    pub(crate) fn of(&self, policy: &Policy) -> u16 {
        let name = policy.shared_name();
        let algorithm = policy.algorithm();
        for (number, slot) in self.slots.iter().enumerate() {
            let (known, known_algorithm) = slot.get_or_init(|| (name.clone(), algorithm));
            if *known_algorithm == algorithm && (Arc::ptr_eq(known, name) || **known == **name) {
                return u16::try_from(number).unwrap_or(UNNUMBERED);
            }
        }
        UNNUMBERED
    }

    /// `use_key` of the key of `identity` under `policy`: the policy's number and the
    /// identity's bytes, with nothing written; for a policy past the numbered ones,
    /// [`UNNUMBERED`] and the whole `policy \0 tag \0 identity`, written on the stack.
    pub(crate) fn with_key<T>(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        use_key: impl FnOnce(u16, &[u8]) -> T,
    ) -> T {
        let namespace = self.of(policy);
        if namespace != UNNUMBERED {
            return use_key(namespace, identity.as_bytes());
        }
        let mut buffer = [0u8; MAX_KEY];
        use_key(namespace, store_key(&mut buffer, policy, identity))
    }
}
