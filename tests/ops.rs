//! The operator's commands against a real `mpchatd`: `who` and `stats` over the
//! control socket (and its refusal of other users), `backup` of a running server under
//! load and of a stopped one, and the server key rollover (`rotate-key`,
//! `retire-key`), with the server running and stopped.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{session, temp_dir, text, Raw, Server, WAIT};
use mpchat::mtp::MsgType;
use mpchat::proto::{Ack, Delivery, MsgRes};

const MPCHATD: &str = env!("CARGO_BIN_EXE_mpchatd");

/// What a finished command printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_command(mut cmd: Command) -> Ran {
    let out = cmd
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run mpchatd");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `mpchatd ARGS --state-dir STATE`.
fn op(state: &Path, args: &[&str]) -> Ran {
    let mut cmd = Command::new(MPCHATD);
    cmd.args(args).arg("--state-dir").arg(state);
    run_command(cmd)
}

/// Runs `mpchatd ARGS --state-dir STATE` and expects success; returns its lines.
#[track_caller]
fn ok(state: &Path, args: &[&str]) -> Vec<String> {
    let ran = op(state, args);
    assert_eq!(
        ran.code,
        Some(0),
        "mpchatd {args:?}: stdout {:?} stderr {:?}",
        ran.stdout,
        ran.stderr
    );
    assert_eq!(ran.stderr, "", "mpchatd {args:?} wrote to stderr");
    ran.stdout.lines().map(str::to_string).collect()
}

/// Runs `mpchatd ARGS --state-dir STATE`, expects exit status `code` and one line on
/// stderr holding every phrase; returns it.
#[track_caller]
fn fails(state: &Path, args: &[&str], code: i32, phrases: &[&str]) -> String {
    let ran = op(state, args);
    assert_eq!(ran.code, Some(code), "mpchatd {args:?}: {}", ran.stderr);
    assert_eq!(ran.stdout, "", "mpchatd {args:?} printed on stdout");
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", ran.stderr);
    assert!(lines[0].starts_with("mpchatd"), "{}", lines[0]);
    for p in phrases {
        assert!(lines[0].contains(p), "{p:?} is not in {:?}", lines[0]);
    }
    lines[0].to_string()
}

fn login(server: &Server, user: &str) -> Raw {
    Raw::login(server, user, &format!("pw-{user}"))
}

fn add_users(server: &Server, names: &[&str]) {
    for n in names {
        server.add_user(n, &format!("pw-{n}"));
    }
}

