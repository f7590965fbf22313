//! Sessions, participants and the message store: pure data and rules.
//!
//! Every change to session state is an explicit [`Record`]; [`Sessions::apply`] is the
//! only way state changes, so the same records drive the live server and a journal's
//! replay after a crash. Requests are checked by the `plan_*` methods, which either
//! return the record to apply or the `error: ...` reply to send. This module does no
//! I/O, reads no clock and knows nothing of connections: who is online is passed in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use crate::encoding;

/// Default participant limit of a session, the creator included.
pub const DEFAULT_MAX_PARTICIPANTS: usize = 100;
/// Default bound on messages stored for a session and not yet acknowledged by all
/// their recipients.
pub const DEFAULT_BACKLOG_MESSAGES: usize = 10_000;
/// Default bound on the envelope bytes of those messages.
pub const DEFAULT_BACKLOG_BYTES: usize = 64 * 1024 * 1024;
/// The largest relayable envelope: 65,535 - 24 (header) - 12 (mac) - 8 (`n` prefix).
pub const MAX_ENVELOPE_LEN: usize =
    crate::mtp::MAX_FRAME_LEN - crate::mtp::HEADER_LEN - crate::mtp::MAC_LEN - 8;
/// Longest public key line accepted in init_req and invite_res: the base64 of a
/// 4096-bit SPKI is 736 characters; anything longer is refused before parsing.
pub const MAX_KEY_TEXT_LEN: usize = 1024;

/// Limits on sessions, each with a command-line flag in `mpchatd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Participants per session including the creator.
    pub max_participants: usize,
    /// Stored, not fully acknowledged messages per session.
    pub backlog_messages: usize,
    /// Envelope bytes of those messages.
    pub backlog_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            backlog_messages: DEFAULT_BACKLOG_MESSAGES,
            backlog_bytes: DEFAULT_BACKLOG_BYTES,
        }
    }
}

/// A participant's answer to the invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not answered yet.
    Invited,
    /// Accepted; messages are delivered to it.
    Accepted,
    /// Declined; it is out of the session.
    Declined,
}

impl Answer {
    fn word(self) -> &'static str {
        match self {
            Answer::Invited => "invited",
            Answer::Accepted => "accepted",
            Answer::Declined => "declined",
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

    /// Drops messages every recipient has acknowledged. A message's recipients are the
    /// accepted participants other than its author; one who accepted later starts with
    /// `acked` at the then latest `n`, so it never holds back older messages.
    fn forget_acknowledged(&mut self) {
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
            self.messages.pop_front();
        }
    }

    /// The session status payload: `OK\n<pending|live> <creator>\n` then a line per
    /// participant `<name> <uid> <answer> <online|offline> <acked>[ <key>]`.
    pub fn status_payload(&self, is_online: impl Fn(u64) -> bool) -> String {
        let creator = self
            .participant(self.creator)
            .map(|p| p.name.as_str())
            .unwrap_or("?");
        let mut s = format!(
            "OK\n{} {}\n",
            if self.live { "live" } else { "pending" },
            creator
        );
        for p in &self.participants {
            s.push_str(&format!(
                "{} {} {} {} {}",
                p.name,
                encoding::id_hex(p.uid),
                p.answer.word(),
                if is_online(p.uid) {
                    "online"
                } else {
                    "offline"
                },
                p.acked
            ));
            if let Some(k) = &p.key {
                s.push(' ');
                s.push_str(k);
            }
            s.push('\n');
        }
        s
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
}

impl Record {
    /// The session a record is about.
    pub fn sid(&self) -> u64 {
        match self {
            Record::Create { sid, .. }
            | Record::Answer { sid, .. }
            | Record::Live { sid }
            | Record::Message { sid, .. }
            | Record::Ack { sid, .. }
            | Record::Close { sid } => *sid,
        }
    }
}

/// A request refused with `error: <reason>`. The connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Refusal {
    fn new(reason: impl Into<String>) -> Self {
        Refusal(reason.into())
    }

