//! End-to-end v2 building blocks against an attacker, in memory: a hostile server (it
//! relays, drops, reorders, replays, moves and forges envelopes) and a hostile author
//! (it equivocates). Each test drives the public API of `mpchat::e2e` the way the
//! client will, with the committed TEST-ONLY keys of `tests/vectors`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use mpchat::crypto::{self, Ed25519Signer, RsaPrivate, RsaPublic};
use mpchat::e2e::envelope::{self, Entry, SenderKeyFields};
use mpchat::e2e::members::{Statement, StatementArrival};
use mpchat::e2e::ratchet::{Arrival, ChainKey, MessageKey, MAX_SKIPPED_KEYS};
use mpchat::e2e::sender_key::{
    self, DistributionOutcome, OwnSenderKey, PeerSenderKeys, MAX_KEYS_PER_AUTHOR,
};
use mpchat::e2e::state::SessionState;
use mpchat::e2e::Error;

const SID: u64 = 0x5e55_0000_0000_0001;
const NOW: i64 = 1_767_225_600_000;

struct User {
    name: &'static str,
    uid: u64,
    key: RsaPrivate,
    public: RsaPublic,
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// alice (creator, RSA-2048), bob (3072), carol (4096), mallory (the server's own
/// test key: whoever runs the server).
fn users() -> &'static [User; 4] {
    static USERS: OnceLock<[User; 4]> = OnceLock::new();
    USERS.get_or_init(|| {
        let load = |name: &'static str, file: &str, uid: u64| {
            let key = crypto::read_private_key(&vectors().join(file)).unwrap();
            let public = key.public();
            User {
                name,
                uid,
                key,
                public,
            }
        };
        [
            load("alice", "user_alice_test_key.pem", 0xa1),
            load("bob", "user_bob_test_key.pem", 0xb2),
            load("carol", "user_carol_test_key.pem", 0xc3),
            load("mallory", "server_test_key.pem", 0xd4),
        ]
    })
}

fn alice() -> &'static User {
    &users()[0]
}
fn bob() -> &'static User {
    &users()[1]
}
fn carol() -> &'static User {
    &users()[2]
}
fn mallory() -> &'static User {
    &users()[3]
}

/// Alice's sender key distributed to bob and carol, and bob's and carol's states
/// holding the statement and that key.
fn session() -> (OwnSenderKey, SessionState, SessionState) {
    let (a, b, c) = (alice(), bob(), carol());
    let st = Statement::sign(SID, a.uid, a.name, &[b.name, c.name], 1, &a.key).unwrap();
    let mut own = OwnSenderKey::generate(NOW, None).unwrap();
    let mpk2 = own
        .distribution(
            SID,
            a.uid,
            &a.key,
            &[(b.uid, &b.public), (c.uid, &c.public)],
        )
        .unwrap();
    own.mark_holders(&[b.uid, c.uid]).unwrap();
    let mut states = Vec::new();
    for me in [b, c] {
        let mut s = SessionState::new(SID);
        assert_eq!(
            s.receive_statement(st.bytes(), a.uid, a.name, &a.public),
            Ok(StatementArrival::New)
        );
        let got = s.receive_distribution(&mpk2, a.uid, &a.public, me.uid, &me.key);
        assert!(
            matches!(got, Ok(DistributionOutcome::Stored { .. })),
            "{got:?}"
        );
        states.push(s);
    }
    let c_state = states.pop().unwrap();
    (own, states.pop().unwrap(), c_state)
}

/// What a hostile or far-ahead author seals at any iteration of `own`'s chain (the
/// count rule stops `OwnSenderKey::seal` at 1,000): built by hand from the layout.
fn seal_at(own: &OwnSenderKey, iteration: u32, text: &str) -> Vec<u8> {
    let a = alice();
    let header = envelope::message_header(&envelope::MessageFields {
        key_id: own.key_id(),
        iteration,
        sent_ms: NOW,
    })
    .unwrap();
    let bind = |context: &[u8], rest: &[u8]| {
        let mut v = context.to_vec();
        v.extend_from_slice(&SID.to_be_bytes());
        v.extend_from_slice(&a.uid.to_be_bytes());
        v.extend_from_slice(rest);
        v
    };
    let mk = own
        .chain_key()
        .advanced_to(iteration)
        .unwrap()
        .message_key();
    let mut env = header.to_vec();
    env.extend(mk.seal(
        &bind(sender_key::MESSAGE_AAD_CONTEXT, &header),
        text.as_bytes(),
    ));
    let sig = Ed25519Signer::from_seed(own.signing_seed())
        .sign(&bind(sender_key::MESSAGE_SIG_CONTEXT, &env));
    env.extend_from_slice(&sig);
    env
}

