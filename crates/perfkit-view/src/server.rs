//! The local HTTP server: answers the page and the API from a [`Viewer`]
//! until stopped. It never opens a file.
//!
//! HTTP/1.1 is hyper's, on a small tokio runtime that the [`Server`] owns.
//! What one client can cost the viewer is bounded: a request's head is at
//! most 64 KiB and must arrive within 10 s, a connection whose answer is not
//! read for 5 s is closed, and at most 256 connections (fewer when the
//! process may open fewer files) are served at once. Past them, a new
//! connection takes the place of one that is waiting for a request: one
//! that never had an answer (sent nothing, or part of a head) before an
//! idle keep-alive one, the longest waiting first; when every one is being
//! answered, it waits in the listening socket's backlog. A failed `accept`
//! is tried again, never the end of serving.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::api::{Reply, Viewer};

/// How long a client may take to send a request's head, counted from when
/// the server waits for it (also on an idle keep-alive connection): clients
/// that connect and send nothing are closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may make no progress before its connection is closed:
/// a client that asks for a large answer and reads none of it (helper-49).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request's head (request line and headers), at most; past it the
/// client gets 431 and the connection is closed. tiny_http read a header
/// line of any length: 300 MB without a newline grew the viewer by as much.
const MAX_HEAD: usize = 64 << 10;
/// Connections open at once, at most (see [`connection_cap`]).
const MAX_CONNECTIONS: usize = 256;
/// Threads computing answers at once, at most (the tokio blocking pool).
const WORKERS: usize = 4;
/// How long a stop waits for answers being computed before leaving them.
const STOP_WAIT: Duration = Duration::from_secs(1);
/// The pause before an `accept` that failed is tried again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long a new connection past the cap waits for the one asked to make
/// room before another is asked (it was being answered after all).
const ROOM_WAIT: Duration = Duration::from_millis(100);

/// What one client may cost; [`Limits::for_this_process`] but in tests.
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_read_timeout: Duration,
    write_timeout: Duration,
    max_connections: usize,
}

impl Limits {
    fn for_this_process() -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_connections: connection_cap(),
        }
    }
}

/// [`MAX_CONNECTIONS`], or half the files this process may open if that is
/// fewer: each connection costs one descriptor, and the rest of the process
/// (Python, the profile's files) needs some too.
fn connection_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the `rlimit` we own and pass by pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let files = if ok { limit.rlim_cur } else { 1024 };
    usize::try_from(files / 2)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(8, MAX_CONNECTIONS)
}

