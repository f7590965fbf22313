//! Pre-login floods from one address while real users log in, over the real `mpchatd`
//! on loopback: the three floods of issue 12 item 2, each played by this process from
//! 127.0.0.1, while real users log in from 127.0.0.2 (through [`Relay`], standing for
//! another host) and one real user logs in from the flooding address itself.
//!
//! - idle sockets: 128 workers that connect, send nothing and close after 0.8 s;
//! - bogus requests: 64 workers sending login requests whose `etk` is random bytes,
//!   which cost the attacker nothing and the server an RSA decryption each;
//! - wrong passwords: 80 workers logging in as a real user (PBKDF2 at the default
//!   600,000 iterations) with wrong passwords.
//!
//! The default tests run each flood for a few seconds and assert counts: at least
//! 90% of the real logins from the other address succeed, and the real user on the
//! flooding address gets in (the server closes a login not done within its grace
//! time, 10 s, so getting in is getting in within 10 s). The soaks run each flood for
//! 20 s and print the figures:
//!
//!     cargo test --release --locked --test floods -- --ignored --nocapture --test-threads 1

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{text, Raw, Relay, Server, WAIT};
use mpchat::accounts::DEFAULT_ITERATIONS;
use mpchat::crypto::RsaPublic;
use mpchat::login::{ClientLogin, Established};
use mpchat::mtp::{self, MsgType, ETK_LEN, HEADER_LEN, MAC_LEN};

/// The password of the real users.
const PW: &str = "floods-correct-pw-77b2";
/// The victim's real password (its account uses the default iterations).
const VICTIM_PW: &str = "floods-victim-pw-a9c1";
/// Where the real users of another host come from.
const OTHER_HOST: &str = "127.0.0.2";
/// Real logins from the other address are tried this often.
const REAL_LOGIN_EVERY: Duration = Duration::from_millis(100);
/// The flood sizes.
const IDLE_WORKERS: usize = 128;
const IDLE_HOLD: Duration = Duration::from_millis(800);
const BOGUS_WORKERS: usize = 64;
const WRONG_PASSWORD_WORKERS: usize = 80;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A running flood: its workers, the flag that stops them and their attempt count.
struct Flood {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    workers: Vec<JoinHandle<()>>,
}

impl Flood {
    fn start(n: usize, work: impl Fn(usize, &AtomicBool) + Send + Sync + 'static) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let work = Arc::new(work);
        let workers = (0..n)
            .map(|i| {
                let (stop, attempts, work) = (stop.clone(), attempts.clone(), work.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        work(i, &stop);
                        attempts.fetch_add(1, Ordering::AcqRel);
                    }
                })
            })
            .collect();
        Flood {
            stop,
            attempts,
            workers,
        }
    }

    fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    /// Stops the workers; returns the attempts made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        for w in self.workers {
            w.join().expect("a flood worker");
        }
        self.attempts.load(Ordering::Acquire)
    }
}

/// Reads until the server closes `s` (or `WAIT` passes); any byte is a reply, which
/// no flood may get.
fn until_closed(s: &mut TcpStream, what: &str) {
    let _ = s.set_read_timeout(Some(WAIT));
    let mut b = [0u8; 64];
    if let Ok(n @ 1..) = s.read(&mut b) {
        panic!("{what} got a {n}-byte reply");
    }
}

/// 128 workers that connect, send nothing and close after 0.8 s.
fn idle_sockets(addr: SocketAddr) -> Flood {
    Flood::start(IDLE_WORKERS, move |_, stop| {
        if let Ok(s) = TcpStream::connect(addr) {
            let until = Instant::now() + IDLE_HOLD;
            while Instant::now() < until && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(s);
        }
    })
}

/// A login frame with a valid header and random bytes for the rest: the server must
/// decrypt `etk` (RSA) to find out it is garbage; the sender spent nothing.
fn bogus_login_frame(seed: &mut u64) -> Vec<u8> {
    let payload = 120;
    let len = HEADER_LEN + payload + MAC_LEN + ETK_LEN;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&mtp::VERSION.to_be_bytes());
    f.extend_from_slice(&MsgType::LOGIN_REQ.code().to_be_bytes());
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&[0; 16]);
    while f.len() < len {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        f.push((*seed >> 24) as u8);
    }
    f
}

/// 64 workers sending bogus login requests, each waiting for the close.
fn bogus_requests(addr: SocketAddr) -> Flood {
    Flood::start(BOGUS_WORKERS, move |i, _| {
        let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1) ^ now_ns();
        if let Ok(mut s) = TcpStream::connect(addr) {
            if s.write_all(&bogus_login_frame(&mut seed)).is_ok() {
                until_closed(&mut s, "a bogus login request");
            }
        }
    })
}

/// 80 workers logging in as `user` with wrong passwords, each waiting for the close.
fn wrong_passwords(addr: SocketAddr, key: RsaPublic, user: &'static str) -> Flood {
    let tries = Arc::new(AtomicU64::new(0));
    Flood::start(WRONG_PASSWORD_WORKERS, move |_, _| {
        let i = tries.fetch_add(1, Ordering::AcqRel);
        let password = format!("floods-wrong-pw-{i}");
        let (frame, _) = ClientLogin::start(&key, user, &password, now_ns()).unwrap();
        if let Ok(mut s) = TcpStream::connect(addr) {
            if s.write_all(&frame).is_ok() {
                until_closed(&mut s, "a wrong password");
            }
        }
    })
}

