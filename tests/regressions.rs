//! Inputs that once crashed a fuzz target, replayed on stable with the very checks the fuzz
//! targets run (fuzz/src/lib.rs), plus the seed corpus and a short deterministic mutation run so
//! that a decoder change that breaks a check shows up in `cargo test`, not only under
//! `cargo +nightly fuzz`. docs/RELIABILITY.md says how to fuzz and how to add a case here.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use std::path::Path;

/// Runs the named target's check on `input`.
fn check(target: &str, input: &[u8]) {
    let (_, run) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    run(input);
}

/// The seed files of one target.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn every_target_has_seeds_that_pass() {
    for (target, _) in checks::TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for seed in &seeds {
            check(target, seed);
        }
    }
}

/// A few thousand mutations of each seed (bit flips, byte changes, cuts, repeats, splices
/// of protocol words), from a fixed seed: a stable-toolchain smoke test of the same properties,
/// in well under a second per target. It is no substitute for a fuzzing run.
#[test]
fn mutated_seeds_pass() {
    const ROUNDS: usize = 3000;
    const WORDS: &[&[u8]] = &[
        b" ",
        b"\n",
        b"\r\n",
        b"0",
        b"65535",
        b"65536",
        b"18446744073709551616",
        b"PEERS 1 50\n",
        b"PIECE ",
        b"HAVEMAP ",
        b"PEX ",
        b"[::1]:1",
        b"ERROR ",
        b"tnc/1",
        b"\xff",
        b"#9\n",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below.max(1) as u64) as usize
    };
    for (target, run) in checks::TARGETS {
        let seeds = seeds(target);
        for _ in 0..ROUNDS {
            let mut input = seeds[next(seeds.len())].clone();
            for _ in 0..1 + next(4) {
                let at = next(input.len() + 1);
                let last = at.min(input.len().saturating_sub(1));
                match next(6) {
                    0 if !input.is_empty() => input[last] ^= 1 << next(8),
                    1 if !input.is_empty() => input[last] = next(256) as u8,
                    2 => input.truncate(at),
                    3 => {
                        let word = WORDS[next(WORDS.len())];
                        input.splice(at..at, word.iter().copied());
                    }
                    4 if at < input.len() => {
                        let copy = input[at..].to_vec();
                        input.extend_from_slice(&copy[..next(copy.len() + 1)]);
                    }
                    _ => input.insert(at, next(256) as u8),
                }
            }
            run(&input);
        }
    }
}

// Crashes found by fuzzing, one test each: the input as the fuzzer saved it
// (fuzz/artifacts/TARGET/crash-...), and what was wrong.
