//! The `mpchat` client against a malicious server.
//!
//! The server is the test: it sends exactly what a hostile operator could send:
//! altered, moved, re-attributed and replayed envelopes, substituted public keys, and
//! control characters or fake event lines in every text field it controls. Author keys
//! live only in the test, so it can seal genuine envelopes, and it holds the private
//! half of the "substituted" key, so it can read anything the client encrypts to it.
//! The client must reject, refuse or escape each attack.
//!
//! Most tests drive the client's I/O-free core ([`mpchat::client::state::Core`])
//! directly: a frame in, the lines printed and requests sent out, in order, with no
//! socket and no process. The last few run the real `mpchat` binary against a fake
//! TCP server that logs it in with the library's own login state machine (any password
//! it likes, any uid it likes), to prove the shell wires the core to the network,
//! stdout and the config directory.

mod common;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{temp_dir, Client, User, WAIT};
use mpchat::client::state::{Core, Input, Output, Persist};
use mpchat::client::store::Store;
use mpchat::client::ClientError;
use mpchat::crypto::{self, RsaPrivate, RsaPublic};
use mpchat::e2e;
use mpchat::encoding::id_hex;
use mpchat::login::{Established, ExpectLoginReq, ReplayCache, DEFAULT_LOGIN_WINDOW};
use mpchat::mtp::{self, Header, MsgType, ReadError};

/// The client under test logs in as carol and gets this uid from the server.
const CAROL: u64 = 0x0c0c_0c0c_0c0c_0c0c;
/// Alice: a genuine peer whose key the test holds.
const ALICE: u64 = 0x0a0a_0a0a_0a0a_0a0a;
/// Bob: another genuine peer.
const BOB: u64 = 0x0b0b_0b0b_0b0b_0b0b;
/// Carol's password, which the fake server checks (so the client really sent it).
const PASSWORD: &str = "pw-carol-secret";

/// Session ids the server makes up.
const S1: u64 = 0x5e55_0000_0000_0001;
const S2: u64 = 0x5e55_0000_0000_0002;

