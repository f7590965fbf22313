//! `mpchatd`'s network side: the listener, a reader and a writer thread per
//! connection, the invite-wait timer, and the pre-authentication limits.
//!
//! The accept loop only accepts, counts and spawns; untrusted bytes are parsed only in
//! the connection's own thread. Counts are kept right on every exit path by RAII
//! guards. No lock is held across socket I/O or cryptography: handlers lock the
//! [`Registry`] briefly, and every outgoing frame is sealed and written by the
//! connection's writer thread, which owns the outgoing MTP state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver as ChanReceiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::accounts::{PasswordGate, UsersFile};
use crate::crypto::{self, RsaPrivate, RsaPublic};
use crate::login::{self, ExpectLoginReq, ReplayCache};
use crate::mtp::{self, MsgType, ReadError};
use crate::outbox::{self, Inbox};
use crate::proto::{self, NotStored, Reason};
use crate::registry::{Conn, Out, Pending, Registry, Requester};
use crate::session::{self, Limits};
use crate::store::{self, Journal, Snapshot};
use crate::threads::{ThreadCache, IDLE_THREAD_LINGER};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5150";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mpchat";
/// A login must be complete within this time of the connection's start.
pub const DEFAULT_LOGIN_GRACE: Duration = Duration::from_secs(10);
/// Connections still logging in, at most.
pub const DEFAULT_MAX_PRELOGIN: usize = 64;
/// Connections in all, at most.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long init_res waits for the invitees online at creation to answer.
pub const DEFAULT_INVITE_WAIT: Duration = Duration::from_secs(30);
/// Silence from a client after which the server sends a heartbeat status_req.
pub const DEFAULT_HEARTBEAT_IDLE: Duration = Duration::from_secs(60);
/// Time a client has to answer a heartbeat before it is disconnected.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for one connection's writer; a live fan-out that finds the queue full
/// closes the connection rather than buffering without limit.
pub const DEFAULT_QUEUE_LEN: usize = 256;
/// Messages a writer pulls from the store per lock acquisition.
const DELIVERY_BATCH: usize = 64;
/// Bytes a writer gathers before one write system call.
const WRITE_BUFFER: usize = 64 * 1024;
/// Stack of the thread that runs a connection's login (RSA and PBKDF2 go deep). It
/// is done after the login, so what it touched is not kept for an idle connection.
const LOGIN_STACK: usize = 256 * 1024;
/// Stack of a logged-in connection's reader and writer threads: they parse, seal and
/// open frames only (measured at 8 to 12 KiB touched).
const CONNECTION_STACK: usize = 64 * 1024;
/// When every pre-login slot is taken, a connection that has been logging in for at
/// least this long is closed to make room for the new one. A real client sends its
/// whole login request at once and is answered within milliseconds, so only idle or
/// dribbling connections are this old; without this, a thousand idle connections
/// would lock real users out for the whole grace time.
pub const PRELOGIN_EVICT_AGE: Duration = Duration::from_secs(1);
/// Requests of one connection whose records are not yet stored, at most: past this
/// its reader waits, so a client sending faster than the disk stores is slowed down
/// instead of growing the journal queue without bound.
const MAX_INFLIGHT: usize = 256;
/// Default for the most requests' records stored with one fsync (group commit).
pub const DEFAULT_MAX_GROUP: usize = 1024;
/// Memory mappings a logged-in connection costs: two threads, each with a stack, its
/// guard page, a signal stack and its guard page.
pub const MAPS_PER_CONNECTION: usize = 8;
/// Memory mappings a login thread costs while it runs.
const MAPS_PER_LOGIN: usize = 4;
/// Memory mappings left for everything else (allocator arenas, files, libraries).
const MAPS_RESERVE: usize = 2048;
/// Finished login threads kept waiting for the next login (see [`ThreadCache`]):
/// PBKDF2 runs one per core, so more than a few are seldom busy at once.
const IDLE_LOGIN_THREADS: usize = 8;
/// Finished reader and writer threads kept waiting for the next connection: enough
/// for a burst of reconnections, at about 12 KiB each.
const IDLE_CONNECTION_THREADS: usize = 64;
/// Memory mappings the waiting threads of both caches cost at most.
const MAPS_CACHED_THREADS: usize = (IDLE_LOGIN_THREADS + IDLE_CONNECTION_THREADS) * MAPS_PER_LOGIN;

/// The most connections `vm.max_map_count` allows, given the mappings in use now.
/// Past that limit a new thread cannot map its signal stack and the Rust runtime
/// aborts the whole process, so the server lowers `--max-connections` to this instead
/// (and says so): a refused connection rather than every user dropped.
pub fn connection_capacity(max_map_count: usize, maps_now: usize, max_prelogin: usize) -> usize {
    max_map_count.saturating_sub(
        maps_now + MAPS_RESERVE + MAPS_CACHED_THREADS + max_prelogin * MAPS_PER_LOGIN,
    ) / MAPS_PER_CONNECTION
}

