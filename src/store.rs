//! Durable session state: an append-only journal of [`Record`]s, snapshots, recovery
//! and compaction.
//!
//! mpchatd answers `OK` to init, msg and close only once the record behind the answer
//! is written and fsync'ed here, so whatever it acknowledged survives `kill -9` and
//! power loss. Every change of session state is a [`Record`] with a log sequence
//! number (LSN) the server assigns under its registry lock; [`Journal::append`] writes
//! a batch of them with one `write` and one `fdatasync` (group commit), and
//! [`recover`] rebuilds [`Sessions`] from the last snapshot plus the journal entries
//! the snapshot does not include. Accounts and the server key have files of their own;
//! this module handles sessions only.
//!
//! This module must never: log an envelope, a key or any other payload byte; apply a
//! record twice; skip a damaged record and carry on (only an incomplete or damaged
//! *last write* is dropped, see below); leave a failed write where a later entry could
//! land after it.
//!
//! # Files
//!
//! Two files in the state directory, [`JOURNAL_FILE`] and [`SNAPSHOT_FILE`], both mode
//! 0600 (they hold public keys and ciphertext, and their size and timing say who talks
//! to whom). Both are only ever replaced whole by writing `<name>.tmp`, fsync'ing it,
//! renaming it over `<name>` and fsync'ing the directory. All integers are big-endian.
//!
//! Each file starts with a 20-byte header:
//!
//! | bytes | field | value |
//! |---|---|---|
//! | 0-7 | magic | `MPCJRNL\n` ([`JOURNAL_MAGIC`]) or `MPCSNAP\n` ([`SNAPSHOT_MAGIC`]) |
//! | 8-11 | version | [`FORMAT_VERSION`] (2); version 1 ([`PREVIOUS_FORMAT_VERSION`], before key bindings) is migrated at start-up (see [`crate::upgrade`]), any other is refused |
//! | 12-19 | file id | 8 random bytes chosen when the file is created |
//!
//! Then entries, each framed as
//!
//! | bytes | field |
//! |---|---|
//! | 0-3 | `len`: length of the body, 1 to [`MAX_ENTRY_LEN`] |
//! | 4-7 | `crc`: CRC-32 (IEEE, reflected, as zlib's `crc32`) over file id (8 bytes) `\|\|` `len` (4 bytes) `\|\|` body |
//! | 8.. | body (`len` bytes) |
//!
//! The file id in the checksum ties every entry to its file: an entry of an older
//! journal (whose blocks a file system may expose after a crash) or a byte pattern that
//! a client placed inside an envelope never checks out as an entry of this file.
//!
//! Strings are a u16 length and UTF-8 bytes; an envelope is a u32 length and bytes;
//! `opt key` is a byte 0 (none) or 1 followed by a string. Every length is checked
//! against its bound ([`MAX_USERNAME_LEN`], [`MAX_KEY_TEXT_LEN`], [`MAX_ENVELOPE_LEN`],
//! [`MAX_STORED_PARTICIPANTS`]) before anything is allocated, and decoding is strict:
//! unknown kinds, flags other than 0 and 1, bad UTF-8 and trailing bytes are errors.
//!
//! ## Journal entries
//!
//! Body: `lsn u64 | batch u64 | record`, where `batch` is the file offset of the first
//! entry written by the same [`Journal::append`] call (so the first entry of a batch
//! holds its own offset), and `record` is ([`encode_record`]):
//!
//! | kind | record | fields after the kind byte |
//! |---|---|---|
//! | 1 | Create | `sid u64, creator_uid u64, creator_name str, creator_key str, count u32, count x (uid u64, name str)` |
//! | 2 | Answer | `sid u64, uid u64, opt key` (a key accepts, none declines) |
//! | 3 | Live | `sid u64` |
//! | 4 | Message | `sid u64, n u64, author u64, envelope` |
//! | 5 | Ack | `sid u64, uid u64, n u64` |
//! | 6 | Close | `sid u64` |
//! | 7 | Bind | `uid u64, key bytes` (an account's first key, SPKI DER) |
//! | 8 | Unbind | `uid u64` (an administrator cleared the binding) |
//! | 9 | Rekey | `uid u64, key bytes` (the account replaced its key) |
//!
//! `bytes` is a u16 length, 1 to [`MAX_SPKI_DER_LEN`], and the bytes. Version 1 has
//! kinds 1 to 6 only.
//!
//! LSNs strictly increase through the file but need not be consecutive: a batch whose
//! write failed is cut off again, and the server need not reuse its numbers.
//!
//! ## Snapshot entries
//!
//! Body: `kind u8 | fields`, in this order: one Head, then per session a Session entry
//! followed by exactly its `messages` Stored entries, then Closed entries, then
//! Bindings entries, then one End.
//!
//! | kind | entry | fields |
//! |---|---|---|
//! | 1 | Head | `lsn u64`: every record up to this LSN is included |
//! | 2 | Session | `sid u64, creator u64, live u8, last_n u64, count u32, count x (uid u64, name str, answer u8 (0 invited, 1 accepted, 2 declined), opt key, acked u64), messages u64` |
//! | 3 | Stored | `sid u64, n u64, author u64, envelope` |
//! | 4 | Closed | `count u32` (1 to [`MAX_CLOSED_PER_ENTRY`]), `count x sid u64` |
//! | 5 | End | `sessions u64, closed u64, bindings u64`: totals, so a cut-short snapshot is detected (version 1: no `bindings`) |
//! | 6 | Bindings | `count u32` (1 to [`MAX_BINDINGS_PER_ENTRY`]), `count x (uid u64, key bytes)`, uids strictly increasing through the file (version 2 only) |
//!
//! A session's backlog byte count is recomputed on load, never trusted, and every
//! session is checked for the invariants [`Session`] relies on (creator first and
//! accepted, keys exactly for accepted participants, consecutive message numbers).
//!
//! # Recovery
//!
//! [`recover`] reads the snapshot (any damage in it stops start-up: it was fsync'ed
//! before it was renamed into place, so damage is never a torn write), then replays the
//! journal entries with an LSN above the snapshot's through [`Sessions::apply`]; an
//! entry with a valid checksum that does not decode, does not follow its predecessor's
//! LSN, or that `apply` refuses stops start-up.
//!
//! Only the last write can be torn, because a batch is written only after the previous
//! one was fsync'ed (or, when its write failed, cut off again). A crash in the middle of
//! a batch can leave any part of it missing, zeroed or garbled, in any order (the disk
//! need not write pages in order). So when an entry at offset X is incomplete or fails
//! its checksum, the rest of the file is searched for an intact entry that starts a
//! *later* batch (its `batch` field is beyond X). If there is one, X was damaged after
//! it had been made durable: start-up stops with an error naming the file and X, and
//! the operator restores from a backup. If there is none, everything from X on belongs
//! to the last write, which was never confirmed as durable: the file is cut at X,
//! fsync'ed, and a warning gives the number of bytes dropped and the offset. Intact
//! entries of that last batch before X are kept (they are a prefix in LSN order, so
//! the state they give is one the server went through).
//!
//! # Compaction
//!
//! When the journal passes a size bound ([`DEFAULT_COMPACT_BYTES`]), the journal thread
//! writes a snapshot and replaces the journal by an empty one ([`Journal::compact`]).
//! The server captures `sessions` and `snapshot_lsn` (the last LSN it assigned) together
//! under its registry lock ([`Snapshot::capture`]), and the journal thread compacts
//! between batches. Every LSN already written to the old journal is then at most
//! `snapshot_lsn` (the check is enforced), so dropping the old journal loses nothing;
//! entries appended to the new journal with an LSN at most `snapshot_lsn` (queued
//! before the capture) are skipped by recovery, so nothing is applied twice. A crash
//! between writing the snapshot and replacing the journal leaves the new snapshot with
//! the old journal, whose entries recovery then skips. A closed session is in neither
//! file afterwards: its messages and keys are physically gone from the state directory.
//!
//! # Failed writes
//!
//! A failing `write` or `fdatasync` (a full disk, an I/O error) makes
//! [`Journal::append`] cut the file back to its last good length and return the
//! error; the server answers `error: ...` and keeps serving. Should the cut itself
//! fail, the next append retries it before writing anything.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{self, CodecError, Reader};
use crate::crypto::MAX_SPKI_DER_LEN;
use crate::names::MAX_USERNAME_LEN;
use crate::proto::{Answer, MAX_ENVELOPE_LEN, MAX_KEY_TEXT_LEN};
use crate::session::{Limits, Participant, Record, Session, Sessions, Stored};
use crate::{crypto, fsutil};

