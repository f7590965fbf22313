//! How the interactive client shows an [`Event`] to a person: a line (or a few) with
//! the local time, sessions by their short names, people's names in a colour of their
//! own, and the status answer as a readable table, where script mode has its fixed
//! event lines ([`Event::script_line`]).
//!
//! Every text that came from outside (a message, a name, a reason from the server) is
//! escaped ([`escape`]) before it is written, exactly as in script mode: a peer cannot
//! move the cursor or fake a line. Colour sequences are the renderer's own, and only
//! when [`View::colour`] says the terminal wants them.
//!
//! Local time without a timezone library: the shell learns the offset from UTC with
//! `date +%z` and passes it in ([`View::utc_offset_s`]); this module turns Unix time
//! into a calendar date and a time of day with integer arithmetic. Pure: no clock, no
//! I/O.

use std::fmt::Write as _;

use super::event::{Event, Listed};
use super::state::escape;
use crate::encoding::id_hex;

/// A message without a signed send time that arrives this soon after a login is
/// marked as possibly having waited on the server: its time is when it arrived.
pub const CATCH_UP_MS: u64 = 2_000;

/// What the renderer needs to know besides the event.
pub struct View<'a> {
    /// Our user name.
    pub me: &'a str,
    /// The session plain lines go to, if any: its messages need no session label.
    pub current: Option<u64>,
    /// A session's short name (the one the user set, else its default name), if any.
    pub label: &'a dyn Fn(u64) -> Option<String>,
    /// Whether to use colour.
    pub colour: bool,
    /// Now, in Unix milliseconds.
    pub now_ms: u64,
    /// The local time's offset from UTC, in seconds (east positive).
    pub utc_offset_s: i64,
    /// When the latest login succeeded, in Unix milliseconds.
    pub login_ms: u64,
}

/// The foreground colours names are drawn in: the six basic ones and their bright
/// forms, so two people rarely share one.
const PALETTE: [u8; 12] = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96];

impl View<'_> {
    fn paint(&self, sgr: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// A person's name, escaped, in their colour (the same on every run).
    fn who(&self, name: &str) -> String {
        let colour = PALETTE[(fnv1a(name.as_bytes()) % PALETTE.len() as u64) as usize];
        let sgr = if name == self.me {
            format!("1;{colour}")
        } else {
            colour.to_string()
        };
        self.paint(&sgr, &escape(name))
    }

    /// A session as a person knows it: its short name, else its id.
    fn session(&self, sid: u64) -> String {
        match (self.label)(sid) {
            Some(label) => self.paint("1", &escape(&label)),
            None => id_hex(sid),
        }
    }

    /// A session with its id, for lines that introduce one.
    fn session_with_id(&self, sid: u64) -> String {
        match (self.label)(sid) {
            Some(label) => format!("{} ({})", self.paint("1", &escape(&label)), id_hex(sid)),
            None => id_hex(sid),
        }
    }

    /// What to type for a session: its first eight hex digits, a prefix no other
    /// session shares in practice (a short name may be shared: two invitations from
    /// the same person).
    fn reference(&self, sid: u64) -> String {
        id_hex(sid)[..8].to_string()
    }

    fn stamp(&self, ms: u64) -> String {
        let text = local_time(ms, self.now_ms, self.utc_offset_s);
        self.paint("2", &text)
    }

    fn error(&self, text: &str) -> String {
        self.paint("31", text)
    }
}

