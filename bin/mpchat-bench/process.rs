//! The servers under test as processes: a temporary directory for each, a guard that
//! kills a child when the measurement ends however it ends, and the start-up
//! handshake (`listening on ADDR` on the child's standard output).
//!
//! This module must never leave a process running or a directory behind: both are
//! owned by guards whose `Drop` ends them.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mpchat::fsutil;

use crate::error::{fail, lock, BenchError, Ctx};
use crate::proc;

/// Time for a server to say where it listens (mpchatd may make a key on first start).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Nanoseconds since the Unix epoch (0 if the clock is before it): the timestamp of a
/// login request, and what makes temporary names unique across runs.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

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
    /// Behind a lock so that [`Daemon::check_alive`] works through a shared reference
    /// (the workloads hold servers as `&dyn System`).
    child: Option<Mutex<Child>>,
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    log: PathBuf,
    /// The write end of its standard input, for a child that exits when it closes.
    _stdin: Option<ChildStdin>,
}

impl Daemon {
    /// A server the bench started: `child`, listening on `addr`, logging to `log`;
    /// `stdin` is kept open for a child that exits when it closes.
    pub fn spawned(
        name: &'static str,
        child: Child,
        addr: SocketAddr,
        log: PathBuf,
        stdin: Option<ChildStdin>,
    ) -> Daemon {
        Daemon {
            name,
            pid: child.id(),
            child: Some(Mutex::new(child)),
            addr,
            log,
            _stdin: stdin,
        }
    }

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
    pub fn check_alive(&self) -> Result<(), BenchError> {
        let Some(child) = self.child.as_ref() else {
            return if Path::new(&format!("/proc/{}", self.pid)).exists() {
                Ok(())
            } else {
                Err(fail(format!(
                    "{} (process {}) has exited",
                    self.name, self.pid
                )))
            };
        };
        let waited = lock(child).try_wait();
        match waited {
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
        proc::cpu_ticks(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let child = child.get_mut().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `cmd` with stderr to `log`, and waits for a `listening on ADDR` line on its
/// stdout (mpchatd and the plaintext relay both print one).
pub fn spawn_listening(
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
    let unknown = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut daemon = Daemon::spawned(name, child, unknown, log.to_path_buf(), stdin);
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
