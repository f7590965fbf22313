//! Short names for sessions, so nobody has to type 16 hex digits: the rules that turn
//! what the user typed where a command wants a session (`/msg lunch hi`, `/accept 5e5`)
//! into a session id, the default name made from the other participants
//! (`bob,carol`), the rule for a name the user sets (`/name SID NAME`), and the
//! `names` file that keeps those.
//!
//! A session reference is, in this order:
//! 1. a whole id, 16 lowercase hex digits: always that id, known or not (scripts that
//!    pass ids keep working, and the server is the judge of an id nobody here knows);
//! 2. a name the user set: exactly one session has it ([`check_name`] keeps them
//!    unique);
//! 3. a default name (`bob`, `bob,carol`): the session if only one has it;
//! 4. a prefix of an id, as git takes a short hash: the session if only one id starts
//!    with it.
//!
//! Anything else is unknown, and a name or prefix that fits several sessions is
//! ambiguous: [`Unresolved`], which the caller turns into an error line naming the
//! candidates ([`unresolved_reason`]). A name the user sets cannot be hex digits only,
//! so it can never be mistaken for a prefix, and cannot hold a `,` or `+`, so it can
//! never be mistaken for a default name.
//!
//! Pure functions: no I/O, no state of their own.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::encoding::{self, id_hex};

/// File in the config directory holding the names the user gave sessions: a line
/// `<sid> <name>\n` each (16 lowercase hex digits, a space, the name), in sid order,
/// written whole and atomically. A line that does not parse is ignored.
pub const NAMES_FILE: &str = "names";

/// Longest name the user may give a session.
pub const MAX_NAME_LEN: usize = 32;

/// Other participants named in a default name before the rest are counted (`+N`).
pub const DEFAULT_NAME_PEOPLE: usize = 3;

/// What the resolver knows of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known<'a> {
    /// The session id.
    pub sid: u64,
    /// The name the user gave it, if any.
    pub name: Option<&'a str>,
    /// Its default name from the other participants, if they are known.
    pub default: Option<&'a str>,
}

/// Why a session reference names no single session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No session has that name or an id with that prefix.
    Unknown,
    /// Several sessions fit: their ids, in order.
    Ambiguous(Vec<u64>),
}

/// Resolves what the user typed where a session is wanted (see the module
/// documentation for the order of the rules).
pub fn resolve(token: &str, known: &[Known<'_>]) -> Result<u64, Unresolved> {
    if let Some(sid) = encoding::parse_id(token) {
        return Ok(sid);
    }
    let pick = |matches: Vec<u64>| match matches.len() {
        0 => None,
        1 => Some(Ok(matches[0])),
        _ => Some(Err(Unresolved::Ambiguous(matches))),
    };
    let named = known
        .iter()
        .filter(|k| k.name == Some(token))
        .map(|k| k.sid)
        .collect();
    if let Some(r) = pick(named) {
        return r;
    }
    let by_default = known
        .iter()
        .filter(|k| k.default == Some(token))
        .map(|k| k.sid)
        .collect();
    if let Some(r) = pick(by_default) {
        return r;
    }
    if !token.is_empty() && token.len() < 16 && token.bytes().all(is_lower_hex) {
        let mut prefixed: Vec<u64> = known
            .iter()
            .filter(|k| id_hex(k.sid).starts_with(token))
            .map(|k| k.sid)
            .collect();
        prefixed.sort_unstable();
        prefixed.dedup();
        if let Some(r) = pick(prefixed) {
            return r;
        }
    }
    Err(Unresolved::Unknown)
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// The reason of the error line for a reference that did not resolve: it names the
/// candidates (for an ambiguous one) or the sessions there are (for an unknown one),
/// each as its id and its name, at most eight of them.
pub fn unresolved_reason(token: &str, why: &Unresolved, known: &[Known<'_>]) -> String {
    const SHOWN: usize = 8;
    let describe = |sid: u64| {
        let k = known.iter().find(|k| k.sid == sid);
        match k.and_then(|k| k.name.or(k.default)) {
            Some(name) => format!("{} ({name})", id_hex(sid)),
            None => id_hex(sid),
        }
    };
    let list = |sids: &[u64]| {
        let mut text = sids
            .iter()
            .take(SHOWN)
            .map(|&s| describe(s))
            .collect::<Vec<_>>()
            .join(", ");
        if sids.len() > SHOWN {
            let _ = write!(text, " and {} more", sids.len() - SHOWN);
        }
        text
    };
    match why {
        Unresolved::Ambiguous(sids) => {
            format!("session {token} is ambiguous: it could be {}", list(sids))
        }
        Unresolved::Unknown if known.is_empty() => {
            format!("no session {token}; /status lists your sessions")
        }
        Unresolved::Unknown => {
            let mut sids: Vec<u64> = known.iter().map(|k| k.sid).collect();
            sids.sort_unstable();
            sids.dedup();
            format!("no session {token}; known: {}", list(&sids))
        }
    }
}

/// The default name of a session from the names of its other participants: sorted,
/// joined with `,`, the first [`DEFAULT_NAME_PEOPLE`] then `+N` for the rest
/// (`bob,carol,dave+4`). `None` without other participants.
pub fn default_name(others: &[&str]) -> Option<String> {
    let mut names: Vec<&str> = others.to_vec();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return None;
    }
    let mut text = names
        .iter()
        .take(DEFAULT_NAME_PEOPLE)
        .copied()
        .collect::<Vec<_>>()
        .join(",");
    if names.len() > DEFAULT_NAME_PEOPLE {
        let _ = write!(text, "+{}", names.len() - DEFAULT_NAME_PEOPLE);
    }
    Some(text)
}

/// Whether `name` may be given to a session: 1 to [`MAX_NAME_LEN`] characters of
/// `A-Z a-z 0-9 . _ -`, not all of them lowercase hex digits (it would read as an id
/// prefix). `Err` says why not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a name is 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a name uses only the characters A-Z a-z 0-9 . _ -".into());
    }
    if name.bytes().all(is_lower_hex) {
        return Err("a name of hex digits only would read as a session id prefix".into());
    }
    Ok(())
}

