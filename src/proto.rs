//! Typed payloads: one request and one reply type per MTP message type of the design,
//! each with `encode` and `decode`. The payload text of every message after the login
//! (`OK`, `error: ...`, `Accept\n<key>`, `Deny`, `Online`, the status lines, the `n`
//! prefix of a delivery) is written and parsed here and nowhere else. The login
//! exchange has its own module, [`crate::login`].
//!
//! Who sends what, with the header `sid` and `uid` each carries:
//!
//! | type | client to server | server to client |
//! |---|---|---|
//! | init_req `00 00` | [`InitReq`], sid 0 | never |
//! | init_res `00 10` | never | [`InitRes`]: `OK` with the new sid, or `error: ...` with sid 0 |
//! | close_req `01 00` | [`CloseReq`] | [`CloseReq`] as a close notice, uid = creator |
//! | close_res `01 10` | never | [`CloseRes`], the request's sid |
//! | msg_req `02 00` | [`MsgReq`] (the envelope) | [`Delivery`] (`n` and the envelope), uid = author |
//! | msg_res `02 10` | [`Ack`] (`OK <n>`) | [`MsgRes`], the request's sid |
//! | invite_req `03 00` | never | [`InviteReq`], uid = creator |
//! | invite_res `03 10` | [`InviteRes`] | never |
//! | status_req `04 00` | [`StatusReq`] | [`StatusReq`] as a heartbeat, sid 0 |
//! | status_res `04 10` | [`Online`], sid 0 | [`StatusRes`]: reply or push, the session's sid (0: the listing) |
//!
//! A client decodes whatever the server sends with [`ServerMessage::decode`]; the
//! server decodes each request with its type's `decode`, because what happens to a
//! malformed payload differs by type (an init_req is answered with
//! `error: <reason>`, a malformed invite answer or acknowledgement is ignored, any
//! other status_res than `Online` closes the connection).
//!
//! Replies do not all come in request order: init_res waits until the session goes
//! live, so replies to later requests may come first. A pushed status_res looks
//! exactly like a reply to status_req (uid 0, the session's sid); treat both as the
//! session's current state.
//!
//! A client's core, in short (every server frame goes through one `decode`; every
//! request is a value with a `TYPE` and an `encode`):
//!
//! ```
//! use mpchat::mtp::{Header, MsgType};
//! use mpchat::proto::{
//!     Ack, Answer, InviteRes, Malformed, Online, Presence, Reason, ServerMessage, StatusRes,
//! };
//!
//! /// What to send back for one frame from the server: `(type, sid, payload)`.
//! fn react(h: &Header, payload: &[u8]) -> Result<Vec<(MsgType, u64, Vec<u8>)>, Malformed> {
//!     Ok(match ServerMessage::decode(h, payload)? {
//!         ServerMessage::Heartbeat => vec![(Online::TYPE, 0, Online.encode())],
//!         ServerMessage::Delivery(d) => {
//!             // ... open d.envelope, show it, persist, then acknowledge:
//!             vec![(Ack::TYPE, h.sid, Ack { n: d.n }.encode())]
//!         }
//!         ServerMessage::Status(StatusRes::Session(st)) => {
//!             for p in &st.participants {
//!                 let _joined = p.answer == Answer::Accepted; // p.key is Some exactly then
//!                 let _hidden = p.presence == Presence::Hidden; // a decliner
//!             }
//!             vec![]
//!         }
//!         ServerMessage::Status(StatusRes::Error(Reason::SessionClosed)) => vec![],
//!         _ => vec![],
//!     })
//! }
//!
//! let h = Header { typ: MsgType::StatusReq, len: 36, sqn: 2, sid: 0, uid: 0 };
//! assert_eq!(react(&h, b"").unwrap(), vec![(MsgType::StatusRes, 0, b"Online".to_vec())]);
//! let accept = InviteRes::Accept("MIIBIjAN...".into()).encode();
//! assert!(accept.starts_with(b"Accept\n"));
//! ```
//!
//! This module must never do I/O, verify or parse keys (a public key is text here:
//! the caller checks it is an RSA key), allocate for a size a peer chose before that
//! size is checked against its named bound, or accept anything the design does not
//! allow: decoders are strict (one spelling per value, no extra fields, no trailing
//! bytes), so two implementations cannot disagree about what a frame says.

use std::fmt::{self, Write as _};

use crate::codec::{self, Reader};
use crate::encoding;
use crate::mtp::{self, Header, MsgType};
use crate::names::valid_username;

/// Length of the number the server puts in front of a relayed envelope.
pub const DELIVERY_PREFIX_LEN: usize = 8;
/// The largest relayable envelope, 65,491 bytes: 65,535 (largest frame) - 24 (header)
/// - 12 (mac) - 8 (the `n` prefix), so that a delivery still fits in one frame. A
///   larger one gets `error: message too large`.
pub const MAX_ENVELOPE_LEN: usize = mtp::MAX_PAYLOAD_LEN - DELIVERY_PREFIX_LEN;
/// Longest public key line accepted in init_req, invite_res and status lines: the
/// base64 of a 4096-bit SPKI is 736 characters; anything longer is refused before it
/// is copied or parsed.
pub const MAX_KEY_TEXT_LEN: usize = 1024;
/// Shortest line of a status payload: a listing line `<16 hex> live a\n` (24 bytes);
/// a participant line is longer.
const MIN_STATUS_LINE_LEN: usize = 16 + 1 + 4 + 1 + 1 + 1;
/// Most lines a status payload can hold: the largest payload of shortest lines
/// (2,729). Lines are counted, and the count checked, before the line list is
/// allocated.
pub const MAX_STATUS_LINES: usize = mtp::MAX_PAYLOAD_LEN / MIN_STATUS_LINE_LEN;

/// A payload that breaks the design's grammar for its message type; the string names
/// the rule. The sender is at fault: a broken or hostile implementation. Carries no
/// payload bytes, so it can be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed payload: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

fn utf8(payload: &[u8]) -> Result<&str, Malformed> {
    std::str::from_utf8(payload).map_err(|_| Malformed("not UTF-8"))
}

/// A one-line reply: UTF-8 without any newline.
fn one_line(payload: &[u8]) -> Result<&str, Malformed> {
    let text = utf8(payload)?;
    if text.contains('\n') {
        return Err(Malformed("a newline in a one-line payload"));
    }
    Ok(text)
}

fn empty(payload: &[u8]) -> Result<(), Malformed> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(Malformed("a payload where the design says empty"))
    }
}

/// A public key in its wire form: non-empty, at most [`MAX_KEY_TEXT_LEN`] characters
/// of the standard base64 alphabet. Whether it is an RSA key is the caller's check.
fn key_text(key: &str) -> Result<&str, Malformed> {
    if key.is_empty() || key.len() > MAX_KEY_TEXT_LEN {
        return Err(Malformed("a public key of the wrong length"));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err(Malformed("a public key that is not base64"));
    }
    Ok(key)
}

fn name_text(name: &str) -> Result<&str, Malformed> {
    if valid_username(name) {
        Ok(name)
    } else {
        Err(Malformed("an invalid user name"))
    }
}

fn id_text(text: &str) -> Result<u64, Malformed> {
    match encoding::parse_id(text) {
        Some(id) if id != 0 => Ok(id),
        _ => Err(Malformed(
            "an id that is not 16 lowercase hex digits, or is 0",
        )),
    }
}

fn decimal(text: &str) -> Result<u64, Malformed> {
    encoding::parse_decimal(text).ok_or(Malformed("a number that is not strict decimal"))
}

// ---------------------------------------------------------------------------------
// Refusal reasons

