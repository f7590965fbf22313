//! A logged-in connection's reader thread: reads and opens frames, sends heartbeats
//! on silence, and dispatches each request to the registry.
//!
//! It exists so that untrusted bytes after login are parsed only here, on the
//! connection's own thread, outside every lock. It must never write to the socket
//! (replies go through the registry to the writer), never hold the registry lock
//! while it parses, checks a key or draws random numbers, and never let a client run
//! more than a bounded number of requests ahead of the disk.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use super::journal::Inflight;
use super::Shared;
use crate::crypto::{self, RsaPublic};
use crate::mtp::{self, MsgType, ReadError};
use crate::proto::{self, Reason};
use crate::registry::Requester;

/// Requests of one connection whose records are not yet stored, at most: past this
/// its reader waits, so a client sending faster than the disk stores is slowed down
/// instead of growing the journal queue without bound.
const MAX_INFLIGHT: usize = 256;
/// Random sids drawn for each init request, outside the registry lock. One is fresh
/// unless it collides with a sid in use (odds of about one in 2^64 per session), so a
/// few make a refused init practically impossible unless the random number generator
/// fails; then the request is refused rather than retried under the lock.
const SID_CANDIDATES: usize = 4;

/// The reader loop of a logged-in connection.
pub(super) fn serve(
    shared: &Shared,
    stream: &TcpStream,
    peer: SocketAddr,
    me: Requester,
    name: &str,
    mut receiver: mtp::Receiver,
) {
    let mut heartbeat_sent = false;
    let inflight = Arc::new(Inflight::default());
    // The socket's read timeout, set only when it changes (a system call per frame
    // otherwise).
    let mut timeout_set = None;
    loop {
        let timeout = if heartbeat_sent {
            shared.config.heartbeat_timeout
        } else {
            shared.config.heartbeat_idle
        };
        if timeout_set != Some(timeout) {
            if stream.set_read_timeout(Some(timeout)).is_err() {
                return;
            }
            timeout_set = Some(timeout);
        }
        let frame = match mtp::read_frame(&mut &*stream) {
            Ok(f) => f,
            Err(ReadError::Idle) if !heartbeat_sent => {
                shared.with_registry(|reg| reg.heartbeat(me));
                heartbeat_sent = true;
                continue;
            }
            Err(ReadError::Idle) => {
                log::info!("{peer}: {name} did not answer the heartbeat");
                return;
            }
            Err(ReadError::Eof) | Err(ReadError::Io(_)) => return,
            Err(ReadError::Mtp(e)) => {
                shared
                    .warnings
                    .warn(format_args!("{peer}: rejected frame from {name}: {e}"));
                return;
            }
        };
        let (header, payload) = match receiver.open(&frame) {
            Ok(x) => x,
            Err(e) => {
                shared
                    .warnings
                    .warn(format_args!("{peer}: rejected frame from {name}: {e}"));
                return;
            }
        };
        heartbeat_sent = false;
        if header.uid != me.uid {
            shared.warnings.warn(format_args!(
                "{peer}: rejected frame from {name}: header uid is not the user's"
            ));
            return;
        }
        if let Err(what) = dispatch(
            shared, &inflight, me, name, header.typ, header.sid, &payload,
        ) {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected frame from {name}: {what}"));
            return;
        }
        // Replies to stored requests are queued together when their group is stored:
        // keep them within half the queue, so a client that reads its replies is
        // never closed for sending quickly.
        inflight.wait_below(MAX_INFLIGHT.min(shared.config.queue_len / 2).max(1));
    }
}