/// Every RSA key the tests use, made once (RSA key generation is the slow part).
struct Keys {
    server: RsaPrivate,
    server_pub: PathBuf,
    carol: RsaPrivate,
    alice: RsaPrivate,
    bob: RsaPrivate,
    /// The key the server substitutes for a genuine one; the server holds its private half.
    mallory: RsaPrivate,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // Two threads: the machine has two cores.
        let gen = || {
            std::thread::spawn(|| {
                (0..3)
                    .map(|_| RsaPrivate::generate(2048).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let (a, b) = (gen(), gen());
        let mut k = a.join().unwrap();
        k.extend(b.join().unwrap());
        let server = k.pop().unwrap();
        let server_pub = temp_dir("evil-server").join("server.pub");
        std::fs::write(&server_pub, server.public().to_spki_pem()).unwrap();
        let mallory = k.pop().unwrap();
        let bob = k.pop().unwrap();
        let alice = k.pop().unwrap();
        let carol = k.pop().unwrap();
        Keys {
            server,
            server_pub,
            carol,
            alice,
            bob,
            mallory,
        }
    })
}

/// Carol's password file and a config directory holding her end-to-end key pair.
fn carol() -> User {
    let base = temp_dir("evil");
    let config_dir = base.join("cfg-carol");
    std::fs::create_dir_all(&config_dir).unwrap();
    crypto::write_key_pair(
        &keys().carol,
        &config_dir.join("key.pem"),
        &config_dir.join("key.pub"),
    )
    .unwrap();
    let password_file = base.join("carol.pw");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    User {
        name: "carol".into(),
        uid: CAROL,
        password_file,
        config_dir,
    }
}

/// The client's core under test, as the server sees it and as its user sees it. The
/// core's writes go to carol's config directory through the client's own store, as
/// the shell does them.
struct Rig {
    core: Core,
    store: Store,
    /// Printed lines no expectation has taken yet, oldest first.
    lines: VecDeque<String>,
    /// Every line printed.
    transcript: Vec<String>,
    /// Requests the client sent that the test has not read yet, oldest first.
    sent: VecDeque<(MsgType, u64, Vec<u8>)>,
    /// What this server answers to a status_req per sid (it may change it at will).
    statuses: HashMap<u64, String>,
    /// The server's next sequence number (the core never looks; the header is real).
    sqn: u16,
    /// The core's exit, once it gave one.
    exit: Option<Result<(), ClientError>>,
}

impl Rig {
    /// Carol's core, started from her config directory, logged in as [`CAROL`].
    fn start() -> Rig {
        let user = carol();
        let store = Store::new(&user.config_dir);
        let (key, saved) = store.load().expect("carol's config directory");
        let mut r = Rig {
            core: Core::new("carol", key, saved),
            store,
            lines: VecDeque::new(),
            transcript: Vec::new(),
            sent: VecDeque::new(),
            statuses: HashMap::new(),
            sqn: 1,
            exit: None,
        };
        r.feed(Input::Connected { uid: CAROL });
        assert!(r.sent.is_empty() && r.lines.is_empty());
        r
    }

    /// Hands one input to the core and files its outputs, which it also returns.
    fn feed(&mut self, input: Input) -> Vec<Output> {
        assert!(self.exit.is_none(), "input after the exit: {input:?}");
        let outputs = self.core.handle(input, 1_700_000_000_000_000_000);
        for output in &outputs {
            assert!(self.exit.is_none(), "output after the exit: {output:?}");
            match output {
                Output::Send { typ, sid, payload } => {
                    self.sent.push_back((*typ, *sid, payload.clone()))
                }
                Output::Event(event) => {
                    if let Some(line) = event.script_line() {
                        self.lines.push_back(line.clone());
                        self.transcript.push(line);
                    }
                }
                Output::Persist(what) => {
                    if let Err(error) = self.store.write(what) {
                        self.feed(Input::PersistFailed {
                            file: what.file(),
                            error,
                        });
                    }
                }
                Output::Exit(result) => self.exit = Some(result.clone()),
            }
        }
        outputs
    }

    /// The server sends one frame; `uid` is 0 for its own replies, the author otherwise.
    fn server_sends(&mut self, typ: MsgType, sid: u64, uid: u64, payload: &[u8]) -> Vec<Output> {
        let h = Header {
            typ,
            len: (mtp::HEADER_LEN + payload.len() + mtp::MAC_LEN) as u16,
            sqn: self.sqn,
            sid,
            uid,
        };
        self.sqn = self.sqn.wrapping_add(1).max(1);
        self.feed(Input::Frame(h, payload.to_vec()))
    }

    /// The user types one command line.
    fn type_line(&mut self, line: &str) {
        self.feed(Input::Line(line.to_string()));
    }

    /// The next request the client sent, which must be `typ` for `sid`; its payload.
    fn recv_type(&mut self, typ: MsgType, sid: u64) -> Vec<u8> {
        let Some((t, s, p)) = self.sent.pop_front() else {
            panic!(
                "the client sent nothing; expected {typ:?} for {}; transcript {:#?}",
                id_hex(sid),
                self.transcript
            );
        };
        assert_eq!(
            (t, id_hex(s)),
            (typ, id_hex(sid)),
            "unexpected frame from the client, payload {:?}",
            String::from_utf8_lossy(&p)
        );
        p
    }

    /// Reads the client's status_req for `sid` and answers it from [`Rig::statuses`].
    fn serve_status(&mut self, sid: u64) {
        self.recv_type(MsgType::StatusReq, sid);
        let text = self
            .statuses
            .get(&sid)
            .cloned()
            .unwrap_or_else(|| "error: not a participant".into());
        self.server_sends(MsgType::StatusRes, sid, 0, text.as_bytes());
    }

    /// Delivers an envelope as message `n` of `sid`, attributed to `author`.
    fn deliver(&mut self, sid: u64, author: u64, n: u64, envelope: &[u8]) -> Vec<Output> {
        let mut payload = n.to_be_bytes().to_vec();
        payload.extend_from_slice(envelope);
        self.server_sends(MsgType::MsgReq, sid, author, &payload)
    }

    /// The next request must be the client's acknowledgement of `n` in `sid`.
    fn expect_ack(&mut self, sid: u64, n: u64) {
        let p = self.recv_type(MsgType::MsgRes, sid);
        assert_eq!(String::from_utf8_lossy(&p), format!("OK {n}"));
    }

    /// Takes the first printed line not yet taken for which `pred` holds; lines that
    /// do not match stay for later expectations. The core answers at once, so a line
    /// that is not there now never comes.
    fn expect_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.lines.iter().position(|l| pred(l)) {
            Some(i) => self.lines.remove(i).unwrap_or_default(),
            None => panic!("no line {what}; transcript: {:#?}", self.transcript),
        }
    }

    /// Takes the first line starting with `prefix`.
    fn expect(&mut self, prefix: &str) -> String {
        self.expect_where(&format!("starting {prefix:?}"), |l| l.starts_with(prefix))
    }

    /// The client's next output line, whatever it is.
    fn line(&mut self) -> String {
        self.expect_where("(any line)", |_| true)
    }

    /// Invites the client to `sid` as `creator` and answers its status_req with
    /// `status`; the client pins every key listed and prints the invite.
    fn join(&mut self, sid: u64, creator: &str, creator_uid: u64, status: String) {
        self.statuses.insert(sid, status);
        self.server_sends(MsgType::InviteReq, sid, creator_uid, b"");
        self.serve_status(sid);
        assert_eq!(
            self.expect("invite "),
            format!("invite {} {creator}", id_hex(sid))
        );
    }

    /// A round trip through `/status` (sid 0): every request the client sent before
    /// it has been read, and every line it printed before `status none` is out.
    fn sync(&mut self) {
        self.type_line("/status");
        self.recv_type(MsgType::StatusReq, 0);
        self.server_sends(MsgType::StatusRes, 0, 0, b"OK\n");
        self.expect("status none");
    }

    /// Ends the input; the client must exit 0 having sent nothing more. Returns its
    /// whole output, checked to hold no control character.
    fn finish(mut self) -> Vec<String> {
        self.feed(Input::EndOfInput);
        assert_eq!(self.exit, Some(Ok(())), "{:#?}", self.transcript);
        if let Some((typ, sid, p)) = self.sent.pop_front() {
            panic!(
                "the client sent {typ:?} for {} {:?} before leaving",
                id_hex(sid),
                String::from_utf8_lossy(&p)
            );
        }
        for l in &self.transcript {
            assert!(
                !l.chars().any(char::is_control),
                "raw control character in {l:?}"
            );
        }
        self.transcript
    }
}

/// A session status as the server sends it: `live`, every member accepted and online.
fn status(creator: &str, members: &[(&str, u64, RsaPublic)]) -> String {
    let mut s = format!("OK\nlive {creator}\n");
    for (name, uid, key) in members {
        writeln!(
            s,
            "{name} {} accepted online 0 {}",
            id_hex(*uid),
            key.to_base64()
        )
        .unwrap();
    }
    s
}

/// carol and alice, with their genuine keys.
fn carol_and_alice() -> Vec<(&'static str, u64, RsaPublic)> {
    let k = keys();
    vec![
        ("carol", CAROL, k.carol.public()),
        ("alice", ALICE, k.alice.public()),
    ]
}

/// An envelope from `author` (signed with `author_key`) in `sid`, for carol only.
fn seal_for_carol(sid: u64, author: u64, author_key: &RsaPrivate, text: &str) -> Vec<u8> {
    e2e::seal(
        sid,
        author,
        author_key,
        &[(CAROL, &keys().carol.public())],
        text,
    )
    .unwrap()
}

/// The recipient uids of an envelope the client sent.
fn recipients(envelope: &[u8]) -> Vec<u64> {
    e2e::parse(envelope)
        .expect("a well-formed envelope")
        .recipients
        .iter()
        .map(|r| r.uid)
        .collect()
}

/// No `msg` line in the transcript carries `text`.
fn assert_never_shown(transcript: &[String], text: &str) {
    assert!(
        !transcript
            .iter()
            .any(|l| l.starts_with("msg ") && l.contains(text)),
        "{text:?} was shown: {transcript:#?}"
    );
}

#[test]
fn message_from_an_unknown_session_is_opened_after_asking_its_status() {
    let mut r = Rig::start();
    r.statuses.insert(S1, status("alice", &carol_and_alice()));
    r.deliver(
        S1,
        ALICE,
        4,
        &seal_for_carol(S1, ALICE, &keys().alice, "first contact"),
    );
    r.serve_status(S1);
    assert_eq!(r.line(), format!("msg {} alice first contact", id_hex(S1)));
    r.expect_ack(S1, 4);
    r.finish();
}

#[test]
fn altered_envelope_is_rejected_and_acknowledged() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    let mut env = seal_for_carol(S1, ALICE, &keys().alice, "altered text");
    let at = {
        let view = e2e::parse(&env).unwrap();
        view.ciphertext.as_ptr() as usize - env.as_ptr() as usize
    };
    env[at + e2e::MSG_ID_LEN] ^= 0x01;
    r.deliver(S1, ALICE, 1, &env);
    let err = r.line();
    assert!(err.starts_with(&format!("error msg {sid} ")), "{err}");
    r.expect_ack(S1, 1);
    // The session still works: the next genuine message is the next line shown.
    r.deliver(
        S1,
        ALICE,
        2,
        &seal_for_carol(S1, ALICE, &keys().alice, "intact text"),
    );
    assert_eq!(r.line(), format!("msg {sid} alice intact text"));
    r.expect_ack(S1, 2);
    let transcript = r.finish();
    assert_never_shown(&transcript, "altered");
}