/// Why the server refused a request: the `<reason>` of `error: <reason>` in init_res,
/// msg_res, close_res and status_res. Every reason the server gives is a variant, so
/// its text is written in one place ([`fmt::Display`]).
///
/// The reasons marked *fixed* are listed in mpchat-protocol(7): clients may match
/// them, and their text never changes. The others are text for people and may be
/// reworded; a client shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// *Fixed*: `not a participant`: the sid is unknown, or the asker declined or was
    /// never in the session.
    NotAParticipant,
    /// *Fixed*: `session closed`: the creator closed the session.
    SessionClosed,
    /// *Fixed*: `session not live`: init_res has not been sent yet.
    NotLive,
    /// *Fixed*: `invitation not accepted`: a message from an invitee still to answer.
    NotAccepted,
    /// *Fixed*: `only the creator can close`.
    OnlyCreator,
    /// *Fixed*: `empty message`: a msg_req with an empty envelope.
    EmptyMessage,
    /// *Fixed*: `message too large`: an envelope over [`MAX_ENVELOPE_LEN`].
    TooLarge,
    /// *Fixed*: `backlog full`: the session's backlog bound was reached.
    BacklogFull,
    /// *Fixed*: `your backlog is full`: the author's messages that some recipient
    /// has not acknowledged, across all sessions, reached the per-user bound.
    UserBacklogFull,
    /// *Fixed*: `too many open sessions`: the creator has as many sessions open
    /// (created and not closed) as a user may.
    TooManySessions,
    /// *Fixed*: `too many pending invitations for NAME`: that invitee has as many
    /// unanswered invitations as a user may.
    TooManyInvitations(String),
    /// *Fixed*: `unknown user NAME`: an invitee without an account.
    UnknownUser(String),
    /// *Fixed*: `you cannot invite yourself`.
    CannotInviteSelf,
    /// *Fixed*: `key belongs to another user`: the key in an init_req (or a key
    /// replacement) is bound to another account.
    KeyOfAnotherUser,
    /// *Fixed*: `key differs from the one bound to your account`: an init_req with
    /// another key than the account's; replace the key explicitly
    /// ([`KeyReplaceReq`]) or have an administrator clear the binding.
    KeyDiffers,
    /// *Fixed*: `key replacement not signed by your current key`: the proof of a
    /// [`KeyReplaceReq`] does not verify with the account's bound key.
    ReplacementNotSigned,
    /// `malformed key replacement`: an init_req whose first line has a space but is
    /// not exactly `<key> <proof>\n`.
    MalformedReplacement,
    /// `duplicate invitee NAME`.
    DuplicateInvitee(String),
    /// `too many participants (the limit is N)`, N counting the creator.
    TooManyParticipants(usize),
    /// `no invitees`: an init_req with a key line only.
    NoInvitees,
    /// `invalid user name in invitee list`.
    InvalidUserName,
    /// `missing public key`: an init_req whose first line is empty.
    MissingKey,
    /// `invalid public key`: too long, or not an RSA key in wire form.
    InvalidKey,
    /// `empty line in invitee list`.
    EmptyInviteeLine,
    /// `init request is not UTF-8`.
    InitNotUtf8,
    /// `sid must be 0 in an init request`.
    InitSidNotZero,
    /// `the server could not draw a session id; try again`: the system's random number
    /// generator failed (or every sid drawn was in use, which is astronomically rare).
    NoFreshSid,
    /// `the server could not store this...`: the request's record could not be
    /// written; nothing of it happened (see [`NotStored`]).
    NotStored(NotStored),
    /// Any other reason: decoded from a server that words things differently. Never
    /// holds the text of one of the variants above (decoding prefers those).
    Other(String),
}

/// Why a request's record could not be stored; the text in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// `the server could not store this; try again`: the state was reset after another
    /// request's write failed.
    TryAgain,
    /// `... (disk full)`.
    DiskFull,
    /// `... (storage limit reached)`: a quota or the file size limit.
    StorageLimit,
    /// `... (write failed)`: any other I/O error.
    WriteFailed,
}

/// The reasons without parameters, for decoding by exact match.
const UNIT_REASONS: [Reason; 27] = [
    Reason::NotAParticipant,
    Reason::SessionClosed,
    Reason::NotLive,
    Reason::NotAccepted,
    Reason::OnlyCreator,
    Reason::EmptyMessage,
    Reason::TooLarge,
    Reason::BacklogFull,
    Reason::UserBacklogFull,
    Reason::TooManySessions,
    Reason::CannotInviteSelf,
    Reason::KeyOfAnotherUser,
    Reason::KeyDiffers,
    Reason::ReplacementNotSigned,
    Reason::MalformedReplacement,
    Reason::NoInvitees,
    Reason::InvalidUserName,
    Reason::MissingKey,
    Reason::InvalidKey,
    Reason::EmptyInviteeLine,
    Reason::InitNotUtf8,
    Reason::InitSidNotZero,
    Reason::NoFreshSid,
    Reason::NotStored(NotStored::TryAgain),
    Reason::NotStored(NotStored::DiskFull),
    Reason::NotStored(NotStored::StorageLimit),
    Reason::NotStored(NotStored::WriteFailed),
];

impl Reason {
    /// The text of a reason without parameters.
    fn unit_text(&self) -> Option<&'static str> {
        Some(match self {
            Reason::NotAParticipant => "not a participant",
            Reason::SessionClosed => "session closed",
            Reason::NotLive => "session not live",
            Reason::NotAccepted => "invitation not accepted",
            Reason::OnlyCreator => "only the creator can close",
            Reason::EmptyMessage => "empty message",
            Reason::TooLarge => "message too large",
            Reason::BacklogFull => "backlog full",
            Reason::UserBacklogFull => "your backlog is full",
            Reason::TooManySessions => "too many open sessions",
            Reason::CannotInviteSelf => "you cannot invite yourself",
            Reason::KeyOfAnotherUser => "key belongs to another user",
            Reason::KeyDiffers => "key differs from the one bound to your account",
            Reason::ReplacementNotSigned => "key replacement not signed by your current key",
            Reason::MalformedReplacement => "malformed key replacement",
            Reason::NoInvitees => "no invitees",
            Reason::InvalidUserName => "invalid user name in invitee list",
            Reason::MissingKey => "missing public key",
            Reason::InvalidKey => "invalid public key",
            Reason::EmptyInviteeLine => "empty line in invitee list",
            Reason::InitNotUtf8 => "init request is not UTF-8",
            Reason::InitSidNotZero => "sid must be 0 in an init request",
            Reason::NoFreshSid => "the server could not draw a session id; try again",
            Reason::NotStored(NotStored::TryAgain) => "the server could not store this; try again",
            Reason::NotStored(NotStored::DiskFull) => "the server could not store this (disk full)",
            Reason::NotStored(NotStored::StorageLimit) => {
                "the server could not store this (storage limit reached)"
            }
            Reason::NotStored(NotStored::WriteFailed) => {
                "the server could not store this (write failed)"
            }
            Reason::UnknownUser(_)
            | Reason::DuplicateInvitee(_)
            | Reason::TooManyParticipants(_)
            | Reason::TooManyInvitations(_)
            | Reason::Other(_) => return None,
        })
    }

    /// Parses the text after `error: `: one non-empty line.
    pub fn decode(text: &str) -> Result<Reason, Malformed> {
        if text.is_empty() {
            return Err(Malformed("an empty reason"));
        }
        if text.contains('\n') {
            return Err(Malformed("a newline in a reason"));
        }
        let unit = UNIT_REASONS.iter().find(|r| r.unit_text() == Some(text));
        if let Some(r) = unit {
            return Ok(r.clone());
        }
        if let Some(name) = text.strip_prefix("unknown user ") {
            return Ok(Reason::UnknownUser(name.to_string()));
        }
        if let Some(name) = text.strip_prefix("duplicate invitee ") {
            return Ok(Reason::DuplicateInvitee(name.to_string()));
        }
        if let Some(name) = text.strip_prefix("too many pending invitations for ") {
            return Ok(Reason::TooManyInvitations(name.to_string()));
        }
        let limit = text
            .strip_prefix("too many participants (the limit is ")
            .and_then(|t| t.strip_suffix(')'))
            .and_then(encoding::parse_decimal)
            .and_then(|n| usize::try_from(n).ok());
        if let Some(n) = limit {
            return Ok(Reason::TooManyParticipants(n));
        }
        Ok(Reason::Other(text.to_string()))
    }

    /// The payload `error: <reason>`, for any reply type.
    pub fn encode_error(&self) -> Vec<u8> {
        format!("error: {self}").into_bytes()
    }

    /// Parses a payload `error: <reason>`; `None` if it does not start with `error: `.
    fn decode_error(text: &str) -> Option<Result<Reason, Malformed>> {
        text.strip_prefix("error: ").map(Reason::decode)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = self.unit_text() {
            return f.write_str(t);
        }
        match self {
            Reason::UnknownUser(name) => write!(f, "unknown user {name}"),
            Reason::DuplicateInvitee(name) => write!(f, "duplicate invitee {name}"),
            Reason::TooManyInvitations(name) => {
                write!(f, "too many pending invitations for {name}")
            }
            Reason::TooManyParticipants(n) => {
                write!(f, "too many participants (the limit is {n})")
            }
            Reason::Other(text) => f.write_str(text),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for NotStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Reason::NotStored(*self).fmt(f)
    }
}

