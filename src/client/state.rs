//! The client as a state machine: what `mpchat` does with each command line and each
//! frame from the server, with no socket, no clock, no file and no thread.
//!
//! [`Core::handle`] takes one [`Input`] (a command line, an opened frame, the
//! connection coming up or going down, the end of input, a failed write) and returns
//! the [`Output`]s it causes. The shell ([`super`]) carries them out **in order**: send
//! a request, show an [`Event`], persist a state file, exit. Nothing here touches the
//! network, the terminal or the disk, so a hostile server is a few lines of test
//! (tests/evil_server.rs), and every rule runs the same in tests as in the binary.
//!
//! # Order is the crash-safety rule
//!
//! A received message gives, in this order: [`Output::Event`] of its `msg` event,
//! [`Output::Persist`] of its id ([`Persist::Seen`]) and of its number
//! ([`Persist::Received`]), then [`Output::Send`] of its acknowledgement
//! (`msg_res OK n`). The shell must finish each output before it starts the next:
//! - a crash before the persist: the ack never left, so the server delivers the
//!   message again and it is shown again (a duplicate, never a loss);
//! - a crash after the persist, before the ack: the redelivery is dropped by its `n`
//!   (and acknowledged again);
//! - the ack leaves only once the message was shown and its state is on disk.
//!
//! Acknowledging first would lose a message to a crash; persisting first and printing
//! after would too. A state the core wants on disk is always an explicit output, never
//! a side call, so a later state (End-to-end v2's sender-key ratchets, whose advanced
//! chain must be persisted before the ack) slots into the same order.
//!
//! A failed write does not stop the outputs after it (the message was shown; holding
//! back its ack would only bring it back as a duplicate): the shell reports it as
//! [`Input::PersistFailed`], which prints an error line and makes the next write of
//! that file a whole rewrite.
//!
//! # Payloads
//!
//! Every request is built, and every frame from the server decoded, by
//! [`crate::proto`]; the core acts on the typed values ([`ServerMessage`]). A frame
//! proto refuses breaks the design's grammar (a broken or hostile server): it is still
//! read the lenient way the client always read it, so the user sees, escaped, what
//! the server said, but nothing in it is trusted more (keys are pinned and checked as
//! ever) and a malformed delivery is neither opened nor acknowledged.
//!
//! # Sessions by name
//!
//! A command's session argument may be a name or a prefix of an id; the core resolves
//! it ([`super::names`]) against the sessions it has heard of. What the core knows of
//! sessions for that (default names, `/name`, the current session, answers and
//! presence between two statuses) lives in `state/sessions.rs`, apart from the
//! message path.
//!
//! # What it must never do
//!
//! Read the clock (`now` is an argument), open a file or socket, spawn a thread, or
//! format text for the user: it gives [`Event`]s, whose fields hold a peer's or the
//! server's text as it came, and every renderer escapes them ([`escape`]), so no peer
//! may inject terminal sequences or fake an event line.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

use super::event::{Event, Listed};
use super::ClientError;
use crate::crypto::{RsaPrivate, RsaPublic};
use crate::e2e::v1::SeenWrite;
use crate::e2e::{self, ReplayGuard};
use crate::encoding;
use crate::mtp::{self, Header, MsgType};
use crate::pins::{PinSet, PinStatus};
use crate::proto::{
    Ack, Answer, CloseReq, CloseRes, InitReq, InitRes, InviteRes, MsgReq, MsgRes, Online, Presence,
    Reason, ServerMessage, StatusReq, StatusRes,
};

mod sessions;

use sessions::KnownSession;

/// Incoming messages held at most (waiting for a session's members or a `/trust`);
/// beyond this they are left unacknowledged for redelivery rather than kept in memory.
pub const MAX_WAITING_MESSAGES: usize = 10_000;
/// Longest input line accepted, its line end not counted (a `/msg` text must fit an
/// envelope anyway). The shell discards a longer line whole, up to its newline, and
/// reports it as [`BadLine::TooLong`].
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Escapes control characters (C0, DEL, C1) and backslashes so the text fits on one
/// line and cannot drive the terminal: `\n`, `\r`, `\t`, `\\`, else `\xNN` or `\u{N}`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // C1 controls, line separators, and the bidirectional overrides and
            // isolates that would let a peer reorder how the line looks.
            c if (0x80..0xa0).contains(&(c as u32))
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                )
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// What the core reacts to. The shell feeds them one at a time, in the order they
/// happened.
#[derive(Debug)]
pub enum Input {
    /// A command line from the user, without its line end.
    Line(String),
    /// An input line the shell discarded, and why.
    BadLine(BadLine),
    /// The end of the user's input: exit once every reply is in.
    EndOfInput,
    /// A login succeeded; the connection is up and we are user `uid`.
    Connected {
        /// Our user id, from the login answer.
        uid: u64,
    },
    /// A frame from the server, opened (its MTP checks passed).
    Frame(Header, Vec<u8>),
    /// The connection is gone (the text says why). Unless the core exits, the shell
    /// logs in again and then feeds [`Input::Connected`].
    Lost(String),
    /// A [`Output::Persist`] could not be written.
    PersistFailed {
        /// The file that was not written.
        file: StateFile,
        /// What went wrong, for the error line.
        error: String,
    },
}

/// Why the shell discarded an input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLine {
    /// Longer than [`MAX_LINE_LEN`]: discarded whole, up to its newline, so no part of
    /// it can run as a command.
    TooLong,
    /// Not UTF-8.
    NotUtf8,
}

/// What the core asks the shell to do, in order.
#[derive(Debug)]
pub enum Output {
    /// Seal and send one request on the current connection.
    Send {
        /// Message type.
        typ: MsgType,
        /// Session id (0 where none applies).
        sid: u64,
        /// The payload, before MTP sealing.
        payload: Vec<u8>,
    },
    /// Tell the user something: one event line in script mode
    /// ([`Event::script_line`]).
    Event(Event),
    /// Write a state file durably before going on to the next output.
    Persist(Persist),
    /// Stop: `Ok` for exit status 0, else the failure.
    Exit(Result<(), ClientError>),
}

/// A state the core wants on disk, as data; the shell writes it durably (atomically
/// where it replaces a file) before it carries out the next output.
#[derive(Debug, Clone, PartialEq)]
pub enum Persist {
    /// The last message number handled per session: the whole `received` file.
    Received(BTreeMap<u64, u64>),
    /// The ids of opened messages: a write to the `seen` file.
    Seen(SeenWrite),
    /// The pinned keys: the whole `known_keys` file.
    Pins(PinSet),
    /// The names the user gave sessions: the whole `names` file.
    Names(BTreeMap<u64, String>),
}

impl Persist {
    /// The file this write goes to.
    pub fn file(&self) -> StateFile {
        match self {
            Persist::Received(_) => StateFile::Received,
            Persist::Seen(_) => StateFile::Seen,
            Persist::Pins(_) => StateFile::Pins,
            Persist::Names(_) => StateFile::Names,
        }
    }
}

/// The client's state files the core asks to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// `received`: the last message number handled per session.
    Received,
    /// `seen`: the ids of opened messages.
    Seen,
    /// `known_keys`: the pins.
    Pins,
    /// `names`: the names the user gave sessions.
    Names,
}

/// What the core starts from: the states it persisted in an earlier run (empty for a
/// first run).
#[derive(Debug, Default)]
pub struct Saved {
    /// The pinned keys.
    pub pins: PinSet,
    /// The ids of messages already shown.
    pub seen: ReplayGuard,
    /// The last message number handled per session.
    pub received: BTreeMap<u64, u64>,
    /// The names the user gave sessions.
    pub names: BTreeMap<u64, String>,
}

