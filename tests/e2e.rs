//! End-to-end envelopes, the replay guard and key pins, through the public API only.
//!
//! Some envelopes here are built by hand from the documented layout (not through
//! `e2e::seal`), so the tests also check that the code and the manual agree.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mpchat::crypto::{AeadKey, RsaPrivate, RsaPublic};
use mpchat::e2e::{self, E2eError, ReplayGuard};
use mpchat::pins::{self, KnownKeys, PinError, PinStatus};
use mpchat::proto::MAX_ENVELOPE_LEN;

const SID: u64 = 0x1111_2222_3333_4444;
const AUTHOR: u64 = 0xa0a0_0000_0000_0001;
/// Number of test keys: an author, ten recipients, one outsider.
const KEYS: usize = 12;

/// RSA-2048 keys, generated once per test binary (key generation is the slow part),
/// on two threads.
fn keys() -> &'static [RsaPrivate] {
    static KEYS_CELL: OnceLock<Vec<RsaPrivate>> = OnceLock::new();
    KEYS_CELL.get_or_init(|| {
        let half = std::thread::spawn(|| {
            (0..KEYS / 2)
                .map(|_| RsaPrivate::generate(2048).unwrap())
                .collect::<Vec<_>>()
        });
        let mut v: Vec<RsaPrivate> = (0..KEYS - KEYS / 2)
            .map(|_| RsaPrivate::generate(2048).unwrap())
            .collect();
        v.extend(half.join().unwrap());
        v
    })
}

fn author_key() -> &'static RsaPrivate {
    &keys()[0]
}

/// Recipient `i` (0..10): uid and key. Uids are deliberately not in key order.
fn recipient(i: usize) -> (u64, &'static RsaPrivate) {
    (0x5000_0000_0000_0000 - (i as u64) * 0x1000, &keys()[1 + i])
}

fn outsider() -> (u64, &'static RsaPrivate) {
    (0x7777_0000_0000_0007, &keys()[11])
}

fn publics(n: usize) -> Vec<(u64, RsaPublic)> {
    (0..n)
        .map(|i| {
            let (uid, k) = recipient(i);
            (uid, k.public())
        })
        .collect()
}

fn seal_to(n: usize, text: &str) -> Vec<u8> {
    let pubs = publics(n);
    let refs: Vec<(u64, &RsaPublic)> = pubs.iter().map(|(u, k)| (*u, k)).collect();
    e2e::seal(SID, AUTHOR, author_key(), &refs, text).unwrap()
}

fn open_as(i: usize, env: &[u8]) -> Result<e2e::Opened, E2eError> {
    let (uid, key) = recipient(i);
    e2e::open(SID, AUTHOR, &author_key().public(), uid, key, env)
}

fn is_rejected_untrusted(r: &Result<e2e::Opened, E2eError>) -> bool {
    matches!(
        r,
        Err(E2eError::Malformed(_)) | Err(E2eError::BadSignature) | Err(E2eError::TooLarge)
    )
}

// ---- a second encoder, written from the manual's table ----

fn content_aad(sid: u64, author: u64) -> Vec<u8> {
    let mut aad = b"mpchat v1 e2e".to_vec();
    aad.extend_from_slice(&sid.to_be_bytes());
    aad.extend_from_slice(&author.to_be_bytes());
    aad
}