/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "journal";
/// The snapshot's file name in the state directory.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// Temporary name of a journal being replaced (removed at start-up if left over).
pub const JOURNAL_TMP_FILE: &str = "journal.tmp";
/// Temporary name of a snapshot being written (removed at start-up if left over).
pub const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
/// First 8 bytes of a journal.
pub const JOURNAL_MAGIC: &[u8; 8] = b"MPCJRNL\n";
/// First 8 bytes of a snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"MPCSNAP\n";
/// The format version this build writes (2: key bindings).
pub const FORMAT_VERSION: u32 = 2;
/// The format version before this one (1: no key bindings), which a server start
/// migrates ([`crate::upgrade`]); [`recover`] refuses it.
pub const PREVIOUS_FORMAT_VERSION: u32 = 1;
/// Length of the file header: magic, version, file id.
pub const FILE_HEADER_LEN: u64 = 20;
/// Length of an entry's frame header: `len` and `crc`.
pub const FRAME_HEADER_LEN: usize = 8;
/// Longest entry body. The largest legitimate one is a snapshot Session entry with
/// [`MAX_STORED_PARTICIPANTS`] participants each with the longest name and key, about
/// 10.8 MB; the bound keeps a damaged length from asking for more (and a body is
/// read only when the file really holds that many bytes).
pub const MAX_ENTRY_LEN: usize = 16 << 20;
/// Most participants (the creator included) a stored session may have. The server's
/// participant limit must not exceed it, or a Create record could not be stored.
pub const MAX_STORED_PARTICIPANTS: usize = 10_000;
/// Most closed sids in one snapshot Closed entry (64 KiB of sids).
pub const MAX_CLOSED_PER_ENTRY: usize = 8192;
/// Most bindings in one snapshot Bindings entry (at most about 4.5 MiB).
pub const MAX_BINDINGS_PER_ENTRY: usize = 4096;
/// Journal size past which the server should compact by default.
pub const DEFAULT_COMPACT_BYTES: u64 = 64 << 20;

/// The shortest journal body: `lsn`, `batch`, and the shortest record (Live, Close).
const MIN_JOURNAL_BODY_LEN: usize = 8 + 8 + 1 + 8;
/// Read buffer for recovery; the journal is read sequentially.
const READ_BUFFER_LEN: usize = 1 << 20;

/// Longest possible snapshot Session body: the fixed fields, then every participant
/// with the longest name and key.
const MAX_SESSION_BODY_LEN: usize = 1
    + 8
    + 8
    + 1
    + 8
    + 4
    + MAX_STORED_PARTICIPANTS * (8 + 2 + MAX_USERNAME_LEN + 1 + 1 + 2 + MAX_KEY_TEXT_LEN + 8)
    + 8;
const _: () = assert!(MAX_SESSION_BODY_LEN <= MAX_ENTRY_LEN);
const _: () = assert!(MAX_KEY_TEXT_LEN <= u16::MAX as usize);
const _: () = assert!(MAX_USERNAME_LEN <= u16::MAX as usize);
const _: () = assert!(MAX_ENVELOPE_LEN + 64 <= MAX_ENTRY_LEN);
const _: () = assert!(1 + 4 + MAX_BINDINGS_PER_ENTRY * (8 + 2 + MAX_SPKI_DER_LEN) <= MAX_ENTRY_LEN);
const _: () = assert!(MAX_SPKI_DER_LEN <= u16::MAX as usize);

// ---------------------------------------------------------------------------------
// CRC-32

const CRC_TABLE: [u32; 256] = crc_table();
/// Slicing-by-8 tables: `CRC_TABLES[k][b]` is the CRC of byte `b` followed by `k` zero
/// bytes, so eight input bytes are folded in per step instead of one (the checksum
/// was a sixth of the server's CPU while relaying).
const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    t[0] = crc_table();
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// A running CRC-32 (IEEE polynomial, reflected; zlib's `crc32`).
#[derive(Clone, Copy)]
struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(!0)
    }

    fn update(mut self, data: &[u8]) -> Self {
        let t = &CRC_TABLES;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let lo = self.0 ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            self.0 = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xff) as usize] ^ (self.0 >> 8);
        }
        self
    }

    fn finish(self) -> u32 {
        !self.0
    }
}

/// CRC-32 of `data` (IEEE polynomial, reflected input and output, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    Crc32::new().update(data).finish()
}

/// The checksum stored in an entry's frame.
fn frame_crc(file_id: u64, len: u32, body: &[u8]) -> u32 {
    Crc32::new()
        .update(&file_id.to_be_bytes())
        .update(&len.to_be_bytes())
        .update(body)
        .finish()
}

// ---------------------------------------------------------------------------------
// Errors

