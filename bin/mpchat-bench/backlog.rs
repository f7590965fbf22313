//! The backlog figure (`--only backlog`): what a client spends reading the messages
//! that piled up while it was away. A live session is set up on a real `mpchatd`
//! ([`live_session`]); one member reads the set-up, persists its state and
//! disconnects; the creator sends the backlog, rotating its sender key every 1,000
//! messages as clients must (each rotation an `MPK2` to every member); then the
//! member starts again from its state file, logs in and reads everything as a
//! client does: each delivery MTP-opened and its envelope checked and opened (a
//! rotation's `MPK2` unwrapped with its RSA key), and per batch of at most 256 one
//! persist of its state and one acknowledgement.
//!
//! The figure is the reading thread's CPU from reading the state file to the last
//! acknowledgement, and the wall time beside it. This module must never assert a
//! timing, never print a key or a text, and every wait in it has a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use mpchat::mtp::MsgType;
use mpchat::proto::{Ack, CloseReq, CloseRes, Delivery, MsgReq, MsgRes};

use crate::client::{now_ms, persist, Creator, Reader, Taken};
use crate::costs::{measure, Cost, READ_BATCH};
use crate::error::{fail, BenchError, Ctx};
use crate::mpchatd::{live_session, AccountSpec, KeyPool, MpConn, MpchatServer, SETUP_MESSAGES};
use crate::relay::{text_of, SATURATED_WINDOW};

/// Time for the whole backlog to be sent or read.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(300);

/// What reading a backlog measured.
#[derive(Debug, Clone, Copy)]
pub struct Backlog {
    /// The reader's cost; `count` is the messages read (distributions not counted).
    pub read: Cost,
    /// Sender-key distributions in the backlog (one per rotation).
    pub distributions: u64,
    /// Envelope bytes read.
    pub envelope_bytes: u64,
    /// Read batches (persists and acknowledgements).
    pub batches: u64,
}

/// Prefixes a failure with the step it happened in.
fn during(step: &'static str) -> impl Fn(BenchError) -> BenchError {
    move |e| match e {
        BenchError::Fail(m) => fail(format!("{step}: {m}")),
        skip => skip,
    }
}

/// The `--backlog-messages` a server needs to hold `messages` texts with their
/// rotations' distributions and the session's set-up.
pub fn backlog_capacity(messages: u64) -> u64 {
    messages + messages / 1_000 + SETUP_MESSAGES + 16
}

