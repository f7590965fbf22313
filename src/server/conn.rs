//! One connection's life: the login on the login thread, then registration as the
//! user's online connection, a writer and a reader thread, and logout at the end.
//!
//! It exists so that the hand-over between the threads of a connection, and the
//! guards that keep the connection counts right, are in one place. It must never
//! parse a frame itself (that is [`super::login`] and [`super::reader`]), never hold
//! the registry lock while it closes a socket, and never let a path out skip the
//! logout or the guards.

use std::net::Shutdown;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::limits::{Incoming, PreloginGuard, TotalGuard};
use super::prelogin::Outcome;
use super::{login, reader, writer, Shared};
use crate::outbox;
use crate::registry::{Conn, Requester};

/// Runs a connection from its login to its end; called on a login thread.
pub(super) fn connection(
    shared: &Arc<Shared>,
    incoming: Incoming,
    id: u64,
    mut prelogin: PreloginGuard,
    total: TotalGuard,
) {
    let Incoming {
        stream,
        peer,
        accepted,
    } = incoming;
    let (name, login_res, est) = match login::login(shared, &stream, peer, id, accepted) {
        Ok(done) => done,
        Err(outcome) => {
            let _ = stream.shutdown(Shutdown::Both);
            prelogin.set_outcome(outcome);
            return;
        }
    };
    prelogin.set_outcome(Outcome::LoggedIn);
    drop(prelogin);
    let uid = est.uid;
    let (tx, rx) = outbox::outbox(shared.config.queue_len);
    let wake = Arc::new(AtomicBool::new(false));
    // One socket shared by both threads (a dup per thread would triple the file
    // descriptors a connection costs).
    let (closer, write_half) = (stream.clone(), stream.clone());
    let conn = Conn {
        id,
        tx,
        wake_pending: wake.clone(),
        close: Box::new(move || {
            let _ = closer.shutdown(Shutdown::Both);
        }),
    };
    // The user counts as online (invites, pushes) before login_res is sent: the
    // writer sends login_res before anything queued here.
    shared.with_registry(|reg| reg.login(uid, conn));
    shared.who.enter(id, uid, &name, peer);
    log::info!("{peer}: {name} logged in");
    let sh = shared.clone();
    let sender = est.sender;
    let peer_of_writer = writer::Peer {
        addr: peer,
        name: name.clone(),
        uid,
    };
    let writer_spawned = shared.connection_threads.spawn(move || {
        writer::writer(&sh, write_half, sender, rx, wake, peer_of_writer, login_res)
    });
    // The reader continues on a small connection thread; this one, whose stack grew
    // during the login's RSA and PBKDF2 work, goes back to the login threads.
    let sh = shared.clone();
    let receiver = est.receiver;
    let reader_spawned = writer_spawned.is_ok().then(|| {
        shared.connection_threads.spawn(move || {
            let me = Requester { uid, conn: id };
            reader::serve(&sh, &stream, peer, me, &name, receiver);
            sh.with_registry(|reg| reg.logout(uid, id));
            sh.who.leave(id);
            let _ = stream.shutdown(Shutdown::Both);
            log::info!("{peer}: {name} disconnected");
            drop(total);
        })
    });
    if !matches!(reader_spawned, Some(Ok(_))) {
        log::warn!("{peer}: cannot start the connection's threads");
        shared.with_registry(|reg| reg.logout(uid, id));
        shared.who.leave(id);
    }
}
