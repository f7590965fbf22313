//! Sessions, participants and the message store, and the accounts' key bindings
//! ([`crate::bindings`]): pure data and rules.
//!
//! Every change to session state is an explicit [`Record`]; [`Sessions::apply`] is the
//! only way state changes, so the same records drive the live server and a journal's
//! replay after a crash. Requests are checked by the `plan_*` methods, which either
//! return the record to apply or the [`Reason`] of the `error: ...` reply to send.
//! Payloads are typed ([`crate::proto`]): this module builds a session's status and
//! the listing as values and never writes or parses payload text. It does no I/O,
//! reads no clock and knows nothing of connections: who is online is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::bindings::Bindings;
use crate::encoding;
use crate::proto::{
    Answer, InviteRes, ListLine, ListState, ParticipantLine, Presence, Reason, SessionState,
    SessionStatus, MAX_ENVELOPE_LEN,
};

/// Default participant limit of a session, the creator included.
pub const DEFAULT_MAX_PARTICIPANTS: usize = 100;
/// Default bound on messages stored for a session and not yet acknowledged by all
/// their recipients.
pub const DEFAULT_BACKLOG_MESSAGES: usize = 10_000;
/// Default bound on the envelope bytes of those messages.
pub const DEFAULT_BACKLOG_BYTES: usize = 64 * 1024 * 1024;
/// Default bound on the sessions one user has open (created and not closed). An open
/// session costs the server about 1.5 KiB of memory and 0.8 KB of journal, so 256 of
/// them are under half a megabyte a user; a flood of 60,000 took 86 MiB.
pub const DEFAULT_MAX_OPEN_SESSIONS: usize = 256;
/// Default bound on the unanswered invitations one user holds: far more than anyone
/// answers by hand, few enough that a login is not buried under them.
pub const DEFAULT_MAX_PENDING_INVITATIONS: usize = 100;
/// Default bound on the envelope bytes of one author's messages stored and not yet
/// acknowledged by all their recipients, across all sessions: 256 of the largest
/// envelopes, or some 16,000 text messages, held for a recipient who is away. The
/// server keeps them in memory, so this is what one user can make it hold.
pub const DEFAULT_USER_BACKLOG_BYTES: usize = 16 * 1024 * 1024;

/// Limits on sessions, each with a command-line flag in `mpchatd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Participants per session including the creator.
    pub max_participants: usize,
    /// Stored, not fully acknowledged messages per session.
    pub backlog_messages: usize,
    /// Envelope bytes of those messages.
    pub backlog_bytes: usize,
    /// Sessions one user has open (created and not closed).
    pub max_open_sessions: usize,
    /// Unanswered invitations one user holds.
    pub max_pending_invitations: usize,
    /// Envelope bytes of one author's stored, not fully acknowledged messages, across
    /// sessions.
    pub user_backlog_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            backlog_messages: DEFAULT_BACKLOG_MESSAGES,
            backlog_bytes: DEFAULT_BACKLOG_BYTES,
            max_open_sessions: DEFAULT_MAX_OPEN_SESSIONS,
            max_pending_invitations: DEFAULT_MAX_PENDING_INVITATIONS,
            user_backlog_bytes: DEFAULT_USER_BACKLOG_BYTES,
        }
    }
}

/// One member of a session (the creator included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// User id.
    pub uid: u64,
    /// Username at the time the session was created.
    pub name: String,
    /// Invitation state.
    pub answer: Answer,
    /// The end-to-end public key (wire form), present once accepted.
    pub key: Option<String>,
    /// Highest message number this participant has acknowledged.
    pub acked: u64,
}

/// A stored message: its number, author and opaque envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Per-session message number, from 1.
    pub n: u64,
    /// Author's uid.
    pub author: u64,
    /// The end-to-end envelope, never parsed by the server.
    pub envelope: Arc<[u8]>,
}

/// A session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Session id.
    pub sid: u64,
    /// Creator's uid.
    pub creator: u64,
    /// Members, creator first, then invitees in the order given.
    pub participants: Vec<Participant>,
    /// Whether init_res has been sent (or the invite wait ended).
    pub live: bool,
    /// The last message number assigned.
    pub last_n: u64,
    /// Messages not yet acknowledged by all their recipients, in `n` order.
    pub messages: VecDeque<Stored>,
    /// Envelope bytes in `messages`.
    pub backlog_bytes: usize,
    /// Messages up to this number are durable and may be delivered. Not itself
    /// stored: after a restart everything recovered is durable.
    pub durable_n: u64,
}

impl Session {
    /// The participant entry of `uid`.
    pub fn participant(&self, uid: u64) -> Option<&Participant> {
        self.participants.iter().find(|p| p.uid == uid)
    }

