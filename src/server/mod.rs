//! `mpchatd`'s network side: the listener, a reader and a writer thread per
//! connection, the journal and timer threads, and the pre-authentication limits.
//!
//! This file holds the configuration, the state every thread shares, and
//! [`Server`]: binding, start-up, and the accept loop, which only accepts, counts and
//! spawns. The rest is split by job:
//!
//! - `state_dir`: the state directory's lock and the server key, at start-up;
//! - `prelogin`: the table of connections still logging in, with its caps per
//!   source, queues, penalties and random early drop (I/O-free);
//! - `limits`: admission to that table, the connection count, the memory-mapping
//!   budget, thread sizes and the warning rate;
//! - `conn`: one connection's life, from its login to its logout;
//! - `login`, `reader`, `writer`: its login thread, reader thread (parse and
//!   dispatch) and writer thread (seal, write, deliver);
//! - `journal`: the journal thread (group commit; error replies and reload after a
//!   failed write);
//! - `timers`: the invite-wait timer thread;
//! - `keys`: the server keys and their rollover (`rotate-key`, `retire-key`);
//! - `control`: the control socket's thread (`who`, `stats`, `backup`, key
//!   rollover, `reset-key`) and the table of who is online;
//! - `backup`: consistent copies of the state, from the running server or a stopped
//!   one; `ops`: the operator's subcommands, through the control socket or offline;
//! - `bindings`: the key replacement request and `reset-key` (the binding rules
//!   themselves are [`crate::bindings`], applied under the registry lock);
//! - `error`: why the server cannot start ([`StartError`]) or stops ([`RunError`]).
//!
//! Untrusted bytes are parsed only in the connection's own threads. Counts are kept
//! right on every exit path by RAII guards. Handlers lock the [`Registry`] briefly,
//! and every outgoing frame is sealed and written by the connection's writer thread,
//! which owns the outgoing MTP state.
//!
//! No part of the server may hold a lock across socket or disk I/O or cryptography,
//! parse untrusted bytes on the accept loop, or end the process: a fatal condition is
//! returned from [`Server::run`] for the binary to report.

mod backup;
mod bindings;
mod conn;
mod control;
mod error;
mod journal;
pub mod keys;
mod limits;
mod login;
pub mod ops;
mod prelogin;
mod reader;
mod state_dir;
mod timers;
mod writer;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::{self, Receiver as ChanReceiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::accounts::{PasswordGate, UsersFile};
use crate::login::{self as handshake, ReplayCache};
use crate::registry::Registry;
use crate::session::Limits;
use crate::store::{self, Journal};
use crate::threads::{ThreadCache, IDLE_THREAD_LINGER};

pub use error::{RunError, StartError};
use journal::{Batch, Inflight};
use keys::ServerKeys;
pub use limits::{connection_capacity, MAPS_PER_CONNECTION};
use limits::{Incoming, WarnLimiter};
use prelogin::Prelogin;
pub use prelogin::{
    EarlyDrop, Penalties, PENALISED_DECRYPT_INTERVAL, PRELOGIN_EVICT_AGE, QUEUED_PER_SOURCE,
};
pub use state_dir::{load_server_key, LOCK_FILE, SERVER_KEY_FILE, SERVER_PUB_FILE};
use timers::Timers;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5150";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mpchat";
/// A login must be complete within this time of the connection's start.
pub const DEFAULT_LOGIN_GRACE: Duration = Duration::from_secs(10);
/// Connections still logging in, at most.
pub const DEFAULT_MAX_PRELOGIN: usize = 64;
/// Random early drop from half the pre-login cap, at 30% there (OpenSSH's
/// MaxStartups default has the same shape: 10:30:100).
pub const DEFAULT_EARLY_DROP: EarlyDrop = EarlyDrop {
    start: DEFAULT_MAX_PRELOGIN / 2,
    rate: 30,
};
/// Connections from one source (an IPv4 address or an IPv6 /64) still logging in,
/// at most: a NAT with a few users logging in at once fits; one source alone fills an
/// eighth of the table.
pub const DEFAULT_MAX_PRELOGIN_PER_SOURCE: usize = 8;
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
/// Default for the most requests' records stored with one fsync (group commit).
pub const DEFAULT_MAX_GROUP: usize = 1024;

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
    /// Random early drop below that cap.
    pub early_drop: EarlyDrop,
    /// Cap on connections from one source still logging in (more wait their turn).
    pub max_prelogin_per_source: usize,
    /// What failed logins cost their source.
    pub penalties: Penalties,
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
            early_drop: DEFAULT_EARLY_DROP,
            max_prelogin_per_source: DEFAULT_MAX_PRELOGIN_PER_SOURCE,
            penalties: Penalties::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            login_window: handshake::DEFAULT_LOGIN_WINDOW,
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

/// Locks a mutex, recovering the data if a thread panicked while holding it (the
/// registry's invariants are kept by `apply`, which does not panic midway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every thread of the server shares.
struct Shared {
    config: Config,
    /// The keys logins are accepted under; replaced whole by a key rollover.
    keys: RwLock<Arc<ServerKeys>>,
    /// Who is online, with address and login time (for `mpchatd who`).
    who: control::WhoTable,
    users: UsersFile,
    gate: PasswordGate,
    replay: Mutex<ReplayCache>,
    registry: Mutex<Registry>,
    /// Signalled when the registry's suspension ends (see [`Registry::suspend`]).
    resumed: Condvar,
    /// Connections still logging in, and those waiting for a place.
    prelogin: Prelogin<Incoming>,
    total: AtomicUsize,
    next_conn: AtomicU64,
    timers: Timers,
    warnings: WarnLimiter,
    journal_tx: mpsc::Sender<Batch>,
    login_threads: ThreadCache,
    connection_threads: ThreadCache,
}

impl Shared {
    /// The keys logins are accepted under now.
    fn keys(&self) -> Arc<ServerKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Accepts logins under `keys` from now on.
    fn set_keys(&self, keys: ServerKeys) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// Runs `f` on the locked registry, then closes the connections it doomed, after
    /// the lock is released.
    fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        self.with_registry_as(None, f)
    }

