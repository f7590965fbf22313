//! A logged-in connection's writer thread: owns the outgoing MTP state, seals and
//! writes what is queued for the connection, and pulls invitations and stored
//! messages from the registry when woken.
//!
//! It exists so that every outgoing frame is sealed and written by one thread, with
//! its own sequence numbers, and a large backlog is paced by the socket rather than
//! queued. A peer that stops reading cannot hold it forever: a write that makes no
//! progress for the heartbeat time-out closes the connection (as an IRC server drops
//! a client past its SendQ); nothing is lost, since what was not acknowledged is
//! delivered again at the next login. It must never write to the socket while it
//! holds the registry lock, never deliver a message that is not stored (the registry
//! offers only durable ones), and never read from the socket.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{lock, Shared};
use crate::mtp::{self, MsgType};
use crate::outbox::Inbox;
use crate::proto;
use crate::registry::Out;

/// Messages a writer pulls from the store per lock acquisition.
const DELIVERY_BATCH: usize = 64;
/// Bytes a writer gathers before one write system call.
const WRITE_BUFFER: usize = 64 * 1024;

/// Who a writer writes to, for its log lines.
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    pub(super) name: String,
    pub(super) uid: u64,
}

/// The writer thread: owns the outgoing MTP state, drains the queue, and pulls
/// deliveries from the store when woken.
pub(super) fn writer(
    shared: &Shared,
    stream: Arc<TcpStream>,
    mut sender: mtp::Sender,
    rx: Inbox<Out>,
    wake: Arc<AtomicBool>,
    peer: Peer,
    login_res: Vec<u8>,
) {
    let Peer { addr, name, uid } = peer;
    let mut buf = login_res;
    let mut cursors: HashMap<u64, u64> = HashMap::new();
    let mut invited: HashSet<u64> = HashSet::new();
    // A write that moves no byte for this long ends the connection (the socket's
    // send time-out; a partial write starts it again).
    let stall = shared.config.heartbeat_timeout;
    let result = (|| -> io::Result<()> {
        stream.set_write_timeout(Some(stall))?;
        (&*stream).write_all(&buf)?;
        buf.clear();
        while let Some(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(item) = next {
                match item {
                    Out::Frame(f) => {
                        sender
                            .seal_into(f.typ, f.sid, f.uid, &[&f.payload], &mut buf)
                            .map_err(io::Error::other)?;
                    }
                    Out::Wake => {
                        wake.store(false, Ordering::Release);
                        deliver(
                            shared,
                            &stream,
                            &mut sender,
                            &mut buf,
                            &mut cursors,
                            &mut invited,
                            uid,
                        )?;
                    }
                    Out::Replaced => {
                        // Why this connection ends, then the end: what is still
                        // queued was for a connection the user no longer has.
                        sender
                            .seal_into(
                                MsgType::CloseReq,
                                0,
                                0,
                                &[&proto::CloseReq.encode()],
                                &mut buf,
                            )
                            .map_err(io::Error::other)?;
                        (&*stream).write_all(&buf)?;
                        log::info!("{addr}: {name} replaced by another login of the same user");
                        return Ok(());
                    }
                }
                flush_full(&stream, &mut buf)?;
                next = rx.try_recv();
            }
            (&*stream).write_all(&buf)?;
            buf.clear();
        }
        Ok(())
    })();
    match result {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            shared.warnings.warn(format_args!(
                "{addr}: {name} stopped reading: no write progress for {stall:?}; closing the connection"
            ));
        }
        Err(e) => log::debug!("writer for uid {uid:016x} ends: {e}"),
        Ok(()) => {}
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Sends the invitations and stored messages the user has not been sent yet on this
/// connection: invitations once each, messages in `n` order per session, a batch per
/// lock acquisition, so a large backlog is paced by the socket rather than queued.
/// Stops after a lock acquisition that found no session with a full batch: anything
/// stored after that comes with its own wake.
#[allow(clippy::too_many_arguments)] // the writer's state, passed apart to borrow it apart
fn deliver(
    shared: &Shared,
    stream: &TcpStream,
    sender: &mut mtp::Sender,
    buf: &mut Vec<u8>,
    cursors: &mut HashMap<u64, u64>,
    invited: &mut HashSet<u64>,
    uid: u64,
) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut invites = Vec::new();
    let mut first = true;
    loop {
        let mut more = false;
        {
            let reg = lock(&shared.registry);
            if std::mem::take(&mut first) {
                // Unanswered invitations first, each once per connection.
                invites.extend(
                    reg.pending_invites(uid)
                        .into_iter()
                        .filter(|(sid, _)| invited.insert(*sid)),
                );
            }
            for (sid, acked) in reg.delivery_points(uid) {
                let cursor = cursors.entry(sid).or_insert(acked);
                *cursor = (*cursor).max(acked);
                if let Some(msgs) = reg.pending_for(uid, sid, *cursor, DELIVERY_BATCH) {
                    more |= msgs.len() == DELIVERY_BATCH;
                    batch.extend(
                        msgs.into_iter()
                            .map(|(n, author, env)| (sid, n, author, env)),
                    );
                }
            }
        }
        for (sid, creator) in invites.drain(..) {
            sender
                .seal_into(
                    MsgType::InviteReq,
                    sid,
                    creator,
                    &[&proto::InviteReq.encode()],
                    buf,
                )
                .map_err(io::Error::other)?;
            flush_full(stream, buf)?;
        }
        for (sid, n, author, envelope) in batch.drain(..) {
            sender
                .seal_into(
                    MsgType::MsgReq,
                    sid,
                    author,
                    &[&proto::Delivery::prefix(n), &envelope],
                    buf,
                )
                .map_err(io::Error::other)?;
            flush_full(stream, buf)?;
            cursors.insert(sid, n);
        }
        if !more {
            return Ok(());
        }
    }
}

/// Writes `buf` out once it holds [`WRITE_BUFFER`] bytes.
fn flush_full(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.len() >= WRITE_BUFFER {
        (&*stream).write_all(buf)?;
        buf.clear();
    }
    Ok(())
}
