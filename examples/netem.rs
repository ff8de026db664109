//! A user-space network emulator for the swarm testbed (`scripts/testbed.sh`, issue 10 item 3).
//!
//! The kernels the testbed runs on have neither netem nor the fq qdisc, so nothing in tc can add
//! a round trip. This program is the network instead: every emulated host (a network namespace)
//! gets a TUN interface, and one process reads every packet each host sends, holds it for the
//! delay between its source and its destination, passes it through the source's upload and the
//! destination's download (each a rate with a bounded queue), optionally drops a fraction of
//! them at random, and writes it to the destination's TUN. The hosts' kernels therefore run
//! real TCP over a link with real delay: congestion control, slow start and socket buffers that
//! are too small for the bandwidth × delay product all show up as they would on a real path.
//!
//! ```text
//! netem --host NETNS,ADDRESS,UP_MBIT,DOWN_MBIT,DELAY_MS [--host ...] [--loss 0.001]
//! ```
//!
//! Each host's `DELAY_MS` is its one-way "access" delay: a packet from A to B is held
//! `DELAY_A + DELAY_B`, so a round trip between A and B is twice that, and hosts placed in
//! regions get their distances from one number each. A rate of 0 means no limit (as fast as
//! this program forwards). Each direction's queue holds at most `--queue-ms` of bytes at its
//! rate (tail drop, like a router's buffer or the testbed's tbf).
//!
//! It creates the TUN devices (named `--dev`, `eth0` by default) inside the given namespaces
//! and prints `{"event":"ready"}`; the caller then gives them their addresses and brings them up.
//! Every `--report-ms` it prints one JSON line of counters: per host the bytes it sent into the
//! network and the bytes delivered to it (IP packets, headers included), the packets dropped
//! by full queues and by `--loss`, and how late packets were written against the time they
//! were due (the precision of the emulated delay). The devices are not persistent: they vanish
//! with this process, so killing it (the script does, with SIGTERM) leaves nothing behind.
//!
//! Segmentation offload (the default; off with `--no-offload` and whenever `--loss` is set): each
//! TUN is opened with a virtio-net header and TSO/checksum offload, as a virtual machine's NIC
//! is, so a host's TCP hands over segments of up to 64 KiB and the destination's TCP takes them
//! whole, as it would after GRO. The rates, queues and counters still count every byte on the
//! wire as 1500-byte packets would carry it (headers included), but the emulator makes one read
//! and one write per 64 KiB instead of per 1.5 KiB: at 8 hosts × 100 Mbit/s the per-packet
//! path took more than one of the machine's two cores by itself. A dropped segment would be a
//! burst of up to 44 packets, which is why `--loss` turns offload off.
//!
//! Packets are routed by IPv4 destination address among the given hosts only; anything else
//! (IPv6, unknown addresses) is dropped, so traffic never leaves the namespaces. Linux only,
//! needs CAP_NET_ADMIN in the namespaces (root). The `unsafe` calls are `setns(2)` (to create
//! each TUN inside its namespace) and the `TUNSETIFF` and `TUNSETOFFLOAD` ioctls: no maintained
//! crate does these together, and libc is already a dependency.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use torrentnchill::sync::{Condvar, Mutex};

#[derive(Parser)]
#[command(about = "User-space network emulator over TUN devices (delay, rate, loss)")]
struct Args {
    /// One emulated host: NETNS,ADDRESS,UP_MBIT,DOWN_MBIT,DELAY_MS (rate 0 = unlimited;
    /// DELAY_MS is the host's one-way access delay). Repeat for every host.
    #[arg(long = "host", required = true, value_parser = parse_host)]
    hosts: Vec<HostSpec>,
    /// Fraction of packets dropped at random, in every direction (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Longest queue of each rate-limited direction, in milliseconds at its rate.
    #[arg(long, default_value_t = 80.0)]
    queue_ms: f64,
    /// Name of the TUN device created in every namespace.
    #[arg(long, default_value = "eth0")]
    dev: String,
    /// Milliseconds between two lines of counters on stdout.
    #[arg(long, default_value_t = 100)]
    report_ms: u64,
    /// Packets due within this many microseconds are sent together, up to that much early.
    #[arg(long, default_value_t = 200)]
    quantum_us: u64,
    /// One read and write per packet of at most the MTU, instead of per TCP segment of up to
    /// 64 KiB (always so with --loss).
    #[arg(long)]
    no_offload: bool,
}

