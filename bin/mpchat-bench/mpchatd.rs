//! mpchat as a system under test: accounts made with `mpchatd useradd`, an `mpchatd`
//! started in a temporary state directory (or one already running, `--target`), and
//! a minimal protocol client built only from the library's public client pieces:
//! [`ClientLogin`] for the handshake, [`mtp`] for frames, and the v2 end-to-end layer
//! through [`crate::client`]: a session is set up as clients set it up (the creator's
//! signed member list, then its sender key distributed), and the relay's messages are
//! `MPM2` envelopes sealed under that key before timing.
//!
//! This module must never print a password, a key or a message text, and never leave
//! its accounts in a `--target` server's users file (they are removed on drop).

use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mpchat::accounts::{self, Account, Accounts, PasswordHash};
use mpchat::crypto::{self, RsaPrivate, RsaPublic};
use mpchat::login::ClientLogin;
use mpchat::mtp::{self, Header, MsgType};
use mpchat::proto::{
    Ack, Answer, Delivery, InitReq, InitRes, InviteRes, MsgReq, MsgRes, Online, StatusRes,
};
use mpchat::{e2e, fsutil};

use crate::client::{self, Author, Creator, Reader, Taken};
use crate::error::{fail, lock, BenchError, Ctx};
use crate::net::{connect, fill_once, Framer, POLL_TICK, SETUP_TIMEOUT};
use crate::proc::listener_pid;
use crate::process::{spawn_listening, unix_ns, Daemon, TempDir};
use crate::relay::{text_of, AckSide, Group, Polled, RecvSide, SendSide};
use crate::workload::System;

/// Distinct `MPM2` envelopes per session (iterations 0 to 15 of the sender's chain):
/// message `n` carries envelope `n % ENVELOPE_POOL`. The server treats envelopes as
/// opaque bytes, so reusing a few costs it nothing different, and the receivers can
/// check every delivery's bytes without opening it (the client-side cost of opening
/// is measured on its own).
pub const ENVELOPE_POOL: usize = 16;
/// Most participants of an mpchat session: the end-to-end layer's bound (99
/// recipients), which is also the server's default limit; larger sizes are measured
/// for the baselines only.
pub const MPCHAT_MAX_PARTICIPANTS: usize = e2e::envelope::MAX_RECIPIENTS + 1;
/// The messages of a session's set-up before the relay's: the creator's member list
/// (`MPS2`, message 1) and its sender key's distribution (`MPK2`, message 2).
pub const SETUP_MESSAGES: u64 = 2;
/// Accounts made with `mpchatd useradd` one by one; beyond this the users file is
/// written once through the library (useradd rewrites and fsyncs the whole file each
/// time, which would take minutes for thousands of accounts).
pub const USERADD_MAX: usize = 100;
/// PBKDF2 iterations of the accounts used for relay, memory and durability figures.
pub const LOW_ITERATIONS: u32 = 1_000;

/// One account for a server under test: name, password, PBKDF2 iterations, and the
/// end-to-end key it uses in sessions.
#[derive(Debug, Clone)]
pub struct AccountSpec {
    /// Username.
    pub name: String,
    /// Password (never printed).
    pub password: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Its identity key: an index into the [`KeyPool`], distinct from every other
    /// account's on the same server (a v2 server binds one key to one account).
    /// `None` for accounts that never join a session.
    pub key: Option<usize>,
}

impl AccountSpec {
    /// An account called `name` with a fresh random password (a `--target` server
    /// may be reachable by others while the bench's accounts exist).
    pub fn new(name: &str, iterations: u32) -> AccountSpec {
        let mut secret = [0u8; 12];
        let password = match crypto::fill_random(&mut secret) {
            Ok(()) => mpchat::encoding::hex(&secret),
            // Without randomness no login can be made either; the bench fails there.
            Err(_) => String::from("unavailable"),
        };
        AccountSpec {
            name: name.to_string(),
            password,
            iterations,
            key: None,
        }
    }

