//! The client's shell: threads, the connection (connect, login, reconnect with
//! backoff), standard input and output, and the config directory's files, around the
//! I/O-free core in [`state`].
//!
//! Two fronts share one loop: script mode ([`run`]) reads command lines and writes
//! each event's line ([`Event::script_line`]); interactive mode ([`run_interactive`])
//! reads a terminal's keys into an input line ([`editor`]) and shows events above it
//! ([`screen`], [`render`]).
//!
//! Threads: one reads stdin (lines, or keys), one reads and opens frames from the
//! server (it owns the receiving MTP state), and while the connection is away one
//! logs in again (waiting from half a second, doubling, up to [`RECONNECT_MAX`]); the
//! main thread owns the sending MTP state, the core and the files, and is the only one
//! that writes to stdout. Each event becomes an [`Input`] for [`Core::handle`], and the
//! main thread carries out the [`Output`]s it returns strictly in order, each finished
//! (a line flushed, a file synced) before the next starts: that order is what makes a
//! crash cost at most a redelivery, never a lost message (see [`state`]). Lines that
//! come while the connection is away wait, in order, until it is back.
//!
//! This module holds no protocol rule: what a line or a frame means is decided in
//! [`state`], how a file is laid out in [`store`], [`crate::pins`] and [`crate::e2e`].
//! It never prints anything but the core's events on stdout (diagnostics go to the
//! log).

pub mod editor;
pub mod event;
pub mod names;
pub mod render;
pub mod screen;
pub mod state;
pub mod store;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::crypto::{CryptoError, RsaPublic};
use crate::login::{ClientLogin, Established, LoginError};
use crate::mtp::{self, Header, MsgType, ReadError};
use editor::Action;
use screen::Screen;
use state::{BadLine, Core, Input, Output};
use store::Store;

pub use event::{Event, Listed};
pub use state::{check_session_status, escape, MAX_LINE_LEN, MAX_WAITING_MESSAGES};
pub use store::RECEIVED_FILE;

/// Default server port.
pub const DEFAULT_PORT: u16 = 5150;
/// How long a connection attempt or a login may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before reconnecting after a lost connection; doubled up to the maximum.
pub const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts: the client is back within about this
/// long (plus a login) of the server coming back.
pub const RECONNECT_MAX: Duration = Duration::from_secs(4);

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

/// Why the client stopped with a failure, by who is likely at fault. The message says
/// what went wrong and, where there is something to do, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The user's command line or config directory: a `--server` that does not
    /// resolve, a password or server key that cannot be used, a missing key or a damaged
    /// state file in the config directory.
    Config(String),
    /// The server, or the way to it: unreachable, the login refused or answered
    /// wrongly (also what a wrong password or `--server-key` looks like, since a server
    /// refuses without saying why), or the connection lost after the end of input.
    Server(String),
    /// The local system: the random number generator, or a socket that cannot be used.
    System(String),
}

impl ClientError {
    /// The message, without who is at fault.
    pub fn message(&self) -> &str {
        match self {
            ClientError::Config(m) | ClientError::Server(m) | ClientError::System(m) => m,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ClientError {}

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

/// A logged-in connection: the socket, the sending MTP state, and our uid.
struct Link {
    stream: TcpStream,
    sender: mtp::Sender,
    uid: u64,
}

/// A reader that keeps the first bytes it reads, to say what a server that is not
/// mpchatd answered.
struct Peek<'a> {
    inner: &'a mut TcpStream,
    first: Vec<u8>,
}

impl Peek<'_> {
    /// Bytes kept.
    const KEEP: usize = 40;
}

impl Read for Peek<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let room = Self::KEEP.saturating_sub(self.first.len());
        self.first.extend_from_slice(&buf[..n.min(room)]);
        Ok(n)
    }
}

/// Connects and logs in. The receiving MTP state is returned for the reader thread.
fn connect(config: &Config, password: &str) -> Result<(Link, mtp::Receiver), ClientError> {
    login(config, password, dial(config)?)
}