/// Why start-up cannot use the state directory. Every variant names the file.
#[derive(Debug)]
pub enum StoreError {
    /// Reading, writing or syncing a file failed (permissions, a full disk, I/O).
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file does not start with the expected magic: it is not ours, or it is
    /// damaged at its very start.
    NotOurs {
        /// The file.
        path: PathBuf,
        /// "journal" or "snapshot".
        what: &'static str,
    },
    /// The file is from an older or newer format version.
    Version {
        /// The file.
        path: PathBuf,
        /// The version in its header.
        found: u32,
    },
    /// The file is damaged (or was written by a buggy build) at `offset`, and the
    /// damage is not an incomplete last write that could safely be dropped.
    Damaged {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damaged entry (0: the file header).
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
}

impl StoreError {
    fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    fn damaged(path: &Path, offset: u64, reason: impl Into<String>) -> Self {
        StoreError::Damaged {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io {
                path,
                action,
                source,
            } => {
                write!(f, "{}: cannot {action}: {source}", path.display())
            }
            StoreError::NotOurs { path, what } => write!(
                f,
                "{}: not an mpchatd {what} file (wrong magic bytes); refusing to start rather \
                 than misread it. Restore the state directory from a backup, or move the file \
                 away if it does not belong there.",
                path.display()
            ),
            StoreError::Version { path, found } => write!(
                f,
                "{}: format version {found}, but this mpchatd supports only version \
                 {FORMAT_VERSION} (a server start migrates version {PREVIOUS_FORMAT_VERSION} \
                 in place; the file is from an {} mpchatd); refusing to start rather than \
                 misread it. Run an mpchatd that reads version {found}{}.",
                path.display(),
                if *found < FORMAT_VERSION {
                    "older"
                } else {
                    "newer"
                },
                if *found > FORMAT_VERSION {
                    ", or restore the copy of the state made before the upgrade"
                } else {
                    ""
                }
            ),
            StoreError::Damaged {
                path,
                offset,
                reason,
            } => write!(
                f,
                "{}: damaged at byte offset {offset}: {reason}. Restore the state directory \
                 from a backup; mpchatd will not skip damaged records.",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An entry body that does not decode. Carries no payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

impl From<CodecError> for DecodeError {
    fn from(e: CodecError) -> Self {
        DecodeError(match e {
            CodecError::Truncated => "the entry is cut short",
            CodecError::TrailingBytes => "trailing bytes after the entry's fields",
        })
    }
}

fn too_large(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} is too large to store"),
    )
}

// ---------------------------------------------------------------------------------
// Encoding

use codec::{put_u32, put_u64};

fn put_str(out: &mut Vec<u8>, s: &str, max: usize, what: &str) -> io::Result<()> {
    if s.len() > max {
        return Err(too_large(what));
    }
    // max <= u16::MAX for every field (checked by the const asserts above).
    codec::put_u16(out, s.len() as u16);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_key(out: &mut Vec<u8>, key: &Option<String>) -> io::Result<()> {
    match key {
        None => out.push(0),
        Some(k) => {
            out.push(1);
            put_str(out, k, MAX_KEY_TEXT_LEN, "a public key")?;
        }
    }
    Ok(())
}

fn put_envelope(out: &mut Vec<u8>, envelope: &[u8]) -> io::Result<()> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(too_large("an envelope"));
    }
    put_u32(out, envelope.len() as u32);
    out.extend_from_slice(envelope);
    Ok(())
}

fn put_count(out: &mut Vec<u8>, n: usize, max: usize, what: &str) -> io::Result<()> {
    if n > max {
        return Err(too_large(what));
    }
    // max fits in u32 for every caller.
    put_u32(out, n as u32);
    Ok(())
}

const KIND_CREATE: u8 = 1;
const KIND_ANSWER: u8 = 2;
const KIND_LIVE: u8 = 3;
const KIND_MESSAGE: u8 = 4;
const KIND_ACK: u8 = 5;
const KIND_CLOSE: u8 = 6;
const KIND_BIND: u8 = 7;
const KIND_UNBIND: u8 = 8;
const KIND_REKEY: u8 = 9;

const SNAP_HEAD: u8 = 1;
const SNAP_SESSION: u8 = 2;
const SNAP_STORED: u8 = 3;
const SNAP_CLOSED: u8 = 4;
const SNAP_END: u8 = 5;
const SNAP_BINDINGS: u8 = 6;

/// Appends the encoding of `rec` (kind byte and fields, see the module docs) to `out`.
/// A field over its bound is an `InvalidInput` error and leaves `out` unchanged, so a
/// journal never holds an entry it could not read back.
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let result = encode_record_fields(rec, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_record_fields(rec: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    match rec {
        Record::Create {
            sid,
            creator,
            creator_key,
            invitees,
        } => {
            out.push(KIND_CREATE);
            put_u64(out, *sid);
            put_u64(out, creator.0);
            put_str(out, &creator.1, MAX_USERNAME_LEN, "a user name")?;
            put_str(out, creator_key, MAX_KEY_TEXT_LEN, "a public key")?;
            put_count(
                out,
                invitees.len(),
                MAX_STORED_PARTICIPANTS - 1,
                "the invitee list",
            )?;
            for (uid, name) in invitees {
                put_u64(out, *uid);
                put_str(out, name, MAX_USERNAME_LEN, "a user name")?;
            }
        }
        Record::Answer { sid, uid, key } => {
            out.push(KIND_ANSWER);
            put_u64(out, *sid);
            put_u64(out, *uid);
            put_key(out, key)?;
        }
        Record::Live { sid } => {
            out.push(KIND_LIVE);
            put_u64(out, *sid);
        }
        Record::Message {
            sid,
            n,
            author,
            envelope,
        } => {
            out.push(KIND_MESSAGE);
            put_u64(out, *sid);
            put_u64(out, *n);
            put_u64(out, *author);
            put_envelope(out, envelope)?;
        }
        Record::Ack { sid, uid, n } => {
            out.push(KIND_ACK);
            put_u64(out, *sid);
            put_u64(out, *uid);
            put_u64(out, *n);
        }
        Record::Close { sid } => {
            out.push(KIND_CLOSE);
            put_u64(out, *sid);
        }
        Record::Bind { uid, key } => {
            out.push(KIND_BIND);
            put_u64(out, *uid);
            put_der(out, key)?;
        }
        Record::Unbind { uid } => {
            out.push(KIND_UNBIND);
            put_u64(out, *uid);
        }
        Record::Rekey { uid, key } => {
            out.push(KIND_REKEY);
            put_u64(out, *uid);
            put_der(out, key)?;
        }
    }
    Ok(())
}

fn put_der(out: &mut Vec<u8>, der: &[u8]) -> io::Result<()> {
    if der.is_empty() || der.len() > MAX_SPKI_DER_LEN {
        return Err(too_large("a public key"));
    }
    // MAX_SPKI_DER_LEN <= u16::MAX (checked above).
    codec::put_u16(out, der.len() as u16);
    out.extend_from_slice(der);
    Ok(())
}

/// Starts a frame in `out`; returns where it starts.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    at
}

/// Completes the frame begun at `at`: fills in `len` and `crc` over what follows.
fn end_frame(out: &mut Vec<u8>, at: usize, file_id: u64) -> io::Result<()> {
    let len = out.len() - at - FRAME_HEADER_LEN;
    if len > MAX_ENTRY_LEN {
        out.truncate(at);
        return Err(too_large("an entry"));
    }
    let len = len as u32;
    let crc = frame_crc(file_id, len, &out[at + FRAME_HEADER_LEN..]);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

fn file_header(magic: &[u8; 8], file_id: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    h[12..].copy_from_slice(&file_id.to_be_bytes());
    h
}

fn random_file_id() -> io::Result<u64> {
    crypto::random_array::<8>()
        .map(u64::from_be_bytes)
        .map_err(|e| io::Error::other(e.to_string()))
}

// ---------------------------------------------------------------------------------
// Decoding

// Fields over a [`Reader`]: each length is checked against its bound before the bytes
// are taken (and so before anything is allocated).

fn read_flag(c: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match c.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError("a flag is neither 0 nor 1")),
    }
}

fn read_str(c: &mut Reader<'_>, max: usize) -> Result<String, DecodeError> {
    let n = usize::from(c.u16()?);
    if n > max {
        return Err(DecodeError("a text field is longer than its bound"));
    }
    std::str::from_utf8(c.take(n)?)
        .map(str::to_owned)
        .map_err(|_| DecodeError("a text field is not UTF-8"))
}

fn read_key(c: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    Ok(if read_flag(c)? {
        Some(read_str(c, MAX_KEY_TEXT_LEN)?)
    } else {
        None
    })
}

fn read_envelope(c: &mut Reader<'_>) -> Result<Arc<[u8]>, DecodeError> {
    let n = c.u32()? as usize;
    if n > MAX_ENVELOPE_LEN {
        return Err(DecodeError("an envelope is longer than its bound"));
    }
    Ok(Arc::from(c.take(n)?))
}

fn read_count(c: &mut Reader<'_>, max: usize) -> Result<usize, DecodeError> {
    let n = c.u32()? as usize;
    if n > max {
        return Err(DecodeError("a count is over its bound"));
    }
    Ok(n)
}

fn read_record(c: &mut Reader<'_>) -> Result<Record, DecodeError> {
    Ok(match c.u8()? {
        KIND_CREATE => {
            let sid = c.u64()?;
            let creator = (c.u64()?, read_str(c, MAX_USERNAME_LEN)?);
            let creator_key = read_str(c, MAX_KEY_TEXT_LEN)?;
            let count = read_count(c, MAX_STORED_PARTICIPANTS - 1)?;
            // Each invitee takes at least 10 bytes; do not reserve more than the body holds.
            let mut invitees = Vec::with_capacity(count.min(c.remaining() / 10));
            for _ in 0..count {
                invitees.push((c.u64()?, read_str(c, MAX_USERNAME_LEN)?));
            }
            Record::Create {
                sid,
                creator,
                creator_key,
                invitees,
            }
        }
        KIND_ANSWER => Record::Answer {
            sid: c.u64()?,
            uid: c.u64()?,
            key: read_key(c)?,
        },
        KIND_LIVE => Record::Live { sid: c.u64()? },
        KIND_MESSAGE => Record::Message {
            sid: c.u64()?,
            n: c.u64()?,
            author: c.u64()?,
            envelope: read_envelope(c)?,
        },
        KIND_ACK => Record::Ack {
            sid: c.u64()?,
            uid: c.u64()?,
            n: c.u64()?,
        },
        KIND_CLOSE => Record::Close { sid: c.u64()? },
        KIND_BIND => Record::Bind {
            uid: c.u64()?,
            key: read_der(c)?,
        },
        KIND_UNBIND => Record::Unbind { uid: c.u64()? },
        KIND_REKEY => Record::Rekey {
            uid: c.u64()?,
            key: read_der(c)?,
        },
        _ => return Err(DecodeError("unknown record kind")),
    })
}

fn read_der(c: &mut Reader<'_>) -> Result<Arc<[u8]>, DecodeError> {
    let n = usize::from(c.u16()?);
    if n == 0 || n > MAX_SPKI_DER_LEN {
        return Err(DecodeError(
            "a public key is empty or longer than its bound",
        ));
    }
    Ok(Arc::from(c.take(n)?))
}

/// Whether a record kind exists in format `version` (bindings came with 2).
fn record_in_version(rec: &Record, version: u32) -> bool {
    version >= 2
        || !matches!(
            rec,
            Record::Bind { .. } | Record::Unbind { .. } | Record::Rekey { .. }
        )
}

/// Decodes a record encoded by [`encode_record`]. Strict: the whole of `body` must be
/// exactly one record.
pub fn decode_record(body: &[u8]) -> Result<Record, DecodeError> {
    let mut c = Reader::new(body);
    let rec = read_record(&mut c)?;
    c.expect_empty()?;
    Ok(rec)
}

// ---------------------------------------------------------------------------------
// Reading files

/// Which format versions a reader takes: the current one only (a server start, after
/// any migration), or the previous one too (the migration itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    /// [`FORMAT_VERSION`] only.
    Current,
    /// [`FORMAT_VERSION`] or [`PREVIOUS_FORMAT_VERSION`].
    CurrentOrPrevious,
}

