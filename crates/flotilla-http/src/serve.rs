//! The connection loop: hyper's HTTP/1 server with the limits `axum::serve`
//! does not set — a header-read timeout, an idle keep-alive timeout and a
//! global connection cap — plus graceful draining on shutdown.
//!
//! Why not `axum::serve`: it runs hyper without a timer, so hyper's
//! header-read timeout never fires, and it neither caps connections nor
//! closes idle ones; a client that opens sockets and sends nothing (or one
//! header line every few seconds) holds a file descriptor for ever.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// From accepting a connection (or finishing a response on it) to the
    /// end of the next request's headers.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Connections served at once; beyond it a few more are answered 429
    /// with Retry-After and closed, and past those the server stops
    /// accepting (new ones wait in the listen backlog) until one closes.
    pub max_connections: usize,
    /// On shutdown, how long open requests may finish.
    pub drain: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 24_000,
            drain: Duration::from_secs(10),
        }
    }
}

/// After an idle or shutdown close is requested, how long a connection
/// still writing a response (to a client that does not read) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// What one connection is doing, for its two timeouts. hyper's own
/// header-read timer also runs while a keep-alive connection waits idle, so
/// it cannot give the two different values: both are kept here instead.
struct Activity {
    in_flight: AtomicUsize,
    state: Mutex<Quiet>,
    changed: Notify,
}

/// When the connection last went quiet (accepted, or answered its last
/// request), and when bytes of a next request first arrived since.
#[derive(Clone, Copy, PartialEq)]
struct Quiet {
    since: Instant,
    /// No request has begun on the connection yet.
    fresh: bool,
    bytes_at: Option<Instant>,
}

/// Why a quiet connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    HeaderRead,
    Idle,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(Quiet {
                since: Instant::now(),
                fresh: true,
                bytes_at: None,
            }),
            changed: Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    fn bytes_arrived(&self) {
        let mut st = self.state.lock().expect("activity lock");
        if st.bytes_at.is_none() {
            st.bytes_at = Some(Instant::now());
            drop(st);
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection, with no request in flight, has gone
    /// without a complete request head for `header` (once it was accepted or
    /// bytes of a request arrived) or without any byte for `idle`.
    async fn expired(&self, header: Duration, idle: Duration) -> Expiry {
        loop {
            let changed = self.changed.notified();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            let quiet = *self.state.lock().expect("activity lock");
            let (deadline, why) = match quiet.bytes_at {
                Some(at) => (at + header, Expiry::HeaderRead),
                None if quiet.fresh => (quiet.since + header, Expiry::HeaderRead),
                None => (quiet.since + idle, Expiry::Idle),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if self.in_flight.load(Ordering::SeqCst) == 0
                        && *self.state.lock().expect("activity lock") == quiet
                    {
                        return why;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

/// A request in flight; when the last one ends the connection goes quiet.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.state.lock().expect("activity lock") = Quiet {
                since: Instant::now(),
                fresh: false,
                bytes_at: None,
            };
        }
        self.0.changed.notify_one();
    }
}

/// A response body that holds its request's [`InFlight`] until written.
struct UntilWritten {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl hyper::body::Body for UntilWritten {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        res
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Logs accept errors at most once a second, with how many were folded in.
struct AcceptErrors {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    fn record(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::error!(error = %e, suppressed = self.suppressed, "accept error");
        metrics::counter!("flotilla_accept_errors_total").increment(self.suppressed + 1);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Serve `app` on `listener` until `shutdown` turns `true`, then drain
/// open requests for at most `limits.drain` (long polls answer at once on
/// the same signal; the deadline bounds anything else).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
    limits: ConnLimits,
) -> std::io::Result<()> {
    // A semaphore holds at most u32::MAX permits to take back at once.
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let mut errors = AcceptErrors {
        last: None,
        suppressed: 0,
    };
    let mut stop = shutdown.clone();
    // Beyond the cap a few more connections are accepted only to be told
    // 429 with Retry-After and closed (shedding, never queueing); past
    // those too the server stops accepting until one closes. Within the
    // descriptors `flotilla server` keeps apart from the cap.
    let refusals = Arc::new(Semaphore::new(overflow_slots(max)));
    let retry = AtomicU64::new(0);
    loop {
        let slot = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            p = slots.clone().acquire_owned() => Slot::Serve(p.expect("the slot semaphore is never closed")),
            p = refusals.clone().acquire_owned() => Slot::Refuse(p.expect("the refusal semaphore is never closed")),
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    errors.record(&e);
                    // Out of descriptors (or similar): back off instead of
                    // spinning on the same error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        // A slot may have come free while waiting for the connection.
        let permit = match slot {
            Slot::Serve(p) => p,
            Slot::Refuse(r) => match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let n = retry.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        refuse_connection(stream, 1 + n % 5).await;
                        drop(r);
                    });
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        metrics::gauge!("flotilla_http_connections").increment(1.0);
        let app = app.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app, shutdown, &limits).await;
            metrics::gauge!("flotilla_http_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    // Drain: every connection gives its slot back when it closes.
    let started = Instant::now();
    let drained = tokio::time::timeout(
        limits.drain,
        slots.acquire_many(u32::try_from(max).unwrap_or(u32::MAX)),
    )
    .await;
    if drained.is_err() {
        tracing::warn!(
            waited_ms = started.elapsed().as_millis() as u64,
            "drain deadline reached; closing open requests"
        );
    }
    Ok(())
}

enum Slot {
    Serve(tokio::sync::OwnedSemaphorePermit),
    Refuse(tokio::sync::OwnedSemaphorePermit),
}

/// Connections accepted beyond the cap only to be refused: a tenth of the
/// cap, 16 to 64 (`flotilla server` keeps 256 descriptors apart).
fn overflow_slots(max: usize) -> usize {
    (max / 10).clamp(16, 64)
}

/// Above the connection cap: 429 with `Retry-After` and the contract's
/// JSON body, then close (what the client sent is read and dropped for a
/// moment, so closing does not reset the answer away).
async fn refuse_connection(mut stream: tokio::net::TcpStream, retry_after: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    metrics::counter!("flotilla_http_connections_refused_total").increment(1);
    let body = r#"{"statusCode":429,"error":"MaxLimit","message":"the server is at its connection cap; retry later"}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    limits: &ConnLimits,
) {
    let activity = Activity::new();
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let guard = tracker.begin();
        let app = app.clone();
        async move {
            // The request stays in flight until its response body has been
            // written, so a slow reader is not taken for an idle connection.
            let response = app.oneshot(req).await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                axum::body::Body::new(UntilWritten {
                    inner: body,
                    _guard: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts are kept by `Activity`; hyper's timer only serves its
    // internal sleeps.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            log_conn_end(res);
            return;
        }
        why = activity.expired(limits.header_read_timeout, limits.idle_timeout) => {
            // No request is in flight: nothing is lost by closing now.
            metrics::counter!("flotilla_http_connections_expired_total",
                "reason" => if why == Expiry::Idle { "idle" } else { "header_read" }).increment(1);
            tracing::trace!(%peer, reason = ?why, "closing a quiet connection");
            return;
        }
        _ = shutdown.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
        Ok(res) => log_conn_end(res),
        Err(_) => tracing::debug!(%peer, "connection did not close in time; dropped"),
    }
}

fn log_conn_end(res: Result<(), hyper::Error>) {
    if let Err(e) = res {
        // Timeouts, resets and malformed requests: the client's problem,
        // not an operator's.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
