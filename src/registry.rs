//! The server's shared state: sessions and who is online, behind one `Mutex`.
//!
//! Request handlers here run with the lock held, so they do no I/O and no crypto:
//! they check a request against [`Sessions`], apply the resulting [`Record`], and
//! queue outgoing frames on the connections' bounded channels with `try_send`. A
//! connection whose queue is full is not waited for: it is marked doomed, and the
//! caller closes it after releasing the lock (its messages stay stored and are
//! delivered again after its next login). Message delivery itself is pulled from the
//! store by each connection's writer thread after a [`Out::Wake`].
//!
//! It must never touch a disk, a socket or a random number generator: everything it
//! needs from outside (fresh sids, the state read back from disk after a failed
//! write) is prepared by the caller before taking the lock. It must never answer a
//! request from state that was not stored: while [`Registry::suspend`] is in force
//! every request is refused.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::mtp::MsgType;
use crate::outbox::{Outbox, SendError};
use crate::proto::{
    Answer, CloseReq, CloseRes, InitRes, InviteRes, MsgRes, NotStored, Reason, StatusReq, StatusRes,
};
use crate::session::{Record, Sessions};
use crate::store::Snapshot;

/// Something for a connection's writer thread to do. Small (a pointer and a tag), so
/// a full queue of them costs little.
#[derive(Debug)]
pub enum Out {
    /// Seal and send one frame.
    Frame(Box<OutFrame>),
    /// New stored messages may be waiting: pull them from the store.
    Wake,
}

/// One frame to seal and send.
#[derive(Debug)]
pub struct OutFrame {
    /// Message type.
    pub typ: MsgType,
    /// Header sid.
    pub sid: u64,
    /// Header uid (0 when the server speaks, else the user it speaks for).
    pub uid: u64,
    /// Plaintext payload.
    pub payload: Vec<u8>,
}

impl Out {
    /// A frame to send.
    pub fn frame(typ: MsgType, sid: u64, uid: u64, payload: impl Into<Vec<u8>>) -> Out {
        Out::Frame(Box::new(OutFrame {
            typ,
            sid,
            uid,
            payload: payload.into(),
        }))
    }
}

/// An online user's connection as the registry sees it.
pub struct Conn {
    /// Unique per connection, so a replaced connection cannot unregister its successor.
    pub id: u64,
    /// The writer thread's bounded queue.
    pub tx: Outbox<Out>,
    /// Set while a [`Out::Wake`] is queued and not yet taken, so wakes coalesce.
    pub wake_pending: Arc<AtomicBool>,
    /// Closes the connection's socket (both threads then end).
    pub close: Box<dyn Fn() + Send>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({})", self.id)
    }
}

/// An outgoing action of a request, carried out once the records the request
/// produced are durable (at once if it produced none).
#[derive(Debug)]
pub enum Effect {
    /// Queue for whichever connection `uid` has then.
    Send(u64, Out),
    /// Queue for the connection a request came on, if it is still there.
    Reply(Requester, Out),
    /// Wake `uid`'s writer to pull stored messages.
    Wake(u64),
}

/// The reply a request gets instead of its `OK` if its records cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureReply {
    /// Who asked.
    pub to: Requester,
    /// Reply type.
    pub typ: MsgType,
    /// Reply sid.
    pub sid: u64,
}

/// What one or more requests changed: records to store, in LSN order, and what to do
/// once they are stored (or, if storing fails, the error replies to send instead).
#[derive(Debug, Default)]
pub struct Pending {
    /// Records with their log sequence numbers.
    pub records: Vec<(u64, Record)>,
    /// Actions that wait for the records.
    pub effects: Vec<Effect>,
    /// Error replies for the case the records are not stored.
    pub on_failure: Vec<FailureReply>,
}

/// A stored message to deliver: `(n, author, envelope)`.
pub type Delivery = (u64, u64, Arc<[u8]>);

/// Who sent a request: the user and the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    /// Authenticated uid.
    pub uid: u64,
    /// Connection id.
    pub conn: u64,
}

/// What a request changed that the caller must still do outside the lock.
#[derive(Debug, Default)]
pub struct Followup {
    /// The session needs an invite-wait timer.
    pub start_invite_timer: Option<u64>,
}