impl Accept {
    fn takes(self, version: u32) -> bool {
        version == FORMAT_VERSION
            || (self == Accept::CurrentOrPrevious && version == PREVIOUS_FORMAT_VERSION)
    }
}

/// The format version in the header of `path`, `None` if there is no such file.
/// Checks the magic only.
pub(crate) fn file_version(
    path: &Path,
    magic: &[u8; 8],
    what: &'static str,
) -> Result<Option<u32>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, "open", e)),
    };
    let len = file
        .metadata()
        .map_err(|e| StoreError::io(path, "read", e))?
        .len();
    let mut version = None;
    match read_header(&mut &file, path, len, magic, what, |v| {
        version = Some(v);
        true
    }) {
        Ok(_) => Ok(version),
        // A header cut short after its version still tells the version.
        Err(StoreError::Damaged { .. }) if version.is_some() => Ok(version),
        Err(e) => Err(e),
    }
}

/// Reads and checks a file header; returns the file id and the version, which
/// `accept` must take.
fn read_header(
    r: &mut impl Read,
    path: &Path,
    file_len: u64,
    magic: &[u8; 8],
    what: &'static str,
    mut accept: impl FnMut(u32) -> bool,
) -> Result<(u64, u32), StoreError> {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    let n = file_len.min(FILE_HEADER_LEN) as usize;
    r.read_exact(&mut h[..n])
        .map_err(|e| StoreError::io(path, "read", e))?;
    let incomplete = || StoreError::damaged(path, 0, "the file header is incomplete");
    if n < magic.len() {
        return Err(if magic.starts_with(&h[..n]) {
            incomplete()
        } else {
            StoreError::NotOurs {
                path: path.to_path_buf(),
                what,
            }
        });
    }
    if &h[..8] != magic {
        return Err(StoreError::NotOurs {
            path: path.to_path_buf(),
            what,
        });
    }
    if n < 12 {
        return Err(incomplete());
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&h[8..12]);
    let found = u32::from_be_bytes(version);
    if !accept(found) {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            found,
        });
    }
    if n < FILE_HEADER_LEN as usize {
        return Err(incomplete());
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[12..20]);
    Ok((u64::from_be_bytes(id), found))
}

/// The outcome of reading one frame.
enum Frame {
    /// A complete frame with a valid checksum; its body is in the buffer.
    Good {
        /// Body length.
        len: usize,
    },
    /// Incomplete, implausible or failing its checksum.
    Bad(&'static str),
}

/// Reads the frame at `pos` (the reader's position) into `body`.
fn read_frame(
    r: &mut impl Read,
    pos: u64,
    file_len: u64,
    file_id: u64,
    body: &mut Vec<u8>,
) -> io::Result<Frame> {
    let remaining = file_len - pos;
    if remaining < FRAME_HEADER_LEN as u64 {
        return Ok(Frame::Bad("the entry header is incomplete"));
    }
    let mut h = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut h)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len as usize > MAX_ENTRY_LEN {
        return Ok(Frame::Bad("the entry length is out of range"));
    }
    if u64::from(len) > remaining - FRAME_HEADER_LEN as u64 {
        return Ok(Frame::Bad("the entry is incomplete"));
    }
    // Bounded by MAX_ENTRY_LEN and by the bytes the file really holds.
    body.clear();
    body.resize(len as usize, 0);
    r.read_exact(body)?;
    if frame_crc(file_id, len, body) != crc {
        return Ok(Frame::Bad("the entry's checksum does not match"));
    }
    Ok(Frame::Good { len: len as usize })
}

/// After a bad journal entry at `bad_at`, looks for an intact entry that starts a
/// later batch: proof that the bad entry had been made durable before, so it is
/// damage rather than a torn last write. Returns that entry's offset.
fn find_later_batch(
    file: &File,
    file_len: u64,
    bad_at: u64,
    last_lsn: u64,
    file_id: u64,
) -> io::Result<Option<u64>> {
    const WINDOW: usize = 1 << 20;
    // len, crc, lsn, batch: enough to rule out almost every offset without a checksum.
    const PEEK: usize = FRAME_HEADER_LEN + 16;
    let word = |b: &[u8]| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let mut window = Vec::new();
    let mut body = Vec::new();
    let mut base = bad_at + 1;
    while base + PEEK as u64 <= file_len {
        let n = (file_len - base).min((WINDOW + PEEK) as u64) as usize;
        window.resize(n, 0);
        file.read_exact_at(&mut window, base)?;
        for i in 0..(n - PEEK + 1).min(WINDOW) {
            let at = base + i as u64;
            let w = &window[i..i + PEEK];
            let len = u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize;
            if !(MIN_JOURNAL_BODY_LEN..=MAX_ENTRY_LEN).contains(&len)
                || at + (FRAME_HEADER_LEN + len) as u64 > file_len
            {
                continue;
            }
            let (lsn, batch) = (word(&w[8..16]), word(&w[16..24]));
            if lsn <= last_lsn || batch <= bad_at || batch > at {
                continue;
            }
            body.resize(len, 0);
            file.read_exact_at(&mut body, at + FRAME_HEADER_LEN as u64)?;
            let crc = u32::from_be_bytes([w[4], w[5], w[6], w[7]]);
            if frame_crc(file_id, len as u32, &body) == crc {
                return Ok(Some(at));
            }
        }
        base += WINDOW as u64;
    }
    Ok(None)
}

