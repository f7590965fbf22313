//! The relay workload, common to the three systems: one sender and its receivers (a
//! [`Group`], set up by a system through [`crate::workload::System::group`]), timed by
//! [`run_relay`] under a [`Pace`]. Each receiver checks that it gets every message
//! once, in order, with the expected bytes; latencies are send-to-delivery.
//!
//! A system only supplies its three sides ([`SendSide`], [`RecvSide`], [`AckSide`]):
//! pacing, deadlines, integrity checks and CPU sampling are written here once. This
//! module must never assert a timing, and every loop in it is bounded in messages
//! and in time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{fail, BenchError};
use crate::proc::{cpu_ticks, ticks};
use crate::stats::percentile;

/// Bytes of every message text (the workload: 100-byte texts).
pub const TEXT_LEN: usize = 100;
/// In the saturated run the sender is at most this many messages ahead of the
/// slowest receiver (the closed loop).
pub const SATURATED_WINDOW: u64 = 256;
/// Messages per second in the light-load run.
pub const LIGHT_RATE: u32 = 100;
/// Stack of the bench's own client threads.
const CLIENT_STACK: usize = 256 * 1024;
/// Time for the receivers to catch up once the sender has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A run fails when the slowest receiver makes no progress for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What fills every text after its number (and pads the plaintext relay's
/// envelope-sized messages).
pub const FILLER: &[u8] =
    b"the quick brown fox jumps over the lazy dog while mpchat-bench counts every delivery, ";

/// The 100-byte text of message `n`: `n` in ten decimal digits, a space, filler.
pub fn text_of(n: u64) -> [u8; TEXT_LEN] {
    let mut t = [0u8; TEXT_LEN];
    let head = format!("{:010} ", n % 10_000_000_000);
    t[..head.len()].copy_from_slice(head.as_bytes());
    for (i, b) in t[head.len()..].iter_mut().enumerate() {
        *b = FILLER[i % FILLER.len()];
    }
    t
}

/// A monotonic clock shared by the threads of one measurement: nanoseconds since
/// its creation.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since the clock started.
    pub fn ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What one poll of a receiving connection saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// Bytes arrived (maybe no complete delivery yet).
    Data,
    /// The read timed out.
    Idle,
}

/// The sending participant of a group: sends message `n` (its n-th message since the
/// group was set up, which the server numbers `n` too).
pub trait SendSide: Send {
    /// Sends message `n`.
    fn send(&mut self, n: u64) -> Result<(), BenchError>;
}

/// A receiving participant: reads what has arrived and reports each delivery as
/// `(n, content_ok)`; acknowledges as a real client would.
pub trait RecvSide: Send {
    /// One read with a short timeout, then every complete delivery.
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError>;
}

/// The sender's own replies from the server (`msg_res OK n`), where there are any.
pub trait AckSide: Send {
    /// One read with a short timeout, then every complete reply as `(n, ok)`.
    fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError>;
}

/// One sender and its receivers, all subscribed, ready to be timed.
pub struct Group {
    /// Bytes on the wire for one delivery to one receiver.
    pub wire_bytes: usize,
    /// Bytes of the message body the server relays (an envelope for mpchat).
    pub payload_len: usize,
    sender: Box<dyn SendSide>,
    acks: Option<Box<dyn AckSide>>,
    receivers: Vec<Box<dyn RecvSide>>,
    /// The number of the next message.
    next: u64,
}

impl Group {
    /// A group whose sender is `sender` (with its server's replies read by `acks`,
    /// where the system sends any) and whose other members are `receivers`; its
    /// first message will be number 1.
    pub fn new(
        wire_bytes: usize,
        payload_len: usize,
        sender: Box<dyn SendSide>,
        acks: Option<Box<dyn AckSide>>,
        receivers: Vec<Box<dyn RecvSide>>,
    ) -> Group {
        Group {
            wire_bytes,
            payload_len,
            sender,
            acks,
            receivers,
            next: 1,
        }
    }

    /// The same group whose first timed message is number `n` (at least 1): the
    /// server has numbered `n - 1` set-up messages before it.
    pub fn first_message(mut self, n: u64) -> Group {
        self.next = n.max(1);
        self
    }
}

/// How the sender paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as possible, at most `window` messages ahead of the slowest receiver.
    Saturated {
        /// Messages ahead of the slowest receiver, at most.
        window: u64,
    },
    /// `rate` messages per second on a fixed schedule.
    Light {
        /// Messages per second.
        rate: u32,
    },
    /// As fast as possible, at most `window` messages ahead of the server's replies
    /// (`msg_res OK n`): with a window of 1, a client that waits for each message to
    /// be acknowledged (stored) before sending the next.
    Acked {
        /// Messages not yet acknowledged, at most.
        window: u64,
    },
}