/// Decodes a one-line reply that is `OK` followed by `ok`'s grammar, or
/// `error: <reason>`.
fn reply<T>(
    payload: &[u8],
    ok: impl FnOnce(&str) -> Result<T, Malformed>,
) -> Result<Result<T, Reason>, Malformed> {
    let text = one_line(payload)?;
    if let Some(reason) = Reason::decode_error(text) {
        return Ok(Err(reason?));
    }
    match text.strip_prefix("OK") {
        Some(rest) => Ok(Ok(ok(rest)?)),
        None => Err(Malformed("a reply that is neither OK nor error:")),
    }
}

fn nothing_after_ok(rest: &str) -> Result<(), Malformed> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Malformed("data after an OK that carries none"))
    }
}

fn number_after_ok(rest: &str) -> Result<u64, Malformed> {
    let n = decimal(
        rest.strip_prefix(' ')
            .ok_or(Malformed("OK without its number"))?,
    )?;
    if n == 0 {
        return Err(Malformed("message number 0"));
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------
// Enumerated words

/// A participant's answer to the invitation: `invited`, `accepted` or `declined` in
/// status lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Not answered yet.
    Invited,
    /// Accepted; messages are delivered to it.
    Accepted,
    /// Declined; it is out of the session.
    Declined,
}

impl Answer {
    /// The word in status lines.
    pub fn word(self) -> &'static str {
        match self {
            Answer::Invited => "invited",
            Answer::Accepted => "accepted",
            Answer::Declined => "declined",
        }
    }

    /// The answer spelled `word`.
    pub fn from_word(word: &str) -> Option<Answer> {
        [Answer::Invited, Answer::Accepted, Answer::Declined]
            .into_iter()
            .find(|a| a.word() == word)
    }
}

/// A participant's presence in a status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    /// `online`: connected now.
    Online,
    /// `offline`.
    Offline,
    /// `-`: not shown. A participant who declined shows this whatever their state, so
    /// a session someone declined does not let its members watch when they are online.
    Hidden,
}

impl Presence {
    /// The word in status lines.
    pub fn word(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
            Presence::Hidden => "-",
        }
    }

    /// The presence spelled `word`.
    pub fn from_word(word: &str) -> Option<Presence> {
        [Presence::Online, Presence::Offline, Presence::Hidden]
            .into_iter()
            .find(|p| p.word() == word)
    }
}

/// A session's state in its own status: `pending` until init_res, then `live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// `pending`: the creator still waits for init_res.
    Pending,
    /// `live`: messages may be sent.
    Live,
}

impl SessionState {
    /// The word in status lines.
    pub fn word(self) -> &'static str {
        match self {
            SessionState::Pending => "pending",
            SessionState::Live => "live",
        }
    }

    /// The state spelled `word`.
    pub fn from_word(word: &str) -> Option<SessionState> {
        [SessionState::Pending, SessionState::Live]
            .into_iter()
            .find(|s| s.word() == word)
    }
}

/// A session's state in the sid-0 listing, as the asker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListState {
    /// `invited`: the asker has not answered (even once the session is live).
    Invited,
    /// `pending`: created or accepted by the asker, not live yet.
    Pending,
    /// `live`: created or accepted by the asker, and live.
    Live,
}

impl ListState {
    /// The word in listing lines.
    pub fn word(self) -> &'static str {
        match self {
            ListState::Invited => "invited",
            ListState::Pending => "pending",
            ListState::Live => "live",
        }
    }

    /// The state spelled `word`.
    pub fn from_word(word: &str) -> Option<ListState> {
        [ListState::Invited, ListState::Pending, ListState::Live]
            .into_iter()
            .find(|s| s.word() == word)
    }
}

// ---------------------------------------------------------------------------------
// init

/// init_req (client to server, sid 0): `<public_key>\n<user_1>\n...<user_n>\n`, the
/// creator's key, then the invitees by username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReq {
    /// The creator's public key line (its RSA validity is the server's check).
    pub key: String,
    /// Invitee usernames, in order.
    pub invitees: Vec<String>,
}

impl InitReq {
    /// The message type.
    pub const TYPE: MsgType = MsgType::InitReq;

    /// The payload, every line ending in `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(self.key.len() + 1 + self.invitees.len() * 16);
        s.push_str(&self.key);
        s.push('\n');
        for name in &self.invitees {
            s.push_str(name);
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Parses an init_req payload. The final newline may be left out; an empty line
    /// is refused, and so is a list longer than `max_participants` allows (the
    /// creator counts), before the next name is copied. Only the shape is checked
    /// here: whether the key is an RSA key, the names are valid and known, and the
    /// list has no duplicates or the creator, is checked by the server, in that order
    /// (the first failure is the reason given).
    ///
    /// The error is the reply's reason: a malformed init_req passed the MTP, so it is
    /// answered with init_res `error: <reason>`, sid 0, and the connection stays.
    pub fn decode(payload: &[u8], max_participants: usize) -> Result<InitReq, Reason> {
        let text = std::str::from_utf8(payload).map_err(|_| Reason::InitNotUtf8)?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut lines = text.split('\n');
        let key = lines
            .next()
            .filter(|k| !k.is_empty())
            .ok_or(Reason::MissingKey)?;
        if key.len() > MAX_KEY_TEXT_LEN {
            return Err(Reason::InvalidKey);
        }
        let mut invitees = Vec::new();
        for name in lines {
            if name.is_empty() {
                return Err(Reason::EmptyInviteeLine);
            }
            // Bound the work before looking names up: the creator counts too.
            if invitees.len() + 1 >= max_participants {
                return Err(Reason::TooManyParticipants(max_participants));
            }
            invitees.push(name.to_string());
        }
        if invitees.is_empty() {
            return Err(Reason::NoInvitees);
        }
        Ok(InitReq {
            key: key.to_string(),
            invitees,
        })
    }
}

/// The longest proof text accepted in a key replacement: the base64 of a 4096-bit
/// RSA signature (512 bytes) is 684 characters.
pub const MAX_PROOF_TEXT_LEN: usize = 684;

/// init_req (client to server, sid 0) replacing the account's end-to-end key:
/// exactly `<new_public_key> <proof>\n`, one line, where the proof is the base64 of
/// an RSA-PSS signature by the key bound to the account (see
/// [`crate::bindings::replacement_proof`]). No conforming client sends a key line
/// with a space otherwise, so the space tells it from a session's creation. Answered
/// init_res sid 0 `OK`, or `error: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReplaceReq {
    /// The new public key (its RSA validity is the server's check).
    pub key: String,
    /// The proof, base64 (standard, padded).
    pub proof: String,
}

impl KeyReplaceReq {
    /// The message type.
    pub const TYPE: MsgType = MsgType::InitReq;