/// Checks the invariants [`Session`] relies on; `Err` names the broken one.
fn check_session(s: &Session) -> Result<(), &'static str> {
    if s.sid == 0 {
        return Err("session id 0");
    }
    let first = s
        .participants
        .first()
        .ok_or("a session without participants")?;
    if s.participants.len() > MAX_STORED_PARTICIPANTS {
        return Err("too many participants");
    }
    if first.uid != s.creator || first.answer != Answer::Accepted {
        return Err("the creator is not the first, accepted participant");
    }
    let mut uids = HashSet::with_capacity(s.participants.len());
    for p in &s.participants {
        if !uids.insert(p.uid) {
            return Err("a participant appears twice");
        }
        if p.key.is_some() != (p.answer == Answer::Accepted) {
            return Err("a key without acceptance or an acceptance without a key");
        }
        if p.acked > s.last_n {
            return Err("an acknowledgement beyond the last message");
        }
    }
    let mut next = s.messages.front().map(|m| m.n);
    for m in &s.messages {
        if m.n == 0 || Some(m.n) != next {
            return Err("stored message numbers are not consecutive from 1 up");
        }
        next = m.n.checked_add(1);
        if m.envelope.is_empty() || !uids.contains(&m.author) {
            return Err("a stored message is empty or not by a participant");
        }
    }
    if s.messages.back().is_some_and(|m| m.n != s.last_n) {
        return Err("the last stored message is not the session's last message");
    }
    Ok(())
}

/// A snapshot read back: its LSN, sessions and closed sids.
/// A snapshot read back: its LSN, sessions, closed sids, key bindings and format
/// version.
pub(crate) struct SnapshotParts {
    lsn: u64,
    sessions: Vec<Session>,
    closed: Vec<u64>,
    bindings: Vec<(u64, Arc<[u8]>)>,
}

fn read_snapshot(path: &Path, accept: Accept) -> Result<Option<SnapshotParts>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, "open", e)),
    };
    let io_err = |e| StoreError::io(path, "read", e);
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut r = BufReader::with_capacity(READ_BUFFER_LEN, &file);
    let (file_id, version) =
        read_header(&mut r, path, file_len, SNAPSHOT_MAGIC, "snapshot", |v| {
            accept.takes(v)
        })?;

    let mut lsn = None;
    let mut sessions: Vec<Session> = Vec::new();
    let mut closed = Vec::new();
    let mut bindings: Vec<(u64, Arc<[u8]>)> = Vec::new();
    let mut bound_keys: HashSet<Arc<[u8]>> = HashSet::new();
    let mut sids = HashSet::new();
    // The session whose Stored entries are being read: offset, entry, messages to go.
    let mut open: Option<(u64, Session, u64)> = None;
    let mut ended = false;
    let mut body = Vec::new();
    let mut pos = FILE_HEADER_LEN;
    while pos < file_len {
        let len = match read_frame(&mut r, pos, file_len, file_id, &mut body).map_err(io_err)? {
            Frame::Good { len } => len,
            Frame::Bad(reason) => return Err(StoreError::damaged(path, pos, reason)),
        };
        let damaged = |reason: &str| StoreError::damaged(path, pos, reason);
        let mut c = Reader::new(&body);
        let kind = c.u8().map_err(|e| damaged(DecodeError::from(e).0))?;
        if ended {
            return Err(damaged("an entry after the end entry"));
        }
        if (kind == SNAP_HEAD) != lsn.is_none() {
            return Err(damaged("the head entry is missing or repeated"));
        }
        if kind != SNAP_STORED && open.is_some() {
            return Err(damaged("a session's stored messages are missing"));
        }
        if matches!(kind, SNAP_SESSION | SNAP_CLOSED) && !bindings.is_empty() {
            return Err(damaged("a session entry after the bindings"));
        }
        match kind {
            SNAP_HEAD => lsn = Some(c.u64().map_err(|e| damaged(DecodeError::from(e).0))?),
            SNAP_SESSION => {
                let (s, messages) = read_session(&mut c).map_err(|e| damaged(e.0))?;
                if !sids.insert(s.sid) {
                    return Err(damaged("a session id appears twice"));
                }
                open = Some((pos, s, messages));
            }
            SNAP_STORED => {
                let Some((_, s, to_go)) = open.as_mut() else {
                    return Err(damaged("a stored message outside a session"));
                };
                let sid = c.u64().map_err(|e| damaged(DecodeError::from(e).0))?;
                let n = c.u64().map_err(|e| damaged(DecodeError::from(e).0))?;
                let author = c.u64().map_err(|e| damaged(DecodeError::from(e).0))?;
                let envelope = read_envelope(&mut c).map_err(|e| damaged(e.0))?;
                if sid != s.sid {
                    return Err(damaged("a stored message of another session"));
                }
                s.backlog_bytes += envelope.len();
                s.messages.push_back(Stored {
                    n,
                    author,
                    envelope,
                });
                *to_go -= 1;
            }
            SNAP_CLOSED => {
                let count = read_count(&mut c, MAX_CLOSED_PER_ENTRY).map_err(|e| damaged(e.0))?;
                if count == 0 {
                    return Err(damaged("an empty closed-sid entry"));
                }
                for _ in 0..count {
                    let sid = c.u64().map_err(|e| damaged(DecodeError::from(e).0))?;
                    if sid == 0 || !sids.insert(sid) {
                        return Err(damaged("a closed sid is 0 or appears twice"));
                    }
                    closed.push(sid);
                }
            }
            SNAP_BINDINGS if version >= 2 => {
                let count = read_count(&mut c, MAX_BINDINGS_PER_ENTRY).map_err(|e| damaged(e.0))?;
                if count == 0 {
                    return Err(damaged("an empty bindings entry"));
                }
                for _ in 0..count {
                    let uid = c.u64().map_err(|e| damaged(DecodeError::from(e).0))?;
                    let key = read_der(&mut c).map_err(|e| damaged(e.0))?;
                    if uid == 0 || bindings.last().is_some_and(|(last, _)| *last >= uid) {
                        return Err(damaged("binding uids are 0 or not increasing"));
                    }
                    if !bound_keys.insert(key.clone()) {
                        return Err(damaged("a key is bound to two accounts"));
                    }
                    bindings.push((uid, key));
                }
            }
            SNAP_END => {
                let n_sessions = c.u64().map_err(|e| damaged(DecodeError::from(e).0))?;
                let n_closed = c.u64().map_err(|e| damaged(DecodeError::from(e).0))?;
                let n_bindings = if version >= 2 {
                    c.u64().map_err(|e| damaged(DecodeError::from(e).0))?
                } else {
                    0
                };
                if n_sessions != sessions.len() as u64
                    || n_closed != closed.len() as u64
                    || n_bindings != bindings.len() as u64
                {
                    return Err(damaged("entries are missing (the totals do not match)"));
                }
                ended = true;
            }
            _ => return Err(damaged("unknown snapshot entry kind")),
        }
        c.expect_empty()
            .map_err(|e| damaged(DecodeError::from(e).0))?;
        if let Some((at, s, 0)) = &open {
            check_session(s).map_err(|reason| StoreError::damaged(path, *at, reason))?;
            if let Some((_, s, _)) = open.take() {
                sessions.push(s);
            }
        }
        pos += (FRAME_HEADER_LEN + len) as u64;
    }
    if !ended {
        return Err(StoreError::damaged(
            path,
            pos,
            "the snapshot ends before its end entry",
        ));
    }
    // `ended` implies a head entry was read.
    Ok(lsn.map(|lsn| SnapshotParts {
        lsn,
        sessions,
        closed,
        bindings,
    }))
}