/// What one timed relay run measured.
#[derive(Debug, Clone, Default)]
pub struct RelayRun {
    /// Messages sent.
    pub messages: u64,
    /// Deliveries received, all receivers together.
    pub deliveries: u64,
    /// From the first send to the last delivery.
    pub elapsed: Duration,
    /// Send-to-delivery latencies in nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// Server CPU over the run.
    pub server_cpu: Duration,
    /// CPU of this process (every client, sender and receivers) over the run: on one
    /// machine the clients compete with the server for the same cores.
    pub client_cpu: Duration,
    /// Integrity failures (lost, duplicated, reordered or altered messages).
    pub errors: Vec<String>,
    /// Messages the server acknowledged to the sender.
    pub acked: u64,
    /// From the first send to the last acknowledgement.
    pub ack_elapsed: Duration,
    /// Send-to-acknowledgement latencies in nanoseconds, sorted.
    pub ack_latencies: Vec<u64>,
}

impl RelayRun {
    /// Deliveries per second.
    pub fn rate(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency percentile in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).map_or(f64::NAN, |ns| ns as f64 / 1e6)
    }
}

/// Per-receiver state during a run.
struct RecvOutcome {
    received: u64,
    last_ns: u64,
    latencies: Vec<u64>,
    errors: Vec<String>,
}

const MAX_ERROR_SAMPLES: usize = 5;

fn note(errors: &mut Vec<String>, count: &mut u64, msg: String) {
    *count += 1;
    if errors.len() < MAX_ERROR_SAMPLES {
        errors.push(msg);
    }
}