/// A running server; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    /// The runtime that accepts, reads and writes. Multi-threaded with two
    /// workers rather than current_thread: it then needs no thread of ours
    /// to drive it, and stopping is one `shutdown_timeout` that drops every
    /// connection (a stalled one included) and the listening socket.
    /// Two workers, because I/O for one browser's few connections is light;
    /// the answers themselves (a slice of a million-node tree takes a while)
    /// are computed on the blocking pool, [`WORKERS`] threads at most, so
    /// that they never hold up the reading and writing of other requests.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Binds `host:port` (port 0: a free one) and starts answering.
    pub fn start(viewer: Arc<Viewer>, host: &str, port: u16) -> Result<Server, String> {
        Server::start_with(viewer, host, port, Limits::for_this_process())
    }

    fn start_with(
        viewer: Arc<Viewer>,
        host: &str,
        port: u16,
        limits: Limits,
    ) -> Result<Server, String> {
        let cannot_listen = |e: io::Error| format!("cannot listen on {host}:{port}: {e}");
        let listener = std::net::TcpListener::bind(resolve(host, port)?).map_err(cannot_listen)?;
        listener.set_nonblocking(true).map_err(cannot_listen)?;
        let addr = listener.local_addr().map_err(cannot_listen)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(WORKERS)
            .thread_name("perfkit-view")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the viewer's threads: {e}"))?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).map_err(cannot_listen)?
        };
        let site = Arc::new(Site {
            viewer,
            allowed_hosts: allowed_hosts(addr, host),
            connections: Connections::default(),
        });
        runtime.spawn(accept(listener, site, limits));
        Ok(Server {
            addr,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops answering: closes the listening socket and every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Waits at most [`STOP_WAIT`] for answers still being computed; one that
    /// takes longer ends on its own and is sent to no one, rather than
    /// holding up Ctrl-C.
    fn shutdown(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // (Dropped inside another runtime, where waiting is not allowed.)
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(STOP_WAIT);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What every connection answers from.
struct Site {
    viewer: Arc<Viewer>,
    allowed_hosts: Option<Vec<String>>,
    connections: Connections,
}

/// The connections being served, for choosing which one makes room for a
/// new one when all are taken.
struct Connections {
    open: Mutex<Vec<Arc<Connection>>>,
    /// What [`Connection::waiting_since`] counts from.
    epoch: Instant,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            open: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        }
    }
}

impl Connections {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks a connection waiting for a request (and not asked yet) to close:
    /// of those that never had an answer (idle sockets, heads sent a byte at
    /// a time) if any, else of the idle keep-alive ones (a page's, which it
    /// will use again), the one that has waited longest. False if every one
    /// is being answered.
    fn make_room(&self) -> bool {
        let open = self.list();
        let oldest = open
            .iter()
            .filter(|c| c.waiting() && !c.asked_to_close.load(Ordering::Relaxed))
            .min_by_key(|c| {
                (
                    c.answered.load(Ordering::Relaxed),
                    c.waiting_since.load(Ordering::Relaxed),
                )
            });
        match oldest {
            Some(c) => {
                c.asked_to_close.store(true, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One connection's state as [`Connections::make_room`] sees it; updated by
/// its own task only.
#[derive(Default)]
struct Connection {
    /// A request is being answered (its service future is alive).
    answering: AtomicBool,
    /// Its answer's writing waits for the client to read.
    writing: AtomicBool,
    /// It has had an answer: a client's keep-alive connection.
    answered: AtomicBool,
    /// When it last started waiting for a request (accepted, or its last
    /// answer handed over), in milliseconds of [`Connections::epoch`].
    waiting_since: AtomicU64,
    asked_to_close: AtomicBool,
    close: Notify,
}

impl Connection {
    /// Waiting for a request: nothing of it sent yet, or part of its head.
    fn waiting(&self) -> bool {
        !self.answering.load(Ordering::Relaxed) && !self.writing.load(Ordering::Relaxed)
    }
}

/// A connection's place in [`Connections`], given up when its task ends
/// (closed, failed, or dropped by the runtime's shutdown).
struct Registered {
    site: Arc<Site>,
    connection: Arc<Connection>,
}

impl Registered {
    fn new(site: Arc<Site>) -> Registered {
        let connection = Arc::new(Connection::default());
        connection
            .waiting_since
            .store(site.connections.now(), Ordering::Relaxed);
        site.connections.list().push(Arc::clone(&connection));
        Registered { site, connection }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.site
            .connections
            .list()
            .retain(|c| !Arc::ptr_eq(c, &self.connection));
    }
}

/// Marks its connection as answering while the answer's future is alive.
struct Answering(Arc<Site>, Arc<Connection>);

impl Answering {
    fn new(site: &Arc<Site>, connection: &Arc<Connection>) -> Answering {
        connection.answering.store(true, Ordering::Relaxed);
        Answering(Arc::clone(site), Arc::clone(connection))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let now = self.0.connections.now();
        self.1.waiting_since.store(now, Ordering::Relaxed);
        self.1.answered.store(true, Ordering::Relaxed);
        self.1.answering.store(false, Ordering::Relaxed);
    }
}

/// Accepts connections until the runtime stops, [`Limits::max_connections`]
/// served at once. Past them, the connection just accepted takes the place
/// of one waiting for a request (see [`Connections::make_room`]): 300 idle
/// sockets (or 300 that send their head a byte a second) kept a browser's
/// next request in the backlog for up to the 10 s header timeout. When all
/// are being answered it waits, unserved, until one ends (it is the only
/// one past the cap; later ones wait in the backlog).
///
/// A failed `accept` (EMFILE or ENFILE when no file can be opened,
/// ECONNABORTED, ...) leaves the socket listening: it is tried again after a
/// pause, and the connection waits in the backlog meanwhile. (tiny_http's
/// accept thread ended at the first failure, and the viewer with it.)
async fn accept(listener: TcpListener, site: Arc<Site>, limits: Limits) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = loop {
            match listener.accept().await {
                Ok((stream, _)) => break stream,
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            }
        };
        let permit = match Arc::clone(&open).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => loop {
                site.connections.make_room();
                let freed = Arc::clone(&open).acquire_owned();
                match tokio::time::timeout(ROOM_WAIT, freed).await {
                    Ok(Ok(permit)) => break permit,
                    Ok(Err(_)) => return, // (never: the semaphore is not closed)
                    Err(_) => {}          // (the one asked is being answered: ask another)
                }
            },
        };
        // Answers are written whole at once; Nagle would hold their last
        // segment back until the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        let registered = Registered::new(Arc::clone(&site));
        tokio::spawn(async move {
            serve(stream, &registered, limits).await;
            drop(registered);
            drop(permit);
        });
    }
}

/// Answers the requests of one connection until it closes or fails, or
/// until it is asked to make room: then it closes at once if it is waiting
/// for a request, else after the answer it is giving.
async fn serve(stream: TcpStream, registered: &Registered, limits: Limits) {
    let site = &registered.site;
    let me = &registered.connection;
    let io = TokioIo::new(WriteDeadline::new(
        stream,
        limits.write_timeout,
        Arc::clone(site),
        Arc::clone(me),
    ));
    let service = {
        let (site, me) = (Arc::clone(site), Arc::clone(me));
        hyper::service::service_fn(move |request| {
            let answering = Answering::new(&site, &me);
            let site = Arc::clone(&site);
            async move {
                let answer = answer(site, request).await;
                drop(answering);
                Ok::<_, Infallible>(answer)
            }
        })
    };
    let mut connection = pin!(hyper::server::conn::http1::Builder::new()
        // (Header names as they were written before, `Content-Type`:
        // clients that look them up case-sensitively find them.)
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service));
    let mut asked_to_close = pin!(me.close.notified());
    let mut closing = false;
    // (An error is the connection's end: the client left, sent no head in
    // time or too large a one, or read nothing; hyper answered what it could.)
    std::future::poll_fn(|cx| {
        if connection.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !closing && asked_to_close.as_mut().poll(cx).is_ready() {
            closing = true;
            if me.waiting() {
                // (Dropped: the socket is closed, a half-sent head with it.)
                return Poll::Ready(());
            }
            // Being answered: the answer is finished, then the connection closed.
            connection.as_mut().graceful_shutdown();
            return connection.as_mut().poll(cx).map(|_| ());
        }
        Poll::Pending
    })
    .await;
}

/// The address `--host` names: an IP address, or a name this machine
/// resolves (as snakeviz's `-H` takes), its IPv4 address first as browsers
/// try it. `localhost` is 127.0.0.1 whatever the resolver says first.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if host == "localhost" {
        return Ok(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let unknown = |why: String| {
        format!("--host {host:?} is neither an IP address such as 127.0.0.1 nor a name this machine resolves{why}")
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unknown(format!(" ({e})")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| unknown(String::new()))
}

/// Whether only this machine can reach `ip`: a loopback address, also when
/// written as an IPv4-mapped IPv6 one (`::ffff:127.0.0.1`), on which the
/// server listens on 127.0.0.1 only.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The Host headers a server on `addr` answers: on loopback, only loopback
/// names, the address it listens on (127.0.0.2 say) and the name it was
/// given (`--host`), so that a web page elsewhere cannot reach the data
/// through DNS rebinding; elsewhere, any.
pub fn allowed_hosts(addr: std::net::SocketAddr, given: &str) -> Option<Vec<String>> {
    is_loopback(addr.ip()).then(|| {
        let p = addr.port();
        let mut hosts = vec![
            format!("127.0.0.1:{p}"),
            format!("localhost:{p}"),
            format!("[::1]:{p}"),
            addr.to_string(),
        ];
        if given.parse::<IpAddr>().is_err() {
            hosts.push(format!("{given}:{p}"));
        }
        if p == 80 {
            // Browsers leave HTTP's default port out of the Host header.
            let bare: Vec<String> = hosts
                .iter()
                .filter_map(|h| h.strip_suffix(":80").map(str::to_string))
                .collect();
            hosts.extend(bare);
        }
        hosts
    })
}

/// The Host check: on loopback (`allowed` given) a request is answered only
/// if its Host header names this server (DNS rebinding); a request with
/// several Host headers is refused everywhere (RFC 9112 asks for 400), as
/// only the first was checked before.
fn check_host(allowed: Option<&[String]>, headers: &HeaderMap) -> Result<(), Reply> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Reply {
            status: 400,
            content_type: "text/plain; charset=utf-8",
            body: "bad request: several Host headers\n".into(),
        });
    }
    let known = |host: &HeaderValue| {
        allowed.is_none_or(|allowed| {
            allowed
                .iter()
                .any(|a| host.as_bytes().eq_ignore_ascii_case(a.as_bytes()))
        })
    };
    if first.is_none_or(known) {
        Ok(())
    } else {
        Err(Reply {
            status: 403,
            content_type: "text/plain; charset=utf-8",
            body: "forbidden: unknown Host\n".into(),
        })
    }
}

