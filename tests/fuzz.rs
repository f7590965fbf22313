//! A seeded, reproducible mutation fuzzer over every parser that sees untrusted bytes.
//!
//! Each case takes a valid seed input of one target, mutates it (bit flips, random
//! bytes, insertions, deletions, duplications, truncations, interesting values,
//! splices of other seeds) and runs the target's parser. A case passes when the parser
//! returns (accepting or refusing) without panicking and without any single allocation
//! larger than the target's bound. A failing input is written to
//! `tests/fuzz-regressions/<target>-<hash>.bin` and replayed first by every later run.
//!
//! `make test` runs a quick sample; `make fuzz` sets `MPCHAT_FUZZ_CASES=1000000`.
//! `MPCHAT_FUZZ_SEED` picks another deterministic sequence.

// The allocation bound is measured by a counting global allocator, which must be an
// `unsafe impl GlobalAlloc`; the library itself forbids unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use mpchat::crypto::{self, AeadKey, Direction, RsaPrivate};
use mpchat::e2e::members::Statement;
use mpchat::e2e::sender_key::{OwnSenderKey, PeerSenderKeys};
use mpchat::e2e::state::SessionState;
use mpchat::mtp::{self, Header, MsgType, Receiver, Sender};
use mpchat::proto::{self, ServerMessage};
use mpchat::{accounts, client, e2e, encoding, login, session, store};