fn open(s: &mut SessionState, env: &[u8]) -> Result<(String, Arrival), Error> {
    s.open_message(env, alice().uid)
        .map(|m| (m.text, m.arrival))
}

// ---------------------------------------------------------------------------------
// Equivocation

#[test]
fn one_message_opens_to_the_same_text_for_every_recipient() {
    let (mut own, mut b, mut c) = session();
    for text in ["first", "second: YES!", "third"] {
        let env = own.seal(SID, alice().uid, NOW, text).unwrap();
        assert_eq!(open(&mut b, &env).unwrap().0, text);
        assert_eq!(open(&mut c, &env).unwrap().0, text);
    }
}

/// A hostile author's `MPK2`: `keys[j]` wrapped for `recipients[j]`, committed to
/// `committed`, validly signed.
fn equivocating_mpk2(
    key_id: u32,
    signer: &Ed25519Signer,
    committed: &[u8; 32],
    recipients: &[(&User, [u8; 32])],
) -> Vec<u8> {
    let a = alice();
    let commitment = sender_key::commitment(SID, a.uid, key_id, 0, committed, &signer.public());
    let wrapped: Vec<(u64, Vec<u8>)> = recipients
        .iter()
        .map(|(u, k)| (u.uid, u.public.oaep_encrypt(k).unwrap()))
        .collect();
    let fields = SenderKeyFields {
        key_id,
        iteration: 0,
        signing_public: signer.public(),
        commitment,
        entries: wrapped
            .iter()
            .map(|(uid, w)| Entry {
                uid: *uid,
                wrapped: w,
            })
            .collect(),
    };
    let signed = envelope::sender_key_signed_part(&fields).unwrap();
    let mut data = sender_key::SENDER_KEY_CONTEXT.to_vec();
    data.extend_from_slice(&SID.to_be_bytes());
    data.extend_from_slice(&a.uid.to_be_bytes());
    data.extend_from_slice(&signed);
    let sig = a.key.pss_sign(&data).unwrap();
    envelope::append_rsa_signature(signed, &sig).unwrap()
}

#[test]
fn an_author_cannot_give_two_recipients_different_chains_in_one_distribution() {
    let (a, b, c) = (alice(), bob(), carol());
    let signer = Ed25519Signer::from_seed(&[9; 32]);
    let (ck_bob, ck_carol) = ([1u8; 32], [2u8; 32]);
    let env = equivocating_mpk2(77, &signer, &ck_bob, &[(b, ck_bob), (c, ck_carol)]);
    let mut bs = SessionState::new(SID);
    let mut cs = SessionState::new(SID);
    assert!(matches!(
        bs.receive_distribution(&env, a.uid, &a.public, b.uid, &b.key),
        Ok(DistributionOutcome::Stored { key_id: 77, .. })
    ));
    assert_eq!(
        cs.receive_distribution(&env, a.uid, &a.public, c.uid, &c.key),
        Err(Error::CommitmentMismatch),
        "the odd one out is refused"
    );
    assert!(cs.peer(a.uid).is_none(), "nothing stored on a mismatch");
    // Whatever the author seals for carol's chain, carol has no key to open it with,
    // and bob cannot open it either: no message reads differently for the two.
    let mut own_for_carol = OwnSenderKey::from_parts(
        77,
        ChainKey::new(ck_carol, 0),
        &[9; 32],
        NOW,
        BTreeSet::new(),
    )
    .unwrap();
    let env = own_for_carol.seal(SID, a.uid, NOW, "28PNO!").unwrap();
    assert_eq!(open(&mut cs, &env), Err(Error::NoSenderKey { key_id: 77 }));
    assert_eq!(open(&mut bs, &env), Err(Error::CannotOpen));
}

