//! The client's protocol side: connect and log in, turn stdin commands into requests,
//! and server frames into one event line each on stdout.
//!
//! Threads: one reads stdin lines, one reads and opens frames from the server (it owns
//! the receiving MTP state); the main thread owns the sending MTP state and all client
//! state, and is the only one that writes to stdout. Text from peers and from the
//! server is printed with control characters escaped, so no peer can inject terminal
//! sequences or fake an event line. Acks are sent only after a message is printed and
//! its number saved, so a crash between the two means a redelivery, which is dropped
//! by `n`, never a lost message.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::{self, BufRead, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::crypto::{RsaPrivate, RsaPublic};
use crate::e2e::{self, ReplayGuard};
use crate::encoding;
use crate::login::{ClientLogin, Established};
use crate::mtp::{self, Header, MsgType, ReadError};
use crate::pins::{self, KnownKeys, PinStatus};

/// Default server port.
pub const DEFAULT_PORT: u16 = 5150;
/// How long a connection attempt or a login may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before reconnecting after a lost connection; doubled up to the maximum.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// File in the config directory holding the last message number printed per session.
pub const RECEIVED_FILE: &str = "received";
/// Incoming messages held at most (waiting for a session's members or a `/trust`);
/// beyond this they are left unacknowledged for redelivery rather than kept in memory.
pub const MAX_WAITING_MESSAGES: usize = 10_000;
/// Longest stdin line accepted (a `/msg` text must fit an envelope anyway).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Client settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the server.
    pub server: String,
    /// The server's public key.
    pub server_key: RsaPublic,
    /// Username.
    pub user: String,
    /// Config directory (own key, pins, received state).
    pub config_dir: PathBuf,
}

/// Why the client stopped with a failure.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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

/// Appends `host:5150` when the server address has no port.
pub fn with_default_port(server: &str) -> String {
    let has_port = match server.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        server.to_string()
    } else {
        format!("{server}:{DEFAULT_PORT}")
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A logged-in connection: the socket, and the sending MTP state.
struct Link {
    stream: TcpStream,
    sender: mtp::Sender,
}

/// Connects and logs in. The receiving MTP state is returned for the reader thread.
fn connect(config: &Config, password: &str) -> Result<(Link, mtp::Receiver, u64), ClientError> {
    let addrs: Vec<_> = config
        .server
        .to_socket_addrs()
        .map_err(|e| {
            ClientError(format!(
                "cannot resolve {}: {e}; check --server HOST[:PORT]",
                config.server
            ))
        })?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        ClientError(format!(
            "cannot connect to {}: {}; check that mpchatd runs there and the port is right",
            config.server,
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no address".into())
        ))
    })?;
    let _ = stream.set_nodelay(true);
    let (frame, expect) = ClientLogin::start(&config.server_key, &config.user, password, now_ns())
        .map_err(|e| ClientError(format!("cannot build the login request: {e}")))?;
    stream.write_all(&frame).map_err(|e| {
        ClientError(format!(
            "cannot send the login request to {}: {e}",
            config.server
        ))
    })?;
    let _ = stream.set_read_timeout(Some(CONNECT_TIMEOUT));
    let reply = mtp::read_frame(&mut stream).map_err(|e| match e {
        ReadError::Eof | ReadError::Io(_) => ClientError(format!(
            "login to {} refused: wrong user name or password, a clock more than 30 s off, or a server key that does not match --server-key",
            config.server
        )),
        ReadError::Idle => ClientError(format!("no login answer from {} in time", config.server)),
        ReadError::Mtp(e) => ClientError(format!("invalid login answer from {}: {e}", config.server)),
    })?;
    let Established {
        uid,
        sender,
        receiver,
    } = expect.finish(&reply).map_err(|e| {
        ClientError(format!(
            "invalid login answer from {}: {e}; is --server-key the right key?",
            config.server
        ))
    })?;
    let _ = stream.set_read_timeout(None);
    Ok((Link { stream, sender }, receiver, uid))
}

