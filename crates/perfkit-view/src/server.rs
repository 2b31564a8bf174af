//! The local HTTP server: answers the page and the API from a [`Viewer`]
//! on a couple of worker threads until stopped. It never opens a file.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::api::Viewer;

/// How often the workers look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
const WORKERS: usize = 4;
/// How long a write to a client that reads nothing may block a worker: a
/// stalled client of a large answer held a worker, and the server's stop,
/// for as long as it stayed connected (helper-49).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stop waits for workers still writing before leaving them.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// A running server; stops (and joins its threads) when dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    /// One message per worker that has ended.
    ended: Receiver<()>,
}

impl Server {
    /// Binds `host:port` (port 0: a free one) and starts answering.
    pub fn start(viewer: Arc<Viewer>, host: &str, port: u16) -> Result<Server, String> {
        let listener = TcpListener::bind(resolve(host, port)?)
            .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
        set_write_timeout(&listener, WRITE_TIMEOUT)
            .map_err(|e| format!("cannot set up the socket on {host}:{port}: {e}"))?;
        let accepting = Arc::new(
            Accepting::new(listener).map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?,
        );
        let addr = accepting
            .servers()
            .0
            .http
            .server_addr()
            .to_ip()
            .ok_or_else(|| "the server has no IP address".to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let allowed_hosts = allowed_hosts(addr, host);
        let (ended_tx, ended) = mpsc::channel();
        let workers = (0..WORKERS)
            .map(|_| {
                let accepting = Arc::clone(&accepting);
                let stop = Arc::clone(&stop);
                let viewer = Arc::clone(&viewer);
                let allowed = allowed_hosts.clone();
                let ended = ended_tx.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let (http, earlier) = accepting.servers();
                        // Requests on connections a replaced server accepted (keep-alive).
                        for old in &earlier {
                            if let Ok(Some(request)) = old.try_recv() {
                                answer(&viewer, allowed.as_deref(), request);
                            }
                        }
                        match http.recv_timeout(POLL) {
                            Ok(Some(request)) => answer(&viewer, allowed.as_deref(), request),
                            Ok(None) => {}
                            Err(_) => {
                                accepting.failed(&http);
                                std::thread::sleep(POLL);
                            }
                        }
                    }
                    let _ = ended.send(());
                })
            })
            .collect();
        Ok(Server {
            addr,
            stop,
            workers,
            ended,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops answering and waits for the workers.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Joins the workers that end within [`STOP_WAIT`]; one still blocked
    /// writing to a client is left to end on its own (its write times out)
    /// rather than holding up Ctrl-C.
    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + STOP_WAIT;
        let mut ended = 0;
        while ended < self.workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ended.recv_timeout(left) {
                Ok(()) => ended += 1,
                Err(_) => break,
            }
        }
        for w in self.workers.drain(..) {
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The tiny_http servers that accept on the listening socket. tiny_http's
/// accept thread ends at the first `accept` that fails, and panics when the
/// descriptor it then needs for the connection cannot be had; its server
/// then listens no more. So when as many clients had connected as the
/// process may open files (each costs two: about 510 clients that send
/// nothing under the usual limit of 1024), the viewer refused every
/// connection from then on, even once they had gone. The socket is kept
/// here, so that connections wait in its backlog, and a server whose accept
/// thread has ended is replaced by a new one on the same socket (tried again
/// at each poll while no file can be opened).
struct Accepting {
    state: Mutex<AcceptState>,
    listener: TcpListener,
    /// The listening socket's identity (`st_dev`, `st_ino`).
    socket: (u64, u64),
}

struct AcceptState {
    current: Arc<HttpServer>,
    /// The descriptor of the socket `current`'s accept thread owns; closed
    /// (or another file's) once that thread has ended.
    accept_fd: RawFd,
    /// `current` reported that it accepts no more.
    failed: bool,
    /// Servers replaced, still asked for requests on the connections they
    /// accepted before (a browser's keep-alive connection): those that
    /// answered a request, and the latest of the others.
    earlier: VecDeque<Arc<HttpServer>>,
}

/// A tiny_http server, and whether it has given a request to answer.
struct HttpServer {
    http: tiny_http::Server,
    served: AtomicBool,
}

impl HttpServer {
    fn new(http: tiny_http::Server) -> HttpServer {
        HttpServer {
            http,
            served: AtomicBool::new(false),
        }
    }

    fn recv_timeout(&self, timeout: Duration) -> std::io::Result<Option<tiny_http::Request>> {
        self.note(self.http.recv_timeout(timeout))
    }

    fn try_recv(&self) -> std::io::Result<Option<tiny_http::Request>> {
        self.note(self.http.try_recv())
    }

    fn note(
        &self,
        got: std::io::Result<Option<tiny_http::Request>>,
    ) -> std::io::Result<Option<tiny_http::Request>> {
        if matches!(got, Ok(Some(_))) {
            self.served.store(true, Ordering::Relaxed);
        }
        got
    }
}

/// Replaced servers still asked for requests. Past it, one that never gave
/// a request (its clients sent nothing) is let go first: a request on a
/// connection of a server let go would wait for ever.
const EARLIER_KEPT: usize = 16;

impl Accepting {
    fn new(listener: TcpListener) -> std::io::Result<Accepting> {
        silence_tiny_http_panics();
        let socket = file_identity(listener.as_raw_fd())?;
        let (http, accept_fd) = serve_on(&listener)?;
        Ok(Accepting {
            state: Mutex::new(AcceptState {
                current: Arc::new(HttpServer::new(http)),
                accept_fd,
                failed: false,
                earlier: VecDeque::new(),
            }),
            listener,
            socket,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AcceptState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The server accepting now (a new one if the last stopped), and those it replaced.
    fn servers(&self) -> (Arc<HttpServer>, Vec<Arc<HttpServer>>) {
        let mut state = self.lock();
        if state.failed || file_identity(state.accept_fd).ok() != Some(self.socket) {
            self.replace(&mut state);
        }
        (
            Arc::clone(&state.current),
            state.earlier.iter().cloned().collect(),
        )
    }

    /// `http` reported that it stopped accepting.
    fn failed(&self, http: &Arc<HttpServer>) {
        let mut state = self.lock();
        if Arc::ptr_eq(&state.current, http) {
            state.failed = true;
        }
    }

    fn replace(&self, state: &mut AcceptState) {
        // (No file or thread to be had yet: tried again at the next poll.)
        let Ok((http, accept_fd)) = serve_on(&self.listener) else {
            return;
        };
        let old = std::mem::replace(&mut state.current, Arc::new(HttpServer::new(http)));
        state.accept_fd = accept_fd;
        state.failed = false;
        state.earlier.push_back(old);
        if state.earlier.len() > EARLIER_KEPT {
            let idle = state
                .earlier
                .iter()
                .position(|e| !e.served.load(Ordering::Relaxed));
            state.earlier.remove(idle.unwrap_or(0));
        }
    }
}

/// A tiny_http server accepting on a copy of `listener`, and that copy's descriptor.
fn serve_on(listener: &TcpListener) -> std::io::Result<(tiny_http::Server, RawFd)> {
    let copy = listener.try_clone()?;
    let fd = copy.as_raw_fd();
    // (tiny_http panics when it cannot start its accept thread)
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tiny_http::Server::from_listener(copy, None)
    })) {
        Ok(Ok(http)) => Ok((http, fd)),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other("cannot start a thread")),
    }
}

/// The file a descriptor is open on, as (`st_dev`, `st_ino`).
fn file_identity(fd: RawFd) -> std::io::Result<(u64, u64)> {
    // SAFETY: fstat writes only the `stat` we own; a descriptor that is not
    // open is an error (EBADF), not undefined behaviour.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st
    };
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// tiny_http's accept thread panics when a connection's second descriptor
/// cannot be had; [`Accepting`] replaces that thread, so the panic is no
/// crash, and its message (a Rust panic on the viewer's stderr) is left
/// out. Any other panic is reported as before.
fn silence_tiny_http_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tiny_http = info.location().is_some_and(|l| {
                l.file().contains("/tiny_http-") || l.file().contains("\\tiny_http-")
            });
            if !in_tiny_http {
                previous(info);
            }
        }));
    });
}

