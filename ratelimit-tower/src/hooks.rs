//! Hooks: code the layer calls when it denies a request.
//!
//! [`on_denied`](crate::RateLimitLayer::on_denied) is called for every request over its limit
//! (for logs and metrics), shadow-mode ones included;
//! [`denied_response`](crate::RateLimitLayer::denied_response) shapes the `429` the client gets
//! (its body, headers or status). Both see the request through a [`Denial`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use ratelimit_core::Decision;

use crate::extract::RequestInfo;
use crate::headers;
use crate::plan::Target;

/// A request over its limit, as the hooks see it.
#[derive(Debug)]
pub struct Denial<'a> {
    pub(crate) request: RequestInfo<'a>,
    pub(crate) target: &'a Target,
    pub(crate) decision: &'a Decision,
    pub(crate) key: &'a [u8],
    pub(crate) shadow: bool,
}

impl<'a> Denial<'a> {
    /// The request: method, URI, headers, extensions and peer.
    pub fn request(&self) -> &RequestInfo<'a> {
        &self.request
    }

    /// The policy that denied it, with its rule.
    pub fn target(&self) -> &'a Target {
        self.target
    }

    /// The decision: the binding window, when to retry.
    pub fn decision(&self) -> &'a Decision {
        self.decision
    }

    /// The key the request was limited by, as extracted (before any hashing). It identifies a
    /// client: log a digest of it rather than the key where that matters.
    pub fn key(&self) -> &'a [u8] {
        self.key
    }

    /// Whether the request was let through anyway (shadow mode): then no response is made.
    pub fn shadow(&self) -> bool {
        self.shadow
    }

    /// The identifier of the violated policy window (`hello-1m`), as the headers name it.
    pub fn policy_id(&self) -> Option<&'a str> {
        self.target.policy_id(self.decision.window_index())
    }

    /// The seconds `Retry-After` carries.
    pub fn retry_after_secs(&self) -> u64 {
        headers::retry_after_secs(self.decision)
    }
}

/// Called on every denial.
pub(crate) type OnDenied = Arc<dyn Fn(&Denial<'_>) + Send + Sync>;

/// Turns the layer's `429` into the one sent.
pub(crate) type DeniedResponse =
    Arc<dyn Fn(&Denial<'_>, Response<Bytes>) -> Response<Bytes> + Send + Sync>;

/// The hooks a layer was given in code.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) on_denied: Option<OnDenied>,
    pub(crate) denied_response: Option<DeniedResponse>,
}

impl Hooks {
    pub(crate) fn any(&self) -> bool {
        self.on_denied.is_some() || self.denied_response.is_some()
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("on_denied", &self.on_denied.is_some())
            .field("denied_response", &self.denied_response.is_some())
            .finish()
    }
}
