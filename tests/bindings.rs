//! Key bindings over a real `mpchatd` (issue 11, required property 3): one key per
//! account, bound the first time the server sees it; the key-squatting attack is
//! refused and leaves the owner working; another key from the same account is
//! refused; an explicit replacement signed by the bound key rebinds and is pushed to
//! the session's members; `mpchatd reset-key` clears a binding, with the server
//! running or stopped; bindings survive restarts and compaction.

mod common;

use std::path::Path;
use std::process::Command;

use common::{temp_dir, text, Raw, Server};
use mpchat::bindings::replacement_proof;
use mpchat::crypto::{RsaPrivate, RsaPublic};
use mpchat::mtp::MsgType;
use mpchat::proto::{Answer, InitReq, InviteRes, KeyReplaceReq, StatusRes};

fn pw(user: &str) -> String {
    format!("pw-{user}")
}

fn login(server: &Server, user: &str) -> Raw {
    Raw::login(server, user, &pw(user))
}

fn add_users(server: &Server, names: &[&str]) {
    for n in names {
        server.add_user(n, &pw(n));
    }
}

fn new_key() -> RsaPrivate {
    RsaPrivate::generate(2048).unwrap()
}

fn line(key: &RsaPrivate) -> String {
    key.public().to_base64()
}

/// init_req with `key` inviting `invitees`; returns init_res's sid and payload.
fn init(raw: &mut Raw, key: &str, invitees: &[&str]) -> (u64, String) {
    let req = InitReq {
        key: key.to_string(),
        invitees: invitees.iter().map(|s| s.to_string()).collect(),
    };
    raw.send(InitReq::TYPE, 0, &req.encode());
    let (h, p) = raw.recv_type(MsgType::InitRes);
    (h.sid, text(&p))
}

/// A key replacement request; returns init_res's sid and payload.
fn replace(raw: &mut Raw, req: &KeyReplaceReq) -> (u64, String) {
    raw.send(KeyReplaceReq::TYPE, 0, &req.encode());
    let (h, p) = raw.recv_type(MsgType::InitRes);
    (h.sid, text(&p))
}

/// The key `uid` has in the status of `sid` as `raw` asks for it.
fn key_in_status(raw: &mut Raw, sid: u64, uid: u64) -> (Answer, Option<String>) {
    raw.send(MsgType::StatusReq, sid, b"");
    loop {
        let (h, p) = raw.recv_type(MsgType::StatusRes);
        if h.sid != sid {
            continue;
        }
        let Ok(StatusRes::Session(st)) = StatusRes::decode(sid, &p) else {
            panic!("not a status: {}", text(&p));
        };
        let p = st.participant(uid).expect("listed");
        return (p.answer, p.key.clone());
    }
}

const DIFFERS: &str = "error: key differs from the one bound to your account";
const ANOTHERS: &str = "error: key belongs to another user";

#[test]
fn key_squatting_is_refused_and_the_owner_keeps_using_the_key() {
    let server = Server::start(&[]);
    add_users(&server, &["alice", "bob", "carol", "mallory"]);
    let bobs = line(&new_key());
    let mut bob = login(&server, "bob");
    assert_eq!(
        init(&mut bob, &bobs, &["carol"]).1,
        "OK",
        "bob's key is bound"
    );
    // mallory presents bob's key as her own: refused, nothing made.
    let mut mallory = login(&server, "mallory");
    let (sid, reply) = init(&mut mallory, &bobs, &["carol"]);
    assert_eq!((sid, reply.as_str()), (0, ANOTHERS));
    // ... nor can she accept an invitation with it: no reply, still invited.
    let mut alice = login(&server, "alice");
    let alices = line(&new_key());
    alice.send(
        InitReq::TYPE,
        0,
        &InitReq {
            key: alices.clone(),
            invitees: vec!["mallory".into()],
        }
        .encode(),
    );
    let (h, _) = mallory.recv_type(MsgType::InviteReq);
    let sid = h.sid;
    mallory.send(
        InviteRes::TYPE,
        sid,
        &InviteRes::Accept(bobs.clone()).encode(),
    );
    let me = mallory.uid;
    let (answer, key) = key_in_status(&mut mallory, sid, me);
    assert_eq!(
        (answer, key),
        (Answer::Invited, None),
        "mallory's answer changed nothing"
    );
    // bob's own init still works, and mallory can still join with a key of her own.
    assert_eq!(init(&mut bob, &bobs, &["carol"]).1, "OK");
    let malloryz = line(&new_key());
    mallory.send(
        InviteRes::TYPE,
        sid,
        &InviteRes::Accept(malloryz.clone()).encode(),
    );
    assert_eq!(text(&alice.recv_type(MsgType::InitRes).1), "OK");
    assert_eq!(
        key_in_status(&mut alice, sid, mallory.uid),
        (Answer::Accepted, Some(malloryz))
    );
    assert!(server.log().contains("key belongs to another user"));
}

