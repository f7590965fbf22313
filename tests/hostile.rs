//! The real `mpchatd` under hostile conditions, over real TCP on 127.0.0.1: a thousand
//! connections that never log in, a wrong-password flood against an account with the
//! default PBKDF2 iterations while two users chat, thousands of idle logged-in
//! connections, a session member that stops reading (closed when its queue fills or
//! once its writes stall, and given everything at its next login), connections reset
//! in the middle of a frame, and what the log says about all of it (security warnings
//! with the peer address, rate-limited; never a password, key or plaintext).
//!
//! Two tests are ignored, each saying why: 10,000 idle connections (more than this
//! kind of machine's `vm.max_map_count` allows) and a 90-second soak of real logins
//! during a wrong-password flood wider than the pre-login table, from the flooding
//! address itself. Run them with `-- --ignored`.
//!
//! Every test asserts behaviour, never time: the bounds are generous and only there so
//! a broken server fails instead of hanging. The figures the issue asks for (relay
//! latency with and without a flood, server memory per idle connection) are printed;
//! see them with `--nocapture`, best with `--test-threads 1` on a quiet machine:
//!
//!     cargo test --locked --test hostile -- --nocapture --test-threads 1
//!
//! `MPCHAT_IDLE_CONNECTIONS=N` sets the idle-connection count (default 2,000; see
//! [`DEFAULT_IDLE_CONNECTIONS`] for why it is not 10,000, which has its own ignored test).

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    assert_back_to, closed_within, fd_limit, key_for, raise_fd_limit, session, text, users,
    wait_for_log, Client, Raw, Server, WAIT,
};
use mpchat::accounts::DEFAULT_ITERATIONS;
use mpchat::crypto::RsaPublic;
use mpchat::login::{ClientLogin, Established};
use mpchat::mtp::{self, MsgType};
use mpchat::proto::{Ack, Delivery, InitReq, MsgRes, Online};
use mpchat::server::{DEFAULT_MAX_PRELOGIN, PRELOGIN_EVICT_AGE};

/// The password of the accounts these tests log in with.
const PW: &str = "hostile-correct-pw-5d1c";
/// Every wrong password these tests try starts with this, so a log can be searched
/// for it.
const WRONG_PW: &str = "guess-wrong-pw-93e0";
/// Every message text these tests send contains this, so a log can be searched for it.
const MARKER: &str = "plaintext-marker-7a41";
/// A generous bound for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(10);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// One login attempt; `None` if the server closed the connection instead of answering
/// (a refusal over a cap, a failed login).
fn try_login(server: &Server, key: &RsaPublic, user: &str, password: &str) -> Option<Raw> {
    let (frame, expect) = ClientLogin::start(key, user, password, now_ns()).unwrap();
    let mut stream = TcpStream::connect(server.addr).ok()?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&frame).ok()?;
    let reply = mtp::read_frame(&mut stream).ok()?;
    let Established {
        uid,
        sender,
        receiver,
    } = expect.finish(&reply).expect("a valid login_res");
    Some(Raw {
        name: user.to_string(),
        stream,
        sender,
        receiver,
        uid,
    })
}

/// status_req sid 0 is answered with the user's listing (pushed statuses of single
/// sessions that arrive first are skipped).
#[track_caller]
fn assert_status_answered(raw: &mut Raw, who: &str) {
    raw.send(MsgType::StatusReq, 0, b"");
    let payload = loop {
        let (h, payload) = raw.recv_type(MsgType::StatusRes);
        if h.sid == 0 {
            break payload;
        }
    };
    assert!(
        payload.starts_with(b"OK\n"),
        "{who}: status reply {:?}",
        text(&payload)
    );
}

/// Waits until at least `n` server log lines match `pred`.
#[track_caller]
fn wait_for_log_count(server: &Server, what: &str, n: usize, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = server.log().lines().filter(|l| pred(l)).count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} log lines for {what} within {WAIT:?}, not {n}; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server log holds none of `secrets` (passwords, message texts, key material).
#[track_caller]
fn assert_log_free_of(server: &Server, secrets: &[&str]) {
    let log = server.log();
    assert!(!log.is_empty(), "the server logged nothing at all");
    for secret in secrets {
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            panic!("the server log holds {secret:?}: {line}");
        }
    }
}

/// `p` is a relayed msg_req payload: the 8-byte `n`, then the envelope.
fn split_delivery(p: &[u8]) -> (u64, &[u8]) {
    let d = Delivery::decode(p).unwrap_or_else(|e| panic!("a delivery of {} bytes: {e}", p.len()));
    (d.n, d.envelope)
}

/// The `n` of an `OK <n>` msg_res; panics with the reply otherwise.
fn message_number(reply: &[u8], who: &str) -> u64 {
    match MsgRes::decode(reply) {
        Ok(MsgRes::Ok(n)) => n,
        _ => panic!("{who}: message refused: {}", text(reply)),
    }
}

/// Sends one message from `from` and reads the `OK <n>` reply; returns `n`.
fn send_message(from: &mut Raw, sid: u64, envelope: &[u8]) -> u64 {
    from.send(MsgType::MsgReq, sid, envelope);
    let (_, reply) = from.recv_type(MsgType::MsgRes);
    message_number(&reply, &from.name)
}