/// Seals `plain` under `key` as the content field (ciphertext then 12-byte mac).
fn hand_content(key: [u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    let mac = AeadKey::new(key).seal_in_place_raw([0; 12], aad, &mut buf);
    buf.extend_from_slice(&mac);
    buf
}

/// Appends the length and signature to `signed` (every byte before the signature
/// length field), signing as `signer` for (`sid`, `author`).
fn hand_sign(sid: u64, author: u64, signer: &RsaPrivate, mut signed: Vec<u8>) -> Vec<u8> {
    let mut data = b"mpchat v1 e2e sig".to_vec();
    data.extend_from_slice(&sid.to_be_bytes());
    data.extend_from_slice(&author.to_be_bytes());
    data.extend_from_slice(&signed);
    let sig = signer.pss_sign(&data).unwrap();
    signed.extend_from_slice(&(sig.len() as u16).to_be_bytes());
    signed.extend_from_slice(&sig);
    signed
}

/// The signed part of an envelope from raw entries and a sealed content field.
fn hand_signed_part(entries: &[(u64, Vec<u8>)], content: &[u8]) -> Vec<u8> {
    let mut v = b"MPE1".to_vec();
    v.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (uid, wrapped) in entries {
        v.extend_from_slice(&uid.to_be_bytes());
        v.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
        v.extend_from_slice(wrapped);
    }
    v.extend_from_slice(&(content.len() as u32).to_be_bytes());
    v.extend_from_slice(content);
    v
}

/// A whole envelope to recipients 0..n (sorted by uid), carrying `plain` as the inner
/// plaintext and `wrapped_key` as the wrapped content key.
fn hand_envelope(n: usize, wrapped_key: &[u8], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let content_key = [0x42u8; 32];
    let mut entries: Vec<(u64, Vec<u8>)> = (0..n)
        .map(|i| {
            let (uid, k) = recipient(i);
            (uid, k.public().oaep_encrypt(wrapped_key).unwrap())
        })
        .collect();
    entries.sort_by_key(|e| e.0);
    let content = hand_content(content_key, aad, plain);
    hand_sign(
        SID,
        AUTHOR,
        author_key(),
        hand_signed_part(&entries, &content),
    )
}

/// Offset of the signature length field of an envelope (the signed part's length).
fn signed_len(env: &[u8]) -> usize {
    e2e::parse(env).unwrap().signed.len()
}

// ---- round trips ----

#[test]
fn every_recipient_of_1_3_and_10_opens_the_same_message() {
    for n in [1, 3, 10] {
        let text = format!("hello to {n} people: ünïcödé ✓");
        let env = seal_to(n, &text);
        let mut uids: Vec<u64> = (0..n).map(|i| recipient(i).0).collect();
        uids.sort();
        let mut ids = Vec::new();
        for i in 0..n {
            let got = open_as(i, &env).unwrap();
            assert_eq!(got.text, text);
            assert_eq!(got.recipients, uids);
            ids.push(got.msg_id);
        }
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "one message, one id");
        let again = seal_to(n, &text);
        assert_ne!(again, env, "fresh content key and id every time");
        assert_ne!(open_as(0, &again).unwrap().msg_id, ids[0]);
    }
}

#[test]
fn the_envelope_does_not_contain_the_text() {
    let text = "a secret phrase that must not appear in the clear";
    let env = seal_to(3, text);
    assert!(!env.windows(text.len()).any(|w| w == text.as_bytes()));
}

#[test]
fn an_envelope_built_from_the_documented_layout_opens() {
    let content_key = [0x42u8; 32];
    let mut plain = vec![9u8; 16];
    plain.extend_from_slice(b"by the book");
    let env = hand_envelope(3, &content_key, &content_aad(SID, AUTHOR), &plain);
    for i in 0..3 {
        let got = open_as(i, &env).unwrap();
        assert_eq!(got.text, "by the book");
        assert_eq!(got.msg_id, [9u8; 16]);
    }
}

#[test]
fn a_participant_left_out_is_told_it_is_not_a_recipient() {
    let env = seal_to(3, "not for you");
    let (uid, key) = outsider();
    assert_eq!(
        e2e::open(SID, AUTHOR, &author_key().public(), uid, key, &env),
        Err(E2eError::NotARecipient)
    );
    // Claiming a recipient's uid with another key does not help either.
    let (their_uid, _) = recipient(0);
    assert_eq!(
        e2e::open(SID, AUTHOR, &author_key().public(), their_uid, key, &env),
        Err(E2eError::Decrypt)
    );
}

// ---- what the server might do ----

#[test]
fn changing_any_byte_of_a_one_recipient_envelope_is_rejected() {
    let env = seal_to(1, "tamper with me");
    assert!(open_as(0, &env).is_ok());
    for pos in 0..env.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = env.clone();
            bad[pos] ^= mask;
            let r = open_as(0, &bad);
            assert!(is_rejected_untrusted(&r), "byte {pos} ^ {mask:#x}: {r:?}");
        }
    }
}