    /// The payload, `<key> <proof>\n`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}\n", self.key, self.proof).into_bytes()
    }

    /// Parses the payload: one line ending in `\n`, a key and a proof in base64
    /// separated by one space. The error is the reply's reason.
    pub fn decode(payload: &[u8]) -> Result<KeyReplaceReq, Reason> {
        if payload.len() > MAX_KEY_TEXT_LEN + 1 + MAX_PROOF_TEXT_LEN + 1 {
            return Err(Reason::MalformedReplacement);
        }
        let text = std::str::from_utf8(payload).map_err(|_| Reason::InitNotUtf8)?;
        let line = text
            .strip_suffix('\n')
            .filter(|l| !l.contains('\n'))
            .ok_or(Reason::MalformedReplacement)?;
        let (key, proof) = line.split_once(' ').ok_or(Reason::MalformedReplacement)?;
        let key = key_text(key).map_err(|_| Reason::InvalidKey)?;
        if proof.is_empty()
            || proof.len() > MAX_PROOF_TEXT_LEN
            || !proof
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(Reason::MalformedReplacement);
        }
        Ok(KeyReplaceReq {
            key: key.to_string(),
            proof: proof.to_string(),
        })
    }
}

/// An init_req payload: a session's creation or the replacement of the account's
/// key, told apart by a space in the first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitRequest {
    /// `<public_key>\n<user_1>\n...`: create a session.
    Create(InitReq),
    /// `<new_public_key> <proof>\n`: replace the account's key.
    ReplaceKey(KeyReplaceReq),
}

impl InitRequest {
    /// Parses an init_req payload of either form (see [`InitReq::decode`] and
    /// [`KeyReplaceReq::decode`]).
    pub fn decode(payload: &[u8], max_participants: usize) -> Result<InitRequest, Reason> {
        let first_line = payload.split(|&b| b == b'\n').next().unwrap_or_default();
        if first_line.contains(&b' ') {
            KeyReplaceReq::decode(payload).map(InitRequest::ReplaceKey)
        } else {
            InitReq::decode(payload, max_participants).map(InitRequest::Create)
        }
    }
}

/// init_res (server to client): `OK` with the new session's sid once it is live, or
/// `error: <reason>` with sid 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitRes {
    /// `OK`: the session (the header's sid) is live.
    Ok,
    /// `error: <reason>`: no session was created.
    Error(Reason),
}

impl InitRes {
    /// The message type.
    pub const TYPE: MsgType = MsgType::InitRes;

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            InitRes::Ok => b"OK".to_vec(),
            InitRes::Error(r) => r.encode_error(),
        }
    }

    /// Parses an init_res payload.
    pub fn decode(payload: &[u8]) -> Result<InitRes, Malformed> {
        Ok(match reply(payload, nothing_after_ok)? {
            Ok(()) => InitRes::Ok,
            Err(r) => InitRes::Error(r),
        })
    }
}

// ---------------------------------------------------------------------------------
// invite

/// invite_req (server to client): an invitation to the header's sid from the header's
/// uid (the creator). Empty payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InviteReq;

impl InviteReq {
    /// The message type.
    pub const TYPE: MsgType = MsgType::InviteReq;

    /// The (empty) payload.
    pub fn encode(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Checks that the payload is empty.
    pub fn decode(payload: &[u8]) -> Result<InviteReq, Malformed> {
        empty(payload).map(|()| InviteReq)
    }
}

/// invite_res (client to server): `Accept\n<public_key>` or `Deny`. It has no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteRes {
    /// `Accept\n<public_key>`: join with this key (its RSA validity is the server's
    /// check).
    Accept(String),
    /// `Deny`.
    Deny,
}

impl InviteRes {
    /// The message type.
    pub const TYPE: MsgType = MsgType::InviteRes;

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            InviteRes::Accept(key) => format!("Accept\n{key}").into_bytes(),
            InviteRes::Deny => b"Deny".to_vec(),
        }
    }

    /// Parses an invite_res payload. The server ignores a malformed one (no reply,
    /// the invitation stays unanswered).
    pub fn decode(payload: &[u8]) -> Result<InviteRes, Malformed> {
        if payload == b"Deny" {
            return Ok(InviteRes::Deny);
        }
        // The length is checked before the payload is read as text or copied.
        let key = payload
            .strip_prefix(b"Accept\n")
            .ok_or(Malformed("neither Deny nor Accept"))?;
        if key.is_empty() || key.len() > MAX_KEY_TEXT_LEN {
            return Err(Malformed("a public key of the wrong length"));
        }
        let key = key_text(utf8(key)?)?;
        Ok(InviteRes::Accept(key.to_string()))
    }
}

// ---------------------------------------------------------------------------------
// msg

/// msg_req from a client: the end-to-end envelope, opaque to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgReq<'a> {
    /// The envelope.
    pub envelope: &'a [u8],
}

impl<'a> MsgReq<'a> {
    /// The message type.
    pub const TYPE: MsgType = MsgType::MsgReq;

    /// The payload: the envelope itself.
    pub fn encode(&self) -> Vec<u8> {
        self.envelope.to_vec()
    }

    /// Any payload is an envelope to the server. An empty or too large one is refused
    /// by the session rules (`empty message`, `message too large`), after the checks
    /// that come first there (participant, accepted, live), so the first failure is
    /// the reason given.
    pub fn decode(payload: &'a [u8]) -> MsgReq<'a> {
        MsgReq { envelope: payload }
    }
}

/// msg_req from the server, a delivery: `n` (8 bytes, big-endian), then the envelope
/// of message `n` of the header's sid, by the header's uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The message's number in its session, from 1.
    pub n: u64,
    /// The envelope, 1 to [`MAX_ENVELOPE_LEN`] bytes.
    pub envelope: &'a [u8],
}

impl<'a> Delivery<'a> {
    /// The message type.
    pub const TYPE: MsgType = MsgType::MsgReq;

    /// The `n` prefix: a writer seals it and the stored envelope as two parts,
    /// without copying the envelope.
    pub fn prefix(n: u64) -> [u8; DELIVERY_PREFIX_LEN] {
        n.to_be_bytes()
    }

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DELIVERY_PREFIX_LEN + self.envelope.len());
        codec::put_u64(&mut out, self.n);
        out.extend_from_slice(self.envelope);
        out
    }

    /// Parses a delivery: a non-zero `n`, then a non-empty envelope of at most
    /// [`MAX_ENVELOPE_LEN`] bytes (the server relays nothing else).
    pub fn decode(payload: &'a [u8]) -> Result<Delivery<'a>, Malformed> {
        let mut r = Reader::new(payload);
        let n = r
            .u64()
            .map_err(|_| Malformed("a delivery shorter than its number"))?;
        if n == 0 {
            return Err(Malformed("message number 0"));
        }
        let envelope = r.rest();
        if envelope.is_empty() {
            return Err(Malformed("a delivery without an envelope"));
        }
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(Malformed("an envelope over the relay limit"));
        }
        Ok(Delivery { n, envelope })
    }
}

/// msg_res from the server, the reply to a msg_req (with the request's sid): `OK <n>`,
/// the number given to the message, or `error: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgRes {
    /// `OK <n>`: stored as message `n`.
    Ok(u64),
    /// `error: <reason>`: not stored.
    Error(Reason),
}

impl MsgRes {
    /// The message type.
    pub const TYPE: MsgType = MsgType::MsgRes;

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            MsgRes::Ok(n) => format!("OK {n}").into_bytes(),
            MsgRes::Error(r) => r.encode_error(),
        }
    }

    /// Parses a msg_res reply.
    pub fn decode(payload: &[u8]) -> Result<MsgRes, Malformed> {
        Ok(match reply(payload, number_after_ok)? {
            Ok(n) => MsgRes::Ok(n),
            Err(r) => MsgRes::Error(r),
        })
    }
}

/// msg_res from a client, the recipient's acknowledgement: `OK <n>`, covering every
/// message of the header's sid up to `n`. It has no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The highest message number acknowledged.
    pub n: u64,
}

impl Ack {
    /// The message type.
    pub const TYPE: MsgType = MsgType::MsgRes;

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        format!("OK {}", self.n).into_bytes()
    }

    /// Parses an acknowledgement. The server ignores a malformed one.
    pub fn decode(payload: &[u8]) -> Result<Ack, Malformed> {
        let text = one_line(payload)?;
        let rest = text
            .strip_prefix("OK")
            .ok_or(Malformed("an acknowledgement that is not OK <n>"))?;
        Ok(Ack {
            n: number_after_ok(rest)?,
        })
    }
}