/// Lowers `config.max_connections` to what this kernel's `vm.max_map_count` allows.
fn fit_connections_to_map_count(config: &mut Config) {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let Some(max_maps) =
        read("/proc/sys/vm/max_map_count").and_then(|s| s.trim().parse::<usize>().ok())
    else {
        return;
    };
    let maps_now = read("/proc/self/maps").map_or(0, |s| s.lines().count());
    let capacity = connection_capacity(max_maps, maps_now, config.max_prelogin);
    if config.max_connections > capacity {
        log::warn!(
            "vm.max_map_count is {max_maps}, enough for about {capacity} connections: serving at most {capacity} \
             instead of {}; raise it (sysctl vm.max_map_count={}) to serve more",
            config.max_connections,
            (config.max_connections * MAPS_PER_CONNECTION
                + maps_now
                + MAPS_RESERVE
                + MAPS_CACHED_THREADS
                + config.max_prelogin * MAPS_PER_LOGIN)
                .next_power_of_two()
                .max(262_144)
        );
        config.max_connections = capacity.max(1);
    }
}

/// Security warnings logged per second at most; the rest are counted.
const WARNINGS_PER_SECOND: u32 = 20;

/// Server settings; every limit has a command-line flag.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory (accounts, server key, sessions).
    pub state_dir: PathBuf,
    /// Address to listen on.
    pub listen: String,
    /// Login grace time.
    pub login_grace: Duration,
    /// Cap on connections still logging in.
    pub max_prelogin: usize,
    /// Cap on connections in all.
    pub max_connections: usize,
    /// Login timestamp window (±).
    pub login_window: Duration,
    /// Invite wait before init_res.
    pub invite_wait: Duration,
    /// Idle time before a heartbeat.
    pub heartbeat_idle: Duration,
    /// Time to answer a heartbeat.
    pub heartbeat_timeout: Duration,
    /// Per-connection outgoing queue length.
    pub queue_len: usize,
    /// Session limits.
    pub limits: Limits,
    /// Journal size past which the state is compacted into a snapshot.
    pub compact_bytes: u64,
    /// Requests whose records are stored with one fsync, at most (1 turns group
    /// commit off, for measurements).
    pub max_group: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            listen: DEFAULT_LISTEN.to_string(),
            login_grace: DEFAULT_LOGIN_GRACE,
            max_prelogin: DEFAULT_MAX_PRELOGIN,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            login_window: login::DEFAULT_LOGIN_WINDOW,
            invite_wait: DEFAULT_INVITE_WAIT,
            heartbeat_idle: DEFAULT_HEARTBEAT_IDLE,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            queue_len: DEFAULT_QUEUE_LEN,
            limits: Limits::default(),
            compact_bytes: store::DEFAULT_COMPACT_BYTES,
            max_group: DEFAULT_MAX_GROUP,
        }
    }
}

/// Why the server could not start; each message says what to do.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Name of the server's private key file in the state directory.
pub const SERVER_KEY_FILE: &str = "server.key";
/// Lock file in the state directory, held while a server runs.
pub const LOCK_FILE: &str = "lock";
/// Name of the server's public key file in the state directory.
pub const SERVER_PUB_FILE: &str = "server.pub";

/// Loads the server key from `state_dir`, creating the directory and the key pair on
/// first start. Returns the key and whether it was created.
pub fn load_server_key(state_dir: &Path) -> Result<(RsaPrivate, bool), StartError> {
    crate::fsutil::ensure_private_dir(state_dir).map_err(|e| {
        StartError(format!(
            "cannot create state directory {}: {e}; create it or pass --state-dir DIR",
            state_dir.display()
        ))
    })?;
    crypto::load_or_create_key_pair(
        &state_dir.join(SERVER_KEY_FILE),
        &state_dir.join(SERVER_PUB_FILE),
        crypto::SERVER_KEY_BITS,
    )
    .map_err(|e| match e {
        crypto::KeyFileError::Io(e) => StartError(format!(
            "cannot use the server key in {}: {e}; check that the directory is writable by this user",
            state_dir.display()
        )),
        crypto::KeyFileError::Invalid => StartError(format!(
            "{} is not a valid RSA-2048 PKCS#8 PEM key; restore it from a backup or move it away to create a new one",
            state_dir.join(SERVER_KEY_FILE).display()
        )),
    })
}

