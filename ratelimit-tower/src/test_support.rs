//! What the unit tests share: a request as the server hands it over, with its peer, ready to
//! be keyed by an extractor or planned by a planner.

use std::net::SocketAddr;

use http::{HeaderValue, Request};

use crate::extract::{KeyExtractor, RequestInfo};
use crate::plan::{Plan, Planner};

/// A request and the peer that sent it.
pub(crate) struct TestRequest {
    request: Request<()>,
    peer: Option<SocketAddr>,
}

impl TestRequest {
    /// `method uri`, without headers, from no known peer.
    pub(crate) fn new(method: &str, uri: &str) -> Self {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        Self {
            request,
            peer: None,
        }
    }

    /// With header `name: value` added (after any of the same name).
    pub(crate) fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.request
            .headers_mut()
            .append(name, HeaderValue::from_static(value));
        self
    }

    /// Sent by `peer` (`None`: the server did not say).
    pub(crate) fn peer(mut self, peer: Option<&str>) -> Self {
        self.peer = peer.map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}")));
        self
    }

    /// With `value` in the extensions, as an earlier layer or the router leaves it.
    pub(crate) fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.request.extensions_mut().insert(value);
        self
    }

    /// What extractors and planners see.
    pub(crate) fn info(&self) -> RequestInfo<'_> {
        RequestInfo::new(&self.request, self.peer)
    }

    /// The key `extractor` finds, as text.
    pub(crate) fn key(&self, extractor: &dyn KeyExtractor) -> Option<String> {
        extractor
            .extract(&self.info())
            .map(|k| String::from_utf8_lossy(&k).into_owned())
    }

    /// The plan `planner` makes.
    pub(crate) fn plan(&self, planner: &dyn Planner) -> Plan {
        planner.plan(&self.info())
    }
}
