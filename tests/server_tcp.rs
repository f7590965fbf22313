//! The real `mpchatd` over real TCP on 127.0.0.1 port 0: login and status, every MTP
//! rejection closing only its own connection (with no reply) while another logged-in
//! client keeps working, the rekey across `0xFFFF` each way, the pre-authentication
//! limits (grace time, the cap on connections still logging in, the cap on
//! connections in all), garbage before login, a dribbled login, failed and replayed
//! logins and what the log says about them, the heartbeat, and a second login of the
//! same user. Where many connections come and go, the server's thread and descriptor
//! counts are checked to return to where they were.
//!
//! Each test runs its own server and ends by logging in afresh, so every test also
//! checks that the server survived what it did. Timers that are not under test are
//! left long (`--login-grace 60`, the 60 s heartbeat), so a close seen within
//! [`PROMPT`] can only come from the rule under test.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{assert_back_to, key_for, session, text, wait_for_log, Raw, Server, WAIT};
use mpchat::crypto::{AeadKey, Direction, Nonce, RsaPrivate, RsaPublic};
use mpchat::encoding::id_hex;
use mpchat::login::{ClientLogin, Established, ExpectLoginRes};
use mpchat::mtp::{self, Header, MsgType, Sender, HEADER_LEN, LAST_SQN, MIN_FRAME_LEN, VERSION};
use mpchat::proto::{
    Answer, CloseReq, InitReq, InviteRes, MsgReq, Online, Presence, StatusReq, StatusRes,
};

/// A generous upper bound for something that must happen at once (a rejection, a
/// refusal over a cap) or after a one-second timer.
const PROMPT: Duration = Duration::from_secs(5);
/// The password of every account these tests log in with.
const PW: &str = "correct-horse-7f3a9c";
/// Keeps the login grace out of the way of tests that are not about it.
const LONG_GRACE: &[&str] = &["--login-grace", "60"];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Reads until the server closes the connection. `Some(bytes)` with everything that
/// arrived before the close if it closed within `within`; `None` if still open.
fn reply_before_close(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            // A reset: the server closed with our bytes still unread.
            Err(_) => return Some(got),
        }
    }
}

#[track_caller]
fn assert_closed_without_reply(stream: &mut TcpStream, within: Duration, what: &str) {
    match reply_before_close(stream, within) {
        Some(bytes) if bytes.is_empty() => {}
        Some(bytes) => panic!(
            "{what}: the server sent {} bytes before closing: {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(48)]
        ),
        None => panic!("{what}: the connection is still open after {within:?}"),
    }
}

/// Checks that nothing arrives and the connection stays open for `for_at_least`.
#[track_caller]
fn assert_open_and_silent(stream: &mut TcpStream, for_at_least: Duration, what: &str) {
    stream.set_read_timeout(Some(for_at_least)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Ok(0) => panic!("{what}: closed by the server"),
        Ok(n) => panic!("{what}: unexpected bytes {:02x?}", &buf[..n]),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Writes to a connection the server may already have closed: a failed write is
/// fine, because the close check that follows sees the close anyway.
fn send_bytes(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes);
}

/// Receives and opens one frame, failing with `who` in the message.
#[track_caller]
fn recv(raw: &mut Raw, who: &str) -> (Header, Vec<u8>) {
    raw.stream.set_read_timeout(Some(WAIT)).unwrap();
    let frame = mtp::read_frame(&mut raw.stream)
        .unwrap_or_else(|e| panic!("{who}: no frame from the server: {e}"));
    raw.receiver
        .open(&frame)
        .unwrap_or_else(|e| panic!("{who}: the server's frame does not open: {e}"))
}

/// status_req sid 0 is answered by status_res `OK\n` (a user with no sessions).
#[track_caller]
fn assert_status_answered(raw: &mut Raw, who: &str) {
    raw.send(MsgType::StatusReq, 0, b"");
    let (h, payload) = recv(raw, who);
    assert_eq!(
        (h.typ, h.sid, h.uid),
        (MsgType::StatusRes, 0, 0),
        "{who}: reply header {h:?}"
    );
    assert_eq!(
        payload,
        b"OK\n",
        "{who}: reply {:?}",
        String::from_utf8_lossy(&payload)
    );
}

/// A fresh connection logs in and gets its status: the server survived the test.
#[track_caller]
fn assert_fresh_login_works(server: &mut Server, user: &str) {
    assert!(
        server.is_running(),
        "mpchatd exited; log:\n{}",
        server.log()
    );
    let mut raw = Raw::login(server, user, PW);
    assert_status_answered(&mut raw, "a fresh login at the end");
}

/// Completes a login whose request was already written to `stream`: `Err` with what
/// arrived if the server closed instead of answering.
fn finish_login(mut stream: TcpStream, expect: ExpectLoginRes) -> Result<Raw, Vec<u8>> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let reply = match mtp::read_frame(&mut stream) {
        Ok(f) => f,
        Err(_) => return Err(reply_before_close(&mut stream, PROMPT).unwrap_or_default()),
    };
    let Established {
        uid,
        sender,
        receiver,
    } = expect.finish(&reply).expect("a valid login_res");
    Ok(Raw {
        name: String::new(),
        stream,
        sender,
        receiver,
        uid,
    })
}

/// One login attempt that may be refused.
fn try_login(server: &Server, user: &str, password: &str) -> Result<Raw, Vec<u8>> {
    let (frame, expect) =
        ClientLogin::start(&server.public_key(), user, password, now_ns()).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    send_bytes(&mut stream, &frame);
    finish_login(stream, expect)
}

