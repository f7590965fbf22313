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
    /// A second login of the user replaced this connection: send it the notice
    /// (close_req with sid 0, uid 0 and an empty payload) and close it.
    Replaced,
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
    /// is replaced: its writer is told ([`Out::Replaced`]) and closes it after sending
    /// the notice, or, if its queue has no room for that, it is doomed. The new
    /// connection's writer is woken to pull unanswered invitations and stored
    /// messages: pulled, not queued, so however many are waiting they are paced by
    /// the socket and can never overflow the new connection's queue.
    pub fn login(&mut self, uid: u64, conn: Conn) {
        if let Some(old) = self.online.insert(uid, conn) {
            if old.tx.try_send(Out::Replaced).is_err() {
                self.doomed.push(old);
            }
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

/// Counts for `mpchatd stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Users with a connection.
    pub online: usize,
    /// Live sessions.
    pub live: usize,
    /// Sessions waiting for their invitees.
    pub pending: usize,
    /// Closed sids remembered.
    pub closed: usize,
    /// Stored messages not yet acknowledged by every recipient.
    pub backlog_messages: usize,
    /// Their envelope bytes.
    pub backlog_bytes: usize,
    /// Accounts with a bound end-to-end key.
    pub bound_keys: usize,
}

/// What the operator's commands (`who`, `stats`) read.
impl Registry {
    /// The id of `uid`'s current connection, if online.
    pub fn online_conn(&self, uid: u64) -> Option<u64> {
        self.online.get(&uid).map(|c| c.id)
    }

    /// Counts of users, sessions and backlog. Walks every session: for an
    /// operator's occasional question, not for request paths.
    pub fn stats(&self) -> RegistryStats {
        let mut st = RegistryStats {
            online: self.online.len(),
            closed: self.sessions.closed_sids().count(),
            ..RegistryStats::default()
        };
        for s in self.sessions.iter() {
            if s.live {
                st.live += 1;
            } else {
                st.pending += 1;
            }
            st.backlog_messages += s.messages.len();
            st.backlog_bytes += s.backlog_bytes;
        }
        st.bound_keys = self.sessions.bindings().len();
        st
    }
}

/// Key bindings (see [`crate::bindings`]): the requests that present a key check it
/// against the account's binding here, under the lock, and bind a first key with a
/// record stored before the request takes effect. The key was parsed by the caller
/// (`der` is its canonical SPKI DER); `exists` says whether an account still exists
/// (a deleted account's key is free again).
impl Registry {
    /// The key bound to `uid`.
    pub fn binding(&self, uid: u64) -> Option<Arc<[u8]>> {
        self.sessions.bindings().get(uid).cloned()
    }

    /// init_req with the key checked against the account's binding: a key another
    /// account owns, or another key than the account's, is refused with init_res
    /// `error: ...`; a first key is bound (in the same group commit as the session,
    /// before init_res).
    #[allow(clippy::too_many_arguments)]
    pub fn init_bound(
        &mut self,
        from: Requester,
        creator_name: String,
        creator_key: String,
        der: &[u8],
        exists: &dyn Fn(u64) -> bool,
        invitees: Vec<(u64, String)>,
        candidate_sids: &[u64],
    ) -> Followup {
        if self.refused_while_suspended(from, MsgType::InitRes, 0) {
            return Followup::default();
        }
        let bind = match self.sessions.bindings().check(from.uid, der, exists) {
            Ok(b) => b,
            Err(reason) => {
                self.reply(from, MsgType::InitRes, 0, InitRes::Error(reason).encode());
                return Followup::default();
            }
        };
        let before = self.next_lsn;
        let followup = self.init(from, creator_name, creator_key, invitees, candidate_sids);
        // Bound only if the session was made: a refused init takes no effect at all.
        if let (Some(key), true) = (bind, self.next_lsn != before) {
            self.commit(Record::Bind { uid: from.uid, key });
        }
        followup
    }

    /// invite_res with an accepting key checked against the account's binding: a key
    /// another account owns, or another key than the account's, is treated as an
    /// invalid key (no reply, no change); a first key is bound. Returns the refusal,
    /// for the caller's log.
    pub fn answer_bound(
        &mut self,
        from: Requester,
        sid: u64,
        answer: InviteRes,
        der: Option<&[u8]>,
        exists: &dyn Fn(u64) -> bool,
    ) -> Result<(), Reason> {
        if self.suspended {
            return Ok(());
        }
        let bind = match der {
            Some(der) => self.sessions.bindings().check(from.uid, der, exists)?,
            None => None,
        };
        let before = self.next_lsn;
        self.answer(from, sid, answer);
        if let (Some(key), true) = (bind, self.next_lsn != before) {
            self.commit(Record::Bind { uid: from.uid, key });
        }
        Ok(())
    }

    /// The explicit replacement of `from`'s key by `new_text` (`new_der`), whose proof
    /// the caller verified outside the lock against `verified_with`, the binding it
    /// read then (`None`: the account had none, and no proof was needed). Refused if
    /// the binding changed meanwhile (`key replacement not signed by your current
    /// key`) or another account owns the new key. Otherwise a `Rekey` record: the
    /// binding and the account's key in every session it accepted change, init_res
    /// sid 0 `OK` once stored, and the live sessions' statuses are pushed.
    pub fn replace_key(
        &mut self,
        from: Requester,
        verified_with: Option<Arc<[u8]>>,
        new_der: &[u8],
        exists: &dyn Fn(u64) -> bool,
    ) {
        if self.refused_while_suspended(from, MsgType::InitRes, 0) {
            return;
        }
        let current = self.sessions.bindings().get(from.uid).cloned();
        let checked = if current != verified_with {
            Err(Reason::ReplacementNotSigned)
        } else {
            self.sessions
                .bindings()
                .check_replacement(from.uid, new_der, exists)
        };
        if let Err(reason) = checked {
            self.reply(from, MsgType::InitRes, 0, InitRes::Error(reason).encode());
            return;
        }
        if current.as_deref() != Some(new_der) {
            self.commit(Record::Rekey {
                uid: from.uid,
                key: Arc::from(new_der),
            });
            self.on_failure(from, MsgType::InitRes, 0);
            for sid in self.sessions.accepted_sessions(from.uid) {
                self.push_status(sid);
            }
        }
        self.reply(from, MsgType::InitRes, 0, InitRes::Ok.encode());
    }

    /// `mpchatd reset-key`: clears `uid`'s binding (an `Unbind` record). Returns
    /// whether there was one.
    pub fn reset_binding(&mut self, uid: u64) -> bool {
        if self.suspended || self.sessions.bindings().get(uid).is_none() {
            return false;
        }
        self.commit(Record::Unbind { uid });
        true
    }
}

#[cfg(test)]
mod tests {
    //! The registry driven in memory: fake connections are the registry's own
    //! [`Conn`] with an [`Outbox`] whose other end the test reads, and "storing" is
    //! what the journal thread does after a good write (mark durable, carry out).

    use super::*;
    use crate::outbox::{outbox, Inbox};
    use crate::session::Limits;

    /// The refusal of a request that cannot be stored (or comes while suspended).
    const TRY_AGAIN: Reason = Reason::NotStored(NotStored::TryAgain);

    const A: u64 = 0xa;
    const B: u64 = 0xb;
    const C: u64 = 0xc;
    const SID: u64 = 0x5151;
    const SID2: u64 = 0x5252;

    /// One fake connection: what the writer thread would read, and whether the
    /// registry had it closed.
    struct Fake {
        me: Requester,
        inbox: Inbox<Out>,
        wake_pending: Arc<AtomicBool>,
        closed: Arc<AtomicBool>,
    }

    impl Fake {
        /// What the writer would take from the queue, as `TYPE SID UID PAYLOAD` lines
        /// (ids in hex) and `wake`; taking a wake clears the flag, as the writer does.
        fn drain(&self) -> Vec<String> {
            let mut got = Vec::new();
            while let Some(out) = self.inbox.try_recv() {
                match out {
                    Out::Frame(f) => got.push(format!(
                        "{:?} {:x} {:x} {}",
                        f.typ,
                        f.sid,
                        f.uid,
                        String::from_utf8_lossy(&f.payload)
                    )),
                    Out::Wake => {
                        self.wake_pending.store(false, Ordering::Release);
                        got.push("wake".into());
                    }
                    Out::Replaced => got.push("replaced".into()),
                }
            }
            got
        }

        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Acquire)
        }
    }

    /// A registry with nobody online, over empty state.
    fn registry() -> Registry {
        Registry::new(Sessions::new(Limits::default()), 0)
    }

    /// Logs `uid` in on connection `id` with a queue of `queue` items, and carries
    /// out the login (its wake).
    fn connect(reg: &mut Registry, uid: u64, id: u64, queue: usize) -> Fake {
        let (tx, inbox) = outbox(queue);
        let closed = Arc::new(AtomicBool::new(false));
        let wake_pending = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        reg.login(
            uid,
            Conn {
                id,
                tx,
                wake_pending: wake_pending.clone(),
                close: Box::new(move || flag.store(true, Ordering::Release)),
            },
        );
        let fake = Fake {
            me: Requester { uid, conn: id },
            inbox,
            wake_pending,
            closed,
        };
        store(reg);
        fake
    }

    /// What the journal thread does once a group is on disk: returns the records.
    fn store(reg: &mut Registry) -> Vec<Record> {
        let pending = reg.take_pending();
        reg.mark_durable(&pending.records);
        reg.carry_out(pending.effects);
        pending.records.into_iter().map(|(_, r)| r).collect()
    }

    fn name(uid: u64) -> String {
        format!("user{uid:x}")
    }

    fn key(uid: u64) -> String {
        format!("K{uid:x}")
    }

    /// `from` creates session `sid` inviting `invitees`.
    fn init(reg: &mut Registry, from: &Fake, sid: u64, invitees: &[u64]) -> Followup {
        let invitees = invitees.iter().map(|&u| (u, name(u))).collect();
        reg.init(
            from.me,
            name(from.me.uid),
            key(from.me.uid),
            invitees,
            &[sid],
        )
    }

    fn accept(reg: &mut Registry, who: &Fake, sid: u64) {
        reg.answer(who.me, sid, InviteRes::Accept(key(who.me.uid)));
    }

    /// A live session `SID` of creator `a` and accepted `b`, everything stored and
    /// every queue read.
    fn live_pair() -> (Registry, Fake, Fake) {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        let b = connect(&mut reg, B, 2, 64);
        init(&mut reg, &a, SID, &[B]);
        accept(&mut reg, &b, SID);
        store(&mut reg);
        a.drain();
        b.drain();
        (reg, a, b)
    }

    fn numbers(reg: &Registry, uid: u64, after: u64) -> Vec<u64> {
        reg.pending_for(uid, SID, after, 100)
            .unwrap_or_default()
            .iter()
            .map(|(n, _, _)| *n)
            .collect()
    }

    #[test]
    fn a_login_wakes_the_writer_to_pull_what_waits() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 8);
        assert!(reg.is_online(A));
        assert_eq!(reg.online_count(), 1);
        assert_eq!(a.drain(), ["wake"]);
    }

    #[test]
    fn init_with_an_online_invitee_waits_for_the_answer_then_goes_live() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        let b = connect(&mut reg, B, 2, 64);
        a.drain();
        b.drain();
        let followup = init(&mut reg, &a, SID, &[B]);
        assert_eq!(followup.start_invite_timer, Some(SID));
        let records = store(&mut reg);
        assert!(matches!(records[..], [Record::Create { sid: SID, .. }]));
        assert_eq!(reg.pending_sessions(), [SID]);
        // The invitee's writer is woken to pull the invitation; the creator waits.
        assert_eq!(b.drain(), ["wake"]);
        assert_eq!(reg.pending_invites(B), [(SID, A)]);
        assert!(a.drain().is_empty());

        accept(&mut reg, &b, SID);
        let records = store(&mut reg);
        assert!(matches!(
            records[..],
            [
                Record::Answer {
                    sid: SID,
                    uid: B,
                    ..
                },
                Record::Live { sid: SID }
            ]
        ));
        assert!(reg.pending_invites(B).is_empty());
        // init_res first, then the going-live status push, to every online accepted
        // participant.
        let got = a.drain();
        assert_eq!(got[0], "InitRes 5151 0 OK");
        assert!(
            got[1].starts_with("StatusRes 5151 0 OK\nlive usera\n"),
            "{got:?}"
        );
        assert!(got[1].contains("userb 000000000000000b accepted online 0 Kb\n"));
        assert_eq!(got.len(), 2);
        let got = b.drain();
        assert!(
            got[0].starts_with("StatusRes 5151 0 OK\nlive usera\n"),
            "{got:?}"
        );
        assert_eq!(got.len(), 1, "no wake: nothing is stored for b yet");
    }

    #[test]
    fn init_with_nobody_online_to_answer_goes_live_at_once() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        a.drain();
        let followup = init(&mut reg, &a, SID, &[B, C]);
        assert_eq!(followup.start_invite_timer, None);
        // Nothing is sent before the records are stored.
        assert!(a.drain().is_empty());
        let records = store(&mut reg);
        assert!(matches!(
            records[..],
            [Record::Create { sid: SID, .. }, Record::Live { sid: SID }]
        ));
        let got = a.drain();
        assert_eq!(got[0], "InitRes 5151 0 OK");
        assert!(got[1].contains("userb 000000000000000b invited offline 0\n"));
        // The invitations wait for the invitees' next login.
        assert_eq!(reg.pending_invites(C), [(SID, A)]);
    }

    #[test]
    fn the_end_of_the_invite_wait_makes_the_session_live_once() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        let _b = connect(&mut reg, B, 2, 64);
        a.drain();
        init(&mut reg, &a, SID, &[B]);
        store(&mut reg);
        reg.invite_wait_over(SID);
        assert!(matches!(store(&mut reg)[..], [Record::Live { sid: SID }]));
        assert_eq!(a.drain()[0], "InitRes 5151 0 OK");
        reg.invite_wait_over(SID);
        assert!(store(&mut reg).is_empty());
        assert!(a.drain().is_empty());
    }

    #[test]
    fn a_late_acceptance_joins_the_live_session_at_its_latest_message() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        init(&mut reg, &a, SID, &[B]);
        store(&mut reg);
        assert_eq!(reg.message(a.me, SID, b"before"), Some(1));
        store(&mut reg);
        let b = connect(&mut reg, B, 2, 64);
        accept(&mut reg, &b, SID);
        store(&mut reg);
        assert_eq!(reg.delivery_points(B), [(SID, 1)]);
        assert!(numbers(&reg, B, 1).is_empty());
        assert!(b.drain().iter().any(|l| l.starts_with("StatusRes 5151")));
    }

    #[test]
    fn messages_are_numbered_per_session_and_answered_only_once_stored() {
        let (mut reg, a, b) = live_pair();
        assert_eq!(reg.message(a.me, SID, b"one"), Some(1));
        assert_eq!(reg.message(a.me, SID, b"two"), Some(2));
        // Neither the reply nor the delivery comes before the records are stored.
        assert!(a.drain().is_empty());
        assert!(numbers(&reg, B, 0).is_empty());
        let records = store(&mut reg);
        assert!(matches!(
            records[..],
            [Record::Message { n: 1, .. }, Record::Message { n: 2, .. }]
        ));
        assert_eq!(a.drain(), ["MsgRes 5151 0 OK 1", "MsgRes 5151 0 OK 2"]);
        assert_eq!(numbers(&reg, B, 0), [1, 2]);
        let msgs = reg.pending_for(B, SID, 0, 1).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].1, &msgs[0].2[..]), (A, &b"one"[..]));
        // Another session numbers from 1 again.
        init(&mut reg, &b, SID2, &[A]);
        accept(&mut reg, &a, SID2);
        assert_eq!(reg.message(b.me, SID2, b"x"), Some(1));
        // Refusals need no storage: an empty message is answered at once.
        assert_eq!(reg.message(a.me, SID, b""), None);
        store(&mut reg);
        assert!(a
            .drain()
            .contains(&"MsgRes 5151 0 error: empty message".to_string()));
    }

    #[test]
    fn fan_out_wakes_recipients_once_until_their_writer_takes_the_wake() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        let b = connect(&mut reg, B, 2, 64);
        let c = connect(&mut reg, C, 3, 64);
        init(&mut reg, &a, SID, &[B, C]);
        accept(&mut reg, &b, SID);
        accept(&mut reg, &c, SID);
        store(&mut reg);
        for f in [&a, &b, &c] {
            f.drain();
        }
        for body in [&b"one"[..], b"two", b"three"] {
            assert!(reg.message(a.me, SID, body).is_some());
            reg.wake_recipients(SID, A);
        }
        store(&mut reg);
        // One wake each for three messages, none for the author.
        assert_eq!(b.drain(), ["wake"]);
        assert_eq!(c.drain(), ["wake"]);
        let replies = a.drain();
        assert_eq!(replies.len(), 3, "{replies:?}");
        // Once the writer took its wake, the next message wakes it again.
        assert!(reg.message(a.me, SID, b"four").is_some());
        reg.wake_recipients(SID, A);
        store(&mut reg);
        assert_eq!(b.drain(), ["wake"]);
    }

    #[test]
    fn an_ack_moves_only_its_senders_point_and_gets_no_reply() {
        let (mut reg, a, b) = live_pair();
        for body in [&b"one"[..], b"two", b"three"] {
            reg.message(a.me, SID, body);
        }
        store(&mut reg);
        a.drain();
        reg.ack(b.me, SID, 2);
        assert!(matches!(
            store(&mut reg)[..],
            [Record::Ack {
                sid: SID,
                uid: B,
                n: 2
            }]
        ));
        assert!(b.drain().is_empty() && a.drain().is_empty());
        assert_eq!(reg.delivery_points(B), [(SID, 2)]);
        assert_eq!(reg.delivery_points(A), [(SID, 0)]);
        assert_eq!(numbers(&reg, B, 2), [3]);
        // Beyond the latest message, or back, changes nothing.
        reg.ack(b.me, SID, 9);
        reg.ack(b.me, SID, 1);
        assert!(store(&mut reg).is_empty());
    }

    #[test]
    fn only_the_creator_closes_and_every_other_member_is_told() {
        let (mut reg, a, b) = live_pair();
        reg.close(b.me, SID);
        assert!(store(&mut reg).is_empty());
        assert_eq!(
            b.drain(),
            ["CloseRes 5151 0 error: only the creator can close"]
        );
        reg.close(a.me, SID);
        assert!(matches!(store(&mut reg)[..], [Record::Close { sid: SID }]));
        assert_eq!(a.drain(), ["CloseRes 5151 0 OK"]);
        assert_eq!(b.drain(), ["CloseReq 5151 a "]);
        // A closed session answers so to anyone.
        reg.status(b.me, SID);
        reg.message(a.me, SID, b"late");
        reg.close(a.me, SID);
        store(&mut reg);
        assert_eq!(b.drain(), ["StatusRes 5151 0 error: session closed"]);
        assert_eq!(
            a.drain(),
            [
                "MsgRes 5151 0 error: session closed",
                "CloseRes 5151 0 error: session closed"
            ]
        );
    }

    #[test]
    fn status_is_shown_to_members_and_invitees_but_not_to_strangers_or_decliners() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        let b = connect(&mut reg, B, 2, 64);
        let c = connect(&mut reg, C, 3, 64);
        init(&mut reg, &a, SID, &[B]);
        store(&mut reg);
        for f in [&a, &b, &c] {
            f.drain();
        }
        // An invitee still to answer sees the session; a stranger does not.
        reg.status(b.me, SID);
        reg.status(c.me, SID);
        reg.status(c.me, 0);
        reg.status(b.me, 0);
        store(&mut reg);
        let got = b.drain();
        assert!(got[0].starts_with("StatusRes 5151 0 OK\npending usera\n"));
        assert!(got[0].contains("usera 000000000000000a accepted online 0 Ka\n"));
        assert_eq!(got[1], "StatusRes 0 0 OK\n0000000000005151 invited usera\n");
        assert_eq!(
            c.drain(),
            [
                "StatusRes 5151 0 error: not a participant",
                "StatusRes 0 0 OK\n"
            ]
        );
        // Presence follows the connection.
        reg.logout(A, 1);
        reg.status(b.me, SID);
        store(&mut reg);
        assert!(b.drain()[0].contains("usera 000000000000000a accepted offline 0 Ka\n"));
        // A decliner is out.
        reg.answer(b.me, SID, InviteRes::Deny);
        store(&mut reg);
        reg.status(b.me, SID);
        reg.status(b.me, 0);
        store(&mut reg);
        assert_eq!(
            b.drain(),
            [
                "StatusRes 5151 0 error: not a participant",
                "StatusRes 0 0 OK\n"
            ]
        );
    }

    #[test]
    fn a_full_queue_dooms_the_connection_and_takes_it_offline() {
        let mut reg = registry();
        // A queue of one, taken by the login's wake.
        let b = connect(&mut reg, B, 2, 1);
        assert!(reg.take_doomed().is_empty());
        reg.status(b.me, 0);
        store(&mut reg);
        assert!(!reg.is_online(B));
        let doomed = reg.take_doomed();
        assert_eq!(doomed.len(), 1);
        assert_eq!(doomed[0].id, 2);
        // The caller closes it once the lock is released.
        assert!(!b.is_closed());
        (doomed[0].close)();
        assert!(b.is_closed());
        assert_eq!(b.drain(), ["wake"]);
        // What it is sent later is not queued anywhere.
        reg.status(b.me, 0);
        store(&mut reg);
        assert!(b.drain().is_empty());
        assert!(reg.take_doomed().is_empty());
    }

    #[test]
    fn a_second_login_replaces_the_first_whose_replies_are_then_dropped() {
        let mut reg = registry();
        let first = connect(&mut reg, B, 2, 64);
        let second = connect(&mut reg, B, 3, 64);
        // The first connection's writer is told why, and closes it after the notice.
        assert!(reg.take_doomed().is_empty());
        assert!(!first.is_closed() && !second.is_closed());
        assert!(reg.is_online(B));
        assert_eq!(reg.online_count(), 1);
        // A request still read from the old connection is answered nowhere.
        reg.status(first.me, 0);
        reg.status(second.me, 0);
        store(&mut reg);
        assert_eq!(first.drain(), ["wake", "replaced"]);
        assert_eq!(second.drain(), ["wake", "StatusRes 0 0 OK\n"]);
        // The old connection's logout does not take the new one offline.
        reg.logout(B, 2);
        assert!(reg.is_online(B));
        reg.logout(B, 3);
        assert!(!reg.is_online(B));
    }

    #[test]
    fn a_second_login_dooms_the_first_at_once_when_its_queue_has_no_room_for_the_notice() {
        let mut reg = registry();
        // A queue of one, taken by the login's wake.
        let first = connect(&mut reg, B, 2, 1);
        let _second = connect(&mut reg, B, 3, 64);
        let doomed = reg.take_doomed();
        assert_eq!(doomed.iter().map(|c| c.id).collect::<Vec<_>>(), [2]);
        (doomed[0].close)();
        assert!(first.is_closed());
        assert_eq!(first.drain(), ["wake"]);
    }

    #[test]
    fn init_takes_the_first_fresh_candidate_sid_or_is_refused_without_a_record() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        a.drain();
        let invitees = || vec![(B, name(B))];
        // No candidate (the random number generator failed), or none fresh: refused,
        // never a loop under the lock.
        reg.init(a.me, name(A), key(A), invitees(), &[]);
        reg.init(a.me, name(A), key(A), invitees(), &[0]);
        assert!(store(&mut reg).is_empty());
        let refusal = format!("InitRes 0 0 error: {}", Reason::NoFreshSid);
        assert_eq!(a.drain(), [refusal.clone(), refusal.clone()]);
        reg.init(a.me, name(A), key(A), invitees(), &[SID]);
        assert!(matches!(
            store(&mut reg)[..],
            [Record::Create { sid: SID, .. }, _]
        ));
        reg.close(a.me, SID);
        store(&mut reg);
        a.drain();
        // A used sid, even a closed one, is skipped for the next candidate.
        reg.init(a.me, name(A), key(A), invitees(), &[SID]);
        store(&mut reg);
        assert_eq!(a.drain(), [refusal]);
        reg.init(a.me, name(A), key(A), invitees(), &[SID, SID2]);
        assert!(matches!(
            store(&mut reg)[..],
            [Record::Create { sid: SID2, .. }, _]
        ));
    }

    #[test]
    fn requests_whose_records_are_not_stored_get_the_error_reply_instead() {
        let (mut reg, a, b) = live_pair();
        assert_eq!(reg.message(a.me, SID, b"lost"), Some(1));
        reg.wake_recipients(SID, A);
        let pending = reg.take_pending();
        assert_eq!(pending.records.len(), 1);
        reg.fail(&pending.on_failure, &TRY_AGAIN);
        assert_eq!(a.drain(), [format!("MsgRes 5151 0 error: {TRY_AGAIN}")]);
        // Nothing was delivered nor offered: the message is not durable.
        assert!(b.drain().is_empty());
        assert!(numbers(&reg, B, 0).is_empty());
    }

    #[test]
    fn a_suspended_registry_answers_nothing_until_the_state_on_disk_is_back() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 64);
        let b = connect(&mut reg, B, 2, 64);
        let c = connect(&mut reg, C, 3, 64);
        // On disk: a live session of a and b, with message 1, and an invitation of c
        // to a second session still pending.
        let mut disk = Vec::new();
        init(&mut reg, &a, SID, &[B]);
        accept(&mut reg, &b, SID);
        reg.message(a.me, SID, b"stored");
        init(&mut reg, &a, SID2, &[C]);
        disk.extend(store(&mut reg));
        for f in [&a, &b, &c] {
            f.drain();
        }
        // Lost: message 2 and the close of the session.
        reg.message(a.me, SID, b"lost");
        reg.close(a.me, SID);
        let lost = reg.take_pending();
        reg.fail(&lost.on_failure, &Reason::NotStored(NotStored::DiskFull));
        assert_eq!(a.drain().len(), 2);
        let epoch = reg.epoch();
        reg.suspend();
        assert!(reg.is_suspended());

        // In memory the session is closed; nobody may be told so.
        reg.status(b.me, SID);
        reg.message(b.me, SID, b"meanwhile");
        reg.close(a.me, SID);
        reg.init(a.me, name(A), key(A), vec![(B, name(B))], &[0x77]);
        reg.ack(b.me, SID, 1);
        reg.answer(c.me, SID2, InviteRes::Accept(key(C)));
        reg.invite_wait_over(SID2);
        assert!(store(&mut reg).is_empty());
        let refused = |typ: &str, sid: u64| format!("{typ} {sid:x} 0 error: {TRY_AGAIN}");
        assert_eq!(
            b.drain(),
            [refused("StatusRes", SID), refused("MsgRes", SID)]
        );
        assert_eq!(a.drain(), [refused("CloseRes", SID), refused("InitRes", 0)]);
        assert!(c.drain().is_empty());
        assert!(reg.delivery_points(B).is_empty());
        assert!(reg.pending_invites(C).is_empty());
        assert!(reg.pending_for(B, SID, 0, 10).is_none());

        // The state read back from disk.
        let mut sessions = Sessions::new(Limits::default());
        for rec in &disk {
            assert!(sessions.apply(rec));
        }
        reg.reset(sessions, disk.len() as u64);
        assert!(!reg.is_suspended());
        assert_eq!(reg.epoch(), epoch + 1);
        // Numbering goes on from the disk's last LSN, first with the reset's own record.
        assert_eq!(reg.last_lsn(), disk.len() as u64 + 1);
        // The pending session went live, and every writer is woken to pull again.
        let records = store(&mut reg);
        assert!(matches!(records[..], [Record::Live { sid: SID2 }]));
        assert!(a.drain().contains(&"InitRes 5252 0 OK".to_string()));
        assert_eq!(b.drain(), ["wake"]);
        assert_eq!(c.drain(), ["wake"]);
        assert_eq!(numbers(&reg, B, 0), [1]);
        assert_eq!(reg.pending_invites(C), [(SID2, A)]);
        reg.status(b.me, SID);
        store(&mut reg);
        assert!(b.drain()[0].starts_with("StatusRes 5151 0 OK\nlive usera\n"));
    }

    #[test]
    fn a_snapshot_is_taken_at_the_last_lsn_assigned() {
        let (mut reg, a, _b) = live_pair();
        reg.message(a.me, SID, b"one");
        store(&mut reg);
        // Create, Answer, Live, Message.
        assert_eq!(reg.last_lsn(), 4);
        assert_eq!(reg.snapshot().lsn(), 4);
    }

    fn everyone(_: u64) -> bool {
        true
    }

    fn der(uid: u64) -> Vec<u8> {
        format!("DER-{uid:x}").into_bytes()
    }

    #[test]
    fn a_first_key_is_bound_in_the_same_group_as_the_session_and_then_enforced() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 16);
        let invitees = vec![(B, name(B))];
        reg.init_bound(
            a.me,
            name(A),
            key(A),
            &der(A),
            &everyone,
            invitees.clone(),
            &[SID],
        );
        let records = store(&mut reg);
        assert!(matches!(
            &records[..],
            [
                Record::Create { .. },
                Record::Live { .. },
                Record::Bind { uid: A, .. }
            ]
        ));
        assert_eq!(reg.binding(A).as_deref(), Some(&der(A)[..]));
        a.drain();
        // Another key from alice, and alice's key from bob: refused, nothing stored.
        reg.init_bound(
            a.me,
            name(A),
            key(A),
            &der(0xee),
            &everyone,
            invitees,
            &[SID2],
        );
        assert!(store(&mut reg).is_empty());
        assert_eq!(
            a.drain(),
            ["InitRes 0 0 error: key differs from the one bound to your account"]
        );
        let b = connect(&mut reg, B, 2, 16);
        let invitees = vec![(C, name(C))];
        reg.init_bound(
            b.me,
            name(B),
            key(B),
            &der(A),
            &everyone,
            invitees.clone(),
            &[SID2],
        );
        assert!(store(&mut reg).is_empty());
        assert!(b
            .drain()
            .contains(&"InitRes 0 0 error: key belongs to another user".to_string()));
        // A refused init binds nothing: bob's key is still free afterwards.
        reg.init_bound(
            b.me,
            name(B),
            key(B),
            &der(B),
            &everyone,
            vec![(B, name(B))],
            &[SID2],
        );
        assert!(store(&mut reg).is_empty());
        assert_eq!(reg.binding(B), None);
    }

    #[test]
    fn a_replacement_checked_against_a_binding_that_changed_since_is_refused() {
        let mut reg = registry();
        let a = connect(&mut reg, A, 1, 16);
        reg.init_bound(
            a.me,
            name(A),
            key(A),
            &der(A),
            &everyone,
            vec![(B, name(B))],
            &[SID],
        );
        store(&mut reg);
        a.drain();
        // The proof was checked against no binding, but alice has one now.
        reg.replace_key(a.me, None, &der(0xee), &everyone);
        assert!(store(&mut reg).is_empty());
        assert_eq!(
            a.drain(),
            ["InitRes 0 0 error: key replacement not signed by your current key"]
        );
        reg.replace_key(a.me, reg.binding(A), &der(0xee), &everyone);
        let records = store(&mut reg);
        assert!(matches!(&records[..], [Record::Rekey { uid: A, .. }]));
        assert!(a.drain().contains(&"InitRes 0 0 OK".to_string()));
        assert_eq!(reg.binding(A).as_deref(), Some(&der(0xee)[..]));
        assert!(reg.reset_binding(A));
        assert!(matches!(store(&mut reg)[..], [Record::Unbind { uid: A }]));
        assert!(!reg.reset_binding(A));
        assert_eq!(reg.stats().bound_keys, 0);
    }
}
