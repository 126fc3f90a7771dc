//! Serving an app for HTTP tests: bound to a free loopback port, with the socket peer available
//! to the rate-limit layer (axum's `ConnectInfo`), running until the test's runtime ends.

use std::net::SocketAddr;

/// Serves `app` on `127.0.0.1:0` in the current runtime; its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}
