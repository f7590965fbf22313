//! The core's knowledge of sessions as a person names them: their default names from
//! the other participants, the names given with `/name`, the current session for
//! plain lines, what `/accept` and `/decline` do with a session never heard of, and
//! what changed between two statuses of a session (who answered, who came online).
//! Session references are resolved by the pure rules of [`crate::client::names`].
//!
//! Part of [`super::Core`], in a file of its own so the message path of `state.rs`
//! stays apart from the naming. Like the rest of the core it does no I/O.

use super::{answer_word, Core, Event, InviteRes, Listed, Member, Persist, SessionView};
use crate::client::names::{self, Known};
use crate::crypto::RsaPublic;
use crate::encoding;

/// What the core knows of a session for naming it.
#[derive(Debug, Clone, Default)]
pub(super) struct KnownSession {
    /// The default name, from the other participants (or the creator of an
    /// invitation whose members are not known yet).
    pub(super) default: Option<String>,
    /// It was closed: no longer a candidate for a reference.
    pub(super) closed: bool,
}

impl Core {
    /// Whether a person drives the client at a terminal (the shell's interactive
    /// mode): `/init` and `/accept` then make their session the current one, and a
    /// plain line is a message to it without a `/join` first. Off by default (script
    /// mode: a plain line is an error unless `/join` chose a session).
    pub fn set_interactive(&mut self, on: bool) {
        self.interactive = on;
    }

    /// The session plain lines go to, if any.
    pub fn current(&self) -> Option<u64> {
        self.current.filter(|_| self.interactive || self.joined)
    }

    /// Whose key `key` is, as far as this client knows: our own (our user name) or
    /// a pinned user's.
    pub fn key_owner(&self, key: &RsaPublic) -> Option<&str> {
        if *key == self.my_public {
            return Some(&self.user);
        }
        self.pins.name_of(key)
    }

    /// Our user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A session's short name: the name the user gave it, else its default name
    /// from the other participants; `None` when neither is known.
    pub fn label(&self, sid: u64) -> Option<String> {
        self.names
            .get(&sid)
            .cloned()
            .or_else(|| self.known.get(&sid).and_then(|k| k.default.clone()))
    }

