//! What the kernel says about processes and the machine: CPU time, resident memory,
//! threads and open-file limits from `/proc/PID/*`, the process listening on a port,
//! how busy the machine is, and the limits (`vm.max_map_count`, `RLIMIT_NOFILE`) that
//! decide how many connections a server can hold.
//!
//! The parsers take the files' text, so they are tested without a process. This
//! module only reads, except [`ensure_nofile`], which raises a limit with `prlimit`;
//! it must never change a system setting (it says which `sysctl` to run instead).

use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::error::{fail, BenchError, Ctx};

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

/// `se.sum_exec_runtime` (milliseconds, with a fraction down to nanoseconds) from
/// the text of `/proc/thread-self/sched`, as a duration.
pub fn parse_sched_runtime(sched: &str) -> Option<Duration> {
    let value = sched
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("se.sum_exec_runtime"))?
        .trim_start()
        .strip_prefix(':')?
        .trim();
    let (ms, frac) = value.split_once('.').unwrap_or((value, ""));
    let ms: u64 = ms.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ns: u64 = format!("{frac:0<6}").parse().ok()?;
    Some(Duration::from_millis(ms) + Duration::from_nanos(ns))
}

/// CPU time used so far by the calling thread: from `/proc/thread-self/sched`, to the
/// nanosecond, where the kernel has it (`CONFIG_SCHED_DEBUG`); otherwise from
/// `/proc/thread-self/stat` in clock ticks (`ticks_per_s`), so callers time enough
/// work for a tick not to matter. The second value says which clock it was.
pub fn thread_cpu(ticks_per_s: u64) -> Result<(Duration, ThreadClock), BenchError> {
    if let Some(d) = fs::read_to_string("/proc/thread-self/sched")
        .ok()
        .as_deref()
        .and_then(parse_sched_runtime)
    {
        return Ok((d, ThreadClock::Sched));
    }
    let text = fs::read_to_string("/proc/thread-self/stat")
        .ctx(|| "read /proc/thread-self/stat".to_string())?;
    let t = parse_stat_cpu(&text).ok_or_else(|| fail("cannot parse /proc/thread-self/stat"))?;
    Ok((ticks(t, ticks_per_s), ThreadClock::Ticks))
}

/// Which clock [`thread_cpu`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadClock {
    /// `/proc/thread-self/sched`, nanoseconds.
    Sched,
    /// `/proc/thread-self/stat`, clock ticks.
    Ticks,
}

impl ThreadClock {
    /// How the report names it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadClock::Sched => "/proc/thread-self/sched (ns)",
            ThreadClock::Ticks => "/proc/thread-self/stat (clock ticks)",
        }
    }
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

/// `t` clock ticks at `per_s` ticks a second, as a duration.
pub fn ticks(t: u64, per_s: u64) -> Duration {
    Duration::from_secs_f64(t as f64 / per_s.max(1) as f64)
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

/// CPU busy fraction of the whole machine over `over`, from /proc/stat.
pub fn machine_busy(over: Duration) -> Option<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 0 0";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        assert_eq!(parse_stat_cpu("4242 (x) S 1 2"), None);
    }

    #[test]
    fn a_threads_run_time_is_read_from_its_sched_file() {
        let sched = "bench (42, #threads: 3)\n----\nse.exec_start   :   4318876.838785\nse.sum_exec_runtime                          :           12.500250\nnr_switches : 1\n";
        assert_eq!(
            parse_sched_runtime(sched),
            Some(Duration::from_nanos(12_500_250))
        );
        assert_eq!(parse_sched_runtime("nr_switches : 1\n"), None);
        let (t0, _) = thread_cpu(100).unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let (t1, _) = thread_cpu(100).unwrap();
        assert!(t1 >= t0, "a thread's CPU time never goes back");
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
}