#[test]
fn changing_bytes_in_every_field_of_a_ten_recipient_envelope_is_rejected() {
    let env = seal_to(10, "ten people are reading this");
    let view = e2e::parse(&env).unwrap();
    let sig_field = view.signed.len();
    // Every header byte, every entry's uid and length, both ends of every wrapped key,
    // the content length, content and mac ends, signature length and ends; then a
    // stride through everything.
    let mut positions: Vec<usize> = (0..6).collect();
    let mut at = 6;
    for _ in 0..10 {
        positions.extend(at..at + 10);
        positions.extend([at + 10, at + 10 + 255]);
        at += 10 + 256;
    }
    positions.extend(at..at + 4);
    positions.extend([at + 4, sig_field - 13, sig_field - 12, sig_field - 1]);
    positions.extend([sig_field, sig_field + 1, sig_field + 2, env.len() - 1]);
    positions.extend((0..env.len()).step_by(17));
    for pos in positions {
        let mut bad = env.clone();
        bad[pos] ^= 0x04;
        for i in [0, 9] {
            let r = open_as(i, &bad);
            assert!(
                is_rejected_untrusted(&r),
                "byte {pos}, recipient {i}: {r:?}"
            );
        }
    }
}

#[test]
fn an_envelope_moved_to_another_session_is_rejected() {
    let env = seal_to(3, "session one only");
    let (uid, key) = recipient(1);
    assert_eq!(
        e2e::open(SID + 1, AUTHOR, &author_key().public(), uid, key, &env),
        Err(E2eError::BadSignature)
    );
}

#[test]
fn an_envelope_reattributed_to_another_author_is_rejected() {
    let env = seal_to(3, "written by the author");
    let (uid, key) = recipient(1);
    // The server says a recipient wrote it, with that recipient's real key.
    let (other_uid, other_key) = recipient(2);
    assert_eq!(
        e2e::open(SID, other_uid, &other_key.public(), uid, key, &env),
        Err(E2eError::BadSignature)
    );
    // Another uid with the real author's key: the uid is signed too.
    assert_eq!(
        e2e::open(SID, AUTHOR + 1, &author_key().public(), uid, key, &env),
        Err(E2eError::BadSignature)
    );
}

#[test]
fn swapped_removed_or_exchanged_recipient_entries_are_rejected() {
    let env = seal_to(3, "three of us");
    let view = e2e::parse(&env).unwrap();
    let entries: Vec<(u64, Vec<u8>)> = view
        .recipients
        .iter()
        .map(|e| (e.uid, e.wrapped.to_vec()))
        .collect();
    let mut content = view.ciphertext.to_vec();
    content.extend_from_slice(view.mac);
    let signature_part = &env[view.signed.len()..];
    let rebuild = |entries: &[(u64, Vec<u8>)]| {
        let mut v = hand_signed_part(entries, &content);
        v.extend_from_slice(signature_part);
        v
    };
    assert_eq!(
        rebuild(&entries),
        env,
        "the test rebuilds the envelope exactly"
    );

    let mut swapped = entries.clone();
    swapped.swap(0, 1);
    assert!(matches!(
        open_as(0, &rebuild(&swapped)),
        Err(E2eError::Malformed(_))
    ));

    for drop in 0..3 {
        let mut fewer = entries.clone();
        fewer.remove(drop);
        for i in 0..3 {
            assert_eq!(open_as(i, &rebuild(&fewer)), Err(E2eError::BadSignature));
        }
    }

    let mut exchanged = entries.clone();
    let w0 = exchanged[0].1.clone();
    exchanged[0].1 = exchanged[1].1.clone();
    exchanged[1].1 = w0;
    assert_eq!(
        open_as(0, &rebuild(&exchanged)),
        Err(E2eError::BadSignature)
    );

    let mut added = entries.clone();
    let (uid, key) = outsider();
    added.push((
        uid.max(entries[2].0 + 1),
        key.public().oaep_encrypt(&[0; 32]).unwrap(),
    ));
    assert_eq!(open_as(0, &rebuild(&added)), Err(E2eError::BadSignature));
}

