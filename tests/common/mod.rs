//! Test harness: the real `mpchatd` on 127.0.0.1 port 0 in a temporary state
//! directory, real `mpchat` processes driven through pipes like netcat, and a raw
//! protocol client built from the library for frame-level tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mpchat::crypto::{RsaPrivate, RsaPublic};
use mpchat::login::{ClientLogin, Established};
use mpchat::mtp::{self, Header, MsgType};
use mpchat::proto::{InitReq, InviteRes};

/// PBKDF2 iterations for test accounts: low, so logins are cheap in tests.
pub const TEST_ITERATIONS: u32 = 1_000;
/// How long any single expectation may wait before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("mpchat-test-{tag}-{}-{n}-{t}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Collects a child's output lines into a channel and a shared transcript.
fn pump(out: impl Read + Send + 'static, transcript: Arc<Mutex<Vec<String>>>) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            transcript.lock().unwrap().push(line.clone());
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the child never blocks.
            }
        }
    });
    rx
}

/// A running `mpchatd`.
pub struct Server {
    child: Child,
    /// The bound address.
    pub addr: SocketAddr,
    /// The state directory.
    pub state: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server in a new state directory with extra `args`.
    pub fn start(args: &[&str]) -> Server {
        Server::start_in(&temp_dir("state"), args)
    }

    /// Starts a server on `state` with extra `args`.
    pub fn start_in(state: &Path, args: &[&str]) -> Server {
        Server::spawn(Command::new(env!("CARGO_BIN_EXE_mpchatd")), state, args)
    }

    /// Starts a server through `sh -c SCRIPT mpchatd ARGS...`, where the script ends
    /// with `exec "$0" "$@"` (to set limits such as `ulimit -f` first).
    pub fn start_wrapped(state: &Path, script: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg(env!("CARGO_BIN_EXE_mpchatd"));
        Server::spawn(cmd, state, args)
    }

    fn spawn(mut cmd: Command, state: &Path, args: &[&str]) -> Server {
        let mut child = cmd
            .arg("--state-dir")
            .arg(state)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mpchatd");
        let log = Arc::new(Mutex::new(Vec::new()));
        let _stderr = pump(child.stderr.take().unwrap(), log.clone());
        let stdout = pump(
            child.stdout.take().unwrap(),
            Arc::new(Mutex::new(Vec::new())),
        );
        let line = stdout
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "mpchatd did not say where it listens; log: {:?}",
                    log.lock().unwrap()
                )
            });
        let addr = line
            .strip_prefix("listening on ")
            .expect("listening line")
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            state: state.to_path_buf(),
            log,
        }
    }

    /// Adds an account with a low iteration count; returns its uid.
    pub fn add_user(&self, name: &str, password: &str) -> u64 {
        mpchat::accounts::add_user(&self.state, name, password, TEST_ITERATIONS).unwrap()
    }

    /// The server's public key file.
    pub fn server_pub(&self) -> PathBuf {
        self.state.join("server.pub")
    }

    /// The server's public key.
    pub fn public_key(&self) -> RsaPublic {
        mpchat::crypto::read_public_key(&self.server_pub()).unwrap()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A user for client processes: name, password file and config directory with a key.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub uid: u64,
    pub password_file: PathBuf,
    pub config_dir: PathBuf,
}

/// Creates accounts and end-to-end keys for `names` (keys made in parallel).
pub fn users(server: &Server, names: &[&str]) -> Vec<User> {
    let base = temp_dir("users");
    let made: Vec<User> = names
        .iter()
        .map(|name| {
            let password = format!("pw-{name}-secret");
            let uid = server.add_user(name, &password);
            let password_file = base.join(format!("{name}.pw"));
            std::fs::write(&password_file, format!("{password}\n")).unwrap();
            User {
                name: name.to_string(),
                uid,
                password_file,
                config_dir: base.join(format!("cfg-{name}")),
            }
        })
        .collect();
    let chunks: Vec<Vec<PathBuf>> = {
        let dirs: Vec<PathBuf> = made.iter().map(|u| u.config_dir.clone()).collect();
        let n = dirs.len().div_ceil(2).max(1);
        dirs.chunks(n).map(|c| c.to_vec()).collect()
    };
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                for dir in chunk {
                    mpchat::pins::keygen(&dir, 2048).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    made
}

/// A running `mpchat`, driven through its stdin and stdout.
pub struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    unmatched: std::collections::VecDeque<String>,
    transcript: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pub name: String,
}

impl Client {
    /// Starts `mpchat` for `user` against `server`.
    pub fn start(server: &Server, user: &User) -> Client {
        Client::start_at(&server.addr.to_string(), &server.server_pub(), user)
    }