/// Runs one timed relay run on `group`: at most `max_messages` messages for at most
/// `duration` of sending, paced by `pace`; then waits for every receiver to hold
/// every message. Each receiver checks it gets every message once, in order, with
/// the expected bytes. `server_pid` is sampled for CPU.
pub fn run_relay(
    group: &mut Group,
    pace: Pace,
    duration: Duration,
    max_messages: u64,
    server_pid: u32,
    ticks_per_s: u64,
) -> Result<RelayRun, BenchError> {
    let first = group.next;
    let max_messages = max_messages.max(1);
    let clock = Clock::new();
    let send_ns: Vec<AtomicU64> = (0..max_messages).map(|_| AtomicU64::new(0)).collect();
    let progress: Vec<AtomicU64> = group
        .receivers
        .iter()
        .map(|_| AtomicU64::new(first - 1))
        .collect();
    let acked = AtomicU64::new(first - 1);
    let target = AtomicU64::new(u64::MAX);
    let stop = AtomicBool::new(false);
    let waiting = AtomicBool::new(false);
    let sender_thread = thread::current();
    let cpu0 = cpu_ticks(server_pid)?;
    let own0 = cpu_ticks(std::process::id())?;

    let has_acks = group.acks.is_some();
    if matches!(pace, Pace::Acked { .. }) && !has_acks {
        return Err(fail(
            "this system sends no replies for the sender to wait for",
        ));
    }
    let Group {
        sender,
        acks,
        receivers,
        ..
    } = group;
    let (sent, outcomes, ack_errors, send_error) = thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, side) in receivers.iter_mut().enumerate() {
            let (progress, target, stop, waiting, send_ns, sender_thread) = (
                &progress[i],
                &target,
                &stop,
                &waiting,
                &send_ns,
                sender_thread.clone(),
            );
            let h = thread::Builder::new().stack_size(CLIENT_STACK).spawn_scoped(scope, move || {
                let mut out = RecvOutcome { received: 0, last_ns: 0, latencies: Vec::new(), errors: Vec::new() };
                let mut expected = first;
                let mut bad = 0u64;
                let mut drain_deadline: Option<Instant> = None;
                let mut last_progress = Instant::now();
                loop {
                    let t = target.load(Ordering::SeqCst);
                    if expected > t || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if t != u64::MAX {
                        let d = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                        if Instant::now() > d {
                            note(&mut out.errors, &mut bad, format!("messages {expected}..={t} not received within {DRAIN_TIMEOUT:?}"));
                            break;
                        }
                    }
                    if last_progress.elapsed() > STALL_TIMEOUT {
                        note(&mut out.errors, &mut bad, format!("no delivery for {STALL_TIMEOUT:?} while waiting for message {expected}"));
                        stop.store(true, Ordering::SeqCst);
                        break;
                    }
                    let before = expected;
                    let polled = side.poll(&mut |n, ok| {
                        let now = clock.ns();
                        if n != expected {
                            let what = if n < expected { "again or out of order" } else { "early: messages were lost" };
                            note(&mut out.errors, &mut bad, format!("message {n} arrived {what} (expected {expected})"));
                        }
                        if !ok {
                            note(&mut out.errors, &mut bad, format!("message {n} arrived with the wrong bytes"));
                        }
                        if n >= expected {
                            expected = n + 1;
                        }
                        out.received += 1;
                        out.last_ns = now;
                        if let Some(sent) = n.checked_sub(first).and_then(|i| send_ns.get(i as usize)) {
                            out.latencies.push(now.saturating_sub(sent.load(Ordering::Acquire)));
                        }
                    });
                    if let Err(e) = polled {
                        note(&mut out.errors, &mut bad, e.to_string());
                        stop.store(true, Ordering::SeqCst);
                        break;
                    }
                    if expected != before {
                        last_progress = Instant::now();
                        progress.store(expected - 1, Ordering::SeqCst);
                        if waiting.load(Ordering::SeqCst) {
                            sender_thread.unpark();
                        }
                    }
                }
                out
            });
            handles.push(h);
        }
        let ack_handle = acks.as_mut().map(|side| {
            let (acked, target, stop, waiting, send_ns, sender_thread) = (
                &acked,
                &target,
                &stop,
                &waiting,
                &send_ns,
                sender_thread.clone(),
            );
            thread::Builder::new()
                .stack_size(CLIENT_STACK)
                .spawn_scoped(scope, move || {
                    let mut lat = Vec::new();
                    let mut last_ns = 0;
                    let mut errors = Vec::new();
                    let mut bad = 0u64;
                    let mut expected = first;
                    let mut drain_deadline: Option<Instant> = None;
                    while expected <= target.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst)
                    {
                        if target.load(Ordering::SeqCst) != u64::MAX
                            && Instant::now()
                                > *drain_deadline
                                    .get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT)
                        {
                            note(
                                &mut errors,
                                &mut bad,
                                format!("no reply to message {expected} within {DRAIN_TIMEOUT:?}"),
                            );
                            break;
                        }
                        let r = side.poll(&mut |n, ok| {
                            let now = clock.ns();
                            if !ok {
                                // Replies come in order: this one was for `expected`.
                                note(
                                    &mut errors,
                                    &mut bad,
                                    format!("the server refused message {expected}"),
                                );
                                expected += 1;
                                return;
                            }
                            if n != expected {
                                note(
                                    &mut errors,
                                    &mut bad,
                                    format!("reply OK {n} where OK {expected} was due"),
                                );
                            }
                            if let Some(sent) =
                                n.checked_sub(first).and_then(|i| send_ns.get(i as usize))
                            {
                                lat.push(now.saturating_sub(sent.load(Ordering::Acquire)));
                            }
                            last_ns = now;
                            expected = expected.max(n + 1);
                        });
                        if let Err(e) = r {
                            note(&mut errors, &mut bad, e.to_string());
                            stop.store(true, Ordering::SeqCst);
                            break;
                        }
                        acked.store(expected - 1, Ordering::SeqCst);
                        if waiting.load(Ordering::SeqCst) {
                            sender_thread.unpark();
                        }
                    }
                    (errors, lat, last_ns)
                })
        });

        // The sender, on this thread.
        let t0 = clock.ns();
        let end = t0 + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let mut n = first;
        let mut send_error = None;
        let mut slowest = first - 1;
        let min_progress = || {
            progress
                .iter()
                .map(|p| p.load(Ordering::SeqCst))
                .min()
                .unwrap_or(u64::MAX)
        };
        let mut last_move = Instant::now();
        let spawn_ok =
            handles.iter().all(|h| h.is_ok()) && ack_handle.as_ref().is_none_or(|h| h.is_ok());
        if !spawn_ok {
            stop.store(true, Ordering::SeqCst);
        }
        while n < first + max_messages && !stop.load(Ordering::SeqCst) {
            let now = clock.ns();
            if now >= end {
                break;
            }
            match pace {
                Pace::Saturated { window } | Pace::Acked { window } => {
                    // A sender with replies also keeps its own requests in flight
                    // within the window, as a client would: a server may close a
                    // connection whose replies pile up (mpchatd past --queue-len).
                    let gate = || match pace {
                        Pace::Acked { .. } => acked.load(Ordering::SeqCst),
                        _ if has_acks => min_progress().min(acked.load(Ordering::SeqCst)),
                        _ => min_progress(),
                    };
                    if n - slowest > window {
                        let m = gate();
                        if m != slowest {
                            last_move = Instant::now();
                            slowest = m;
                        }
                        if n - slowest > window {
                            waiting.store(true, Ordering::SeqCst);
                            if n - gate() > window {
                                thread::park_timeout(Duration::from_millis(5));
                            }
                            waiting.store(false, Ordering::SeqCst);
                            if last_move.elapsed() > STALL_TIMEOUT {
                                send_error = Some(format!(
                                    "no progress for {STALL_TIMEOUT:?} at message {n}"
                                ));
                                break;
                            }
                            continue;
                        }
                    }
                }
                Pace::Light { rate } => {
                    let due = t0 + (n - first) * 1_000_000_000 / u64::from(rate.max(1));
                    if due > now {
                        thread::sleep(Duration::from_nanos(due - now));
                        continue;
                    }
                    // Open loop, but never unbounded: a receiver this far behind means
                    // the server cannot carry the light load.
                    if n - min_progress() > 100 * SATURATED_WINDOW {
                        send_error = Some(
                            "receivers fell more than 25,600 messages behind the light load".into(),
                        );
                        break;
                    }
                }
            }
            send_ns[(n - first) as usize].store(clock.ns(), Ordering::Release);
            if let Err(e) = sender.send(n) {
                send_error = Some(e.to_string());
                break;
            }
            n += 1;
        }
        let sent = n - first;
        target.store(n - 1, Ordering::SeqCst);
        if send_error.is_some() {
            stop.store(true, Ordering::SeqCst);
        }
        let outcomes: Vec<Result<RecvOutcome, String>> = handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .map_err(|_| "a receiver thread panicked".to_string()),
                Err(e) => Err(format!("cannot start a receiver thread: {e}")),
            })
            .collect();
        let ack_errors = match ack_handle {
            None => (Vec::new(), Vec::new(), 0),
            Some(Ok(h)) => h
                .join()
                .unwrap_or_else(|_| (vec!["the reply reader panicked".into()], Vec::new(), 0)),
            Some(Err(e)) => (
                vec![format!("cannot start the reply reader: {e}")],
                Vec::new(),
                0,
            ),
        };
        ((sent, t0), outcomes, ack_errors, send_error)
    });
    let cpu1 = cpu_ticks(server_pid)?;
    let own1 = cpu_ticks(std::process::id())?;
    let (sent, t0) = sent;
    group.next = first + sent;

    let mut run = RelayRun {
        messages: sent,
        ..RelayRun::default()
    };
    run.server_cpu = ticks(cpu1.saturating_sub(cpu0), ticks_per_s);
    run.client_cpu = ticks(own1.saturating_sub(own0), ticks_per_s);
    if let Some(e) = send_error {
        run.errors.push(format!("sender: {e}"));
    }
    let mut last_ns = t0;
    for o in outcomes {
        match o {
            Ok(o) => {
                run.deliveries += o.received;
                last_ns = last_ns.max(o.last_ns);
                run.latencies.extend(o.latencies);
                run.errors.extend(o.errors);
            }
            Err(e) => run.errors.push(e),
        }
    }
    let (ack_errors, mut ack_latencies, ack_last) = ack_errors;
    run.errors.extend(ack_errors);
    ack_latencies.sort_unstable();
    run.acked = ack_latencies.len() as u64;
    run.ack_latencies = ack_latencies;
    run.ack_elapsed = Duration::from_nanos(ack_last.saturating_sub(t0));
    run.latencies.sort_unstable();
    run.elapsed = Duration::from_nanos(last_ns.saturating_sub(t0));
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_texts_are_100_bytes_and_carry_their_number() {
        let t = text_of(1234);
        assert_eq!(t.len(), TEXT_LEN);
        assert!(t.starts_with(b"0000001234 "));
        assert_ne!(text_of(1), text_of(2));
        assert!(std::str::from_utf8(&t).is_ok());
    }

    /// A receiver that reports a fixed sequence, to check the runner's own checks.
    struct Scripted(Vec<(u64, bool)>);

    impl RecvSide for Scripted {
        fn poll(&mut self, on: &mut dyn FnMut(u64, bool)) -> Result<Polled, BenchError> {
            for (n, ok) in self.0.drain(..) {
                on(n, ok);
            }
            thread::sleep(Duration::from_millis(5));
            Ok(Polled::Idle)
        }
    }

    struct Nowhere;

    impl SendSide for Nowhere {
        fn send(&mut self, _: u64) -> Result<(), BenchError> {
            Ok(())
        }
    }

    #[test]
    fn the_runner_reports_lost_duplicated_and_altered_messages() {
        let mut g = Group {
            wire_bytes: 0,
            payload_len: TEXT_LEN,
            sender: Box::new(Nowhere),
            acks: None,
            receivers: vec![Box::new(Scripted(vec![
                (1, true),
                (1, true),
                (3, false),
                (4, true),
            ]))],
            next: 1,
        };
        let run = run_relay(
            &mut g,
            Pace::Light { rate: 1000 },
            Duration::from_secs(2),
            4,
            std::process::id(),
            100,
        )
        .unwrap();
        let all = run.errors.join("\n");
        assert!(all.contains("message 1 arrived again"), "{all}");
        assert!(all.contains("message 3 arrived early"), "{all}");
        assert!(
            all.contains("message 3 arrived with the wrong bytes"),
            "{all}"
        );
    }
}
