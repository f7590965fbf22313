//! Frames that must be dropped, on connections set up by a real login handshake in
//! memory: every single-bit change anywhere in a frame (traffic frames, login_req with
//! its etk, login_res), stale sequence numbers, wrong versions, wrong lengths, types
//! and header fields not allowed in the login state, and the rekey across `0xFFFF` in
//! both directions. Each rejection has a control case built the same way that is
//! accepted, so the rule under test, not the builder, is what refuses it.

use std::io::Cursor;
use std::sync::OnceLock;

use mpchat::crypto::{self, AeadKey, Direction, Nonce, RsaPrivate, RsaPublic, X25519Secret};
use mpchat::encoding;
use mpchat::login::{ClientLogin, Established, ExpectLoginReq, LoginError, ReplayCache};
use mpchat::mtp::{
    self, Header, MsgType, MtpError, ReadError, Receiver, Sender, ETK_LEN, HEADER_LEN,
    MIN_FRAME_LEN, VERSION,
};

/// 2025-11-24, in Unix nanoseconds.
const NOW: u64 = 1_764_000_000_000_000_000;
const UID: u64 = 0x0123_4567_89ab_cdef;
const ALL_TYPES: [MsgType; 10] = [
    MsgType::InitReq,
    MsgType::InitRes,
    MsgType::CloseReq,
    MsgType::CloseRes,
    MsgType::MsgReq,
    MsgType::MsgRes,
    MsgType::InviteReq,
    MsgType::InviteRes,
    MsgType::StatusReq,
    MsgType::StatusRes,
];

fn server_key() -> &'static RsaPrivate {
    static KEY: OnceLock<RsaPrivate> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivate::generate(2048).expect("RSA-2048 key generation"))
}

fn server_pub() -> &'static RsaPublic {
    static KEY: OnceLock<RsaPublic> = OnceLock::new();
    KEY.get_or_init(|| server_key().public())
}

/// The server side of a login whose password the test takes as right.
fn serve(req: &[u8]) -> Result<(Vec<u8>, Established), LoginError> {
    let mut replay = ReplayCache::new(4);
    ExpectLoginReq::open(server_key(), req)?
        .check_fresh(NOW, mpchat::login::DEFAULT_LOGIN_WINDOW, &mut replay)?
        .accept(UID)
}

/// `(client, server)` after a real handshake.
fn login_pair() -> (Established, Established) {
    let (req, expect) = ClientLogin::start(server_pub(), "alice", "pw", NOW).unwrap();
    let (res, server) = serve(&req).unwrap();
    (expect.finish(&res).unwrap(), server)
}

/// A frame built byte by byte: any version, type code and length, sealed under `key`
/// with a valid mac over that header, so only the field under test is wrong.
#[allow(clippy::too_many_arguments)]
fn raw_frame(
    key: &AeadKey,
    dir: Direction,
    ver: u16,
    typ: u16,
    len: u16,
    sqn: u16,
    sid: u64,
    uid: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut header = [0u8; HEADER_LEN];
    header[0..2].copy_from_slice(&ver.to_be_bytes());
    header[2..4].copy_from_slice(&typ.to_be_bytes());
    header[4..6].copy_from_slice(&len.to_be_bytes());
    header[6..8].copy_from_slice(&sqn.to_be_bytes());
    header[8..16].copy_from_slice(&sid.to_be_bytes());
    header[16..24].copy_from_slice(&uid.to_be_bytes());
    let mut frame = header.to_vec();
    frame.extend_from_slice(payload);
    let mac = key.seal_in_place(Nonce { sqn, dir }, &header, &mut frame[HEADER_LEN..]);
    frame.extend_from_slice(&mac);
    frame
}

fn frame_len(payload_len: usize) -> u16 {
    u16::try_from(MIN_FRAME_LEN + payload_len).unwrap()
}

fn copy_key(key: &AeadKey) -> AeadKey {
    AeadKey::new(*key.raw())
}

fn flip(frame: &[u8], i: usize, bit: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[i] ^= 1 << bit;
    f
}