#[test]
fn a_second_distribution_of_a_held_key_id_must_derive_from_the_chain_held() {
    let (a, b, c) = (alice(), bob(), carol());
    let signer = Ed25519Signer::from_seed(&[9; 32]);
    let ck = [1u8; 32];
    let to_bob = equivocating_mpk2(77, &signer, &ck, &[(b, ck)]);
    let mut bs = SessionState::new(SID);
    bs.receive_distribution(&to_bob, a.uid, &a.public, b.uid, &b.key)
        .unwrap();
    // The same key id given to a joiner with another chain: bob sees that envelope too
    // (the server delivers every envelope to every member) and refuses it.
    let other = [3u8; 32];
    let to_carol = equivocating_mpk2(77, &signer, &other, &[(c, other)]);
    assert_eq!(
        bs.receive_distribution(&to_carol, a.uid, &a.public, b.uid, &b.key),
        Err(Error::ConflictingSenderKey)
    );
    // Another signing key under the same key id: refused too.
    let to_carol = equivocating_mpk2(77, &Ed25519Signer::from_seed(&[8; 32]), &ck, &[(c, ck)]);
    assert_eq!(
        bs.receive_distribution(&to_carol, a.uid, &a.public, b.uid, &b.key),
        Err(Error::ConflictingSenderKey)
    );
    // An honest joiner distribution at a later iteration is confirmed.
    let honest_later = {
        let own = OwnSenderKey::from_parts(
            77,
            ChainKey::new(ck, 0).advanced_to(5).unwrap(),
            &[9; 32],
            NOW,
            BTreeSet::new(),
        )
        .unwrap();
        own.distribution(SID, a.uid, &a.key, &[(c.uid, &c.public)])
            .unwrap()
    };
    assert_eq!(
        bs.receive_distribution(&honest_later, a.uid, &a.public, b.uid, &b.key),
        Ok(DistributionOutcome::Confirmed { key_id: 77 })
    );
    let mut cs = SessionState::new(SID);
    assert_eq!(
        cs.receive_distribution(&honest_later, a.uid, &a.public, c.uid, &c.key),
        Ok(DistributionOutcome::Stored {
            key_id: 77,
            iteration: 5
        }),
        "a joiner reads from its joining on"
    );
}

// ---------------------------------------------------------------------------------
// Forged, mis-signed and moved envelopes

#[test]
fn forged_and_altered_messages_are_refused_and_change_nothing() {
    let (mut own, mut b, _) = session();
    let a = alice();
    let env = own.seal(SID, a.uid, NOW, "hello").unwrap();
    // The server's forgery: the right key id and iteration, its own signing key.
    let mut forged_key = OwnSenderKey::from_parts(
        own.key_id(),
        ChainKey::new([0; 32], 0),
        &[7; 32],
        NOW,
        BTreeSet::new(),
    )
    .unwrap();
    let forged = forged_key.seal(SID, a.uid, NOW, "send money").unwrap();
    let before = b.encode();
    assert_eq!(open(&mut b, &forged), Err(Error::BadSignature));
    // Every single-bit change to the genuine envelope is refused...
    for i in 0..env.len() {
        let mut bad = env.clone();
        bad[i] ^= 0x01;
        assert!(open(&mut b, &bad).is_err(), "bit flip at {i}");
    }
    // ...before it could move anything.
    assert_eq!(&b.encode()[..], &before[..]);
    assert_eq!(open(&mut b, &env).unwrap().0, "hello");
}

#[test]
fn the_signature_binds_the_session_and_the_author() {
    let (mut own, b, _) = session();
    let a = alice();
    let env = own.seal(SID, a.uid, NOW, "hello").unwrap();
    // Rebuild bob's keys for alice as if they were held in another session or for
    // another author: the same chain and signing key, other binding.
    let mut st = SessionState::decode(&b.encode()).unwrap();
    let held = SessionState::decode(&b.encode()).unwrap();
    let key = held.peer(a.uid).unwrap().keys().next().unwrap();
    let rebuild = || {
        PeerSenderKeys::from_parts(
            vec![sender_key::PeerKey::from_parts(
                key.key_id(),
                *key.signing_public(),
                *key.commitment(),
                key.first_iteration(),
                mpchat::e2e::ratchet::ReceivingChain::new(key.chain().chain_key().clone()),
            )
            .unwrap()],
            vec![],
        )
        .unwrap()
    };
    assert_eq!(
        rebuild().open_message(&env, SID ^ 1, a.uid),
        Err(Error::BadSignature)
    );
    assert_eq!(
        rebuild().open_message(&env, SID, carol().uid),
        Err(Error::BadSignature)
    );
    assert_eq!(
        rebuild().open_message(&env, SID, a.uid).unwrap().text,
        "hello"
    );
    assert_eq!(st.open_message(&env, a.uid).unwrap().text, "hello");
}