/// Reads a snapshot Session entry after its kind byte; returns the session (without
/// messages) and how many Stored entries follow.
fn read_session(c: &mut Reader<'_>) -> Result<(Session, u64), DecodeError> {
    let sid = c.u64()?;
    let creator = c.u64()?;
    let live = read_flag(c)?;
    let last_n = c.u64()?;
    let count = read_count(c, MAX_STORED_PARTICIPANTS)?;
    // Each participant takes at least 20 bytes; do not reserve more than the body holds.
    let mut participants = Vec::with_capacity(count.min(c.remaining() / 20));
    for _ in 0..count {
        let uid = c.u64()?;
        let name = read_str(c, MAX_USERNAME_LEN)?;
        let answer = match c.u8()? {
            0 => Answer::Invited,
            1 => Answer::Accepted,
            2 => Answer::Declined,
            _ => return Err(DecodeError("unknown invitation answer")),
        };
        let key = read_key(c)?;
        let acked = c.u64()?;
        participants.push(Participant {
            uid,
            name,
            answer,
            key,
            acked,
        });
    }
    let messages = c.u64()?;
    let session = Session {
        sid,
        creator,
        participants,
        live,
        last_n,
        messages: Default::default(),
        backlog_bytes: 0,
        durable_n: last_n,
    };
    Ok((session, messages))
}

// ---------------------------------------------------------------------------------
// Writing files

/// Creates (or truncates) a private file for writing and reading.
fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Writes `tmp`, fsyncs it, renames it to `path` and fsyncs `dir`; returns the file,
/// still open. Removes `tmp` on failure.
fn replace_file(
    dir: &Path,
    tmp: &Path,
    path: &Path,
    write: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<File> {
    let result = (|| {
        let file = create_private(tmp)?;
        write(&file)?;
        file.sync_all()?;
        fs::rename(tmp, path)?;
        fsutil::sync_dir(dir)?;
        Ok(file)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

fn encode_session(s: &Session, file_id: u64, out: &mut Vec<u8>) -> io::Result<()> {
    check_session(s).map_err(|reason| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("session {:016x} cannot be stored: {reason}", s.sid),
        )
    })?;
    let at = begin_frame(out);
    out.push(SNAP_SESSION);
    put_u64(out, s.sid);
    put_u64(out, s.creator);
    out.push(u8::from(s.live));
    put_u64(out, s.last_n);
    put_count(
        out,
        s.participants.len(),
        MAX_STORED_PARTICIPANTS,
        "a session",
    )?;
    for p in &s.participants {
        put_u64(out, p.uid);
        put_str(out, &p.name, MAX_USERNAME_LEN, "a user name")?;
        out.push(match p.answer {
            Answer::Invited => 0,
            Answer::Accepted => 1,
            Answer::Declined => 2,
        });
        put_key(out, &p.key)?;
        put_u64(out, p.acked);
    }
    put_u64(out, s.messages.len() as u64);
    end_frame(out, at, file_id)
}

fn write_snapshot<'a>(
    dir: &Path,
    lsn: u64,
    sessions: impl Iterator<Item = &'a Session>,
    closed: impl Iterator<Item = u64>,
    bindings: &[(u64, Arc<[u8]>)],
) -> io::Result<()> {
    let file_id = random_file_id()?;
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let path = dir.join(SNAPSHOT_FILE);
    replace_file(dir, &tmp, &path, |file| {
        let mut w = BufWriter::with_capacity(READ_BUFFER_LEN, file);
        w.write_all(&file_header(SNAPSHOT_MAGIC, file_id))?;
        let mut buf = Vec::new();
        let at = begin_frame(&mut buf);
        buf.push(SNAP_HEAD);
        put_u64(&mut buf, lsn);
        end_frame(&mut buf, at, file_id)?;
        w.write_all(&buf)?;

        let mut n_sessions = 0u64;
        for s in sessions {
            buf.clear();
            encode_session(s, file_id, &mut buf)?;
            w.write_all(&buf)?;
            for m in &s.messages {
                buf.clear();
                let at = begin_frame(&mut buf);
                buf.push(SNAP_STORED);
                put_u64(&mut buf, s.sid);
                put_u64(&mut buf, m.n);
                put_u64(&mut buf, m.author);
                put_envelope(&mut buf, &m.envelope)?;
                end_frame(&mut buf, at, file_id)?;
                w.write_all(&buf)?;
            }
            n_sessions += 1;
        }

        let mut n_closed = 0u64;
        let mut chunk = Vec::with_capacity(MAX_CLOSED_PER_ENTRY);
        let mut closed = closed.peekable();
        while closed.peek().is_some() {
            chunk.clear();
            chunk.extend(closed.by_ref().take(MAX_CLOSED_PER_ENTRY));
            buf.clear();
            let at = begin_frame(&mut buf);
            buf.push(SNAP_CLOSED);
            put_count(
                &mut buf,
                chunk.len(),
                MAX_CLOSED_PER_ENTRY,
                "a closed-sid entry",
            )?;
            chunk.iter().for_each(|sid| put_u64(&mut buf, *sid));
            end_frame(&mut buf, at, file_id)?;
            w.write_all(&buf)?;
            n_closed += chunk.len() as u64;
        }

        for chunk in bindings.chunks(MAX_BINDINGS_PER_ENTRY) {
            buf.clear();
            let at = begin_frame(&mut buf);
            buf.push(SNAP_BINDINGS);
            put_count(
                &mut buf,
                chunk.len(),
                MAX_BINDINGS_PER_ENTRY,
                "a bindings entry",
            )?;
            for (uid, key) in chunk {
                put_u64(&mut buf, *uid);
                put_der(&mut buf, key)?;
            }
            end_frame(&mut buf, at, file_id)?;
            w.write_all(&buf)?;
        }

        buf.clear();
        let at = begin_frame(&mut buf);
        buf.push(SNAP_END);
        put_u64(&mut buf, n_sessions);
        put_u64(&mut buf, n_closed);
        put_u64(&mut buf, bindings.len() as u64);
        end_frame(&mut buf, at, file_id)?;
        w.write_all(&buf)?;
        w.flush()
    })
    .map(drop)
}

/// Creates an empty journal (header only) in place of any existing one.
fn create_journal(dir: &Path) -> io::Result<(File, u64)> {
    let file_id = random_file_id()?;
    let tmp = dir.join(JOURNAL_TMP_FILE);
    let path = dir.join(JOURNAL_FILE);
    let file = replace_file(dir, &tmp, &path, |mut f| {
        f.write_all(&file_header(JOURNAL_MAGIC, file_id))
    })?;
    Ok((file, file_id))
}

// ---------------------------------------------------------------------------------
// The journal

/// The open journal, owned by the server's one journal writer thread.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    file_id: u64,
    /// Length of the file's good part (durable up to the last synced batch): where
    /// the next batch goes.
    len: u64,
    /// The highest LSN written (or recovered); appended LSNs must exceed it.
    last_lsn: u64,
    /// A failed append could not cut the file back to `len`; retry before writing.
    needs_cut: bool,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

impl Journal {
    /// Appends `entries` (`(lsn, record)`, LSNs strictly increasing and above every LSN
    /// written before) as one batch: one `write` and one `fdatasync`. When this returns
    /// `Ok`, every entry is durable. On error nothing of the batch counts: the file is
    /// cut back to its previous length (so no partial write can sit before later
    /// entries), the error is returned, and the journal stays usable.
    pub fn append(&mut self, entries: &[(u64, Record)]) -> io::Result<()> {
        self.write_batch(entries, true)
    }

    /// [`Journal::append`] without the `fdatasync`: the batch is written, and durable
    /// once a later [`Journal::append`] (or a compaction) syncs the file. For records
    /// nothing waits for and whose loss in a power cut is harmless. A crash before
    /// that sync leaves at most a torn last batch, which recovery drops.
    pub fn append_unsynced(&mut self, entries: &[(u64, Record)]) -> io::Result<()> {
        self.write_batch(entries, false)
    }

    fn write_batch(&mut self, entries: &[(u64, Record)], sync: bool) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.needs_cut {
            self.file.set_len(self.len)?;
            self.needs_cut = false;
        }
        let batch = self.len;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut last = self.last_lsn;
        let encoded = entries.iter().try_for_each(|(lsn, rec)| {
            if *lsn <= last {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("journal LSN {lsn} does not follow LSN {last}"),
                ));
            }
            last = *lsn;
            let at = begin_frame(&mut buf);
            put_u64(&mut buf, *lsn);
            put_u64(&mut buf, batch);
            encode_record(rec, &mut buf)?;
            end_frame(&mut buf, at, self.file_id)
        });
        let result = encoded.and_then(|()| {
            self.file.write_all_at(&buf, batch)?;
            if sync {
                self.file.sync_data()?;
            }
            Ok(())
        });
        match &result {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.last_lsn = last;
            }
            Err(e) => {
                log::error!(
                    "{}: appending {} records failed: {e}",
                    self.path.display(),
                    entries.len()
                );
                if let Err(cut) = self.file.set_len(self.len) {
                    log::error!(
                        "{}: cannot cut back to {} bytes after the failed append: {cut}",
                        self.path.display(),
                        self.len
                    );
                    self.needs_cut = true;
                }
            }
        }
        // Do not keep the memory of one huge batch for ever.
        if buf.capacity() <= READ_BUFFER_LEN {
            self.buf = buf;
        }
        result
    }

    /// Bytes in the journal (header included); compact when this passes a bound such
    /// as [`DEFAULT_COMPACT_BYTES`].
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the journal holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == FILE_HEADER_LEN
    }

    /// The highest LSN appended or recovered.
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a snapshot of `sessions` as of `snapshot_lsn` and replaces the journal by
    /// an empty one. `sessions` is borrowed for the whole write; a server that must not
    /// do I/O under its lock captures a [`Snapshot`] under it and calls
    /// [`Journal::compact_captured`] outside.
    pub fn compact(&mut self, snapshot_lsn: u64, sessions: &Sessions) -> io::Result<()> {
        self.compact_with(
            snapshot_lsn,
            sessions.iter(),
            sessions.closed_sids().copied(),
            sessions.bindings().sorted(),
        )
    }

    /// [`Journal::compact`] from a captured snapshot.
    pub fn compact_captured(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        self.compact_with(
            snapshot.lsn,
            snapshot.sessions.iter(),
            snapshot.closed.iter().copied(),
            snapshot.sorted_bindings(),
        )
    }

    fn compact_with<'a>(
        &mut self,
        snapshot_lsn: u64,
        sessions: impl Iterator<Item = &'a Session>,
        closed: impl Iterator<Item = u64>,
        bindings: Vec<(u64, Arc<[u8]>)>,
    ) -> io::Result<()> {
        // Dropping the journal is safe only if the snapshot includes all of it.
        if snapshot_lsn < self.last_lsn {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a snapshot at LSN {snapshot_lsn} does not include the journal's LSN {}",
                    self.last_lsn
                ),
            ));
        }
        write_snapshot(&self.dir, snapshot_lsn, sessions, closed, &bindings)?;
        // From here the snapshot alone is enough; the old journal's entries are all
        // at most snapshot_lsn and would be skipped. Until the rename below the old
        // journal stays in use, which is just as correct.
        let (file, file_id) = create_journal(&self.dir)?;
        self.file = file;
        self.file_id = file_id;
        self.len = FILE_HEADER_LEN;
        self.needs_cut = false;
        log::info!(
            "{}: compacted into a snapshot at LSN {snapshot_lsn}",
            self.path.display()
        );
        Ok(())
    }
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the buffer: it holds encoded envelopes and keys.
        write!(
            f,
            "Journal({}, {} bytes, last LSN {})",
            self.path.display(),
            self.len,
            self.last_lsn
        )
    }
}

