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
    assert_eq!(
        alice.expect(&format!("status {sid} ")),
        format!("status {sid} live alice")
    );
    let lines: Vec<String> = (0..3)
        .map(|_| alice.expect(&format!("status {sid} ")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("status {sid} alice "))
                && l.contains(" accepted online "))
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with(&format!("status {sid} bob ")) && l.contains(" accepted online 1")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with(&format!("status {sid} carol ")) && l.contains(" declined ")));

    bob.send("/status");
    assert_eq!(bob.expect("status "), format!("status {sid} live alice"));
    carol.send(&format!("/status {sid}"));
    assert_eq!(
        carol.expect("error "),
        format!("error status {sid} not a participant")
    );

    bob.send(&format!("/close {sid}"));
    assert_eq!(
        bob.expect("error "),
        format!("error close {sid} only the creator can close")
    );
    alice.send(&format!("/close {sid}"));
    assert_eq!(alice.expect("closed "), format!("closed {sid}"));
    assert_eq!(bob.expect("closed "), format!("closed {sid}"));

    bob.send(&format!("/msg {sid} too late"));
    let err = bob.expect("error ");
    assert!(err.starts_with(&format!("error msg {sid} ")), "{err}");

    for c in [alice, bob, carol] {
        let (status, transcript) = c.finish();
        assert!(status.success(), "{transcript:?}");
        assert!(!transcript
            .iter()
            .any(|l| l.starts_with("msg ") && l.contains("too late")));
    }
    // Server blindness: no plaintext in the log or the state directory.
    let log = server.log();
    let mut state = Vec::new();
    for entry in std::fs::read_dir(&server.state).unwrap().flatten() {
        state.extend(std::fs::read(entry.path()).unwrap_or_default());
    }
    assert!(state.len() > 1000, "the state directory holds the journal");
    for secret in ["hello bob", "hi alice", "too late", "pw-alice-secret"] {
        assert!(!log.contains(secret), "the server log holds {secret:?}");
        assert!(
            !state.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the state holds {secret:?}"
        );
    }
}

