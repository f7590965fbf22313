//! The Message Transfer Protocol: every byte between client and server is an MTP frame.
//!
//! A frame is a 24-byte header, the AES-256-GCM ciphertext of the payload (`epd`) and
//! a 12-byte `mac` over header and `epd`; the login request alone appends the 256-byte
//! `etk`. This module encodes and decodes headers, seals and opens frames, and keeps
//! the per-direction sequence numbers with the rekey after `0xFFFF`. It never touches a
//! socket except through [`read_frame`], which reads one frame from any `Read` after
//! checking its declared length, so no peer-controlled size is allocated unchecked.

use std::fmt;
use std::io::{self, Read};

use crate::codec::Reader;
use crate::crypto::{AeadKey, CryptoError, Direction, Nonce};

/// Protocol version `01 00`: major 1, minor 0.
pub const VERSION: u16 = 0x0100;
/// Header length.
pub const HEADER_LEN: usize = 24;
/// Mac length (a GCM tag cut to 12 bytes).
pub const MAC_LEN: usize = crate::crypto::MAC_LEN;
/// Length of the RSA-OAEP-encrypted temporary key appended to the login request.
pub const ETK_LEN: usize = 256;
/// The smallest frame: a header and a mac around an empty payload.
pub const MIN_FRAME_LEN: usize = HEADER_LEN + MAC_LEN;
/// The largest frame: `len` is a 16-bit field.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;
/// The largest payload of an ordinary frame.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - HEADER_LEN - MAC_LEN;
/// The smallest login request: header, mac and `etk` around an empty payload.
pub const MIN_LOGIN_FRAME_LEN: usize = MIN_FRAME_LEN + ETK_LEN;
/// The largest login request payload.
pub const MAX_LOGIN_PAYLOAD_LEN: usize = MAX_PAYLOAD_LEN - ETK_LEN;
/// The last sequence number under one key; the next message is `1` under a new key.
pub const LAST_SQN: u16 = 0xFFFF;

/// An MTP message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// `00 00`: init_req, and login_req as the first message of a connection.
    InitReq,
    /// `00 10`: init_res, and login_res as the first reply on a connection.
    InitRes,
    /// `01 00`
    CloseReq,
    /// `01 10`
    CloseRes,
    /// `02 00`
    MsgReq,
    /// `02 10`
    MsgRes,
    /// `03 00`
    InviteReq,
    /// `03 10`
    InviteRes,
    /// `04 00`
    StatusReq,
    /// `04 10`
    StatusRes,
}

impl MsgType {
    /// login_req shares init_req's code; the connection's state tells them apart.
    pub const LOGIN_REQ: MsgType = MsgType::InitReq;
    /// login_res shares init_res's code.
    pub const LOGIN_RES: MsgType = MsgType::InitRes;

    /// The two-byte type code.
    pub fn code(self) -> u16 {
        match self {
            MsgType::InitReq => 0x0000,
            MsgType::InitRes => 0x0010,
            MsgType::CloseReq => 0x0100,
            MsgType::CloseRes => 0x0110,
            MsgType::MsgReq => 0x0200,
            MsgType::MsgRes => 0x0210,
            MsgType::InviteReq => 0x0300,
            MsgType::InviteRes => 0x0310,
            MsgType::StatusReq => 0x0400,
            MsgType::StatusRes => 0x0410,
        }
    }

    /// The type with code `code`, if any.
    pub fn from_code(code: u16) -> Option<MsgType> {
        Some(match code {
            0x0000 => MsgType::InitReq,
            0x0010 => MsgType::InitRes,
            0x0100 => MsgType::CloseReq,
            0x0110 => MsgType::CloseRes,
            0x0200 => MsgType::MsgReq,
            0x0210 => MsgType::MsgRes,
            0x0300 => MsgType::InviteReq,
            0x0310 => MsgType::InviteRes,
            0x0400 => MsgType::StatusReq,
            0x0410 => MsgType::StatusRes,
            _ => return None,
        })
    }
}