// ---------------------------------------------------------------------------------
// close

/// close_req, empty payload: from a client, close the header's sid; from the server,
/// the close notice (uid = the creator). Clients never answer a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReq;

impl CloseReq {
    /// The message type.
    pub const TYPE: MsgType = MsgType::CloseReq;

    /// The (empty) payload.
    pub fn encode(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Checks that the payload is empty.
    pub fn decode(payload: &[u8]) -> Result<CloseReq, Malformed> {
        empty(payload).map(|()| CloseReq)
    }
}

/// close_res from the server, with the request's sid: `OK` or `error: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseRes {
    /// `OK`: closed.
    Ok,
    /// `error: <reason>`.
    Error(Reason),
}

impl CloseRes {
    /// The message type.
    pub const TYPE: MsgType = MsgType::CloseRes;

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            CloseRes::Ok => b"OK".to_vec(),
            CloseRes::Error(r) => r.encode_error(),
        }
    }

    /// Parses a close_res payload.
    pub fn decode(payload: &[u8]) -> Result<CloseRes, Malformed> {
        Ok(match reply(payload, nothing_after_ok)? {
            Ok(()) => CloseRes::Ok,
            Err(r) => CloseRes::Error(r),
        })
    }
}

// ---------------------------------------------------------------------------------
// status

/// status_req, empty payload: from a client, the listing (sid 0) or a session's
/// status; from the server, the heartbeat (sid 0), answered with [`Online`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusReq;

impl StatusReq {
    /// The message type.
    pub const TYPE: MsgType = MsgType::StatusReq;

    /// The (empty) payload.
    pub fn encode(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Checks that the payload is empty.
    pub fn decode(payload: &[u8]) -> Result<StatusReq, Malformed> {
        empty(payload).map(|()| StatusReq)
    }
}

/// status_res from a client, sid 0: `Online`, the answer to a heartbeat. Any other
/// status_res from a client closes its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Online;

impl Online {
    /// The message type.
    pub const TYPE: MsgType = MsgType::StatusRes;
    const TEXT: &'static [u8] = b"Online";

    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        Self::TEXT.to_vec()
    }

    /// Checks that the payload is exactly `Online`.
    pub fn decode(payload: &[u8]) -> Result<Online, Malformed> {
        if payload == Self::TEXT {
            Ok(Online)
        } else {
            Err(Malformed("a client status_res other than Online"))
        }
    }
}

/// One line of the sid-0 listing: `<sid> <invited|pending|live> <creator_name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListLine {
    /// The session.
    pub sid: u64,
    /// Its state for the asker.
    pub state: ListState,
    /// The creator's username.
    pub creator: String,
}

/// One participant line of a session's status:
/// `<name> <uid> <answer> <presence> <acked>[ <public_key>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantLine {
    /// Username.
    pub name: String,
    /// User id.
    pub uid: u64,
    /// Invitation state.
    pub answer: Answer,
    /// Online, offline, or hidden (exactly when declined).
    pub presence: Presence,
    /// The highest message number this participant acknowledged.
    pub acked: u64,
    /// The public key (wire form), present exactly when accepted.
    pub key: Option<String>,
}

/// A session's status: `OK\n<pending|live> <creator_name>\n` then a participant line
/// each, the creator included, in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// Pending or live.
    pub state: SessionState,
    /// The creator's username.
    pub creator: String,
    /// Every participant.
    pub participants: Vec<ParticipantLine>,
}

impl SessionStatus {
    /// The participant with this uid.
    pub fn participant(&self, uid: u64) -> Option<&ParticipantLine> {
        self.participants.iter().find(|p| p.uid == uid)
    }
}

/// status_res from the server, a reply to status_req or a push (uid 0 either way, the
/// header's sid: a push is indistinguishable from a reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusRes {
    /// sid 0: the asker's sessions. Empty: `OK\n`.
    Listing(Vec<ListLine>),
    /// A session's sid: its status.
    Session(SessionStatus),
    /// `error: <reason>`, with the request's sid.
    Error(Reason),
}

impl StatusRes {
    /// The message type.
    pub const TYPE: MsgType = MsgType::StatusRes;

    /// The payload: lines each ending in `\n`, or one `error:` line without one.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::from("OK\n");
        match self {
            StatusRes::Listing(lines) => {
                for l in lines {
                    let _ = writeln!(
                        s,
                        "{} {} {}",
                        encoding::id_hex(l.sid),
                        l.state.word(),
                        l.creator
                    );
                }
            }
            StatusRes::Session(st) => {
                let _ = writeln!(s, "{} {}", st.state.word(), st.creator);
                for p in &st.participants {
                    let _ = write!(
                        s,
                        "{} {} {} {} {}",
                        p.name,
                        encoding::id_hex(p.uid),
                        p.answer.word(),
                        p.presence.word(),
                        p.acked
                    );
                    if let Some(k) = &p.key {
                        s.push(' ');
                        s.push_str(k);
                    }
                    s.push('\n');
                }
            }
            StatusRes::Error(r) => return r.encode_error(),
        }
        s.into_bytes()
    }

    /// Parses a status_res from the server for the header's `sid`: the listing when
    /// `sid` is 0, else that session's status; either may be an error.
    pub fn decode(sid: u64, payload: &[u8]) -> Result<StatusRes, Malformed> {
        let text = utf8(payload)?;
        if let Some(reason) = Reason::decode_error(text) {
            return Ok(StatusRes::Error(reason?));
        }
        let body = text
            .strip_prefix("OK\n")
            .ok_or(Malformed("a status that is neither OK\\n nor error:"))?;
        if !body.is_empty() && !body.ends_with('\n') {
            return Err(Malformed("a status line without its newline"));
        }
        let count = body.bytes().filter(|&b| b == b'\n').count();
        if count > MAX_STATUS_LINES {
            return Err(Malformed("more status lines than a frame holds"));
        }
        let mut lines = body.split_terminator('\n');
        if sid == 0 {
            let mut out = Vec::with_capacity(count);
            for line in lines {
                out.push(list_line(line)?);
            }
            let mut sids: Vec<u64> = out.iter().map(|l| l.sid).collect();
            sids.sort_unstable();
            if sids.windows(2).any(|w| w[0] == w[1]) {
                return Err(Malformed("a session listed twice"));
            }
            return Ok(StatusRes::Listing(out));
        }
        let head = lines
            .next()
            .ok_or(Malformed("a session status without its state line"))?;
        let (state, creator) = head
            .split_once(' ')
            .ok_or(Malformed("a state line that is not <state> <creator>"))?;
        let state =
            SessionState::from_word(state).ok_or(Malformed("a state other than pending|live"))?;
        let creator = name_text(creator)?.to_string();
        let mut participants = Vec::with_capacity(count.saturating_sub(1));
        for line in lines {
            participants.push(participant_line(line)?);
        }
        let mut uids: Vec<u64> = participants.iter().map(|p| p.uid).collect();
        uids.sort_unstable();
        if uids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Malformed("a participant listed twice"));
        }
        if !participants
            .iter()
            .any(|p| p.name == creator && p.answer == Answer::Accepted)
        {
            return Err(Malformed("the creator is not an accepted participant"));
        }
        Ok(StatusRes::Session(SessionStatus {
            state,
            creator,
            participants,
        }))
    }
}

fn list_line(line: &str) -> Result<ListLine, Malformed> {
    let mut f = line.split(' ');
    let (Some(sid), Some(state), Some(creator), None) = (f.next(), f.next(), f.next(), f.next())
    else {
        return Err(Malformed(
            "a listing line that is not <sid> <state> <creator>",
        ));
    };
    Ok(ListLine {
        sid: id_text(sid)?,
        state: ListState::from_word(state)
            .ok_or(Malformed("a state other than invited|pending|live"))?,
        creator: name_text(creator)?.to_string(),
    })
}