/// Opens a TCP connection to the server.
fn dial(config: &Config) -> Result<TcpStream, ClientError> {
    let addrs: Vec<_> = config
        .server
        .to_socket_addrs()
        .map_err(|e| {
            ClientError::Config(format!(
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
    stream.ok_or_else(|| {
        ClientError::Server(format!(
            "cannot connect to {}: {}; check that mpchatd runs there and the port is right",
            config.server,
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no address".into())
        ))
    })
}

/// Logs in on a new connection.
fn login(
    config: &Config,
    password: &str,
    mut stream: TcpStream,
) -> Result<(Link, mtp::Receiver), ClientError> {
    let _ = stream.set_nodelay(true);
    let (frame, expect) = ClientLogin::start(&config.server_key, &config.user, password, now_ns())
        .map_err(|e| {
            let message = format!("cannot build the login request: {e}");
            match e {
                LoginError::Crypto(CryptoError::Rng) => ClientError::System(message),
                _ => ClientError::Config(message),
            }
        })?;
    stream.write_all(&frame).map_err(|e| {
        ClientError::Server(format!(
            "cannot send the login request to {}: {e}",
            config.server
        ))
    })?;
    let _ = stream.set_read_timeout(Some(CONNECT_TIMEOUT));
    let mut peek = Peek {
        inner: &mut stream,
        first: Vec::new(),
    };
    let read = mtp::read_frame(&mut peek);
    if read.is_err() && !peek.first.is_empty() && !peek.first.starts_with(&[1, 0]) {
        // Not the start of an MTP frame: another kind of server answered.
        return Err(ClientError::Server(format!(
            "{} is not an mpchat server: it answered \"{}\" where mpchatd's login reply starts with the bytes 01 00; check --server HOST[:PORT] (mpchatd listens on port {DEFAULT_PORT} by default)",
            config.server,
            escape(&String::from_utf8_lossy(&peek.first))
        )));
    }
    let reply = read.map_err(|e| match e {
        ReadError::Eof | ReadError::Io(_) => ClientError::Server(format!(
            "login to {} refused: wrong user name or password, a clock more than 30 s off, or a server key that does not match --server-key",
            config.server
        )),
        ReadError::Idle => {
            ClientError::Server(format!("no login answer from {} in time", config.server))
        }
        ReadError::Mtp(e) => {
            ClientError::Server(format!("invalid login answer from {}: {e}", config.server))
        }
    })?;
    let Established {
        uid,
        sender,
        receiver,
    } = expect.finish(&reply).map_err(|e| {
        ClientError::Server(format!(
            "invalid login answer from {}: {e}; is --server-key the right key?",
            config.server
        ))
    })?;
    let _ = stream.set_read_timeout(None);
    Ok((
        Link {
            stream,
            sender,
            uid,
        },
        receiver,
    ))
}

/// What the main loop reacts to.
enum Happening {
    /// From the stdin thread (script mode).
    Input(Input),
    /// From the stdin thread (interactive mode): keys as the terminal sent them.
    Keys(Vec<u8>),
    /// From the current connection's reader thread: an opened frame.
    Frame(Header, Vec<u8>),
    /// From the reader thread of connection number `.0`: its end, and why.
    Lost(u64, String),
    /// From the reconnecting thread: logged in again, with the backoff it reached.
    Back(Box<(Link, mtp::Receiver)>, Duration),
}

/// Reads and opens frames from connection `generation` until it fails, then reports
/// why. A frame that fails an MTP check closes the connection.
fn spawn_reader(
    mut stream: TcpStream,
    mut receiver: mtp::Receiver,
    generation: u64,
    tx: mpsc::Sender<Happening>,
) {
    std::thread::spawn(move || loop {
        let frame = match mtp::read_frame(&mut stream) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Happening::Lost(generation, e.to_string()));
                return;
            }
        };
        match receiver.open(&frame) {
            Ok((h, p)) => {
                if tx.send(Happening::Frame(h, p)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // MTP: a frame that fails a check closes the connection.
                let _ = stream.shutdown(Shutdown::Both);
                let _ = tx.send(Happening::Lost(
                    generation,
                    format!("rejected a frame from the server: {e}"),
                ));
                return;
            }
        }
    });
}

/// One line of input, as [`read_line`] found it.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A line of at most the limit, without its `\n`.
    Line(Vec<u8>),
    /// A line longer than the limit; it was read to its end and dropped.
    TooLong,
    /// The end of input, with no partial line before it.
    Eof,
}

/// Reads one line of at most `max` bytes (its `\n` not counted). A longer line is read
/// to its newline (or the end of input) and dropped whole, never split, so no tail of
/// it can run as a command; it costs at most `max` bytes of memory however long it is.
/// A last line without a newline counts as a line.
fn read_line(input: &mut impl BufRead, max: usize) -> io::Result<LineRead> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut started = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match (started, too_long) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line(line),
            });
        }
        started = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = newline.map_or(buf.len(), |i| i + 1);
        input.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line(line)
            });
        }
    }
}

