//! The terminal's modes, through `stty(1)`: the crate forbids `unsafe`, so it cannot
//! call `tcsetattr` itself, and std cannot catch a signal. Used by the password prompt
//! of both binaries ([`read_password`]) and by `mpchat`'s interactive mode.
//!
//! # Restoring the terminal on every way out
//!
//! A program that turns echo off and dies without turning it back on leaves the user's
//! shell typing blind. Two things make sure that never happens:
//! - While a [`Mode`] is set, the terminal's signal keys are off (`-isig`): Ctrl-C,
//!   Ctrl-\ and Ctrl-Z arrive as bytes the program handles (clearing a line, cancelling
//!   a prompt, quitting), so they cannot kill it behind the terminal's back.
//! - A guardian process, started before the mode changes, holds the saved settings
//!   (`stty -g`) and waits for the end of a pipe from this process. Whatever ends this
//!   process (a return, a panic, `SIGTERM`, `SIGKILL`, a crash), the kernel closes the
//!   pipe, and the guardian restores the settings; a normal [`Mode::restore`] restores
//!   them itself and tells the guardian to leave them alone. The guardian is `sh` and
//!   `stty`, nothing else, and it ignores the terminal's own Ctrl-C.
//!
//! When the process dies from a signal, a job-control shell (bash, zsh) takes the
//! terminal back and restores its own settings: the guardian's `stty` then runs in a
//! process group that is no longer in the foreground, and the kernel refuses it
//! (`EIO`), so it cannot undo the shell's line editor's settings. Without such a shell
//! (a script, `sh -c`), the guardian's group is still in the foreground and its
//! `stty` restores the terminal.
//!
//! This module never prints a password or keeps one longer than the caller does.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::process::{Child, Command, Stdio};

use crate::login::MAX_PASSWORD_LEN;

/// The guardian: waits for a line on standard input. `done` means the settings were
/// restored already; anything else (the end of the pipe: this process is gone) means
/// restore them. The saved settings come as `$1`, never through a shell's parsing.
const GUARDIAN: &str = "trap '' INT QUIT TSTP TERM
IFS= read -r line
[ \"$line\" = done ] || exec stty \"$1\" </dev/tty";

/// Runs `stty ARGS` on `tty` (as its standard input) and returns what it printed.
pub fn stty(tty: &File, args: &[&str]) -> io::Result<String> {
    let out = Command::new("stty")
        .args(args)
        .stdin(tty.try_clone()?)
        .stderr(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(io::Error::other(format!(
            "stty {} failed ({})",
            args.join(" "),
            out.status
        )))
    }
}

/// The terminal's size as `(rows, columns)`, from `stty size`; `None` when it cannot
/// be learnt or is zero (a pseudo-terminal nobody sized).
pub fn size(tty: &File) -> Option<(u16, u16)> {
    let text = stty(tty, &["size"]).ok()?;
    let (rows, cols) = text.split_once(' ')?;
    let (rows, cols) = (rows.parse().ok()?, cols.parse().ok()?);
    (rows > 0 && cols > 0).then_some((rows, cols))
}

/// The byte-at-a-time mode, without echo or signal keys, of a password prompt and of
/// the interactive client. Output processing is kept, so `\n` still starts a new line.
pub const RAW: &[&str] = &[
    "-icanon", "-echo", "-isig", "-iexten", "-ixon", "min", "1", "time", "0",
];

/// A terminal mode in force until [`Mode::restore`] or drop; see the module
/// documentation for how the settings come back if the process dies instead.
pub struct Mode {
    tty: File,
    saved: String,
    guardian: Option<Child>,
    restored: bool,
}

impl Mode {
    /// Saves the settings of `tty`, starts the guardian, then applies `args` (for
    /// example [`RAW`]). Nothing is changed if any step fails.
    pub fn set(tty: &File, args: &[&str]) -> io::Result<Mode> {
        let tty = tty.try_clone()?;
        let saved = stty(&tty, &["-g"])?;
        let guardian = Command::new("sh")
            .arg("-c")
            .arg(GUARDIAN)
            .arg("mpchat-tty-guardian")
            .arg(&saved)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mode = Mode {
            tty,
            saved,
            guardian: Some(guardian),
            restored: false,
        };
        // On failure, dropping `mode` puts back whatever part of `args` took effect.
        stty(&mode.tty, args)?;
        Ok(mode)
    }

    /// Puts the saved settings back and dismisses the guardian.
    pub fn restore(mut self) {
        self.put_back();
    }

    fn put_back(&mut self) {
        if !self.restored {
            self.restored = true;
            let _ = stty(&self.tty, &[&self.saved]);
        }
        if let Some(mut guardian) = self.guardian.take() {
            if let Some(mut pipe) = guardian.stdin.take() {
                let _ = pipe.write_all(b"done\n");
            }
            let _ = guardian.wait();
        }
    }
}

impl Drop for Mode {
    fn drop(&mut self) {
        self.put_back();
    }
}

/// Opens the controlling terminal for reading and writing.
pub fn open_tty() -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open("/dev/tty")
}