fn internal_error() -> Reply {
    Reply {
        status: 500,
        content_type: "application/json",
        body: r#"{"error":"internal error"}"#.into(),
    }
}

async fn answer(site: Arc<Site>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let head_only = request.method() == Method::HEAD;
    let reply = match check_host(site.allowed_hosts.as_deref(), request.headers()) {
        Err(refused) => refused,
        Ok(()) => {
            let method = request.method().as_str().to_string();
            // The request target as sent: an absolute one (`http://h/p`) is
            // no route, as before.
            let target = request.uri().to_string();
            // Computed off the I/O threads (see `Server::runtime`).
            let mut computing = Computing(tokio::task::spawn_blocking(move || {
                // A panic while answering is a bug; it must cost one request, not the server.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    site.viewer.handle(&method, &target)
                }))
                .unwrap_or_else(|_| internal_error())
            }));
            (&mut computing.0)
                .await
                .unwrap_or_else(|_| internal_error())
        }
    };
    response(reply, head_only)
}

/// An answer being computed on the blocking pool, given up if its client
/// leaves first (hyper then drops the request's future): one that has not
/// started is never started. (Its closure stayed queued and was computed
/// for no one: 24 slices of a large profile whose page was reloaded kept
/// the [`WORKERS`] busy for seconds, and the new page's requests waited.)
/// One already started runs to its end; nothing is sent.
struct Computing(tokio::task::JoinHandle<Reply>);

