//! `mpchat-bench` end to end, tiny: a few seconds of every section against the real
//! `mpchatd`, the built-in plaintext relay and, when it is installed, ngIRCd. It checks
//! that the bench runs, checks every message and writes its results; it asserts no
//! timing (figures on shared machines are not test material).

use std::path::Path;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mpchat-bench"))
}

fn temp_json(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "mpchat-bench-smoke-{tag}-{}.json",
        std::process::id()
    ))
}

#[test]
fn a_tiny_run_measures_every_section_and_loses_no_message() {
    let json = temp_json("run");
    let out = bench()
        .args([
            "--quick",
            "--time-scale",
            "0.1",
            "--sizes",
            "2,3",
            "--idle",
            "10",
            "--login-iterations",
            "1000",
        ])
        .args(["--senders", "2", "--runs", "1"])
        .arg("--mpchatd")
        .arg(env!("CARGO_BIN_EXE_mpchatd"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run mpchat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mpchat-bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for heading in [
        "Relay, saturated",
        "Relay, light load",
        "Login",
        "Memory",
        "Durability",
        "End-to-end envelope",
    ] {
        assert!(
            stdout.contains(heading),
            "no {heading:?} in the table:\n{stdout}"
        );
    }
    let text = std::fs::read_to_string(&json).expect("the --json file");
    let _ = std::fs::remove_file(&json);
    assert!(text.contains("\"failures\": []"), "{text}");
    let ngircd = Path::new("/usr/sbin/ngircd").is_file();
    let mut systems = vec!["mpchat", "plain"];
    if ngircd {
        systems.push("ngircd");
    }
    for system in systems {
        for section in ["relay-saturated", "relay-light"] {
            let key = format!(
                "{{\"section\": \"{section}\", \"system\": \"{system}\", \"param\": \"participants=3\", \"metric\": \"deliveries_per_s\""
            );
            assert!(text.contains(&key), "no {key} in\n{text}");
        }
        let key = format!("\"section\": \"memory\", \"system\": \"{system}\", \"param\": \"connections=10\", \"metric\": \"rss_kib\"");
        assert!(text.contains(&key), "no {key} in\n{text}");
    }
    for key in [
        "\"system\": \"mpchat\", \"param\": \"iterations=1000\", \"metric\": \"server_cpu_ms_per_login\"",
        "\"system\": \"group-commit\", \"param\": \"senders=2\", \"metric\": \"acked_per_s\"",
        "\"system\": \"fsync-per-request\", \"param\": \"senders=2\", \"metric\": \"acked_per_s\"",
        "\"system\": \"group-commit\", \"param\": \"senders=2 window=32\", \"metric\": \"acked_per_s\"",
        "\"metric\": \"build_ms\"",
    ] {
        assert!(text.contains(key), "no {key} in\n{text}");
    }
    if !ngircd {
        assert!(
            stdout.contains("ngircd not found") || stdout.contains("ngIRCd"),
            "{stdout}"
        );
    }
}

#[test]
fn a_missing_mpchatd_is_named_with_what_to_do() {
    let out = bench()
        .args(["--quick", "--mpchatd", "/nonexistent/mpchatd"])
        .output()
        .expect("run mpchat-bench");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/mpchatd does not exist") && err.contains("--mpchatd"),
        "{err}"
    );
}

#[test]
fn unknown_options_and_bad_sections_are_usage_errors() {
    for args in [
        &["--frobnicate"][..],
        &["--only", "relay,teleport"][..],
        &["--time-scale", "-1"][..],
    ] {
        let out = bench().args(args).output().expect("run mpchat-bench");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn the_plain_relay_listens_on_loopback_only() {
    let out = bench()
        .args(["--serve-plain-relay", "0.0.0.0:0"])
        .output()
        .expect("run mpchat-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback only"));
}