#[test]
fn envelope_moved_to_another_session_is_rejected() {
    let mut r = Rig::start();
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    r.join(S2, "alice", ALICE, status("alice", &carol_and_alice()));
    let env = seal_for_carol(S1, ALICE, &keys().alice, "meant for the first session");
    r.deliver(S2, ALICE, 1, &env);
    let err = r.line();
    assert!(
        err.starts_with(&format!("error msg {} ", id_hex(S2))),
        "{err}"
    );
    r.expect_ack(S2, 1);
    // The same bytes in their own session are fine: only the move was refused.
    r.deliver(S1, ALICE, 1, &env);
    assert_eq!(
        r.line(),
        format!("msg {} alice meant for the first session", id_hex(S1))
    );
    r.expect_ack(S1, 1);
    r.finish();
}

#[test]
fn envelope_reattributed_to_another_author_is_rejected() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    let mut members = carol_and_alice();
    members.push(("bob", BOB, keys().bob.public()));
    r.join(S1, "alice", ALICE, status("alice", &members));
    r.deliver(
        S1,
        BOB,
        1,
        &seal_for_carol(S1, ALICE, &keys().alice, "alice wrote this"),
    );
    let err = r.line();
    assert!(err.starts_with(&format!("error msg {sid} ")), "{err}");
    r.expect_ack(S1, 1);
    r.sync();
    let transcript = r.finish();
    assert_never_shown(&transcript, "alice wrote this");
}

#[test]
fn envelope_forged_by_the_server_with_its_own_key_is_rejected() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    // The status still shows alice's pinned key; the server signs with its own. Only
    // the signature tells: the forger chose the content key, so the content opens.
    r.deliver(
        S1,
        ALICE,
        1,
        &seal_for_carol(S1, ALICE, &keys().mallory, "forged by the server"),
    );
    let err = r.line();
    assert!(err.starts_with(&format!("error msg {sid} ")), "{err}");
    r.expect_ack(S1, 1);
    r.sync();
    let transcript = r.finish();
    assert_never_shown(&transcript, "forged by the server");
}

#[test]
fn control_characters_and_fake_event_lines_in_message_text_are_escaped() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    let texts = [
        (
            format!("hi\nmsg {sid} mallory pwned"),
            format!("hi\\nmsg {sid} mallory pwned"),
        ),
        (
            "\x1b[2J\x1b]0;owned\x07red\r\u{9b}31m\u{7f}end".to_string(),
            "\\x1b[2J\\x1b]0;owned\\x07red\\r\\u{9b}31m\\x7fend".to_string(),
        ),
        // A literal backslash-n stays distinguishable from an escaped newline.
        (
            "a\\nb\tc\u{2028}d".to_string(),
            "a\\\\nb\\tc\\u{2028}d".to_string(),
        ),
    ];
    for (n, (text, shown)) in texts.iter().enumerate() {
        let n = n as u64 + 1;
        r.deliver(
            S1,
            ALICE,
            n,
            &seal_for_carol(S1, ALICE, &keys().alice, text),
        );
        assert_eq!(r.line(), format!("msg {sid} alice {shown}"));
        r.expect_ack(S1, n);
    }
    r.sync();
    let transcript = r.finish();
    assert!(!transcript.iter().any(|l| l.starts_with("msg ")
        && l.contains("mallory")
        && !l.starts_with(&format!("msg {sid} alice "))));
}

