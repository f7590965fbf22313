//! The accounts layer: PHC hashes, the users file, the admin commands, reloading,
//! password checks and the PBKDF2 gate.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use mpchat::accounts::*;
use mpchat::fsutil;
use mpchat::login::MAX_PASSWORD_LEN;

/// Low iteration count so the tests stay fast.
const IT: u32 = 1_000;

/// A fresh, unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("mpchat-accounts-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn users(&self) -> PathBuf {
        self.0.join(USERS_FILE)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Computed independently with Python 3:
///
/// ```text
/// import hashlib, base64
/// salt = bytes(range(16))
/// h = hashlib.pbkdf2_hmac('sha256', b'correct horse', salt, 1000)
/// b = lambda x: base64.b64encode(x).decode().rstrip('=')
/// print('$pbkdf2-sha256$i=1000$' + b(salt) + '$' + b(h))
/// ```
const KNOWN_PHC: &str =
    "$pbkdf2-sha256$i=1000$AAECAwQFBgcICQoLDA0ODw$yRTMTwbMbo9G0VfjobWqerzuuxe7BETNTErBbKKumGQ";

fn salt_0_to_15() -> Vec<u8> {
    (0u8..16).collect()
}

fn line(name: &str, uid: &str, phc: &str) -> String {
    format!("{name}:{uid}:{phc}\n")
}

#[test]
fn phc_text_matches_an_independently_computed_hash() {
    let h = PasswordHash::with_salt("correct horse", 1000, &salt_0_to_15()).unwrap();
    assert_eq!(h.to_phc(), KNOWN_PHC);
    let parsed = PasswordHash::parse_phc(KNOWN_PHC).unwrap();
    assert_eq!(parsed, h);
    assert_eq!(parsed.iterations(), 1000);
    assert_eq!(parsed.salt(), &salt_0_to_15()[..]);
    assert!(parsed.verify("correct horse"));
    assert!(!parsed.verify("correct horse "));
    assert!(!parsed.verify("Correct horse"));
}

#[test]
fn new_hashes_round_trip_and_get_fresh_sixteen_byte_salts() {
    let a = PasswordHash::new("secret", IT).unwrap();
    let b = PasswordHash::new("secret", IT).unwrap();
    assert_eq!(a.salt().len(), SALT_LEN);
    assert_ne!(a.salt(), b.salt(), "each hash gets its own salt");
    assert_ne!(a.to_phc(), b.to_phc());
    let text = a.to_phc();
    assert!(text.starts_with("$pbkdf2-sha256$i=1000$"), "{text}");
    assert!(!text[22..].contains('='), "no padding: {text}");
    let back = PasswordHash::parse_phc(&text).unwrap();
    assert_eq!(back, a);
    assert!(back.verify("secret"));
    assert!(!back.verify("secreT"));
}

#[test]
fn new_hashes_refuse_bad_passwords_and_iteration_counts() {
    assert_eq!(
        PasswordHash::new("", IT).unwrap_err(),
        HashError::EmptyPassword
    );
    assert_eq!(
        PasswordHash::new("a\nb", IT).unwrap_err(),
        HashError::PasswordHasNewline
    );
    let long = "x".repeat(MAX_PASSWORD_LEN + 1);
    assert_eq!(
        PasswordHash::new(&long, IT).unwrap_err(),
        HashError::PasswordTooLong(MAX_PASSWORD_LEN + 1)
    );
    assert!(PasswordHash::new(&"x".repeat(MAX_PASSWORD_LEN), 1).is_ok());
    assert_eq!(
        PasswordHash::new("pw", 0).unwrap_err(),
        HashError::IterationsOutOfRange(0)
    );
    assert_eq!(
        PasswordHash::new("pw", MAX_ITERATIONS + 1).unwrap_err(),
        HashError::IterationsOutOfRange(MAX_ITERATIONS + 1)
    );
    assert_eq!(
        PasswordHash::with_salt("pw", 1, &[0; MIN_SALT_LEN - 1]).unwrap_err(),
        HashError::SaltLength(MIN_SALT_LEN - 1)
    );
}

