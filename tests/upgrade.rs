//! Upgrades of the state format over a real server: a state directory of format 1,
//! made by the mpchatd of that format and kept in `tests/fixtures/state-v1/`, is
//! migrated in place at start-up after a copy is made; keys are bound where the old
//! sessions make that unambiguous; a newer format is refused.
//!
//! The fixture is made by [`make_the_format_1_fixture`] (ignored): build the mpchatd
//! of format 1 (commit d591d9f, the last before key bindings) and run
//!
//! ```text
//! MPCHATD_V1=/path/to/that/mpchatd cargo test --test upgrade -- --ignored --nocapture
//! ```

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{temp_dir, text, Raw, Server};
use mpchat::mtp::MsgType;
use mpchat::proto::{Ack, Delivery, InitReq, InviteRes};
use mpchat::store::{FORMAT_VERSION, JOURNAL_FILE, SNAPSHOT_FILE};

/// The fixture: a format-1 state directory, and the users' public keys beside it.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1")
}

fn keys_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1.keys")
}

/// The users' key lines in the fixture (`NAME-n` for the n-th key of NAME).
fn fixture_keys() -> BTreeMap<String, String> {
    fs::read_to_string(keys_file())
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "mallory"];

fn pw(user: &str) -> String {
    format!("pw-{user}")
}

fn login(server: &Server, user: &str) -> Raw {
    Raw::login(server, user, &pw(user))
}

/// Sends init_req with `key` inviting `invitees`; returns the init_res sid and text.
fn init(raw: &mut Raw, key: &str, invitees: &[&str]) -> (u64, String) {
    let req = InitReq {
        key: key.to_string(),
        invitees: invitees.iter().map(|s| s.to_string()).collect(),
    };
    raw.send(InitReq::TYPE, 0, &req.encode());
    let (h, p) = raw.recv_type(MsgType::InitRes);
    (h.sid, text(&p))
}

/// `invitee` accepts the next invitation with `key`; returns its sid.
fn accept(raw: &mut Raw, key: &str) -> u64 {
    let (h, _) = raw.recv_type(MsgType::InviteReq);
    raw.send(
        InviteRes::TYPE,
        h.sid,
        &InviteRes::Accept(key.into()).encode(),
    );
    h.sid
}

/// Sends a message and waits for its `OK <n>`.
fn message(raw: &mut Raw, sid: u64, body: &str) {
    raw.send(MsgType::MsgReq, sid, body.as_bytes());
    let (_, p) = raw.recv_type(MsgType::MsgRes);
    assert!(text(&p).starts_with("OK "), "{}", text(&p));
}