/// One command line, parsed. A session argument (`SID` in the manual) is kept as the
/// user typed it: an id, a unique prefix of one, or a name, resolved by the core
/// ([`super::names`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// An empty line: nothing to do.
    Nothing,
    /// `/init NAME...`
    Init(Vec<&'a str>),
    /// `/accept SID`
    Accept(&'a str),
    /// `/decline SID`
    Decline(&'a str),
    /// `/msg SID TEXT`
    Msg {
        /// The session, as typed.
        session: &'a str,
        /// The text, as typed (trailing white space removed).
        text: &'a str,
    },
    /// `/close SID`
    Close(&'a str),
    /// `/status [SID]`: the session, or `None` for the listing.
    Status(Option<&'a str>),
    /// `/trust NAME`
    Trust(&'a str),
    /// `/join SID`: plain lines go to that session from now on.
    Join(&'a str),
    /// `/name SID [NAME]`: give the session a name, or take it away.
    Name {
        /// The session, as typed.
        session: &'a str,
        /// The new name; `None` to go back to the default name.
        name: Option<&'a str>,
    },
    /// `/help`
    Help,
    /// `/quit`
    Quit,
    /// A line that is not a command (no leading `/`, or `//` for a text that starts
    /// with `/`): a message to the current session, if there is one.
    Text(&'a str),
}

/// The command an invitation answer is: `accept` or `decline`.
fn answer_word(accept: bool) -> &'static str {
    if accept {
        "accept"
    } else {
        "decline"
    }
}

/// The commands `/help` lists, a line each.
pub const HELP: &[&str] = &[
    "/init NAME...          create a session and invite these users",
    "/accept SID            accept an invitation (/decline SID declines it)",
    "/msg SID TEXT          send TEXT to a session",
    "/join SID              send plain lines (without a /) to this session",
    "/name SID [NAME]       give a session a short name (without NAME: the default)",
    "/status [SID]          list your sessions, or the people in one",
    "/close SID             close a session you created",
    "/trust NAME            accept the new key of NAME, once checked with them",
    "/help, /quit           this list; leave (Ctrl-D too)",
    "SID: a session id, a unique prefix of one, a name given with /name, or a default name (bob,carol)",
];

/// The error for a line that is no command: `error NAME unknown command; ...`, `NAME`
/// being its first word without its slashes.
pub fn unknown_command(line: &str) -> Event {
    let line = line.trim_end();
    let cmd = line.split_once(' ').map_or(line, |(c, _)| c);
    Event::error(
        cmd.trim_start_matches('/'),
        "unknown command; use /init /accept /decline /msg /close /status /trust /quit",
    )
}

/// The one word of `rest`, if it is one: the session argument of most commands.
fn word(rest: &str) -> Option<&str> {
    let w = rest.trim();
    (!w.is_empty() && !w.contains(char::is_whitespace)).then_some(w)
}

/// Parses a command line. `Err` is the error to show (usage, unknown command).
// The error is an event, shown at once: its size costs nothing worth a box.
#[allow(clippy::result_large_err)]
pub fn parse_command(line: &str) -> Result<Command<'_>, Event> {
    let line = line.trim_end();
    if line.is_empty() {
        return Ok(Command::Nothing);
    }
    if line.starts_with("//") {
        return Ok(Command::Text(&line[1..]));
    }
    if !line.starts_with('/') {
        return Ok(Command::Text(line));
    }
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let name = cmd.trim_start_matches('/');
    let usage = |text: &str| Event::error(name, format!("usage: {text}"));
    match cmd {
        "/quit" => Ok(Command::Quit),
        "/help" => Ok(Command::Help),
        "/init" => {
            let names: Vec<&str> = rest.split_whitespace().collect();
            if names.is_empty() {
                return Err(usage("/init NAME..."));
            }
            Ok(Command::Init(names))
        }
        "/accept" => word(rest)
            .map(Command::Accept)
            .ok_or_else(|| usage("/accept SID")),
        "/decline" => word(rest)
            .map(Command::Decline)
            .ok_or_else(|| usage("/decline SID")),
        "/msg" => {
            let (session, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if session.is_empty() || text.is_empty() {
                return Err(usage("/msg SID TEXT"));
            }
            Ok(Command::Msg { session, text })
        }
        "/close" => word(rest)
            .map(Command::Close)
            .ok_or_else(|| usage("/close SID")),
        "/status" if rest.trim().is_empty() => Ok(Command::Status(None)),
        "/status" => word(rest)
            .map(|w| Command::Status(Some(w)))
            .ok_or_else(|| usage("/status [SID]")),
        "/trust" => Ok(Command::Trust(rest.trim())),
        "/join" => word(rest)
            .map(Command::Join)
            .ok_or_else(|| usage("/join SID")),
        "/name" => {
            let mut words = rest.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(session), name, None) => Ok(Command::Name { session, name }),
                _ => Err(usage("/name SID [NAME]")),
            }
        }
        _ => Err(unknown_command(line)),
    }
}

/// What the client knows of one participant, from the session's status.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    uid: u64,
    accepted: bool,
    declined: bool,
    /// Online or offline; `None` where the status hides it (`-`).
    online: Option<bool>,
    key: Option<String>,
}

/// What the client knows of a session.
#[derive(Debug, Clone, Default)]
struct SessionView {
    creator: String,
    members: Vec<Member>,
}

/// A status_res as the core acts on it: what it teaches and the events `/status`
/// shows, or the reason it gives instead.
enum StatusView {
    /// For sid 0, the listing: one entry per session.
    Listing(Result<Vec<Listed>, Reason>),
    /// For a session's sid: its members, then its state event
    /// ([`Event::SessionStatus`]) and one [`Event::Participant`] per participant.
    Session(Result<(SessionView, Vec<Event>), Reason>),
}

impl StatusView {
    /// A well-formed status for `sid`, as proto decoded it.
    fn from_proto(sid: u64, status: StatusRes) -> StatusView {
        let st = match status {
            StatusRes::Listing(lines) => {
                return StatusView::Listing(Ok(lines
                    .into_iter()
                    .map(|l| Listed::Session {
                        sid: l.sid,
                        state: l.state.word().to_string(),
                        creator: l.creator,
                    })
                    .collect()))
            }
            StatusRes::Error(reason) if sid == 0 => return StatusView::Listing(Err(reason)),
            StatusRes::Error(reason) => return StatusView::Session(Err(reason)),
            StatusRes::Session(st) => st,
        };
        let mut lines = vec![Event::SessionStatus {
            sid,
            state: st.state.word().to_string(),
            creator: st.creator.clone(),
        }];
        let mut members = Vec::with_capacity(st.participants.len());
        for p in st.participants {
            lines.push(Event::Participant {
                sid,
                name: p.name.clone(),
                uid: p.uid,
                answer: p.answer.word().to_string(),
                presence: p.presence.word().to_string(),
                acked: p.acked.to_string(),
                fingerprint: p.key.as_deref().and_then(fingerprint_of),
            });
            members.push(Member {
                name: p.name,
                uid: p.uid,
                accepted: p.answer == Answer::Accepted,
                declined: p.answer == Answer::Declined,
                online: match p.presence {
                    Presence::Online => Some(true),
                    Presence::Offline => Some(false),
                    Presence::Hidden => None,
                },
                key: p.key,
            });
        }
        let view = SessionView {
            creator: st.creator,
            members,
        };
        StatusView::Session(Ok((view, lines)))
    }

    /// A status proto refused, read as leniently as the client always read it, so
    /// the user still sees (escaped) what a broken or hostile server said.
    fn lenient(sid: u64, text: &str) -> StatusView {
        if sid == 0 {
            return StatusView::Listing(match text.strip_prefix("OK\n") {
                Some(body) => Ok(body
                    .lines()
                    .map(|l| Listed::Unparsed(l.to_string()))
                    .collect()),
                None => Err(lenient_reason(text)),
            });
        }
        StatusView::Session(parse_session_status(sid, text).ok_or_else(|| lenient_reason(text)))
    }
}

/// The fingerprint of a key in the base64 of the wire, if it is one.
fn fingerprint_of(key_b64: &str) -> Option<String> {
    RsaPublic::from_base64(key_b64)
        .ok()
        .map(|k| k.fingerprint())
}

/// The reason in a reply proto refused: the text after any `error: `, as a
/// [`Reason`] when it is one.
fn lenient_reason(text: &str) -> Reason {
    let text = text.trim_start_matches("error: ");
    Reason::decode(text).unwrap_or_else(|_| Reason::Other(text.to_string()))
}

/// Whether the lenient reader used for a session status that proto refuses
/// (`OK\n<state> <creator>\n` then lines of at least five fields) takes `payload`.
/// Public for the fuzzer.
pub fn check_session_status(payload: &str) -> bool {
    parse_session_status(1, payload).is_some()
}

fn parse_session_status(sid: u64, payload: &str) -> Option<(SessionView, Vec<Event>)> {
    let body = payload.strip_prefix("OK\n")?;
    let mut lines = body.lines();
    let (state, creator) = lines.next()?.split_once(' ')?;
    let mut view = SessionView {
        creator: creator.to_string(),
        members: Vec::new(),
    };
    let mut raw = vec![Event::SessionStatus {
        sid,
        state: state.to_string(),
        creator: creator.to_string(),
    }];
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            return None;
        }
        let uid = encoding::parse_id(f[1])?;
        view.members.push(Member {
            name: f[0].to_string(),
            uid,
            accepted: Answer::from_word(f[2]) == Some(Answer::Accepted),
            declined: Answer::from_word(f[2]) == Some(Answer::Declined),
            online: match Presence::from_word(f[3]) {
                Some(Presence::Online) => Some(true),
                Some(Presence::Offline) => Some(false),
                _ => None,
            },
            key: f.get(5).map(|k| k.to_string()),
        });
        raw.push(Event::Participant {
            sid,
            name: f[0].to_string(),
            uid,
            answer: f[2].to_string(),
            presence: f[3].to_string(),
            acked: f[4].to_string(),
            fingerprint: f.get(5).and_then(|k| fingerprint_of(k)),
        });
    }
    Some((view, raw))
}

/// A `/msg` waiting for the session's member list.
struct OutgoingMsg {
    sid: u64,
    text: String,
}

/// An incoming message waiting for the session's member list (its author's key).
struct IncomingMsg {
    sid: u64,
    author: u64,
    n: u64,
    envelope: Vec<u8>,
}

/// The client's protocol state. See the module documentation.
pub struct Core {
    /// Our username: our own name is pinned to our own key.
    user: String,
    /// Our uid, from the latest login (0 before the first).
    uid: u64,
    /// Unix time (ns) of the input being handled: the clock the core is given instead
    /// of reading one. No rule reads it yet; End-to-end v2's chain rotation will.
    now: u64,
    /// Whether a connection is up (between [`Input::Connected`] and [`Input::Lost`]).
    connected: bool,
    /// Whether a connection was ever up: `connected` is printed only on a return.
    was_connected: bool,
    /// The end of input was reached.
    input_done: bool,
    /// [`Output::Exit`] was given; nothing more is done.
    exited: bool,
    my_key: RsaPrivate,
    my_public: RsaPublic,
    my_key_b64: String,
    pins: PinSet,
    guard: ReplayGuard,
    /// The last message number handled per session; persisted before each ack, so a
    /// restarted client drops redeliveries of what it already showed.
    received: BTreeMap<u64, u64>,
    sessions: HashMap<u64, SessionView>,
    /// status_req we sent for each sid and not yet answered (sid 0 = the listing).
    status_wanted: HashMap<u64, usize>,
    /// Status requests we sent ourselves (to learn members), not to print.
    status_quiet: HashMap<u64, usize>,
    /// Outstanding init_req count.
    inits: usize,
    /// Outstanding msg_req per sid, oldest first (texts are not kept).
    msgs: HashMap<u64, VecDeque<()>>,
    /// Outstanding close_req per sid.
    closes: HashMap<u64, usize>,
    /// Invitations waiting for the creator's name.
    invites: HashSet<u64>,
    outgoing: Vec<OutgoingMsg>,
    incoming: Vec<IncomingMsg>,
    /// key-changed lines already shown, by (name, new fingerprint).
    warned: HashSet<(String, String)>,
    /// Held messages already announced, by (sid, n).
    held: HashSet<(u64, u64)>,
    /// The latest changed key offered per name: what `/trust NAME` trusts.
    offered: HashMap<String, RsaPublic>,
    /// A person at a terminal drives the client ([`Core::set_interactive`]).
    interactive: bool,
    /// The names the user gave sessions; persisted ([`Persist::Names`]).
    names: BTreeMap<u64, String>,
    /// Every session heard of (a name, an invitation, a status, a message, the
    /// `received` file): what a session reference resolves against.
    known: BTreeMap<u64, KnownSession>,
    /// The session plain lines go to.
    current: Option<u64>,
    /// `/join` was used: in script mode plain lines are messages only then.
    joined: bool,
    /// `/accept` (true) or `/decline` of a session not heard of, waiting for its
    /// status: sent if the server shows it, an error line if not.
    answers: Vec<(u64, bool)>,
    /// Sessions we created whose status has not come yet: the first one's answers
    /// are announced, since there is no earlier status to compare them with.
    created: HashSet<u64>,
    /// The outputs of the input being handled, in order.
    out: Vec<Output>,
}

impl Core {
    /// A client for `user` with end-to-end key `my_key`, starting from `saved`. It is
    /// not connected until [`Input::Connected`].
    pub fn new(user: &str, my_key: RsaPrivate, saved: Saved) -> Core {
        let my_public = my_key.public();
        let my_key_b64 = my_public.to_base64();
        let known = saved
            .received
            .keys()
            .chain(saved.names.keys())
            .map(|&sid| (sid, KnownSession::default()))
            .collect();
        Core {
            user: user.to_string(),
            uid: 0,
            now: 0,
            connected: false,
            was_connected: false,
            input_done: false,
            exited: false,
            my_key,
            my_public,
            my_key_b64,
            pins: saved.pins,
            guard: saved.seen,
            received: saved.received,
            sessions: HashMap::new(),
            status_wanted: HashMap::new(),
            status_quiet: HashMap::new(),
            inits: 0,
            msgs: HashMap::new(),
            closes: HashMap::new(),
            invites: HashSet::new(),
            outgoing: Vec::new(),
            incoming: Vec::new(),
            warned: HashSet::new(),
            held: HashSet::new(),
            offered: HashMap::new(),
            interactive: false,
            known,
            names: saved.names,
            current: None,
            joined: false,
            answers: Vec::new(),
            created: HashSet::new(),
            out: Vec::new(),
        }
    }

    /// Handles one input at time `now` (Unix time in nanoseconds) and returns what to
    /// do about it, in order. After an [`Output::Exit`] every input gives nothing.
    pub fn handle(&mut self, input: Input, now: u64) -> Vec<Output> {
        if self.exited {
            return Vec::new();
        }
        self.now = now;
        match input {
            Input::Line(line) => self.command(&line),
            Input::BadLine(BadLine::TooLong) => self.emit(Event::error(
                "input",
                format!("line longer than {MAX_LINE_LEN} bytes; discarded"),
            )),
            Input::BadLine(BadLine::NotUtf8) => {
                self.emit(Event::error("input", "line is not UTF-8; discarded"))
            }
            Input::EndOfInput => self.input_done = true,
            Input::Connected { uid } => {
                self.uid = uid;
                self.connected = true;
                if self.interactive {
                    // The sessions, for their names (nothing is printed).
                    self.request_status(0, true);
                }
                if self.was_connected {
                    self.emit(Event::Connected);
                }
                self.was_connected = true;
            }
            Input::Frame(h, payload) => self.frame(h, payload),
            Input::Lost(why) => {
                self.connected = false;
                self.connection_lost();
                if self.input_done {
                    self.exit(Err(ClientError::Server(format!("connection lost: {why}"))));
                } else {
                    self.emit(Event::Reconnecting { reason: why });
                }
            }
            Input::PersistFailed { file, error } => self.persist_failed(file, &error),
        }
        if !self.exited && self.input_done && self.outstanding() == 0 {
            self.exit(Ok(()));
        }
        std::mem::take(&mut self.out)
    }

    /// Requests sent and not answered, and `/msg`s waiting for their session's members.
    pub fn outstanding(&self) -> usize {
        self.inits
            + self.msgs.values().map(VecDeque::len).sum::<usize>()
            + self.closes.values().sum::<usize>()
            + self.status_wanted.values().sum::<usize>()
            + self.outgoing.len()
            + self.answers.len()
    }

    fn emit(&mut self, event: Event) {
        self.out.push(Output::Event(event));
    }

    fn exit(&mut self, result: Result<(), ClientError>) {
        self.exited = true;
        self.out.push(Output::Exit(result));
    }

    fn persist(&mut self, what: Persist) {
        self.out.push(Output::Persist(what));
    }

    /// Queues a request; `false` (nothing queued) when there is no connection.
    fn send(&mut self, typ: MsgType, sid: u64, payload: Vec<u8>) -> bool {
        if !self.connected {
            return false;
        }
        self.out.push(Output::Send { typ, sid, payload });
        true
    }

    fn request_status(&mut self, sid: u64, quiet: bool) {
        if self.send(StatusReq::TYPE, sid, StatusReq.encode()) {
            let map = if quiet {
                &mut self.status_quiet
            } else {
                &mut self.status_wanted
            };
            *map.entry(sid).or_default() += 1;
        }
    }

    fn persist_failed(&mut self, file: StateFile, error: &str) {
        match file {
            StateFile::Seen => {
                self.guard.mark_unsaved();
                self.emit(Event::error(
                    "msg",
                    format!("cannot record the message as seen: {error}"),
                ));
            }
            StateFile::Received => self.emit(Event::error(
                "msg",
                format!("cannot record the message as received: {error}"),
            )),
            StateFile::Pins => self.emit(Event::error("key", error)),
            StateFile::Names => self.emit(Event::error("name", error)),
        }
    }

    fn command(&mut self, line: &str) {
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(e) => return self.emit(e),
        };
        match command {
            Command::Nothing => {}
            Command::Quit => self.exit(Ok(())),
            Command::Init(names) => {
                let payload = InitReq {
                    key: self.my_key_b64.clone(),
                    invitees: names.iter().map(|n| n.to_string()).collect(),
                }
                .encode();
                if payload.len() > mtp::MAX_PAYLOAD_LEN {
                    self.emit(Event::error("init", "too many names for one request"));
                } else if self.send(InitReq::TYPE, 0, payload) {
                    self.inits += 1;
                } else {
                    self.emit(Event::error("init", "not connected"));
                }
            }
            Command::Accept(session) | Command::Decline(session) => {
                let accept = matches!(command, Command::Accept(_));
                let Some(sid) = self.resolve(if accept { "accept" } else { "decline" }, session)
                else {
                    return;
                };
                if self.known.contains_key(&sid) {
                    self.answer(sid, accept);
                } else if self.connected {
                    // An id never heard of, maybe mistyped: ask the server first, so a
                    // wrong one is an error line rather than an answer sent nowhere.
                    self.answers.push((sid, accept));
                    self.request_status(sid, true);
                } else {
                    self.emit(Event::error(answer_word(accept), "not connected"));
                }
            }
            Command::Msg { session, text } => {
                if let Some(sid) = self.resolve("msg", session) {
                    self.queue_msg(sid, text);
                }
            }
            Command::Text(text) => match self.current() {
                Some(sid) => self.queue_msg(sid, text),
                // Script mode keeps its error for a line that is no command.
                None if !self.interactive => self.emit(unknown_command(line)),
                None => self.emit(Event::error(
                    "msg",
                    "no current session: /join SID first, or /msg SID TEXT",
                )),
            },
            Command::Close(session) => {
                let Some(sid) = self.resolve("close", session) else {
                    return;
                };
                if self.send(CloseReq::TYPE, sid, CloseReq.encode()) {
                    *self.closes.entry(sid).or_default() += 1;
                } else {
                    self.emit(Event::error("close", "not connected"));
                }
            }
            Command::Status(session) => {
                let sid = match session {
                    None => 0,
                    Some(s) => match self.resolve("status", s) {
                        Some(sid) => sid,
                        None => return,
                    },
                };
                if !self.send(StatusReq::TYPE, sid, StatusReq.encode()) {
                    self.emit(Event::error("status", "not connected"));
                } else {
                    *self.status_wanted.entry(sid).or_default() += 1;
                }
            }
            Command::Join(session) => {
                if let Some(sid) = self.resolve("join", session) {
                    self.current = Some(sid);
                    self.joined = true;
                    self.known.entry(sid).or_default();
                    self.emit(Event::Joined { sid });
                }
            }
            Command::Name { session, name } => {
                if let Some(sid) = self.resolve("name", session) {
                    self.name_session(sid, name);
                }
            }
            Command::Help => {
                for line in HELP {
                    self.emit(Event::Help(line.to_string()));
                }
            }
            Command::Trust(who) => {
                // Trust exactly the key the last key-changed line for this name showed.
                match self.offered.remove(who) {
                    Some(key) => match self.pins.trust(who, &key) {
                        Ok(_) => {
                            self.persist(Persist::Pins(self.pins.clone()));
                            self.warned.retain(|(n, _)| n != who);
                            self.emit(Event::Trusted {
                                name: who.to_string(),
                                fingerprint: key.fingerprint(),
                            });
                            self.flush_incoming();
                        }
                        Err(e) => self.emit(Event::error("trust", e.to_string())),
                    },
                    None => self.emit(Event::error(
                        "trust",
                        format!("no changed key to trust for {who}"),
                    )),
                }
            }
        }
    }

    /// Queues a message to `sid` and sends it once the session's members are known.
    fn queue_msg(&mut self, sid: u64, text: &str) {
        self.outgoing.push(OutgoingMsg {
            sid,
            text: text.to_string(),
        });
        if !self.sessions.contains_key(&sid) {
            self.request_status(sid, true);
        }
        self.flush_outgoing();
    }

    /// The key of `name` if it may be used: pinned on first use, refused while changed.
    fn usable_key(&mut self, name: &str, key_b64: &str) -> Option<RsaPublic> {
        self.check_key(name, key_b64).ok()
    }

    /// Checks `name`'s key against its pin. `Err(true)` means the key changed and waits
    /// for `/trust`; `Err(false)` that it is unusable (invalid, or not a valid name).
    fn check_key(&mut self, name: &str, key_b64: &str) -> Result<RsaPublic, bool> {
        let key = RsaPublic::from_base64(key_b64).map_err(|_| false)?;
        // Our own name is pinned to our own key: the server cannot add a second "us".
        if name == self.user {
            if key == self.my_public {
                return Ok(key);
            }
            if self.warned.insert((name.to_string(), key.fingerprint())) {
                self.emit(Event::error(
                    "key",
                    format!("the server lists a key that is not yours under your name {name}"),
                ));
            }
            return Err(false);
        }
        // A key belongs to one name: the server cannot relabel a known key.
        if let Some(owner) = self.pins.name_of(&key).filter(|owner| *owner != name) {
            let owner = owner.to_string();
            if self.warned.insert((name.to_string(), key.fingerprint())) {
                self.emit(Event::error(
                    "key",
                    format!("the server offers the key of {owner} under the name {name}"),
                ));
            }
            return Err(false);
        }
        match self.pins.check(name, &key) {
            Ok(PinStatus::New) => {
                self.persist(Persist::Pins(self.pins.clone()));
                Ok(key)
            }
            Ok(PinStatus::Match) => Ok(key),
            Ok(PinStatus::Changed {
                old_fingerprint,
                new_fingerprint,
            }) => {
                self.offered.insert(name.to_string(), key.clone());
                if self
                    .warned
                    .insert((name.to_string(), new_fingerprint.clone()))
                {
                    self.emit(Event::KeyChanged {
                        name: name.to_string(),
                        old: old_fingerprint,
                        new: new_fingerprint,
                    });
                }
                Err(true)
            }
            Err(e) => {
                self.emit(Event::error("key", e.to_string()));
                Err(false)
            }
        }
    }

    /// Sends every queued `/msg` whose session's members are known.
    fn flush_outgoing(&mut self) {
        let queued = std::mem::take(&mut self.outgoing);
        for m in queued {
            let Some(view) = self.sessions.get(&m.sid).cloned() else {
                if self.status_quiet.get(&m.sid).copied().unwrap_or(0) > 0 {
                    self.outgoing.push(m);
                } else {
                    self.emit(Event::sid_error("msg", m.sid, "not a participant"));
                }
                continue;
            };
            let mut keys = Vec::new();
            let me = self.uid;
            let my_name = self.user.clone();
            for member in view
                .members
                .iter()
                .filter(|p| p.accepted && p.uid != me && p.name != my_name)
            {
                if let Some(key) = member
                    .key
                    .as_deref()
                    .and_then(|k| self.usable_key(&member.name, k))
                {
                    keys.push((member.uid, key));
                }
            }
            if keys.is_empty() {
                self.emit(Event::sid_error("msg", m.sid, "nobody to encrypt to yet"));
                continue;
            }
            let recipients: Vec<(u64, &RsaPublic)> = keys.iter().map(|(u, k)| (*u, k)).collect();
            match e2e::seal(m.sid, self.uid, &self.my_key, &recipients, &m.text) {
                Ok(env) => {
                    let payload = MsgReq { envelope: &env }.encode();
                    if self.send(MsgReq::TYPE, m.sid, payload) {
                        self.msgs.entry(m.sid).or_default().push_back(());
                        self.emit(Event::Outgoing {
                            sid: m.sid,
                            text: m.text,
                        });
                    } else {
                        self.emit(Event::sid_error("msg", m.sid, "not connected"));
                    }
                }
                Err(e) => self.emit(Event::sid_error("msg", m.sid, e.to_string())),
            }
        }
    }

    /// Opens queued incoming messages in `n` order per session. A message whose
    /// author's key changed is held, unacknowledged, with everything after it in that
    /// session, until `/trust`: acknowledgements are cumulative, so acknowledging a
    /// later message would let the server forget the held one.
    fn flush_incoming(&mut self) {
        let queued = std::mem::take(&mut self.incoming);
        let mut blocked = HashSet::new();
        for m in queued {
            if blocked.contains(&m.sid) {
                self.incoming.push(m);
                continue;
            }
            let author = self
                .sessions
                .get(&m.sid)
                .and_then(|s| s.members.iter().find(|p| p.uid == m.author))
                .cloned();
            let Some(author) = author else {
                if self.status_quiet.get(&m.sid).copied().unwrap_or(0) > 0 {
                    blocked.insert(m.sid);
                    self.incoming.push(m);
                } else {
                    self.emit(Event::sid_error(
                        "msg",
                        m.sid,
                        "message from an unknown author",
                    ));
                    self.done_with(m.sid, m.n);
                }
                continue;
            };
            match author
                .key
                .as_deref()
                .map(|k| self.check_key(&author.name, k))
            {
                Some(Ok(key)) => self.open_message(m, &author, &key),
                Some(Err(true)) => {
                    if self.held.insert((m.sid, m.n)) {
                        let name = &author.name;
                        self.emit(Event::sid_error(
                            "msg",
                            m.sid,
                            format!("message from {name} held until /trust {name}"),
                        ));
                    }
                    blocked.insert(m.sid);
                    self.incoming.push(m);
                }
                _ => {
                    self.emit(Event::sid_error(
                        "msg",
                        m.sid,
                        format!("no usable key for {}", author.name),
                    ));
                    self.done_with(m.sid, m.n);
                }
            }
        }
    }

    /// Opens one message and shows it (or why not), then records and acknowledges it:
    /// print, persist, ack, in that order (see the module documentation).
    fn open_message(&mut self, m: IncomingMsg, author: &Member, key: &RsaPublic) {
        match e2e::open(m.sid, m.author, key, self.uid, &self.my_key, &m.envelope) {
            Ok(opened) => {
                if !self.guard.contains(m.sid, m.author, &opened.msg_id) {
                    self.emit(Event::Msg {
                        sid: m.sid,
                        from: author.name.clone(),
                        text: opened.text.clone(),
                        sent_ms: None,
                    });
                    let write = self.guard.record(m.sid, m.author, opened.msg_id);
                    self.persist(Persist::Seen(write));
                } else {
                    self.emit(Event::sid_error(
                        "msg",
                        m.sid,
                        format!("replayed message from {}", author.name),
                    ));
                }
            }
            Err(e) => self.emit(Event::sid_error(
                "msg",
                m.sid,
                format!("{e} (from {})", author.name),
            )),
        }
        self.done_with(m.sid, m.n);
    }

    /// Records `n` as handled in `sid` (persisted) and acknowledges it.
    fn done_with(&mut self, sid: u64, n: u64) {
        let last = self.received.entry(sid).or_insert(0);
        if n > *last {
            *last = n;
            self.persist(Persist::Received(self.received.clone()));
        }
        self.send(Ack::TYPE, sid, Ack { n }.encode());
    }

    /// A frame from the server, decoded by [`ServerMessage::decode`]. One that breaks
    /// the design's grammar is a broken or hostile server: [`Core::malformed`].
    fn frame(&mut self, h: Header, payload: Vec<u8>) {
        let message = match ServerMessage::decode(&h, &payload) {
            Ok(m) => m,
            Err(_) => return self.malformed(h, &payload),
        };
        match message {
            ServerMessage::InitRes(InitRes::Ok) => self.init_res(h.sid, Ok(())),
            ServerMessage::InitRes(InitRes::Error(r)) => self.init_res(h.sid, Err(r)),
            ServerMessage::Invite => self.invite(h.sid),
            ServerMessage::Delivery(d) => self.delivery(h.sid, h.uid, d.n, d.envelope),
            ServerMessage::MsgRes(MsgRes::Ok(n)) => self.msg_res(h.sid, Ok(n.to_string())),
            ServerMessage::MsgRes(MsgRes::Error(r)) => self.msg_res(h.sid, Err(r)),
            ServerMessage::CloseNotice => self.closed(h.sid),
            ServerMessage::Replaced => self.replaced(),
            ServerMessage::CloseRes(CloseRes::Ok) => self.close_res(h.sid, Ok(())),
            ServerMessage::CloseRes(CloseRes::Error(r)) => self.close_res(h.sid, Err(r)),
            ServerMessage::Heartbeat => self.heartbeat(),
            ServerMessage::Status(st) => self.status(h.sid, StatusView::from_proto(h.sid, st)),
        }
    }

    /// A frame that proto refused. Each is still read the lenient way the client
    /// always read it, and acted on as before, so the user sees (escaped) what the
    /// server said; nothing in it is trusted more than in a well-formed frame (keys
    /// are still pinned and checked, envelopes still verified), and a delivery is not
    /// opened at all.
    fn malformed(&mut self, h: Header, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        match h.typ {
            MsgType::InitRes if text == "OK" => self.init_res(h.sid, Ok(())),
            MsgType::InitRes => self.init_res(h.sid, Err(lenient_reason(&text))),
            MsgType::InviteReq => self.invite(h.sid),
            MsgType::MsgReq => {
                // Not acknowledged: nothing about it can be trusted, its number least.
                self.emit(Event::sid_error("msg", h.sid, "malformed delivery"));
            }
            MsgType::MsgRes => {
                let shown = match text.strip_prefix("OK ") {
                    Some(n) => Ok(n.to_string()),
                    None => Err(lenient_reason(&text)),
                };
                self.msg_res(h.sid, shown);
            }
            MsgType::CloseReq => self.closed(h.sid),
            MsgType::CloseRes if text == "OK" => self.close_res(h.sid, Ok(())),
            MsgType::CloseRes => self.close_res(h.sid, Err(lenient_reason(&text))),
            // Answered all the same, so the server does not drop the connection.
            MsgType::StatusReq => self.heartbeat(),
            MsgType::StatusRes => self.status(h.sid, StatusView::lenient(h.sid, &text)),
            MsgType::InitReq | MsgType::InviteRes => {
                self.emit(Event::error(
                    "server",
                    format!("sent an unexpected message type {:04x}", h.typ.code()),
                ));
            }
        }
    }

    fn init_res(&mut self, sid: u64, result: Result<(), Reason>) {
        self.inits = self.inits.saturating_sub(1);
        match result {
            Ok(()) => {
                if sid != 0 {
                    self.known.entry(sid).or_default();
                    self.created.insert(sid);
                    if self.interactive {
                        self.current = Some(sid);
                    }
                }
                self.emit(Event::Init { sid })
            }
            Err(r) => self.emit(Event::error("init", r.to_string())),
        }
    }

    fn invite(&mut self, sid: u64) {
        self.known.entry(sid).or_default();
        self.invites.insert(sid);
        self.request_status(sid, true);
    }

    /// The reply to a `/msg`: the number given, as text, or why not.
    fn msg_res(&mut self, sid: u64, result: Result<String, Reason>) {
        if let Some(q) = self.msgs.get_mut(&sid) {
            q.pop_front();
        }
        match result {
            Ok(n) => self.emit(Event::Sent { sid, n }),
            Err(r) => self.emit(Event::sid_error("msg", sid, r.to_string())),
        }
    }

    /// Another login of our user replaced this connection, and the server closes it.
    /// Logging in again would close that other client's connection in turn, and the
    /// two would take turns for ever: say why, and stop (exit status 1).
    fn replaced(&mut self) {
        self.connected = false;
        self.connection_lost();
        let user = self.user.clone();
        self.emit(Event::Replaced { user: user.clone() });
        self.exit(Err(ClientError::Server(format!(
            "the connection was replaced by another login of {user}; \
             stop the other client, or use another account, to connect from here"
        ))));
    }

    /// The creator closed the session.
    fn closed(&mut self, sid: u64) {
        self.sessions.remove(&sid);
        self.emit(Event::Closed { sid });
        if let Some(k) = self.known.get_mut(&sid) {
            k.closed = true;
        }
        if self.current == Some(sid) {
            self.current = None;
        }
        // A closed session's sid is never reused: its name can go.
        if self.names.remove(&sid).is_some() {
            self.persist(Persist::Names(self.names.clone()));
        }
    }

    fn close_res(&mut self, sid: u64, result: Result<(), Reason>) {
        if let Some(c) = self.closes.get_mut(&sid) {
            *c = c.saturating_sub(1);
        }
        match result {
            Ok(()) => self.closed(sid),
            Err(r) => self.emit(Event::sid_error("close", sid, r.to_string())),
        }
    }

    /// The server's heartbeat: answered at once, never printed.
    fn heartbeat(&mut self) {
        self.send(Online::TYPE, 0, Online.encode());
    }

    /// A delivered message `n` of `sid` by `author`.
    fn delivery(&mut self, sid: u64, author: u64, n: u64, envelope: &[u8]) {
        if self.received.get(&sid).is_some_and(|&last| n <= last) {
            // A redelivery of something already shown: acknowledge it again.
            self.send(Ack::TYPE, sid, Ack { n }.encode());
            return;
        }
        if self.incoming.iter().any(|m| m.sid == sid && m.n == n) {
            return;
        }
        if self.incoming.len() >= MAX_WAITING_MESSAGES {
            // Not acknowledged: the server keeps it and delivers it again.
            self.emit(Event::sid_error(
                "msg",
                sid,
                "too many messages waiting; will retry at next login",
            ));
            return;
        }
        self.known.entry(sid).or_default();
        self.incoming.push(IncomingMsg {
            sid,
            author,
            n,
            envelope: envelope.to_vec(),
        });
        let known = self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.members.iter().any(|p| p.uid == author));
        if !known && self.status_quiet.get(&sid).copied().unwrap_or(0) == 0 {
            self.request_status(sid, true);
        }
        self.flush_incoming();
    }

    /// A status_res: a reply to our status_req (printed if the user asked for it) or
    /// a push; either way the session's current state.
    fn status(&mut self, sid: u64, view: StatusView) {
        let take = |m: &mut HashMap<u64, usize>| match m.get_mut(&sid) {
            Some(c) if *c > 0 => {
                *c -= 1;
                true
            }
            _ => false,
        };
        let wanted = take(&mut self.status_wanted);
        let quiet = !wanted && take(&mut self.status_quiet);
        let session = match view {
            StatusView::Listing(listing) => {
                if let Ok(lines) = &listing {
                    self.learn_listing(lines);
                }
                match listing {
                    Ok(lines) if wanted && lines.is_empty() => self.emit(Event::StatusNone),
                    Ok(lines) if wanted => {
                        for l in lines {
                            self.emit(Event::Listed(l));
                        }
                    }
                    Err(r) if wanted => self.emit(Event::error("status", r.to_string())),
                    // Pushed, or an answer to a request whose reply was lost.
                    _ => {}
                }
                return;
            }
            StatusView::Session(session) => session,
        };
        match session {
            Ok((view, lines)) => {
                // Learn the members' keys (pinning on first use) as soon as they appear.
                let members: Vec<(String, String)> = view
                    .members
                    .iter()
                    .filter(|m| m.uid != self.uid)
                    .filter_map(|m| m.key.clone().map(|k| (m.name.clone(), k)))
                    .collect();
                let creator = view.creator.clone();
                let notes = self.learn_session(sid, &view);
                self.sessions.insert(sid, view);
                for (name, key) in members {
                    let _ = self.usable_key(&name, &key);
                }
                if self.invites.remove(&sid) {
                    self.emit(Event::Invite {
                        sid,
                        from: Some(creator),
                    });
                }
                if wanted {
                    for l in lines {
                        self.emit(l);
                    }
                }
                for note in notes {
                    self.emit(note);
                }
                for accept in self.take_answers(sid) {
                    self.answer(sid, accept);
                }
            }
            Err(reason) => {
                if wanted {
                    self.emit(Event::sid_error("status", sid, reason.to_string()));
                }
                if self.invites.remove(&sid) {
                    self.emit(Event::Invite { sid, from: None });
                }
                if quiet && reason == Reason::SessionClosed {
                    self.sessions.remove(&sid);
                }
                for accept in self.take_answers(sid) {
                    let reason = reason.to_string();
                    self.emit(Event::sid_error(answer_word(accept), sid, reason));
                }
            }
        }
        self.flush_outgoing();
        self.flush_incoming();
    }

    /// Forgets requests whose answers were lost with the connection.
    fn connection_lost(&mut self) {
        let lost = self.outstanding() - self.outgoing.len() - self.answers.len();
        self.inits = 0;
        self.msgs.clear();
        self.closes.clear();
        self.status_wanted.clear();
        self.status_quiet.clear();
        if lost > 0 {
            self.emit(Event::error(
                "connection",
                format!("lost with {lost} request(s) unanswered"),
            ));
        }
        for m in std::mem::take(&mut self.outgoing) {
            self.emit(Event::sid_error("msg", m.sid, "not sent: connection lost"));
        }
        self.incoming.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    pub(super) const SID: u64 = 0x5e55_0000_0000_0001;
    pub(super) const ME: u64 = 0x0c0c_0c0c_0c0c_0c0c;

    /// A core for "carol", connected as [`ME`]; the key is made once per test binary.
    pub(super) fn core() -> Core {
        static PEM: OnceLock<String> = OnceLock::new();
        let pem = PEM.get_or_init(|| {
            RsaPrivate::generate(2048)
                .unwrap()
                .to_pkcs8_pem()
                .unwrap()
                .to_string()
        });
        let mut c = Core::new(
            "carol",
            RsaPrivate::from_pkcs8_pem(pem).unwrap(),
            Saved::default(),
        );
        assert!(c.handle(Input::Connected { uid: ME }, 0).is_empty());
        c
    }

    pub(super) fn frame(typ: MsgType, sid: u64, payload: &str) -> Input {
        let h = Header {
            typ,
            len: 0,
            sqn: 1,
            sid,
            uid: 0,
        };
        Input::Frame(h, payload.as_bytes().to_vec())
    }

    pub(super) fn line(text: &str) -> Input {
        Input::Line(text.into())
    }

    /// The outputs as short strings, as script mode sees them: `> TYPE SID PAYLOAD`
    /// for a request, the script line of an event (none for an event without one),
    /// `persist FILE`, `exit RESULT`.
    pub(super) fn show(outputs: Vec<Output>) -> Vec<String> {
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::Send { typ, sid, payload } => Some(format!(
                    "> {typ:?} {} {}",
                    encoding::id_hex(sid),
                    String::from_utf8_lossy(&payload)
                )),
                Output::Event(e) => e.script_line(),
                Output::Persist(p) => Some(format!("persist {:?}", p.file())),
                Output::Exit(r) => Some(format!("exit {r:?}")),
            })
            .collect()
    }

    /// The events among the outputs, every one.
    pub(super) fn events(outputs: Vec<Output>) -> Vec<Event> {
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn escape_neutralises_control_characters_and_fake_lines() {
        assert_eq!(escape("hi\nmsg 00 eve x"), "hi\\nmsg 00 eve x");
        assert_eq!(escape("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_eq!(escape("tab\there\r"), "tab\\there\\r");
        assert_eq!(escape("\u{85}\u{2028}\x7f"), "\\u{85}\\u{2028}\\x7f");
        assert_eq!(escape("héllo wörld"), "héllo wörld");
        assert_eq!(escape("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
    }

    #[test]
    fn session_status_parses_members_and_keys() {
        let (view, lines) = parse_session_status(
            SID,
            "OK\nlive alice\nalice 000000000000000a accepted online 0 KEYA\nbob 000000000000000b invited offline 0\n",
        )
        .unwrap();
        assert_eq!(view.creator, "alice");
        assert_eq!(view.members.len(), 2);
        assert_eq!(view.members[0].key.as_deref(), Some("KEYA"));
        assert_eq!(view.members[1].key, None);
        assert_eq!(
            lines[1].script_line().unwrap(),
            "status 5e55000000000001 alice 000000000000000a accepted online 0"
        );
        assert!(parse_session_status(SID, "error: not a participant").is_none());
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        let sid = "5e55000000000001";
        assert_eq!(parse_command(""), Ok(Command::Nothing));
        assert_eq!(parse_command("   "), Ok(Command::Nothing));
        assert_eq!(parse_command("/quit"), Ok(Command::Quit));
        assert_eq!(parse_command("/help"), Ok(Command::Help));
        assert_eq!(
            parse_command("/init bob  carol "),
            Ok(Command::Init(vec!["bob", "carol"]))
        );
        assert_eq!(
            parse_command(&format!("/accept {sid}")),
            Ok(Command::Accept(sid))
        );
        assert_eq!(
            parse_command(&format!("/decline  {sid} ")),
            Ok(Command::Decline(sid))
        );
        assert_eq!(
            parse_command(&format!("/close {sid}")),
            Ok(Command::Close(sid))
        );
        assert_eq!(parse_command("/status"), Ok(Command::Status(None)));
        assert_eq!(
            parse_command(&format!("/status {sid}")),
            Ok(Command::Status(Some(sid)))
        );
        assert_eq!(parse_command("/trust  alice "), Ok(Command::Trust("alice")));
        // The text is the rest of the line: inner spaces kept, trailing ones dropped.
        assert_eq!(
            parse_command(&format!("/msg {sid}  two  spaces \t")),
            Ok(Command::Msg {
                session: sid,
                text: " two  spaces"
            })
        );
        // A session may be given by a name or a prefix: resolved by the core.
        assert_eq!(
            parse_command("/msg lunch hi"),
            Ok(Command::Msg {
                session: "lunch",
                text: "hi"
            })
        );
        assert_eq!(parse_command("/accept 5e5"), Ok(Command::Accept("5e5")));
        assert_eq!(
            parse_command("/join bob,carol"),
            Ok(Command::Join("bob,carol"))
        );
        assert_eq!(
            parse_command("/name 5e5 lunch"),
            Ok(Command::Name {
                session: "5e5",
                name: Some("lunch")
            })
        );
        assert_eq!(
            parse_command("/name lunch"),
            Ok(Command::Name {
                session: "lunch",
                name: None
            })
        );
        // A line without a slash is text; a doubled slash sends a text that has one.
        assert_eq!(
            parse_command("hello there "),
            Ok(Command::Text("hello there"))
        );
        assert_eq!(parse_command("//etc/motd"), Ok(Command::Text("/etc/motd")));
    }

    /// The error line a command line that does not parse gives.
    fn parse_error(input: &str) -> String {
        parse_command(input).unwrap_err().script_line().unwrap()
    }

    #[test]
    fn malformed_commands_get_a_usage_line_naming_the_command() {
        for (input, error) in [
            ("/init", "error init usage: /init NAME..."),
            ("/init   ", "error init usage: /init NAME..."),
            ("/accept", "error accept usage: /accept SID"),
            ("/decline a b", "error decline usage: /decline SID"),
            ("/msg 5e55000000000001", "error msg usage: /msg SID TEXT"),
            ("/msg 5e55000000000001 ", "error msg usage: /msg SID TEXT"),
            ("/msg  hello", "error msg usage: /msg SID TEXT"),
            ("/close", "error close usage: /close SID"),
            ("/status x y", "error status usage: /status [SID]"),
            ("/join", "error join usage: /join SID"),
            ("/name", "error name usage: /name SID [NAME]"),
            ("/name a b c", "error name usage: /name SID [NAME]"),
        ] {
            assert_eq!(parse_error(input), error, "{input:?}");
        }
        assert_eq!(
            parse_error("/bogus\x1b[2J x"),
            "error bogus\\x1b[2J unknown command; use /init /accept /decline /msg /close /status /trust /quit"
        );
    }

    #[test]
    fn replies_become_event_lines_with_the_servers_text_escaped() {
        let mut c = core();
        let sid = encoding::id_hex(SID);
        let out = show(c.handle(line("/init bob"), 0));
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("> InitReq 0000000000000000 "), "{out:?}");
        assert!(out[0].ends_with("\nbob\n"), "{out:?}");
        assert_eq!(
            show(c.handle(frame(MsgType::InitRes, SID, "OK"), 0)),
            [format!("init {sid} ok")]
        );
        c.handle(line("/init bob"), 0);
        assert_eq!(
            show(c.handle(frame(MsgType::InitRes, 0, "error: unknown user bob\r"), 0)),
            ["error init unknown user bob\\r"]
        );
        assert_eq!(
            show(c.handle(line(&format!("/close {sid}")), 0)),
            [format!("> CloseReq {sid} ")]
        );
        assert_eq!(
            show(c.handle(
                frame(MsgType::CloseRes, SID, "error: only the creator can close"),
                0
            )),
            [format!("error close {sid} only the creator can close")]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::CloseRes, SID, "OK"), 0)),
            [format!("closed {sid}")]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::MsgRes, SID, "OK 12"), 0)),
            [format!("sent {sid} 12")]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::MsgRes, SID, "error: backlog full"), 0)),
            [format!("error msg {sid} backlog full")]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::CloseReq, SID, ""), 0)),
            [format!("closed {sid}")]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::InviteRes, SID, ""), 0)),
            ["error server sent an unexpected message type 0310"]
        );
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn the_heartbeat_is_answered_and_nothing_printed() {
        let mut c = core();
        assert_eq!(
            show(c.handle(frame(MsgType::StatusReq, 0, ""), 0)),
            ["> StatusRes 0000000000000000 Online"]
        );
    }

    #[test]
    fn a_status_listing_is_printed_only_when_asked_for() {
        let mut c = core();
        // Pushed, not asked for: nothing to print.
        assert!(c.handle(frame(MsgType::StatusRes, 0, "OK\n"), 0).is_empty());
        assert_eq!(
            show(c.handle(line("/status"), 0)),
            ["> StatusReq 0000000000000000 "]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::StatusRes, 0, "OK\n"), 0)),
            ["status none"]
        );
        c.handle(line("/status"), 0);
        assert_eq!(
            show(c.handle(
                frame(
                    MsgType::StatusRes,
                    0,
                    "OK\n5e55000000000001 live alice\n5e55000000000002 invited bob\n"
                ),
                0
            )),
            [
                "status 5e55000000000001 live alice",
                "status 5e55000000000002 invited bob"
            ]
        );
        c.handle(line("/status"), 0);
        assert_eq!(
            show(c.handle(frame(MsgType::StatusRes, 0, "error: try later"), 0)),
            ["error status try later"]
        );
    }

    #[test]
    fn an_invitation_is_printed_with_its_creator_once_the_session_status_is_in() {
        let mut c = core();
        let sid = encoding::id_hex(SID);
        assert_eq!(
            show(c.handle(frame(MsgType::InviteReq, SID, ""), 0)),
            [format!("> StatusReq {sid} ")]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::StatusRes, SID, "OK\nlive alice\n"), 0)),
            [format!("invite {sid} alice")]
        );
        c.handle(frame(MsgType::InviteReq, SID, ""), 0);
        assert_eq!(
            show(c.handle(
                frame(MsgType::StatusRes, SID, "error: not a participant"),
                0
            )),
            [format!("invite {sid} ?")]
        );
        let out = show(c.handle(line(&format!("/accept {sid}")), 0));
        assert!(
            out[0].starts_with(&format!("> InviteRes {sid} Accept\n")),
            "{out:?}"
        );
        assert_eq!(out[1], format!("> StatusReq {sid} "));
        assert_eq!(
            show(c.handle(line(&format!("/decline {sid}")), 0)),
            [format!("> InviteRes {sid} Deny")]
        );
    }

    #[test]
    fn a_message_to_a_session_without_other_members_is_refused() {
        let mut c = core();
        let sid = encoding::id_hex(SID);
        assert_eq!(
            show(c.handle(line(&format!("/msg {sid} hello")), 0)),
            [format!("> StatusReq {sid} ")]
        );
        assert_eq!(
            show(c.handle(
                frame(MsgType::StatusRes, SID, "error: not a participant"),
                0
            )),
            [format!("error msg {sid} not a participant")]
        );
        c.handle(line(&format!("/status {sid}")), 0);
        c.handle(frame(MsgType::StatusRes, SID, "OK\nlive carol\n"), 0);
        assert_eq!(
            show(c.handle(line(&format!("/msg {sid} hello")), 0)),
            [format!("error msg {sid} nobody to encrypt to yet")]
        );
    }

    #[test]
    fn end_of_input_waits_for_every_reply_then_exits() {
        let mut c = core();
        c.handle(line("/status"), 0);
        assert!(c.handle(Input::EndOfInput, 0).is_empty());
        assert_eq!(
            show(c.handle(frame(MsgType::StatusRes, 0, "OK\n"), 0)),
            ["status none", "exit Ok(())"]
        );
        assert!(
            c.handle(line("/status"), 0).is_empty(),
            "nothing after the exit"
        );
    }

    #[test]
    fn quit_exits_at_once() {
        let mut c = core();
        c.handle(line("/status"), 0);
        assert_eq!(show(c.handle(line("/quit"), 0)), ["exit Ok(())"]);
    }

    #[test]
    fn a_lost_connection_reports_unanswered_requests_then_waits_to_be_back() {
        let mut c = core();
        c.handle(line("/status"), 0);
        c.handle(line("/init bob"), 0);
        assert_eq!(
            show(c.handle(Input::Lost("end of stream".into()), 0)),
            [
                "error connection lost with 2 request(s) unanswered",
                "error connection end of stream; reconnecting"
            ]
        );
        assert_eq!(
            show(c.handle(line("/status"), 0)),
            ["error status not connected"]
        );
        assert_eq!(
            show(c.handle(line("/init bob"), 0)),
            ["error init not connected"]
        );
        assert_eq!(
            show(c.handle(Input::Connected { uid: ME }, 0)),
            ["connected"]
        );
        c.handle(Input::EndOfInput, 0);
        assert!(c.exited);
    }

    #[test]
    fn a_connection_replaced_by_another_login_says_so_and_stops() {
        let mut c = core();
        c.handle(line("/status"), 0);
        let out = show(c.handle(frame(MsgType::CloseReq, 0, ""), 0));
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(
            out[..2],
            [
                "error connection lost with 1 request(s) unanswered",
                "error connection replaced by another login of carol; not reconnecting"
            ]
        );
        assert!(out[2].starts_with("exit Err(Server("), "{}", out[2]);
        // The close that follows changes nothing: the client is done.
        assert!(c.handle(Input::Lost("end of stream".into()), 0).is_empty());
        // A close notice for a session is still just that.
        let mut c = core();
        assert_eq!(
            show(c.handle(frame(MsgType::CloseReq, SID, ""), 0)),
            [format!("closed {}", encoding::id_hex(SID))]
        );
    }

    #[test]
    fn a_connection_lost_after_the_end_of_input_is_a_failure() {
        let mut c = core();
        c.handle(line("/status"), 0);
        c.handle(Input::EndOfInput, 0);
        assert_eq!(
            show(c.handle(Input::Lost("reset".into()), 0)),
            [
                "error connection lost with 1 request(s) unanswered".to_string(),
                format!(
                    "exit {:?}",
                    Err::<(), _>(ClientError::Server("connection lost: reset".into()))
                )
            ]
        );
    }

    #[test]
    fn bad_input_lines_get_one_error_line_each() {
        let mut c = core();
        assert_eq!(
            show(c.handle(Input::BadLine(BadLine::TooLong), 0)),
            ["error input line longer than 65536 bytes; discarded"]
        );
        assert_eq!(
            show(c.handle(Input::BadLine(BadLine::NotUtf8), 0)),
            ["error input line is not UTF-8; discarded"]
        );
    }

    #[test]
    fn a_delivery_without_its_number_is_malformed_and_not_acknowledged() {
        let mut c = core();
        assert_eq!(
            show(c.handle(frame(MsgType::MsgReq, SID, "1234567"), 0)),
            ["error msg 5e55000000000001 malformed delivery"]
        );
    }

    #[test]
    fn a_delivery_that_breaks_the_grammar_is_reported_and_not_acknowledged() {
        let mut c = core();
        let h = |uid| Header {
            typ: MsgType::MsgReq,
            len: 0,
            sqn: 1,
            sid: SID,
            uid,
        };
        for (uid, payload) in [
            (0x0a, 0u64.to_be_bytes().to_vec()), // number 0, no envelope
            (0x0a, 7u64.to_be_bytes().to_vec()), // no envelope
            (0, [&7u64.to_be_bytes()[..], b"env"].concat()), // no author
        ] {
            assert_eq!(
                show(c.handle(Input::Frame(h(uid), payload), 0)),
                ["error msg 5e55000000000001 malformed delivery"]
            );
        }
    }

    #[test]
    fn a_well_formed_session_status_is_printed_as_the_server_wrote_it() {
        let mut c = core();
        let sid = encoding::id_hex(SID);
        let key = c.my_key_b64.clone();
        let status = format!(
            "OK\nlive carol\ncarol {} accepted online 3 {key}\nbob 000000000000000b declined - 0\ndave 000000000000000d invited offline 0\n",
            encoding::id_hex(ME)
        );
        c.handle(line(&format!("/status {sid}")), 0);
        assert_eq!(
            show(c.handle(frame(MsgType::StatusRes, SID, &status), 0)),
            [
                format!("status {sid} live carol"),
                format!(
                    "status {sid} carol {} accepted online 3",
                    encoding::id_hex(ME)
                ),
                format!("status {sid} bob 000000000000000b declined - 0"),
                format!("status {sid} dave 000000000000000d invited offline 0"),
            ]
        );
        // A pushed error changes nothing; one the core asked for itself (to learn
        // an unknown author) and that says the session is closed forgets it.
        c.handle(frame(MsgType::StatusRes, SID, "error: session closed"), 0);
        assert!(c.sessions.contains_key(&SID));
        let h = Header {
            typ: MsgType::MsgReq,
            len: 0,
            sqn: 1,
            sid: SID,
            uid: 0x0e,
        };
        let delivery = [&1u64.to_be_bytes()[..], b"env"].concat();
        assert_eq!(
            show(c.handle(Input::Frame(h, delivery), 0)),
            [format!("> StatusReq {sid} ")]
        );
        assert_eq!(
            show(c.handle(frame(MsgType::StatusRes, SID, "error: session closed"), 0)),
            [
                format!("error msg {sid} message from an unknown author"),
                "persist Received".into(),
                format!("> MsgRes {sid} OK 1"),
            ]
        );
        assert!(!c.sessions.contains_key(&SID));
    }

    #[test]
    fn a_redelivery_of_a_number_already_handled_is_acknowledged_again_silently() {
        let mut c = core();
        c.received.insert(SID, 5);
        let mut payload = 4u64.to_be_bytes().to_vec();
        payload.extend_from_slice(b"whatever");
        let h = Header {
            typ: MsgType::MsgReq,
            len: 0,
            sqn: 1,
            sid: SID,
            uid: 0x0a,
        };
        assert_eq!(
            show(c.handle(Input::Frame(h, payload), 0)),
            ["> MsgRes 5e55000000000001 OK 4"]
        );
    }
}