/// What the main loop reacts to.
enum Event {
    Line(String),
    Eof,
    Frame(Header, Vec<u8>),
    Lost(u64, String),
}

fn spawn_reader(
    mut stream: TcpStream,
    mut receiver: mtp::Receiver,
    generation: u64,
    tx: mpsc::Sender<Event>,
) {
    std::thread::spawn(move || loop {
        let frame = match mtp::read_frame(&mut stream) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Event::Lost(generation, e.to_string()));
                return;
            }
        };
        match receiver.open(&frame) {
            Ok((h, p)) => {
                if tx.send(Event::Frame(h, p)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // MTP: a frame that fails a check closes the connection.
                let _ = stream.shutdown(Shutdown::Both);
                let _ = tx.send(Event::Lost(
                    generation,
                    format!("rejected a frame from the server: {e}"),
                ));
                return;
            }
        }
    });
}

fn spawn_stdin(input: impl BufRead + Send + 'static, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut input = input;
        loop {
            let mut line = String::new();
            match io::Read::take(&mut input, MAX_LINE_LEN as u64).read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Event::Eof);
                    return;
                }
                Ok(_) => {
                    let l = line.strip_suffix('\n').unwrap_or(&line);
                    let l = l.strip_suffix('\r').unwrap_or(l);
                    if tx.send(Event::Line(l.to_string())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// What the client knows of one participant, from the session's status.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    uid: u64,
    answer: String,
    key: Option<String>,
}

/// What the client knows of a session.
#[derive(Debug, Clone, Default)]
struct SessionView {
    creator: String,
    members: Vec<Member>,
}

/// Parses a session status payload `OK\n<pending|live> <creator>\n<participant lines>`.
/// Public for the fuzzer; the result's shape is private to the client.
pub fn check_session_status(payload: &str) -> bool {
    parse_session_status(payload).is_some()
}

fn parse_session_status(payload: &str) -> Option<(SessionView, Vec<String>)> {
    let body = payload.strip_prefix("OK\n")?;
    let mut lines = body.lines();
    let (state, creator) = lines.next()?.split_once(' ')?;
    let mut view = SessionView {
        creator: creator.to_string(),
        members: Vec::new(),
    };
    let mut raw = vec![format!("{state} {creator}")];
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            return None;
        }
        view.members.push(Member {
            name: f[0].to_string(),
            uid: encoding::parse_id(f[1])?,
            answer: f[2].to_string(),
            key: f.get(5).map(|k| k.to_string()),
        });
        raw.push(f[..5].join(" "));
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

/// The last message number printed per session, persisted so a restarted client
/// drops redeliveries of what it already showed.
#[derive(Debug, Default)]
struct Received {
    path: PathBuf,
    last: BTreeMap<u64, u64>,
}

impl Received {
    fn load(path: PathBuf) -> Received {
        let mut last = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                if let Some((sid, n)) = line.split_once(' ') {
                    if let (Some(sid), Some(n)) =
                        (encoding::parse_id(sid), encoding::parse_decimal(n))
                    {
                        last.insert(sid, n);
                    }
                }
            }
        }
        Received { path, last }
    }

    fn save(&self) -> io::Result<()> {
        let mut text = String::new();
        for (sid, n) in &self.last {
            let _ = writeln!(text, "{} {}", encoding::id_hex(*sid), n);
        }
        crate::fsutil::atomic_write(&self.path, text.as_bytes(), 0o600)
    }
}

struct Client<W: Write> {
    out: W,
    config: Config,
    uid: u64,
    my_key: RsaPrivate,
    my_key_b64: String,
    pins: KnownKeys,
    guard: ReplayGuard,
    guard_path: PathBuf,
    received: Received,
    link: Option<Link>,
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
    /// Our own public key.
    my_public: RsaPublic,
}

