//! What the client tells its user, as data: the core ([`super::state`]) gives an
//! [`Event`] for each thing that happened, and the shell renders it, as the one event
//! line of the netcat-style format ([`Event::script_line`]) when a script drives the
//! client, or for a person at a terminal.
//!
//! The fields hold text as it came (a peer's message, a name or a reason from the
//! server), never escaped: every renderer escapes it ([`escape`]) when it writes it, so
//! no peer can inject terminal sequences or fake an event line, whatever the renderer.
//!
//! [`Event::script_line`] is the netcat-style format documented in mpchat(1) and
//! relied on by scripts: it must never change for an existing event. This module never
//! does I/O.

use crate::encoding::id_hex;

use super::state::escape;

/// One thing to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Logged in again after a lost connection: `connected`.
    Connected,
    /// The connection was lost (`reason`); the client logs in again:
    /// `error connection REASON; reconnecting`.
    Reconnecting {
        /// Why the connection ended.
        reason: String,
    },
    /// The server closed the connection because another login of the same user
    /// replaced it; the client stops rather than take the connection back:
    /// `error connection replaced by another login of USER; not reconnecting`.
    Replaced {
        /// Our own username.
        user: String,
    },
    /// A session created by `/init` is live: `init SID ok`.
    Init {
        /// The new session.
        sid: u64,
    },
    /// An invitation: `invite SID FROM`, `FROM` being `?` when the creator could not
    /// be learnt.
    Invite {
        /// The session.
        sid: u64,
        /// The session's creator, if known.
        from: Option<String>,
    },
    /// A message whose signature was verified: `msg SID FROM TEXT`.
    Msg {
        /// The session.
        sid: u64,
        /// The author's name.
        from: String,
        /// The message text.
        text: String,
        /// When the author sent it (Unix time in milliseconds), if the envelope
        /// carries a signed send time; `None` until End-to-end v2.
        sent_ms: Option<u64>,
    },
    /// The server stored our message as number `n`: `sent SID N`.
    Sent {
        /// The session.
        sid: u64,
        /// The number the server gave, as text (a broken server may send anything).
        n: String,
    },
    /// A session was closed (by us or by its creator): `closed SID`.
    Closed {
        /// The session.
        sid: u64,
    },
    /// The answer to `/status` when there is no session: `status none`.
    StatusNone,
    /// One session of the answer to `/status`: `status SID STATE CREATOR`.
    Listed(Listed),
    /// The first line of the answer to `/status SID`: `status SID STATE CREATOR`.
    SessionStatus {
        /// The session.
        sid: u64,
        /// `pending` or `live` (as the server wrote it).
        state: String,
        /// The creator's name.
        creator: String,
    },
    /// A participant line of the answer to `/status SID`:
    /// `status SID NAME UID ANSWER PRESENCE ACKED`.
    Participant {
        /// The session.
        sid: u64,
        /// The participant's name.
        name: String,
        /// The participant's uid.
        uid: u64,
        /// `invited`, `accepted` or `declined` (as the server wrote it).
        answer: String,
        /// `online`, `offline` or `-` (as the server wrote it).
        presence: String,
        /// The last message number the participant acknowledged (as the server wrote
        /// it).
        acked: String,
        /// The fingerprint of the participant's key, once accepted (not in the
        /// script line).
        fingerprint: Option<String>,
    },
    /// A user's key differs from the pinned one: `key-changed NAME OLD NEW`.
    KeyChanged {
        /// The user.
        name: String,
        /// The pinned key's fingerprint.
        old: String,
        /// The new key's fingerprint.
        new: String,
    },
    /// `/trust` pinned a new key: `trusted NAME FINGERPRINT`.
    Trusted {
        /// The user.
        name: String,
        /// The fingerprint of the key now pinned.
        fingerprint: String,
    },
    /// A `/msg` (or a plain line to the current session) was sealed and sent: the
    /// interactive client shows it as the user's own line. No line in script mode
    /// (`sent SID N` follows when the server stored it).
    Outgoing {
        /// The session.
        sid: u64,
        /// The text sent.
        text: String,
    },
    /// Plain lines now go to this session (`/join`, or `/init` and `/accept` in
    /// interactive mode): `joined SID`.
    Joined {
        /// The session.
        sid: u64,
    },
    /// `/name` gave a session a name, or took it away: `named SID [NAME]`.
    Named {
        /// The session.
        sid: u64,
        /// The new name; `None` when it was removed.
        name: Option<String>,
    },
    /// Our `/accept` or `/decline` was sent. No line in script mode.
    Answered {
        /// The session.
        sid: u64,
        /// Accepted (else declined).
        accepted: bool,
    },
    /// A session's status shows another participant's answer to the invitation,
    /// which an earlier status did not. No line in script mode.
    MemberAnswered {
        /// The session.
        sid: u64,
        /// The participant.
        name: String,
        /// Accepted (else declined).
        accepted: bool,
    },
    /// A session's status shows another participant online or offline, unlike the
    /// earlier status. No line in script mode.
    Presence {
        /// The session.
        sid: u64,
        /// The participant.
        name: String,
        /// Online (else offline).
        online: bool,
    },
    /// One line of `/help`: `help LINE`.
    Help(String),
    /// The first login succeeded (the shell's own event, for the interactive
    /// client). No line in script mode.
    LoggedIn {
        /// `host:port` of the server.
        server: String,
        /// Our user name.
        user: String,
        /// The server key's fingerprint.
        fingerprint: String,
    },
    /// Something failed: `error COMMAND [SID] REASON`.
    Error {
        /// The command (`msg`, `init`, ...) or the part (`connection`, `input`,
        /// `key`, `server`) that failed.
        command: String,
        /// The session concerned, where there is one.
        sid: Option<u64>,
        /// What went wrong.
        reason: String,
    },
}

