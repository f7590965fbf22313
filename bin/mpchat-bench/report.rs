//! The results of one invocation: every figure with one value per run, the machine
//! it ran on, what was skipped and what failed; written as JSON (`--json`) and as the
//! printed tables with the medians and the ratios of mpchat to each baseline.
//!
//! This module only formats: it must never measure, and never print a figure it does
//! not have (a missing one prints as `-`).

use crate::costs::{E2E_PARTICIPANTS, READ_BATCH};
use crate::relay::{SATURATED_WINDOW, TEXT_LEN};
use crate::run::{
    backlog_participants, durability_param, mpchat_sizes, Options, DURABILITY_WINDOWS,
};
use crate::stats::median;

/// The systems, in the order they are run and printed.
///
/// `plain-env` is the plaintext relay carrying messages as long as mpchat's envelopes
/// for the same session size (an `MPM2` adds 100 bytes to the text, whatever the
/// size): it separates what mpchat pays for moving larger messages from what it pays
/// for anything else.
pub const SYSTEMS: [&str; 4] = ["mpchat", "ngircd", "plain", "plain-env"];

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

/// The end-to-end layer's client-side figures and the backlog, with the issue's
/// targets beside them (shown, not judged).
fn render_e2e(report: &Report, o: &Options, t: &mut String) {
    let mut sizes = mpchat_sizes(o);
    if sizes.is_empty() {
        sizes = vec![2, 10, E2E_PARTICIPANTS];
    }
    let sized =
        |size: usize, m: &str| report.get("envelope", "mpchat", &format!("participants={size}"), m);
    if sizes.iter().any(|&s| sized(s, "message_bytes").is_some()) {
        t.push_str(&format!(
            "\nEnd-to-end envelopes (v2), client side, RSA-{} identity keys; {TEXT_LEN}-byte texts\n\
             {:>5} {:>7} {:>10} {:>8} {:>12} {:>18}\n",
            o.key_bits, "part", "MPM2 B", "wire B/dlv", "MPK2 B", "MPK2 wire B", "B/dlv incl. keys"
        ));
        for &size in &sizes {
            if sized(size, "message_bytes").is_none() {
                continue;
            }
            t.push_str(&format!(
                "{:>5} {:>7} {:>10} {:>8} {:>12} {:>18}\n",
                size,
                num(sized(size, "message_bytes"), 0),
                num(sized(size, "wire_bytes_per_delivery"), 0),
                num(sized(size, "distribution_bytes"), 0),
                num(sized(size, "distribution_wire_bytes_per_delivery"), 0),
                num(sized(size, "wire_bytes_per_delivery_with_keys"), 1),
            ));
        }
        t.push_str(
            "(target: wire B/dlv <= 260; MPK2 = one sender key to every other participant, sent once per key,\n\
             \x20a key seals at most 1,000 messages: \"incl. keys\" adds 1/1,000 of it)\n",
        );
    }
    let rec = E2E_PARTICIPANTS - 1;
    let kind = |k: &str, m: &str| {
        report.get(
            "envelope",
            "mpchat",
            &format!("kind={k} recipients={rec}"),
            m,
        )
    };
    if kind("MPK2", "build_ms").is_some() {
        t.push_str(&format!(
            "One-time per session at {E2E_PARTICIPANTS} participants: member list (MPS2, {} B) signed in {} ms, verified in {} ms by each member;\n\
             \x20 each sender's key (MPK2, {} B) built for {rec} recipients in {} ms, taken by one recipient in {} ms\n",
            num(kind("MPS2", "bytes"), 0),
            num(kind("MPS2", "build_ms"), 2),
            num(kind("MPS2", "open_ms"), 2),
            num(kind("MPK2", "bytes"), 0),
            num(kind("MPK2", "build_ms"), 2),
            num(kind("MPK2", "open_ms"), 2),
        ));
    }
    let cp = format!("participants={E2E_PARTICIPANTS}");
    let c = |m: &str| report.get("client", "mpchat", &cp, m);
    if c("send_cpu_us").is_some() {
        t.push_str(&format!(
            "Client per message at {E2E_PARTICIPANTS} participants, after the key distribution (target: <= 150 us CPU each)\n\
             \x20 {:<46} {:>8} {:>9}\n",
            "", "CPU us", "wall us"
        ));
        for (what, cpu, wall) in [
            (
                "send: seal, persist the chain, MTP",
                "send_cpu_us",
                "send_wall_us",
            ),
            (
                "  the persist alone (write, fsync, rename)",
                "persist_cpu_us",
                "persist_wall_us",
            ),
            ("  seal and MTP alone", "seal_cpu_us", "seal_wall_us"),
            (
                "read, batches of up to 256: open, verify, MTP",
                "read_cpu_us",
                "read_wall_us",
            ),
            (
                "read, one message a batch",
                "read_one_cpu_us",
                "read_one_wall_us",
            ),
        ] {
            t.push_str(&format!(
                "  {what:<46} {:>8} {:>9}\n",
                num(c(cpu), 1),
                num(c(wall), 1)
            ));
        }
        t.push_str(&format!(
            "  (per read batch one persist of the state, {} B, and one acknowledgement; READ_BATCH = {READ_BATCH})\n",
            num(c("reader_state_bytes"), 0)
        ));
    }
    let bp = format!(
        "participants={} messages={}",
        backlog_participants(o),
        o.backlog_messages
    );
    let bl = |m: &str| report.get("backlog", "mpchat", &bp, m);
    if bl("client_cpu_s").is_some() {
        t.push_str(&format!(
            "\nBacklog: a member of a {}-participant session reads {} messages after reconnecting\n\
             \x20 client CPU {} s (target <= 1.5 s), {} us a message; wall {} s; {} sender keys inside; {} batches\n",
            backlog_participants(o),
            o.backlog_messages,
            num(bl("client_cpu_s"), 3),
            num(bl("cpu_us_per_message"), 1),
            num(bl("wall_s"), 3),
            num(bl("distributions"), 0),
            num(bl("batches"), 0),
        ));
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
         \x20        mpchat's end-to-end envelopes (MPM2: the text plus 100 bytes)\n",
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
            let fsync = |m: &str| report.get(section, "disk", &p, m);
            if let (true, Some(mp), Some(ng), Some(f50), Some(f99)) = (
                section == "relay-light",
                mp,
                g("ngircd", metric),
                fsync("fsync_p50_ms"),
                fsync("fsync_p99_ms"),
            ) {
                t.push_str(&format!(
                    "{:>5} p99 {mp:.2} ms against ngircd's p99 plus one fsync of the disk (timed just before): {:.2} ms with its p50 ({f50:.3} ms), {:.2} ms with its p99 ({f99:.3} ms)\n",
                    "",
                    ng + f50,
                    ng + f99
                ));
            }
        }
    }
    render_e2e(report, o, &mut t);
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
}
