//! The plaintext relay: the floor for this design, and a system under test like the
//! others.
//!
//! Frames: `len` (u32, big-endian; the bytes after it), `type` (u8), `group` (u64),
//! body. A client JOINs a group (answered JOINED); a MSG is numbered `n` per group,
//! answered `OK` (body: `n`) and delivered to every other member as DELIVERY (body:
//! `n` then the text). Thread per connection plus a writer thread draining a bounded
//! mpsc channel, a mutex-guarded map of groups: mpchatd's shape without cryptography,
//! login or storage. The bench runs it as its own child process
//! (`mpchat-bench --serve-plain-relay`), so its CPU and memory are measured apart.
//!
//! It sends everything in clear: it must never listen anywhere but loopback (the
//! command line refuses other addresses), and never read a frame longer than
//! [`PLAIN_MAX_FRAME`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver as ChanReceiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{fail, lock, BenchError, Ctx};
use crate::net::{connect, fill_once, Framer, SETUP_TIMEOUT};
use crate::process::{spawn_listening, Daemon, TempDir};
use crate::relay::{text_of, AckSide, Group, Polled, RecvSide, SendSide, FILLER, TEXT_LEN};
use crate::workload::System;

/// Largest plaintext relay frame after its 4-byte length: a type, a group id and
/// 65,527 bytes of body, the same order of size as an MTP frame.
pub const PLAIN_MAX_FRAME: usize = 65_536;
/// Smallest plaintext relay frame after its length: the type and the group id.
pub const PLAIN_MIN_FRAME: usize = 1 + 8;
/// Frames queued for one plaintext relay connection's writer (as `mpchatd`'s default
/// `--queue-len`); a fan-out that finds the queue full closes that connection.
pub const PLAIN_QUEUE_LEN: usize = 1024;
/// Bytes the plaintext relay's writer gathers before one write, as `mpchatd`'s.
const PLAIN_WRITE_BUFFER: usize = 64 * 1024;
/// Stack of the plaintext relay's threads: they only copy bytes.
const PLAIN_STACK: usize = 64 * 1024;

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

/// A running plaintext relay: the child process and the directory of its log.
pub struct PlainRelay {
    /// The process.
    pub daemon: Daemon,
    _dir: TempDir,
}

/// Starts the plaintext relay as a child process: `exe --serve-plain-relay
/// 127.0.0.1:0` (the bench binary itself).
pub fn start_plain_relay(exe: &Path) -> Result<PlainRelay, BenchError> {
    let dir = TempDir::new("plain")?;
    let mut cmd = Command::new(exe);
    cmd.args(["--serve-plain-relay", "127.0.0.1:0"]);
    let daemon = spawn_listening("plaintext relay", cmd, &dir.path().join("plain.log"), true)?;
    Ok(PlainRelay { daemon, _dir: dir })
}

/// The plaintext relay as one workload sees it: messages of `len` bytes, in groups
/// numbered from `first_group` (client `i` of the memory figure joins group
/// `first_group + i`, a relay group of `size` is group `first_group + size`).
pub struct Plain<'a> {
    relay: &'a PlainRelay,
    name: &'static str,
    len: usize,
    first_group: u64,
}

impl<'a> Plain<'a> {
    /// `plain`: 100-byte texts, what IRC carries.
    pub fn texts(relay: &'a PlainRelay) -> Plain<'a> {
        Plain {
            relay,
            name: "plain",
            len: TEXT_LEN,
            first_group: 0,
        }
    }

    /// `plain-env`: messages of `len` bytes, as long as mpchat's envelopes at the same
    /// session size, in groups apart from the texts'.
    pub fn envelope_sized(relay: &'a PlainRelay, len: usize) -> Plain<'a> {
        Plain {
            relay,
            name: "plain-env",
            len,
            first_group: 1_000_000,
        }
    }
}

impl System for Plain<'_> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn daemon(&self) -> &Daemon {
        &self.relay.daemon
    }

    /// A reader and a writer, as mpchatd.
    fn threads_per_connection(&self) -> u64 {
        2
    }

    fn connect(&self, i: usize) -> Result<Box<dyn Send>, BenchError> {
        let group = self.first_group + i as u64;
        Ok(Box::new(PlainConn::join(self.relay.daemon.addr, group)?))
    }

    fn group(&self, size: usize) -> Result<Group, BenchError> {
        let group = self.first_group + size as u64;
        plain_group(self.relay.daemon.addr, size, group, self.len)
    }
}

impl Framer {
    /// The next complete plaintext relay frame, if buffered: `(type, group, body)`.
    pub fn next_plain(&mut self) -> Result<Option<(u8, u64, Range<usize>)>, BenchError> {
        let p = self.pending();
        let Some(head) = p.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if !(PLAIN_MIN_FRAME..=PLAIN_MAX_FRAME).contains(&len) {
            return Err(fail(format!("plaintext relay frame of {len} bytes")));
        }
        if p.len() < 4 + len {
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
fn plain_group(addr: SocketAddr, size: usize, group: u64, len: usize) -> Result<Group, BenchError> {
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
    let acks = PlainAcks {
        conn: PlainConn {
            stream: read_half,
            framer: sender.framer,
        },
        group,
    };
    let sender = PlainSend {
        stream: sender.stream,
        group,
        pad,
    };
    Ok(Group::new(
        4 + PLAIN_MIN_FRAME + 8 + len,
        len,
        Box::new(sender),
        Some(Box::new(acks)),
        receivers,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{run_relay, Pace};

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
}
