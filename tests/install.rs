//! `make install` and `make uninstall` into a staging DESTDIR, as a packager or a user
//! without root runs them: exactly the expected files with the expected modes, the
//! systemd unit pointing at the installed mpchatd, nothing built, and everything
//! removed again by `make uninstall` with the same variables.
//!
//! The Makefile is pointed at the binaries cargo built for these tests
//! (`RELEASE_DIR`), so no release build is needed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn stage_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mpchat-install-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The directory holding the binaries cargo built for this test run.
fn built_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mpchatd"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `make ARGS` in the checkout under `umask 077`, the strictest umask root may
/// have, so modes come from `install -m` and not from the umask. `CARGO=false` makes
/// any attempt to build fail. Variables the Makefile reads from the environment, and
/// those an outer `make test` passes down in MAKEFLAGS, are removed so only `args`
/// count.
fn make(args: &[String]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 077 && exec make --no-print-directory \"$@\"")
        .arg("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("CARGO=false")
        .args(args);
    for var in [
        "MAKEFLAGS",
        "MFLAGS",
        "MAKELEVEL",
        "MAKEOVERRIDES",
        "PREFIX",
        "BINDIR",
        "SBINDIR",
        "MANDIR",
        "SYSTEMDDIR",
        "DESTDIR",
        "RELEASE_DIR",
        "TARGET_DIR",
        "INSTALL",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run make (GNU make must be installed)")
}

fn ok(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file and symlink under `root`, by path relative to it, with its permission
/// bits (symlinks are reported with mode 0 so they never match an expectation).
fn files_under(root: &Path) -> BTreeMap<String, u32> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let mode = if meta.file_type().is_symlink() {
                    0
                } else {
                    meta.permissions().mode() & 0o7777
                };
                found.insert(rel, mode);
            }
        }
    }
    found
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The layout for a set of directories, relative to DESTDIR, without the leading `/`.
struct Layout {
    bindir: &'static str,
    sbindir: &'static str,
    mandir: &'static str,
    systemddir: &'static str,
}

impl Layout {
    fn expected(&self) -> BTreeMap<String, u32> {
        let t = |d: &str| d.trim_start_matches('/').to_string();
        BTreeMap::from([
            (format!("{}/mpchatd", t(self.sbindir)), 0o755),
            (format!("{}/mpchat", t(self.bindir)), 0o755),
            (format!("{}/mpchat-bench", t(self.bindir)), 0o755),
            (format!("{}/man8/mpchatd.8", t(self.mandir)), 0o644),
            (format!("{}/man1/mpchat.1", t(self.mandir)), 0o644),
            (format!("{}/man1/mpchat-bench.1", t(self.mandir)), 0o644),
            (format!("{}/man7/mpchat-protocol.7", t(self.mandir)), 0o644),
            (format!("{}/mpchatd.service", t(self.systemddir)), 0o644),
        ])
    }

    /// Checks what was installed under `destdir`: the exact file set and modes,
    /// copies identical to their sources, directories 0755, and the unit's ExecStart.
    fn check_installed(&self, destdir: &Path) {
        assert_eq!(
            files_under(destdir),
            self.expected(),
            "installed files and modes under {}",
            destdir.display()
        );
        let at = |d: &str, f: &str| destdir.join(d.trim_start_matches('/')).join(f);
        let src = Path::new(env!("CARGO_MANIFEST_DIR"));
        let same = |installed: PathBuf, source: PathBuf| {
            assert!(
                fs::read(&installed).unwrap() == fs::read(&source).unwrap(),
                "{} differs from {}",
                installed.display(),
                source.display()
            );
        };
        same(at(self.sbindir, "mpchatd"), built_dir().join("mpchatd"));
        same(at(self.bindir, "mpchat"), built_dir().join("mpchat"));
        same(
            at(self.bindir, "mpchat-bench"),
            built_dir().join("mpchat-bench"),
        );
        same(at(self.mandir, "man8/mpchatd.8"), src.join("man/mpchatd.8"));
        same(at(self.mandir, "man1/mpchat.1"), src.join("man/mpchat.1"));
        same(
            at(self.mandir, "man1/mpchat-bench.1"),
            src.join("man/mpchat-bench.1"),
        );
        same(
            at(self.mandir, "man7/mpchat-protocol.7"),
            src.join("man/mpchat-protocol.7"),
        );
        for dir in [self.bindir, self.sbindir, self.systemddir] {
            assert_eq!(
                mode_of(&destdir.join(dir.trim_start_matches('/'))),
                0o755,
                "{dir}"
            );
        }
        for sub in ["man1", "man7", "man8"] {
            assert_eq!(
                mode_of(&at(self.mandir, sub)),
                0o755,
                "{}/{sub}",
                self.mandir
            );
        }

        let unit = fs::read_to_string(at(self.systemddir, "mpchatd.service")).unwrap();
        let exec: Vec<&str> = unit
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(
            exec,
            [format!(
                "ExecStart={}/mpchatd --state-dir /var/lib/mpchat",
                self.sbindir
            )],
            "{unit}"
        );
        assert!(
            !unit.contains("@SBINDIR@"),
            "a placeholder was left in the unit:\n{unit}"
        );
        assert!(
            !unit.contains(&destdir.to_string_lossy().into_owned()),
            "the unit names DESTDIR:\n{unit}"
        );
        let source_unit = fs::read_to_string(src.join("bin/mpchatd.service")).unwrap();
        assert_eq!(
            unit.lines().count(),
            source_unit.lines().count(),
            "the unit lost or gained lines"
        );

        // The installed binaries run.
        for (dir, name) in [(self.sbindir, "mpchatd"), (self.bindir, "mpchat-bench")] {
            let v = Command::new(at(dir, name))
                .arg("--version")
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&v.stdout).trim(),
                format!("{name} {}", env!("CARGO_PKG_VERSION"))
            );
        }
    }
}

