//! One keep-alive HTTP/1.1 client connection to an api-server instance, on hyper's low-level
//! client: no pool, no per-request allocation beyond the request itself, so that the load
//! generator costs the machine as little as possible and `--connections` means connections.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A connection to one instance.
pub(crate) struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    host: HeaderValue,
}

impl Connection {
    /// Opens a connection to `addr`.
    pub(crate) async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        // Small requests and answers: send each one at once.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
        // Drives the socket; ends when `sender` is dropped or the peer closes.
        tokio::spawn(connection);
        let host = HeaderValue::from_str(&addr.to_string())
            .map_err(|e| format!("host header for {addr}: {e}"))?;
        Ok(Self { sender, host })
    }

    /// `GET path` with `headers`; the status, once the whole body has been read (so the
    /// connection can carry the next request).
    pub(crate) async fn get(
        &mut self,
        path: &'static str,
        headers: &[(&'static str, HeaderValue)],
    ) -> Result<(StatusCode, Bytes), String> {
        let mut builder = Request::get(path).header(HOST, self.host.clone());
        for (name, value) in headers {
            builder = builder.header(*name, value.clone());
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// One `GET path` on a fresh connection: for readiness checks and metrics, not for load.
pub(crate) async fn get_once(
    addr: SocketAddr,
    path: &'static str,
) -> Result<(StatusCode, Bytes), String> {
    Connection::open(addr).await?.get(path, &[]).await
}
