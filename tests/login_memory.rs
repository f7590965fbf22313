//! The login handshake driven in memory: a real client against a real server state
//! machine, no sockets, no sleeping (every instant is an argument). Frames the real
//! code would never make are built by hand here, with the tk recovered from the etk by
//! the test's copy of the server key, so each rejection is caught by the rule under
//! test and not by an incidental mac failure.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use mpchat::crypto::{self, AeadKey, Direction, RsaPrivate, RsaPublic, X25519Secret};
use mpchat::encoding;
use mpchat::login::{
    CheckPassword, ClientLogin, Established, ExpectLoginReq, ExpectLoginRes, LoginError,
    ReplayCache, DEFAULT_LOGIN_WINDOW, MAX_PASSWORD_LEN,
};
use mpchat::mtp::{self, MsgType, MtpError, ETK_LEN, HEADER_LEN};

/// 2025-11-24, in Unix nanoseconds.
const NOW: u64 = 1_764_000_000_000_000_000;
const W: Duration = DEFAULT_LOGIN_WINDOW;
const W_NS: u64 = 30_000_000_000;
/// Low PBKDF2 cost: the tests show the values reach the check, not the cost.
const TEST_ITERATIONS: u32 = 1_000;

fn server_key() -> &'static RsaPrivate {
    static KEY: OnceLock<RsaPrivate> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivate::generate(2048).expect("RSA-2048 key generation"))
}

fn server_pub() -> &'static RsaPublic {
    static KEY: OnceLock<RsaPublic> = OnceLock::new();
    KEY.get_or_init(|| server_key().public())
}

/// A stand-in for the accounts module: PBKDF2 hashes, constant-time comparison and the
/// same work for an unknown user (against a dummy hash).
struct Accounts {
    users: Vec<(String, u64, [u8; 16], [u8; 32])>,
    pbkdf2_runs: Cell<u32>,
}

impl Accounts {
    fn new(users: &[(&str, u64, &str)]) -> Accounts {
        let users = users
            .iter()
            .map(|&(name, uid, password)| {
                let salt: [u8; 16] = crypto::random_array().unwrap();
                let hash = crypto::pbkdf2_sha256(password.as_bytes(), &salt, TEST_ITERATIONS);
                (name.to_string(), uid, salt, hash)
            })
            .collect();
        Accounts {
            users,
            pbkdf2_runs: Cell::new(0),
        }
    }

    /// The uid if `password` is right for `name`.
    fn check(&self, name: &str, password: &str) -> Option<u64> {
        let dummy = (String::new(), 0, [0u8; 16], [0u8; 32]);
        let (found, user) = match self.users.iter().find(|u| u.0 == name) {
            Some(u) => (true, u),
            None => (false, &dummy),
        };
        let hash = crypto::pbkdf2_sha256(password.as_bytes(), &user.2, TEST_ITERATIONS);
        self.pbkdf2_runs.set(self.pbkdf2_runs.get() + 1);
        (crypto::ct_eq(&hash, &user.3) && found).then_some(user.1)
    }
}

fn accounts() -> Accounts {
    Accounts::new(&[
        ("alice", 0x1111_2222_3333_4444, "correct horse"),
        ("bob", 0x0000_0000_0000_0042, "battery staple"),
    ])
}

/// The server's side of a whole login: open, freshness and replay, password, accept.
fn serve(
    frame: &[u8],
    now: u64,
    replay: &mut ReplayCache,
    accounts: &Accounts,
) -> Result<(Vec<u8>, Established), LoginError> {
    let check = ExpectLoginReq::open(server_key(), frame)?.check_fresh(now, W, replay)?;
    match accounts.check(check.username(), check.password()) {
        Some(uid) => check.accept(uid),
        // Dropping the CheckPassword is the rejection.
        None => Err(LoginError::InvalidInput("test: wrong password")),
    }
}