fn participant_line(line: &str) -> Result<ParticipantLine, Malformed> {
    let mut f = line.split(' ');
    let (Some(name), Some(uid), Some(answer), Some(presence), Some(acked)) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(Malformed("a participant line with fewer than 5 fields"));
    };
    let key = f.next();
    if f.next().is_some() {
        return Err(Malformed("a participant line with more than 6 fields"));
    }
    let answer = Answer::from_word(answer)
        .ok_or(Malformed("an answer other than invited|accepted|declined"))?;
    let presence =
        Presence::from_word(presence).ok_or(Malformed("a presence other than online|offline|-"))?;
    if (presence == Presence::Hidden) != (answer == Answer::Declined) {
        return Err(Malformed(
            "a presence of - for anyone but a decliner, or the reverse",
        ));
    }
    if key.is_some() != (answer == Answer::Accepted) {
        return Err(Malformed(
            "a key without acceptance, or an acceptance without a key",
        ));
    }
    Ok(ParticipantLine {
        name: name_text(name)?.to_string(),
        uid: id_text(uid)?,
        answer,
        presence,
        acked: decimal(acked)?,
        key: key.map(key_text).transpose()?.map(str::to_string),
    })
}

// ---------------------------------------------------------------------------------
// Everything a client receives

/// Any frame the server sends after the login, decoded: what a client's core
/// dispatches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// init_res: the header's sid is the new session (sid 0 on error).
    InitRes(InitRes),
    /// invite_req: an invitation to the header's sid from the header's uid.
    Invite,
    /// msg_req: message `n` of the header's sid by the header's uid.
    Delivery(Delivery<'a>),
    /// msg_res: the reply to a msg_req on the header's sid.
    MsgRes(MsgRes),
    /// close_req: the header's sid was closed by its creator (the header's uid).
    CloseNotice,
    /// close_req with sid 0 and uid 0, which names no session: a second login of the
    /// same user replaced this connection, which the server closes next
    /// (mpchat-protocol(7), DECISIONS). A client that gets it should not log in
    /// again, or two clients of one user take turns closing each other.
    Replaced,
    /// close_res: the reply to a close_req on the header's sid.
    CloseRes(CloseRes),
    /// status_req, sid 0: the heartbeat; answer [`Online`] with sid 0.
    Heartbeat,
    /// status_res: a reply to status_req or a push; the two look the same.
    Status(StatusRes),
}