#[test]
fn control_characters_in_names_from_the_server_are_escaped() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    let k = keys();
    // The creator field is the rest of the line, spaces included; a member name is
    // one field.
    let creator = "alice\x1b[2J\rinit 0000000000000001 ok";
    let member = "alice\x1b]0;x\x07";
    let text = format!(
        "OK\nlive {creator}\n{member} {} accepted online 0 {}\ncarol {} accepted online 0 {}\n",
        id_hex(ALICE),
        k.alice.public().to_base64(),
        id_hex(CAROL),
        k.carol.public().to_base64()
    );
    r.statuses.insert(S1, text);
    r.server_sends(MsgType::InviteReq, S1, ALICE, b"");
    r.serve_status(S1);
    assert_eq!(
        r.expect("invite "),
        format!("invite {sid} alice\\x1b[2J\\rinit 0000000000000001 ok")
    );

    r.type_line(&format!("/status {sid}"));
    r.serve_status(S1);
    assert_eq!(
        r.expect("status "),
        format!("status {sid} live alice\\x1b[2J\\rinit 0000000000000001 ok")
    );
    let members = [r.expect("status "), r.expect("status ")];
    assert!(
        members.contains(&format!(
            "status {sid} alice\\x1b]0;x\\x07 {} accepted online 0",
            id_hex(ALICE)
        )),
        "{members:?}"
    );

    // A message from that member: whatever the client does with it, the name is escaped.
    r.deliver(
        S1,
        ALICE,
        1,
        &seal_for_carol(S1, ALICE, &k.alice, "from a strange name"),
    );
    r.expect_ack(S1, 1);
    r.sync();
    let transcript = r.finish();
    assert!(
        !transcript.iter().any(|l| l.starts_with("init ")),
        "{transcript:#?}"
    );
    assert!(
        transcript
            .iter()
            .any(|l| l.starts_with(&format!("error msg {sid} "))
                && l.contains("alice\\x1b]0;x\\x07")),
        "{transcript:#?}"
    );
}

#[test]
fn substituted_key_of_the_only_peer_gets_nothing_until_trusted() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    let k = keys();
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    // Before: messages go to alice's genuine key.
    r.type_line(&format!("/msg {sid} before the swap"));
    let env = r.recv_type(MsgType::MsgReq, S1);
    assert_eq!(recipients(&env), vec![ALICE]);
    let opened = e2e::open(S1, CAROL, &k.carol.public(), ALICE, &k.alice, &env).unwrap();
    assert_eq!(opened.text, "before the swap");
    r.server_sends(MsgType::MsgRes, S1, 0, b"OK 1");
    assert_eq!(r.line(), format!("sent {sid} 1"));

    let forged = status(
        "alice",
        &[
            ("carol", CAROL, k.carol.public()),
            ("alice", ALICE, k.mallory.public()),
        ],
    );
    r.statuses.insert(S1, forged.clone());
    r.server_sends(MsgType::StatusRes, S1, 0, forged.as_bytes());
    assert_eq!(
        r.line(),
        format!(
            "key-changed alice {} {}",
            k.alice.public().fingerprint(),
            k.mallory.public().fingerprint()
        )
    );

    // Nobody left to encrypt to: an error, and no msg_req (the next frame the server
    // sees is the sync's status_req).
    r.type_line(&format!("/msg {sid} during the swap"));
    let err = r.line();
    assert!(err.starts_with(&format!("error msg {sid} ")), "{err}");
    r.sync();

    r.type_line("/trust alice");
    assert_eq!(
        r.line(),
        format!("trusted alice {}", k.mallory.public().fingerprint())
    );
    r.type_line(&format!("/msg {sid} after trusting"));
    let env = r.recv_type(MsgType::MsgReq, S1);
    assert_eq!(recipients(&env), vec![ALICE]);
    let opened = e2e::open(S1, CAROL, &k.carol.public(), ALICE, &k.mallory, &env).unwrap();
    assert_eq!(opened.text, "after trusting");
    r.server_sends(MsgType::MsgRes, S1, 0, b"OK 2");
    assert_eq!(r.line(), format!("sent {sid} 2"));
    r.finish();
}

#[test]
fn substituted_key_is_left_out_of_envelopes_to_the_others_until_trusted() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    let k = keys();
    substitute_alice_key(
        &mut r,
        &[
            ("alice", ALICE, k.alice.public()),
            ("bob", BOB, k.bob.public()),
        ],
    );

    r.type_line(&format!("/msg {sid} only for bob"));
    let env = r.recv_type(MsgType::MsgReq, S1);
    assert_eq!(
        recipients(&env),
        vec![BOB],
        "the envelope names a recipient whose key changed"
    );
    let opened = e2e::open(S1, CAROL, &k.carol.public(), BOB, &k.bob, &env).unwrap();
    assert_eq!(opened.text, "only for bob");
    assert_eq!(
        e2e::open(S1, CAROL, &k.carol.public(), ALICE, &k.mallory, &env).map(|o| o.text),
        Err(e2e::E2eError::NotARecipient)
    );
    r.server_sends(MsgType::MsgRes, S1, 0, b"OK 1");
    assert_eq!(r.line(), format!("sent {sid} 1"));

    r.type_line("/trust alice");
    assert_eq!(
        r.line(),
        format!("trusted alice {}", k.mallory.public().fingerprint())
    );
    r.type_line(&format!("/msg {sid} for both"));
    let env = r.recv_type(MsgType::MsgReq, S1);
    assert_eq!(recipients(&env), vec![ALICE, BOB]);
    let opened = e2e::open(S1, CAROL, &k.carol.public(), ALICE, &k.mallory, &env).unwrap();
    assert_eq!(opened.text, "for both");
    r.server_sends(MsgType::MsgRes, S1, 0, b"OK 2");
    assert_eq!(r.line(), format!("sent {sid} 2"));
    r.finish();
}

