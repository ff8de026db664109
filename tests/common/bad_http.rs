//! An HTTP server that gets Range requests wrong in one chosen way, for the origin tests: what
//! real servers, proxies and broken mirrors do, each of which a member must refuse without
//! writing a byte. One request per connection; stopped and joined when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// `200 OK` with the whole file: the server ignores Range.
    WholeBody,
    /// `416 Range Not Satisfiable` to every request.
    NotSatisfiable,
    /// A right `Content-Range`, a `Content-Length` one byte short, and that many bytes.
    WrongLength,
    /// `302` to itself, forever.
    RedirectLoop,
    /// The right headers, half the part, then the connection closed.
    CloseEarly,
    /// The right headers, half the part, then nothing (until the server stops).
    Stall,
    /// `206` with a `Content-Range` one byte off the range asked for.
    WrongRange,
    /// A correct answer with one byte of the part flipped.
    Corrupt,
}

pub struct BadHttp {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl BadHttp {
    pub fn start(data: Vec<u8>, behaviour: Misbehaviour) -> BadHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let data = Arc::new(data);
        let (stop_for, requests_for) = (Arc::clone(&stop), Arc::clone(&requests));
        let thread = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            for stream in listener.incoming() {
                if stop_for.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                requests_for.fetch_add(1, Ordering::SeqCst);
                let (data, stop) = (Arc::clone(&data), Arc::clone(&stop_for));
                handlers.push(std::thread::spawn(move || {
                    let _ = answer(stream, &data, behaviour, &stop);
                }));
            }
            for handler in handlers {
                let _ = handler.join();
            }
        });
        BadHttp {
            url: format!("http://{addr}/file.bin"),
            requests,
            stop,
            addr,
            thread: Some(thread),
        }
    }
}

impl Drop for BadHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the request head (bounded) and returns the range asked for.
fn read_range(stream: &TcpStream) -> std::io::Result<Option<(u64, u64)>> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.take(64 << 10));
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(range);
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("range:") {
            let value = value.trim().trim_start_matches("bytes=");
            if let Some((first, last)) = value.split_once('-') {
                range = first.parse().ok().zip(last.parse().ok());
            }
        }
    }
}

fn answer(
    mut stream: TcpStream,
    data: &[u8],
    behaviour: Misbehaviour,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let Some((first, last)) = read_range(&stream)? else {
        return stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    };
    let size = data.len() as u64;
    let last = last.min(size - 1);
    let part = &data[first as usize..=last as usize];
    let head = |status: &str, range: String, length: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Range: {range}\r\nContent-Length: {length}\r\n\
             ETag: \"fixed\"\r\nConnection: close\r\n\r\n"
        )
    };
    let exact = format!("bytes {first}-{last}/{size}");
    match behaviour {
        Misbehaviour::WholeBody => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes())?;
            stream.write_all(data)?;
        }
        Misbehaviour::NotSatisfiable => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                size / 2
            );
            stream.write_all(head.as_bytes())?;
        }
        Misbehaviour::WrongLength => {
            let short = &part[..part.len() - 1];
            stream.write_all(head("206 Partial Content", exact, short.len()).as_bytes())?;
            stream.write_all(short)?;
        }
        Misbehaviour::RedirectLoop => {
            let head = "HTTP/1.1 302 Found\r\nLocation: /file.bin\r\nContent-Length: 0\r\n\
                        Connection: close\r\n\r\n";
            stream.write_all(head.as_bytes())?;
        }
        Misbehaviour::CloseEarly | Misbehaviour::Stall => {
            stream.write_all(head("206 Partial Content", exact, part.len()).as_bytes())?;
            stream.write_all(&part[..part.len() / 2])?;
            stream.flush()?;
            if behaviour == Misbehaviour::Stall {
                // Hold the connection open, silent, until the client gives up or we stop.
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut byte = [0u8; 1];
                stream.set_read_timeout(Some(Duration::from_millis(50)))?;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match stream.read(&mut byte) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => {}
                    }
                }
            }
            let _ = stream.shutdown(Shutdown::Both);
        }
        Misbehaviour::WrongRange => {
            let off = format!("bytes {}-{}/{size}", first + 1, last + 1);
            stream.write_all(head("206 Partial Content", off, part.len()).as_bytes())?;
            stream.write_all(part)?;
        }
        Misbehaviour::Corrupt => {
            let mut bad = part.to_vec();
            bad[0] ^= 0xff;
            stream.write_all(head("206 Partial Content", exact, bad.len()).as_bytes())?;
            stream.write_all(&bad)?;
        }
    }
    stream.flush()
}