#[test]
fn rejects_a_traffic_frame_with_any_bit_flipped_in_either_direction() {
    let (mut client, mut server) = login_pair();
    let pairs: [(&mut Sender, &mut Receiver); 2] = [
        (&mut client.sender, &mut server.receiver),
        (&mut server.sender, &mut client.receiver),
    ];
    for (sender, receiver) in pairs {
        let frame = sender
            .seal(MsgType::MsgReq, 0x77, UID, b"a short payload")
            .unwrap();
        for i in 0..frame.len() {
            for bit in 0..8 {
                assert!(
                    receiver.open(&flip(&frame, i, bit)).is_err(),
                    "accepted a flip of bit {bit} in byte {i}"
                );
            }
        }
        // Failed frames changed nothing: the original still opens, as sqn 2.
        assert_eq!(receiver.last_sqn(), 1);
        let (h, p) = receiver.open(&frame).unwrap();
        assert_eq!((h.sqn, p.as_slice()), (2, &b"a short payload"[..]));
    }
}

#[test]
fn rejects_a_login_request_with_a_bit_flipped_at_any_byte_including_the_etk() {
    let (req, _) = ClientLogin::start(server_pub(), "alice", "correct horse", NOW).unwrap();
    let etk_start = req.len() - ETK_LEN;
    for i in 0..req.len() {
        let got = ExpectLoginReq::open(server_key(), &flip(&req, i, (i % 8) as u8));
        match got {
            Ok(_) => panic!("accepted a login request with byte {i} changed"),
            // The header is checked first, then the etk, then the mac.
            Err(LoginError::BadFrame(MtpError::BadMac)) if (HEADER_LEN..etk_start).contains(&i) => {
            }
            Err(LoginError::BadFrame(_)) if i < HEADER_LEN => {}
            Err(LoginError::Decrypt) if i >= etk_start => {}
            Err(e) => panic!("byte {i}: unexpected error {e:?}"),
        }
    }
    assert!(ExpectLoginReq::open(server_key(), &req).is_ok());
}

#[test]
fn client_rejects_a_login_res_with_a_bit_flipped_at_any_byte() {
    let (req, expect) = ClientLogin::start(server_pub(), "alice", "pw", NOW).unwrap();
    let (res, _) = serve(&req).unwrap();
    assert_eq!(expect.finish(&res).unwrap().uid, UID, "control");
    for i in 0..res.len() {
        // Each finish consumes its state, so every flip gets a handshake of its own.
        let (req, expect) = ClientLogin::start(server_pub(), "alice", "pw", NOW).unwrap();
        let (res, _) = serve(&req).unwrap();
        assert!(
            expect.finish(&flip(&res, i, (i % 8) as u8)).is_err(),
            "accepted a login_res with byte {i} changed"
        );
    }
}

#[test]
fn rejects_a_repeated_lower_or_skipped_sqn() {
    let (mut client, mut server) = login_pair();
    let old_key = copy_key(client.sender.key());
    let f2 = client.sender.seal(MsgType::MsgReq, 1, UID, b"two").unwrap();
    let f3 = client
        .sender
        .seal(MsgType::MsgReq, 1, UID, b"three")
        .unwrap();
    let f4 = client
        .sender
        .seal(MsgType::MsgReq, 1, UID, b"four")
        .unwrap();
    // A gap: f2 deleted on the path. The headers are in the clear, so only the exact
    // next number tells the receiver nothing was taken out.
    assert_eq!(
        server.receiver.open(&f3),
        Err(MtpError::UnexpectedSqn {
            got: 3,
            expected: 2
        })
    );
    assert_eq!(server.receiver.open(&f2).unwrap().1, b"two");
    assert_eq!(server.receiver.open(&f3).unwrap().1, b"three");
    assert_eq!(
        server.receiver.open(&f3),
        Err(MtpError::UnexpectedSqn {
            got: 3,
            expected: 4
        })
    );
    assert_eq!(
        server.receiver.open(&f2),
        Err(MtpError::UnexpectedSqn {
            got: 2,
            expected: 4
        })
    );
    // sqn 1 was the login's; sqn 0 is never sent. Both are refused, validly sealed.
    for sqn in [0u16, 1] {
        let f = mtp::seal_frame(
            &old_key,
            Direction::ClientToServer,
            MsgType::MsgReq,
            sqn,
            1,
            UID,
            b"x",
            0,
        )
        .unwrap();
        assert_eq!(
            server.receiver.open(&f),
            Err(MtpError::UnexpectedSqn {
                got: sqn,
                expected: 4
            })
        );
    }
    assert_eq!(server.receiver.open(&f4).unwrap().1, b"four");
    assert_eq!(
        server.receiver.open(&f4),
        Err(MtpError::UnexpectedSqn {
            got: 4,
            expected: 5
        })
    );
}