/// Why a frame was rejected. Every one of these closes the connection without a
/// reply; the variants exist for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MtpError {
    /// `ver` was not `01 00`: an incompatible or confused peer.
    BadVersion(u16),
    /// `typ` is not a known message type.
    UnknownType(u16),
    /// `len` is below the minimum for this frame.
    TooShort(u16),
    /// `len` disagrees with the number of bytes that make up the frame.
    LengthMismatch {
        /// The header's `len`.
        declared: u16,
        /// The bytes actually present.
        actual: usize,
    },
    /// `sqn` is not the last accepted one plus 1: a replay or a reorder (lower or equal),
    /// or frames deleted by someone on the path (higher). Headers travel in the clear, so
    /// accepting a gap would let a proxy drop a request unnoticed.
    UnexpectedSqn {
        /// The header's `sqn`.
        got: u16,
        /// The only `sqn` the receiver accepts next.
        expected: u16,
    },
    /// The mac did not verify: the frame was altered or sealed under another key.
    BadMac,
    /// A payload too large to fit in a frame (a local mistake, not a peer's).
    PayloadTooLarge(usize),
    /// A frame's fields are not allowed where it arrived (type, sid, uid, state).
    Unexpected(&'static str),
}

impl fmt::Display for MtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MtpError::BadVersion(v) => write!(f, "unsupported version {v:#06x}"),
            MtpError::UnknownType(t) => write!(f, "unknown message type {t:#06x}"),
            MtpError::TooShort(l) => write!(f, "declared length {l} below the minimum"),
            MtpError::LengthMismatch { declared, actual } => {
                write!(f, "declared length {declared} but {actual} bytes")
            }
            MtpError::UnexpectedSqn { got, expected } => {
                write!(f, "sequence number {got} where {expected} was due")
            }
            MtpError::BadMac => f.write_str("mac verification failed"),
            MtpError::PayloadTooLarge(n) => write!(f, "payload of {n} bytes does not fit a frame"),
            MtpError::Unexpected(what) => write!(f, "unexpected frame: {what}"),
        }
    }
}

impl std::error::Error for MtpError {}

impl From<CryptoError> for MtpError {
    fn from(_: CryptoError) -> Self {
        MtpError::BadMac
    }
}

/// The 24-byte header. All integers are big-endian on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub typ: MsgType,
    /// Whole frame length: header, epd, mac (and etk for the login request).
    pub len: u16,
    /// Sequence number in this frame's direction.
    pub sqn: u16,
    /// Session id; 0 where no session applies.
    pub sid: u64,
    /// Sender's user id; 0 when the server itself speaks.
    pub uid: u64,
}

impl Header {
    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&VERSION.to_be_bytes());
        b[2..4].copy_from_slice(&self.typ.code().to_be_bytes());
        b[4..6].copy_from_slice(&self.len.to_be_bytes());
        b[6..8].copy_from_slice(&self.sqn.to_be_bytes());
        b[8..16].copy_from_slice(&self.sid.to_be_bytes());
        b[16..24].copy_from_slice(&self.uid.to_be_bytes());
        b
    }

    /// Parses a header, checking version, type and that `len` is at least
    /// [`MIN_FRAME_LEN`]. Whether `len` matches the bytes is the caller's check.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, MtpError> {
        // Every read fits: the array holds exactly the 24 header bytes.
        let short = |_| MtpError::LengthMismatch {
            declared: 0,
            actual: HEADER_LEN,
        };
        let mut r = Reader::new(b);
        let ver = r.u16().map_err(short)?;
        if ver != VERSION {
            return Err(MtpError::BadVersion(ver));
        }
        let code = r.u16().map_err(short)?;
        let typ = MsgType::from_code(code).ok_or(MtpError::UnknownType(code))?;
        let len = r.u16().map_err(short)?;
        if (len as usize) < MIN_FRAME_LEN {
            return Err(MtpError::TooShort(len));
        }
        Ok(Header {
            typ,
            len,
            sqn: r.u16().map_err(short)?,
            sid: r.u64().map_err(short)?,
            uid: r.u64().map_err(short)?,
        })
    }
}

