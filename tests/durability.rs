//! Durability of the real `mpchatd`: what it acknowledged survives `kill -9`, restarts
//! resume exactly, closed sessions stay closed and gone, and a full disk is an error
//! reply rather than a crash or a false `OK`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{key_for, session, temp_dir, text, wait_for_log, Raw, Server};
use mpchat::encoding::id_hex;
use mpchat::mtp::MsgType;
use mpchat::proto::{Ack, Delivery, InitReq, MsgRes};

/// Logs in with the password the tests give every account.
fn login(server: &Server, user: &str) -> Raw {
    Raw::login(server, user, &format!("pw-{user}"))
}

#[test]
fn acknowledged_messages_survive_kill_9_and_are_never_renumbered() {
    let state = temp_dir("crash");
    let mut server = Server::start_in(&state, &["--invite-wait", "2"]);
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, &format!("pw-{u}"));
    }
    let (sid, closed_sid) = {
        let mut a = login(&server, "alice");
        let mut b = login(&server, "bob");
        let mut c = login(&server, "carol");
        let sid = session(&mut a, &mut [&mut b, &mut c]);
        let closed = session(&mut a, &mut [&mut b]);
        a.send(MsgType::CloseReq, closed, b"");
        assert_eq!(text(&a.recv_type(MsgType::CloseRes).1), "OK");
        (sid, closed)
    };

    // n -> envelope, for every message whose sender saw `OK <n>`.
    let acked: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    // n -> envelope, as first received by each recipient.
    type ByNumber = BTreeMap<u64, Vec<u8>>;
    let received: Arc<Mutex<HashMap<String, ByNumber>>> = Arc::default();
    let rounds = 20;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        if round > 0 {
            server = Server::start_in(&state, &["--invite-wait", "2"]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (who, peer) in [("alice", "bob"), ("bob", "alice"), ("carol", "")] {
            let mut raw = login(&server, who);
            raw.stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let (acked, received, stop) = (acked.clone(), received.clone(), stop.clone());
            let who = who.to_string();
            let sends = !peer.is_empty();
            threads.push(std::thread::spawn(move || {
                let mut counter = 0u64;
                let mut waiting: Option<Vec<u8>> = None;
                loop {
                    if sends && waiting.is_none() && !stop.load(Ordering::Relaxed) {
                        counter += 1;
                        let env = format!("{who}-r{round}-{counter}").into_bytes();
                        if raw.try_send(MsgType::MsgReq, sid, &env).is_err() {
                            return;
                        }
                        waiting = Some(env);
                    }
                    let Some((h, p)) = raw.try_recv() else { return };
                    match h.typ {
                        MsgType::MsgRes => {
                            let Ok(MsgRes::Ok(n)) = MsgRes::decode(&p) else {
                                panic!("OK <n>, not {}", text(&p));
                            };
                            let env = waiting.take().expect("a reply to our message");
                            let mut a = acked.lock().unwrap();
                            assert!(
                                a.insert(n, env).is_none(),
                                "message number {n} acknowledged twice"
                            );
                        }
                        MsgType::MsgReq => {
                            let d = Delivery::decode(&p).expect("a delivery");
                            let (n, env) = (d.n, d.envelope.to_vec());
                            let mut r = received.lock().unwrap();
                            let mine = r.entry(who.clone()).or_default();
                            if let Some(prev) = mine.get(&n) {
                                assert_eq!(
                                    prev, &env,
                                    "{who} got two different messages numbered {n}"
                                );
                            } else {
                                mine.insert(n, env);
                            }
                            drop(r);
                            let _ = raw.try_send(Ack::TYPE, sid, &Ack { n }.encode());
                        }
                        _ => {}
                    }
                }
            }));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(50 + rng % 250));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
    }

    // Restart once more and collect everything still owed to each recipient.
    let server = Server::start_in(&state, &["--invite-wait", "2"]);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > rounds,
        "the senders got too few acknowledgements to test anything: {}",
        acked.len()
    );
    println!(
        "{} acknowledged messages over {rounds} kill -9 rounds",
        acked.len()
    );
    for who in ["alice", "bob", "carol"] {
        let mut raw = login(&server, who);
        let mut got = received.lock().unwrap().remove(who).unwrap_or_default();
        let owed: Vec<u64> = acked
            .iter()
            .filter(|(_, env)| !env.starts_with(format!("{who}-").as_bytes()))
            .map(|(n, _)| *n)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while owed.iter().any(|n| !got.contains_key(n)) && Instant::now() < deadline {
            raw.stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let Some((h, p)) = raw.try_recv() else { break };
            if h.typ == MsgType::MsgReq {
                let d = Delivery::decode(&p).expect("a delivery");
                let (n, env) = (d.n, d.envelope.to_vec());
                if let Some(prev) = got.get(&n) {
                    assert_eq!(prev, &env, "{who} got two different messages numbered {n}");
                }
                got.insert(n, env);
                raw.send(Ack::TYPE, sid, &Ack { n }.encode());
            }
        }
        for n in &owed {
            assert_eq!(
                got.get(n),
                acked.get(n),
                "{who} is missing acknowledged message {n}"
            );
        }
    }

    // Closed stays closed.
    let mut a = login(&server, "alice");
    a.send(MsgType::MsgReq, closed_sid, b"x");
    assert_eq!(
        text(&a.recv_type(MsgType::MsgRes).1),
        "error: session closed"
    );
    a.send(MsgType::StatusReq, 0, b"");
    let listing = text(&a.recv_type(MsgType::StatusRes).1);
    assert!(
        listing.contains(&id_hex(sid)) && !listing.contains(&id_hex(closed_sid)),
        "{listing}"
    );
}

