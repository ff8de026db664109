//! Child processes that cannot outlive their test, and what a test reads about them.

use std::process::{Child, Command};
use std::time::Duration;

use super::wait::poll_until;

/// A child process that is killed when the test ends, however it ends.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    /// Waits for the process to exit by itself, up to `limit`; kills it and fails otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut status = None;
        let exited = poll_until(limit, || {
            status = self.child.try_wait().expect("the child's status");
            status.is_some()
        });
        match status {
            Some(status) if exited => status,
            _ => {
                self.kill();
                panic!("{} did not exit within {limit:?}", self.name);
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGINT`...) without waiting.
    pub fn signal(&self, signal: i32) {
        use rustix::process::{kill_process, Pid, Signal};
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(Pid::from_raw)
            .expect("a child's pid is a positive i32");
        let signal = Signal::from_named_raw(signal)
            .unwrap_or_else(|| panic!("{signal} is not a signal name"));
        // Unreaped, the pid is still this child's; once reaped (it exited and was waited for)
        // there is nobody left to signal, which is no failure.
        let _ = kill_process(pid, signal);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