#[derive(Clone, Debug)]
struct HostSpec {
    netns: String,
    address: Ipv4Addr,
    /// Bytes per second; `None` for no limit.
    up: Option<f64>,
    down: Option<f64>,
    delay: Duration,
}

fn parse_host(text: &str) -> Result<HostSpec, String> {
    let fields: Vec<&str> = text.split(',').collect();
    let [netns, address, up, down, delay] = fields[..] else {
        return Err("expected NETNS,ADDRESS,UP_MBIT,DOWN_MBIT,DELAY_MS".into());
    };
    let number = |what: &str, v: &str| -> Result<f64, String> {
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(format!("{what} must be a number >= 0, not {v:?}")),
        }
    };
    let rate = |what: &str, v: &str| -> Result<Option<f64>, String> {
        let mbit = number(what, v)?;
        Ok((mbit > 0.0).then_some(mbit * 1e6 / 8.0))
    };
    let delay_ms = number("DELAY_MS", delay)?;
    if delay_ms > 10_000.0 {
        return Err(format!("DELAY_MS {delay_ms} is above 10 s"));
    }
    Ok(HostSpec {
        netns: netns.to_string(),
        address: address
            .parse()
            .map_err(|e| format!("ADDRESS {address:?}: {e}"))?,
        up: rate("UP_MBIT", up)?,
        down: rate("DOWN_MBIT", down)?,
        delay: Duration::from_secs_f64(delay_ms / 1000.0),
    })
}

/// A packet on its way to one destination, ordered by the time it reaches that destination's
/// download queue (then by when it was read, so equal times keep their order).
struct InFlight {
    arrives: Instant,
    seq: u64,
    /// The bytes it stands for on the wire (see [`wire_bytes`]).
    wire: usize,
    /// As read from the source's TUN (with its virtio-net header, with offload), as it is
    /// written to the destination's.
    packet: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.arrives, self.seq) == (other.arrives, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    // Reversed: BinaryHeap is a max-heap, the earliest arrival must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.arrives, other.seq).cmp(&(self.arrives, self.seq))
    }
}

/// What every source hands to one destination's delivery thread.
struct Inbox {
    heap: BinaryHeap<InFlight>,
    /// When the delivery thread next wakes by itself: a sender only needs to wake it for a
    /// packet due earlier than that (most are due later, so most sends cost no wake-up).
    wakes_at: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    queue_drops: AtomicU64,
    loss_drops: AtomicU64,
    unroutable: AtomicU64,
    write_errors: AtomicU64,
    late_count: AtomicU64,
    late_total_us: AtomicU64,
    late_max_us: AtomicU64,
}

struct Host {
    spec: HostSpec,
    tun: File,
    inbox: Mutex<Inbox>,
    wake: Condvar,
    counters: Counters,
}

/// A direction of a link: a rate and a FIFO queue of bounded length, as a virtual clock (when
/// the last byte queued so far will have left), so no timer runs per packet.
struct Shaper {
    rate: Option<f64>,
    queue_limit: Duration,
    free_at: Option<Instant>,
}

impl Shaper {
    fn new(rate: Option<f64>, queue_ms: f64) -> Shaper {
        Shaper {
            rate,
            queue_limit: Duration::from_secs_f64(queue_ms.max(0.0) / 1000.0),
            free_at: None,
        }
    }