/// Writes `snapshot` as the snapshot file of `dir` (a backup's directory), with the
/// same atomic replacement as a compaction's. The caller makes sure every record up
/// to the snapshot's LSN is stored before it calls the copy consistent.
pub fn write_snapshot_to(dir: &Path, snapshot: &Snapshot) -> io::Result<()> {
    write_snapshot(
        dir,
        snapshot.lsn,
        snapshot.sessions.iter(),
        snapshot.closed.iter().copied(),
        &snapshot.sorted_bindings(),
    )
}

/// Session state captured for a snapshot (cheap: envelopes are shared, not copied).
pub struct Snapshot {
    lsn: u64,
    sessions: Vec<Session>,
    closed: Vec<u64>,
    /// Unsorted: sorting waits until the lock is released.
    bindings: Vec<(u64, Arc<[u8]>)>,
}

impl Snapshot {
    /// Captures `sessions` as of `lsn`, the last LSN assigned to a record applied to
    /// them. Call it under the lock that orders LSNs.
    pub fn capture(lsn: u64, sessions: &Sessions) -> Snapshot {
        Snapshot {
            lsn,
            sessions: sessions.iter().cloned().collect(),
            closed: sessions.closed_sids().copied().collect(),
            bindings: sessions.bindings().iter().collect(),
        }
    }

    fn sorted_bindings(&self) -> Vec<(u64, Arc<[u8]>)> {
        let mut b = self.bindings.clone();
        b.sort_unstable_by_key(|(uid, _)| *uid);
        b
    }

    /// The LSN the snapshot includes.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// The number of sessions (live or pending) it holds.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the contents: they hold keys and envelopes.
        write!(
            f,
            "Snapshot(lsn {}, {} sessions, {} closed)",
            self.lsn,
            self.sessions.len(),
            self.closed.len()
        )
    }
}

// ---------------------------------------------------------------------------------
// Recovery

/// The state recovered at start-up.
pub struct Recovered {
    /// Every session and closed sid, all messages durable.
    pub sessions: Sessions,
    /// The highest LSN in the snapshot or the journal; the server numbers on from here.
    pub last_lsn: u64,
    /// The journal, open for appending.
    pub journal: Journal,
}

impl fmt::Debug for Recovered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Recovered(last LSN {}, {} sessions, {:?})",
            self.last_lsn,
            self.sessions.iter().count(),
            self.journal
        )
    }
}

