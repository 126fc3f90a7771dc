//! A fault-injecting TCP proxy, for chaos tests.
//!
//! [`FaultProxy`] listens on a free loopback port and forwards bytes both ways between each
//! client and one upstream address (a [`crate::RedisServer`]), until told to misbehave with
//! [`FaultProxy::set`]: delay every chunk, silently drop every byte, or reset every connection.
//! The fault is read for every chunk, so it applies to the very next byte after `set` returns,
//! on connections old and new. A connection that had bytes dropped stays dead both ways even
//! after [`Fault::Pass`] (its byte stream has a hole, as after a partition that outlived TCP's
//! retransmissions); new connections work normally. When the upstream closes or refuses, the
//! client's connection is closed or reset too, so killing the server looks like it does without
//! the proxy. The proxy runs on its own thread with its own tokio runtime, so it works from
//! plain and async tests alike and keeps forwarding while a test's runtime is busy; dropping it
//! stops the thread and closes every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What the proxy does to the traffic it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward every byte as it comes.
    Pass,
    /// Hold every chunk this long before forwarding it, both ways (latency, not bandwidth).
    Delay(Duration),
    /// Keep connections open (and accept new ones) but silently drop every byte, both ways.
    Blackhole,
    /// Close every connection with a TCP RST, and reset new ones as soon as they are accepted.
    Reset,
}

/// A TCP proxy on `127.0.0.1` in front of one upstream address, with an adjustable [`Fault`].
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    connections: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port, passing traffic through.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("fault proxy: cannot bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("fault proxy: cannot make the listener non-blocking");
        let addr = listener
            .local_addr()
            .expect("fault proxy: the listener has no address");
        let (fault, faults) = watch::channel(Fault::Pass);
        let connections = Arc::new(AtomicUsize::new(0));
        let (shutdown, stop) = oneshot::channel();
        let accepted = connections.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fault proxy: cannot build a tokio runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)
                        .expect("fault proxy: cannot register the listener");
                    tokio::select! {
                        _ = stop => {}
                        () = accept_loop(listener, upstream, faults, accepted) => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing its sockets.
            })
            .expect("fault proxy: cannot spawn its thread");
        FaultProxy {
            addr,
            fault,
            connections,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"redis://127.0.0.1:<port>"` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Applies `fault` from the next chunk on, to existing and new connections.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections accepted so far (including those reset or blackholed).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Receiver<Fault>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(client, upstream, faults.clone()));
    }
}

/// How one direction (or the whole connection) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// EOF or an error: close normally.
    Closed,
    /// The fault is [`Fault::Reset`]: abort with RST.
    Reset,
}

/// Forwards one client connection until either side closes or the fault resets it.
async fn serve(mut client: TcpStream, upstream: SocketAddr, faults: watch::Receiver<Fault>) {
    if *faults.borrow() == Fault::Reset {
        reset(client);
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // Nothing listens upstream: the client sees its connection refused, as without us.
        reset(client);
        return;
    };
    let mut resets = faults.clone();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Set once bytes were dropped either way: the stream has a hole, so it stays dead.
    let dead = AtomicBool::new(false);
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            end = pipe(client_read, server_write, &faults, &dead) => end,
            end = pipe(server_read, client_write, &faults, &dead) => end,
            Ok(_) = resets.wait_for(|f| *f == Fault::Reset) => End::Reset,
        }
    };
    if end == End::Reset {
        reset(client);
        reset(server);
    }
}

/// Closes `stream` with an RST rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Copies `from` to `to`, applying the fault in force when each chunk arrives.
async fn pipe(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    faults: &watch::Receiver<Fault>,
    dead: &AtomicBool,
) -> End {
    // Chunks with the instant they may leave: a reader and a writer, so that delayed chunks
    // queue up instead of holding back the reading.
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            };
            let fault = *faults.borrow();
            let due = match fault {
                Fault::Reset => return End::Reset,
                Fault::Blackhole => {
                    dead.store(true, Ordering::Relaxed);
                    continue;
                }
                _ if dead.load(Ordering::Relaxed) => continue,
                Fault::Pass => Instant::now(),
                Fault::Delay(delay) => Instant::now() + delay,
            };
            if queue.send((due, buffer[..n].to_vec())).is_err() {
                return End::Closed;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if dead.load(Ordering::Relaxed) {
                continue;
            }
            if to.write_all(&chunk).await.is_err() {
                return End::Closed;
            }
        }
        End::Closed
    };
    tokio::pin!(read, write);
    tokio::select! {
        // On EOF, the chunks still queued (delayed) are delivered before closing.
        end = &mut read => match end {
            End::Reset => End::Reset,
            End::Closed => write.await,
        },
        end = &mut write => end,
    }
}
