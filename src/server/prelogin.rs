//! The table of connections still logging in, and who gets the next place in it: a
//! cap on the whole table with random early drop, a cap and a queue per source
//! address, and penalties for sources whose connections fail (OpenSSH's MaxStartups,
//! PerSourceMaxStartups and PerSourcePenalties are the model).
//!
//! It exists so that an attacker without a password, from one address or a few,
//! holds only a bounded share of the logins in progress and of the RSA work they
//! cost, while real users from other addresses, and a real user on the attacker's
//! own address, still get their turn. It is I/O-free: the caller passes `now` and
//! the random roll, and carries out the [`Actions`] (start a login thread, close a
//! socket) after the table's lock is released.
//!
//! It must never close or start anything itself, never block, and never hold its
//! lock across anything but its own bookkeeping.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// When the table is full, a connection that has been waiting for its login request
/// for at least this long is closed to make room for a new one; and a connection
/// that has waited this long is closed as soon as another from its source is queued.
/// A real client sends its whole login request at once, so only idle or dribbling
/// connections are this old.
pub const PRELOGIN_EVICT_AGE: Duration = Duration::from_secs(1);
/// Connections of one source that may wait for a place, at most; more are closed at
/// once. Far more than a source has at once unless it floods; large enough that a
/// real client queued behind a closed-loop flood of many workers still gets its turn.
pub const QUEUED_PER_SOURCE: usize = 128;
/// A penalised source starts at most one RSA decryption per this interval: at most
/// 20 a second, a twentieth of one core, however many cores the server has.
pub const PENALISED_DECRYPT_INTERVAL: Duration = Duration::from_millis(50);
/// Sources whose penalty is remembered after their last connection ended, at most
/// (OpenSSH's max-sources); past this, the penalties of quiet sources are forgotten
/// rather than the table grown.
pub const MAX_REMEMBERED_SOURCES: usize = 65_536;

/// Where a connection comes from, for the per-source limits: an IPv4 address, or the
/// /64 network of an IPv6 address (one host is commonly given a whole /64). An
/// IPv4-mapped IPv6 address counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(a) >> 64) as u64),
            },
        }
    }

    /// One number per source, for keys outside this module (the PBKDF2 gate).
    pub fn key(self) -> u128 {
        match self {
            Source::V4(a) => (0xffff << 32) | u128::from(a),
            Source::V6(net) => u128::from(net) << 64,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            Source::V6(net) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

/// Random early drop (OpenSSH's MaxStartups `start:rate:full`): from `start`
/// connections logging in, a new connection is refused with probability `rate`
/// percent, rising linearly to 100% at the cap; a new connection from a penalised
/// source is refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyDrop {
    /// Connections logging in from which new ones may be dropped.
    pub start: usize,
    /// Percent dropped at `start`.
    pub rate: u32,
}

/// Penalties that a source's failures earn it, each added to what it has, up to
/// `max`; a penalty runs down in real time. A source with at least `threshold` left
/// is penalised: one of its connections logs in at a time, it starts at most one
/// RSA decryption per [`PENALISED_DECRYPT_INTERVAL`], it comes last at the PBKDF2
/// gate, and random early drop refuses it outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalties {
    /// A connection that ended without a whole login request: closed or reset by its
    /// peer, or closed to make room while it idled or dribbled.
    pub noauth: Duration,
    /// A login request refused: unreadable, for another server key, malformed, out
    /// of the window, replayed, or with a wrong password or an unknown name.
    pub authfail: Duration,
    /// A connection that did not log in within the grace time.
    pub grace_exceeded: Duration,
    /// The penalty from which a source is penalised.
    pub threshold: Duration,
    /// The most penalty a source accrues; zero turns penalties off.
    pub max: Duration,
}

impl Default for Penalties {
    /// OpenSSH's defaults: `noauth:1 authfail:5 grace-exceeded:10 min:15 max:600`.
    fn default() -> Self {
        Penalties {
            noauth: Duration::from_secs(1),
            authfail: Duration::from_secs(5),
            grace_exceeded: Duration::from_secs(10),
            threshold: Duration::from_secs(15),
            max: Duration::from_secs(600),
        }
    }
}