    fn participant_mut(&mut self, uid: u64) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.uid == uid)
    }

    /// Whether `uid` may see this session: the creator, accepted participants and
    /// invitees still to answer. A decliner is out.
    pub fn visible_to(&self, uid: u64) -> bool {
        self.participant(uid)
            .is_some_and(|p| p.answer != Answer::Declined)
    }

    /// Accepted participants (creator included).
    pub fn accepted(&self) -> impl Iterator<Item = &Participant> {
        self.participants
            .iter()
            .filter(|p| p.answer == Answer::Accepted)
    }

    /// Stored messages for `uid` after `after`, authored by others, in `n` order.
    pub fn messages_after(&self, uid: u64, after: u64) -> impl Iterator<Item = &Stored> {
        // Stored messages have consecutive numbers (they are added in order and
        // forgotten from the front), so the start is found by arithmetic, not a scan.
        let skip = self
            .messages
            .front()
            .map_or(0, |m| after.saturating_sub(m.n - 1) as usize);
        let durable = self.durable_n;
        self.messages
            .range(skip.min(self.messages.len())..)
            .take_while(move |m| m.n <= durable)
            .filter(move |m| m.n > after && m.author != uid)
    }

    /// Drops messages every recipient has acknowledged, telling `forgot` each one's
    /// author and size. A message's recipients are the accepted participants other
    /// than its author; one who accepted later starts with `acked` at the then latest
    /// `n`, so it never holds back older messages.
    fn forget_acknowledged(&mut self, mut forgot: impl FnMut(u64, usize)) {
        while let Some(front) = self.messages.front() {
            let done = self
                .participants
                .iter()
                .filter(|p| p.answer == Answer::Accepted && p.uid != front.author)
                .all(|p| p.acked >= front.n);
            if !done {
                break;
            }
            self.backlog_bytes -= front.envelope.len();
            forgot(front.author, front.envelope.len());
            self.messages.pop_front();
        }
    }

    /// The session's status: its state, its creator and a line per participant.
    /// `is_online` says who is connected; a participant who declined shows
    /// [`Presence::Hidden`] whatever their state, so a session someone declined does
    /// not let its members watch when they are online.
    pub fn status(&self, is_online: impl Fn(u64) -> bool) -> SessionStatus {
        let creator = self
            .participant(self.creator)
            .map(|p| p.name.as_str())
            .unwrap_or("?");
        SessionStatus {
            state: if self.live {
                SessionState::Live
            } else {
                SessionState::Pending
            },
            creator: creator.to_string(),
            participants: self
                .participants
                .iter()
                .map(|p| ParticipantLine {
                    name: p.name.clone(),
                    uid: p.uid,
                    answer: p.answer,
                    presence: match p.answer {
                        Answer::Declined => Presence::Hidden,
                        _ if is_online(p.uid) => Presence::Online,
                        _ => Presence::Offline,
                    },
                    acked: p.acked,
                    key: p.key.clone(),
                })
                .collect(),
        }
    }
}

/// A change to session state. Records are applied in order by the live server and,
/// after a restart, replayed from the journal; applying them is deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A session was created by `creator` (already accepted, with `creator_key`), with
    /// `invitees` invited.
    Create {
        /// The new session id.
        sid: u64,
        /// Creator's uid and name.
        creator: (u64, String),
        /// Creator's public key (wire form).
        creator_key: String,
        /// Invitees' uids and names, in request order.
        invitees: Vec<(u64, String)>,
    },
    /// An invitee answered: `Some(key)` accepts, `None` declines.
    Answer {
        /// Session id.
        sid: u64,
        /// The invitee.
        uid: u64,
        /// The public key (wire form) on acceptance.
        key: Option<String>,
    },
    /// The session went live (init_res sent or the invite wait ended).
    Live {
        /// Session id.
        sid: u64,
    },
    /// Message `n` by `author` was accepted for relay.
    Message {
        /// Session id.
        sid: u64,
        /// Its number.
        n: u64,
        /// Author's uid.
        author: u64,
        /// The opaque envelope.
        envelope: Arc<[u8]>,
    },
    /// `uid` acknowledged every message up to `n`.
    Ack {
        /// Session id.
        sid: u64,
        /// The acknowledging participant.
        uid: u64,
        /// The new acknowledgement point.
        n: u64,
    },
    /// The creator closed the session; its messages and keys are gone.
    Close {
        /// Session id.
        sid: u64,
    },
    /// Account `uid`, which had no key, presented `key` (SPKI DER) for the first
    /// time: it is bound (see [`crate::bindings`]).
    Bind {
        /// The account.
        uid: u64,
        /// The key, SubjectPublicKeyInfo DER.
        key: Arc<[u8]>,
    },
    /// An administrator cleared `uid`'s binding (`mpchatd reset-key`).
    Unbind {
        /// The account.
        uid: u64,
    },
    /// Account `uid` replaced its key by `key` (a signed replacement, or any key
    /// after a reset): the binding changes, and so does its key in every session
    /// where it accepted.
    Rekey {
        /// The account.
        uid: u64,
        /// The new key, SubjectPublicKeyInfo DER.
        key: Arc<[u8]>,
    },
}

impl Record {
    /// The session a record is about; 0 for the records about an account's key
    /// (`Bind`, `Unbind`, `Rekey`).
    pub fn sid(&self) -> u64 {
        match self {
            Record::Create { sid, .. }
            | Record::Answer { sid, .. }
            | Record::Live { sid }
            | Record::Message { sid, .. }
            | Record::Ack { sid, .. }
            | Record::Close { sid } => *sid,
            Record::Bind { .. } | Record::Unbind { .. } | Record::Rekey { .. } => 0,
        }
    }
}

/// Every session, the closed sids, an index from user to sessions, the accounts' key
/// bindings, and what each user holds against the per-user quotas.
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    limits: Limits,
    sessions: HashMap<u64, Session>,
    /// Closed sids, never issued again; nothing else of a closed session is kept.
    closed: ClosedSids,
    by_user: HashMap<u64, BTreeSet<u64>>,
    bindings: Bindings,
    /// Per user: sessions created and not closed.
    open_sessions: HashMap<u64, usize>,
    /// Per user: invitations not yet answered.
    pending_invitations: HashMap<u64, usize>,
    /// Per author: envelope bytes stored and not acknowledged by every recipient.
    user_backlog: HashMap<u64, usize>,
}

/// Closed sessions' ids, remembered for ever so that none is issued again, in about
/// 8 bytes each: a sorted vector, and the latest few in a small set that is merged
/// into it once it holds [`ClosedSids::BATCH`]. (A hash set of every id would cost
/// 9 to 21 bytes each; a server that has seen millions of sessions keeps them all.)
#[derive(Debug, Default, Clone)]
struct ClosedSids {
    sorted: Vec<u64>,
    recent: HashSet<u64>,
}

