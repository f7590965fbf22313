//! Per-user quotas under floods, over the real `mpchatd` on loopback (issue 12 item 3):
//! one user creating sessions in a loop, invitations piled on one user, and one user's
//! messages filling backlogs across sessions. Each flood must end at its quota with
//! the quota's fixed `error:` reason, and freeing room (closing, declining,
//! acknowledging) lets the user go on. Closed sessions' ids are remembered compactly.
//!
//! The default tests run at the default quotas; the soaks replay the floods
//! (60,000 sessions, 3,000 invitations, 40 backlogs of 1 MiB, 50,000 closed sessions)
//! and print the server's memory and state directory growth:
//!
//!     cargo test --release --locked --test quotas -- --ignored --nocapture --test-threads 1

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{key_for, session, text, wait_for_log, Raw, Server};
use mpchat::mtp::MsgType;
use mpchat::proto::{Ack, InitReq, InitRes, InviteRes, MsgRes, Reason, MAX_ENVELOPE_LEN};

const PW: &str = "quotas-correct-pw-31f8";
/// The default quotas (mpchatd(8)).
const OPEN_SESSIONS: usize = 256;
const PENDING_INVITATIONS: usize = 100;
const USER_BACKLOG_BYTES: usize = 16 * 1024 * 1024;
/// Requests sent before their replies are read.
const PIPELINE: usize = 64;

/// Bytes of the files in `dir` (not recursive: the state directory is flat).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// What the server costs before and after a flood.
struct Growth {
    rss: u64,
    disk: u64,
}

impl Growth {
    fn now(server: &Server) -> Growth {
        Growth {
            rss: server.rss_kib(),
            disk: dir_bytes(&server.state),
        }
    }

    fn since(&self, server: &Server) -> String {
        let after = Growth::now(server);
        format!(
            "server VmRSS {} -> {} KiB, state directory {} -> {} KiB",
            self.rss,
            after.rss,
            self.disk / 1024,
            after.disk / 1024
        )
    }
}

/// Sends `count` init requests from `raw` made by `invitees(i)`, `PIPELINE` at a
/// time; returns the sids created and the refusals, by reason.
fn inits(
    raw: &mut Raw,
    count: usize,
    invitees: impl Fn(usize) -> Vec<String>,
) -> (Vec<u64>, Vec<Reason>) {
    let (mut made, mut refused) = (Vec::new(), Vec::new());
    let key = key_for(&raw.name);
    let mut i = 0;
    while i < count {
        let batch = PIPELINE.min(count - i);
        for j in 0..batch {
            let req = InitReq {
                key: key.clone(),
                invitees: invitees(i + j),
            };
            raw.send(InitReq::TYPE, 0, &req.encode());
        }
        for _ in 0..batch {
            let (h, p) = raw.recv_type(MsgType::InitRes);
            match InitRes::decode(&p) {
                Ok(InitRes::Ok) => made.push(h.sid),
                Ok(InitRes::Error(r)) => refused.push(r),
                Err(e) => panic!("a malformed init_res {:?}: {e}", text(&p)),
            }
        }
        i += batch;
    }
    (made, refused)
}

/// The `invited` lines of a sid-0 listing.
fn text_lines_invited(listing: &str) -> usize {
    listing.lines().filter(|l| l.contains(" invited ")).count()
}

/// The distinct refusal texts in `refused`.
fn reasons(refused: &[Reason]) -> BTreeSet<String> {
    refused.iter().map(|r| r.to_string()).collect()
}