/// Reads stdin lines for the core: each line whole, or one [`BadLine`] for a line that
/// is too long or not UTF-8, then the end of input (a read error counts as the end).
fn spawn_stdin(mut input: impl BufRead + Send + 'static, tx: mpsc::Sender<Happening>) {
    std::thread::spawn(move || loop {
        let next = match read_line(&mut input, MAX_LINE_LEN) {
            Ok(LineRead::Eof) | Err(_) => {
                let _ = tx.send(Happening::Input(Input::EndOfInput));
                return;
            }
            Ok(LineRead::TooLong) => Input::BadLine(BadLine::TooLong),
            Ok(LineRead::Line(bytes)) => match String::from_utf8(bytes) {
                Ok(mut line) => {
                    if line.ends_with('\r') {
                        line.pop();
                    }
                    Input::Line(line)
                }
                Err(_) => Input::BadLine(BadLine::NotUtf8),
            },
        };
        if tx.send(Happening::Input(next)).is_err() {
            return;
        }
    });
}

/// Where events go: lines on a pipe (script mode), or a person's screen.
enum Front<W: Write> {
    /// Script mode: each event's line ([`Event::script_line`]).
    Script(W),
    /// Interactive mode.
    Screen(Box<Screen>),
}

impl<W: Write> Front<W> {
    fn show(&mut self, event: &Event, core: &Core) {
        match self {
            Front::Script(out) => {
                if let Some(line) = event.script_line() {
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Front::Screen(screen) => screen.show(event, core),
        }
    }

    /// After a batch of outputs: the input line again.
    fn redraw(&mut self, core: &Core) {
        if let Front::Screen(screen) = self {
            screen.redraw(core);
        }
    }
}

/// What carries out the core's outputs: the connection, the front and the files.
struct Shell<W: Write> {
    front: Front<W>,
    store: Store,
    link: Option<Link>,
}

impl<W: Write> Shell<W> {
    /// Hands `input` to the core and carries out its outputs, in order. `Some` when
    /// the core exits.
    fn feed(&mut self, core: &mut Core, input: Input) -> Option<Result<(), ClientError>> {
        let outputs = core.handle(input, now_ns());
        let exit = self.carry_out(core, outputs);
        self.front.redraw(core);
        exit
    }

    fn carry_out(
        &mut self,
        core: &mut Core,
        outputs: Vec<Output>,
    ) -> Option<Result<(), ClientError>> {
        for output in outputs {
            match output {
                Output::Send { typ, sid, payload } => self.send(typ, sid, &payload),
                Output::Event(event) => self.front.show(&event, core),
                Output::Persist(what) => {
                    if let Err(error) = self.store.write(&what) {
                        // Reported at once, before the outputs that follow.
                        let failed = Input::PersistFailed {
                            file: what.file(),
                            error,
                        };
                        let outputs = core.handle(failed, now_ns());
                        if let Some(exit) = self.carry_out(core, outputs) {
                            return Some(exit);
                        }
                    }
                }
                Output::Exit(result) => return Some(result),
            }
        }
        None
    }

    /// Seals and writes one request. Without a connection (it failed a moment ago and
    /// its reader has not said so yet) the request is dropped: the core counts it as
    /// unanswered and reports it when it learns the connection is lost.
    fn send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) {
        let Some(link) = self.link.as_mut() else {
            log::debug!("no connection: {typ:?} for {sid:016x} dropped");
            return;
        };
        let written = link
            .sender
            .seal(typ, sid, link.uid, payload)
            .map_err(|e| e.to_string())
            .and_then(|frame| link.stream.write_all(&frame).map_err(|e| e.to_string()));
        if let Err(e) = written {
            log::debug!("cannot send {typ:?}: {e}; closing the connection");
            // The reader thread then sees the end and reports it.
            let _ = link.stream.shutdown(Shutdown::Both);
            self.link = None;
        }
    }
}

/// Logs in again after a lost connection, from a thread of its own so the screen
/// stays live: waits `backoff`, doubling it up to [`RECONNECT_MAX`] after each failed
/// attempt, and hands the new connection to the main loop. It stops when the main
/// loop is gone (`alive` false).
fn spawn_reconnect(
    config: Config,
    password: String,
    mut backoff: Duration,
    alive: Arc<AtomicBool>,
    tx: mpsc::Sender<Happening>,
) {
    std::thread::spawn(move || {
        let started = Instant::now();
        loop {
            std::thread::sleep(backoff);
            if !alive.load(Ordering::Relaxed) {
                return;
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
            match connect(&config, &password) {
                Ok((link, receiver)) => {
                    let _ = tx.send(Happening::Back(Box::new((link, receiver)), backoff));
                    return;
                }
                Err(e) => log::debug!("reconnect failed after {:?}: {e}", started.elapsed()),
            }
        }
    });
}

/// Reads the terminal's keys for the interactive screen, as they come. The end of
/// input (the terminal gone) is the end of input for the core.
fn spawn_keys(tx: mpsc::Sender<Happening>) {
    std::thread::spawn(move || {
        let mut stdin = io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Happening::Input(Input::EndOfInput));
                    return;
                }
                Ok(n) => n,
            };
            if tx.send(Happening::Keys(buf[..n].to_vec())).is_err() {
                return;
            }
        }
    });
}