    /// The same account using key `i` of the [`KeyPool`] in its sessions.
    pub fn with_key(mut self, i: usize) -> AccountSpec {
        self.key = Some(i);
        self
    }
}

/// Creates `accounts` in `state`: with `mpchatd useradd --password-stdin` one by one
/// up to [`USERADD_MAX`], otherwise by writing the users file once through the
/// library (same format; only before the server starts).
pub fn create_accounts(
    mpchatd: &Path,
    state: &Path,
    accounts_: &[AccountSpec],
) -> Result<(), BenchError> {
    if accounts_.len() <= USERADD_MAX {
        for a in accounts_ {
            let mut child = Command::new(mpchatd)
                .arg("useradd")
                .arg(&a.name)
                .arg("--state-dir")
                .arg(state)
                .arg("--password-stdin")
                .arg("--iterations")
                .arg(a.iterations.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .ctx(|| format!("run {} useradd", mpchatd.display()))?;
            if let Some(mut stdin) = child.stdin.take() {
                writeln!(stdin, "{}", a.password)
                    .ctx(|| "pass the password to useradd".to_string())?;
            }
            let out = child
                .wait_with_output()
                .ctx(|| "wait for useradd".to_string())?;
            if !out.status.success() {
                return Err(fail(format!(
                    "mpchatd useradd {} failed: {}",
                    a.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        return Ok(());
    }
    let path = state.join(accounts::USERS_FILE);
    let mut all = match fs::read_to_string(&path) {
        Ok(text) => accounts::parse_users(&text).ctx(|| format!("read {}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Accounts::new(),
        Err(e) => return Err(fail(format!("read {}: {e}", path.display()))),
    };
    for a in accounts_ {
        let hash =
            PasswordHash::new(&a.password, a.iterations).ctx(|| "hash a password".to_string())?;
        loop {
            let uid = crypto::random_nonzero_u64().ctx(|| "draw a uid".to_string())?;
            match all.insert(Account {
                name: a.name.clone(),
                uid,
                hash: hash.clone(),
            }) {
                Ok(()) => break,
                Err(accounts::EntryError::DuplicateUid(_)) => continue,
                Err(e) => return Err(fail(format!("account {}: {e:?}", a.name))),
            }
        }
    }
    fsutil::atomic_write(&path, all.to_text().as_bytes(), 0o600)
        .ctx(|| format!("write {}", path.display()))
}

/// A running `mpchatd` with its state directory.
pub struct MpchatServer {
    /// The process.
    pub daemon: Daemon,
    /// The server's public key, which clients need to log in.
    pub key: RsaPublic,
    _dir: Option<TempDir>,
    /// For a `--target` server: the accounts to remove when done.
    added: Option<AddedAccounts>,
}

/// Accounts the bench added to a running server's state directory.
struct AddedAccounts {
    mpchatd: PathBuf,
    state: PathBuf,
    names: Vec<String>,
}

impl Drop for MpchatServer {
    fn drop(&mut self) {
        if let Some(a) = &self.added {
            for name in &a.names {
                let _ = Command::new(&a.mpchatd)
                    .arg("userdel")
                    .arg(name)
                    .arg("--state-dir")
                    .arg(&a.state)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A running mpchatd to measure instead of one the bench starts (`--target`).
#[derive(Debug, Clone)]
pub struct Target {
    /// Where it listens (a loopback address).
    pub addr: SocketAddr,
    /// Its state directory: the bench adds its accounts there (the server reads the
    /// users file again when it changes) and reads `server.pub`.
    pub state_dir: PathBuf,
}

/// Prefix of the accounts the bench adds to a `--target` server.
pub const TARGET_ACCOUNT_PREFIX: &str = "mpbench-";

/// Measures the mpchatd of `target` with `accounts_` added to its users file (with
/// `mpchatd useradd`, which the running server picks up), removed again on drop.
pub fn attach_mpchatd(
    mpchatd: &Path,
    target: &Target,
    accounts_: &[AccountSpec],
) -> Result<MpchatServer, BenchError> {
    let pub_path = target.state_dir.join(mpchat::server::SERVER_PUB_FILE);
    let key = crypto::read_public_key(&pub_path)
        .ctx(|| format!("read the server key {}", pub_path.display()))?;
    let pid = listener_pid(target.addr).ok_or_else(|| {
        fail(format!(
            "no process of this user listens on {}; start mpchatd there, or run mpchat-bench as the server's user",
            target.addr
        ))
    })?;
    let mut server = MpchatServer {
        daemon: Daemon::attached("mpchatd", pid, target.addr),
        key,
        _dir: None,
        added: Some(AddedAccounts {
            mpchatd: mpchatd.to_path_buf(),
            state: target.state_dir.clone(),
            names: Vec::new(),
        }),
    };
    for a in accounts_ {
        create_accounts(mpchatd, &target.state_dir, std::slice::from_ref(a))?;
        if let Some(added) = server.added.as_mut() {
            added.names.push(a.name.clone());
        }
    }
    // The server reads the users file again when it notices the change.
    thread::sleep(TARGET_RELOAD_WAIT);
    Ok(server)
}

/// Time for a running server to notice new accounts in its users file.
const TARGET_RELOAD_WAIT: Duration = Duration::from_millis(1500);

/// Starts `mpchatd` on 127.0.0.1 port 0 in a fresh state directory holding
/// `server_key` (so no key is generated) and `accounts_`, with extra flags.
pub fn start_mpchatd(
    mpchatd: &Path,
    tag: &str,
    server_key: &RsaPrivate,
    accounts_: &[AccountSpec],
    extra: &[&str],
) -> Result<MpchatServer, BenchError> {
    let dir = TempDir::new(tag)?;
    let state = dir.path().join("state");
    fsutil::ensure_private_dir(&state).ctx(|| format!("create {}", state.display()))?;
    crypto::write_key_pair(
        server_key,
        &state.join(mpchat::server::SERVER_KEY_FILE),
        &state.join(mpchat::server::SERVER_PUB_FILE),
    )
    .ctx(|| "write the server key".to_string())?;
    create_accounts(mpchatd, &state, accounts_)?;
    let mut cmd = Command::new(mpchatd);
    cmd.arg("--state-dir")
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    let daemon = spawn_listening("mpchatd", cmd, &dir.path().join("mpchatd.log"), false)?;
    Ok(MpchatServer {
        daemon,
        key: server_key.public(),
        _dir: Some(dir),
        added: None,
    })
}

impl Framer {
    /// The next complete MTP frame, if buffered. A bad header is an error: the
    /// stream cannot be resynchronised.
    pub fn next_mtp(&mut self) -> Result<Option<Range<usize>>, mtp::MtpError> {
        let pending = self.pending();
        let Some(head) = pending.get(..mtp::HEADER_LEN) else {
            return Ok(None);
        };
        let mut h = [0u8; mtp::HEADER_LEN];
        h.copy_from_slice(head);
        let len = Header::decode(&h)?.len as usize;
        Ok((pending.len() >= len).then(|| self.take(len)))
    }
}

/// A logged-in mpchat protocol client.
pub struct MpConn {
    /// The socket (read timeout [`POLL_TICK`]).
    pub stream: TcpStream,
    sender: mtp::Sender,
    receiver: mtp::Receiver,
    /// The user's id.
    pub uid: u64,
    framer: Framer,
}

impl MpConn {
    /// Connects to `addr` and logs in as `account`.
    pub fn login(
        addr: SocketAddr,
        key: &RsaPublic,
        account: &AccountSpec,
    ) -> Result<MpConn, BenchError> {
        let mut stream = connect(addr)?;
        let (frame, expect) = ClientLogin::start(key, &account.name, &account.password, unix_ns())
            .ctx(|| format!("build the login of {}", account.name))?;
        stream
            .write_all(&frame)
            .ctx(|| format!("send the login of {}", account.name))?;
        stream
            .set_read_timeout(Some(SETUP_TIMEOUT))
            .ctx(|| "set a read timeout".to_string())?;
        let reply = mtp::read_frame(&mut stream)
            .ctx(|| format!("login of {} (wrong password or server key?)", account.name))?;
        let est = expect
            .finish(&reply)
            .ctx(|| format!("login reply for {}", account.name))?;
        stream
            .set_read_timeout(Some(POLL_TICK))
            .ctx(|| "set a read timeout".to_string())?;
        Ok(MpConn {
            stream,
            sender: est.sender,
            receiver: est.receiver,
            uid: est.uid,
            framer: Framer::new(),
        })
    }

    /// Seals and sends one frame.
    pub fn send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) -> Result<(), BenchError> {
        let frame = self
            .sender
            .seal(typ, sid, self.uid, payload)
            .ctx(|| "seal a frame".to_string())?;
        self.stream
            .write_all(&frame)
            .ctx(|| "send a frame".to_string())
    }

    /// Reads once from the socket (waiting at most [`POLL_TICK`]); `false` when
    /// nothing arrived.
    pub fn fill(&mut self) -> Result<bool, BenchError> {
        fill_once(&mut self.framer, &mut self.stream, "mpchat client")
    }

    /// Opens the next buffered frame, if any; answers heartbeats on the way.
    pub fn try_next(&mut self) -> Result<Option<(Header, Vec<u8>)>, BenchError> {
        while let Some(r) = self
            .framer
            .next_mtp()
            .ctx(|| "frame from mpchatd".to_string())?
        {
            let (h, p) = self
                .receiver
                .open(self.framer.get(r))
                .ctx(|| "frame from mpchatd".to_string())?;
            if h.typ == MsgType::StatusReq && h.sid == 0 {
                self.send(Online::TYPE, 0, &Online.encode())?;
                continue;
            }
            return Ok(Some((h, p)));
        }
        Ok(None)
    }

    /// The next frame, waiting until `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Result<(Header, Vec<u8>), BenchError> {
        loop {
            if let Some(x) = self.try_next()? {
                return Ok(x);
            }
            if Instant::now() > deadline {
                return Err(fail("mpchatd did not send an expected frame in time"));
            }
            fill_once(&mut self.framer, &mut self.stream, "mpchat client")?;
        }
    }

    /// Frames until one of type `typ` (others are dropped), waiting until `deadline`.
    pub fn next_of(
        &mut self,
        typ: MsgType,
        deadline: Instant,
    ) -> Result<(Header, Vec<u8>), BenchError> {
        loop {
            let (h, p) = self.next(deadline)?;
            if h.typ == typ {
                return Ok((h, p));
            }
        }
    }
}

/// How many participants a session's status payload lists as `accepted` (0 for
/// anything else).
pub fn accepted_in_status(sid: u64, payload: &[u8]) -> usize {
    match StatusRes::decode(sid, payload) {
        Ok(StatusRes::Session(st)) => st
            .participants
            .iter()
            .filter(|p| p.answer == Answer::Accepted)
            .count(),
        _ => 0,
    }
}

/// End-to-end identity keys for the bench's participants, made once per run. A v2
/// server binds each account to the first key it presents and refuses a key another
/// account owns, so no two of the bench's accounts on one server share a key; every
/// server the bench starts has fresh state, so the same keys serve every section.
pub struct KeyPool {
    keys: Vec<(RsaPrivate, RsaPublic)>,
}

impl KeyPool {
    /// `n` keys of `bits` bits, made on every core.
    pub fn generate(n: usize, bits: usize) -> Result<KeyPool, BenchError> {
        let threads = thread::available_parallelism()
            .map_or(2, |c| c.get())
            .min(n.max(1));
        let made: Vec<Result<Vec<RsaPrivate>, BenchError>> = thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let count = n / threads + usize::from(t < n % threads);
                    s.spawn(move || {
                        (0..count)
                            .map(|_| {
                                RsaPrivate::generate(bits)
                                    .ctx(|| "make an end-to-end key".to_string())
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(fail("a key-making thread panicked")))
                })
                .collect()
        });
        let mut keys = Vec::with_capacity(n);
        for batch in made {
            keys.extend(batch?.into_iter().map(|k| {
                let public = k.public();
                (k, public)
            }));
        }
        Ok(KeyPool { keys })
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Key `i`, which must exist (the run made as many as its sections need).
    pub fn get(&self, i: usize) -> Result<(&RsaPrivate, &RsaPublic), BenchError> {
        self.keys.get(i).map(|(k, p)| (k, p)).ok_or_else(|| {
            fail(format!(
                "end-to-end key {i} was not made ({} were)",
                self.len()
            ))
        })
    }

    /// Key `i` modulo the pool's size: for work in the bench's own process, where no
    /// server binds keys and the cost of a key does not depend on which it is.
    pub fn cyclic(&self, i: usize) -> Result<(&RsaPrivate, &RsaPublic), BenchError> {
        if self.keys.is_empty() {
            return Err(fail("no end-to-end key was made"));
        }
        self.get(i % self.len())
    }

    /// The key of `account`.
    pub fn of(&self, account: &AccountSpec) -> Result<(&RsaPrivate, &RsaPublic), BenchError> {
        let i = account
            .key
            .ok_or_else(|| fail(format!("account {} has no end-to-end key", account.name)))?;
        self.get(i)
    }
}

/// An mpchatd as one workload sees it: the server, the accounts its clients use
/// (client `i` logs in as `accounts[i]`) and their end-to-end keys.
pub struct Mpchat<'a> {
    /// The server.
    pub server: &'a MpchatServer,
    /// The accounts, one per client.
    pub accounts: &'a [AccountSpec],
    /// The keys the accounts name.
    pub keys: &'a KeyPool,
}

impl System for Mpchat<'_> {
    fn name(&self) -> &'static str {
        "mpchat"
    }

    fn daemon(&self) -> &Daemon {
        &self.server.daemon
    }

    /// A reader and a writer.
    fn threads_per_connection(&self) -> u64 {
        2
    }

    fn connect(&self, i: usize) -> Result<Box<dyn Send>, BenchError> {
        let account = self
            .accounts
            .get(i)
            .ok_or_else(|| fail(format!("no account for mpchat client {i}")))?;
        let c = MpConn::login(self.server.daemon.addr, &self.server.key, account)?;
        Ok(Box::new(c))
    }

    /// A live session of the first `size` accounts set up as clients set it up
    /// ([`live_session`]), then [`ENVELOPE_POOL`] messages sealed under the creator's
    /// sender key and checked by one receiver as a client checks them; the relay's
    /// first message is number 3.
    fn group(&self, size: usize) -> Result<Group, BenchError> {
        let accounts_ = self.accounts.get(..size).ok_or_else(|| {
            fail(format!(
                "{} accounts for a session of {size}",
                self.accounts.len()
            ))
        })?;
        let mut live = live_session(self.server, accounts_, self.keys)?;
        let sid = live.sid;
        let author_uid = live.conns[0].uid;
        let mut pool = Vec::with_capacity(ENVELOPE_POOL);
        for k in 0..ENVELOPE_POOL as u64 {
            let text = text_of(k);
            let text = std::str::from_utf8(&text).map_err(|_| fail("text_of is ASCII"))?;
            let sealed = live.author.seal(text, client::now_ms())?;
            if sealed.distribution.is_some() {
                return Err(fail("a fresh sender key was rotated"));
            }
            pool.push(sealed.message);
        }
        // One receiver reads the set-up and the pool as a client would, so the relay
        // carries envelopes a client accepts.
        let (reader_key, _) = self.keys.of(&accounts_[1])?;
        let (_, creator_key) = self.keys.of(&accounts_[0])?;
        let creator = Creator {
            uid: author_uid,
            name: &accounts_[0].name,
            key: creator_key,
        };
        let mut reader = Reader::new(sid, live.conns[1].uid, reader_key);
        for env in &live.setup {
            reader.take(env, author_uid, creator_key, creator)?;
        }
        for (k, env) in pool.iter().enumerate() {
            let text = text_of(k as u64);
            if reader.take(env, author_uid, creator_key, creator)?
                != Taken::Text(String::from_utf8_lossy(&text).into_owned())
            {
                return Err(fail("an envelope opened to another text"));
            }
        }
        let pool = Arc::new(pool);
        let wire_bytes = mtp::HEADER_LEN + 8 + pool[0].len() + mtp::MAC_LEN;
        let mut it = live.conns.into_iter();
        let creator_conn = it.next().ok_or_else(|| fail("no creator"))?;
        let receivers: Vec<Box<dyn RecvSide>> = it
            .map(|c| {
                Box::new(MpRecv {
                    conn: c,
                    sid,
                    author: author_uid,
                    pool: pool.clone(),
                    acked: SETUP_MESSAGES,
                    last: SETUP_MESSAGES,
                }) as Box<dyn RecvSide>
            })
            .collect();
        let payload_len = pool[0].len();
        let (sender, acks) = split_mp_sender(creator_conn, sid, pool)?;
        Ok(Group::new(
            wire_bytes,
            payload_len,
            Box::new(sender),
            Some(Box::new(acks)),
            receivers,
        )
        .first_message(SETUP_MESSAGES + 1))
    }
}

/// A live session as [`live_session`] leaves it.
pub struct LiveSession<'k> {
    /// The session.
    pub sid: u64,
    /// Every participant logged in, the creator first, each having read the set-up.
    pub conns: Vec<MpConn>,
    /// The creator's end-to-end state: its statement and its distributed sender key.
    pub author: Author<'k>,
    /// The set-up envelopes, messages 1 and 2: the `MPS2` and the `MPK2`.
    pub setup: Vec<Vec<u8>>,
}

/// A session of `accounts_` (the first the creator), set up over the protocol as
/// clients set it up: everyone logs in (one at a time), the creator sends init_req
/// naming the others, who accept with their own keys; once every participant holds a
/// status listing all of them as accepted, the creator sends its signed member list
/// (`MPS2`, message 1) and its sender key's distribution to everyone (`MPK2`, message
/// 2); returns once the server has numbered both and every other participant has
/// received both, byte for byte, and acknowledged them.
pub fn live_session<'k>(
    server: &MpchatServer,
    accounts_: &[AccountSpec],
    keys: &'k KeyPool,
) -> Result<LiveSession<'k>, BenchError> {
    let size = accounts_.len();
    if size > MPCHAT_MAX_PARTICIPANTS {
        return Err(BenchError::Skip(format!(
            "mpchat sessions hold at most {MPCHAT_MAX_PARTICIPANTS} participants (99 recipients of an envelope)"
        )));
    }
    if size < 2 {
        return Err(fail("a session needs 2 participants"));
    }
    let deadline = Instant::now() + SETUP_TIMEOUT + Duration::from_millis(100 * size as u64);
    let mut conns = Vec::with_capacity(size);
    for a in accounts_ {
        conns.push(MpConn::login(server.daemon.addr, &server.key, a)?);
    }
    let (creator_key, creator_pub) = keys.of(&accounts_[0])?;
    let names: Vec<&str> = accounts_[1..].iter().map(|a| a.name.as_str()).collect();
    conns[0].send(
        MsgType::InitReq,
        0,
        &InitReq {
            key: creator_pub.to_base64(),
            invitees: names.iter().map(|n| n.to_string()).collect(),
        }
        .encode(),
    )?;
    let mut sid = 0;
    for (c, a) in conns[1..].iter_mut().zip(&accounts_[1..]) {
        let (h, _) = c.next_of(MsgType::InviteReq, deadline)?;
        sid = h.sid;
        let (_, public) = keys.of(a)?;
        c.send(
            MsgType::InviteRes,
            sid,
            &InviteRes::Accept(public.to_base64()).encode(),
        )?;
    }
    let (h, p) = conns[0].next_of(MsgType::InitRes, deadline)?;
    if InitRes::decode(&p) != Ok(InitRes::Ok) || h.sid != sid {
        return Err(fail(format!(
            "init_res {:?} for sid {:016x}",
            String::from_utf8_lossy(&p),
            h.sid
        )));
    }
    // Subscribed: every participant holds a status listing all as accepted.
    for c in conns.iter_mut() {
        loop {
            let (h, p) = c.next_of(MsgType::StatusRes, deadline)?;
            if h.sid == sid && accepted_in_status(sid, &p) == size {
                break;
            }
        }
    }
    let mut recipients = Vec::with_capacity(size - 1);
    for (c, a) in conns[1..].iter().zip(&accounts_[1..]) {
        recipients.push((c.uid, keys.of(a)?.1));
    }
    let now = client::now_ms();
    let mut author = Author::new(sid, conns[0].uid, creator_key, recipients, now)?;
    let created_ms = u64::try_from(now).unwrap_or(0);
    let setup = vec![
        author.sign_statement(&accounts_[0].name, &names, created_ms)?,
        author.distribute()?,
    ];
    for env in &setup {
        conns[0].send(MsgReq::TYPE, sid, &MsgReq { envelope: env }.encode())?;
    }
    for n in 1..=SETUP_MESSAGES {
        let (_, p) = conns[0].next_of(MsgType::MsgRes, deadline)?;
        if MsgRes::decode(&p) != Ok(MsgRes::Ok(n)) {
            return Err(fail(format!(
                "set-up message {n} answered {:?}",
                String::from_utf8_lossy(&p)
            )));
        }
    }
    let author_uid = conns[0].uid;
    for c in conns[1..].iter_mut() {
        for n in 1..=SETUP_MESSAGES {
            let (h, p) = loop {
                let (h, p) = c.next_of(MsgType::MsgReq, deadline)?;
                if h.sid == sid {
                    break (h, p);
                }
            };
            let d = Delivery::decode(&p).ctx(|| "a set-up delivery".to_string())?;
            if d.n != n || h.uid != author_uid || d.envelope != &setup[(n - 1) as usize][..] {
                return Err(fail(format!(
                    "set-up message {n} arrived as message {} with other bytes or author",
                    d.n
                )));
            }
        }
        c.send(Ack::TYPE, sid, &Ack { n: SETUP_MESSAGES }.encode())?;
    }
    Ok(LiveSession {
        sid,
        conns,
        author,
        setup,
    })
}

/// The writing half of an mpchat connection, shared by the sending thread and the
/// reply reader (which answers heartbeats).
struct MpWriter {
    stream: TcpStream,
    sender: mtp::Sender,
    uid: u64,
}

impl MpWriter {
    fn send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) -> Result<(), BenchError> {
        let frame = self
            .sender
            .seal(typ, sid, self.uid, payload)
            .ctx(|| "seal a frame".to_string())?;
        self.stream
            .write_all(&frame)
            .ctx(|| "send a frame".to_string())
    }
}

struct MpSend {
    w: Arc<Mutex<MpWriter>>,
    sid: u64,
    pool: Arc<Vec<Vec<u8>>>,
}

impl SendSide for MpSend {
    fn send(&mut self, n: u64) -> Result<(), BenchError> {
        let env = &self.pool[(n % self.pool.len() as u64) as usize];
        lock(&self.w).send(MsgType::MsgReq, self.sid, env)
    }
}

struct MpAcks {
    stream: TcpStream,
    receiver: mtp::Receiver,
    framer: Framer,
    w: Arc<Mutex<MpWriter>>,
    sid: u64,
}

impl AckSide for MpAcks {
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
        if !fill_once(&mut self.framer, &mut self.stream, "mpchat sender")? {
            return Ok(Polled::Idle);
        }
        while let Some(r) = self
            .framer
            .next_mtp()
            .ctx(|| "frame from mpchatd".to_string())?
        {
            let (h, p) = self
                .receiver
                .open(self.framer.get(r))
                .ctx(|| "frame from mpchatd".to_string())?;
            match h.typ {
                MsgType::MsgRes if h.sid == self.sid => match MsgRes::decode(&p) {
                    Ok(MsgRes::Ok(n)) => on(n, true),
                    _ => on(0, false),
                },
                MsgType::StatusReq if h.sid == 0 => {
                    lock(&self.w).send(Online::TYPE, 0, &Online.encode())?
                }
                _ => {}
            }
        }
        Ok(Polled::Data)
    }
}

fn split_mp_sender(
    c: MpConn,
    sid: u64,
    pool: Arc<Vec<Vec<u8>>>,
) -> Result<(MpSend, MpAcks), BenchError> {
    let write_half = c.stream.try_clone().ctx(|| "clone a socket".to_string())?;
    let w = Arc::new(Mutex::new(MpWriter {
        stream: write_half,
        sender: c.sender,
        uid: c.uid,
    }));
    Ok((
        MpSend {
            w: w.clone(),
            sid,
            pool,
        },
        MpAcks {
            stream: c.stream,
            receiver: c.receiver,
            framer: c.framer,
            w,
            sid,
        },
    ))
}

struct MpRecv {
    conn: MpConn,
    sid: u64,
    author: u64,
    pool: Arc<Vec<Vec<u8>>>,
    acked: u64,
    last: u64,
}

impl RecvSide for MpRecv {
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
        if !fill_once(
            &mut self.conn.framer,
            &mut self.conn.stream,
            "mpchat receiver",
        )? {
            return Ok(Polled::Idle);
        }
        while let Some((h, p)) = self.conn.try_next()? {
            if h.typ != MsgType::MsgReq || h.sid != self.sid {
                continue; // status pushes and the like
            }
            let Ok(Delivery { n, envelope }) = Delivery::decode(&p) else {
                on(0, false);
                continue;
            };
            let expected = &self.pool[(n % self.pool.len() as u64) as usize];
            on(n, h.uid == self.author && envelope == &expected[..]);
            self.last = self.last.max(n);
        }
        // Acknowledge what we hold before waiting for more, as a client would: one
        // cumulative ack per read.
        if self.last > self.acked {
            self.conn
                .send(Ack::TYPE, self.sid, &Ack { n: self.last }.encode())?;
            self.acked = self.last;
        }
        Ok(Polled::Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpchat::crypto::{AeadKey, Direction};

    #[test]
    fn framer_reassembles_mtp_frames_split_across_reads() {
        let mut s = mtp::Sender::new(AeadKey::new([3; 32]), Direction::ServerToClient, 2);
        let mut r = mtp::Receiver::new(AeadKey::new([3; 32]), Direction::ServerToClient, 1);
        let mut wire = Vec::new();
        for i in 0..5u8 {
            wire.extend(
                s.seal(MsgType::MsgReq, 9, 4, &vec![i; 100 + usize::from(i)])
                    .unwrap(),
            );
        }
        let mut f = Framer::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(37) {
            f.push(chunk);
            while let Some(range) = f.next_mtp().unwrap() {
                let (h, p) = r.open(f.get(range)).unwrap();
                assert_eq!(h.sid, 9);
                got.push(p);
            }
        }
        assert!(f.is_empty());
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], vec![4u8; 104]);
    }

    #[test]
    fn framer_rejects_a_bad_mtp_header() {
        let mut f = Framer::new();
        f.push(&[9u8; mtp::HEADER_LEN]);
        assert!(f.next_mtp().is_err());
    }

    #[test]
    fn status_payload_acceptances_are_counted() {
        let p = b"OK\nlive alice\nalice 00000000000000aa accepted online 0 KEY\nbob 00000000000000bb invited online 0\ncarol 00000000000000cc accepted offline 3 KEY\n";
        assert_eq!(accepted_in_status(7, p), 2);
        assert_eq!(accepted_in_status(0, p), 0, "not a session's status");
    }
}