#[test]
fn a_restart_resumes_live_sessions_pending_invites_and_undelivered_messages() {
    let state = temp_dir("restart");
    let mut server = Server::start_in(&state, &["--invite-wait", "1"]);
    for u in ["alice", "bob", "carol"] {
        server.add_user(u, &format!("pw-{u}"));
    }
    let mut a = login(&server, "alice");
    let mut b = login(&server, "bob");
    let sid = session(&mut a, &mut [&mut b]);
    // carol is invited to a second session while offline.
    let init = InitReq {
        key: key_for("alice"),
        invitees: vec!["carol".into()],
    };
    a.send(InitReq::TYPE, 0, &init.encode());
    let (h, _) = a.recv_type(MsgType::InitRes);
    let sid2 = h.sid;
    drop(b);
    a.send(MsgType::MsgReq, sid, b"for bob while away");
    assert_eq!(text(&a.recv_type(MsgType::MsgRes).1), "OK 1");
    drop(a);
    server.kill();

    let server = Server::start_in(&state, &["--invite-wait", "1"]);
    let mut b = login(&server, "bob");
    let (h, p) = b.recv_type(MsgType::MsgReq);
    assert_eq!(h.sid, sid);
    assert_eq!(&p[..8], &1u64.to_be_bytes());
    assert_eq!(&p[8..], b"for bob while away");
    let mut c = login(&server, "carol");
    let (h, _) = c.recv_type(MsgType::InviteReq);
    assert_eq!(h.sid, sid2);
    let mut a = login(&server, "alice");
    a.send(MsgType::MsgReq, sid, b"after the restart");
    assert_eq!(
        text(&a.recv_type(MsgType::MsgRes).1),
        "OK 2",
        "numbering continues"
    );
}

fn state_files_contain(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let mut bytes = Vec::new();
        if std::fs::File::open(e.path())
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .is_ok()
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    hits
}