/// Runs the client in script mode until `/quit`, or end of input with every reply
/// in. Events go to `out`, one line each ([`Event::script_line`]).
pub fn run(
    config: Config,
    password: &str,
    input: impl BufRead + Send + 'static,
    out: impl Write,
) -> Result<(), ClientError> {
    let (tx, rx) = mpsc::channel();
    let start = start(&config, password, false)?;
    spawn_stdin(input, tx.clone());
    main_loop(config, password, start, Front::Script(out), tx, rx)
}

/// Runs the client for a person at a terminal (standard input and output): an
/// input line that incoming events never overwrite, line editing and history, short
/// session names and a current session, local times and colours. See mpchat(1).
pub fn run_interactive(config: Config, password: &str) -> Result<(), ClientError> {
    let (tx, rx) = mpsc::channel();
    let start = start(&config, password, true)?;
    let mut screen = Screen::open().map_err(|e| {
        ClientError::System(format!(
            "cannot set up the terminal: {e}; run with --script to read commands line by line"
        ))
    })?;
    screen.show(
        &Event::LoggedIn {
            server: config.server.clone(),
            user: config.user.clone(),
            fingerprint: config.server_key.fingerprint(),
        },
        &start.0,
    );
    spawn_keys(tx.clone());
    main_loop(
        config,
        password,
        start,
        Front::<io::Stdout>::Screen(Box::new(screen)),
        tx,
        rx,
    )
}

/// A core and a connection, logged in.
type Started = (Core, Store, Link, mtp::Receiver);

/// Loads the config directory and logs in. A login the server refuses or answers
/// wrongly, with a server key that is a user's end-to-end key (ours, or one pinned),
/// is reported as that mix-up.
fn start(config: &Config, password: &str, interactive: bool) -> Result<Started, ClientError> {
    let store = Store::new(&config.config_dir);
    let (my_key, saved) = store.load()?;
    let mut core = Core::new(&config.user, my_key, saved);
    core.set_interactive(interactive);
    let stream = dial(config)?;
    let (link, receiver) = login(config, password, stream).map_err(|e| {
        let Some(owner) = core.key_owner(&config.server_key) else {
            return e;
        };
        let whose = if owner == config.user {
            "your own end-to-end key (key.pub)".to_string()
        } else {
            format!("the end-to-end key of user {}", escape(owner))
        };
        ClientError::Config(format!(
            "login to {} failed: the --server-key file holds {whose}, not the server's key; pass server.pub from the server's state directory (ask its operator)",
            config.server
        ))
    })?;
    Ok((core, store, link, receiver))
}

