//! What connections may cost before and after login: the table of connections still
//! logging in, the connection count, the memory-mapping budget, the thread sizes,
//! and the rate of security warnings.
//!
//! It exists so that every pre-authentication limit and every resource bound of the
//! server is in one place with its reason (OpenSSH's MaxStartups and LoginGraceTime
//! are the model). It must never parse untrusted bytes, never block on a socket, and
//! never hold one of its locks while closing a connection or logging.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Config, Shared};

/// When every pre-login slot is taken, a connection that has been logging in for at
/// least this long is closed to make room for the new one. A real client sends its
/// whole login request at once and is answered within milliseconds, so only idle or
/// dribbling connections are this old; without this, a thousand idle connections
/// would lock real users out for the whole grace time.
pub const PRELOGIN_EVICT_AGE: Duration = Duration::from_secs(1);
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

/// What [`Prelogin::enter`] did with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Entry<H> {
    /// It is in the table.
    Admitted,
    /// It is in the table, in place of this one, which has been logging in for at
    /// least [`PRELOGIN_EVICT_AGE`] and which the caller closes.
    Evicted(H),
    /// Every slot is taken by a connection younger than [`PRELOGIN_EVICT_AGE`]: the
    /// caller closes the new one.
    Full,
}

/// Connections still logging in: when each started, and a handle to close it.
pub(super) struct Prelogin<H> {
    table: Mutex<HashMap<u64, (Instant, H)>>,
}

impl<H> Prelogin<H> {
    pub(super) fn new() -> Self {
        Prelogin {
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Enters connection `id`, started `now`, unless `max` connections are logging in
    /// already: then the oldest makes room if it is old enough.
    pub(super) fn enter(&self, id: u64, handle: H, max: usize, now: Instant) -> Entry<H> {
        let mut table = lock(&self.table);
        let mut entry = Entry::Admitted;
        if table.len() >= max {
            let oldest = table
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, (t, _))| (*k, *t));
            match oldest {
                Some((old, since))
                    if now.saturating_duration_since(since) >= PRELOGIN_EVICT_AGE =>
                {
                    if let Some((_, h)) = table.remove(&old) {
                        entry = Entry::Evicted(h);
                    }
                }
                _ => return Entry::Full,
            }
        }
        table.insert(id, (now, handle));
        entry
    }

    /// Whether connection `id` is still in the table (it was not evicted).
    pub(super) fn contains(&self, id: u64) -> bool {
        lock(&self.table).contains_key(&id)
    }

    /// Connections in the table: those still logging in.
    pub(super) fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Takes connection `id` out of the table (it logged in, or it ended).
    pub(super) fn leave(&self, id: u64) {
        lock(&self.table).remove(&id);
    }
}

/// Keeps a connection in the pre-login table until it logs in or ends.
pub(super) struct PreloginGuard<'a, H>(pub(super) &'a Prelogin<H>, pub(super) u64);

impl<H> Drop for PreloginGuard<'_, H> {
    fn drop(&mut self) {
        self.0.leave(self.1);
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

    #[test]
    fn a_full_prelogin_table_refuses_while_every_connection_in_it_is_young() {
        let table = Prelogin::new();
        let start = Instant::now();
        assert_eq!(table.enter(1, "a", 2, start), Entry::Admitted);
        assert_eq!(table.enter(2, "b", 2, start), Entry::Admitted);
        let soon = start + PRELOGIN_EVICT_AGE / 2;
        assert_eq!(table.enter(3, "c", 2, soon), Entry::Full);
        assert!(!table.contains(3));
    }

    #[test]
    fn a_full_prelogin_table_evicts_its_oldest_connection_once_it_is_old_enough() {
        let table = Prelogin::new();
        let start = Instant::now();
        assert_eq!(table.enter(1, "old", 2, start), Entry::Admitted);
        let later = start + PRELOGIN_EVICT_AGE / 2;
        assert_eq!(table.enter(2, "young", 2, later), Entry::Admitted);
        let then = start + PRELOGIN_EVICT_AGE;
        assert_eq!(table.enter(3, "new", 2, then), Entry::Evicted("old"));
        assert!(!table.contains(1) && table.contains(2) && table.contains(3));
    }

    #[test]
    fn a_prelogin_guard_takes_its_connection_out_of_the_table() {
        let table = Prelogin::new();
        assert_eq!(table.enter(7, (), 1, Instant::now()), Entry::Admitted);
        drop(PreloginGuard(&table, 7));
        assert!(!table.contains(7));
        assert_eq!(table.enter(8, (), 1, Instant::now()), Entry::Admitted);
    }
}