/// Handles one authenticated request. `Err` closes the connection (a type the client
/// may not send, or a malformed heartbeat answer).
fn dispatch(
    shared: &Shared,
    inflight: &Arc<Inflight>,
    me: Requester,
    name: &str,
    typ: MsgType,
    sid: u64,
    payload: &[u8],
) -> Result<(), &'static str> {
    match typ {
        MsgType::InitReq => {
            init(shared, inflight, me, name, sid, payload);
        }
        MsgType::InviteRes => {
            // A malformed answer or an invalid key changes nothing; invite_res has no
            // reply to carry an error. Neither does a key bound to another account,
            // or another key than the account's (DECISIONS 6).
            let answer = proto::InviteRes::decode(payload)
                .ok()
                .and_then(|a| match &a {
                    proto::InviteRes::Accept(k) => {
                        RsaPublic::from_base64(k).ok().map(|key| (a, Some(key)))
                    }
                    proto::InviteRes::Deny => Some((a, None)),
                });
            let Some((answer, key)) = answer else {
                log::info!("ignored a malformed invite answer from {name}");
                return Ok(());
            };
            let accounts = shared.users.current();
            let exists = |uid| accounts.name_of(uid).is_some();
            let der = key.as_ref().map(|k| k.spki_der());
            let answered = shared.with_registry_as(Some(inflight), |reg| {
                reg.answer_bound(me, sid, answer, der, &exists)
            });
            if let Err(reason) = answered {
                log::info!("ignored an invite answer from {name}: {reason}");
            }
        }
        MsgType::MsgReq => shared.with_registry_as(Some(inflight), |reg| {
            let req = proto::MsgReq::decode(payload);
            if reg.message(me, sid, req.envelope).is_some() {
                reg.wake_recipients(sid, me.uid);
            }
        }),
        MsgType::MsgRes => {
            if let Ok(ack) = proto::Ack::decode(payload) {
                shared.with_registry_as(Some(inflight), |reg| reg.ack(me, sid, ack.n));
            }
        }
        MsgType::CloseReq => shared.with_registry_as(Some(inflight), |reg| reg.close(me, sid)),
        MsgType::StatusReq => shared.with_registry_as(Some(inflight), |reg| reg.status(me, sid)),
        MsgType::StatusRes => {
            if sid != 0 || proto::Online::decode(payload).is_err() {
                return Err("status_res other than a heartbeat answer");
            }
        }
        MsgType::InitRes | MsgType::CloseRes | MsgType::InviteReq => {
            return Err("server-only message type")
        }
    }
    Ok(())
}

/// init_req: parsed, its key checked and its names resolved here, outside the lock;
/// then the registry creates the session under one of the sids drawn here.
fn init(
    shared: &Shared,
    inflight: &Arc<Inflight>,
    me: Requester,
    name: &str,
    sid: u64,
    payload: &[u8],
) {
    let limits = shared.config.limits;
    let accounts = shared.users.current();
    let checked = (|| {
        if sid != 0 {
            return Err(Reason::InitSidNotZero);
        }
        let req = match proto::InitRequest::decode(payload, limits.max_participants)? {
            proto::InitRequest::Create(req) => req,
            proto::InitRequest::ReplaceKey(req) => return Ok(Err(req)),
        };
        let key = RsaPublic::from_base64(&req.key).map_err(|_| Reason::InvalidKey)?;
        let mut invitees = Vec::with_capacity(req.invitees.len());
        for invitee in &req.invitees {
            if !crate::names::valid_username(invitee) {
                return Err(Reason::InvalidUserName);
            }
            let account = accounts
                .lookup(invitee)
                .ok_or_else(|| Reason::UnknownUser(invitee.clone()))?;
            invitees.push((account.uid, account.name.clone()));
        }
        Ok(Ok((req.key, key, invitees)))
    })();
    let (key_text, key, invitees) = match checked {
        Ok(Ok(x)) => x,
        Ok(Err(replacement)) => {
            super::bindings::replace_key(shared, inflight, me, name, &replacement);
            return;
        }
        Err(reason) => {
            shared.with_registry_as(Some(inflight), |reg| {
                reg.refuse(me, MsgType::InitRes, 0, &reason)
            });
            return;
        }
    };
    let candidates = draw_sids(SID_CANDIDATES, crypto::random_nonzero_u64);
    if candidates.is_empty() {
        log::error!("the system's random number generator failed; an init request is refused");
    }
    let exists = |uid| accounts.name_of(uid).is_some();
    let followup = shared.with_registry_as(Some(inflight), |reg| {
        reg.init_bound(
            me,
            name.to_string(),
            key_text,
            key.spki_der(),
            &exists,
            invitees,
            &candidates,
        )
    });
    if let Some(sid) = followup.start_invite_timer {
        shared
            .timers
            .schedule(sid, Instant::now() + shared.config.invite_wait);
    }
}

/// Up to `n` random sids from `draw`, stopping at its first failure.
fn draw_sids<E>(n: usize, mut draw: impl FnMut() -> Result<u64, E>) -> Vec<u64> {
    (0..n).map_while(|_| draw().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_random_number_generator_gives_no_candidate_sids() {
        assert!(draw_sids(SID_CANDIDATES, || Err::<u64, ()>(())).is_empty());
        let mut left = 2;
        let flaky = || {
            left -= 1;
            if left >= 0 {
                Ok(7)
            } else {
                Err(())
            }
        };
        assert_eq!(draw_sids(SID_CANDIDATES, flaky), vec![7, 7]);
        let mut n = 0;
        assert_eq!(
            draw_sids(SID_CANDIDATES, || {
                n += 1;
                Ok::<u64, ()>(n)
            }),
            vec![1, 2, 3, 4]
        );
    }
}