/// The header of a complete frame, checked against the frame's length.
pub fn frame_header(frame: &[u8]) -> Result<Header, MtpError> {
    let head: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(MtpError::LengthMismatch {
            declared: 0,
            actual: frame.len(),
        })?;
    let header = Header::decode(head)?;
    if header.len as usize != frame.len() {
        return Err(MtpError::LengthMismatch {
            declared: header.len,
            actual: frame.len(),
        });
    }
    Ok(header)
}

/// Seals `payload` into a frame whose `len` also counts `trailer_len` bytes the caller
/// appends afterwards (the login request's `etk`; 0 otherwise).
// Every argument is a header field, the key or the payload: a struct would only
// rename them.
#[allow(clippy::too_many_arguments)]
pub fn seal_frame(
    key: &AeadKey,
    dir: Direction,
    typ: MsgType,
    sqn: u16,
    sid: u64,
    uid: u64,
    payload: &[u8],
    trailer_len: usize,
) -> Result<Vec<u8>, MtpError> {
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN + trailer_len);
    seal_parts(
        key,
        Nonce { sqn, dir },
        typ,
        sid,
        uid,
        &[payload],
        trailer_len,
        &mut frame,
    )?;
    Ok(frame)
}

/// Appends to `out` the frame whose payload is the concatenation of `parts` and whose
/// `len` also counts `trailer_len` bytes to be appended by the caller. On error `out`
/// is unchanged.
#[allow(clippy::too_many_arguments)] // header fields, key and payload, as seal_frame
fn seal_parts(
    key: &AeadKey,
    nonce: Nonce,
    typ: MsgType,
    sid: u64,
    uid: u64,
    parts: &[&[u8]],
    trailer_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), MtpError> {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let total = HEADER_LEN + payload_len + MAC_LEN + trailer_len;
    if total > MAX_FRAME_LEN {
        return Err(MtpError::PayloadTooLarge(payload_len));
    }
    let header = Header {
        typ,
        len: total as u16,
        sqn: nonce.sqn,
        sid,
        uid,
    }
    .encode();
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&header);
    for p in parts {
        out.extend_from_slice(p);
    }
    let mac = key.seal_in_place(nonce, &header, &mut out[start + HEADER_LEN..]);
    out.extend_from_slice(&mac);
    Ok(())
}

/// Opens the `epd || mac` that follows `header` (`body` excludes any trailer).
pub fn open_body(
    key: &AeadKey,
    dir: Direction,
    header: &Header,
    body: &[u8],
) -> Result<Vec<u8>, MtpError> {
    if body.len() < MAC_LEN {
        return Err(MtpError::TooShort(header.len));
    }
    let (epd, mac) = body.split_at(body.len() - MAC_LEN);
    Ok(key.open(
        Nonce {
            sqn: header.sqn,
            dir,
        },
        &header.encode(),
        epd,
        mac,
    )?)
}

/// The sending half of one direction: its key and next sequence number.
#[derive(Debug)]
pub struct Sender {
    key: AeadKey,
    dir: Direction,
    next_sqn: u16,
}

impl Sender {
    /// A sender whose next frame carries `next_sqn` (2 after the login exchange).
    pub fn new(key: AeadKey, dir: Direction, next_sqn: u16) -> Self {
        debug_assert!(next_sqn != 0, "sequence numbers start at 1");
        Sender { key, dir, next_sqn }
    }

    /// The sequence number the next frame will carry.
    pub fn next_sqn(&self) -> u16 {
        self.next_sqn
    }