/// Sets SO_SNDTIMEO on the listening socket; Linux copies it to every
/// socket `accept` returns, which tiny_http keeps to itself.
fn set_write_timeout(listener: &TcpListener, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on a socket this listener owns, with a timeval of
    // the size passed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("static header is valid")
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

fn answer(viewer: &Viewer, allowed_hosts: Option<&[String]>, request: tiny_http::Request) {
    let host_ok = match allowed_hosts {
        None => true,
        Some(allowed) => request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Host"))
            .is_none_or(|h| {
                allowed
                    .iter()
                    .any(|a| h.value.as_str().eq_ignore_ascii_case(a))
            }),
    };
    let reply = if host_ok {
        let method = request.method().as_str().to_string();
        // A panic while answering is a bug; it must cost one request, not the server.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            viewer.handle(&method, request.url())
        }))
        .unwrap_or_else(|_| crate::api::Reply {
            status: 500,
            content_type: "application/json",
            body: r#"{"error":"internal error"}"#.into(),
        })
    } else {
        crate::api::Reply {
            status: 403,
            content_type: "text/plain; charset=utf-8",
            body: "forbidden: unknown Host\n".into(),
        }
    };
    let csp = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
               connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
    let large = reply.body.len() > SMALL_ANSWER;
    let mut response = tiny_http::Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", reply.content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Referrer-Policy", "no-referrer"))
        .with_header(header("Content-Security-Policy", csp));
    if reply.status == 405 {
        // RFC 9110: a 405 names the methods the resource has.
        response.add_header(header("Allow", "GET, HEAD"));
    }
    // A large answer is written by a thread of its own, so that a client
    // that reads slowly or not at all holds that thread, not a worker: the
    // write timeout is per send, and a send that moves a little at a time
    // held a worker for as long as the client liked (helper-55: four such
    // clients held every request for 15 s). Small answers fit the socket's
    // buffer and are written here.
    let reserved = large
        && WRITERS
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_WRITERS).then_some(n + 1)
            })
            .is_ok();
    if reserved {
        let spawned = std::thread::Builder::new()
            .name("perfkit-view-writer".into())
            .spawn(move || {
                let _ = request.respond(response);
                WRITERS.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // (No thread to be had: the request is dropped, which tiny_http
            // answers with an error status.)
            WRITERS.fetch_sub(1, Ordering::SeqCst);
        }
        return;
    }
    let _ = request.respond(response);
}

/// Answers up to this size are written by the worker that made them.
const SMALL_ANSWER: usize = 64 << 10;
/// Threads writing large answers at once, at most; past it a worker writes.
const MAX_WRITERS: usize = 32;
static WRITERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
