//! `mpchat-bench`: relay, login, memory and durability figures for `mpchatd`, with
//! ngIRCd and a minimal plaintext relay measured in the same invocation as baselines.
//!
//! Why it exists: whoever chooses between mpchat and an IRC server for a small VPS
//! needs numbers measured the same way on the same machine, and the project needs a
//! floor (the plaintext relay: the same thread-per-connection, `mpsc` fan-out design
//! with no cryptography and no storage) to see what its encryption and durability cost.
//!
//! Every server under test is a separate process on loopback, started here with a
//! temporary directory and killed when its guard drops; clients talk to it only over
//! its real protocol (for mpchat: [`crate::login::ClientLogin`], [`crate::mtp`] and
//! end-to-end envelopes from [`crate::e2e::seal`], built before timing). Clients
//! connect one at a time, every wait has a deadline and every load loop is bounded in
//! messages and in time. Server CPU and memory are read from `/proc`.
//!
//! This module must never assert a timing (figures are reported, not judged), never
//! print a password, key or message text, and never listen anywhere but loopback.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver as ChanReceiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::accounts::{self, Account, Accounts, PasswordHash};
use crate::crypto::{self, RsaPrivate, RsaPublic};
use crate::login::ClientLogin;
use crate::mtp::{self, Header, MsgType};
use crate::{e2e, fsutil};

// ---------------------------------------------------------------------------------
// Workload constants.

/// Bytes of every message text (the issue's workload: 100-byte texts).
pub const TEXT_LEN: usize = 100;
/// In the saturated run the sender is at most this many messages ahead of the
/// slowest receiver (the issue's closed loop).
pub const SATURATED_WINDOW: u64 = 256;
/// Messages per second in the light-load run.
pub const LIGHT_RATE: u32 = 100;
/// Distinct end-to-end envelopes per session: message `n` carries envelope
/// `n % ENVELOPE_POOL`. The server treats envelopes as opaque bytes, so reusing a few
/// costs it nothing different, while building one per message (an RSA-PSS signature
/// each) would make the setup longer than the measurement.
pub const ENVELOPE_POOL: usize = 16;
/// Most participants of an mpchat session (the server's default limit, creator
/// included); larger sizes are measured for the baselines only.
pub const MPCHAT_MAX_PARTICIPANTS: usize = e2e::MAX_RECIPIENTS + 1;
/// Accounts made with `mpchatd useradd` one by one; beyond this the users file is
/// written once through the library (useradd rewrites and fsyncs the whole file each
/// time, which would take minutes for thousands of accounts).
pub const USERADD_MAX: usize = 100;
/// PBKDF2 iterations of the accounts used for relay, memory and durability figures.
pub const LOW_ITERATIONS: u32 = 1_000;

// ---------------------------------------------------------------------------------
// Peer-controlled sizes (the servers under test are peers too).

/// Longest IRC line accepted from the IRC server before a CRLF. RFC 2812 allows 512
/// bytes; the margin allows for servers that exceed it, and bounds the buffer.
pub const MAX_IRC_LINE: usize = 4096;
/// Largest plaintext relay frame after its 4-byte length: a type, a group id and
/// 65,527 bytes of body, the same order of size as an MTP frame.
pub const PLAIN_MAX_FRAME: usize = 65_536;
/// Smallest plaintext relay frame after its length: the type and the group id.
pub const PLAIN_MIN_FRAME: usize = 1 + 8;
/// Frames queued for one plaintext relay connection's writer (as `mpchatd`'s default
/// `--queue-len`); a fan-out that finds the queue full closes that connection.
pub const PLAIN_QUEUE_LEN: usize = 1024;
/// Bytes a client framer reads at once, and the room kept free for it.
const READ_CHUNK: usize = 64 * 1024;
/// A framer's buffer: one largest frame plus one read.
const FRAMER_CAPACITY: usize = mtp::MAX_FRAME_LEN + READ_CHUNK;
/// Bytes the plaintext relay's writer gathers before one write, as `mpchatd`'s.
const PLAIN_WRITE_BUFFER: usize = 64 * 1024;
/// Stack of the plaintext relay's threads: they only copy bytes.
const PLAIN_STACK: usize = 64 * 1024;
/// Stack of the bench's own client threads.
const CLIENT_STACK: usize = 256 * 1024;

// ---------------------------------------------------------------------------------
// Time limits.

/// Read timeout of client sockets: how often a blocked reader checks its flags.
const POLL_TICK: Duration = Duration::from_millis(50);
/// Write timeout of client sockets: a server that stops reading fails the run.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a connection, a login, a registration or a session set-up step.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a server to say where it listens (mpchatd may make a key on first start).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for the receivers to catch up once the sender has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A run fails when the slowest receiver makes no progress for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------
// Errors.

/// Why a figure could not be measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchError {
    /// The measurement does not apply or its tool is missing; the reason is printed
    /// and the rest of the run goes on.
    Skip(String),
    /// Something failed: a server died, a message was lost or corrupted, a deadline
    /// passed. The message says what, and where to look.
    Fail(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Skip(m) => write!(f, "skipped: {m}"),
            BenchError::Fail(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BenchError {}

fn fail(msg: impl Into<String>) -> BenchError {
    BenchError::Fail(msg.into())
}

/// Adds what was being done to an error.
trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|e| BenchError::Fail(format!("{}: {e}", what())))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// Statistics.

/// A monotonic clock shared by the threads of one measurement: nanoseconds since
/// its creation.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since the clock started.
    pub fn ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The `p`-quantile (0..=1) of sorted values by the nearest-rank method: the smallest
/// value with at least `p` of all values at or below it. `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `values` (the mean of the middle two for an even count), ignoring
/// values that are not finite. `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

// ---------------------------------------------------------------------------------
// /proc.

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after the
/// last `)`: utime and stime are fields 14 and 15.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   value kB` field of `/proc/PID/status`, as a number (the first word of
/// the value).
pub fn parse_status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft and hard limits on open files from the text of `/proc/PID/limits`
/// (`unlimited` reads as `u64::MAX`).
pub fn parse_nofile_limits(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let num = |s: &str| {
        if s == "unlimited" {
            Some(u64::MAX)
        } else {
            s.parse().ok()
        }
    };
    Some((num(it.next()?)?, num(it.next()?)?))
}

/// CPU time used so far by process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let text =
        fs::read_to_string(format!("/proc/{pid}/stat")).ctx(|| format!("read /proc/{pid}/stat"))?;
    parse_stat_cpu(&text).ok_or_else(|| fail(format!("cannot parse /proc/{pid}/stat")))
}

/// Resident set size of process `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    status_field(pid, "VmRSS")
}

/// Threads of process `pid`.
pub fn thread_count(pid: u32) -> Result<u64, BenchError> {
    status_field(pid, "Threads")
}

fn status_field(pid: u32, name: &str) -> Result<u64, BenchError> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .ctx(|| format!("read /proc/{pid}/status"))?;
    parse_status_field(&text, name).ok_or_else(|| fail(format!("no {name} in /proc/{pid}/status")))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux value, if that fails).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Makes sure process `pid` may open at least `want` files, raising its limits with
