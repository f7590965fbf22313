//! The workloads, each written once over [`System`]: handshakes (logins for mpchat,
//! registrations for IRC), idle connections held for the memory figures, and the
//! groups the relay runs use ([`crate::relay::run_relay`]). mpchatd, ngIRCd and the
//! plaintext relay each implement [`System`] in their own module; a figure that
//! exists for one system is measured the same way for the others.
//!
//! This module must never name a system: what differs between them belongs in their
//! `System` implementations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{fail, BenchError};
use crate::proc::{check_map_count, ensure_nofile, rss_kib, thread_count, ticks};
use crate::process::Daemon;
use crate::relay::Group;

/// A server under test as the workloads see it: where its clients connect, what a
/// client does to get in, and how a group of them is set up.
pub trait System: Sync {
    /// The name in the report: `mpchat`, `ngircd`, `plain` or `plain-env`.
    fn name(&self) -> &'static str;

    /// The server process (its CPU, memory and log).
    fn daemon(&self) -> &Daemon;

    /// Threads the server runs for each connection (the memory figure checks that
    /// the kernel lets it run that many).
    fn threads_per_connection(&self) -> u64;

    /// Client `i` connected and through its handshake (mpchat: logged in as its
    /// `i`-th account; IRC: registered; plain: joined group `i`), held until the
    /// returned value is dropped.
    fn connect(&self, i: usize) -> Result<Box<dyn Send>, BenchError>;

    /// One handshake by client `i`, its connection closed right after, as a client
    /// that leaves closes it.
    fn handshake(&self, i: usize) -> Result<(), BenchError> {
        self.connect(i).map(drop)
    }

    /// A group of `size` participants, every one subscribed, the first the sender.
    fn group(&self, size: usize) -> Result<Group, BenchError>;
}

/// What a run of [`handshakes`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Handshakes {
    /// Handshakes finished.
    pub count: u64,
    /// The time they took.
    pub elapsed: Duration,
    /// Server CPU over that time.
    pub server_cpu: Duration,
}

/// Handshakes by `clients` threads, client `i` on thread `i` (for mpchat its own
/// account, so no login replaces another's connection), each connection closed
/// right after. Bounded by `duration` and `max` handshakes.
pub fn handshakes(
    sys: &dyn System,
    clients: usize,
    duration: Duration,
    max: u64,
    ticks_per_s: u64,
) -> Result<Handshakes, BenchError> {
    let done = AtomicU64::new(0);
    let cpu0 = sys.daemon().cpu_ticks()?;
    let t0 = Instant::now();
    let results: Vec<Result<(), BenchError>> = thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|i| {
                let done = &done;
                s.spawn(move || -> Result<(), BenchError> {
                    while t0.elapsed() < duration && done.load(Ordering::SeqCst) < max {
                        sys.handshake(i)?;
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail("a handshake thread panicked")))
            })
            .collect()
    });
    let elapsed = t0.elapsed();
    let cpu1 = sys.daemon().cpu_ticks()?;
    for r in results {
        r?;
    }
    Ok(Handshakes {
        count: done.load(Ordering::SeqCst),
        elapsed,
        server_cpu: ticks(cpu1 - cpu0, ticks_per_s),
    })
}

/// Resident memory of a server with idle connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryFigure {
    /// RSS before any connection, KiB.
    pub base_kib: u64,
    /// RSS with the connections open, KiB.
    pub rss_kib: u64,
    /// Threads with the connections open.
    pub threads: u64,
}

impl MemoryFigure {
    /// KiB per connection above the base.
    pub fn per_connection(&self, n: usize) -> f64 {
        (self.rss_kib as f64 - self.base_kib as f64) / n.max(1) as f64
    }
}

/// Opens `n` connections (clients `0..n`) one at a time, waits `settle`, and reads
/// the server's RSS and threads; the connections close when this returns.
pub fn hold_idle(sys: &dyn System, n: usize, settle: Duration) -> Result<MemoryFigure, BenchError> {
    let d = sys.daemon();
    let pid = d.pid();
    check_map_count(n as u64 * sys.threads_per_connection())?;
    ensure_nofile(std::process::id(), n as u64 + 256)?;
    ensure_nofile(pid, n as u64 + 256)?;
    thread::sleep(settle);
    let base_kib = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        match sys.connect(i) {
            Ok(c) => held.push(c),
            Err(e) => {
                d.check_alive()?;
                return Err(fail(format!(
                    "after {i} connections: {e}; the server's log ends: {}",
                    d.log_tail()
                )));
            }
        }
    }
    thread::sleep(settle);
    let fig = MemoryFigure {
        base_kib,
        rss_kib: rss_kib(pid)?,
        threads: thread_count(pid)?,
    };
    drop(held);
    Ok(fig)
}
