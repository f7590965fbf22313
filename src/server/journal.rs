//! The journal thread: stores the records requests produce, many requests per fsync
//! (group commit), then carries out what waited for them; after a failed write it
//! answers the affected requests with an error and reads the state back from disk.
//!
//! It exists so that one thread owns the journal file and every fsync, and connection
//! threads never wait on the disk while they hold the registry lock. It must never
//! acknowledge or deliver anything whose records are not on disk, never do disk I/O
//! (a write, a sync, a recovery, a compaction) while it holds the registry lock, and
//! never end the process: a state it cannot recover is returned to the caller.

use std::io;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};

use super::{lock, Shared};
use crate::proto::{NotStored, Reason};
use crate::registry::Pending;
use crate::session::Record;
use crate::store::{self, Journal, StoreError};

/// Records to store with one group commit, and what to do once they are stored.
pub(super) struct Batch {
    /// The registry epoch the records were planned in; a batch from before a reset
    /// is refused rather than stored.
    pub(super) epoch: u64,
    pub(super) pending: Pending,
    /// The connection whose request it is, to be told when it is done.
    pub(super) inflight: Option<Arc<Inflight>>,
}

/// Requests of one connection waiting for their records to be stored.
#[derive(Default)]
pub(super) struct Inflight {
    state: Mutex<InflightState>,
    cv: Condvar,
}

#[derive(Default)]
struct InflightState {
    count: usize,
    /// The connection's reader is waiting in [`Inflight::wait_below`]: only then is a
    /// wake-up (a system call) worth making.
    waiting: bool,
}

impl Inflight {
    pub(super) fn add(&self) {
        lock(&self.state).count += 1;
    }

    fn done(&self) {
        let mut s = lock(&self.state);
        s.count = s.count.saturating_sub(1);
        if s.waiting {
            self.cv.notify_all();
        }
    }

    /// Waits until fewer than `max` requests are waiting for storage.
    pub(super) fn wait_below(&self, max: usize) {
        let mut s = lock(&self.state);
        while s.count >= max {
            s.waiting = true;
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting = false;
    }
}

/// The journal thread's loop; returns once every sender is gone, or with the error
/// that kept it from reading the state back after a failed write (the registry then
/// stays suspended, refusing every request, and the server must stop).
pub(super) fn run(
    shared: &Shared,
    mut journal: Journal,
    rx: Receiver<Batch>,
) -> Result<(), StoreError> {
    let mut epoch = lock(&shared.registry).epoch();
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < shared.config.max_group {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let (mut current, stale): (Vec<Batch>, Vec<Batch>) =
            batches.into_iter().partition(|b| b.epoch == epoch);
        let entries: Vec<(u64, Record)> = current
            .iter_mut()
            .flat_map(|b| std::mem::take(&mut b.pending.records))
            .collect();
        let stored = if needs_sync(&entries) {
            journal.append(&entries)
        } else {
            journal.append_unsynced(&entries)
        };
        if let Err(e) = &stored {
            log::error!("cannot write the journal {}: {e}", journal.path().display());
        }
        shared.with_registry_suspended_or_not(|reg| {
            for b in &stale {
                reg.fail(
                    &b.pending.on_failure,
                    &Reason::NotStored(NotStored::TryAgain),
                );
            }
            match &stored {
                Ok(()) => {
                    reg.mark_durable(&entries);
                    for b in current.iter_mut() {
                        reg.carry_out(std::mem::take(&mut b.pending.effects));
                    }
                }
                Err(e) => {
                    let reason = Reason::NotStored(io_reason(e));
                    for b in &current {
                        reg.fail(&b.pending.on_failure, &reason);
                    }
                    // The records just lost are applied in memory: nothing may be
                    // answered from that state until it is read back from disk, which
                    // happens without the lock (requests wait meanwhile).
                    reg.suspend();
                }
            }
        });
        for b in current.iter().chain(&stale) {
            if let Some(i) = &b.inflight {
                i.done();
            }
        }
        if stored.is_err() {
            journal = reload(shared, &mut epoch)?;
        } else if journal.len() > shared.config.compact_bytes {
            let snapshot = lock(&shared.registry).snapshot();
            match journal.compact_captured(&snapshot) {
                Ok(()) => log::info!(
                    "compacted the journal into a snapshot at record {}",
                    snapshot.lsn()
                ),
                Err(e) => log::warn!("cannot compact the journal: {e}; will try again later"),
            }
        }
    }
    Ok(())
}

/// Reads the state back from disk after a failed write, with the registry suspended
/// and its lock not held, and puts it in place; `epoch` becomes the new epoch.
fn reload(shared: &Shared, epoch: &mut u64) -> Result<Journal, StoreError> {
    let recovered = store::recover(&shared.config.state_dir, shared.config.limits)?;
    // Sessions made live by the reset need their own records: they are queued
    // (under the new epoch) with the wakes the reset asked for.
    shared.with_registry_suspended_or_not(|reg| {
        reg.reset(recovered.sessions, recovered.last_lsn);
        *epoch = reg.epoch();
    });
    shared.resumed.notify_all();
    Ok(recovered.journal)
}

/// Whether a group must be on disk before what waits for it is carried out. A group
/// of acknowledgements only need not: nothing waits for an acknowledgement (it has
/// no reply), and one lost in a power cut only means its messages are delivered
/// again, which clients drop as duplicates by `n`. Such a group is written at once
/// and becomes durable with the next group's fsync, so a receiver's acknowledgements
/// do not double the fsyncs per message.
fn needs_sync(entries: &[(u64, Record)]) -> bool {
    !entries.iter().all(|(_, r)| matches!(r, Record::Ack { .. }))
}

/// A short reason for a failed write, for the client's error line.
fn io_reason(e: &io::Error) -> NotStored {
    match e.kind() {
        io::ErrorKind::StorageFull => NotStored::DiskFull,
        io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => NotStored::StorageLimit,
        _ => NotStored::WriteFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_groups_of_acknowledgements_skip_the_fsync() {
        let ack = |n| (n, Record::Ack { sid: 7, uid: 9, n });
        assert!(!needs_sync(&[ack(1)]));
        assert!(!needs_sync(&[ack(1), ack(2)]));
        let close = (3, Record::Close { sid: 7 });
        assert!(needs_sync(&[ack(1), close.clone()]));
        assert!(needs_sync(&[close]));
    }

    #[test]
    fn a_failed_write_gets_a_short_reason_naming_a_full_disk_or_a_limit() {
        let reason = |k: io::ErrorKind| io_reason(&io::Error::from(k));
        assert_eq!(reason(io::ErrorKind::StorageFull), NotStored::DiskFull);
        assert_eq!(reason(io::ErrorKind::FileTooLarge), NotStored::StorageLimit);
        assert_eq!(
            reason(io::ErrorKind::QuotaExceeded),
            NotStored::StorageLimit
        );
        assert_eq!(reason(io::ErrorKind::Other), NotStored::WriteFailed);
    }
}
