//! Waiting for something to happen: every wait polls a condition and has a deadline, so a test
//! never sleeps for a guessed time and never hangs.

use std::time::{Duration, Instant};

/// How often a condition is polled: short enough not to slow a test down, long enough not to
/// load a machine that runs many tests at once.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds (true) or `limit` passes (false).
pub fn poll_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `condition` until it holds; fails the test, naming `what`, if `limit` passes first.
pub fn wait_until(limit: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(
        poll_until(limit, condition),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Polls `find` until it returns something, and returns that; fails the test, naming `what`,
/// if `limit` passes first.
pub fn wait_for<T>(limit: Duration, what: &str, mut find: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_until(limit, what, || {
        found = find();
        found.is_some()
    });
    found.expect("wait_until returned, so the value was found")
}