#[test]
fn distributions_signed_by_anyone_but_the_pinned_author_key_or_moved_are_refused() {
    let (a, b, m) = (alice(), bob(), mallory());
    let own = OwnSenderKey::generate(NOW, None).unwrap();
    // The server substitutes its own identity key for alice's.
    let by_mallory = own
        .distribution(SID, a.uid, &m.key, &[(b.uid, &b.public)])
        .unwrap();
    let genuine = own
        .distribution(SID, a.uid, &a.key, &[(b.uid, &b.public)])
        .unwrap();
    let mut s = SessionState::new(SID);
    assert_eq!(
        s.receive_distribution(&by_mallory, a.uid, &a.public, b.uid, &b.key),
        Err(Error::BadSignature)
    );
    let mut other = SessionState::new(SID + 1);
    assert_eq!(
        other.receive_distribution(&genuine, a.uid, &a.public, b.uid, &b.key),
        Err(Error::BadSignature),
        "moved to another session"
    );
    assert_eq!(
        s.receive_distribution(&genuine, carol().uid, &a.public, b.uid, &b.key),
        Err(Error::BadSignature),
        "attributed to another author"
    );
    assert!(s.peer(a.uid).is_none() && s.peer(carol().uid).is_none());
    assert!(matches!(
        s.receive_distribution(&genuine, a.uid, &a.public, b.uid, &b.key),
        Ok(DistributionOutcome::Stored { .. })
    ));
    // A distribution without an entry for us stores nothing.
    let mut c = SessionState::new(SID);
    assert_eq!(
        c.receive_distribution(&genuine, a.uid, &a.public, carol().uid, &carol().key),
        Ok(DistributionOutcome::NotForUs)
    );
    assert!(c.peer(a.uid).is_none());
}

#[test]
fn a_ghost_member_cannot_be_added_to_the_signed_list() {
    let (a, b, m) = (alice(), bob(), mallory());
    let st = Statement::sign(SID, a.uid, a.name, &[b.name], 1, &a.key).unwrap();
    assert!(!st.is_member(m.name));
    // The server's own list with mallory in it, signed by the server's key.
    let ghost = Statement::sign(SID, a.uid, a.name, &[b.name, m.name], 1, &m.key).unwrap();
    let mut s = SessionState::new(SID);
    assert_eq!(
        s.receive_statement(ghost.bytes(), a.uid, a.name, &a.public),
        Err(Error::BadSignature)
    );
    // A list of another session, or naming another creator, is refused.
    let elsewhere = Statement::sign(SID + 1, a.uid, a.name, &[b.name, m.name], 1, &a.key).unwrap();
    assert_eq!(
        s.receive_statement(elsewhere.bytes(), a.uid, a.name, &a.public),
        Err(Error::BadSignature)
    );
    let by_mallory = Statement::sign(SID, m.uid, m.name, &[b.name], 1, &m.key).unwrap();
    assert_eq!(
        s.receive_statement(by_mallory.bytes(), a.uid, a.name, &a.public),
        Err(Error::WrongCreator)
    );
    assert_eq!(
        s.receive_statement(st.bytes(), a.uid, a.name, &a.public),
        Ok(StatementArrival::New)
    );
    // A forwarded identical copy is ignored; a second list the creator signed is a
    // conflict, and the first stays.
    assert_eq!(
        s.receive_statement(st.bytes(), a.uid, a.name, &a.public),
        Ok(StatementArrival::Identical)
    );
    let second = Statement::sign(SID, a.uid, a.name, &[b.name, m.name], 2, &a.key).unwrap();
    assert_eq!(
        s.receive_statement(second.bytes(), a.uid, a.name, &a.public),
        Err(Error::ConflictingStatement)
    );
    assert_eq!(s.statement.as_ref(), Some(&st));
    assert!(!s.statement.as_ref().unwrap().is_member(m.name));
}