    /// The current key (for tests and vectors).
    pub fn key(&self) -> &AeadKey {
        &self.key
    }

    /// Seals one frame and advances the sequence number; after `0xFFFF` the key is
    /// replaced by its rekey and numbering restarts at 1.
    pub fn seal(
        &mut self,
        typ: MsgType,
        sid: u64,
        uid: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, MtpError> {
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len() + MAC_LEN);
        self.seal_into(typ, sid, uid, &[payload], &mut frame)?;
        Ok(frame)
    }

    /// Seals one frame whose payload is the concatenation of `parts` and appends it to
    /// `out`, so a writer can build frames in its output buffer without a payload copy
    /// or an allocation per frame. On error `out` is unchanged.
    pub fn seal_into(
        &mut self,
        typ: MsgType,
        sid: u64,
        uid: u64,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), MtpError> {
        let sqn = self.next_sqn;
        seal_parts(
            &self.key,
            Nonce { sqn, dir: self.dir },
            typ,
            sid,
            uid,
            parts,
            0,
            out,
        )?;
        if sqn == LAST_SQN {
            self.key = self.key.rekeyed();
            self.next_sqn = 1;
        } else {
            self.next_sqn = sqn + 1;
        }
        Ok(())
    }
}

/// The receiving half of one direction: its key and the last accepted sequence number.
#[derive(Debug)]
pub struct Receiver {
    key: AeadKey,
    dir: Direction,
    last_sqn: u16,
}

impl Receiver {
    /// A receiver that has accepted `last_sqn` (1 after the login exchange).
    pub fn new(key: AeadKey, dir: Direction, last_sqn: u16) -> Self {
        Receiver { key, dir, last_sqn }
    }

    /// The last accepted sequence number under the current key.
    pub fn last_sqn(&self) -> u16 {
        self.last_sqn
    }

    /// Checks and opens one complete frame: length, version, type, `sqn` exactly the last
    /// accepted one plus 1, then the mac. On success the frame's `sqn` becomes the last
    /// accepted one (and after `0xFFFF` the key is rekeyed and the count restarts).
    pub fn open(&mut self, frame: &[u8]) -> Result<(Header, Vec<u8>), MtpError> {
        let header = frame_header(frame)?;
        // last_sqn is at most 0xFFFE here: after 0xFFFF it was reset to 0 with the rekey.
        let expected = self.last_sqn + 1;
        if header.sqn != expected {
            return Err(MtpError::UnexpectedSqn {
                got: header.sqn,
                expected,
            });
        }
        let payload = open_body(&self.key, self.dir, &header, &frame[HEADER_LEN..])?;
        if header.sqn == LAST_SQN {
            self.key = self.key.rekeyed();
            self.last_sqn = 0;
        } else {
            self.last_sqn = header.sqn;
        }
        Ok((header, payload))
    }
}