impl<W: Write> Client<W> {
    fn emit(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn outstanding(&self) -> usize {
        self.inits
            + self.msgs.values().map(VecDeque::len).sum::<usize>()
            + self.closes.values().sum::<usize>()
            + self.status_wanted.values().sum::<usize>()
            + self.outgoing.len()
    }

    fn send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) -> bool {
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        let frame = match link.sender.seal(typ, sid, self.uid, payload) {
            Ok(f) => f,
            Err(_) => return false,
        };
        if link.stream.write_all(&frame).is_err() {
            let _ = link.stream.shutdown(Shutdown::Both);
            return false;
        }
        true
    }

    fn request_status(&mut self, sid: u64, quiet: bool) {
        if self.send(MsgType::StatusReq, sid, b"") {
            let map = if quiet {
                &mut self.status_quiet
            } else {
                &mut self.status_wanted
            };
            *map.entry(sid).or_default() += 1;
        }
    }

    fn command(&mut self, line: &str) -> bool {
        let line = line.trim_end();
        if line.is_empty() {
            return true;
        }
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let name = cmd.trim_start_matches('/');
        let sid_arg = |rest: &str| encoding::parse_id(rest.trim());
        match cmd {
            "/quit" => return false,
            "/init" => {
                let names: Vec<&str> = rest.split_whitespace().collect();
                if names.is_empty() {
                    self.emit("error init usage: /init NAME...");
                    return true;
                }
                let payload = format!("{}\n{}\n", self.my_key_b64, names.join("\n"));
                if self.send(MsgType::InitReq, 0, payload.as_bytes()) {
                    self.inits += 1;
                } else {
                    self.emit("error init not connected");
                }
            }
            "/accept" | "/decline" => match sid_arg(rest) {
                Some(sid) => {
                    let payload = if cmd == "/accept" { format!("Accept\n{}", self.my_key_b64) } else { "Deny".into() };
                    if !self.send(MsgType::InviteRes, sid, payload.as_bytes()) {
                        self.emit(&format!("error {name} not connected"));
                    } else if cmd == "/accept" {
                        self.request_status(sid, true);
                    }
                    self.invites.remove(&sid);
                }
                None => self.emit(&format!("error {name} usage: /{name} SID (16 hex digits)")),
            },
            "/msg" => {
                let (sid, text) = rest.split_once(' ').unwrap_or((rest, ""));
                match (sid_arg(sid), text.is_empty()) {
                    (Some(sid), false) => {
                        self.outgoing.push(OutgoingMsg { sid, text: text.to_string() });
                        if !self.sessions.contains_key(&sid) {
                            self.request_status(sid, true);
                        }
                        self.flush_outgoing();
                    }
                    _ => self.emit("error msg usage: /msg SID TEXT"),
                }
            }
            "/close" => match sid_arg(rest) {
                Some(sid) => {
                    if self.send(MsgType::CloseReq, sid, b"") {
                        *self.closes.entry(sid).or_default() += 1;
                    } else {
                        self.emit("error close not connected");
                    }
                }
                None => self.emit("error close usage: /close SID"),
            },
            "/status" => {
                let sid = if rest.trim().is_empty() { Some(0) } else { sid_arg(rest) };
                match sid {
                    Some(sid) => {
                        if !self.send(MsgType::StatusReq, sid, b"") {
                            self.emit("error status not connected");
                        } else {
                            *self.status_wanted.entry(sid).or_default() += 1;
                        }
                    }
                    None => self.emit("error status usage: /status [SID]"),
                }
            }
            "/trust" => {
                // Trust exactly the key the last key-changed line for this name showed.
                let who = rest.trim();
                match self.offered.remove(who) {
                    Some(key) => match self.pins.trust(who, &key) {
                        Ok(()) => {
                            self.warned.retain(|(n, _)| n != who);
                            self.emit(&format!("trusted {} {}", who, key.fingerprint()));
                            self.flush_incoming();
                        }
                        Err(e) => self.emit(&format!("error trust {}", escape(&e.to_string()))),
                    },
                    None => self.emit(&format!("error trust no changed key to trust for {}", escape(who))),
                }
            }
            _ => self.emit(&format!(
                "error {} unknown command; use /init /accept /decline /msg /close /status /trust /quit",
                escape(name)
            )),
        }
        true
    }