/// Parses the [`NAMES_FILE`]; lines that do not parse, or whose name
/// [`check_name`] refuses, are skipped.
pub fn parse_names(text: &str) -> BTreeMap<u64, String> {
    let mut names = BTreeMap::new();
    for line in text.lines() {
        let Some((sid, name)) = line.split_once(' ') else {
            continue;
        };
        if let (Some(sid), Ok(())) = (encoding::parse_id(sid), check_name(name)) {
            names.insert(sid, name.to_string());
        }
    }
    names
}

/// The [`NAMES_FILE`]'s text for `names`.
pub fn names_text(names: &BTreeMap<u64, String>) -> String {
    let mut text = String::new();
    for (sid, name) in names {
        let _ = writeln!(text, "{} {name}", id_hex(*sid));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0x5e55_0000_0000_0001;
    const B: u64 = 0x5e12_0000_0000_0002;
    const C: u64 = 0x7700_0000_0000_0003;

    fn known() -> Vec<Known<'static>> {
        vec![
            Known {
                sid: A,
                name: Some("lunch"),
                default: Some("bob,carol"),
            },
            Known {
                sid: B,
                name: None,
                default: Some("bob"),
            },
            Known {
                sid: C,
                name: None,
                default: Some("bob"),
            },
        ]
    }

    #[test]
    fn a_whole_id_is_taken_as_it_is_known_or_not() {
        assert_eq!(resolve("5e55000000000001", &known()), Ok(A));
        assert_eq!(resolve("0000000000000009", &known()), Ok(9));
        assert_eq!(resolve("0000000000000009", &[]), Ok(9));
    }

    #[test]
    fn names_default_names_and_prefixes_resolve_when_unique() {
        let k = known();
        assert_eq!(resolve("lunch", &k), Ok(A));
        assert_eq!(resolve("bob,carol", &k), Ok(A));
        assert_eq!(resolve("5e55", &k), Ok(A));
        assert_eq!(resolve("5e1", &k), Ok(B));
        assert_eq!(resolve("7", &k), Ok(C));
    }

    #[test]
    fn an_ambiguous_or_unknown_reference_is_refused_naming_the_candidates() {
        let k = known();
        assert_eq!(resolve("5e", &k), Err(Unresolved::Ambiguous(vec![B, A])));
        assert_eq!(resolve("bob", &k), Err(Unresolved::Ambiguous(vec![B, C])));
        assert_eq!(resolve("dinner", &k), Err(Unresolved::Unknown));
        assert_eq!(resolve("5E55", &k), Err(Unresolved::Unknown));
        assert_eq!(resolve("", &k), Err(Unresolved::Unknown));
        assert_eq!(
            unresolved_reason("5e", &Unresolved::Ambiguous(vec![B, A]), &k),
            "session 5e is ambiguous: it could be 5e12000000000002 (bob), 5e55000000000001 (lunch)"
        );
        assert_eq!(
            unresolved_reason("dinner", &Unresolved::Unknown, &k),
            "no session dinner; known: 5e12000000000002 (bob), 5e55000000000001 (lunch), 7700000000000003 (bob)"
        );
        assert_eq!(
            unresolved_reason("x", &Unresolved::Unknown, &[]),
            "no session x; /status lists your sessions"
        );
    }

    #[test]
    fn a_name_the_user_set_wins_over_a_default_name() {
        let mut k = known();
        k[1].name = Some("bob");
        assert_eq!(resolve("bob", &k), Ok(B));
    }

    #[test]
    fn a_default_name_lists_the_others_sorted_and_counts_the_rest() {
        assert_eq!(default_name(&[]), None);
        assert_eq!(default_name(&["bob"]).as_deref(), Some("bob"));
        assert_eq!(
            default_name(&["carol", "bob", "bob"]).as_deref(),
            Some("bob,carol")
        );
        assert_eq!(
            default_name(&["f", "e", "d", "c", "b", "a"]).as_deref(),
            Some("a,b,c+3")
        );
    }

    #[test]
    fn a_name_cannot_read_as_an_id_prefix_or_a_default_name() {
        assert!(check_name("lunch").is_ok());
        assert!(check_name("Team-2.0_x").is_ok());
        assert!(check_name("cafe").is_err());
        assert!(check_name("0123").is_err());
        assert!(check_name("bob,carol").is_err());
        assert!(check_name("a+1").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(33)).is_err());
        assert!(check_name("tab\there").is_err());
    }

    #[test]
    fn the_names_file_round_trips_and_skips_bad_lines() {
        let mut names = BTreeMap::new();
        names.insert(A, "lunch".to_string());
        names.insert(B, "Team".to_string());
        let text = names_text(&names);
        assert_eq!(text, "5e12000000000002 Team\n5e55000000000001 lunch\n");
        assert_eq!(parse_names(&text), names);
        let damaged = format!("{text}junk\n0000000000000001 cafe\n0000000000000002 a b\n");
        assert_eq!(parse_names(&damaged), names);
    }
}