/// The main loop of both modes: events from the keys or stdin, the connection and
/// the reconnecting thread, handed to the core one at a time.
fn main_loop<W: Write>(
    config: Config,
    password: &str,
    (mut core, store, link, receiver): Started,
    front: Front<W>,
    tx: mpsc::Sender<Happening>,
    rx: mpsc::Receiver<Happening>,
) -> Result<(), ClientError> {
    let interactive = matches!(front, Front::Screen(_));
    let mut generation = 0;
    let reader = link.stream.try_clone().map_err(|e| {
        ClientError::System(format!(
            "cannot use the connection to {}: {e}",
            config.server
        ))
    })?;
    spawn_reader(reader, receiver, generation, tx.clone());
    let uid = link.uid;
    let mut shell = Shell {
        front,
        store,
        link: Some(link),
    };
    let alive = Arc::new(AtomicBool::new(true));
    // Stops the reconnecting thread however this function ends.
    struct Alive(Arc<AtomicBool>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    let _alive = Alive(alive.clone());
    if let Some(exit) = shell.feed(&mut core, Input::Connected { uid }) {
        return exit;
    }
    let mut backoff = RECONNECT_MIN;
    // Lines that came while the connection was away: handed to the core, in order,
    // once it is back (as they waited in the channel before).
    let mut waiting: VecDeque<Input> = VecDeque::new();
    let mut away = false;
    loop {
        let Ok(event) = rx.recv() else {
            return Ok(());
        };
        let inputs = match event {
            Happening::Input(input) => vec![input],
            Happening::Keys(bytes) => {
                let Front::Screen(screen) = &mut shell.front else {
                    continue;
                };
                let mut inputs = Vec::new();
                for action in screen.keys(&bytes) {
                    match action {
                        Action::Redraw => {}
                        Action::Submit(line) => inputs.push(Input::Line(line)),
                        Action::Quit => inputs.push(Input::Line("/quit".into())),
                    }
                }
                if inputs.is_empty() {
                    shell.front.redraw(&core);
                    continue;
                }
                inputs
            }
            Happening::Frame(h, p) => {
                backoff = RECONNECT_MIN;
                vec![Input::Frame(h, p)]
            }
            Happening::Lost(g, why) if g == generation => {
                shell.link = None;
                away = true;
                if let Some(exit) = shell.feed(&mut core, Input::Lost(why)) {
                    return exit;
                }
                if let Front::Screen(screen) = &mut shell.front {
                    screen.set_offline(true, 0);
                    screen.redraw(&core);
                }
                spawn_reconnect(
                    config.clone(),
                    password.to_string(),
                    backoff,
                    alive.clone(),
                    tx.clone(),
                );
                continue;
            }
            // A connection already replaced.
            Happening::Lost(..) => continue,
            Happening::Back(back, reached) => {
                let (link, receiver) = *back;
                backoff = reached;
                let reader = match link.stream.try_clone() {
                    Ok(r) => r,
                    Err(e) => {
                        log::debug!("cannot use the new connection: {e}");
                        spawn_reconnect(
                            config.clone(),
                            password.to_string(),
                            backoff,
                            alive.clone(),
                            tx.clone(),
                        );
                        continue;
                    }
                };
                generation += 1;
                spawn_reader(reader, receiver, generation, tx.clone());
                let uid = link.uid;
                shell.link = Some(link);
                away = false;
                if let Front::Screen(screen) = &mut shell.front {
                    screen.logged_in();
                }
                let mut inputs = vec![Input::Connected { uid }];
                inputs.extend(waiting.drain(..));
                inputs
            }
        };
        for input in inputs {
            // While the connection is away, lines wait for it; a person's /quit
            // (or Ctrl-D, or the terminal closing) does not.
            let quit = interactive
                && match &input {
                    Input::Line(l) => l.trim() == "/quit",
                    Input::EndOfInput => true,
                    _ => false,
                };
            if away && !quit && !matches!(input, Input::Connected { .. }) {
                waiting.push_back(input);
                if let Front::Screen(screen) = &mut shell.front {
                    screen.set_offline(true, waiting.len());
                    screen.redraw(&core);
                }
                continue;
            }
            if let Some(exit) = shell.feed(&mut core, input) {
                return exit;
            }
        }
    }
}

/// Reads the first line of a password file.
pub fn read_password_file(path: &Path) -> Result<String, ClientError> {
    let f = std::fs::File::open(path).map_err(|e| {
        ClientError::Config(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?;
    crate::cli::read_password_line(io::BufReader::new(f)).map_err(|e| {
        ClientError::Config(format!(
            "cannot read a password from {}: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("example.org"), "example.org:5150");
        assert_eq!(with_default_port("example.org:7000"), "example.org:7000");
        assert_eq!(with_default_port("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
    }

    /// Every line of `input` as [`read_line`] gives it, with a small reader buffer so
    /// lines span many reads.
    fn lines(input: &[u8], max: usize) -> Vec<LineRead> {
        let mut r = io::BufReader::with_capacity(3, input);
        let mut out = Vec::new();
        loop {
            match read_line(&mut r, max).unwrap() {
                LineRead::Eof => return out,
                l => out.push(l),
            }
        }
    }

    #[test]
    fn a_line_over_the_limit_is_dropped_whole_up_to_its_newline() {
        let line = |s: &str| LineRead::Line(s.as_bytes().to_vec());
        assert_eq!(
            lines(b"/msg x 0123456789/close y\n/status\n", 10),
            [LineRead::TooLong, line("/status")]
        );
        assert_eq!(
            lines(b"0123456789\n01234567890\n\nlast", 10),
            [
                line("0123456789"),
                LineRead::TooLong,
                line(""),
                line("last")
            ]
        );
        assert_eq!(lines(b"01234567890", 10), [LineRead::TooLong]);
        assert_eq!(lines(b"", 10), []);
    }

    #[test]
    fn a_megabyte_line_costs_no_more_than_the_limit() {
        let mut input = vec![b'x'; 1 << 20];
        input.extend_from_slice(b"\n/quit\n");
        assert_eq!(
            lines(&input, MAX_LINE_LEN),
            [LineRead::TooLong, LineRead::Line(b"/quit".to_vec())]
        );
    }
}