    /// The key of `name` if it may be used: pinned on first use, refused while changed.
    fn usable_key(&mut self, name: &str, key_b64: &str) -> Option<RsaPublic> {
        self.check_key(name, key_b64).ok()
    }

    /// Checks `name`'s key against its pin. `Err(true)` means the key changed and waits
    /// for `/trust`; `Err(false)` that it is unusable (invalid, or the pin file failed).
    fn check_key(&mut self, name: &str, key_b64: &str) -> Result<RsaPublic, bool> {
        let key = RsaPublic::from_base64(key_b64).map_err(|_| false)?;
        // Our own name is pinned to our own key: the server cannot add a second "us".
        if name == self.config.user {
            if key == self.my_public {
                return Ok(key);
            }
            if self.warned.insert((name.to_string(), key.fingerprint())) {
                self.emit(&format!(
                    "error key the server lists a key that is not yours under your name {}",
                    escape(name)
                ));
            }
            return Err(false);
        }
        // A key belongs to one name: the server cannot relabel a known key.
        if let Some(owner) = self.pins.name_of(&key).filter(|owner| *owner != name) {
            if self.warned.insert((name.to_string(), key.fingerprint())) {
                self.emit(&format!(
                    "error key the server offers the key of {} under the name {}",
                    escape(owner),
                    escape(name)
                ));
            }
            return Err(false);
        }
        match self.pins.check(name, &key) {
            Ok(PinStatus::New) | Ok(PinStatus::Match) => Ok(key),
            Ok(PinStatus::Changed {
                old_fingerprint,
                new_fingerprint,
            }) => {
                self.offered.insert(name.to_string(), key.clone());
                if self
                    .warned
                    .insert((name.to_string(), new_fingerprint.clone()))
                {
                    self.emit(&format!(
                        "key-changed {} {} {}",
                        escape(name),
                        old_fingerprint,
                        new_fingerprint
                    ));
                }
                Err(true)
            }
            Err(e) => {
                self.emit(&format!("error key {}", escape(&e.to_string())));
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
                    self.emit(&format!(
                        "error msg {} not a participant",
                        encoding::id_hex(m.sid)
                    ));
                }
                continue;
            };
            let mut keys = Vec::new();
            let me = self.uid;
            let my_name = self.config.user.clone();
            for member in view
                .members
                .iter()
                .filter(|p| p.answer == "accepted" && p.uid != me && p.name != my_name)
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
                self.emit(&format!(
                    "error msg {} nobody to encrypt to yet",
                    encoding::id_hex(m.sid)
                ));
                continue;
            }
            let recipients: Vec<(u64, &RsaPublic)> = keys.iter().map(|(u, k)| (*u, k)).collect();
            match e2e::seal(m.sid, self.uid, &self.my_key, &recipients, &m.text) {
                Ok(env) => {
                    if self.send(MsgType::MsgReq, m.sid, &env) {
                        self.msgs.entry(m.sid).or_default().push_back(());
                    } else {
                        self.emit(&format!(
                            "error msg {} not connected",
                            encoding::id_hex(m.sid)
                        ));
                    }
                }
                Err(e) => self.emit(&format!("error msg {} {}", encoding::id_hex(m.sid), e)),
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
            let sid_hex = encoding::id_hex(m.sid);
            let Some(author) = author else {
                if self.status_quiet.get(&m.sid).copied().unwrap_or(0) > 0 {
                    blocked.insert(m.sid);
                    self.incoming.push(m);
                } else {
                    self.emit(&format!(
                        "error msg {sid_hex} message from an unknown author"
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
                        self.emit(&format!(
                            "error msg {sid_hex} message from {} held until /trust {}",
                            escape(&author.name),
                            escape(&author.name)
                        ));
                    }
                    blocked.insert(m.sid);
                    self.incoming.push(m);
                }
                _ => {
                    self.emit(&format!(
                        "error msg {sid_hex} no usable key for {}",
                        escape(&author.name)
                    ));
                    self.done_with(m.sid, m.n);
                }
            }
        }
    }