    /// The reply payload: `error: <reason>`.
    pub fn payload(&self) -> String {
        format!("error: {}", self.0)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.0)
    }
}

/// Refusal reasons shared by several requests.
pub mod reasons {
    /// The sid is unknown, or the asker declined or was never in it.
    pub const NOT_A_PARTICIPANT: &str = "not a participant";
    /// The session was closed by its creator.
    pub const SESSION_CLOSED: &str = "session closed";
    /// The session has not gone live yet.
    pub const NOT_LIVE: &str = "session not live";
    /// The sender has not accepted the invitation.
    pub const NOT_ACCEPTED: &str = "invitation not accepted";
    /// Only the creator may close.
    pub const ONLY_CREATOR: &str = "only the creator can close";
    /// Empty msg_req payload.
    pub const EMPTY_MESSAGE: &str = "empty message";
    /// Envelope over [`super::MAX_ENVELOPE_LEN`].
    pub const TOO_LARGE: &str = "message too large";
    /// The backlog bound was reached.
    pub const BACKLOG_FULL: &str = "backlog full";
}

/// A parsed init_req payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRequest {
    /// The creator's public key line (checked later by the caller for validity).
    pub key: String,
    /// Invitee usernames, in order.
    pub invitees: Vec<String>,
}

/// Parses `<public_key>\n<user_1>\n...<user_n>\n`. The final newline may be left out;
/// empty lines are refused. Only the shape is checked here.
pub fn parse_init(payload: &[u8], limits: &Limits) -> Result<InitRequest, Refusal> {
    let text =
        std::str::from_utf8(payload).map_err(|_| Refusal::new("init request is not UTF-8"))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = text.split('\n');
    let key = lines
        .next()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Refusal::new("missing public key"))?;
    if key.len() > MAX_KEY_TEXT_LEN {
        return Err(Refusal::new("invalid public key"));
    }
    let mut invitees = Vec::new();
    for name in lines {
        if name.is_empty() {
            return Err(Refusal::new("empty line in invitee list"));
        }
        // Bound the work before looking names up: the creator counts too.
        if invitees.len() + 1 >= limits.max_participants {
            return Err(Refusal::new(format!(
                "too many participants (the limit is {})",
                limits.max_participants
            )));
        }
        invitees.push(name.to_string());
    }
    if invitees.is_empty() {
        return Err(Refusal::new("no invitees"));
    }
    Ok(InitRequest {
        key: key.to_string(),
        invitees,
    })
}

/// A parsed invite_res payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteAnswer {
    /// `Accept\n<public_key>`.
    Accept(String),
    /// `Deny`.
    Deny,
}

/// Parses an invite_res payload; `None` if malformed.
pub fn parse_invite_answer(payload: &[u8]) -> Option<InviteAnswer> {
    let text = std::str::from_utf8(payload).ok()?;
    if text == "Deny" {
        return Some(InviteAnswer::Deny);
    }
    let key = text.strip_prefix("Accept\n")?;
    (!key.is_empty() && key.len() <= MAX_KEY_TEXT_LEN && !key.contains('\n'))
        .then(|| InviteAnswer::Accept(key.to_string()))
}

/// Parses a response payload `OK <n>` (an acknowledgement).
pub fn parse_ack(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    encoding::parse_decimal(text.strip_prefix("OK ")?)
}

