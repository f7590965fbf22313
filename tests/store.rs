//! The durable store: record codec, recovery, torn tails, damage, snapshots,
//! compaction, format versions and failed writes, on real files in temp directories.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mpchat::session::{Limits, Record, Sessions};
use mpchat::store::{
    self, crc32, decode_record, encode_record, recover, Journal, Snapshot, StoreError,
    FILE_HEADER_LEN, FORMAT_VERSION, JOURNAL_FILE, SNAPSHOT_FILE,
};

const SID1: u64 = 0x1111_2222_3333_4444;
const SID2: u64 = 0x5555_6666_7777_8888;
const A: u64 = 0xa1;
const B: u64 = 0xb2;
const C: u64 = 0xc3;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mpchat-store-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn journal(&self) -> PathBuf {
        self.0.join(JOURNAL_FILE)
    }

    fn snapshot(&self) -> PathBuf {
        self.0.join(SNAPSHOT_FILE)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn named(uid: u64, name: &str) -> (u64, String) {
    (uid, name.to_string())
}

fn envelope(text: &str) -> Arc<[u8]> {
    Arc::from(text.as_bytes())
}

/// A stand-in for a key's SPKI DER (the store does not parse keys).
fn der(text: &str) -> Arc<[u8]> {
    Arc::from(text.as_bytes())
}

/// A valid history touching every record kind and both answers, over two sessions;
/// the last record is a message.
fn history() -> Vec<Record> {
    vec![
        Record::Create {
            sid: SID1,
            creator: named(A, "alice"),
            creator_key: "KEY-ALICE".into(),
            invitees: vec![named(B, "bob"), named(C, "carol")],
        },
        Record::Live { sid: SID1 },
        Record::Answer {
            sid: SID1,
            uid: B,
            key: Some("KEY-BOB".into()),
        },
        Record::Bind {
            uid: A,
            key: der("DER-ALICE"),
        },
        Record::Bind {
            uid: B,
            key: der("DER-BOB"),
        },
        Record::Message {
            sid: SID1,
            n: 1,
            author: A,
            envelope: envelope("envelope one"),
        },
        Record::Message {
            sid: SID1,
            n: 2,
            author: B,
            envelope: envelope("envelope two"),
        },
        Record::Answer {
            sid: SID1,
            uid: C,
            key: None,
        },
        Record::Create {
            sid: SID2,
            creator: named(B, "bob"),
            creator_key: "KEY-BOB-2".into(),
            invitees: vec![named(A, "alice")],
        },
        Record::Ack {
            sid: SID1,
            uid: B,
            n: 1,
        },
        Record::Message {
            sid: SID1,
            n: 3,
            author: A,
            envelope: envelope("envelope three"),
        },
        Record::Live { sid: SID2 },
        Record::Answer {
            sid: SID2,
            uid: A,
            key: Some("KEY-ALICE-2".into()),
        },
        Record::Message {
            sid: SID2,
            n: 1,
            author: B,
            envelope: envelope("in session two"),
        },
        Record::Close { sid: SID2 },
        Record::Rekey {
            uid: B,
            key: der("DER-BOB-NEW"),
        },
        Record::Unbind { uid: A },
        Record::Ack {
            sid: SID1,
            uid: A,
            n: 2,
        },
        Record::Message {
            sid: SID1,
            n: 4,
            author: A,
            envelope: envelope("the last envelope, long enough to cut in many places"),
        },
    ]
}

/// `(lsn, record)` pairs numbered from `first`.
fn numbered(records: &[Record], first: u64) -> Vec<(u64, Record)> {
    (first..).zip(records.iter().cloned()).collect()
}

/// The state `records` give when applied in order, all durable.
fn state_of(records: &[Record]) -> Sessions {
    let mut s = Sessions::new(Limits::default());
    for r in records {
        assert!(s.apply(r), "the test history applies: {r:?}");
    }
    s.mark_all_durable();
    s
}

/// A canonical text form of every public field, sessions and closed sids by id.
fn dump(s: &Sessions) -> String {
    let mut out = format!("{:?}\n", s.limits());
    let mut sessions: Vec<_> = s.iter().collect();
    sessions.sort_by_key(|s| s.sid);
    for x in sessions {
        writeln!(
            out,
            "session {:x} creator {:x} live {} last_n {} backlog {} durable {}",
            x.sid, x.creator, x.live, x.last_n, x.backlog_bytes, x.durable_n
        )
        .unwrap();
        for p in &x.participants {
            writeln!(
                out,
                "  {:x} {} {:?} {:?} {}",
                p.uid, p.name, p.answer, p.key, p.acked
            )
            .unwrap();
        }
        for m in &x.messages {
            let e = &m.envelope;
            writeln!(
                out,
                "  #{} by {:x}: {} bytes crc {:08x}",
                m.n,
                m.author,
                e.len(),
                crc32(e)
            )
            .unwrap();
        }
    }
    let mut closed: Vec<_> = s.closed_sids().copied().collect();
    closed.sort();
    writeln!(out, "closed {closed:x?}").unwrap();
    for (uid, key) in s.bindings().sorted() {
        writeln!(out, "bound {uid:x} {key:?}").unwrap();
    }
    out
}

fn recover_ok(dir: &TempDir) -> store::Recovered {
    match recover(dir.path(), Limits::default()) {
        Ok(r) => r,
        Err(e) => panic!("recovery failed: {e}"),
    }
}

fn recover_err(dir: &TempDir) -> StoreError {
    match recover(dir.path(), Limits::default()) {
        Ok(r) => panic!("recovery succeeded: {r:?}"),
        Err(e) => e,
    }
}

/// Appends each record as its own batch; returns the journal length before each.
fn append_each(journal: &mut Journal, records: &[(u64, Record)]) -> Vec<u64> {
    records
        .iter()
        .map(|entry| {
            let at = journal.len();
            journal.append(std::slice::from_ref(entry)).unwrap();
            at
        })
        .collect()
}

/// A state dir whose journal holds `history()`, one batch per record.
fn journal_with_history(name: &str) -> (TempDir, Vec<u64>, Vec<Record>) {
    let dir = TempDir::new(name);
    let records = history();
    let mut r = recover_ok(&dir);
    let offsets = append_each(&mut r.journal, &numbered(&records, 1));
    (dir, offsets, records)
}

#[test]
fn every_record_kind_round_trips_through_the_codec() {
    let mut kinds = std::collections::HashSet::new();
    let mut extra = history();
    extra.push(Record::Create {
        sid: 9,
        creator: named(1, ""),
        creator_key: String::new(),
        invitees: vec![],
    });
    for rec in &extra {
        let mut body = Vec::new();
        encode_record(rec, &mut body).unwrap();
        kinds.insert(body[0]);
        assert_eq!(decode_record(&body).as_ref(), Ok(rec));
    }
    assert_eq!(kinds.len(), 9, "every kind is covered");
}

#[test]
fn truncated_extended_and_garbled_records_are_refused() {
    for rec in history() {
        let mut body = Vec::new();
        encode_record(&rec, &mut body).unwrap();
        for cut in 0..body.len() {
            assert!(decode_record(&body[..cut]).is_err(), "{rec:?} cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(
            decode_record(&longer).is_err(),
            "{rec:?} with a trailing byte"
        );
        // Kinds no record has (7 was one until version 2 made it Bind).
        for kind in [0u8, 10, 11, 0x81, 0xff] {
            let mut other = body.clone();
            other[0] = kind;
            assert!(decode_record(&other).is_err(), "kind {kind}");
        }
    }

    // Bad UTF-8 in a name.
    let rec = Record::Create {
        sid: 1,
        creator: named(A, "abc"),
        creator_key: "K".into(),
        invitees: vec![named(B, "bob")],
    };
    let mut body = Vec::new();
    encode_record(&rec, &mut body).unwrap();
    let at = body.windows(3).position(|w| w == b"abc").unwrap();
    body[at] = 0xff;
    assert!(decode_record(&body).is_err(), "bad UTF-8");

    // An answer flag other than 0 or 1.
    let mut body = Vec::new();
    encode_record(
        &Record::Answer {
            sid: 1,
            uid: 2,
            key: None,
        },
        &mut body,
    )
    .unwrap();
    *body.last_mut().unwrap() = 2;
    assert!(decode_record(&body).is_err(), "flag 2");

    // Lengths over their bounds, with the bytes present.
    let mut body = vec![4u8];
    body.extend_from_slice(&[0; 24]);
    let too_long = mpchat::proto::MAX_ENVELOPE_LEN + 1;
    body.extend_from_slice(&(too_long as u32).to_be_bytes());
    body.resize(body.len() + too_long, 1);
    assert!(decode_record(&body).is_err(), "envelope over its bound");
    let mut body = vec![1u8];
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(&[0, 0, 0, 0]); // empty name, empty key
    body.extend_from_slice(&(store::MAX_STORED_PARTICIPANTS as u32).to_be_bytes());
    assert!(
        decode_record(&body).is_err(),
        "invitee count over its bound"
    );
}

#[test]
fn a_missing_state_is_empty_and_gets_a_journal_with_a_header() {
    let dir = TempDir::new("empty");
    let r = recover_ok(&dir);
    assert_eq!(r.last_lsn, 0);
    assert_eq!(r.sessions.iter().count(), 0);
    assert!(r.journal.is_empty());
    let bytes = fs::read(dir.journal()).unwrap();
    assert_eq!(bytes.len() as u64, FILE_HEADER_LEN);
    assert_eq!(&bytes[..8], store::JOURNAL_MAGIC);
    assert_eq!(bytes[8..12], FORMAT_VERSION.to_be_bytes());
    assert!(!dir.snapshot().exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.journal()).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the journal is private");
}

#[test]
fn recovery_after_appends_reproduces_the_same_sessions() {
    let (dir, _, records) = journal_with_history("replay");
    let want = dump(&state_of(&records));
    let r = recover_ok(&dir);
    assert_eq!(r.last_lsn, records.len() as u64);
    assert_eq!(dump(&r.sessions), want);
    assert!(r.sessions.is_closed(SID2));
    drop(r);
    // Recovery changes nothing, so doing it again gives the same.
    let len = fs::metadata(dir.journal()).unwrap().len();
    let mut r = recover_ok(&dir);
    assert_eq!(dump(&r.sessions), want);
    assert_eq!(fs::metadata(dir.journal()).unwrap().len(), len);
    // And appending goes on after the recovered entries.
    let more = Record::Ack {
        sid: SID1,
        uid: B,
        n: 4,
    };
    r.journal.append(&[(r.last_lsn + 1, more.clone())]).unwrap();
    let mut all = records.clone();
    all.push(more);
    assert_eq!(dump(&recover_ok(&dir).sessions), dump(&state_of(&all)));
}

#[test]
fn unsynced_batches_are_read_back_and_later_batches_follow_them() {
    let (dir, _, records) = journal_with_history("unsynced");
    let mut r = recover_ok(&dir);
    let acks: Vec<Record> = (3..=4)
        .map(|n| Record::Ack {
            sid: SID1,
            uid: B,
            n,
        })
        .collect();
    let lsn = r.last_lsn;
    r.journal
        .append_unsynced(&numbered(&acks[..1], lsn + 1))
        .unwrap();
    r.journal.append(&numbered(&acks[1..], lsn + 2)).unwrap();
    assert_eq!(r.journal.last_lsn(), lsn + 2);
    drop(r);
    let mut all = records.clone();
    all.extend(acks);
    let back = recover_ok(&dir);
    assert_eq!(back.last_lsn, lsn + 2);
    assert_eq!(dump(&back.sessions), dump(&state_of(&all)));
}

#[test]
fn one_batch_of_many_records_is_recovered_whole() {
    let dir = TempDir::new("batch");
    let records = history();
    let mut r = recover_ok(&dir);
    r.journal.append(&numbered(&records, 1)).unwrap();
    assert_eq!(r.journal.last_lsn(), records.len() as u64);
    drop(r);
    assert_eq!(dump(&recover_ok(&dir).sessions), dump(&state_of(&records)));
}

#[test]
fn a_journal_cut_anywhere_inside_its_last_entry_loses_only_that_entry() {
    let (dir, offsets, records) = journal_with_history("cut");
    let full = fs::read(dir.journal()).unwrap();
    let last_at = *offsets.last().unwrap() as usize;
    let want = dump(&state_of(&records[..records.len() - 1]));
    for cut in last_at..full.len() {
        fs::write(dir.journal(), &full[..cut]).unwrap();
        let r = recover_ok(&dir);
        assert_eq!(dump(&r.sessions), want, "cut at {cut}");
        assert_eq!(r.journal.len(), last_at as u64);
        assert_eq!(r.last_lsn, records.len() as u64 - 1);
        drop(r);
        let len = fs::metadata(dir.journal()).unwrap().len();
        assert_eq!(
            len, last_at as u64,
            "the file is cut to its good length (cut at {cut})"
        );
    }
    // The whole file recovers everything.
    fs::write(dir.journal(), &full).unwrap();
    assert_eq!(dump(&recover_ok(&dir).sessions), dump(&state_of(&records)));
}

#[test]
fn a_flipped_bit_in_the_last_entry_drops_it() {
    let (dir, offsets, records) = journal_with_history("flip-last");
    let full = fs::read(dir.journal()).unwrap();
    let last_at = *offsets.last().unwrap() as usize;
    let want = dump(&state_of(&records[..records.len() - 1]));
    for at in last_at..full.len() {
        let mut bytes = full.clone();
        bytes[at] ^= 1 << (at % 8);
        fs::write(dir.journal(), &bytes).unwrap();
        let r = recover_ok(&dir);
        assert_eq!(dump(&r.sessions), want, "bit flipped at {at}");
        assert_eq!(fs::metadata(dir.journal()).unwrap().len(), last_at as u64);
    }
}

#[test]
fn a_flipped_bit_before_the_tail_stops_start_up_naming_file_and_offset() {
    let (dir, offsets, _) = journal_with_history("flip-middle");
    let full = fs::read(dir.journal()).unwrap();
    // Every byte of the entry before the last, and a few of the first entry.
    let (start, end) = (offsets[offsets.len() - 2], offsets[offsets.len() - 1]);
    let targets = (start..end).map(|at| (start, at)).chain([
        (offsets[0], offsets[0]),
        (offsets[0], offsets[0] + 5),
        (offsets[0], offsets[1] - 1),
    ]);
    for (entry, at) in targets {
        let mut bytes = full.clone();
        bytes[at as usize] ^= 1 << (at % 8);
        fs::write(dir.journal(), &bytes).unwrap();
        let e = recover_err(&dir);
        match &e {
            StoreError::Damaged { path, offset, .. } => {
                assert_eq!(path, &dir.journal());
                assert_eq!(*offset, entry, "bit flipped at {at}");
            }
            other => panic!("not damage: {other}"),
        }
        let text = e.to_string();
        assert!(
            text.contains(&dir.journal().display().to_string()),
            "{text}"
        );
        assert!(text.contains(&format!("offset {entry}")), "{text}");
        assert!(text.contains("backup"), "{text}");
        assert_eq!(
            fs::read(dir.journal()).unwrap(),
            bytes,
            "nothing is cut off"
        );
    }
}

/// The offset just after the entry at `at` (from its length field).
fn entry_end(bytes: &[u8], at: u64) -> u64 {
    let len = u32::from_be_bytes(bytes[at as usize..][..4].try_into().unwrap());
    at + 8 + u64::from(len)
}

#[test]
fn a_torn_last_batch_is_dropped_even_when_later_parts_of_it_survived() {
    let dir = TempDir::new("torn-batch");
    let records = history();
    let (head, batch) = records.split_at(8);
    let mut r = recover_ok(&dir);
    append_each(&mut r.journal, &numbered(head, 1));
    let batch_at = r.journal.len();
    r.journal
        .append(&numbered(batch, head.len() as u64 + 1))
        .unwrap();
    drop(r);
    let full = fs::read(dir.journal()).unwrap();
    let second = entry_end(&full, batch_at);
    let third = entry_end(&full, second);

    // The second entry of the batch never reached the disk (zeros, or garbage), the
    // rest of the batch did: the batch was never confirmed, so it is cut at the gap.
    for fill in [0u8, 0x5a] {
        let mut bytes = full.clone();
        bytes[second as usize..third as usize].fill(fill);
        fs::write(dir.journal(), &bytes).unwrap();
        let r = recover_ok(&dir);
        assert_eq!(dump(&r.sessions), dump(&state_of(&records[..9])));
        assert_eq!(r.journal.len(), second);
        assert_eq!(fs::metadata(dir.journal()).unwrap().len(), second);
    }

    // The same damage with a later batch after it is damage, not a torn write.
    fs::write(dir.journal(), &full).unwrap();
    let mut r = recover_ok(&dir);
    let later = Record::Ack {
        sid: SID1,
        uid: B,
        n: 4,
    };
    r.journal.append(&[(r.last_lsn + 1, later)]).unwrap();
    drop(r);
    let mut bytes = fs::read(dir.journal()).unwrap();
    bytes[second as usize..third as usize].fill(0);
    fs::write(dir.journal(), &bytes).unwrap();
    match recover_err(&dir) {
        StoreError::Damaged { offset, .. } => assert_eq!(offset, second),
        other => panic!("not damage: {other}"),
    }
}

#[test]
fn zeros_after_the_last_entry_are_dropped() {
    let (dir, _, records) = journal_with_history("zeros");
    let mut bytes = fs::read(dir.journal()).unwrap();
    let good = bytes.len() as u64;
    bytes.resize(bytes.len() + 8192, 0);
    fs::write(dir.journal(), &bytes).unwrap();
    let r = recover_ok(&dir);
    assert_eq!(dump(&r.sessions), dump(&state_of(&records)));
    assert_eq!(fs::metadata(dir.journal()).unwrap().len(), good);
}

#[test]
fn entries_copied_from_another_journal_are_not_taken_as_this_ones() {
    let (dir, offsets, records) = journal_with_history("foreign");
    let (other, _, _) = journal_with_history("foreign-other");
    let mine = fs::read(dir.journal()).unwrap();
    let theirs = fs::read(other.journal()).unwrap();
    // Put the other journal's last entry (a valid frame there) in place of mine.
    let last = *offsets.last().unwrap() as usize;
    let mut bytes = mine[..last].to_vec();
    bytes.extend_from_slice(&theirs[last..]);
    assert_eq!(bytes.len(), mine.len());
    assert_ne!(bytes, mine, "the file ids differ");
    fs::write(dir.journal(), &bytes).unwrap();
    let r = recover_ok(&dir);
    assert_eq!(
        dump(&r.sessions),
        dump(&state_of(&records[..records.len() - 1]))
    );
}

#[test]
fn a_record_that_does_not_apply_stops_start_up() {
    let dir = TempDir::new("no-apply");
    let records = history();
    let mut r = recover_ok(&dir);
    append_each(&mut r.journal, &numbered(&records[..3], 1));
    let at = r.journal.len();
    // Message 2 before message 1: written fine, refused by apply on recovery.
    let skipped = Record::Message {
        sid: SID1,
        n: 2,
        author: A,
        envelope: envelope("x"),
    };
    r.journal.append(&[(4, skipped)]).unwrap();
    drop(r);
    match recover_err(&dir) {
        StoreError::Damaged { offset, reason, .. } => {
            assert_eq!(offset, at);
            assert!(reason.contains("LSN 4"), "{reason}");
        }
        other => panic!("not damage: {other}"),
    }
}

#[test]
fn appends_must_carry_increasing_lsns() {
    let dir = TempDir::new("lsn-order");
    let records = history();
    let mut r = recover_ok(&dir);
    r.journal.append(&numbered(&records[..2], 5)).unwrap();
    let len = r.journal.len();
    let again = [(6, records[2].clone())];
    assert_eq!(
        r.journal.append(&again).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    let backwards = [(8, records[2].clone()), (7, records[3].clone())];
    assert_eq!(
        r.journal.append(&backwards).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(r.journal.len(), len);
    assert_eq!(
        fs::metadata(dir.journal()).unwrap().len(),
        len,
        "nothing was written"
    );
    r.journal.append(&[(9, records[2].clone())]).unwrap();
    drop(r);
    let r = recover_ok(&dir);
    assert_eq!(r.last_lsn, 9, "LSNs may skip numbers");
    assert_eq!(dump(&r.sessions), dump(&state_of(&records[..3])));
}

#[test]
fn compaction_then_recovery_gives_the_live_state() {
    let (dir, _, records) = journal_with_history("compact");
    let mut r = recover_ok(&dir);
    let before = r.journal.len();
    r.journal.compact(r.last_lsn, &r.sessions).unwrap();
    assert!(r.journal.is_empty());
    assert!(r.journal.len() < before);
    assert_eq!(fs::metadata(dir.journal()).unwrap().len(), FILE_HEADER_LEN);
    let want = dump(&r.sessions);
    drop(r);
    let mut r = recover_ok(&dir);
    assert_eq!(dump(&r.sessions), want);
    assert_eq!(r.last_lsn, records.len() as u64);

    // Appending after compaction, then compacting a captured snapshot, still adds up.
    let more = [
        Record::Ack {
            sid: SID1,
            uid: B,
            n: 4,
        },
        Record::Message {
            sid: SID1,
            n: 5,
            author: B,
            envelope: envelope("after"),
        },
    ];
    let lsn = r.last_lsn;
    r.journal.append(&numbered(&more, lsn + 1)).unwrap();
    for rec in &more {
        assert!(r.sessions.apply(rec));
    }
    r.sessions.mark_all_durable();
    let mut all = records.clone();
    all.extend(more.iter().cloned());
    assert_eq!(dump(&r.sessions), dump(&state_of(&all)));
    drop(r);
    let mut r = recover_ok(&dir);
    assert_eq!(dump(&r.sessions), dump(&state_of(&all)));
    let snap = Snapshot::capture(r.last_lsn, &r.sessions);
    assert_eq!(snap.lsn(), all.len() as u64);
    r.journal.compact_captured(&snap).unwrap();
    drop(r);
    assert_eq!(dump(&recover_ok(&dir).sessions), dump(&state_of(&all)));
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "only journal and snapshot remain: {names:?}"
    );
}

#[test]
fn compacting_with_a_snapshot_older_than_the_journal_is_refused() {
    let (dir, _, records) = journal_with_history("stale-snapshot");
    let mut r = recover_ok(&dir);
    let stale = state_of(&records[..5]);
    let err = r.journal.compact(5, &stale).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(!dir.snapshot().exists());
    drop(r);
    assert_eq!(dump(&recover_ok(&dir).sessions), dump(&state_of(&records)));
}

#[test]
fn snapshot_and_journal_with_overlapping_lsns_apply_each_record_once() {
    let records = history();
    let all = dump(&state_of(&records));

    // A crash after the snapshot was renamed but before the journal was replaced:
    // the snapshot (LSN 9) and the full old journal (LSNs 1 to 15).
    let (dir, _, _) = journal_with_history("overlap-old");
    let other = TempDir::new("overlap-snapshot");
    let mut o = recover_ok(&other);
    o.journal.compact(9, &state_of(&records[..9])).unwrap();
    drop(o);
    fs::copy(other.snapshot(), dir.snapshot()).unwrap();
    let r = recover_ok(&dir);
    assert_eq!(dump(&r.sessions), all);
    assert_eq!(r.last_lsn, records.len() as u64);

    // Records queued before the capture reach the new journal after compaction.
    let dir = TempDir::new("overlap-new");
    let mut r = recover_ok(&dir);
    append_each(&mut r.journal, &numbered(&records[..6], 1));
    r.journal.compact(9, &state_of(&records[..9])).unwrap();
    append_each(&mut r.journal, &numbered(&records[6..], 7));
    drop(r);
    let r = recover_ok(&dir);
    assert_eq!(dump(&r.sessions), all);
    assert_eq!(r.last_lsn, records.len() as u64);
}

#[test]
fn a_closed_session_leaves_no_envelope_or_key_on_disk_after_compaction() {
    const SECRET_ENVELOPE: &[u8] = b"\x00\xffSECRET-ENVELOPE-7f3a9c\x01\x02";
    const SECRET_KEY: &str = "SECRET-KEY-MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A";
    let dir = TempDir::new("forget");
    let mut r = recover_ok(&dir);
    let records = vec![
        Record::Create {
            sid: SID1,
            creator: named(A, "alice"),
            creator_key: "KEY-ALICE".into(),
            invitees: vec![named(B, "bob")],
        },
        Record::Live { sid: SID1 },
        Record::Answer {
            sid: SID1,
            uid: B,
            key: Some(SECRET_KEY.into()),
        },
        Record::Message {
            sid: SID1,
            n: 1,
            author: A,
            envelope: Arc::from(SECRET_ENVELOPE),
        },
        // Another session that stays, so the snapshot is not empty.
        Record::Create {
            sid: SID2,
            creator: named(B, "bob"),
            creator_key: "KEY-BOB".into(),
            invitees: vec![named(C, "carol")],
        },
    ];
    append_each(&mut r.journal, &numbered(&records, 1));
    for rec in &records {
        assert!(r.sessions.apply(rec));
    }
    // Compact once while it is open: the secrets are in the snapshot now.
    r.journal.compact(5, &r.sessions).unwrap();
    let everything = |dir: &TempDir| -> Vec<u8> {
        let mut all = Vec::new();
        for e in fs::read_dir(dir.path()).unwrap() {
            all.extend(fs::read(e.unwrap().path()).unwrap());
        }
        all
    };
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let bytes = everything(&dir);
    assert!(contains(&bytes, SECRET_ENVELOPE) && contains(&bytes, SECRET_KEY.as_bytes()));

    let close = Record::Close { sid: SID1 };
    r.journal.append(&[(6, close.clone())]).unwrap();
    assert!(r.sessions.apply(&close));
    assert!(
        contains(&everything(&dir), SECRET_ENVELOPE),
        "still there before compaction"
    );
    r.journal.compact(6, &r.sessions).unwrap();
    let bytes = everything(&dir);
    assert!(!contains(&bytes, SECRET_ENVELOPE), "the envelope is gone");
    assert!(!contains(&bytes, SECRET_KEY.as_bytes()), "the key is gone");
    drop(r);
    let r = recover_ok(&dir);
    assert!(r.sessions.is_closed(SID1), "the sid stays closed");
    assert!(r.sessions.get(SID2).is_some());
}

#[test]
fn a_damaged_snapshot_stops_start_up_with_file_and_offset() {
    let (dir, _, records) = journal_with_history("bad-snapshot");
    let mut r = recover_ok(&dir);
    r.journal.compact(r.last_lsn, &r.sessions).unwrap();
    drop(r);
    let good = fs::read(dir.snapshot()).unwrap();
    assert_eq!(dump(&recover_ok(&dir).sessions), dump(&state_of(&records)));

    // Any flipped byte after the header, and any cut, is refused.
    for at in (FILE_HEADER_LEN as usize..good.len()).step_by(7) {
        let mut bytes = good.clone();
        bytes[at] ^= 0x10;
        fs::write(dir.snapshot(), &bytes).unwrap();
        let e = recover_err(&dir);
        let StoreError::Damaged { path, offset, .. } = &e else {
            panic!("not damage: {e}")
        };
        assert_eq!(path, &dir.snapshot());
        assert!(
            *offset <= at as u64,
            "offset {offset} is the entry holding byte {at}"
        );
        assert!(e
            .to_string()
            .contains(&dir.snapshot().display().to_string()));
    }
    for cut in [
        good.len() - 1,
        good.len() - 30,
        FILE_HEADER_LEN as usize + 3,
        5,
    ] {
        fs::write(dir.snapshot(), &good[..cut]).unwrap();
        assert!(
            matches!(recover_err(&dir), StoreError::Damaged { .. }),
            "cut at {cut}"
        );
    }
    fs::write(dir.snapshot(), &good).unwrap();
    assert_eq!(dump(&recover_ok(&dir).sessions), dump(&state_of(&records)));
}

#[test]
fn files_of_other_versions_or_magic_are_refused_with_both_versions_named() {
    let (dir, _, _) = journal_with_history("versions");
    let mut r = recover_ok(&dir);
    r.journal.compact(r.last_lsn, &r.sessions).unwrap();
    drop(r);
    for (path, name) in [(dir.journal(), "journal"), (dir.snapshot(), "snapshot")] {
        let good = fs::read(&path).unwrap();
        for (found, age) in [
            (0u32, "older"),
            (store::PREVIOUS_FORMAT_VERSION, "older"),
            (FORMAT_VERSION + 1, "newer"),
            (u32::MAX, "newer"),
        ] {
            let mut bytes = good.clone();
            bytes[8..12].copy_from_slice(&found.to_be_bytes());
            fs::write(&path, &bytes).unwrap();
            let e = recover_err(&dir);
            assert!(
                matches!(e, StoreError::Version { found: f, .. } if f == found),
                "{e}"
            );
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(&format!("format version {found}")), "{text}");
            assert!(
                text.contains(&format!("supports only version {FORMAT_VERSION}")),
                "{text}"
            );
            assert!(
                text.contains(age) && text.contains("refusing to start"),
                "{text}"
            );
            assert_eq!(fs::read(&path).unwrap(), bytes, "the {name} is left alone");
        }
        let mut bytes = good.clone();
        bytes[..8].copy_from_slice(b"NOTOURS\n");
        fs::write(&path, &bytes).unwrap();
        let e = recover_err(&dir);
        assert!(matches!(e, StoreError::NotOurs { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()));
        fs::write(&path, &good[..10]).unwrap();
        assert!(matches!(
            recover_err(&dir),
            StoreError::Damaged { offset: 0, .. }
        ));
        fs::write(&path, &good).unwrap();
        recover_ok(&dir);
    }
}

/// Set for the child process of the file-size-limit test: its state directory.
const CHILD_DIR_ENV: &str = "MPCHAT_STORE_TEST_CHILD_DIR";
const CHILD_TEST: &str = "child_appends_until_the_file_size_limit";

/// The byte limit on file size from `/proc/self/limits`.
fn file_size_limit() -> u64 {
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn an_append_that_fails_on_a_size_limit_leaves_the_journal_recoverable() {
    let dir = TempDir::new("fsize");
    let exe = std::env::current_exe().unwrap();
    // Run this test binary again with a 32 KiB file size limit and SIGXFSZ ignored,
    // so a write past the limit fails with EFBIG, like a full disk.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 64; exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            CHILD_TEST,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = |key: &str| -> String {
        let start = stdout
            .find(&format!("<{key}>"))
            .expect("the child reported")
            + key.len()
            + 2;
        let end = stdout.find(&format!("</{key}>")).unwrap();
        stdout[start..end].to_string()
    };
    let len: u64 = report("len").parse().unwrap();
    let expected = report("dump");

    assert_eq!(fs::metadata(dir.journal()).unwrap().len(), len);
    let mut r = recover_ok(&dir);
    assert_eq!(
        r.journal.len(),
        len,
        "no tail was dropped: the failed write was cut off"
    );
    assert_eq!(dump(&r.sessions), expected);
    // Without the limit the journal takes more.
    let n = r.sessions.get(SID1).unwrap().last_n + 1;
    let rec = Record::Message {
        sid: SID1,
        n,
        author: A,
        envelope: envelope("no limit now"),
    };
    r.journal.append(&[(r.last_lsn + 1, rec.clone())]).unwrap();
    assert!(r.sessions.apply(&rec));
    r.sessions.mark_all_durable();
    let want = dump(&r.sessions);
    drop(r);
    assert_eq!(dump(&recover_ok(&dir).sessions), want);
}

#[test]
#[ignore = "run by an_append_that_fails_on_a_size_limit_leaves_the_journal_recoverable"]
fn child_appends_until_the_file_size_limit() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let limit = file_size_limit();
    assert!(limit < 1 << 20, "the parent set a limit");
    let mut r = recover(Path::new(&dir), Limits::default()).unwrap();
    let mut lsn = 0;
    let mut commit = |r: &mut store::Recovered, rec: Record| -> io::Result<()> {
        lsn += 1;
        r.journal.append(&[(lsn, rec.clone())])?;
        assert!(r.sessions.apply(&rec));
        Ok(())
    };
    let setup = &history()[..3];
    for rec in setup {
        commit(&mut r, rec.clone()).unwrap();
    }
    // A message entry is 53 bytes plus its envelope; fill to 100 bytes below the limit.
    let mut n = 0;
    let message = |n: u64, len: usize| Record::Message {
        sid: SID1,
        n,
        author: A,
        envelope: Arc::from(vec![n as u8; len]),
    };
    while limit - r.journal.len() - 100 >= 2 * 1053 {
        n += 1;
        commit(&mut r, message(n, 1000)).unwrap();
    }
    n += 1;
    let pad = (limit - r.journal.len() - 100 - 53) as usize;
    commit(&mut r, message(n, pad)).unwrap();
    let good = r.journal.len();
    assert_eq!(good, limit - 100);

    // This one is written in part (100 bytes), then the write fails.
    let err = commit(&mut r, message(n + 1, 500)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge, "{err}");
    assert_eq!(r.journal.len(), good);
    let on_disk = fs::metadata(r.journal.path()).unwrap().len();
    assert_eq!(on_disk, good, "the partial write was cut off");
    // Later, smaller entries still fit, right after the last good one.
    commit(
        &mut r,
        Record::Ack {
            sid: SID1,
            uid: B,
            n,
        },
    )
    .unwrap();
    assert_eq!(r.journal.len(), good + 49);
    r.sessions.mark_all_durable();
    println!("<len>{}</len>", r.journal.len());
    println!("<dump>{}</dump>", dump(&r.sessions));
}

#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn measures_durable_appends_per_second_with_and_without_group_commit() {
    for (batch, batches) in [(1usize, 1000usize), (64, 1000)] {
        let dir = TempDir::new("rate");
        let mut r = recover_ok(&dir);
        r.journal.append(&numbered(&history()[..3], 1)).unwrap();
        let mut lsn = 3;
        let mut n = 0;
        let start = Instant::now();
        for _ in 0..batches {
            let entries: Vec<_> = (0..batch)
                .map(|_| {
                    lsn += 1;
                    n += 1;
                    let env = Arc::from(vec![0x5a; 100]);
                    (
                        lsn,
                        Record::Message {
                            sid: SID1,
                            n,
                            author: A,
                            envelope: env,
                        },
                    )
                })
                .collect();
            r.journal.append(&entries).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "batch of {batch:>2}: {} records in {batches} appends, {secs:.3} s: {:.0} records/s, {:.0} appends/s",
            batch * batches,
            (batch * batches) as f64 / secs,
            batches as f64 / secs
        );
    }
}
