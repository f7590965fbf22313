//! `mpchat-bench`: relay, login, memory and durability figures for `mpchatd`, with
//! ngIRCd and a minimal plaintext relay measured in the same invocation as baselines.
//!
//! Why it exists: whoever chooses between mpchat and an IRC server for a small VPS
//! needs numbers measured the same way on the same machine, and the project needs a
//! floor (the plaintext relay: the same thread-per-connection, `mpsc` fan-out design
//! with no cryptography and no storage) to see what its encryption and durability cost.
//!
//! Every server under test is a separate process on loopback, started with a
//! temporary directory and killed when its guard drops; clients talk to it only over
//! its real protocol (for mpchat: the library's public `login`, `mtp` and `e2e`
//! modules; the relay's envelopes are built before timing). Clients connect one at a
//! time, every wait has a deadline and every load loop is bounded in messages and in
//! time. Server CPU and memory are read from `/proc`.
//!
//! The end-to-end layer's own costs are paid by clients, not by the relay: the bench
//! measures them apart, with the client's code, in its own process (envelope sizes,
//! one-time key distribution, CPU per message sent and read) and over a server
//! (reading a backlog after reconnecting).
//!
//! The benchmark is a binary with its own modules, outside the library, and uses only
//! the library's public API:
//! - `main.rs` (this file): argument parsing, the printed table, exit codes;
//! - [`mod@run`]: the sections and their options; [`report`]: the results, JSON, tables;
//! - [`workload`]: the workloads written once over the [`workload::System`] trait,
//!   which [`mpchatd`], [`ngircd`] and [`plain`] (the plaintext relay) implement;
//!   [`relay`]: the timed relay runs;
//! - [`client`]: a v2 client's end-to-end work (the only module naming the library's
//!   v2 types); [`costs`]: its figures in the bench's process; [`backlog`]: reading
//!   a backlog over a real server;
//! - [`net`]: client sockets and framing; [`process`]: the servers as child
//!   processes; [`proc`]: `/proc`; [`stats`]: medians and percentiles (shared with
//!   tests/perf.rs); [`error`].
//!
//! The benchmark must never assert a timing (figures are reported, not judged), never
//! print a password, key or message text, and never listen anywhere but loopback.

mod backlog;
mod client;
mod costs;
mod error;
mod mpchatd;
mod net;
mod ngircd;
mod plain;
mod proc;
mod process;
mod relay;
mod report;
mod run;
mod stats;
mod workload;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mpchat::cli::{self, Arg, UsageError, EXIT_FAILURE, EXIT_USAGE};

use crate::run::Options;

const USAGE: &str = "\
usage: mpchat-bench [--quick] [--runs N] [--json FILE] [--mpchatd PATH]
                    [--ngircd PATH | --no-ngircd] [--no-plain] [--no-plain-env]
                    [--only LIST]
                    [--sizes LIST] [--big] [--idle LIST] [--many]
                    [--login-iterations LIST] [--senders N] [--backlog N]
                    [--time-scale F] [--wait-idle SECS] [--mpchatd-flags FLAGS]
                    [--target ADDR:PORT --target-state-dir DIR]
       mpchat-bench --serve-plain-relay ADDR:PORT
       mpchat-bench --help | --version

Measures mpchatd (relay, login, memory, durability) on loopback and, in the same run,
ngIRCd and a built-in plaintext relay on the same workloads; prints medians and the
ratios, and writes raw results with --json. --quick is the short run of `make bench`.
LIST is comma-separated; --only takes relay,envelope,backlog,login,memory,durability.
--big adds 200-participant sessions, --many 10,000 idle connections.
--target measures an mpchatd already running on loopback instead of starting one.
See mpchat-bench(1).";