/// Polls `f` until it returns `Some` (the state is another process's), at most
/// [`WAIT`].
#[track_caller]
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `stats` as a map.
fn stats(state: &Path) -> BTreeMap<String, u64> {
    ok(state, &["stats"])
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("NAME VALUE");
            (k.to_string(), v.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn who_lists_each_online_user_with_address_and_login_time() {
    let server = Server::start(&[]);
    add_users(&server, &["alice", "bob"]);
    assert!(ok(&server.state, &["who"]).is_empty());
    let before = std::time::SystemTime::now();
    let a = login(&server, "alice");
    let b = login(&server, "bob");
    let lines = ok(&server.state, &["who"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, (name, raw)) in lines.iter().zip([("alice", &a), ("bob", &b)]) {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "NAME ADDRESS SINCE: {line}");
        assert_eq!(f[0], name);
        assert_eq!(f[1], raw.stream.local_addr().unwrap().to_string());
        let since = f[2];
        assert!(since.len() == 20 && since.ends_with('Z') && since.as_bytes()[10] == b'T');
        let earliest = mpchat::control::utc_time(before - Duration::from_secs(1));
        assert!(since >= earliest.as_str(), "{since} before {earliest}");
    }
    drop(b);
    eventually("bob goes offline in who", || {
        let lines = ok(&server.state, &["who"]);
        (lines.len() == 1 && lines[0].starts_with("alice ")).then_some(())
    });
    // A second login of alice replaces the first: one line, the new address.
    let a2 = login(&server, "alice");
    let addr = a2.stream.local_addr().unwrap().to_string();
    eventually("the second login is the one listed", || {
        let lines = ok(&server.state, &["who"]);
        (lines.len() == 1 && lines[0].contains(&addr)).then_some(())
    });
    drop(a);
}

#[test]
fn stats_counts_connections_logins_sessions_and_backlog() {
    let server = Server::start(&[]);
    add_users(&server, &["alice", "bob", "carol"]);
    let s = stats(&server.state);
    for (k, v) in [
        ("connections", 0),
        ("logins_in_progress", 0),
        ("users_online", 0),
        ("sessions_live", 0),
        ("backlog_messages", 0),
        ("server_keys", 1),
    ] {
        assert_eq!(s[k], v, "{k} in {s:?}");
    }
    let mut a = login(&server, "alice");
    let mut b = login(&server, "bob");
    let mut c = login(&server, "carol");
    let sid = session(&mut a, &mut [&mut b, &mut c]);
    drop(c);
    for body in [&b"0123456789"[..], b"abcdefghij", b"klmnopqrst"] {
        a.send(MsgType::MsgReq, sid, body);
        let (_, p) = a.recv_type(MsgType::MsgRes);
        assert!(
            matches!(MsgRes::decode(&p), Ok(MsgRes::Ok(_))),
            "{}",
            text(&p)
        );
    }
    // A connection that has not logged in yet.
    let _idle = TcpStream::connect(server.addr).unwrap();
    let s = eventually("stats settle", || {
        let s = stats(&server.state);
        (s["users_online"] == 2 && s["logins_in_progress"] == 1).then_some(s)
    });
    assert_eq!(s["connections"], 3, "{s:?}");
    assert_eq!(s["sessions_live"], 1);
    assert_eq!(s["sessions_pending"], 0);
    assert_eq!(s["backlog_messages"], 3, "carol has acknowledged none");
    assert_eq!(s["backlog_bytes"], 30);
    assert!(s["journal_bytes"] > 20, "{s:?}");
    drop(b);
}

#[test]
fn who_and_stats_say_so_when_no_server_runs() {
    let mut server = Server::start(&[]);
    let state = server.state.clone();
    server.kill();
    for cmd in ["who", "stats"] {
        fails(
            &state,
            &[cmd],
            1,
            &["no mpchatd is running on", "--state-dir"],
        );
    }
    let missing = state.join("not-there");
    fails(&missing, &["who"], 1, &["does not exist"]);
}

#[test]
fn only_the_servers_own_user_may_use_the_control_socket() {
    let server = Server::start(&[]);
    let socket = server.state.join(mpchat::control::CONTROL_SOCKET);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the owner's only");
    // This process's uid: /proc/self is owned by it.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    if uid != 0 {
        eprintln!("not root: cannot run a command as another user; only the mode is checked");
        return;
    }
    let keys_before = std::fs::read(server.state.join("server.key")).unwrap();
    for args in [&["who"][..], &["stats"], &["rotate-key"], &["retire-key"]] {
        let mut cmd = Command::new(MPCHATD);
        cmd.args(args)
            .arg("--state-dir")
            .arg(&server.state)
            .uid(65534)
            .gid(65534);
        let ran = run_command(cmd);
        assert_eq!(ran.code, Some(1), "{args:?} as nobody: {}", ran.stderr);
        assert!(
            ran.stderr.contains("permission denied") && ran.stderr.contains("user mpchatd runs as"),
            "{args:?}: {}",
            ran.stderr
        );
        assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    }
    assert_eq!(
        std::fs::read(server.state.join("server.key")).unwrap(),
        keys_before,
        "nothing changed"
    );
    assert!(!server.state.join("server.old.key").exists());
}

#[test]
fn every_operator_command_has_help_and_refuses_bad_arguments_with_status_2() {
    let state = temp_dir("help");
    for cmd in ["who", "stats", "backup", "rotate-key", "retire-key"] {
        let ran = op(&state, &[cmd, "--help"]);
        assert_eq!(ran.code, Some(0));
        assert!(
            ran.stdout.starts_with(&format!("usage: mpchatd {cmd}")),
            "{}",
            ran.stdout
        );
        fails(&state, &[cmd, "--bogus"], 2, &["unknown option --bogus"]);
    }
    for cmd in ["who", "stats", "rotate-key", "retire-key"] {
        fails(&state, &[cmd, "extra"], 2, &["takes no argument"]);
    }
    fails(&state, &["backup"], 2, &["exactly one argument"]);
    fails(&state, &["backup", "a", "b"], 2, &["exactly one argument"]);
}

/// What one sender thread saw: for each message, its number, envelope, and when it
/// was sent and acknowledged.
#[derive(Clone)]
struct Sent {
    envelope: Vec<u8>,
    sent: Instant,
    acked: Instant,
}

#[test]
fn a_backup_under_load_holds_every_message_acknowledged_before_it_began() {
    let state = temp_dir("live");
    let dest = temp_dir("backup").join("copy");
    let mut server = Server::start_in(&state, &["--backlog-messages", "1000000"]);
    let senders = ["alice", "bob", "dave", "erin"];
    add_users(&server, &senders);
    add_users(&server, &["carol"]);
    let sid = {
        let mut raws: Vec<Raw> = senders[1..].iter().map(|u| login(&server, u)).collect();
        let mut a = login(&server, "alice");
        let mut c = login(&server, "carol");
        let mut others: Vec<&mut Raw> = raws.iter_mut().collect();
        others.push(&mut c);
        session(&mut a, &mut others)
    };
    // carol is offline and acknowledges nothing: every message stays stored for her.
    let acked: Arc<Mutex<BTreeMap<u64, Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for who in senders {
        let mut raw = login(&server, who);
        raw.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (acked, stop) = (acked.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut counter = 0u64;
            while !stop.load(Ordering::Relaxed) {
                counter += 1;
                let envelope = format!("{who}-{counter}").into_bytes();
                let sent = Instant::now();
                raw.send(MsgType::MsgReq, sid, &envelope);
                loop {
                    let (h, p) = raw.recv();
                    match h.typ {
                        MsgType::MsgRes => {
                            let Ok(MsgRes::Ok(n)) = MsgRes::decode(&p) else {
                                panic!("OK <n>, not {}", text(&p));
                            };
                            let s = Sent {
                                envelope,
                                sent,
                                acked: Instant::now(),
                            };
                            assert!(acked.lock().unwrap().insert(n, s).is_none());
                            break;
                        }
                        MsgType::MsgReq => {
                            let d = Delivery::decode(&p).unwrap();
                            raw.send(Ack::TYPE, sid, &Ack { n: d.n }.encode());
                        }
                        _ => {}
                    }
                }
            }
        }));
    }
    eventually("300 messages acknowledged", || {
        (acked.lock().unwrap().len() >= 300).then_some(())
    });
    let before: BTreeMap<u64, Vec<u8>> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(n, s)| (*n, s.envelope.clone()))
        .collect();
    let begin = Instant::now();
    let out = ok(&state, &["backup", dest.to_str().unwrap()]);
    let end = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    server.kill();

    // The pause: what the server measured, and what the senders saw.
    assert_eq!(out.len(), 1, "{out:?}");
    let paused_us: u64 = out[0]
        .split("paused ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no pause in {:?}", out[0]));
    let all = acked.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = all.values().map(|s| s.acked - s.sent).collect();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let during = all
        .values()
        .filter(|s| s.acked >= begin && s.sent <= end)
        .map(|s| s.acked - s.sent)
        .max()
        .unwrap_or_default();
    eprintln!(
        "backup under load: {} messages before it, {} in all; the server held its registry lock \
         {paused_us} us for the capture; a message's round trip (one group commit): median \
         {median:?}, longest while the backup ran {during:?}; the backup took {:?}",
        before.len(),
        all.len(),
        end - begin
    );

    let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the copy is private");
    // A server starts on the copy (recovery checks pass), and carol gets every
    // message acknowledged before the backup began, with its number.
    let copy = Server::start_in(&dest, &[]);
    let mut c = login(&copy, "carol");
    let last = *before.keys().last().unwrap();
    let mut got = BTreeMap::new();
    while got.len() < last as usize {
        let (h, p) = c.recv();
        if h.typ == MsgType::MsgReq {
            let d = Delivery::decode(&p).unwrap();
            got.insert(d.n, d.envelope.to_vec());
        }
    }
    for (n, env) in &before {
        assert_eq!(got.get(n), Some(env), "message {n} in the copy");
    }
}