#[test]
fn phc_parser_rejects_every_malformed_form() {
    let salt = "AAECAwQFBgcICQoLDA0ODw";
    let hash = "yRTMTwbMbo9G0VfjobWqerzuuxe7BETNTErBbKKumGQ";
    let cases: Vec<(String, PhcError)> = vec![
        (format!("$pbkdf2-sha256$i=1000${salt}"), PhcError::Shape),
        (
            format!("$pbkdf2-sha256$i=1000${salt}${hash}$"),
            PhcError::Shape,
        ),
        (
            format!("$pbkdf2-sha256$i=1000${salt}${hash}$extra"),
            PhcError::Shape,
        ),
        (
            format!("x$pbkdf2-sha256$i=1000${salt}${hash}"),
            PhcError::Shape,
        ),
        (
            format!("pbkdf2-sha256$i=1000${salt}${hash}"),
            PhcError::Shape,
        ),
        (String::new(), PhcError::Shape),
        (
            format!("$pbkdf2-sha512$i=1000${salt}${hash}"),
            PhcError::Algorithm,
        ),
        (
            format!("$PBKDF2-SHA256$i=1000${salt}${hash}"),
            PhcError::Algorithm,
        ),
        (
            format!("$pbkdf2-sha256$1000${salt}${hash}"),
            PhcError::Iterations,
        ),
        (
            format!("$pbkdf2-sha256$i=01000${salt}${hash}"),
            PhcError::Iterations,
        ),
        (
            format!("$pbkdf2-sha256$i=+1000${salt}${hash}"),
            PhcError::Iterations,
        ),
        (
            format!("$pbkdf2-sha256$i=${salt}${hash}"),
            PhcError::Iterations,
        ),
        (
            format!("$pbkdf2-sha256$i=1000,x=1${salt}${hash}"),
            PhcError::Iterations,
        ),
        (
            format!("$pbkdf2-sha256$i=0${salt}${hash}"),
            PhcError::IterationsOutOfRange(0),
        ),
        (
            format!("$pbkdf2-sha256$i=10000001${salt}${hash}"),
            PhcError::IterationsOutOfRange(10_000_001),
        ),
        (
            format!("$pbkdf2-sha256$i=18446744073709551615${salt}${hash}"),
            PhcError::IterationsOutOfRange(u64::MAX),
        ),
        (
            format!("$pbkdf2-sha256$i=99999999999999999999${salt}${hash}"),
            PhcError::Iterations,
        ),
        (
            format!("$pbkdf2-sha256$i=1000${salt}==${hash}"),
            PhcError::SaltEncoding,
        ),
        (
            format!("$pbkdf2-sha256$i=1000$AAECAwQFBgcICQoLDA0OD*${hash}"),
            PhcError::SaltEncoding,
        ),
        // URL-safe alphabet is not the standard one.
        (
            format!("$pbkdf2-sha256$i=1000$AAECAwQFBgcICQoLDA0OD_${hash}"),
            PhcError::SaltEncoding,
        ),
        // Non-canonical: the unused low bits of the last character are set.
        (
            format!("$pbkdf2-sha256$i=1000$AAECAwQFBgcICQoLDA0ODx${hash}"),
            PhcError::SaltEncoding,
        ),
        (
            format!("$pbkdf2-sha256$i=1000$${hash}"),
            PhcError::SaltEncoding,
        ),
        // 7 bytes of salt: too short.
        (
            format!("$pbkdf2-sha256$i=1000$AAECAwQFBg${hash}"),
            PhcError::SaltLength(7),
        ),
        (
            format!("$pbkdf2-sha256$i=1000${}${hash}", "A".repeat(88)),
            PhcError::SaltEncoding,
        ),
        (
            format!("$pbkdf2-sha256$i=1000${salt}${hash}="),
            PhcError::HashEncoding,
        ),
        (
            format!("$pbkdf2-sha256$i=1000${salt}${}", &hash[..42]),
            PhcError::HashEncoding,
        ),
        (
            format!("$pbkdf2-sha256$i=1000${salt}${hash}AA"),
            PhcError::HashEncoding,
        ),
        // 31 bytes.
        (
            format!("$pbkdf2-sha256$i=1000${salt}${}", "A".repeat(42)),
            PhcError::HashEncoding,
        ),
        (
            format!("$pbkdf2-sha256$i=1000${salt}$"),
            PhcError::HashEncoding,
        ),
    ];
    for (text, want) in cases {
        assert_eq!(PasswordHash::parse_phc(&text), Err(want), "{text:?}");
    }
    // The longest salt is accepted, one byte more is not.
    let s64 = mpchat::encoding::b64_unpadded(&[1; MAX_SALT_LEN]);
    assert!(PasswordHash::parse_phc(&format!("$pbkdf2-sha256$i=1${s64}${hash}")).is_ok());
    let s65 = mpchat::encoding::b64_unpadded(&[1; MAX_SALT_LEN + 1]);
    assert!(PasswordHash::parse_phc(&format!("$pbkdf2-sha256$i=1${s65}${hash}")).is_err());
    assert!(PasswordHash::parse_phc(&format!("$pbkdf2-sha256$i=10000000${salt}${hash}")).is_ok());
}

