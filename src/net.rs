//! Sockets: one deadline mechanism for every exchange, and the socket options and system calls
//! the programs need that `std::net` lacks.
//!
//! Why a module of its own: the conductor, the member's peer links and the client calls all
//! need the same two things, a deadline that a peer trickling one byte at a time cannot stretch,
//! and a few Linux socket options. Kept here, each exists once, behind a safe function; the one
//! option no well-kept crate wraps (`TCP_DEFER_ACCEPT`) is the only `unsafe` call.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A TCP stream whose reads and writes fail with [`io::ErrorKind::TimedOut`] once a deadline
/// passes, however the bytes trickle: a plain socket timeout restarts with every byte, which
/// would let a peer hold a thread indefinitely by sending, or taking, one byte at a time. It
/// borrows the socket rather than cloning it, so a connection costs one file descriptor.
///
/// The deadline can be moved ([`DeadlineStream::set_deadline`]) between exchanges, so one
/// reader serves a whole conversation: a first-line deadline, then one per request.
pub struct DeadlineStream<'a> {
    stream: &'a TcpStream,
    deadline: Cell<Instant>,
    /// Longest wait for any one read or write, within the deadline: a peer silent for this
    /// long fails even when the deadline is further away.
    idle: Cell<Option<Duration>>,
    /// Asked every [`CANCEL_CHECK`] while waiting: true ends the wait with
    /// [`io::ErrorKind::Interrupted`] (the program is quitting).
    cancelled: Option<&'a (dyn Fn() -> bool + Sync)>,
}

/// How often a cancellable wait asks whether it is cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

impl<'a> DeadlineStream<'a> {
    pub fn new(stream: &'a TcpStream, deadline: Instant) -> DeadlineStream<'a> {
        DeadlineStream {
            stream,
            deadline: Cell::new(deadline),
            idle: Cell::new(None),
            cancelled: None,
        }
    }

    /// Makes every wait end soon after `cancelled` turns true.
    pub fn cancellable(mut self, cancelled: &'a (dyn Fn() -> bool + Sync)) -> DeadlineStream<'a> {
        self.cancelled = Some(cancelled);
        self
    }

    /// A stream whose deadline is `timeout` from now.
    pub fn within(stream: &'a TcpStream, timeout: Duration) -> DeadlineStream<'a> {
        DeadlineStream::new(stream, Instant::now() + timeout)
    }

    pub fn set_deadline(&self, deadline: Instant) {
        self.deadline.set(deadline);
    }

    pub fn set_idle_timeout(&self, idle: Option<Duration>) {
        self.idle.set(idle);
    }

    pub fn stream(&self) -> &'a TcpStream {
        self.stream
    }

    fn time_left(&self) -> io::Result<Duration> {
        let left = self
            .deadline
            .get()
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(self.idle.get().map_or(left, |idle| idle.min(left)))
    }
}

impl DeadlineStream<'_> {
    /// Runs one read or write with the time left as its socket timeout; when cancellable, in
    /// slices of [`CANCEL_CHECK`], asking in between.
    fn wait_for<T>(
        &self,
        set_timeout: impl Fn(Option<Duration>) -> io::Result<()>,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        let Some(cancelled) = self.cancelled else {
            set_timeout(Some(self.time_left()?))?;
            return op();
        };
        let until = Instant::now() + self.time_left()?;
        loop {
            if cancelled() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
            }
            set_timeout(Some(left.min(CANCEL_CHECK)))?;
            match op() {
                Err(e)
                    if left > CANCEL_CHECK
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                other => return other,
            }
        }
    }
}

impl Read for DeadlineStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stream = self.stream;
        self.wait_for(|t| stream.set_read_timeout(t), || (&mut &*stream).read(buf))
    }
}

impl Write for DeadlineStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let stream = self.stream;
        self.wait_for(
            |t| stream.set_write_timeout(t),
            || (&mut &*stream).write(buf),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `addr` within `timeout`, giving up early once `cancelled` says so (checked every
/// tenth of a second), so that a thread dialing a peer that never answers does not hold up a
/// shutdown for the whole timeout.
pub fn connect(
    addr: SocketAddr,
    timeout: Duration,
    cancelled: &dyn Fn() -> bool,
) -> io::Result<TcpStream> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use socket2::{Domain, Protocol, Socket, Type};
    const SLICE: Duration = Duration::from_millis(100);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error())
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + timeout;
    loop {
        if cancelled() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ));
        }
        let wait = left.min(SLICE);
        let wait = Timespec {
            tv_sec: 0,
            tv_nsec: wait.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(&socket, PollFlags::OUT)];
        match poll(&mut fds, Some(&wait)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(error) = socket.take_error()? {
        return Err(error);
    }
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}

/// Caps the socket's sending rate in the kernel (`SO_MAX_PACING_RATE`, TCP's own pacing, which
/// this option turns on); `u64::MAX` lifts the cap.
#[cfg(target_os = "linux")]
pub fn pace(stream: &TcpStream, bytes_per_second: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let rate = bytes_per_second.max(1);
    // SAFETY: setsockopt reads the u64 on this stack frame, of the size given, on a socket the
    // caller keeps open for the call. Neither rustix nor socket2 wraps SO_MAX_PACING_RATE.
    let failed = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&rate as *const u64).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    } != 0;
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn pace(_stream: &TcpStream, _bytes_per_second: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Keeps at most `bytes` queued unsent in the kernel (`TCP_NOTSENT_LOWAT`), so that a short
/// message written after bulk data leaves soon, not after megabytes of queued bytes on a slow
/// uplink. Best effort: without it everything still works, with more latency.
pub fn limit_unsent(stream: &TcpStream, bytes: u32) {
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(bytes) {
        log::debug!("cannot limit unsent bytes: {e}");
    }
}

/// Sets the length of the queue of connections the kernel completes before `accept` takes them
/// (capped by the system's `somaxconn`). The standard library's 128 overflows under a burst of
/// connections, and a dropped SYN costs the client a one-second retransmission.
pub fn set_backlog(listener: &TcpListener, backlog: i32) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(backlog)
}