impl<'a> ServerMessage<'a> {
    /// Decodes a frame from the server (header and opened payload), checking the
    /// header's sid and uid against the design as well: replies carry uid 0, an
    /// invitation, delivery or close notice a non-zero sid and uid, a heartbeat sid 0
    /// (close_req with sid and uid both 0 is the notice [`ServerMessage::Replaced`]).
    /// init_req and invite_res are never sent by a server.
    pub fn decode(header: &Header, payload: &'a [u8]) -> Result<ServerMessage<'a>, Malformed> {
        let (sid, uid) = (header.sid, header.uid);
        let reply = |m: ServerMessage<'a>| {
            if uid == 0 {
                Ok(m)
            } else {
                Err(Malformed("a reply with a uid other than 0"))
            }
        };
        let pushed = |m: ServerMessage<'a>| {
            if sid != 0 && uid != 0 {
                Ok(m)
            } else {
                Err(Malformed(
                    "an invitation, delivery or close notice with sid or uid 0",
                ))
            }
        };
        match header.typ {
            MsgType::InitRes => {
                let res = InitRes::decode(payload)?;
                if (res == InitRes::Ok) != (sid != 0) {
                    return Err(Malformed("init_res OK with sid 0, or an error with a sid"));
                }
                reply(ServerMessage::InitRes(res))
            }
            MsgType::InviteReq => {
                InviteReq::decode(payload)?;
                pushed(ServerMessage::Invite)
            }
            MsgType::MsgReq => pushed(ServerMessage::Delivery(Delivery::decode(payload)?)),
            MsgType::MsgRes => reply(ServerMessage::MsgRes(MsgRes::decode(payload)?)),
            MsgType::CloseReq => {
                CloseReq::decode(payload)?;
                if sid == 0 && uid == 0 {
                    return Ok(ServerMessage::Replaced);
                }
                pushed(ServerMessage::CloseNotice)
            }
            MsgType::CloseRes => reply(ServerMessage::CloseRes(CloseRes::decode(payload)?)),
            MsgType::StatusReq => {
                StatusReq::decode(payload)?;
                if sid != 0 {
                    return Err(Malformed("a heartbeat with a sid"));
                }
                reply(ServerMessage::Heartbeat)
            }
            MsgType::StatusRes => reply(ServerMessage::Status(StatusRes::decode(sid, payload)?)),
            MsgType::InitReq | MsgType::InviteRes => {
                Err(Malformed("a message type only clients send"))
            }
        }
    }

    /// The message type this message travels as.
    pub fn typ(&self) -> MsgType {
        match self {
            ServerMessage::InitRes(_) => InitRes::TYPE,
            ServerMessage::Invite => InviteReq::TYPE,
            ServerMessage::Delivery(_) => Delivery::TYPE,
            ServerMessage::MsgRes(_) => MsgRes::TYPE,
            ServerMessage::CloseNotice | ServerMessage::Replaced => CloseReq::TYPE,
            ServerMessage::CloseRes(_) => CloseRes::TYPE,
            ServerMessage::Heartbeat => StatusReq::TYPE,
            ServerMessage::Status(_) => StatusRes::TYPE,
        }
    }

    /// The payload (for a test that plays the server).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerMessage::InitRes(m) => m.encode(),
            ServerMessage::Invite => InviteReq.encode(),
            ServerMessage::Delivery(m) => m.encode(),
            ServerMessage::MsgRes(m) => m.encode(),
            ServerMessage::CloseNotice | ServerMessage::Replaced => CloseReq.encode(),
            ServerMessage::CloseRes(m) => m.encode(),
            ServerMessage::Heartbeat => StatusReq.encode(),
            ServerMessage::Status(m) => m.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA+/=";

    #[test]
    fn max_envelope_len_matches_the_design() {
        assert_eq!(MAX_ENVELOPE_LEN, 65_491);
        assert_eq!(MAX_STATUS_LINES, 2_729);
    }

    #[test]
    fn init_payload_parses_with_or_without_final_newline() {
        let r = InitReq::decode(b"KEY\nbob\ncarol\n", 100).unwrap();
        assert_eq!(
            r,
            InitReq {
                key: "KEY".into(),
                invitees: vec!["bob".into(), "carol".into()]
            }
        );
        assert_eq!(r.encode(), b"KEY\nbob\ncarol\n");
        assert_eq!(
            InitReq::decode(b"KEY\nbob", 100).unwrap().invitees,
            vec!["bob".to_string()]
        );
        assert_eq!(InitReq::decode(b"KEY\n", 100), Err(Reason::NoInvitees));
        assert_eq!(InitReq::decode(b"", 100), Err(Reason::MissingKey));
        assert_eq!(
            InitReq::decode(b"KEY\n\nbob\n", 100),
            Err(Reason::EmptyInviteeLine)
        );
        assert_eq!(
            InitReq::decode(&[0xff, b'\n', b'b'], 100),
            Err(Reason::InitNotUtf8)
        );
        let long = format!("{}\nbob\n", "k".repeat(MAX_KEY_TEXT_LEN + 1));
        assert_eq!(
            InitReq::decode(long.as_bytes(), 100),
            Err(Reason::InvalidKey)
        );
    }

    #[test]
    fn init_refuses_a_list_longer_than_the_limit_before_copying_it() {
        let many = format!("K\n{}", "x\n".repeat(3));
        let refused = InitReq::decode(many.as_bytes(), 3).unwrap_err();
        assert_eq!(refused, Reason::TooManyParticipants(3));
        assert_eq!(
            refused.to_string(),
            "too many participants (the limit is 3)"
        );
        assert!(InitReq::decode(b"K\nx\ny\n", 3).is_ok());
    }

    #[test]
    fn replies_have_one_spelling() {
        assert_eq!(InitRes::Ok.encode(), b"OK");
        assert_eq!(InitRes::decode(b"OK"), Ok(InitRes::Ok));
        assert!(InitRes::decode(b"OK ").is_err());
        assert!(InitRes::decode(b"OK\n").is_err());
        assert!(InitRes::decode(b"ok").is_err());
        assert_eq!(
            InitRes::decode(b"error: unknown user zed"),
            Ok(InitRes::Error(Reason::UnknownUser("zed".into())))
        );
        assert!(InitRes::decode(b"error: ").is_err());
        assert!(InitRes::decode(b"error: x\ny").is_err());
        assert_eq!(MsgRes::Ok(7).encode(), b"OK 7");
        assert_eq!(MsgRes::decode(b"OK 7"), Ok(MsgRes::Ok(7)));
        for bad in [&b"OK 07"[..], b"OK", b"OK 0", b"OK  7", b"OK 7 ", b"OK -1"] {
            assert!(MsgRes::decode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            MsgRes::decode(b"error: backlog full"),
            Ok(MsgRes::Error(Reason::BacklogFull))
        );
        assert_eq!(CloseRes::Ok.encode(), b"OK");
        assert_eq!(
            CloseRes::Error(Reason::OnlyCreator).encode(),
            b"error: only the creator can close"
        );
        assert_eq!(
            CloseRes::decode(b"error: only the creator can close"),
            Ok(CloseRes::Error(Reason::OnlyCreator))
        );
    }

    #[test]
    fn invite_answers_and_acks_parse_strictly() {
        assert_eq!(InviteRes::decode(b"Deny"), Ok(InviteRes::Deny));
        assert_eq!(InviteRes::Deny.encode(), b"Deny");
        assert_eq!(
            InviteRes::decode(b"Accept\nKEY"),
            Ok(InviteRes::Accept("KEY".into()))
        );
        assert_eq!(InviteRes::Accept("KEY".into()).encode(), b"Accept\nKEY");
        assert!(InviteRes::decode(b"Accept\n").is_err());
        assert!(InviteRes::decode(b"Accept\nA\nB").is_err());
        assert!(InviteRes::decode(b"deny").is_err());
        let long = format!("Accept\n{}", "k".repeat(MAX_KEY_TEXT_LEN + 1));
        assert!(InviteRes::decode(long.as_bytes()).is_err());
        assert_eq!(Ack::decode(b"OK 7"), Ok(Ack { n: 7 }));
        assert_eq!(Ack { n: 7 }.encode(), b"OK 7");
        assert!(Ack::decode(b"OK 07").is_err());
        assert!(Ack::decode(b"OK").is_err());
        assert!(Ack::decode(b"error: x").is_err());
    }

    #[test]
    fn a_delivery_is_a_number_and_an_envelope() {
        let d = Delivery {
            n: 258,
            envelope: b"env",
        };
        assert_eq!(d.encode(), b"\0\0\0\0\0\0\x01\x02env");
        assert_eq!(Delivery::prefix(258), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(Delivery::decode(&d.encode()), Ok(d));
        assert!(Delivery::decode(b"\0\0\0\0\0\0\x01").is_err());
        assert!(
            Delivery::decode(b"\0\0\0\0\0\0\0\x01").is_err(),
            "no envelope"
        );
        assert!(Delivery::decode(b"\0\0\0\0\0\0\0\0x").is_err(), "n = 0");
        let mut big = 1u64.to_be_bytes().to_vec();
        big.resize(DELIVERY_PREFIX_LEN + MAX_ENVELOPE_LEN + 1, 1);
        assert!(Delivery::decode(&big).is_err());
        big.pop();
        assert!(Delivery::decode(&big).is_ok());
    }

    #[test]
    fn empty_payloads_and_the_heartbeat_answer_are_exact() {
        assert_eq!(CloseReq.encode(), b"");
        assert_eq!(InviteReq::decode(b""), Ok(InviteReq));
        assert!(InviteReq::decode(b"x").is_err());
        assert!(CloseReq::decode(b" ").is_err());
        assert!(StatusReq::decode(b"\n").is_err());
        assert_eq!(Online.encode(), b"Online");
        assert_eq!(Online::decode(b"Online"), Ok(Online));
        for bad in [&b"Online\n"[..], b"Offline", b"", b"OK\n", b"online"] {
            assert!(Online::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_key_replacement_is_one_line_of_key_space_proof_and_is_told_from_an_init() {
        let req = KeyReplaceReq {
            key: "TUlJQg==".into(),
            proof: "c2lnbmF0dXJl".into(),
        };
        assert_eq!(req.encode(), b"TUlJQg== c2lnbmF0dXJl\n");
        assert_eq!(KeyReplaceReq::decode(&req.encode()), Ok(req.clone()));
        assert_eq!(
            InitRequest::decode(&req.encode(), 100),
            Ok(InitRequest::ReplaceKey(req))
        );
        let init = InitReq {
            key: "TUlJQg==".into(),
            invitees: vec!["bob".into()],
        };
        assert_eq!(
            InitRequest::decode(&init.encode(), 100),
            Ok(InitRequest::Create(init))
        );
        for bad in [
            &b"K P"[..],
            b"K P\n\n",
            b"K P\nbob\n",
            b"K  P\n",
            b"K P Q\n",
            b"K \n",
            b"K P!\n",
        ] {
            assert_eq!(
                InitRequest::decode(bad, 100),
                Err(Reason::MalformedReplacement),
                "{bad:?}"
            );
        }
        assert_eq!(KeyReplaceReq::decode(b"K! P\n"), Err(Reason::InvalidKey));
        assert_eq!(KeyReplaceReq::decode(b" P\n"), Err(Reason::InvalidKey));
        assert_eq!(KeyReplaceReq::decode(b"K \xff\n"), Err(Reason::InitNotUtf8));
        let long = format!("K {}\n", "A".repeat(MAX_PROOF_TEXT_LEN + 1));
        assert_eq!(
            KeyReplaceReq::decode(long.as_bytes()),
            Err(Reason::MalformedReplacement)
        );
    }

    #[test]
    fn every_reason_decodes_to_itself() {
        let mut all: Vec<Reason> = UNIT_REASONS.to_vec();
        all.extend([
            Reason::UnknownUser("bob".into()),
            Reason::DuplicateInvitee("bob".into()),
            Reason::TooManyParticipants(100),
            Reason::TooManyInvitations("bob".into()),
            Reason::Other("something else".into()),
        ]);
        for r in all {
            let text = r.to_string();
            assert_eq!(Reason::decode(&text), Ok(r.clone()), "{text}");
            assert_eq!(
                MsgRes::decode(&r.encode_error()),
                Ok(MsgRes::Error(r.clone()))
            );
        }
    }

    #[test]
    fn fixed_reasons_keep_their_wire_text() {
        let fixed = [
            (Reason::NotAParticipant, "not a participant"),
            (Reason::SessionClosed, "session closed"),
            (Reason::NotLive, "session not live"),
            (Reason::NotAccepted, "invitation not accepted"),
            (Reason::OnlyCreator, "only the creator can close"),
            (Reason::EmptyMessage, "empty message"),
            (Reason::TooLarge, "message too large"),
            (Reason::BacklogFull, "backlog full"),
            (Reason::UserBacklogFull, "your backlog is full"),
            (Reason::TooManySessions, "too many open sessions"),
            (
                Reason::TooManyInvitations("zed".into()),
                "too many pending invitations for zed",
            ),
            (Reason::UnknownUser("zed".into()), "unknown user zed"),
            (Reason::CannotInviteSelf, "you cannot invite yourself"),
            (Reason::KeyOfAnotherUser, "key belongs to another user"),
            (
                Reason::KeyDiffers,
                "key differs from the one bound to your account",
            ),
            (
                Reason::ReplacementNotSigned,
                "key replacement not signed by your current key",
            ),
            (
                Reason::NotStored(NotStored::TryAgain),
                "the server could not store this; try again",
            ),
            (
                Reason::NotStored(NotStored::DiskFull),
                "the server could not store this (disk full)",
            ),
        ];
        for (r, text) in fixed {
            assert_eq!(r.to_string(), text);
            assert_eq!(r.encode_error(), format!("error: {text}").into_bytes());
        }
        assert!(Reason::NotStored(NotStored::WriteFailed)
            .to_string()
            .starts_with("the server could not store this"));
    }

    fn line(
        name: &str,
        uid: u64,
        answer: Answer,
        presence: Presence,
        acked: u64,
    ) -> ParticipantLine {
        ParticipantLine {
            name: name.into(),
            uid,
            answer,
            presence,
            acked,
            key: (answer == Answer::Accepted).then(|| KEY.to_string()),
        }
    }

    fn sample_status() -> StatusRes {
        StatusRes::Session(SessionStatus {
            state: SessionState::Live,
            creator: "alice".into(),
            participants: vec![
                line("alice", 0xa, Answer::Accepted, Presence::Online, 3),
                line("bob", 0xb, Answer::Invited, Presence::Offline, 0),
                line("carol", 0xc, Answer::Declined, Presence::Hidden, 0),
            ],
        })
    }

    #[test]
    fn a_session_status_is_lines_with_single_spaces() {
        let st = sample_status();
        let bytes = st.encode();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            format!(
                "OK\nlive alice\n\
                 alice 000000000000000a accepted online 3 {KEY}\n\
                 bob 000000000000000b invited offline 0\n\
                 carol 000000000000000c declined - 0\n"
            )
        );
        assert_eq!(StatusRes::decode(0x5151, &bytes), Ok(st));
    }

    #[test]
    fn session_status_decoding_rejects_what_the_design_does_not_allow() {
        let ok = format!("OK\nlive alice\nalice 000000000000000a accepted online 0 {KEY}\n");
        assert!(StatusRes::decode(7, ok.as_bytes()).is_ok());
        let bad = [
            "OK\n".to_string(),
            "OK\nlive alice\n".to_string(),
            ok.trim_end().to_string(),
            ok.replace("live", "closed"),
            ok.replace("online", "-"),
            ok.replace("online", "away"),
            ok.replace(" 0 ", " 00 "),
            ok.replace("  ", " ").replace("alice 0", "alice  0"),
            ok.replace(&format!(" {KEY}"), ""),
            ok.replace("000000000000000a", "000000000000000A"),
            ok.replace("000000000000000a", "0000000000000000"),
            ok.replace("accepted", "invited"),
            ok.replace("live alice", "live bob"),
            format!("{ok}alice 000000000000000a accepted online 0 {KEY}\n"),
            format!("{ok}bob 000000000000000b declined offline 0\n"),
            format!("{ok}bob 000000000000000b invited - 0\n"),
            format!("{ok}bob 000000000000000b invited offline 0 {KEY}\n"),
            format!("{ok}bob 000000000000000b accepted offline 0 {KEY} x\n"),
            format!("{ok}Bob 000000000000000b invited offline 0\n"),
            format!("{ok}bob 000000000000000b invited offline 0\n\n"),
            ok.replace(KEY, "not base64!"),
        ];
        for b in bad {
            assert!(StatusRes::decode(7, b.as_bytes()).is_err(), "{b:?}");
        }
    }

    #[test]
    fn the_listing_is_lines_in_any_order_and_may_be_empty() {
        assert_eq!(StatusRes::Listing(vec![]).encode(), b"OK\n");
        assert_eq!(
            StatusRes::decode(0, b"OK\n"),
            Ok(StatusRes::Listing(vec![]))
        );
        let l = StatusRes::Listing(vec![
            ListLine {
                sid: 0x22,
                state: ListState::Invited,
                creator: "bob".into(),
            },
            ListLine {
                sid: 0x11,
                state: ListState::Live,
                creator: "alice".into(),
            },
        ]);
        let bytes = l.encode();
        assert_eq!(
            bytes,
            b"OK\n0000000000000022 invited bob\n0000000000000011 live alice\n"
        );
        assert_eq!(StatusRes::decode(0, &bytes), Ok(l));
        for bad in [
            &b"OK"[..],
            b"OK\n0000000000000011 live alice",
            b"OK\n0000000000000011 live alice\n0000000000000011 live alice\n",
            b"OK\n0000000000000011 declined alice\n",
            b"OK\n0000000000000011 live\n",
            b"OK\n11 live alice\n",
        ] {
            assert!(StatusRes::decode(0, bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            StatusRes::decode(0, b"error: not a participant"),
            Ok(StatusRes::Error(Reason::NotAParticipant))
        );
    }

    #[test]
    fn too_many_status_lines_are_refused_before_allocating() {
        let mut many = b"OK\n".to_vec();
        many.extend(std::iter::repeat_n(b'\n', MAX_STATUS_LINES + 1));
        assert_eq!(
            StatusRes::decode(0, &many),
            Err(Malformed("more status lines than a frame holds"))
        );
    }

    fn header(typ: MsgType, sid: u64, uid: u64) -> Header {
        Header {
            typ,
            len: 0,
            sqn: 2,
            sid,
            uid,
        }
    }

    #[test]
    fn a_client_decodes_everything_the_server_sends() {
        let cases: Vec<(Header, ServerMessage<'_>)> = vec![
            (
                header(MsgType::InitRes, 5, 0),
                ServerMessage::InitRes(InitRes::Ok),
            ),
            (
                header(MsgType::InitRes, 0, 0),
                ServerMessage::InitRes(InitRes::Error(Reason::CannotInviteSelf)),
            ),
            (header(MsgType::InviteReq, 5, 9), ServerMessage::Invite),
            (
                header(MsgType::MsgReq, 5, 9),
                ServerMessage::Delivery(Delivery {
                    n: 1,
                    envelope: b"e",
                }),
            ),
            (
                header(MsgType::MsgRes, 5, 0),
                ServerMessage::MsgRes(MsgRes::Ok(1)),
            ),
            (header(MsgType::CloseReq, 5, 9), ServerMessage::CloseNotice),
            (header(MsgType::CloseReq, 0, 0), ServerMessage::Replaced),
            (
                header(MsgType::CloseRes, 5, 0),
                ServerMessage::CloseRes(CloseRes::Error(Reason::SessionClosed)),
            ),
            (header(MsgType::StatusReq, 0, 0), ServerMessage::Heartbeat),
            (
                header(MsgType::StatusRes, 5, 0),
                ServerMessage::Status(sample_status()),
            ),
            (
                header(MsgType::StatusRes, 0, 0),
                ServerMessage::Status(StatusRes::Listing(vec![])),
            ),
        ];
        for (h, m) in cases {
            assert_eq!(m.typ(), h.typ);
            let bytes = m.encode();
            assert_eq!(ServerMessage::decode(&h, &bytes), Ok(m), "{h:?}");
        }
        let refused = [
            (header(MsgType::InitRes, 0, 0), &b"OK"[..]),
            (header(MsgType::InitRes, 5, 0), b"error: no invitees"),
            (header(MsgType::InitRes, 5, 9), b"OK"),
            (header(MsgType::InviteReq, 0, 9), b""),
            (header(MsgType::InviteReq, 5, 0), b""),
            (header(MsgType::MsgReq, 5, 0), b"\0\0\0\0\0\0\0\x01e"),
            (header(MsgType::CloseReq, 5, 9), b"x"),
            (header(MsgType::CloseReq, 0, 0), b"x"),
            (header(MsgType::CloseReq, 0, 9), b""),
            (header(MsgType::CloseReq, 5, 0), b""),
            (header(MsgType::StatusReq, 5, 0), b""),
            (header(MsgType::StatusRes, 0, 0), b"Online"),
            (header(MsgType::InitReq, 0, 0), b"K\nbob\n"),
            (header(MsgType::InviteRes, 5, 0), b"Deny"),
        ];
        for (h, p) in refused {
            assert!(ServerMessage::decode(&h, p).is_err(), "{h:?} {p:?}");
        }
    }
}