/// Sessions plus online connections.
#[derive(Debug)]
pub struct Registry {
    /// All session state.
    sessions: Sessions,
    online: HashMap<u64, Conn>,
    /// For pending sessions: invitees online at creation who have not answered.
    waiting: HashMap<u64, HashSet<u64>>,
    /// Connections to close once the lock is released.
    doomed: Vec<Conn>,
    /// What requests changed since the caller last took it.
    pending: Pending,
    /// The next log sequence number.
    next_lsn: u64,
    /// Bumped when the state is reset after a storage failure; batches planned under
    /// an older epoch are refused rather than stored.
    epoch: u64,
    /// Storage failed and the state on disk is being read back: `sessions` may hold
    /// changes that were never stored, so nothing is answered or delivered from it.
    suspended: bool,
}

impl Registry {
    /// A registry over `sessions` with nobody online.
    pub fn new(sessions: Sessions, last_lsn: u64) -> Self {
        Registry {
            sessions,
            online: HashMap::new(),
            waiting: HashMap::new(),
            doomed: Vec::new(),
            pending: Pending::default(),
            next_lsn: last_lsn + 1,
            epoch: 0,
            suspended: false,
        }
    }

    /// The current epoch (see [`Registry::reset`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Sessions that are not live yet (after a restart they go live at once: the
    /// creator's wait ended with the old process).
    pub fn pending_sessions(&self) -> Vec<u64> {
        self.sessions
            .iter()
            .filter(|s| !s.live)
            .map(|s| s.sid)
            .collect()
    }