/// Asks the kernel to hand over a connection only once its first bytes arrive, or `wait` has
/// passed (`TCP_DEFER_ACCEPT`). For protocols where the client speaks first, a connection that
/// never sends then costs no thread and no turn of the accept loop. True if the kernel took it.
#[cfg(target_os = "linux")]
pub fn defer_accept(listener: &TcpListener, wait: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let seconds = wait.as_secs().clamp(1, 3600) as libc::c_int;
    // SAFETY: setsockopt reads one c_int that lives on this stack frame, of the size given, on
    // a socket the listener keeps open for the duration of the call. Neither rustix nor socket2
    // wraps TCP_DEFER_ACCEPT.
    let failed = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0;
    if failed {
        log::debug!(
            "cannot defer accepting connections until they send: {}",
            io::Error::last_os_error()
        );
    }
    !failed
}

#[cfg(not(target_os = "linux"))]
pub fn defer_accept(_listener: &TcpListener, _wait: Duration) -> bool {
    false
}

/// Whether the other side has sent anything yet (or closed), without blocking or consuming it.
pub fn has_sent(stream: &TcpStream) -> bool {
    use rustix::net::RecvFlags;
    let mut byte = [0u8; 1];
    rustix::net::recv(stream, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT).is_ok()
}

/// Sends what fits in the socket's buffer now, never blocking and never raising SIGPIPE.
pub fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    use rustix::net::SendFlags;
    Ok(rustix::net::send(
        stream,
        bytes,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?)
}

/// Sends `len` bytes of `file` from `offset` with `sendfile`, so file data goes from the page
/// cache to the socket without passing through our memory. The socket's own timeouts apply.
pub fn send_file(stream: &TcpStream, file: &File, offset: u64, len: usize) -> io::Result<()> {
    let mut position = offset;
    let mut left = len;
    while left > 0 {
        match rustix::fs::sendfile(stream, file, Some(&mut position), left) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended while sending from it",
                ))
            }
            Ok(sent) => left = left.saturating_sub(sent),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Raises this process's soft limit on open files towards `wanted` (as far as the hard limit
/// allows), and returns the limit in force afterwards.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return current;
    }
    let target = limit.maximum.map_or(wanted, |max| wanted.min(max));
    limit.current = Some(target);
    match setrlimit(Resource::Nofile, limit) {
        Ok(()) => target,
        Err(_) => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    #[test]
    fn a_deadline_bounds_the_whole_exchange() {
        let (server, mut client) = pair();
        client.write_all(b"ab").unwrap();
        let mut reader = DeadlineStream::within(&server, Duration::from_millis(300));
        let mut buf = [0u8; 2];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ab");
        // Nothing more comes: the read fails at the deadline, not later.
        let started = Instant::now();
        let error = reader.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // Once passed, it fails at once, and a new deadline revives it.
        reader.set_deadline(Instant::now());
        assert_eq!(
            reader.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        reader.set_deadline(Instant::now() + Duration::from_secs(5));
        client.write_all(b"c").unwrap();
        assert_eq!(reader.read(&mut buf).unwrap(), 1);
    }

    #[test]
    fn connects_and_gives_up_when_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr, Duration::from_secs(5), &|| false).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addr);
        drop(listener);
        // Nothing listens there any more: refused, not timed out.
        assert!(connect(addr, Duration::from_secs(5), &|| false).is_err());
        let error = connect(addr, Duration::from_secs(5), &|| true).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn an_idle_timeout_ends_a_silent_wait_before_the_deadline() {
        let (server, _client) = pair();
        let mut reader = DeadlineStream::within(&server, Duration::from_secs(30));
        reader.set_idle_timeout(Some(Duration::from_millis(100)));
        let started = Instant::now();
        assert!(reader.read(&mut [0u8; 1]).is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_cancelled_wait_ends_before_its_deadline() {
        let (server, _client) = pair();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let cancelled = || stop.load(std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut reader =
                DeadlineStream::within(&server, Duration::from_secs(30)).cancellable(&cancelled);
            let error = reader.read(&mut [0u8; 1]).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::Interrupted);
        });
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn peeks_and_non_blocking_sends() {
        let (server, mut client) = pair();
        assert!(!has_sent(&server));
        client.write_all(b"x").unwrap();
        let started = Instant::now();
        while !has_sent(&server) && started.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        assert!(has_sent(&server));
        assert_eq!(send_now(&server, b"busy\n").unwrap(), 5);
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"busy\n");
    }

    #[test]
    fn sends_a_file_range() {
        let (server, mut client) = pair();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        send_file(&server, &file, 3, 4).unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"3456");
        assert!(send_file(&server, &file, 8, 4).is_err());
    }

    #[test]
    fn the_fd_limit_never_goes_down() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert!(raise_fd_limit(16) >= before.min(16));
    }
}