impl Drop for Computing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reply with the headers every answer carries. The answer to a HEAD
/// request has the head of the GET's, its Content-Length too, and no body.
fn response(reply: Reply, head_only: bool) -> Response<Full<Bytes>> {
    const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                       connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    let length = reply.body.len();
    let body = if head_only {
        Bytes::new()
    } else {
        Bytes::from(reply.body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(reply.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    if reply.status == 405 {
        // RFC 9110: a 405 names the methods the resource has.
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if head_only {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// A connection whose writes fail once none has made progress for `limit`:
/// hyper has no write timeout, and a client that asks for a large answer
/// and reads none of it would keep its connection, and the answer's memory,
/// for as long as it stays connected. It holds no thread meanwhile.
///
/// It also tells [`Connection::writing`]: a connection whose answer waits
/// for its client is not one that may make room for another.
struct WriteDeadline {
    stream: TcpStream,
    limit: Duration,
    /// Started when a write could not go on; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    site: Arc<Site>,
    connection: Arc<Connection>,
}

impl WriteDeadline {
    fn new(
        stream: TcpStream,
        limit: Duration,
        site: Arc<Site>,
        connection: Arc<Connection>,
    ) -> WriteDeadline {
        WriteDeadline {
            stream,
            limit,
            stalled: None,
            site,
            connection,
        }
    }

    /// `polled`, a write's outcome; an error once it has waited for `limit`.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            if self.stalled.take().is_some() {
                let now = self.site.connections.now();
                self.connection.waiting_since.store(now, Ordering::Relaxed);
                self.connection.writing.store(false, Ordering::Relaxed);
            }
            return polled;
        }
        self.connection.writing.store(true, Ordering::Relaxed);
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perfkit_profile::{CallTree, FuncKey, Meta, Node, Profile, ThreadTree};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// A viewer of `funcs` functions each called once from the first:
    /// `/api/funcs` answers about 80 bytes a function.
    fn viewer(funcs: u32) -> Arc<Viewer> {
        let keys: Vec<FuncKey> = (0..funcs)
            .map(|i| {
                FuncKey::new(
                    "some/rather/long/path/module.py",
                    i + 1,
                    format!("function_{i:08}"),
                )
            })
            .collect();
        let mut thread = ThreadTree::new("MainThread", 1, 1);
        thread.nodes.push(Node {
            func: 0,
            parent: 0,
            calls: 1,
            own_ns: 1000,
            total_ns: 1000 * u64::from(funcs),
        });
        for f in 1..funcs {
            thread.nodes.push(Node {
                func: f,
                parent: 1,
                calls: 1,
                own_ns: 1000,
                total_ns: 1000,
            });
        }
        let tree = CallTree {
            funcs: keys,
            threads: vec![thread],
            meta: Meta {
                exact: true,
                ..Meta::default()
            },
        };
        let viewer = Viewer::single(
            "t.prof".into(),
            Profile {
                stats: tree.to_stats(),
                tree,
            },
        );
        viewer.prepare();
        Arc::new(viewer)
    }

    fn limits() -> Limits {
        Limits::for_this_process()
    }

    fn connect(server: &Server) -> TcpStream {
        let c = TcpStream::connect(server.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// Everything the server sends until it closes the connection.
    fn read_all(c: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        got
    }

    fn request(server: &Server, lines: &[&str]) -> String {
        let mut c = connect(server);
        let text = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n"));
        c.write_all(text.as_bytes()).unwrap();
        String::from_utf8_lossy(&read_all(&mut c)).into_owned()
    }

    fn host(server: &Server) -> String {
        format!("Host: {}", server.addr())
    }

    fn status(answer: &str) -> u16 {
        answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {answer:?}"))
    }

    #[test]
    fn a_head_that_never_ends_is_refused_not_kept() {
        let server = Server::start(viewer(10), "127.0.0.1", 0).unwrap();
        let mut c = connect(&server);
        c.write_all(b"GET /").unwrap();
        let chunk = vec![b'a'; 64 << 10];
        let mut sent = 0usize;
        while sent < 50 << 20 {
            if c.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        // (The kernel's buffers take some megabytes before the server's
        // close is seen; the server itself reads 64 KiB of it.)
        assert!(
            sent < 32 << 20,
            "the server read {} MB of one header line",
            sent >> 20
        );
        let answer = String::from_utf8_lossy(&read_all(&mut c)).into_owned();
        assert!(answer.is_empty() || status(&answer) == 431, "{answer:?}");
        let ok = request(&server, &["GET /api/meta HTTP/1.1", &host(&server)]);
        assert!(answer.is_empty() || ok.starts_with("HTTP/1.1"));
    }

    #[test]
    fn clients_that_send_nothing_are_closed_after_the_header_read_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..limits()
        };
        let server = Server::start_with(viewer(10), "127.0.0.1", 0, limits).unwrap();
        let t0 = Instant::now();
        let mut idle = connect(&server);
        assert!(read_all(&mut idle).is_empty());
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // A keep-alive connection that asks nothing more is closed too.
        let mut kept = connect(&server);
        let host = format!("Host: {}", server.addr());
        kept.write_all(format!("GET /api/meta HTTP/1.1\r\n{host}\r\n\r\n").as_bytes())
            .unwrap();
        let t0 = Instant::now();
        let answer = String::from_utf8_lossy(&read_all(&mut kept)).into_owned();
        assert_eq!(status(&answer), 200, "{answer}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }

    fn ask(c: &mut TcpStream, server: &Server) {
        let text = format!(
            "GET /api/meta HTTP/1.1\r\n{}\r\nConnection: close\r\n\r\n",
            host(server)
        );
        c.write_all(text.as_bytes()).unwrap();
    }

    /// One answer read from a keep-alive connection, by its Content-Length.
    fn read_one(c: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut byte).unwrap();
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{head}"));
        let mut body = vec![0u8; length];
        c.read_exact(&mut body).unwrap();
        head + &String::from_utf8_lossy(&body)
    }

    fn kept_alive(server: &Server) -> TcpStream {
        let mut c = connect(server);
        let ask = format!("GET /api/meta HTTP/1.1\r\n{}\r\n\r\n", host(server));
        c.write_all(ask.as_bytes()).unwrap();
        assert_eq!(status(&read_one(&mut c)), 200);
        c
    }

    #[test]
    fn past_the_cap_the_longest_waiting_connection_makes_room() {
        // 300 idle sockets kept a browser's request in the backlog until the
        // header timeout closed one (10 s): a new connection now takes the
        // place of one waiting for a request, whether it sent nothing or part
        // of a head, the longest waiting first; a page's keep-alive
        // connection (answered before) only when no other is waiting.
        let limits = Limits {
            max_connections: 3,
            ..limits()
        };
        let server = Server::start_with(viewer(10), "127.0.0.1", 0, limits).unwrap();
        let mut kept = kept_alive(&server);
        std::thread::sleep(Duration::from_millis(50));
        let mut oldest = connect(&server);
        std::thread::sleep(Duration::from_millis(50));
        let mut half = connect(&server);
        half.write_all(b"GET /api/meta HTTP/1.1\r\nHost: 12")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut young = None;
        for (round, closed) in [&mut oldest, &mut half].into_iter().enumerate() {
            let t0 = Instant::now();
            let mut new = connect(&server);
            ask(&mut new, &server);
            let answer = String::from_utf8_lossy(&read_all(&mut new)).into_owned();
            assert_eq!(status(&answer), 200, "{answer}");
            let waited = t0.elapsed();
            assert!(waited < Duration::from_secs(2), "{round}: {waited:?}");
            assert!(read_all(closed).is_empty(), "{round}");
            // Back at the cap with one younger than `half`.
            young = Some(connect(&server));
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(young);
        // The keep-alive one is still served.
        let again = format!("GET /api/meta HTTP/1.1\r\n{}\r\n\r\n", host(&server));
        kept.write_all(again.as_bytes()).unwrap();
        assert_eq!(status(&read_one(&mut kept)), 200);
        // With only keep-alive connections waiting, the longest waiting goes.
        std::thread::sleep(Duration::from_millis(50));
        let others: Vec<TcpStream> = (0..2).map(|_| kept_alive(&server)).collect();
        let t0 = Instant::now();
        let mut new = connect(&server);
        ask(&mut new, &server);
        assert_eq!(status(&String::from_utf8_lossy(&read_all(&mut new))), 200);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(read_all(&mut kept).is_empty());
        drop(others);
    }

    #[test]
    fn past_the_cap_connections_being_answered_are_not_closed() {
        // When every connection is being answered (here: answers their
        // clients do not read), a new one waits until one of them ends.
        let limits = Limits {
            max_connections: 2,
            write_timeout: Duration::from_millis(1500),
            ..limits()
        };
        let server = Server::start_with(viewer(100_000), "127.0.0.1", 0, limits).unwrap();
        let stalled: Vec<_> = (0..2).map(|_| stalled_client(&server)).collect();
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let mut waiting = connect(&server);
        ask(&mut waiting, &server);
        let answer = String::from_utf8_lossy(&read_all(&mut waiting)).into_owned();
        assert_eq!(status(&answer), 200, "{answer}");
        let waited = t0.elapsed();
        assert!(
            waited > Duration::from_millis(900) && waited < Duration::from_secs(5),
            "answered past the cap after {waited:?}"
        );
        drop(stalled);
    }

    /// Asks for a large answer (several MB) on a socket with a small
    /// receive buffer (set before connecting, so that the window stays
    /// small), and reads none of it.
    fn stalled_client(server: &Server) -> TcpStream {
        use std::os::fd::FromRawFd;
        let SocketAddr::V4(addr) = server.addr() else {
            panic!("not IPv4: {}", server.addr());
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let size: libc::c_int = 4096;
        // SAFETY: a new socket (checked), given an int and a sockaddr_in of
        // the sizes passed, then owned by the TcpStream alone.
        let mut c = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "{}", io::Error::last_os_error());
            let c = TcpStream::from_raw_fd(fd);
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            let rc = libc::connect(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            c
        };
        c.write_all(format!("GET /api/funcs HTTP/1.1\r\n{}\r\n\r\n", host(server)).as_bytes())
            .unwrap();
        c
    }

    #[test]
    fn a_client_that_reads_nothing_is_dropped_and_holds_no_one_up() {
        let limits = Limits {
            write_timeout: Duration::from_millis(500),
            ..limits()
        };
        let server = Server::start_with(viewer(100_000), "127.0.0.1", 0, limits).unwrap();
        let mut stalled: Vec<_> = (0..8).map(|_| stalled_client(&server)).collect();
        std::thread::sleep(Duration::from_millis(300));
        // Others are answered meanwhile.
        let t0 = Instant::now();
        let answer = request(&server, &["GET /api/meta HTTP/1.1", &host(&server)]);
        assert_eq!(status(&answer), 200);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        std::thread::sleep(Duration::from_millis(2000));
        // Past the write timeout the server has closed them: what they read
        // is a part of the answer, then the end.
        for s in &mut stalled {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let got = read_all(s);
            let end = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(got.len());
            let text = String::from_utf8_lossy(&got[..end]).into_owned();
            assert_eq!(status(&text), 200);
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{text}"));
            assert!(length > 4 << 20, "{length}");
            assert!(got.len() < length, "{} of {length}", got.len());
        }
    }

    #[test]
    fn stop_returns_within_a_second_with_stalled_and_idle_clients() {
        let server = Server::start(viewer(100_000), "127.0.0.1", 0).unwrap();
        let addr = server.addr();
        let stalled: Vec<_> = (0..4).map(|_| stalled_client(&server)).collect();
        let idle: Vec<TcpStream> = (0..20).map(|_| connect(&server)).collect();
        let mut half = connect(&server);
        half.write_all(b"GET /api/meta HTTP/1.1\r\nHost: loc")
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        server.stop();
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        // Every connection and the listening socket are closed.
        assert!(read_all(&mut half).is_empty());
        assert!(TcpStream::connect(addr).is_err());
        drop((stalled, idle));
    }

    #[test]
    fn several_host_headers_or_an_unknown_one_are_refused() {
        let allowed = allowed_hosts("127.0.0.1:8080".parse().unwrap(), "127.0.0.1");
        let check = |hosts: &[&str], allowed: Option<&[String]>| {
            let mut headers = HeaderMap::new();
            for h in hosts {
                headers.append(header::HOST, HeaderValue::from_str(h).unwrap());
            }
            check_host(allowed, &headers).map_err(|r| r.status)
        };
        let on_loopback = allowed.as_deref();
        assert_eq!(check(&["127.0.0.1:8080"], on_loopback), Ok(()));
        assert_eq!(check(&["LOCALHOST:8080"], on_loopback), Ok(()));
        assert_eq!(check(&[], on_loopback), Ok(()));
        assert_eq!(check(&["evil.example:8080"], on_loopback), Err(403));
        assert_eq!(
            check(&["127.0.0.1:8080", "evil.example:8080"], on_loopback),
            Err(400)
        );
        assert_eq!(
            check(&["evil.example:8080", "127.0.0.1:8080"], on_loopback),
            Err(400)
        );
        assert_eq!(
            check(&["127.0.0.1:8080", "127.0.0.1:8080"], on_loopback),
            Err(400)
        );
        assert_eq!(check(&["anything:8080"], None), Ok(()));
        assert_eq!(check(&["a:1", "b:2"], None), Err(400));
    }

    #[test]
    fn answers_carry_the_security_headers_and_head_has_no_body() {
        let server = Server::start(viewer(1000), "127.0.0.1", 0).unwrap();
        let host = format!("Host: {}", server.addr());
        let get = request(&server, &["GET /api/funcs HTTP/1.1", &host]);
        let head = request(&server, &["HEAD /api/funcs HTTP/1.1", &host]);
        let (get_head, get_body) = get.split_once("\r\n\r\n").unwrap();
        let (head_head, head_body) = head.split_once("\r\n\r\n").unwrap();
        assert_eq!(head_body, "");
        assert!(get_body.len() > 10_000);
        let length = format!("Content-Length: {}", get_body.len());
        assert!(head_head.contains(&length), "{head_head}");
        assert!(get_head.contains(&length), "{get_head}");
        for answer in [
            head_head.to_string(),
            get_head.to_string(),
            request(&server, &["GET /api/meta HTTP/1.1", "Host: evil.example"]),
            request(
                &server,
                &["POST /api/meta HTTP/1.1", &host, "Content-Length: 0"],
            ),
            request(&server, &["GET /etc/passwd HTTP/1.1", &host]),
        ] {
            for h in [
                "Cache-Control: no-store",
                "X-Content-Type-Options: nosniff",
                "Referrer-Policy: no-referrer",
                "Content-Security-Policy: default-src 'none';",
            ] {
                assert!(answer.contains(h), "{h} missing in {answer}");
            }
            assert_eq!(
                answer.contains("Allow: GET, HEAD"),
                status(&answer) == 405,
                "{answer}"
            );
        }
    }
}