#[test]
fn message_signed_with_a_substituted_key_is_not_shown_until_trusted() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    let k = keys();
    substitute_alice_key(&mut r, &[("alice", ALICE, k.alice.public())]);

    // A message signed with the substituted key is held, unacknowledged (so nothing
    // is lost if the change is genuine), and not shown.
    r.deliver(
        S1,
        ALICE,
        1,
        &seal_for_carol(S1, ALICE, &k.mallory, "signed before trust"),
    );
    let err = r.line();
    assert_eq!(
        err,
        format!("error msg {sid} message from alice held until /trust alice")
    );
    r.sync();

    // Trusting the key the key-changed line showed releases it, then acknowledges it.
    r.type_line("/trust alice");
    assert_eq!(
        r.line(),
        format!("trusted alice {}", k.mallory.public().fingerprint())
    );
    assert_eq!(r.line(), format!("msg {sid} alice signed before trust"));
    r.expect_ack(S1, 1);
    r.deliver(
        S1,
        ALICE,
        2,
        &seal_for_carol(S1, ALICE, &k.mallory, "signed with the trusted key"),
    );
    assert_eq!(
        r.line(),
        format!("msg {sid} alice signed with the trusted key")
    );
    r.expect_ack(S1, 2);
    r.finish();
}

#[test]
fn substituted_key_in_a_second_session_is_reported_and_not_used() {
    let mut r = Rig::start();
    let k = keys();
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    // A new session whose first status already carries another key for alice.
    r.statuses.insert(
        S2,
        status(
            "alice",
            &[
                ("carol", CAROL, k.carol.public()),
                ("alice", ALICE, k.mallory.public()),
            ],
        ),
    );
    r.server_sends(MsgType::InviteReq, S2, ALICE, b"");
    r.serve_status(S2);
    assert_eq!(
        r.line(),
        format!(
            "key-changed alice {} {}",
            k.alice.public().fingerprint(),
            k.mallory.public().fingerprint()
        )
    );
    assert_eq!(r.line(), format!("invite {} alice", id_hex(S2)));
    r.deliver(
        S2,
        ALICE,
        1,
        &seal_for_carol(S2, ALICE, &k.mallory, "forged in a second session"),
    );
    let err = r.line();
    assert_eq!(
        err,
        format!(
            "error msg {} message from alice held until /trust alice",
            id_hex(S2)
        )
    );
    // Held, so not acknowledged: the next frame the server sees is not an ack.
    r.type_line(&format!("/msg {} to the impostor", id_hex(S2)));
    let err = r.line();
    assert!(
        err.starts_with(&format!("error msg {} ", id_hex(S2))),
        "{err}"
    );
    r.sync();
    let transcript = r.finish();
    assert_never_shown(&transcript, "forged in a second session");
}

#[test]
fn known_key_offered_under_a_new_name_does_not_relabel_its_author() {
    let mut r = Rig::start();
    let k = keys();
    let s2 = id_hex(S2);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    // Alice really is in S2 and writes there, but the server calls her dave: a name
    // carol has never seen, with alice's uid and alice's pinned key.
    r.statuses.insert(
        S2,
        status(
            "dave",
            &[
                ("carol", CAROL, k.carol.public()),
                ("dave", ALICE, k.alice.public()),
            ],
        ),
    );
    r.server_sends(MsgType::InviteReq, S2, ALICE, b"");
    r.serve_status(S2);
    r.expect(&format!("invite {s2} "));
    r.deliver(
        S2,
        ALICE,
        1,
        &seal_for_carol(S2, ALICE, &k.alice, "alice said this"),
    );
    r.expect_ack(S2, 1);
    r.sync();
    let transcript = r.finish();
    assert!(
        !transcript
            .iter()
            .any(|l| l.starts_with(&format!("msg {s2} dave "))),
        "alice's message was shown as dave's: {transcript:#?}"
    );
}

#[test]
fn trust_takes_the_key_named_in_the_key_changed_line() {
    let mut r = Rig::start();
    let k = keys();
    // Alice's old sessions keep listing the key she accepted them with; a new one
    // lists her new key (a genuine rotation looks exactly like this).
    let old_sessions: Vec<u64> = (1..=8).map(|i| S1 + 0x100 * i).collect();
    for &sid in &old_sessions {
        r.join(sid, "alice", ALICE, status("alice", &carol_and_alice()));
    }
    r.statuses.insert(
        S2,
        status(
            "alice",
            &[
                ("carol", CAROL, k.carol.public()),
                ("alice", ALICE, k.mallory.public()),
            ],
        ),
    );
    r.server_sends(MsgType::InviteReq, S2, ALICE, b"");
    r.serve_status(S2);
    let new_fp = k.mallory.public().fingerprint();
    assert_eq!(
        r.line(),
        format!(
            "key-changed alice {} {new_fp}",
            k.alice.public().fingerprint()
        )
    );
    r.expect(&format!("invite {} ", id_hex(S2)));
    r.type_line("/trust alice");
    assert_eq!(r.line(), format!("trusted alice {new_fp}"));
    r.finish();
}