/// FNV-1a, 64 bits: a stable hash, so a name keeps its colour from run to run.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `HH:MM` in local time, or `YYYY-MM-DD HH:MM` when that day is not today.
pub fn local_time(ms: u64, now_ms: u64, utc_offset_s: i64) -> String {
    let local = |ms: u64| (ms / 1000) as i64 + utc_offset_s;
    let (t, now) = (local(ms), local(now_ms));
    let (day, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let hm = format!("{:02}:{:02}", secs / 3600, secs % 3600 / 60);
    if day == now.div_euclid(86_400) {
        hm
    } else {
        let (y, m, d) = civil_from_days(day);
        format!("{y:04}-{m:02}-{d:02} {hm}")
    }
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses the output of `date +%z` (`+0100`, `-0530`) into seconds east of UTC.
pub fn parse_utc_offset(text: &str) -> Option<i64> {
    let text = text.trim();
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    Some(sign * (hours * 3600 + minutes * 60))
}

/// The lines that show `event` to a person, without line ends; none for an event a
/// person does not need to see (`sent SID N`: the message was shown when it left).
pub fn render(event: &Event, v: &View<'_>) -> Vec<String> {
    let now = v.stamp(v.now_ms);
    let line = |text: String| vec![format!("{now} {text}")];
    // Where a message or an event belongs: nothing for the current session.
    let in_session = |sid: u64| {
        if v.current == Some(sid) {
            String::new()
        } else {
            format!("[{}] ", v.session(sid))
        }
    };
    match event {
        Event::LoggedIn {
            server,
            user,
            fingerprint,
        } => line(format!(
            "connected to {} as {}; server {}; /help lists the commands",
            escape(server),
            v.who(user),
            escape(fingerprint)
        )),
        Event::Connected => line("connected again".into()),
        Event::Reconnecting { reason } => line(v.error(&format!(
            "connection lost ({}); reconnecting, your lines wait until it is back",
            escape(reason)
        ))),
        Event::Replaced { user } => line(v.error(&format!(
            "{} logged in somewhere else, which replaced this connection; not reconnecting",
            v.who(user)
        ))),
        Event::Init { sid } => line(format!(
            "session {} is live; /name {} NAME gives it a name",
            id_hex(*sid),
            v.reference(*sid)
        )),
        Event::Invite { sid, from } => {
            let from = from.as_deref().map_or_else(|| "someone".into(), |f| v.who(f));
            let r = v.reference(*sid);
            let with = match (v.label)(*sid) {
                Some(label) => format!(" (with {})", escape(&label)),
                None => String::new(),
            };
            line(format!(
                "{from} invites you to {}{with}: /accept {r} or /decline {r}",
                id_hex(*sid)
            ))
        }
        Event::Msg {
            sid,
            from,
            text,
            sent_ms,
        } => {
            let stamp = match sent_ms {
                Some(ms) => v.stamp(*ms),
                None if v.now_ms.saturating_sub(v.login_ms) < CATCH_UP_MS => {
                    format!("{now} {}", v.paint("2", "arrived"))
                }
                None => now.clone(),
            };
            vec![format!(
                "{stamp} {}<{}> {}",
                in_session(*sid),
                v.who(from),
                escape(text)
            )]
        }
        Event::Outgoing { sid, text } => line(format!(
            "{}<{}> {}",
            in_session(*sid),
            v.who(v.me),
            escape(text)
        )),
        Event::Sent { .. } => Vec::new(),
        Event::Closed { sid } => line(format!("session {} was closed", v.session_with_id(*sid))),
        Event::StatusNone => line("no sessions and no invitations".into()),
        Event::Listed(Listed::Session {
            sid,
            state,
            creator,
        }) => {
            let state = match state.as_str() {
                "invited" => format!("invited by {}", v.who(creator)),
                s => format!("{}, created by {}", escape(s), v.who(creator)),
            };
            line(format!("{}: {state}", v.session_with_id(*sid)))
        }
        Event::Listed(Listed::Unparsed(text)) => line(format!("? {}", escape(text))),
        Event::SessionStatus {
            sid,
            state,
            creator,
        } => line(format!(
            "{}: {}, created by {}",
            v.session_with_id(*sid),
            escape(state),
            v.who(creator)
        )),
        Event::Participant {
            name,
            answer,
            presence,
            fingerprint,
            ..
        } => {
            let mut text = format!("  {} {}", v.who(name), escape(answer));
            if presence != "-" {
                let _ = write!(text, ", {}", escape(presence));
            }
            if let Some(fp) = fingerprint {
                let _ = write!(text, ", key {}", escape(fp));
            }
            line(text)
        }
        Event::KeyChanged { name, old, new } => line(v.paint(
            "1;31",
            &format!(
                "the key of {} CHANGED from {} to {}: nothing is sent to it or shown from it until you check it with them and type /trust {}",
                escape(name),
                escape(old),
                escape(new),
                escape(name)
            ),
        )),
        Event::Trusted { name, fingerprint } => line(format!(
            "you trust the new key of {}: {}",
            v.who(name),
            escape(fingerprint)
        )),
        Event::Joined { sid } => line(format!(
            "plain lines now go to {}",
            v.session_with_id(*sid)
        )),
        Event::Named {
            sid,
            name: Some(name),
        } => line(format!("session {} is now called {}", id_hex(*sid), escape(name))),
        Event::Named { sid, name: None } => line(format!(
            "session {} has its default name again",
            id_hex(*sid)
        )),
        Event::Answered { sid, accepted } => line(format!(
            "you {} the invitation to {}",
            if *accepted { "accepted" } else { "declined" },
            v.session_with_id(*sid)
        )),
        Event::MemberAnswered {
            sid,
            name,
            accepted,
        } => line(format!(
            "{}{} {} the invitation",
            in_session(*sid),
            v.who(name),
            if *accepted { "accepted" } else { "declined" }
        )),
        Event::Presence { sid, name, online } => line(format!(
            "{}{} is {}",
            in_session(*sid),
            v.who(name),
            if *online { "online" } else { "offline" }
        )),
        Event::Help(text) => vec![escape(text)],
        Event::Error {
            command,
            sid,
            reason,
        } => {
            let place = sid.map(|s| format!(" in {}", v.session(s))).unwrap_or_default();
            line(v.error(&format!(
                "{} failed{place}: {}",
                escape(command),
                escape(reason)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: u64 = 0x5e55_0000_0000_0001;
    // 2026-11-25 13:05:00 UTC.
    const NOW_MS: u64 = 1_795_611_900_000;

    fn view<'a>(label: &'a dyn Fn(u64) -> Option<String>, colour: bool) -> View<'a> {
        View {
            me: "alice",
            current: None,
            label,
            colour,
            now_ms: NOW_MS,
            utc_offset_s: 3600,
            login_ms: NOW_MS - 60_000,
        }
    }

    fn lunch(sid: u64) -> Option<String> {
        (sid == SID).then(|| "lunch".to_string())
    }

    #[test]
    fn times_are_local_with_the_date_when_not_today() {
        assert_eq!(local_time(NOW_MS, NOW_MS, 0), "13:05");
        assert_eq!(local_time(NOW_MS, NOW_MS, 3600), "14:05");
        assert_eq!(local_time(NOW_MS, NOW_MS, -5 * 3600 - 1800), "07:35");
        assert_eq!(
            local_time(NOW_MS - 86_400_000, NOW_MS, 3600),
            "2026-11-24 14:05"
        );
        // Just after midnight local time, yesterday evening shows its date.
        assert_eq!(
            local_time(NOW_MS, NOW_MS + 11 * 3_600_000, 3600),
            "2026-11-25 14:05"
        );
        assert_eq!(local_time(0, 0, 0), "00:00");
        assert_eq!(local_time(951_782_400_000, 0, 0), "2000-02-29 00:00");
    }

    #[test]
    fn the_utc_offset_is_read_from_date_output() {
        assert_eq!(parse_utc_offset("+0100\n"), Some(3600));
        assert_eq!(parse_utc_offset("-0530"), Some(-(5 * 3600 + 30 * 60)));
        assert_eq!(parse_utc_offset("+0000"), Some(0));
        assert_eq!(parse_utc_offset("CET"), None);
        assert_eq!(parse_utc_offset("+01"), None);
    }

    #[test]
    fn a_message_shows_its_time_session_and_author_with_its_text_escaped() {
        let label = lunch;
        let v = view(&label, false);
        let msg = Event::Msg {
            sid: SID,
            from: "bob".into(),
            text: "hi\x1b[2J\nthere".into(),
            sent_ms: None,
        };
        assert_eq!(render(&msg, &v), ["14:05 [lunch] <bob> hi\\x1b[2J\\nthere"]);
        let here = View {
            current: Some(SID),
            ..view(&label, false)
        };
        assert_eq!(render(&msg, &here), ["14:05 <bob> hi\\x1b[2J\\nthere"]);
    }

    #[test]
    fn a_message_shows_when_it_was_sent_or_that_its_time_is_its_arrival() {
        let label = lunch;
        let sent = Event::Msg {
            sid: SID,
            from: "bob".into(),
            text: "hi".into(),
            sent_ms: Some(NOW_MS - 2 * 86_400_000),
        };
        assert_eq!(
            render(&sent, &view(&label, false)),
            ["2026-11-23 14:05 [lunch] <bob> hi"]
        );
        let unsigned = Event::Msg {
            sid: SID,
            from: "bob".into(),
            text: "hi".into(),
            sent_ms: None,
        };
        let just_in = View {
            login_ms: NOW_MS - 1000,
            ..view(&label, false)
        };
        assert_eq!(
            render(&unsigned, &just_in),
            ["14:05 arrived [lunch] <bob> hi"]
        );
    }

    #[test]
    fn names_get_a_stable_colour_only_when_colour_is_on() {
        let label = lunch;
        let v = view(&label, true);
        let msg = Event::Msg {
            sid: SID,
            from: "bob".into(),
            text: "hi".into(),
            sent_ms: None,
        };
        let a = render(&msg, &v);
        assert_eq!(a, render(&msg, &v));
        assert!(a[0].contains("<\x1b["), "{a:?}");
        assert!(a[0].contains("bob\x1b[0m>"), "{a:?}");
        let other = Event::Msg {
            sid: SID,
            from: "carol".into(),
            text: "hi".into(),
            sent_ms: None,
        };
        assert!(render(&other, &v)[0].contains("carol\x1b[0m>"));
        assert!(!render(&msg, &view(&label, false))[0].contains('\x1b'));
    }

    #[test]
    fn status_is_readable_without_uids_or_ack_counters() {
        let label = lunch;
        let v = view(&label, false);
        let p = Event::Participant {
            sid: SID,
            name: "bob".into(),
            uid: 0x0b,
            answer: "accepted".into(),
            presence: "online".into(),
            acked: "17".into(),
            fingerprint: Some("SHA256:abc".into()),
        };
        assert_eq!(
            render(&p, &v),
            ["14:05   bob accepted, online, key SHA256:abc"]
        );
        let listed = Event::Listed(Listed::Session {
            sid: SID,
            state: "invited".into(),
            creator: "carol".into(),
        });
        assert_eq!(
            render(&listed, &v),
            ["14:05 lunch (5e55000000000001): invited by carol"]
        );
    }

    #[test]
    fn errors_name_the_session_and_sent_confirmations_are_quiet() {
        let label = lunch;
        let v = view(&label, false);
        assert_eq!(
            render(&Event::sid_error("msg", SID, "backlog full"), &v),
            ["14:05 msg failed in lunch: backlog full"]
        );
        assert!(render(
            &Event::Sent {
                sid: SID,
                n: "3".into()
            },
            &v
        )
        .is_empty());
        assert_eq!(
            render(
                &Event::Invite {
                    sid: 0x0102_0304_0506_0708,
                    from: Some("bob".into())
                },
                &v
            ),
            ["14:05 bob invites you to 0102030405060708: /accept 01020304 or /decline 01020304"]
        );
    }
}
