//! The direct path: N PKCS#11 sessions in this process, one thread each, signing digests with
//! the gateway's mechanism and no gateway in between. It is the baseline the gateway is
//! compared with.

use super::procfs::Proc;
use super::stats::{Sample, Tally, Window};
use crate::hsm::bench::{DirectKey, DirectSession, DirectToken};
use std::time::{Duration, Instant};

/// What a direct run measured.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) tally: Tally,
    pub(crate) window: Duration,
    /// CPU seconds this process spent in the window (the signing threads; nothing else runs).
    pub(crate) cpu_seconds: Option<f64>,
}

/// Signs with `threads` sessions for the window, closed loop, or open loop at `rate` requests
/// per second in total, spreading the requests over `keys` round robin. Blocking.
///
/// # Errors
/// When a session cannot be opened.
pub(crate) fn run(
    token: &DirectToken,
    keys: &[DirectKey],
    digest_len: usize,
    threads: usize,
    warmup: Duration,
    duration: Duration,
    rate: Option<f64>,
) -> Result<Measured, String> {
    let sessions = (0..threads)
        .map(|_| token.session())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("direct: cannot open a session: {e}"))?;
    let window = Window::after(warmup, duration);
    let (tally, cpu) = std::thread::scope(|scope| {
        let workers: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(i, session)| {
                // Each thread paces at its share of the rate, offset so they do not fire together.
                let pace = rate.map(|r| {
                    let interval = Duration::from_secs_f64(threads as f64 / r);
                    (interval, interval.mul_f64(i as f64 / threads as f64))
                });
                scope.spawn(move || worker(&session, keys, i, threads, digest_len, window, pace))
            })
            .collect();
        let cpu = measure_cpu(window);
        let mut tally = Tally::default();
        for w in workers {
            tally.merge(w.join().expect("a direct worker panicked"));
        }
        (tally, cpu)
    });
    Ok(Measured {
        tally,
        window: window.length(),
        cpu_seconds: cpu,
    })
}

/// This process's CPU time between the window's start and end.
fn measure_cpu(window: Window) -> Option<f64> {
    sleep_until(window.start);
    let before = Proc::Myself.cpu_seconds().ok()?;
    sleep_until(window.end);
    let after = Proc::Myself.cpu_seconds().ok()?;
    Some(after - before)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn worker(
    session: &DirectSession,
    keys: &[DirectKey],
    index: usize,
    threads: usize,
    digest_len: usize,
    window: Window,
    pace: Option<(Duration, Duration)>,
) -> Tally {
    let mut tally = Tally::default();
    let mut digest = vec![0u8; digest_len];
    rand::fill(&mut digest[..]);
    let mut next = pace.map(|(_, offset)| Instant::now() + offset);
    let mut n: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= window.end {
            break;
        }
        // Open loop: latency counts from the scheduled time when the worker is behind (queueing
        // is the system's), from the actual send when it slept (timer wake-up is not).
        let began = match (&mut next, pace) {
            (Some(at), Some((interval, _))) => {
                let scheduled = *at;
                *at += interval;
                if scheduled > now {
                    sleep_until(scheduled);
                    Instant::now()
                } else {
                    scheduled
                }
            }
            _ => now,
        };
        n += 1;
        let key = (index + (n as usize) * threads) % keys.len();
        digest[..8].copy_from_slice(&n.to_be_bytes());
        let outcome = session.sign(&keys[key], &digest);
        let done = Instant::now();
        if !window.contains(done) {
            continue;
        }
        match outcome {
            Ok(signature) => {
                if tally.ok(done - began) {
                    tally.samples.push(Sample {
                        key,
                        digest: digest.clone(),
                        signature,
                    });
                }
            }
            Err(e) => tally.error(error_kind(&e), || e.to_string()),
        }
    }
    tally
}

fn error_kind(e: &crate::hsm::HsmError) -> String {
    match e.class() {
        Some(class) => format!("{class:?}"),
        None => "other".into(),
    }
}