    /// [`Shared::with_registry`] for a connection's request: records it produced go
    /// to the journal thread (queued under the lock, so journal order is the order of
    /// application), and their effects wait until they are stored.
    ///
    /// While the journal thread reads the state back after a failed write (the
    /// registry is suspended, its lock free), this waits for it to finish, as it
    /// would have waited for the lock: the request is then handled on the state that
    /// is on disk.
    fn with_registry_as<R>(
        &self,
        inflight: Option<&Arc<Inflight>>,
        f: impl FnOnce(&mut Registry) -> R,
    ) -> R {
        let mut reg = lock(&self.registry);
        while reg.is_suspended() {
            reg = self.resumed.wait(reg).unwrap_or_else(|e| e.into_inner());
        }
        self.release(reg, inflight, f)
    }

    /// [`Shared::with_registry`] without waiting for a suspension to end: for the
    /// journal thread, which suspends the registry and ends the suspension.
    fn with_registry_suspended_or_not<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        self.release(lock(&self.registry), None, f)
    }

    /// Runs `f`, queues the records it produced for the journal (or carries out its
    /// effects if there are none), releases the lock and closes what `f` doomed.
    fn release<R>(
        &self,
        mut reg: MutexGuard<'_, Registry>,
        inflight: Option<&Arc<Inflight>>,
        f: impl FnOnce(&mut Registry) -> R,
    ) -> R {
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
        let doomed = reg.take_doomed();
        drop(reg);
        for conn in doomed {
            (conn.close)();
        }
        r
    }
}

/// A bound, ready-to-run server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    journal: Option<(Journal, ChanReceiver<Batch>)>,
    /// The control socket, until its thread takes it (none if it could not be made).
    control: Option<UnixListener>,
    /// Held for the life of the process.
    _state_lock: std::fs::File,
}