const WITH_VALUE: &[&str] = &[
    "--runs",
    "--json",
    "--mpchatd",
    "--ngircd",
    "--only",
    "--sizes",
    "--idle",
    "--login-iterations",
    "--time-scale",
    "--senders",
    "--backlog",
    "--wait-idle",
    "--mpchatd-flags",
    "--serve-plain-relay",
    "--target",
    "--target-state-dir",
];
const FLAGS: &[&str] = &[
    "--quick",
    "--no-ngircd",
    "--no-plain",
    "--no-plain-env",
    "--big",
    "--many",
    "--help",
    "--version",
];

/// Where Debian's ngircd package puts the daemon.
const DEFAULT_NGIRCD: &str = "/usr/sbin/ngircd";

enum Failure {
    Usage(String),
    Runtime(String),
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure::Usage(e.0)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("mpchat-bench: {msg}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn list<T: std::str::FromStr>(name: &str, v: &str) -> Result<Vec<T>, UsageError> {
    v.split(',')
        .map(|x| cli::number("mpchat-bench", name, x.trim()))
        .collect()
}

fn run() -> Result<ExitCode, Failure> {
    let p = "mpchat-bench";
    let args = cli::parse(p, std::env::args_os().skip(1), WITH_VALUE, FLAGS)?;
    let opt = |name: &str| {
        args.iter().rev().find_map(|a| match a {
            Arg::Opt(n, v) if n == name => Some(v.clone().unwrap_or_default()),
            _ => None,
        })
    };
    if let Some(Arg::Pos(x)) = args.iter().find(|a| matches!(a, Arg::Pos(_))) {
        return Err(Failure::Usage(format!(
            "{p}: unexpected argument {x:?}; see {p} --help"
        )));
    }
    if opt("--help").is_some() {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if opt("--version").is_some() {
        println!("mpchat-bench {}", env!("CARGO_PKG_VERSION"));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(addr) = opt("--serve-plain-relay") {
        return serve_plain(&addr);
    }

    let self_exe = std::env::current_exe()
        .map_err(|e| Failure::Runtime(format!("cannot find my own path: {e}")))?;
    let mpchatd = match opt("--mpchatd") {
        Some(path) => PathBuf::from(path),
        None => default_mpchatd(&self_exe),
    };
    if !mpchatd.is_file() {
        return Err(Failure::Runtime(format!(
            "{} does not exist; build it (cargo build --release) or pass --mpchatd PATH",
            mpchatd.display()
        )));
    }
    let mut o = Options::new(opt("--quick").is_some(), mpchatd, self_exe);
    if opt("--no-ngircd").is_some() {
        o.ngircd_skip_reason = Some("--no-ngircd was given".into());
    } else {
        let path = PathBuf::from(opt("--ngircd").unwrap_or_else(|| DEFAULT_NGIRCD.into()));
        if path.is_file() {
            o.ngircd = Some(path);
        } else {
            o.ngircd_skip_reason = Some(format!(
                "{} not found; install ngIRCd (Debian: apt-get install ngircd) or pass --ngircd PATH",
                path.display()
            ));
        }
    }
    o.plain = opt("--no-plain").is_none();
    o.plain_envelope = opt("--no-plain-env").is_none();
    if let Some(v) = opt("--runs") {
        o.runs = cli::number::<usize>(p, "--runs", &v)?.max(1);
    }
    if let Some(v) = opt("--sizes") {
        o.sizes = list("--sizes", &v)?;
    }
    if opt("--big").is_some() && !o.sizes.contains(&200) {
        o.sizes.push(200);
    }
    if let Some(v) = opt("--idle") {
        o.idle_connections = list("--idle", &v)?;
    }
    if opt("--many").is_some() && !o.idle_connections.contains(&10_000) {
        o.idle_connections.push(10_000);
    }
    if let Some(v) = opt("--login-iterations") {
        o.login_iterations = list("--login-iterations", &v)?;
    }
    if let Some(v) = opt("--backlog") {
        o.backlog_messages = cli::number::<u64>(p, "--backlog", &v)?.max(1);
    }
    if let Some(v) = opt("--senders") {
        o.durability_senders = cli::number::<usize>(p, "--senders", &v)?.max(1);
    }
    if let Some(v) = opt("--mpchatd-flags") {
        o.mpchatd_flags = v.split_whitespace().map(str::to_string).collect();
    }
    if let Some(v) = opt("--wait-idle") {
        o.wait_idle = cli::seconds(p, "--wait-idle", &v)?;
    }
    if let Some(v) = opt("--time-scale") {
        let f: f64 = v
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite() && *f > 0.0)
            .ok_or_else(|| {
                UsageError(format!(
                    "{p}: --time-scale wants a positive number, not {v:?}"
                ))
            })?;
        o.scale_time(f);
    }
    if let Some(v) = opt("--only") {
        let only: Vec<&str> = v.split(',').map(str::trim).collect();
        for s in &only {
            if ![
                "relay",
                "envelope",
                "backlog",
                "login",
                "memory",
                "durability",
            ]
            .contains(s)
            {
                return Err(Failure::Usage(format!(
                    "{p}: --only takes relay, envelope, backlog, login, memory and durability, not {s:?}"
                )));
            }
        }
        o.relay = only.contains(&"relay");
        o.envelope = only.contains(&"envelope");
        o.backlog = only.contains(&"backlog");
        o.login = only.contains(&"login");
        o.memory = only.contains(&"memory");
        o.durability = only.contains(&"durability");
    }
    match (opt("--target"), opt("--target-state-dir")) {
        (None, None) => {}
        (Some(addr), Some(dir)) => {
            let addr: SocketAddr = addr.parse().map_err(|_| {
                Failure::Usage(format!("{p}: --target wants ADDR:PORT, such as 127.0.0.1:5150, not {addr:?}"))
            })?;
            if !addr.ip().is_loopback() {
                return Err(Failure::Usage(format!(
                    "{p}: --target must be a loopback address (127.0.0.1 or ::1): the bench's load stays on this machine"
                )));
            }
            o.target = Some(mpchatd::Target { addr, state_dir: PathBuf::from(dir) });
        }
        _ => {
            return Err(Failure::Usage(format!(
                "{p}: --target and --target-state-dir go together (the bench adds its accounts to that state directory)"
            )))
        }
    }
    let json = opt("--json").map(PathBuf::from);

    let report = run::run(&o, &mut io::stderr()).map_err(|e| Failure::Runtime(e.to_string()))?;
    let table = report::render(&report, &o);
    print!("{table}");
    let _ = io::stdout().flush();
    if let Some(path) = json {
        std::fs::write(&path, report.to_json())
            .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// The mpchatd to measure when `--mpchatd` is not given: the one beside this binary
/// (a cargo build puts them together), else the one in `../sbin` beside its
/// directory, where `make install` puts mpchatd when this binary is in `bin`.
fn default_mpchatd(self_exe: &Path) -> PathBuf {
    let beside = self_exe.with_file_name("mpchatd");
    let installed = self_exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("sbin").join("mpchatd"));
    match installed {
        Some(p) if !beside.is_file() && p.is_file() => p,
        _ => beside,
    }
}

/// The plaintext relay baseline, run by the bench as its own child process.
fn serve_plain(addr: &str) -> Result<ExitCode, Failure> {
    let addr: SocketAddr = addr.parse().map_err(|_| {
        Failure::Usage(format!(
            "mpchat-bench: --serve-plain-relay wants ADDR:PORT, not {addr:?}"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(Failure::Usage(
            "mpchat-bench: the plaintext relay sends everything in clear; it listens on loopback only".into(),
        ));
    }
    let listener = TcpListener::bind(addr)
        .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    println!("listening on {local}");
    let _ = io::stdout().flush();
    // The bench holds our standard input open: when it ends, however it ends, so do we.
    std::thread::spawn(|| {
        let mut sink = [0u8; 256];
        loop {
            match io::stdin().read(&mut sink) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
    plain::serve_plain_relay(listener).map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
