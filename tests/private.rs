//! Private swarms (issue 11): `composer --private`, members that prove the key and encrypt every
//! link, a conductor that lists members only to signed requests. Real binaries where users meet
//! them; the stranger, the replayer and the eavesdropper are played by the test itself.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use torrentnchill::conductor;
use torrentnchill::net::DeadlineStream;
use torrentnchill::orch::Orchestra;
use torrentnchill::secure::handshake::{initiate, MAX_HANDSHAKE_MESSAGE};
use torrentnchill::secure::{key_path, SwarmKeys, SwarmSecret};
use torrentnchill::wire::{Hello, PeerId};

const LIMIT: Duration = Duration::from_secs(60);
const CALL: Duration = Duration::from_secs(5);
/// How long a probe of a member may wait for it to close the connection.
const PROBE: Duration = Duration::from_secs(15);

/// A known text: the file of the eavesdropping test is made of it, over and over.
const TEXT: &str = "It was the best of times, it was the worst of times, it was the age of \
    wisdom, it was the age of foolishness, it was the epoch of belief, it was the epoch of \
    incredulity, it was the season of Light, it was the season of Darkness, it was the spring \
    of hope, it was the winter of despair, we had everything before us, we had nothing before \
    us, we were all going direct to Heaven, we were all going direct the other way. ";

/// A file in a seed folder and its `.orch` (public, or private with its key file beside it).
struct Swarm {
    tmp: tempfile::TempDir,
    data: Vec<u8>,
    seed_dir: PathBuf,
    orch_path: PathBuf,
    orch: Orchestra,
    keys: Option<SwarmKeys>,
}

impl Swarm {
    fn new(data: Vec<u8>, conductor: &str, private: bool) -> Swarm {
        let tmp = tempfile::tempdir().unwrap();
        let seed_dir = tmp.path().join("seed");
        std::fs::create_dir_all(&seed_dir).unwrap();
        let file = seed_dir.join("data.bin");
        std::fs::write(&file, &data).unwrap();
        let orch_path = tmp.path().join("data.bin.orch");
        let mut composer = Command::new(env!("CARGO_BIN_EXE_composer"));
        composer
            .arg(&file)
            .arg(conductor)
            .arg("16K")
            .arg("-o")
            .arg(&orch_path)
            .arg("--quiet")
            .stdin(Stdio::null());
        if private {
            composer.arg("--private");
        }
        assert_success("composer", &composer.output().unwrap());
        let orch = Orchestra::read(&orch_path).unwrap();
        let keys = private.then(|| {
            let secret = SwarmSecret::load(&key_path(&orch_path)).unwrap();
            SwarmKeys::derive(&secret, orch.swarm_id())
        });
        Swarm {
            tmp,
            data,
            seed_dir,
            orch_path,
            orch,
            keys,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The swarm id members use: the private one when there is a key.
    fn swarm(&self) -> torrentnchill::orch::SwarmId {
        self.keys
            .as_ref()
            .map_or_else(|| self.orch.swarm_id(), |k| k.swarm)
    }

    /// A copy of the `.orch` (and its key) naming no conductor: a seeder started with it is
    /// found only where the test sends members.
    fn hidden_orch(&self) -> PathBuf {
        let hidden = orch_for_conductor(&self.orch_path, NO_CONDUCTOR, &self.dir("hidden.orch"));
        if self.keys.is_some() {
            let key = key_path(&hidden);
            std::fs::copy(key_path(&self.orch_path), &key).unwrap();
        }
        hidden
    }

    fn assert_copy(&self, dir: &Path, who: &str) {
        let copy = std::fs::read(dir.join("data.bin"))
            .unwrap_or_else(|e| panic!("{who}: no final file: {e}"));
        assert!(
            copy == self.data,
            "{who}: the copy differs from the original"
        );
    }
}

/// Reads what `stream` sends until it closes (or [`PROBE`] passes), at most 1 MiB.
fn read_until_closed(stream: &TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut reader = DeadlineStream::within(stream, PROBE).take(1 << 20);
    let _ = reader.read_to_end(&mut got);
    got
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The bytes one direction of one relayed connection carried.
type Capture = Arc<Mutex<Vec<u8>>>;

/// A relay in front of `upstream` that keeps every byte in both directions, one record per
/// connection: what an eavesdropper on the path would see.
struct Relay {
    addr: SocketAddr,
    /// Per connection: (client to upstream, upstream to client).
    captured: Arc<Mutex<Vec<(Capture, Capture)>>>,
    _accept: JoinHandle<()>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let captured: Arc<Mutex<Vec<_>>> = Arc::default();
        let record = Arc::clone(&captured);
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let up: Arc<Mutex<Vec<u8>>> = Arc::default();
                let down: Arc<Mutex<Vec<u8>>> = Arc::default();
                record
                    .lock()
                    .unwrap()
                    .push((Arc::clone(&up), Arc::clone(&down)));
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), up);
                pump(server, client, down);
            }
        });
        Relay {
            addr,
            captured,
            _accept: accept,
        }
    }

    /// Everything captured so far, both directions of every connection.
    fn all_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for (up, down) in self.captured.lock().unwrap().iter() {
            all.extend_from_slice(&up.lock().unwrap());
            all.extend_from_slice(&down.lock().unwrap());
        }
        all
    }

    fn first_upstream(&self) -> Vec<u8> {
        self.captured.lock().unwrap()[0].0.lock().unwrap().clone()
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, record: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}