/// Logs in, retrying while the server still counts a connection the test just
/// closed: it frees the slot only after it has seen the close, and sends no signal
/// the test could wait for instead.
fn login_once_a_slot_frees(server: &Server, user: &str) -> Raw {
    let deadline = Instant::now() + WAIT;
    loop {
        match try_login(server, user, PW) {
            Ok(raw) => return raw,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => panic!(
                "no login within {WAIT:?} after a slot was freed; log:\n{}",
                server.log()
            ),
        }
    }
}

/// Waits for a warning naming `peer` (as the server saw it: our local address).
#[track_caller]
fn wait_for_warning_about(server: &Server, peer: SocketAddr) -> String {
    let tag = format!("{peer}:");
    wait_for_log(server, &format!("warning about {peer}"), |l| {
        l.contains("WARN") && l.contains(&tag)
    })
}

/// A server with a bystander and a victim account; returns the logged-in bystander.
fn server_with_bystander(args: &[&str]) -> (Server, Raw) {
    let server = Server::start(args);
    server.add_user("bystander", PW);
    server.add_user("victim", PW);
    let mut bystander = Raw::login(&server, "bystander", PW);
    assert_status_answered(&mut bystander, "bystander at the start");
    (server, bystander)
}

/// Header fields for [`crafted`]; `None` means the right value (the true length, the
/// connection's next sqn, the logged-in user's uid).
#[derive(Clone, Copy)]
struct Craft {
    ver: u16,
    typ: u16,
    len: Option<u16>,
    sqn: Option<u16>,
    sid: u64,
    uid: Option<u64>,
}

/// A well-formed status_req, sid 0: the base that each case changes one field of.
const STATUS_REQ: Craft = Craft {
    ver: VERSION,
    typ: 0x0400,
    len: None,
    sqn: None,
    sid: 0,
    uid: None,
};

/// A frame from `raw`'s connection with every header field chosen by the caller,
/// sealed under the connection's real key, with a valid mac over that header, so only
/// the field under test is wrong. The connection's sender then skips the sqn used.
fn crafted(raw: &mut Raw, c: Craft, payload: &[u8]) -> Vec<u8> {
    let next = raw.sender.next_sqn();
    let sqn = c.sqn.unwrap_or(next);
    let len = c
        .len
        .unwrap_or(u16::try_from(MIN_FRAME_LEN + payload.len()).unwrap());
    let mut header = [0u8; HEADER_LEN];
    header[0..2].copy_from_slice(&c.ver.to_be_bytes());
    header[2..4].copy_from_slice(&c.typ.to_be_bytes());
    header[4..6].copy_from_slice(&len.to_be_bytes());
    header[6..8].copy_from_slice(&sqn.to_be_bytes());
    header[8..16].copy_from_slice(&c.sid.to_be_bytes());
    header[16..24].copy_from_slice(&c.uid.unwrap_or(raw.uid).to_be_bytes());
    let mut frame = header.to_vec();
    frame.extend_from_slice(payload);
    let mac = raw.sender.key().seal_in_place(
        Nonce {
            sqn,
            dir: Direction::ClientToServer,
        },
        &header,
        &mut frame[HEADER_LEN..],
    );
    frame.extend_from_slice(&mac);
    if sqn == next {
        raw.sender.seal(MsgType::StatusReq, 0, 0, b"").unwrap();
    }
    frame
}

/// Logs the victim in, sends it `make(victim)`, checks the victim is closed with no
/// reply and the bystander is still served.
#[track_caller]
fn rejected(
    server: &Server,
    bystander: &mut Raw,
    what: &str,
    make: impl FnOnce(&mut Raw) -> Vec<u8>,
) {
    let mut victim = Raw::login(server, "victim", PW);
    let frame = make(&mut victim);
    send_bytes(&mut victim.stream, &frame);
    assert_closed_without_reply(&mut victim.stream, PROMPT, what);
    assert_status_answered(bystander, &format!("bystander after {what}"));
}

