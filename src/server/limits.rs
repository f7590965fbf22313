//! What connections may cost before and after login: admission to the table of
//! connections still logging in (the table itself is [`super::prelogin`]), the
//! connection count, the memory-mapping budget, the thread sizes, and the rate of
//! security warnings.
//!
//! It exists so that every pre-authentication limit and every resource bound of the
//! server is in one place with its reason (OpenSSH's MaxStartups and LoginGraceTime
//! are the model). It must never parse untrusted bytes, never block on a socket, and
//! never hold one of its locks while closing a connection or logging.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::prelogin::{Actions, Caps, Outcome, Source, Why, PRELOGIN_EVICT_AGE};
use super::{conn, lock, Config, Shared};
use crate::crypto;
/// Memory mappings a logged-in connection costs: two threads, each with a stack, its
/// guard page, a signal stack and its guard page.
pub const MAPS_PER_CONNECTION: usize = 8;
/// Memory mappings a login thread costs while it runs.
const MAPS_PER_LOGIN: usize = 4;
/// Memory mappings left for everything else (allocator arenas, files, libraries).
const MAPS_RESERVE: usize = 2048;
/// Stack of the thread that runs a connection's login (RSA and PBKDF2 go deep). It
/// is done after the login, so what it touched is not kept for an idle connection.
pub(super) const LOGIN_STACK: usize = 256 * 1024;
/// Stack of a logged-in connection's reader and writer threads: they parse, seal and
/// open frames only (measured at 8 to 12 KiB touched).
pub(super) const CONNECTION_STACK: usize = 64 * 1024;
/// Finished login threads kept waiting for the next login (see
/// [`ThreadCache`](crate::threads::ThreadCache)): PBKDF2 runs one per core, so more
/// than a few are seldom busy at once.
pub(super) const IDLE_LOGIN_THREADS: usize = 8;
/// Finished reader and writer threads kept waiting for the next connection: enough
/// for a burst of reconnections, at about 12 KiB each.
pub(super) const IDLE_CONNECTION_THREADS: usize = 64;
/// Memory mappings the waiting threads of both caches cost at most.
const MAPS_CACHED_THREADS: usize = (IDLE_LOGIN_THREADS + IDLE_CONNECTION_THREADS) * MAPS_PER_LOGIN;
/// Security warnings logged per second at most; the rest are counted.
const WARNINGS_PER_SECOND: u32 = 20;

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
pub(super) fn fit_connections_to_map_count(config: &mut Config) {
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

/// Counts a connection in the total for as long as it lives, whichever thread holds it.
pub(super) struct TotalGuard(pub(super) Arc<Shared>);

impl Drop for TotalGuard {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Logs at most [`WARNINGS_PER_SECOND`] security warnings a second, so a flood cannot
/// fill the disk; the rest are counted and reported once.
pub(super) struct WarnLimiter {
    state: Mutex<(Instant, u32, u64)>,
}

impl WarnLimiter {
    pub(super) fn new() -> Self {
        WarnLimiter {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    pub(super) fn warn(&self, args: std::fmt::Arguments<'_>) {
        let (suppressed, log_this) = {
            let mut st = lock(&self.state);
            let now = Instant::now();
            let mut suppressed = 0;
            if now.duration_since(st.0) >= Duration::from_secs(1) {
                suppressed = st.2;
                *st = (now, 0, 0);
            }
            let log_this = st.1 < WARNINGS_PER_SECOND;
            if log_this {
                st.1 += 1;
            } else {
                st.2 += 1;
            }
            (suppressed, log_this)
        };
        if suppressed > 0 {
            log::warn!("{suppressed} similar warnings suppressed");
        }
        if log_this {
            log::warn!("{args}");
        }
    }
}

/// The pre-login table's limits from the configuration.
pub(super) fn caps(config: &Config) -> Caps {
    Caps {
        max: config.max_prelogin,
        early_drop: config.early_drop,
        per_source: config.max_prelogin_per_source,
        penalties: config.penalties,
    }
}

/// A connection accepted and not yet logged in: what its login thread needs.
#[derive(Clone)]
pub(super) struct Incoming {
    pub(super) stream: Arc<TcpStream>,
    pub(super) peer: SocketAddr,
    /// When it was accepted: its login grace runs from here, however long it waited
    /// for a place.
    pub(super) accepted: Instant,
}

/// Admits a connection the listener accepted: counts it, then starts its login,
/// queues it behind its source's earlier connections, or closes it.
pub(super) fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let sh = &**shared;
    if sh.total.load(Ordering::Acquire) >= sh.config.max_connections {
        sh.warnings.warn(format_args!(
            "{peer}: refused, {} connections open",
            sh.config.max_connections
        ));
        return;
    }
    let id = sh.next_conn.fetch_add(1, Ordering::Relaxed);
    sh.total.fetch_add(1, Ordering::AcqRel);
    let now = Instant::now();
    let incoming = Incoming {
        stream: Arc::new(stream),
        peer,
        accepted: now,
    };
    let actions = sh
        .prelogin
        .arrive(id, Source::of(peer.ip()), incoming, now, roll());
    carry_out(shared, actions, Some(peer));
}

/// A random number below 100 for random early drop (0, which drops, if the system's
/// generator fails: refusing under pressure is the safe side).
fn roll() -> u32 {
    crypto::random_array::<4>().map_or(0, |b| u32::from_le_bytes(b) % 100)
}

/// Closes and starts what the pre-login table decided, outside its lock. `arrived`
/// names the connection whose arrival this is, for the log.
pub(super) fn carry_out(
    shared: &Arc<Shared>,
    mut actions: Actions<Incoming>,
    arrived: Option<SocketAddr>,
) {
    let sh = &**shared;
    loop {
        for c in actions.close.drain(..) {
            let peer = c.handle.peer;
            match c.why {
                Why::Full(max) => sh.warnings.warn(format_args!(
                    "{peer}: refused, {max} connections still logging in"
                )),
                Why::EarlyDrop => sh.warnings.warn(format_args!(
                    "{peer}: refused, random early drop ({} connections still logging in)",
                    sh.prelogin.len()
                )),
                Why::QueueFull(source) => sh.warnings.warn(format_args!(
                    "{peer}: refused, too many connections from {source} waiting to log in"
                )),
                Why::Evicted => match arrived {
                    Some(new) => sh.warnings.warn(format_args!(
                        "{peer}: closed, did not log in within {PRELOGIN_EVICT_AGE:?}, to admit {new}"
                    )),
                    None => sh.warnings.warn(format_args!(
                        "{peer}: closed, did not log in within {PRELOGIN_EVICT_AGE:?}"
                    )),
                },
            }
            let _ = c.handle.stream.shutdown(Shutdown::Both);
            if !c.had_thread {
                sh.total.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let mut failed = Actions::default();
        for (id, incoming) in actions.run.drain(..) {
            let shared2 = shared.clone();
            let peer = incoming.peer;
            let spawned = sh.login_threads.spawn(move || {
                let total = TotalGuard(shared2.clone());
                let prelogin = PreloginGuard::new(shared2.clone(), id);
                conn::connection(&shared2, incoming, id, prelogin, total);
            });
            if let Err(e) = spawned {
                log::warn!("{peer}: cannot start a connection thread: {e}");
                sh.total.fetch_sub(1, Ordering::AcqRel);
                let next = sh.prelogin.leave(id, Outcome::ServerSide, Instant::now());
                failed.run.extend(next.run);
                failed.close.extend(next.close);
            }
        }
        if failed.is_empty() {
            return;
        }
        actions = failed;
    }
}

/// Keeps a connection in the pre-login table until it logs in or ends, then gives
/// its place to the next one, with the outcome that sets its source's penalty (a
/// connection that ends without saying how sent no login request).
pub(super) struct PreloginGuard {
    shared: Arc<Shared>,
    id: u64,
    outcome: Outcome,
}

impl PreloginGuard {
    pub(super) fn new(shared: Arc<Shared>, id: u64) -> Self {
        PreloginGuard {
            shared,
            id,
            outcome: Outcome::NoRequest,
        }
    }

    /// Records how the login ended.
    pub(super) fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for PreloginGuard {
    fn drop(&mut self) {
        let next = self
            .shared
            .prelogin
            .leave(self.id, self.outcome, Instant::now());
        if !next.is_empty() {
            carry_out(&self.shared, next, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_capacity_leaves_room_for_logins_and_everything_else() {
        // 2048 reserved, 72 waiting threads and 64 login threads at 4 mappings each.
        assert_eq!(
            connection_capacity(65_530, 100, 64),
            (65_530 - 100 - 2048 - 288 - 256) / 8
        );
        assert_eq!(connection_capacity(1_000, 100, 64), 0);
        assert!(connection_capacity(1 << 20, 100, 64) > super::super::DEFAULT_MAX_CONNECTIONS);
    }
}