// ---------------------------------------------------------------------------------
// The transcript: gaps, replays, order, bounds

#[test]
fn gaps_are_reported_with_their_size_and_late_messages_are_still_read() {
    let (mut own, mut b, _) = session();
    let envs: Vec<Vec<u8>> = (0..6)
        .map(|i| own.seal(SID, alice().uid, NOW, &format!("m{i}")).unwrap())
        .collect();
    assert_eq!(
        open(&mut b, &envs[0]).unwrap(),
        ("m0".into(), Arrival::InOrder)
    );
    assert_eq!(
        open(&mut b, &envs[3]).unwrap(),
        ("m3".into(), Arrival::AfterGap { missing: 2 })
    );
    assert_eq!(
        open(&mut b, &envs[2]).unwrap(),
        ("m2".into(), Arrival::Late)
    );
    assert_eq!(
        open(&mut b, &envs[1]).unwrap(),
        ("m1".into(), Arrival::Late)
    );
    assert_eq!(
        open(&mut b, &envs[4]).unwrap(),
        ("m4".into(), Arrival::InOrder)
    );
    for (i, e) in envs.iter().enumerate().take(5) {
        assert_eq!(
            open(&mut b, e),
            Err(Error::OldOrReplayed {
                iteration: i as u32
            }),
            "replay of {i}"
        );
    }
    assert_eq!(
        open(&mut b, &envs[5]).unwrap(),
        ("m5".into(), Arrival::InOrder)
    );
}

#[test]
fn messages_out_of_order_within_the_bound_are_all_read_once() {
    let (mut own, mut b, _) = session();
    let envs: Vec<Vec<u8>> = (0..50)
        .map(|i| own.seal(SID, alice().uid, NOW, &format!("m{i}")).unwrap())
        .collect();
    let (text, arrival) = open(&mut b, &envs[49]).unwrap();
    assert_eq!(
        (text.as_str(), arrival),
        ("m49", Arrival::AfterGap { missing: 49 })
    );
    for i in (0..49).rev() {
        assert_eq!(
            open(&mut b, &envs[i]).unwrap(),
            (format!("m{i}"), Arrival::Late)
        );
    }
    assert_eq!(b.peer(alice().uid).unwrap().skipped_len(), 0);
}

#[test]
fn a_jump_past_the_forward_bound_is_refused_and_changes_nothing() {
    let (mut own, mut b, _) = session();
    let first = own.seal(SID, alice().uid, NOW, "first").unwrap();
    // The author's chain moves on 2,001 iterations (the server withheld them).
    let too_far = seal_at(&own, 2_001, "far");
    let before = b.encode();
    assert_eq!(
        open(&mut b, &too_far),
        Err(Error::TooFarAhead { skipped: 2_001 })
    );
    assert_eq!(&b.encode()[..], &before[..], "nothing changed");
    assert_eq!(open(&mut b, &first).unwrap().1, Arrival::InOrder);
    // Now it is exactly at the bound: read, with the gap reported.
    assert_eq!(
        open(&mut b, &too_far).unwrap().1,
        Arrival::AfterGap { missing: 2_000 }
    );
}

