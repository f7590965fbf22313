//! ngIRCd as a system under test: its configuration for a fair baseline, the daemon
//! started in the foreground in a temporary directory, and a minimal IRC client
//! (`NICK`, `USER`, `JOIN`, `PRIVMSG`, `PONG`). A session is a channel.
//!
//! This module must never read a line longer than [`MAX_IRC_LINE`] into memory, nor
//! let ngIRCd listen anywhere but loopback.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{fail, BenchError, Ctx};
use crate::net::{connect, fill_once, Framer, SETUP_TIMEOUT};
use crate::process::{Daemon, TempDir, START_TIMEOUT};
use crate::relay::{text_of, Group, Polled, RecvSide, SendSide, TEXT_LEN};
use crate::workload::System;

/// Longest IRC line accepted from the IRC server before a CRLF. RFC 2812 allows 512
/// bytes; the margin allows for servers that exceed it, and bounds the buffer.
pub const MAX_IRC_LINE: usize = 4096;

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
    let daemon = Daemon::spawned("ngircd", child, addr, log, None);
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

impl System for Ngircd {
    fn name(&self) -> &'static str {
        "ngircd"
    }

    fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// None: ngIRCd serves every connection from one thread.
    fn threads_per_connection(&self) -> u64 {
        0
    }

    /// A client registered under a fresh nickname (`i` is not needed).
    fn connect(&self, _: usize) -> Result<Box<dyn Send>, BenchError> {
        Ok(Box::new(IrcConn::register(self.daemon.addr, &self.nick())?))
    }

    /// A registration, then `QUIT`.
    fn handshake(&self, _: usize) -> Result<(), BenchError> {
        let mut c = IrcConn::register(self.daemon.addr, &self.nick())?;
        let _ = c.stream.write_all(b"QUIT\r\n");
        Ok(())
    }

    /// Channel `#gSIZE`.
    fn group(&self, size: usize) -> Result<Group, BenchError> {
        irc_group(self, size, &format!("#g{size}"))
    }
}

impl Framer {
    /// The next complete line without its `\r\n` (or `\n`), if buffered. A line
    /// longer than [`MAX_IRC_LINE`] is an error.
    pub fn next_line(&mut self) -> Result<Option<Range<usize>>, BenchError> {
        let pending = self.pending();
        match pending.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let cr = i > 0 && pending[i - 1] == b'\r';
                let r = self.take(i + 1);
                Ok(Some(r.start..r.end - 1 - usize::from(cr)))
            }
            None if pending.len() > MAX_IRC_LINE => {
                Err(fail(format!("a line longer than {MAX_IRC_LINE} bytes")))
            }
            None => Ok(None),
        }
    }
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

/// Sets up channel `chan` with `size` members on ngIRCd; returns once each has joined.
fn irc_group(ng: &Ngircd, size: usize, chan: &str) -> Result<Group, BenchError> {
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
    let sender = IrcSend {
        stream: sender.stream,
        chan: chan.to_string(),
    };
    Ok(Group::new(
        wire_bytes,
        TEXT_LEN,
        Box::new(sender),
        None,
        receivers,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn irc_lines_are_recognised() {
        assert_eq!(irc_numeric(":srv 001 nick :Welcome"), Some("001"));
        assert_eq!(irc_numeric(":srv 366 nick #c :End"), Some("366"));
        assert_eq!(irc_numeric(":n!u@h PRIVMSG #c :001"), None);
        assert_eq!(irc_numeric("PING :srv"), None);
        let line = b":b1!~b1@127.0.0.1 PRIVMSG #g2 :0000000001 text";
        assert_eq!(irc_privmsg_text(line, "#g2"), Some(&b"0000000001 text"[..]));
        assert_eq!(irc_privmsg_text(line, "#g20"), None);
    }
}