#[test]
fn participant_listed_under_the_clients_own_name_gets_nothing() {
    let mut r = Rig::start();
    let k = keys();
    let sid = id_hex(S1);
    let phantom: u64 = 0x0fa4_e0fa_4e0f_a4e0;
    let mut members = carol_and_alice();
    members.push(("carol", phantom, k.mallory.public()));
    r.join(S1, "alice", ALICE, status("alice", &members));
    r.type_line(&format!("/msg {sid} for alice only"));
    let env = r.recv_type(MsgType::MsgReq, S1);
    assert_eq!(
        recipients(&env),
        vec![ALICE],
        "a second \"carol\" was sent the message"
    );
    r.server_sends(MsgType::MsgRes, S1, 0, b"OK 1");
    r.expect(&format!("sent {sid} 1"));
    r.finish();
}

/// Joins S1 with `others` besides carol, pins their keys, then pushes a status in
/// which alice's key is mallory's: the client must say so, with both fingerprints.
fn substitute_alice_key(r: &mut Rig, others: &[(&'static str, u64, RsaPublic)]) {
    let k = keys();
    let mut members = vec![("carol", CAROL, k.carol.public())];
    members.extend(others.iter().cloned());
    r.join(S1, "alice", ALICE, status("alice", &members));
    for m in members.iter_mut().filter(|m| m.0 == "alice") {
        m.2 = k.mallory.public();
    }
    let forged = status("alice", &members);
    r.statuses.insert(S1, forged.clone());
    r.server_sends(MsgType::StatusRes, S1, 0, forged.as_bytes());
    assert_eq!(
        r.line(),
        format!(
            "key-changed alice {} {}",
            k.alice.public().fingerprint(),
            k.mallory.public().fingerprint()
        )
    );
}

/// The kinds of outputs, in order, for checks of the order alone.
fn kinds(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| match o {
            Output::Send { typ, sid, payload } => format!(
                "send {typ:?} {} {}",
                id_hex(*sid),
                String::from_utf8_lossy(payload)
            ),
            Output::Event(e) => format!("print {}", e.script_line().unwrap_or_default()),
            Output::Persist(Persist::Seen(_)) => "persist seen".into(),
            Output::Persist(Persist::Received(last)) => format!("persist received {last:?}"),
            Output::Persist(Persist::Pins(pins)) => format!("persist pins {}", pins.len()),
            Output::Persist(Persist::Names(names)) => format!("persist names {}", names.len()),
            Output::Exit(r) => format!("exit {r:?}"),
        })
        .collect()
}

#[test]
fn a_message_is_printed_then_persisted_then_acknowledged() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    let outputs = r.deliver(
        S1,
        ALICE,
        3,
        &seal_for_carol(S1, ALICE, &keys().alice, "in order"),
    );
    // A crash between any two of these costs a redelivery, never the message.
    assert_eq!(
        kinds(&outputs),
        [
            format!("print msg {sid} alice in order"),
            "persist seen".into(),
            format!("persist received {{{S1}: 3}}"),
            format!("send MsgRes {sid} OK 3"),
        ]
    );
    r.expect_ack(S1, 3);
    // What was persisted is what a restarted client starts from.
    let (_, saved) = r.store.load().unwrap();
    assert_eq!(saved.received.get(&S1), Some(&3));
    assert_eq!(saved.seen.len(), 1);
    assert_eq!(saved.pins.get("alice"), Some(&keys().alice.public()));
    r.finish();
}

#[test]
fn a_seen_file_that_cannot_be_written_is_reported_before_the_ack() {
    let mut r = Rig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    // A directory where the seen file should be: every write to it fails.
    let seen = carol_config_dir(&r).join(mpchat::pins::SEEN_FILE);
    let _ = std::fs::remove_file(&seen);
    std::fs::create_dir(&seen).unwrap();
    r.deliver(
        S1,
        ALICE,
        1,
        &seal_for_carol(S1, ALICE, &keys().alice, "shown anyway"),
    );
    assert_eq!(r.line(), format!("msg {sid} alice shown anyway"));
    let err = r.line();
    assert!(
        err.starts_with("error msg cannot record the message as seen: "),
        "{err}"
    );
    // Shown and its number persisted, so it is acknowledged: holding the ack back
    // would only bring it back as a duplicate.
    r.expect_ack(S1, 1);
    std::fs::remove_dir(&seen).unwrap();
    // The next write after a failure rewrites the file whole.
    r.deliver(
        S1,
        ALICE,
        2,
        &seal_for_carol(S1, ALICE, &keys().alice, "recorded again"),
    );
    assert_eq!(r.line(), format!("msg {sid} alice recorded again"));
    r.expect_ack(S1, 2);
    assert_eq!(e2e::ReplayGuard::load(&seen).unwrap().len(), 2);
    r.finish();
}

/// The config directory behind a core rig's store.
fn carol_config_dir(r: &Rig) -> PathBuf {
    r.store.dir().to_path_buf()
}

// ---------------------------------------------------------------------------------
// Over real TCP: the `mpchat` binary against the fake server, proving the shell
// carries the core's outputs out (frames on the wire with carol's uid in the header,
// lines on stdout, files in the config directory across a restart).

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// One logged-in connection of the fake server.
struct Conn {
    stream: TcpStream,
    sender: mtp::Sender,
    receiver: mtp::Receiver,
    /// What this server answers to a status_req per sid (it may change it at will).
    statuses: HashMap<u64, String>,
}