    fn open_message(&mut self, m: IncomingMsg, author: &Member, key: &RsaPublic) {
        let sid_hex = encoding::id_hex(m.sid);
        match e2e::open(m.sid, m.author, key, self.uid, &self.my_key, &m.envelope) {
            Ok(opened) => {
                if !self.guard.contains(m.sid, m.author, &opened.msg_id) {
                    self.emit(&format!(
                        "msg {sid_hex} {} {}",
                        escape(&author.name),
                        escape(&opened.text)
                    ));
                    if let Err(e) =
                        self.guard
                            .append(&self.guard_path, m.sid, m.author, opened.msg_id)
                    {
                        self.emit(&format!(
                            "error msg cannot record the message as seen: {}",
                            escape(&e.to_string())
                        ));
                    }
                } else {
                    self.emit(&format!(
                        "error msg {sid_hex} replayed message from {}",
                        escape(&author.name)
                    ));
                }
            }
            Err(e) => self.emit(&format!(
                "error msg {sid_hex} {e} (from {})",
                escape(&author.name)
            )),
        }
        self.done_with(m.sid, m.n);
    }

    /// Records `n` as handled in `sid` and acknowledges it.
    fn done_with(&mut self, sid: u64, n: u64) {
        let last = self.received.last.entry(sid).or_insert(0);
        if n > *last {
            *last = n;
            let _ = self.received.save();
        }
        self.send(MsgType::MsgRes, sid, format!("OK {n}").as_bytes());
    }

    fn frame(&mut self, h: Header, payload: Vec<u8>) {
        let sid_hex = encoding::id_hex(h.sid);
        let text = String::from_utf8_lossy(&payload).into_owned();
        match h.typ {
            MsgType::InitRes => {
                self.inits = self.inits.saturating_sub(1);
                if text == "OK" {
                    self.emit(&format!("init {sid_hex} ok"));
                } else {
                    self.emit(&format!(
                        "error init {}",
                        escape(text.trim_start_matches("error: "))
                    ));
                }
            }
            MsgType::InviteReq => {
                self.invites.insert(h.sid);
                self.request_status(h.sid, true);
            }
            MsgType::MsgReq => {
                if payload.len() < 8 {
                    self.emit(&format!("error msg {sid_hex} malformed delivery"));
                    return;
                }
                let n = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
                if self
                    .received
                    .last
                    .get(&h.sid)
                    .is_some_and(|&last| n <= last)
                {
                    // A redelivery of something already shown: acknowledge it again.
                    self.send(MsgType::MsgRes, h.sid, format!("OK {n}").as_bytes());
                    return;
                }
                if self.incoming.iter().any(|m| m.sid == h.sid && m.n == n) {
                    return;
                }
                if self.incoming.len() >= MAX_WAITING_MESSAGES {
                    // Not acknowledged: the server keeps it and delivers it again.
                    self.emit(&format!(
                        "error msg {sid_hex} too many messages waiting; will retry at next login"
                    ));
                    return;
                }
                self.incoming.push(IncomingMsg {
                    sid: h.sid,
                    author: h.uid,
                    n,
                    envelope: payload[8..].to_vec(),
                });
                let known = self
                    .sessions
                    .get(&h.sid)
                    .is_some_and(|s| s.members.iter().any(|p| p.uid == h.uid));
                if !known && self.status_quiet.get(&h.sid).copied().unwrap_or(0) == 0 {
                    self.request_status(h.sid, true);
                }
                self.flush_incoming();
            }
            MsgType::MsgRes => {
                if let Some(q) = self.msgs.get_mut(&h.sid) {
                    q.pop_front();
                }
                match text.strip_prefix("OK ") {
                    Some(n) => self.emit(&format!("sent {sid_hex} {}", escape(n))),
                    None => self.emit(&format!(
                        "error msg {sid_hex} {}",
                        escape(text.trim_start_matches("error: "))
                    )),
                }
            }
            MsgType::CloseReq => {
                self.sessions.remove(&h.sid);
                self.emit(&format!("closed {sid_hex}"));
            }
            MsgType::CloseRes => {
                if let Some(c) = self.closes.get_mut(&h.sid) {
                    *c = c.saturating_sub(1);
                }
                if text == "OK" {
                    self.sessions.remove(&h.sid);
                    self.emit(&format!("closed {sid_hex}"));
                } else {
                    self.emit(&format!(
                        "error close {sid_hex} {}",
                        escape(text.trim_start_matches("error: "))
                    ));
                }
            }
            MsgType::StatusReq => {
                // The server's heartbeat.
                self.send(MsgType::StatusRes, 0, b"Online");
            }
            MsgType::StatusRes => self.status(h.sid, &text),
            MsgType::InitReq | MsgType::InviteRes => {
                self.emit(&format!(
                    "error server sent an unexpected message type {:04x}",
                    h.typ.code()
                ));
            }
        }
    }

