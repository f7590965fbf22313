//! The client side of the end-to-end layer, measured in the bench's own process
//! (`--only envelope`): envelope sizes at each session size, the one-time costs of a
//! session (the creator's member list, a sender key's distribution), and the CPU a
//! client spends per message sent and per message read once keys are distributed.
//!
//! Per-message work is what `mpchat` does, with the library's code: sending is
//! seal, persist the advanced chain (before the envelope leaves), MTP-seal the
//! msg_req; reading is MTP-open the delivery, check and open the envelope, and per
//! read batch persist the session state once and MTP-seal one acknowledgement. Only
//! the socket is missing (the backlog figure has it). CPU is the measuring thread's
//! own ([`thread_cpu`]), so the machine's other work does not count, and wall time is
//! given beside it (it includes the fsyncs' waits).
//!
//! This module must never assert a timing, and never print a key or a text.

use std::path::Path;
use std::time::{Duration, Instant};

use mpchat::crypto::{AeadKey, Direction, RsaPublic};
use mpchat::mtp;
use mpchat::proto::{Ack, Delivery, MsgReq};

use crate::client::{now_ms, persist, Author, Creator, Reader, Taken};
use crate::error::{fail, BenchError, Ctx};
use crate::mpchatd::KeyPool;
use crate::proc::{thread_cpu, ThreadClock};
use crate::relay::text_of;
use crate::run::time_ms;

/// Participants of the session the per-message and one-time figures are measured in
/// (the largest size).
pub const E2E_PARTICIPANTS: usize = 50;
/// Deliveries a client handles before it persists its state once and acknowledges
/// (mpchat(1): every delivery already queued, up to 256).
pub const READ_BATCH: usize = 256;
/// Authors whose messages the per-message reader reads, interleaved as in a busy
/// group (each sender key seals at most 1,000 messages before it rotates).
const TALKERS: usize = 4;
/// Messages one sender key seals before it must rotate.
const KEY_LIFETIME: usize = 1_000;
/// The session id of the in-process session.
const SID: u64 = 0x5eed_0000_0000_0001;

/// The bytes of a session of some size.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// An `MPM2` carrying a 100-byte text.
    pub message: usize,
    /// Its bytes on the wire per delivery (MTP header, `n`, envelope, mac).
    pub message_wire: usize,
    /// The `MPK2` distributing one sender key to every other participant.
    pub distribution: usize,
    /// Its bytes on the wire per delivery (every participant receives all of it).
    pub distribution_wire: usize,
    /// The creator's member list (`MPS2`) with the bench's names.
    pub statement: usize,
}

/// Bytes on the wire of one delivery carrying an envelope of `len` bytes.
pub fn wire_len(len: usize) -> usize {
    mtp::HEADER_LEN + 8 + len + mtp::MAC_LEN
}

fn name(i: usize) -> String {
    format!("p{i}")
}

fn uid(i: usize) -> u64 {
    i as u64 + 1
}

/// A session of `participants` in the bench's process: participant `i` has uid
/// `i + 1`, name `p<i>` and key `i` of the pool (cyclically); participant 0, the
/// creator, is the author, its statement signed and its first key not distributed.
fn creator_author(keys: &KeyPool, participants: usize) -> Result<Author<'_>, BenchError> {
    let (key, _) = keys.cyclic(0)?;
    let mut recipients: Vec<(u64, &RsaPublic)> = Vec::with_capacity(participants);
    for i in 1..participants {
        recipients.push((uid(i), keys.cyclic(i)?.1));
    }
    let mut a = Author::new(SID, uid(0), key, recipients, now_ms())?;
    let names: Vec<String> = (1..participants).map(name).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    a.sign_statement(&name(0), &names, 0)?;
    Ok(a)
}

