//! Figures, not assertions: run by hand with
//! `cargo test --release --locked --test perf -- --ignored --nocapture --test-threads 1`.
//! These machines are shared and noisy, so nothing here is asserted as a timing.

mod common;
// The benchmark's statistics, the project's one median and percentile.
#[path = "../bin/mpchat-bench/stats.rs"]
mod stats;

use std::time::{Duration, Instant};

use mpchat::accounts::PasswordHash;
use mpchat::crypto::{AeadKey, Direction, RsaPrivate};
use mpchat::login::{ClientLogin, ExpectLoginReq, ReplayCache, DEFAULT_LOGIN_WINDOW};
use mpchat::mtp::{MsgType, Receiver, Sender};

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(v: &[Duration]) -> Duration {
    let secs: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
    Duration::from_secs_f64(stats::median(&secs).expect("at least one sample"))
}

/// The `p`-quantile of `v` by the nearest-rank method.
fn pct(v: &[Duration], p: f64) -> Duration {
    let mut ns: Vec<u64> = v.iter().map(|d| d.as_nanos() as u64).collect();
    ns.sort_unstable();
    Duration::from_nanos(stats::percentile(&ns, p).expect("at least one sample"))
}

#[test]
#[ignore = "a measurement, run by hand"]
fn frame_seal_and_open_rate_at_1_kib() {
    let payload = vec![0x5a; 1024];
    // Seal: each frame is built and dropped, as the server's writer does.
    let mut s = Sender::new(AeadKey::new([1; 32]), Direction::ClientToServer, 1);
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(s.seal(MsgType::MsgReq, 1, 2, &payload).unwrap());
    }
    let seal = t.elapsed();
    // Open: 1,000 frames with consecutive numbers, opened by a fresh receiver per pass.
    let mut s = Sender::new(AeadKey::new([1; 32]), Direction::ClientToServer, 1);
    let frames: Vec<Vec<u8>> = (0..1000)
        .map(|_| s.seal(MsgType::MsgReq, 1, 2, &payload).unwrap())
        .collect();
    let t = Instant::now();
    for _ in 0..n / frames.len() {
        let mut r = Receiver::new(AeadKey::new([1; 32]), Direction::ClientToServer, 0);
        for f in &frames {
            std::hint::black_box(r.open(f).unwrap());
        }
    }
    let open = t.elapsed();
    println!(
        "1 KiB frames: seal {:.0}/s ({:.0} MiB/s), open {:.0}/s ({:.0} MiB/s)",
        n as f64 / seal.as_secs_f64(),
        n as f64 / seal.as_secs_f64() / 1024.0,
        n as f64 / open.as_secs_f64(),
        n as f64 / open.as_secs_f64() / 1024.0
    );
}

#[test]
#[ignore = "a measurement, run by hand"]
fn login_server_side_cost() {
    let key = RsaPrivate::generate(2048).unwrap();
    let public = key.public();
    for iterations in [1_000u32, 600_000] {
        let hash = PasswordHash::new("correct horse", iterations).unwrap();
        let mut cache = ReplayCache::new(1_000_000);
        let rounds = if iterations > 100_000 { 10 } else { 200 };
        let (mut rsa, mut kdf, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (frame, _) =
                ClientLogin::start(&public, "alice", "correct horse", now_ns()).unwrap();
            let t0 = Instant::now();
            let opened = ExpectLoginReq::open(&key, &frame).unwrap();
            let check = opened
                .check_fresh(now_ns(), DEFAULT_LOGIN_WINDOW, &mut cache)
                .unwrap();
            let t1 = Instant::now();
            assert!(hash.verify(check.password()));
            let t2 = Instant::now();
            let _ = check.accept(7).unwrap();
            let t3 = Instant::now();
            rsa.push(t1 - t0);
            kdf.push(t2 - t1);
            total.push(t3 - t0);
        }
        println!(
            "login at {iterations} iterations: median total {:?} (open incl. RSA-OAEP {:?}, PBKDF2 {:?}); {:.1} logins/s per core",
            median(&total),
            median(&rsa),
            median(&kdf),
            1.0 / median(&total).as_secs_f64()
        );
    }
}