#[test]
fn a_closed_sessions_envelopes_are_gone_from_disk_after_compaction() {
    let server = Server::start(&["--invite-wait", "1", "--compact-bytes", "4096"]);
    for u in ["alice", "bob"] {
        server.add_user(u, &format!("pw-{u}"));
    }
    let mut a = login(&server, "alice");
    let mut b = login(&server, "bob");
    let doomed = session(&mut a, &mut [&mut b]);
    let marker = b"ENVELOPE-MARKER-7f3a9c";
    a.send(MsgType::MsgReq, doomed, marker);
    assert_eq!(text(&a.recv_type(MsgType::MsgRes).1), "OK 1");
    assert!(
        !state_files_contain(&server.state, marker).is_empty(),
        "the envelope was stored"
    );
    a.send(MsgType::CloseReq, doomed, b"");
    assert_eq!(text(&a.recv_type(MsgType::CloseRes).1), "OK");
    // Traffic in another session grows the journal past the compaction bound.
    let other = session(&mut a, &mut [&mut b]);
    for i in 0..40 {
        a.send(MsgType::MsgReq, other, format!("{i:0200}").as_bytes());
        let _ = a.recv_type(MsgType::MsgRes);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state_files_contain(&server.state, marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        state_files_contain(&server.state, marker),
        Vec::<String>::new()
    );
    wait_for_log(&server, "about the compaction", |l| l.contains("compacted"));
}

/// Runs `mpchatd` with `args` on `state` and returns (exit code, stderr) if it exits
/// within 20 s.
fn run_to_exit(state: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mpchatd"))
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn damage_before_the_journal_tail_stops_start_up_naming_file_and_offset() {
    let state = temp_dir("damage");
    {
        let server = Server::start_in(&state, &["--invite-wait", "1"]);
        for u in ["alice", "bob"] {
            server.add_user(u, &format!("pw-{u}"));
        }
        let mut a = login(&server, "alice");
        let mut b = login(&server, "bob");
        let sid = session(&mut a, &mut [&mut b]);
        for i in 0..5 {
            a.send(MsgType::MsgReq, sid, format!("message {i}").as_bytes());
            let _ = a.recv_type(MsgType::MsgRes);
        }
    }
    let journal = state.join(mpchat::store::JOURNAL_FILE);
    let mut bytes = std::fs::read(&journal).unwrap();
    let header = mpchat::store::FILE_HEADER_LEN as usize;
    bytes[header + 12] ^= 0x40; // inside the first entry, with good entries after it
    std::fs::write(&journal, &bytes).unwrap();
    let (code, stderr) = run_to_exit(&state, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("mpchatd:")).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&journal.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("{header}")),
        "the offset: {stderr}"
    );
}

#[test]
fn a_state_directory_of_another_format_version_is_refused() {
    let state = temp_dir("version");
    drop(Server::start_in(&state, &[]));
    let journal = state.join(mpchat::store::JOURNAL_FILE);
    let mut bytes = std::fs::read(&journal).unwrap();
    let newer = mpchat::store::FORMAT_VERSION + 1;
    bytes[8..12].copy_from_slice(&newer.to_be_bytes());
    std::fs::write(&journal, &bytes).unwrap();
    let (code, stderr) = run_to_exit(&state, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("version {newer}"))
            && stderr.contains(&journal.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn a_full_disk_gives_error_replies_and_the_server_keeps_serving() {
    let state = temp_dir("full");
    // Make the server key and accounts first, without the size limit.
    drop(Server::start_in(&state, &[]));
    for u in ["alice", "bob"] {
        mpchat::accounts::add_user(&state, u, &format!("pw-{u}"), common::TEST_ITERATIONS).unwrap();
    }
    // Files the server writes may not grow past a small limit (`ulimit -f`; SIGXFSZ
    // ignored so a write fails with EFBIG instead of killing the server).
    let server = Server::start_wrapped(
        &state,
        "trap '' XFSZ; ulimit -f 128; exec \"$0\" \"$@\"",
        &["--invite-wait", "1"],
    );
    let mut a = login(&server, "alice");
    let mut b = login(&server, "bob");
    let sid = session(&mut a, &mut [&mut b]);
    let mut refused = None;
    let mut last_ok = 0u64;
    for i in 0..2000 {
        a.send(MsgType::MsgReq, sid, format!("{i:01000}").as_bytes());
        let reply = a.recv_type(MsgType::MsgRes).1;
        match MsgRes::decode(&reply) {
            Ok(MsgRes::Ok(n)) => last_ok = n,
            _ => {
                refused = Some(text(&reply));
                break;
            }
        }
    }
    let refused = refused.expect("the size limit was reached");
    assert!(
        refused.starts_with("error: the server could not store this"),
        "{refused}"
    );
    // Still serving: status works, and bob still gets what was acknowledged.
    a.send(MsgType::StatusReq, 0, b"");
    assert!(text(&a.recv_type(MsgType::StatusRes).1).starts_with("OK\n"));
    let mut got = 0;
    while got < last_ok {
        let (h, p) = b.recv_type(MsgType::MsgReq);
        assert_eq!(h.sid, sid);
        got = u64::from_be_bytes(p[..8].try_into().unwrap());
    }
    wait_for_log(&server, "about the failed write", |l| {
        l.contains("cannot write the journal")
    });
}