#[test]
fn users_text_round_trips_in_name_order() {
    let text = format!(
        "{}{}",
        line("bob", "00000000000000b0", KNOWN_PHC),
        line("alice", "a11ce00000000001", KNOWN_PHC)
    );
    let accounts = parse_users(&text).unwrap();
    assert_eq!(accounts.len(), 2);
    let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(accounts.lookup("alice").unwrap().uid, 0xa11c_e000_0000_0001);
    assert_eq!(accounts.name_of(0xb0), Some("bob"));
    assert_eq!(accounts.name_of(1), None);
    assert!(accounts.lookup("carol").is_none());
    let canonical = accounts.to_text();
    assert_eq!(
        canonical,
        format!(
            "{}{}",
            line("alice", "a11ce00000000001", KNOWN_PHC),
            line("bob", "00000000000000b0", KNOWN_PHC)
        )
    );
    assert_eq!(parse_users(&canonical).unwrap(), accounts);
    assert!(parse_users("").unwrap().is_empty());
}

#[test]
fn users_parser_names_the_bad_line_and_the_problem() {
    let good = line("alice", "0000000000000001", KNOWN_PHC);
    let good2 = line("bob", "0000000000000002", KNOWN_PHC);
    let bad_hash = KNOWN_PHC.replace("i=1000", "i=0");
    let cases: Vec<(String, usize, LineProblem)> = vec![
        (format!("{good}\n{good2}"), 2, LineProblem::Blank),
        (
            format!("{good}{}", good2.trim_end()),
            2,
            LineProblem::NoNewline,
        ),
        (
            format!("{good}{}", good2.replace('\n', "\r\n")),
            2,
            LineProblem::CarriageReturn,
        ),
        (format!("{good}# comment\n"), 2, LineProblem::Fields(1)),
        (
            format!("{good}bob:0000000000000002:{KNOWN_PHC}:x\n"),
            2,
            LineProblem::Fields(4),
        ),
        (
            format!("{good}bob:0000000000000002\n"),
            2,
            LineProblem::Fields(2),
        ),
        (
            format!("{good}bob:000000000000002:{KNOWN_PHC}\n"),
            2,
            LineProblem::BadUid,
        ),
        (
            format!("{good}bob:000000000000000G:{KNOWN_PHC}\n"),
            2,
            LineProblem::BadUid,
        ),
        (
            format!("{good}bob:00000000000000AB:{KNOWN_PHC}\n"),
            2,
            LineProblem::BadUid,
        ),
        (
            format!("{good}bob:0000000000000000:{KNOWN_PHC}\n"),
            2,
            LineProblem::Entry(EntryError::ZeroUid),
        ),
        (
            format!("{good}Bob:0000000000000002:{KNOWN_PHC}\n"),
            2,
            LineProblem::Entry(EntryError::InvalidName("Bob".into())),
        ),
        (
            format!("{good}:0000000000000002:{KNOWN_PHC}\n"),
            2,
            LineProblem::Entry(EntryError::InvalidName(String::new())),
        ),
        (
            format!("{good}{good2}alice:0000000000000003:{KNOWN_PHC}\n"),
            3,
            LineProblem::Entry(EntryError::DuplicateName("alice".into())),
        ),
        (
            format!("{good}{good2}carol:0000000000000001:{KNOWN_PHC}\n"),
            3,
            LineProblem::Entry(EntryError::DuplicateUid(1)),
        ),
        (
            format!("bob:0000000000000002:{bad_hash}\n"),
            1,
            LineProblem::Hash(PhcError::IterationsOutOfRange(0)),
        ),
        (
            format!("{good}{}\n", "a".repeat(MAX_LINE_LEN + 1)),
            2,
            LineProblem::TooLong,
        ),
        (
            format!("{good}{}", "a".repeat(MAX_LINE_LEN + 1)),
            2,
            LineProblem::TooLong,
        ),
        ("\n".to_string(), 1, LineProblem::Blank),
    ];
    for (text, want_line, want) in cases {
        let err = parse_users(&text).unwrap_err();
        assert_eq!(err.line(), Some(want_line), "{text:?}: {err}");
        assert_eq!(err.problem(), Some(&want), "{text:?}: {err}");
        let shown = err.to_string();
        assert!(shown.contains(&format!("line {want_line}")), "{shown}");
        assert!(
            !shown.contains("yRTMTwbMbo9G0Vfjob"),
            "error must not show a hash: {shown}"
        );
    }
}

