//! The invite-wait timer: one thread ends every session's wait for its invitees at
//! its deadline, so that init_res reaches the creator even if some never answer.
//!
//! It exists so that no connection thread sleeps for a deadline. It must never hold
//! its heap's lock while it takes the registry's, and never do I/O.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::{lock, Shared};

/// Invite-wait deadlines, served by one timer thread.
pub(super) struct Timers {
    heap: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    cv: Condvar,
}

impl Timers {
    pub(super) fn new() -> Self {
        Timers {
            heap: Mutex::new(BinaryHeap::new()),
            cv: Condvar::new(),
        }
    }

    /// Ends the invite wait of session `sid` at `deadline`.
    pub(super) fn schedule(&self, sid: u64, deadline: Instant) {
        lock(&self.heap).push(Reverse((deadline, sid)));
        self.cv.notify_one();
    }
}

/// The timer thread: waits for the earliest deadline, then ends that session's wait.
pub(super) fn run(shared: &Shared) {
    let timers = &shared.timers;
    let mut heap = lock(&timers.heap);
    loop {
        let now = Instant::now();
        match heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                let Some(Reverse((_, sid))) = heap.pop() else {
                    continue;
                };
                drop(heap);
                shared.with_registry(|reg| reg.invite_wait_over(sid));
                heap = lock(&timers.heap);
            }
            Some(Reverse((at, _))) => {
                let wait = *at - now;
                heap = timers
                    .cv
                    .wait_timeout(heap, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            None => {
                heap = timers.cv.wait(heap).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}