impl ClosedSids {
    /// Ids gathered before a merge into the sorted vector: a merge moves the whole
    /// vector, so this many closes share its cost.
    const BATCH: usize = 4096;

    fn contains(&self, sid: u64) -> bool {
        self.recent.contains(&sid) || self.sorted.binary_search(&sid).is_ok()
    }

    /// Adds `sid`; `false` if it was there already.
    fn insert(&mut self, sid: u64) -> bool {
        if self.contains(sid) {
            return false;
        }
        self.recent.insert(sid);
        if self.recent.len() >= Self::BATCH {
            self.merge();
        }
        true
    }

    /// Moves the recent ids into the sorted vector, growing it to the exact size.
    fn merge(&mut self) {
        let mut recent: Vec<u64> = self.recent.drain().collect();
        recent.sort_unstable();
        let old = self.sorted.len();
        self.sorted.reserve_exact(recent.len());
        self.sorted.extend_from_slice(&recent);
        // Merge the two sorted runs in place, from the back.
        let (mut i, mut j, mut k) = (old, recent.len(), self.sorted.len());
        while j > 0 {
            k -= 1;
            if i > 0 && self.sorted[i - 1] > recent[j - 1] {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[k] = recent[j - 1];
                j -= 1;
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &u64> {
        self.sorted.iter().chain(self.recent.iter())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }
}

impl Extend<u64> for ClosedSids {
    /// Adds many at once (a snapshot's): one sort, not a merge per batch.
    fn extend<I: IntoIterator<Item = u64>>(&mut self, ids: I) {
        self.sorted.extend(ids);
        self.sorted.extend(self.recent.drain());
        self.sorted.sort_unstable();
        self.sorted.dedup();
        self.sorted.shrink_to_fit();
    }
}

/// Adds `n` to `uid`'s count in `map`.
fn count_up(map: &mut HashMap<u64, usize>, uid: u64, n: usize) {
    *map.entry(uid).or_default() += n;
}

/// Takes `n` from `uid`'s count in `map`, dropping it at zero.
fn count_down(map: &mut HashMap<u64, usize>, uid: u64, n: usize) {
    if let Some(c) = map.get_mut(&uid) {
        *c = c.saturating_sub(n);
        if *c == 0 {
            map.remove(&uid);
        }
    }
}

impl Sessions {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Self {
        Sessions {
            limits,
            ..Default::default()
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Rebuilds a store from sessions, closed sids and key bindings (a snapshot).
    /// Every message is taken as durable.
    pub fn from_parts(
        limits: Limits,
        sessions: Vec<Session>,
        closed: impl IntoIterator<Item = u64>,
        bindings: impl IntoIterator<Item = (u64, Arc<[u8]>)>,
    ) -> Self {
        let mut this = Sessions::new(limits);
        this.closed.extend(closed);
        for (uid, key) in bindings {
            this.bindings.rebind(uid, &key);
        }
        for mut s in sessions {
            s.durable_n = s.last_n;
            for p in &s.participants {
                if p.answer != Answer::Declined {
                    this.by_user.entry(p.uid).or_default().insert(s.sid);
                }
                if p.answer == Answer::Invited {
                    count_up(&mut this.pending_invitations, p.uid, 1);
                }
            }
            count_up(&mut this.open_sessions, s.creator, 1);
            for m in &s.messages {
                count_up(&mut this.user_backlog, m.author, m.envelope.len());
            }
            this.sessions.insert(s.sid, s);
        }
        this
    }

    /// Sessions `uid` has open (created and not closed).
    pub fn open_sessions_of(&self, uid: u64) -> usize {
        self.open_sessions.get(&uid).copied().unwrap_or(0)
    }

    /// Invitations `uid` has not answered.
    pub fn pending_invitations_of(&self, uid: u64) -> usize {
        self.pending_invitations.get(&uid).copied().unwrap_or(0)
    }

    /// Envelope bytes of `uid`'s messages stored and not acknowledged by every
    /// recipient, across sessions.
    pub fn backlog_bytes_of(&self, uid: u64) -> usize {
        self.user_backlog.get(&uid).copied().unwrap_or(0)
    }

    /// Marks messages of `sid` up to `n` durable (deliverable).
    pub fn mark_durable(&mut self, sid: u64, n: u64) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.durable_n = s.durable_n.max(n.min(s.last_n));
        }
    }

    /// Marks every message of every session durable (when there is no journal, or
    /// after recovery).
    pub fn mark_all_durable(&mut self) {
        for s in self.sessions.values_mut() {
            s.durable_n = s.last_n;
        }
    }

    /// A session by id.
    pub fn get(&self, sid: u64) -> Option<&Session> {
        self.sessions.get(&sid)
    }

    /// Whether `sid` was closed.
    pub fn is_closed(&self, sid: u64) -> bool {
        self.closed.contains(sid)
    }

    /// Whether `sid` was ever issued (live, pending or closed): such a sid is never
    /// issued again.
    pub fn is_used(&self, sid: u64) -> bool {
        sid == 0 || self.sessions.contains_key(&sid) || self.closed.contains(sid)
    }

    /// All sessions (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Closed sids (for snapshots).
    pub fn closed_sids(&self) -> impl Iterator<Item = &u64> {
        self.closed.iter()
    }

    /// The accounts' key bindings.
    pub fn bindings(&self) -> &Bindings {
        &self.bindings
    }

    /// Sessions `uid` created, accepted or is invited to (not declined), by sid.
    pub fn sessions_of(&self, uid: u64) -> impl Iterator<Item = &Session> {
        self.by_user
            .get(&uid)
            .into_iter()
            .flatten()
            .filter_map(|sid| self.sessions.get(sid))
            .filter(move |s| s.visible_to(uid))
    }

    /// A session `uid` may see, or the refusal to give.
    pub fn visible(&self, sid: u64, uid: u64) -> Result<&Session, Reason> {
        if self.closed.contains(sid) {
            return Err(Reason::SessionClosed);
        }
        self.sessions
            .get(&sid)
            .filter(|s| s.visible_to(uid))
            .ok_or(Reason::NotAParticipant)
    }

    /// Checks an init request whose names were resolved to `(uid, name)` by the caller
    /// and returns the record creating session `sid` (a fresh id the caller drew).
    pub fn plan_init(
        &self,
        sid: u64,
        creator: (u64, String),
        creator_key: String,
        invitees: Vec<(u64, String)>,
    ) -> Result<Record, Reason> {
        if invitees.is_empty() {
            return Err(Reason::NoInvitees);
        }
        if invitees.len() + 1 > self.limits.max_participants {
            return Err(Reason::TooManyParticipants(self.limits.max_participants));
        }
        let mut seen = HashSet::new();
        for (uid, name) in &invitees {
            if *uid == creator.0 {
                return Err(Reason::CannotInviteSelf);
            }
            if !seen.insert(*uid) {
                return Err(Reason::DuplicateInvitee(name.clone()));
            }
        }
        if self.open_sessions_of(creator.0) >= self.limits.max_open_sessions {
            return Err(Reason::TooManySessions);
        }
        for (uid, name) in &invitees {
            if self.pending_invitations_of(*uid) >= self.limits.max_pending_invitations {
                return Err(Reason::TooManyInvitations(name.clone()));
            }
        }
        debug_assert!(!self.is_used(sid), "the caller draws a fresh sid");
        Ok(Record::Create {
            sid,
            creator,
            creator_key,
            invitees,
        })
    }

    /// Checks an invitation answer; `None` means "no reply and no change" (not invited,
    /// already answered, unknown or closed session).
    pub fn plan_answer(&self, sid: u64, uid: u64, answer: InviteRes) -> Option<Record> {
        let s = self.sessions.get(&sid)?;
        let p = s.participant(uid)?;
        if p.answer != Answer::Invited {
            return None;
        }
        let key = match answer {
            InviteRes::Accept(k) => Some(k),
            InviteRes::Deny => None,
        };
        Some(Record::Answer { sid, uid, key })
    }

    /// Checks a message and returns the record numbering it.
    pub fn plan_message(&self, sid: u64, author: u64, envelope: &[u8]) -> Result<Record, Reason> {
        let s = self.visible(sid, author)?;
        if s.participant(author).map(|p| p.answer) != Some(Answer::Accepted) {
            return Err(Reason::NotAccepted);
        }
        if !s.live {
            return Err(Reason::NotLive);
        }
        if envelope.is_empty() {
            return Err(Reason::EmptyMessage);
        }
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(Reason::TooLarge);
        }
        if s.messages.len() >= self.limits.backlog_messages
            || s.backlog_bytes + envelope.len() > self.limits.backlog_bytes
        {
            return Err(Reason::BacklogFull);
        }
        if self.backlog_bytes_of(author) + envelope.len() > self.limits.user_backlog_bytes {
            return Err(Reason::UserBacklogFull);
        }
        Ok(Record::Message {
            sid,
            n: s.last_n + 1,
            author,
            envelope: Arc::from(envelope),
        })
    }

    /// Checks an acknowledgement; `None` if it changes nothing (stale, beyond the last
    /// message, or from someone who is not an accepted participant).
    pub fn plan_ack(&self, sid: u64, uid: u64, n: u64) -> Option<Record> {
        let s = self.sessions.get(&sid)?;
        let p = s.participant(uid)?;
        (p.answer == Answer::Accepted && n > p.acked && n <= s.last_n).then_some(Record::Ack {
            sid,
            uid,
            n,
        })
    }

    /// Checks a close request.
    pub fn plan_close(&self, sid: u64, uid: u64) -> Result<Record, Reason> {
        let s = self.visible(sid, uid)?;
        if s.creator != uid {
            return Err(Reason::OnlyCreator);
        }
        Ok(Record::Close { sid })
    }

    /// Applies one record. Records that do not fit the state (possible only through a
    /// bug or a damaged journal) are ignored and reported as `false`.
    pub fn apply(&mut self, rec: &Record) -> bool {
        match rec {
            Record::Create {
                sid,
                creator,
                creator_key,
                invitees,
            } => {
                if self.is_used(*sid) {
                    return false;
                }
                let mut participants = vec![Participant {
                    uid: creator.0,
                    name: creator.1.clone(),
                    answer: Answer::Accepted,
                    key: Some(creator_key.clone()),
                    acked: 0,
                }];
                participants.extend(invitees.iter().map(|(uid, name)| Participant {
                    uid: *uid,
                    name: name.clone(),
                    answer: Answer::Invited,
                    key: None,
                    acked: 0,
                }));
                for p in &participants {
                    self.by_user.entry(p.uid).or_default().insert(*sid);
                }
                count_up(&mut self.open_sessions, creator.0, 1);
                for (uid, _) in invitees {
                    count_up(&mut self.pending_invitations, *uid, 1);
                }
                self.sessions.insert(
                    *sid,
                    Session {
                        sid: *sid,
                        creator: creator.0,
                        participants,
                        live: false,
                        last_n: 0,
                        messages: VecDeque::new(),
                        backlog_bytes: 0,
                        durable_n: 0,
                    },
                );
                true
            }
            Record::Answer { sid, uid, key } => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return false;
                };
                let last_n = s.last_n;
                let Some(p) = s.participant_mut(*uid) else {
                    return false;
                };
                if p.answer != Answer::Invited {
                    return false;
                }
                count_down(&mut self.pending_invitations, *uid, 1);
                match key {
                    Some(k) => {
                        p.answer = Answer::Accepted;
                        p.key = Some(k.clone());
                        p.acked = last_n;
                    }
                    None => {
                        p.answer = Answer::Declined;
                        if let Some(set) = self.by_user.get_mut(uid) {
                            set.remove(sid);
                        }
                    }
                }
                true
            }
            Record::Live { sid } => match self.sessions.get_mut(sid) {
                Some(s) if !s.live => {
                    s.live = true;
                    true
                }
                _ => false,
            },
            Record::Message {
                sid,
                n,
                author,
                envelope,
            } => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return false;
                };
                if *n != s.last_n + 1 {
                    return false;
                }
                s.last_n = *n;
                s.backlog_bytes += envelope.len();
                s.messages.push_back(Stored {
                    n: *n,
                    author: *author,
                    envelope: envelope.clone(),
                });
                let backlog = &mut self.user_backlog;
                count_up(backlog, *author, envelope.len());
                s.forget_acknowledged(|a, len| count_down(backlog, a, len));
                true
            }
            Record::Ack { sid, uid, n } => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return false;
                };
                let last_n = s.last_n;
                let Some(p) = s.participant_mut(*uid) else {
                    return false;
                };
                if *n <= p.acked || *n > last_n {
                    return false;
                }
                p.acked = *n;
                let backlog = &mut self.user_backlog;
                s.forget_acknowledged(|a, len| count_down(backlog, a, len));
                true
            }
            Record::Close { sid } => {
                let Some(s) = self.sessions.remove(sid) else {
                    // A snapshot carries closed sids as Close records of their own.
                    return self.closed.insert(*sid);
                };
                for p in &s.participants {
                    if let Some(set) = self.by_user.get_mut(&p.uid) {
                        set.remove(sid);
                        if set.is_empty() {
                            self.by_user.remove(&p.uid);
                        }
                    }
                    if p.answer == Answer::Invited {
                        count_down(&mut self.pending_invitations, p.uid, 1);
                    }
                }
                count_down(&mut self.open_sessions, s.creator, 1);
                for m in &s.messages {
                    count_down(&mut self.user_backlog, m.author, m.envelope.len());
                }
                self.closed.insert(*sid);
                true
            }
            Record::Bind { uid, key } => self.bindings.bind(*uid, key),
            Record::Unbind { uid } => self.bindings.unbind(*uid),
            Record::Rekey { uid, key } => {
                self.bindings.rebind(*uid, key);
                let text = encoding::b64(key);
                let sids: Vec<u64> = self
                    .by_user
                    .get(uid)
                    .map(|set| set.iter().copied().collect())
                    .unwrap_or_default();
                for sid in sids {
                    let Some(p) = self
                        .sessions
                        .get_mut(&sid)
                        .and_then(|s| s.participant_mut(*uid))
                    else {
                        continue;
                    };
                    if p.answer == Answer::Accepted {
                        p.key = Some(text.clone());
                    }
                }
                true
            }
        }
    }

    /// The live sessions in which `uid` accepted (whose status changes with its key).
    pub fn accepted_sessions(&self, uid: u64) -> Vec<u64> {
        self.sessions_of(uid)
            .filter(|s| {
                s.live
                    && s.participant(uid)
                        .is_some_and(|p| p.answer == Answer::Accepted)
            })
            .map(|s| s.sid)
            .collect()
    }

    /// The sid-0 listing for `uid`: a line per session it created or accepted
    /// (`pending`, `live`) and per invitation still unanswered (`invited`, even once
    /// the session is live), in sid order. Declined and closed sessions are left out.
    pub fn listing(&self, uid: u64) -> Vec<ListLine> {
        let mut lines = BTreeMap::new();
        for s in self.sessions_of(uid) {
            let state = match s.participant(uid).map(|p| p.answer) {
                Some(Answer::Invited) => ListState::Invited,
                _ if s.live => ListState::Live,
                _ => ListState::Pending,
            };
            let creator = s
                .participant(s.creator)
                .map(|p| p.name.as_str())
                .unwrap_or("?");
            lines.insert(
                s.sid,
                ListLine {
                    sid: s.sid,
                    state,
                    creator: creator.to_string(),
                },
            );
        }
        lines.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding;
    use crate::proto::StatusRes;

    const A: u64 = 0xa;
    const B: u64 = 0xb;
    const C: u64 = 0xc;
    const SID: u64 = 0x5151;

    fn named(uid: u64) -> (u64, String) {
        (uid, format!("user{uid:x}"))
    }

    fn with_session() -> Sessions {
        let mut s = Sessions::new(Limits::default());
        let rec = s
            .plan_init(SID, named(A), "KA".into(), vec![named(B), named(C)])
            .unwrap();
        assert!(s.apply(&rec));
        s
    }

    fn send(s: &mut Sessions, author: u64, body: &[u8]) -> u64 {
        let rec = s.plan_message(SID, author, body).unwrap();
        let Record::Message { n, .. } = rec else {
            panic!("not a message record")
        };
        assert!(s.apply(&rec));
        s.mark_durable(SID, n);
        n
    }

    /// The sid-0 listing payload of `uid`, as the server sends it.
    fn listing(s: &Sessions, uid: u64) -> String {
        String::from_utf8(StatusRes::Listing(s.listing(uid)).encode()).unwrap()
    }

    /// The status payload of the session, as the server sends it.
    fn status(s: &Sessions, online: impl Fn(u64) -> bool) -> String {
        let st = s.get(SID).unwrap().status(online);
        String::from_utf8(StatusRes::Session(st).encode()).unwrap()
    }

    fn accept(s: &mut Sessions, uid: u64) {
        let rec = s
            .plan_answer(SID, uid, InviteRes::Accept(format!("K{uid:x}")))
            .unwrap();
        assert!(s.apply(&rec));
    }

    #[test]
    fn init_refuses_self_duplicates_and_too_many() {
        let s = Sessions::new(Limits {
            max_participants: 3,
            ..Limits::default()
        });
        assert_eq!(
            s.plan_init(1, named(A), "K".into(), vec![named(A)])
                .unwrap_err()
                .to_string(),
            "you cannot invite yourself"
        );
        assert_eq!(
            s.plan_init(1, named(A), "K".into(), vec![named(B), named(B)])
                .unwrap_err()
                .to_string(),
            "duplicate invitee userb"
        );
        assert!(s
            .plan_init(1, named(A), "K".into(), vec![named(B), named(C)])
            .is_ok());
        assert!(s
            .plan_init(
                1,
                named(A),
                "K".into(),
                vec![named(B), named(C), named(0xd)]
            )
            .unwrap_err()
            .to_string()
            .starts_with("too many participants"));
        let many = format!("K\n{}", "x\n".repeat(3));
        assert!(
            crate::proto::InitReq::decode(many.as_bytes(), s.limits().max_participants)
                .unwrap_err()
                .to_string()
                .starts_with("too many")
        );
    }

    #[test]
    fn messages_need_a_live_session_and_an_accepted_sender() {
        let mut s = with_session();
        assert_eq!(s.plan_message(SID, A, b"x").unwrap_err(), Reason::NotLive);
        assert!(s.apply(&Record::Live { sid: SID }));
        assert_eq!(
            s.plan_message(SID, B, b"x").unwrap_err(),
            Reason::NotAccepted
        );
        assert_eq!(
            s.plan_message(SID, 0xd, b"x").unwrap_err(),
            Reason::NotAParticipant
        );
        assert_eq!(
            s.plan_message(0x999, A, b"x").unwrap_err(),
            Reason::NotAParticipant
        );
        assert_eq!(
            s.plan_message(SID, A, b"").unwrap_err(),
            Reason::EmptyMessage
        );
        assert_eq!(
            s.plan_message(SID, A, &vec![1; MAX_ENVELOPE_LEN + 1])
                .unwrap_err(),
            Reason::TooLarge
        );
        assert_eq!(send(&mut s, A, b"one"), 1);
        assert_eq!(send(&mut s, A, b"two"), 2);
    }

    #[test]
    fn a_late_acceptance_starts_at_the_latest_message() {
        let mut s = with_session();
        s.apply(&Record::Live { sid: SID });
        accept(&mut s, B);
        send(&mut s, A, b"one");
        send(&mut s, A, b"two");
        accept(&mut s, C);
        let sess = s.get(SID).unwrap();
        assert_eq!(sess.participant(C).unwrap().acked, 2);
        assert_eq!(sess.messages_after(C, 2).count(), 0);
        assert_eq!(
            sess.messages_after(B, 0).map(|m| m.n).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn only_durable_messages_are_offered_for_delivery() {
        let mut s = with_session();
        s.apply(&Record::Live { sid: SID });
        accept(&mut s, B);
        send(&mut s, A, b"one");
        let rec = s.plan_message(SID, A, b"two").unwrap();
        s.apply(&rec);
        let sess = s.get(SID).unwrap();
        assert_eq!(
            sess.messages_after(B, 0).map(|m| m.n).collect::<Vec<_>>(),
            vec![1]
        );
        s.mark_durable(SID, 2);
        let sess = s.get(SID).unwrap();
        assert_eq!(
            sess.messages_after(B, 0).map(|m| m.n).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn messages_are_forgotten_once_every_recipient_acknowledged() {
        let mut s = with_session();
        s.apply(&Record::Live { sid: SID });
        accept(&mut s, B);
        accept(&mut s, C);
        send(&mut s, A, b"one");
        send(&mut s, B, b"two");
        assert_eq!(s.get(SID).unwrap().messages.len(), 2);
        // C acks both, B acks 1 (B is not a recipient of its own message 2).
        s.apply(&s.plan_ack(SID, C, 2).unwrap());
        s.apply(&s.plan_ack(SID, B, 1).unwrap());
        // Message 2 still waits for A.
        let sess = s.get(SID).unwrap();
        assert_eq!(
            sess.messages.iter().map(|m| m.n).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(sess.backlog_bytes, 3);
        s.apply(&s.plan_ack(SID, A, 2).unwrap());
        assert!(s.get(SID).unwrap().messages.is_empty());
        assert_eq!(s.get(SID).unwrap().backlog_bytes, 0);
    }

    #[test]
    fn stale_or_future_acks_change_nothing() {
        let mut s = with_session();
        s.apply(&Record::Live { sid: SID });
        accept(&mut s, B);
        send(&mut s, A, b"one");
        assert_eq!(s.plan_ack(SID, B, 2), None, "beyond the last message");
        assert_eq!(s.plan_ack(SID, C, 1), None, "not accepted");
        s.apply(&s.plan_ack(SID, B, 1).unwrap());
        assert_eq!(s.plan_ack(SID, B, 1), None, "already acknowledged");
        assert!(!s.apply(&Record::Ack {
            sid: SID,
            uid: B,
            n: 1
        }));
    }

    #[test]
    fn the_backlog_is_bounded_by_count_and_bytes() {
        let mut s = Sessions::new(Limits {
            backlog_messages: 2,
            backlog_bytes: 10,
            ..Limits::default()
        });
        s.apply(
            &s.plan_init(SID, named(A), "K".into(), vec![named(B)])
                .unwrap(),
        );
        s.apply(&Record::Live { sid: SID });
        accept(&mut s, B);
        send(&mut s, A, b"1234");
        assert_eq!(
            s.plan_message(SID, A, b"1234567").unwrap_err(),
            Reason::BacklogFull
        );
        send(&mut s, A, b"123456");
        assert_eq!(
            s.plan_message(SID, A, b"1").unwrap_err(),
            Reason::BacklogFull
        );
        s.apply(&s.plan_ack(SID, B, 2).unwrap());
        assert_eq!(send(&mut s, A, b"1"), 3);
    }

    /// Creates session `sid` by `creator` inviting `invitees`, live.
    fn create(s: &mut Sessions, sid: u64, creator: u64, invitees: &[u64]) -> Result<(), Reason> {
        let rec = s.plan_init(
            sid,
            named(creator),
            "K".into(),
            invitees.iter().map(|&u| named(u)).collect(),
        )?;
        assert!(s.apply(&rec));
        assert!(s.apply(&Record::Live { sid }));
        Ok(())
    }

    #[test]
    fn a_user_may_have_only_so_many_sessions_open() {
        let mut s = Sessions::new(Limits {
            max_open_sessions: 2,
            ..Limits::default()
        });
        create(&mut s, 1, A, &[B]).unwrap();
        create(&mut s, 2, A, &[C]).unwrap();
        assert_eq!(create(&mut s, 3, A, &[B]), Err(Reason::TooManySessions));
        // Another user's sessions do not count against A's.
        create(&mut s, 4, B, &[A]).unwrap();
        assert_eq!(s.open_sessions_of(A), 2);
        s.apply(&s.plan_close(1, A).unwrap());
        assert_eq!(s.open_sessions_of(A), 1);
        create(&mut s, 3, A, &[B]).unwrap();
    }

    #[test]
    fn a_user_may_hold_only_so_many_unanswered_invitations() {
        let mut s = Sessions::new(Limits {
            max_pending_invitations: 2,
            ..Limits::default()
        });
        create(&mut s, 1, A, &[C]).unwrap();
        create(&mut s, 2, B, &[C]).unwrap();
        assert_eq!(
            create(&mut s, 3, A, &[B, C]),
            Err(Reason::TooManyInvitations("userc".into()))
        );
        assert_eq!(s.pending_invitations_of(C), 2);
        // Declining, accepting or the session closing each free one.
        s.apply(&s.plan_answer(1, C, InviteRes::Deny).unwrap());
        assert_eq!(s.pending_invitations_of(C), 1);
        create(&mut s, 3, A, &[C]).unwrap();
        s.apply(&s.plan_answer(3, C, InviteRes::Accept("KC".into())).unwrap());
        s.apply(&s.plan_close(2, B).unwrap());
        assert_eq!(s.pending_invitations_of(C), 0);
    }

    #[test]
    fn one_authors_backlog_is_bounded_across_sessions() {
        let mut s = Sessions::new(Limits {
            user_backlog_bytes: 10,
            ..Limits::default()
        });
        create(&mut s, 1, A, &[B]).unwrap();
        create(&mut s, 2, A, &[B]).unwrap();
        for sid in [1, 2] {
            s.apply(
                &s.plan_answer(sid, B, InviteRes::Accept("KB".into()))
                    .unwrap(),
            );
        }
        let send = |s: &mut Sessions, sid, body: &[u8]| {
            let rec = s.plan_message(sid, A, body)?;
            assert!(s.apply(&rec));
            Ok::<(), Reason>(())
        };
        send(&mut s, 1, b"1234").unwrap();
        send(&mut s, 2, b"123456").unwrap();
        assert_eq!(send(&mut s, 1, b"1"), Err(Reason::UserBacklogFull));
        // B's messages are B's: they do not count against A.
        let rec = s.plan_message(1, B, b"from b").unwrap();
        s.apply(&rec);
        assert_eq!((s.backlog_bytes_of(A), s.backlog_bytes_of(B)), (10, 6));
        // Acknowledged, or closed with its session, a message no longer counts.
        s.apply(&s.plan_ack(2, B, 1).unwrap());
        assert_eq!(s.backlog_bytes_of(A), 4);
        send(&mut s, 1, b"123").unwrap();
        s.apply(&s.plan_close(1, A).unwrap());
        assert_eq!((s.backlog_bytes_of(A), s.backlog_bytes_of(B)), (0, 0));
    }

    #[test]
    fn per_user_counts_rebuilt_from_a_snapshot_match_the_live_ones() {
        let mut s = Sessions::new(Limits::default());
        create(&mut s, 1, A, &[B, C]).unwrap();
        create(&mut s, 2, B, &[C]).unwrap();
        s.apply(&s.plan_answer(1, B, InviteRes::Accept("KB".into())).unwrap());
        let rec = s.plan_message(1, A, b"hello").unwrap();
        s.apply(&rec);
        create(&mut s, 3, A, &[C]).unwrap();
        s.apply(&s.plan_close(3, A).unwrap());
        let rebuilt = Sessions::from_parts(
            *s.limits(),
            s.iter().cloned().collect(),
            s.closed_sids().copied(),
            std::iter::empty(),
        );
        for uid in [A, B, C] {
            assert_eq!(
                (
                    rebuilt.open_sessions_of(uid),
                    rebuilt.pending_invitations_of(uid),
                    rebuilt.backlog_bytes_of(uid)
                ),
                (
                    s.open_sessions_of(uid),
                    s.pending_invitations_of(uid),
                    s.backlog_bytes_of(uid)
                ),
                "user {uid:x}"
            );
        }
        assert_eq!(
            (
                s.open_sessions_of(A),
                s.pending_invitations_of(C),
                s.backlog_bytes_of(A)
            ),
            (1, 2, 5)
        );
    }

    #[test]
    fn answers_count_once() {
        let mut s = with_session();
        accept(&mut s, B);
        assert_eq!(s.plan_answer(SID, B, InviteRes::Deny), None);
        assert_eq!(
            s.plan_answer(SID, A, InviteRes::Deny),
            None,
            "the creator is not invited"
        );
        assert_eq!(s.plan_answer(SID, 0xd, InviteRes::Deny), None);
        s.apply(&s.plan_answer(SID, C, InviteRes::Deny).unwrap());
        assert_eq!(s.visible(SID, C).unwrap_err(), Reason::NotAParticipant);
        assert_eq!(listing(&s, C), "OK\n");
    }

    #[test]
    fn only_the_creator_closes_and_closed_sids_stay_used() {
        let mut s = with_session();
        accept(&mut s, B);
        assert_eq!(s.plan_close(SID, B).unwrap_err(), Reason::OnlyCreator);
        assert_eq!(s.plan_close(SID, 0xd).unwrap_err(), Reason::NotAParticipant);
        s.apply(&s.plan_close(SID, A).unwrap());
        assert!(s.get(SID).is_none());
        assert!(s.is_used(SID));
        assert_eq!(s.plan_close(SID, A).unwrap_err(), Reason::SessionClosed);
        assert_eq!(
            s.plan_message(SID, A, b"x").unwrap_err(),
            Reason::SessionClosed
        );
        assert_eq!(s.visible(SID, 0xd).unwrap_err(), Reason::SessionClosed);
        assert_eq!(listing(&s, A), "OK\n");
        let again = Record::Create {
            sid: SID,
            creator: named(A),
            creator_key: "K".into(),
            invitees: vec![named(B)],
        };
        assert!(!s.apply(&again), "a closed sid is never reused");
        assert!(
            !s.apply(&Record::Close { sid: SID }),
            "closing twice changes nothing"
        );
    }

    #[test]
    fn closed_sids_are_kept_sorted_in_batches_and_never_lost() {
        let mut c = ClosedSids::default();
        // A pseudo-random order, across several merges.
        let ids: Vec<u64> = (1..=3 * ClosedSids::BATCH as u64 + 7)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
            .collect();
        for &id in &ids {
            assert!(c.insert(id));
        }
        assert_eq!(c.len(), ids.len());
        assert!(
            c.sorted.windows(2).all(|w| w[0] < w[1]),
            "sorted after merges"
        );
        assert_eq!(c.sorted.len(), 3 * ClosedSids::BATCH);
        assert_eq!(c.sorted.capacity(), c.sorted.len(), "no slack kept");
        for &id in &ids {
            assert!(c.contains(id));
            assert!(!c.insert(id), "closing twice changes nothing");
        }
        assert!(!c.contains(2));
        let mut all: Vec<u64> = c.iter().copied().collect();
        all.sort_unstable();
        let mut want = ids.clone();
        want.sort_unstable();
        assert_eq!(all, want);
        // Loaded at once (from a snapshot), duplicates and all, it is the same set.
        let mut bulk = ClosedSids::default();
        bulk.insert(ids[0]);
        bulk.extend(ids.iter().rev().copied());
        assert_eq!(bulk.len(), ids.len());
        assert_eq!(bulk.sorted, want);
    }

    #[test]
    fn listings_show_invited_pending_and_live() {
        let mut s = with_session();
        let sid = encoding::id_hex(SID);
        assert_eq!(listing(&s, A), format!("OK\n{sid} pending usera\n"));
        assert_eq!(listing(&s, B), format!("OK\n{sid} invited usera\n"));
        s.apply(&Record::Live { sid: SID });
        assert_eq!(listing(&s, A), format!("OK\n{sid} live usera\n"));
        assert_eq!(listing(&s, B), format!("OK\n{sid} invited usera\n"));
        accept(&mut s, B);
        assert_eq!(listing(&s, B), format!("OK\n{sid} live usera\n"));
    }

    #[test]
    fn session_status_lists_every_participant() {
        let mut s = with_session();
        s.apply(&Record::Live { sid: SID });
        accept(&mut s, B);
        send(&mut s, A, b"x");
        s.apply(&s.plan_ack(SID, B, 1).unwrap());
        let got = status(&s, |uid| uid == B);
        assert_eq!(
            got,
            "OK\nlive usera\n\
             usera 000000000000000a accepted offline 0 KA\n\
             userb 000000000000000b accepted online 1 Kb\n\
             userc 000000000000000c invited offline 0\n"
        );
    }

    #[test]
    fn a_decliner_shows_no_presence_whether_online_or_not() {
        let mut s = with_session();
        s.apply(&s.plan_answer(SID, C, InviteRes::Deny).unwrap());
        for online in [true, false] {
            let st = s.get(SID).unwrap().status(|_| online);
            let c = st.participant(C).unwrap();
            assert_eq!((c.answer, c.presence), (Answer::Declined, Presence::Hidden));
            let b = st.participant(B).unwrap();
            let want = if online {
                Presence::Online
            } else {
                Presence::Offline
            };
            assert_eq!(b.presence, want);
        }
        assert_eq!(
            status(&s, |_| true),
            "OK\npending usera\n\
             usera 000000000000000a accepted online 0 KA\n\
             userb 000000000000000b invited online 0\n\
             userc 000000000000000c declined - 0\n"
        );
    }
}