/// The table's limits, from the server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections logging in, at most (the table's size).
    pub max: usize,
    /// Random early drop below `max`.
    pub early_drop: EarlyDrop,
    /// Connections of one source logging in at once, at most (one if penalised).
    pub per_source: usize,
    /// What failures cost a source.
    pub penalties: Penalties,
}

impl Caps {
    /// Connections that may wait for a place, from every source together.
    fn queued_max(&self) -> usize {
        (4 * self.max).max(QUEUED_PER_SOURCE)
    }

    /// Places one source may hold at once, those of its connections waiting at the
    /// password check included: half the table (or its own cap, if more), so that
    /// a burst of logins from one NAT is queued rather than refused, and one source
    /// never holds the whole table.
    fn share(&self) -> usize {
        self.per_source.max(self.max / 2)
    }

    /// Whether a source with these counts may start another login now.
    fn may_start<H>(&self, s: &SourceState<H>, now: Instant) -> bool {
        let cap = if s.penalised(now, &self.penalties) {
            1
        } else {
            self.per_source
        };
        s.starting < cap && s.in_table < self.share()
    }
}

/// How a connection's login ended, for the penalty of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It logged in.
    LoggedIn,
    /// It ended before its whole login request arrived (closed, reset, made room).
    NoRequest,
    /// Its login request was refused.
    Refused,
    /// It did not log in within the grace time.
    GraceExceeded,
    /// The server gave up on it for a reason of its own (a thread it could not
    /// start, a full replay cache): no penalty.
    ServerSide,
}

/// Why the table closes a connection, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The table is full of connections younger than [`PRELOGIN_EVICT_AGE`].
    Full(usize),
    /// Random early drop refused it (or its source is penalised).
    EarlyDrop,
    /// Its source already has [`QUEUED_PER_SOURCE`] connections waiting, or every
    /// source together has as many as may wait.
    QueueFull(Source),
    /// It had waited this long for its login request when room was needed.
    Evicted,
}

/// A connection to close, and whether it had a login thread (one that did not was
/// queued or just arrived: nothing else will count it out).
#[derive(Debug)]
pub struct Closing<H> {
    /// The connection.
    pub handle: H,
    /// Why, for the log.
    pub why: Why,
    /// Whether a login thread runs for it (and will end by itself once closed).
    pub had_thread: bool,
}

/// What the caller must do after a call: start these logins, close these.
#[derive(Debug)]
pub struct Actions<H> {
    /// Connections whose login may start now: `(id, handle)`.
    pub run: Vec<(u64, H)>,
    /// Connections to close now.
    pub close: Vec<Closing<H>>,
}

impl<H> Default for Actions<H> {
    fn default() -> Self {
        Actions {
            run: Vec::new(),
            close: Vec::new(),
        }
    }
}

impl<H> Actions<H> {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.run.is_empty() && self.close.is_empty()
    }
}

/// Where a connection in the table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for its login request: it may be closed to make room.
    Reading,
    /// Its request arrived; decrypting and checking it.
    Checking,
    /// At the PBKDF2 gate or past it: no longer counted against its source's place
    /// (the gate bounds what one source has there).
    AtGate,
}

#[derive(Debug)]
struct Entry<H> {
    source: Source,
    /// When the connection was accepted: how long it may wait for its request
    /// before it gives way by itself ([`Prelogin::should_yield`]).
    since: Instant,
    /// When it got its place: how long it may hold it before an arrival closes it
    /// (a connection let in late has its request in the socket, and a thread still
    /// to read it).
    placed: Instant,
    stage: Stage,
    handle: H,
}

#[derive(Debug)]
struct SourceState<H> {
    /// Connections in the table in [`Stage::Reading`] or [`Stage::Checking`].
    starting: usize,
    /// Connections in the table, at any stage.
    in_table: usize,
    /// Connections waiting for a place, in arrival order: `(id, accepted, handle)`.
    queued: VecDeque<(u64, Instant, H)>,
    /// When the source's penalty runs out (in the past: none).
    penalty_until: Instant,
    /// The earliest a penalised source's next RSA decryption may start.
    next_decrypt: Instant,
}

