//! End-to-end: composer, conductor and members, all real binaries on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn one_seeder_three_members_get_identical_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let conductor = start_conductor(&["--interval", "1s"]);
    let seed_dir = tmp.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    // Not a multiple of the part size: the last part is the short remainder.
    let (file, data) = write_sample(&seed_dir, "sample.bin", 3 * 1024 * 1024 + 12345);
    let (orch_path, orch) = compose(&file, &conductor.addr, "64K");
    assert_eq!(orch.part_count(), 49);

    let (_seeder, _) = spawn_member("seeder", &orch_path, &seed_dir, &[]);
    let members: Vec<_> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("m{i}"));
            let (proc, events) = spawn_member(
                &format!("member {i}"),
                &orch_path,
                &dir,
                &["--exit-when-done"],
            );
            (proc, events, dir)
        })
        .collect();
    for (mut proc, events, dir) in members {
        let status = proc.wait_exit(LIMIT);
        assert!(status.success(), "{} exited with {status}", proc.name);
        let copy = std::fs::read(dir.join("sample.bin")).unwrap();
        assert!(copy == data, "{} has a different copy", proc.name);
        assert!(!dir.join("sample.bin.part").exists());
        assert!(!dir.join("sample.bin.part.swarm").exists());
        let summary = last_event(&events, "summary").expect("a summary event");
        assert_eq!(summary["complete"], true);
        assert_eq!(summary["bytes_down"], data.len() as u64);
    }
}

#[test]
fn a_member_with_part_of_the_file_fetches_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let conductor = start_conductor(&["--interval", "1s"]);
    let seed_dir = tmp.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let part = 64 * 1024;
    let (file, data) = write_sample(&seed_dir, "half.bin", 40 * part + 1000);
    let (orch_path, orch) = compose(&file, &conductor.addr, "64K");

    // An interrupted earlier run: parts 0..20 on disk, part 5 damaged, the rest never written.
    let dir = tmp.path().join("resume");
    std::fs::create_dir_all(&dir).unwrap();
    let mut partial = data[..20 * part].to_vec();
    partial[5 * part + 17] ^= 0xff;
    std::fs::write(dir.join("half.bin.part"), &partial).unwrap();
    std::fs::write(
        dir.join("half.bin.part.swarm"),
        format!(
            "torrentnchill partial download\nswarm {}\n",
            orch.swarm_id()
        ),
    )
    .unwrap();

    let (_seeder, _) = spawn_member("seeder", &orch_path, &seed_dir, &[]);
    let (mut member, events) = spawn_member("resumer", &orch_path, &dir, &["--exit-when-done"]);
    assert!(member.wait_exit(LIMIT).success());
    assert!(std::fs::read(dir.join("half.bin")).unwrap() == data);
    let start = last_event(&events, "start").unwrap();
    assert_eq!(start["parts_on_disk"], 19);
    let summary = last_event(&events, "summary").unwrap();
    let expected = data.len() as u64 - 19 * part as u64;
    assert_eq!(
        summary["bytes_down"], expected,
        "fetched more than the missing parts"
    );
}

#[test]
fn a_traversal_name_is_refused_and_nothing_is_written_outside_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let conductor = start_conductor(&[]);
    let (file, _) = write_sample(tmp.path(), "victim.bin", 100_000);
    let (orch_path, orch) = compose(&file, &conductor.addr, "16K");
    let text = orch.to_text();
    let dir = tmp.path().join("inner/dl");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["../escape", "/abs/path", "..", "a/b", "C:x", "CON"] {
        let evil = orch_path.with_file_name("evil.orch");
        std::fs::write(&evil, text.replacen("victim.bin", name, 1)).unwrap();
        let output = member_command(&evil, &dir)
            .arg("--exit-when-done")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{name}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{name}: {stderr}");
        assert!(stderr.contains("line 2"), "{name}: {stderr}");
    }
    assert!(!tmp.path().join("inner/escape").exists());
    assert!(!tmp.path().join("inner/escape.part").exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "something was written in --dir"
    );
}

#[test]
fn an_unrelated_file_with_the_same_name_is_never_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let conductor = start_conductor(&[]);
    let (file, _) = write_sample(tmp.path(), "same.bin", 200_000);
    let (orch_path, _) = compose(&file, &conductor.addr, "16K");
    let dir = tmp.path().join("dl");
    std::fs::create_dir_all(&dir).unwrap();
    let theirs = sample_data(200_000, 42);
    std::fs::write(dir.join("same.bin"), &theirs).unwrap();
    let output = member_command(&orch_path, &dir)
        .arg("--exit-when-done")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not touching it"), "{stderr}");
    assert!(std::fs::read(dir.join("same.bin")).unwrap() == theirs);
    assert!(!dir.join("same.bin.part").exists());
}

#[test]
fn a_partial_download_of_another_swarm_is_not_mixed_in() {
    let tmp = tempfile::tempdir().unwrap();
    let conductor = start_conductor(&[]);
    let (file, _) = write_sample(tmp.path(), "p.bin", 100_000);
    let (orch_path, _) = compose(&file, &conductor.addr, "16K");
    let dir = tmp.path().join("dl");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.bin.part"), b"someone else's bytes").unwrap();
    let other = format!(
        "torrentnchill partial download\nswarm {}\n",
        "ab".repeat(32)
    );
    std::fs::write(dir.join("p.bin.part.swarm"), &other).unwrap();
    let output = member_command(&orch_path, &dir)
        .arg("--exit-when-done")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("belongs to swarm abababababab"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join("p.bin.part")).unwrap(),
        b"someone else's bytes"
    );
}
