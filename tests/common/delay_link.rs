//! A TCP relay on 127.0.0.1 that holds every byte for a fixed time in each direction: a link
//! with a round trip, for tests of how a member copes with latency. Each accepted connection is
//! relayed to `target` by two pumps (one per direction), each a reader thread that stamps the
//! bytes it reads with when they may leave and a writer thread that sends them then. Dropping
//! the [`DelayLink`] shuts every connection down and joins every thread.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use torrentnchill::sync::Mutex;

pub struct DelayLink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl DelayLink {
    /// Relays connections made to [`DelayLink::addr`] to `target`, `one_way` late each way.
    pub fn start(target: SocketAddr, one_way: Duration) -> DelayLink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the relay's address");
        let stop = Arc::new(AtomicBool::new(false));
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (stop, sockets, threads) = (stop.clone(), sockets.clone(), threads.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    for stream in [&client, &server] {
                        let _ = stream.set_nodelay(true);
                        if let Ok(clone) = stream.try_clone() {
                            sockets.lock().push(clone);
                        }
                    }
                    let mut started = threads.lock();
                    for (from, to) in [(&client, &server), (&server, &client)] {
                        if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                            started.extend(pump(from, to, one_way));
                        }
                    }
                }
            })
        };
        DelayLink {
            addr,
            stop,
            sockets,
            threads,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; ends when either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) -> Vec<JoinHandle<()>> {
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0
                || chunks
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    });
    let writer = std::thread::spawn(move || {
        for (when, bytes) in due {
            // Holding the bytes until they are due is the link's latency, the point of it.
            let wait = when.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    vec![reader, writer]
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for socket in self.sockets.lock().iter() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        for thread in std::mem::take(&mut *self.threads.lock()) {
            let _ = thread.join();
        }
    }
}