/// Creates the state directory if need be and takes its lock: one server per state
/// directory (a second one would interleave journals). The lock is held as long as
/// the returned file is open.
fn lock_state_dir(state_dir: &Path) -> Result<std::fs::File, StartError> {
    crate::fsutil::ensure_private_dir(state_dir).map_err(|e| {
        StartError(format!(
            "cannot create state directory {}: {e}; create it or pass --state-dir DIR",
            state_dir.display()
        ))
    })?;
    let lock_path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StartError(format!(
                "cannot use the state directory {}: {e}; check that it is writable by this user",
                state_dir.display()
            ))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError(format!(
            "another mpchatd is already using {}; stop it first or pass another --state-dir",
            state_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StartError(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Counts a connection in the total for as long as it lives, whichever thread holds it.
struct TotalGuard(Arc<Shared>);

impl Drop for TotalGuard {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs at most [`WARNINGS_PER_SECOND`] security warnings a second, so a flood cannot
/// fill the disk; the rest are counted and reported once.
struct WarnLimiter {
    state: Mutex<(Instant, u32, u64)>,
}

impl WarnLimiter {
    fn new() -> Self {
        WarnLimiter {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    fn warn(&self, args: std::fmt::Arguments<'_>) {
        let mut st = lock(&self.state);
        let now = Instant::now();
        if now.duration_since(st.0) >= Duration::from_secs(1) {
            if st.2 > 0 {
                log::warn!("{} similar warnings suppressed", st.2);
            }
            *st = (now, 0, 0);
        }
        if st.1 < WARNINGS_PER_SECOND {
            st.1 += 1;
            log::warn!("{args}");
        } else {
            st.2 += 1;
        }
    }
}

/// Locks a mutex, recovering the data if a thread panicked while holding it (the
/// registry's invariants are kept by `apply`, which does not panic midway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Invite-wait deadlines, served by one timer thread.
struct Timers {
    heap: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    cv: Condvar,
}

/// Requests of one connection waiting for their records to be stored.
#[derive(Default)]
struct Inflight {
    state: Mutex<InflightState>,
    cv: Condvar,
}

#[derive(Default)]
struct InflightState {
    count: usize,
    /// The connection's reader is waiting in [`Inflight::wait_below`]: only then is a
    /// wake-up (a system call) worth making.
    waiting: bool,
}

impl Inflight {
    fn add(&self) {
        lock(&self.state).count += 1;
    }

    fn done(&self) {
        let mut s = lock(&self.state);
        s.count = s.count.saturating_sub(1);
        if s.waiting {
            self.cv.notify_all();
        }
    }

    /// Waits until fewer than `max` requests are waiting for storage.
    fn wait_below(&self, max: usize) {
        let mut s = lock(&self.state);
        while s.count >= max {
            s.waiting = true;
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting = false;
    }
}

/// Records to store with one group commit, and what to do once they are stored.
struct Batch {
    epoch: u64,
    pending: Pending,
    inflight: Option<Arc<Inflight>>,
}

struct Shared {
    config: Config,
    key: RsaPrivate,
    users: UsersFile,
    gate: PasswordGate,
    replay: Mutex<ReplayCache>,
    registry: Mutex<Registry>,
    /// Connections still logging in: when each started, and a handle to close it.
    prelogin: Mutex<HashMap<u64, (Instant, Arc<TcpStream>)>>,
    total: AtomicUsize,
    next_conn: AtomicU64,
    timers: Timers,
    warnings: WarnLimiter,
    journal_tx: mpsc::Sender<Batch>,
    login_threads: ThreadCache,
    connection_threads: ThreadCache,
}

impl Shared {
    /// Runs `f` on the locked registry, then closes the connections it doomed, after
    /// the lock is released.
    fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        self.with_registry_as(None, f)
    }

    /// [`Shared::with_registry`] for a connection's request: records it produced go
    /// to the journal thread (queued under the lock, so journal order is the order of
    /// application), and their effects wait until they are stored.
    fn with_registry_as<R>(
        &self,
        inflight: Option<&Arc<Inflight>>,
        f: impl FnOnce(&mut Registry) -> R,
    ) -> R {
        let (r, doomed) = {
            let mut reg = lock(&self.registry);
            let r = f(&mut reg);
            let pending = reg.take_pending();
            if pending.records.is_empty() {
                reg.carry_out(pending.effects);
            } else {
                if let Some(i) = inflight {
                    i.add();
                }
                let batch = Batch {
                    epoch: reg.epoch(),
                    pending,
                    inflight: inflight.cloned(),
                };
                if self.journal_tx.send(batch).is_err() {
                    log::error!("the journal thread has stopped; requests are no longer stored");
                }
            }
            (r, reg.take_doomed())
        };
        for conn in doomed {
            (conn.close)();
        }
        r
    }

    fn schedule_invite_wait(&self, sid: u64) {
        let deadline = Instant::now() + self.config.invite_wait;
        lock(&self.timers.heap).push(Reverse((deadline, sid)));
        self.timers.cv.notify_one();
    }
}

/// A bound, ready-to-run server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    journal: Option<(Journal, ChanReceiver<Batch>)>,
    /// Held for the life of the process.
    _state_lock: std::fs::File,
}

impl Server {
    /// Loads or creates the state (key, accounts) and binds the listen address.
    pub fn bind(mut config: Config) -> Result<Server, StartError> {
        // The port first: a port in use is then reported before anything is created.
        let listener = TcpListener::bind(&config.listen).map_err(|e| {
            StartError(format!(
                "cannot listen on {}: {e}; choose another address with --listen ADDR:PORT",
                config.listen
            ))
        })?;
        let state_lock = lock_state_dir(&config.state_dir)?;
        let (key, created) = load_server_key(&config.state_dir)?;
        let fp = key.public().fingerprint();
        if created {
            log::info!(
                "created server key {}",
                config.state_dir.join(SERVER_KEY_FILE).display()
            );
        }
        log::info!("server key fingerprint {fp}");
        let users = UsersFile::open(&config.state_dir).map_err(|e| {
            StartError(format!(
                "cannot read the accounts in {}: {e}",
                config.state_dir.display()
            ))
        })?;

        let recovered = store::recover(&config.state_dir, config.limits)
            .map_err(|e| StartError(format!("cannot recover the sessions: {e}")))?;
        let sessions = recovered.sessions;
        fit_connections_to_map_count(&mut config);
        let (journal_tx, journal_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            key,
            users,
            gate: PasswordGate::new(),
            replay: Mutex::new(ReplayCache::new(login::REPLAY_CACHE_CAPACITY)),
            registry: Mutex::new(Registry::new(sessions, recovered.last_lsn)),
            prelogin: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            timers: Timers {
                heap: Mutex::new(BinaryHeap::new()),
                cv: Condvar::new(),
            },
            warnings: WarnLimiter::new(),
            journal_tx,
            login_threads: ThreadCache::new(LOGIN_STACK, IDLE_LOGIN_THREADS, IDLE_THREAD_LINGER),
            connection_threads: ThreadCache::new(
                CONNECTION_STACK,
                IDLE_CONNECTION_THREADS,
                IDLE_THREAD_LINGER,
            ),
            config,
        });
        Ok(Server {
            listener,
            shared,
            journal: Some((recovered.journal, journal_rx)),
            _state_lock: state_lock,
        })
    }

    /// The bound address (with the real port when listening on port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The server key's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.shared.key.public().fingerprint()
    }

    /// Accepts connections forever.
    pub fn run(mut self) -> Result<(), StartError> {
        if let Some((journal, rx)) = self.journal.take() {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || run_journal(&shared, journal, rx))
                .map_err(|e| StartError(format!("cannot start the journal thread: {e}")))?;
        }
        // Sessions still pending when the last process stopped go live now: their
        // creators' waits ended with it.
        self.shared.with_registry(|reg| {
            for sid in reg.pending_sessions() {
                reg.go_live(sid);
            }
        });
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("timers".into())
            .spawn(move || run_timers(&shared))
            .map_err(|e| StartError(format!("cannot start the timer thread: {e}")))?;
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    // Out of file descriptors: back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            // The writer gathers what is queued into one write, so Nagle's algorithm
            // would only add delayed-ACK stalls.
            let _ = stream.set_nodelay(true);
            self.admit(Arc::new(stream));
        }
        Ok(())
    }

    fn admit(&self, stream: Arc<TcpStream>) {
        let sh = &self.shared;
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => return,
        };
        if sh.total.load(Ordering::Acquire) >= sh.config.max_connections {
            sh.warnings.warn(format_args!(
                "{peer}: refused, {} connections open",
                sh.config.max_connections
            ));
            return;
        }
        let handle = stream.clone();
        let id = sh.next_conn.fetch_add(1, Ordering::Relaxed);
        let evicted = {
            let mut table = lock(&sh.prelogin);
            let mut evicted = None;
            if table.len() >= sh.config.max_prelogin {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, (t, _))| (*k, *t));
                match oldest {
                    Some((old, since)) if since.elapsed() >= PRELOGIN_EVICT_AGE => {
                        evicted = table.remove(&old).map(|(_, s)| s);
                    }
                    _ => {
                        drop(table);
                        sh.warnings.warn(format_args!(
                            "{peer}: refused, {} connections still logging in",
                            sh.config.max_prelogin
                        ));
                        return;
                    }
                }
            }
            table.insert(id, (Instant::now(), handle));
            evicted
        };
        if let Some(old) = evicted {
            sh.warnings.warn(format_args!("closed a connection that did not log in within {PRELOGIN_EVICT_AGE:?} to admit {peer}"));
            let _ = old.shutdown(Shutdown::Both);
        }
        sh.total.fetch_add(1, Ordering::AcqRel);
        let shared = self.shared.clone();
        let spawned = sh.login_threads.spawn(move || {
            let total = TotalGuard(shared.clone());
            let prelogin = PreloginGuard(&shared.prelogin, id);
            connection(&shared, stream, peer, id, prelogin, total);
        });
        if let Err(e) = spawned {
            log::warn!("{peer}: cannot start a connection thread: {e}");
            sh.total.fetch_sub(1, Ordering::AcqRel);
            lock(&sh.prelogin).remove(&id);
        }
    }
}

