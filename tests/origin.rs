//! HTTP origins (`member --origin URL`): against a real nginx started by the test, and against
//! a server that gets Range requests wrong in each way real servers do. Every copy is compared
//! with the original; a refused answer must never put a byte on disk.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// nginx serving the sample's seed folder, or `None` (reason printed) where there is none.
fn nginx_for(sample: &Sample) -> Option<(Nginx, String)> {
    let nginx = start_nginx(&sample.seed_dir, &sample.dir("nginx"))?;
    let url = format!("{}/{}", nginx.url_base, sample.orch.filename);
    Some((nginx, url))
}

/// Fails if any part of the download in `dir` holds bytes other than zeros (never written) or
/// the original's: a refused answer must leave no trace.
fn assert_only_verified_bytes(sample: &Sample, dir: &Path) {
    let name = &sample.orch.filename;
    let path = [dir.join(format!("{name}.part")), dir.join(name)]
        .into_iter()
        .find(|p| p.exists());
    let Some(path) = path else { return };
    let on_disk = std::fs::read(&path).unwrap();
    for index in 0..sample.orch.part_count() {
        let span = sample.orch.part_span(index).unwrap();
        let range = span.offset as usize..span.offset as usize + span.len;
        let Some(bytes) = on_disk.get(range.clone()) else {
            continue;
        };
        assert!(
            bytes.iter().all(|&b| b == 0) || bytes == &sample.data[range],
            "part {index} of {} holds bytes that are not the original's",
            path.display()
        );
    }
}

#[test]
fn a_member_with_only_an_origin_completes() {
    let conductor = start_conductor(&["--interval", "1s"]);
    let sample = sample("web.bin", 5 * 1024 * 1024 + 777, "64K", &conductor.addr, 1);
    let Some((nginx, url)) = nginx_for(&sample) else {
        return;
    };
    let dir = sample.dir("m");
    let (mut member, events) = spawn_member(
        "member",
        &sample.orch_path,
        &dir,
        &["--origin", &url, "--exit-when-done"],
    );
    let status = member.wait_exit(LIMIT);
    assert!(status.success(), "member exited with {status}");
    sample.assert_copy(&dir, "member");
    let summary = last_event(&events, "summary").unwrap();
    assert_eq!(summary["complete"], true);
    assert_eq!(summary["bytes_from_origin"], sample.data.len() as u64);
    assert_eq!(summary["bytes_down"], sample.data.len() as u64);
    assert_eq!(nginx.partial_bytes_sent(), sample.data.len() as u64);
    let said = std::fs::read_to_string(dir.with_extension("stderr.log")).unwrap();
    assert!(
        said.contains("done: 5.00 MiB (5.00 MiB from origins) down in"),
        "{said}"
    );
}

#[test]
fn the_swarm_comes_before_the_origin() {
    let conductor = start_conductor(&["--interval", "1s"]);
    let sample = sample("both.bin", 8 * 1024 * 1024, "64K", &conductor.addr, 2);
    let Some((nginx, url)) = nginx_for(&sample) else {
        return;
    };
    let (_seeder, _) = spawn_member("seeder", &sample.orch_path, &sample.seed_dir, &[]);
    wait_until(LIMIT, "the seeder to be announced", || {
        listed(&conductor.addr, sample.orch.swarm_id()).is_ok_and(|peers| !peers.is_empty())
    });
    let dir = sample.dir("m");
    // The origin capped, as a distant one is: on a loaded machine the seeder's have-map may
    // come after the grace, and an uncapped origin on loopback could send the whole file by then.
    let (mut member, events) = spawn_member(
        "member",
        &sample.orch_path,
        &dir,
        &[
            "--origin",
            &url,
            "--origin-max-rate",
            "1MiB/s",
            "--exit-when-done",
        ],
    );
    let status = member.wait_exit(LIMIT);
    assert!(status.success(), "member exited with {status}");
    sample.assert_copy(&dir, "member");
    let summary = last_event(&events, "summary").unwrap();
    let from_origin = summary["bytes_from_origin"].as_u64().unwrap();
    let total = sample.data.len() as u64;
    // The seeder has every part: the origin is asked only while the seeder is not yet known.
    assert!(
        from_origin * 4 <= total,
        "{from_origin} of {total} bytes came from the origin though a seeder had them all"
    );
    assert_eq!(summary["bytes_down"], total);
    assert!(nginx.partial_bytes_sent() <= total / 4);
}

