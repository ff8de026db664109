//! One run of a member as the `member` program lives it: start, follow the progress, stop when
//! the file is verified (if asked to) or when the user quits or the member fails, leave the
//! swarm, and account for the run. What is shown, and how, is a [`Report`]'s business, so the
//! same loop serves the terminal, `--json` and tests.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::progress::{Clock, Meter, Summary};
use super::{Event, Member, Phase, Status};
use crate::cli::exit::{self, Failure};
use crate::cli::keys::{self, Key, KeyReader};
use crate::sync::{Condvar, Mutex};

/// How often the loop looks at the member's status when nothing wakes it.
const POLL: Duration = Duration::from_millis(100);
/// With `exit_when_done`: how long peers in the middle of receiving a part from us may take to
/// finish it.
const FINISH_UPLOADS: Duration = Duration::from_secs(2);
/// How long quitting waits for the conductor to take the `LEAVE`.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(700);

/// Asks a running session to quit (a key, a signal); safe to use from any thread.
#[derive(Debug, Default)]
pub struct QuitSignal {
    requested: Mutex<bool>,
    changed: Condvar,
}

impl QuitSignal {
    /// Asks to quit; true if that had been asked already.
    pub fn request(&self) -> bool {
        let already = std::mem::replace(&mut *self.requested.lock(), true);
        self.changed.notify_all();
        already
    }

    pub fn is_requested(&self) -> bool {
        *self.requested.lock()
    }

    /// Ctrl-C: asks for a clean quit, or, asked already, puts the terminal back and exits at
    /// once (a user who presses it twice does not want to wait).
    pub fn interrupt(&self) {
        if self.request() {
            keys::restore_terminal();
            std::process::exit(exit::INTERRUPTED);
        }
    }

    /// Makes SIGINT and SIGTERM interrupt (see [`QuitSignal::interrupt`]).
    pub fn on_signals(self: &Arc<Self>) {
        let quit = Arc::clone(self);
        if let Err(e) = ctrlc::set_handler(move || quit.interrupt()) {
            log::warn!("cannot catch Ctrl-C and SIGTERM: {e}");
        }
    }

    /// On a terminal, `q` asks for a clean quit and Ctrl-C interrupts, while the returned
    /// reader lives; dropping it puts the terminal back.
    pub fn on_keys(self: &Arc<Self>) -> Option<KeyReader> {
        let quit = Arc::clone(self);
        KeyReader::start(move |key| match key {
            Key::Quit => drop(quit.request()),
            Key::Interrupt => quit.interrupt(),
        })
    }

    /// Waits up to `timeout` for a request to quit; true if there is one.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.changed
            .wait_until(self.requested.lock(), deadline, |asked| *asked)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions {
    /// End as soon as the file is complete and verified, instead of sharing until quit.
    pub exit_when_done: bool,
}

/// What a session shows, as it happens.
pub trait Report {
    /// The member has started; `status` is what it found there.
    fn started(&mut self, member: &Member, status: &Status);
    fn event(&mut self, event: &Event, member: &Member, clock: &Clock);
    /// Called every turn of the loop (about ten times a second).
    fn progress(&mut self, status: &Status, meter: &Meter, elapsed: Duration);
    /// The file just became complete and verified; the member goes on sharing it.
    fn sharing(&mut self);
    /// The run is over and the member has left the swarm.
    fn finished(&mut self, summary: &Summary);
}

/// Runs `member` until it is done (with [`SessionOptions::exit_when_done`]), `quit` is
/// requested, or it fails; then quits it (every thread joined) and returns the account of the
/// run with how it ended.
pub fn run(
    member: Member,
    events: &Receiver<Event>,
    quit: &QuitSignal,
    report: &mut dyn Report,
    options: SessionOptions,
) -> (Summary, Result<(), Failure>) {
    let at_start = member.status();
    let mut clock = Clock::new(Instant::now(), at_start.phase != Phase::Sharing);
    report.started(&member, &at_start);
    let mut meter = Meter::default();
    let mut announced_sharing = false;
    let mut woken_by: Option<Event> = None;
    let follow_events = |first: Option<Event>, clock: &mut Clock, report: &mut dyn Report| {
        for event in first.into_iter().chain(events.try_iter()) {
            if event == Event::Complete {
                clock.finished(Instant::now());
            }
            report.event(&event, &member, clock);
        }
    };
    let outcome = loop {
        follow_events(woken_by.take(), &mut clock, report);
        let status = member.status();
        let now = Instant::now();
        meter.sample(now, &status);
        if status.phase == Phase::Sharing {
            clock.finished(now);
        }
        report.progress(&status, &meter, member.elapsed());
        match status.phase {
            Phase::Failed => {
                break Err(member.failure().unwrap_or_else(|| {
                    Failure::new(
                        1,
                        anyhow::anyhow!("the member stopped for no reason it gave"),
                    )
                }))
            }
            Phase::Sharing if !announced_sharing => {
                announced_sharing = true;
                if options.exit_when_done {
                    member.finish_uploads(FINISH_UPLOADS);
                    break Ok(());
                }
                report.sharing();
            }
            _ => {}
        }
        // Woken by the member's next event (its completion among them), so that a finished
        // download is seen at once rather than at the next poll; a quit asked meanwhile is seen
        // within POLL. (The member holds the sender while it lives: `Disconnected` would only
        // come from a member gone, and then the quit signal is all there is to wait for.)
        if !quit.is_requested() {
            match events.recv_timeout(POLL) {
                Ok(event) => woken_by = Some(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => drop(quit.wait(POLL)),
            }
        }
        if quit.is_requested() {
            break Ok(());
        }
    };
    member.quit(LEAVE_TIMEOUT);
    follow_events(woken_by.take(), &mut clock, report);
    let summary = Summary::new(&member.status(), &clock, member.elapsed());
    report.finished(&summary);
    (summary, outcome)
}