#[test]
fn rejects_a_frame_of_another_version() {
    let (client, mut server) = login_pair();
    let key = client.sender.key();
    let build = |ver: u16| {
        raw_frame(
            key,
            Direction::ClientToServer,
            ver,
            0x0200,
            frame_len(2),
            2,
            1,
            UID,
            b"hi",
        )
    };
    for ver in [0x0000, 0x0001, 0x0101, 0x0200, 0xFFFF] {
        assert_eq!(
            server.receiver.open(&build(ver)),
            Err(MtpError::BadVersion(ver))
        );
        assert!(matches!(
            mtp::read_frame(&mut Cursor::new(build(ver))),
            Err(ReadError::Mtp(MtpError::BadVersion(v))) if v == ver
        ));
    }
    assert_eq!(server.receiver.open(&build(VERSION)).unwrap().1, b"hi");
}

#[test]
fn rejects_a_len_that_disagrees_with_the_bytes() {
    let (client, mut server) = login_pair();
    let key = client.sender.key();
    let build = |len: u16| {
        raw_frame(
            key,
            Direction::ClientToServer,
            VERSION,
            0x0200,
            len,
            2,
            1,
            UID,
            b"hello",
        )
    };
    let right = frame_len(5);
    for len in [right - 1, right + 1, MIN_FRAME_LEN as u16, u16::MAX] {
        assert_eq!(
            server.receiver.open(&build(len)),
            Err(MtpError::LengthMismatch {
                declared: len,
                actual: usize::from(right)
            })
        );
    }
    let good = build(right);
    assert!(matches!(
        server.receiver.open(&good[..good.len() - 1]),
        Err(MtpError::LengthMismatch { .. })
    ));
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        server.receiver.open(&longer),
        Err(MtpError::LengthMismatch { .. })
    ));
    // From a stream: a len beyond the bytes is a truncated frame.
    assert!(matches!(
        mtp::read_frame(&mut Cursor::new(build(right + 1))),
        Err(ReadError::Io(_))
    ));
    assert_eq!(server.receiver.open(&good).unwrap().1, b"hello");
}

#[test]
fn rejects_a_len_below_36_before_reading_further() {
    for len in [0u16, 1, 24, 35] {
        let mut head = Header {
            typ: MsgType::MsgReq,
            len: 36,
            sqn: 2,
            sid: 0,
            uid: 0,
        }
        .encode();
        head[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Header::decode(&head), Err(MtpError::TooShort(len)));
        let mut stream = head.to_vec();
        stream.extend_from_slice(&[0u8; 64]);
        let mut cursor = Cursor::new(stream);
        assert!(matches!(
            mtp::read_frame(&mut cursor),
            Err(ReadError::Mtp(MtpError::TooShort(l))) if l == len
        ));
        assert_eq!(
            cursor.position(),
            HEADER_LEN as u64,
            "nothing read past the header"
        );
    }
    let head = Header {
        typ: MsgType::MsgReq,
        len: 36,
        sqn: 2,
        sid: 0,
        uid: 0,
    }
    .encode();
    assert!(Header::decode(&head).is_ok());
}

fn login_payload() -> String {
    format!(
        "{NOW}\nalice\npw\n{}\n{}",
        encoding::hex(&[1u8; 16]),
        encoding::hex(&X25519Secret::generate().unwrap().1)
    )
}

/// A login-shaped frame (epd sealed with tk, the etk of tk appended, len counting it)
/// with any type code and header fields.
fn login_shaped(typ: u16, sqn: u16, sid: u64, uid: u64) -> Vec<u8> {
    let tk = AeadKey::new([6; 32]);
    let payload = login_payload();
    let len = frame_len(payload.len()) + ETK_LEN as u16;
    let mut frame = raw_frame(
        &tk,
        Direction::ClientToServer,
        VERSION,
        typ,
        len,
        sqn,
        sid,
        uid,
        payload.as_bytes(),
    );
    frame.extend_from_slice(&server_pub().oaep_encrypt(tk.raw()).unwrap());
    frame
}