/// Recovers tk from a login request, as only the server can.
fn tk_of(frame: &[u8]) -> AeadKey {
    let tk = server_key()
        .oaep_decrypt(&frame[frame.len() - ETK_LEN..])
        .unwrap();
    AeadKey::new(tk.as_slice().try_into().unwrap())
}

/// The payload of a login request, as only the server can read it.
fn payload_of(frame: &[u8]) -> Vec<u8> {
    let header = mtp::frame_header(frame).unwrap();
    mtp::open_body(
        &tk_of(frame),
        Direction::ClientToServer,
        &header,
        &frame[HEADER_LEN..frame.len() - ETK_LEN],
    )
    .unwrap()
}

/// A login request built by hand: `payload` sealed with `seal_tk` under the given
/// header fields, then the etk of `etk_tk`.
fn hand_login_req(
    seal_tk: &[u8; 32],
    etk_tk: &[u8],
    typ: MsgType,
    sqn: u16,
    sid: u64,
    uid: u64,
    payload: &[u8],
) -> Vec<u8> {
    let key = AeadKey::new(*seal_tk);
    let mut frame = mtp::seal_frame(
        &key,
        Direction::ClientToServer,
        typ,
        sqn,
        sid,
        uid,
        payload,
        ETK_LEN,
    )
    .unwrap();
    frame.extend_from_slice(&server_pub().oaep_encrypt(etk_tk).unwrap());
    frame
}

fn login_payload(timestamp: u64, user: &str, password: &str, share: &[u8; 32]) -> String {
    format!(
        "{timestamp}\n{user}\n{password}\n{}\n{}",
        encoding::hex(&[7u8; 16]),
        encoding::hex(share)
    )
}

fn some_share() -> [u8; 32] {
    X25519Secret::generate().unwrap().1
}

/// A client that started a login, with the frame it sent.
fn client(user: &str, password: &str, now: u64) -> (Vec<u8>, ExpectLoginRes) {
    ClientLogin::start(server_pub(), user, password, now).unwrap()
}

fn login_pair() -> (Established, Established) {
    let (req, expect) = client("alice", "correct horse", NOW);
    let mut replay = ReplayCache::new(16);
    let (res, server) = serve(&req, NOW, &mut replay, &accounts()).unwrap();
    (expect.finish(&res).unwrap(), server)
}

#[test]
fn logs_in_and_exchanges_a_message_each_way() {
    let (mut client, mut server) = login_pair();
    assert_eq!(client.uid, 0x1111_2222_3333_4444);
    assert_eq!(server.uid, client.uid);
    // Numbering continues after the login exchange, which used sqn 1 each way.
    assert_eq!(client.sender.next_sqn(), 2);
    assert_eq!(server.sender.next_sqn(), 2);
    assert_eq!(client.receiver.last_sqn(), 1);
    assert_eq!(server.receiver.last_sqn(), 1);
    assert_ne!(client.sender.key().raw(), server.sender.key().raw());

    let up = client
        .sender
        .seal(MsgType::MsgReq, 9, client.uid, b"hello server")
        .unwrap();
    let (h, p) = server.receiver.open(&up).unwrap();
    assert_eq!(
        (h.typ, h.sqn, h.sid, h.uid),
        (MsgType::MsgReq, 2, 9, client.uid)
    );
    assert_eq!(p, b"hello server");

    let down = server.sender.seal(MsgType::MsgRes, 9, 0, b"OK 1").unwrap();
    let (h, p) = client.receiver.open(&down).unwrap();
    assert_eq!((h.typ, h.sqn), (MsgType::MsgRes, 2));
    assert_eq!(p, b"OK 1");

    // Each direction has its own key: a frame does not open in the other direction.
    let up2 = client
        .sender
        .seal(MsgType::MsgReq, 9, client.uid, b"x")
        .unwrap();
    assert_eq!(client.receiver.open(&up2), Err(MtpError::BadMac));
    assert_eq!(server.receiver.open(&up2).unwrap().1, b"x");
}