/// The envelope sizes of a session of `participants` (at least 2).
pub fn sizes(keys: &KeyPool, participants: usize) -> Result<Sizes, BenchError> {
    let mut a = creator_author(keys, participants)?;
    let statement = a.state.statement.as_ref().map_or(0, |s| s.bytes().len());
    let distribution = a.distribute()?.len();
    let text = text_of(0);
    let text = std::str::from_utf8(&text).map_err(|_| fail("text_of is ASCII"))?;
    let message = a.seal(text, now_ms())?.message.len();
    Ok(Sizes {
        message,
        message_wire: wire_len(message),
        distribution,
        distribution_wire: wire_len(distribution),
        statement,
    })
}

/// The one-time costs of a session of `participants`, medians of `samples`, in ms.
#[derive(Debug, Clone, Copy)]
pub struct OneTime {
    /// The creator signs its member list.
    pub statement_sign_ms: f64,
    /// A member verifies it.
    pub statement_verify_ms: f64,
    /// An author builds the `MPK2` of a new key for every other participant.
    pub distribution_build_ms: f64,
    /// One recipient checks it and takes its entry (signature, unwrap, commitment).
    pub distribution_open_ms: f64,
}

/// Measures [`OneTime`] with the pool's keys (RSA of the run's size).
pub fn one_time(
    keys: &KeyPool,
    participants: usize,
    samples: usize,
) -> Result<OneTime, BenchError> {
    let (_, creator_pub) = keys.cyclic(0)?;
    let (reader_key, _) = keys.cyclic(1)?;
    let names: Vec<String> = (1..participants).map(name).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let creator_name = name(0);
    let creator = Creator {
        uid: uid(0),
        name: &creator_name,
        key: creator_pub,
    };
    let mut a = creator_author(keys, participants)?;
    let statement_sign_ms = time_ms(samples, || a.sign_statement(&creator_name, &names, 0))?;
    let statement = a
        .state
        .statement
        .as_ref()
        .map(|s| s.bytes().to_vec())
        .ok_or_else(|| fail("no statement"))?;
    let statement_verify_ms = time_ms(samples, || {
        Reader::new(SID, uid(1), reader_key).take(&statement, uid(0), creator_pub, creator)
    })?;
    // A fresh sender key each time (its making is not timed: random bytes and an
    // Ed25519 key, microseconds), so each build is a first distribution to everyone.
    let mut build = Vec::with_capacity(samples);
    let mut dist = Vec::new();
    for _ in 0..samples.max(1) {
        let mut a = creator_author(keys, participants)?;
        let t = Instant::now();
        dist = std::hint::black_box(a.distribute()?);
        build.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let distribution_build_ms = crate::stats::median(&build).ok_or_else(|| fail("no samples"))?;
    let distribution_open_ms = time_ms(samples, || {
        Reader::new(SID, uid(1), reader_key).take(&dist, uid(0), creator_pub, creator)
    })?;
    Ok(OneTime {
        statement_sign_ms,
        statement_verify_ms,
        distribution_build_ms,
        distribution_open_ms,
    })
}

/// CPU and wall time spent on `count` items.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// The measuring thread's CPU time.
    pub cpu: Duration,
    /// Wall time.
    pub wall: Duration,
    /// Items done.
    pub count: u64,
}

impl Cost {
    /// CPU microseconds per item.
    pub fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.count.max(1) as f64
    }

    /// Wall microseconds per item.
    pub fn wall_us(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.count.max(1) as f64
    }
}

/// Runs `f`, which does `count` items, on this thread and returns what it cost.
pub fn measure(
    tps: u64,
    count: u64,
    f: impl FnOnce() -> Result<(), BenchError>,
) -> Result<(Cost, ThreadClock), BenchError> {
    let (c0, clock) = thread_cpu(tps)?;
    let t0 = Instant::now();
    f()?;
    let wall = t0.elapsed();
    let (c1, _) = thread_cpu(tps)?;
    Ok((
        Cost {
            cpu: c1.saturating_sub(c0),
            wall,
            count,
        },
        clock,
    ))
}

