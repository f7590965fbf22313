//! The whole run: what to measure ([`Options`]), the machine described, the keys
//! made, and each section (envelope, relay, backlog, login, memory, durability) run
//! over the systems in turn, every figure added to the [`Report`].
//!
//! A section that fails or does not apply is recorded with its reason and the run
//! goes on; this module must never stop the run on a server's misbehaviour, never
//! assert a timing, and never print a password, key or message text.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use mpchat::accounts;
use mpchat::crypto::{self, RsaPrivate};

use crate::backlog::{backlog_capacity, read_backlog};
use crate::costs::{self, E2E_PARTICIPANTS, READ_BATCH};
use crate::error::{fail, BenchError, Ctx};
use crate::mpchatd::{
    attach_mpchatd, start_mpchatd, AccountSpec, KeyPool, Mpchat, MpchatServer, Target,
    LOW_ITERATIONS, MPCHAT_MAX_PARTICIPANTS, TARGET_ACCOUNT_PREFIX,
};
use crate::ngircd::{ngircd_version, start_ngircd};
use crate::plain::{start_plain_relay, Plain};
use crate::proc::{clock_ticks_per_second, machine_busy, parse_status_field};
use crate::process::TempDir;
use crate::relay::{run_relay, Group, Pace, RelayRun, LIGHT_RATE, SATURATED_WINDOW, TEXT_LEN};
use crate::report::Report;
use crate::stats::{median, percentile};
use crate::workload::{handshakes, hold_idle, Handshakes, MemoryFigure, System};

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
    /// The client side of the end-to-end layer: envelope sizes, one-time costs,
    /// per-message CPU (in the bench's own process).
    pub envelope: bool,
    /// Reading a backlog after reconnecting (over a server).
    pub backlog: bool,
    /// Messages in that backlog.
    pub backlog_messages: u64,
    /// Messages sent, read in batches, and read one at a time for the per-message
    /// figures.
    pub client_messages: (usize, usize, usize),
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
            backlog: true,
            backlog_messages: 10_000,
            client_messages: if quick {
                (300, 1_000, 100)
            } else {
                (1_000, 3_000, 400)
            },
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
            key_bits: mpchat::pins::DEFAULT_KEY_BITS,
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
    keys: KeyPool,
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
    let needed = keys_needed(o);
    let _ = writeln!(
        log,
        "mpchat-bench: making {needed} end-to-end keys (one per account in a session: a server binds each key to one account)"
    );
    let keys = KeyPool::generate(needed, o.key_bits)?;
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
    if o.backlog {
        if let Err(e) = backlog(&mut b) {
            b.trouble("backlog", e);
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

/// The session sizes of the relay that mpchat can hold (2 to 100), each once, in
/// order: the sizes its envelope figures are given at, and its relay accounts.
pub fn mpchat_sizes(o: &Options) -> Vec<usize> {
    let mut v: Vec<usize> = o
        .sizes
        .iter()
        .copied()
        .filter(|s| (2..=MPCHAT_MAX_PARTICIPANTS).contains(s))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Participants of the backlog's session: the largest relay size mpchat holds (50
/// by default), at least 2.
pub fn backlog_participants(o: &Options) -> usize {
    mpchat_sizes(o).last().copied().unwrap_or(2)
}

/// End-to-end keys the selected sections need: one per account that joins a session
/// on one server (relay: every size's accounts; durability: two per sender; backlog:
/// its session), at least 2 for the client-side figures.
pub fn keys_needed(o: &Options) -> usize {
    let mut n = 0;
    if o.relay {
        n = n.max(mpchat_sizes(o).iter().sum());
    }
    if o.durability && o.target.is_none() {
        n = n.max(2 * o.durability_senders.max(1));
    }
    if o.backlog {
        n = n.max(backlog_participants(o));
    }
    if o.envelope {
        n = n.max(2);
    }
    n
}

fn envelope(b: &mut Bench<'_>) -> Result<(), BenchError> {
    let o = b.o;
    let mut sizes = mpchat_sizes(o);
    if sizes.is_empty() {
        sizes = vec![2, 10, E2E_PARTICIPANTS];
    }
    for &size in &sizes {
        let z = costs::sizes(&b.keys, size)?;
        let p = format!("participants={size}");
        let r = &mut b.report;
        r.add(
            "envelope",
            "mpchat",
            &p,
            "message_bytes",
            "B",
            z.message as f64,
        );
        r.add(
            "envelope",
            "mpchat",
            &p,
            "wire_bytes_per_delivery",
            "B",
            z.message_wire as f64,
        );
        r.add(
            "envelope",
            "mpchat",
            &p,
            "distribution_bytes",
            "B",
            z.distribution as f64,
        );
        r.add(
            "envelope",
            "mpchat",
            &p,
            "distribution_wire_bytes_per_delivery",
            "B",
            z.distribution_wire as f64,
        );
        // Each member receives a sender's distribution once per key, and a key seals
        // at most 1,000 messages.
        r.add(
            "envelope",
            "mpchat",
            &p,
            "wire_bytes_per_delivery_with_keys",
            "B",
            z.message_wire as f64 + z.distribution_wire as f64 / 1_000.0,
        );
        r.add(
            "envelope",
            "mpchat",
            &p,
            "statement_bytes",
            "B",
            z.statement as f64,
        );
        b.say(format!(
            "envelope at {size} participants: a 100-byte text is {} bytes, {} on the wire per delivery; a sender key's distribution is {} bytes ({} per delivery, once per key)",
            z.message, z.message_wire, z.distribution, z.distribution_wire
        ));
    }
    let parts = E2E_PARTICIPANTS;
    let recipients = parts - 1;
    let dir = TempDir::new("client")?;
    for _ in 0..o.runs {
        let t = costs::one_time(&b.keys, parts, o.samples)?;
        let z = costs::sizes(&b.keys, parts)?;
        for (kind, build, open, bytes) in [
            (
                "MPS2",
                t.statement_sign_ms,
                t.statement_verify_ms,
                z.statement,
            ),
            (
                "MPK2",
                t.distribution_build_ms,
                t.distribution_open_ms,
                z.distribution,
            ),
        ] {
            let p = format!("kind={kind} recipients={recipients}");
            let r = &mut b.report;
            r.add("envelope", "mpchat", &p, "build_ms", "ms", build);
            r.add("envelope", "mpchat", &p, "open_ms", "ms", open);
            r.add("envelope", "mpchat", &p, "bytes", "B", bytes as f64);
        }
        b.say(format!(
            "one-time at {parts} participants: member list signed in {:.2} ms, verified in {:.2} ms; sender key distributed to {recipients} in {:.2} ms, taken by one in {:.2} ms",
            t.statement_sign_ms, t.statement_verify_ms, t.distribution_build_ms, t.distribution_open_ms
        ));
        let m = costs::per_message(&b.keys, parts, o.client_messages, dir.path(), b.tps)?;
        let p = format!("participants={parts}");
        let r = &mut b.report;
        for (metric_cpu, metric_wall, cost) in [
            ("send_cpu_us", "send_wall_us", m.send),
            ("persist_cpu_us", "persist_wall_us", m.persist),
            ("seal_cpu_us", "seal_wall_us", m.seal),
            ("read_cpu_us", "read_wall_us", m.read),
            ("read_one_cpu_us", "read_one_wall_us", m.read_one),
        ] {
            r.add("client", "mpchat", &p, metric_cpu, "us", cost.cpu_us());
            r.add("client", "mpchat", &p, metric_wall, "us", cost.wall_us());
        }
        r.add(
            "client",
            "mpchat",
            &p,
            "sender_state_bytes",
            "B",
            m.sender_state as f64,
        );
        r.add(
            "client",
            "mpchat",
            &p,
            "reader_state_bytes",
            "B",
            m.reader_state as f64,
        );
        if !r.about.iter().any(|(k, _)| k == "thread cpu clock") {
            r.about
                .push(("thread cpu clock".into(), m.clock.name().to_string()));
        }
        b.say(format!(
            "client at {parts} participants: {:.1} us CPU per message sent ({:.1} of it the persist), {:.1} us per message read in batches of {READ_BATCH}, {:.1} us read one at a time",
            m.send.cpu_us(),
            m.persist.cpu_us(),
            m.read.cpu_us(),
            m.read_one.cpu_us()
        ));
    }
    Ok(())
}

fn backlog(b: &mut Bench<'_>) -> Result<(), BenchError> {
    let o = b.o;
    let parts = backlog_participants(o);
    let prefix = o.account_prefix();
    let accts: Vec<AccountSpec> = (0..parts)
        .map(|i| AccountSpec::new(&format!("{prefix}k{i}"), LOW_ITERATIONS).with_key(i))
        .collect();
    let cap = backlog_capacity(o.backlog_messages).to_string();
    b.say(format!("backlog: starting mpchatd with {parts} accounts"));
    let mp = b.mpchatd("backlog", &accts, &["--backlog-messages", &cap])?;
    let dir = TempDir::new("backlog")?;
    let messages = o.backlog_messages;
    let p = format!("participants={parts} messages={messages}");
    for _ in 0..o.runs {
        let r = read_backlog(&mp, &accts, &b.keys, messages, dir.path(), b.tps).map_err(
            |e| match e {
                BenchError::Fail(m) => fail(format!(
                    "{m}; the server's log ends: {}",
                    mp.daemon.log_tail()
                )),
                skip => skip,
            },
        )?;
        let rep = &mut b.report;
        rep.add(
            "backlog",
            "mpchat",
            &p,
            "client_cpu_s",
            "s",
            r.read.cpu.as_secs_f64(),
        );
        rep.add(
            "backlog",
            "mpchat",
            &p,
            "wall_s",
            "s",
            r.read.wall.as_secs_f64(),
        );
        rep.add(
            "backlog",
            "mpchat",
            &p,
            "cpu_us_per_message",
            "us",
            r.read.cpu_us(),
        );
        rep.add(
            "backlog",
            "mpchat",
            &p,
            "distributions",
            "",
            r.distributions as f64,
        );
        rep.add(
            "backlog",
            "mpchat",
            &p,
            "envelope_bytes",
            "B",
            r.envelope_bytes as f64,
        );
        rep.add("backlog", "mpchat", &p, "batches", "", r.batches as f64);
        b.say(format!(
            "backlog of {messages} messages ({} sender keys distributed inside) at {parts} participants: {:.3} s of client CPU, {:.3} s wall, {} batches",
            r.distributions,
            r.read.cpu.as_secs_f64(),
            r.read.wall.as_secs_f64(),
            r.batches
        ));
    }
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
    // Every account its own key (a server binds one key to one account).
    let mut per_size: HashMap<usize, Vec<AccountSpec>> = HashMap::new();
    let mut next_key = 0;
    for s in mpchat_sizes(o) {
        let accts = (0..s)
            .map(|i| {
                AccountSpec::new(&format!("{prefix}r{s}-{i}"), LOW_ITERATIONS)
                    .with_key(next_key + i)
            })
            .collect();
        next_key += s;
        per_size.insert(s, accts);
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
    // One fsync of the disk the servers' state directories are on, timed just before
    // each light run (the disk is shared, its speed drifts): what a durable message
    // may cost over a relay that stores nothing (the light-load budget).
    let disk = TempDir::new("relay-fsync")?;
    for &size in &o.sizes {
        if size < 2 {
            b.trouble(
                &format!("relay at {size} participants"),
                BenchError::Skip("a session needs 2 participants".into()),
            );
            continue;
        }
        // mpchat's accounts for this size (none past its limit: it says so itself).
        let mpchat = Mpchat {
            server: &mp,
            accounts: per_size.get(&size).map_or(&[][..], Vec::as_slice),
            keys: &b.keys,
        };
        let texts = plain.as_ref().map(Plain::texts);
        let mut systems: Vec<&dyn System> = vec![&mpchat];
        systems.extend(ng.as_ref().map(|n| n as &dyn System));
        systems.extend(texts.as_ref().map(|p| p as &dyn System));
        let mut made: Vec<(&'static str, u32, Result<Group, BenchError>)> = systems
            .iter()
            .map(|sys| (sys.name(), sys.daemon().pid(), sys.group(size)))
            .collect();
        // plain-env carries messages as long as mpchat's envelopes at this size.
        let envelope_len = made.iter().find_map(|(name, _, g)| match g {
            Ok(g) if *name == "mpchat" => Some(g.payload_len),
            _ => None,
        });
        if let (Some(relay), Some(len)) = (&plain, envelope_len.filter(|_| o.plain_envelope)) {
            let env = Plain::envelope_sized(relay, len);
            made.push((env.name(), env.daemon().pid(), env.group(size)));
        }
        let mut groups: Vec<(&'static str, u32, Group, bool)> = Vec::new();
        for (name, pid, made) in made {
            match made {
                Ok(g) => groups.push((name, pid, g, true)),
                Err(e) => b.trouble(&format!("relay {name} at {size} participants"), e),
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
                if section == "relay-light" {
                    fsync_probe(b, disk.path(), size)?;
                }
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

/// Adds the rate and the server CPU per handshake of a run (at least one handshake)
/// to the login section; returns them.
fn record_handshakes(b: &mut Bench<'_>, system: &str, param: &str, h: &Handshakes) -> (f64, f64) {
    let cpu_ms = h.server_cpu.as_secs_f64() * 1e3 / h.count as f64;
    let rate = h.count as f64 / h.elapsed.as_secs_f64();
    let r = &mut b.report;
    r.add("login", system, param, "handshakes_per_s", "1/s", rate);
    r.add(
        "login",
        system,
        param,
        "server_cpu_ms_per_login",
        "ms",
        cpu_ms,
    );
    (rate, cpu_ms)
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
            let mpchat = Mpchat {
                server: &mp,
                accounts: &mine,
                keys: &b.keys,
            };
            let h = handshakes(&mpchat, mine.len(), time, max, b.tps)?;
            if h.count == 0 {
                return Err(fail(format!(
                    "no login finished within {time:?} at {it} iterations"
                )));
            }
            let (rate, cpu_ms) = record_handshakes(b, "mpchat", &p, &h);
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
            let h = handshakes(&ng, clients, o.login_time, 20_000, b.tps)?;
            if h.count == 0 {
                return Err(fail("no IRC registration finished"));
            }
            let (rate, cpu_ms) = record_handshakes(b, "ngircd", "registration", &h);
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
            .and_then(|mp| {
                let mpchat = Mpchat {
                    server: &mp,
                    accounts: &accts,
                    keys: &b.keys,
                };
                hold_idle(&mpchat, n, o.settle)
            });
        record_memory(b, "mpchat", n, fig);
        if let Some(bin) = &o.ngircd {
            let fig = start_ngircd(bin).and_then(|ng| hold_idle(&ng, n, o.settle));
            record_memory(b, "ngircd", n, fig);
        }
        if o.plain {
            let fig = start_plain_relay(&o.self_exe)
                .and_then(|relay| hold_idle(&Plain::texts(&relay), n, o.settle));
            record_memory(b, "plain", n, fig);
        }
    }
    Ok(())
}

/// How many unacknowledged messages each durability sender may have: one (the
/// batching comes only from concurrent senders) and a pipelining client's window.
pub const DURABILITY_WINDOWS: [u64; 2] = [1, 32];

/// The JSON `param` of a durability figure (window 1 keeps its original name).
pub fn durability_param(senders: usize, window: u64) -> String {
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
                AccountSpec::new(&format!("d{i}"), LOW_ITERATIONS).with_key(2 * i),
                AccountSpec::new(&format!("e{i}"), LOW_ITERATIONS).with_key(2 * i + 1),
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
            let mpchat = Mpchat {
                server: &mp,
                accounts: pair,
                keys: &b.keys,
            };
            groups.push(mpchat.group(2)?);
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

/// Times up to 200 fsyncs of a 128-byte append in `dir` (at most half a second) and
/// records their median and 99th percentile beside the light run at `size`.
fn fsync_probe(b: &mut Bench<'_>, dir: &Path, size: usize) -> Result<(), BenchError> {
    let lat = fsync_latencies(dir, 200, Duration::from_millis(500))?;
    let ms = |q| percentile(&lat, q).map_or(f64::NAN, |ns| ns as f64 / 1e6);
    let p = format!("participants={size}");
    let r = &mut b.report;
    r.add("relay-light", "disk", &p, "fsync_p50_ms", "ms", ms(0.5));
    r.add("relay-light", "disk", &p, "fsync_p99_ms", "ms", ms(0.99));
    Ok(())
}

/// Latencies (ns, sorted) of at most `count` fsyncs of a 128-byte append in `dir`,
/// bounded by `duration`.
pub fn fsync_latencies(
    dir: &Path,
    count: usize,
    duration: Duration,
) -> Result<Vec<u64>, BenchError> {
    let path = dir.join("fsync-latency");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ctx(|| format!("create {}", path.display()))?;
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(count);
    while lat.len() < count && t0.elapsed() < duration {
        let t = Instant::now();
        f.write_all(&[0x5a; 128]).ctx(|| "append".to_string())?;
        f.sync_data().ctx(|| "fsync".to_string())?;
        lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    drop(f);
    let _ = fs::remove_file(&path);
    lat.sort_unstable();
    Ok(lat)
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