#[test]
fn truncated_and_extended_envelopes_are_rejected() {
    let env = seal_to(2, "whole or nothing");
    for len in (0..env.len()).rev().step_by(7).chain([env.len() - 1, 0]) {
        let r = open_as(0, &env[..len]);
        assert!(
            matches!(r, Err(E2eError::Malformed(_))),
            "length {len}: {r:?}"
        );
    }
    for extra in [&[0u8][..], &[0; 256][..], &env[..]] {
        let mut longer = env.clone();
        longer.extend_from_slice(extra);
        let r = open_as(0, &longer);
        assert!(
            is_rejected_untrusted(&r),
            "{} extra bytes: {r:?}",
            extra.len()
        );
    }
}

#[test]
fn a_replayed_copy_is_caught_even_after_a_restart() {
    let dir = temp_dir("replay");
    let path = dir.join(pins::SEEN_FILE);
    let env = seal_to(2, "say it once");
    let mut guard = ReplayGuard::load(&path).unwrap();
    assert!(guard.is_empty());
    let first = open_as(0, &env).unwrap();
    assert!(guard.check_and_record(SID, AUTHOR, first.msg_id));
    // The server delivers the same envelope again (under a new `n`): it still opens,
    // and the guard says it is a copy.
    let copy = open_as(0, &env).unwrap();
    assert!(!guard.check_and_record(SID, AUTHOR, copy.msg_id));
    let other = open_as(0, &seal_to(2, "say it once")).unwrap();
    assert!(
        guard.check_and_record(SID, AUTHOR, other.msg_id),
        "same text, new message"
    );
    guard.save(&path).unwrap();
    assert_eq!(mode_of(&path), 0o600);

    let mut restarted = ReplayGuard::load(&path).unwrap();
    assert_eq!(restarted.len(), 2);
    assert!(!restarted.check_and_record(SID, AUTHOR, copy.msg_id));
    assert!(!restarted.check_and_record(SID, AUTHOR, other.msg_id));

    // Appended ids survive a restart too, and a record torn by a crash during an
    // append is dropped, keeping the ones before it.
    let third = open_as(0, &seal_to(2, "once more")).unwrap();
    restarted.append(&path, SID, AUTHOR, third.msg_id).unwrap();
    let after_append = ReplayGuard::load(&path).unwrap();
    assert_eq!(after_append.len(), 3);
    assert!(after_append.contains(SID, AUTHOR, &third.msg_id));
    let mut data = std::fs::read(&path).unwrap();
    data.pop();
    std::fs::write(&path, &data).unwrap();
    let torn = ReplayGuard::load(&path).unwrap();
    assert_eq!(torn.len(), 2, "the torn last record is dropped");
    assert!(torn.contains(SID, AUTHOR, &other.msg_id));
    let mut bad = data.clone();
    bad[0] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(
        ReplayGuard::load(&path).is_err(),
        "a file without the magic is refused"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- what the author's client must refuse to build ----

#[test]
fn text_up_to_the_envelope_limit_fits_and_one_byte_more_is_too_large() {
    for n in [1, 10] {
        let overhead = 4 + 2 + n * (8 + 2 + 256) + 4 + 16 + 12 + 2 + 256;
        let max_text = MAX_ENVELOPE_LEN - overhead;
        let text = "x".repeat(max_text);
        let env = seal_to(n, &text);
        assert_eq!(env.len(), MAX_ENVELOPE_LEN);
        assert_eq!(open_as(n - 1, &env).unwrap().text.len(), max_text);

        let pubs = publics(n);
        let refs: Vec<(u64, &RsaPublic)> = pubs.iter().map(|(u, k)| (*u, k)).collect();
        let over = "x".repeat(max_text + 1);
        assert_eq!(
            e2e::seal(SID, AUTHOR, author_key(), &refs, &over),
            Err(E2eError::TooLarge)
        );
    }
}

#[test]
fn bad_recipient_lists_and_empty_text_are_refused() {
    let pubs = publics(3);
    let (a, b) = (&pubs[0], &pubs[1]);
    let author_pub = author_key().public();
    let seal = |r: &[(u64, &RsaPublic)], text: &str| e2e::seal(SID, AUTHOR, author_key(), r, text);
    assert_eq!(
        seal(&[(a.0, &a.1), (b.0, &b.1), (a.0, &a.1)], "hi"),
        Err(E2eError::DuplicateRecipient)
    );
    assert_eq!(
        seal(&[(a.0, &a.1), (a.0, &b.1)], "hi"),
        Err(E2eError::DuplicateRecipient)
    );
    assert_eq!(
        seal(&[(a.0, &a.1), (AUTHOR, &author_pub)], "hi"),
        Err(E2eError::AuthorIsRecipient)
    );
    assert_eq!(seal(&[], "hi"), Err(E2eError::NoRecipients));
    assert_eq!(seal(&[(a.0, &a.1)], ""), Err(E2eError::EmptyText));
    assert_eq!(seal(&[(0, &a.1)], "hi"), Err(E2eError::InvalidId));
    assert_eq!(
        e2e::seal(0, AUTHOR, author_key(), &[(a.0, &a.1)], "hi"),
        Err(E2eError::InvalidId)
    );
}

#[test]
fn ninety_nine_recipients_fit_and_a_hundredth_is_refused() {
    // One key under many uids: the format does not care, and it spares key generation.
    let (_, key) = recipient(0);
    let public = key.public();
    let list: Vec<(u64, &RsaPublic)> = (1..=100u64).map(|u| (u, &public)).collect();
    assert_eq!(
        e2e::seal(SID, AUTHOR, author_key(), &list, "crowd"),
        Err(E2eError::TooManyRecipients)
    );
    let env = e2e::seal(SID, AUTHOR, author_key(), &list[..99], "crowd").unwrap();
    let got = e2e::open(SID, AUTHOR, &author_key().public(), 99, key, &env).unwrap();
    assert_eq!(got.recipients, (1..=99).collect::<Vec<u64>>());
}

// ---- what a broken or hostile author's client might send (validly signed) ----

#[test]
fn signed_envelopes_with_bad_insides_are_rejected_with_their_reason() {
    let key = [0x42u8; 32];
    let aad = content_aad(SID, AUTHOR);
    let mut id = vec![1u8; 16];

    let mut not_utf8 = id.clone();
    not_utf8.extend_from_slice(&[0x66, 0xff, 0x66]);
    assert_eq!(
        open_as(0, &hand_envelope(2, &key, &aad, &not_utf8)),
        Err(E2eError::NotUtf8)
    );

    assert_eq!(
        open_as(0, &hand_envelope(2, &key, &aad, &id)),
        Err(E2eError::EmptyText)
    );

    id.extend_from_slice(b"ok");
    assert_eq!(
        open_as(0, &hand_envelope(2, &key[..31], &aad, &id)),
        Err(E2eError::Decrypt)
    );
    assert_eq!(
        open_as(0, &hand_envelope(2, &[0x42; 33], &aad, &id)),
        Err(E2eError::Decrypt)
    );

    let wrong_aad = content_aad(SID + 1, AUTHOR);
    assert_eq!(
        open_as(0, &hand_envelope(2, &key, &wrong_aad, &id)),
        Err(E2eError::BadMac)
    );

    // A wrapped key that is not an OAEP encryption at all.
    let content = hand_content(key, &aad, &id);
    let (uid, _) = recipient(0);
    let garbage = hand_sign(
        SID,
        AUTHOR,
        author_key(),
        hand_signed_part(&[(uid, vec![0x5a; 256])], &content),
    );
    assert_eq!(open_as(0, &garbage), Err(E2eError::Decrypt));

    // The author addressed itself.
    let entries = vec![
        (uid.min(AUTHOR), vec![0x5a; 256]),
        (uid.max(AUTHOR), vec![0x5a; 256]),
    ];
    let to_self = hand_sign(
        SID,
        AUTHOR,
        author_key(),
        hand_signed_part(&entries, &content),
    );
    assert_eq!(open_as(0, &to_self), Err(E2eError::AuthorIsRecipient));

    // Content altered and re-signed by someone else than the author.
    let (_, impostor) = recipient(1);
    let env = seal_to(2, "original");
    let forged = hand_sign(SID, AUTHOR, impostor, env[..signed_len(&env)].to_vec());
    assert_eq!(open_as(0, &forged), Err(E2eError::BadSignature));
}

// ---- pins and the own key ----

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpchat-e2e-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_first_key_is_pinned_and_the_same_key_then_matches_after_reload() {
    let dir = temp_dir("pin-first");
    let path = dir.join(pins::KNOWN_KEYS_FILE);
    let alice = keys()[1].public();
    let bob = keys()[2].public();
    let mut pinned = KnownKeys::load(&path).unwrap();
    assert_eq!(pinned.check("alice", &alice).unwrap(), PinStatus::New);
    assert_eq!(pinned.check("bob", &bob).unwrap(), PinStatus::New);
    assert_eq!(pinned.check("alice", &alice).unwrap(), PinStatus::Match);
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("alice {}\nbob {}\n", alice.to_base64(), bob.to_base64())
    );

    let mut reloaded = KnownKeys::load(&path).unwrap();
    assert_eq!(reloaded.len(), 2);
    assert_eq!(reloaded.get("bob"), Some(&bob));
    assert_eq!(reloaded.check("alice", &alice).unwrap(), PinStatus::Match);
    assert_eq!(reloaded.check("bob", &bob).unwrap(), PinStatus::Match);
    assert!(matches!(
        reloaded.check("Not A Name", &bob),
        Err(PinError::InvalidName)
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_changed_key_is_reported_with_both_fingerprints_until_trusted() {
    let dir = temp_dir("pin-changed");
    let path = dir.join(pins::KNOWN_KEYS_FILE);
    let real = keys()[1].public();
    let substitute = keys()[11].public();
    let mut pinned = KnownKeys::load(&path).unwrap();
    assert_eq!(pinned.check("carol", &real).unwrap(), PinStatus::New);

    let expected = PinStatus::Changed {
        old_fingerprint: real.fingerprint(),
        new_fingerprint: substitute.fingerprint(),
    };
    assert_eq!(pinned.check("carol", &substitute).unwrap(), expected);
    assert!(real.fingerprint().starts_with("SHA256:"));
    assert_ne!(real.fingerprint(), substitute.fingerprint());
    assert_eq!(pinned.get("carol"), Some(&real), "the old pin stays");
    assert_eq!(
        pinned.check("carol", &substitute).unwrap(),
        expected,
        "and keeps warning"
    );
    assert_eq!(
        KnownKeys::load(&path).unwrap().get("carol"),
        Some(&real),
        "on disk too"
    );

    pinned.trust("carol", &substitute).unwrap();
    assert_eq!(
        pinned.check("carol", &substitute).unwrap(),
        PinStatus::Match
    );
    assert_eq!(mode_of(&path), 0o600);
    let mut reloaded = KnownKeys::load(&path).unwrap();
    assert_eq!(reloaded.get("carol"), Some(&substitute));
    assert!(matches!(
        reloaded.check("carol", &real).unwrap(),
        PinStatus::Changed { .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_can_read_and_never_overwrites_it() {
    let dir = temp_dir("keygen").join("config");
    let (public, key_path) = pins::keygen(&dir, 2048).unwrap();
    assert_eq!(key_path, dir.join(pins::KEY_FILE));
    assert_eq!(mode_of(&key_path), 0o600);
    assert_eq!(mode_of(&dir.join(pins::PUBLIC_KEY_FILE)), 0o644);
    assert_eq!(mode_of(&dir), 0o700);
    let own = pins::load_own_key(&dir).unwrap();
    assert_eq!(own.public(), public);
    assert_eq!(
        mpchat::crypto::read_public_key(&dir.join(pins::PUBLIC_KEY_FILE)).unwrap(),
        public
    );

    let before = std::fs::read(&key_path).unwrap();
    let err = pins::keygen(&dir, 2048).unwrap_err();
    assert!(matches!(err, PinError::KeyExists(_)), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read(&key_path).unwrap(), before);

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = pins::load_own_key(&dir).unwrap_err();
    assert!(
        matches!(err, PinError::KeyFileMode { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}