#[test]
fn login_state_refuses_every_other_type_as_the_first_frame() {
    assert!(
        ExpectLoginReq::open(server_key(), &login_shaped(0x0000, 1, 0, 0)).is_ok(),
        "control"
    );
    for typ in ALL_TYPES.into_iter().filter(|&t| t != MsgType::LOGIN_REQ) {
        assert_eq!(
            ExpectLoginReq::open(server_key(), &login_shaped(typ.code(), 1, 0, 0)).unwrap_err(),
            LoginError::BadFrame(MtpError::Unexpected("not a login message")),
            "{typ:?}"
        );
    }
    for code in [0x0001, 0x0020, 0x0500, 0xFFFF] {
        assert_eq!(
            ExpectLoginReq::open(server_key(), &login_shaped(code, 1, 0, 0)).unwrap_err(),
            LoginError::BadFrame(MtpError::UnknownType(code))
        );
    }
    // An ordinary traffic frame as the first frame.
    let (mut client, _) = login_pair();
    let f = client
        .sender
        .seal(MsgType::MsgReq, 1, UID, b"hello")
        .unwrap();
    assert!(matches!(
        ExpectLoginReq::open(server_key(), &f),
        Err(LoginError::BadFrame(_))
    ));
}

#[test]
fn login_state_refuses_a_login_request_with_sqn_sid_or_uid_out_of_place() {
    for (sqn, sid, uid) in [
        (2, 0, 0),
        (0, 0, 0),
        (0xFFFF, 0, 0),
        (1, 1, 0),
        (1, 0, 1),
        (1, u64::MAX, UID),
    ] {
        assert!(
            matches!(
                ExpectLoginReq::open(server_key(), &login_shaped(0x0000, sqn, sid, uid)),
                Err(LoginError::BadFrame(MtpError::Unexpected(_)))
            ),
            "accepted sqn {sqn} sid {sid} uid {uid}"
        );
    }
}

#[test]
fn login_state_refuses_a_login_request_whose_len_leaves_out_the_etk_or_that_has_none() {
    let tk = AeadKey::new([6; 32]);
    let payload = login_payload();
    // len counts header, epd and mac only; the etk follows anyway.
    let mut frame = mtp::seal_frame(
        &tk,
        Direction::ClientToServer,
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        payload.as_bytes(),
        0,
    )
    .unwrap();
    frame.extend_from_slice(&server_pub().oaep_encrypt(tk.raw()).unwrap());
    assert!(matches!(
        ExpectLoginReq::open(server_key(), &frame),
        Err(LoginError::BadFrame(MtpError::LengthMismatch { .. }))
    ));
    // A 00 00 frame with no etk at all, too short to carry one.
    let bare = mtp::seal_frame(
        &tk,
        Direction::ClientToServer,
        MsgType::LOGIN_REQ,
        1,
        0,
        0,
        b"x",
        0,
    )
    .unwrap();
    assert!(matches!(
        ExpectLoginReq::open(server_key(), &bare),
        Err(LoginError::BadFrame(MtpError::TooShort(_)))
    ));
}

/// Sends frames from `sender` to `receiver` until the sequence number wraps past
/// `0xFFFF`, checking every step, then checks both sides moved to the rekeyed key.
fn cross_ffff(sender: &mut Sender, receiver: &mut Receiver, dir: Direction, typ: MsgType) {
    let first_key = *sender.key().raw();
    assert_eq!(sender.next_sqn(), 2);
    for sqn in 2..=0xFFFFu16 {
        let frame = sender.seal(typ, 3, 0, &sqn.to_be_bytes()).unwrap();
        let (h, p) = receiver.open(&frame).unwrap();
        assert_eq!((h.sqn, p.as_slice()), (sqn, &sqn.to_be_bytes()[..]));
    }
    assert_eq!(sender.next_sqn(), 1);
    assert_eq!(receiver.last_sqn(), 0);
    assert_eq!(*sender.key().raw(), crypto::rekey(&first_key));

    let next = sender.seal(typ, 3, 0, b"after").unwrap();
    assert_eq!(&next[6..8], &[0, 1]);
    assert_eq!(receiver.open(&next).unwrap().1, b"after");
    // The old key is retired on the receiving side too.
    let old = mtp::seal_frame(&AeadKey::new(first_key), dir, typ, 2, 3, 0, b"old", 0).unwrap();
    assert_eq!(receiver.open(&old), Err(MtpError::BadMac));
    let new = sender.seal(typ, 3, 0, b"new").unwrap();
    assert_eq!(receiver.open(&new).unwrap().1, b"new");
}

#[test]
fn rekeys_across_ffff_in_both_directions_after_a_real_login() {
    let (mut client, mut server) = login_pair();
    cross_ffff(
        &mut client.sender,
        &mut server.receiver,
        Direction::ClientToServer,
        MsgType::MsgReq,
    );
    cross_ffff(
        &mut server.sender,
        &mut client.receiver,
        Direction::ServerToClient,
        MsgType::MsgRes,
    );
}