fn built() -> String {
    format!("RELEASE_DIR={}", built_dir().display())
}

#[test]
fn install_puts_exactly_the_expected_files_under_destdir_and_uninstall_removes_them() {
    let stage = stage_dir("default");
    let destdir = format!("DESTDIR={}", stage.display());
    ok(
        make(&["install".into(), destdir.clone(), built()]),
        "make install",
    );
    let layout = Layout {
        bindir: "/usr/local/bin",
        sbindir: "/usr/local/sbin",
        mandir: "/usr/local/share/man",
        systemddir: "/usr/local/lib/systemd/system",
    };
    layout.check_installed(&stage);

    // Installing again over an existing install is fine and changes nothing.
    ok(
        make(&["install".into(), destdir.clone(), built()]),
        "a second make install",
    );
    layout.check_installed(&stage);

    ok(make(&["uninstall".into(), destdir]), "make uninstall");
    assert_eq!(
        files_under(&stage),
        BTreeMap::new(),
        "files left after make uninstall"
    );
    fs::remove_dir_all(&stage).unwrap();
}

#[test]
fn install_and_uninstall_honour_prefix_and_each_directory_variable() {
    let stage = stage_dir("vars");
    let vars = vec![
        format!("DESTDIR={}", stage.display()),
        "PREFIX=/opt/mpchat".to_string(),
        "MANDIR=/opt/mpchat/man".to_string(),
        "SBINDIR=/opt/mpchat/daemons".to_string(),
        "SYSTEMDDIR=/etc/systemd/system".to_string(),
    ];
    let mut install = vec!["install".to_string(), built()];
    install.extend(vars.iter().cloned());
    ok(
        make(&install),
        "make install with PREFIX, MANDIR, SBINDIR and SYSTEMDDIR",
    );
    // BINDIR follows PREFIX; the others were given.
    Layout {
        bindir: "/opt/mpchat/bin",
        sbindir: "/opt/mpchat/daemons",
        mandir: "/opt/mpchat/man",
        systemddir: "/etc/systemd/system",
    }
    .check_installed(&stage);

    let mut uninstall = vec!["uninstall".to_string()];
    uninstall.extend(vars);
    ok(make(&uninstall), "make uninstall with the same variables");
    assert_eq!(
        files_under(&stage),
        BTreeMap::new(),
        "files left after make uninstall"
    );

    // BINDIR on its own moves only mpchat and mpchat-bench.
    let mut install = vec![
        "install".to_string(),
        built(),
        format!("DESTDIR={}", stage.display()),
    ];
    install.push("BINDIR=/usr/games".to_string());
    ok(make(&install), "make install with BINDIR");
    Layout {
        bindir: "/usr/games",
        sbindir: "/usr/local/sbin",
        mandir: "/usr/local/share/man",
        systemddir: "/usr/local/lib/systemd/system",
    }
    .check_installed(&stage);
    fs::remove_dir_all(&stage).unwrap();
}

#[test]
fn install_without_built_binaries_says_to_run_make_first_and_installs_nothing() {
    let stage = stage_dir("unbuilt");
    let empty = stage_dir("empty-target");
    let out = make(&[
        "install".into(),
        format!("DESTDIR={}", stage.display()),
        format!("RELEASE_DIR={}", empty.display()),
    ]);
    assert!(
        !out.status.success(),
        "make install succeeded without binaries"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is missing: run make first"), "{stderr}");
    assert_eq!(files_under(&stage), BTreeMap::new());
    assert_eq!(
        fs::read_dir(&stage).unwrap().count(),
        0,
        "install created directories before failing"
    );
    fs::remove_dir_all(&stage).unwrap();
    fs::remove_dir_all(&empty).unwrap();
}