#[test]
fn another_key_from_the_same_account_is_refused_in_init_and_in_accept() {
    let server = Server::start(&[]);
    add_users(&server, &["alice", "bob", "carol"]);
    let (first, second) = (line(&new_key()), line(&new_key()));
    let mut alice = login(&server, "alice");
    assert_eq!(init(&mut alice, &first, &["carol"]).1, "OK");
    let (sid, reply) = init(&mut alice, &second, &["carol"]);
    assert_eq!((sid, reply.as_str()), (0, DIFFERS));

    let mut bob = login(&server, "bob");
    let bobs = line(&new_key());
    assert_eq!(init(&mut bob, &bobs, &["carol"]).1, "OK");
    alice.send(
        InitReq::TYPE,
        0,
        &InitReq {
            key: first.clone(),
            invitees: vec!["bob".into()],
        }
        .encode(),
    );
    let (h, _) = bob.recv_type(MsgType::InviteReq);
    let sid = h.sid;
    // Another key than bob's: treated as an invalid key (no reply, no change).
    bob.send(InviteRes::TYPE, sid, &InviteRes::Accept(second).encode());
    let me = bob.uid;
    assert_eq!(key_in_status(&mut bob, sid, me), (Answer::Invited, None));
    bob.send(
        InviteRes::TYPE,
        sid,
        &InviteRes::Accept(bobs.clone()).encode(),
    );
    assert_eq!(text(&alice.recv_type(MsgType::InitRes).1), "OK");
    assert_eq!(
        key_in_status(&mut alice, sid, bob.uid),
        (Answer::Accepted, Some(bobs))
    );
}

#[test]
fn a_replacement_signed_by_the_bound_key_rebinds_and_is_pushed_to_the_members() {
    let server = Server::start(&["--invite-wait", "1"]);
    add_users(&server, &["alice", "bob", "carol", "dave"]);
    let (old, new) = (new_key(), new_key());
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    alice.send(
        InitReq::TYPE,
        0,
        &InitReq {
            key: line(&old),
            invitees: vec!["bob".into()],
        }
        .encode(),
    );
    let (h, _) = bob.recv_type(MsgType::InviteReq);
    let sid = h.sid;
    let bobs = line(&new_key());
    bob.send(
        InviteRes::TYPE,
        sid,
        &InviteRes::Accept(bobs.clone()).encode(),
    );
    assert_eq!(text(&alice.recv_type(MsgType::InitRes).1), "OK");
    // Drain the go-live pushes.
    key_in_status(&mut bob, sid, alice.uid);

    let good = KeyReplaceReq {
        key: line(&new),
        proof: replacement_proof(&old, alice.uid, &new.public()).unwrap(),
    };
    // A proof by another key, for another uid, or garbage: refused, nothing changes.
    let stranger = new_key();
    for (req, reason) in [
        (
            KeyReplaceReq {
                proof: replacement_proof(&stranger, alice.uid, &new.public()).unwrap(),
                ..good.clone()
            },
            "error: key replacement not signed by your current key",
        ),
        (
            KeyReplaceReq {
                proof: replacement_proof(&old, bob.uid, &new.public()).unwrap(),
                ..good.clone()
            },
            "error: key replacement not signed by your current key",
        ),
        (
            KeyReplaceReq {
                proof: "AAAA".into(),
                ..good.clone()
            },
            "error: key replacement not signed by your current key",
        ),
        (
            KeyReplaceReq {
                key: bobs.clone(),
                proof: replacement_proof(&old, alice.uid, &RsaPublic::from_base64(&bobs).unwrap())
                    .unwrap(),
            },
            ANOTHERS,
        ),
    ] {
        assert_eq!(replace(&mut alice, &req), (0, reason.to_string()));
    }
    alice.send(InitReq::TYPE, 0, b"KEY PROOF\nbob\n");
    assert_eq!(
        text(&alice.recv_type(MsgType::InitRes).1),
        "error: malformed key replacement"
    );
    assert_eq!(
        key_in_status(&mut bob, sid, alice.uid).1,
        Some(line(&old)),
        "unchanged"
    );

    // The real one: OK with sid 0, and bob is pushed the status with the new key.
    assert_eq!(replace(&mut alice, &good), (0, "OK".to_string()));
    loop {
        let (h, p) = bob.recv_type(MsgType::StatusRes);
        if h.sid != sid {
            continue;
        }
        let Ok(StatusRes::Session(st)) = StatusRes::decode(sid, &p) else {
            continue;
        };
        if st.participant(alice.uid).and_then(|p| p.key.clone()) == Some(line(&new)) {
            break;
        }
    }
    // The new key is the account's now; the old one is refused.
    assert_eq!(init(&mut alice, &line(&new), &["carol"]).1, "OK");
    assert_eq!(init(&mut alice, &line(&old), &["carol"]).1, DIFFERS);
    // The same request again (a retry after a lost reply: the proof is by the old key,
    // which is no longer bound) is answered OK, and changes nothing.
    assert_eq!(replace(&mut alice, &good), (0, "OK".to_string()));
    assert_eq!(init(&mut alice, &line(&old), &["carol"]).1, DIFFERS);
    // Replacing with the key already bound is a harmless OK.
    let again = KeyReplaceReq {
        key: line(&new),
        proof: replacement_proof(&new, alice.uid, &new.public()).unwrap(),
    };
    assert_eq!(replace(&mut alice, &again), (0, "OK".to_string()));
    // An account with no key bound yet binds the new one without a proof check.
    let mut dave = login(&server, "dave");
    let daves = new_key();
    let unsigned = KeyReplaceReq {
        key: line(&daves),
        proof: "AAAA".into(),
    };
    assert_eq!(replace(&mut dave, &unsigned), (0, "OK".to_string()));
    assert_eq!(init(&mut dave, &line(&new_key()), &["carol"]).1, DIFFERS);
}