/// Keeps a connection in the pre-login table until it logs in or ends.
struct PreloginGuard<'a>(&'a Mutex<HashMap<u64, (Instant, Arc<TcpStream>)>>, u64);

impl Drop for PreloginGuard<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

/// The journal thread: stores queued records with one write and one fsync per group
/// (group commit), then carries out what waited for them. A failed write answers the
/// affected requests with `error: ...` and puts the in-memory state back to what is
/// on disk, so nothing unstored is ever acknowledged or delivered.
fn run_journal(shared: &Shared, mut journal: Journal, rx: ChanReceiver<Batch>) {
    let mut epoch = lock(&shared.registry).epoch();
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < shared.config.max_group {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let (current, stale): (Vec<Batch>, Vec<Batch>) =
            batches.into_iter().partition(|b| b.epoch == epoch);
        let mut current = current;
        let entries: Vec<(u64, session::Record)> = current
            .iter_mut()
            .flat_map(|b| std::mem::take(&mut b.pending.records))
            .collect();
        let stored = if needs_sync(&entries) {
            journal.append(&entries)
        } else {
            journal.append_unsynced(&entries)
        };
        let doomed = {
            let mut reg = lock(&shared.registry);
            for b in &stale {
                reg.fail(
                    &b.pending.on_failure,
                    &Reason::NotStored(NotStored::TryAgain),
                );
            }
            match &stored {
                Ok(()) => {
                    reg.mark_durable(&entries);
                    for b in current.iter_mut() {
                        reg.carry_out(std::mem::take(&mut b.pending.effects));
                    }
                }
                Err(e) => {
                    log::error!("cannot write the journal {}: {e}", journal.path().display());
                    let reason = Reason::NotStored(io_reason(e));
                    for b in &current {
                        reg.fail(&b.pending.on_failure, &reason);
                    }
                    match store::recover(&shared.config.state_dir, shared.config.limits) {
                        Ok(r) => {
                            reg.reset(r.sessions, r.last_lsn);
                            epoch = reg.epoch();
                            journal = r.journal;
                            // Sessions made live by the reset need their own records.
                            let pending = reg.take_pending();
                            if !pending.records.is_empty() {
                                let _ = shared.journal_tx.send(Batch {
                                    epoch,
                                    pending,
                                    inflight: None,
                                });
                            }
                        }
                        Err(e) => {
                            log::error!(
                                "cannot reload the sessions after a failed write: {e}; stopping"
                            );
                            std::process::exit(1);
                        }
                    }
                }
            }
            reg.take_doomed()
        };
        for conn in doomed {
            (conn.close)();
        }
        for b in current.iter().chain(&stale) {
            if let Some(i) = &b.inflight {
                i.done();
            }
        }
        if stored.is_ok() && journal.len() > shared.config.compact_bytes {
            let snapshot = {
                let reg = lock(&shared.registry);
                Snapshot::capture(reg.last_lsn(), &reg.sessions)
            };
            match journal.compact_captured(&snapshot) {
                Ok(()) => log::info!(
                    "compacted the journal into a snapshot at record {}",
                    snapshot.lsn()
                ),
                Err(e) => log::warn!("cannot compact the journal: {e}; will try again later"),
            }
        }
    }
}