#[test]
fn login_frames_follow_the_designed_layout() {
    let (req, expect) = client("alice", "correct horse", NOW);
    let request_hash = *expect.request_hash();

    // login_req: len counts the etk; the header is typ 0000, sqn 1, sid 0, uid 0.
    assert_eq!(usize::from(u16::from_be_bytes([req[4], req[5]])), req.len());
    assert_eq!(&req[..4], &[1, 0, 0, 0]);
    assert_eq!(
        &req[6..24],
        &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let payload = payload_of(&req);
    assert_eq!(crypto::sha256(&payload), request_hash);
    let text = String::from_utf8(payload).unwrap();
    let f: Vec<&str> = text.split('\n').collect();
    assert_eq!(f.len(), 5, "no trailing newline: {text:?}");
    assert_eq!(
        (f[0], f[1], f[2]),
        ("1764000000000000000", "alice", "correct horse")
    );
    assert!(encoding::unhex::<16>(f[3]).is_some() && encoding::unhex::<32>(f[4]).is_some());

    // login_res: typ 0010, sqn 1, sid 0, uid 0, sealed with tk in the server direction.
    let tk = tk_of(&req);
    let mut replay = ReplayCache::new(16);
    let (res, _) = serve(&req, NOW, &mut replay, &accounts()).unwrap();
    let (h, p) = mtp::Receiver::new(tk, Direction::ServerToClient, 0)
        .open(&res)
        .unwrap();
    assert_eq!((h.typ, h.sqn, h.sid, h.uid), (MsgType::LOGIN_RES, 1, 0, 0));
    let text = String::from_utf8(p).unwrap();
    let f: Vec<&str> = text.split('\n').collect();
    assert_eq!(f.len(), 4, "no trailing newline: {text:?}");
    assert_eq!(f[0], encoding::hex(&request_hash));
    assert!(encoding::unhex::<16>(f[1]).is_some() && encoding::unhex::<32>(f[2]).is_some());
    assert_eq!(f[3], "1111222233334444");
    expect.finish(&res).unwrap();
}

#[test]
fn password_check_sees_the_clients_username_and_password() {
    let (req, _) = client("bob", "battery staple", NOW);
    let mut replay = ReplayCache::new(16);
    let check: CheckPassword = ExpectLoginReq::open(server_key(), &req)
        .unwrap()
        .check_fresh(NOW, W, &mut replay)
        .unwrap();
    assert_eq!(check.username(), "bob");
    assert_eq!(check.password(), "battery staple");
    assert_eq!(
        accounts().check(check.username(), check.password()),
        Some(0x42)
    );
    assert!(
        !format!("{check:?}").contains("battery"),
        "Debug must redact the password"
    );
}

#[test]
fn refuses_wrong_password_and_remembers_the_request_anyway() {
    let accounts = accounts();
    let mut replay = ReplayCache::new(16);
    let (req, _) = client("alice", "correct horsf", NOW);
    let check = ExpectLoginReq::open(server_key(), &req)
        .unwrap()
        .check_fresh(NOW, W, &mut replay)
        .unwrap();
    assert_eq!(accounts.check(check.username(), check.password()), None);
    drop(check);
    // The hash was recorded before the password check: the same frame again is refused.
    let again = ExpectLoginReq::open(server_key(), &req).unwrap();
    assert_eq!(
        again.check_fresh(NOW, W, &mut replay).unwrap_err(),
        LoginError::Replayed
    );
    // The right password in a new request logs in.
    let (req, expect) = client("alice", "correct horse", NOW);
    let (res, _) = serve(&req, NOW, &mut replay, &accounts).unwrap();
    assert_eq!(expect.finish(&res).unwrap().uid, 0x1111_2222_3333_4444);
}

#[test]
fn refuses_unknown_user_after_the_same_pbkdf2_work() {
    let accounts = accounts();
    let mut replay = ReplayCache::new(16);
    let (req, _) = client("mallory", "correct horse", NOW);
    assert_eq!(
        serve(&req, NOW, &mut replay, &accounts).unwrap_err(),
        LoginError::InvalidInput("test: wrong password")
    );
    assert_eq!(accounts.pbkdf2_runs.get(), 1);
    let (req, _) = client("alice", "wrong", NOW);
    assert!(serve(&req, NOW, &mut replay, &accounts).is_err());
    assert_eq!(accounts.pbkdf2_runs.get(), 2);
}

#[test]
fn refuses_a_username_breaking_the_rule_after_the_same_pbkdf2_work_as_an_unknown_one() {
    // DECISIONS 4: the server side does not refuse the name early and cheaply; the
    // password check sees it and finds no account, as for an unknown name.
    let accounts = accounts();
    let mut replay = ReplayCache::new(16);
    for (i, name) in ["ALICE", "", "a b", &"a".repeat(33)]
        .into_iter()
        .enumerate()
    {
        let payload = login_payload(NOW, name, "correct horse", &some_share());
        let frame = hand_login_req(
            &[9; 32],
            &[9; 32],
            MsgType::LOGIN_REQ,
            1,
            0,
            0,
            payload.as_bytes(),
        );
        assert_eq!(
            serve(&frame, NOW, &mut replay, &accounts).unwrap_err(),
            LoginError::InvalidInput("test: wrong password"),
            "{name:?}"
        );
        assert_eq!(accounts.pbkdf2_runs.get(), i as u32 + 1, "{name:?}");
        // And like any request that reached the password check, it cannot be replayed.
        assert_eq!(
            serve(&frame, NOW, &mut replay, &accounts).unwrap_err(),
            LoginError::Replayed
        );
    }
}

#[test]
fn accepts_timestamps_just_inside_the_window_and_refuses_just_outside() {
    let accounts = accounts();
    let mut replay = ReplayCache::new(16);
    let cases = [
        (NOW - W_NS - 1, Err(LoginError::Stale)),
        (NOW - W_NS, Ok(())),
        (NOW + W_NS, Ok(())),
        (NOW + W_NS + 1, Err(LoginError::Future)),
        (NOW - 3_600_000_000_000, Err(LoginError::Stale)),
        (NOW + 3_600_000_000_000, Err(LoginError::Future)),
        (0, Err(LoginError::Stale)),
    ];
    for (client_time, want) in cases {
        let (req, expect) = client("alice", "correct horse", client_time);
        match serve(&req, NOW, &mut replay, &accounts) {
            Ok((res, _)) => {
                assert_eq!(want, Ok(()), "client time {client_time}");
                expect.finish(&res).unwrap();
            }
            Err(e) => assert_eq!(Err(e), want, "client time {client_time}"),
        }
    }
    assert_eq!(replay.len(), 2, "only the two fresh requests were recorded");
}

#[test]
fn honours_a_configured_window() {
    let five = Duration::from_secs(5);
    let mut replay = ReplayCache::new(16);
    let (req, _) = client("alice", "correct horse", NOW - 6_000_000_000);
    let opened = ExpectLoginReq::open(server_key(), &req).unwrap();
    assert_eq!(
        opened.check_fresh(NOW, five, &mut replay).unwrap_err(),
        LoginError::Stale
    );
    let (req, _) = client("alice", "correct horse", NOW - 4_000_000_000);
    let opened = ExpectLoginReq::open(server_key(), &req).unwrap();
    assert!(opened.check_fresh(NOW, five, &mut replay).is_ok());
}

#[test]
fn refuses_a_replayed_login_request_even_later_inside_the_window() {
    let accounts = accounts();
    let mut replay = ReplayCache::new(16);
    let (req, expect) = client("alice", "correct horse", NOW);
    let (res, _) = serve(&req, NOW, &mut replay, &accounts).unwrap();
    expect.finish(&res).unwrap();
    for later in [NOW, NOW + 1, NOW + 10_000_000_000, NOW + W_NS] {
        assert_eq!(
            serve(&req, later, &mut replay, &accounts).unwrap_err(),
            LoginError::Replayed,
            "replayed at {later}"
        );
    }
    // Past the window the copy is stale (and its cache entry may go).
    assert_eq!(
        serve(&req, NOW + W_NS + 1, &mut replay, &accounts).unwrap_err(),
        LoginError::Stale
    );
    // A new request by the same user at the same instant is not a replay.
    let (req2, expect2) = client("alice", "correct horse", NOW);
    let (res2, _) = serve(&req2, NOW + 10_000_000_000, &mut replay, &accounts).unwrap();
    expect2.finish(&res2).unwrap();
}

#[test]
fn rejects_a_login_request_sealed_under_another_key_than_its_etk() {
    let payload = login_payload(NOW, "alice", "correct horse", &some_share());
    let good = hand_login_req(
        &[1; 32],
        &[1; 32],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
    );
    assert!(
        ExpectLoginReq::open(server_key(), &good).is_ok(),
        "the builder works"
    );
    let bad = hand_login_req(
        &[1; 32],
        &[2; 32],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
    );
    assert_eq!(
        ExpectLoginReq::open(server_key(), &bad).unwrap_err(),
        LoginError::BadFrame(MtpError::BadMac)
    );

    // Two real requests with their etks swapped.
    let (a, _) = client("alice", "correct horse", NOW);
    let (b, _) = client("alice", "correct horse", NOW);
    let mut spliced = a[..a.len() - ETK_LEN].to_vec();
    spliced.extend_from_slice(&b[b.len() - ETK_LEN..]);
    assert_eq!(
        ExpectLoginReq::open(server_key(), &spliced).unwrap_err(),
        LoginError::BadFrame(MtpError::BadMac)
    );
}

#[test]
fn reports_every_etk_that_does_not_decrypt_to_a_key_the_same_way() {
    let payload = login_payload(NOW, "alice", "correct horse", &some_share());
    let short_tk = hand_login_req(
        &[1; 32],
        &[1; 16],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
    );
    let long_tk = hand_login_req(
        &[1; 32],
        &[1; 33],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
    );
    let empty_tk = hand_login_req(
        &[1; 32],
        &[],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
    );
    let (real, _) = client("alice", "correct horse", NOW);
    let n = real.len();
    let mut zeros = real.clone();
    zeros[n - ETK_LEN..].fill(0);
    let mut ones = real.clone();
    ones[n - ETK_LEN..].fill(0xff);
    let mut random = real.clone();
    crypto::fill_random(&mut random[n - ETK_LEN..]).unwrap();
    // An all-zero etk with an epd sealed under the all-zero key must not slip through.
    let zero_key = {
        let mut f = hand_login_req(
            &[0; 32],
            &[0; 32],
            MsgType::LOGIN_REQ,
            1,
            0,
            0,
            payload.as_bytes(),
        );
        let m = f.len();
        f[m - ETK_LEN..].fill(0);
        f
    };
    for frame in [short_tk, long_tk, empty_tk, zeros, ones, random, zero_key] {
        assert_eq!(
            ExpectLoginReq::open(server_key(), &frame).unwrap_err(),
            LoginError::Decrypt
        );
    }
}

#[test]
fn rejects_login_payloads_out_of_form_even_when_authentic() {
    let share = some_share();
    let good = login_payload(NOW, "alice", "correct horse", &share);
    let open = |payload: &[u8]| {
        let frame = hand_login_req(&[3; 32], &[3; 32], MsgType::LOGIN_REQ, 1, 0, 0, payload);
        ExpectLoginReq::open(server_key(), &frame)
    };
    assert_eq!(open(good.as_bytes()).unwrap().username(), "alice");
    let too_long = "p".repeat(MAX_PASSWORD_LEN + 1);
    let bad: Vec<Vec<u8>> = vec![
        format!("{good}\n").into_bytes(),
        good.replacen("1764", "01764", 1).into_bytes(),
        good.replacen("correct horse", "", 1).into_bytes(),
        good.replacen("correct horse", &too_long, 1).into_bytes(),
        good.replacen("0707", "0G07", 1).into_bytes(),
        good.replacen(
            &encoding::hex(&share),
            &encoding::hex(&share).to_uppercase(),
            1,
        )
        .into_bytes(),
        b"".to_vec(),
        b"1764000000000000000\nalice\n\xc3\x28\n07070707070707070707070707070707\n00".to_vec(),
    ];
    for payload in bad {
        assert!(
            matches!(open(&payload), Err(LoginError::Malformed(_))),
            "accepted {:?}",
            String::from_utf8_lossy(&payload)
        );
    }
}

#[test]
fn client_refuses_credentials_the_protocol_cannot_carry() {
    let too_long = "p".repeat(MAX_PASSWORD_LEN + 1);
    let cases: [(&str, &str); 6] = [
        ("Alice", "pw"),
        ("", "pw"),
        ("-alice", "pw"),
        ("alice", ""),
        ("alice", "two\nlines"),
        ("alice", &too_long),
    ];
    for (user, password) in cases {
        assert!(
            matches!(
                ClientLogin::start(server_pub(), user, password, NOW),
                Err(LoginError::InvalidInput(_))
            ),
            "accepted {user:?}"
        );
    }
    // The longest password travels intact.
    let longest = "p".repeat(MAX_PASSWORD_LEN);
    let (req, _) = client("alice", &longest, NOW);
    let mut replay = ReplayCache::new(4);
    let check = ExpectLoginReq::open(server_key(), &req)
        .unwrap()
        .check_fresh(NOW, W, &mut replay)
        .unwrap();
    assert_eq!(check.password(), longest);
}

#[test]
fn server_refuses_to_accept_uid_zero() {
    let (req, _) = client("alice", "correct horse", NOW);
    let mut replay = ReplayCache::new(4);
    let check = ExpectLoginReq::open(server_key(), &req)
        .unwrap()
        .check_fresh(NOW, W, &mut replay)
        .unwrap();
    assert!(matches!(check.accept(0), Err(LoginError::InvalidInput(_))));
}

#[test]
fn server_refuses_a_low_order_client_x25519_share() {
    let payload = login_payload(NOW, "alice", "correct horse", &[0; 32]);
    let frame = hand_login_req(
        &[4; 32],
        &[4; 32],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
    );
    let mut replay = ReplayCache::new(4);
    let check = ExpectLoginReq::open(server_key(), &frame)
        .unwrap()
        .check_fresh(NOW, W, &mut replay)
        .unwrap();
    assert_eq!(
        check.accept(7).unwrap_err(),
        LoginError::Crypto(crypto::CryptoError::KeyAgreement)
    );
}

/// A login_res built by hand for the request `req`, sealed with its tk.
fn hand_login_res(
    req: &[u8],
    typ: MsgType,
    sqn: u16,
    sid: u64,
    uid: u64,
    payload: &str,
) -> Vec<u8> {
    mtp::seal_frame(
        &tk_of(req),
        Direction::ServerToClient,
        typ,
        sqn,
        sid,
        uid,
        payload.as_bytes(),
        0,
    )
    .unwrap()
}

fn res_payload(request_hash: &[u8; 32], share: &[u8; 32], uid: u64) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        encoding::hex(request_hash),
        encoding::hex(&[9u8; 16]),
        encoding::hex(share),
        encoding::id_hex(uid)
    )
}