/// Counts the largest single allocation made by this thread while armed.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    let _ = ARMED.try_with(|a| {
        if a.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// xorshift64*: small, fast and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\n",
    b"\n\n",
    b"\0",
    b"\xff",
    b" ",
    b"0",
    b"00",
    b"-1",
    b"18446744073709551615",
    b"99999999999999999999",
    b"OK",
    b"OK ",
    b"error: ",
    b"Accept\n",
    b"Deny",
    b"$",
    b"=",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\x7f",
    b"\x1b[2J",
];

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(seed);
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(32)).min(len);
                out.drain(i..j);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(64)).min(len);
                let chunk = out[i..j].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, chunk);
            }
            5 => out.truncate(rng.below(len + 1)),
            6 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let i = rng.below(len + 1);
                if rng.below(2) == 0 && i + v.len() <= len {
                    out[i..i + v.len()].copy_from_slice(v);
                } else {
                    out.splice(i..i, v.iter().copied());
                }
            }
            7 if !other.is_empty() => {
                let i = rng.below(other.len());
                let j = (i + 1 + rng.below(64)).min(other.len());
                let at = rng.below(len + 1);
                out.splice(at..at, other[i..j].iter().copied());
            }
            _ if len >= 2 => {
                // Big-endian length-like fields: set two bytes to an extreme.
                let i = rng.below(len - 1);
                let v: u16 = [0, 1, 0x7fff, 0xffff, len as u16][rng.below(5)];
                out[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
}

/// One thing to fuzz.
struct Target {
    name: &'static str,
    /// Relative share of the cases.
    weight: usize,
    /// The largest single allocation a case may make.
    max_alloc: usize,
    seeds: Vec<Vec<u8>>,
    run: Parser,
}

type Parser = Box<dyn Fn(&[u8])>;

fn server_key() -> &'static RsaPrivate {
    static KEY: OnceLock<RsaPrivate> = OnceLock::new();
    KEY.get_or_init(|| crypto::read_private_key(&vectors().join("server_test_key.pem")).unwrap())
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn targets() -> Vec<Target> {
    let key = server_key();
    let public = key.public();
    let frame_key = [7u8; 32];
    let mut s = Sender::new(AeadKey::new(frame_key), Direction::ClientToServer, 2);
    let frames: Vec<Vec<u8>> = [
        (MsgType::MsgReq, 5, 9, &b"envelope bytes"[..]),
        (MsgType::StatusReq, 0, 9, &b""[..]),
        (MsgType::InitReq, 0, 9, &b"KEY\nbob\ncarol\n"[..]),
    ]
    .iter()
    .map(|(t, sid, uid, p)| s.seal(*t, *sid, *uid, p).unwrap())
    .collect();
    let (login_frame, _) =
        login::ClientLogin::start(&public, "alice", "correct horse", now_ns()).unwrap();
    let login_payload = format!(
        "{}\nalice\ncorrect horse\n{}\n{}",
        now_ns(),
        "ab".repeat(16),
        "cd".repeat(32)
    );
    let user_key = public.to_base64();
    let users_text = {
        let h = accounts::PasswordHash::with_salt("pw", 1000, &[1; 16]).unwrap();
        format!(
            "alice:00000000000000aa:{}\nbob:00000000000000bb:{}\n",
            h.to_phc(),
            h.to_phc()
        )
    };
    let author = RsaPrivate::generate(2048).unwrap();
    let me = RsaPrivate::generate(2048).unwrap();
    let me_pub = me.public();
    let envelope = e2e::seal(5, 0xaa, &author, &[(0xbb, &me_pub)], "hello").unwrap();
    let author_pub = author.public();
    let status = format!("OK\nlive alice\nalice 00000000000000aa accepted online 3 {user_key}\nbob 00000000000000bb invited offline 0\n");
    // The v2 receiver is the server test key (a `&'static`, shared by the closures).
    let v2 = v2_seeds(&author, key);
    let v2_author = author.public();
    let v2_sid = V2_SID;

    vec![
        Target {
            name: "mtp-frame",
            weight: 30,
            max_alloc: mtp::MAX_FRAME_LEN,
            seeds: frames.clone(),
            run: Box::new(move |input| {
                let mut r = Receiver::new(AeadKey::new(frame_key), Direction::ClientToServer, 1);
                let _ = r.open(input);
                let _ = mtp::frame_header(input);
            }),
        },
        Target {
            name: "mtp-read-frame",
            weight: 10,
            max_alloc: mtp::MAX_FRAME_LEN,
            seeds: frames,
            run: Box::new(|input| {
                let mut r = input;
                while mtp::read_frame(&mut r).is_ok() {}
            }),
        },
        Target {
            name: "login-frame",
            weight: 1,
            max_alloc: 64 * 1024,
            seeds: vec![login_frame],
            run: Box::new(move |input| {
                let _ = login::ExpectLoginReq::open(key, input);
            }),
        },
        Target {
            name: "login-payload",
            weight: 15,
            max_alloc: 64 * 1024,
            seeds: vec![login_payload.into_bytes()],
            run: Box::new(|input| {
                let _ = login::check_request_payload(input);
            }),
        },
        Target {
            name: "init-payload",
            weight: 10,
            max_alloc: 64 * 1024,
            seeds: vec![
                format!("{user_key}\nbob\ncarol\n").into_bytes(),
                b"K\nb".to_vec(),
                format!("{user_key} {}\n", "QUJD".repeat(64)).into_bytes(),
            ],
            run: Box::new(|input| {
                let limit = session::Limits::default().max_participants;
                if let Ok(req) = proto::InitReq::decode(input, limit) {
                    let _ = crypto::RsaPublic::from_base64(&req.key);
                }
                match proto::InitRequest::decode(input, limit) {
                    Ok(proto::InitRequest::ReplaceKey(r)) => {
                        if let Ok(k) = crypto::RsaPublic::from_base64(&r.key) {
                            let _ =
                                mpchat::bindings::verify_replacement(&k, 7, k.spki_der(), &r.proof);
                        }
                    }
                    Ok(proto::InitRequest::Create(_)) | Err(_) => {}
                }
            }),
        },
        Target {
            name: "invite-answer",
            weight: 5,
            max_alloc: 64 * 1024,
            seeds: vec![format!("Accept\n{user_key}").into_bytes(), b"Deny".to_vec()],
            run: Box::new(|input| {
                if let Ok(proto::InviteRes::Accept(k)) = proto::InviteRes::decode(input) {
                    let _ = crypto::RsaPublic::from_base64(&k);
                }
            }),
        },
        Target {
            name: "ack-and-status",
            weight: 10,
            max_alloc: 64 * 1024,
            seeds: vec![b"OK 17".to_vec(), status.clone().into_bytes()],
            run: Box::new(|input| {
                let _ = proto::Ack::decode(input);
                let _ = proto::StatusRes::decode(0, input);
                let _ = proto::StatusRes::decode(5, input);
                if let Ok(text) = std::str::from_utf8(input) {
                    let _ = client::check_session_status(text);
                }
            }),
        },
        Target {
            name: "replies",
            weight: 5,
            max_alloc: 64 * 1024,
            seeds: vec![
                b"OK".to_vec(),
                b"OK 42".to_vec(),
                b"error: unknown user zed".to_vec(),
                b"error: too many participants (the limit is 100)".to_vec(),
                b"Online".to_vec(),
            ],
            run: Box::new(|input| {
                let _ = proto::InitRes::decode(input);
                let _ = proto::MsgRes::decode(input);
                let _ = proto::CloseRes::decode(input);
                let _ = proto::Online::decode(input);
                if let Ok(text) = std::str::from_utf8(input) {
                    let _ = proto::Reason::decode(text);
                }
            }),
        },
        Target {
            name: "server-message",
            weight: 10,
            // A status may list up to MAX_STATUS_LINES participants.
            max_alloc: proto::MAX_STATUS_LINES * size_of::<proto::ParticipantLine>(),
            seeds: server_message_seeds(&status, &envelope),
            run: Box::new(|input| {
                // First byte: the type (low nibble) and whether sid and uid are 0.
                let Some((&pick, payload)) = input.split_first() else {
                    return;
                };
                let codes = [
                    0x0000, 0x0010, 0x0100, 0x0110, 0x0200, 0x0210, 0x0300, 0x0310, 0x0400, 0x0410,
                ];
                let Some(typ) = MsgType::from_code(codes[usize::from(pick & 15) % codes.len()])
                else {
                    return;
                };
                let header = Header {
                    typ,
                    len: 0,
                    sqn: 2,
                    sid: u64::from(pick & 0x10 != 0) * 5,
                    uid: u64::from(pick & 0x20 != 0) * 9,
                };
                if let Ok(m) = ServerMessage::decode(&header, payload) {
                    assert_eq!(m.encode(), payload, "decoding is strict, so it round-trips");
                }
            }),
        },
        Target {
            name: "delivery",
            weight: 3,
            max_alloc: 64 * 1024,
            seeds: vec![{
                let mut d = 7u64.to_be_bytes().to_vec();
                d.extend_from_slice(&envelope);
                d
            }],
            run: Box::new(|input| {
                if let Ok(d) = proto::Delivery::decode(input) {
                    let _ = e2e::parse(d.envelope);
                }
            }),
        },
        Target {
            name: "store-record",
            weight: 5,
            max_alloc: 64 * 1024,
            seeds: store_record_seeds(&user_key),
            run: Box::new(|input| {
                let _ = store::decode_record(input);
            }),
        },
        Target {
            name: "users-file",
            weight: 10,
            max_alloc: 64 * 1024,
            seeds: vec![users_text.into_bytes()],
            run: Box::new(|input| {
                if let Ok(text) = std::str::from_utf8(input) {
                    let _ = accounts::parse_users(text);
                    for line in text.lines() {
                        if let Some(phc) = line.splitn(3, ':').nth(2) {
                            let _ = accounts::PasswordHash::parse_phc(phc);
                        }
                    }
                }
            }),
        },
        Target {
            name: "key-files",
            weight: 3,
            max_alloc: 64 * 1024,
            seeds: vec![
                public.to_spki_pem().into_bytes(),
                user_key.clone().into_bytes(),
            ],
            run: Box::new(|input| {
                if let Ok(text) = std::str::from_utf8(input) {
                    let _ = crypto::RsaPublic::from_spki_pem(text);
                    let _ = crypto::RsaPublic::from_base64(text.trim());
                }
                let _ = crypto::RsaPublic::from_spki_der(input);
            }),
        },
        Target {
            name: "envelope",
            weight: 5,
            max_alloc: 128 * 1024,
            seeds: vec![envelope],
            run: Box::new(move |input| {
                if e2e::parse(input).is_ok() {
                    let _ = e2e::open(5, 0xaa, &author_pub, 0xbb, &me, input);
                }
            }),
        },
        Target {
            name: "e2e-v2-envelope",
            weight: 8,
            max_alloc: 128 * 1024,
            seeds: v2.envelopes,
            run: Box::new(move |input| {
                let _ = e2e::envelope::kind(input);
                let _ = e2e::envelope::parse_statement(input);
                let _ = e2e::envelope::parse_message(input);
                if e2e::envelope::parse_sender_key(input).is_ok() {
                    // Signature first: a mutated copy rarely reaches the RSA decryption.
                    let _ = PeerSenderKeys::new()
                        .receive_distribution(input, v2_sid, 0xaa, &v2_author, 0xbb, key);
                }
                let _ = Statement::verify(input, v2_sid, 0xaa, "alice", &v2_author);
                let mut peer = v2.peer.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = peer.as_mut() {
                    let _ = p.open_message(input, v2_sid, 0xaa);
                }
            }),
        },
        Target {
            name: "e2e-v2-state",
            weight: 8,
            max_alloc: 64 * 1024,
            seeds: v2.states,
            run: Box::new(|input| {
                if let Ok(s) = SessionState::decode(input) {
                    assert_eq!(&s.encode()[..], input, "decode then encode is the identity");
                }
            }),
        },
        Target {
            name: "encoding",
            weight: 5,
            max_alloc: 64 * 1024,
            seeds: vec![
                b"00000000000000ff".to_vec(),
                b"YWJj".to_vec(),
                b"12345".to_vec(),
            ],
            run: Box::new(|input| {
                if let Ok(t) = std::str::from_utf8(input) {
                    let _ = encoding::parse_id(t);
                    let _ = encoding::parse_decimal(t);
                    let _ = encoding::unb64(t);
                    let _ = encoding::unb64_unpadded(t);
                    let _ = client::escape(t);
                }
            }),
        },
    ]
}

/// A seed of the server-message target: a pick byte (type index in the low nibble,
/// 0x10 for a non-zero sid, 0x20 for a non-zero uid), then the payload.
fn server_message_seeds(status: &str, envelope: &[u8]) -> Vec<Vec<u8>> {
    let seed = |pick: u8, payload: &[u8]| {
        let mut v = vec![pick];
        v.extend_from_slice(payload);
        v
    };
    let mut delivery = 3u64.to_be_bytes().to_vec();
    delivery.extend_from_slice(envelope);
    vec![
        seed(0x11, b"OK"),
        seed(0x01, b"error: you cannot invite yourself"),
        seed(0x36, b""),
        seed(0x34, &delivery),
        seed(0x15, b"OK 3"),
        seed(0x32, b""),
        seed(0x13, b"error: only the creator can close"),
        seed(0x08, b""),
        seed(0x19, status.as_bytes()),
        seed(0x09, b"OK\n0000000000000005 live alice\n"),
    ]
}

/// Journal records of every kind, encoded.
fn store_record_seeds(key: &str) -> Vec<Vec<u8>> {
    use std::sync::Arc;
    let records = [
        session::Record::Create {
            sid: 5,
            creator: (0xaa, "alice".into()),
            creator_key: key.into(),
            invitees: vec![(0xbb, "bob".into()), (0xcc, "carol".into())],
        },
        session::Record::Answer {
            sid: 5,
            uid: 0xbb,
            key: Some(key.into()),
        },
        session::Record::Live { sid: 5 },
        session::Record::Message {
            sid: 5,
            n: 1,
            author: 0xaa,
            envelope: Arc::from(&b"envelope"[..]),
        },
        session::Record::Ack {
            sid: 5,
            uid: 0xbb,
            n: 1,
        },
        session::Record::Close { sid: 5 },
        session::Record::Bind {
            uid: 0xaa,
            key: Arc::from(&b"spki der"[..]),
        },
        session::Record::Unbind { uid: 0xaa },
        session::Record::Rekey {
            uid: 0xbb,
            key: Arc::from(&b"new spki der"[..]),
        },
    ];
    records
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            store::encode_record(r, &mut out).unwrap();
            out
        })
        .collect()
}