/// A live session of alice, bob and carol with three messages carol has not read.
fn state_with_messages(server: &Server) -> u64 {
    add_users(server, &["alice", "bob", "carol"]);
    let mut a = login(server, "alice");
    let mut b = login(server, "bob");
    let mut c = login(server, "carol");
    let sid = session(&mut a, &mut [&mut b, &mut c]);
    drop(c);
    for body in ["one", "two", "three"] {
        a.send(MsgType::MsgReq, sid, body.as_bytes());
        a.recv_type(MsgType::MsgRes);
    }
    sid
}

/// carol logs in to `server` and reads `want` messages.
fn carol_reads(server: &Server, want: &[&str]) {
    let mut c = login(server, "carol");
    let mut got = Vec::new();
    while got.len() < want.len() {
        let (h, p) = c.recv();
        if h.typ == MsgType::MsgReq {
            got.push(text(Delivery::decode(&p).unwrap().envelope));
        }
    }
    assert_eq!(got, want);
}

#[test]
fn a_stopped_servers_state_is_backed_up_under_its_lock() {
    let mut server = Server::start(&[]);
    state_with_messages(&server);
    server.kill();
    let dest = temp_dir("offline").join("copy");
    let out = ok(&server.state, &["backup", dest.to_str().unwrap()]);
    assert!(
        out[0].contains("1 sessions") && !out[0].contains("paused"),
        "{out:?}"
    );
    let copy = Server::start_in(&dest, &[]);
    carol_reads(&copy, &["one", "two", "three"]);

    // With the lock held by a server that does not answer, nothing is copied.
    let lock = std::fs::File::create(server.state.join("lock")).unwrap();
    lock.lock().unwrap();
    let dest2 = temp_dir("offline").join("copy");
    fails(
        &server.state,
        &["backup", dest2.to_str().unwrap()],
        1,
        &["holds", "does not answer on its control socket"],
    );
    assert!(
        !dest2.exists(),
        "a failed backup leaves no directory behind"
    );
}