    fn status(&mut self, sid: u64, text: &str) {
        let sid_hex = encoding::id_hex(sid);
        let take = |m: &mut HashMap<u64, usize>| match m.get_mut(&sid) {
            Some(c) if *c > 0 => {
                *c -= 1;
                true
            }
            _ => false,
        };
        let wanted = take(&mut self.status_wanted);
        let quiet = !wanted && take(&mut self.status_quiet);
        if sid == 0 {
            if let Some(body) = text.strip_prefix("OK\n") {
                if wanted {
                    let lines: Vec<String> = body
                        .lines()
                        .map(|l| format!("status {}", escape(l)))
                        .collect();
                    if lines.is_empty() {
                        self.emit("status none");
                    }
                    for l in lines {
                        self.emit(&l);
                    }
                }
            } else if wanted {
                self.emit(&format!(
                    "error status {}",
                    escape(text.trim_start_matches("error: "))
                ));
            }
            return;
        }
        match parse_session_status(text) {
            Some((view, lines)) => {
                // Learn the members' keys (pinning on first use) as soon as they appear.
                let members: Vec<(String, String)> = view
                    .members
                    .iter()
                    .filter(|m| m.uid != self.uid)
                    .filter_map(|m| m.key.clone().map(|k| (m.name.clone(), k)))
                    .collect();
                self.sessions.insert(sid, view.clone());
                for (name, key) in members {
                    let _ = self.usable_key(&name, &key);
                }
                if self.invites.remove(&sid) {
                    self.emit(&format!("invite {sid_hex} {}", escape(&view.creator)));
                }
                if wanted {
                    for l in lines {
                        self.emit(&format!("status {sid_hex} {}", escape(&l)));
                    }
                }
            }
            None => {
                let reason = text.trim_start_matches("error: ").to_string();
                if wanted {
                    self.emit(&format!("error status {sid_hex} {}", escape(&reason)));
                }
                if self.invites.remove(&sid) {
                    self.emit(&format!("invite {sid_hex} ?"));
                }
                if quiet && reason == "session closed" {
                    self.sessions.remove(&sid);
                }
            }
        }
        self.flush_outgoing();
        self.flush_incoming();
    }

    /// Forgets requests whose answers were lost with the connection.
    fn connection_lost(&mut self) {
        let lost = self.outstanding() - self.outgoing.len();
        self.inits = 0;
        self.msgs.clear();
        self.closes.clear();
        self.status_wanted.clear();
        self.status_quiet.clear();
        if lost > 0 {
            self.emit(&format!(
                "error connection lost with {lost} request(s) unanswered"
            ));
        }
        for m in std::mem::take(&mut self.outgoing) {
            self.emit(&format!(
                "error msg {} not sent: connection lost",
                encoding::id_hex(m.sid)
            ));
        }
        self.incoming.clear();
    }
}