impl Conn {
    /// Accepts the next connection and runs the server side of the login, checking
    /// carol's password, and gives her the uid [`CAROL`].
    fn accept(listener: &TcpListener) -> Conn {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("the client did not connect: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let frame = mtp::read_frame(&mut stream).expect("a login request");
        let opened =
            ExpectLoginReq::open(&keys().server, &frame).expect("a login request under our key");
        let check = opened
            .check_fresh(now_ns(), DEFAULT_LOGIN_WINDOW, &mut ReplayCache::new(16))
            .expect("a fresh login request");
        assert_eq!(check.username(), "carol");
        assert!(
            check.password() == PASSWORD,
            "the client sent another password"
        );
        let (
            reply,
            Established {
                uid,
                sender,
                receiver,
            },
        ) = check.accept(CAROL).unwrap();
        assert_eq!(uid, CAROL);
        stream.write_all(&reply).unwrap();
        Conn {
            stream,
            sender,
            receiver,
            statuses: HashMap::new(),
        }
    }

    /// Sends one frame; `uid` is 0 for the server's own replies, the author otherwise.
    fn send(&mut self, typ: MsgType, sid: u64, uid: u64, payload: &[u8]) {
        let frame = self.sender.seal(typ, sid, uid, payload).unwrap();
        self.stream.write_all(&frame).unwrap();
    }

    /// The next frame from the client (which must pass every MTP check).
    fn recv(&mut self) -> (Header, Vec<u8>) {
        let frame = match mtp::read_frame(&mut self.stream) {
            Ok(f) => f,
            Err(e) => panic!("no frame from the client: {e}"),
        };
        let (h, p) = self
            .receiver
            .open(&frame)
            .expect("a valid frame from the client");
        assert_eq!(
            h.uid, CAROL,
            "the client must put its own uid in the header"
        );
        (h, p)
    }

    /// The next frame, which must be `typ` for `sid`; returns its payload.
    fn recv_type(&mut self, typ: MsgType, sid: u64) -> Vec<u8> {
        let (h, p) = self.recv();
        assert_eq!(
            (h.typ, id_hex(h.sid)),
            (typ, id_hex(sid)),
            "unexpected frame from the client, payload {:?}",
            String::from_utf8_lossy(&p)
        );
        p
    }

    /// Reads the client's status_req for `sid` and answers it from [`Conn::statuses`].
    fn serve_status(&mut self, sid: u64) {
        self.recv_type(MsgType::StatusReq, sid);
        let text = self
            .statuses
            .get(&sid)
            .cloned()
            .unwrap_or_else(|| "error: not a participant".into());
        self.send(MsgType::StatusRes, sid, 0, text.as_bytes());
    }

    /// Delivers an envelope as message `n` of `sid`, attributed to `author`.
    fn deliver(&mut self, sid: u64, author: u64, n: u64, envelope: &[u8]) {
        let mut payload = n.to_be_bytes().to_vec();
        payload.extend_from_slice(envelope);
        self.send(MsgType::MsgReq, sid, author, &payload);
    }

    /// The next frame must be the client's acknowledgement of `n` in `sid`.
    fn expect_ack(&mut self, sid: u64, n: u64) {
        let p = self.recv_type(MsgType::MsgRes, sid);
        assert_eq!(String::from_utf8_lossy(&p), format!("OK {n}"));
    }

    /// The client must have closed the connection without sending anything more.
    fn expect_closed(&mut self) {
        match mtp::read_frame(&mut self.stream) {
            Err(ReadError::Eof) | Err(ReadError::Io(_)) => {}
            Ok(frame) => {
                let (h, p) = self.receiver.open(&frame).expect("a valid frame");
                panic!(
                    "the client sent {:?} {:?} before leaving",
                    h.typ,
                    String::from_utf8_lossy(&p)
                );
            }
            Err(e) => panic!("the client did not close the connection: {e}"),
        }
    }
}

/// A real `mpchat` process under test and the fake server's connection to it.
struct TcpRig {
    listener: TcpListener,
    addr: String,
    user: User,
    client: Client,
    conn: Conn,
}

impl TcpRig {
    fn start() -> TcpRig {
        let keys = keys();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let user = carol();
        let client = Client::start_at(&addr, &keys.server_pub, &user);
        let conn = Conn::accept(&listener);
        TcpRig {
            listener,
            addr,
            user,
            client,
            conn,
        }
    }

    /// Stops the client and starts it again on the same config directory (pins, seen
    /// message ids and received numbers persist).
    fn restart(&mut self) {
        let old = std::mem::replace(
            &mut self.client,
            Client::start_at(&self.addr, &keys().server_pub, &self.user),
        );
        drop(old);
        self.conn = Conn::accept(&self.listener);
    }

    /// The client's next output line, whatever it is.
    fn line(&mut self) -> String {
        self.client.expect_where("(any line)", |_| true)
    }

    /// Invites the client to `sid` as `creator` and answers its status_req with
    /// `status`; the client pins every key listed and prints the invite.
    fn join(&mut self, sid: u64, creator: &str, creator_uid: u64, status: String) {
        self.conn.statuses.insert(sid, status);
        self.conn.send(MsgType::InviteReq, sid, creator_uid, b"");
        self.conn.serve_status(sid);
        assert_eq!(
            self.client.expect("invite "),
            format!("invite {} {creator}", id_hex(sid))
        );
    }