/// `prlimit --pid` (util-linux) when they are lower. Raising the hard limit needs
/// root (CAP_SYS_RESOURCE).
pub fn ensure_nofile(pid: u32, want: u64) -> Result<(), BenchError> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits"))
        .ctx(|| format!("read /proc/{pid}/limits"))?;
    let (soft, hard) = parse_nofile_limits(&text)
        .ok_or_else(|| fail(format!("no open-files limit in /proc/{pid}/limits")))?;
    if soft >= want {
        return Ok(());
    }
    let new_hard = hard.max(want);
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={want}:{new_hard}"))
        .stdin(Stdio::null())
        .output()
        .ctx(|| "run prlimit (util-linux) to raise the open-files limit".to_string())?;
    if !out.status.success() {
        return Err(BenchError::Skip(format!(
            "process {pid} may open {soft} files and {want} are needed; prlimit failed ({}); run as root or raise `ulimit -n` first",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Framing: one buffer per client connection, filled by reads with a timeout, so a
// frame or line split across reads (or across a read timeout) is never lost.

/// A client's receive buffer, split into MTP frames, IRC lines or plaintext relay
/// frames. Its memory is allocated on the first read.
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
    pub fn push(&mut self, bytes: &[u8]) {
        let mut r = bytes;
        while !r.is_empty() {
            let _ = self.fill(&mut r);
        }
    }

    /// The bytes of a range returned by one of the `next_*` methods.
    pub fn get(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// Whether no byte is buffered.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn take(&mut self, n: usize) -> Range<usize> {
        let r = self.start..self.start + n;
        self.start += n;
        r
    }

    /// The next complete MTP frame, if buffered. A bad header is an error: the
    /// stream cannot be resynchronised.
    pub fn next_mtp(&mut self) -> Result<Option<Range<usize>>, mtp::MtpError> {
        let avail = self.end - self.start;
        if avail < mtp::HEADER_LEN {
            return Ok(None);
        }
        let mut head = [0u8; mtp::HEADER_LEN];
        head.copy_from_slice(&self.buf[self.start..self.start + mtp::HEADER_LEN]);
        let len = Header::decode(&head)?.len as usize;
        Ok((avail >= len).then(|| self.take(len)))
    }

    /// The next complete line without its `\r\n` (or `\n`), if buffered. A line
    /// longer than [`MAX_IRC_LINE`] is an error.
    pub fn next_line(&mut self) -> Result<Option<Range<usize>>, BenchError> {
        let pending = &self.buf[self.start..self.end];
        match pending.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let r = self.take(i + 1);
                let mut end = r.end - 1;
                if end > r.start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                Ok(Some(r.start..end))
            }
            None if pending.len() > MAX_IRC_LINE => {
                Err(fail(format!("a line longer than {MAX_IRC_LINE} bytes")))
            }
            None => Ok(None),
        }
    }

    /// The next complete plaintext relay frame, if buffered: `(type, group, body)`.
    pub fn next_plain(&mut self) -> Result<Option<(u8, u64, Range<usize>)>, BenchError> {
        let avail = self.end - self.start;
        if avail < 4 {
            return Ok(None);
        }
        let p = &self.buf[self.start..];
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if !(PLAIN_MIN_FRAME..=PLAIN_MAX_FRAME).contains(&len) {
            return Err(fail(format!("plaintext relay frame of {len} bytes")));
        }
        if avail < 4 + len {
            return Ok(None);
        }
        let typ = p[4];
        let group = u64::from_be_bytes(
            p[5..13]
                .try_into()
                .map_err(|_| fail("short plaintext relay frame"))?,
        );
        let r = self.take(4 + len);
        Ok(Some((typ, group, r.start + 4 + PLAIN_MIN_FRAME..r.end)))
    }
}

// ---------------------------------------------------------------------------------
// Message texts.

const FILLER: &[u8] =
    b"the quick brown fox jumps over the lazy dog while mpchat-bench counts every delivery, ";

/// The 100-byte text of message `n`: `n` in ten decimal digits, a space, filler.
pub fn text_of(n: u64) -> [u8; TEXT_LEN] {
    let mut t = [0u8; TEXT_LEN];
    let head = format!("{:010} ", n % 10_000_000_000);
    t[..head.len()].copy_from_slice(head.as_bytes());
    for (i, b) in t[head.len()..].iter_mut().enumerate() {
        *b = FILLER[i % FILLER.len()];
    }
    t
}

// ---------------------------------------------------------------------------------
// Child processes and temporary directories.

/// A temporary directory, removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh private directory under the system temporary directory.
    pub fn new(tag: &str) -> Result<TempDir, BenchError> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "mpchat-bench-{tag}-{}-{n}-{}",
            std::process::id(),
            unix_ns()
        ));
        fsutil::ensure_private_dir(&dir).ctx(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A server process under test: a child, killed when dropped, or a running server
/// given with `--target`, left alone.
#[derive(Debug)]
pub struct Daemon {
    name: &'static str,
    child: Option<Child>,
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    /// The write end of its standard input, for a child that exits when it closes.
    _stdin: Option<std::process::ChildStdin>,
}

impl Daemon {
    /// A server the bench did not start: process `pid`, listening on `addr`.
    pub fn attached(name: &'static str, pid: u32, addr: SocketAddr) -> Daemon {
        Daemon {
            name,
            child: None,
            pid,
            addr,
            log: PathBuf::new(),
            _stdin: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        let Some(child) = self.child.as_mut() else {
            return if Path::new(&format!("/proc/{}", self.pid)).exists() {
                Ok(())
            } else {
                Err(fail(format!(
                    "{} (process {}) has exited",
                    self.name, self.pid
                )))
            };
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(fail(format!(
                "{} exited ({status}); its log ends: {}",
                self.name,
                self.log_tail()
            ))),
            Err(e) => Err(fail(format!("{}: {e}", self.name))),
        }
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// CPU ticks used so far.
    pub fn cpu_ticks(&self) -> Result<u64, BenchError> {
        cpu_ticks(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `cmd` with stderr to `log`, and waits for a `listening on ADDR` line on its
/// stdout (mpchatd and the plaintext relay both print one).
fn spawn_listening(
    name: &'static str,
    mut cmd: Command,
    log: &Path,
    watch_stdin: bool,
) -> Result<Daemon, BenchError> {
    let log_file = fs::File::create(log).ctx(|| format!("create {}", log.display()))?;
    let mut child = cmd
        .stdin(if watch_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .ctx(|| format!("start {name}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail(format!("{name}: no stdout")))?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let mut r = BufReader::new(stdout);
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let stdin = child.stdin.take();
    let mut daemon = Daemon {
        name,
        pid: child.id(),
        child: Some(child),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        log: log.to_path_buf(),
        _stdin: stdin,
    };
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(l) => l,
        Err(_) => {
            daemon.check_alive()?;
            return Err(fail(format!(
                "{name} did not say where it listens within {START_TIMEOUT:?}"
            )));
        }
    };
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok());
    match addr {
        Some(a) => daemon.addr = a,
        None => {
            daemon.check_alive()?;
            return Err(fail(format!(
                "{name} printed {:?} instead of its address",
                line.trim()
            )));
        }
    }
    Ok(daemon)
}

fn connect(addr: SocketAddr) -> Result<TcpStream, BenchError> {
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
fn fill_once(framer: &mut Framer, stream: &mut TcpStream, who: &str) -> Result<bool, BenchError> {
    match framer.fill(stream) {
        Ok(0) => Err(fail(format!("{who}: the server closed the connection"))),
        Ok(_) => Ok(true),
        Err(e) if is_timeout(&e) => Ok(false),
        Err(e) => Err(fail(format!("{who}: {e}"))),
    }
}

// ---------------------------------------------------------------------------------
// The relay workload, common to the three systems.

/// What one poll of a receiving connection saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// Bytes arrived (maybe no complete delivery yet).
    Data,
    /// The read timed out.
    Idle,
}

/// The sending participant of a group: sends message `n` (its n-th message since the
/// group was set up, which the server numbers `n` too).
pub trait SendSide: Send {
    /// Sends message `n`.
    fn send(&mut self, n: u64) -> Result<(), BenchError>;
}

/// A receiving participant: reads what has arrived and reports each delivery as
/// `(n, content_ok)`; acknowledges as a real client would.
pub trait RecvSide: Send {
    /// One read with a short timeout, then every complete delivery.
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError>;
}

/// The sender's own replies from the server (`msg_res OK n`), where there are any.
pub trait AckSide: Send {
    /// One read with a short timeout, then every complete reply as `(n, ok)`.
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError>;
}

/// One sender and its receivers, all subscribed, ready to be timed.
pub struct Group {
    /// Participants, sender included.
    pub participants: usize,
    /// Bytes on the wire for one delivery to one receiver.
    pub wire_bytes: usize,
    /// Bytes of the message body the server relays (an envelope for mpchat).
    pub payload_len: usize,
    sender: Box<dyn SendSide>,
    acks: Option<Box<dyn AckSide>>,
    receivers: Vec<Box<dyn RecvSide>>,
    /// The number of the next message.
    next: u64,
}

/// How the sender paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as possible, at most `window` messages ahead of the slowest receiver.
    Saturated {
        /// Messages ahead of the slowest receiver, at most.
        window: u64,
    },
    /// `rate` messages per second on a fixed schedule.
    Light {
        /// Messages per second.
        rate: u32,
    },
    /// As fast as possible, at most `window` messages ahead of the server's replies
    /// (`msg_res OK n`): with a window of 1, a client that waits for each message to
    /// be acknowledged (stored) before sending the next.
    Acked {
        /// Messages not yet acknowledged, at most.
        window: u64,
    },
}

/// What one timed relay run measured.
#[derive(Debug, Clone, Default)]
pub struct RelayRun {
    /// Messages sent.
    pub messages: u64,
    /// Deliveries received, all receivers together.
    pub deliveries: u64,
    /// From the first send to the last delivery.
    pub elapsed: Duration,
    /// Send-to-delivery latencies in nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// Server CPU over the run.
    pub server_cpu: Duration,
    /// CPU of this process (every client, sender and receivers) over the run: on one
    /// machine the clients compete with the server for the same cores.
    pub client_cpu: Duration,
    /// Integrity failures (lost, duplicated, reordered or altered messages).
    pub errors: Vec<String>,
    /// Messages the server acknowledged to the sender.
    pub acked: u64,
    /// From the first send to the last acknowledgement.
    pub ack_elapsed: Duration,
    /// Send-to-acknowledgement latencies in nanoseconds, sorted.
    pub ack_latencies: Vec<u64>,
}

impl RelayRun {
    /// Deliveries per second.
    pub fn rate(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency percentile in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).map_or(f64::NAN, |ns| ns as f64 / 1e6)
    }
}

/// Per-receiver state during a run.
struct RecvOutcome {
    received: u64,
    last_ns: u64,
    latencies: Vec<u64>,
    errors: Vec<String>,
}

const MAX_ERROR_SAMPLES: usize = 5;

fn note(errors: &mut Vec<String>, count: &mut u64, msg: String) {
    *count += 1;
    if errors.len() < MAX_ERROR_SAMPLES {
        errors.push(msg);
    }
}

/// Runs one timed relay run on `group`: at most `max_messages` messages for at most
/// `duration` of sending, paced by `pace`; then waits for every receiver to hold
/// every message. Each receiver checks it gets every message once, in order, with
/// the expected bytes. `server_pid` is sampled for CPU.
pub fn run_relay(
    group: &mut Group,
    pace: Pace,
    duration: Duration,
    max_messages: u64,
    server_pid: u32,
    ticks_per_s: u64,
) -> Result<RelayRun, BenchError> {
    let first = group.next;
    let max_messages = max_messages.max(1);
    let clock = Clock::new();
    let send_ns: Vec<AtomicU64> = (0..max_messages).map(|_| AtomicU64::new(0)).collect();
    let progress: Vec<AtomicU64> = group
        .receivers
        .iter()
        .map(|_| AtomicU64::new(first - 1))
        .collect();
    let acked = AtomicU64::new(first - 1);
    let target = AtomicU64::new(u64::MAX);
    let stop = AtomicBool::new(false);
    let waiting = AtomicBool::new(false);
    let sender_thread = thread::current();
    let cpu0 = cpu_ticks(server_pid)?;
    let own0 = cpu_ticks(std::process::id())?;

    let has_acks = group.acks.is_some();
    if matches!(pace, Pace::Acked { .. }) && !has_acks {
        return Err(fail(
            "this system sends no replies for the sender to wait for",
        ));
    }
    let Group {
        sender,
        acks,
        receivers,
        ..
    } = group;
    let (sent, outcomes, ack_errors, send_error) = thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, side) in receivers.iter_mut().enumerate() {
            let (progress, target, stop, waiting, send_ns, sender_thread) = (
                &progress[i],
                &target,
                &stop,
                &waiting,
                &send_ns,
                sender_thread.clone(),
            );
            let h = thread::Builder::new().stack_size(CLIENT_STACK).spawn_scoped(scope, move || {
                let mut out = RecvOutcome { received: 0, last_ns: 0, latencies: Vec::new(), errors: Vec::new() };
                let mut expected = first;
                let mut bad = 0u64;
                let mut drain_deadline: Option<Instant> = None;
                let mut last_progress = Instant::now();
                loop {
                    let t = target.load(Ordering::SeqCst);
                    if expected > t || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if t != u64::MAX {
                        let d = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                        if Instant::now() > d {
                            note(&mut out.errors, &mut bad, format!("messages {expected}..={t} not received within {DRAIN_TIMEOUT:?}"));
                            break;
                        }
                    }
                    if last_progress.elapsed() > STALL_TIMEOUT {
                        note(&mut out.errors, &mut bad, format!("no delivery for {STALL_TIMEOUT:?} while waiting for message {expected}"));
                        stop.store(true, Ordering::SeqCst);
                        break;
                    }
                    let before = expected;
                    let polled = side.poll(&mut |n, ok| {
                        let now = clock.ns();
                        if n != expected {
                            let what = if n < expected { "again or out of order" } else { "early: messages were lost" };
                            note(&mut out.errors, &mut bad, format!("message {n} arrived {what} (expected {expected})"));
                        }
                        if !ok {
                            note(&mut out.errors, &mut bad, format!("message {n} arrived with the wrong bytes"));
                        }
                        if n >= expected {
                            expected = n + 1;
                        }
                        out.received += 1;
                        out.last_ns = now;
                        if let Some(sent) = n.checked_sub(first).and_then(|i| send_ns.get(i as usize)) {
                            out.latencies.push(now.saturating_sub(sent.load(Ordering::Acquire)));
                        }
                    });
                    if let Err(e) = polled {
                        note(&mut out.errors, &mut bad, e.to_string());
                        stop.store(true, Ordering::SeqCst);
                        break;
                    }
                    if expected != before {
                        last_progress = Instant::now();
                        progress.store(expected - 1, Ordering::SeqCst);
                        if waiting.load(Ordering::SeqCst) {
                            sender_thread.unpark();
                        }
                    }
                }
                out
            });
            handles.push(h);
        }
        let ack_handle = acks.as_mut().map(|side| {
            let (acked, target, stop, waiting, send_ns, sender_thread) = (
                &acked,
                &target,
                &stop,
                &waiting,
                &send_ns,
                sender_thread.clone(),
            );
            thread::Builder::new()
                .stack_size(CLIENT_STACK)
                .spawn_scoped(scope, move || {
                    let mut lat = Vec::new();
                    let mut last_ns = 0;
                    let mut errors = Vec::new();
                    let mut bad = 0u64;
                    let mut expected = first;
                    let mut drain_deadline: Option<Instant> = None;
                    while expected <= target.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst)
                    {
                        if target.load(Ordering::SeqCst) != u64::MAX
                            && Instant::now()
                                > *drain_deadline
                                    .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT)
                        {
                            note(
                                &mut errors,
                                &mut bad,
                                format!("no reply to message {expected} within {DRAIN_TIMEOUT:?}"),
                            );
                            break;
                        }
                        let r = side.poll(&mut |n, ok| {
                            let now = clock.ns();
                            if !ok {
                                // Replies come in order: this one was for `expected`.
                                note(
                                    &mut errors,
                                    &mut bad,
                                    format!("the server refused message {expected}"),
                                );
                                expected += 1;
                                return;
                            }
                            if n != expected {
                                note(
                                    &mut errors,
                                    &mut bad,
                                    format!("reply OK {n} where OK {expected} was due"),
                                );
                            }
                            if let Some(sent) =
                                n.checked_sub(first).and_then(|i| send_ns.get(i as usize))
                            {
                                lat.push(now.saturating_sub(sent.load(Ordering::Acquire)));
                            }
                            last_ns = now;
                            expected = expected.max(n + 1);
                        });
                        if let Err(e) = r {
                            note(&mut errors, &mut bad, e.to_string());
                            stop.store(true, Ordering::SeqCst);
                            break;
                        }
                        acked.store(expected - 1, Ordering::SeqCst);
                        if waiting.load(Ordering::SeqCst) {
                            sender_thread.unpark();
                        }
                    }
                    (errors, lat, last_ns)
                })
        });

        // The sender, on this thread.
        let t0 = clock.ns();
        let end = t0 + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let mut n = first;
        let mut send_error = None;
        let mut slowest = first - 1;
        let min_progress = || {
            progress
                .iter()
                .map(|p| p.load(Ordering::SeqCst))
                .min()
                .unwrap_or(u64::MAX)
        };
        let mut last_move = Instant::now();
        let spawn_ok =
            handles.iter().all(|h| h.is_ok()) && ack_handle.as_ref().is_none_or(|h| h.is_ok());
        if !spawn_ok {
            stop.store(true, Ordering::SeqCst);
        }
        while n < first + max_messages && !stop.load(Ordering::SeqCst) {
            let now = clock.ns();
            if now >= end {
                break;
            }
            match pace {
                Pace::Saturated { window } | Pace::Acked { window } => {
                    // A sender with replies also keeps its own requests in flight
                    // within the window, as a client would: a server may close a
                    // connection whose replies pile up (mpchatd past --queue-len).
                    let gate = || match pace {
                        Pace::Acked { .. } => acked.load(Ordering::SeqCst),
                        _ if has_acks => min_progress().min(acked.load(Ordering::SeqCst)),
                        _ => min_progress(),
                    };
                    if n - slowest > window {
                        let m = gate();
                        if m != slowest {
                            last_move = Instant::now();
                            slowest = m;
                        }
                        if n - slowest > window {
                            waiting.store(true, Ordering::SeqCst);
                            if n - gate() > window {
                                thread::park_timeout(Duration::from_millis(5));
                            }
                            waiting.store(false, Ordering::SeqCst);
                            if last_move.elapsed() > STALL_TIMEOUT {
                                send_error = Some(format!(
                                    "no progress for {STALL_TIMEOUT:?} at message {n}"
                                ));
                                break;
                            }
                            continue;
                        }
                    }
                }
                Pace::Light { rate } => {
                    let due = t0 + (n - first) * 1_000_000_000 / u64::from(rate.max(1));
                    if due > now {
                        thread::sleep(Duration::from_nanos(due - now));
                        continue;
                    }
                    // Open loop, but never unbounded: a receiver this far behind means
                    // the server cannot carry the light load.
                    if n - min_progress() > 100 * SATURATED_WINDOW {
                        send_error = Some(
                            "receivers fell more than 25,600 messages behind the light load".into(),
                        );
                        break;
                    }
                }
            }
            send_ns[(n - first) as usize].store(clock.ns(), Ordering::Release);
            if let Err(e) = sender.send(n) {
                send_error = Some(e.to_string());
                break;
            }
            n += 1;
        }
        let sent = n - first;
        target.store(n - 1, Ordering::SeqCst);
        if send_error.is_some() {
            stop.store(true, Ordering::SeqCst);
        }
        let outcomes: Vec<Result<RecvOutcome, String>> = handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .map_err(|_| "a receiver thread panicked".to_string()),
                Err(e) => Err(format!("cannot start a receiver thread: {e}")),
            })
            .collect();
        let ack_errors = match ack_handle {
            None => (Vec::new(), Vec::new(), 0),
            Some(Ok(h)) => h
                .join()
                .unwrap_or_else(|_| (vec!["the reply reader panicked".into()], Vec::new(), 0)),
            Some(Err(e)) => (
                vec![format!("cannot start the reply reader: {e}")],
                Vec::new(),
                0,
            ),
        };
        ((sent, t0), outcomes, ack_errors, send_error)
    });
    let cpu1 = cpu_ticks(server_pid)?;
    let own1 = cpu_ticks(std::process::id())?;
    let (sent, t0) = sent;
    group.next = first + sent;

    let mut run = RelayRun {
        messages: sent,
        ..RelayRun::default()
    };
    run.server_cpu = ticks(cpu1.saturating_sub(cpu0), ticks_per_s);
    run.client_cpu = ticks(own1.saturating_sub(own0), ticks_per_s);
    if let Some(e) = send_error {
        run.errors.push(format!("sender: {e}"));
    }
    let mut last_ns = t0;
    for o in outcomes {
        match o {
            Ok(o) => {
                run.deliveries += o.received;
                last_ns = last_ns.max(o.last_ns);
                run.latencies.extend(o.latencies);
                run.errors.extend(o.errors);
            }
            Err(e) => run.errors.push(e),
        }
    }
    let (ack_errors, mut ack_latencies, ack_last) = ack_errors;
    run.errors.extend(ack_errors);
    ack_latencies.sort_unstable();
    run.acked = ack_latencies.len() as u64;
    run.ack_latencies = ack_latencies;
    run.ack_elapsed = Duration::from_nanos(ack_last.saturating_sub(t0));
    run.latencies.sort_unstable();
    run.elapsed = Duration::from_nanos(last_ns.saturating_sub(t0));
    Ok(run)
}

// ---------------------------------------------------------------------------------
// mpchat: accounts, server, client connections, sessions.

/// One account for a server under test: name, password, PBKDF2 iterations.
#[derive(Debug, Clone)]
pub struct AccountSpec {
    /// Username.
    pub name: String,
    /// Password (never printed).
    pub password: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
}

impl AccountSpec {
    /// An account called `name` with a fresh random password (a `--target` server
    /// may be reachable by others while the bench's accounts exist).
    pub fn new(name: &str, iterations: u32) -> AccountSpec {
        let mut secret = [0u8; 12];
        let password = match crypto::fill_random(&mut secret) {
            Ok(()) => crate::encoding::hex(&secret),
            // Without randomness no login can be made either; the bench fails there.
            Err(_) => String::from("unavailable"),
        };
        AccountSpec {
            name: name.to_string(),
            password,
            iterations,
        }
    }
}