#[test]
fn at_most_2000_skipped_keys_are_kept_per_author_oldest_first() {
    let (a, b) = (alice(), bob());
    let mut bs = SessionState::new(SID);
    let mut owns = Vec::new();
    for _ in 0..2 {
        let own = OwnSenderKey::generate(NOW, owns.last().map(OwnSenderKey::key_id)).unwrap();
        let mpk2 = own
            .distribution(SID, a.uid, &a.key, &[(b.uid, &b.public)])
            .unwrap();
        bs.receive_distribution(&mpk2, a.uid, &a.public, b.uid, &b.key)
            .unwrap();
        owns.push(own);
    }
    // 1,500 skipped under the first key, then 1,500 under the second: 3,000 > 2,000,
    // so the first key's oldest 1,000 go.
    let ahead = |own: &OwnSenderKey, i: u32| seal_at(own, i, "x");
    let e1 = ahead(&owns[0], 1_500);
    let e2 = ahead(&owns[1], 1_500);
    assert_eq!(
        open(&mut bs, &e1).unwrap().1,
        Arrival::AfterGap { missing: 1_500 }
    );
    assert_eq!(
        open(&mut bs, &e2).unwrap().1,
        Arrival::AfterGap { missing: 1_500 }
    );
    let peer = bs.peer(a.uid).unwrap();
    assert_eq!(peer.skipped_len(), MAX_SKIPPED_KEYS);
    let first = peer.keys().next().unwrap();
    assert_eq!(first.chain().skipped_len(), 500);
    assert_eq!(first.chain().skipped().next().unwrap().iteration(), 1_000);
    let old = ahead(&owns[0], 999);
    assert_eq!(
        open(&mut bs, &old),
        Err(Error::OldOrReplayed { iteration: 999 })
    );
    let kept = ahead(&owns[0], 1_000);
    assert_eq!(open(&mut bs, &kept).unwrap().1, Arrival::Late);
    // The state with 2,000 skipped keys round-trips.
    let bytes = bs.encode();
    assert_eq!(
        &SessionState::decode(&bytes).unwrap().encode()[..],
        &bytes[..]
    );
}

#[test]
fn rotated_keys_are_kept_four_deep_and_an_old_key_cannot_be_replayed_back() {
    let (a, b) = (alice(), bob());
    let mut bs = SessionState::new(SID);
    let mut distributions = Vec::new();
    let mut messages = Vec::new();
    let mut prev = None;
    for round in 0..6 {
        let mut own = OwnSenderKey::generate(NOW, prev).unwrap();
        prev = Some(own.key_id());
        let mpk2 = own
            .distribution(SID, a.uid, &a.key, &[(b.uid, &b.public)])
            .unwrap();
        bs.receive_distribution(&mpk2, a.uid, &a.public, b.uid, &b.key)
            .unwrap();
        let msg = own
            .seal(SID, a.uid, NOW, &format!("round {round}"))
            .unwrap();
        assert_eq!(open(&mut bs, &msg).unwrap().0, format!("round {round}"));
        distributions.push(mpk2);
        messages.push(msg);
    }
    assert_eq!(bs.peer(a.uid).unwrap().keys().count(), MAX_KEYS_PER_AUTHOR);
    // The server replays the first key's distribution, then its message.
    assert!(matches!(
        bs.receive_distribution(&distributions[0], a.uid, &a.public, b.uid, &b.key),
        Err(Error::RetiredSenderKey { .. })
    ));
    assert!(matches!(
        open(&mut bs, &messages[0]),
        Err(Error::NoSenderKey { .. })
    ));
    // A replay of a held key's distribution changes nothing; its message stays read.
    assert!(matches!(
        bs.receive_distribution(&distributions[5], a.uid, &a.public, b.uid, &b.key),
        Ok(DistributionOutcome::Unchecked { .. } | DistributionOutcome::Confirmed { .. })
    ));
    assert!(matches!(
        open(&mut bs, &messages[5]),
        Err(Error::OldOrReplayed { .. })
    ));
}

// ---------------------------------------------------------------------------------
// Forward secrecy

/// Tries every 32-byte window of `bytes` as a chain key (at the message's iteration and
/// up to 64 iterations before it), as a message key seed, and as an AES key with the
/// message's true nonce, against `env`. Returns how many opened it.
fn windows_that_open(bytes: &[u8], env: &[u8], nonce: &[u8; 12]) -> usize {
    let view = envelope::parse_message(env).unwrap();
    let i = view.fields.iteration;
    let mut aad = sender_key::MESSAGE_AAD_CONTEXT.to_vec();
    aad.extend_from_slice(&SID.to_be_bytes());
    aad.extend_from_slice(&alice().uid.to_be_bytes());
    aad.extend_from_slice(view.header);
    let mut opened = 0;
    for w in bytes.windows(32) {
        let w: [u8; 32] = w.try_into().unwrap();
        let start = i.saturating_sub(64);
        let mut ck = ChainKey::new(w, start);
        loop {
            if ck.message_key().open(&aad, view.sealed).is_ok() {
                opened += 1;
            }
            if ck.iteration() == i {
                break;
            }
            ck = ck.next().unwrap();
        }
        if MessageKey::from_seed(i, &w).open(&aad, view.sealed).is_ok() {
            opened += 1;
        }
        if crypto::aes256gcm_open(&w, nonce, &aad, view.sealed).is_ok() {
            opened += 1;
        }
    }
    opened
}