const V2_SID: u64 = 5;

/// Seeds for the v2 targets: a statement, a distribution and two messages by 0xaa
/// (`author`) to 0xbb (`me`), the receiver's keys (messages open against a copy that
/// moves on, which is what a real client does), and encoded session states.
struct V2Seeds {
    envelopes: Vec<Vec<u8>>,
    states: Vec<Vec<u8>>,
    peer: std::sync::Mutex<Option<PeerSenderKeys>>,
}

fn v2_seeds(author: &RsaPrivate, me: &RsaPrivate) -> V2Seeds {
    let st = Statement::sign(V2_SID, 0xaa, "alice", &["bob", "carol"], 1, author).unwrap();
    let mut own = OwnSenderKey::generate(0, None).unwrap();
    let me_pub = me.public();
    let mpk2 = own
        .distribution(V2_SID, 0xaa, author, &[(0xbb, &me_pub)])
        .unwrap();
    own.mark_holders(&[0xbb]).unwrap();
    let m0 = own.seal(V2_SID, 0xaa, 0, "hello").unwrap();
    let _skipped = own.seal(V2_SID, 0xaa, 0, "skipped").unwrap();
    let m2 = own.seal(V2_SID, 0xaa, 0, "after a gap").unwrap();
    let mut state = SessionState::new(V2_SID);
    state
        .receive_statement(st.bytes(), 0xaa, "alice", &author.public())
        .unwrap();
    state
        .receive_distribution(&mpk2, 0xaa, &author.public(), 0xbb, me)
        .unwrap();
    let mut peer = PeerSenderKeys::new();
    peer.receive_distribution(&mpk2, V2_SID, 0xaa, &author.public(), 0xbb, me)
        .unwrap();
    let full = {
        state.open_message(&m2, 0xaa).unwrap();
        state.own = Some(own);
        state.last_n = 3;
        state.encode().to_vec()
    };
    V2Seeds {
        envelopes: vec![st.bytes().to_vec(), mpk2, m0, m2],
        states: vec![SessionState::new(V2_SID).encode().to_vec(), full],
        peer: std::sync::Mutex::new(Some(peer)),
    }
}