/// Whether a group must be on disk before what waits for it is carried out. A group
/// of acknowledgements only need not: nothing waits for an acknowledgement (it has
/// no reply), and one lost in a power cut only means its messages are delivered
/// again, which clients drop as duplicates by `n`. Such a group is written at once
/// and becomes durable with the next group's fsync, so a receiver's acknowledgements
/// do not double the fsyncs per message.
fn needs_sync(entries: &[(u64, session::Record)]) -> bool {
    !entries
        .iter()
        .all(|(_, r)| matches!(r, session::Record::Ack { .. }))
}

/// A short reason for a failed write, for the client's error line.
fn io_reason(e: &io::Error) -> NotStored {
    match e.kind() {
        io::ErrorKind::StorageFull => NotStored::DiskFull,
        io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => NotStored::StorageLimit,
        _ => NotStored::WriteFailed,
    }
}

fn run_timers(shared: &Shared) {
    let mut heap = lock(&shared.timers.heap);
    loop {
        let now = Instant::now();
        match heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {
                let Some(Reverse((_, sid))) = heap.pop() else {
                    continue;
                };
                drop(heap);
                shared.with_registry(|reg| reg.invite_wait_over(sid));
                heap = lock(&shared.timers.heap);
            }
            Some(Reverse((at, _))) => {
                let wait = *at - now;
                heap = shared
                    .timers
                    .cv
                    .wait_timeout(heap, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            None => {
                heap = shared
                    .timers
                    .cv
                    .wait(heap)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// Reads from a stream with the remaining time to `deadline` as the read timeout, so
/// a login dribbled byte by byte still ends at the grace time.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&*self.stream).read(buf)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs the login; on success returns the username, the login_res frame and the
/// established keys. Every failure closes the connection with no reply.
fn login(
    shared: &Shared,
    stream: &TcpStream,
    peer: SocketAddr,
    id: u64,
) -> Option<(String, Vec<u8>, login::Established)> {
    let deadline = Instant::now() + shared.config.login_grace;
    let frame = match mtp::read_frame(&mut DeadlineReader { stream, deadline }) {
        Ok(f) => f,
        Err(ReadError::Eof) => return None,
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            log::info!("{peer}: closed in the middle of its login request");
            return None;
        }
        Err(ReadError::Idle) | Err(ReadError::Io(_)) => {
            log::info!("{peer}: no login within the grace time");
            return None;
        }
        Err(ReadError::Mtp(e)) => {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected login frame: {e}"));
            return None;
        }
    };
    let opened = match ExpectLoginReq::open(&shared.key, &frame) {
        Ok(o) => o,
        Err(e) => {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected login request: {e}"));
            return None;
        }
    };
    let check = {
        let mut replay = lock(&shared.replay);
        opened.check_fresh(now_ns(), shared.config.login_window, &mut replay)
    };
    let check = match check {
        Ok(c) => c,
        Err(e) => {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected login request: {e}"));
            return None;
        }
    };
    let accounts = shared.users.current();
    let uid = {
        let _permit = shared.gate.acquire();
        // A connection evicted from the pre-login table while it waited here gets no
        // answer anyway: spend the PBKDF2 work on one that still can.
        if !lock(&shared.prelogin).contains_key(&id) {
            log::info!("{peer}: closed while waiting for its password check");
            return None;
        }
        accounts.check_password(check.username(), check.password())
    };
    let Some(uid) = uid else {
        shared.warnings.warn(format_args!(
            "{peer}: failed login for user {}",
            crate::names::shown(check.username())
        ));
        return None;
    };
    let name = check.username().to_string();
    match check.accept(uid) {
        Ok((frame, est)) => Some((name, frame, est)),
        Err(e) => {
            log::warn!("{peer}: cannot complete login: {e}");
            None
        }
    }
}

fn connection(
    shared: &Arc<Shared>,
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    id: u64,
    prelogin: PreloginGuard<'_>,
    total: TotalGuard,
) {
    let Some((name, login_res, est)) = login(shared, &stream, peer, id) else {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    };
    drop(prelogin);
    let uid = est.uid;
    let (tx, rx) = outbox::outbox(shared.config.queue_len);
    let wake = Arc::new(AtomicBool::new(false));
    // One socket shared by both threads (a dup per thread would triple the file
    // descriptors a connection costs).
    let (closer, write_half) = (stream.clone(), stream.clone());
    let conn = Conn {
        id,
        tx,
        wake_pending: wake.clone(),
        close: Box::new(move || {
            let _ = closer.shutdown(Shutdown::Both);
        }),
    };
    // The user counts as online (invites, pushes) before login_res is sent: the
    // writer sends login_res before anything queued here.
    shared.with_registry(|reg| reg.login(uid, conn));
    log::info!("{peer}: {name} logged in");
    let sh = shared.clone();
    let sender = est.sender;
    let writer_spawned = shared
        .connection_threads
        .spawn(move || writer(&sh, write_half, sender, rx, wake, uid, login_res));
    // The reader continues on a small connection thread; this one, whose stack grew
    // during the login's RSA and PBKDF2 work, goes back to the login threads.
    let sh = shared.clone();
    let receiver = est.receiver;
    let reader_spawned = writer_spawned.is_ok().then(|| {
        shared.connection_threads.spawn(move || {
            let me = Requester { uid, conn: id };
            serve(&sh, &stream, peer, me, &name, receiver);
            sh.with_registry(|reg| reg.logout(uid, id));
            let _ = stream.shutdown(Shutdown::Both);
            log::info!("{peer}: {name} disconnected");
            drop(total);
        })
    });
    if !matches!(reader_spawned, Some(Ok(_))) {
        log::warn!("{peer}: cannot start the connection's threads");
        shared.with_registry(|reg| reg.logout(uid, id));
    }
}

/// The reader loop of a logged-in connection.
fn serve(
    shared: &Shared,
    stream: &TcpStream,
    peer: SocketAddr,
    me: Requester,
    name: &str,
    mut receiver: mtp::Receiver,
) {
    let mut heartbeat_sent = false;
    let inflight = Arc::new(Inflight::default());
    // The socket's read timeout, set only when it changes (a system call per frame
    // otherwise).
    let mut timeout_set = None;
    loop {
        let timeout = if heartbeat_sent {
            shared.config.heartbeat_timeout
        } else {
            shared.config.heartbeat_idle
        };
        if timeout_set != Some(timeout) {
            if stream.set_read_timeout(Some(timeout)).is_err() {
                return;
            }
            timeout_set = Some(timeout);
        }
        let frame = match mtp::read_frame(&mut &*stream) {
            Ok(f) => f,
            Err(ReadError::Idle) if !heartbeat_sent => {
                shared.with_registry(|reg| reg.heartbeat(me));
                heartbeat_sent = true;
                continue;
            }
            Err(ReadError::Idle) => {
                log::info!("{peer}: {name} did not answer the heartbeat");
                return;
            }
            Err(ReadError::Eof) | Err(ReadError::Io(_)) => return,
            Err(ReadError::Mtp(e)) => {
                shared
                    .warnings
                    .warn(format_args!("{peer}: rejected frame from {name}: {e}"));
                return;
            }
        };
        let (header, payload) = match receiver.open(&frame) {
            Ok(x) => x,
            Err(e) => {
                shared
                    .warnings
                    .warn(format_args!("{peer}: rejected frame from {name}: {e}"));
                return;
            }
        };
        heartbeat_sent = false;
        if header.uid != me.uid {
            shared.warnings.warn(format_args!(
                "{peer}: rejected frame from {name}: header uid is not the user's"
            ));
            return;
        }
        if let Err(what) = dispatch(
            shared, &inflight, me, name, header.typ, header.sid, &payload,
        ) {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected frame from {name}: {what}"));
            return;
        }
        // Replies to stored requests are queued together when their group is stored:
        // keep them within half the queue, so a client that reads its replies is
        // never closed for sending quickly.
        inflight.wait_below(MAX_INFLIGHT.min(shared.config.queue_len / 2).max(1));
    }
}

/// Handles one authenticated request. `Err` closes the connection (a type the client
/// may not send, or a malformed heartbeat answer).
fn dispatch(
    shared: &Shared,
    inflight: &Arc<Inflight>,
    me: Requester,
    name: &str,
    typ: MsgType,
    sid: u64,
    payload: &[u8],
) -> Result<(), &'static str> {
    match typ {
        MsgType::InitReq => {
            init(shared, inflight, me, name, sid, payload);
        }
        MsgType::InviteRes => {
            // A malformed answer or an invalid key changes nothing; invite_res has no
            // reply to carry an error.
            let answer = proto::InviteRes::decode(payload).ok().filter(|a| match a {
                proto::InviteRes::Accept(k) => RsaPublic::from_base64(k).is_ok(),
                proto::InviteRes::Deny => true,
            });
            match answer {
                Some(a) => shared.with_registry_as(Some(inflight), |reg| reg.answer(me, sid, a)),
                None => log::info!("ignored a malformed invite answer from {name}"),
            }
        }
        MsgType::MsgReq => shared.with_registry_as(Some(inflight), |reg| {
            let req = proto::MsgReq::decode(payload);
            if reg.message(me, sid, req.envelope).is_some() {
                reg.wake_recipients(sid, me.uid);
            }
        }),
        MsgType::MsgRes => {
            if let Ok(ack) = proto::Ack::decode(payload) {
                shared.with_registry_as(Some(inflight), |reg| reg.ack(me, sid, ack.n));
            }
        }
        MsgType::CloseReq => shared.with_registry_as(Some(inflight), |reg| reg.close(me, sid)),
        MsgType::StatusReq => shared.with_registry_as(Some(inflight), |reg| reg.status(me, sid)),
        MsgType::StatusRes => {
            if sid != 0 || proto::Online::decode(payload).is_err() {
                return Err("status_res other than a heartbeat answer");
            }
        }
        MsgType::InitRes | MsgType::CloseRes | MsgType::InviteReq => {
            return Err("server-only message type")
        }
    }
    Ok(())
}

fn init(
    shared: &Shared,
    inflight: &Arc<Inflight>,
    me: Requester,
    name: &str,
    sid: u64,
    payload: &[u8],
) {
    let limits = shared.config.limits;
    let checked = (|| {
        if sid != 0 {
            return Err(Reason::InitSidNotZero);
        }
        let req = proto::InitReq::decode(payload, limits.max_participants)?;
        RsaPublic::from_base64(&req.key).map_err(|_| Reason::InvalidKey)?;
        let accounts = shared.users.current();
        let mut invitees = Vec::with_capacity(req.invitees.len());
        for invitee in &req.invitees {
            if !crate::names::valid_username(invitee) {
                return Err(Reason::InvalidUserName);
            }
            let account = accounts
                .lookup(invitee)
                .ok_or_else(|| Reason::UnknownUser(invitee.clone()))?;
            invitees.push((account.uid, account.name.clone()));
        }
        Ok((req.key, invitees))
    })();
    let (key, invitees) = match checked {
        Ok(x) => x,
        Err(reason) => {
            shared.with_registry_as(Some(inflight), |reg| {
                reg.refuse(me, MsgType::InitRes, 0, &reason)
            });
            return;
        }
    };
    // Draw candidate sids outside the lock; a collision is astronomically rare.
    let mut candidates: Vec<u64> = (0..4)
        .filter_map(|_| crypto::random_nonzero_u64().ok())
        .collect();
    let followup = shared.with_registry_as(Some(inflight), |reg| {
        reg.init(me, name.to_string(), key, invitees, || {
            candidates
                .pop()
                .unwrap_or_else(|| crypto::random_nonzero_u64().unwrap_or(1))
        })
    });
    if let Some(sid) = followup.start_invite_timer {
        shared.schedule_invite_wait(sid);
    }
}

/// The writer thread: owns the outgoing MTP state, drains the queue, and pulls
/// deliveries from the store when woken.
fn writer(
    shared: &Shared,
    stream: Arc<TcpStream>,
    mut sender: mtp::Sender,
    rx: Inbox<Out>,
    wake: Arc<AtomicBool>,
    uid: u64,
    login_res: Vec<u8>,
) {
    let mut buf = login_res;
    let mut cursors: HashMap<u64, u64> = HashMap::new();
    let mut invited: HashSet<u64> = HashSet::new();
    let result = (|| -> io::Result<()> {
        (&*stream).write_all(&buf)?;
        buf.clear();
        while let Some(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(item) = next {
                match item {
                    Out::Frame(f) => {
                        sender
                            .seal_into(f.typ, f.sid, f.uid, &[&f.payload], &mut buf)
                            .map_err(io::Error::other)?;
                    }
                    Out::Wake => {
                        wake.store(false, Ordering::Release);
                        deliver(
                            shared,
                            &stream,
                            &mut sender,
                            &mut buf,
                            &mut cursors,
                            &mut invited,
                            uid,
                        )?;
                    }
                }
                flush_full(&stream, &mut buf)?;
                next = rx.try_recv();
            }
            (&*stream).write_all(&buf)?;
            buf.clear();
        }
        Ok(())
    })();
    if let Err(e) = result {
        log::debug!("writer for uid {uid:016x} ends: {e}");
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Sends the invitations and stored messages the user has not been sent yet on this
/// connection: invitations once each, messages in `n` order per session, a batch per
/// lock acquisition, so a large backlog is paced by the socket rather than queued.
/// Stops after a lock acquisition that found no session with a full batch: anything
/// stored after that comes with its own wake.
#[allow(clippy::too_many_arguments)] // the writer's state, passed apart to borrow it apart
fn deliver(
    shared: &Shared,
    stream: &TcpStream,
    sender: &mut mtp::Sender,
    buf: &mut Vec<u8>,
    cursors: &mut HashMap<u64, u64>,
    invited: &mut HashSet<u64>,
    uid: u64,
) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut invites = Vec::new();
    let mut first = true;
    loop {
        let mut more = false;
        {
            let reg = lock(&shared.registry);
            if std::mem::take(&mut first) {
                // Unanswered invitations first, each once per connection.
                invites.extend(
                    reg.pending_invites(uid)
                        .into_iter()
                        .filter(|(sid, _)| invited.insert(*sid)),
                );
            }
            for (sid, acked) in reg.delivery_points(uid) {
                let cursor = cursors.entry(sid).or_insert(acked);
                *cursor = (*cursor).max(acked);
                if let Some(msgs) = reg.pending_for(uid, sid, *cursor, DELIVERY_BATCH) {
                    more |= msgs.len() == DELIVERY_BATCH;
                    batch.extend(
                        msgs.into_iter()
                            .map(|(n, author, env)| (sid, n, author, env)),
                    );
                }
            }
        }
        for (sid, creator) in invites.drain(..) {
            sender
                .seal_into(
                    MsgType::InviteReq,
                    sid,
                    creator,
                    &[&proto::InviteReq.encode()],
                    buf,
                )
                .map_err(io::Error::other)?;
            flush_full(stream, buf)?;
        }
        for (sid, n, author, envelope) in batch.drain(..) {
            sender
                .seal_into(
                    MsgType::MsgReq,
                    sid,
                    author,
                    &[&proto::Delivery::prefix(n), &envelope],
                    buf,
                )
                .map_err(io::Error::other)?;
            flush_full(stream, buf)?;
            cursors.insert(sid, n);
        }
        if !more {
            return Ok(());
        }
    }
}

/// Writes `buf` out once it holds [`WRITE_BUFFER`] bytes.
fn flush_full(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.len() >= WRITE_BUFFER {
        (&*stream).write_all(buf)?;
        buf.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_groups_of_acknowledgements_skip_the_fsync() {
        use session::Record;
        let ack = |n| (n, Record::Ack { sid: 7, uid: 9, n });
        assert!(!needs_sync(&[ack(1)]));
        assert!(!needs_sync(&[ack(1), ack(2)]));
        let close = (3, Record::Close { sid: 7 });
        assert!(needs_sync(&[ack(1), close.clone()]));
        assert!(needs_sync(&[close]));
    }

    #[test]
    fn connection_capacity_leaves_room_for_logins_and_everything_else() {
        // 2048 reserved, 72 waiting threads and 64 login threads at 4 mappings each.
        assert_eq!(
            connection_capacity(65_530, 100, 64),
            (65_530 - 100 - 2048 - 288 - 256) / 8
        );
        assert_eq!(connection_capacity(1_000, 100, 64), 0);
        assert!(connection_capacity(1 << 20, 100, 64) > DEFAULT_MAX_CONNECTIONS);
    }
}
