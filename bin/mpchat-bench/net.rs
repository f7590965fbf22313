//! The client side's sockets: connecting with the bench's timeouts, and [`Framer`],
//! one receive buffer per connection that the protocol modules split into their
//! units (`next_mtp` in `mpchatd.rs`, `next_line` in `ngircd.rs`, `next_plain` in
//! `plain.rs`).
//!
//! Reads wake up every [`POLL_TICK`] so a blocked reader sees its stop flags; a frame
//! or line split across reads, or across a read timeout, is never lost. This module
//! must never block without a deadline and never listen: it only connects, to
//! loopback addresses the bench was given.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::time::Duration;

use mpchat::mtp;

use crate::error::{fail, BenchError, Ctx};

/// Read timeout of client sockets: how often a blocked reader checks its flags.
pub const POLL_TICK: Duration = Duration::from_millis(50);
/// Write timeout of client sockets: a server that stops reading fails the run.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a connection, a login, a registration or a session set-up step.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes a client framer reads at once, and the room kept free for it.
const READ_CHUNK: usize = 64 * 1024;
/// A framer's buffer: one largest frame (an MTP frame is the largest of the three
/// protocols) plus one read.
const FRAMER_CAPACITY: usize = mtp::MAX_FRAME_LEN + READ_CHUNK;

/// Whether an I/O error only means that a read timed out (or was interrupted).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Connects to `addr` within [`SETUP_TIMEOUT`], with Nagle off, the write timeout set
/// and reads waking every [`POLL_TICK`].
pub fn connect(addr: SocketAddr) -> Result<TcpStream, BenchError> {
    let s =
        TcpStream::connect_timeout(&addr, SETUP_TIMEOUT).ctx(|| format!("connect to {addr}"))?;
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(WRITE_TIMEOUT))
        .ctx(|| "set a write timeout".to_string())?;
    s.set_read_timeout(Some(POLL_TICK))
        .ctx(|| "set a read timeout".to_string())?;
    Ok(s)
}

/// Fills `framer` from `stream` once; `Ok(false)` on a read timeout, an error when
/// the peer has closed.
pub fn fill_once(
    framer: &mut Framer,
    stream: &mut TcpStream,
    who: &str,
) -> Result<bool, BenchError> {
    match framer.fill(stream) {
        Ok(0) => Err(fail(format!("{who}: the server closed the connection"))),
        Ok(_) => Ok(true),
        Err(e) if is_timeout(&e) => Ok(false),
        Err(e) => Err(fail(format!("{who}: {e}"))),
    }
}

/// A client's receive buffer, split into MTP frames, IRC lines or plaintext relay
/// frames by the protocol modules. Its memory is allocated on the first read.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Framer {
    /// An empty framer (no buffer yet).
    pub fn new() -> Framer {
        Framer::default()
    }

    /// Reads once from `r` into the buffer; `Ok(0)` means the peer closed.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.buf.is_empty() {
            self.buf = vec![0; FRAMER_CAPACITY];
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Appends bytes as if they had been read (for tests).
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) {
        let mut r = bytes;
        while !r.is_empty() {
            let _ = self.fill(&mut r);
        }
    }

    /// The bytes of a range returned by [`Framer::take`] (through a `next_*` method).
    pub fn get(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Whether no byte is buffered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes received and not yet taken.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Takes the first `n` pending bytes (`n` at most `pending().len()`), returning
    /// their range for [`Framer::get`].
    pub fn take(&mut self, n: usize) -> Range<usize> {
        let r = self.start..self.start + n;
        self.start += n;
        r
    }
}