#[test]
fn the_origin_helps_when_the_peers_are_slow() {
    let conductor = start_conductor(&["--interval", "1s"]);
    let sample = sample("slow.bin", 4 * 1024 * 1024, "64K", &conductor.addr, 7);
    let Some((_nginx, url)) = nginx_for(&sample) else {
        return;
    };
    // A seeder with every part, but at 256 KiB/s: 16 s for the file alone.
    let (_seeder, _) = spawn_member(
        "seeder",
        &sample.orch_path,
        &sample.seed_dir,
        &["--max-upload-rate", "256KiB/s"],
    );
    wait_until(LIMIT, "the seeder to be announced", || {
        listed(&conductor.addr, sample.orch.swarm_id()).is_ok_and(|peers| !peers.is_empty())
    });
    let dir = sample.dir("m");
    let (mut member, events) = spawn_member(
        "member",
        &sample.orch_path,
        &dir,
        &["--origin", &url, "--exit-when-done"],
    );
    assert!(member.wait_exit(LIMIT).success());
    sample.assert_copy(&dir, "member");
    eprintln!(
        "{}",
        std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .last()
            .unwrap()
    );
    // Every part is at a connected peer, so only the second rule brings the origin in: the
    // peers deliver less than an origin request does. It also takes second copies of parts
    // the seeder was asked for, or the download would wait for the seeder's queue to drain.
    let summary = last_event(&events, "summary").unwrap();
    let from_origin = summary["bytes_from_origin"].as_u64().unwrap();
    assert!(
        from_origin * 2 >= sample.data.len() as u64,
        "only {from_origin} bytes from the origin"
    );
}

#[test]
fn a_file_changed_on_the_origin_is_detected_and_refused() {
    let conductor = start_conductor(&["--interval", "1s"]);
    let sample = sample("changes.bin", 4 * 1024 * 1024, "64K", &conductor.addr, 3);
    let Some((nginx, url)) = nginx_for(&sample) else {
        return;
    };
    let dir = sample.dir("m");
    // Slowly, so that the file changes while the member is still fetching.
    let (mut member, events) = spawn_member(
        "member",
        &sample.orch_path,
        &dir,
        &["--origin", &url, "--origin-max-rate", "512KiB/s"],
    );
    wait_for_event(&events, "progress", LIMIT, |e| {
        e["parts_done"].as_u64() >= Some(2)
    });
    // Another file of the same size in its place, with another modification time (so another
    // ETag), as a new upload would be.
    let file = sample.seed_dir.join(&sample.orch.filename);
    let replacement = sample.seed_dir.join("replacement.tmp");
    std::fs::write(&replacement, sample_data(sample.data.len(), 99)).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&replacement)
        .unwrap()
        .set_modified(later)
        .unwrap();
    std::fs::rename(&replacement, &file).unwrap();

    let dropped = wait_for_event(&events, "origin_dropped", LIMIT, |_| true);
    assert_eq!(dropped["url"], url.as_str());
    let reason = dropped["reason"].as_str().unwrap();
    assert!(reason.contains("changed"), "{reason}");
    // If-Range with the first ETag made nginx answer 200 (the whole, new file): refused.
    assert!(
        nginx.answers().iter().any(|(status, _)| *status == 200),
        "no 200 in {:?}",
        nginx.answers()
    );
    member.kill();
    assert_only_verified_bytes(&sample, &dir);
    let done = last_event(&events, "progress").unwrap()["parts_done"]
        .as_u64()
        .unwrap();
    assert!(done < u64::from(sample.orch.part_count()), "{done} parts");
}

#[test]
fn several_members_take_about_one_copy_from_the_origin() {
    let conductor = start_conductor(&["--interval", "1s"]);
    let sample = sample("many.bin", 8 * 1024 * 1024, "64K", &conductor.addr, 4);
    let Some((nginx, url)) = nginx_for(&sample) else {
        return;
    };
    // Each member's origin link is slower than loopback between members, as on a real
    // network where the origin is far and the members near each other.
    let members: Vec<_> = (0..4)
        .map(|i| {
            let dir = sample.dir(&format!("m{i}"));
            let (proc, events) = spawn_member(
                &format!("member {i}"),
                &sample.orch_path,
                &dir,
                &["--origin", &url, "--origin-max-rate", "2MiB/s"],
            );
            (proc, events, dir)
        })
        .collect();
    for (_, events, dir) in &members {
        wait_for_event(events, "complete", LIMIT, |_| true);
        sample.assert_copy(dir, "member");
    }
    let sent = nginx.partial_bytes_sent();
    let copies = sent as f64 / sample.data.len() as f64;
    eprintln!("the origin sent {copies:.2} copies of the file to 4 members");
    assert!(
        copies < 2.0,
        "the origin sent {copies:.2} copies to 4 members"
    );
}

