//! A connection's outgoing queue: bounded like `mpsc::sync_channel`, but holding no
//! memory while empty.
//!
//! `sync_channel(256)` allocates its 256 slots up front: 4 KiB for every idle
//! connection. [`outbox`] pairs an unbounded `mpsc::channel` (which allocates its
//! slots in small blocks as items arrive and frees them as they are taken) with a
//! count of the items in flight, so the bound is the same and an idle connection
//! pays for one block at most.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Why [`Outbox::try_send`] did not queue an item; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<T> {
    /// `capacity` items are queued and not yet taken.
    Full(T),
    /// The receiving side is gone.
    Disconnected(T),
}

/// The sending side: cheap to move into the registry, never blocks.
#[derive(Debug)]
pub struct Outbox<T> {
    tx: mpsc::Sender<T>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

/// The receiving side, owned by the writer thread.
#[derive(Debug)]
pub struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    queued: Arc<AtomicUsize>,
}

/// A queue that holds at most `capacity` items (at least one).
pub fn outbox<T>(capacity: usize) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued: queued.clone(),
            capacity: capacity.max(1),
        },
        Inbox { rx, queued },
    )
}

impl<T> Outbox<T> {
    /// Queues `item` unless the queue is full or its receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        // Reserve a place first, so concurrent senders can never overshoot the bound.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Full(item));
        }
        self.tx.send(item).map_err(|mpsc::SendError(item)| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            SendError::Disconnected(item)
        })
    }
}

impl<T> Inbox<T> {
    /// The next item, waiting for one; `None` once every sender is gone.
    pub fn recv(&self) -> Option<T> {
        let item = self.rx.recv().ok()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }

    /// The next item if one is queued now.
    pub fn try_recv(&self) -> Option<T> {
        let item = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_capacity_items_then_refuses_and_gives_the_item_back() {
        let (tx, rx) = outbox(3);
        for i in 0..3 {
            assert_eq!(tx.try_send(i), Ok(()));
        }
        assert_eq!(tx.try_send(9), Err(SendError::Full(9)));
        assert_eq!(rx.recv(), Some(0));
        assert_eq!(tx.try_send(3), Ok(()));
        assert_eq!(tx.try_send(10), Err(SendError::Full(10)));
        assert_eq!(
            (rx.try_recv(), rx.try_recv(), rx.try_recv(), rx.try_recv()),
            (Some(1), Some(2), Some(3), None)
        );
    }

    #[test]
    fn a_gone_receiver_is_reported_and_does_not_use_up_the_bound() {
        let (tx, rx) = outbox(1);
        drop(rx);
        assert_eq!(tx.try_send(1), Err(SendError::Disconnected(1)));
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
    }

    #[test]
    fn recv_ends_when_the_sender_is_gone() {
        let (tx, rx) = outbox(2);
        tx.try_send(5).unwrap();
        drop(tx);
        assert_eq!(rx.recv(), Some(5));
        assert_eq!(rx.recv(), None);
    }

    #[test]
    fn concurrent_senders_never_exceed_the_bound() {
        let (tx, rx) = outbox(64);
        let tx = Arc::new(tx);
        let accepted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let tx = tx.clone();
                    s.spawn(move || (0..1000).filter(|&i| tx.try_send(i).is_ok()).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(accepted, 64);
        let mut taken = 0;
        while rx.try_recv().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 64);
    }
}