/// Runs the client until `/quit`, or end of input with every reply in. Events go to
/// `out`, one per line.
pub fn run(
    config: Config,
    password: &str,
    input: impl BufRead + Send + 'static,
    out: impl Write,
) -> Result<(), ClientError> {
    let my_key = pins::load_own_key(&config.config_dir).map_err(|e| ClientError(e.to_string()))?;
    let pins = KnownKeys::load(&config.config_dir.join(pins::KNOWN_KEYS_FILE))
        .map_err(|e| ClientError(e.to_string()))?;
    let guard_path = config.config_dir.join(pins::SEEN_FILE);
    let guard = ReplayGuard::load(&guard_path).map_err(|e| {
        ClientError(format!(
            "cannot read the seen-message file: {e}; move it away to start afresh (copies of older messages then go undetected)"
        ))
    })?;
    let received = Received::load(config.config_dir.join(RECEIVED_FILE));
    let (link, receiver, uid) = connect(&config, password)?;
    let (tx, rx) = mpsc::channel();
    let mut generation = 0;
    spawn_reader(
        link.stream
            .try_clone()
            .map_err(|e| ClientError(e.to_string()))?,
        receiver,
        generation,
        tx.clone(),
    );
    spawn_stdin(input, tx.clone());
    let my_public = my_key.public();
    let my_key_b64 = my_public.to_base64();
    let mut c = Client {
        out,
        config,
        uid,
        my_key,
        my_key_b64,
        pins,
        guard,
        guard_path,
        received,
        link: Some(link),
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
        my_public,
    };
    let mut input_done = false;
    let mut backoff = RECONNECT_MIN;
    loop {
        if input_done && c.outstanding() == 0 {
            return Ok(());
        }
        let event = match rx.recv() {
            Ok(e) => e,
            Err(_) => return Ok(()),
        };
        match event {
            Event::Line(l) => {
                if !c.command(&l) {
                    return Ok(());
                }
            }
            Event::Eof => input_done = true,
            Event::Frame(h, p) => {
                backoff = RECONNECT_MIN;
                c.frame(h, p)
            }
            Event::Lost(g, why) if g == generation => {
                c.link = None;
                c.connection_lost();
                if input_done {
                    return Err(ClientError(format!("connection lost: {why}")));
                }
                c.emit(&format!("error connection {}; reconnecting", escape(&why)));
                // Reconnect with backoff; stdin lines keep queueing meanwhile.
                let started = Instant::now();
                loop {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    match connect(&c.config, password) {
                        Ok((link, receiver, _)) => {
                            generation += 1;
                            if let Ok(s) = link.stream.try_clone() {
                                spawn_reader(s, receiver, generation, tx.clone());
                            }
                            c.link = Some(link);
                            c.emit("connected");
                            break;
                        }
                        Err(e) => {
                            log::debug!("reconnect failed after {:?}: {e}", started.elapsed());
                        }
                    }
                }
            }
            Event::Lost(..) => {}
        }
    }
}

/// Reads the first line of a password file.
pub fn read_password_file(path: &Path) -> Result<String, ClientError> {
    let f = std::fs::File::open(path).map_err(|e| {
        ClientError(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?;
    crate::cli::read_password_line(io::BufReader::new(f)).map_err(|e| {
        ClientError(format!(
            "cannot read a password from {}: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("example.org"), "example.org:5150");
        assert_eq!(with_default_port("example.org:7000"), "example.org:7000");
        assert_eq!(with_default_port("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
    }

    #[test]
    fn session_status_parses_members_and_keys() {
        let (view, lines) = parse_session_status(
            "OK\nlive alice\nalice 000000000000000a accepted online 0 KEYA\nbob 000000000000000b invited offline 0\n",
        )
        .unwrap();
        assert_eq!(view.creator, "alice");
        assert_eq!(view.members.len(), 2);
        assert_eq!(view.members[0].key.as_deref(), Some("KEYA"));
        assert_eq!(view.members[1].key, None);
        assert_eq!(lines[1], "alice 000000000000000a accepted online 0");
        assert!(parse_session_status("error: not a participant").is_none());
    }
}