/// The file of the eavesdropping tests: the known text again and again.
fn text_file(len: usize) -> Vec<u8> {
    TEXT.bytes().cycle().take(len).collect()
}

/// Every 16-byte run of the known text (the file repeats it, so runs wrap around).
fn text_runs() -> HashSet<Vec<u8>> {
    let cyclic: Vec<u8> = TEXT.bytes().chain(TEXT.bytes().take(15)).collect();
    cyclic.windows(16).map(<[u8]>::to_vec).collect()
}

fn plain_runs_in(capture: &[u8]) -> usize {
    let runs = text_runs();
    capture.windows(16).filter(|w| runs.contains(*w)).count()
}

/// A member fetches through the relay from a seeder only the relay leads to; returns the relay
/// with its capture once the member has the whole file.
fn transfer_through_relay(private: bool) -> (Swarm, Relay, SocketAddr, Proc) {
    let conductor = start_conductor(&["--interval", "1s"]);
    let swarm = Swarm::new(text_file(200 * 1024), &conductor.addr, private);
    let (seeder, _, seeder_addr) =
        start_member("seeder", &swarm.hidden_orch(), &swarm.seed_dir, &[]);
    let relay = Relay::start(seeder_addr);
    // The conductor sends the member to the relay, as it would send it to the seeder.
    let me = PeerId::random();
    let port = relay.addr.port();
    match &swarm.keys {
        Some(keys) => conductor::announce_signed(&conductor.addr, keys, me, port, CALL, &|| false)
            .map(drop)
            .unwrap(),
        None => conductor::announce(&conductor.addr, swarm.swarm(), me, port, CALL)
            .map(drop)
            .unwrap(),
    }
    let dir = swarm.dir("member");
    let (mut member, _) = spawn_member("member", &swarm.orch_path, &dir, &["--exit-when-done"]);
    let status = member.wait_exit(LIMIT);
    assert!(status.success(), "member exited with {status}");
    swarm.assert_copy(&dir, "member");
    (swarm, relay, seeder_addr, seeder)
}