impl<H> SourceState<H> {
    fn new(now: Instant) -> Self {
        SourceState {
            starting: 0,
            in_table: 0,
            queued: VecDeque::new(),
            penalty_until: now,
            next_decrypt: now,
        }
    }

    fn penalised(&self, now: Instant, p: &Penalties) -> bool {
        !p.max.is_zero() && self.penalty_until.saturating_duration_since(now) >= p.threshold
    }

    fn penalise(&mut self, now: Instant, add: Duration, p: &Penalties) {
        if p.max.is_zero() || add.is_zero() {
            return;
        }
        let from = self.penalty_until.max(now);
        self.penalty_until = (from + add).min(now + p.max);
    }

    fn idle(&self, now: Instant) -> bool {
        self.in_table == 0 && self.queued.is_empty() && self.penalty_until <= now
    }
}

struct Table<H> {
    entries: HashMap<u64, Entry<H>>,
    sources: HashMap<Source, SourceState<H>>,
    /// Sources with queued connections, in turn order.
    turns: VecDeque<Source>,
    queued: usize,
    /// When quiet sources were last forgotten (a scan of every source, so at most
    /// once per [`FORGET_EVERY`]).
    last_forget: Option<Instant>,
}

/// How often the table forgets quiet sources: each time it scans them all.
const FORGET_EVERY: Duration = Duration::from_secs(1);

/// The connections still logging in, and the queues of those waiting for a place.
pub struct Prelogin<H> {
    caps: Caps,
    table: Mutex<Table<H>>,
}