/// Creates `accounts` in `state`: with `mpchatd useradd --password-stdin` one by one
/// up to [`USERADD_MAX`], otherwise by writing the users file once through the
/// library (same format; only before the server starts).
pub fn create_accounts(
    mpchatd: &Path,
    state: &Path,
    accounts_: &[AccountSpec],
) -> Result<(), BenchError> {
    if accounts_.len() <= USERADD_MAX {
        for a in accounts_ {
            let mut child = Command::new(mpchatd)
                .arg("useradd")
                .arg(&a.name)
                .arg("--state-dir")
                .arg(state)
                .arg("--password-stdin")
                .arg("--iterations")
                .arg(a.iterations.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .ctx(|| format!("run {} useradd", mpchatd.display()))?;
            if let Some(mut stdin) = child.stdin.take() {
                writeln!(stdin, "{}", a.password)
                    .ctx(|| "pass the password to useradd".to_string())?;
            }
            let out = child
                .wait_with_output()
                .ctx(|| "wait for useradd".to_string())?;
            if !out.status.success() {
                return Err(fail(format!(
                    "mpchatd useradd {} failed: {}",
                    a.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        return Ok(());
    }
    let path = state.join(accounts::USERS_FILE);
    let mut all = match fs::read_to_string(&path) {
        Ok(text) => accounts::parse_users(&text).ctx(|| format!("read {}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Accounts::new(),
        Err(e) => return Err(fail(format!("read {}: {e}", path.display()))),
    };
    for a in accounts_ {
        let hash =
            PasswordHash::new(&a.password, a.iterations).ctx(|| "hash a password".to_string())?;
        loop {
            let uid = crypto::random_nonzero_u64().ctx(|| "draw a uid".to_string())?;
            match all.insert(Account {
                name: a.name.clone(),
                uid,
                hash: hash.clone(),
            }) {
                Ok(()) => break,
                Err(accounts::EntryError::DuplicateUid(_)) => continue,
                Err(e) => return Err(fail(format!("account {}: {e:?}", a.name))),
            }
        }
    }
    fsutil::atomic_write(&path, all.to_text().as_bytes(), 0o600)
        .ctx(|| format!("write {}", path.display()))
}

/// A running `mpchatd` with its state directory.
pub struct MpchatServer {
    /// The process.
    pub daemon: Daemon,
    /// The server's public key, which clients need to log in.
    pub key: RsaPublic,
    _dir: Option<TempDir>,
    /// For a `--target` server: the accounts to remove when done.
    added: Option<AddedAccounts>,
}

/// Accounts the bench added to a running server's state directory.
struct AddedAccounts {
    mpchatd: PathBuf,
    state: PathBuf,
    names: Vec<String>,
}

impl Drop for MpchatServer {
    fn drop(&mut self) {
        if let Some(a) = &self.added {
            for name in &a.names {
                let _ = Command::new(&a.mpchatd)
                    .arg("userdel")
                    .arg(name)
                    .arg("--state-dir")
                    .arg(&a.state)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A running mpchatd to measure instead of one the bench starts (`--target`).
#[derive(Debug, Clone)]
pub struct Target {
    /// Where it listens (a loopback address).
    pub addr: SocketAddr,
    /// Its state directory: the bench adds its accounts there (the server reads the
    /// users file again when it changes) and reads `server.pub`.
    pub state_dir: PathBuf,
}

/// Prefix of the accounts the bench adds to a `--target` server.
pub const TARGET_ACCOUNT_PREFIX: &str = "mpbench-";

/// Measures the mpchatd of `target` with `accounts_` added to its users file (with
/// `mpchatd useradd`, which the running server picks up), removed again on drop.
pub fn attach_mpchatd(
    mpchatd: &Path,
    target: &Target,
    accounts_: &[AccountSpec],
) -> Result<MpchatServer, BenchError> {
    let pub_path = target.state_dir.join(crate::server::SERVER_PUB_FILE);
    let key = crypto::read_public_key(&pub_path)
        .ctx(|| format!("read the server key {}", pub_path.display()))?;
    let pid = listener_pid(target.addr).ok_or_else(|| {
        fail(format!(
            "no process of this user listens on {}; start mpchatd there, or run mpchat-bench as the server's user",
            target.addr
        ))
    })?;
    let mut server = MpchatServer {
        daemon: Daemon::attached("mpchatd", pid, target.addr),
        key,
        _dir: None,
        added: Some(AddedAccounts {
            mpchatd: mpchatd.to_path_buf(),
            state: target.state_dir.clone(),
            names: Vec::new(),
        }),
    };
    for a in accounts_ {
        create_accounts(mpchatd, &target.state_dir, std::slice::from_ref(a))?;
        if let Some(added) = server.added.as_mut() {
            added.names.push(a.name.clone());
        }
    }
    // The server reads the users file again when it notices the change.
    thread::sleep(TARGET_RELOAD_WAIT);
    Ok(server)
}

/// Time for a running server to notice new accounts in its users file.
const TARGET_RELOAD_WAIT: Duration = Duration::from_millis(1500);

/// The process of this user with a socket listening on `addr` (or on the wildcard
/// address of its port), found through `/proc/net/tcp` and the processes' open files.
pub fn listener_pid(addr: SocketAddr) -> Option<u32> {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = fs::read_to_string(table).ok()?;
    let inodes: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let (ip_hex, port_hex) = local.split_once(':')?;
            let port = u16::from_str_radix(port_hex, 16).ok()?;
            let wildcard = ip_hex.bytes().all(|b| b == b'0');
            let ip_matches = wildcard || proc_net_ip(ip_hex) == Some(addr.ip());
            (*state == "0A" && port == addr.port() && ip_matches)
                .then(|| format!("socket:[{inode}]"))
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    fs::read_dir("/proc").ok()?.flatten().find_map(|proc_dir| {
        let pid: u32 = proc_dir.file_name().to_str()?.parse().ok()?;
        let fds = fs::read_dir(proc_dir.path().join("fd")).ok()?;
        fds.flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
            .then_some(pid)
    })
}

/// An address as `/proc/net/tcp{,6}` writes it: 32-bit words in host (little-endian)
/// byte order.
fn proc_net_ip(hex: &str) -> Option<std::net::IpAddr> {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(bytes.len());
    for word in bytes.chunks(4) {
        out.extend(word.iter().rev());
    }
    match out.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(out).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(out).ok()?)),
        _ => None,
    }
}

/// Starts `mpchatd` on 127.0.0.1 port 0 in a fresh state directory holding
/// `server_key` (so no key is generated) and `accounts_`, with extra flags.
pub fn start_mpchatd(
    mpchatd: &Path,
    tag: &str,
    server_key: &RsaPrivate,
    accounts_: &[AccountSpec],
    extra: &[&str],
) -> Result<MpchatServer, BenchError> {
    let dir = TempDir::new(tag)?;
    let state = dir.path().join("state");
    fsutil::ensure_private_dir(&state).ctx(|| format!("create {}", state.display()))?;
    crypto::write_key_pair(
        server_key,
        &state.join(crate::server::SERVER_KEY_FILE),
        &state.join(crate::server::SERVER_PUB_FILE),
    )
    .ctx(|| "write the server key".to_string())?;
    create_accounts(mpchatd, &state, accounts_)?;
    let mut cmd = Command::new(mpchatd);
    cmd.arg("--state-dir")
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    let daemon = spawn_listening("mpchatd", cmd, &dir.path().join("mpchatd.log"), false)?;
    Ok(MpchatServer {
        daemon,
        key: server_key.public(),
        _dir: Some(dir),
        added: None,
    })
}

/// A logged-in mpchat protocol client.
pub struct MpConn {
    /// The socket (read timeout [`POLL_TICK`]).
    pub stream: TcpStream,
    sender: mtp::Sender,
    receiver: mtp::Receiver,
    /// The user's id.
    pub uid: u64,
    framer: Framer,
}

impl MpConn {
    /// Connects to `addr` and logs in as `account`.
    pub fn login(
        addr: SocketAddr,
        key: &RsaPublic,
        account: &AccountSpec,
    ) -> Result<MpConn, BenchError> {
        let mut stream = connect(addr)?;
        let (frame, expect) = ClientLogin::start(key, &account.name, &account.password, unix_ns())
            .ctx(|| format!("build the login of {}", account.name))?;
        stream
            .write_all(&frame)
            .ctx(|| format!("send the login of {}", account.name))?;
        stream
            .set_read_timeout(Some(SETUP_TIMEOUT))
            .ctx(|| "set a read timeout".to_string())?;
        let reply = mtp::read_frame(&mut stream)
            .ctx(|| format!("login of {} (wrong password or server key?)", account.name))?;
        let est = expect
            .finish(&reply)
            .ctx(|| format!("login reply for {}", account.name))?;
        stream
            .set_read_timeout(Some(POLL_TICK))
            .ctx(|| "set a read timeout".to_string())?;
        Ok(MpConn {
            stream,
            sender: est.sender,
            receiver: est.receiver,
            uid: est.uid,
            framer: Framer::new(),
        })
    }

    /// Seals and sends one frame.
    pub fn send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) -> Result<(), BenchError> {
        let frame = self
            .sender
            .seal(typ, sid, self.uid, payload)
            .ctx(|| "seal a frame".to_string())?;
        self.stream
            .write_all(&frame)
            .ctx(|| "send a frame".to_string())
    }

    /// Opens the next buffered frame, if any; answers heartbeats on the way.
    fn try_next(&mut self) -> Result<Option<(Header, Vec<u8>)>, BenchError> {
        while let Some(r) = self
            .framer
            .next_mtp()
            .ctx(|| "frame from mpchatd".to_string())?
        {
            let (h, p) = self
                .receiver
                .open(self.framer.get(r))
                .ctx(|| "frame from mpchatd".to_string())?;
            if h.typ == MsgType::StatusReq && h.sid == 0 {
                self.send(MsgType::StatusRes, 0, b"Online")?;
                continue;
            }
            return Ok(Some((h, p)));
        }
        Ok(None)
    }

    /// The next frame, waiting until `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Result<(Header, Vec<u8>), BenchError> {
        loop {
            if let Some(x) = self.try_next()? {
                return Ok(x);
            }
            if Instant::now() > deadline {
                return Err(fail("mpchatd did not send an expected frame in time"));
            }
            fill_once(&mut self.framer, &mut self.stream, "mpchat client")?;
        }
    }

    /// Frames until one of type `typ` (others are dropped), waiting until `deadline`.
    pub fn next_of(
        &mut self,
        typ: MsgType,
        deadline: Instant,
    ) -> Result<(Header, Vec<u8>), BenchError> {
        loop {
            let (h, p) = self.next(deadline)?;
            if h.typ == typ {
                return Ok((h, p));
            }
        }
    }
}

/// How many participants a status payload lists as `accepted`.
pub fn accepted_in_status(payload: &[u8]) -> usize {
    String::from_utf8_lossy(payload)
        .lines()
        .skip(2)
        .filter(|l| l.split(' ').nth(2) == Some("accepted"))
        .count()
}

/// Keys for the relay's end-to-end envelopes.
pub struct E2eKeys {
    /// The author's key (signs every envelope).
    pub author: RsaPrivate,
    /// Every participant's public key line (one key shared by all participants: the
    /// envelope's size and layout are what a distinct key each would give).
    pub public: RsaPublic,
}

/// Sets up an mpchat session of `accounts_.len()` participants over the protocol:
/// everyone logs in (one at a time), the first sends init_req naming the others, who
/// accept with a key; returns once every participant holds a status showing all of
/// them accepted, with the envelopes built.
pub fn mpchat_group(
    server: &MpchatServer,
    accounts_: &[AccountSpec],
    keys: &E2eKeys,
) -> Result<Group, BenchError> {
    let size = accounts_.len();
    if size > MPCHAT_MAX_PARTICIPANTS {
        return Err(BenchError::Skip(format!(
            "mpchat sessions hold at most {MPCHAT_MAX_PARTICIPANTS} participants and envelopes at most {} recipients",
            e2e::MAX_RECIPIENTS
        )));
    }
    let deadline = Instant::now() + SETUP_TIMEOUT + Duration::from_millis(100 * size as u64);
    let mut conns = Vec::with_capacity(size);
    for a in accounts_ {
        conns.push(MpConn::login(server.daemon.addr, &server.key, a)?);
    }
    let key_line = keys.public.to_base64();
    let names: Vec<&str> = accounts_[1..].iter().map(|a| a.name.as_str()).collect();
    conns[0].send(
        MsgType::InitReq,
        0,
        format!("{key_line}\n{}\n", names.join("\n")).as_bytes(),
    )?;
    let mut sid = 0;
    for c in conns[1..].iter_mut() {
        let (h, _) = c.next_of(MsgType::InviteReq, deadline)?;
        sid = h.sid;
        c.send(
            MsgType::InviteRes,
            sid,
            format!("Accept\n{key_line}").as_bytes(),
        )?;
    }
    let (h, p) = conns[0].next_of(MsgType::InitRes, deadline)?;
    if p != b"OK" || h.sid != sid {
        return Err(fail(format!(
            "init_res {:?} for sid {:016x}",
            String::from_utf8_lossy(&p),
            h.sid
        )));
    }
    // Subscribed: every participant holds a status listing all as accepted.
    for c in conns.iter_mut() {
        loop {
            let (h, p) = c.next_of(MsgType::StatusRes, deadline)?;
            if h.sid == sid && accepted_in_status(&p) == size {
                break;
            }
        }
    }
    let author = conns[0].uid;
    let recipients: Vec<(u64, &RsaPublic)> =
        conns[1..].iter().map(|c| (c.uid, &keys.public)).collect();
    let mut pool = Vec::with_capacity(ENVELOPE_POOL);
    for k in 0..ENVELOPE_POOL as u64 {
        let text = text_of(k);
        let text = std::str::from_utf8(&text).map_err(|_| fail("text_of is ASCII"))?;
        pool.push(
            e2e::seal(sid, author, &keys.author, &recipients, text)
                .ctx(|| "build an envelope".to_string())?,
        );
    }
    let pool = Arc::new(pool);
    let wire_bytes = mtp::HEADER_LEN + 8 + pool[0].len() + mtp::MAC_LEN;
    let mut it = conns.into_iter();
    let creator = it.next().ok_or_else(|| fail("no creator"))?;
    let receivers: Vec<Box<dyn RecvSide>> = it
        .map(|c| {
            Box::new(MpRecv {
                conn: c,
                sid,
                author,
                pool: pool.clone(),
                acked: 0,
                last: 0,
            }) as Box<dyn RecvSide>
        })
        .collect();
    let payload_len = pool[0].len();
    let (sender, acks) = split_mp_sender(creator, sid, pool)?;
    Ok(Group {
        participants: size,
        wire_bytes,
        payload_len,
        sender: Box::new(sender),
        acks: Some(Box::new(acks)),
        receivers,
        next: 1,
    })
}

/// The writing half of an mpchat connection, shared by the sending thread and the
/// reply reader (which answers heartbeats).
struct MpWriter {
    stream: TcpStream,
    sender: mtp::Sender,
    uid: u64,
}

impl MpWriter {
    fn send(&mut self, typ: MsgType, sid: u64, payload: &[u8]) -> Result<(), BenchError> {
        let frame = self
            .sender
            .seal(typ, sid, self.uid, payload)
            .ctx(|| "seal a frame".to_string())?;
        self.stream
            .write_all(&frame)
            .ctx(|| "send a frame".to_string())
    }
}

struct MpSend {
    w: Arc<Mutex<MpWriter>>,
    sid: u64,
    pool: Arc<Vec<Vec<u8>>>,
}

impl SendSide for MpSend {
    fn send(&mut self, n: u64) -> Result<(), BenchError> {
        let env = &self.pool[(n % self.pool.len() as u64) as usize];
        lock(&self.w).send(MsgType::MsgReq, self.sid, env)
    }
}

struct MpAcks {
    stream: TcpStream,
    receiver: mtp::Receiver,
    framer: Framer,
    w: Arc<Mutex<MpWriter>>,
    sid: u64,
}

impl AckSide for MpAcks {
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
        if !fill_once(&mut self.framer, &mut self.stream, "mpchat sender")? {
            return Ok(Polled::Idle);
        }
        while let Some(r) = self
            .framer
            .next_mtp()
            .ctx(|| "frame from mpchatd".to_string())?
        {
            let (h, p) = self
                .receiver
                .open(self.framer.get(r))
                .ctx(|| "frame from mpchatd".to_string())?;
            match h.typ {
                MsgType::MsgRes if h.sid == self.sid => match crate::session::parse_ack(&p) {
                    Some(n) => on(n, true),
                    None => on(0, false),
                },
                MsgType::StatusReq if h.sid == 0 => {
                    lock(&self.w).send(MsgType::StatusRes, 0, b"Online")?
                }
                _ => {}
            }
        }
        Ok(Polled::Data)
    }
}

fn split_mp_sender(
    c: MpConn,
    sid: u64,
    pool: Arc<Vec<Vec<u8>>>,
) -> Result<(MpSend, MpAcks), BenchError> {
    let write_half = c.stream.try_clone().ctx(|| "clone a socket".to_string())?;
    let w = Arc::new(Mutex::new(MpWriter {
        stream: write_half,
        sender: c.sender,
        uid: c.uid,
    }));
    Ok((
        MpSend {
            w: w.clone(),
            sid,
            pool,
        },
        MpAcks {
            stream: c.stream,
            receiver: c.receiver,
            framer: c.framer,
            w,
            sid,
        },
    ))
}

struct MpRecv {
    conn: MpConn,
    sid: u64,
    author: u64,
    pool: Arc<Vec<Vec<u8>>>,
    acked: u64,
    last: u64,
}

impl RecvSide for MpRecv {
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
        if !fill_once(
            &mut self.conn.framer,
            &mut self.conn.stream,
            "mpchat receiver",
        )? {
            return Ok(Polled::Idle);
        }
        while let Some((h, p)) = self.conn.try_next()? {
            if h.typ != MsgType::MsgReq || h.sid != self.sid {
                continue; // status pushes and the like
            }
            let Some(prefix) = p.get(..8) else {
                on(0, false);
                continue;
            };
            let n = u64::from_be_bytes(prefix.try_into().map_err(|_| fail("8 bytes"))?);
            let expected = &self.pool[(n % self.pool.len() as u64) as usize];
            on(n, h.uid == self.author && p[8..] == expected[..]);
            self.last = self.last.max(n);
        }
        // Acknowledge what we hold before waiting for more, as a client would: one
        // cumulative ack per read.
        if self.last > self.acked {
            self.conn.send(
                MsgType::MsgRes,
                self.sid,
                format!("OK {}", self.last).as_bytes(),
            )?;
            self.acked = self.last;
        }
        Ok(Polled::Data)
    }
}

// ---------------------------------------------------------------------------------
// ngIRCd.

/// The ngIRCd configuration for a baseline on `127.0.0.1:port`: flood penalties off
/// (`MaxPenaltyTime = 0`), no per-address or total connection limit, no DNS, IDENT or
/// PAM lookups, no system include directory, pings rare enough not to disturb idle
/// connections during a run. Option names are those of ngircd.conf(5), ngIRCd 26.
pub fn ngircd_conf(port: u16, include_dir: &Path) -> String {
    format!(
        "[Global]\n\
         Name = bench.mpchat.invalid\n\
         Info = mpchat-bench baseline\n\
         Listen = 127.0.0.1\n\
         Ports = {port}\n\
         MotdPhrase = mpchat-bench\n\
         [Limits]\n\
         MaxConnections = 0\n\
         MaxConnectionsIP = 0\n\
         MaxJoins = 0\n\
         MaxPenaltyTime = 0\n\
         PingTimeout = 3600\n\
         PongTimeout = 3600\n\
         [Options]\n\
         DNS = no\n\
         Ident = no\n\
         PAM = no\n\
         IncludeDir = {}\n",
        include_dir.display()
    )
}

/// The ngIRCd version line (`ngircd --version`), if it runs.
pub fn ngircd_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

/// A running ngIRCd.
pub struct Ngircd {
    /// The process.
    pub daemon: Daemon,
    _dir: TempDir,
    next_nick: AtomicU64,
}

/// Starts ngIRCd in the foreground (`-n -f CONF`) on a free loopback port.
pub fn start_ngircd(bin: &Path) -> Result<Ngircd, BenchError> {
    let dir = TempDir::new("ngircd")?;
    let include = dir.path().join("conf.d");
    fs::create_dir_all(&include).ctx(|| format!("create {}", include.display()))?;
    // A free port: bind port 0, note it, release it for ngircd.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ctx(|| "find a free port".to_string())?
        .port();
    let conf = dir.path().join("ngircd.conf");
    // ngIRCd drops root for "nobody" after reading its configuration; make the
    // directory readable so it can reread the file if asked to.
    fs::write(&conf, ngircd_conf(port, &include)).ctx(|| format!("write {}", conf.display()))?;
    let log = dir.path().join("ngircd.log");
    let log_file = fs::File::create(&log).ctx(|| format!("create {}", log.display()))?;
    let log_err = log_file.try_clone().ctx(|| "clone a file".to_string())?;
    let child = Command::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .ctx(|| format!("start {}", bin.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut daemon = Daemon {
        name: "ngircd",
        pid: child.id(),
        child: Some(child),
        addr,
        log,
        _stdin: None,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        daemon.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "ngircd did not listen on {addr} within {START_TIMEOUT:?}"
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(Ngircd {
        daemon,
        _dir: dir,
        next_nick: AtomicU64::new(1),
    })
}

impl Ngircd {
    /// A fresh nickname (at most 9 characters, ngIRCd's default limit).
    pub fn nick(&self) -> String {
        format!(
            "b{}",
            base36(self.next_nick.fetch_add(1, Ordering::Relaxed))
        )
    }
}

fn base36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A registered IRC client.
pub struct IrcConn {
    /// The socket.
    pub stream: TcpStream,
    framer: Framer,
    /// The nickname.
    pub nick: String,
}

impl IrcConn {
    /// Connects and registers (NICK, USER), returning after the welcome (001).
    pub fn register(addr: SocketAddr, nick: &str) -> Result<IrcConn, BenchError> {
        let mut stream = connect(addr)?;
        stream
            .write_all(format!("NICK {nick}\r\nUSER {nick} 0 * :mpchat-bench\r\n").as_bytes())
            .ctx(|| "send NICK and USER".to_string())?;
        let mut c = IrcConn {
            stream,
            framer: Framer::new(),
            nick: nick.to_string(),
        };
        let deadline = Instant::now() + SETUP_TIMEOUT;
        c.wait_for(deadline, |l| irc_numeric(l) == Some("001"))?;
        Ok(c)
    }

    /// Joins `chan`, returning after the end of its names list (366): from then the
    /// server relays the channel's messages to us.
    pub fn join(&mut self, chan: &str) -> Result<(), BenchError> {
        self.stream
            .write_all(format!("JOIN {chan}\r\n").as_bytes())
            .ctx(|| "send JOIN".to_string())?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        self.wait_for(deadline, |l| irc_numeric(l) == Some("366"))
    }

    fn wait_for(
        &mut self,
        deadline: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(), BenchError> {
        loop {
            while let Some(r) = self.framer.next_line()? {
                let line = String::from_utf8_lossy(self.framer.get(r)).into_owned();
                if let Some(err) =
                    irc_numeric(&line).filter(|c| c.starts_with('4') || c.starts_with('5'))
                {
                    return Err(fail(format!("ngircd refused {}: numeric {err}", self.nick)));
                }
                if line.starts_with("ERROR") {
                    return Err(fail(format!("ngircd closed {}: {line}", self.nick)));
                }
                if let Some(arg) = line.strip_prefix("PING ") {
                    self.stream
                        .write_all(format!("PONG {arg}\r\n").as_bytes())
                        .ctx(|| "send PONG".to_string())?;
                }
                if pred(&line) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(fail(format!("ngircd did not answer {} in time", self.nick)));
            }
            fill_once(&mut self.framer, &mut self.stream, "IRC client")?;
        }
    }
}

/// The numeric of a server reply line (`:server 001 nick ...`), if it is one.
pub fn irc_numeric(line: &str) -> Option<&str> {
    let mut it = line.split(' ');
    let first = it.next()?;
    let code = if first.starts_with(':') {
        it.next()?
    } else {
        first
    };
    (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit())).then_some(code)
}

/// The text of a `PRIVMSG chan :text` line for channel `chan`, if it is one.
pub fn irc_privmsg_text<'a>(line: &'a [u8], chan: &str) -> Option<&'a [u8]> {
    let pat = format!(" PRIVMSG {chan} :");
    let pat = pat.as_bytes();
    let at = line.windows(pat.len()).position(|w| w == pat)?;
    Some(&line[at + pat.len()..])
}

/// Sets up an IRC channel of `size` members on ngIRCd; returns once each has joined.
pub fn irc_group(ng: &Ngircd, size: usize, chan: &str) -> Result<Group, BenchError> {
    let mut conns = Vec::with_capacity(size);
    for _ in 0..size {
        let mut c = IrcConn::register(ng.daemon.addr, &ng.nick())?;
        c.join(chan)?;
        conns.push(c);
    }
    let mut it = conns.into_iter();
    let sender = it.next().ok_or_else(|| fail("no sender"))?;
    let wire_bytes = format!(
        ":{}!~{}@127.0.0.1 PRIVMSG {chan} :\r\n",
        sender.nick, sender.nick
    )
    .len()
        + TEXT_LEN;
    let receivers: Vec<Box<dyn RecvSide>> = it
        .map(|c| {
            Box::new(IrcRecv {
                conn: c,
                chan: chan.to_string(),
            }) as Box<dyn RecvSide>
        })
        .collect();
    Ok(Group {
        participants: size,
        wire_bytes,
        payload_len: TEXT_LEN,
        sender: Box::new(IrcSend {
            stream: sender.stream,
            chan: chan.to_string(),
        }),
        acks: None,
        receivers,
        next: 1,
    })
}

struct IrcSend {
    stream: TcpStream,
    chan: String,
}

impl SendSide for IrcSend {
    fn send(&mut self, n: u64) -> Result<(), BenchError> {
        let mut line = Vec::with_capacity(TEXT_LEN + 32);
        line.extend_from_slice(format!("PRIVMSG {} :", self.chan).as_bytes());
        line.extend_from_slice(&text_of(n));
        line.extend_from_slice(b"\r\n");
        self.stream
            .write_all(&line)
            .ctx(|| "send PRIVMSG".to_string())
    }
}

struct IrcRecv {
    conn: IrcConn,
    chan: String,
}

impl RecvSide for IrcRecv {
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
        if !fill_once(&mut self.conn.framer, &mut self.conn.stream, "IRC receiver")? {
            return Ok(Polled::Idle);
        }
        while let Some(r) = self.conn.framer.next_line()? {
            let line = self.conn.framer.get(r);
            if let Some(text) = irc_privmsg_text(line, &self.chan) {
                let n = std::str::from_utf8(text.get(..10).unwrap_or_default())
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok());
                match n {
                    Some(n) => on(n, text == text_of(n)),
                    None => on(0, false),
                }
            } else if let Some(arg) = line.strip_prefix(b"PING ") {
                let mut pong = b"PONG ".to_vec();
                pong.extend_from_slice(arg);
                pong.extend_from_slice(b"\r\n");
                self.conn
                    .stream
                    .write_all(&pong)
                    .ctx(|| "send PONG".to_string())?;
            }
        }
        Ok(Polled::Data)
    }
}

// ---------------------------------------------------------------------------------
// The plaintext relay: the floor for this design.
//
// Frames: `len` (u32, big-endian; the bytes after it), `type` (u8), `group` (u64),
// body. A client JOINs a group (answered JOINED); a MSG is numbered `n` per group,
// answered `OK` (body: `n`) and delivered to every other member as DELIVERY (body:
// `n` then the text). Thread per connection plus a writer thread draining a bounded
// mpsc channel, a mutex-guarded map of groups: mpchatd's shape without cryptography,
// login or storage.

/// Client to relay: join the group.
pub const PLAIN_JOIN: u8 = 1;
/// Relay to client: joined.
pub const PLAIN_JOINED: u8 = 2;
/// Client to relay: a message to the group.
pub const PLAIN_MSG: u8 = 3;
/// Relay to member: a message, body `n` (u64) then the text.
pub const PLAIN_DELIVERY: u8 = 4;
/// Relay to author: the message was numbered, body `n` (u64).
pub const PLAIN_OK: u8 = 5;

/// One plaintext relay frame.
pub fn plain_frame(typ: u8, group: u64, parts: &[&[u8]]) -> Vec<u8> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let len = PLAIN_MIN_FRAME + body;
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(typ);
    f.extend_from_slice(&group.to_be_bytes());
    for p in parts {
        f.extend_from_slice(p);
    }
    f
}

struct PlainMember {
    id: u64,
    tx: SyncSender<Arc<Vec<u8>>>,
    stream: Arc<TcpStream>,
}

#[derive(Default)]
struct PlainGroup {
    n: u64,
    members: Vec<PlainMember>,
}

#[derive(Default)]
struct PlainShared {
    groups: Mutex<HashMap<u64, PlainGroup>>,
    next_id: AtomicU64,
}

/// Serves the plaintext relay on `listener` until the process ends.
pub fn serve_plain_relay(listener: TcpListener) -> io::Result<()> {
    let shared = Arc::new(PlainShared::default());
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors: back off instead of spinning.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let sh = shared.clone();
        let spawned = thread::Builder::new()
            .stack_size(PLAIN_STACK)
            .spawn(move || plain_connection(&sh, stream));
        if let Err(e) = spawned {
            eprintln!("plaintext relay: cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

fn plain_connection(sh: &PlainShared, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::sync_channel::<Arc<Vec<u8>>>(PLAIN_QUEUE_LEN);
    let w = stream.clone();
    if let Err(e) = thread::Builder::new()
        .stack_size(PLAIN_STACK)
        .spawn(move || plain_writer(&w, rx))
    {
        eprintln!("plaintext relay: cannot start a writer thread: {e}");
        return;
    }
    let mut joined: Vec<u64> = Vec::new();
    loop {
        let mut head = [0u8; 4 + PLAIN_MIN_FRAME];
        if (&*stream).read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if !(PLAIN_MIN_FRAME..=PLAIN_MAX_FRAME).contains(&len) {
            break;
        }
        let typ = head[4];
        let mut gid = [0u8; 8];
        gid.copy_from_slice(&head[5..13]);
        let group = u64::from_be_bytes(gid);
        let mut body = vec![0u8; len - PLAIN_MIN_FRAME];
        if (&*stream).read_exact(&mut body).is_err() {
            break;
        }
        match typ {
            PLAIN_JOIN => {
                let mut groups = lock(&sh.groups);
                let g = groups.entry(group).or_default();
                if !g.members.iter().any(|m| m.id == id) {
                    g.members.push(PlainMember {
                        id,
                        tx: tx.clone(),
                        stream: stream.clone(),
                    });
                    joined.push(group);
                }
                let _ = tx.try_send(Arc::new(plain_frame(PLAIN_JOINED, group, &[])));
            }
            PLAIN_MSG => {
                let mut doomed = Vec::new();
                {
                    let mut groups = lock(&sh.groups);
                    let Some(g) = groups
                        .get_mut(&group)
                        .filter(|g| g.members.iter().any(|m| m.id == id))
                    else {
                        break;
                    };
                    g.n += 1;
                    let n = g.n.to_be_bytes();
                    let frame = Arc::new(plain_frame(PLAIN_DELIVERY, group, &[&n, &body]));
                    // Sent under the lock, so every member sees the group's order.
                    g.members.retain(|m| {
                        if m.id == id || m.tx.try_send(frame.clone()).is_ok() {
                            true
                        } else {
                            doomed.push(m.stream.clone());
                            false
                        }
                    });
                    if tx
                        .try_send(Arc::new(plain_frame(PLAIN_OK, group, &[&n])))
                        .is_err()
                    {
                        doomed.push(stream.clone());
                    }
                }
                for s in doomed {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
            _ => break,
        }
    }
    {
        let mut groups = lock(&sh.groups);
        for gid in joined {
            if let Some(g) = groups.get_mut(&gid) {
                g.members.retain(|m| m.id != id);
                if g.members.is_empty() {
                    groups.remove(&gid);
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn plain_writer(stream: &TcpStream, rx: ChanReceiver<Arc<Vec<u8>>>) {
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        buf.extend_from_slice(&first);
        while buf.len() < PLAIN_WRITE_BUFFER {
            match rx.try_recv() {
                Ok(f) => buf.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if (&*stream).write_all(&buf).is_err() {
            break;
        }
        buf.clear();
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Starts the plaintext relay as a child process: `exe --serve-plain-relay
/// 127.0.0.1:0` (the bench binary itself).
pub fn start_plain_relay(exe: &Path) -> Result<(Daemon, TempDir), BenchError> {
    let dir = TempDir::new("plain")?;
    let mut cmd = Command::new(exe);
    cmd.args(["--serve-plain-relay", "127.0.0.1:0"]);
    let d = spawn_listening("plaintext relay", cmd, &dir.path().join("plain.log"), true)?;
    Ok((d, dir))
}

/// A plaintext relay client.
pub struct PlainConn {
    /// The socket.
    pub stream: TcpStream,
    framer: Framer,
}

impl PlainConn {
    /// Connects and joins `group`, returning once the relay confirms.
    pub fn join(addr: SocketAddr, group: u64) -> Result<PlainConn, BenchError> {
        let mut stream = connect(addr)?;
        stream
            .write_all(&plain_frame(PLAIN_JOIN, group, &[]))
            .ctx(|| "send JOIN".to_string())?;
        let mut c = PlainConn {
            stream,
            framer: Framer::new(),
        };
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            if let Some((typ, g, _)) = c.framer.next_plain()? {
                if typ == PLAIN_JOINED && g == group {
                    return Ok(c);
                }
                continue;
            }
            if Instant::now() > deadline {
                return Err(fail("the plaintext relay did not confirm a join in time"));
            }
            fill_once(&mut c.framer, &mut c.stream, "plaintext client")?;
        }
    }
}

/// The bytes after the text in a plaintext relay message of `len` bytes.
fn plain_padding(len: usize) -> Arc<Vec<u8>> {
    let pad = len.saturating_sub(TEXT_LEN);
    Arc::new(FILLER.iter().copied().cycle().take(pad).collect())
}

/// Sets up a plaintext relay group of `size` members whose messages are `len` bytes:
/// the 100-byte text, padded when `len` is larger (to carry as many bytes as an
/// mpchat envelope does).
pub fn plain_group(
    addr: SocketAddr,
    size: usize,
    group: u64,
    len: usize,
) -> Result<Group, BenchError> {
    let len = len.clamp(TEXT_LEN, PLAIN_MAX_FRAME - PLAIN_MIN_FRAME - 8);
    let pad = plain_padding(len);
    let mut conns = Vec::with_capacity(size);
    for _ in 0..size {
        conns.push(PlainConn::join(addr, group)?);
    }
    let mut it = conns.into_iter();
    let sender = it.next().ok_or_else(|| fail("no sender"))?;
    let read_half = sender
        .stream
        .try_clone()
        .ctx(|| "clone a socket".to_string())?;
    let receivers: Vec<Box<dyn RecvSide>> = it
        .map(|c| {
            Box::new(PlainRecv {
                conn: c,
                group,
                pad: pad.clone(),
            }) as Box<dyn RecvSide>
        })
        .collect();
    Ok(Group {
        participants: size,
        wire_bytes: 4 + PLAIN_MIN_FRAME + 8 + len,
        payload_len: len,
        sender: Box::new(PlainSend {
            stream: sender.stream,
            group,
            pad,
        }),
        acks: Some(Box::new(PlainAcks {
            conn: PlainConn {
                stream: read_half,
                framer: sender.framer,
            },
            group,
        })),
        receivers,
        next: 1,
    })
}

struct PlainSend {
    stream: TcpStream,
    group: u64,
    pad: Arc<Vec<u8>>,
}

impl SendSide for PlainSend {
    fn send(&mut self, n: u64) -> Result<(), BenchError> {
        self.stream
            .write_all(&plain_frame(
                PLAIN_MSG,
                self.group,
                &[&text_of(n), &self.pad],
            ))
            .ctx(|| "send to the plaintext relay".to_string())
    }
}

struct PlainAcks {
    conn: PlainConn,
    group: u64,
}

impl AckSide for PlainAcks {
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
        if !fill_once(
            &mut self.conn.framer,
            &mut self.conn.stream,
            "plaintext sender",
        )? {
            return Ok(Polled::Idle);
        }
        while let Some((typ, g, r)) = self.conn.framer.next_plain()? {
            if typ == PLAIN_OK && g == self.group {
                let b = self.conn.framer.get(r);
                match b.try_into() {
                    Ok(n) => on(u64::from_be_bytes(n), true),
                    Err(_) => on(0, false),
                }
            }
        }
        Ok(Polled::Data)
    }
}

struct PlainRecv {
    conn: PlainConn,
    group: u64,
    pad: Arc<Vec<u8>>,
}

impl RecvSide for PlainRecv {
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
        if !fill_once(
            &mut self.conn.framer,
            &mut self.conn.stream,
            "plaintext receiver",
        )? {
            return Ok(Polled::Idle);
        }
        while let Some((typ, g, r)) = self.conn.framer.next_plain()? {
            if typ != PLAIN_DELIVERY || g != self.group {
                continue;
            }
            let b = self.conn.framer.get(r);
            match b.get(..8).and_then(|p| <[u8; 8]>::try_from(p).ok()) {
                Some(p) => {
                    let n = u64::from_be_bytes(p);
                    on(
                        n,
                        b[8..] == text_of(n)[..]
                            || (b.len() == 8 + TEXT_LEN + self.pad.len()
                                && b[8..8 + TEXT_LEN] == text_of(n)
                                && b[8 + TEXT_LEN..] == self.pad[..]),
                    );
                }
                None => on(0, false),
            }
        }
        Ok(Polled::Data)
    }
}

// ---------------------------------------------------------------------------------
// Login, memory, durability, envelope and disk measurements.

/// Logs in repeatedly with `clients` threads, each with its own account from
/// `accounts_` (so no login replaces another's connection), each connection closed
/// right after login_res. Bounded by `duration` and `max` logins. Returns the logins
/// done, the time taken and the server CPU used.
pub fn mpchat_logins(
    server: &MpchatServer,
    accounts_: &[AccountSpec],
    duration: Duration,
    max: u64,
    ticks_per_s: u64,
) -> Result<(u64, Duration, Duration), BenchError> {
    let done = AtomicU64::new(0);
    let cpu0 = server.daemon.cpu_ticks()?;
    let t0 = Instant::now();
    let results: Vec<Result<(), BenchError>> = thread::scope(|s| {
        let hs: Vec<_> = accounts_
            .iter()
            .map(|a| {
                let done = &done;
                s.spawn(move || -> Result<(), BenchError> {
                    while t0.elapsed() < duration && done.load(Ordering::SeqCst) < max {
                        let c = MpConn::login(server.daemon.addr, &server.key, a)?;
                        drop(c);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail("a login thread panicked")))
            })
            .collect()
    });
    let elapsed = t0.elapsed();
    let cpu1 = server.daemon.cpu_ticks()?;
    for r in results {
        r?;
    }
    Ok((
        done.load(Ordering::SeqCst),
        elapsed,
        ticks(cpu1 - cpu0, ticks_per_s),
    ))
}

/// IRC registrations (NICK, USER, wait for 001, close) by `clients` threads, bounded
/// like [`mpchat_logins`].
pub fn irc_registrations(
    ng: &Ngircd,
    clients: usize,
    duration: Duration,
    max: u64,
    ticks_per_s: u64,
) -> Result<(u64, Duration, Duration), BenchError> {
    let done = AtomicU64::new(0);
    let cpu0 = ng.daemon.cpu_ticks()?;
    let t0 = Instant::now();
    let results: Vec<Result<(), BenchError>> = thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                let done = &done;
                s.spawn(move || -> Result<(), BenchError> {
                    while t0.elapsed() < duration && done.load(Ordering::SeqCst) < max {
                        let mut c = IrcConn::register(ng.daemon.addr, &ng.nick())?;
                        let _ = c.stream.write_all(b"QUIT\r\n");
                        drop(c);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(fail("a registration thread panicked")))
            })
            .collect()
    });
    let elapsed = t0.elapsed();
    let cpu1 = ng.daemon.cpu_ticks()?;
    for r in results {
        r?;
    }
    Ok((
        done.load(Ordering::SeqCst),
        elapsed,
        ticks(cpu1 - cpu0, ticks_per_s),
    ))
}

fn ticks(t: u64, per_s: u64) -> Duration {
    Duration::from_secs_f64(t as f64 / per_s.max(1) as f64)
}

/// The median time of `samples` runs of `f`, in milliseconds.
pub fn time_ms<T>(
    samples: usize,
    mut f: impl FnMut() -> Result<T, BenchError>,
) -> Result<f64, BenchError> {
    let mut v = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let t = Instant::now();
        std::hint::black_box(f()?);
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(&v).ok_or_else(|| fail("no samples"))
}

/// Resident memory of a server with idle connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryFigure {
    /// RSS before any connection, KiB.
    pub base_kib: u64,
    /// RSS with the connections open, KiB.
    pub rss_kib: u64,
    /// Threads with the connections open.
    pub threads: u64,
}

impl MemoryFigure {
    /// KiB per connection above the base.
    pub fn per_connection(&self, n: usize) -> f64 {
        (self.rss_kib as f64 - self.base_kib as f64) / n.max(1) as f64
    }
}

/// Opens `n` connections one at a time with `open`, waits `settle`, and reads the
/// server's RSS and threads; the connections close when this returns.
fn hold_idle<C>(
    d: &mut Daemon,
    n: usize,
    threads_per_connection: u64,
    settle: Duration,
    mut open: impl FnMut(usize) -> Result<C, BenchError>,
) -> Result<MemoryFigure, BenchError> {
    let pid = d.pid();
    check_map_count(n as u64 * threads_per_connection)?;
    ensure_nofile(std::process::id(), n as u64 + 256)?;
    ensure_nofile(pid, n as u64 + 256)?;
    thread::sleep(settle);
    let base_kib = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        match open(i) {
            Ok(c) => held.push(c),
            Err(e) => {
                d.check_alive()?;
                return Err(fail(format!(
                    "after {i} connections: {e}; the server's log ends: {}",
                    d.log_tail()
                )));
            }
        }
    }
    thread::sleep(settle);
    let fig = MemoryFigure {
        base_kib,
        rss_kib: rss_kib(pid)?,
        threads: thread_count(pid)?,
    };
    drop(held);
    Ok(fig)
}

/// Memory mappings a Rust thread costs: its stack and the stack's guard page, and
/// the alternate signal stack std sets up for overflow reports and its guard page.
pub const MAPS_PER_THREAD: u64 = 4;

/// Fails with a [`BenchError::Skip`] saying what to do if `vm.max_map_count` is too
/// low for a process to run `threads` threads: past it, thread creation fails (with
/// EAGAIN or ENOMEM) long before any descriptor or memory limit.
pub fn check_map_count(threads: u64) -> Result<(), BenchError> {
    let need = threads * MAPS_PER_THREAD + 8_192;
    let have: Option<u64> = fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match have {
        Some(have) if have < need => Err(BenchError::Skip(format!(
            "{threads} threads need vm.max_map_count of at least {need} ({MAPS_PER_THREAD} mappings a thread), and it is {have}; \
             raise it with `sysctl -w vm.max_map_count={}` (as root) and run again",
            need.next_power_of_two()
        ))),
        _ => Ok(()),
    }
}

/// Fsyncs per second of a 128-byte append in `dir`: the cost one durable message pays
/// without group commit. Bounded by `duration` and 10,000 fsyncs.
pub fn fsync_rate(dir: &Path, duration: Duration) -> Result<f64, BenchError> {
    let path = dir.join("fsync-probe");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ctx(|| format!("create {}", path.display()))?;
    let t0 = Instant::now();
    let mut n = 0u32;
    while t0.elapsed() < duration && n < 10_000 {
        f.write_all(&[0x5a; 128]).ctx(|| "append".to_string())?;
        f.sync_data().ctx(|| "fsync".to_string())?;
        n += 1;
    }
    let rate = f64::from(n) / t0.elapsed().as_secs_f64();
    drop(f);
    let _ = fs::remove_file(&path);
    Ok(rate)
}

// ---------------------------------------------------------------------------------
// Results.

/// One figure, measured once per run.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// What was measured (`relay-saturated`, `login`, ...).
    pub section: &'static str,
    /// `mpchat`, `ngircd`, `plain` or a reference.
    pub system: String,
    /// The workload parameter (`participants=10`, `iterations=1000`, ...).
    pub param: String,
    /// The figure's name.
    pub metric: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// One value per run.
    pub values: Vec<f64>,
}

impl Record {
    /// The median over the runs.
    pub fn median(&self) -> Option<f64> {
        median(&self.values)
    }
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Figures.
    pub records: Vec<Record>,
    /// The machine and the settings, as `(name, value)`.
    pub about: Vec<(String, String)>,
    /// Measurements skipped, and why.
    pub skipped: Vec<String>,
    /// Failures: lost or corrupted messages, dead servers, missed deadlines.
    pub failures: Vec<String>,
}

impl Report {
    /// Adds one run's value of a figure.
    pub fn add(
        &mut self,
        section: &'static str,
        system: &str,
        param: &str,
        metric: &'static str,
        unit: &'static str,
        value: f64,
    ) {
        match self.records.iter_mut().find(|r| {
            r.section == section && r.system == system && r.param == param && r.metric == metric
        }) {
            Some(r) => r.values.push(value),
            None => self.records.push(Record {
                section,
                system: system.to_string(),
                param: param.to_string(),
                metric,
                unit,
                values: vec![value],
            }),
        }
    }

    /// The median of a figure, if measured.
    pub fn get(&self, section: &str, system: &str, param: &str, metric: &str) -> Option<f64> {
        self.records
            .iter()
            .find(|r| {
                r.section == section && r.system == system && r.param == param && r.metric == metric
            })
            .and_then(Record::median)
    }

    /// The raw results as JSON.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{\n  \"about\": {");
        for (i, (k, v)) in self.about.iter().enumerate() {
            s.push_str(if i == 0 { "\n    " } else { ",\n    " });
            s.push_str(&format!("{}: {}", json_str(k), json_str(v)));
        }
        s.push_str("\n  },\n  \"records\": [");
        for (i, r) in self.records.iter().enumerate() {
            s.push_str(if i == 0 { "\n    " } else { ",\n    " });
            let values: Vec<String> = r.values.iter().map(|v| json_num(*v)).collect();
            s.push_str(&format!(
                "{{\"section\": {}, \"system\": {}, \"param\": {}, \"metric\": {}, \"unit\": {}, \"median\": {}, \"runs\": [{}]}}",
                json_str(r.section),
                json_str(&r.system),
                json_str(&r.param),
                json_str(r.metric),
                json_str(r.unit),
                r.median().map_or("null".to_string(), json_num),
                values.join(", ")
            ));
        }
        s.push_str("\n  ],\n  \"skipped\": [");
        s.push_str(
            &self
                .skipped
                .iter()
                .map(|x| json_str(x))
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push_str("],\n  \"failures\": [");
        s.push_str(
            &self
                .failures
                .iter()
                .map(|x| json_str(x))
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push_str("]\n}\n");
        s
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".to_string()
    }
}

// ---------------------------------------------------------------------------------
// The whole run.

/// The systems, in the order they are run and printed.
///
/// `plain-env` is the plaintext relay carrying messages as long as mpchat's envelopes
/// for the same session size: it separates what mpchat pays for moving larger
/// messages (the end-to-end envelope grows with its recipients) from what it pays
/// for anything else.
pub const SYSTEMS: [&str; 4] = ["mpchat", "ngircd", "plain", "plain-env"];

/// What to measure and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// The short version (`make bench`).
    pub quick: bool,
    /// Times each figure is measured; medians are reported.
    pub runs: usize,
    /// The `mpchatd` binary.
    pub mpchatd: PathBuf,
    /// The ngIRCd binary, or `None` to skip that baseline.
    pub ngircd: Option<PathBuf>,
    /// Why ngIRCd is skipped, when it is.
    pub ngircd_skip_reason: Option<String>,
    /// The bench binary itself (it serves the plaintext relay as a child process).
    pub self_exe: PathBuf,
    /// Whether to run the plaintext relay baseline.
    pub plain: bool,
    /// Whether to run it a second time with messages as long as mpchat's envelopes
    /// (`plain-env`).
    pub plain_envelope: bool,
    /// Session sizes (participants, sender included).
    pub sizes: Vec<usize>,
    /// Sections to run.
    pub relay: bool,
    /// Envelope build and open costs.
    pub envelope: bool,
    /// Login figures.
    pub login: bool,
    /// Memory figures.
    pub memory: bool,
    /// Durability figures.
    pub durability: bool,
    /// Sending time of a saturated run.
    pub saturated_time: Duration,
    /// Sending time of a light-load run.
    pub light_time: Duration,
    /// Messages per second under light load.
    pub light_rate: u32,
    /// Deliveries per saturated run, at most.
    pub max_deliveries: u64,
    /// PBKDF2 iteration counts for the login figures.
    pub login_iterations: Vec<u32>,
    /// Time per login measurement at 1,000 iterations (longer for more).
    pub login_time: Duration,
    /// Concurrent clients logging in.
    pub login_clients: usize,
    /// Idle connection counts for the memory figures.
    pub idle_connections: Vec<usize>,
    /// Wait before reading RSS.
    pub settle: Duration,
    /// Concurrent senders for the durability figure.
    pub durability_senders: usize,
    /// Sending time of a durability run.
    pub durability_time: Duration,
    /// Samples for the envelope and reference timings.
    pub samples: usize,
    /// Size of the end-to-end keys (the client's default, 3072).
    pub key_bits: usize,
    /// Wait up to this long for the machine to be idle (under [`IDLE_BUSY`] of its
    /// CPU in use) before measuring; 0 measures at once.
    pub wait_idle: Duration,
    /// Extra flags for every `mpchatd` started (for experiments: `--queue-len 64`).
    pub mpchatd_flags: Vec<String>,
    /// Measure this running mpchatd instead of starting one.
    pub target: Option<Target>,
}

/// The machine counts as idle below this fraction of its CPU in use.
pub const IDLE_BUSY: f64 = 0.25;

impl Options {
    /// The settings of `mpchat-bench` (`quick` false) or `mpchat-bench --quick`.
    pub fn new(quick: bool, mpchatd: PathBuf, self_exe: PathBuf) -> Options {
        let s = |full: u64, q: u64| Duration::from_millis(if quick { q } else { full });
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            quick,
            runs: if quick { 1 } else { 3 },
            mpchatd,
            ngircd: None,
            ngircd_skip_reason: None,
            self_exe,
            plain: true,
            plain_envelope: true,
            sizes: vec![2, 10, 50],
            relay: true,
            envelope: true,
            login: true,
            memory: true,
            durability: true,
            saturated_time: s(5_000, 2_000),
            light_time: s(10_000, 3_000),
            light_rate: LIGHT_RATE,
            max_deliveries: if quick { 2_000_000 } else { 5_000_000 },
            login_iterations: vec![LOW_ITERATIONS, accounts::DEFAULT_ITERATIONS],
            login_time: s(4_000, 1_500),
            login_clients: cores.clamp(1, 8),
            idle_connections: vec![1_000],
            settle: s(1_000, 500),
            durability_senders: 32,
            durability_time: s(5_000, 2_000),
            samples: if quick { 10 } else { 30 },
            key_bits: crate::pins::DEFAULT_KEY_BITS,
            wait_idle: Duration::ZERO,
            mpchatd_flags: Vec::new(),
            target: None,
        }
    }

    /// What the bench's account names start with: [`TARGET_ACCOUNT_PREFIX`] on a
    /// `--target` server, so they cannot clash with its users.
    pub fn account_prefix(&self) -> &'static str {
        if self.target.is_some() {
            TARGET_ACCOUNT_PREFIX
        } else {
            ""
        }
    }

    /// Multiplies every duration by `f` (a smoke test runs a tenth of `--quick`).
    pub fn scale_time(&mut self, f: f64) {
        let f = f.clamp(0.001, 100.0);
        for d in [
            &mut self.saturated_time,
            &mut self.light_time,
            &mut self.login_time,
            &mut self.settle,
            &mut self.durability_time,
        ] {
            *d = d.mul_f64(f);
        }
    }
}

struct Bench<'a> {
    o: &'a Options,
    report: Report,
    log: &'a mut dyn Write,
    tps: u64,
    server_key: RsaPrivate,
    keys: E2eKeys,
}

impl Bench<'_> {
    fn say(&mut self, line: String) {
        let _ = writeln!(self.log, "mpchat-bench: {line}");
        let _ = self.log.flush();
    }

    /// Starts an mpchatd with `accounts_`, `extra` flags and the user's own.
    fn mpchatd(
        &self,
        tag: &str,
        accounts_: &[AccountSpec],
        extra: &[&str],
    ) -> Result<MpchatServer, BenchError> {
        if let Some(target) = &self.o.target {
            if !extra.is_empty() {
                return Err(BenchError::Skip(format!(
                    "needs a server started with {} (not possible with --target)",
                    extra.join(" ")
                )));
            }
            return attach_mpchatd(&self.o.mpchatd, target, accounts_);
        }
        let mut flags: Vec<&str> = extra.to_vec();
        flags.extend(self.o.mpchatd_flags.iter().map(String::as_str));
        start_mpchatd(&self.o.mpchatd, tag, &self.server_key, accounts_, &flags)
    }

    fn trouble(&mut self, what: &str, e: BenchError) {
        match e {
            BenchError::Skip(m) => {
                self.say(format!("{what}: skipped: {m}"));
                self.report.skipped.push(format!("{what}: {m}"));
            }
            BenchError::Fail(m) => {
                self.say(format!("{what}: FAILED: {m}"));
                self.report.failures.push(format!("{what}: {m}"));
            }
        }
    }
}

/// Runs every selected measurement, printing progress to `log`, and returns the
/// figures. Failures are in [`Report::failures`]; nothing panics on a server's
/// misbehaviour.
pub fn run(o: &Options, log: &mut dyn Write) -> Result<Report, BenchError> {
    let mut report = Report::default();
    let waited = Instant::now();
    let mut busy = machine_busy(Duration::from_millis(500));
    while busy.is_some_and(|b| b >= IDLE_BUSY) && waited.elapsed() < o.wait_idle {
        let _ = writeln!(
            log,
            "mpchat-bench: waiting for the machine to be idle ({:.0}% CPU busy)",
            busy.unwrap_or(0.0) * 100.0
        );
        busy = machine_busy(Duration::from_secs(1));
    }
    if let Some(b) = busy.filter(|&b| b >= IDLE_BUSY) {
        let _ = writeln!(log, "mpchat-bench: warning: {:.0}% of the CPU is busy with other work; figures will be noisy", b * 100.0);
    }
    describe_machine(o, busy, &mut report);
    let _ = writeln!(
        log,
        "mpchat-bench: making keys (server RSA-2048, end-to-end RSA-{})",
        o.key_bits
    );
    let server_key =
        RsaPrivate::generate(crypto::SERVER_KEY_BITS).ctx(|| "make the server key".to_string())?;
    let author = RsaPrivate::generate(o.key_bits).ctx(|| "make an end-to-end key".to_string())?;
    let keys = E2eKeys {
        public: author.public(),
        author,
    };
    let mut b = Bench {
        o,
        report,
        log,
        tps: clock_ticks_per_second(),
        server_key,
        keys,
    };
    if let Some(reason) = &o.ngircd_skip_reason {
        let reason = reason.clone();
        b.trouble("ngIRCd baseline", BenchError::Skip(reason));
    }
    if o.envelope {
        if let Err(e) = envelope(&mut b) {
            b.trouble("envelope", e);
        }
    }
    if o.relay {
        if let Err(e) = relay(&mut b) {
            b.trouble("relay", e);
        }
    }
    if o.login {
        if let Err(e) = login(&mut b) {
            b.trouble("login", e);
        }
    }
    if o.memory {
        if let Err(e) = memory(&mut b) {
            b.trouble("memory", e);
        }
    }
    if o.durability {
        if let Err(e) = durability(&mut b) {
            b.trouble("durability", e);
        }
    }
    Ok(b.report)
}

/// CPU busy fraction of the whole machine over `over`, from /proc/stat.
fn machine_busy(over: Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let text = fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((v.iter().sum(), idle))
    };
    let (t0, i0) = sample()?;
    thread::sleep(over);
    let (t1, i1) = sample()?;
    let total = t1.checked_sub(t0)?.max(1);
    Some(1.0 - (i1 - i0) as f64 / total as f64)
}

fn describe_machine(o: &Options, busy: Option<f64>, r: &mut Report) {
    let mut about = |k: &str, v: String| r.about.push((k.to_string(), v));
    about("mpchat-bench", env!("CARGO_PKG_VERSION").to_string());
    about(
        "mode",
        if o.quick {
            "quick".into()
        } else {
            "full".into()
        },
    );
    about("runs", o.runs.to_string());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    about("cpu", model);
    about(
        "cores",
        thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    );
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    about(
        "memory MiB",
        parse_status_field(&meminfo, "MemTotal")
            .map_or("unknown".into(), |k| (k / 1024).to_string()),
    );
    about(
        "kernel",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    about(
        "load average at start",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    about(
        "cpu busy before start %",
        busy.map_or("unknown".into(), |b| format!("{:.0}", b * 100.0)),
    );
    match &o.target {
        Some(t) => about(
            "mpchatd",
            format!("running on {} (state {})", t.addr, t.state_dir.display()),
        ),
        None => about("mpchatd", o.mpchatd.display().to_string()),
    }
    about(
        "ngircd",
        match &o.ngircd {
            Some(p) => ngircd_version(p).unwrap_or_else(|| p.display().to_string()),
            None => format!(
                "skipped ({})",
                o.ngircd_skip_reason.as_deref().unwrap_or("not selected")
            ),
        },
    );
    about("text bytes", TEXT_LEN.to_string());
    about("saturated window", SATURATED_WINDOW.to_string());
    about("end-to-end key bits", o.key_bits.to_string());
}

fn envelope(b: &mut Bench<'_>) -> Result<(), BenchError> {
    let recipients: Vec<(u64, &RsaPublic)> = (1..=10u64).map(|u| (u, &b.keys.public)).collect();
    let text = text_of(7);
    let text = std::str::from_utf8(&text).map_err(|_| fail("text_of is ASCII"))?;
    let (sid, author) = (0x5eed, 1_000);
    let seal = || {
        e2e::seal(sid, author, &b.keys.author, &recipients, text)
            .ctx(|| "build an envelope".to_string())
    };
    let env = seal()?;
    let build = time_ms(b.o.samples, seal)?;
    let open = time_ms(b.o.samples, || {
        e2e::open(sid, author, &b.keys.public, 1, &b.keys.author, &env)
            .ctx(|| "open an envelope".to_string())
    })?;
    let p = "recipients=10";
    b.report
        .add("envelope", "mpchat", p, "build_ms", "ms", build);
    b.report.add("envelope", "mpchat", p, "open_ms", "ms", open);
    b.report.add(
        "envelope",
        "mpchat",
        p,
        "envelope_bytes",
        "B",
        env.len() as f64,
    );
    b.say(format!(
        "envelope at 10 recipients: build {build:.2} ms, open {open:.2} ms, {} bytes",
        env.len()
    ));
    Ok(())
}

fn record_relay(
    b: &mut Bench<'_>,
    section: &'static str,
    system: &str,
    size: usize,
    wire: usize,
    run: &RelayRun,
) {
    let p = format!("participants={size}");
    let r = &mut b.report;
    r.add(section, system, &p, "deliveries_per_s", "1/s", run.rate());
    r.add(section, system, &p, "p50_ms", "ms", run.latency_ms(0.50));
    r.add(section, system, &p, "p99_ms", "ms", run.latency_ms(0.99));
    r.add(section, system, &p, "p999_ms", "ms", run.latency_ms(0.999));
    r.add(section, system, &p, "messages", "", run.messages as f64);
    r.add(
        section,
        system,
        &p,
        "wire_bytes_per_delivery",
        "B",
        wire as f64,
    );
    let cpu_us = run.server_cpu.as_secs_f64() * 1e6 / run.deliveries.max(1) as f64;
    r.add(
        section,
        system,
        &p,
        "server_cpu_us_per_delivery",
        "us",
        cpu_us,
    );
    let own_us = run.client_cpu.as_secs_f64() * 1e6 / run.deliveries.max(1) as f64;
    r.add(
        section,
        system,
        &p,
        "client_cpu_us_per_delivery",
        "us",
        own_us,
    );
    let line = format!(
        "{section} {size:>3} participants {system:<7} {:>9.0} deliveries/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ({} messages)",
        run.rate(),
        run.latency_ms(0.5),
        run.latency_ms(0.99),
        run.messages
    );
    b.say(line);
    if !run.errors.is_empty() {
        let what = format!("{section} {system} at {size} participants");
        b.trouble(&what, fail(run.errors.join("; ")));
    }
}

fn relay(b: &mut Bench<'_>) -> Result<(), BenchError> {
    let o = b.o;
    let prefix = o.account_prefix();
    let mut per_size: HashMap<usize, Vec<AccountSpec>> = HashMap::new();
    for &s in o
        .sizes
        .iter()
        .filter(|&&s| (2..=MPCHAT_MAX_PARTICIPANTS).contains(&s))
    {
        per_size.entry(s).or_insert_with(|| {
            (0..s)
                .map(|i| AccountSpec::new(&format!("{prefix}r{s}-{i}"), LOW_ITERATIONS))
                .collect()
        });
    }
    let all: Vec<AccountSpec> = per_size.values().flatten().cloned().collect();
    b.say(format!(
        "relay: starting mpchatd with {} accounts",
        all.len()
    ));
    let mp = b.mpchatd("relay", &all, &[])?;
    let ng = match &o.ngircd {
        Some(bin) => match start_ngircd(bin) {
            Ok(n) => Some(n),
            Err(e) => {
                b.trouble("relay: ngIRCd baseline", e);
                None
            }
        },
        None => None,
    };
    let plain = if o.plain {
        Some(start_plain_relay(&o.self_exe)?)
    } else {
        None
    };
    for &size in &o.sizes {
        if size < 2 {
            b.trouble(
                &format!("relay at {size} participants"),
                BenchError::Skip("a session needs 2 participants".into()),
            );
            continue;
        }
        let mut groups: Vec<(&'static str, u32, Group, bool)> = Vec::new();
        let made = match per_size.get(&size) {
            Some(accts) => mpchat_group(&mp, accts, &b.keys),
            None => Err(BenchError::Skip(format!(
                "mpchat sessions hold at most {MPCHAT_MAX_PARTICIPANTS} participants (end-to-end envelopes address at most {} recipients)",
                e2e::MAX_RECIPIENTS
            ))),
        };
        match made {
            Ok(g) => groups.push(("mpchat", mp.daemon.pid(), g, true)),
            Err(e) => b.trouble(&format!("relay mpchat at {size} participants"), e),
        }
        if let Some(ng) = &ng {
            match irc_group(ng, size, &format!("#g{size}")) {
                Ok(g) => groups.push(("ngircd", ng.daemon.pid(), g, true)),
                Err(e) => b.trouble(&format!("relay ngircd at {size} participants"), e),
            }
        }
        let envelope_len = groups
            .iter()
            .find(|g| g.0 == "mpchat")
            .map(|g| g.2.payload_len);
        if let Some((pd, _)) = &plain {
            match plain_group(pd.addr, size, size as u64, TEXT_LEN) {
                Ok(g) => groups.push(("plain", pd.pid(), g, true)),
                Err(e) => b.trouble(&format!("relay plain at {size} participants"), e),
            }
            if let Some(len) = envelope_len.filter(|_| o.plain_envelope) {
                match plain_group(pd.addr, size, 1_000_000 + size as u64, len) {
                    Ok(g) => groups.push(("plain-env", pd.pid(), g, true)),
                    Err(e) => b.trouble(&format!("relay plain-env at {size} participants"), e),
                }
            }
        }
        let receivers = (size - 1) as u64;
        for _ in 0..o.runs {
            for (section, pace, time, max) in [
                (
                    "relay-saturated",
                    Pace::Saturated {
                        window: SATURATED_WINDOW,
                    },
                    o.saturated_time,
                    (o.max_deliveries / receivers).max(1),
                ),
                (
                    "relay-light",
                    Pace::Light { rate: o.light_rate },
                    o.light_time + Duration::from_secs(1),
                    (u64::from(o.light_rate) * o.light_time.as_millis() as u64 / 1000).max(1),
                ),
            ] {
                for (name, pid, group, healthy) in groups.iter_mut() {
                    if !*healthy {
                        continue;
                    }
                    match run_relay(group, pace, time, max, *pid, b.tps) {
                        Ok(run) => {
                            *healthy = run.errors.is_empty();
                            let wire = group.wire_bytes;
                            record_relay(b, section, name, size, wire, &run);
                        }
                        Err(e) => {
                            *healthy = false;
                            b.trouble(&format!("{section} {name} at {size} participants"), e);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn login(b: &mut Bench<'_>) -> Result<(), BenchError> {
    let o = b.o;
    let prefix = o.account_prefix();
    let clients = o.login_clients.max(1);
    let accts: Vec<AccountSpec> = o
        .login_iterations
        .iter()
        .flat_map(|&it| {
            (0..clients).map(move |c| AccountSpec::new(&format!("{prefix}l{it}-{c}"), it))
        })
        .collect();
    b.say(format!(
        "login: starting mpchatd with {} accounts",
        accts.len()
    ));
    let mp = b.mpchatd("login", &accts, &[])?;
    let etk = b
        .server_key
        .public()
        .oaep_encrypt(&[7u8; crypto::KEY_LEN])
        .ctx(|| "encrypt".to_string())?;
    let rsa_ms = time_ms(o.samples * 2, || {
        b.server_key
            .oaep_decrypt(&etk)
            .ctx(|| "decrypt".to_string())
    })?;
    for &it in &o.login_iterations {
        let p = format!("iterations={it}");
        let samples = if it > 100_000 { 3 } else { o.samples };
        let kdf_ms = time_ms(samples, || {
            Ok(crypto::pbkdf2_sha256(
                b"bench password",
                b"bench salt 16 by",
                it,
            ))
        })?;
        // Longer for slow hashes, so a run holds more than a handful of logins.
        let scale = (f64::from(it) / 200_000.0).clamp(1.0, 3.0);
        let time = o.login_time.mul_f64(scale);
        let max = if it > 100_000 { 400 } else { 20_000 };
        let mine: Vec<AccountSpec> = accts
            .iter()
            .filter(|a| a.iterations == it)
            .cloned()
            .collect();
        b.report.add(
            "login",
            "reference",
            &p,
            "rsa_oaep_decrypt_ms",
            "ms",
            rsa_ms,
        );
        b.report
            .add("login", "reference", &p, "pbkdf2_ms", "ms", kdf_ms);
        for _ in 0..o.runs {
            let (count, elapsed, cpu) = mpchat_logins(&mp, &mine, time, max, b.tps)?;
            if count == 0 {
                return Err(fail(format!(
                    "no login finished within {time:?} at {it} iterations"
                )));
            }
            let cpu_ms = cpu.as_secs_f64() * 1e3 / count as f64;
            let rate = count as f64 / elapsed.as_secs_f64();
            b.report
                .add("login", "mpchat", &p, "handshakes_per_s", "1/s", rate);
            b.report.add(
                "login",
                "mpchat",
                &p,
                "server_cpu_ms_per_login",
                "ms",
                cpu_ms,
            );
            b.report.add(
                "login",
                "mpchat",
                &p,
                "cpu_over_reference",
                "",
                cpu_ms / (rsa_ms + kdf_ms),
            );
            b.say(format!(
                "login at {it} iterations: {rate:.1} handshakes/s, server CPU {cpu_ms:.2} ms/login (RSA-OAEP {rsa_ms:.2} ms + PBKDF2 {kdf_ms:.2} ms)"
            ));
        }
    }
    drop(mp);
    if let Some(bin) = &o.ngircd {
        let ng = start_ngircd(bin)?;
        for _ in 0..o.runs {
            let (count, elapsed, cpu) =
                irc_registrations(&ng, clients, o.login_time, 20_000, b.tps)?;
            if count == 0 {
                return Err(fail("no IRC registration finished"));
            }
            let cpu_ms = cpu.as_secs_f64() * 1e3 / count as f64;
            let rate = count as f64 / elapsed.as_secs_f64();
            b.report.add(
                "login",
                "ngircd",
                "registration",
                "handshakes_per_s",
                "1/s",
                rate,
            );
            b.report.add(
                "login",
                "ngircd",
                "registration",
                "server_cpu_ms_per_login",
                "ms",
                cpu_ms,
            );
            b.say(format!(
                "IRC registration: {rate:.1}/s, server CPU {cpu_ms:.3} ms each"
            ));
        }
    }
    Ok(())
}

fn record_memory(b: &mut Bench<'_>, system: &str, n: usize, fig: Result<MemoryFigure, BenchError>) {
    match fig {
        Ok(f) => {
            let p = format!("connections={n}");
            b.report.add(
                "memory",
                system,
                &p,
                "rss_base_kib",
                "KiB",
                f.base_kib as f64,
            );
            b.report
                .add("memory", system, &p, "rss_kib", "KiB", f.rss_kib as f64);
            b.report.add(
                "memory",
                system,
                &p,
                "kib_per_connection",
                "KiB",
                f.per_connection(n),
            );
            b.report
                .add("memory", system, &p, "threads", "", f.threads as f64);
            b.say(format!(
                "memory {system} with {n} idle connections: {} KiB RSS ({:.1} KiB each above {} KiB), {} threads",
                f.rss_kib,
                f.per_connection(n),
                f.base_kib,
                f.threads
            ));
        }
        Err(e) => b.trouble(&format!("memory {system} with {n} connections"), e),
    }
}

fn memory(b: &mut Bench<'_>) -> Result<(), BenchError> {
    let o = b.o;
    let prefix = o.account_prefix();
    for &n in &o.idle_connections {
        let accts: Vec<AccountSpec> = (0..n)
            .map(|i| AccountSpec::new(&format!("{prefix}i{i}"), LOW_ITERATIONS))
            .collect();
        b.say(format!("memory: starting mpchatd with {n} accounts"));
        // Idle connections are held without reading, so heartbeats are made rare (a
        // --target server keeps its own settings: the hold is shorter than a heartbeat).
        let max_connections = (n + 100).to_string();
        let flags = ["--heartbeat", "3600", "--max-connections", &max_connections];
        let fig = b
            .mpchatd(
                "memory",
                &accts,
                if o.target.is_some() { &[] } else { &flags },
            )
            .and_then(|mut mp| {
                let (addr, key) = (mp.daemon.addr, mp.key.clone());
                hold_idle(&mut mp.daemon, n, 2, o.settle, |i| {
                    MpConn::login(addr, &key, &accts[i])
                })
            });
        record_memory(b, "mpchat", n, fig);
        if let Some(bin) = &o.ngircd {
            let fig = start_ngircd(bin).and_then(|mut ng| {
                let addr = ng.daemon.addr;
                let nicks = &ng.next_nick;
                hold_idle(&mut ng.daemon, n, 0, o.settle, |_| {
                    let nick = format!("b{}", base36(nicks.fetch_add(1, Ordering::Relaxed)));
                    IrcConn::register(addr, &nick)
                })
            });
            record_memory(b, "ngircd", n, fig);
        }
        if o.plain {
            let fig = start_plain_relay(&o.self_exe).and_then(|(mut pd, _dir)| {
                let addr = pd.addr;
                hold_idle(&mut pd, n, 2, o.settle, |i| PlainConn::join(addr, i as u64))
            });
            record_memory(b, "plain", n, fig);
        }
    }
    Ok(())
}

/// How many unacknowledged messages each durability sender may have: one (the
/// batching comes only from concurrent senders) and a pipelining client's window.
const DURABILITY_WINDOWS: [u64; 2] = [1, 32];

/// The JSON `param` of a durability figure (window 1 keeps its original name).
fn durability_param(senders: usize, window: u64) -> String {
    if window == 1 {
        format!("senders={senders}")
    } else {
        format!("senders={senders} window={window}")
    }
}

fn durability(b: &mut Bench<'_>) -> Result<(), BenchError> {
    let o = b.o;
    if o.target.is_some() {
        return Err(BenchError::Skip(
            "it compares group commit with --max-group 1 on servers the bench starts; not with --target".into(),
        ));
    }
    let senders = o.durability_senders.max(1);
    let accts: Vec<AccountSpec> = (0..senders)
        .flat_map(|i| {
            [
                AccountSpec::new(&format!("d{i}"), LOW_ITERATIONS),
                AccountSpec::new(&format!("e{i}"), LOW_ITERATIONS),
            ]
        })
        .collect();
    for (mode, extra) in [
        ("group-commit", &[][..]),
        ("fsync-per-request", &["--max-group", "1"][..]),
    ] {
        b.say(format!("durability ({mode}): starting mpchatd"));
        let mp = b.mpchatd("durability", &accts, extra)?;
        let mut groups = Vec::with_capacity(senders);
        for pair in accts.chunks(2) {
            groups.push(mpchat_group(&mp, pair, &b.keys)?);
        }
        let pid = mp.daemon.pid();
        for (window, _) in (0..o.runs).flat_map(|r| DURABILITY_WINDOWS.iter().map(move |&w| (w, r)))
        {
            let tps = b.tps;
            let runs: Vec<Result<RelayRun, BenchError>> = thread::scope(|s| {
                let hs: Vec<_> = groups
                    .iter_mut()
                    .map(|g| {
                        s.spawn(move || {
                            run_relay(
                                g,
                                Pace::Acked { window },
                                o.durability_time,
                                50_000,
                                pid,
                                tps,
                            )
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(fail("a sender thread panicked")))
                    })
                    .collect()
            });
            let (mut acked, mut elapsed, mut lat, mut errors) =
                (0u64, Duration::ZERO, Vec::new(), Vec::new());
            for r in runs {
                let r = r?;
                acked += r.acked;
                elapsed = elapsed.max(r.ack_elapsed);
                lat.extend(r.ack_latencies);
                errors.extend(r.errors);
            }
            lat.sort_unstable();
            let rate = acked as f64 / elapsed.as_secs_f64().max(1e-9);
            let ms = |p| percentile(&lat, p).map_or(f64::NAN, |ns| ns as f64 / 1e6);
            let p = durability_param(senders, window);
            b.report
                .add("durability", mode, &p, "acked_per_s", "1/s", rate);
            b.report
                .add("durability", mode, &p, "ack_p50_ms", "ms", ms(0.5));
            b.report
                .add("durability", mode, &p, "ack_p99_ms", "ms", ms(0.99));
            b.say(format!("durability ({mode}, {senders} senders, window {window}): {rate:.0} acknowledged messages/s, p50 {:.2} ms", ms(0.5)));
            if !errors.is_empty() {
                b.trouble(&format!("durability {mode}"), fail(errors.join("; ")));
            }
        }
    }
    let dir = TempDir::new("fsync")?;
    for _ in 0..o.runs {
        let rate = fsync_rate(dir.path(), o.durability_time.min(Duration::from_secs(2)))?;
        b.report.add(
            "durability",
            "disk",
            "append+fdatasync",
            "fsyncs_per_s",
            "1/s",
            rate,
        );
        b.say(format!("disk: {rate:.0} fsyncs/s of a 128-byte append"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The printed table.

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "-".to_string(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The figures as text tables (medians), with the ratios the issue asks for.
pub fn render(report: &Report, o: &Options) -> String {
    let mut t = String::new();
    let about = |k: &str| {
        report
            .about
            .iter()
            .find(|(n, _)| n == k)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    t.push_str(&format!(
        "mpchat-bench {} ({} mode, median of {} run(s))\nmachine: {}, {} cores, {} MiB, Linux {}; load at start {}; {}% CPU busy before start\nbaseline: {}\n",
        about("mpchat-bench"),
        about("mode"),
        about("runs"),
        about("cpu"),
        about("cores"),
        about("memory MiB"),
        about("kernel"),
        about("load average at start"),
        about("cpu busy before start %"),
        about("ngircd"),
    ));
    t.push_str(
        "systems: mpchat = mpchatd, every hop encrypted, every message stored durably before its OK;\n\
         \x20        ngircd = ngIRCd, one channel; plain = the built-in plaintext relay (mpchatd's thread\n\
         \x20        shape, no cryptography, no storage); plain-env = the same carrying messages as long as\n\
         \x20        mpchat's end-to-end envelopes at that session size\n",
    );
    for (section, title) in [
        ("relay-saturated", format!("Relay, saturated: closed loop, sender at most {SATURATED_WINDOW} messages ahead of the slowest receiver")),
        ("relay-light", format!("Relay, light load: {} messages/s", o.light_rate)),
    ] {
        if !report.records.iter().any(|r| r.section == section) {
            continue;
        }
        t.push_str(&format!(
            "\n{title}; {TEXT_LEN}-byte texts; latency from send to the receiver holding the message\n\
             {:>5} {:<9} {:>12} {:>8} {:>8} {:>8} {:>10} {:>14} {:>14}\n",
            "part", "system", "deliveries/s", "p50 ms", "p99 ms", "p99.9 ms", "wire B/dlv", "srv CPU us/dlv", "cli CPU us/dlv"
        ));
        for &size in &o.sizes {
            let p = format!("participants={size}");
            let g = |sys: &str, m: &str| report.get(section, sys, &p, m);
            for sys in SYSTEMS {
                if g(sys, "deliveries_per_s").is_none() {
                    continue;
                }
                t.push_str(&format!(
                    "{:>5} {:<9} {:>12} {:>8} {:>8} {:>8} {:>10} {:>14} {:>14}\n",
                    size,
                    sys,
                    num(g(sys, "deliveries_per_s"), 0),
                    num(g(sys, "p50_ms"), 2),
                    num(g(sys, "p99_ms"), 2),
                    num(g(sys, "p999_ms"), 2),
                    num(g(sys, "wire_bytes_per_delivery"), 0),
                    num(g(sys, "server_cpu_us_per_delivery"), 2),
                    num(g(sys, "client_cpu_us_per_delivery"), 2),
                ));
            }
            let (metric, what) = if section == "relay-saturated" {
                ("deliveries_per_s", "deliveries/s")
            } else {
                ("p99_ms", "p99")
            };
            let mp = g("mpchat", metric);
            let ratios: Vec<String> = SYSTEMS[1..]
                .iter()
                .filter_map(|sys| ratio(mp, g(sys, metric)).map(|r| format!("mpchat/{sys} {r:.2}")))
                .collect();
            if !ratios.is_empty() {
                t.push_str(&format!("{:>5} ratios of {what}: {}\n", "", ratios.join(", ")));
            }
        }
    }
    let e = |m: &str| report.get("envelope", "mpchat", "recipients=10", m);
    if e("build_ms").is_some() {
        t.push_str(&format!(
            "\nEnd-to-end envelope at 10 recipients (RSA-{} keys, client side, not in the relay figures): build {} ms, open {} ms, {} bytes\n",
            o.key_bits,
            num(e("build_ms"), 2),
            num(e("open_ms"), 2),
            num(e("envelope_bytes"), 0)
        ));
    }
    if report.records.iter().any(|r| r.section == "login") {
        t.push_str(&format!(
            "\nLogin, {} concurrent clients, each connection closed after login\n{:>10} {:<7} {:>12} {:>15} {:>17} {:>10}\n",
            o.login_clients, "iterations", "system", "handshakes/s", "srv CPU ms/login", "OAEP+PBKDF2 ms", "CPU/that"
        ));
        for &it in &o.login_iterations {
            let p = format!("iterations={it}");
            let reference = match (
                report.get("login", "reference", &p, "rsa_oaep_decrypt_ms"),
                report.get("login", "reference", &p, "pbkdf2_ms"),
            ) {
                (Some(a), Some(k)) => Some(a + k),
                _ => None,
            };
            t.push_str(&format!(
                "{:>10} {:<7} {:>12} {:>15} {:>17} {:>10}\n",
                it,
                "mpchat",
                num(report.get("login", "mpchat", &p, "handshakes_per_s"), 1),
                num(
                    report.get("login", "mpchat", &p, "server_cpu_ms_per_login"),
                    2
                ),
                num(reference, 2),
                num(report.get("login", "mpchat", &p, "cpu_over_reference"), 2),
            ));
        }
        if let Some(rate) = report.get("login", "ngircd", "registration", "handshakes_per_s") {
            t.push_str(&format!(
                "{:>10} {:<7} {:>12} {:>15} {:>17} {:>10}\n",
                "none",
                "ngircd",
                num(Some(rate), 1),
                num(
                    report.get("login", "ngircd", "registration", "server_cpu_ms_per_login"),
                    3
                ),
                "-",
                "-"
            ));
        }
    }
    if report.records.iter().any(|r| r.section == "memory") {
        t.push_str(&format!(
            "\nMemory: server RSS with idle logged-in connections\n{:>11} {:<7} {:>13} {:>10} {:>9} {:>8}\n",
            "connections", "system", "base RSS KiB", "RSS KiB", "KiB/conn", "threads"
        ));
        for &n in &o.idle_connections {
            let p = format!("connections={n}");
            for sys in SYSTEMS {
                let g = |m: &str| report.get("memory", sys, &p, m);
                if g("rss_kib").is_none() {
                    continue;
                }
                t.push_str(&format!(
                    "{:>11} {:<7} {:>13} {:>10} {:>9} {:>8}\n",
                    n,
                    sys,
                    num(g("rss_base_kib"), 0),
                    num(g("rss_kib"), 0),
                    num(g("kib_per_connection"), 1),
                    num(g("threads"), 0)
                ));
            }
        }
    }
    if report.records.iter().any(|r| r.section == "durability") {
        let senders = o.durability_senders.max(1);
        t.push_str(&format!(
            "\nDurability: mpchat, {senders} concurrent senders, each in a two-person session whose other participant acknowledges;\n\
             window = messages a sender may have sent and not yet seen msg_res OK for\n\
             {:<18} {:>6} {:>12} {:>11} {:>11}\n",
            "mode", "window", "acked msg/s", "ack p50 ms", "ack p99 ms"
        ));
        for window in DURABILITY_WINDOWS {
            let p = durability_param(senders, window);
            for mode in ["group-commit", "fsync-per-request"] {
                let g = |m: &str| report.get("durability", mode, &p, m);
                t.push_str(&format!(
                    "{:<18} {:>6} {:>12} {:>11} {:>11}\n",
                    mode,
                    window,
                    num(g("acked_per_s"), 0),
                    num(g("ack_p50_ms"), 2),
                    num(g("ack_p99_ms"), 2)
                ));
            }
            let gc = ratio(
                report.get("durability", "group-commit", &p, "acked_per_s"),
                report.get("durability", "fsync-per-request", &p, "acked_per_s"),
            );
            t.push_str(&format!(
                "  window {window}: group commit / one fsync per message: {}x\n",
                num(gc, 1)
            ));
        }
        t.push_str(&format!(
            "this disk: {} fsyncs/s of a 128-byte append\n",
            num(
                report.get("durability", "disk", "append+fdatasync", "fsyncs_per_s"),
                0
            )
        ));
    }
    if !report.skipped.is_empty() {
        t.push_str("\nSkipped:\n");
        for s in &report.skipped {
            t.push_str(&format!("  {s}\n"));
        }
    }
    if !report.failures.is_empty() {
        t.push_str("\nFAILURES:\n");
        for s in &report.failures {
            t.push_str(&format!("  {s}\n"));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{AeadKey, Direction};

    #[test]
    fn percentile_uses_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.999), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0, 1.0, 9.0]), Some(5.0));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        assert_eq!(parse_stat_cpu("4242 (x) S 1 2"), None);
    }

    #[test]
    fn status_fields_and_open_file_limits_are_parsed() {
        let status = "Name:\tmpchatd\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(12345));
        assert_eq!(parse_status_field(status, "Threads"), Some(7));
        assert_eq!(parse_status_field(status, "VmHWM"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 unlimited            files\n";
        assert_eq!(parse_nofile_limits(limits), Some((1024, u64::MAX)));
    }

    #[test]
    fn framer_reassembles_mtp_frames_split_across_reads() {
        let mut s = mtp::Sender::new(AeadKey::new([3; 32]), Direction::ServerToClient, 2);
        let mut r = mtp::Receiver::new(AeadKey::new([3; 32]), Direction::ServerToClient, 1);
        let mut wire = Vec::new();
        for i in 0..5u8 {
            wire.extend(
                s.seal(MsgType::MsgReq, 9, 4, &vec![i; 100 + usize::from(i)])
                    .unwrap(),
            );
        }
        let mut f = Framer::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(37) {
            f.push(chunk);
            while let Some(range) = f.next_mtp().unwrap() {
                let (h, p) = r.open(f.get(range)).unwrap();
                assert_eq!(h.sid, 9);
                got.push(p);
            }
        }
        assert!(f.is_empty());
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], vec![4u8; 104]);
    }

    #[test]
    fn framer_rejects_a_bad_mtp_header() {
        let mut f = Framer::new();
        f.push(&[9u8; mtp::HEADER_LEN]);
        assert!(f.next_mtp().is_err());
    }

    #[test]
    fn framer_splits_lines_and_refuses_endless_ones() {
        let mut f = Framer::new();
        f.push(b":a 001 b :hi\r\nPING :x\npartial");
        let l1 = f.next_line().unwrap().unwrap();
        assert_eq!(f.get(l1), b":a 001 b :hi");
        let l2 = f.next_line().unwrap().unwrap();
        assert_eq!(f.get(l2), b"PING :x");
        assert_eq!(f.next_line().unwrap(), None);
        f.push(&[b'x'; MAX_IRC_LINE + 1]);
        assert!(f.next_line().is_err());
    }

    #[test]
    fn framer_splits_plain_frames_and_refuses_oversized_ones() {
        let mut f = Framer::new();
        let frame = plain_frame(PLAIN_DELIVERY, 77, &[&5u64.to_be_bytes(), b"hello"]);
        f.push(&frame[..6]);
        assert_eq!(f.next_plain().unwrap(), None);
        f.push(&frame[6..]);
        let (typ, g, r) = f.next_plain().unwrap().unwrap();
        assert_eq!((typ, g), (PLAIN_DELIVERY, 77));
        assert_eq!(&f.get(r)[8..], b"hello");
        f.push(&((PLAIN_MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(f.next_plain().is_err());
    }

    #[test]
    fn message_texts_are_100_bytes_and_carry_their_number() {
        let t = text_of(1234);
        assert_eq!(t.len(), TEXT_LEN);
        assert!(t.starts_with(b"0000001234 "));
        assert_ne!(text_of(1), text_of(2));
        assert!(std::str::from_utf8(&t).is_ok());
    }

    #[test]
    fn irc_lines_are_recognised() {
        assert_eq!(irc_numeric(":srv 001 nick :Welcome"), Some("001"));
        assert_eq!(irc_numeric(":srv 366 nick #c :End"), Some("366"));
        assert_eq!(irc_numeric(":n!u@h PRIVMSG #c :001"), None);
        assert_eq!(irc_numeric("PING :srv"), None);
        let line = b":b1!~b1@127.0.0.1 PRIVMSG #g2 :0000000001 text";
        assert_eq!(irc_privmsg_text(line, "#g2"), Some(&b"0000000001 text"[..]));
        assert_eq!(irc_privmsg_text(line, "#g20"), None);
    }

    #[test]
    fn status_payload_acceptances_are_counted() {
        let p = b"OK\nlive alice\nalice 00000000000000aa accepted online 0 KEY\nbob 00000000000000bb invited online 0\ncarol 00000000000000cc accepted offline 3 KEY\n";
        assert_eq!(accepted_in_status(p), 2);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn a_report_keeps_one_value_per_run_and_medians_them() {
        let mut r = Report::default();
        for v in [3.0, 1.0, 2.0] {
            r.add(
                "relay-saturated",
                "mpchat",
                "participants=2",
                "deliveries_per_s",
                "1/s",
                v,
            );
        }
        assert_eq!(r.records.len(), 1);
        assert_eq!(
            r.get(
                "relay-saturated",
                "mpchat",
                "participants=2",
                "deliveries_per_s"
            ),
            Some(2.0)
        );
        assert_eq!(
            r.get(
                "relay-saturated",
                "ngircd",
                "participants=2",
                "deliveries_per_s"
            ),
            None
        );
        let json = r.to_json();
        assert!(
            json.contains("\"median\": 2, \"runs\": [3, 1, 2]"),
            "{json}"
        );
    }

    fn plain_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || serve_plain_relay(l));
        addr
    }

    #[test]
    fn the_plain_relay_delivers_every_message_once_in_order_to_every_other_member() {
        let addr = plain_server();
        let mut g = plain_group(addr, 4, 1, TEXT_LEN).unwrap();
        let pid = std::process::id();
        let run = run_relay(
            &mut g,
            Pace::Saturated { window: 8 },
            Duration::from_secs(5),
            300,
            pid,
            100,
        )
        .unwrap();
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(run.messages, 300);
        assert_eq!(run.deliveries, 3 * 300);
        assert_eq!(run.latencies.len(), 900);
        assert_eq!(run.acked, 300);
        // A second run continues the numbering on the same group.
        let run = run_relay(
            &mut g,
            Pace::Light { rate: 1000 },
            Duration::from_secs(5),
            20,
            pid,
            100,
        )
        .unwrap();
        assert!(run.errors.is_empty(), "{:?}", run.errors);
        assert_eq!(run.deliveries, 3 * 20);
    }

    #[test]
    fn the_plain_relay_keeps_groups_apart() {
        let addr = plain_server();
        let mut a = plain_group(addr, 2, 10, TEXT_LEN).unwrap();
        let mut b = plain_group(addr, 3, 11, 5000).unwrap();
        let pid = std::process::id();
        let ra = run_relay(
            &mut a,
            Pace::Saturated { window: 4 },
            Duration::from_secs(5),
            50,
            pid,
            100,
        )
        .unwrap();
        let rb = run_relay(
            &mut b,
            Pace::Acked { window: 1 },
            Duration::from_secs(5),
            50,
            pid,
            100,
        )
        .unwrap();
        assert!(
            ra.errors.is_empty() && rb.errors.is_empty(),
            "{:?} {:?}",
            ra.errors,
            rb.errors
        );
        assert_eq!((ra.deliveries, rb.deliveries), (50, 100));
    }

    /// A receiver that reports a fixed sequence, to check the runner's own checks.
    struct Scripted(Vec<(u64, bool)>);

    impl RecvSide for Scripted {
        fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
            for (n, ok) in self.0.drain(..) {
                on(n, ok);
            }
            thread::sleep(Duration::from_millis(5));
            Ok(Polled::Idle)
        }
    }

    struct Nowhere;

    impl SendSide for Nowhere {
        fn send(&mut self, _: u64) -> Result<(), BenchError> {
            Ok(())
        }
    }

    #[test]
    fn the_runner_reports_lost_duplicated_and_altered_messages() {
        let mut g = Group {
            participants: 2,
            wire_bytes: 0,
            payload_len: TEXT_LEN,
            sender: Box::new(Nowhere),
            acks: None,
            receivers: vec![Box::new(Scripted(vec![
                (1, true),
                (1, true),
                (3, false),
                (4, true),
            ]))],
            next: 1,
        };
        let run = run_relay(
            &mut g,
            Pace::Light { rate: 1000 },
            Duration::from_secs(2),
            4,
            std::process::id(),
            100,
        )
        .unwrap();
        let all = run.errors.join("\n");
        assert!(all.contains("message 1 arrived again"), "{all}");
        assert!(all.contains("message 3 arrived early"), "{all}");
        assert!(
            all.contains("message 3 arrived with the wrong bytes"),
            "{all}"
        );
    }
}