/// The per-message figures at [`E2E_PARTICIPANTS`].
#[derive(Debug, Clone, Copy)]
pub struct PerMessage {
    /// Sending: seal, persist the sender's state, MTP-seal; per message.
    pub send: Cost,
    /// One persist of the sender's state alone (part of `send`).
    pub persist: Cost,
    /// Seal and MTP-seal without the persist (the rest of `send`), under a key of
    /// its own.
    pub seal: Cost,
    /// Reading in batches of [`READ_BATCH`]: MTP-open, check and open; per batch one
    /// persist and one acknowledgement; per message.
    pub read: Cost,
    /// Reading one message per batch (a quiet session): per message.
    pub read_one: Cost,
    /// Bytes of the sender's persisted state.
    pub sender_state: usize,
    /// Bytes of the reader's persisted state (every other participant's key held).
    pub reader_state: usize,
    /// Which CPU clock was read.
    pub clock: ThreadClock,
}

/// Measures [`PerMessage`] in a session of `participants`: `send` messages sent
/// (at most one key's life, 1,000, so no rotation falls inside), `read` read in
/// batches and `read_one` read one at a time, the state files in `dir`.
pub fn per_message(
    keys: &KeyPool,
    participants: usize,
    counts: (usize, usize, usize),
    dir: &Path,
    tps: u64,
) -> Result<PerMessage, BenchError> {
    let (send_n, read_n, one_n) = counts;
    let send_n = send_n.clamp(1, KEY_LIFETIME);
    let talkers = TALKERS.min(participants - 1).max(1);
    let (read_n, one_n) = (read_n.max(1), one_n.max(1));
    if read_n + one_n > talkers * KEY_LIFETIME {
        return Err(fail(format!(
            "at most {} messages can be read without a rotation",
            talkers * KEY_LIFETIME
        )));
    }

    // Sending, after the key's distribution.
    let mut author = creator_author(keys, participants)?;
    author.distribute()?;
    let path = dir.join(format!("{SID:016x}.sender"));
    persist(&author.state, &path)?;
    let sender_state = author.state.encoded_len();
    let mut mtp_out = mtp::Sender::new(AeadKey::new([7; 32]), Direction::ClientToServer, 2);
    let texts: Vec<String> = (0..send_n as u64)
        .map(|i| String::from_utf8_lossy(&text_of(i)).into_owned())
        .collect();
    let (send, clock) = measure(tps, send_n as u64, || {
        for t in &texts {
            let sealed = author.seal(t, now_ms())?;
            persist(&author.state, &path)?;
            let frame = mtp_out
                .seal(
                    MsgReq::TYPE,
                    SID,
                    uid(0),
                    &MsgReq {
                        envelope: &sealed.message,
                    }
                    .encode(),
                )
                .ctx(|| "seal a frame".to_string())?;
            std::hint::black_box(frame);
        }
        Ok(())
    })?;
    let persists = (send_n as u64 / 4).max(10);
    let (persist_cost, _) = measure(tps, persists, || {
        for _ in 0..persists {
            persist(&author.state, &path)?;
        }
        Ok(())
    })?;
    let mut fresh = creator_author(keys, participants)?;
    fresh.distribute()?;
    let (seal, _) = measure(tps, send_n as u64, || {
        for t in &texts {
            let sealed = fresh.seal(t, now_ms())?;
            let frame = mtp_out
                .seal(
                    MsgReq::TYPE,
                    SID,
                    uid(0),
                    &MsgReq {
                        envelope: &sealed.message,
                    }
                    .encode(),
                )
                .ctx(|| "seal a frame".to_string())?;
            std::hint::black_box(frame);
        }
        Ok(())
    })?;

    // Reading: a member holding every other participant's key, as in a group where
    // everyone has spoken; `talkers` of them send, interleaved.
    let reader_uid = uid(1);
    let (reader_key, reader_pub) = keys.cyclic(1)?;
    let (_, creator_pub) = keys.cyclic(0)?;
    let creator_name = name(0);
    let creator = Creator {
        uid: uid(0),
        name: &creator_name,
        key: creator_pub,
    };
    let mut reader = Reader::new(SID, reader_uid, reader_key);
    let statement = author
        .state
        .statement
        .as_ref()
        .map(|s| s.bytes().to_vec())
        .ok_or_else(|| fail("no statement"))?;
    reader.take(&statement, uid(0), creator_pub, creator)?;
    let mut authors = Vec::new();
    for i in (0..participants).filter(|&i| i != 1) {
        let (k, public) = keys.cyclic(i)?;
        let mut a = Author::new(SID, uid(i), k, vec![(reader_uid, reader_pub)], now_ms())?;
        reader.take(&a.distribute()?, uid(i), public, creator)?;
        authors.push((uid(i), public, a));
    }
    // The deliveries, framed by the server (not timed).
    let mut server_out = mtp::Sender::new(AeadKey::new([9; 32]), Direction::ServerToClient, 2);
    let mut frames = Vec::with_capacity(read_n + one_n);
    for k in 0..read_n + one_n {
        let (au, _, a) = &mut authors[k % talkers];
        let text = String::from_utf8_lossy(&text_of(k as u64)).into_owned();
        let env = a.seal(&text, now_ms())?.message;
        let n = k as u64 + 1;
        let payload = Delivery { n, envelope: &env }.encode();
        frames.push((
            server_out
                .seal(Delivery::TYPE, SID, *au, &payload)
                .ctx(|| "seal a frame".to_string())?,
            text,
        ));
    }
    let mut mtp_in = mtp::Receiver::new(AeadKey::new([9; 32]), Direction::ServerToClient, 1);
    let mut acks = mtp::Sender::new(AeadKey::new([8; 32]), Direction::ClientToServer, 2);
    let path = dir.join(format!("{SID:016x}.reader"));
    let mut read_batches = |frames: &[(Vec<u8>, String)], batch: usize| {
        for chunk in frames.chunks(batch) {
            let mut last = 0;
            for (frame, text) in chunk {
                let (h, p) = mtp_in.open(frame).ctx(|| "a delivery".to_string())?;
                let d = Delivery::decode(&p).ctx(|| "a delivery".to_string())?;
                let author_key = authors
                    .iter()
                    .find(|(u, _, _)| *u == h.uid)
                    .map(|(_, k, _)| *k)
                    .ok_or_else(|| fail("a delivery by nobody"))?;
                if reader.take(d.envelope, h.uid, author_key, creator)? != Taken::Text(text.clone())
                {
                    return Err(fail("a message opened to another text"));
                }
                last = d.n;
            }
            reader.state.last_n = last;
            persist(&reader.state, &path)?;
            let ack = acks
                .seal(Ack::TYPE, SID, reader_uid, &Ack { n: last }.encode())
                .ctx(|| "seal a frame".to_string())?;
            std::hint::black_box(ack);
        }
        Ok(())
    };
    let (read, _) = measure(tps, read_n as u64, || {
        read_batches(&frames[..read_n], READ_BATCH)
    })?;
    let (read_one, _) = measure(tps, one_n as u64, || read_batches(&frames[read_n..], 1))?;
    let reader_state = reader.state.encoded_len();
    Ok(PerMessage {
        send,
        persist: persist_cost,
        seal,
        read,
        read_one,
        sender_state,
        reader_state,
        clock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_100_byte_text_is_244_bytes_a_delivery_whatever_the_session_size() {
        let keys = KeyPool::generate(2, 2048).unwrap();
        for p in [2, 5] {
            let s = sizes(&keys, p).unwrap();
            assert_eq!(s.message, 200);
            assert_eq!(s.message_wire, 244);
            // MPK2: 78 bytes of head, 10 + 256 per recipient, 2 + 256 of signature.
            assert_eq!(s.distribution, 78 + (p - 1) * 266 + 258);
        }
    }

    #[test]
    fn per_message_work_reads_back_every_text_it_sent() {
        let keys = KeyPool::generate(2, 2048).unwrap();
        let dir = crate::process::TempDir::new("costs-test").unwrap();
        let m = per_message(&keys, 4, (20, 30, 5), dir.path(), 100).unwrap();
        assert_eq!((m.send.count, m.read.count, m.read_one.count), (20, 30, 5));
        assert!(m.reader_state > m.sender_state / 2);
    }
}