fn regressions_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions")
}

/// Runs one input; `Err` describes a panic or an oversized allocation.
fn run_case(t: &Target, input: &[u8]) -> Result<(), String> {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(input)));
    ARMED.with(|a| a.set(false));
    let largest = LARGEST.with(|l| l.get());
    match result {
        Err(_) => Err("panicked".into()),
        Ok(()) if largest > t.max_alloc => Err(format!(
            "allocated {largest} bytes at once (bound {})",
            t.max_alloc
        )),
        Ok(()) => Ok(()),
    }
}

#[test]
fn parsers_survive_mutated_inputs() {
    let cases: usize = std::env::var("MPCHAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("MPCHAT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6d70_6368_6174);
    let targets = targets();
    panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();

    // Regression inputs first.
    if let Ok(dir) = std::fs::read_dir(regressions_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(t) = targets
                .iter()
                .find(|t| name.starts_with(&format!("{}-", t.name)))
            else {
                continue;
            };
            let input = std::fs::read(entry.path()).unwrap();
            if let Err(e) = run_case(t, &input) {
                failures.push(format!("regression {name}: {e}"));
            }
        }
    }

    // Every seed must itself pass, so a target that rejects everything is noticed.
    for t in &targets {
        for s in &t.seeds {
            if let Err(e) = run_case(t, s) {
                failures.push(format!("seed of {}: {e}", t.name));
            }
        }
    }

    let total_weight: usize = targets.iter().map(|t| t.weight).sum();
    let mut rng = Rng(seed | 1);
    let mut input = Vec::new();
    let mut counts = vec![0usize; targets.len()];
    let started = Instant::now();
    for _ in 0..cases {
        let mut pick = rng.below(total_weight);
        let ti = targets.iter().position(|t| {
            if pick < t.weight {
                true
            } else {
                pick -= t.weight;
                false
            }
        });
        let t = &targets[ti.unwrap_or(0)];
        counts[ti.unwrap_or(0)] += 1;
        let seed_input = &t.seeds[rng.below(t.seeds.len())];
        let other = &t.seeds[rng.below(t.seeds.len())];
        mutate(&mut rng, seed_input, other, &mut input);
        if let Err(e) = run_case(t, &input) {
            let hash = encoding::hex(&crypto::sha256(&input)[..8]);
            let path = regressions_dir().join(format!("{}-{hash}.bin", t.name));
            let _ = std::fs::create_dir_all(regressions_dir());
            let _ = std::fs::write(&path, &input);
            failures.push(format!("{}: {e}; input kept in {}", t.name, path.display()));
            if failures.len() > 20 {
                break;
            }
        }
    }
    let _ = panic::take_hook();
    let secs = started.elapsed().as_secs_f64();
    let per: Vec<String> = targets
        .iter()
        .zip(&counts)
        .map(|(t, c)| format!("{} {c}", t.name))
        .collect();
    println!(
        "fuzz: {cases} cases in {secs:.1} s ({:.0}/s), seed {seed}: {}",
        cases as f64 / secs,
        per.join(", ")
    );
    assert!(
        failures.is_empty(),
        "fuzz failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_harness_catches_panics_and_oversized_allocations() {
    let big = Target {
        name: "big",
        weight: 1,
        max_alloc: 1024,
        seeds: vec![],
        run: Box::new(|input| {
            let v = vec![0u8; 4096 + input.len()];
            std::hint::black_box(v);
        }),
    };
    assert!(run_case(&big, b"x").unwrap_err().contains("allocated"));
    let boom = Target {
        name: "boom",
        weight: 1,
        max_alloc: 1024,
        seeds: vec![],
        run: Box::new(|input| assert!(input.is_empty(), "boom")),
    };
    assert_eq!(run_case(&boom, b"x"), Err("panicked".to_string()));
    assert_eq!(run_case(&boom, b""), Ok(()));
}