#[test]
fn a_client_reconnects_after_the_server_restarts_and_carries_on() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let state = common::temp_dir("reconnect");
    let mut server = Server::start_in(&state, &["--listen", &listen, "--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    let sid = alice_invites_bob(&mut alice, &mut bob);
    alice.send(&format!("/msg {sid} before"));
    assert_eq!(alice.expect("sent "), format!("sent {sid} 1"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice before"));

    server.kill();
    alice.expect("error connection ");
    bob.expect("error connection ");
    let _server = Server::start_in(&state, &["--listen", &listen, "--invite-wait", "5"]);
    alice.expect("connected");
    bob.expect("connected");
    alice.send(&format!("/msg {sid} after"));
    assert_eq!(alice.expect("sent "), format!("sent {sid} 2"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice after"));
}

#[test]
fn an_invitee_offline_at_init_gets_the_invite_at_login_and_can_join() {
    let server = Server::start(&["--invite-wait", "30"]);
    let u = users(&server, &["alice", "bob", "carol"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut carol = Client::start(&server, &u[2]);
    for c in [&mut alice, &mut carol] {
        c.send("/status");
        c.expect("status none");
    }
    alice.send("/init bob carol");
    let sid = sid_of(&carol.expect("invite "));
    carol.send(&format!("/accept {sid}"));
    // bob was offline at creation: init_res does not wait for him.
    assert_eq!(alice.expect("init "), format!("init {sid} ok"));
    alice.send(&format!("/msg {sid} before bob"));
    alice.expect("sent ");
    assert_eq!(carol.expect("msg "), format!("msg {sid} alice before bob"));

    let mut bob = Client::start(&server, &u[1]);
    assert_eq!(bob.expect("invite "), format!("invite {sid} alice"));
    bob.send(&format!("/accept {sid}"));
    // A late acceptance joins the live session; messages from then on reach bob.
    bob.send(&format!("/status {sid}"));
    bob.expect(&format!("status {sid} bob "));
    alice.send(&format!("/status {sid}"));
    alice.expect_where("bob accepted", |l| {
        l.starts_with(&format!("status {sid} bob ")) && l.contains(" accepted ")
    });
    alice.send(&format!("/msg {sid} after bob"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice after bob"));
    assert_eq!(carol.expect("msg "), format!("msg {sid} alice after bob"));
    bob.send(&format!("/msg {sid} bob here"));
    assert_eq!(alice.expect("msg "), format!("msg {sid} bob bob here"));
    assert_eq!(carol.expect("msg "), format!("msg {sid} bob bob here"));
    let (_, bob_lines) = bob.finish();
    assert!(
        !bob_lines.iter().any(|l| l.contains("before bob")),
        "{bob_lines:?}"
    );
}

#[test]
fn a_killed_client_gets_its_unacknowledged_messages_once_after_restart() {
    let server = Server::start(&["--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    let sid = alice_invites_bob(&mut alice, &mut bob);
    alice.send(&format!("/msg {sid} one"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice one"));
    // Wait until bob's acknowledgement of 1 reached the server, then kill him.
    let bob_acked = |l: &str| l.starts_with(&format!("status {sid} bob ")) && l.ends_with(" 1");
    loop {
        alice.send(&format!("/status {sid}"));
        let line = alice.expect(&format!("status {sid} bob "));
        if bob_acked(&line) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bob.kill();
    for text in ["two", "three"] {
        alice.send(&format!("/msg {sid} {text}"));
        alice.expect("sent ");
    }
    let mut bob = Client::start(&server, &u[1]);
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice two"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice three"));
    alice.send(&format!("/msg {sid} four"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice four"));
    let (status, lines) = bob.finish();
    assert!(status.success());
    let shown: Vec<&String> = lines.iter().filter(|l| l.starts_with("msg ")).collect();
    assert_eq!(shown.len(), 3, "each message exactly once: {lines:?}");
    // A third start sees nothing again: everything was acknowledged.
    let mut bob = Client::start(&server, &u[1]);
    bob.send(&format!("/status {sid}"));
    bob.expect(&format!("status {sid} bob "));
    let (_, lines) = bob.finish();
    assert!(!lines.iter().any(|l| l.starts_with("msg ")), "{lines:?}");
}

#[test]
fn every_member_of_a_fifty_member_session_receives_every_message() {
    let server = Server::start(&["--invite-wait", "30"]);
    let (mut clients, names, sid) = common::group(&server, "u", 50);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let senders = [0usize, 17, 49];
    for &s in &senders {
        clients[s].send(&format!("/msg {sid} hello from {}", refs[s]));
        clients[s].expect("sent ");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        for &s in &senders {
            if s != i {
                c.expect(&format!("msg {sid} {} hello from {}", refs[s], refs[s]));
            }
        }
    }
}

#[test]
fn a_damaged_seen_file_stops_the_client_rather_than_dropping_replay_protection() {
    let server = Server::start(&[]);
    let u = users(&server, &["alice"]);
    std::fs::write(
        u[0].config_dir.join(mpchat::pins::SEEN_FILE),
        b"not a seen file",
    )
    .unwrap();
    let client = Client::start(&server, &u[0]);
    let (status, _) = client.finish();
    assert_eq!(status.code(), Some(1));
}

/// alice creates a session with bob, who accepts; returns its sid once it is live.
fn alice_invites_bob(alice: &mut Client, bob: &mut Client) -> String {
    bob.send("/status");
    bob.expect("status none");
    alice.send("/init bob");
    let sid = sid_of(&bob.expect("invite "));
    bob.send(&format!("/accept {sid}"));
    assert_eq!(alice.expect("init "), format!("init {sid} ok"));
    sid
}

/// Bytes from a fixed xorshift sequence: the same "random" input on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_line_over_the_limit_gives_one_error_and_no_part_of_it_runs() {
    let server = Server::start(&["--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    let sid = alice_invites_bob(&mut alice, &mut bob);

    // 65,568 bytes whose tail, cut at 64 KiB, would be a command of its own: alice
    // created the session, so `/close` would close it.
    let head = format!("/msg {sid} ");
    let tail = format!("/close {sid}");
    let mut long = head.clone().into_bytes();
    long.resize(65_568 - tail.len(), b'x');
    long.extend_from_slice(tail.as_bytes());
    assert_eq!(long.len(), 65_568);
    long.push(b'\n');
    alice.send_raw(&long);
    // A megabyte line: one error line too, which does not echo it.
    let mut huge = format!("/msg {sid} ").into_bytes();
    huge.resize(1 << 20, b'y');
    huge.push(b'\n');
    alice.send_raw(&huge);
    alice.send(&format!("/msg {sid} after"));

    assert_eq!(
        alice.expect("error "),
        "error input line longer than 65536 bytes; discarded"
    );
    assert_eq!(
        alice.expect("error "),
        "error input line longer than 65536 bytes; discarded"
    );
    assert_eq!(alice.expect("sent "), format!("sent {sid} 1"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice after"));
    alice.send(&format!("/status {sid}"));
    assert_eq!(
        alice.expect(&format!("status {sid} ")),
        format!("status {sid} live alice")
    );

    let (status, lines) = alice.finish();
    assert!(status.success(), "{lines:?}");
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("error ")).collect();
    assert_eq!(errors.len(), 2, "one error line per long line: {lines:?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("closed ") || l.len() > 200),
        "{lines:?}"
    );
    let (_, bob_lines) = bob.finish();
    assert!(
        !bob_lines.iter().any(|l| l.starts_with("closed ")),
        "{bob_lines:?}"
    );
}

#[test]
fn a_line_that_is_not_utf8_gets_an_error_and_the_client_goes_on() {
    let server = Server::start(&["--invite-wait", "5"]);
    let u = users(&server, &["alice", "bob"]);
    let mut alice = Client::start(&server, &u[0]);
    let mut bob = Client::start(&server, &u[1]);
    let sid = alice_invites_bob(&mut alice, &mut bob);

    // The bytes of the issue: `printf '/status\n/msg SID caf\xe9\n/msg SID after\n'`.
    let mut input = format!("/status\n/msg {sid} caf").into_bytes();
    input.push(0xe9);
    input.extend_from_slice(format!("\n/msg {sid} after\n").as_bytes());
    alice.send_raw(&input);
    assert_eq!(alice.expect("status "), format!("status {sid} live alice"));
    assert_eq!(
        alice.expect("error "),
        "error input line is not UTF-8; discarded"
    );
    assert_eq!(alice.expect("sent "), format!("sent {sid} 1"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice after"));

    // 100 KB of noise: each line of it is an error, and the client carries on.
    alice.send_raw(&noise(100_000));
    alice.send_raw(b"\n");
    alice.send(&format!("/msg {sid} still here"));
    assert_eq!(alice.expect("sent "), format!("sent {sid} 2"));
    assert_eq!(bob.expect("msg "), format!("msg {sid} alice still here"));

    let (status, lines) = alice.finish();
    assert!(status.success(), "{lines:?}");
    let noise_lines = &lines[lines
        .iter()
        .position(|l| l == &format!("sent {sid} 1"))
        .unwrap()
        + 1..lines.len() - 1];
    assert!(!noise_lines.is_empty());
    assert!(
        noise_lines
            .iter()
            .all(|l| l.starts_with("error ") && !l.chars().any(char::is_control)),
        "{noise_lines:?}"
    );
}

#[test]
fn a_second_client_of_the_same_user_replaces_the_first_which_says_why_and_stops() {
    let server = Server::start(&[]);
    let u = users(&server, &["alice"]);
    // Two installations of one user: the second gets a copy of the first's files
    // (two processes must not share a config directory).
    let mut elsewhere = u[0].clone();
    elsewhere.config_dir = common::temp_dir("elsewhere");
    for entry in std::fs::read_dir(&u[0].config_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, elsewhere.config_dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut first = Client::start(&server, &u[0]);
    first.send("/status");
    first.expect("status none");
    let mut second = Client::start(&server, &elsewhere);
    second.send("/status");
    second.expect("status none");
    // The first is told why and stops, instead of logging in again and taking the
    // connection back (which would make the two close each other in turn).
    assert_eq!(
        first.expect("error connection"),
        "error connection replaced by another login of alice; not reconnecting"
    );
    let (status, transcript) = first.finish();
    assert_eq!(status.code(), Some(1), "{transcript:?}");
    assert!(
        !transcript.iter().any(|l| l == "connected"),
        "the first client logged in again: {transcript:?}"
    );
    // The second keeps its connection: the first has exited, so no login can come.
    second.send("/status");
    second.expect("status none");
    let logins = server
        .log()
        .lines()
        .filter(|l| l.contains("alice logged in"))
        .count();
    assert_eq!(logins, 2, "log:\n{}", server.log());
    let (status, transcript) = second.finish();
    assert!(status.success(), "{transcript:?}");
}
