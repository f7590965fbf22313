//! A failed login takes as long whatever the name: a known user with a wrong
//! password, an unknown user and a name that breaks the username rule all cost the
//! same PBKDF2 work on the real `mpchatd` (DECISIONS 4 in mpchat-protocol(7)), so the
//! time until the server closes the connection tells an attacker nothing about which
//! names exist.
//!
//! The accounts use a low iteration count (as a test box or a slow board might): the
//! dummy hash an unknown or invalid name is checked against must use that count too,
//! not the 600,000 default, or an unknown name would take many times longer than a
//! known one. Only ratios of medians measured in the same run are asserted, never
//! absolute times; the three kinds of attempt are interleaved so that load from
//! elsewhere on the machine falls on all three alike. See the medians with
//! `cargo test --locked --test login_timing -- --nocapture`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{closed_within, Raw, Server, WAIT};
use mpchat::crypto::{self, AeadKey, Direction, RsaPublic, X25519Secret};
use mpchat::encoding;
use mpchat::mtp::{self, MsgType, ETK_LEN};

/// Iterations of the accounts: enough that PBKDF2, not RSA or the network, is most of
/// a failed login's time, so a path that skipped it would stand out.
const ITERATIONS: u32 = 50_000;
/// Attempts of each kind.
const TRIES: usize = 21;
/// The password of the known accounts.
const PW: &str = "timing-correct-pw-4b2e";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A login request for `user` built by hand, as `ClientLogin::start` refuses to make
/// one for a name that breaks the username rule.
fn login_req(key: &RsaPublic, user: &str, password: &str) -> Vec<u8> {
    let tk: [u8; 32] = crypto::random_array().unwrap();
    let (_, share) = X25519Secret::generate().unwrap();
    let random: [u8; 16] = crypto::random_array().unwrap();
    let payload = format!(
        "{}\n{user}\n{password}\n{}\n{}",
        now_ns(),
        encoding::hex(&random),
        encoding::hex(&share)
    );
    let mut frame = mtp::seal_frame(
        &AeadKey::new(tk),
        Direction::ClientToServer,
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
        ETK_LEN,
    )
    .unwrap();
    frame.extend_from_slice(&key.oaep_encrypt(&tk).unwrap());
    frame
}

/// Sends a login request that must fail and returns the time from sending it to the
/// server closing the connection.
fn failed_login(server: &Server, key: &RsaPublic, user: &str, password: &str) -> Duration {
    // Everything the client does (RSA encryption, connecting) happens before the clock
    // starts: only the server's work is timed.
    let frame = login_req(key, user, password);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let start = Instant::now();
    stream.write_all(&frame).unwrap();
    assert!(
        closed_within(&mut stream, WAIT),
        "the server did not close a failed login for {user:?} within {WAIT:?}"
    );
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn known_unknown_and_invalid_names_fail_a_login_in_the_same_time() {
    let server = Server::start(&[]);
    // Most accounts at ITERATIONS; one at a far lower count, which the dummy hash must
    // not follow (it follows the count most accounts use).
    for name in ["alice", "bob", "carol"] {
        mpchat::accounts::add_user(&server.state, name, PW, ITERATIONS).unwrap();
    }
    mpchat::accounts::add_user(&server.state, "dave", PW, 1_000).unwrap();
    let key = server.public_key();
    // A successful login first: the server has read the users file (it reloads it on
    // the next login after a change) and every code path is warm.
    drop(Raw::login(&server, "alice", PW));

    let kinds: [(&str, &str, &str); 3] = [
        ("known user, wrong password", "alice", "wrong-pw"),
        ("unknown user", "nobody", "wrong-pw"),
        ("invalid name", "No Such-User!", "wrong-pw"),
    ];
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..TRIES {
        for (i, (_, user, password)) in kinds.iter().enumerate() {
            times[i].push(failed_login(&server, &key, user, password));
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    for ((what, _, _), m) in kinds.iter().zip(&medians) {
        println!("failed login, {what}: median {m:.2?} over {TRIES} tries");
    }
    for (i, a) in medians.iter().enumerate() {
        for (j, b) in medians.iter().enumerate().skip(i + 1) {
            let ratio = a.as_secs_f64() / b.as_secs_f64();
            assert!(
                (0.5..=2.0).contains(&ratio),
                "a failed login for the {} takes {a:.2?} (median) but for the {} {b:.2?}: \
                 the time tells which names exist",
                kinds[i].0,
                kinds[j].0
            );
        }
    }
}