/// Rebuilds session state from `state_dir` (which must exist): the snapshot if any,
/// then the journal entries after it. Missing files are empty state (an empty journal
/// is created). An incomplete or damaged last write is cut off with a warning; any
/// other damage, and a file of another format version, is an error naming the file.
pub fn recover(state_dir: &Path, limits: Limits) -> Result<Recovered, StoreError> {
    recover_with(state_dir, limits, Accept::Current)
}

/// [`recover`] taking files of the formats `accept` names (the migration reads the
/// previous format with it).
pub(crate) fn recover_with(
    state_dir: &Path,
    limits: Limits,
    accept: Accept,
) -> Result<Recovered, StoreError> {
    for tmp in [SNAPSHOT_TMP_FILE, JOURNAL_TMP_FILE] {
        let path = state_dir.join(tmp);
        match fs::remove_file(&path) {
            Ok(()) => log::info!("{}: removed an unfinished file", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&path, "remove", e)),
        }
    }
    let snapshot_path = state_dir.join(SNAPSHOT_FILE);
    let (snapshot_lsn, mut sessions) = match read_snapshot(&snapshot_path, accept)? {
        Some(p) => (
            p.lsn,
            Sessions::from_parts(limits, p.sessions, p.closed, p.bindings),
        ),
        None => (0, Sessions::new(limits)),
    };
    let journal = open_journal(state_dir, snapshot_lsn, &mut sessions, accept)?;
    sessions.mark_all_durable();
    log::info!(
        "{}: recovered {} sessions up to LSN {}",
        state_dir.display(),
        sessions.iter().count(),
        journal.last_lsn
    );
    Ok(Recovered {
        sessions,
        last_lsn: journal.last_lsn,
        journal,
    })
}

fn open_journal(
    dir: &Path,
    snapshot_lsn: u64,
    sessions: &mut Sessions,
    accept: Accept,
) -> Result<Journal, StoreError> {
    let path = dir.join(JOURNAL_FILE);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (file, file_id) =
                create_journal(dir).map_err(|e| StoreError::io(&path, "create", e))?;
            return Ok(Journal {
                dir: dir.to_path_buf(),
                path,
                file,
                file_id,
                len: FILE_HEADER_LEN,
                last_lsn: snapshot_lsn,
                needs_cut: false,
                buf: Vec::new(),
            });
        }
        Err(e) => return Err(StoreError::io(&path, "open", e)),
    };
    let io_err = |e| StoreError::io(&path, "read", e);
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut r = BufReader::with_capacity(READ_BUFFER_LEN, &file);
    let (file_id, version) = read_header(&mut r, &path, file_len, JOURNAL_MAGIC, "journal", |v| {
        accept.takes(v)
    })?;

    let mut pos = FILE_HEADER_LEN;
    let mut last_lsn = 0u64;
    let mut last_batch = None;
    let mut bad = None;
    let mut body = Vec::new();
    while pos < file_len {
        let len = match read_frame(&mut r, pos, file_len, file_id, &mut body).map_err(io_err)? {
            Frame::Good { len } => len,
            Frame::Bad(reason) => {
                bad = Some(reason);
                break;
            }
        };
        let damaged = |reason: String| StoreError::damaged(&path, pos, reason);
        let mut c = Reader::new(&body);
        let (lsn, batch, rec) = (|| {
            let (lsn, batch) = (c.u64()?, c.u64()?);
            let rec = read_record(&mut c)?;
            c.expect_empty()?;
            Ok::<_, DecodeError>((lsn, batch, rec))
        })()
        .map_err(|e| {
            damaged(format!(
                "the entry's checksum is valid but it does not decode ({e})"
            ))
        })?;
        if lsn <= last_lsn {
            return Err(damaged(format!("LSN {lsn} does not follow LSN {last_lsn}")));
        }
        if !record_in_version(&rec, version) {
            return Err(damaged(format!(
                "LSN {lsn} is a key binding record in a version {version} journal"
            )));
        }
        if batch != pos && Some(batch) != last_batch {
            return Err(damaged(format!(
                "LSN {lsn} names a batch that is not its own"
            )));
        }
        if lsn > snapshot_lsn && !sessions.apply(&rec) {
            return Err(damaged(format!(
                "the record with LSN {lsn} does not apply to the state before it"
            )));
        }
        last_lsn = lsn;
        last_batch = Some(batch);
        pos += (FRAME_HEADER_LEN + len) as u64;
    }
    drop(r);

    if let Some(reason) = bad {
        let later = find_later_batch(&file, file_len, pos, last_lsn, file_id).map_err(io_err)?;
        if let Some(later) = later {
            return Err(StoreError::damaged(
                &path,
                pos,
                format!("{reason}, and entries written after it follow at offset {later}"),
            ));
        }
        // Everything from `pos` on is the last write, never confirmed as durable.
        file.set_len(pos)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io(&path, "cut the damaged tail off", e))?;
        log::warn!(
            "{}: dropped {} bytes at offset {pos}: an incomplete or damaged last write ({reason})",
            path.display(),
            file_len - pos
        );
    }
    Ok(Journal {
        dir: dir.to_path_buf(),
        path,
        file,
        file_id,
        len: pos,
        last_lsn: last_lsn.max(snapshot_lsn),
        needs_cut: false,
        buf: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn crc32_in_pieces_equals_crc32_at_once() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 17, 999, 1000] {
            let (a, b) = data.split_at(split);
            assert_eq!(Crc32::new().update(a).update(b).finish(), crc32(&data));
        }
    }

    #[test]
    fn frame_checksum_depends_on_the_file_id_and_the_length() {
        let body = b"body bytes";
        let base = frame_crc(1, 10, body);
        assert_ne!(frame_crc(2, 10, body), base);
        assert_ne!(frame_crc(1, 11, body), base);
    }

    #[test]
    fn encoding_refuses_oversized_fields_and_leaves_the_buffer_unchanged() {
        let mut out = vec![7u8];
        let rec = Record::Answer {
            sid: 1,
            uid: 2,
            key: Some("k".repeat(MAX_KEY_TEXT_LEN + 1)),
        };
        assert!(encode_record(&rec, &mut out).is_err());
        let rec = Record::Message {
            sid: 1,
            n: 1,
            author: 2,
            envelope: Arc::from(vec![1u8; MAX_ENVELOPE_LEN + 1]),
        };
        assert!(encode_record(&rec, &mut out).is_err());
        let name = "n".repeat(MAX_USERNAME_LEN + 1);
        let rec = Record::Create {
            sid: 1,
            creator: (1, name),
            creator_key: "k".into(),
            invitees: vec![(2, "b".into())],
        };
        assert!(encode_record(&rec, &mut out).is_err());
        assert_eq!(out, vec![7u8]);
    }

    #[test]
    fn a_session_with_gaps_in_its_message_numbers_is_refused() {
        let mut s = Session {
            sid: 5,
            creator: 1,
            participants: vec![Participant {
                uid: 1,
                name: "a".into(),
                answer: Answer::Accepted,
                key: Some("K".into()),
                acked: 0,
            }],
            live: true,
            last_n: 3,
            messages: Default::default(),
            backlog_bytes: 0,
            durable_n: 3,
        };
        assert_eq!(check_session(&s), Ok(()));
        let msg = |n| Stored {
            n,
            author: 1,
            envelope: Arc::from(&b"x"[..]),
        };
        s.messages.extend([msg(1), msg(3)]);
        assert!(check_session(&s).is_err());
        s.messages = [msg(2), msg(3)].into_iter().collect();
        assert_eq!(check_session(&s), Ok(()));
        s.messages = [msg(0)].into_iter().collect();
        assert!(check_session(&s).is_err());
    }
}