    /// A round trip through `/status` (sid 0): every frame the client sent before
    /// it has been read, and every line it printed before `status none` is out.
    fn sync(&mut self) {
        self.client.send("/status");
        self.conn.recv_type(MsgType::StatusReq, 0);
        self.conn.send(MsgType::StatusRes, 0, 0, b"OK\n");
        self.client.expect("status none");
    }

    /// Ends the input; the client must exit 0 having sent nothing more. Returns its
    /// whole output, checked to hold no control character.
    fn finish(self) -> Vec<String> {
        let TcpRig {
            client, mut conn, ..
        } = self;
        let (status, transcript) = client.finish();
        assert!(status.success(), "{transcript:#?}");
        conn.expect_closed();
        for l in &transcript {
            assert!(
                !l.chars().any(char::is_control),
                "raw control character in {l:?}"
            );
        }
        transcript
    }
}

#[test]
fn genuine_message_is_printed_then_acknowledged() {
    let mut r = TcpRig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    r.conn.deliver(
        S1,
        ALICE,
        1,
        &seal_for_carol(S1, ALICE, &keys().alice, "hello carol"),
    );
    assert_eq!(r.line(), format!("msg {sid} alice hello carol"));
    r.conn.expect_ack(S1, 1);
    r.finish();
}

#[test]
fn replayed_envelope_is_rejected_under_a_new_number_and_after_a_restart() {
    let mut r = TcpRig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));
    let env = seal_for_carol(S1, ALICE, &keys().alice, "say it once");
    r.conn.deliver(S1, ALICE, 1, &env);
    assert_eq!(r.line(), format!("msg {sid} alice say it once"));
    r.conn.expect_ack(S1, 1);

    // The same envelope as a new message.
    r.conn.deliver(S1, ALICE, 2, &env);
    let err = r.line();
    assert!(
        err.starts_with(&format!("error msg {sid} ")) && err.contains("replay"),
        "{err}"
    );
    r.conn.expect_ack(S1, 2);

    // A redelivery under an old number is dropped silently, but acknowledged again.
    r.conn.deliver(S1, ALICE, 1, &env);
    r.conn.expect_ack(S1, 1);
    r.sync();

    // The client remembers across a restart.
    r.restart();
    r.conn
        .statuses
        .insert(S1, status("alice", &carol_and_alice()));
    r.conn.deliver(S1, ALICE, 3, &env);
    r.conn.serve_status(S1);
    let err = r.line();
    assert!(
        err.starts_with(&format!("error msg {sid} ")) && err.contains("replay"),
        "{err}"
    );
    r.conn.expect_ack(S1, 3);
    let transcript = r.finish();
    assert!(
        !transcript.iter().any(|l| l.starts_with("msg ")),
        "{transcript:#?}"
    );
}

#[test]
fn control_characters_and_fake_event_lines_in_server_replies_are_escaped() {
    let mut r = TcpRig::start();
    let sid = id_hex(S1);
    r.join(S1, "alice", ALICE, status("alice", &carol_and_alice()));

    r.client.send("/init bob");
    r.conn.recv_type(MsgType::InitReq, 0);
    r.conn.send(
        MsgType::InitRes,
        0,
        0,
        b"error: no such user\n\x1b[2Jinit 0000000000000001 ok",
    );
    assert_eq!(
        r.line(),
        "error init no such user\\n\\x1b[2Jinit 0000000000000001 ok"
    );

    r.client.send(&format!("/msg {sid} hello"));
    r.conn.recv_type(MsgType::MsgReq, S1);
    r.conn.send(
        MsgType::MsgRes,
        S1,
        0,
        format!("error: backlog full\r\nmsg {sid} mallory pwned\x1b[0m").as_bytes(),
    );
    assert_eq!(
        r.line(),
        format!("error msg {sid} backlog full\\r\\nmsg {sid} mallory pwned\\x1b[0m")
    );

    r.client.send(&format!("/msg {sid} again"));
    r.conn.recv_type(MsgType::MsgReq, S1);
    r.conn.send(
        MsgType::MsgRes,
        S1,
        0,
        format!("OK 7\nmsg {sid} mallory pwned").as_bytes(),
    );
    assert_eq!(r.line(), format!("sent {sid} 7\\nmsg {sid} mallory pwned"));

    r.client.send(&format!("/status {}", id_hex(S2)));
    r.conn.recv_type(MsgType::StatusReq, S2);
    r.conn.send(
        MsgType::StatusRes,
        S2,
        0,
        format!("error: not a participant\nmsg {sid} mallory pwned").as_bytes(),
    );
    assert_eq!(
        r.line(),
        format!(
            "error status {} not a participant\\nmsg {sid} mallory pwned",
            id_hex(S2)
        )
    );

    r.client.send(&format!("/close {sid}"));
    r.conn.recv_type(MsgType::CloseReq, S1);
    r.conn.send(
        MsgType::CloseRes,
        S1,
        0,
        format!("error: only the creator can close\x07\nclosed {sid}").as_bytes(),
    );
    assert_eq!(
        r.line(),
        format!("error close {sid} only the creator can close\\x07\\nclosed {sid}")
    );

    r.client.send("/status");
    r.conn.recv_type(MsgType::StatusReq, 0);
    r.conn
        .send(MsgType::StatusRes, 0, 0, b"OK\n\x1b[2Jlive mallory\x07\n");
    assert_eq!(r.line(), "status \\x1b[2Jlive mallory\\x07");
    let transcript = r.finish();
    assert!(
        !transcript.iter().any(|l| l.starts_with("closed ")),
        "{transcript:#?}"
    );
}
