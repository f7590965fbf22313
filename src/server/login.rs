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
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{lock, Shared};
use crate::login::{self, ExpectLoginReq};
use crate::mtp::{self, ReadError};

/// Reads from a stream with the remaining time to `deadline` as the read timeout, so
/// a login dribbled byte by byte still ends at the grace time.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        (&*self.stream).read(buf)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs the login; on success returns the username, the login_res frame and the
/// established keys. Every failure closes the connection with no reply.
pub(super) fn login(
    shared: &Shared,
    stream: &TcpStream,
    peer: SocketAddr,
    id: u64,
) -> Option<(String, Vec<u8>, login::Established)> {
    let deadline = Instant::now() + shared.config.login_grace;
    let frame = match mtp::read_frame(&mut DeadlineReader { stream, deadline }) {
        Ok(f) => f,
        Err(ReadError::Eof) => return None,
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            log::info!("{peer}: closed in the middle of its login request");
            return None;
        }
        Err(ReadError::Idle) | Err(ReadError::Io(_)) => {
            log::info!("{peer}: no login within the grace time");
            return None;
        }
        Err(ReadError::Mtp(e)) => {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected login frame: {e}"));
            return None;
        }
    };
    // During a key rollover both keys are tried, the same way whichever is right.
    let keys = shared.keys();
    let opened = match ExpectLoginReq::open_any(&keys.all(), &frame) {
        Ok(o) => o,
        Err(e) => {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected login request: {e}"));
            return None;
        }
    };
    let check = {
        let mut replay = lock(&shared.replay);
        opened.check_fresh(now_ns(), shared.config.login_window, &mut replay)
    };
    let check = match check {
        Ok(c) => c,
        Err(e) => {
            shared
                .warnings
                .warn(format_args!("{peer}: rejected login request: {e}"));
            return None;
        }
    };
    let accounts = shared.users.current();
    let uid = {
        let _permit = shared.gate.acquire();
        // A connection evicted from the pre-login table while it waited here gets no
        // answer anyway: spend the PBKDF2 work on one that still can.
        if !shared.prelogin.contains(id) {
            log::info!("{peer}: closed while waiting for its password check");
            return None;
        }
        accounts.check_password(check.username(), check.password())
    };
    let Some(uid) = uid else {
        shared.warnings.warn(format_args!(
            "{peer}: failed login for user {}",
            crate::names::shown(check.username())
        ));
        return None;
    };
    let name = check.username().to_string();
    match check.accept(uid) {
        Ok((frame, est)) => Some((name, frame, est)),
        Err(e) => {
            log::warn!("{peer}: cannot complete login: {e}");
            None
        }
    }
}
