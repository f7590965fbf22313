//! Why a figure could not be measured, and the few helpers every module uses to say so.
//!
//! A server under test is a peer: nothing it does may panic the bench. Every failure
//! becomes a [`BenchError`] that names what was being done; this module must never
//! hide one (a lost message is a failure, not a skip).

use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Why a figure could not be measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchError {
    /// The measurement does not apply or its tool is missing; the reason is printed
    /// and the rest of the run goes on.
    Skip(String),
    /// Something failed: a server died, a message was lost or corrupted, a deadline
    /// passed. The message says what, and where to look.
    Fail(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Skip(m) => write!(f, "skipped: {m}"),
            BenchError::Fail(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BenchError {}

/// A [`BenchError::Fail`] saying `msg`.
pub fn fail(msg: impl Into<String>) -> BenchError {
    BenchError::Fail(msg.into())
}

/// Adds what was being done to an error.
pub trait Ctx<T> {
    /// The error as a [`BenchError::Fail`] prefixed with `what()`.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T, E: fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|e| BenchError::Fail(format!("{}: {e}", what())))
    }
}

/// Locks `m`, going on with the data if a thread panicked while holding it: the
/// bench's shared state stays consistent between statements, and a panic is reported
/// where it happened.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
