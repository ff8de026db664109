//! Locks that do not poison.
//!
//! The standard `Mutex` refuses every later `lock` once a thread panicked while holding it, so
//! one panic in one peer thread would stop every other thread of the process at its next lock,
//! and unwrapping the lock result would turn that into exit code 101. The programs here are
//! built so that a panic ends only the thread it happens in (a peer thread's panic drops that
//! peer), so their locks recover instead: [`Mutex::lock`] hands out the guard even after a
//! panic. Every critical section keeps its data valid at each step it could panic at (plain
//! counters, maps and bitfields updated one call at a time), which is what makes recovering
//! sound.

use std::sync::{self, PoisonError};
use std::time::{Duration, Instant};

pub use std::sync::MutexGuard;

/// A mutual-exclusion lock whose `lock` cannot fail (see the module docs).
#[derive(Debug, Default)]
pub struct Mutex<T>(sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Mutex<T> {
        Mutex(sync::Mutex::new(value))
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A condition variable for [`Mutex`], whose waits cannot fail either.
#[derive(Debug, Default)]
pub struct Condvar(sync::Condvar);

impl Condvar {
    pub const fn new() -> Condvar {
        Condvar(sync::Condvar::new())
    }

    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until notified or `timeout` has passed; true if it timed out.
    pub fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> (MutexGuard<'a, T>, bool) {
        let (guard, result) = self
            .0
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        (guard, result.timed_out())
    }

    /// Waits until `done` holds or `deadline` passes, then releases the lock; returns whether
    /// `done` held.
    pub fn wait_until<T>(
        &self,
        mut guard: MutexGuard<'_, T>,
        deadline: Instant,
        mut done: impl FnMut(&mut T) -> bool,
    ) -> bool {
        loop {
            if done(&mut guard) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self.wait_timeout(guard, left).0;
        }
    }

    pub fn notify_all(&self) {
        self.0.notify_all();
    }

    pub fn notify_one(&self) {
        self.0.notify_one();
    }
}

/// The text a thread panicked with, for the error that reports it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_panic_while_locked_does_not_poison() {
        let lock = Arc::new(Mutex::new(1));
        let held = Arc::clone(&lock);
        let result = std::thread::spawn(move || {
            let mut guard = held.lock();
            *guard = 2;
            panic!("on purpose, while holding the lock");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(*lock.lock(), 2);
    }

    #[test]
    fn waits_until_a_condition_or_a_deadline() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let setter = Arc::clone(&pair);
        let thread = std::thread::spawn(move || {
            *setter.0.lock() = true;
            setter.1.notify_all();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let done = pair.1.wait_until(pair.0.lock(), deadline, |set| *set);
        assert!(done);
        thread.join().unwrap();
        let done = pair.1.wait_until(pair.0.lock(), Instant::now(), |_| false);
        assert!(!done);
    }
}