#[test]
fn neither_the_readers_nor_the_senders_stored_state_opens_a_message_already_read() {
    let (mut own, mut b, _) = session();
    let a = alice();
    // A few messages with a gap, so bob's state holds skipped keys of other iterations.
    let envs: Vec<Vec<u8>> = (0..6)
        .map(|i| own.seal(SID, a.uid, NOW, &format!("secret {i}")).unwrap())
        .collect();
    let recorded = &envs[2];
    let nonce: [u8; 12] = {
        let bs = SessionState::decode(&b.encode()).unwrap();
        let ck = bs
            .peer(a.uid)
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .chain()
            .chain_key()
            .clone();
        ck.advanced_to(2).unwrap().message_key().bytes()[32..]
            .try_into()
            .unwrap()
    };
    assert_eq!(open(&mut b, recorded).unwrap().0, "secret 2");
    assert_eq!(open(&mut b, &envs[5]).unwrap().0, "secret 5");
    assert_eq!(b.peer(a.uid).unwrap().skipped_len(), 4, "0, 1, 3, 4 kept");
    let mut sender_state = SessionState::new(SID);
    sender_state.own = Some(own);
    for (who, bytes) in [("bob", b.encode()), ("alice", sender_state.encode())] {
        // Fed back: the state refuses it as old.
        let mut again = SessionState::decode(&bytes).unwrap();
        if who == "bob" {
            assert_eq!(
                open(&mut again, recorded),
                Err(Error::OldOrReplayed { iteration: 2 })
            );
        }
        assert_eq!(
            windows_that_open(&bytes, recorded, &nonce),
            0,
            "{who}'s state bytes open a message already read"
        );
    }
}

#[test]
fn the_forward_secrecy_check_finds_a_chain_key_that_was_not_yet_used() {
    let (mut own, b, _) = session();
    let env = own.seal(SID, alice().uid, NOW, "not read yet").unwrap();
    let bytes = b.encode();
    let ck = SessionState::decode(&bytes)
        .unwrap()
        .peer(alice().uid)
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .chain()
        .chain_key()
        .clone();
    let nonce: [u8; 12] = ck.message_key().bytes()[32..].try_into().unwrap();
    assert!(windows_that_open(&bytes, &env, &nonce) > 0);
}

// ---------------------------------------------------------------------------------
// The state file

/// xorshift64*, for reproducible corruption.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn damaged_state_bytes_are_an_error_never_a_panic() {
    let (mut own, mut b, _) = session();
    let e0 = own.seal(SID, alice().uid, NOW, "a").unwrap();
    let _skipped = own.seal(SID, alice().uid, NOW, "b").unwrap();
    let e2 = own.seal(SID, alice().uid, NOW, "c").unwrap();
    open(&mut b, &e0).unwrap();
    open(&mut b, &e2).unwrap();
    b.own = Some(own);
    b.last_n = 17;
    let good = b.encode();
    assert_eq!(
        &SessionState::decode(&good).unwrap().encode()[..],
        &good[..]
    );
    for len in 0..good.len() {
        assert!(SessionState::decode(&good[..len]).is_err(), "cut to {len}");
    }
    let mut rng = Rng(0x5eed);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut bad = good.to_vec();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % bad.len() as u64) as usize;
            match rng.next() % 4 {
                0 => bad[at] ^= 1 << (rng.next() % 8),
                1 => bad[at] = rng.next() as u8,
                2 => {
                    bad.remove(at);
                }
                _ => bad.insert(at, rng.next() as u8),
            }
        }
        if let Ok(s) = SessionState::decode(&bad) {
            // Whatever decodes re-encodes to exactly the bytes it came from.
            assert_eq!(&s.encode()[..], &bad[..]);
            accepted += 1;
        }
    }
    // Key bytes are not checkable, so some corruptions decode; most do not.
    assert!(accepted < 20_000);
}