    /// When a packet of `len` bytes entering at `at` has left, or `None` when the queue is full.
    fn pass(&mut self, at: Instant, len: usize) -> Option<Instant> {
        let Some(rate) = self.rate else {
            return Some(at);
        };
        let start = self.free_at.map_or(at, |free| free.max(at));
        if start.saturating_duration_since(at) > self.queue_limit {
            return None;
        }
        let leaves = start + Duration::from_secs_f64(len as f64 / rate);
        self.free_at = Some(leaves);
        Some(leaves)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.loss) {
        eprintln!("netem: --loss must be between 0 and 1");
        return ExitCode::from(2);
    }
    let offload = !args.no_offload && args.loss == 0.0;
    let mut hosts = Vec::new();
    for spec in &args.hosts {
        match open_tun_in(&spec.netns, &args.dev, offload) {
            Ok(tun) => hosts.push(Arc::new(Host {
                spec: spec.clone(),
                tun,
                inbox: Mutex::new(Inbox {
                    heap: BinaryHeap::new(),
                    wakes_at: None,
                }),
                wake: Condvar::new(),
                counters: Counters::default(),
            })),
            Err(e) => {
                eprintln!("netem: {}: {e}", spec.netns);
                return ExitCode::from(1);
            }
        }
    }
    let hosts: Arc<Vec<Arc<Host>>> = Arc::new(hosts);
    for index in 0..hosts.len() {
        let all = Arc::clone(&hosts);
        let (loss, queue_ms) = (args.loss, args.queue_ms);
        thread::spawn(move || forward_from(&all, index, loss, queue_ms, offload));
        let host = Arc::clone(&hosts[index]);
        let quantum = Duration::from_micros(args.quantum_us);
        thread::spawn(move || deliver_to(&host, queue_ms, quantum));
    }
    println!(
        "{{\"event\":\"ready\",\"hosts\":{},\"offload\":{offload}}}",
        hosts.len()
    );
    let started = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(args.report_ms.max(10)));
        if !report(&hosts, started) {
            // Nobody reads our counters any more: the script is gone.
            return ExitCode::SUCCESS;
        }
    }
}

/// Creates TUN device `dev` inside network namespace `netns` (a name under /var/run/netns) and
/// returns it; this thread is back in its own namespace afterwards.
fn open_tun_in(netns: &str, dev: &str, offload: bool) -> Result<File, String> {
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        return Err(format!("device name {dev:?} must have 1 to 15 bytes"));
    }
    let home = File::open("/proc/thread-self/ns/net").map_err(|e| format!("own namespace: {e}"))?;
    let target = File::open(format!("/var/run/netns/{netns}"))
        .map_err(|e| format!("namespace {netns}: {e}"))?;
    enter(&target)?;
    let tun = open_tun(dev, offload);
    // Back home before anything else: the threads spawned later must not start in `netns`.
    enter(&home).map_err(|e| format!("cannot return to the own namespace: {e}"))?;
    tun
}

fn enter(ns: &File) -> Result<(), String> {
    // SAFETY: setns takes a file descriptor we own (open for the call's duration) and a flag;
    // it changes only this thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The `struct ifreq` of TUNSETIFF: a name, then the flags in the union that follows it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest_of_union: [u8; 22],
}