fn open_session_flood(attempts: usize) {
    let server = Server::start(&[]);
    server.add_user("alice", PW);
    // Offline invitees, enough that none of them reaches its invitation quota.
    let invitees: Vec<String> = (0..attempts.div_ceil(PENDING_INVITATIONS / 2))
        .map(|i| format!("friend{i}"))
        .collect();
    server.add_users_at_once(&invitees, PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let before = Growth::now(&server);
    let (made, refused) = inits(&mut alice, attempts, |i| {
        vec![invitees[i % invitees.len()].clone()]
    });
    println!(
        "figure: {attempts} init requests from one user: {} sessions made, {} refused ({:?}); {}",
        made.len(),
        refused.len(),
        reasons(&refused),
        before.since(&server)
    );
    assert_eq!(made.len(), OPEN_SESSIONS, "sessions made");
    assert_eq!(
        reasons(&refused),
        BTreeSet::from(["too many open sessions".to_string()])
    );
    // Closing one makes room for one.
    alice.send(MsgType::CloseReq, made[0], b"");
    let (_, p) = alice.recv_type(MsgType::CloseRes);
    assert_eq!(text(&p), "OK");
    let (again, refused) = inits(&mut alice, 2, |i| vec![invitees[i].clone()]);
    assert_eq!((again.len(), refused.len()), (1, 1));
    assert!(!made.contains(&again[0]), "a closed sid was issued again");
}

#[test]
fn a_user_creating_sessions_in_a_loop_stops_at_the_open_session_quota() {
    open_session_flood(2 * OPEN_SESSIONS);
}

#[test]
#[ignore = "the issue's 60,000 sessions; run by hand for the figures"]
fn soak_sixty_thousand_init_requests_from_one_user() {
    open_session_flood(60_000);
}

fn invitation_flood(attempts: usize) {
    let server = Server::start(&[]);
    server.add_user("carol", PW);
    // Several creators, each under its own open-session quota.
    let creators: Vec<String> = (0..attempts.div_ceil(OPEN_SESSIONS / 2))
        .map(|i| format!("inviter{i}"))
        .collect();
    server.add_users_at_once(&creators, PW);
    let before = Growth::now(&server);
    let (mut made, mut refused) = (Vec::new(), Vec::new());
    let per = attempts.div_ceil(creators.len());
    let mut raws: Vec<Raw> = creators
        .iter()
        .map(|c| Raw::login(&server, c, PW))
        .collect();
    for raw in raws.iter_mut() {
        let (m, r) = inits(raw, per, |_| vec!["carol".into()]);
        made.extend(m);
        refused.extend(r);
    }
    // Carol logs in and is invited to every session that was made, once each.
    let mut carol = Raw::login(&server, "carol", PW);
    carol.send(MsgType::StatusReq, 0, b"");
    let mut invite_reqs = BTreeSet::new();
    let mut listing: Option<String> = None;
    let invited = loop {
        if let Some(l) = &listing {
            let invited = text_lines_invited(l);
            if invite_reqs.len() >= invited {
                break invited;
            }
        }
        let (h, p) = carol.recv();
        match h.typ {
            MsgType::InviteReq => {
                invite_reqs.insert(h.sid);
            }
            MsgType::StatusRes if h.sid == 0 => listing = Some(text(&p)),
            _ => {}
        }
    };
    let listing = listing.unwrap_or_default();
    println!(
        "figure: {} init requests inviting one user: {} sessions made, {} refused ({:?}); \
         the invitee was sent {} invitations at login; {}",
        creators.len() * per,
        made.len(),
        refused.len(),
        reasons(&refused),
        invite_reqs.len(),
        before.since(&server)
    );
    assert_eq!(made.len(), PENDING_INVITATIONS, "sessions inviting carol");
    assert_eq!(invited, PENDING_INVITATIONS, "carol's listing: {listing}");
    assert_eq!(
        reasons(&refused),
        BTreeSet::from(["too many pending invitations for carol".to_string()])
    );
    // Declining one makes room for one more. (Carol goes offline first, so that the
    // new sessions go live at once instead of waiting for her answer.)
    carol.send(InviteRes::TYPE, made[0], &InviteRes::Deny.encode());
    carol.send(MsgType::StatusReq, 0, b"");
    loop {
        let (h, _) = carol.recv_type(MsgType::StatusRes);
        if h.sid == 0 {
            break;
        }
    }
    drop(carol);
    wait_for_log(&server, "carol's logout", |l| {
        l.contains("carol disconnected")
    });
    let (again, refused) = inits(&mut raws[0], 2, |_| vec!["carol".into()]);
    assert_eq!((again.len(), refused.len()), (1, 1));
}

#[test]
fn invitations_piled_on_one_user_stop_at_the_pending_invitation_quota() {
    invitation_flood(2 * PENDING_INVITATIONS);
}

#[test]
#[ignore = "the issue's 3,000 invitations; run by hand for the figures"]
fn soak_three_thousand_invitations_to_one_user() {
    invitation_flood(3_000);
}

/// Alice sends envelopes of `size` bytes round-robin over `sids` until one is refused
/// or `max` were sent; returns the bytes accepted, the last number in each session
/// and the refusals.
fn fill(
    alice: &mut Raw,
    sids: &[u64],
    size: usize,
    max: usize,
) -> (usize, BTreeMap<u64, u64>, Vec<Reason>) {
    let envelope = vec![b'x'; size];
    let (mut bytes, mut last, mut refused) = (0, BTreeMap::new(), Vec::new());
    let mut i = 0;
    while i < max && refused.is_empty() {
        let batch = 8.min(max - i);
        for j in 0..batch {
            alice.send(MsgType::MsgReq, sids[(i + j) % sids.len()], &envelope);
        }
        for _ in 0..batch {
            let (h, p) = alice.recv_type(MsgType::MsgRes);
            match MsgRes::decode(&p) {
                Ok(MsgRes::Ok(n)) => {
                    bytes += size;
                    last.insert(h.sid, n);
                }
                Ok(MsgRes::Error(r)) => refused.push(r),
                Err(e) => panic!("a malformed msg_res {:?}: {e}", text(&p)),
            }
        }
        i += batch;
    }
    (bytes, last, refused)
}

/// Bob's acknowledgement point in `sid`, from alice's status request.
fn bobs_acked(alice: &mut Raw, sid: u64) -> u64 {
    alice.send(MsgType::StatusReq, sid, b"");
    loop {
        let (h, p) = alice.recv_type(MsgType::StatusRes);
        if h.sid != sid {
            continue;
        }
        let status = text(&p);
        let line = status
            .lines()
            .find(|l| l.starts_with("bob "))
            .unwrap_or_else(|| panic!("no bob in {status}"));
        return line.split(' ').nth(4).unwrap().parse().unwrap();
    }
}

fn backlog_flood(sessions: usize, args: &[&str], max_bytes: usize) {
    let server = Server::start(args);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let mut bob = Raw::login(&server, "bob", PW);
    let sids: Vec<u64> = (0..sessions)
        .map(|_| session(&mut alice, &mut [&mut bob]))
        .collect();
    // Bob accepted everywhere and leaves without acknowledging anything.
    drop(bob);
    let before = Growth::now(&server);
    let size = MAX_ENVELOPE_LEN;
    let (bytes, last, refused) = fill(&mut alice, &sids, size, 2 * max_bytes / size + 1);
    println!(
        "figure: one user's messages over {sessions} sessions with one recipient away: \
         {} KiB stored, then {:?}; {}",
        bytes / 1024,
        reasons(&refused),
        before.since(&server)
    );
    assert!(
        bytes <= USER_BACKLOG_BYTES && bytes + size > USER_BACKLOG_BYTES,
        "{bytes} bytes stored, quota {USER_BACKLOG_BYTES}"
    );
    assert_eq!(
        reasons(&refused),
        BTreeSet::from(["your backlog is full".to_string()])
    );
    // Once bob comes back and acknowledges everything, alice may send again.
    let mut bob = Raw::login(&server, "bob", PW);
    for (&sid, &n) in &last {
        bob.send(Ack::TYPE, sid, &Ack { n }.encode());
    }
    for (&sid, &n) in &last {
        let mut tries = 0;
        while bobs_acked(&mut alice, sid) < n {
            tries += 1;
            assert!(tries < 1000, "bob's acknowledgement never counted");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let (bytes, _, refused) = fill(&mut alice, &sids, size, 1);
    assert_eq!((bytes, refused.len()), (size, 0));
    drop(bob);
}

#[test]
fn one_users_messages_across_sessions_stop_at_the_user_backlog_quota() {
    backlog_flood(4, &[], USER_BACKLOG_BYTES);
}

#[test]
#[ignore = "the issue's 40 sessions at a 1 MiB backlog each; run by hand for the figures"]
fn soak_forty_backlogs_of_one_mebibyte() {
    backlog_flood(40, &["--backlog-bytes", "1048576"], 40 * 1024 * 1024);
}

fn closed_session_churn(count: usize) {
    let server = Server::start(&["--compact-bytes", "65536"]);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let before = Growth::now(&server);
    let mut closed = BTreeSet::new();
    while closed.len() < count {
        let batch = PIPELINE.min(count - closed.len());
        let (made, refused) = inits(&mut alice, batch, |_| vec!["bob".into()]);
        assert!(refused.is_empty(), "{:?}", reasons(&refused));
        for &sid in &made {
            alice.send(MsgType::CloseReq, sid, b"");
        }
        for _ in &made {
            let (h, p) = alice.recv_type(MsgType::CloseRes);
            assert_eq!(text(&p), "OK");
            assert!(closed.insert(h.sid), "sid {:x} issued twice", h.sid);
        }
    }
    let snapshot =
        std::fs::metadata(server.state.join(mpchat::store::SNAPSHOT_FILE)).map_or(0, |m| m.len());
    let rss_after = server.rss_kib();
    println!(
        "figure: {count} sessions created and closed: snapshot {snapshot} B ({:.1} B per closed sid); \
         server VmRSS {} -> {rss_after} KiB ({:.1} B per closed sid); {}",
        snapshot as f64 / count as f64,
        before.rss,
        (rss_after.saturating_sub(before.rss) * 1024) as f64 / count as f64,
        before.since(&server)
    );
    // A snapshot keeps 8 bytes per closed sid, and nothing else of a closed session
    // (it may also hold the sessions of the batch still open when it was taken).
    assert!(snapshot > 0, "the journal was never compacted");
    assert!(
        snapshot <= 8 * count as u64 + 64 * 1024,
        "a snapshot of {snapshot} B for {count} closed sids"
    );
    // After a restart no closed sid is issued again.
    let state = server.state.clone();
    drop(alice);
    drop(server);
    let server = Server::start_in(&state, &[]);
    let mut alice = Raw::login(&server, "alice", PW);
    let (made, _) = inits(&mut alice, PIPELINE, |_| vec!["bob".into()]);
    assert!(made.iter().all(|sid| !closed.contains(sid)));
}

#[test]
fn closed_sessions_are_remembered_compactly_and_never_issued_again() {
    closed_session_churn(2_000);
}

#[test]
#[ignore = "50,000 closed sessions; run by hand for the figures"]
fn soak_fifty_thousand_closed_sessions() {
    closed_session_churn(50_000);
}