impl<H: Clone> Prelogin<H> {
    /// An empty table with these limits.
    pub fn new(caps: Caps) -> Self {
        Prelogin {
            caps,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                sources: HashMap::new(),
                turns: VecDeque::new(),
                queued: 0,
                last_forget: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<H>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection `id` from `source` was accepted at `now`. `roll` is a random
    /// number below 100, for random early drop. It is given a place (it appears in
    /// [`Actions::run`]), queued behind its source's earlier connections, or closed.
    pub fn arrive(
        &self,
        id: u64,
        source: Source,
        handle: H,
        now: Instant,
        roll: u32,
    ) -> Actions<H> {
        let caps = &self.caps;
        let mut out = Actions::default();
        let mut t = self.lock();
        let penalised = t
            .sources
            .get(&source)
            .is_some_and(|s| s.penalised(now, &caps.penalties));
        let occupied = t.entries.len();
        if occupied >= caps.max {
            match t.oldest_reading(now, None) {
                Some(old) => t.evict(old, now, caps, &mut out),
                None => {
                    out.close.push(Closing {
                        handle,
                        why: Why::Full(caps.max),
                        had_thread: false,
                    });
                    return out;
                }
            }
        } else if occupied >= caps.early_drop.start
            && (penalised || roll < drop_percent(occupied, caps))
        {
            out.close.push(Closing {
                handle,
                why: Why::EarlyDrop,
                had_thread: false,
            });
            return out;
        }
        // The table has room now: it was not full, or a connection was evicted.
        let (may_start, queue_len) = {
            let s = t
                .sources
                .entry(source)
                .or_insert_with(|| SourceState::new(now));
            (caps.may_start(s, now), s.queued.len())
        };
        if may_start && queue_len == 0 {
            t.start(id, source, now, now, handle, &mut out);
        } else if queue_len >= QUEUED_PER_SOURCE || t.queued >= caps.queued_max() {
            out.close.push(Closing {
                handle,
                why: Why::QueueFull(source),
                had_thread: false,
            });
        } else {
            if let Some(s) = t.sources.get_mut(&source) {
                s.queued.push_back((id, now, handle));
            }
            if queue_len == 0 {
                t.turns.push_back(source);
            }
            t.queued += 1;
            // Make room: the source's oldest connection that has waited long enough
            // for its request gives way to the ones queued behind it.
            if let Some(old) = t.oldest_reading(now, Some(source)) {
                t.evict(old, now, caps, &mut out);
            }
        }
        t.fill(now, caps, &mut out);
        t.forget_quiet_sources(now);
        out
    }

    /// Connection `id`'s login request has arrived: it can no longer be closed to
    /// make room. Returns when its RSA decryption may start: now, or, for a
    /// penalised source, no sooner than [`PENALISED_DECRYPT_INTERVAL`] after the
    /// source's previous one; `None` if it was closed to make room meanwhile.
    pub fn request_read(&self, id: u64, now: Instant) -> Option<Instant> {
        let caps = &self.caps;
        let mut t = self.lock();
        let e = t.entries.get_mut(&id)?;
        e.stage = Stage::Checking;
        let source = e.source;
        let Some(s) = t.sources.get_mut(&source) else {
            return Some(now);
        };
        if !s.penalised(now, &caps.penalties) {
            return Some(now);
        }
        let at = s.next_decrypt.max(now);
        s.next_decrypt = at + PENALISED_DECRYPT_INTERVAL;
        Some(at)
    }

    /// Connection `id` has reached the PBKDF2 gate: its place among its source's
    /// logins in progress goes to the next one queued (it still holds its place in
    /// the table, and in its source's share of it).
    pub fn reached_gate(&self, id: u64, now: Instant) -> Actions<H> {
        let mut out = Actions::default();
        let mut t = self.lock();
        let Some(e) = t.entries.get_mut(&id) else {
            return out;
        };
        if e.stage != Stage::AtGate {
            e.stage = Stage::AtGate;
            let source = e.source;
            if let Some(s) = t.sources.get_mut(&source) {
                s.starting = s.starting.saturating_sub(1);
            }
        }
        t.fill(now, &self.caps, &mut out);
        out
    }

    /// Whether connection `id`, still waiting for its login request, should give up
    /// its place: it has waited [`PRELOGIN_EVICT_AGE`] since it was accepted and
    /// another connection of its source is queued behind it.
    pub fn should_yield(&self, id: u64, now: Instant) -> bool {
        let t = self.lock();
        let Some(e) = t.entries.get(&id) else {
            return true;
        };
        e.stage == Stage::Reading
            && now.saturating_duration_since(e.since) >= PRELOGIN_EVICT_AGE
            && t.sources
                .get(&e.source)
                .is_some_and(|s| !s.queued.is_empty())
    }

    /// Whether `source` is penalised now.
    pub fn penalised(&self, source: Source, now: Instant) -> bool {
        self.lock()
            .sources
            .get(&source)
            .is_some_and(|s| s.penalised(now, &self.caps.penalties))
    }

    /// Connection `id` left the table (it logged in, failed or ended) with `outcome`,
    /// which sets its source's penalty. Its place goes to a queued connection.
    pub fn leave(&self, id: u64, outcome: Outcome, now: Instant) -> Actions<H> {
        let caps = &self.caps;
        let mut out = Actions::default();
        let mut t = self.lock();
        if let Some(e) = t.entries.remove(&id) {
            if let Some(s) = t.sources.get_mut(&e.source) {
                if e.stage != Stage::AtGate {
                    s.starting = s.starting.saturating_sub(1);
                }
                s.in_table = s.in_table.saturating_sub(1);
                let p = &caps.penalties;
                let add = match outcome {
                    Outcome::LoggedIn | Outcome::ServerSide => Duration::ZERO,
                    Outcome::NoRequest => p.noauth,
                    Outcome::Refused => p.authfail,
                    Outcome::GraceExceeded => p.grace_exceeded,
                };
                s.penalise(now, add, p);
            }
        }
        t.fill(now, caps, &mut out);
        out
    }

    /// Connections in the table now (not counting the queued ones).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Connections queued for a place now.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().queued
    }
}

/// The percentage of new connections dropped with `occupied` connections logging in.
fn drop_percent(occupied: usize, caps: &Caps) -> u32 {
    let EarlyDrop { start, rate } = caps.early_drop;
    if occupied < start {
        return 0;
    }
    if caps.max <= start {
        return 100;
    }
    let span = (caps.max - start) as u64;
    let over = (occupied - start) as u64;
    let rate = u64::from(rate.min(100));
    (rate + (100 - rate) * over / span) as u32
}

impl<H: Clone> Table<H> {
    /// Gives connection `id` of `source`, accepted at `since`, a place at `now`.
    fn start(
        &mut self,
        id: u64,
        source: Source,
        since: Instant,
        now: Instant,
        handle: H,
        out: &mut Actions<H>,
    ) {
        if let Some(s) = self.sources.get_mut(&source) {
            s.starting += 1;
            s.in_table += 1;
        }
        self.entries.insert(
            id,
            Entry {
                source,
                since,
                placed: now,
                stage: Stage::Reading,
                handle: handle.clone(),
            },
        );
        out.run.push((id, handle));
    }

