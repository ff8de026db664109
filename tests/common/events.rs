//! Reading what a member wrote with `--json` (one event a line, in a file, so that nothing
//! blocks on a pipe), and waiting for an event.

use std::path::Path;
use std::time::Duration;

use super::wait::wait_for;

/// The JSON events a member wrote so far. A line still being written is left out.
pub fn read_events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

pub fn last_event(path: &Path, kind: &str) -> Option<serde_json::Value> {
    read_events(path)
        .into_iter()
        .rev()
        .find(|e| e["event"] == kind)
}

/// Every event of one kind a member wrote so far.
pub fn events_of(path: &Path, kind: &str) -> Vec<serde_json::Value> {
    read_events(path)
        .into_iter()
        .filter(|e| e["event"] == kind)
        .collect()
}

/// Polls a member's events until one of `kind` satisfies `accept`, and returns it.
pub fn wait_for_event(
    path: &Path,
    kind: &str,
    limit: Duration,
    mut accept: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let what = format!("a matching {kind} event in {}", path.display());
    wait_for(limit, &what, || {
        read_events(path)
            .into_iter()
            .find(|e| e["event"] == kind && accept(e))
    })
}

/// The longest time, in seconds, that `bytes_done` stayed still between `progress` events
/// whose `seconds` is at least `from`, up to the first event with the whole file done.
pub fn longest_stall(events: &[serde_json::Value], from: f64) -> f64 {
    let mut longest = 0.0f64;
    let mut still_since: Option<(u64, f64)> = None;
    for e in events.iter().filter(|e| e["event"] == "progress") {
        let seconds = e["seconds"].as_f64().unwrap();
        let done = e["bytes_done"].as_u64().unwrap();
        if seconds < from {
            still_since = Some((done, seconds));
            continue;
        }
        match still_since {
            Some((d, since)) if d == done => longest = longest.max(seconds - since),
            _ => still_since = Some((done, seconds)),
        }
        if done == e["bytes_total"].as_u64().unwrap() {
            break;
        }
    }
    longest
}
