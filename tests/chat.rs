//! Whole conversations through real `mpchat` processes and a real `mpchatd`.

mod common;

use common::{sid_of, users, Client, Server};

#[test]
fn three_clients_run_a_whole_session_lifecycle() {
    let server = Server::start(&["--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    let mut carol = Client::start(&server, &u[2]);
    // Make sure all three are logged in before the init.
    for c in [&mut alice, &mut bob, &mut carol] {
        c.send("/status");
        c.expect("status none");
    }

    alice.send("/init bob carol");
    let invite = bob.expect("invite ");
    assert!(invite.ends_with(" alice"), "{invite}");
    let sid = sid_of(&invite);
    assert_eq!(sid_of(&carol.expect("invite ")), sid);

    bob.send(&format!("/accept {sid}"));
    carol.send(&format!("/decline {sid}"));
    assert_eq!(alice.expect("init "), format!("init {sid} ok"));

    alice.send(&format!("/msg {sid} hello bob"));
    assert_eq!(alice.expect("sent "), format!("sent {sid} 1"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice hello bob"));
    bob.send(&format!("/msg {sid} hi alice"));
    assert_eq!(bob.expect("sent "), format!("sent {sid} 2"));
    assert_eq!(alice.expect("msg "), format!("msg {sid} bob hi alice"));

    alice.send(&format!("/status {sid}"));
    assert_eq!(alice.expect(&format!("status {sid} ")), format!("status {sid} live alice"));
    let lines: Vec<String> = (0..3).map(|_| alice.expect(&format!("status {sid} "))).collect();
    assert!(lines.iter().any(|l| l.starts_with(&format!("status {sid} alice ")) && l.contains(" accepted online ")));
    assert!(lines.iter().any(|l| l.starts_with(&format!("status {sid} bob ")) && l.contains(" accepted online 1")));
    assert!(lines.iter().any(|l| l.starts_with(&format!("status {sid} carol ")) && l.contains(" declined ")));

    bob.send("/status");
    assert_eq!(bob.expect("status "), format!("status {sid} live alice"));
    carol.send(&format!("/status {sid}"));
    assert_eq!(carol.expect("error "), format!("error status {sid} not a participant"));

    bob.send(&format!("/close {sid}"));
    assert_eq!(bob.expect("error "), format!("error close {sid} only the creator can close"));
    alice.send(&format!("/close {sid}"));
    assert_eq!(alice.expect("closed "), format!("closed {sid}"));
    assert_eq!(bob.expect("closed "), format!("closed {sid}"));

    bob.send(&format!("/msg {sid} too late"));
    let err = bob.expect("error ");
    assert!(err.starts_with(&format!("error msg {sid} ")), "{err}");

    for c in [alice, bob, carol] {
        let (status, transcript) = c.finish();
        assert!(status.success(), "{transcript:?}");
        assert!(!transcript.iter().any(|l| l.starts_with("msg ") && l.contains("too late")));
    }
    // Server blindness: no plaintext in the log or the state directory.
    let log = server.log();
    for secret in ["hello bob", "hi alice", "too late", "pw-alice-secret"] {
        assert!(!log.contains(secret), "the server log holds {secret:?}");
    }
}