#[test]
#[ignore = "makes tests/fixtures/state-v1 with the mpchatd of format 1 named by MPCHATD_V1"]
fn make_the_format_1_fixture() {
    let old = std::env::var("MPCHATD_V1").expect("MPCHATD_V1=/path/to/the/format-1/mpchatd");
    assert!(Path::new(&old).is_file(), "no mpchatd at {old}");
    let out = fixture();
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let run_old = r#"exec "$MPCHATD_V1" "$@""#;
    let key = || {
        mpchat::crypto::RsaPrivate::generate(2048)
            .unwrap()
            .public()
            .to_base64()
    };
    let mut keys = BTreeMap::new();
    for id in ["alice-1", "bob-1", "dave-1", "dave-2", "erin-1"] {
        keys.insert(id.to_string(), key());
    }
    let k = |id: &str| keys[id].clone();

    // Phase 1: every batch is compacted into the snapshot.
    let mut server = Server::start_wrapped(
        &out,
        run_old,
        &["--compact-bytes", "1", "--invite-wait", "1"],
    );
    for u in USERS {
        server.add_user(u, &pw(u));
    }
    {
        let mut a = login(&server, "alice");
        let mut b = login(&server, "bob");
        // S1: alice invites bob (accepts) and carol (offline: stays invited).
        a.send(
            InitReq::TYPE,
            0,
            &InitReq {
                key: k("alice-1"),
                invitees: vec!["bob".into(), "carol".into()],
            }
            .encode(),
        );
        let s1 = accept(&mut b, &k("bob-1"));
        let (h, p) = a.recv_type(MsgType::InitRes);
        assert_eq!((h.sid, text(&p).as_str()), (s1, "OK"));
        message(&mut a, s1, "one");
        message(&mut a, s1, "two");
        b.send(Ack::TYPE, s1, &Ack { n: 1 }.encode());
        // S2: made and closed.
        a.send(
            InitReq::TYPE,
            0,
            &InitReq {
                key: k("alice-1"),
                invitees: vec!["bob".into()],
            }
            .encode(),
        );
        let s2 = accept(&mut b, &k("bob-1"));
        a.recv_type(MsgType::InitRes);
        a.send(MsgType::CloseReq, s2, b"");
        a.recv_type(MsgType::CloseRes);
        fs::write(out.join("s1"), format!("{s1:016x}\n")).unwrap();
    }
    server.kill();
    assert!(out.join(SNAPSHOT_FILE).exists());

    // Phase 2: records in the journal after the snapshot.
    let mut server = Server::start_wrapped(&out, run_old, &["--invite-wait", "1"]);
    {
        let mut m = login(&server, "mallory");
        let mut d = login(&server, "dave");
        let mut e = login(&server, "erin");
        // S3: mallory with bob's key (squatting, which format 1 allowed), dave accepts.
        m.send(
            InitReq::TYPE,
            0,
            &InitReq {
                key: k("bob-1"),
                invitees: vec!["dave".into()],
            }
            .encode(),
        );
        accept(&mut d, &k("dave-1"));
        m.recv_type(MsgType::InitRes);
        // S4: dave with another key of his, erin accepts.
        d.send(
            InitReq::TYPE,
            0,
            &InitReq {
                key: k("dave-2"),
                invitees: vec!["erin".into()],
            }
            .encode(),
        );
        accept(&mut e, &k("erin-1"));
        d.recv_type(MsgType::InitRes);
        let mut a = login(&server, "alice");
        let s1 =
            u64::from_str_radix(fs::read_to_string(out.join("s1")).unwrap().trim(), 16).unwrap();
        message(&mut a, s1, "three");
    }
    server.kill();
    for f in ["lock", "s1", "users.lock"] {
        let _ = fs::remove_file(out.join(f));
    }
    let lines: String = keys.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    fs::write(keys_file(), lines).unwrap();
    for e in fs::read_dir(&out).unwrap().flatten() {
        eprintln!(
            "{} {} bytes",
            e.path().display(),
            e.metadata().unwrap().len()
        );
    }
}

/// A copy of the fixture in a fresh directory (the migration changes it).
fn fixture_copy() -> PathBuf {
    let dir = temp_dir("upgrade").join("state");
    fs::create_dir_all(&dir).unwrap();
    for e in fs::read_dir(fixture()).unwrap().flatten() {
        fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    dir
}

fn header_version(path: &Path) -> u32 {
    let bytes = fs::read(path).unwrap();
    u32::from_be_bytes(bytes[8..12].try_into().unwrap())
}

/// The session ids `raw` lists (sid 0 status), with their state words.
fn listing(raw: &mut Raw) -> Vec<(u64, String)> {
    raw.send(MsgType::StatusReq, 0, b"");
    let (_, p) = raw.recv_type(MsgType::StatusRes);
    text(&p)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (u64::from_str_radix(f[0], 16).unwrap(), f[1].to_string())
        })
        .collect()
}