/// The init_req payload of a session `creator` makes inviting carol alone.
fn inviting_carol(creator: &str) -> Vec<u8> {
    InitReq {
        key: key_for(creator),
        invitees: vec!["carol".into()],
    }
    .encode()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// "p50 .. p99 .. max .." of `v`.
fn summary(v: &mut [Duration]) -> String {
    v.sort();
    format!(
        "p50 {:.2?}, p99 {:.2?}, max {:.2?} over {}",
        percentile(v, 0.5),
        percentile(v, 0.99),
        v[v.len() - 1],
        v.len()
    )
}

// ---------------------------------------------------------------------------------
// 1. Connections that never finish their login.

/// How many never-finishing connections test 1 opens.
const NEVER_LOGGING_IN: usize = 1_000;

/// Whether the server has closed `stream` (FIN or reset seen), without waiting.
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match stream.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn a_thousand_connections_that_never_log_in_do_not_lock_out_a_real_user() {
    // The default caps (64 logging in, 10,000 in all), but a login grace of 60 s: the
    // real user must get in through the eviction of old pre-login connections, not
    // because the grace time closed them.
    let mut server = Server::start(&["--login-grace", "60"]);
    server.add_user("alice", PW);
    let key = server.public_key();
    let baseline = server.threads_and_fds();
    let (frame, _) = ClientLogin::start(&key, "alice", PW, now_ns()).unwrap();

    let started = Instant::now();
    let mut idle = Vec::with_capacity(NEVER_LOGGING_IN);
    for i in 0..NEVER_LOGGING_IN {
        let mut s = TcpStream::connect(server.addr).unwrap();
        // A third send nothing, a third a few header bytes, a third all but the last
        // byte of a login request. A refused connection may already be closed.
        let _ = match i % 3 {
            0 => Ok(()),
            1 => s.write_all(&frame[..10]),
            _ => s.write_all(&frame[..frame.len() - 1]),
        };
        idle.push(s);
    }
    let opened_in = started.elapsed();
    // The server holds at most the pre-login cap of them, once the threads of those
    // it evicted have seen the close and ended.
    let deadline = Instant::now() + WAIT;
    loop {
        let (threads, fds) = server.threads_and_fds();
        if threads <= baseline.0 + DEFAULT_MAX_PRELOGIN && fds <= baseline.1 + DEFAULT_MAX_PRELOGIN
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{NEVER_LOGGING_IN} idle connections: the server has (threads, fds) {:?}, baseline {baseline:?}, cap {DEFAULT_MAX_PRELOGIN}",
            (threads, fds)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The real user retries while every slot is younger than the eviction age.
    let login_started = Instant::now();
    let mut attempts = 0;
    let mut alice = loop {
        attempts += 1;
        if let Some(raw) = try_login(&server, &key, "alice", PW) {
            break raw;
        }
        assert!(
            attempts < 60 && login_started.elapsed() < Duration::from_secs(15),
            "alice could not log in after {attempts} attempts in {:?} while {NEVER_LOGGING_IN} connections never logged in; log:\n{}",
            login_started.elapsed(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let login_took = login_started.elapsed();
    assert_status_answered(&mut alice, "alice among idle connections");
    // And again: a second real login needs a slot too.
    let mut again = None;
    for _ in 0..60 {
        again = try_login(&server, &key, "alice", PW);
        if again.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut again = again.expect("a second login among the idle connections");
    assert_status_answered(&mut again, "alice's second login");

    let still_open = idle.iter().filter(|s| !closed_by_server(s)).count();
    assert!(
        still_open <= DEFAULT_MAX_PRELOGIN,
        "{still_open} of the idle connections are still open, over the pre-login cap of {DEFAULT_MAX_PRELOGIN}"
    );
    println!(
        "figure: opened {NEVER_LOGGING_IN} never-logging-in connections in {opened_in:.2?}; \
         the server kept {still_open} open (cap {DEFAULT_MAX_PRELOGIN}, eviction age {PRELOGIN_EVICT_AGE:?}); \
         a real login took {attempts} attempt(s), {login_took:.2?}"
    );
    wait_for_log(&server, "about refused or evicted connections", |l| {
        l.contains("WARN")
            && (l.contains("connections still logging in") || l.contains("did not log in within"))
    });
    drop(idle);
    drop(alice);
    drop(again);
    assert_back_to(&server, baseline, "the idle connections and alice closed");
    assert!(server.is_running());
    assert_log_free_of(&server, &[PW]);
}

// ---------------------------------------------------------------------------------
// 2. A wrong-password flood while logged-in users chat.

/// Messages measured with and without the flood.
const RELAY_MESSAGES: usize = 100;
/// Threads of the flood: more than the PBKDF2 permits (one per core), so some
/// attempts always wait at the gate and the gate is always full.
const FLOOD_THREADS: usize = 6;
/// Upper bound on the rounds of [`RELAY_MESSAGES`] relayed during the flood.
const FLOOD_MAX_ROUNDS: usize = 50;
/// Upper bound on one flood thread's attempts, so a flood cannot run forever.
const FLOOD_MAX_ATTEMPTS: u64 = 100_000;

/// Relays `count` messages from `a` to `b` one at a time; every one must arrive, in
/// order, intact. Returns each message's time from send to delivery.
fn relay(a: &mut Raw, b: &mut Raw, sid: u64, count: usize, tag: &str) -> Vec<Duration> {
    let mut took = Vec::with_capacity(count);
    let mut last_n = None;
    for i in 0..count {
        let envelope = format!("{MARKER} {tag} {i:04}");
        let t0 = Instant::now();
        a.send(MsgType::MsgReq, sid, envelope.as_bytes());
        let (h, p) = b.recv_type(MsgType::MsgReq);
        took.push(t0.elapsed());
        assert_eq!((h.sid, h.uid), (sid, a.uid), "{tag} {i}: delivery header");
        let (n, got) = split_delivery(&p);
        assert_eq!(got, envelope.as_bytes(), "{tag} {i}: the envelope changed");
        if let Some(last) = last_n {
            assert_eq!(n, last + 1, "{tag} {i}: numbers must follow on");
        }
        last_n = Some(n);
        b.send(Ack::TYPE, sid, &Ack { n }.encode());
        let (_, reply) = a.recv_type(MsgType::MsgRes);
        assert_eq!(
            text(&reply),
            format!("OK {n}"),
            "{tag} {i}: the author's reply"
        );
    }
    took
}

/// Logs in as `user` with wrong passwords until `stop`, counting attempts; each must
/// be closed with no reply.
fn flood(
    addr: SocketAddr,
    key: RsaPublic,
    user: String,
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
) {
    for i in 0..FLOOD_MAX_ATTEMPTS {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let password = format!("{WRONG_PW}-{i}");
        let (frame, _) = ClientLogin::start(&key, &user, &password, now_ns()).unwrap();
        let Ok(mut s) = TcpStream::connect(addr) else {
            continue;
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        if s.write_all(&frame).is_ok() {
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {}
                Ok(n) => panic!("a wrong password for {user} got a {n}-byte reply"),
            }
        }
        attempts.fetch_add(1, Ordering::AcqRel);
    }
}

#[test]
fn a_wrong_password_flood_does_not_stall_relay_between_logged_in_users() {
    let server = Server::start(&[]);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    server.add_user("carol", PW);
    let victim_pw = "victim-real-pw-c0ffee";
    mpchat::accounts::add_user(&server.state, "victim", victim_pw, DEFAULT_ITERATIONS).unwrap();
    let key = server.public_key();
    let mut alice = Raw::login(&server, "alice", PW);
    let mut bob = Raw::login(&server, "bob", PW);
    let sid = session(&mut alice, &mut [&mut bob]);

    let mut quiet = relay(&mut alice, &mut bob, sid, RELAY_MESSAGES, "quiet");

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..FLOOD_THREADS)
        .map(|t| {
            // One thread guesses user names: an unknown user costs the same PBKDF2.
            let user = if t == 0 { "nosuchuser" } else { "victim" };
            let (key, stop, attempts) = (key.clone(), stop.clone(), attempts.clone());
            let (addr, user) = (server.addr, user.to_string());
            std::thread::spawn(move || flood(addr, key, user, stop, attempts))
        })
        .collect();
    // Relay only once the flood is under way: a few attempts have been answered.
    let deadline = Instant::now() + WAIT;
    while attempts.load(Ordering::Acquire) < FLOOD_THREADS as u64 {
        assert!(Instant::now() < deadline, "the flood made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let flood_started = Instant::now();
    let before = attempts.load(Ordering::Acquire);
    // At least RELAY_MESSAGES, and on until a dozen failed logins finished meanwhile,
    // so the relay really overlaps the flood.
    let mut flooded = Vec::new();
    for round in 0..FLOOD_MAX_ROUNDS {
        flooded.extend(relay(
            &mut alice,
            &mut bob,
            sid,
            RELAY_MESSAGES,
            &format!("flooded{round}"),
        ));
        if attempts.load(Ordering::Acquire) - before >= 2 * FLOOD_THREADS as u64 {
            break;
        }
    }
    let during = attempts.load(Ordering::Acquire) - before;
    let relay_time = flood_started.elapsed();
    // A real user logs in during the flood (their PBKDF2 waits at the same gate).
    let t = Instant::now();
    let mut carol = try_login(&server, &key, "carol", PW).expect("carol logs in during the flood");
    let carol_took = t.elapsed();
    assert_status_answered(&mut carol, "carol during the flood");
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().expect("a flood thread");
    }
    let mut after = relay(&mut alice, &mut bob, sid, RELAY_MESSAGES, "after");
    let total = attempts.load(Ordering::Acquire);
    assert!(
        during >= 2 * FLOOD_THREADS as u64,
        "only {during} failed logins completed while {} messages were relayed",
        flooded.len()
    );
    println!(
        "figure: relay latency, no flood: {} (after the flood: {}); during the flood: {} \
         ({during} failed logins at 600,000 iterations in {relay_time:.2?}, {:.1}/s; {total} in all); \
         a real login during the flood took {carol_took:.2?}",
        summary(&mut quiet),
        summary(&mut after),
        summary(&mut flooded),
        during as f64 / relay_time.as_secs_f64()
    );
    // The victim's account still works; the flood was logged as failed logins.
    let mut victim =
        try_login(&server, &key, "victim", victim_pw).expect("the victim logs in after the flood");
    assert_status_answered(&mut victim, "victim after the flood");
    wait_for_log(&server, "about a failed login of victim", |l| {
        l.contains("WARN") && l.contains("127.0.0.1:") && l.contains("failed login for user victim")
    });
    assert_log_free_of(&server, &[PW, victim_pw, WRONG_PW, MARKER]);
}

/// Flood threads that keep more wrong-password logins in progress than the pre-login
/// table holds.
const BIG_FLOOD_THREADS: usize = DEFAULT_MAX_PRELOGIN + 16;
/// Login attempts the real user makes during the big flood, half a second apart.
const BIG_FLOOD_TRIES: usize = 20;

#[test]
#[ignore = "a 90-second soak: 20 real logins from the flooding address, each queued about 4 s \
            behind the 80 workers (a penalised source decrypts one request per 50 ms); it was \
            0 of 20 before per-source fairness, 20 of 20 since. tests/floods.rs runs the same \
            flood for a few seconds by default"]
fn a_real_user_logs_in_during_a_wrong_password_flood_that_fills_the_prelogin_table() {
    let server = Server::start(&[]);
    server.add_user("alice", PW);
    mpchat::accounts::add_user(
        &server.state,
        "victim",
        "victim-real-pw-c0ffee",
        DEFAULT_ITERATIONS,
    )
    .unwrap();
    let key = server.public_key();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..BIG_FLOOD_THREADS)
        .map(|_| {
            let (key, stop, attempts) = (key.clone(), stop.clone(), attempts.clone());
            let addr = server.addr;
            std::thread::spawn(move || flood(addr, key, "victim".into(), stop, attempts))
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while attempts.load(Ordering::Acquire) < BIG_FLOOD_THREADS as u64 {
        assert!(Instant::now() < deadline, "the flood made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut ok = 0;
    let (mut took, mut failed) = (Vec::new(), Vec::new());
    for _ in 0..BIG_FLOOD_TRIES {
        let t = Instant::now();
        if let Some(mut alice) = try_login(&server, &key, "alice", PW) {
            assert_status_answered(&mut alice, "alice during the big flood");
            ok += 1;
            took.push(t.elapsed());
        } else {
            failed.push(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().expect("a flood thread");
    }
    println!(
        "figure: during a flood of {BIG_FLOOD_THREADS} concurrent wrong-password logins at 600,000 \
         iterations ({} in all), {ok} of {BIG_FLOOD_TRIES} real logins succeeded \
         (times {took:.2?}); the failed ones ended after {failed:.2?}",
        attempts.load(Ordering::Acquire)
    );
    assert!(ok > 0, "no real login got through the flood");
}

// ---------------------------------------------------------------------------------
// 3. Thousands of idle logged-in connections.

/// Idle connections by default. The issue asks for 10,000; that many costs 20,000
/// server threads (near the 32,768 `pid_max` of a stock kernel, on a machine shared
/// with other test runs) and 30 to 60 s of logins on two cores, and the server does not
/// survive it yet (see the ignored test with 10,000), so the default run uses 2,000
/// and `MPCHAT_IDLE_CONNECTIONS` sets another count.
const DEFAULT_IDLE_CONNECTIONS: usize = 2_000;
/// The file-descriptor limit set for the test process and the server.
const FD_LIMIT: u64 = 65_536;

/// Raises the open-file limit of `pid` to [`FD_LIMIT`]; where that is not allowed
/// (no CAP_SYS_RESOURCE, as in some containers even for root), the current limit must
/// already allow `needed`.
fn ensure_fd_limit(pid: u32, needed: u64, who: &str) {
    if let Err(e) = raise_fd_limit(pid, FD_LIMIT) {
        let have = fd_limit(pid);
        assert!(
            have >= needed,
            "{who} needs {needed} file descriptors but may open {have}, and raising the limit failed: {e}"
        );
    }
}

fn idle_connection_count() -> usize {
    match std::env::var("MPCHAT_IDLE_CONNECTIONS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("MPCHAT_IDLE_CONNECTIONS={v:?} is not a count")),
        Err(_) => DEFAULT_IDLE_CONNECTIONS,
    }
}

/// Threads (and processes) on the whole machine, from `/proc/loadavg`.
fn threads_on_machine() -> usize {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap();
    loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').nth(1))
        .and_then(|n| n.parse().ok())
        .expect("running/total in /proc/loadavg")
}

#[test]
fn thousands_of_idle_logged_in_connections_leave_the_server_serving() {
    idle_connections_leave_the_server_serving(idle_connection_count());
}

#[test]
#[ignore = "needs vm.max_map_count of about 90,000 (8 mappings a connection); machines of this \
            kind have 65,530, with which mpchatd now serves about 7,900 and says so at start \
            (see more_connections_than_the_map_count_allows_are_refused_not_fatal)"]
fn ten_thousand_idle_logged_in_connections_leave_the_server_serving() {
    idle_connections_leave_the_server_serving(10_000);
}

#[test]
fn more_connections_than_the_map_count_allows_are_refused_not_fatal() {
    // A huge pre-login table leaves room for few logged-in connections under this
    // machine's vm.max_map_count, so the limit is reached in seconds rather than after
    // thousands of logins.
    let max_maps: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let prelogin = (max_maps.saturating_sub(4_000) / 4).max(1);
    let server = Server::start(&["--max-pending-logins", &prelogin.to_string()]);
    let capacity = mpchat::server::connection_capacity(max_maps, mappings(server.pid()), prelogin);
    assert!(
        capacity < 1_000,
        "this test wants a small capacity, got {capacity}"
    );
    wait_for_log(&server, "about vm.max_map_count", |l| {
        l.contains("vm.max_map_count")
    });
    let names: Vec<String> = (0..capacity + 20).map(|i| format!("m{i}")).collect();
    server.add_users_at_once(&names, PW);
    let mut held = Vec::new();
    let mut refused = 0;
    for name in &names {
        match Raw::try_login(&server, name, PW) {
            Some(raw) => held.push(raw),
            None => refused += 1,
        }
    }
    assert!(
        refused > 0,
        "every one of {} logins was served",
        names.len()
    );
    assert!(
        held.len() <= capacity + 1,
        "{} served over a capacity of {capacity}",
        held.len()
    );
    let mut server = server;
    assert!(server.is_running(), "the server died: {}", server.log());
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Raw::login(&server, &names[0], PW);
    again.send(MsgType::StatusReq, 0, b"");
    assert_eq!(text(&again.recv_type(MsgType::StatusRes).1), "OK\n");
}

/// Memory mappings of process `pid` (each thread costs some; the kernel caps them at
/// `vm.max_map_count`).
fn mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count()
}

/// Logs in `n` idle connections one at a time, checks each is still served, then has
/// two real users log in and exchange a message.
fn idle_connections_leave_the_server_serving(n: usize) {
    let pid_max: usize = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let free = pid_max.saturating_sub(threads_on_machine());
    assert!(
        free > 2 * n + 1_000,
        "{n} connections need {} server threads; only {free} of pid_max {pid_max} are free",
        2 * n
    );
    let needed = n as u64 + 1_000;
    ensure_fd_limit(std::process::id(), needed, "the test");
    // The connection cap is raised to leave room for the real users at the end; the
    // heartbeat is pushed out of the run so idle here means idle.
    let cap = (n + 16).to_string();
    let server = Server::start(&["--max-connections", &cap, "--heartbeat", "3600"]);
    ensure_fd_limit(server.pid(), needed, "the server");
    let names: Vec<String> = (0..n).map(|i| format!("idle{i:05}")).collect();
    server.add_users_at_once(&names, PW);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    let key = server.public_key();
    let _ = key_for("alice");

    let (threads_before, fds_before) = server.threads_and_fds();
    let rss_before = server.rss_kib();
    let maps_before = mappings(server.pid());
    let started = Instant::now();
    let mut idle = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate() {
        let raw = try_login(&server, &key, name, PW).unwrap_or_else(|| {
            let log = server.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!("idle login {i} of {n} failed; log tail: {tail:#?}")
        });
        idle.push(raw);
    }
    let logins_took = started.elapsed();
    let (threads, fds) = server.threads_and_fds();
    assert!(
        threads >= threads_before + 2 * n && fds >= fds_before + n,
        "{n} logged-in connections, but the server has {threads} threads and {fds} fds (before: {threads_before}, {fds_before})"
    );
    let rss_idle = server.rss_kib();
    let maps_idle = mappings(server.pid());

    // Every idle connection is still served.
    for raw in idle.iter_mut() {
        raw.send(MsgType::StatusReq, 0, b"");
    }
    for raw in idle.iter_mut() {
        let (h, p) = raw.recv_type(MsgType::StatusRes);
        assert_eq!((h.sid, p.as_slice()), (0, &b"OK\n"[..]), "{}", raw.name);
    }

    // Real users still log in, make a session and exchange a message.
    let mut alice = Raw::login(&server, "alice", PW);
    let mut bob = Raw::login(&server, "bob", PW);
    let sid = session(&mut alice, &mut [&mut bob]);
    let envelope = format!("{MARKER} among {n} idle connections");
    let n1 = send_message(&mut alice, sid, envelope.as_bytes());
    let (_, p) = bob.recv_type(MsgType::MsgReq);
    assert_eq!(split_delivery(&p), (n1, envelope.as_bytes()));
    let rss_after = server.rss_kib();
    println!(
        "figure: {n} idle logged-in connections: logged in one at a time in {logins_took:.2?} ({:.0}/s); \
         server threads {threads_before} -> {threads}, fds {fds_before} -> {fds}, \
         memory mappings {maps_before} -> {maps_idle}; \
         VmRSS {rss_before} KiB -> {rss_idle} KiB ({:.1} KiB per connection), {rss_after} KiB after the real users",
        n as f64 / logins_took.as_secs_f64(),
        (rss_idle.saturating_sub(rss_before)) as f64 / n as f64
    );
    assert_log_free_of(&server, &[PW, MARKER]);
}

// ---------------------------------------------------------------------------------
// 4. A member that stops reading.

/// Envelope size of the messages sent past a stopped reader: big enough that a
/// couple of thousand fill its socket buffers and block the server's writer for it.
const BULK_ENVELOPE: usize = 4 * 1024;
/// Messages sent past the stopped reader.
const BULK_MESSAGES: usize = 2_000;
/// Queue length given to the server.
const QUEUE_LEN: usize = 16;
/// Users who each make [`SESSIONS_PER_FANNER`] sessions inviting the stopped reader:
/// together more close_req frames than its queue holds (invitations are pulled by the
/// writer, not queued).
const FANNERS: usize = 6;
const SESSIONS_PER_FANNER: usize = 4;

fn bulk_envelope(i: usize) -> Vec<u8> {
    let mut e = format!("{MARKER} bulk {i:05} ").into_bytes();
    e.resize(BULK_ENVELOPE, b'.');
    e
}

/// Receives and acknowledges messages of `sid` until `last` has arrived; returns them
/// by number. Any gap, repeat or reordering fails.
fn receive_in_order(raw: &mut Raw, sid: u64, first: u64, last: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut got = BTreeMap::new();
    let mut next = first;
    while next <= last {
        let (h, p) = raw.recv_type(MsgType::MsgReq);
        assert_eq!(h.sid, sid, "{}: a delivery for another session", raw.name);
        let (n, envelope) = split_delivery(&p);
        assert_eq!(n, next, "{}: expected message {next}, got {n}", raw.name);
        got.insert(n, envelope.to_vec());
        if n % 50 == 0 || n == last {
            raw.send(Ack::TYPE, sid, &Ack { n }.encode());
        }
        next += 1;
    }
    got
}

#[test]
fn a_member_that_stops_reading_is_closed_when_its_queue_fills_and_later_gets_every_message() {
    // Every key made before the server starts: made during session(), an invitee's
    // key could take longer than the 1 s invite wait on a loaded machine, and an
    // acceptance after the session went live starts after message 1.
    for u in ["alice", "bob", "carol"] {
        let _ = key_for(u);
    }
    let q = QUEUE_LEN.to_string();
    let server = Server::start(&[
        "--queue-len",
        &q,
        "--invite-wait",
        "1",
        "--heartbeat",
        "3600",
    ]);
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, PW);
    }
    let fanner_names: Vec<String> = (0..FANNERS).map(|i| format!("fanner{i}")).collect();
    server.add_users_at_once(&fanner_names, PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let mut bob = Raw::login(&server, "bob", PW);
    let mut carol = Raw::login(&server, "carol", PW);
    let mut fanners: Vec<Raw> = fanner_names
        .iter()
        .map(|f| Raw::login(&server, f, PW))
        .collect();
    let sid = session(&mut alice, &mut [&mut bob, &mut carol]);

    // Carol reads and acknowledges the first messages, then stops reading.
    let mut sent: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for i in 0..10 {
        let e = format!("{MARKER} early {i}").into_bytes();
        sent.insert(send_message(&mut alice, sid, &e), e);
    }
    let first = *sent.keys().next().unwrap();
    let carol_acked = *sent.keys().last().unwrap();
    let early = receive_in_order(&mut carol, sid, first, carol_acked);
    assert_eq!(early, sent, "carol's early messages");
    let early_b = receive_in_order(&mut bob, sid, first, carol_acked);
    assert_eq!(early_b, sent);

    // Bob keeps reading in his own thread until the last message of the test.
    let last = carol_acked + BULK_MESSAGES as u64 + 10;
    let bob_thread = std::thread::spawn(move || {
        let got = receive_in_order(&mut bob, sid, carol_acked + 1, last);
        (bob, got)
    });
    let rss_start = server.rss_kib();
    let mut rss_peak = rss_start;
    // Alice pipelines fewer requests than the queue holds: all their replies can be
    // queued at once when one group commit stores them.
    let pipelined = QUEUE_LEN / 2;
    for chunk in 0..BULK_MESSAGES / pipelined {
        let envelopes: Vec<Vec<u8>> = (0..pipelined)
            .map(|j| bulk_envelope(chunk * pipelined + j))
            .collect();
        for e in &envelopes {
            alice.send(MsgType::MsgReq, sid, e);
        }
        for e in envelopes {
            let (_, reply) = alice.recv_type(MsgType::MsgRes);
            let n = message_number(&reply, "a bulk message");
            sent.insert(n, e);
        }
        rss_peak = rss_peak.max(server.rss_kib());
    }

    // The server holds bytes for carol that she does not take: its writer for her is
    // blocked on a full socket.
    let carol_addr = carol.stream.local_addr().unwrap();
    let (unsent, _) = tcp_queues(server.addr, carol_addr).expect("the server's socket to carol");
    let (_, unread) = tcp_queues(carol_addr, server.addr).expect("carol's socket");
    assert!(unsent > 0, "the server has nothing waiting for carol");

    // Messages and invitations reach a stopped reader by pull, so they never fill its
    // queue: frames fanned out to it do. Each session made inviting carol and then
    // closed queues a close_req for her, and leaves no invitation pending for her
    // next login. The sessions come from several users, so no creator's own replies
    // overflow its queue of 16.
    for f in fanners.iter_mut() {
        let invite = inviting_carol(&f.name);
        for _ in 0..SESSIONS_PER_FANNER {
            f.send(InitReq::TYPE, 0, &invite);
        }
    }
    for f in fanners.iter_mut() {
        let mut sids = Vec::new();
        for _ in 0..SESSIONS_PER_FANNER {
            let (h, p) = f.recv_type(MsgType::InitRes);
            assert_eq!(text(&p), "OK", "a session inviting carol");
            sids.push(h.sid);
        }
        for s in sids {
            f.send(MsgType::CloseReq, s, b"");
            let (h, p) = f.recv_type(MsgType::CloseRes);
            assert_eq!((h.sid, text(&p).as_str()), (s, "OK"));
        }
    }
    wait_for_log(&server, "about carol's full queue", |l| {
        l.contains("WARN") && l.contains("outgoing queue is full")
    });
    // Carol's connection is closed: reading it now drains what the kernel holds and
    // then meets the end (a still-open connection would stay silent instead).
    assert!(
        carol.is_closed_within(PROMPT),
        "carol's connection is still open after her queue filled"
    );
    drop(carol);

    // Alice and bob carry on.
    for i in 0..10 {
        let e = format!("{MARKER} late {i}").into_bytes();
        sent.insert(send_message(&mut alice, sid, &e), e);
    }
    let (_bob, got_b) = bob_thread.join().expect("bob's reader");
    let expected_b: BTreeMap<u64, Vec<u8>> = sent
        .range(carol_acked + 1..)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(got_b.len(), expected_b.len(), "bob's deliveries");
    assert!(
        got_b == expected_b,
        "bob got different envelopes than were sent"
    );
    let rss_after_close = server.rss_kib();

    // Carol comes back and gets every message she had not acknowledged, in order.
    let mut carol = Raw::login(&server, "carol", PW);
    let got_c = receive_in_order(&mut carol, sid, carol_acked + 1, last);
    assert!(
        got_c == expected_b,
        "carol's redelivery differs from what was sent"
    );
    let rss_end = server.rss_kib();
    let backlog_kib = (BULK_MESSAGES * BULK_ENVELOPE / 1024) as u64;
    println!(
        "figure: stopped reader with --queue-len {QUEUE_LEN}: server VmRSS {rss_start} KiB before, \
         peak {rss_peak} KiB while {BULK_MESSAGES} x {BULK_ENVELOPE} B ({backlog_kib} KiB) waited for it, \
         {rss_after_close} KiB after it was closed, {rss_end} KiB after its redelivery; \
         at the fan-out {unsent} B waited in the server's socket and {unread} B in carol's"
    );
    // Memory follows the stored backlog (which the store bounds), not the queue: a
    // generous bound that only gross buffering past the store would break.
    assert!(
        rss_peak.saturating_sub(rss_start) < 4 * backlog_kib + 64 * 1024,
        "the server grew by {} KiB for a backlog of {backlog_kib} KiB",
        rss_peak - rss_start
    );
    assert_log_free_of(&server, &[PW, MARKER]);
}

#[test]
fn a_silent_member_that_stops_reading_is_closed_though_its_writer_is_blocked() {
    let _ = key_for("alice");
    let server = Server::start(&["--heartbeat", "2", "--heartbeat-timeout", "2"]);
    server.add_user("alice", PW);
    server.add_user("carol", PW);
    let baseline = server.threads_and_fds();
    let mut alice = Raw::login(&server, "alice", PW);
    let mut carol = Raw::login(&server, "carol", PW);
    let sid = session(&mut alice, &mut [&mut carol]);
    // Enough to fill carol's socket buffers, so the server's writer for her blocks;
    // carol neither reads nor sends.
    let mut sent = BTreeMap::new();
    for chunk in 0..BULK_MESSAGES / 50 {
        let envelopes: Vec<Vec<u8>> = (0..50).map(|j| bulk_envelope(chunk * 50 + j)).collect();
        for e in &envelopes {
            alice.send(MsgType::MsgReq, sid, e);
        }
        for e in envelopes {
            let (_, reply) = alice.recv_type(MsgType::MsgRes);
            sent.insert(message_number(&reply, "a bulk message"), e);
        }
    }
    drop(alice);
    // Her connection ends, writer thread included, without her reading a byte: the
    // heartbeat goes unanswered, and the writer makes no progress for the heartbeat
    // time-out; whichever comes first closes it.
    let line = wait_for_log(&server, "about carol's end", |l| {
        l.contains("carol did not answer the heartbeat") || l.contains("carol stopped reading")
    });
    println!("figure: a silent member with a blocked writer: {line}");
    assert_back_to(&server, baseline, "carol's connection ended");
    drop(carol);
    // Nothing was lost: she gets every message at her next login.
    let mut carol = Raw::login(&server, "carol", PW);
    let (first, last) = (*sent.keys().next().unwrap(), *sent.keys().last().unwrap());
    let got = receive_in_order(&mut carol, sid, first, last);
    assert!(got == sent, "carol's redelivery differs from what was sent");
    assert_log_free_of(&server, &[PW, MARKER]);
}

/// The backlog sent past a member that stops reading but keeps answering heartbeats:
/// the issue's 60 KB envelopes, far more than the socket buffers hold.
const STALL_ENVELOPE: usize = 60 * 1024;
const STALL_MESSAGES: usize = 200;

#[test]
fn a_member_that_stops_reading_is_closed_once_its_writes_stall_and_gets_everything_at_its_next_login(
) {
    let _ = key_for("alice");
    // A heartbeat every second, which carol answers without reading: only the write
    // time-out (the heartbeat time-out, 3 s here) can close her connection.
    let server = Server::start(&["--heartbeat", "1", "--heartbeat-timeout", "3"]);
    server.add_user("alice", PW);
    server.add_user("carol", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let mut carol = Raw::login(&server, "carol", PW);
    let sid = session(&mut alice, &mut [&mut carol]);
    let rss_start = server.rss_kib();
    let carol_addr = carol.stream.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answering = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if carol.try_send(Online::TYPE, 0, &Online.encode()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            carol
        })
    };
    let started = Instant::now();
    let mut sent = BTreeMap::new();
    for chunk in 0..STALL_MESSAGES / 8 {
        let envelopes: Vec<Vec<u8>> = (0..8)
            .map(|j| {
                let mut e = format!("{MARKER} stalled {:05} ", chunk * 8 + j).into_bytes();
                e.resize(STALL_ENVELOPE, b'.');
                e
            })
            .collect();
        for e in &envelopes {
            alice.send(MsgType::MsgReq, sid, e);
        }
        for e in envelopes {
            let (_, reply) = alice.recv_type(MsgType::MsgRes);
            sent.insert(message_number(&reply, "a stalled-for message"), e);
        }
    }
    let queued = tcp_queues(server.addr, carol_addr).map_or(0, |q| q.0);
    let line = wait_for_log(&server, "about carol's stalled writes", |l| {
        l.contains("carol stopped reading")
    });
    let closed_after = started.elapsed();
    stop.store(true, Ordering::Release);
    let mut carol = answering.join().expect("carol's heartbeat answers");
    assert!(
        carol.is_closed_within(PROMPT),
        "carol's connection is still open after her writes stalled"
    );
    assert!(
        !server.log().contains("carol did not answer the heartbeat"),
        "carol answered every heartbeat"
    );
    let rss_closed = server.rss_kib();
    drop(carol);
    // Nothing was lost: the next login delivers every message, in order.
    let mut carol = Raw::login(&server, "carol", PW);
    let (first, last) = (*sent.keys().next().unwrap(), *sent.keys().last().unwrap());
    let got = receive_in_order(&mut carol, sid, first, last);
    assert!(got == sent, "carol's redelivery differs from what was sent");
    println!(
        "figure: a reader that stopped reading under {STALL_MESSAGES} x {STALL_ENVELOPE} B: \
         {queued} B waited in the server's socket; closed {closed_after:.2?} after the backlog \
         began ({line}); server VmRSS {rss_start} KiB before, {rss_closed} KiB once closed; \
         all {} messages delivered at the next login",
        sent.len()
    );
    assert_log_free_of(&server, &[PW, MARKER]);
}

/// The send and receive queue lengths of the TCP socket from `local` to `remote`,
/// both on 127.0.0.1, from `/proc/net/tcp`.
fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| format!("0100007F:{:04X}", a.port());
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[1] == local && f[2] == remote {
            let (tx, rx) = f[4].split_once(':')?;
            Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        } else {
            None
        }
    })
}

/// Sessions made inviting an offline user in the lockout test: as many as the default
/// queue holds (one fewer still lets the user in).
const INVITATIONS: usize = mpchat::server::DEFAULT_QUEUE_LEN;

#[test]
fn a_user_with_as_many_unanswered_invitations_as_the_queue_holds_still_logs_in() {
    let _ = key_for("alice");
    // The invitation quota (100 by default) raised to the queue length, so that the
    // queue, not the quota, is what is tested.
    let pending = INVITATIONS.to_string();
    let server = Server::start(&["--max-pending-invitations", &pending]);
    server.add_user("alice", PW);
    server.add_user("carol", PW);
    let key = server.public_key();
    let mut alice = Raw::login(&server, "alice", PW);
    // Carol is offline: each session goes live at once and her invitation waits.
    let invite = inviting_carol("alice");
    let mut sids = std::collections::BTreeSet::new();
    for chunk in 0..INVITATIONS.div_ceil(100) {
        let k = (INVITATIONS - chunk * 100).min(100);
        for _ in 0..k {
            alice.send(InitReq::TYPE, 0, &invite);
        }
        for _ in 0..k {
            let (h, p) = alice.recv_type(MsgType::InitRes);
            assert_eq!(text(&p), "OK", "a session inviting carol");
            sids.insert(h.sid);
        }
    }
    assert_eq!(sids.len(), INVITATIONS);
    let mut carol = try_login(&server, &key, "carol", PW).unwrap_or_else(|| {
        panic!(
            "carol cannot log in with {INVITATIONS} unanswered invitations; log tail:\n{}",
            server
                .log()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let mut invited = std::collections::BTreeSet::new();
    while invited.len() < INVITATIONS {
        let (h, _) = carol.recv_type(MsgType::InviteReq);
        assert!(sids.contains(&h.sid), "an invitation to an unknown session");
        invited.insert(h.sid);
    }
    assert_status_answered(&mut alice, "alice at the end");
}

// ---------------------------------------------------------------------------------
// 5. Connections reset in the middle of a frame.

/// Resets of each kind.
const RESETS: usize = 30;

/// `TcpExt` counters from `/proc/net/netstat`.
fn tcp_ext() -> BTreeMap<String, u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let lines: Vec<&str> = netstat
        .lines()
        .filter(|l| l.starts_with("TcpExt:"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "TcpExt names and values in /proc/net/netstat"
    );
    let names = lines[0].split_whitespace().skip(1);
    let values = lines[1].split_whitespace().skip(1);
    names
        .zip(values)
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// Resets sent by closing a socket with unread data or with a zero linger time.
fn aborts_sent() -> u64 {
    let c = tcp_ext();
    c["TCPAbortOnClose"] + c["TCPAbortOnData"]
}

/// Opens `count` connections to `addr`, writes `bytes` on each, and closes each with
/// a zero linger time, so the kernel sends a reset instead of a FIN. Stable Rust has no
/// `SO_LINGER` (and these tests no libc binding), so this runs perl's core `Socket`.
fn reset_after_writing(addr: SocketAddr, bytes: &[u8], count: usize) {
    const SCRIPT: &str = r#"
        use Socket;
        my ($port, $hex, $count) = @ARGV;
        my $bytes = pack("H*", $hex);
        for (1..$count) {
            socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
            connect($s, pack_sockaddr_in($port, inet_aton("127.0.0.1"))) or die "connect: $!";
            defined(syswrite($s, $bytes)) or die "write: $!";
            select(undef, undef, undef, 0.02);
            setsockopt($s, SOL_SOCKET, SO_LINGER, pack("ii", 1, 0)) or die "linger: $!";
            close($s);
        }
    "#;
    let out = Command::new("perl")
        .arg("-e")
        .arg(SCRIPT)
        .arg(addr.port().to_string())
        .arg(mpchat::encoding::hex(bytes))
        .arg(count.to_string())
        .output()
        .expect("this test needs perl to reset a connection before login");
    assert!(
        out.status.success(),
        "perl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn connections_reset_mid_frame_before_and_after_login_leave_the_server_serving() {
    let server = Server::start(&["--login-grace", "60"]);
    for u in ["bystander", "victim", "vanisher"] {
        server.add_user(u, PW);
    }
    let key = server.public_key();
    let mut bystander = Raw::login(&server, "bystander", PW);
    assert_status_answered(&mut bystander, "bystander at the start");
    let baseline = server.threads_and_fds();
    let aborts_before = aborts_sent();

    // Before login: half a login request, then a reset.
    let (frame, _) = ClientLogin::start(&key, "victim", PW, now_ns()).unwrap();
    reset_after_writing(server.addr, &frame[..frame.len() / 2], RESETS);
    assert_status_answered(&mut bystander, "bystander after resets before login");

    // After login: the server's reply waits unread, half a frame goes out, and the
    // close with unread data makes the kernel send a reset.
    for i in 0..RESETS {
        let mut victim = Raw::login(&server, "victim", PW);
        victim.send(MsgType::StatusReq, 0, b"");
        let mut one = [0u8; 1];
        victim.stream.set_read_timeout(Some(WAIT)).unwrap();
        let peeked = victim.stream.peek(&mut one).unwrap();
        assert_eq!(peeked, 1, "reset {i}: the status reply did not arrive");
        let half = victim
            .sender
            .seal(MsgType::MsgReq, 1, victim.uid, &[0x42; 1000])
            .unwrap();
        victim.stream.write_all(&half[..half.len() / 2]).unwrap();
        // Give the server a moment to read the half frame, so the reset lands while it
        // waits for the rest (not needed for the test to be right).
        std::thread::sleep(Duration::from_millis(5));
        drop(victim);
    }
    assert_status_answered(&mut bystander, "bystander after resets after login");

    // While logging in: the whole request plus half a frame, closed before the reply
    // comes; the reply then meets a closed socket and is answered with a reset.
    for _ in 0..RESETS {
        let (frame, _) = ClientLogin::start(&key, "vanisher", PW, now_ns()).unwrap();
        let mut s = TcpStream::connect(server.addr).unwrap();
        let mut bytes = frame.clone();
        bytes.extend_from_slice(&frame[..40]);
        s.write_all(&bytes).unwrap();
    }

    // Every reset connection has ended (a connection still in the listen queue does
    // not show in the server's counts yet, so the log is the signal to wait for).
    wait_for_log_count(&server, "ends of logins cut short", RESETS, |l| {
        l.contains("no login within the grace time")
            || l.contains("closed in the middle of its login request")
    });
    wait_for_log_count(&server, "victim disconnections", RESETS, |l| {
        l.contains("victim disconnected")
    });
    wait_for_log_count(&server, "vanisher disconnections", RESETS, |l| {
        l.contains("vanisher disconnected")
    });
    let aborts = aborts_sent() - aborts_before;
    assert!(
        aborts >= 2 * RESETS as u64,
        "the kernel sent {aborts} resets on close, not the {} the test made",
        2 * RESETS
    );
    assert_back_to(&server, baseline, "every reset connection");
    assert_status_answered(&mut bystander, "bystander at the end");
    let mut fresh = try_login(&server, &key, "victim", PW).expect("a fresh login after the resets");
    assert_status_answered(&mut fresh, "a fresh login at the end");
    assert_log_free_of(&server, &[PW]);
}

// ---------------------------------------------------------------------------------
// 6. Security events in the log.

/// Rejected connections in the warning flood.
const WARNING_FLOOD: usize = 500;
/// The server's rate limit on security warnings (`WARNINGS_PER_SECOND`, private there).
const WARNINGS_PER_SECOND: usize = 20;

/// A frame header with a wrong version: rejected before anything is decrypted.
fn bad_version_frame() -> Vec<u8> {
    let mut f = vec![0u8; 300];
    f[0..2].copy_from_slice(&0x0200u16.to_be_bytes());
    f[2..4].copy_from_slice(&0x0100u16.to_be_bytes());
    f[4..6].copy_from_slice(&300u16.to_be_bytes());
    f
}

/// Connects, sends `bytes`, and waits for the server to close; returns our address
/// (the peer address the server logs).
fn rejected_connection(server: &Server, bytes: &[u8]) -> SocketAddr {
    let mut s = TcpStream::connect(server.addr).unwrap();
    let me = s.local_addr().unwrap();
    let _ = s.write_all(bytes);
    assert!(
        closed_within(&mut s, PROMPT),
        "{me}: a rejected connection stayed open"
    );
    me
}

/// Sum of the counts in "N similar warnings suppressed" lines.
fn suppressed_in(log: &str) -> usize {
    log.lines()
        .filter_map(|l| l.strip_suffix(" similar warnings suppressed"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("a suppressed-count line without a count: {l}"))
        })
        .sum()
}

#[test]
fn failed_logins_and_rejected_frames_are_warned_with_the_peer_address_and_rate_limited() {
    let server = Server::start(&[]);
    server.add_user("alice", PW);
    let key = server.public_key();

    // A failed login.
    let (frame, _) = ClientLogin::start(&key, "alice", &format!("{WRONG_PW}-1"), now_ns()).unwrap();
    let peer = rejected_connection(&server, &frame);
    let line = wait_for_log(&server, "about the failed login", |l| {
        l.contains(&format!("{peer}: failed login for user alice"))
    });
    assert!(
        line.contains("WARN") && peer.to_string().starts_with("127.0.0.1:"),
        "{line}"
    );
    // A rejected frame before login.
    let peer = rejected_connection(&server, &bad_version_frame());
    let line = wait_for_log(&server, "about the rejected login frame", |l| {
        l.contains(&format!("{peer}: rejected login frame"))
    });
    assert!(line.contains("WARN"), "{line}");
    // A rejected frame after login: a flipped bit in the mac.
    let mut alice = Raw::login(&server, "alice", PW);
    let peer = alice.stream.local_addr().unwrap();
    let mut frame = alice
        .sender
        .seal(MsgType::StatusReq, 0, alice.uid, b"")
        .unwrap();
    *frame.last_mut().unwrap() ^= 1;
    alice.stream.write_all(&frame).unwrap();
    assert!(
        alice.is_closed_within(PROMPT),
        "a bad mac left alice connected"
    );
    let line = wait_for_log(&server, "about the rejected frame", |l| {
        l.contains(&format!("{peer}: rejected frame from alice"))
    });
    assert!(line.contains("WARN"), "{line}");

    // A flood of rejected connections: at most the rate limit is logged, and the rest
    // are counted in "similar warnings suppressed" lines.
    let log_before = server.log().lines().count();
    let started = Instant::now();
    let mut peers: Vec<String> = (0..WARNING_FLOOD)
        .map(|_| format!("{}:", rejected_connection(&server, &bad_version_frame())))
        .collect();
    let flood_took = started.elapsed();
    // The count of suppressed warnings is logged with the first warning of a later
    // second, so one more rejection after a second flushes it.
    std::thread::sleep(Duration::from_millis(1_100));
    peers.push(format!(
        "{}:",
        rejected_connection(&server, &bad_version_frame())
    ));
    let expected = WARNING_FLOOD + 1;
    let deadline = Instant::now() + WAIT;
    let (logged, suppressed) = loop {
        let log = server.log();
        let new: Vec<&str> = log.lines().skip(log_before).collect();
        let logged = new
            .iter()
            .filter(|l| l.contains("WARN") && peers.iter().any(|p| l.contains(p.as_str())))
            .count();
        let suppressed = suppressed_in(&new.join("\n"));
        if logged + suppressed >= expected || Instant::now() > deadline {
            break (logged, suppressed);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "figure: {expected} rejected connections in {flood_took:.2?}: {logged} warning lines, {suppressed} counted as suppressed"
    );
    assert_eq!(
        logged + suppressed,
        expected,
        "every rejection is either logged or counted; log:\n{}",
        server.log()
    );
    assert!(suppressed > 0, "no warning was suppressed");
    let windows = flood_took.as_secs() as usize + 3;
    assert!(
        logged <= WARNINGS_PER_SECOND * windows && logged < WARNING_FLOOD / 2,
        "{logged} warning lines for {expected} rejections in {flood_took:?}"
    );
    assert_log_free_of(&server, &[PW, WRONG_PW]);
}

#[test]
fn a_whole_run_logged_at_trace_holds_no_password_key_or_plaintext() {
    // RUST_LOG=trace: everything anything in the server would log.
    let server = Server::start_wrapped(
        &common::temp_dir("trace"),
        "RUST_LOG=trace; export RUST_LOG; exec \"$0\" \"$@\"",
        &["--invite-wait", "5"],
    );
    // Real clients with end-to-end encryption.
    let u = users(&server, &["alice", "bob"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    for c in [&mut alice, &mut bob] {
        c.send("/status");
        c.expect("status none");
    }
    alice.send("/init bob");
    let sid = common::sid_of(&bob.expect("invite "));
    bob.send(&format!("/accept {sid}"));
    assert_eq!(alice.expect("init "), format!("init {sid} ok"));
    let e2e_text = format!("{MARKER} through a real session");
    alice.send(&format!("/msg {sid} {e2e_text}"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice {e2e_text}"));
    // Raw clients whose envelopes carry the plaintext as it is: the server sees these
    // bytes and must still not log them.
    server.add_user("carol", PW);
    server.add_user("dave", PW);
    let mut carol = Raw::login(&server, "carol", PW);
    let mut dave = Raw::login(&server, "dave", PW);
    let raw_sid = session(&mut carol, &mut [&mut dave]);
    let clear = format!("{MARKER} in the clear");
    let n = send_message(&mut carol, raw_sid, clear.as_bytes());
    let (_, p) = dave.recv_type(MsgType::MsgReq);
    assert_eq!(split_delivery(&p), (n, clear.as_bytes()));
    // Failed logins with a wrong password and with a password for an unknown user.
    let key = server.public_key();
    assert!(try_login(&server, &key, "carol", &format!("{WRONG_PW}-a")).is_none());
    assert!(try_login(&server, &key, "nobody", &format!("{WRONG_PW}-b")).is_none());
    wait_for_log(&server, "about the failed login of nobody", |l| {
        l.contains("failed login for user nobody")
    });
    for c in [alice, bob] {
        let (status, transcript) = c.finish();
        assert!(status.success(), "{transcript:?}");
    }
    drop((carol, dave));
    wait_for_log(&server, "about dave leaving", |l| {
        l.contains("dave disconnected")
    });

    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).unwrap();
    assert!(
        environ.split(|&b| b == 0).any(|v| v == b"RUST_LOG=trace"),
        "the server does not run with RUST_LOG=trace"
    );
    // Key material: a line from the middle of the server's private key file.
    let pem = std::fs::read_to_string(server.state.join("server.key")).unwrap();
    let pem_lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let key_line_mid = pem_lines[pem_lines.len() / 2];
    let user_pw: Vec<String> = u
        .iter()
        .map(|u| {
            std::fs::read_to_string(&u.password_file)
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    let mut secrets = vec![PW, WRONG_PW, MARKER, key_line_mid];
    secrets.extend(user_pw.iter().map(String::as_str));
    assert_log_free_of(&server, &secrets);
}
