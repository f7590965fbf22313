//! A connection's login, on its login thread: read the login request within the
//! grace time, open it, check freshness and replay, then the password behind the
//! PBKDF2 gate, and build login_res.
//!
//! It exists to put the socket, the clock and the shared limits around the I/O-free
//! handshake of [`crate::login`]. It must never reply to a failed login (every
//! failure closes the connection with no answer), never let an unknown user cost
//! less than a known one, never log a password, and never touch the registry: the
//! user is not online until [`super::conn`] registers it.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::limits::{self, Incoming};
use super::prelogin::{Outcome, Prelogin, Source, PRELOGIN_EVICT_AGE};
use super::{lock, Shared};
use crate::accounts::GateKey;
use crate::login::{self, ExpectLoginReq, LoginError};
use crate::mtp::{self, ReadError};

/// A connection that should give way to others of its source (it has waited
/// [`PRELOGIN_EVICT_AGE`] and they are queued) gets this long to show the rest of its
/// login request before it does: a real client's request is already in the socket.
const LAST_CHANCE: Duration = Duration::from_millis(20);

/// Reads from a stream with the remaining time to `deadline` as the read timeout, so
/// a login dribbled byte by byte still ends at the grace time; and gives up early
/// (setting `yielded`) once the connection has waited [`PRELOGIN_EVICT_AGE`] and
/// others from its source wait for its place.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    accepted: Instant,
    prelogin: &'a Prelogin<Incoming>,
    id: u64,
    yielded: bool,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let eligible = self.accepted + PRELOGIN_EVICT_AGE;
        loop {
            let now = Instant::now();
            let left = self.deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let give_way = now >= eligible && self.prelogin.should_yield(self.id, now);
            let wait = if now < eligible {
                eligible - now
            } else if give_way {
                LAST_CHANCE
            } else {
                left
            };
            self.stream.set_read_timeout(Some(wait.min(left)))?;
            match (&*self.stream).read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if give_way {
                        self.yielded = true;
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs the login of connection `id`, accepted at `accepted`; on success returns the
/// username, the login_res frame and the established keys. Every failure closes the
/// connection with no reply; its [`Outcome`] sets the source's penalty.
pub(super) fn login(
    shared: &Arc<Shared>,
    stream: &TcpStream,
    peer: SocketAddr,
    id: u64,
    accepted: Instant,
) -> Result<(String, Vec<u8>, login::Established), Outcome> {
    let deadline = accepted + shared.config.login_grace;
    let mut reader = DeadlineReader {
        stream,
        deadline,
        accepted,
        prelogin: &shared.prelogin,
        id,
        yielded: false,
    };
    let frame = match mtp::read_frame(&mut reader) {
        Ok(f) => f,
        Err(_) if reader.yielded => {
            shared.warnings.warn(format_args!(
                "{peer}: closed, did not log in within {PRELOGIN_EVICT_AGE:?} while others from its address waited"
            ));
            return Err(Outcome::NoRequest);
        }
        Err(ReadError::Eof) => return Err(Outcome::NoRequest),
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            log::info!("{peer}: closed in the middle of its login request");
            return Err(Outcome::NoRequest);
        }
        Err(ReadError::Idle) => {
            log::info!("{peer}: no login within the grace time");
            return Err(Outcome::GraceExceeded);
        }
        Err(ReadError::Io(e)) => {
            log::info!("{peer}: no login within the grace time");
            let timed_out = matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            );
            return Err(if timed_out {
                Outcome::GraceExceeded
            } else {
                Outcome::NoRequest
            });
        }
        Err(ReadError::Mtp(e)) => {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected login frame: {e}"));
            return Err(Outcome::Refused);
        }
    };
    // A penalised source's RSA decryptions are spaced out.
    let now = Instant::now();
    let Some(decrypt_at) = shared.prelogin.request_read(id, now) else {
        // Closed to make room while its request was coming in (already logged).
        return Err(Outcome::NoRequest);
    };
    if decrypt_at > now {
        if decrypt_at >= deadline {
            log::info!("{peer}: no login within the grace time");
            return Err(Outcome::GraceExceeded);
        }
        std::thread::sleep(decrypt_at - now);
    }
    let refused = |e: &dyn std::fmt::Display| {
        shared
            .warnings
            .warn(format_args!("{peer}: rejected login request: {e}"));
    };
    // During a key rollover both keys are tried, the same way whichever is right.
    let keys = shared.keys();
    let opened = match ExpectLoginReq::open_any(&keys.all(), &frame) {
        Ok(o) => o,
        Err(e) => {
            refused(&e);
            return Err(Outcome::Refused);
        }
    };
    let check = {
        let mut replay = lock(&shared.replay);
        opened.check_fresh(now_ns(), shared.config.login_window, &mut replay)
    };
    let check = match check {
        Ok(c) => c,
        Err(e) => {
            refused(&e);
            // A cache full of others' requests is no fault of this source.
            return Err(if e == LoginError::ReplayCacheFull {
                Outcome::ServerSide
            } else {
                Outcome::Refused
            });
        }
    };
    // Past the RSA work: the next connection of this source may start its own.
    let next = shared.prelogin.reached_gate(id, Instant::now());
    if !next.is_empty() {
        limits::carry_out(shared, next, None);
    }
    let source = Source::of(peer.ip());
    let key = GateKey {
        source: source.key(),
        account: check.username().to_string(),
        penalised: shared.prelogin.penalised(source, Instant::now()),
    };
    let accounts = shared.users.current();
    let uid = match shared.gate.enter(key) {
        Ok(_permit) => accounts.check_password(check.username(), check.password()),
        Err(why) => {
            shared.warnings.warn(format_args!(
                "{peer}: refused a login for user {}: {why}",
                crate::names::shown(check.username())
            ));
            return Err(Outcome::Refused);
        }
    };
    let Some(uid) = uid else {
        shared.warnings.warn(format_args!(
            "{peer}: failed login for user {}",
            crate::names::shown(check.username())
        ));
        return Err(Outcome::Refused);
    };
    // The grace time runs to the login response: a login that waited too long for
    // its turn is not answered.
    if Instant::now() > deadline {
        log::info!("{peer}: no login within the grace time");
        return Err(Outcome::GraceExceeded);
    }
    let name = check.username().to_string();
    match check.accept(uid) {
        Ok((frame, est)) => Ok((name, frame, est)),
        Err(e) => {
            log::warn!("{peer}: cannot complete login: {e}");
            Err(Outcome::ServerSide)
        }
    }
}