/// Every session, the closed sids, and an index from user to sessions.
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    limits: Limits,
    sessions: HashMap<u64, Session>,
    closed: HashSet<u64>,
    by_user: HashMap<u64, BTreeSet<u64>>,
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

    /// Rebuilds a store from sessions and closed sids (a snapshot). Every message is
    /// taken as durable.
    pub fn from_parts(
        limits: Limits,
        sessions: Vec<Session>,
        closed: impl IntoIterator<Item = u64>,
    ) -> Self {
        let mut this = Sessions::new(limits);
        this.closed.extend(closed);
        for mut s in sessions {
            s.durable_n = s.last_n;
            for p in &s.participants {
                if p.answer != Answer::Declined {
                    this.by_user.entry(p.uid).or_default().insert(s.sid);
                }
            }
            this.sessions.insert(s.sid, s);
        }
        this
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
        self.closed.contains(&sid)
    }

    /// Whether `sid` was ever issued (live, pending or closed): such a sid is never
    /// issued again.
    pub fn is_used(&self, sid: u64) -> bool {
        sid == 0 || self.sessions.contains_key(&sid) || self.closed.contains(&sid)
    }

    /// All sessions (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Closed sids (for snapshots).
    pub fn closed_sids(&self) -> impl Iterator<Item = &u64> {
        self.closed.iter()
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
    pub fn visible(&self, sid: u64, uid: u64) -> Result<&Session, Refusal> {
        if self.closed.contains(&sid) {
            return Err(Refusal::new(reasons::SESSION_CLOSED));
        }
        self.sessions
            .get(&sid)
            .filter(|s| s.visible_to(uid))
            .ok_or_else(|| Refusal::new(reasons::NOT_A_PARTICIPANT))
    }

    /// Checks an init request whose names were resolved to `(uid, name)` by the caller
    /// and returns the record creating session `sid` (a fresh id the caller drew).
    pub fn plan_init(
        &self,
        sid: u64,
        creator: (u64, String),
        creator_key: String,
        invitees: Vec<(u64, String)>,
    ) -> Result<Record, Refusal> {
        if invitees.is_empty() {
            return Err(Refusal::new("no invitees"));
        }
        if invitees.len() + 1 > self.limits.max_participants {
            return Err(Refusal::new(format!(
                "too many participants (the limit is {})",
                self.limits.max_participants
            )));
        }
        let mut seen = HashSet::new();
        for (uid, name) in &invitees {
            if *uid == creator.0 {
                return Err(Refusal::new("you cannot invite yourself"));
            }
            if !seen.insert(*uid) {
                return Err(Refusal::new(format!("duplicate invitee {name}")));
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
    pub fn plan_answer(&self, sid: u64, uid: u64, answer: InviteAnswer) -> Option<Record> {
        let s = self.sessions.get(&sid)?;
        let p = s.participant(uid)?;
        if p.answer != Answer::Invited {
            return None;
        }
        let key = match answer {
            InviteAnswer::Accept(k) => Some(k),
            InviteAnswer::Deny => None,
        };
        Some(Record::Answer { sid, uid, key })
    }

    /// Checks a message and returns the record numbering it.
    pub fn plan_message(&self, sid: u64, author: u64, envelope: &[u8]) -> Result<Record, Refusal> {
        let s = self.visible(sid, author)?;
        if s.participant(author).map(|p| p.answer) != Some(Answer::Accepted) {
            return Err(Refusal::new(reasons::NOT_ACCEPTED));
        }
        if !s.live {
            return Err(Refusal::new(reasons::NOT_LIVE));
        }
        if envelope.is_empty() {
            return Err(Refusal::new(reasons::EMPTY_MESSAGE));
        }
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(Refusal::new(reasons::TOO_LARGE));
        }
        if s.messages.len() >= self.limits.backlog_messages
            || s.backlog_bytes + envelope.len() > self.limits.backlog_bytes
        {
            return Err(Refusal::new(reasons::BACKLOG_FULL));
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
    pub fn plan_close(&self, sid: u64, uid: u64) -> Result<Record, Refusal> {
        let s = self.visible(sid, uid)?;
        if s.creator != uid {
            return Err(Refusal::new(reasons::ONLY_CREATOR));
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
                s.forget_acknowledged();
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
                s.forget_acknowledged();
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
                }
                self.closed.insert(*sid);
                true
            }
        }
    }

    /// The sid-0 status listing for `uid`: `OK\n` then `<sid> <invited|pending|live>
    /// <creator>` per session, in sid order.
    pub fn list_payload(&self, uid: u64) -> String {
        let mut lines = BTreeMap::new();
        for s in self.sessions_of(uid) {
            let state = match s.participant(uid).map(|p| p.answer) {
                Some(Answer::Invited) => "invited",
                _ if s.live => "live",
                _ => "pending",
            };
            let creator = s
                .participant(s.creator)
                .map(|p| p.name.as_str())
                .unwrap_or("?");
            lines.insert(
                s.sid,
                format!("{} {} {}\n", encoding::id_hex(s.sid), state, creator),
            );
        }
        let mut out = String::from("OK\n");
        lines.into_values().for_each(|l| out.push_str(&l));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn accept(s: &mut Sessions, uid: u64) {
        let rec = s
            .plan_answer(SID, uid, InviteAnswer::Accept(format!("K{uid:x}")))
            .unwrap();
        assert!(s.apply(&rec));
    }

    #[test]
    fn init_payload_parses_with_or_without_final_newline() {
        let l = Limits::default();
        let r = parse_init(b"KEY\nbob\ncarol\n", &l).unwrap();
        assert_eq!(
            r,
            InitRequest {
                key: "KEY".into(),
                invitees: vec!["bob".into(), "carol".into()]
            }
        );
        assert_eq!(
            parse_init(b"KEY\nbob", &l).unwrap().invitees,
            vec!["bob".to_string()]
        );
        assert_eq!(parse_init(b"KEY\n", &l).unwrap_err().0, "no invitees");
        assert_eq!(parse_init(b"", &l).unwrap_err().0, "missing public key");
        assert_eq!(
            parse_init(b"KEY\n\nbob\n", &l).unwrap_err().0,
            "empty line in invitee list"
        );
        assert!(parse_init(&[0xff, b'\n', b'b'], &l).is_err());
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
                .0,
            "you cannot invite yourself"
        );
        assert_eq!(
            s.plan_init(1, named(A), "K".into(), vec![named(B), named(B)])
                .unwrap_err()
                .0,
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
            .0
            .starts_with("too many participants"));
        let many = format!("K\n{}", "x\n".repeat(3));
        assert!(parse_init(many.as_bytes(), s.limits())
            .unwrap_err()
            .0
            .starts_with("too many"));
    }

    #[test]
    fn messages_need_a_live_session_and_an_accepted_sender() {
        let mut s = with_session();
        assert_eq!(
            s.plan_message(SID, A, b"x").unwrap_err().0,
            reasons::NOT_LIVE
        );
        assert!(s.apply(&Record::Live { sid: SID }));
        assert_eq!(
            s.plan_message(SID, B, b"x").unwrap_err().0,
            reasons::NOT_ACCEPTED
        );
        assert_eq!(
            s.plan_message(SID, 0xd, b"x").unwrap_err().0,
            reasons::NOT_A_PARTICIPANT
        );
        assert_eq!(
            s.plan_message(0x999, A, b"x").unwrap_err().0,
            reasons::NOT_A_PARTICIPANT
        );
        assert_eq!(
            s.plan_message(SID, A, b"").unwrap_err().0,
            reasons::EMPTY_MESSAGE
        );
        assert_eq!(
            s.plan_message(SID, A, &vec![1; MAX_ENVELOPE_LEN + 1])
                .unwrap_err()
                .0,
            reasons::TOO_LARGE
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
            s.plan_message(SID, A, b"1234567").unwrap_err().0,
            reasons::BACKLOG_FULL
        );
        send(&mut s, A, b"123456");
        assert_eq!(
            s.plan_message(SID, A, b"1").unwrap_err().0,
            reasons::BACKLOG_FULL
        );
        s.apply(&s.plan_ack(SID, B, 2).unwrap());
        assert_eq!(send(&mut s, A, b"1"), 3);
    }

    #[test]
    fn answers_count_once() {
        let mut s = with_session();
        accept(&mut s, B);
        assert_eq!(s.plan_answer(SID, B, InviteAnswer::Deny), None);
        assert_eq!(
            s.plan_answer(SID, A, InviteAnswer::Deny),
            None,
            "the creator is not invited"
        );
        assert_eq!(s.plan_answer(SID, 0xd, InviteAnswer::Deny), None);
        s.apply(&s.plan_answer(SID, C, InviteAnswer::Deny).unwrap());
        assert_eq!(s.visible(SID, C).unwrap_err().0, reasons::NOT_A_PARTICIPANT);
        assert_eq!(s.list_payload(C), "OK\n");
    }

    #[test]
    fn only_the_creator_closes_and_closed_sids_stay_used() {
        let mut s = with_session();
        accept(&mut s, B);
        assert_eq!(s.plan_close(SID, B).unwrap_err().0, reasons::ONLY_CREATOR);
        assert_eq!(
            s.plan_close(SID, 0xd).unwrap_err().0,
            reasons::NOT_A_PARTICIPANT
        );
        s.apply(&s.plan_close(SID, A).unwrap());
        assert!(s.get(SID).is_none());
        assert!(s.is_used(SID));
        assert_eq!(s.plan_close(SID, A).unwrap_err().0, reasons::SESSION_CLOSED);
        assert_eq!(
            s.plan_message(SID, A, b"x").unwrap_err().0,
            reasons::SESSION_CLOSED
        );
        assert_eq!(s.visible(SID, 0xd).unwrap_err().0, reasons::SESSION_CLOSED);
        assert_eq!(s.list_payload(A), "OK\n");
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
    fn listings_show_invited_pending_and_live() {
        let mut s = with_session();
        let sid = encoding::id_hex(SID);
        assert_eq!(s.list_payload(A), format!("OK\n{sid} pending usera\n"));
        assert_eq!(s.list_payload(B), format!("OK\n{sid} invited usera\n"));
        s.apply(&Record::Live { sid: SID });
        assert_eq!(s.list_payload(A), format!("OK\n{sid} live usera\n"));
        assert_eq!(s.list_payload(B), format!("OK\n{sid} invited usera\n"));
        accept(&mut s, B);
        assert_eq!(s.list_payload(B), format!("OK\n{sid} live usera\n"));
    }

    #[test]
    fn session_status_lists_every_participant() {
        let mut s = with_session();
        s.apply(&Record::Live { sid: SID });
        accept(&mut s, B);
        send(&mut s, A, b"x");
        s.apply(&s.plan_ack(SID, B, 1).unwrap());
        let got = s.get(SID).unwrap().status_payload(|uid| uid == B);
        assert_eq!(
            got,
            "OK\nlive usera\n\
             usera 000000000000000a accepted offline 0 KA\n\
             userb 000000000000000b accepted online 1 Kb\n\
             userc 000000000000000c invited offline 0\n"
        );
    }

    #[test]
    fn invite_answers_and_acks_parse_strictly() {
        assert_eq!(parse_invite_answer(b"Deny"), Some(InviteAnswer::Deny));
        assert_eq!(
            parse_invite_answer(b"Accept\nKEY"),
            Some(InviteAnswer::Accept("KEY".into()))
        );
        assert_eq!(parse_invite_answer(b"Accept\n"), None);
        assert_eq!(parse_invite_answer(b"Accept\nA\nB"), None);
        assert_eq!(parse_invite_answer(b"deny"), None);
        assert_eq!(parse_ack(b"OK 7"), Some(7));
        assert_eq!(parse_ack(b"OK 07"), None);
        assert_eq!(parse_ack(b"OK"), None);
        assert_eq!(parse_ack(b"error: x"), None);
    }
}
