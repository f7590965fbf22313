//! A cache of finished threads, so a connection's threads are reused rather than
//! created and destroyed for every connection.
//!
//! The server keeps its shape (each connection has its own threads while it lives);
//! only the start-up is cheaper. Starting a thread costs this machine about 40 us of
//! CPU (its stack, the signal stack the Rust runtime maps for it, the clone, and
//! unmapping them at exit), and a login used three: a fifth of the CPU a login costs
//! beyond its RSA and PBKDF2 work. A thread that finishes its job waits for another
//! if fewer than `max_idle` threads of its cache are waiting, and ends otherwise or
//! when none comes within its linger.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// How long a finished thread waits for another job before it ends: long enough to
/// absorb a burst of connections, short enough that a quiet server keeps no threads
/// it does not use.
pub const IDLE_THREAD_LINGER: Duration = Duration::from_secs(2);

/// Threads of one stack size.
pub struct ThreadCache {
    shared: Arc<Waiting>,
}

struct Waiting {
    stack: usize,
    max_idle: usize,
    linger: Duration,
    /// One entry per waiting thread, the most recently finished last: each entry
    /// hands that thread its next job. Taking the newest reuses the threads whose
    /// stacks are warm and lets the others run out their linger.
    idle: Mutex<Vec<(ThreadId, mpsc::Sender<Job>)>>,
}

impl ThreadCache {
    /// A cache of threads with `stack` bytes of stack, keeping at most `max_idle` of
    /// them waiting for work, each for at most `linger`.
    pub fn new(stack: usize, max_idle: usize, linger: Duration) -> ThreadCache {
        ThreadCache {
            shared: Arc::new(Waiting {
                stack,
                max_idle,
                linger,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Runs `f` on a waiting thread, or on a new one if none waits.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let mut job: Job = Box::new(f);
        loop {
            let Some((_, tx)) = self.shared.waiting().pop() else {
                break;
            };
            // A thread whose entry is taken waits for the job however long it takes;
            // a send fails only if that thread died, and then the next one is tried.
            match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(j)) => job = j,
            }
        }
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .stack_size(shared.stack)
            .spawn(move || run(&shared, job))
            .map(drop)
    }

    /// Threads waiting for work now.
    pub fn idle(&self) -> usize {
        self.shared.waiting().len()
    }
}

impl Waiting {
    fn waiting(&self) -> MutexGuard<'_, Vec<(ThreadId, mpsc::Sender<Job>)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn run(shared: &Waiting, mut job: Job) {
    let id = std::thread::current().id();
    loop {
        job();
        let (tx, rx) = mpsc::channel();
        {
            let mut idle = shared.waiting();
            if idle.len() >= shared.max_idle {
                return;
            }
            idle.push((id, tx));
        }
        job = match rx.recv_timeout(shared.linger) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = shared.waiting();
                match idle.iter().position(|(i, _)| *i == id) {
                    Some(at) => {
                        idle.remove(at);
                        return;
                    }
                    // Taken just now: the job is on its way.
                    None => {
                        drop(idle);
                        match rx.recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Instant;

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_finished_thread_runs_the_next_job() {
        let cache = ThreadCache::new(64 * 1024, 4, Duration::from_secs(60));
        let (tx, rx) = channel();
        let t = tx.clone();
        cache
            .spawn(move || t.send(std::thread::current().id()).unwrap())
            .unwrap();
        let first = rx.recv().unwrap();
        assert!(wait_until(|| cache.idle() == 1));
        cache
            .spawn(move || tx.send(std::thread::current().id()).unwrap())
            .unwrap();
        assert_eq!(
            rx.recv().unwrap(),
            first,
            "the waiting thread was not reused"
        );
    }

    #[test]
    fn at_most_max_idle_threads_wait_and_every_job_runs() {
        let cache = ThreadCache::new(64 * 1024, 2, Duration::from_secs(60));
        let (tx, rx) = channel();
        let gate = Arc::new(std::sync::Barrier::new(6));
        for i in 0..5 {
            let (tx, gate) = (tx.clone(), gate.clone());
            // All five run at once (the barrier), so five threads exist.
            cache
                .spawn(move || {
                    gate.wait();
                    tx.send(i).unwrap();
                })
                .unwrap();
        }
        gate.wait();
        let mut got: Vec<i32> = (0..5).map(|_| rx.recv().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert!(wait_until(|| cache.idle() == 2));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(cache.idle(), 2);
        for i in 0..20 {
            let tx = tx.clone();
            cache.spawn(move || tx.send(i).unwrap()).unwrap();
        }
        let mut got: Vec<i32> = (0..20).map(|_| rx.recv().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_waiting_thread_ends_after_its_linger_and_the_cache_still_works() {
        let cache = ThreadCache::new(64 * 1024, 3, Duration::from_millis(50));
        let (tx, rx) = channel();
        let t = tx.clone();
        cache.spawn(move || t.send(1).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 1);
        assert!(wait_until(|| cache.idle() == 1));
        assert!(
            wait_until(|| cache.idle() == 0),
            "the waiting thread did not end"
        );
        cache.spawn(move || tx.send(2).unwrap()).unwrap();
        assert_eq!(rx.recv().unwrap(), 2);
    }
}