/// A member whose only origin misbehaves as `behaviour` logs `reason`, retries, and writes
/// nothing.
fn refused(behaviour: Misbehaviour, reason: &str) {
    let sample = sample("bad.bin", 1024 * 1024, "64K", NO_CONDUCTOR, 5);
    let server = BadHttp::start(sample.data.clone(), behaviour);
    let dir = sample.dir("m");
    let (mut member, _events) = spawn_member(
        "member",
        &sample.orch_path,
        &dir,
        &["--origin", &server.url, "--peer-timeout", "1s"],
    );
    let log = dir.with_extension("stderr.log");
    wait_until(LIMIT, &format!("{reason:?} in the member's log"), || {
        std::fs::read_to_string(&log).is_ok_and(|text| {
            text.lines()
                .any(|l| l.contains(&server.url) && l.contains(reason) && l.contains("retrying"))
        })
    });
    member.kill();
    assert_only_verified_bytes(&sample, &dir);
    let part = dir.join("bad.bin.part");
    if part.exists() {
        let bytes = std::fs::read(&part).unwrap();
        assert!(
            bytes.iter().all(|&b| b == 0),
            "{behaviour:?}: bytes written"
        );
    }
}

#[test]
fn a_200_with_the_whole_file_is_refused() {
    refused(Misbehaviour::WholeBody, "200 with the whole file");
}

#[test]
fn a_416_is_refused() {
    refused(Misbehaviour::NotSatisfiable, "416");
}

#[test]
fn a_wrong_length_is_refused() {
    refused(Misbehaviour::WrongLength, "Content-Length");
}

#[test]
fn a_redirect_loop_is_refused() {
    refused(Misbehaviour::RedirectLoop, "redirect loop");
}

#[test]
fn an_early_close_is_refused() {
    refused(Misbehaviour::CloseEarly, "closed after");
}

#[test]
fn a_stall_is_refused() {
    refused(Misbehaviour::Stall, "stalled");
}

#[test]
fn a_wrong_content_range_is_refused() {
    refused(Misbehaviour::WrongRange, "Content-Range");
}

#[test]
fn https_to_a_server_that_does_not_speak_tls_is_refused() {
    let sample = sample("tls.bin", 256 * 1024, "64K", NO_CONDUCTOR, 8);
    let server = BadHttp::start(sample.data.clone(), Misbehaviour::WholeBody);
    let url = server.url.replace("http://", "https://");
    let dir = sample.dir("m");
    let (mut member, _events) =
        spawn_member("member", &sample.orch_path, &dir, &["--origin", &url]);
    let log = dir.with_extension("stderr.log");
    wait_until(LIMIT, "a failed TLS handshake in the member's log", || {
        std::fs::read_to_string(&log).is_ok_and(|text| {
            text.lines()
                .any(|l| l.contains(&url) && l.contains("retrying"))
        })
    });
    member.kill();
    assert_only_verified_bytes(&sample, &dir);
}

#[test]
fn an_origin_that_sends_bad_parts_is_dropped() {
    let sample = sample("corrupt.bin", 1024 * 1024, "64K", NO_CONDUCTOR, 6);
    let server = BadHttp::start(sample.data.clone(), Misbehaviour::Corrupt);
    let dir = sample.dir("m");
    let (mut member, events) = spawn_member(
        "member",
        &sample.orch_path,
        &dir,
        &["--origin", &server.url],
    );
    let dropped = wait_for_event(&events, "origin_dropped", LIMIT, |_| true);
    assert!(dropped["reason"]
        .as_str()
        .unwrap()
        .contains("failed its checksum"));
    member.signal(libc::SIGTERM);
    member.wait_exit(LIMIT);
    let summary = last_event(&events, "summary").unwrap();
    // Three strikes drop it; requests already out then (at most 2 more) fail too.
    let rejected = summary["parts_rejected"].as_u64().unwrap();
    assert!((3..=5).contains(&rejected), "{rejected} parts rejected");
    assert_eq!(summary["parts_done"], 0);
    assert_only_verified_bytes(&sample, &dir);
}