#[test]
fn login_then_status_of_sid_0_answers_an_empty_listing() {
    let mut server = Server::start(&[]);
    let uid = server.add_user("alice", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    assert_eq!(alice.uid, uid, "login_res carries the account's uid");
    assert_status_answered(&mut alice, "alice");
    // And again on the same connection: the answer does not depend on being first.
    assert_status_answered(&mut alice, "alice, second time");
    let log = server.log();
    assert!(
        !log.contains(PW),
        "the server log holds the password:\n{log}"
    );
    assert_fresh_login_works(&mut server, "alice");
}

#[test]
fn crafted_frames_with_every_field_right_are_answered() {
    // The control for the rejection tests: the frame builder they use makes frames the
    // server accepts when nothing is wrong, so a close there is the rule under test.
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let mut victim = Raw::login(&server, "victim", PW);
    for round in 0..3 {
        let frame = crafted(&mut victim, STATUS_REQ, b"");
        victim.stream.write_all(&frame).unwrap();
        let (h, payload) = recv(&mut victim, &format!("crafted status_req {round}"));
        assert_eq!(
            (h.typ, h.sid, payload.as_slice()),
            (MsgType::StatusRes, 0, &b"OK\n"[..])
        );
    }
    // The sender skipped the crafted sqns, so ordinary frames still go through.
    assert_status_answered(&mut victim, "victim after crafted frames");
    assert_status_answered(&mut bystander, "bystander");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_flipped_bit_anywhere_in_a_frame_closes_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    // status_req with a 4-byte payload: 24 header + 4 epd + 12 mac = 40 bytes.
    let seal = |raw: &mut Raw| {
        let uid = raw.uid;
        raw.sender
            .seal(MsgType::StatusReq, 0, uid, b"ping")
            .unwrap()
    };
    let baseline = server.threads_and_fds();
    // Control: the same frame unflipped is answered.
    let mut victim = Raw::login(&server, "victim", PW);
    let frame = seal(&mut victim);
    assert_eq!(frame.len(), 40);
    victim.stream.write_all(&frame).unwrap();
    let (h, _) = recv(&mut victim, "unflipped frame");
    assert_eq!(h.typ, MsgType::StatusRes);
    drop(victim);

    // Every bit of every byte, one connection each (320 logins take about a second:
    // test accounts use a low PBKDF2 iteration count).
    for (i, bit) in (0..40).flat_map(|i| (0..8).map(move |bit| (i, bit))) {
        let what = format!("bit {bit} of byte {i} flipped");
        rejected(&server, &mut bystander, &what, |victim| {
            let mut frame = seal(victim);
            frame[i] ^= 1 << bit;
            // A flip in `len` that makes it longer would leave the server waiting for
            // the rest; send the rest (zeros), so the server judges a whole frame.
            let declared = usize::from(u16::from_be_bytes([frame[4], frame[5]]));
            if declared > frame.len() {
                frame.resize(declared, 0);
            }
            frame
        });
    }
    // No thread or socket of the 321 closed connections is left behind.
    assert_back_to(&server, baseline, "320 rejected frames");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_repeated_sqn_closes_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let mut victim = Raw::login(&server, "victim", PW);
    let uid = victim.uid;
    let frame = victim.sender.seal(MsgType::StatusReq, 0, uid, b"").unwrap();
    victim.stream.write_all(&frame).unwrap();
    let (h, _) = recv(&mut victim, "first copy");
    assert_eq!(h.typ, MsgType::StatusRes, "the first copy is answered");
    send_bytes(&mut victim.stream, &frame);
    assert_closed_without_reply(&mut victim.stream, PROMPT, "a repeated frame");
    assert_status_answered(&mut bystander, "bystander after a repeated sqn");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_lower_or_skipped_sqn_closes_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let mut victim = Raw::login(&server, "victim", PW);
    let uid = victim.uid;
    let earlier = victim.sender.seal(MsgType::StatusReq, 0, uid, b"").unwrap();
    let later = victim.sender.seal(MsgType::StatusReq, 0, uid, b"").unwrap();
    // Control: in order, both are answered.
    victim.stream.write_all(&earlier).unwrap();
    let (h, _) = recv(&mut victim, "frame in order");
    assert_eq!(h.typ, MsgType::StatusRes, "a frame in order is answered");
    victim.stream.write_all(&later).unwrap();
    let (h, _) = recv(&mut victim, "next frame in order");
    assert_eq!(h.typ, MsgType::StatusRes, "the next frame is answered");
    // Going back closes the connection.
    send_bytes(&mut victim.stream, &earlier);
    assert_closed_without_reply(&mut victim.stream, PROMPT, "a lower sqn");
    assert_status_answered(&mut bystander, "bystander after a lower sqn");
    // So does a gap: someone on the path deleted the frame in between (the header is
    // in the clear, so a proxy can drop a msg_req and let the rest through).
    let mut victim = Raw::login(&server, "victim", PW);
    let uid = victim.uid;
    let _deleted = victim.sender.seal(MsgType::MsgReq, 1, uid, b"x").unwrap();
    let after_gap = victim.sender.seal(MsgType::StatusReq, 0, uid, b"").unwrap();
    send_bytes(&mut victim.stream, &after_gap);
    assert_closed_without_reply(&mut victim.stream, PROMPT, "a frame after an sqn gap");
    assert_status_answered(&mut bystander, "bystander after an sqn gap");
    // The login exchange used sqn 1 each way: traffic must go above it.
    for sqn in [1u16, 0] {
        rejected(
            &server,
            &mut bystander,
            &format!("sqn {sqn} after login"),
            |victim| {
                crafted(
                    victim,
                    Craft {
                        sqn: Some(sqn),
                        ..STATUS_REQ
                    },
                    b"",
                )
            },
        );
    }
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_wrong_version_closes_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    for ver in [0x0101u16, 0x0200, 0x0000, 0x0001, 0xffff] {
        rejected(
            &server,
            &mut bystander,
            &format!("version {ver:#06x}"),
            |victim| crafted(victim, Craft { ver, ..STATUS_REQ }, b""),
        );
    }
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_len_shorter_than_the_frame_closes_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    // 24 + 8 + 12 = 44 bytes sent; the header says fewer (the mac covers that header).
    for len in [43u16, 40, 36] {
        rejected(
            &server,
            &mut bystander,
            &format!("len {len} on 44 bytes"),
            |victim| {
                let c = Craft {
                    len: Some(len),
                    ..STATUS_REQ
                };
                crafted(victim, c, b"8 bytes!")
            },
        );
    }
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_len_longer_than_the_frame_waits_for_the_rest_and_closes_at_end_of_input() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let mut victim = Raw::login(&server, "victim", PW);
    let long = Craft {
        len: Some(45),
        ..STATUS_REQ
    };
    let frame = crafted(&mut victim, long, b"8 bytes!");
    assert_eq!(frame.len(), 44);
    victim.stream.write_all(&frame).unwrap();
    // The server cannot know the frame is short: it waits for the missing byte, and
    // meanwhile serves everyone else.
    assert_open_and_silent(
        &mut victim.stream,
        Duration::from_millis(300),
        "a frame one byte short",
    );
    assert_status_answered(
        &mut bystander,
        "bystander while the victim's frame is incomplete",
    );
    victim.stream.shutdown(Shutdown::Write).unwrap();
    assert_closed_without_reply(&mut victim.stream, PROMPT, "end of input inside a frame");
    assert_status_answered(&mut bystander, "bystander after the victim's end of input");

    // Completing the declared length with a stray byte makes a frame whose mac fails.
    rejected(
        &server,
        &mut bystander,
        "len one past the frame, completed by a stray byte",
        |victim| {
            let mut frame = crafted(victim, long, b"8 bytes!");
            frame.push(0);
            frame
        },
    );
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_len_below_36_closes_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    for len in [35u16, 24, 0] {
        rejected(&server, &mut bystander, &format!("len {len}"), |victim| {
            crafted(
                victim,
                Craft {
                    len: Some(len),
                    ..STATUS_REQ
                },
                b"",
            )
        });
    }
    assert_fresh_login_works(&mut server, "victim");
}

/// Picks a header uid from (the victim's uid, the bystander's uid).
type PickUid = fn(u64, u64) -> u64;

#[test]
fn a_header_uid_other_than_the_users_closes_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let other = bystander.uid;
    let cases: [(&str, PickUid); 3] = [
        ("the bystander's uid", |_, other| other),
        ("uid 0", |_, _| 0),
        ("the user's uid plus one", |me, _| me.wrapping_add(1)),
    ];
    for (what, pick) in cases {
        rejected(
            &server,
            &mut bystander,
            &format!("header uid: {what}"),
            |victim| {
                let uid = pick(victim.uid, other);
                victim.sender.seal(MsgType::StatusReq, 0, uid, b"").unwrap()
            },
        );
    }
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn types_a_client_may_not_send_close_only_that_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let cases: [(&str, MsgType, u64, &[u8]); 8] = [
        ("init_res", MsgType::InitRes, 0, b"OK"),
        ("close_res", MsgType::CloseRes, 0x1234, b"OK"),
        ("invite_req", MsgType::InviteReq, 0x1234, b""),
        ("status_res Offline", MsgType::StatusRes, 0, b"Offline"),
        ("status_res empty", MsgType::StatusRes, 0, b""),
        (
            "status_res Online with a newline",
            MsgType::StatusRes,
            0,
            b"Online\n",
        ),
        ("status_res OK listing", MsgType::StatusRes, 0, b"OK\n"),
        (
            "status_res Online with sid 5",
            MsgType::StatusRes,
            5,
            b"Online",
        ),
    ];
    for (what, typ, sid, payload) in cases {
        rejected(&server, &mut bystander, what, |victim| {
            let uid = victim.uid;
            victim.sender.seal(typ, sid, uid, payload).unwrap()
        });
    }
    // A type code that names no message type, under a valid mac.
    rejected(&server, &mut bystander, "type 0x0500", |victim| {
        crafted(
            victim,
            Craft {
                typ: 0x0500,
                ..STATUS_REQ
            },
            b"",
        )
    });
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_silent_connection_is_closed_after_the_login_grace() {
    let mut server = Server::start(&["--login-grace", "1"]);
    server.add_user("alice", PW);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    assert_closed_without_reply(&mut silent, PROMPT, "a connection that sends nothing");
    wait_for_log(&server, "about the grace time", |l| {
        l.contains("no login within the grace time")
    });
    assert_fresh_login_works(&mut server, "alice");
}

#[test]
fn a_login_that_stalls_midway_is_closed_after_the_login_grace() {
    // A slow sender cannot extend the grace by trickling bytes: the deadline counts
    // from the connection's start, not from the last byte.
    let mut server = Server::start(&["--login-grace", "1"]);
    server.add_user("alice", PW);
    let (frame, _expect) = ClientLogin::start(&server.public_key(), "alice", PW, now_ns()).unwrap();
    for cut in [10, HEADER_LEN, frame.len() - 1] {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(&frame[..cut]).unwrap();
        assert_closed_without_reply(
            &mut stream,
            PROMPT,
            &format!("a login stalled after {cut} bytes"),
        );
    }
    assert_fresh_login_works(&mut server, "alice");
}

#[test]
fn garbage_before_login_is_closed_without_a_reply() {
    let (mut server, mut bystander) = server_with_bystander(LONG_GRACE);
    // Fixed pseudo-random bytes (a 64-bit LCG), so the test never flakes on a lucky
    // draw that happens to look like a header.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..512)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    assert_ne!(
        random[..2],
        [0x01, 0x00],
        "the random bytes must not start with the version"
    );
    let http =
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
            .to_vec();
    // A TLS 1.2 record header and the start of a ClientHello.
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tls.extend_from_slice(&random[..32]);
    tls.extend_from_slice(&[0x20]);
    tls.extend_from_slice(&random[32..64]);
    tls.extend_from_slice(&[0x00, 0x3e, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01]);
    // A well-formed login header in front of random bytes: the etk does not decrypt.
    let mut login_shaped = vec![0x01, 0x00, 0x00, 0x00, 0x01, 0x60, 0x00, 0x01];
    login_shaped.extend_from_slice(&[0; 16]);
    login_shaped.extend_from_slice(&random[..0x160 - HEADER_LEN]);
    // A valid header of a type that is not a login request, as the first frame.
    let mut status_first = vec![0x01, 0x00, 0x04, 0x00, 0x01, 0x60, 0x00, 0x01];
    status_first.extend_from_slice(&[0; 16]);
    status_first.extend_from_slice(&random[..0x160 - HEADER_LEN]);
    // An unknown type code in an otherwise well-formed header.
    let mut unknown_type = vec![0x01, 0x00, 0x07, 0x00, 0x00, 0x30, 0x00, 0x01];
    unknown_type.extend_from_slice(&random[..40]);
    let cases: [(&str, Vec<u8>); 7] = [
        ("random bytes", random.clone()),
        ("an HTTP request", http),
        ("a TLS ClientHello", tls),
        ("a login header over random bytes", login_shaped),
        ("a status_req as the first frame", status_first),
        ("an unknown type", unknown_type),
        ("two bytes, then end of input", b"\0\n".to_vec()),
    ];
    let baseline = server.threads_and_fds();
    for (what, bytes) in cases {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let me = stream.local_addr().unwrap();
        send_bytes(&mut stream, &bytes);
        if bytes.len() < HEADER_LEN {
            // Too short for a header: the server waits for the rest until we end.
            assert_open_and_silent(&mut stream, Duration::from_millis(300), what);
            stream.shutdown(Shutdown::Write).unwrap();
        }
        assert_closed_without_reply(&mut stream, PROMPT, what);
        if bytes.len() >= HEADER_LEN {
            wait_for_warning_about(&server, me);
        }
        assert_status_answered(&mut bystander, &format!("bystander after {what}"));
    }
    assert_back_to(&server, baseline, "garbage before login");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_login_dribbled_one_byte_at_a_time_is_accepted() {
    let mut server = Server::start(&[]);
    let uid = server.add_user("alice", PW);
    let (frame, expect) = ClientLogin::start(&server.public_key(), "alice", PW, now_ns()).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    // The pauses are the test's input pacing (one byte per TCP segment), not a wait
    // for the server.
    for b in &frame {
        stream.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut alice = finish_login(stream, expect).unwrap_or_else(|got| {
        panic!(
            "a dribbled login was refused ({} bytes of reply); log:\n{}",
            got.len(),
            server.log()
        )
    });
    assert_eq!(alice.uid, uid);
    // A traffic frame dribbled the same way is answered too.
    let uid = alice.uid;
    let frame = alice.sender.seal(MsgType::StatusReq, 0, uid, b"").unwrap();
    for b in &frame {
        alice.stream.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (h, payload) = recv(&mut alice, "dribbled status_req");
    assert_eq!(
        (h.typ, h.sid, payload.as_slice()),
        (MsgType::StatusRes, 0, &b"OK\n"[..])
    );
    assert_status_answered(&mut alice, "alice after dribbling");
    assert_fresh_login_works(&mut server, "alice");
}

/// Sends one login request that must fail; checks the close, the warning with our
/// address, and that no password reached the log.
#[track_caller]
fn assert_failed_login(server: &Server, key: &RsaPublic, user: &str, password: &str, what: &str) {
    let (frame, _expect) = ClientLogin::start(key, user, password, now_ns()).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let me = stream.local_addr().unwrap();
    stream.write_all(&frame).unwrap();
    // An unknown user costs a PBKDF2 at the default 600,000 iterations: allow for it.
    assert_closed_without_reply(&mut stream, WAIT, what);
    let line = wait_for_warning_about(server, me);
    assert!(
        !line.contains(password),
        "{what}: the warning holds the password: {line}"
    );
    let log = server.log();
    assert!(
        !log.contains(password),
        "{what}: the log holds the password {password:?}:\n{log}"
    );
    assert!(
        !log.contains(PW),
        "{what}: the log holds the real password:\n{log}"
    );
}

#[test]
fn a_wrong_password_is_closed_without_a_reply_and_logged_without_it() {
    let (mut server, mut bystander) = server_with_bystander(LONG_GRACE);
    let key = server.public_key();
    assert_failed_login(
        &server,
        &key,
        "victim",
        "Wrong-Passw0rd-b41d",
        "a wrong password",
    );
    // A password that differs from the right one only at its end.
    assert_failed_login(
        &server,
        &key,
        "victim",
        &format!("{PW}x"),
        "the password plus one character",
    );
    assert_status_answered(&mut bystander, "bystander after failed logins");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn an_unknown_user_is_closed_without_a_reply_and_logged_without_the_password() {
    let (mut server, mut bystander) = server_with_bystander(LONG_GRACE);
    let key = server.public_key();
    assert_failed_login(
        &server,
        &key,
        "nobody",
        "Unknown-Us3r-Pw-c0ffee",
        "an unknown user",
    );
    // The right password of an existing account, under a name that does not exist.
    assert_failed_login(
        &server,
        &key,
        "victim2",
        PW,
        "an unknown user with a real password",
    );
    assert_status_answered(&mut bystander, "bystander after failed logins");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_login_sealed_for_another_server_key_is_closed_without_a_reply() {
    let (mut server, mut bystander) = server_with_bystander(LONG_GRACE);
    let other = RsaPrivate::generate(2048).unwrap().public();
    assert_failed_login(&server, &other, "victim", PW, "a login for another server");
    assert_status_answered(&mut bystander, "bystander after a login for another server");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_replayed_login_request_is_closed_without_a_reply() {
    let (mut server, mut bystander) = server_with_bystander(LONG_GRACE);
    let (frame, expect) = ClientLogin::start(&server.public_key(), "victim", PW, now_ns()).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(&frame).unwrap();
    let mut original = finish_login(stream, expect).expect("the original login");
    let mut copy = TcpStream::connect(server.addr).unwrap();
    let me = copy.local_addr().unwrap();
    copy.write_all(&frame).unwrap();
    assert_closed_without_reply(&mut copy, PROMPT, "a replayed login request");
    wait_for_warning_about(&server, me);
    // The replay neither logged in nor displaced the original.
    assert_status_answered(&mut original, "the original connection");
    assert_status_answered(&mut bystander, "bystander after a replay");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn a_login_request_captured_before_a_restart_is_refused_after_it() {
    // The replay cache lives in memory: a request the old process saw is unknown to
    // the new one, which refuses it for its timestamp, older than its own start.
    let state = common::temp_dir("restart-replay");
    let mut server = Server::start_in(&state, LONG_GRACE);
    server.add_user("victim", PW);
    let (frame, expect) = ClientLogin::start(&server.public_key(), "victim", PW, now_ns()).unwrap();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(&frame).unwrap();
    let mut original = finish_login(stream, expect).expect("the original login");
    assert_status_answered(&mut original, "the original connection");
    server.kill();
    drop(original);
    let mut server = Server::start_in(&state, LONG_GRACE);
    // The real user is back first; the captured request comes after.
    let mut victim = Raw::login(&server, "victim", PW);
    assert_status_answered(&mut victim, "the real user after the restart");
    let mut copy = TcpStream::connect(server.addr).unwrap();
    let me = copy.local_addr().unwrap();
    copy.write_all(&frame).unwrap();
    assert_closed_without_reply(
        &mut copy,
        PROMPT,
        "a login request replayed after a restart",
    );
    let line = wait_for_warning_about(&server, me);
    assert!(line.contains("before the server started"), "{line}");
    // The replay neither logged in nor displaced the real user.
    assert_status_answered(&mut victim, "the real user after the replay");
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn prelogin_cap_refuses_extra_connections_until_a_slot_frees() {
    let mut server = Server::start(&["--max-pending-logins", "2", "--login-grace", "60"]);
    server.add_user("alice", PW);
    // The accept loop takes connections in the order they completed, so the first two
    // hold the slots when the third arrives.
    let idle1 = TcpStream::connect(server.addr).unwrap();
    let mut idle2 = TcpStream::connect(server.addr).unwrap();
    let mut third = TcpStream::connect(server.addr).unwrap();
    assert_closed_without_reply(&mut third, PROMPT, "a third connection over the cap of 2");
    wait_for_log(&server, "about the pre-login cap", |l| {
        l.contains("WARN") && l.contains("refused, 2 connections still logging in")
    });
    // A login is refused too while both slots are held.
    match try_login(&server, "alice", PW) {
        Err(reply) => assert!(
            reply.is_empty(),
            "a refused login got a reply: {reply:02x?}"
        ),
        Ok(_) => panic!("a login got through while 2 idle connections held the cap of 2"),
    }
    assert_open_and_silent(
        &mut idle2,
        Duration::from_millis(200),
        "an idle connection under the cap",
    );
    drop(idle1);
    let mut alice = login_once_a_slot_frees(&server, "alice");
    assert_status_answered(&mut alice, "alice after a slot freed");
    // Logged in, alice no longer counts against the cap: one more slot is free.
    let mut again = login_once_a_slot_frees(&server, "alice");
    assert_status_answered(&mut again, "a second login after alice's");
    drop(idle2);
    assert_fresh_login_works(&mut server, "alice");
}

#[test]
fn a_real_user_logs_in_while_idle_connections_hold_prelogin_slots() {
    let mut server = Server::start(&["--max-pending-logins", "3", "--login-grace", "60"]);
    server.add_user("alice", PW);
    let mut idle1 = TcpStream::connect(server.addr).unwrap();
    let mut idle2 = TcpStream::connect(server.addr).unwrap();
    let mut alice = try_login(&server, "alice", PW).unwrap_or_else(|_| {
        panic!(
            "a login with 2 of 3 slots held was refused; log:\n{}",
            server.log()
        )
    });
    assert_status_answered(&mut alice, "alice");
    assert_open_and_silent(&mut idle1, Duration::from_millis(100), "idle 1");
    assert_open_and_silent(&mut idle2, Duration::from_millis(100), "idle 2");
    assert_fresh_login_works(&mut server, "alice");
}

#[test]
fn connection_cap_refuses_connections_beyond_it() {
    let mut server = Server::start(&["--max-connections", "2", "--login-grace", "60"]);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let bob = Raw::login(&server, "bob", PW);
    let mut third = TcpStream::connect(server.addr).unwrap();
    assert_closed_without_reply(&mut third, PROMPT, "a third connection over the cap of 2");
    wait_for_log(&server, "about the connection cap", |l| {
        l.contains("WARN") && l.contains("refused, 2 connections open")
    });
    assert_status_answered(&mut alice, "alice at the cap");
    drop(bob);
    let mut bob = login_once_a_slot_frees(&server, "bob");
    assert_status_answered(&mut bob, "bob after a slot freed");
    drop(bob);
    assert!(server.is_running());
    let mut fresh = login_once_a_slot_frees(&server, "bob");
    assert_status_answered(&mut fresh, "a fresh login at the end");
}

#[test]
fn a_heartbeat_answered_keeps_the_connection_and_one_unanswered_closes_it() {
    let mut server = Server::start(&["--heartbeat", "1", "--heartbeat-timeout", "1"]);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    // Two rounds: each heartbeat is answered, and the next comes on the same
    // connection a full interval later, so answering kept it open.
    for round in 1..=2 {
        let (h, payload) = recv(&mut alice, &format!("heartbeat {round}"));
        assert_eq!(
            (h.typ, h.sid, h.uid),
            (MsgType::StatusReq, 0, 0),
            "heartbeat {round}: {h:?}"
        );
        assert!(payload.is_empty(), "heartbeat {round} payload {payload:?}");
        alice.send(Online::TYPE, 0, &Online.encode());
    }
    // Any traffic counts, not only answers: a request after a heartbeat is served.
    let (h, _) = recv(&mut alice, "heartbeat 3");
    assert_eq!(h.typ, MsgType::StatusReq);
    assert_status_answered(&mut alice, "alice answering a heartbeat with a request");
    // Now stay silent: the next heartbeat goes unanswered and the connection closes
    // with nothing further sent.
    let (h, _) = recv(&mut alice, "the heartbeat left unanswered");
    assert_eq!(h.typ, MsgType::StatusReq);
    assert_closed_without_reply(&mut alice.stream, PROMPT, "an unanswered heartbeat");
    wait_for_log(&server, "about the unanswered heartbeat", |l| {
        l.contains("alice did not answer the heartbeat")
    });
    // Meanwhile bob, who answers, is served.
    let mut bob = Raw::login(&server, "bob", PW);
    let (h, _) = recv(&mut bob, "bob's heartbeat");
    assert_eq!(h.typ, MsgType::StatusReq);
    bob.send(Online::TYPE, 0, &Online.encode());
    assert_status_answered(&mut bob, "bob");
    assert_fresh_login_works(&mut server, "alice");
}

#[test]
fn a_second_login_of_the_same_user_closes_the_first_connection() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let baseline = server.threads_and_fds();
    let mut first = Raw::login(&server, "victim", PW);
    assert_status_answered(&mut first, "first connection");
    let one_connection = server.threads_and_fds();
    assert!(
        one_connection.0 > baseline.0 && one_connection.1 > baseline.1,
        "a logged-in connection shows in the counts: {one_connection:?} vs {baseline:?}"
    );
    let mut second = Raw::login(&server, "victim", PW);
    // The first connection is told why before it is closed: a close_req with sid 0,
    // uid 0 and an empty payload, which names no session.
    let (h, p) = recv(&mut first, "the replaced connection's notice");
    assert_eq!(
        (h.typ, h.sid, h.uid, p.as_slice()),
        (MsgType::CloseReq, 0, 0, &b""[..]),
        "the notice to a replaced connection"
    );
    assert_closed_without_reply(&mut first.stream, PROMPT, "the replaced first connection");
    assert_status_answered(&mut second, "second connection");
    assert_status_answered(&mut bystander, "bystander");
    // The replaced connection left no thread or socket behind.
    assert_back_to(&server, one_connection, "the first connection was replaced");
    drop(second);
    assert_back_to(&server, baseline, "the second connection closed");
    assert_fresh_login_works(&mut server, "victim");
}

/// Takes the client's sqn to 0xFFFF with heartbeat answers, which the server takes
/// without a reply: a receiver accepts only the next sqn, so no number can be skipped.
fn advance_to_last_sqn(raw: &mut Raw) {
    let uid = raw.uid;
    let mut frames = Vec::new();
    while raw.sender.next_sqn() != LAST_SQN {
        let f = raw
            .sender
            .seal(MsgType::StatusRes, 0, uid, b"Online")
            .unwrap();
        frames.extend_from_slice(&f);
    }
    raw.stream.write_all(&frames).unwrap();
}

#[test]
fn the_client_to_server_key_is_replaced_after_sqn_0xffff() {
    let (mut server, mut bystander) = server_with_bystander(&[]);
    let mut victim = Raw::login(&server, "victim", PW);
    advance_to_last_sqn(&mut victim);
    assert_status_answered(&mut victim, "sqn 0xffff");
    assert_eq!(victim.sender.next_sqn(), 1, "the client rekeyed");
    for n in 1..=3 {
        assert_status_answered(&mut victim, &format!("sqn {n} under the new key"));
    }

    // Frames under the old key are refused once it is replaced.
    rejected(
        &server,
        &mut bystander,
        "sqn 1 under the replaced key",
        |victim| {
            let old = *victim.sender.key().raw();
            advance_to_last_sqn(victim);
            assert_status_answered(victim, "sqn 0xffff");
            let mut stale = Sender::new(AeadKey::new(old), Direction::ClientToServer, 1);
            let uid = victim.uid;
            stale.seal(MsgType::StatusReq, 0, uid, b"").unwrap()
        },
    );
    assert_fresh_login_works(&mut server, "victim");
}

#[test]
fn the_server_to_client_key_is_replaced_after_sqn_0xffff() {
    // 65,536 replies take the server's sqn from 2 past 0xFFFF to 2 under a new key.
    // The requests are pipelined; the queue is made long enough that the server never
    // takes the burst for a stalled reader.
    const REPLIES: usize = 65_536;
    let mut server = Server::start(&["--queue-len", "70000"]);
    server.add_user("alice", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let uid = alice.uid;
    let mut requests = Vec::with_capacity(REPLIES * MIN_FRAME_LEN);
    for _ in 0..REPLIES {
        requests.extend_from_slice(&alice.sender.seal(MsgType::StatusReq, 0, uid, b"").unwrap());
    }
    let mut out = alice.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || out.write_all(&requests));
    for i in 0..REPLIES {
        let (h, payload) = recv(&mut alice, &format!("reply {i}"));
        assert_eq!(
            (h.typ, payload.as_slice()),
            (MsgType::StatusRes, &b"OK\n"[..]),
            "reply {i}"
        );
        let expected = (i + 2 - 1) % usize::from(LAST_SQN) + 1;
        assert_eq!(usize::from(h.sqn), expected, "reply {i}");
    }
    writer.join().unwrap().unwrap();
    assert_eq!(
        alice.receiver.last_sqn(),
        2,
        "two replies under the new key"
    );
    assert_status_answered(&mut alice, "alice after the rekey");
    assert_fresh_login_works(&mut server, "alice");
}

/// Sends a request of `typ` on `sid` and returns the header and payload of the first
/// frame of `reply` type, skipping pushed status_res frames (`OK\n...`), which look
/// exactly like replies.
fn ask(raw: &mut Raw, typ: MsgType, sid: u64, payload: &[u8], reply: MsgType) -> (Header, String) {
    raw.send(typ, sid, payload);
    loop {
        let (h, p) = raw.recv_type(reply);
        if reply == MsgType::StatusRes && p.starts_with(b"OK\n") && typ != MsgType::StatusReq {
            continue;
        }
        return (h, text(&p));
    }
}

#[test]
fn replies_echo_the_sid_of_their_request_errors_included() {
    let server = Server::start(&["--invite-wait", "5"]);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let mut bob = Raw::login(&server, "bob", PW);
    let unknown = 0x1234_5678_9abc_def0;
    let refusals = [
        (MsgType::MsgReq, &b"x"[..], MsgType::MsgRes),
        (MsgType::CloseReq, b"", MsgType::CloseRes),
        (MsgType::StatusReq, b"", MsgType::StatusRes),
    ];
    for (typ, payload, reply) in refusals {
        let (h, p) = ask(&mut alice, typ, unknown, payload, reply);
        assert_eq!(
            (h.sid, h.uid, p.as_str()),
            (unknown, 0, "error: not a participant"),
            "{typ:?} on an unknown sid"
        );
    }

    let sid = session(&mut alice, &mut [&mut bob]);
    let (h, p) = ask(&mut bob, CloseReq::TYPE, sid, b"", MsgType::CloseRes);
    assert_eq!(
        (h.sid, p.as_str()),
        (sid, "error: only the creator can close")
    );
    let (h, p) = ask(&mut alice, MsgReq::TYPE, sid, b"", MsgType::MsgRes);
    assert_eq!((h.sid, p.as_str()), (sid, "error: empty message"));
    let (h, p) = ask(&mut alice, MsgReq::TYPE, sid, b"hi", MsgType::MsgRes);
    assert_eq!((h.sid, p.as_str()), (sid, "OK 1"));
    let (h, p) = ask(&mut alice, CloseReq::TYPE, sid, b"", MsgType::CloseRes);
    assert_eq!((h.sid, p.as_str()), (sid, "OK"));
    // The go-live push may still be queued before this reply: skip status lines.
    alice.send(StatusReq::TYPE, sid, &StatusReq.encode());
    let (h, p) = loop {
        let (h, p) = alice.recv_type(MsgType::StatusRes);
        if !p.starts_with(b"OK\n") {
            break (h, text(&p));
        }
    };
    assert_eq!((h.sid, p.as_str()), (sid, "error: session closed"));
    let (h, p) = ask(&mut alice, MsgReq::TYPE, sid, b"x", MsgType::MsgRes);
    assert_eq!((h.sid, p.as_str()), (sid, "error: session closed"));

    // init_res is the exception the design makes: an error always carries sid 0.
    let init = InitReq {
        key: key_for("alice"),
        invitees: vec!["bob".into()],
    };
    let (h, p) = ask(
        &mut alice,
        InitReq::TYPE,
        0x77,
        &init.encode(),
        MsgType::InitRes,
    );
    assert_eq!(
        (h.sid, p.as_str()),
        (0, "error: sid must be 0 in an init request")
    );
}

/// The status of `sid` as `raw` sees it, from a status_res payload; and carol's line.
fn carol_in(sid: u64, payload: &[u8], carol: u64) -> (Presence, String) {
    let Ok(StatusRes::Session(st)) = StatusRes::decode(sid, payload) else {
        panic!("not a session status: {}", text(payload));
    };
    let c = st.participant(carol).expect("carol is listed");
    assert_eq!(c.answer, Answer::Declined);
    let line = text(payload)
        .lines()
        .find(|l| l.starts_with("carol "))
        .expect("carol's line")
        .to_string();
    (c.presence, line)
}

#[test]
fn a_decliner_shows_no_presence_whether_online_or_offline() {
    let server = Server::start(&["--invite-wait", "5"]);
    server.add_user("alice", PW);
    server.add_user("bob", PW);
    let carol_uid = server.add_user("carol", PW);
    let mut alice = Raw::login(&server, "alice", PW);
    let mut bob = Raw::login(&server, "bob", PW);
    let mut carol = Raw::login(&server, "carol", PW);
    let init = InitReq {
        key: key_for("alice"),
        invitees: vec!["bob".into(), "carol".into()],
    };
    alice.send(InitReq::TYPE, 0, &init.encode());
    let (h, _) = bob.recv_type(MsgType::InviteReq);
    let sid = h.sid;
    assert_eq!(carol.recv_type(MsgType::InviteReq).0.sid, sid);
    carol.send(InviteRes::TYPE, sid, &InviteRes::Deny.encode());
    let accept = InviteRes::Accept(key_for("bob"));
    bob.send(InviteRes::TYPE, sid, &accept.encode());
    let (h, p) = alice.recv_type(MsgType::InitRes);
    assert_eq!((h.sid, text(&p).as_str()), (sid, "OK"));
    let want = format!("carol {} declined - 0", id_hex(carol_uid));

    // Carol is online. The go-live push (to alice and bob) and alice's own status
    // reply both hide her presence.
    let (_, pushed) = bob.recv_type(MsgType::StatusRes);
    assert_eq!(
        carol_in(sid, &pushed, carol_uid),
        (Presence::Hidden, want.clone())
    );
    alice.send(StatusReq::TYPE, sid, &StatusReq.encode());
    for what in ["the push", "the reply"] {
        let (h, p) = alice.recv_type(MsgType::StatusRes);
        assert_eq!(h.sid, sid, "{what}");
        assert_eq!(
            carol_in(sid, &p, carol_uid),
            (Presence::Hidden, want.clone()),
            "{what}"
        );
    }

    // Carol goes offline: still `-`, while bob's presence is shown.
    drop(carol);
    wait_for_log(&server, "carol's disconnection", |l| {
        l.contains("carol disconnected")
    });
    alice.send(StatusReq::TYPE, sid, &StatusReq.encode());
    let (_, p) = alice.recv_type(MsgType::StatusRes);
    assert_eq!(carol_in(sid, &p, carol_uid), (Presence::Hidden, want));
    let Ok(StatusRes::Session(st)) = StatusRes::decode(sid, &p) else {
        unreachable!("checked by carol_in");
    };
    assert_eq!(
        st.participant(bob.uid).map(|b| b.presence),
        Some(Presence::Online)
    );

    // And a heartbeat answer built by proto is still what the server takes.
    alice.send(Online::TYPE, 0, &Online.encode());
    alice.send(StatusReq::TYPE, 0, &StatusReq.encode());
    let (h, p) = alice.recv_type(MsgType::StatusRes);
    assert_eq!(h.sid, 0);
    assert_eq!(
        text(&p),
        format!("OK\n{} live alice\n", id_hex(sid)),
        "the listing after an unasked Online"
    );
}