#[test]
fn a_backup_refuses_a_destination_that_is_not_an_empty_directory() {
    let server = Server::start(&[]);
    let dest = temp_dir("busy");
    std::fs::write(dest.join("something"), b"x").unwrap();
    fails(
        &server.state,
        &["backup", dest.to_str().unwrap()],
        1,
        &["not an empty directory"],
    );
    assert_eq!(std::fs::read(dest.join("something")).unwrap(), b"x");
    let leftovers: Vec<_> = std::fs::read_dir(&server.state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("backup.tmp."))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no snapshot left in the state directory"
    );
}

#[test]
fn a_rotated_key_is_accepted_beside_the_old_one_until_the_old_one_is_retired() {
    let server = Server::start(&[]);
    add_users(&server, &["alice"]);
    let old = server.public_key();
    let lines = ok(&server.state, &["rotate-key"]);
    let new = server.public_key();
    assert_ne!(old, new, "server.pub holds the new key");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains(&new.fingerprint()), "{lines:?}");
    assert!(lines[1].contains(&old.fingerprint()) && lines[1].contains("retire-key"));
    let try_with = |key| Raw::try_login_with_key(&server, key, "alice", "pw-alice");
    assert!(try_with(&old).is_some(), "the old key still works");
    assert!(try_with(&new).is_some(), "the new key works");
    fails(&server.state, &["rotate-key"], 1, &["retire-key"]);
    assert_eq!(stats(&server.state)["server_keys"], 2);

    let lines = ok(&server.state, &["retire-key"]);
    assert!(lines[0].contains(&old.fingerprint()), "{lines:?}");
    assert!(try_with(&old).is_none(), "the old key is refused");
    assert!(try_with(&new).is_some(), "the new key works");
    assert!(!server.state.join("server.old.key").exists());
    assert!(!server.state.join("server.old.pub").exists());
    fails(&server.state, &["retire-key"], 1, &["no previous key"]);
}

#[test]
fn a_stopped_servers_key_is_rotated_offline_and_both_are_accepted_at_start() {
    let mut server = Server::start(&[]);
    add_users(&server, &["alice"]);
    let old = server.public_key();
    server.kill();
    let lines = ok(&server.state, &["rotate-key"]);
    assert!(lines[1].contains(&old.fingerprint()), "{lines:?}");
    let server = Server::start_in(&server.state.clone(), &[]);
    let new = server.public_key();
    assert_ne!(old, new);
    assert!(server
        .log()
        .contains("also accepting the previous server key"));
    for key in [&old, &new] {
        assert!(Raw::try_login_with_key(&server, key, "alice", "pw-alice").is_some());
    }
}

#[test]
fn a_start_repairs_what_an_interrupted_rotation_left() {
    let mut server = Server::start(&[]);
    let state = server.state.clone();
    let key = std::fs::read(state.join("server.key")).unwrap();
    server.kill();
    // Stopped after copying the key to server.old.key, with a stale server.pub.
    std::fs::write(state.join("server.old.key"), &key).unwrap();
    let other = mpchat::crypto::RsaPrivate::generate(2048).unwrap();
    std::fs::write(state.join("server.pub"), other.public().to_spki_pem()).unwrap();
    let server = Server::start_in(&state, &[]);
    assert!(!state.join("server.old.key").exists(), "{}", server.log());
    let pem = std::fs::read_to_string(state.join("server.key")).unwrap();
    let current = mpchat::crypto::RsaPrivate::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(server.public_key(), current.public());
}