#[test]
fn composer_private_to_member_end_to_end() {
    let conductor = start_conductor(&["--interval", "1s"]);
    let swarm = Swarm::new(sample_data(300 * 1024 + 77, 11), &conductor.addr, true);
    // The .orch keeps the public format; the key sits beside it, for its owner only.
    let public_text = {
        let public = Swarm::new(swarm.data.clone(), &conductor.addr, false);
        std::fs::read_to_string(&public.orch_path).unwrap()
    };
    assert_eq!(
        std::fs::read_to_string(&swarm.orch_path).unwrap(),
        public_text
    );
    let key = key_path(&swarm.orch_path);
    assert_eq!(key.file_name().unwrap(), "data.bin.orch.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let (_seeder, seed_events, _) = start_member("seeder", &swarm.orch_path, &swarm.seed_dir, &[]);
    let start = last_event(&seed_events, "start").unwrap();
    assert_eq!(start["swarm"], swarm.swarm().to_hex());
    assert_ne!(swarm.swarm(), swarm.orch.swarm_id());

    let members: Vec<_> = (0..2)
        .map(|i| {
            let dir = swarm.dir(&format!("m{i}"));
            let (proc, _) = spawn_member(
                &format!("m{i}"),
                &swarm.orch_path,
                &dir,
                &["--exit-when-done"],
            );
            (proc, dir)
        })
        .collect();
    for (mut proc, dir) in members {
        let status = proc.wait_exit(LIMIT);
        assert!(status.success(), "{} exited with {status}", proc.name);
        swarm.assert_copy(&dir, &proc.name);
    }

    // --key finds a key kept elsewhere.
    let elsewhere = swarm.dir("keys");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let moved_key = elsewhere.join("k");
    std::fs::rename(&key, &moved_key).unwrap();
    let dir = swarm.dir("m-key");
    let key_arg = moved_key.to_str().unwrap();
    let (mut proc, _) = spawn_member(
        "m-key",
        &swarm.orch_path,
        &dir,
        &["--exit-when-done", "--key", key_arg],
    );
    let status = proc.wait_exit(LIMIT);
    assert!(status.success(), "member with --key exited with {status}");
    swarm.assert_copy(&dir, "member with --key");
}

#[test]
fn a_stranger_or_a_wrong_key_gets_nothing_from_a_member_then_is_refused() {
    let swarm = Swarm::new(sample_data(100 * 1024, 12), NO_CONDUCTOR, true);
    let keys = swarm.keys.as_ref().unwrap();
    let (_seeder, _, addr) = start_member("seeder", &swarm.orch_path, &swarm.seed_dir, &[]);

    // A stranger that knows the swarm id and speaks the public protocol.
    let stranger = TcpStream::connect(addr).unwrap();
    let hello = Hello {
        swarm: swarm.swarm(),
        peer_id: PeerId::random(),
        listen_port: 0,
    };
    (&stranger).write_all(hello.to_line().as_bytes()).unwrap();
    (&stranger).write_all(b"HAVEMAP 1\n\0REQUEST 0\n").unwrap();
    let got = read_until_closed(&stranger);
    assert!(
        !contains(&got, b"HAVEMAP"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(!contains(&got, b"HELLO"));
    assert!(!contains(&got, &swarm.data[..64]));

    // A peer with the wrong secret (another key file for the same .orch).
    let wrong = SwarmKeys::derive(&SwarmSecret::from_bytes([0x42; 32]), swarm.orch.swarm_id());
    // A key that claims the right swarm id but not its pre-shared key is no better: the
    // stranger cannot derive one, so the closest is the wrong key with the right prologue,
    // which the derivation does not allow; two wrong keys are tried.
    let wrong2 = SwarmKeys::derive(&SwarmSecret::from_bytes([0x43; 32]), swarm.orch.swarm_id());
    for (i, wrong) in [&wrong, &wrong2, &wrong, &wrong2].into_iter().enumerate() {
        let stream = TcpStream::connect(addr).unwrap();
        let mut input = DeadlineStream::within(&stream, PROBE);
        let mut output = &stream;
        assert!(
            initiate(&mut input, &mut output, wrong).is_err(),
            "attempt {i}: a wrong key passed the handshake"
        );
        let rest = read_until_closed(&stream);
        assert!(rest.is_empty(), "attempt {i}: got {} bytes", rest.len());
    }

    // Five failures from one address within a minute: even the right key is refused for now.
    let stream = TcpStream::connect(addr).unwrap();
    let mut input = DeadlineStream::within(&stream, PROBE);
    let mut output = &stream;
    assert!(initiate(&mut input, &mut output, keys).is_err());
}

#[test]
fn the_right_key_gets_a_sealed_hello() {
    let swarm = Swarm::new(sample_data(64 * 1024, 13), NO_CONDUCTOR, true);
    let keys = swarm.keys.as_ref().unwrap();
    let (_seeder, _, addr) = start_member("seeder", &swarm.orch_path, &swarm.seed_dir, &[]);
    let stream = TcpStream::connect(addr).unwrap();
    let mut input = DeadlineStream::within(&stream, PROBE);
    let mut output = &stream;
    let channel = initiate(&mut input, &mut output, keys).unwrap();
    let hello = Hello {
        swarm: swarm.swarm(),
        peer_id: PeerId::random(),
        listen_port: 0,
    };
    let mut sealer = channel.sealer(&stream);
    sealer.write_all(hello.to_line().as_bytes()).unwrap();
    sealer.flush().unwrap();
    let mut opener = channel.opener(DeadlineStream::within(&stream, PROBE));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        opener.read_exact(&mut byte).unwrap();
        line.push(byte[0]);
    }
    let theirs = Hello::parse(std::str::from_utf8(&line).unwrap().trim_end()).unwrap();
    assert_eq!(theirs.swarm, swarm.swarm());
}

#[test]
fn a_capture_of_a_private_transfer_has_no_plain_text_and_its_replay_gets_nothing() {
    // The control: the same check sees the text in a public swarm's traffic.
    let (_, public_relay, _, _public_seeder) = transfer_through_relay(false);
    let public_capture = public_relay.all_bytes();
    assert!(
        plain_runs_in(&public_capture) > 1000,
        "the check cannot see plain text"
    );

    let (swarm, relay, seeder_addr, _seeder) = transfer_through_relay(true);
    let capture = relay.all_bytes();
    assert!(
        capture.len() > swarm.data.len(),
        "the transfer went elsewhere"
    );
    assert_eq!(
        plain_runs_in(&capture),
        0,
        "plain text in the private traffic"
    );
    assert!(!contains(&capture, b"HAVEMAP") && !contains(&capture, b"PIECE"));

    // Replaying what the member sent on its connection gets the second handshake message
    // at most, then the close: the replayed frames do not decrypt under the new keys.
    let recorded = relay.first_upstream();
    let replay = TcpStream::connect(seeder_addr).unwrap();
    let _ = (&replay).write_all(&recorded);
    let got = read_until_closed(&replay);
    assert!(
        got.len() <= 2 + MAX_HANDSHAKE_MESSAGE,
        "the replay got {} bytes",
        got.len()
    );
}

#[test]
fn the_conductor_lists_private_members_only_to_signed_requests() {
    // Long enough that no member expires during the test.
    let conductor = start_conductor(&["--interval", "30s"]);
    let swarm = Swarm::new(sample_data(32 * 1024, 14), &conductor.addr, true);
    let keys = swarm.keys.as_ref().unwrap();
    let member = PeerId::random();
    let (_, peers) =
        conductor::announce_signed(&conductor.addr, keys, member, 4001, CALL, &|| false).unwrap();
    assert!(peers.is_empty());

    // A stranger with the swarm id, unsigned: the public table, where nobody signed.
    let (_, peers) =
        conductor::announce(&conductor.addr, swarm.swarm(), PeerId::random(), 4002, CALL).unwrap();
    assert!(peers.is_empty(), "an unsigned announce saw {peers:?}");

    // A member that signs sees the other one, and not the stranger.
    let (_, peers) =
        conductor::announce_signed(&conductor.addr, keys, PeerId::random(), 4003, CALL, &|| {
            false
        })
        .unwrap();
    assert_eq!(peers, vec!["127.0.0.1:4001".parse::<SocketAddr>().unwrap()]);

    // Forged and replayed signatures get an ERROR, never a list.
    let ask = |lines: &[String]| -> String {
        let stream = TcpStream::connect(&conductor.addr).unwrap();
        let mut all = String::new();
        for line in lines {
            (&stream).write_all(line.as_bytes()).unwrap();
        }
        stream.shutdown(Shutdown::Write).unwrap();
        let got = read_until_closed(&stream);
        all.push_str(&String::from_utf8_lossy(&got));
        all
    };
    let unsigned = format!("ANNOUNCE tnc/1 {} {} 4004", swarm.swarm(), PeerId::random());
    let forged = format!("{unsigned} {}\n", "ab".repeat(64));
    let answer = ask(&["CHALLENGE\n".into(), forged.clone()]);
    assert!(answer.starts_with("CHALLENGE "), "{answer}");
    assert!(
        answer.contains("ERROR bad signature") && !answer.contains("PEERS"),
        "{answer}"
    );
    let answer = ask(std::slice::from_ref(&forged));
    assert!(
        answer.contains("ERROR a signed request needs a CHALLENGE first"),
        "{answer}"
    );

    // A real signed line, recorded, is useless on another connection (a new challenge).
    let signed = {
        let stream = TcpStream::connect(&conductor.addr).unwrap();
        (&stream).write_all(b"CHALLENGE\n").unwrap();
        let mut reply = [0u8; 75];
        DeadlineStream::within(&stream, PROBE)
            .read_exact(&mut reply)
            .unwrap();
        let nonce_hex = std::str::from_utf8(&reply[10..74]).unwrap();
        let mut nonce = [0u8; 32];
        hex::decode_to_slice(nonce_hex, &mut nonce).unwrap();
        let peer_id = PeerId::random();
        let signature = keys.sign_request(&torrentnchill::secure::SignedFields {
            command: "ANNOUNCE",
            nonce: &nonce,
            swarm: keys.swarm,
            peer_id,
            port: 4005,
        });
        format!(
            "ANNOUNCE tnc/1 {} {peer_id} 4005 {}\n",
            keys.swarm,
            hex::encode(signature)
        )
    };
    let answer = ask(&["CHALLENGE\n".into(), signed]);
    assert!(answer.contains("ERROR bad signature"), "{answer}");

    // Three failures so far; two more and this address is refused, the right key included.
    let _ = ask(&["CHALLENGE\n".into(), forged.clone()]);
    let _ = ask(&["CHALLENGE\n".into(), forged]);
    let refused = conductor::announce_signed(&conductor.addr, keys, member, 4001, CALL, &|| false);
    assert!(
        format!("{:#}", refused.unwrap_err()).contains("too many failed signatures"),
        "a refused address still got an answer"
    );
}

#[test]
fn public_and_private_members_never_talk() {
    let conductor = start_conductor(&["--interval", "1s"]);
    let data = sample_data(200 * 1024, 15);
    let private = Swarm::new(data.clone(), &conductor.addr, true);
    let public = Swarm::new(data, &conductor.addr, false);
    assert_ne!(private.swarm(), public.swarm());
    let (_private_seeder, _, private_addr) =
        start_member("private seeder", &private.orch_path, &private.seed_dir, &[]);
    let (_public_seeder, _, public_addr) =
        start_member("public seeder", &public.orch_path, &public.seed_dir, &[]);

    // A public HELLO of the public swarm to the private seeder, and the private handshake to
    // the public seeder: both closed, with nothing of the file.
    let probe = TcpStream::connect(private_addr).unwrap();
    let hello = Hello {
        swarm: public.swarm(),
        peer_id: PeerId::random(),
        listen_port: 0,
    };
    (&probe).write_all(hello.to_line().as_bytes()).unwrap();
    let got = read_until_closed(&probe);
    assert!(!contains(&got, b"HAVEMAP") && !contains(&got, b"HELLO"));
    let probe = TcpStream::connect(public_addr).unwrap();
    let mut input = DeadlineStream::within(&probe, PROBE);
    let mut output = &probe;
    assert!(initiate(&mut input, &mut output, private.keys.as_ref().unwrap()).is_err());

    // A member of each swarm, one conductor: each gets its copy from its own seeder only.
    let private_dir = private.dir("member");
    let public_dir = public.dir("member");
    let (mut private_member, private_events) = spawn_member(
        "private member",
        &private.orch_path,
        &private_dir,
        &["--exit-when-done"],
    );
    let (mut public_member, public_events) = spawn_member(
        "public member",
        &public.orch_path,
        &public_dir,
        &["--exit-when-done"],
    );
    assert!(private_member.wait_exit(LIMIT).success());
    assert!(public_member.wait_exit(LIMIT).success());
    private.assert_copy(&private_dir, "private member");
    public.assert_copy(&public_dir, "public member");
    let met = |events: &Path| -> Vec<String> {
        events_of(events, "peer_connected")
            .iter()
            .map(|e| e["addr"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    for (events, own) in [
        (&private_events, private_addr),
        (&public_events, public_addr),
    ] {
        let met = met(events);
        assert!(
            !met.is_empty() && met.iter().all(|a| *a == own.to_string()),
            "{met:?}"
        );
    }
}

#[cfg(unix)]
#[test]
fn a_key_others_can_read_is_refused_and_a_public_compose_removes_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let swarm = Swarm::new(sample_data(20_000, 16), NO_CONDUCTOR, true);
    let key = key_path(&swarm.orch_path);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = member_command(&swarm.orch_path, &swarm.dir("m"))
        .arg("--exit-when-done")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("chmod 600"));

    // Composing the same file as a public swarm over the same .orch takes the key away, so
    // members do not keep joining the private swarm.
    let output = Command::new(env!("CARGO_BIN_EXE_composer"))
        .arg(swarm.seed_dir.join("data.bin"))
        .arg(NO_CONDUCTOR)
        .arg("-o")
        .arg(&swarm.orch_path)
        .arg("--quiet")
        .output()
        .unwrap();
    assert_success("composer", &output);
    assert!(!key.exists());
}

/// `conductor --state` keeps the private swarms' members too (in their own table): after a
/// restart a member that signs is told of the one that signed before, and one that does not
/// sign is told of nobody.
#[test]
fn with_state_a_restarted_conductor_still_lists_private_members_to_signed_requests_only() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    let flags = ["--interval", "1h", "--state", state.to_str().unwrap()];
    let conductor = start_conductor(&flags);
    let swarm = Swarm::new(sample_data(32 * 1024, 15), &conductor.addr, true);
    let keys = swarm.keys.as_ref().unwrap();
    conductor::announce_signed(&conductor.addr, keys, PeerId::random(), 4001, CALL, &|| {
        false
    })
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the private member in the state file",
        || std::fs::read_to_string(&state).is_ok_and(|text| text.contains("\"private\":true")),
    );

    // Killed, not stopped: what is on disk is what the debounced saves wrote.
    let mut conductor = conductor;
    conductor.proc.kill();
    let conductor = restart_conductor(&conductor.addr, &flags);
    let (_, peers) =
        conductor::announce(&conductor.addr, swarm.swarm(), PeerId::random(), 4002, CALL).unwrap();
    assert!(peers.is_empty(), "an unsigned announce saw {peers:?}");
    let (_, peers) =
        conductor::announce_signed(&conductor.addr, keys, PeerId::random(), 4003, CALL, &|| {
            false
        })
        .unwrap();
    assert_eq!(peers, vec!["127.0.0.1:4001".parse::<SocketAddr>().unwrap()]);
}