#[test]
fn a_format_1_state_is_copied_then_migrated_in_place_with_keys_bound_where_unambiguous() {
    let state = fixture_copy();
    let keys = fixture_keys();
    assert_eq!(header_version(&state.join(JOURNAL_FILE)), 1);
    assert_eq!(header_version(&state.join(SNAPSHOT_FILE)), 1);
    // Offline invitees make a session live at once; the short wait covers a user
    // whose connection has just ended.
    let server = Server::start_in(&state, &["--invite-wait", "1"]);
    let log = server.log();
    assert!(
        log.contains("migrated to format version 2")
            && log.contains("2 keys bound, 3 accounts left unbound"),
        "{log}"
    );
    // The copy made first holds the files as they were.
    let aside = state.join("pre-upgrade-format-1");
    for e in fs::read_dir(fixture()).unwrap().flatten() {
        assert_eq!(
            fs::read(aside.join(e.file_name())).unwrap(),
            fs::read(e.path()).unwrap(),
            "{:?} copied as it was",
            e.file_name()
        );
    }
    assert_eq!(header_version(&state.join(JOURNAL_FILE)), FORMAT_VERSION);
    assert_eq!(header_version(&state.join(SNAPSHOT_FILE)), FORMAT_VERSION);

    // Sessions, invitations and messages are all there.
    let mut c = login(&server, "carol");
    let (h, _) = c.recv_type(MsgType::InviteReq);
    let s1 = h.sid;
    assert!(listing(&mut c).contains(&(s1, "invited".to_string())));
    drop(c);
    let mut b = login(&server, "bob");
    let mut got = Vec::new();
    while got.len() < 2 {
        let (h, p) = b.recv();
        if h.typ == MsgType::MsgReq {
            let d = Delivery::decode(&p).unwrap();
            got.push((d.n, text(d.envelope)));
        }
    }
    assert_eq!(got, [(2, "two".into()), (3, "three".into())]);
    assert_eq!(listing(&mut b).len(), 1, "bob is in S1 only (S2 closed)");
    let mut e = login(&server, "erin");
    assert_eq!(listing(&mut e).len(), 1);

    // alice and erin were bound; bob, mallory (bob's key) and dave (two keys) not.
    let mut a = login(&server, "alice");
    let other = common::key_for("someone-else");
    assert_eq!(
        init(&mut a, &other, &["bob"]).1,
        "error: key differs from the one bound to your account"
    );
    assert_eq!(init(&mut a, &keys["alice-1"], &["carol"]).1, "OK");
    assert_eq!(
        init(&mut e, &other, &["alice"]).1,
        "error: key differs from the one bound to your account"
    );
    // bob's key binds at his next init; then mallory may no longer use it.
    assert_eq!(init(&mut b, &keys["bob-1"], &["carol"]).1, "OK");
    let mut m = login(&server, "mallory");
    assert_eq!(
        init(&mut m, &keys["bob-1"], &["carol"]).1,
        "error: key belongs to another user"
    );
    let mut d = login(&server, "dave");
    assert_eq!(init(&mut d, &keys["dave-2"], &["carol"]).1, "OK");
    drop(server);

    // A second start does not migrate again.
    let server = Server::start_in(&state, &[]);
    assert!(!server.log().contains("migrated"), "{}", server.log());
    assert!(!state.join("pre-upgrade-format-1.2").exists());
}

#[test]
fn a_state_of_a_newer_format_is_refused_and_left_alone() {
    let state = fixture_copy();
    let journal = state.join(JOURNAL_FILE);
    let mut bytes = fs::read(&journal).unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_be_bytes());
    fs::write(&journal, &bytes).unwrap();
    let snapshot_before = fs::read(state.join(SNAPSHOT_FILE)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mpchatd"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("format version {}", FORMAT_VERSION + 1))
            && stderr.contains("newer"),
        "{stderr}"
    );
    assert_eq!(fs::read(&journal).unwrap(), bytes);
    assert_eq!(
        fs::read(state.join(SNAPSHOT_FILE)).unwrap(),
        snapshot_before
    );
    assert!(!state.join("pre-upgrade-format-1").exists(), "no migration");
}

#[test]
fn a_migration_cut_short_after_its_snapshot_is_finished_at_the_next_start() {
    let state = fixture_copy();
    let old_journal = fs::read(state.join(JOURNAL_FILE)).unwrap();
    drop(Server::start_in(&state, &[]));
    // As if the migration stopped after writing the new snapshot: the format-1
    // journal is back beside it.
    fs::write(state.join(JOURNAL_FILE), &old_journal).unwrap();
    let server = Server::start_in(&state, &[]);
    assert!(
        server.log().contains("migrated to format version 2"),
        "{}",
        server.log()
    );
    assert!(state.join("pre-upgrade-format-1.2").is_dir());
    assert_eq!(header_version(&state.join(JOURNAL_FILE)), FORMAT_VERSION);
    let keys = fixture_keys();
    let mut a = login(&server, "alice");
    let other = common::key_for("someone-else");
    assert_eq!(
        init(&mut a, &other, &["bob"]).1,
        "error: key differs from the one bound to your account"
    );
    assert_eq!(init(&mut a, &keys["alice-1"], &["bob"]).1, "OK");
}

#[test]
fn a_stopped_format_1_state_is_backed_up_as_it_is() {
    let state = fixture_copy();
    let dest = temp_dir("upgrade-backup").join("copy");
    let out = Command::new(env!("CARGO_BIN_EXE_mpchatd"))
        .args(["backup", dest.to_str().unwrap(), "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(header_version(&dest.join(JOURNAL_FILE)), 1);
    assert_eq!(header_version(&state.join(JOURNAL_FILE)), 1, "not migrated");
}