    /// The last log sequence number assigned.
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// The session state as of [`Registry::last_lsn`], for a snapshot written outside
    /// the lock (cheap: envelopes are shared, not copied).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::capture(self.last_lsn(), &self.sessions)
    }

    /// Storage failed: until [`Registry::reset`] puts back what is on disk, every
    /// request is refused with
    /// `the server could not store this; try again` (or, if it has no reply, ignored),
    /// invite waits do not end and writers find nothing to deliver. The caller can
    /// then read the disk without holding the lock, and nobody is answered from
    /// state that was not stored in the meantime. (The server goes further: its
    /// request handlers wait for the reset rather than be refused.)
    pub fn suspend(&mut self) {
        self.suspended = true;
    }

    /// Whether the registry is suspended (see [`Registry::suspend`]).
    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Replaces the session state (after storage failed, with what is on disk),
    /// continues numbering after `last_lsn` and ends a suspension. Batches planned
    /// before are refused (the epoch changes). Pending invite waits are dropped: those
    /// sessions go live at once, as after a restart. Every online user's writer is
    /// woken, since deliveries were held back while suspended.
    pub fn reset(&mut self, mut sessions: Sessions, last_lsn: u64) {
        sessions.mark_all_durable();
        self.sessions = sessions;
        self.next_lsn = last_lsn + 1;
        self.pending = Pending::default();
        self.epoch += 1;
        self.suspended = false;
        self.waiting.clear();
        for sid in self.pending_sessions() {
            self.go_live(sid);
        }
        let online: Vec<u64> = self.online.keys().copied().collect();
        for uid in online {
            self.wake(uid);
        }
    }

    /// While suspended, refuses a request that has a reply and returns `true`.
    fn refused_while_suspended(&mut self, from: Requester, typ: MsgType, sid: u64) -> bool {
        if self.suspended {
            let reason = Reason::NotStored(NotStored::TryAgain);
            self.reply(from, typ, sid, reason.encode_error());
        }
        self.suspended
    }

    /// Whether `uid` has a connection.
    pub fn is_online(&self, uid: u64) -> bool {
        self.online.contains_key(&uid)
    }

    /// Number of online users.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// Connections to close now that the caller is about to release the lock.
    pub fn take_doomed(&mut self) -> Vec<Conn> {
        std::mem::take(&mut self.doomed)
    }

    /// What requests changed since the last call.
    pub fn take_pending(&mut self) -> Pending {
        std::mem::take(&mut self.pending)
    }

    /// Marks the messages among `records` deliverable (they are stored).
    pub fn mark_durable(&mut self, records: &[(u64, Record)]) {
        for (_, rec) in records {
            if let Record::Message { sid, n, .. } = rec {
                self.sessions.mark_durable(*sid, *n);
            }
        }
    }

    /// Carries out effects whose records are stored.
    pub fn carry_out(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send(uid, out) => self.try_send(uid, out),
                Effect::Reply(to, out) => {
                    if self.online.get(&to.uid).is_some_and(|c| c.id == to.conn) {
                        self.try_send(to.uid, out);
                    }
                }
                Effect::Wake(uid) => {
                    let pending = match self.online.get(&uid) {
                        Some(c) => c.wake_pending.swap(true, Ordering::AcqRel),
                        None => continue,
                    };
                    if !pending {
                        self.try_send(uid, Out::Wake);
                    }
                }
            }
        }
    }

    /// Sends the error replies of requests whose records could not be stored.
    pub fn fail(&mut self, on_failure: &[FailureReply], reason: &Reason) {
        let effects = on_failure
            .iter()
            .map(|f| Effect::Reply(f.to, Out::frame(f.typ, f.sid, 0, reason.encode_error())))
            .collect();
        self.carry_out(effects);
    }

    /// Applies a record and queues it for storage.
    fn commit(&mut self, rec: Record) {
        let ok = self.sessions.apply(&rec);
        debug_assert!(ok, "planned records always apply: {rec:?}");
        self.pending.records.push((self.next_lsn, rec));
        self.next_lsn += 1;
    }

    /// Queues `out` for `uid` once this request's records are stored.
    fn send(&mut self, uid: u64, out: Out) {
        self.pending.effects.push(Effect::Send(uid, out));
    }

    /// Queues `out` for `uid` now if online. A full or dead queue dooms the connection.
    fn try_send(&mut self, uid: u64, out: Out) {
        let Some(conn) = self.online.get(&uid) else {
            return;
        };
        match conn.tx.try_send(out) {
            Ok(()) => {}
            Err(SendError::Full(_)) | Err(SendError::Disconnected(_)) => {
                if let Some(conn) = self.online.remove(&uid) {
                    log::warn!(
                        "closing a connection whose outgoing queue is full (uid {uid:016x})"
                    );
                    self.doomed.push(conn);
                }
            }
        }
    }

    /// Queues a reply for the connection a request came on (dropped if that
    /// connection has since been replaced).
    fn reply(&mut self, to: Requester, typ: MsgType, sid: u64, payload: impl Into<Vec<u8>>) {
        self.pending
            .effects
            .push(Effect::Reply(to, Out::frame(typ, sid, 0, payload)));
    }

    /// Registers the error reply `to` gets if this request's records are not stored.
    fn on_failure(&mut self, to: Requester, typ: MsgType, sid: u64) {
        self.pending.on_failure.push(FailureReply { to, typ, sid });
    }

    /// Tells `uid`'s writer that stored messages may be waiting.
    pub fn wake(&mut self, uid: u64) {
        self.pending.effects.push(Effect::Wake(uid));
    }

    /// Registers a freshly logged-in connection. A previous connection of the same user
    /// is replaced and doomed. Its writer is woken to pull unanswered invitations and
    /// stored messages: pulled, not queued, so however many are waiting they are paced
    /// by the socket and can never overflow the new connection's queue.
    pub fn login(&mut self, uid: u64, conn: Conn) {
        if let Some(old) = self.online.insert(uid, conn) {
            self.doomed.push(old);
        }
        self.wake(uid);
    }

    /// Sessions to which `uid` is invited and has not answered, as `(sid, creator)`, in
    /// sid order. Writer threads pull invitations from here.
    pub fn pending_invites(&self, uid: u64) -> Vec<(u64, u64)> {
        if self.suspended {
            return Vec::new();
        }
        self.sessions
            .sessions_of(uid)
            .filter(|s| {
                s.participant(uid)
                    .is_some_and(|p| p.answer == Answer::Invited)
            })
            .map(|s| (s.sid, s.creator))
            .collect()
    }

    /// Unregisters connection `conn` of `uid`, unless it was already replaced.
    pub fn logout(&mut self, uid: u64, conn: u64) {
        if self.online.get(&uid).is_some_and(|c| c.id == conn) {
            self.online.remove(&uid);
        }
    }

    /// Pushes the session's status to every online accepted participant.
    fn push_status(&mut self, sid: u64) {
        let Some(s) = self.sessions.get(sid) else {
            return;
        };
        if !s.live {
            return;
        }
        let payload = StatusRes::Session(s.status(|uid| self.online.contains_key(&uid))).encode();
        let to: Vec<u64> = s
            .accepted()
            .map(|p| p.uid)
            .filter(|u| self.online.contains_key(u))
            .collect();
        for uid in to {
            self.send(uid, Out::frame(MsgType::StatusRes, sid, 0, payload.clone()));
        }
    }

    /// Makes a pending session live: init_res to the creator, then the status push.
    pub fn go_live(&mut self, sid: u64) {
        if self.suspended {
            // The reset that ends the suspension makes every pending session live.
            return;
        }
        self.waiting.remove(&sid);
        let Some(s) = self.sessions.get(sid) else {
            return;
        };
        if s.live {
            return;
        }
        let creator = s.creator;
        self.commit(Record::Live { sid });
        self.send(
            creator,
            Out::frame(MsgType::InitRes, sid, 0, InitRes::Ok.encode()),
        );
        self.push_status(sid);
    }

    /// init_req, already parsed, names resolved and the key checked by the caller
    /// (outside the lock). `candidate_sids` are random sids the caller drew outside
    /// the lock; the first one never issued becomes the session's. If there is none
    /// (the random number generator failed, or every candidate is in use) the request
    /// is refused with [`Reason::NoFreshSid`]: never a loop under the lock.
    pub fn init(
        &mut self,
        from: Requester,
        creator_name: String,
        creator_key: String,
        invitees: Vec<(u64, String)>,
        candidate_sids: &[u64],
    ) -> Followup {
        if self.refused_while_suspended(from, MsgType::InitRes, 0) {
            return Followup::default();
        }
        let fresh = candidate_sids
            .iter()
            .copied()
            .find(|&sid| !self.sessions.is_used(sid));
        let Some(sid) = fresh else {
            let refusal = InitRes::Error(Reason::NoFreshSid);
            self.reply(from, MsgType::InitRes, 0, refusal.encode());
            return Followup::default();
        };
        let rec = match self.sessions.plan_init(
            sid,
            (from.uid, creator_name),
            creator_key,
            invitees.clone(),
        ) {
            Ok(rec) => rec,
            Err(reason) => {
                self.reply(from, MsgType::InitRes, 0, InitRes::Error(reason).encode());
                return Followup::default();
            }
        };
        self.commit(rec);
        self.on_failure(from, MsgType::InitRes, 0);
        let online: HashSet<u64> = invitees
            .iter()
            .map(|(u, _)| *u)
            .filter(|u| self.online.contains_key(u))
            .collect();
        for uid in &online {
            self.wake(*uid);
        }
        if online.is_empty() {
            self.go_live(sid);
            Followup::default()
        } else {
            self.waiting.insert(sid, online);
            Followup {
                start_invite_timer: Some(sid),
            }
        }
    }

    /// invite_res (its key, if any, already checked by the caller). No reply.
    pub fn answer(&mut self, from: Requester, sid: u64, answer: InviteRes) {
        if self.suspended {
            return;
        }
        let Some(rec) = self.sessions.plan_answer(sid, from.uid, answer) else {
            return;
        };
        self.commit(rec);
        let live = self.sessions.get(sid).is_some_and(|s| s.live);
        if live {
            self.push_status(sid);
            self.wake(from.uid);
        } else if let Some(w) = self.waiting.get_mut(&sid) {
            w.remove(&from.uid);
            if w.is_empty() {
                self.go_live(sid);
            }
        }
    }

    /// The invite wait of `sid` ended.
    pub fn invite_wait_over(&mut self, sid: u64) {
        if self.waiting.contains_key(&sid) {
            self.go_live(sid);
        }
    }

    /// msg_req: numbers and stores the envelope, replies `OK <n>` and wakes the online
    /// recipients. Returns the number, if accepted.
    pub fn message(&mut self, from: Requester, sid: u64, envelope: &[u8]) -> Option<u64> {
        if self.refused_while_suspended(from, MsgType::MsgRes, sid) {
            return None;
        }
        match self.sessions.plan_message(sid, from.uid, envelope) {
            Ok(rec) => {
                let Record::Message { n, .. } = rec else {
                    unreachable!("plan_message plans messages")
                };
                self.commit(rec);
                self.on_failure(from, MsgType::MsgRes, sid);
                self.reply(from, MsgType::MsgRes, sid, MsgRes::Ok(n).encode());
                Some(n)
            }
            Err(reason) => {
                self.reply(from, MsgType::MsgRes, sid, MsgRes::Error(reason).encode());
                None
            }
        }
    }

    /// Wakes every online recipient of `sid`'s newest messages (the accepted
    /// participants other than `author`). Called once the message is durable.
    pub fn wake_recipients(&mut self, sid: u64, author: u64) {
        let Some(s) = self.sessions.get(sid) else {
            return;
        };
        let to: Vec<u64> = s
            .accepted()
            .map(|p| p.uid)
            .filter(|&u| u != author)
            .collect();
        for uid in to {
            self.wake(uid);
        }
    }

    /// A recipient's acknowledgement `OK <n>`. No reply.
    pub fn ack(&mut self, from: Requester, sid: u64, n: u64) {
        if self.suspended {
            return;
        }
        if let Some(rec) = self.sessions.plan_ack(sid, from.uid, n) {
            self.commit(rec);
        }
    }

    /// close_req: by the creator only; notices to every other online participant and
    /// online invitee still to answer.
    pub fn close(&mut self, from: Requester, sid: u64) {
        if self.refused_while_suspended(from, MsgType::CloseRes, sid) {
            return;
        }
        let rec = match self.sessions.plan_close(sid, from.uid) {
            Ok(rec) => rec,
            Err(reason) => {
                self.reply(
                    from,
                    MsgType::CloseRes,
                    sid,
                    CloseRes::Error(reason).encode(),
                );
                return;
            }
        };
        let notify: Vec<u64> = self
            .sessions
            .get(sid)
            .map(|s| {
                s.participants
                    .iter()
                    .filter(|p| p.uid != from.uid && p.answer != Answer::Declined)
                    .map(|p| p.uid)
                    .collect()
            })
            .unwrap_or_default();
        self.commit(rec);
        self.on_failure(from, MsgType::CloseRes, sid);
        self.waiting.remove(&sid);
        self.reply(from, MsgType::CloseRes, sid, CloseRes::Ok.encode());
        for uid in notify {
            self.send(
                uid,
                Out::frame(MsgType::CloseReq, sid, from.uid, CloseReq.encode()),
            );
        }
    }

    /// status_req: the listing (sid 0) or one session's status; the reply carries the
    /// request's sid, an error too.
    pub fn status(&mut self, from: Requester, sid: u64) {
        if self.refused_while_suspended(from, MsgType::StatusRes, sid) {
            return;
        }
        let res = if sid == 0 {
            StatusRes::Listing(self.sessions.listing(from.uid))
        } else {
            match self.sessions.visible(sid, from.uid) {
                Ok(s) => StatusRes::Session(s.status(|uid| self.online.contains_key(&uid))),
                Err(reason) => StatusRes::Error(reason),
            }
        };
        self.reply(from, MsgType::StatusRes, sid, res.encode());
    }

    /// Refuses a request with `error: <reason>` in a reply of type `typ`.
    pub fn refuse(&mut self, from: Requester, typ: MsgType, sid: u64, reason: &Reason) {
        self.reply(from, typ, sid, reason.encode_error());
    }

    /// Queues a heartbeat (status_req, sid 0, empty) for `from`.
    pub fn heartbeat(&mut self, from: Requester) {
        self.reply(from, MsgType::StatusReq, 0, StatusReq.encode());
    }

    /// Stored messages for `uid` in `sid` after `after`, at most `max`, as
    /// `(n, author, envelope)`; `None` if `uid` is not an accepted participant of a
    /// live session there. Used by writer threads to pull deliveries.
    pub fn pending_for(&self, uid: u64, sid: u64, after: u64, max: usize) -> Option<Vec<Delivery>> {
        if self.suspended {
            return None;
        }
        let s = self.sessions.get(sid)?;
        if !s.live || s.participant(uid)?.answer != Answer::Accepted {
            return None;
        }
        Some(
            s.messages_after(uid, after)
                .take(max)
                .map(|m| (m.n, m.author, m.envelope.clone()))
                .collect(),
        )
    }

    /// The sessions in which `uid` is an accepted participant, with its acknowledgement
    /// point in each (where a new writer starts delivering).
    pub fn delivery_points(&self, uid: u64) -> Vec<(u64, u64)> {
        if self.suspended {
            return Vec::new();
        }
        self.sessions
            .sessions_of(uid)
            .filter(|s| s.live)
            .filter_map(|s| {
                s.participant(uid)
                    .filter(|p| p.answer == Answer::Accepted)
                    .map(|p| (s.sid, p.acked))
            })
            .collect()
    }
}