fn mpchatd(state: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mpchatd"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reset_key_clears_a_binding_with_the_server_running_or_stopped() {
    let state = temp_dir("reset");
    let mut server = Server::start_in(&state, &[]);
    add_users(&server, &["alice", "bob", "carol"]);
    let mut alice = login(&server, "alice");
    let (k1, k2, k3) = (line(&new_key()), line(&new_key()), line(&new_key()));
    assert_eq!(init(&mut alice, &k1, &["carol"]).1, "OK");
    assert_eq!(init(&mut alice, &k2, &["carol"]).1, DIFFERS);

    let (code, out, err) = mpchatd(&state, &["reset-key", "alice"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("cleared the key bound to alice"), "{out}");
    assert_eq!(
        init(&mut alice, &k2, &["carol"]).1,
        "OK",
        "the next key binds"
    );
    assert_eq!(init(&mut alice, &k1, &["carol"]).1, DIFFERS);
    let (code, out, _) = mpchatd(&state, &["reset-key", "bob"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("bob has no key bound"), "{out}");
    let (code, _, err) = mpchatd(&state, &["reset-key", "zed"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no user zed") && err.lines().count() == 1,
        "{err}"
    );
    let (code, _, err) = mpchatd(&state, &["reset-key"]);
    assert_eq!(code, Some(2), "{err}");
    drop(alice);

    // Stopped: the change goes into the journal under the lock.
    server.kill();
    let (code, out, err) = mpchatd(&state, &["reset-key", "alice"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("cleared"), "{out}");
    let server = Server::start_in(&state, &[]);
    let mut alice = login(&server, "alice");
    assert_eq!(init(&mut alice, &k3, &["carol"]).1, "OK");
    assert_eq!(init(&mut alice, &k2, &["carol"]).1, DIFFERS);
}

#[test]
fn bindings_survive_a_restart_and_a_compaction() {
    let state = temp_dir("bound");
    let mut server = Server::start_in(&state, &["--compact-bytes", "1"]);
    add_users(&server, &["alice", "bob", "carol"]);
    let (ka, kb) = (line(&new_key()), line(&new_key()));
    {
        let mut alice = login(&server, "alice");
        let mut bob = login(&server, "bob");
        assert_eq!(init(&mut alice, &ka, &["carol"]).1, "OK");
        assert_eq!(init(&mut bob, &kb, &["carol"]).1, "OK");
    }
    server.kill();
    let server = Server::start_in(&state, &[]);
    let mut alice = login(&server, "alice");
    let mut bob = login(&server, "bob");
    assert_eq!(init(&mut alice, &kb, &["carol"]).1, ANOTHERS);
    assert_eq!(init(&mut bob, &ka, &["carol"]).1, ANOTHERS);
    assert_eq!(init(&mut alice, &line(&new_key()), &["carol"]).1, DIFFERS);
    assert_eq!(init(&mut alice, &ka, &["carol"]).1, "OK");
}