fn open_tun(dev: &str, offload: bool) -> Result<File, String> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        // An L3 device (no Ethernet, no ARP), packets without the 4-byte info header; with
        // offload, each packet behind a virtio-net header.
        flags: (libc::IFF_TUN | libc::IFF_NO_PI | if offload { libc::IFF_VNET_HDR } else { 0 })
            as libc::c_short,
        _rest_of_union: [0; 22],
    };
    req.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` has its layout and size (40
    // bytes) and lives across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } != 0 {
        return Err(format!(
            "TUNSETIFF {dev}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if offload {
        let features = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes the feature bits by value, no memory.
        if unsafe {
            libc::ioctl(
                tun.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                features as libc::c_ulong,
            )
        } != 0
        {
            return Err(format!(
                "TUNSETOFFLOAD {dev}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(tun)
}

/// The virtio-net header in front of every packet with offload (`struct virtio_net_hdr`).
const VNET_HDR_LEN: usize = 10;
/// The MTU the testbed gives every host: a segment larger than this stands for several packets.
const WIRE_MTU: usize = 1500;

/// The bytes a packet (or a TCP segment standing for several) puts on a 1500-byte-MTU wire:
/// its own, plus the IP and TCP headers of every further packet it would be cut into.
/// `packet` is the IP packet; `gso_size` the payload per packet from the virtio-net header
/// (0 for a packet that is not cut).
fn wire_bytes(packet: &[u8], gso_size: usize) -> usize {
    let len = packet.len();
    if gso_size == 0 || len <= WIRE_MTU || len < 20 {
        return len;
    }
    let ip_header = usize::from(packet[0] & 0x0f) * 4;
    let tcp_header = packet
        .get(ip_header + 12)
        .map_or(20, |offset| usize::from(offset >> 4) * 4);
    let headers = ip_header + tcp_header;
    let payload = len.saturating_sub(headers);
    let packets = payload.div_ceil(gso_size).max(1);
    len + (packets - 1) * headers
}

/// Reads every packet host `index` sends and hands it, with the time it is due at the
/// destination's download queue, to the destination's delivery thread.
fn forward_from(hosts: &[Arc<Host>], index: usize, loss: f64, queue_ms: f64, offload: bool) {
    let me = &hosts[index];
    let mut upload = Shaper::new(me.spec.up, queue_ms);
    // Larger than any TUN MTU or TCP segment (65535) and its header, so a read never
    // truncates a packet.
    let mut buf = vec![0u8; 65_536 + VNET_HDR_LEN];
    let skip = if offload { VNET_HDR_LEN } else { 0 };
    let mut seq = 0u64;
    loop {
        let len = match (&me.tun).read(&mut buf) {
            Ok(n) => n,
            // EIO while the device is still down; anything else ends the host.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => {
                eprintln!("netem: reading {}: {e}", me.spec.netns);
                return;
            }
        };
        let now = Instant::now();
        if len < skip {
            me.counters.unroutable.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        }
        let packet = &buf[skip..len];
        // gso_size: bytes 4..6 of the virtio-net header, little-endian (a modern, little-endian
        // virtio header, which is what TUN gives on x86 and arm64).
        let gso_size = if offload && buf[1] != 0 {
            usize::from(u16::from_le_bytes([buf[4], buf[5]]))
        } else {
            0
        };
        let wire = wire_bytes(packet, gso_size);
        me.counters
            .sent
            .fetch_add(wire as u64, AtomicOrdering::Relaxed);
        // IPv4 only: version 4, the destination address at bytes 16..20.
        let destination = (packet.len() >= 20 && packet[0] >> 4 == 4)
            .then(|| Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]))
            .and_then(|addr| hosts.iter().find(|h| h.spec.address == addr));
        let Some(to) = destination else {
            me.counters.unroutable.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        };
        let Some(left) = upload.pass(now, wire) else {
            me.counters
                .queue_drops
                .fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        };
        if loss > 0.0 && fastrand::f64() < loss {
            me.counters.loss_drops.fetch_add(1, AtomicOrdering::Relaxed);
            continue;
        }
        let arrives = left + me.spec.delay + to.spec.delay;
        seq += 1;
        let mut inbox = to.inbox.lock();
        let wake = inbox.wakes_at.is_none_or(|at| arrives < at);
        inbox.heap.push(InFlight {
            arrives,
            seq,
            wire,
            packet: buf[..len].to_vec(),
        });
        if wake {
            inbox.wakes_at = Some(arrives);
            drop(inbox);
            to.wake.notify_one();
        }
    }
}

/// Passes the packets due at `host` through its download queue and writes each to its TUN
/// when it has left that queue.
///
/// A packet is handled when it is due within `quantum` rather than at its exact time: at 1 Gbit/s
/// packets leave every 12 µs, and one wake-up per packet costs more CPU than the forwarding
/// (the calibration at 1 Gbit/s halved without it). The link then sends bursts of at most
/// `quantum` × rate (25 KB at 1 Gbit/s, less than the tbf bucket of the bridge testbed).
fn deliver_to(host: &Host, queue_ms: f64, quantum: Duration) {
    let mut download = Shaper::new(host.spec.down, queue_ms);
    let mut leaving: VecDeque<(Instant, usize, Vec<u8>)> = VecDeque::new();
    let mut arrived = Vec::new();
    loop {
        {
            let mut inbox = host.inbox.lock();
            loop {
                let now = Instant::now();
                let horizon = now + quantum;
                while inbox.heap.peek().is_some_and(|p| p.arrives <= horizon) {
                    if let Some(p) = inbox.heap.pop() {
                        arrived.push(p);
                    }
                }
                let next = [
                    inbox.heap.peek().map(|p| p.arrives),
                    leaving.front().map(|(at, _, _)| *at),
                ]
                .into_iter()
                .flatten()
                .min();
                if !arrived.is_empty() || next.is_some_and(|at| at <= horizon) {
                    // Busy until we look at the heap again, which needs no wake-up.
                    inbox.wakes_at = Some(now);
                    break;
                }
                // Nothing due: sleep until the next packet is, or at most a second (a new
                // packet due earlier wakes us through `wakes_at`).
                let until = next.unwrap_or(now + Duration::from_secs(1));
                inbox.wakes_at = Some(until);
                inbox = host.wake.wait_timeout(inbox, until - now).0;
            }
        }
        for p in arrived.drain(..) {
            // The download queue sees packets in the order they reach it, whatever their source.
            match download.pass(p.arrives, p.wire) {
                Some(leaves) => leaving.push_back((leaves, p.wire, p.packet)),
                None => {
                    host.counters
                        .queue_drops
                        .fetch_add(1, AtomicOrdering::Relaxed);
                }
            }
        }
        let horizon = Instant::now() + quantum;
        while leaving.front().is_some_and(|(at, _, _)| *at <= horizon) {
            let Some((due, wire, packet)) = leaving.pop_front() else {
                break;
            };
            note_lateness(
                &host.counters,
                Instant::now().saturating_duration_since(due),
            );
            // A TUN write takes one whole packet or fails: a short count is an error too.
            match (&host.tun).write(&packet) {
                Ok(n) if n == packet.len() => {
                    host.counters
                        .delivered
                        .fetch_add(wire as u64, AtomicOrdering::Relaxed);
                }
                Ok(_) | Err(_) => {
                    host.counters
                        .write_errors
                        .fetch_add(1, AtomicOrdering::Relaxed);
                }
            }
        }
    }
}

fn note_lateness(counters: &Counters, late: Duration) {
    let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
    counters.late_count.fetch_add(1, AtomicOrdering::Relaxed);
    counters
        .late_total_us
        .fetch_add(us, AtomicOrdering::Relaxed);
    counters.late_max_us.fetch_max(us, AtomicOrdering::Relaxed);
}

/// One line of counters; false once stdout is closed.
fn report(hosts: &[Arc<Host>], started: Instant) -> bool {
    let get = |c: &AtomicU64| c.load(AtomicOrdering::Relaxed);
    let sum = |f: fn(&Counters) -> &AtomicU64| hosts.iter().map(|h| get(f(&h.counters))).sum();
    let late_count: u64 = sum(|c| &c.late_count);
    let late_total: u64 = sum(|c| &c.late_total_us);
    let late_max = hosts
        .iter()
        .map(|h| get(&h.counters.late_max_us))
        .max()
        .unwrap_or(0);
    let per_host: Vec<[u64; 2]> = hosts
        .iter()
        .map(|h| [get(&h.counters.sent), get(&h.counters.delivered)])
        .collect();
    let line = serde_json::json!({
        "event": "counters",
        "seconds": torrentnchill::json::seconds(started.elapsed()),
        "hosts": per_host,
        "queue_drops": sum(|c| &c.queue_drops),
        "loss_drops": sum(|c| &c.loss_drops),
        "unroutable": sum(|c| &c.unroutable),
        "write_errors": sum(|c| &c.write_errors),
        "packets": late_count,
        "late_mean_us": late_total.checked_div(late_count).unwrap_or(0),
        "late_max_us": late_max,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}