/// One real login through `to` (the server or a relay) and a status request on the
/// logged-in connection; `None` if the server closed the connection instead.
fn real_login(to: SocketAddr, key: &RsaPublic, user: &str, pw: &str) -> Option<Raw> {
    let (frame, expect) = ClientLogin::start(key, user, pw, now_ns()).unwrap();
    let mut stream = TcpStream::connect(to).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    stream.write_all(&frame).ok()?;
    let reply = mtp::read_frame(&mut stream).ok()?;
    let Established {
        uid,
        sender,
        receiver,
    } = expect.finish(&reply).expect("a valid login_res");
    let mut raw = Raw {
        name: user.to_string(),
        stream,
        sender,
        receiver,
        uid,
    };
    raw.send(MsgType::StatusReq, 0, b"");
    let (h, p) = raw.recv_type(MsgType::StatusRes);
    assert!(
        h.sid == 0 && p.starts_with(b"OK\n"),
        "a status reply {}",
        text(&p)
    );
    Some(raw)
}

/// Real logins through `relay` one after another for `span`; returns how many
/// succeeded of how many were tried, and the slowest success.
fn real_logins(
    relay: &Relay,
    key: &RsaPublic,
    user: &str,
    span: Duration,
) -> (usize, usize, Duration) {
    let (mut ok, mut tries, mut slowest) = (0, 0, Duration::ZERO);
    let end = Instant::now() + span;
    while Instant::now() < end {
        tries += 1;
        let t = Instant::now();
        if real_login(relay.addr, key, user, PW).is_some() {
            ok += 1;
            slowest = slowest.max(t.elapsed());
        }
        std::thread::sleep(REAL_LOGIN_EVERY);
    }
    (ok, tries, slowest)
}

/// A server with alice (a real user on the flooding address), bob (on the other
/// address) and the victim at the default iterations.
fn server() -> Server {
    let server = Server::start(&[]);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    mpchat::accounts::add_user(&server.state, "victim", VICTIM_PW, DEFAULT_ITERATIONS).unwrap();
    server
}

/// Runs `flood` against a fresh server for `span`: bob logs in from the other
/// address all along, alice once from the flooding address after a second. Prints
/// the figures and checks the targets.
fn during(what: &str, span: Duration, flood: impl FnOnce(&Server) -> Flood) {
    let server = server();
    let key = server.public_key();
    let relay = Relay::start(server.addr, OTHER_HOST);
    // The relay works before the flood starts.
    assert!(
        real_login(relay.addr, &key, "bob", PW).is_some(),
        "bob cannot log in through the relay at all; log:\n{}",
        server.log()
    );
    let flood = flood(&server);
    let deadline = Instant::now() + WAIT;
    while flood.attempts() < 16 {
        assert!(
            Instant::now() < deadline,
            "the {what} flood made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let same = std::thread::scope(|s| {
        let alice = s.spawn(|| {
            std::thread::sleep(Duration::from_secs(1));
            let t = Instant::now();
            real_login(server.addr, &key, "alice", PW).map(|_| t.elapsed())
        });
        let other = real_logins(&relay, &key, "bob", span);
        (alice.join().expect("alice's login"), other)
    });
    let (alice, (ok, tries, slowest)) = same;
    let attempts = flood.stop();
    let source_seen = server
        .log()
        .lines()
        .any(|l| l.contains(&format!("{OTHER_HOST}:")));
    println!(
        "figure: {what} flood from 127.0.0.1 ({attempts} attempts in {span:?}): \
         {ok} of {tries} real logins from {OTHER_HOST} succeeded (slowest {slowest:.2?}); \
         a real login from the flooding address {}",
        match alice {
            Some(t) => format!("got in after {t:.2?}"),
            None => "was refused".to_string(),
        }
    );
    assert!(source_seen, "the server never saw {OTHER_HOST}");
    assert!(
        ok * 10 >= tries * 9,
        "during the {what} flood only {ok} of {tries} real logins from {OTHER_HOST} succeeded"
    );
    // The server closes a login not done within its grace time (10 s), so a login
    // that got in got in within it: no clock needs reading here.
    assert!(
        alice.is_some(),
        "during the {what} flood a real login from the flooding address was refused"
    );
    let mut server = server;
    assert!(server.is_running());
}

#[test]
fn real_logins_get_through_a_flood_of_idle_sockets_from_another_address() {
    during("idle-socket", Duration::from_secs(3), |s| {
        idle_sockets(s.addr)
    });
}

#[test]
fn real_logins_get_through_a_flood_of_bogus_login_requests_from_another_address() {
    during("bogus-request", Duration::from_secs(3), |s| {
        bogus_requests(s.addr)
    });
}

#[test]
fn real_logins_get_through_a_wrong_password_flood_from_another_address() {
    during("wrong-password", Duration::from_secs(3), |s| {
        wrong_passwords(s.addr, s.public_key(), "victim")
    });
}

#[test]
#[ignore = "a 20-second soak; run by hand for the figures"]
fn soak_real_logins_during_a_flood_of_idle_sockets() {
    during("idle-socket", Duration::from_secs(20), |s| {
        idle_sockets(s.addr)
    });
}

#[test]
#[ignore = "a 20-second soak; run by hand for the figures"]
fn soak_real_logins_during_a_flood_of_bogus_login_requests() {
    during("bogus-request", Duration::from_secs(20), |s| {
        bogus_requests(s.addr)
    });
}

#[test]
#[ignore = "a 20-second soak; run by hand for the figures"]
fn soak_real_logins_during_a_wrong_password_flood() {
    during("wrong-password", Duration::from_secs(20), |s| {
        wrong_passwords(s.addr, s.public_key(), "victim")
    });
}