    /// Starts `mpchat` for `user` against an address and server key.
    pub fn start_at(addr: &str, server_pub: &Path, user: &User) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mpchat"))
            .args(["--server", addr, "--user", &user.name])
            .arg("--server-key")
            .arg(server_pub)
            .arg("--password-file")
            .arg(&user.password_file)
            .arg("--config-dir")
            .arg(&user.config_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mpchat");
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = pump(child.stdout.take().unwrap(), transcript.clone());
        let _ = pump(child.stderr.take().unwrap(), stderr.clone());
        Client {
            stdin: child.stdin.take(),
            child,
            lines,
            unmatched: Default::default(),
            transcript,
            stderr,
            name: user.name.clone(),
        }
    }

    /// Writes one command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Writes raw bytes to stdin as they are (no newline added, any bytes at all).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Takes the first not yet taken line for which `pred` holds, waiting for it if
    /// need be; lines that do not match stay available to later expectations.
    pub fn expect_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(i) = self.unmatched.iter().position(|l| pred(l)) {
            return self.unmatched.remove(i).unwrap_or_default();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => self.unmatched.push_back(line),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: no line {what} within {WAIT:?}\ntranscript: {:#?}\nstderr: {:#?}",
                    self.name,
                    self.transcript.lock().unwrap(),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Waits for a line starting with `prefix`.
    pub fn expect(&mut self, prefix: &str) -> String {
        self.expect_where(&format!("starting {prefix:?}"), |l| l.starts_with(prefix))
    }

    /// Every line printed so far.
    pub fn transcript(&self) -> Vec<String> {
        self.transcript.lock().unwrap().clone()
    }

    /// Closes stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Closes stdin and waits for the process to exit (at most [`WAIT`]).
    pub fn finish(mut self) -> (ExitStatus, Vec<String>) {
        self.close_stdin();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the pump thread collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.transcript());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit at end of input; transcript: {:#?}",
                    self.name,
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the client with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The session id in an `init SID ok` or `invite SID FROM` line.
pub fn sid_of(line: &str) -> String {
    line.split(' ').nth(1).expect("a sid").to_string()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A protocol-level client built from the library, for frame-level tests.
pub struct Raw {
    pub name: String,
    pub stream: TcpStream,
    pub sender: mtp::Sender,
    pub receiver: mtp::Receiver,
    pub uid: u64,
}

impl Raw {
    /// Connects and logs in.
    pub fn login(server: &Server, user: &str, password: &str) -> Raw {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let (frame, expect) =
            ClientLogin::start(&server.public_key(), user, password, now_ns()).unwrap();
        stream.write_all(&frame).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let reply = mtp::read_frame(&mut stream).expect("login_res");
        let Established {
            uid,
            sender,
            receiver,
        } = expect.finish(&reply).unwrap();
        Raw {
            name: user.to_string(),
            stream,
            sender,
            receiver,
            uid,
        }
    }

    /// Connects and logs in; `None` if the server closes the connection instead.
    pub fn try_login(server: &Server, user: &str, password: &str) -> Option<Raw> {
        Raw::try_login_with_key(server, &server.public_key(), user, password)
    }

    /// [`Raw::try_login`] with the login request encrypted to `server_key` (which
    /// need not be the one in the server's `server.pub`).
    pub fn try_login_with_key(
        server: &Server,
        server_key: &RsaPublic,
        user: &str,
        password: &str,
    ) -> Option<Raw> {
        let mut stream = TcpStream::connect(server.addr).ok()?;
        let (frame, expect) = ClientLogin::start(server_key, user, password, now_ns()).ok()?;
        stream.write_all(&frame).ok()?;
        stream.set_read_timeout(Some(WAIT)).ok()?;
        let reply = mtp::read_frame(&mut stream).ok()?;
        let Established {
            uid,
            sender,
            receiver,
        } = expect.finish(&reply).ok()?;
        Some(Raw {
            name: user.to_string(),
            stream,
            sender,
            receiver,
            uid,
        })
    }

    /// Seals and sends one frame with this user's uid in the header.
    pub fn send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) {
        let frame = self.sender.seal(typ, sid, self.uid, payload).unwrap();
        self.stream.write_all(&frame).unwrap();
    }

    /// Like [`Raw::send`], but reports a broken connection instead of panicking.
    pub fn try_send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) -> std::io::Result<()> {
        let frame = self
            .sender
            .seal(typ, sid, self.uid, payload)
            .map_err(std::io::Error::other)?;
        self.stream.write_all(&frame)
    }

    /// The next frame, or `None` if the connection ended or the read timed out.
    pub fn try_recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let frame = mtp::read_frame(&mut self.stream).ok()?;
        self.receiver.open(&frame).ok()
    }

    /// Receives and opens the next frame.
    pub fn recv(&mut self) -> (Header, Vec<u8>) {
        let frame = mtp::read_frame(&mut self.stream).expect("a frame");
        self.receiver.open(&frame).expect("a valid frame")
    }

    /// Receives frames until one of type `typ` arrives.
    pub fn recv_type(&mut self, typ: MsgType) -> (Header, Vec<u8>) {
        loop {
            let (h, p) = self.recv();
            if h.typ == typ {
                return (h, p);
            }
        }
    }

    /// Whether the server has closed this connection (reads until EOF or error,
    /// answering nothing, within `within`).
    pub fn is_closed_within(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// Reads from a raw socket until the peer closes it; true if closed within `within`.
pub fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

impl Server {
    /// The server's process id (for checks on its threads and open descriptors).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A valid public key line for `name`'s init and accept requests: one key per user
/// name, made once per test process. The server binds each account to the first key
/// it presents and refuses a key another account owns, so users never share one
/// (what is inside the envelopes does not matter to the server).
pub fn key_for(name: &str) -> String {
    static KEYS: OnceLock<Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    if let Some(k) = keys.lock().unwrap().get(name) {
        return k.clone();
    }
    // Made outside the lock: two threads may both make one; the first stored wins.
    let made = RsaPrivate::generate(2048).unwrap().public().to_base64();
    keys.lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert(made)
        .clone()
}

pub fn text(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// `a` creates a session with `others`, who all accept; returns its sid.
pub fn session(a: &mut Raw, others: &mut [&mut Raw]) -> u64 {
    let init = InitReq {
        key: key_for(&a.name),
        invitees: others.iter().map(|r| r.name.clone()).collect(),
    };
    a.send(InitReq::TYPE, 0, &init.encode());
    let mut sid = 0;
    for o in others.iter_mut() {
        let (h, _) = o.recv_type(MsgType::InviteReq);
        sid = h.sid;
        let accept = InviteRes::Accept(key_for(&o.name));
        o.send(InviteRes::TYPE, sid, &accept.encode());
    }
    let (h, p) = a.recv_type(MsgType::InitRes);
    assert_eq!(text(&p), "OK");
    assert_eq!(h.sid, sid);
    sid
}

/// Starts `n` clients named `{prefix}{i:02}`, the first creating a session with all the
/// others, who accept; returns once every client's status shows every member accepted
/// (so everyone knows everyone's key). Returns the clients, their names and the sid.
pub fn group(server: &Server, prefix: &str, n: usize) -> (Vec<Client>, Vec<String>, String) {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let u = users(server, &refs);
    let mut clients: Vec<Client> = u.iter().map(|user| Client::start(server, user)).collect();
    for c in clients.iter_mut() {
        c.send("/status");
        c.expect("status none");
    }
    clients[0].send(&format!("/init {}", refs[1..].join(" ")));
    let mut sid = String::new();
    for c in clients[1..].iter_mut() {
        sid = sid_of(&c.expect("invite "));
        c.send(&format!("/accept {sid}"));
    }
    assert_eq!(clients[0].expect("init "), format!("init {sid} ok"));
    let last = format!("status {sid} {} ", names[n - 1]);
    for c in clients.iter_mut() {
        c.send(&format!("/status {sid}"));
        c.expect_where("the last member accepted", |l| {
            l.starts_with(&last) && l.contains(" accepted ")
        });
    }
    (clients, names, sid)
}

// Appended for tests/hostile.rs; general helpers for any test that watches the server
// process or needs many accounts.

impl Server {
    /// The server's resident memory in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line in /proc/<pid>/status")
    }

    /// The server's thread count and open file descriptor count, from `/proc`.
    pub fn threads_and_fds(&self) -> (usize, usize) {
        let dir = PathBuf::from(format!("/proc/{}", self.pid()));
        let count = |sub: &str| std::fs::read_dir(dir.join(sub)).unwrap().count();
        (count("task"), count("fd"))
    }

    /// Adds accounts `names`, all with `password` at [`TEST_ITERATIONS`], in one
    /// rewrite of the users file: `add_user` rewrites the whole file per account, which
    /// is quadratic for thousands of accounts. The accounts share one hash and salt,
    /// which is fine for tests. Returns their uids, in the order of `names`.
    pub fn add_users_at_once(&self, names: &[String], password: &str) -> Vec<u64> {
        use mpchat::accounts::{parse_users, Account, Accounts, PasswordHash, USERS_FILE};
        let path = self.state.join(USERS_FILE);
        let mut accounts = match std::fs::read_to_string(&path) {
            Ok(text) => parse_users(&text).unwrap(),
            Err(_) => Accounts::new(),
        };
        let hash = PasswordHash::new(password, TEST_ITERATIONS).unwrap();
        let uids: Vec<u64> = names
            .iter()
            .map(|name| {
                let uid = mpchat::crypto::random_nonzero_u64().unwrap();
                let account = Account {
                    name: name.clone(),
                    uid,
                    hash: hash.clone(),
                };
                accounts.insert(account).unwrap();
                uid
            })
            .collect();
        mpchat::fsutil::atomic_write(&path, accounts.to_text().as_bytes(), 0o600).unwrap();
        uids
    }
}

/// Raises the open-file limit, soft and hard, of process `pid` to `n` with
/// `prlimit(1)` (raising a hard limit needs root or CAP_SYS_RESOURCE). `Err` carries
/// what prlimit said.
pub fn raise_fd_limit(pid: u32, n: u64) -> Result<(), String> {
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={n}:{n}"))
        .output()
        .map_err(|e| format!("cannot run prlimit: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The open-file soft limit of process `pid`, from `/proc/<pid>/limits`.
pub fn fd_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("a Max open files line in /proc/<pid>/limits")
}

/// Waits until the server is back to at most `baseline` threads and descriptors:
/// every closed connection's threads ended and its socket was closed. (At most: a
/// login thread that was ending when the baseline was taken may be gone since.) The
/// counts change inside another process, so polling is the only way to wait.
#[track_caller]
pub fn assert_back_to(server: &Server, baseline: (usize, usize), after: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = server.threads_and_fds();
        if now.0 <= baseline.0 && now.1 <= baseline.1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {after}: the server has (threads, fds) {now:?}, not {baseline:?} as before"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a server log line matching `pred`. The log is another process's stderr,
/// so polling it is the only way to wait for it.
#[track_caller]
pub fn wait_for_log(server: &Server, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = server.log().lines().find(|l| pred(l)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line {what} within {WAIT:?}; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP relay whose connections to the server come from another loopback address
/// (such as 127.0.0.2), so that a test can play two hosts: connecting to
/// [`Relay::addr`] reaches the server from `source`. Stable Rust cannot bind a
/// client socket before connecting it (and these tests have no libc binding), so
/// this runs perl's core `Socket` in one process, which relays both ways,
/// half-closes each side when the other ends, and exits with the test.
pub struct Relay {
    child: Child,
    /// Where the test connects.
    pub addr: SocketAddr,
    /// The address the server sees.
    pub source: std::net::IpAddr,
}

impl Relay {
    /// Starts a relay to `server` whose connections come from `source`.
    pub fn start(server: SocketAddr, source: &str) -> Relay {
        const SCRIPT: &str = r#"
            use strict; use warnings; use Socket; use IO::Select;
            my ($port, $src) = @ARGV;
            socket(my $l, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
            bind($l, pack_sockaddr_in(0, inet_aton("127.0.0.1"))) or die "bind: $!";
            listen($l, 1024) or die "listen: $!";
            my ($me) = unpack_sockaddr_in(getsockname($l));
            $| = 1; print "$me\n";
            my $sel = IO::Select->new($l);
            my (%other, %done);
            sub drop_pair { my ($a) = @_; my $b = $other{fileno $a};
                for my $h ($a, $b) { next unless $h; $sel->remove($h);
                    delete $other{fileno $h}; delete $done{fileno $h}; close $h; } }
            while (1) {
                exit 0 if getppid() == 1;
                for my $fh ($sel->can_read(1)) {
                    if ($fh == $l) {
                        accept(my $c, $l) or next;
                        socket(my $s, PF_INET, SOCK_STREAM, 0) or do { close $c; next };
                        if (!bind($s, pack_sockaddr_in(0, inet_aton($src)))
                            || !connect($s, pack_sockaddr_in($port, inet_aton("127.0.0.1")))) {
                            close $c; close $s; next;
                        }
                        $other{fileno $c} = $s; $other{fileno $s} = $c;
                        $sel->add($c, $s);
                        next;
                    }
                    my $to = $other{fileno $fh} or next;
                    my $n = sysread($fh, my $buf, 65536);
                    if (!defined $n) { drop_pair($fh); next; }
                    if ($n == 0) {
                        $sel->remove($fh); shutdown($to, 1); $done{fileno $fh} = 1;
                        drop_pair($fh) if $done{fileno $to};
                        next;
                    }
                    my $off = 0;
                    while ($off < $n) {
                        my $w = syswrite($to, $buf, $n - $off, $off);
                        if (!defined $w) { drop_pair($fh); last; }
                        $off += $w;
                    }
                }
            }
        "#;
        let mut child = Command::new("perl")
            .arg("-e")
            .arg(SCRIPT)
            .arg(server.port().to_string())
            .arg(source)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("this test needs perl to connect from another loopback address");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the relay did not say its port: {line:?}"));
        Relay {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            source: source.parse().expect("a source address"),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