#[test]
fn client_accepts_a_hand_built_login_res_that_follows_the_rules() {
    let (req, expect) = client("alice", "correct horse", NOW);
    let payload = res_payload(expect.request_hash(), &some_share(), 5);
    let res = hand_login_res(&req, MsgType::LOGIN_RES, 1, 0, 0, &payload);
    assert_eq!(expect.finish(&res).unwrap().uid, 5);
}

#[test]
fn client_refuses_a_login_res_answering_another_request() {
    let (req, expect) = client("alice", "correct horse", NOW);
    let mut wrong = *expect.request_hash();
    wrong[31] ^= 1;
    let res = hand_login_res(
        &req,
        MsgType::LOGIN_RES,
        1,
        0,
        0,
        &res_payload(&wrong, &some_share(), 5),
    );
    assert_eq!(
        expect.finish(&res).unwrap_err(),
        LoginError::RequestHashMismatch
    );

    // The hash of another real request (a spliced handshake) is refused too.
    let (other_req, other) = client("alice", "correct horse", NOW);
    let (req, expect) = client("alice", "correct horse", NOW);
    let mut replay = ReplayCache::new(4);
    let (other_res, _) = serve(&other_req, NOW, &mut replay, &accounts()).unwrap();
    let other_payload = mtp::Receiver::new(tk_of(&other_req), Direction::ServerToClient, 0)
        .open(&other_res)
        .unwrap()
        .1;
    let res = hand_login_res(
        &req,
        MsgType::LOGIN_RES,
        1,
        0,
        0,
        std::str::from_utf8(&other_payload).unwrap(),
    );
    assert_eq!(
        expect.finish(&res).unwrap_err(),
        LoginError::RequestHashMismatch
    );
    drop(other);
}