#[test]
#[ignore = "a measurement, run by hand"]
fn msg_to_recipient_latency_in_a_ten_member_session() {
    let server = common::Server::start(&["--invite-wait", "30"]);
    let (mut clients, _, sid) = common::group(&server, "m", 10);
    let mut lat = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        clients[0].send(&format!("/msg {sid} ping {i}"));
        clients[5].expect(&format!("msg {sid} m00 ping {i}"));
        lat.push(t.elapsed());
    }
    println!(
        "/msg to msg line, 10 members, 200 messages: median {:?}, p99 {:?}",
        median(&lat),
        pct(&lat, 0.99)
    );
}

#[test]
#[ignore = "a measurement, run by hand"]
fn durable_messages_per_second_with_and_without_group_commit() {
    use common::{session, text, Raw, Server};
    for (label, group) in [("group commit", "1024"), ("one fsync per request", "1")] {
        let server = Server::start(&["--invite-wait", "1", "--max-group", group]);
        let senders = 8;
        let names: Vec<String> = (0..senders).map(|i| format!("d{i}")).collect();
        for n in &names {
            server.add_user(n, &format!("pw-{n}"));
        }
        let mut raws: Vec<Raw> = names
            .iter()
            .map(|n| Raw::login(&server, n, &format!("pw-{n}")))
            .collect();
        let (first, rest) = raws.split_at_mut(1);
        let mut others: Vec<&mut Raw> = rest.iter_mut().collect();
        let sid = session(&mut first[0], &mut others);
        let deadline = Instant::now() + Duration::from_secs(5);
        // Every member sends and acknowledges, so the backlog stays small.
        let handles: Vec<_> = raws
            .into_iter()
            .map(|mut r| {
                std::thread::spawn(move || {
                    let mut ok = 0u64;
                    while Instant::now() < deadline {
                        r.send(MsgType::MsgReq, sid, &[0x42; 100]);
                        loop {
                            let (h, p) = r.recv();
                            if h.typ == MsgType::MsgRes {
                                assert!(text(&p).starts_with("OK "), "{}", text(&p));
                                ok += 1;
                                break;
                            }
                            if h.typ == MsgType::MsgReq {
                                let n = u64::from_be_bytes(p[..8].try_into().unwrap());
                                r.send(MsgType::MsgRes, sid, format!("OK {n}").as_bytes());
                            }
                        }
                    }
                    ok
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        println!(
            "{label}: {senders} concurrent senders, {:.0} acknowledged messages/s",
            total as f64 / 5.0
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "a measurement, run by hand"]
fn server_rss_per_idle_logged_in_connection() {
    use common::{Raw, Server};
    let n: usize = std::env::var("MPCHAT_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let server = Server::start(&[]);
    server.add_user("idle", "pw-idle");
    // Warm up (first login allocates lazily initialised state), then measure.
    let warm = Raw::login(&server, "idle", "pw-idle");
    drop(warm);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(server.pid());
    let names: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
    for name in &names {
        server.add_user(name, "pw");
    }
    let conns: Vec<Raw> = names
        .iter()
        .map(|name| Raw::login(&server, name, "pw"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(server.pid());
    if let Ok(script) = std::env::var("MPCHAT_SMAPS") {
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg(server.pid().to_string())
            .output()
            .unwrap();
        println!("{}", String::from_utf8_lossy(&out.stdout));
    }
    println!(
        "{n} idle logged-in connections: RSS {before} KiB -> {after} KiB, {:.1} KiB per connection",
        (after - before) as f64 / n as f64
    );
    drop(conns);
}

/// End-to-end v2 costs at 50 participants (49 recipients, RSA-3072 identity keys, a
/// 100-byte text): the one-time `MPK2` build and open, per-message seal and open, and
/// a 10,000-message backlog read in order. Client CPU on one core; never asserted.
/// Every recipient entry uses the same public key (the cost of an OAEP wrap does not
/// depend on whose key it is), so only two RSA-3072 keys are generated.
#[test]
#[ignore = "a measurement, run by hand"]
fn e2e_v2_costs_at_50_participants() {
    use mpchat::crypto::RsaPublic;
    use mpchat::e2e::sender_key::{OwnSenderKey, PeerSenderKeys};
    use mpchat::e2e::state::SessionState;

    const SID: u64 = 0x5e55;
    const AUTHOR: u64 = 1;
    const ME: u64 = 2;
    let t = Instant::now();
    let other = std::thread::spawn(|| RsaPrivate::generate(3072).unwrap());
    let author = RsaPrivate::generate(3072).unwrap();
    let me = other.join().unwrap();
    println!("two RSA-3072 keys generated in {:?}", t.elapsed());
    let (author_pub, me_pub) = (author.public(), me.public());
    let recipients: Vec<(u64, &RsaPublic)> = (ME..ME + 49).map(|uid| (uid, &me_pub)).collect();
    let text = "x".repeat(100);

    let mut own = OwnSenderKey::generate(0, None).unwrap();
    let mut builds: Vec<Duration> = Vec::new();
    let mut mpk2 = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        mpk2 = own.distribution(SID, AUTHOR, &author, &recipients).unwrap();
        builds.push(t.elapsed());
    }
    let mut opens = Vec::new();
    for _ in 0..20 {
        let mut peer = PeerSenderKeys::new();
        let t = Instant::now();
        peer.receive_distribution(&mpk2, SID, AUTHOR, &author_pub, ME, &me)
            .unwrap();
        opens.push(t.elapsed());
    }
    println!(
        "MPK2 for 49 recipients (RSA-3072): {} bytes, build {:?} (median of 5), open {:?} (median of 20)",
        mpk2.len(),
        median(&builds),
        median(&opens)
    );

    let mut reader = SessionState::new(SID);
    reader
        .receive_distribution(&mpk2, AUTHOR, &author_pub, ME, &me)
        .unwrap();
    // 10,000 messages; the sender rotates every 1,000 (the count rule), so the stream
    // holds nine more MPK2s, as a real backlog would.
    let n = 10_000;
    let mut stream: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut seal = Duration::ZERO;
    for i in 0..n {
        if i > 0 && i % 1_000 == 0 {
            own = OwnSenderKey::generate(0, Some(own.key_id())).unwrap();
            let d = own.distribution(SID, AUTHOR, &author, &recipients).unwrap();
            stream.push((true, d));
        }
        let t = Instant::now();
        let env = own.seal(SID, AUTHOR, 0, &text).unwrap();
        seal += t.elapsed();
        stream.push((false, env));
    }
    println!(
        "MPM2 of a 100-byte text: {} bytes; seal {:.1} us each ({n} in {seal:?})",
        stream[0].1.len(),
        seal.as_secs_f64() * 1e6 / n as f64,
    );
    let mut open = Duration::ZERO;
    let t = Instant::now();
    for (is_key, env) in &stream {
        if *is_key {
            reader
                .receive_distribution(env, AUTHOR, &author_pub, ME, &me)
                .unwrap();
        } else {
            let t = Instant::now();
            std::hint::black_box(reader.open_message(env, AUTHOR).unwrap());
            open += t.elapsed();
        }
    }
    let read = t.elapsed();
    println!(
        "MPM2 open {:.1} us each; the 10,000-message backlog (with 9 rotations) read in order in {read:?}",
        open.as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    let bytes = reader.encode();
    let encode = t.elapsed();
    let t = Instant::now();
    let back = SessionState::decode(&bytes).unwrap();
    let decode = t.elapsed();
    drop(back);
    println!(
        "reader state: {} bytes, encode {encode:?}, decode {decode:?}",
        bytes.len()
    );
}