    /// The connection (of `source`, if given) that has held its place longest while
    /// still waiting for its login request, if that is [`PRELOGIN_EVICT_AGE`] or
    /// more.
    fn oldest_reading(&self, now: Instant, source: Option<Source>) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.stage == Stage::Reading && source.is_none_or(|s| s == e.source))
            .filter(|(_, e)| now.saturating_duration_since(e.placed) >= PRELOGIN_EVICT_AGE)
            .min_by_key(|(id, e)| (e.placed, **id))
            .map(|(id, _)| *id)
    }

    /// Takes connection `id` out of the table for closing, with the penalty of a
    /// connection that sent no request.
    fn evict(&mut self, id: u64, now: Instant, caps: &Caps, out: &mut Actions<H>) {
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        if let Some(s) = self.sources.get_mut(&e.source) {
            s.starting = s.starting.saturating_sub(1);
            s.in_table = s.in_table.saturating_sub(1);
            s.penalise(now, caps.penalties.noauth, &caps.penalties);
        }
        out.close.push(Closing {
            handle: e.handle,
            why: Why::Evicted,
            had_thread: true,
        });
    }

    /// Gives free places to queued connections, a source at a time in turn, each
    /// source within its own cap.
    fn fill(&mut self, now: Instant, caps: &Caps, out: &mut Actions<H>) {
        let mut passed = 0;
        while self.entries.len() < caps.max && passed < self.turns.len() {
            let Some(source) = self.turns.pop_front() else {
                break;
            };
            let Some(s) = self.sources.get_mut(&source) else {
                continue;
            };
            let mut started = None;
            if caps.may_start(s, now) {
                started = s.queued.pop_front();
            }
            let more = !s.queued.is_empty();
            match started {
                Some((id, since, handle)) => {
                    self.queued -= 1;
                    self.start(id, source, since, now, handle, out);
                    passed = 0;
                }
                None => passed += 1,
            }
            if more {
                self.turns.push_back(source);
            }
        }
    }

    /// Forgets sources with nothing in the table, nothing queued and no penalty left;
    /// past [`MAX_REMEMBERED_SOURCES`], forgets quiet sources' penalties too. It scans
    /// every source, so it runs at most once per [`FORGET_EVERY`]: a flood of
    /// arrivals must not make each one pay for it.
    fn forget_quiet_sources(&mut self, now: Instant) {
        if self
            .last_forget
            .is_some_and(|t| now.saturating_duration_since(t) < FORGET_EVERY)
        {
            return;
        }
        self.last_forget = Some(now);
        self.sources.retain(|_, s| !s.idle(now));
        if self.sources.len() > MAX_REMEMBERED_SOURCES {
            self.sources
                .retain(|_, s| s.in_table > 0 || !s.queued.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Source = Source::V4(0x7f00_0001);
    const B: Source = Source::V4(0x7f00_0002);

    fn caps(max: usize, per_source: usize) -> Caps {
        Caps {
            max,
            early_drop: EarlyDrop {
                start: max,
                rate: 100,
            },
            per_source,
            penalties: Penalties::default(),
        }
    }

    fn ran(a: &Actions<&'static str>) -> Vec<&'static str> {
        a.run.iter().map(|(_, h)| *h).collect()
    }

    fn closed(a: &Actions<&'static str>) -> Vec<(&'static str, Why)> {
        a.close.iter().map(|c| (c.handle, c.why)).collect()
    }

    #[test]
    fn a_full_prelogin_table_refuses_while_every_connection_in_it_is_young() {
        let table = Prelogin::new(caps(2, 8));
        let start = Instant::now();
        assert_eq!(ran(&table.arrive(1, A, "a", start, 99)), ["a"]);
        assert_eq!(ran(&table.arrive(2, B, "b", start, 99)), ["b"]);
        let soon = start + PRELOGIN_EVICT_AGE / 2;
        let third = table.arrive(3, A, "c", soon, 99);
        assert_eq!(closed(&third), [("c", Why::Full(2))]);
        assert!(third.run.is_empty());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_full_prelogin_table_evicts_its_oldest_connection_once_it_is_old_enough() {
        let table = Prelogin::new(caps(2, 8));
        let start = Instant::now();
        table.arrive(1, A, "old", start, 99);
        let later = start + PRELOGIN_EVICT_AGE / 2;
        table.arrive(2, B, "young", later, 99);
        let then = start + PRELOGIN_EVICT_AGE;
        let third = table.arrive(3, B, "new", then, 99);
        assert_eq!(closed(&third), [("old", Why::Evicted)]);
        assert!(third.close[0].had_thread);
        assert_eq!(ran(&third), ["new"]);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_connection_whose_request_arrived_is_never_evicted() {
        let table = Prelogin::new(caps(1, 8));
        let start = Instant::now();
        table.arrive(1, A, "checking", start, 99);
        table.request_read(1, start);
        let later = start + 10 * PRELOGIN_EVICT_AGE;
        assert_eq!(
            closed(&table.arrive(2, B, "new", later, 99)),
            [("new", Why::Full(1))]
        );
    }

    #[test]
    fn a_connection_that_leaves_the_table_frees_its_place() {
        let table = Prelogin::new(caps(1, 8));
        let now = Instant::now();
        table.arrive(7, A, "a", now, 99);
        assert!(table.leave(7, Outcome::LoggedIn, now).is_empty());
        assert_eq!(ran(&table.arrive(8, A, "b", now, 99)), ["b"]);
    }

    #[test]
    fn a_source_at_its_cap_queues_its_next_connections_in_order() {
        let table = Prelogin::new(caps(64, 2));
        let now = Instant::now();
        assert_eq!(ran(&table.arrive(1, A, "a1", now, 99)), ["a1"]);
        assert_eq!(ran(&table.arrive(2, A, "a2", now, 99)), ["a2"]);
        assert!(table.arrive(3, A, "a3", now, 99).is_empty());
        assert!(table.arrive(4, A, "a4", now, 99).is_empty());
        // Another source is not held up.
        assert_eq!(ran(&table.arrive(5, B, "b1", now, 99)), ["b1"]);
        assert_eq!((table.len(), table.queued()), (3, 2));
        assert_eq!(ran(&table.leave(1, Outcome::LoggedIn, now)), ["a3"]);
        // Reaching the gate frees the source's place too.
        assert_eq!(ran(&table.reached_gate(2, now)), ["a4"]);
        assert_eq!(table.queued(), 0);
    }

    #[test]
    fn a_source_holds_at_most_half_the_table_its_checks_included() {
        let table = Prelogin::new(caps(8, 2));
        let now = Instant::now();
        for id in 0..4 {
            let a = table.arrive(id, A, "a", now, 99);
            table.request_read(id, now);
            table.reached_gate(id, now);
            assert_eq!(ran(&a), ["a"], "connection {id}");
        }
        // Four of eight places: the next waits, though none of A's is starting.
        assert!(table.arrive(9, A, "a5", now, 99).is_empty());
        assert_eq!(ran(&table.arrive(10, B, "b", now, 99)), ["b"]);
        assert_eq!(ran(&table.leave(0, Outcome::LoggedIn, now)), ["a5"]);
    }

    #[test]
    fn a_source_queue_has_a_bound() {
        let table = Prelogin::new(caps(1_000, 1));
        let now = Instant::now();
        table.arrive(0, A, "first", now, 99);
        for id in 1..=QUEUED_PER_SOURCE as u64 {
            assert!(table.arrive(id, A, "queued", now, 99).is_empty());
        }
        let over = table.arrive(999, A, "over", now, 99);
        assert_eq!(closed(&over), [("over", Why::QueueFull(A))]);
        assert!(!over.close[0].had_thread);
    }

    #[test]
    fn a_queued_connection_makes_an_idle_one_of_its_source_give_way() {
        let table = Prelogin::new(caps(64, 1));
        let start = Instant::now();
        table.arrive(1, A, "idle", start, 99);
        let young = start + PRELOGIN_EVICT_AGE / 2;
        assert!(table.arrive(2, A, "q1", young, 99).is_empty());
        assert!(!table.should_yield(1, young));
        let later = start + PRELOGIN_EVICT_AGE;
        // The idle one, now old enough, yields when asked...
        assert!(table.should_yield(1, later));
        // ...and a new arrival closes it outright, the queue moving up.
        let third = table.arrive(3, A, "q2", later, 99);
        assert_eq!(closed(&third), [("idle", Why::Evicted)]);
        assert_eq!(ran(&third), ["q1"]);
        assert_eq!(table.request_read(1, later), None, "it was closed");
        // q1's age counts from its arrival, not from its place: once that is old
        // enough it yields too, while q2 waits, unless its request has arrived.
        assert!(!table.should_yield(2, later));
        let q1_old = young + PRELOGIN_EVICT_AGE;
        assert!(table.should_yield(2, q1_old));
        // But an arrival cannot close it before it has held its place that long: its
        // thread may not have read the request already in its socket.
        let fourth = table.arrive(4, A, "q3", q1_old, 99);
        assert!(fourth.is_empty(), "{:?}", closed(&fourth));
        assert!(table.request_read(2, q1_old).is_some());
        assert!(!table.should_yield(2, q1_old));
    }

    #[test]
    fn failures_penalise_a_source_down_to_one_login_at_a_time_then_run_down() {
        let table = Prelogin::new(caps(64, 8));
        let t0 = Instant::now();
        for id in 0..3 {
            table.arrive(id, A, "fail", t0, 99);
            table.leave(id, Outcome::Refused, t0);
        }
        assert!(table.penalised(A, t0));
        assert!(!table.penalised(B, t0));
        assert_eq!(ran(&table.arrive(10, A, "a", t0, 99)), ["a"]);
        assert!(table.arrive(11, A, "b", t0, 99).is_empty(), "queued");
        // RSA decryptions are spaced.
        let first = table.request_read(10, t0);
        assert_eq!(first, Some(t0));
        assert_eq!(ran(&table.leave(10, Outcome::Refused, t0)), ["b"]);
        assert_eq!(
            table.request_read(11, t0),
            Some(t0 + PENALISED_DECRYPT_INTERVAL)
        );
        // 20 s of penalty runs down in real time: past 5 s it drops below 15 s.
        let later = t0 + Duration::from_secs(6);
        assert!(!table.penalised(A, later));
    }

    #[test]
    fn penalties_are_capped_and_can_be_turned_off() {
        let mut c = caps(64, 8);
        c.penalties.max = Duration::from_secs(20);
        let table = Prelogin::new(c);
        let t0 = Instant::now();
        for id in 0..100 {
            table.arrive(id, A, "x", t0, 99);
            table.leave(id, Outcome::GraceExceeded, t0);
        }
        assert!(table.penalised(A, t0 + Duration::from_secs(5)));
        assert!(!table.penalised(A, t0 + Duration::from_secs(6)));
        c.penalties.max = Duration::ZERO;
        let off = Prelogin::new(c);
        for id in 0..100 {
            off.arrive(id, A, "x", t0, 99);
            off.leave(id, Outcome::Refused, t0);
        }
        assert!(!off.penalised(A, t0));
    }

    #[test]
    fn random_early_drop_rises_from_its_rate_to_all_at_the_cap() {
        let mut c = caps(10, 100);
        c.early_drop = EarlyDrop { start: 5, rate: 30 };
        assert_eq!(drop_percent(4, &c), 0);
        assert_eq!(drop_percent(5, &c), 30);
        assert_eq!(drop_percent(7, &c), 58);
        assert_eq!(drop_percent(10, &c), 100);
        let table = Prelogin::new(c);
        let now = Instant::now();
        for id in 0..5 {
            assert_eq!(ran(&table.arrive(id, A, "a", now, 0)).len(), 1);
        }
        // At 5 of 10, 30% are dropped: a roll of 29 is, 30 is not.
        assert_eq!(
            closed(&table.arrive(5, B, "low", now, 29)),
            [("low", Why::EarlyDrop)]
        );
        assert_eq!(ran(&table.arrive(6, B, "high", now, 30)), ["high"]);
    }

    #[test]
    fn random_early_drop_refuses_a_penalised_source_outright() {
        let mut c = caps(10, 100);
        c.early_drop = EarlyDrop { start: 2, rate: 0 };
        let table = Prelogin::new(c);
        let now = Instant::now();
        for id in 0..3 {
            table.arrive(id, B, "fail", now, 99);
            table.leave(id, Outcome::Refused, now);
        }
        table.arrive(10, A, "a1", now, 99);
        table.arrive(11, A, "a2", now, 99);
        assert_eq!(ran(&table.arrive(12, A, "a3", now, 99)), ["a3"]);
        assert_eq!(
            closed(&table.arrive(13, B, "b", now, 99)),
            [("b", Why::EarlyDrop)]
        );
    }

    #[test]
    fn queued_sources_take_free_places_in_turn() {
        const C: Source = Source::V4(0x7f00_0003);
        const D: Source = Source::V4(0x7f00_0004);
        let table = Prelogin::new(caps(4, 1));
        let now = Instant::now();
        table.arrive(1, A, "a1", now, 99);
        for (id, h) in [(2, "a2"), (3, "a3")] {
            assert!(table.arrive(id, A, h, now, 99).is_empty());
        }
        table.arrive(4, B, "b1", now, 99);
        assert!(table.arrive(5, B, "b2", now, 99).is_empty());
        table.arrive(6, C, "c1", now, 99);
        table.arrive(7, D, "d1", now, 99);
        // A and B are past their RSA work: each source has room, the table has none.
        assert!(table.reached_gate(1, now).is_empty());
        assert!(table.reached_gate(4, now).is_empty());
        // Places go to the queued sources in turn, not all to the one queued first.
        assert_eq!(ran(&table.leave(7, Outcome::LoggedIn, now)), ["a2"]);
        assert_eq!(ran(&table.leave(6, Outcome::LoggedIn, now)), ["b2"]);
        assert!(
            table.leave(1, Outcome::LoggedIn, now).is_empty(),
            "A is at its cap"
        );
        assert_eq!(ran(&table.leave(2, Outcome::LoggedIn, now)), ["a3"]);
    }

    #[test]
    fn quiet_sources_are_forgotten_once_their_penalty_ran_out() {
        let table = Prelogin::new(caps(64, 8));
        let t0 = Instant::now();
        for id in 0..3 {
            table.arrive(id, A, "fail", t0, 99);
            table.leave(id, Outcome::Refused, t0);
        }
        table.arrive(10, B, "b", t0, 99);
        table.leave(10, Outcome::LoggedIn, t0);
        // B had nothing to remember; A's penalty runs 15 s.
        table.arrive(11, B, "b", t0 + FORGET_EVERY, 99);
        assert_eq!(
            table.lock().sources.len(),
            2,
            "A and B (in the table again)"
        );
        table.leave(11, Outcome::LoggedIn, t0 + FORGET_EVERY);
        table.arrive(12, B, "b", t0 + 2 * FORGET_EVERY, 99);
        assert!(table.lock().sources.contains_key(&A), "A's penalty is kept");
        let later = t0 + Duration::from_secs(16);
        table.arrive(13, B, "b", later, 99);
        assert!(
            !table.lock().sources.contains_key(&A),
            "A's penalty ran out"
        );
    }

    #[test]
    fn sources_group_ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:127.0.0.2")),
            Source::of(ip("127.0.0.2"))
        );
        assert_ne!(
            Source::of(ip("127.0.0.1")).key(),
            Source::of(ip("::1")).key()
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(Source::of(ip("127.0.0.2")).to_string(), "127.0.0.2");
    }
}