/// Prompts on the terminal and reads a password without echo. Echo is off before the
/// prompt appears, so a fast paste never shows. The line is read byte by byte with the
/// signal keys off: Enter ends it, Backspace and Ctrl-U edit it, and Ctrl-C or Ctrl-D
/// on an empty line cancels it with [`io::ErrorKind::Interrupted`]; the terminal is
/// restored on every way out (see the module documentation). Fails if there is no
/// terminal.
pub fn read_password(prompt: &str) -> io::Result<String> {
    let tty = open_tty()?;
    let mode = Mode::set(&tty, RAW)?;
    let mut out = tty.try_clone()?;
    write!(out, "{prompt}")?;
    out.flush()?;
    let result = read_hidden_line(&mut tty.try_clone()?);
    mode.restore();
    let _ = writeln!(out);
    let line = result?;
    String::from_utf8(line).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the password typed is not UTF-8",
        )
    })
}

/// Reads one line typed in the raw mode, without echo: the bytes before Enter.
fn read_hidden_line(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if input.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the terminal closed",
            ));
        }
        match byte[0] {
            b'\r' | b'\n' => break,
            // Ctrl-C; Ctrl-D on an empty line.
            0x03 => return Err(io::ErrorKind::Interrupted.into()),
            0x04 if line.is_empty() => return Err(io::ErrorKind::Interrupted.into()),
            // Backspace (DEL or ^H): the last character, all its UTF-8 bytes.
            0x7f | 0x08 => {
                while let Some(b) = line.pop() {
                    if b & 0xc0 != 0x80 {
                        break;
                    }
                }
            }
            // Ctrl-U, Ctrl-W: start again.
            0x15 | 0x17 => line.clear(),
            b if b < 0x20 => {}
            b => {
                if line.len() > MAX_PASSWORD_LEN {
                    // Read on to Enter, then refuse: never a prefix of what was typed.
                    continue;
                }
                line.push(b);
            }
        }
    }
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty password",
        ));
    }
    if line.len() > MAX_PASSWORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("password longer than {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> io::Result<Vec<u8>> {
        read_hidden_line(&mut &bytes[..])
    }

    #[test]
    fn a_hidden_line_ends_at_enter_and_honours_backspace_and_ctrl_u() {
        assert_eq!(read(b"secret\r").unwrap(), b"secret");
        assert_eq!(read(b"secret\nrest").unwrap(), b"secret");
        assert_eq!(read(b"secrex\x7ft\r").unwrap(), b"secret");
        assert_eq!(read("caf\u{e9}\x7fe\r".as_bytes()).unwrap(), b"cafe");
        assert_eq!(read(b"wrong\x15right\r").unwrap(), b"right");
        assert_eq!(
            read(b"a\x1bb\r").unwrap(),
            b"ab",
            "control bytes are dropped"
        );
    }

    #[test]
    fn ctrl_c_or_ctrl_d_cancels_the_prompt() {
        assert_eq!(
            read(b"half\x03").unwrap_err().kind(),
            io::ErrorKind::Interrupted
        );
        assert_eq!(
            read(b"\x04").unwrap_err().kind(),
            io::ErrorKind::Interrupted
        );
        assert_eq!(
            read(b"x\x04y\r").unwrap(),
            b"xy",
            "Ctrl-D in a line is ignored"
        );
        assert_eq!(
            read(b"no enter").unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn an_empty_or_overlong_password_is_refused_without_echoing_it() {
        assert!(read(b"\r").is_err());
        let long = vec![b'x'; MAX_PASSWORD_LEN + 5];
        let err = read(&[&long[..], b"\r"].concat()).unwrap_err();
        assert!(!err.to_string().contains("xxxx"));
        let max = vec![b'x'; MAX_PASSWORD_LEN];
        assert_eq!(read(&[&max[..], b"\r"].concat()).unwrap(), max);
    }
}