#[test]
fn accounts_reject_zero_and_duplicate_entries_on_insert() {
    let hash = PasswordHash::parse_phc(KNOWN_PHC).unwrap();
    let acct = |name: &str, uid| Account {
        name: name.into(),
        uid,
        hash: hash.clone(),
    };
    let mut a = Accounts::new();
    a.insert(acct("alice", 1)).unwrap();
    assert_eq!(
        a.insert(acct("alice", 2)),
        Err(EntryError::DuplicateName("alice".into()))
    );
    assert_eq!(a.insert(acct("bob", 1)), Err(EntryError::DuplicateUid(1)));
    assert_eq!(a.insert(acct("bob", 0)), Err(EntryError::ZeroUid));
    assert_eq!(
        a.insert(acct("Bob", 3)),
        Err(EntryError::InvalidName("Bob".into()))
    );
    assert_eq!(a.len(), 1);
    assert_eq!(a.name_of(2), None);
}

#[test]
fn check_password_returns_the_uid_only_for_the_right_password() {
    let dir = TempDir::new("check");
    let uid = add_user(dir.path(), "alice", "right", IT).unwrap();
    let accounts = UsersFile::open(dir.path()).unwrap().current();
    assert_eq!(accounts.check_password("alice", "right"), Some(uid));
    assert_eq!(accounts.check_password("alice", "wrong"), None);
    assert_eq!(accounts.check_password("alice", ""), None);
    assert_eq!(accounts.check_password("bob", "right"), None);
}

#[test]
fn a_failed_login_does_the_pbkdf2_work_whether_or_not_the_user_exists() {
    let hash = PasswordHash::with_salt("right", IT, &salt_0_to_15()).unwrap();
    let mut accounts = Accounts::new();
    accounts
        .insert(Account {
            name: "alice".into(),
            uid: 7,
            hash,
        })
        .unwrap();

    let before = pbkdf2_iterations_run();
    assert_eq!(accounts.check_password("nobody", "right"), None);
    let unknown_work = pbkdf2_iterations_run() - before;
    assert_eq!(
        unknown_work,
        u64::from(IT),
        "unknown user: a dummy hash at the count most accounts use"
    );

    for invalid in ["Alice", "", "a b", "\u{1b}[2J", &"a".repeat(33)] {
        let before = pbkdf2_iterations_run();
        assert_eq!(accounts.check_password(invalid, "right"), None);
        assert_eq!(
            pbkdf2_iterations_run() - before,
            u64::from(IT),
            "invalid name {invalid:?}: the same dummy hash as an unknown one"
        );
    }

    let before = pbkdf2_iterations_run();
    assert_eq!(accounts.check_password("alice", "wrong"), None);
    assert_eq!(
        pbkdf2_iterations_run() - before,
        u64::from(IT),
        "known user: its own count"
    );

    let before = pbkdf2_iterations_run();
    assert_eq!(accounts.check_password("alice", "right"), Some(7));
    assert_eq!(pbkdf2_iterations_run() - before, u64::from(IT));
}

#[test]
fn with_no_accounts_a_failed_login_costs_the_default_iteration_count() {
    let accounts = Accounts::new();
    assert_eq!(accounts.dummy_iterations(), DEFAULT_ITERATIONS);
    let before = pbkdf2_iterations_run();
    assert_eq!(accounts.check_password("nobody", "pw"), None);
    assert_eq!(
        pbkdf2_iterations_run() - before,
        u64::from(DEFAULT_ITERATIONS)
    );
}

fn account(name: &str, uid: u64, iterations: u32) -> Account {
    Account {
        name: name.into(),
        uid,
        hash: PasswordHash::with_salt("pw", iterations, &salt_0_to_15()).unwrap(),
    }
}