impl Server {
    /// Loads or creates the state (key, accounts) and binds the listen address.
    pub fn bind(mut config: Config) -> Result<Server, StartError> {
        // The port first: a port in use is then reported before anything is created.
        let listener = TcpListener::bind(&config.listen).map_err(|source| StartError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
        let state_lock = state_dir::lock_state_dir(&config.state_dir)?;
        let (keys, created) = keys::load(&config.state_dir)?;
        if created {
            log::info!(
                "created server key {}",
                config.state_dir.join(SERVER_KEY_FILE).display()
            );
        }
        log::info!(
            "server key fingerprint {}",
            keys.current.public().fingerprint()
        );
        if let Some(old) = &keys.previous {
            log::info!(
                "also accepting the previous server key {} until mpchatd retire-key",
                old.public().fingerprint()
            );
        }
        backup::remove_leftovers(&config.state_dir);
        let users = UsersFile::open(&config.state_dir).map_err(|source| StartError::Accounts {
            dir: config.state_dir.clone(),
            source,
        })?;

        let recovered = crate::upgrade::open_state(&config.state_dir, config.limits)
            .map_err(StartError::Recover)?;
        let sessions = recovered.sessions;
        limits::fit_connections_to_map_count(&mut config);
        // Without the control socket the server still serves; only the operator's
        // commands that need the running server (who, stats, an online backup) fail,
        // and they say so.
        let control = match control::bind(&config.state_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!(
                    "cannot make the control socket {}: {e}; mpchatd who, stats, backup and the key commands will not reach this server",
                    crate::control::socket_path(&config.state_dir).display()
                );
                None
            }
        };
        let (journal_tx, journal_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            keys: RwLock::new(Arc::new(keys)),
            who: control::WhoTable::default(),
            users,
            gate: PasswordGate::new(),
            // Requests stamped before this process started are refused: an earlier
            // process may have accepted them, and its cache is gone.
            replay: Mutex::new(ReplayCache::starting_at(
                handshake::REPLAY_CACHE_CAPACITY,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            )),
            registry: Mutex::new(Registry::new(sessions, recovered.last_lsn)),
            resumed: Condvar::new(),
            prelogin: Prelogin::new(limits::caps(&config)),
            total: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            timers: Timers::new(),
            warnings: WarnLimiter::new(),
            journal_tx,
            login_threads: ThreadCache::new(
                limits::LOGIN_STACK,
                limits::IDLE_LOGIN_THREADS,
                IDLE_THREAD_LINGER,
            ),
            connection_threads: ThreadCache::new(
                limits::CONNECTION_STACK,
                limits::IDLE_CONNECTION_THREADS,
                IDLE_THREAD_LINGER,
            ),
            config,
        });
        Ok(Server {
            listener,
            shared,
            journal: Some((recovered.journal, journal_rx)),
            control,
            _state_lock: state_lock,
        })
    }

    /// The bound address (with the real port when listening on port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The server key's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.shared.keys().current.public().fingerprint()
    }

    /// Serves until the server cannot go on: starts the journal and timer threads and
    /// the accept loop, then returns only with the reason to stop (a thread that
    /// cannot start, or a state that cannot be read back after a failed write), for
    /// the caller to report and exit.
    pub fn run(mut self) -> RunError {
        let (stop_tx, stop_rx) = mpsc::channel::<RunError>();
        let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|source| RunError::Thread { name, source })
        };
        if let Some((journal, rx)) = self.journal.take() {
            let shared = self.shared.clone();
            let stop = stop_tx.clone();
            let journal_thread = move || {
                if let Err(e) = journal::run(&shared, journal, rx) {
                    let _ = stop.send(RunError::Reload(e));
                }
            };
            if let Err(e) = spawn("journal", Box::new(journal_thread)) {
                return e;
            }
        }
        drop(stop_tx);
        // Sessions still pending when the last process stopped go live now: their
        // creators' waits ended with it.
        self.shared.with_registry(|reg| {
            for sid in reg.pending_sessions() {
                reg.go_live(sid);
            }
        });
        let shared = self.shared.clone();
        if let Err(e) = spawn("timers", Box::new(move || timers::run(&shared))) {
            return e;
        }
        if let Some(listener) = self.control.take() {
            let shared = self.shared.clone();
            if let Err(e) = spawn("control", Box::new(move || control::run(&shared, listener))) {
                return e;
            }
        }
        // The accept loop has a thread of its own, so that this one can wait for a
        // reason to stop: a blocking accept cannot be interrupted.
        if let Err(e) = spawn("accept", Box::new(move || self.accept_loop())) {
            return e;
        }
        // Only the journal thread reports a stop; if it ends without one it panicked,
        // and a server that cannot store must not go on acknowledging nothing.
        stop_rx.recv().unwrap_or(RunError::JournalStopped)
    }

    /// Accepts connections forever.
    fn accept_loop(self) {
        loop {
            // The address comes with the connection: asked for later, it is gone if
            // the peer has reset the connection meanwhile, and the connection would
            // go unlogged.
            let (stream, peer) = match self.listener.accept() {
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
            limits::admit(&self.shared, stream, peer);
        }
    }
}
