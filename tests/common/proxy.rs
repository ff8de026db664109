//! A TCP relay in front of a member, to make 127.0.0.1 behave like a slow link that a test can
//! interrupt, and to count what really went through.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use torrentnchill::sync::Mutex;

/// A TCP relay on 127.0.0.1 in front of a member's listening port. It limits the bytes that go
/// from the member behind it to whoever connected (a slow link, so that a transfer of a few MiB
/// lasts long enough to interrupt) and counts them (what a downloader really received).
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<ProxyState>,
    accept_thread: Option<JoinHandle<()>>,
}

struct ProxyState {
    upstream: SocketAddr,
    /// Bytes per second towards the client; 0 means no limit.
    rate: AtomicU64,
    /// When the next byte may be sent, as nanoseconds after `epoch`.
    next_send: Mutex<Duration>,
    epoch: Instant,
    bytes_down: AtomicU64,
    connections: AtomicUsize,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, rate: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            rate: AtomicU64::new(rate),
            next_send: Mutex::new(Duration::ZERO),
            epoch: Instant::now(),
            bytes_down: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let for_thread = Arc::clone(&state);
        let accept_thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if for_thread.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                for_thread.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&for_thread);
                std::thread::spawn(move || relay(&state, client));
            }
        });
        Proxy {
            addr,
            state,
            accept_thread: Some(accept_thread),
        }
    }

    /// Bytes relayed from the member behind the proxy to its clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.state.bytes_down.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Changes the limit (bytes per second, 0 for none) for what is relayed from now on.
    pub fn set_rate(&self, rate: u64) {
        self.state.rate.store(rate, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for stream in self.state.streams.lock().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn relay(state: &Arc<ProxyState>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect_timeout(&state.upstream, Duration::from_secs(2)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
        if let Ok(clone) = s.try_clone() {
            state.streams.lock().push(clone);
        }
    }
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let up_state = Arc::clone(state);
    let up = std::thread::spawn(move || pump(&up_state, c2, u2, false));
    pump(state, upstream, client, true);
    let _ = up.join();
}

/// Copies `from` to `to` until either side ends; `limited` applies the rate limit and counts.
fn pump(state: &ProxyState, mut from: TcpStream, mut to: TcpStream, limited: bool) {
    use std::io::Write;
    let mut buf = vec![0u8; 8192];
    while !state.stop.load(Ordering::SeqCst) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if limited {
            pace(state, n);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if limited {
            state.bytes_down.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Waits for this chunk's turn on the simulated link (a token bucket shared by every
/// connection through the proxy). The sleep is the link's speed, not a wait for a condition.
fn pace(state: &ProxyState, n: usize) {
    let rate = state.rate.load(Ordering::SeqCst);
    if rate == 0 {
        return;
    }
    let cost = Duration::from_secs_f64(n as f64 / rate as f64);
    let start = {
        let mut next = state.next_send.lock();
        let now = state.epoch.elapsed();
        let start = (*next).max(now);
        *next = start + cost;
        start
    };
    let now = state.epoch.elapsed();
    if start > now {
        std::thread::sleep(start - now);
    }
}