#[test]
fn the_dummy_hash_uses_the_iteration_count_most_accounts_use() {
    let mut accounts = Accounts::new();
    let steps: [(&str, u32, u32); 5] = [
        ("a", 10, 10),
        // A tie goes to the larger count, whatever the order the accounts came in.
        ("b", 20, 20),
        ("c", 10, 10),
        ("d", 30, 10),
        ("e", 30, 30),
    ];
    for (i, (name, iterations, want)) in steps.into_iter().enumerate() {
        accounts
            .insert(account(name, i as u64 + 1, iterations))
            .unwrap();
        assert_eq!(accounts.dummy_iterations(), want, "after adding {name}");
    }
    // Read back from the file (in name order), the count is the same.
    let text = accounts.to_text();
    assert_eq!(parse_users(&text).unwrap().dummy_iterations(), 30);
    let mut reversed = Accounts::new();
    for a in accounts.iter().collect::<Vec<_>>().into_iter().rev() {
        reversed.insert(a.clone()).unwrap();
    }
    assert_eq!(reversed.dummy_iterations(), 30);
    assert_eq!(reversed, accounts);
}

#[test]
fn the_dummy_iteration_count_follows_the_users_file_as_it_changes() {
    let dir = TempDir::new("dummy");
    let users = UsersFile::open(dir.path()).unwrap();
    assert_eq!(users.current().dummy_iterations(), DEFAULT_ITERATIONS);
    for (name, iterations) in [("a", 3), ("b", 3), ("c", 5)] {
        add_user(dir.path(), name, "pw", iterations).unwrap();
    }
    assert_eq!(users.current().dummy_iterations(), 3);
    remove_user(dir.path(), "a").unwrap();
    assert_eq!(users.current().dummy_iterations(), 5, "a tie: the larger");
    set_password(dir.path(), "c", "pw", 7).unwrap();
    assert_eq!(users.current().dummy_iterations(), 7);
    remove_user(dir.path(), "b").unwrap();
    remove_user(dir.path(), "c").unwrap();
    assert_eq!(users.current().dummy_iterations(), DEFAULT_ITERATIONS);
}