/// One session of a `/status` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// A session: its id, its state and its creator.
    Session {
        /// The session.
        sid: u64,
        /// `invited`, `pending` or `live`.
        state: String,
        /// The creator's name.
        creator: String,
    },
    /// A line of a listing that did not follow the protocol's grammar, as the server
    /// wrote it (shown escaped, trusted for nothing).
    Unparsed(String),
}

impl Event {
    /// An error about `command` (no session).
    pub fn error(command: &str, reason: impl Into<String>) -> Event {
        Event::Error {
            command: command.to_string(),
            sid: None,
            reason: reason.into(),
        }
    }

    /// An error about `command` on session `sid`.
    pub fn sid_error(command: &str, sid: u64, reason: impl Into<String>) -> Event {
        Event::Error {
            command: command.to_string(),
            sid: Some(sid),
            reason: reason.into(),
        }
    }

    /// The session the event is about, if any.
    pub fn sid(&self) -> Option<u64> {
        match self {
            Event::Init { sid }
            | Event::Invite { sid, .. }
            | Event::Msg { sid, .. }
            | Event::Sent { sid, .. }
            | Event::Closed { sid }
            | Event::SessionStatus { sid, .. }
            | Event::Participant { sid, .. }
            | Event::Listed(Listed::Session { sid, .. })
            | Event::Outgoing { sid, .. }
            | Event::Joined { sid }
            | Event::Named { sid, .. }
            | Event::Answered { sid, .. }
            | Event::MemberAnswered { sid, .. }
            | Event::Presence { sid, .. } => Some(*sid),
            Event::Error { sid, .. } => *sid,
            _ => None,
        }
    }

    /// The event's line in the netcat-style format of mpchat(1), without its newline;
    /// `None` for an event that format does not show. Text from outside (peers, the
    /// server, the user's own input) is escaped.
    pub fn script_line(&self) -> Option<String> {
        let e = |s: &str| escape(s);
        Some(match self {
            Event::Outgoing { .. }
            | Event::Answered { .. }
            | Event::MemberAnswered { .. }
            | Event::Presence { .. }
            | Event::LoggedIn { .. } => return None,
            Event::Joined { sid } => format!("joined {}", id_hex(*sid)),
            Event::Named {
                sid,
                name: Some(name),
            } => format!("named {} {}", id_hex(*sid), e(name)),
            Event::Named { sid, name: None } => format!("named {}", id_hex(*sid)),
            Event::Help(line) => format!("help {}", e(line)),
            Event::Connected => "connected".into(),
            Event::Reconnecting { reason } => {
                format!("error connection {}; reconnecting", e(reason))
            }
            Event::Replaced { user } => format!(
                "error connection replaced by another login of {}; not reconnecting",
                e(user)
            ),
            Event::Init { sid } => format!("init {} ok", id_hex(*sid)),
            Event::Invite { sid, from } => format!(
                "invite {} {}",
                id_hex(*sid),
                from.as_deref().map_or_else(|| "?".into(), e)
            ),
            Event::Msg {
                sid, from, text, ..
            } => format!("msg {} {} {}", id_hex(*sid), e(from), e(text)),
            Event::Sent { sid, n } => format!("sent {} {}", id_hex(*sid), e(n)),
            Event::Closed { sid } => format!("closed {}", id_hex(*sid)),
            Event::StatusNone => "status none".into(),
            Event::Listed(Listed::Session {
                sid,
                state,
                creator,
            }) => format!("status {} {} {}", id_hex(*sid), e(state), e(creator)),
            Event::Listed(Listed::Unparsed(line)) => format!("status {}", e(line)),
            Event::SessionStatus {
                sid,
                state,
                creator,
            } => format!("status {} {} {}", id_hex(*sid), e(state), e(creator)),
            Event::Participant {
                sid,
                name,
                uid,
                answer,
                presence,
                acked,
                ..
            } => format!(
                "status {} {} {} {} {} {}",
                id_hex(*sid),
                e(name),
                id_hex(*uid),
                e(answer),
                e(presence),
                e(acked)
            ),
            Event::KeyChanged { name, old, new } => {
                format!("key-changed {} {} {}", e(name), e(old), e(new))
            }
            Event::Trusted { name, fingerprint } => {
                format!("trusted {} {}", e(name), e(fingerprint))
            }
            Event::Error {
                command,
                sid: Some(sid),
                reason,
            } => format!("error {} {} {}", e(command), id_hex(*sid), e(reason)),
            Event::Error {
                command,
                sid: None,
                reason,
            } => format!("error {} {}", e(command), e(reason)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: u64 = 0x5e55_0000_0000_0001;

    #[test]
    fn script_lines_escape_what_came_from_outside() {
        let msg = Event::Msg {
            sid: SID,
            from: "bob".into(),
            text: "hi\nmsg 5e55000000000001 eve x\x1b[2J".into(),
            sent_ms: None,
        };
        assert_eq!(
            msg.script_line().unwrap(),
            "msg 5e55000000000001 bob hi\\nmsg 5e55000000000001 eve x\\x1b[2J"
        );
        assert_eq!(
            Event::sid_error("msg", SID, "no usable key for a\\b")
                .script_line()
                .unwrap(),
            "error msg 5e55000000000001 no usable key for a\\\\b"
        );
        assert_eq!(
            Event::Invite {
                sid: SID,
                from: None
            }
            .script_line()
            .unwrap(),
            "invite 5e55000000000001 ?"
        );
        assert_eq!(
            Event::Listed(Listed::Unparsed("x\ry".into()))
                .script_line()
                .unwrap(),
            "status x\\ry"
        );
    }
}
