//! `mpchat-bench` end to end, tiny: a few seconds of every section against the real
//! `mpchatd`, the built-in plaintext relay and, when it is installed, ngIRCd. It checks
//! that the bench runs, checks every message and writes its results; it asserts no
//! timing (figures on shared machines are not test material).

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mpchat-bench"))
}

/// Runs `cmd` (an `mpchat-bench` with its options) against the built mpchatd with
/// `--json`, checks that it succeeded, and returns its table and its JSON.
fn run_with_json(cmd: &mut Command, tag: &str) -> (String, String) {
    let json = std::env::temp_dir().join(format!(
        "mpchat-bench-smoke-{tag}-{}.json",
        std::process::id()
    ));
    let out = cmd
        .arg("--mpchatd")
        .arg(env!("CARGO_BIN_EXE_mpchatd"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run mpchat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mpchat-bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).expect("the --json file");
    let _ = std::fs::remove_file(&json);
    (stdout, text)
}

#[test]
fn a_tiny_run_measures_every_section_and_loses_no_message() {
    let (stdout, text) = run_with_json(
        bench()
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
            .args(["--senders", "2", "--runs", "1", "--backlog", "500"]),
        "run",
    );
    for heading in [
        "Relay, saturated",
        "Relay, light load",
        "Login",
        "Memory",
        "Durability",
        "End-to-end envelope",
        "Client per message at 50 participants",
        "Backlog",
    ] {
        assert!(
            stdout.contains(heading),
            "no {heading:?} in the table:\n{stdout}"
        );
    }
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
        "{\"section\": \"envelope\", \"system\": \"mpchat\", \"param\": \"participants=3\", \"metric\": \"wire_bytes_per_delivery\"",
        "{\"section\": \"envelope\", \"system\": \"mpchat\", \"param\": \"kind=MPK2 recipients=49\", \"metric\": \"open_ms\"",
        "{\"section\": \"client\", \"system\": \"mpchat\", \"param\": \"participants=50\", \"metric\": \"send_cpu_us\"",
        "{\"section\": \"client\", \"system\": \"mpchat\", \"param\": \"participants=50\", \"metric\": \"read_cpu_us\"",
        "{\"section\": \"backlog\", \"system\": \"mpchat\", \"param\": \"participants=3 messages=500\", \"metric\": \"client_cpu_s\"",
        "{\"section\": \"relay-light\", \"system\": \"disk\", \"param\": \"participants=3\", \"metric\": \"fsync_p50_ms\"",
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

#[test]
fn a_running_server_is_measured_with_accounts_it_gets_back_without() {
    let server = Server::start(&[]);
    server.add_user("alice", "alice's own password");
    let (stdout, text) = run_with_json(
        bench()
            .args([
                "--quick",
                "--time-scale",
                "0.1",
                "--runs",
                "1",
                "--no-ngircd",
                "--no-plain-env",
            ])
            .args([
                "--only",
                "relay,login,memory,durability",
                "--sizes",
                "3",
                "--idle",
                "5",
            ])
            .args(["--login-iterations", "1000"])
            .arg("--target")
            .arg(server.addr.to_string())
            .arg("--target-state-dir")
            .arg(&server.state),
        "target",
    );
    assert!(
        text.contains(&format!("running on {}", server.addr)),
        "{text}"
    );
    for key in [
        "{\"section\": \"relay-saturated\", \"system\": \"mpchat\", \"param\": \"participants=3\", \"metric\": \"deliveries_per_s\"",
        "\"system\": \"mpchat\", \"param\": \"iterations=1000\", \"metric\": \"server_cpu_ms_per_login\"",
        "\"section\": \"memory\", \"system\": \"mpchat\", \"param\": \"connections=5\", \"metric\": \"rss_kib\"",
    ] {
        assert!(text.contains(key), "no {key} in\n{text}");
    }
    assert!(
        stdout.contains("durability: it compares group commit"),
        "{stdout}"
    );
    // The bench's accounts are gone again; the server's own user is untouched.
    let users = Command::new(env!("CARGO_BIN_EXE_mpchatd"))
        .arg("users")
        .arg("--state-dir")
        .arg(&server.state)
        .output()
        .expect("run mpchatd users");
    let listed = String::from_utf8_lossy(&users.stdout);
    assert!(
        listed.contains("alice") && !listed.contains("mpbench-"),
        "{listed}"
    );
}

#[test]
fn a_target_needs_its_state_directory_and_a_loopback_address() {
    for (args, says) in [
        (&["--target", "127.0.0.1:5150"][..], "go together"),
        (&["--target-state-dir", "/tmp"][..], "go together"),
        (
            &["--target", "192.0.2.1:5150", "--target-state-dir", "/tmp"][..],
            "loopback",
        ),
        (
            &["--target", "localhost", "--target-state-dir", "/tmp"][..],
            "ADDR:PORT",
        ),
    ] {
        let out = bench().args(args).output().expect("run mpchat-bench");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