    /// The sessions a reference may name: every one heard of and not closed, with
    /// its name and default name.
    pub(super) fn candidates(&self) -> Vec<Known<'_>> {
        self.known
            .iter()
            .filter(|(_, k)| !k.closed)
            .map(|(&sid, k)| Known {
                sid,
                name: self.names.get(&sid).map(String::as_str),
                default: k.default.as_deref(),
            })
            .collect()
    }

    /// The session `token` names ([`names::resolve`]), or `None` after an error line
    /// for `command` that names the candidates.
    pub(super) fn resolve(&mut self, command: &str, token: &str) -> Option<u64> {
        let candidates = self.candidates();
        match names::resolve(token, &candidates) {
            Ok(sid) => Some(sid),
            Err(why) => {
                let reason = names::unresolved_reason(token, &why, &candidates);
                self.emit(Event::error(command, reason));
                None
            }
        }
    }

    /// Sends our answer to the invitation to `sid`.
    pub(super) fn answer(&mut self, sid: u64, accept: bool) {
        let sent = if accept {
            let payload = InviteRes::Accept(self.my_key_b64.clone()).encode();
            let sent = self.send(InviteRes::TYPE, sid, payload);
            if sent {
                self.request_status(sid, true);
            }
            sent
        } else {
            self.send(InviteRes::TYPE, sid, InviteRes::Deny.encode())
        };
        self.invites.remove(&sid);
        if !sent {
            return self.emit(Event::error(answer_word(accept), "not connected"));
        }
        self.known.entry(sid).or_default();
        self.emit(Event::Answered {
            sid,
            accepted: accept,
        });
        if accept && self.interactive {
            self.current = Some(sid);
        } else if !accept && self.current == Some(sid) {
            self.current = None;
        }
    }

    /// `/name SID [NAME]`: gives the session a name (unique, see [`names::check_name`])
    /// or takes it away, and persists the names.
    pub(super) fn name_session(&mut self, sid: u64, name: Option<&str>) {
        if let Some(name) = name {
            if let Err(why) = names::check_name(name) {
                return self.emit(Event::sid_error("name", sid, why));
            }
            if let Some((&other, _)) = self
                .names
                .iter()
                .find(|(&s, n)| s != sid && n.as_str() == name)
            {
                return self.emit(Event::sid_error(
                    "name",
                    sid,
                    format!("{name} already names {}", encoding::id_hex(other)),
                ));
            }
            self.names.insert(sid, name.to_string());
        } else if self.names.remove(&sid).is_none() {
            return self.emit(Event::sid_error("name", sid, "the session has no name"));
        }
        self.known.entry(sid).or_default();
        self.persist(Persist::Names(self.names.clone()));
        self.emit(Event::Named {
            sid,
            name: name.map(str::to_string),
        });
    }

    /// The `/accept` and `/decline` of `sid` that waited for its status.
    pub(super) fn take_answers(&mut self, sid: u64) -> Vec<bool> {
        let (mine, rest) = std::mem::take(&mut self.answers)
            .into_iter()
            .partition(|(s, _)| *s == sid);
        self.answers = rest;
        mine.into_iter().map(|(_, accept)| accept).collect()
    }

    /// Learns the sessions of a listing; in interactive mode, asks (quietly) for the
    /// status of each whose members are not known, for its default name.
    pub(super) fn learn_listing(&mut self, lines: &[Listed]) {
        let mut ask = Vec::new();
        for line in lines {
            let Listed::Session { sid, creator, .. } = line else {
                continue;
            };
            let known = self.known.entry(*sid).or_default();
            known.closed = false;
            if known.default.is_none() && *creator != self.user {
                known.default = Some(creator.clone());
            }
            if !self.sessions.contains_key(sid) {
                ask.push(*sid);
            }
        }
        if self.interactive {
            for sid in ask {
                if self.status_quiet.get(&sid).copied().unwrap_or(0) == 0 {
                    self.request_status(sid, true);
                }
            }
        }
    }

    /// Learns a session's default name from a status, and returns what changed since
    /// the status before it: other participants who answered the invitation, or came
    /// online or went offline. For a session we created, the first status's answers
    /// count as changes (every invitee was still to answer when we made it).
    pub(super) fn learn_session(&mut self, sid: u64, view: &SessionView) -> Vec<Event> {
        let me = (self.uid, self.user.as_str());
        let others: Vec<&Member> = view
            .members
            .iter()
            .filter(|m| m.uid != me.0 && m.name != me.1)
            .collect();
        let names: Vec<&str> = others
            .iter()
            .filter(|m| !m.declined)
            .map(|m| m.name.as_str())
            .collect();
        let known = self.known.entry(sid).or_default();
        if let Some(default) = names::default_name(&names) {
            known.default = Some(default);
        } else if known.default.is_none() && view.creator != me.1 {
            known.default = Some(view.creator.clone());
        }
        let fresh = self.created.remove(&sid);
        let old = self.sessions.get(&sid);
        let mut notes = Vec::new();
        for m in others {
            let before = old.and_then(|o| o.members.iter().find(|p| p.uid == m.uid));
            let answered_before = match before {
                Some(b) => b.accepted || b.declined,
                None => !(fresh || old.is_some()),
            };
            // The creator accepted by making the session: nothing to announce.
            if (m.accepted || m.declined) && !answered_before && m.name != view.creator {
                notes.push(Event::MemberAnswered {
                    sid,
                    name: m.name.clone(),
                    accepted: m.accepted,
                });
            }
            if let (Some(was), Some(is)) = (before.and_then(|b| b.online), m.online) {
                if was != is {
                    notes.push(Event::Presence {
                        sid,
                        name: m.name.clone(),
                        online: is,
                    });
                }
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{core, events, frame, line, show, ME, SID};
    use super::super::*;

    #[test]
    fn a_plain_line_in_script_mode_without_join_is_the_unknown_command_error() {
        let mut c = core();
        assert_eq!(
            show(c.handle(line("hello there"), 0)),
            ["error hello unknown command; use /init /accept /decline /msg /close /status /trust /quit"]
        );
        assert_eq!(
            show(c.handle(line("//x y"), 0)),
            ["error x unknown command; use /init /accept /decline /msg /close /status /trust /quit"]
        );
    }

    #[test]
    fn a_reference_that_names_no_session_is_an_error_naming_the_candidates() {
        let mut c = core();
        for (input, error) in [
            (
                "/accept 5E55000000000001",
                "error accept no session 5E55000000000001; /status lists your sessions",
            ),
            (
                "/decline 5e55",
                "error decline no session 5e55; /status lists your sessions",
            ),
            (
                "/msg nosid hello",
                "error msg no session nosid; /status lists your sessions",
            ),
            (
                "/status x",
                "error status no session x; /status lists your sessions",
            ),
            (
                "/close x",
                "error close no session x; /status lists your sessions",
            ),
            (
                "/join x",
                "error join no session x; /status lists your sessions",
            ),
        ] {
            assert_eq!(show(c.handle(line(input), 0)), [error], "{input:?}");
        }
        // Two sessions starting 5e55: one with bob, one named lunch.
        c.handle(frame(MsgType::InviteReq, SID, ""), 0);
        c.handle(
            frame(
                MsgType::StatusRes,
                SID,
                "OK\nlive bob\nbob 000000000000000b accepted online 0\n",
            ),
            0,
        );
        c.handle(line("/name 5e55100000000002 lunch"), 0);
        assert_eq!(
            show(c.handle(line("/msg 5e55 hi"), 0)),
            ["error msg session 5e55 is ambiguous: it could be 5e55000000000001 (bob), 5e55100000000002 (lunch)"]
        );
        assert_eq!(
            show(c.handle(line("/close dinner"), 0)),
            ["error close no session dinner; known: 5e55000000000001 (bob), 5e55100000000002 (lunch)"]
        );
        // By a unique prefix, a default name, a name: the same requests as by the id.
        assert_eq!(
            show(c.handle(line("/close 5e55000000000001"), 0)),
            ["> CloseReq 5e55000000000001 "]
        );
        for r in ["5e55000000000001", "5e550", "bob"] {
            assert_eq!(
                show(c.handle(line(&format!("/status {r}")), 0)),
                ["> StatusReq 5e55000000000001 "],
                "{r}"
            );
        }
        assert_eq!(
            show(c.handle(line("/close lunch"), 0)),
            ["> CloseReq 5e55100000000002 "]
        );
    }

    /// A status of [`SID`], created by alice, with bob accepted and online, dave
    /// invited and offline, and carol (us) as `answer`.
    fn sid_status(me: &str, bob: &str, dave: &str) -> Input {
        frame(
            MsgType::StatusRes,
            SID,
            &format!(
                "OK\nlive alice\nalice 000000000000000a accepted online 0\ncarol {} {me} online 0\nbob 000000000000000b {bob} 0\ndave 000000000000000d {dave} 0\n",
                encoding::id_hex(ME)
            ),
        )
    }

    #[test]
    fn in_interactive_mode_accept_chooses_the_current_session_for_plain_lines() {
        let mut c = core();
        c.set_interactive(true);
        let sid = encoding::id_hex(SID);
        c.handle(frame(MsgType::InviteReq, SID, ""), 0);
        c.handle(
            sid_status("invited", "accepted online", "invited offline"),
            0,
        );
        assert_eq!(c.label(SID).as_deref(), Some("alice,bob,dave"));
        assert_eq!(c.current(), None);
        assert_eq!(
            show(c.handle(line("hello"), 0)),
            ["error msg no current session: /join SID first, or /msg SID TEXT"]
        );
        let out = c.handle(line("/accept alice,bob,dave"), 0);
        assert_eq!(
            events(out),
            [Event::Answered {
                sid: SID,
                accepted: true
            }]
        );
        assert_eq!(c.current(), Some(SID));
        // The accepted ones have no key in this status: the line went to the session.
        c.handle(
            sid_status("accepted", "accepted online", "invited offline"),
            0,
        );
        assert_eq!(
            show(c.handle(line("hello"), 0)),
            [format!("error msg {sid} nobody to encrypt to yet")]
        );
        // A closed session is current no more.
        c.handle(frame(MsgType::CloseReq, SID, ""), 0);
        assert_eq!(c.current(), None);
    }

    #[test]
    fn in_interactive_mode_init_chooses_the_new_session_and_announces_the_answers() {
        let mut c = core();
        c.set_interactive(true);
        c.handle(line("/init bob dave"), 0);
        c.handle(frame(MsgType::InitRes, SID, "OK"), 0);
        assert_eq!(c.current(), Some(SID));
        let notes = events(c.handle(sid_status("accepted", "accepted online", "declined -"), 0));
        assert_eq!(
            notes,
            [
                Event::MemberAnswered {
                    sid: SID,
                    name: "bob".into(),
                    accepted: true
                },
                Event::MemberAnswered {
                    sid: SID,
                    name: "dave".into(),
                    accepted: false
                }
            ]
        );
        assert_eq!(
            c.label(SID).as_deref(),
            Some("alice,bob"),
            "decliners left out"
        );
    }

    #[test]
    fn a_later_status_announces_who_answered_or_came_online_and_script_mode_prints_none_of_it() {
        let mut c = core();
        c.handle(
            sid_status("accepted", "accepted offline", "invited offline"),
            0,
        );
        let out = c.handle(
            sid_status("accepted", "accepted online", "accepted offline"),
            0,
        );
        assert_eq!(
            events(out),
            [
                Event::Presence {
                    sid: SID,
                    name: "bob".into(),
                    online: true
                },
                Event::MemberAnswered {
                    sid: SID,
                    name: "dave".into(),
                    accepted: true
                }
            ]
        );
        let out = c.handle(
            sid_status("accepted", "accepted offline", "accepted offline"),
            0,
        );
        assert!(show(out).is_empty(), "no line in script mode");
    }

    #[test]
    fn in_script_mode_plain_lines_are_messages_only_after_join() {
        let mut c = core();
        let sid = encoding::id_hex(SID);
        c.handle(
            sid_status("accepted", "accepted online", "invited offline"),
            0,
        );
        c.handle(line(&format!("/accept {sid}")), 0);
        assert_eq!(c.current(), None);
        assert!(show(c.handle(line("hello"), 0))[0].starts_with("error hello unknown command;"));
        assert_eq!(
            show(c.handle(line("/join 5e5"), 0)),
            [format!("joined {sid}")]
        );
        assert_eq!(
            show(c.handle(line("hello"), 0)),
            [format!("error msg {sid} nobody to encrypt to yet")]
        );
    }

    #[test]
    fn an_answer_to_a_session_never_heard_of_waits_for_the_servers_word() {
        let mut c = core();
        let unknown = 0x7777_0000_0000_0001;
        assert_eq!(
            show(c.handle(line("/accept 7777000000000001"), 0)),
            ["> StatusReq 7777000000000001 "]
        );
        c.handle(Input::EndOfInput, 0);
        assert_eq!(
            show(c.handle(
                frame(MsgType::StatusRes, unknown, "error: not a participant"),
                0
            )),
            [
                "error accept 7777000000000001 not a participant",
                "exit Ok(())"
            ]
        );
        let mut c = core();
        c.handle(line("/decline 5e55000000000001"), 0);
        let out = show(c.handle(
            sid_status("invited", "accepted online", "invited offline"),
            0,
        ));
        assert_eq!(out, ["> InviteRes 5e55000000000001 Deny"]);
        // A known one is answered at once, as before.
        assert_eq!(
            show(c.handle(line("/decline 5e55000000000001"), 0)),
            ["> InviteRes 5e55000000000001 Deny"]
        );
    }

    #[test]
    fn in_interactive_mode_a_login_learns_the_sessions_quietly() {
        let mut c = core();
        c.set_interactive(true);
        c.handle(Input::Lost("gone".into()), 0);
        assert_eq!(
            show(c.handle(Input::Connected { uid: ME }, 0)),
            ["> StatusReq 0000000000000000 ", "connected"]
        );
        assert_eq!(
            show(c.handle(
                frame(MsgType::StatusRes, 0, "OK\n5e55000000000001 live alice\n"),
                0
            )),
            ["> StatusReq 5e55000000000001 "]
        );
        assert_eq!(c.label(SID).as_deref(), Some("alice"));
        assert!(show(c.handle(
            sid_status("accepted", "accepted online", "invited offline"),
            0
        ))
        .is_empty());
        assert_eq!(c.label(SID).as_deref(), Some("alice,bob,dave"));
    }

    #[test]
    fn help_lists_the_commands_one_event_line_each() {
        let mut c = core();
        let out = show(c.handle(line("/help"), 0));
        assert_eq!(out.len(), HELP.len());
        assert!(out
            .iter()
            .all(|l| l.starts_with("help /") || l.starts_with("help SID")));
    }

    #[test]
    fn a_name_is_persisted_unique_and_refused_when_it_reads_as_an_id() {
        let mut c = core();
        let other = "5e55000000000002";
        assert_eq!(
            show(c.handle(line(&format!("/name {other} lunch")), 0)),
            ["persist Names", "named 5e55000000000002 lunch"]
        );
        assert_eq!(c.label(0x5e55_0000_0000_0002).as_deref(), Some("lunch"));
        assert_eq!(
            show(c.handle(line("/name 5e55000000000001 lunch"), 0)),
            ["error name 5e55000000000001 lunch already names 5e55000000000002"]
        );
        assert_eq!(
            show(c.handle(line("/name 5e55000000000001 cafe"), 0)),
            ["error name 5e55000000000001 a name of hex digits only would read as a session id prefix"]
        );
        assert_eq!(
            show(c.handle(line("/name lunch"), 0)),
            ["persist Names", "named 5e55000000000002"]
        );
        assert_eq!(
            show(c.handle(line("/name 5e55000000000002"), 0)),
            ["error name 5e55000000000002 the session has no name"]
        );
        // A closed session's name goes with it.
        c.handle(line("/name 5e55000000000002 lunch"), 0);
        assert_eq!(
            show(c.handle(frame(MsgType::CloseReq, 0x5e55_0000_0000_0002, ""), 0)),
            ["closed 5e55000000000002", "persist Names"]
        );
        assert_eq!(c.label(0x5e55_0000_0000_0002), None);
    }
}