#[test]
fn admin_commands_round_trip_with_a_private_file() {
    let dir = TempDir::new("admin");
    let state = dir.path().join("state");
    assert_eq!(list_users(&state).unwrap(), vec![]);

    let alice = add_user(&state, "alice", "pw-a", IT).unwrap();
    let bob = add_user(&state, "bob", "pw-b", IT + 1).unwrap();
    assert_ne!(alice, 0);
    assert_ne!(bob, 0);
    assert_ne!(alice, bob);
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let users = state.join(USERS_FILE);
    assert_eq!(
        fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        list_users(&state).unwrap(),
        vec![
            ("alice".to_string(), alice, IT),
            ("bob".to_string(), bob, IT + 1)
        ]
    );
    let text = fs::read_to_string(&users).unwrap();
    assert!(text.starts_with(&format!(
        "alice:{}:$pbkdf2-sha256$i=1000$",
        mpchat::encoding::id_hex(alice)
    )));
    assert!(!text.contains("pw-a"));

    set_password(&state, "alice", "new-a", 2000).unwrap();
    assert_eq!(
        list_users(&state).unwrap()[0],
        ("alice".to_string(), alice, 2000),
        "uid kept"
    );
    let accounts = parse_users(&fs::read_to_string(&users).unwrap()).unwrap();
    assert_eq!(accounts.check_password("alice", "new-a"), Some(alice));
    assert_eq!(accounts.check_password("alice", "pw-a"), None);
    assert_eq!(
        fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );

    assert_eq!(remove_user(&state, "alice").unwrap(), alice);
    assert_eq!(
        list_users(&state).unwrap(),
        vec![("bob".to_string(), bob, IT + 1)]
    );
    assert!(matches!(
        remove_user(&state, "alice"),
        Err(AdminError::UnknownUser { .. })
    ));
    assert!(matches!(
        set_password(&state, "alice", "x", IT),
        Err(AdminError::UnknownUser { .. })
    ));
    assert_eq!(remove_user(&state, "bob").unwrap(), bob);
    assert_eq!(list_users(&state).unwrap(), vec![]);
    assert_eq!(fs::read(&users).unwrap(), b"");
    assert_eq!(
        fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn failed_admin_commands_leave_the_file_byte_identical() {
    let dir = TempDir::new("unchanged");
    add_user(dir.path(), "alice", "pw", IT).unwrap();
    let users = dir.users();
    let before = fs::read(&users).unwrap();
    let inode = fs::metadata(&users).unwrap().ino();

    let err = add_user(dir.path(), "alice", "other", IT).unwrap_err();
    assert!(
        matches!(err, AdminError::UserExists(ref n) if n == "alice"),
        "{err}"
    );
    assert!(
        err.to_string().contains("already exists; use passwd"),
        "{err}"
    );
    for bad in ["Alice", "", "-x", "a b", "a:b", &"a".repeat(33)] {
        let err = add_user(dir.path(), bad, "pw", IT).unwrap_err();
        assert!(matches!(err, AdminError::InvalidName(_)), "{bad:?}: {err}");
    }
    assert!(matches!(
        add_user(dir.path(), "bob", "", IT),
        Err(AdminError::Hash(HashError::EmptyPassword))
    ));
    assert!(matches!(
        add_user(dir.path(), "bob", "pw", 0),
        Err(AdminError::Hash(HashError::IterationsOutOfRange(0)))
    ));
    assert!(matches!(
        set_password(dir.path(), "nobody", "pw", IT),
        Err(AdminError::UnknownUser { .. })
    ));
    assert!(matches!(
        set_password(dir.path(), "alice", "a\nb", IT),
        Err(AdminError::Hash(_))
    ));
    assert!(matches!(
        remove_user(dir.path(), "nobody"),
        Err(AdminError::UnknownUser { .. })
    ));

    assert_eq!(fs::read(&users).unwrap(), before);
    assert_eq!(
        fs::metadata(&users).unwrap().ino(),
        inode,
        "not even rewritten"
    );
}

#[test]
fn admin_commands_refuse_to_touch_a_corrupt_file() {
    let dir = TempDir::new("corrupt-admin");
    fsutil::ensure_private_dir(dir.path()).unwrap();
    let garbage = b"alice:0000000000000001:nonsense\n";
    fsutil::atomic_write(&dir.users(), garbage, 0o600).unwrap();
    let err = add_user(dir.path(), "bob", "pw", IT).unwrap_err();
    assert!(
        matches!(err, AdminError::UsersFile(ref e) if e.line() == Some(1)),
        "{err}"
    );
    assert!(err.to_string().contains("line 1"), "{err}");
    assert!(list_users(dir.path()).is_err());
    assert_eq!(fs::read(dir.users()).unwrap(), garbage);
}

#[test]
fn commands_on_a_missing_state_dir_do_not_create_it() {
    let dir = TempDir::new("nostate");
    assert!(matches!(
        remove_user(dir.path(), "alice"),
        Err(AdminError::UnknownUser { .. })
    ));
    assert!(matches!(
        set_password(dir.path(), "alice", "pw", IT),
        Err(AdminError::UnknownUser { .. })
    ));
    assert!(matches!(
        add_user(dir.path(), "Bad", "pw", IT),
        Err(AdminError::InvalidName(_))
    ));
    assert!(!dir.path().exists());
}

#[test]
fn concurrent_useradds_are_serialised_and_none_is_lost() {
    let dir = TempDir::new("concurrent");
    let state = Arc::new(dir.path().to_path_buf());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                (0..5)
                    .map(|i| add_user(&state, &format!("u{t}-{i}"), "pw", 1).unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut uids: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let listed = list_users(&state).unwrap();
    assert_eq!(listed.len(), 20);
    let mut listed_uids: Vec<u64> = listed.iter().map(|u| u.1).collect();
    uids.sort_unstable();
    listed_uids.sort_unstable();
    assert_eq!(uids, listed_uids);
}

#[test]
fn open_treats_a_missing_file_as_no_accounts_and_refuses_a_corrupt_one() {
    let dir = TempDir::new("open");
    let users = UsersFile::open(dir.path()).unwrap();
    assert!(users.current().is_empty());
    assert_eq!(users.path(), dir.users());

    fsutil::ensure_private_dir(dir.path()).unwrap();
    let text = format!("{}oops\n", line("alice", "0000000000000001", KNOWN_PHC));
    fsutil::atomic_write(&dir.users(), text.as_bytes(), 0o600).unwrap();
    let err = UsersFile::open(dir.path())
        .err()
        .expect("a corrupt file is refused");
    assert_eq!(err.line(), Some(2));
    assert!(
        err.to_string().contains(&dir.users().display().to_string()),
        "{err}"
    );
}

#[test]
fn a_running_users_file_picks_up_changes_without_reopening() {
    let dir = TempDir::new("reload");
    let users = UsersFile::open(dir.path()).unwrap();
    assert!(users.current().is_empty());

    let alice = add_user(dir.path(), "alice", "pw", IT).unwrap();
    let now = users.current();
    assert_eq!(now.len(), 1);
    assert_eq!(now.check_password("alice", "pw"), Some(alice));

    set_password(dir.path(), "alice", "pw2", IT).unwrap();
    assert_eq!(users.current().check_password("alice", "pw2"), Some(alice));

    let bob = add_user(dir.path(), "bob", "pw", IT).unwrap();
    assert_eq!(users.current().name_of(bob), Some("bob"));
    remove_user(dir.path(), "alice").unwrap();
    assert!(users.current().lookup("alice").is_none());
    assert!(
        Arc::ptr_eq(&users.current(), &users.current()),
        "unchanged file: same copy"
    );
}

#[test]
fn a_corrupt_rewrite_keeps_the_last_good_accounts() {
    let dir = TempDir::new("keep");
    let alice = add_user(dir.path(), "alice", "pw", IT).unwrap();
    let users = UsersFile::open(dir.path()).unwrap();
    let good = users.current();
    assert_eq!(good.len(), 1);

    let corrupt = format!(
        "{}bob:0000000000000002:broken\n",
        fs::read_to_string(dir.users()).unwrap()
    );
    fsutil::atomic_write(&dir.users(), corrupt.as_bytes(), 0o600).unwrap();
    let still = users.current();
    assert_eq!(still.check_password("alice", "pw"), Some(alice));
    assert!(still.lookup("bob").is_none());
    assert!(Arc::ptr_eq(&still, &users.current()));

    // Removing the file is not corruption: nobody may log in any more.
    fs::remove_file(dir.users()).unwrap();
    assert!(users.current().is_empty());

    // A good file again is picked up.
    let bob = add_user(dir.path(), "bob", "pw", IT).unwrap();
    assert_eq!(users.current().check_password("bob", "pw"), Some(bob));
}

#[test]
fn many_threads_see_a_change_through_one_users_file() {
    let dir = TempDir::new("threads");
    let users = Arc::new(UsersFile::open(dir.path()).unwrap());
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let users = Arc::clone(&users);
            thread::spawn(move || {
                // Each reader sees the count only grow, and eventually sees all five.
                let mut last = 0;
                loop {
                    let n = users.current().len();
                    assert!(n >= last, "went back from {last} to {n}");
                    last = n;
                    if n == 5 {
                        break;
                    }
                    thread::yield_now();
                }
            })
        })
        .collect();
    for i in 0..5 {
        add_user(dir.path(), &format!("user{i}"), "pw", 1).unwrap();
    }
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn the_gate_never_admits_more_than_its_permits() {
    let gate = Arc::new(PasswordGate::with_permits(2));
    assert_eq!(gate.permits(), 2);
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (gate, inside, most) = (Arc::clone(&gate), Arc::clone(&inside), Arc::clone(&most));
            thread::spawn(move || {
                for _ in 0..10 {
                    let _permit = gate.acquire();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Real work, as a login would do, and a pause, so that a broken gate would
                    // let a third thread in while this one is inside.
                    std::hint::black_box(PasswordHash::with_salt("pw", 200, &[1; 16]).unwrap());
                    thread::sleep(Duration::from_millis(1));
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "at most 2 at once, saw {most}");
    assert_eq!(inside.load(Ordering::SeqCst), 0);
}

#[test]
fn a_waiter_gets_in_as_soon_as_a_permit_is_dropped() {
    let gate = Arc::new(PasswordGate::with_permits(2));
    let first = gate.acquire();
    let _second = gate.acquire();
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let gate = Arc::clone(&gate);
        thread::spawn(move || {
            let _third = gate.acquire();
            tx.send(()).unwrap();
        })
    };
    // Not a timing assertion: a broken gate lets the third in at once and fails here.
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a third holder got in"
    );
    drop(first);
    rx.recv().unwrap();
    waiter.join().unwrap();
}

#[test]
fn a_gate_has_at_least_one_permit() {
    assert_eq!(PasswordGate::with_permits(0).permits(), 1);
    assert!(PasswordGate::new().permits() >= 1);
    let g = PasswordGate::with_permits(0);
    drop(g.acquire());
    drop(g.acquire());
}
