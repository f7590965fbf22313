//! Short session names, id prefixes, `/join` and their errors, in script mode,
//! through real `mpchat` processes and a real `mpchatd` (mpchat(1), "Sessions by
//! name").

mod common;

use common::{sid_of, users, Client, Server};

const UNKNOWN_HINT: &str =
    "unknown command; use /init /accept /decline /msg /close /status /trust /quit";

#[test]
fn a_session_is_reached_by_a_prefix_a_default_name_or_a_name_the_user_gave_it() {
    let server = Server::start(&["--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    let mut carol = Client::start(&server, &u[2]);
    for c in [&mut alice, &mut bob, &mut carol] {
        c.send("/status");
        c.expect("status none");
    }
    alice.send("/init bob carol");
    let sid = sid_of(&bob.expect("invite "));
    carol.expect("invite ");
    // bob answers by a prefix of the id, carol by the session's default name.
    bob.send(&format!("/accept {}", &sid[..6]));
    carol.send("/decline alice,bob");
    assert_eq!(alice.expect("init "), format!("init {sid} ok"));

    // A name alice gives the session, kept in her config directory.
    alice.send(&format!("/name {} lunch", &sid[..4]));
    assert_eq!(alice.expect("named "), format!("named {sid} lunch"));
    let names = std::fs::read_to_string(u[0].config_dir.join("names")).unwrap();
    assert_eq!(names, format!("{sid} lunch\n"));
    alice.send("/msg lunch by name");
    assert_eq!(alice.expect("sent "), format!("sent {sid} 1"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice by name"));

    // bob's default name for it is the others who did not decline: alice (once
    // bob has seen carol's answer).
    bob.send(&format!("/status {sid}"));
    bob.expect_where("carol declined", |l| {
        l.starts_with(&format!("status {sid} carol ")) && l.contains(" declined ")
    });
    bob.send("/msg alice by default name");
    assert_eq!(
        alice.expect("msg "),
        format!("msg {sid} bob by default name")
    );
    bob.send(&format!("/status {}", &sid[..3]));
    assert_eq!(
        bob.expect(&format!("status {sid} ")),
        format!("status {sid} live alice")
    );

    // A plain line is an error until /join chooses a session.
    bob.send("hello");
    assert_eq!(bob.expect("error "), format!("error hello {UNKNOWN_HINT}"));
    bob.send("/join alice");
    assert_eq!(bob.expect("joined "), format!("joined {sid}"));
    bob.send("plain line");
    assert_eq!(alice.expect("msg "), format!("msg {sid} bob plain line"));
    bob.send("//slash first");
    assert_eq!(alice.expect("msg "), format!("msg {sid} bob /slash first"));

    // The name outlives the process.
    let (status, _) = alice.finish();
    assert!(status.success());
    let mut alice = Client::start(&server, &u[0]);
    alice.send("/msg lunch after a restart");
    assert_eq!(
        bob.expect("msg "),
        format!("msg {sid} alice after a restart")
    );
    alice.send("/close lunch");
    assert_eq!(alice.expect("closed "), format!("closed {sid}"));
    bob.expect("closed ");
    for c in [alice, bob, carol] {
        let (status, _) = c.finish();
        assert!(status.success());
    }
}

#[test]
fn an_unknown_or_ambiguous_session_is_an_error_naming_the_candidates() {
    let server = Server::start(&["--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    bob.send("/status");
    bob.expect("status none");
    bob.send("/msg lunch hi");
    assert_eq!(
        bob.expect("error "),
        "error msg no session lunch; /status lists your sessions"
    );

    let mut sids = Vec::new();
    for _ in 0..2 {
        alice.send("/init bob");
        let sid = sid_of(&bob.expect("invite "));
        bob.send(&format!("/accept {sid}"));
        assert_eq!(alice.expect("init "), format!("init {sid} ok"));
        sids.push(sid);
    }
    sids.sort();
    // Both are "alice" to bob: the default name names neither.
    bob.send("/msg alice hi");
    let err = bob.expect("error ");
    assert_eq!(
        err,
        format!(
            "error msg session alice is ambiguous: it could be {} (alice), {} (alice)",
            sids[0], sids[1]
        )
    );
    bob.send("/close nosuch");
    let err = bob.expect("error ");
    assert!(
        err.starts_with("error close no session nosuch; known: "),
        "{err}"
    );
    assert!(err.contains(&sids[0]) && err.contains(&sids[1]), "{err}");

    // A whole id nobody heard of: the server is asked, and says no.
    bob.send("/accept 0123456789abcdef");
    assert_eq!(
        bob.expect("error "),
        "error accept 0123456789abcdef not a participant"
    );
    bob.send("/name nosuch x");
    assert!(bob
        .expect("error ")
        .starts_with("error name no session nosuch"));
    bob.send(&format!("/name {} 0a0a", sids[0]));
    assert_eq!(
        bob.expect("error "),
        format!(
            "error name {} a name of hex digits only would read as a session id prefix",
            sids[0]
        )
    );
    bob.send("/help");
    assert!(bob.expect("help ").starts_with("help /init NAME..."));
    for c in [alice, bob] {
        let (status, _) = c.finish();
        assert!(status.success());
    }
}