#[test]
fn client_refuses_a_login_res_with_a_wrong_header_field() {
    let cases = [
        (MsgType::InitReq, 1, 0, 0),
        (MsgType::MsgRes, 1, 0, 0),
        (MsgType::StatusRes, 1, 0, 0),
        (MsgType::CloseReq, 1, 0, 0),
        (MsgType::LOGIN_RES, 2, 0, 0),
        (MsgType::LOGIN_RES, 0, 0, 0),
        (MsgType::LOGIN_RES, 0xFFFF, 0, 0),
        (MsgType::LOGIN_RES, 1, 1, 0),
        (MsgType::LOGIN_RES, 1, 0, 5),
    ];
    for (typ, sqn, sid, uid) in cases {
        let (req, expect) = client("alice", "correct horse", NOW);
        let payload = res_payload(expect.request_hash(), &some_share(), 5);
        // Sealed properly over the wrong header: only the header rule can catch it.
        let res = hand_login_res(&req, typ, sqn, sid, uid, &payload);
        assert!(
            matches!(
                expect.finish(&res),
                Err(LoginError::BadFrame(MtpError::Unexpected(_)))
            ),
            "accepted {typ:?} sqn {sqn} sid {sid} uid {uid}"
        );
    }
}

#[test]
fn client_refuses_a_login_res_with_a_bad_payload_or_mac() {
    type Mangle = fn(&str) -> String;
    let mangles: [Mangle; 6] = [
        |p| format!("{p}\n"),
        |p| p.replace(&p[p.len() - 16..], "0000000000000000"),
        |p| p.to_uppercase(),
        |p| p[..p.len() - 17].to_string(),
        |p| p.replacen('\n', " ", 1),
        |p| format!("{}\n{}", p, "0000000000000001"),
    ];
    for mangle in mangles {
        let (req, expect) = client("alice", "correct horse", NOW);
        let payload = mangle(&res_payload(expect.request_hash(), &some_share(), 5));
        let res = hand_login_res(&req, MsgType::LOGIN_RES, 1, 0, 0, &payload);
        assert!(
            matches!(expect.finish(&res), Err(LoginError::Malformed(_))),
            "accepted {payload:?}"
        );
    }

    // Sealed in the client's direction, or with another key: the mac fails.
    let (req, expect) = client("alice", "correct horse", NOW);
    let payload = res_payload(expect.request_hash(), &some_share(), 5);
    let res = mtp::seal_frame(
        &tk_of(&req),
        Direction::ClientToServer,
        MsgType::LOGIN_RES,
        1,
        0,
        0,
        payload.as_bytes(),
        0,
    )
    .unwrap();
    assert_eq!(
        expect.finish(&res).unwrap_err(),
        LoginError::BadFrame(MtpError::BadMac)
    );
    let (_, expect) = client("alice", "correct horse", NOW);
    let payload = res_payload(expect.request_hash(), &some_share(), 5);
    let res = hand_login_res(&req, MsgType::LOGIN_RES, 1, 0, 0, &payload);
    assert_eq!(
        expect.finish(&res).unwrap_err(),
        LoginError::BadFrame(MtpError::BadMac)
    );

    // A low-order server share.
    let (req, expect) = client("alice", "correct horse", NOW);
    let payload = res_payload(expect.request_hash(), &[0; 32], 5);
    let res = hand_login_res(&req, MsgType::LOGIN_RES, 1, 0, 0, &payload);
    assert_eq!(
        expect.finish(&res).unwrap_err(),
        LoginError::Crypto(crypto::CryptoError::KeyAgreement)
    );
}