/// Why [`read_frame`] returned no frame.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between frames.
    Eof,
    /// A read timeout expired before the first byte of a frame arrived.
    Idle,
    /// The transport failed, timed out or closed in the middle of a frame.
    Io(io::Error),
    /// The header is invalid; the rest of the frame was not read.
    Mtp(MtpError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Eof => f.write_str("connection closed"),
            ReadError::Idle => f.write_str("no frame before the timeout"),
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Mtp(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads exactly one frame: the header first, whose version, type and `len` are
/// checked before the rest (at most [`MAX_FRAME_LEN`] bytes) is read.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Err(ReadError::Eof),
            Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if got == 0
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(ReadError::Idle)
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let header = Header::decode(&head).map_err(ReadError::Mtp)?;
    let mut frame = vec![0u8; header.len as usize];
    frame[..HEADER_LEN].copy_from_slice(&head);
    r.read_exact(&mut frame[HEADER_LEN..])
        .map_err(ReadError::Io)?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: Direction) -> (Sender, Receiver) {
        (
            Sender::new(AeadKey::new([9; 32]), dir, 2),
            Receiver::new(AeadKey::new([9; 32]), dir, 1),
        )
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            typ: MsgType::StatusRes,
            len: 40,
            sqn: 7,
            sid: 0x0102030405060708,
            uid: u64::MAX,
        };
        let b = h.encode();
        assert_eq!(&b[..8], &[1, 0, 4, 0x10, 0, 40, 0, 7]);
        assert_eq!(Header::decode(&b).unwrap(), h);
    }

    #[test]
    fn header_rejects_wrong_version_unknown_type_and_short_len() {
        let mut b = Header {
            typ: MsgType::MsgReq,
            len: 36,
            sqn: 1,
            sid: 0,
            uid: 0,
        }
        .encode();
        b[1] = 1;
        assert_eq!(Header::decode(&b), Err(MtpError::BadVersion(0x0101)));
        b[1] = 0;
        b[3] = 0x20;
        assert_eq!(Header::decode(&b), Err(MtpError::UnknownType(0x0220)));
        b[3] = 0;
        b[5] = 35;
        assert_eq!(Header::decode(&b), Err(MtpError::TooShort(35)));
    }

    #[test]
    fn every_type_code_round_trips() {
        for code in 0..=u16::MAX {
            if let Some(t) = MsgType::from_code(code) {
                assert_eq!(t.code(), code);
            }
        }
    }

    #[test]
    fn sender_and_receiver_agree_and_reject_replays() {
        let (mut s, mut r) = pair(Direction::ClientToServer);
        let f1 = s.seal(MsgType::MsgReq, 5, 6, b"one").unwrap();
        let f2 = s.seal(MsgType::MsgReq, 5, 6, b"two").unwrap();
        assert_eq!(r.open(&f1).unwrap().1, b"one");
        assert_eq!(r.open(&f2).unwrap().1, b"two");
        assert_eq!(
            r.open(&f1),
            Err(MtpError::UnexpectedSqn {
                got: 2,
                expected: 4
            })
        );
        assert_eq!(
            r.open(&f2),
            Err(MtpError::UnexpectedSqn {
                got: 3,
                expected: 4
            })
        );
    }

    #[test]
    fn receiver_rejects_a_gap_in_sequence_numbers() {
        let (mut s, mut r) = pair(Direction::ServerToClient);
        let f2 = s
            .seal(MsgType::MsgReq, 5, 6, b"deleted on the path")
            .unwrap();
        let f3 = s.seal(MsgType::MsgReq, 5, 6, b"three").unwrap();
        assert_eq!(
            r.open(&f3),
            Err(MtpError::UnexpectedSqn {
                got: 3,
                expected: 2
            })
        );
        // A refused frame changes nothing: the missing one is still the one due.
        assert_eq!(r.last_sqn(), 1);
        assert_eq!(r.open(&f2).unwrap().1, b"deleted on the path");
    }

    #[test]
    fn sealing_parts_into_a_buffer_makes_the_same_frames_as_seal() {
        let (mut a, _) = pair(Direction::ServerToClient);
        let (mut b, mut r) = pair(Direction::ServerToClient);
        let mut out = b"prefix".to_vec();
        b.seal_into(MsgType::MsgReq, 5, 6, &[b"12345678", b"envelope"], &mut out)
            .unwrap();
        let whole = a.seal(MsgType::MsgReq, 5, 6, b"12345678envelope").unwrap();
        assert_eq!(&out[6..], &whole[..]);
        assert_eq!(r.open(&out[6..]).unwrap().1, b"12345678envelope");
        let before = out.clone();
        let big = vec![0u8; MAX_PAYLOAD_LEN];
        assert!(b
            .seal_into(MsgType::MsgReq, 5, 6, &[&big, b"x"], &mut out)
            .is_err());
        assert_eq!(out, before, "a refused frame leaves the buffer as it was");
    }

    #[test]
    fn direction_is_part_of_the_nonce() {
        let mut s = Sender::new(AeadKey::new([9; 32]), Direction::ClientToServer, 2);
        let mut r = Receiver::new(AeadKey::new([9; 32]), Direction::ServerToClient, 1);
        let f = s.seal(MsgType::MsgReq, 0, 0, b"x").unwrap();
        assert_eq!(r.open(&f), Err(MtpError::BadMac));
    }

    #[test]
    fn length_field_must_match_the_bytes() {
        let (mut s, mut r) = pair(Direction::ClientToServer);
        let f = s.seal(MsgType::MsgReq, 0, 0, b"abc").unwrap();
        let mut longer = f.clone();
        longer.push(0);
        assert!(matches!(
            r.open(&longer),
            Err(MtpError::LengthMismatch { .. })
        ));
        assert!(matches!(
            r.open(&f[..f.len() - 1]),
            Err(MtpError::LengthMismatch { .. })
        ));
        assert!(matches!(
            r.open(&f[..10]),
            Err(MtpError::LengthMismatch { .. })
        ));
        assert_eq!(r.open(&f).unwrap().1, b"abc");
    }

    #[test]
    fn oversized_payload_is_refused_locally() {
        let (mut s, _) = pair(Direction::ClientToServer);
        assert!(s
            .seal(MsgType::MsgReq, 0, 0, &vec![0; MAX_PAYLOAD_LEN])
            .is_ok());
        assert_eq!(
            s.seal(MsgType::MsgReq, 0, 0, &vec![0; MAX_PAYLOAD_LEN + 1]),
            Err(MtpError::PayloadTooLarge(MAX_PAYLOAD_LEN + 1))
        );
    }

    #[test]
    fn rekey_after_ffff_in_step_on_both_sides() {
        for dir in [Direction::ClientToServer, Direction::ServerToClient] {
            let mut s = Sender::new(AeadKey::new([4; 32]), dir, 0xFFFE);
            let mut r = Receiver::new(AeadKey::new([4; 32]), dir, 0xFFFD);
            let before = *s.key().raw();
            let a = s.seal(MsgType::MsgReq, 1, 2, b"a").unwrap();
            let b = s.seal(MsgType::MsgReq, 1, 2, b"b").unwrap();
            assert_eq!(s.next_sqn(), 1);
            assert_eq!(*s.key().raw(), crate::crypto::rekey(&before));
            let c = s.seal(MsgType::MsgReq, 1, 2, b"c").unwrap();
            assert_eq!(&c[6..8], &[0, 1]);
            assert_eq!(r.open(&a).unwrap().1, b"a");
            assert_eq!(r.open(&b).unwrap().1, b"b");
            assert_eq!(r.last_sqn(), 0);
            assert_eq!(r.open(&c).unwrap().1, b"c");
            // The old key's frames no longer open, even at the sqn that is due.
            let mut old = Sender::new(AeadKey::new(before), dir, 2);
            let stale = old.seal(MsgType::MsgReq, 1, 2, b"d").unwrap();
            assert_eq!(r.open(&stale), Err(MtpError::BadMac));
        }
    }

    #[test]
    fn read_frame_checks_the_header_before_reading_the_rest() {
        let (mut s, _) = pair(Direction::ClientToServer);
        let f = s.seal(MsgType::MsgReq, 0, 0, b"hello").unwrap();
        assert_eq!(read_frame(&mut &f[..]).unwrap(), f);
        assert!(matches!(read_frame(&mut &b""[..]), Err(ReadError::Eof)));
        assert!(matches!(read_frame(&mut &f[..5]), Err(ReadError::Io(_))));
        assert!(matches!(read_frame(&mut &f[..30]), Err(ReadError::Io(_))));
        let mut bad = f.clone();
        bad[0] = 2;
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ReadError::Mtp(MtpError::BadVersion(_)))
        ));
    }
}
