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