#[test]
fn replay_cache_expires_old_entries_and_refuses_when_full() {
    let mut cache = ReplayCache::new(3);
    for i in 0..3u8 {
        cache.insert([i; 32], NOW, W).unwrap();
    }
    // Full of unexpired entries: a new hash is refused, nothing is evicted.
    assert_eq!(
        cache.insert([9; 32], NOW + 2 * W_NS, W),
        Err(LoginError::ReplayCacheFull)
    );
    assert_eq!(
        cache.insert([0; 32], NOW + 2 * W_NS, W),
        Err(LoginError::Replayed)
    );
    assert_eq!(cache.len(), 3);
    // Just past twice the window the old entries go and the new one fits.
    cache.insert([9; 32], NOW + 2 * W_NS + 1, W).unwrap();
    assert_eq!(cache.len(), 1);
    assert!(cache.contains(&[9; 32]) && !cache.contains(&[0; 32]));
    cache.insert([0; 32], NOW + 2 * W_NS + 1, W).unwrap();

    // Through the real login path: a full cache refuses a fresh, valid request.
    let mut full = ReplayCache::new(1);
    let (a, _) = client("alice", "correct horse", NOW);
    let (b, _) = client("alice", "correct horse", NOW);
    assert!(serve(&a, NOW, &mut full, &accounts()).is_ok());
    assert_eq!(
        serve(&b, NOW, &mut full, &accounts()).unwrap_err(),
        LoginError::ReplayCacheFull
    );
}

#[test]
fn server_takes_the_longest_valid_request_and_refuses_anything_longer_unread() {
    let longest = format!(
        "{}\n{}\n{}\n{}\n{}",
        u64::MAX,
        "a".repeat(32),
        "p".repeat(MAX_PASSWORD_LEN),
        encoding::hex(&[7u8; 16]),
        encoding::hex(&some_share())
    );
    let frame = hand_login_req(
        &[5; 32],
        &[5; 32],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        longest.as_bytes(),
    );
    let opened = ExpectLoginReq::open(server_key(), &frame).unwrap();
    assert_eq!(opened.timestamp_ns(), u64::MAX);
    // One byte more is refused on its length alone, before the RSA decryption.
    let longer = format!("{longest}0");
    let frame = hand_login_req(
        &[5; 32],
        &[5; 32],
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        longer.as_bytes(),
    );
    assert_eq!(
        ExpectLoginReq::open(server_key(), &frame).unwrap_err(),
        LoginError::Malformed("longer than any valid login request")
    );
}