/// Sends `messages` texts in a session of `accounts_` (at least 2) while its second
/// participant is away, then measures that participant reading them; state files in
/// `dir`.
pub fn read_backlog(
    server: &MpchatServer,
    accounts_: &[AccountSpec],
    keys: &KeyPool,
    messages: u64,
    dir: &Path,
    tps: u64,
) -> Result<Backlog, BenchError> {
    let mut live =
        live_session(server, accounts_, keys).map_err(during("setting up the session"))?;
    let sid = live.sid;
    let mut conns = std::mem::take(&mut live.conns);
    let author_uid = conns[0].uid;
    let reader_uid = conns[1].uid;
    let (reader_key, _) = keys.of(&accounts_[1])?;
    let (_, creator_pub) = keys.of(&accounts_[0])?;
    let creator = Creator {
        uid: author_uid,
        name: &accounts_[0].name,
        key: creator_pub,
    };
    // The member reads the set-up (delivered and acknowledged by live_session), keeps
    // its state and leaves; so do the others.
    let mut reader = Reader::new(sid, reader_uid, reader_key);
    for env in &live.setup {
        reader.take(env, author_uid, creator_pub, creator)?;
    }
    reader.state.last_n = SETUP_MESSAGES;
    let path = dir.join(format!("{sid:016x}"));
    persist(&reader.state, &path)?;
    drop(reader);
    let mut sender = conns.remove(0);
    drop(conns);

    // The backlog, at most a saturated run's window ahead of the server's replies.
    let deadline = Instant::now() + BACKLOG_TIMEOUT;
    let (mut sent, mut answered, mut distributions) = (0u64, 0u64, 0u64);
    let send = |sender: &mut MpConn, env: &[u8], sent: &mut u64| {
        *sent += 1;
        sender.send(MsgReq::TYPE, sid, &MsgReq { envelope: env }.encode())
    };
    let await_reply = |sender: &mut MpConn, answered: &mut u64| -> Result<(), BenchError> {
        let (_, p) = sender.next_of(MsgType::MsgRes, deadline)?;
        *answered += 1;
        match MsgRes::decode(&p) {
            Ok(MsgRes::Ok(n)) if n == SETUP_MESSAGES + *answered => Ok(()),
            _ => Err(fail(format!(
                "backlog message {} answered {:?} (the server's --backlog-messages must hold {})",
                *answered,
                String::from_utf8_lossy(&p),
                backlog_capacity(messages)
            ))),
        }
    };
    (|| -> Result<(), BenchError> {
        for i in 0..messages {
            let text = String::from_utf8_lossy(&text_of(i)).into_owned();
            let sealed = live.author.seal(&text, now_ms())?;
            if let Some(d) = &sealed.distribution {
                distributions += 1;
                send(&mut sender, d, &mut sent)?;
            }
            send(&mut sender, &sealed.message, &mut sent)?;
            while sent - answered > SATURATED_WINDOW {
                await_reply(&mut sender, &mut answered)?;
            }
        }
        while answered < sent {
            await_reply(&mut sender, &mut answered)?;
        }
        Ok(())
    })()
    .map_err(during("sending the backlog"))?;
    drop(sender);

    // The member comes back.
    let last = SETUP_MESSAGES + sent;
    let (mut batches, mut bytes, mut texts) = (0u64, 0u64, 0u64);
    let account = &accounts_[1];
    let (read, _) = measure(tps, messages, || {
        let mut reader = Reader::resume(&path, reader_uid, reader_key)?;
        let mut conn = MpConn::login(server.daemon.addr, &server.key, account)?;
        let mut handled = reader.state.last_n;
        let deadline = Instant::now() + BACKLOG_TIMEOUT;
        while handled < last {
            let mut batch = 0;
            while batch < READ_BATCH {
                let Some((h, p)) = conn.try_next()? else {
                    break;
                };
                if h.typ != MsgType::MsgReq || h.sid != sid {
                    continue; // status pushes
                }
                let d = Delivery::decode(&p).ctx(|| "a delivery".to_string())?;
                if d.n != handled + 1 || h.uid != author_uid {
                    return Err(fail(format!(
                        "backlog delivery {} where {} was due",
                        d.n,
                        handled + 1
                    )));
                }
                bytes += d.envelope.len() as u64;
                match reader.take(d.envelope, author_uid, creator_pub, creator)? {
                    Taken::Text(t) => {
                        if t.as_bytes() != text_of(texts) {
                            return Err(fail(format!("backlog text {texts} is not the one sent")));
                        }
                        texts += 1;
                    }
                    Taken::Key => {}
                    Taken::Statement => return Err(fail("a member list inside the backlog")),
                }
                handled = d.n;
                batch += 1;
            }
            if batch > 0 {
                reader.state.last_n = handled;
                persist(&reader.state, &path)?;
                conn.send(Ack::TYPE, sid, &Ack { n: handled }.encode())?;
                batches += 1;
            } else {
                if Instant::now() > deadline {
                    return Err(fail(format!(
                        "the backlog stopped at message {handled} of {last}"
                    )));
                }
                conn.fill()?;
            }
        }
        Ok(())
    })
    .map_err(during("reading the backlog"))?;
    if texts != messages {
        return Err(fail(format!("{texts} of {messages} backlog texts read")));
    }
    // The members who stayed away never read it: close the session, so its stored
    // messages do not follow them into the next run's session.
    let p = (|| {
        let mut closer = MpConn::login(server.daemon.addr, &server.key, &accounts_[0])?;
        closer.send(CloseReq::TYPE, sid, &CloseReq.encode())?;
        closer
            .next_of(CloseRes::TYPE, Instant::now() + BACKLOG_TIMEOUT)
            .map(|(_, p)| p)
    })()
    .map_err(during("closing the session"))?;
    if CloseRes::decode(&p) != Ok(CloseRes::Ok) {
        return Err(fail(format!(
            "closing the backlog's session: {:?}",
            String::from_utf8_lossy(&p)
        )));
    }
    Ok(Backlog {
        read,
        distributions,
        envelope_bytes: bytes,
        batches,
    })
}
