//! The blocking threads' place in the scheduler: a little below the async
//! workers.
//!
//! Each request's CPU work (signature checks, signing, the store) runs on a
//! blocking thread; the TLS handshakes, reads and writes of every connection
//! run on the async workers (one per core). At equal priority, on a busy
//! core, a blocking thread woken for the next request preempts the worker in
//! the middle of a handshake, and each preemption is a context switch and a
//! request that waits. A blocking thread runs [`NICE`] steps nicer than the
//! process's main thread (CFS weights 1024 against about 500 at +3): the
//! worker keeps the core while it has I/O to do, the blocking threads take
//! it in longer slices. Measured with `scripts/bench-ab` (BENCHMARKS.md,
//! issue #14), with 16 blocking threads per core against 8 at equal
//! priority: 5.8 context switches per renewal over a new connection down to
//! 4.4, and 1.09 times the fresh enrollments per second, 1.18 the renewals,
//! 1.03 the kept-alive births.
//!
//! Only ever nicer: an unprivileged process cannot undo it, and does not
//! need to (a blocking thread stays a blocking thread).
//!
//! Off until [`lower_blocking_threads`] turns it on: `iotpki serve` does on
//! SQLite, where the blocking threads' work is CPU. On PostgreSQL they mostly
//! wait on round trips, and the same A/B measured nothing to gain there.
//!
//! # Scarce threads
//!
//! The blocking work handed out is counted, and [`set_blocking_threads`]
//! tells how many threads the runtime has for it: when every one is taken
//! ([`threads_scarce`]), a station's birth does not hold its thread while its
//! record is committed. It queues the record for the store's group commit
//! (`Authority::enroll_queued`) and awaits it on the async worker; the thread
//! signs the next request meanwhile, and one commit takes every birth in
//! flight. Kept-alive births on one core: 0.85 of the server CPU per birth
//! and 1.20 the births per second (`scripts/bench-ab`, BENCHMARKS.md, issue
//! #14). A device's own enrollment or renewal comes with its connection's
//! handshake, which keeps the async worker the busier side: there a queued
//! record's second wake-up of the worker cost more than the thread it freed
//! (0.93 in rate for renewals), so it waits on its thread, as does any
//! request with threads to spare. Without [`set_blocking_threads`] (tests,
//! embedders, PostgreSQL's uncapped pool) threads are never scarce.
//!
//! On PostgreSQL (`iotpki serve` calls [`queue_station_births`]) a station's
//! births are queued whatever the threads: there a birth that waits on its
//! thread waits out its group's round trips to the database. Two nodes on
//! one core: 1.09 the births per second, 0.92 the server CPU per birth (the
//! database's included), 7.2 context switches a birth down to 5.8
//! (`scripts/bench-ab`, 10 rounds, BENCHMARKS.md, issue #14). On SQLite the
//! same switch cost kept-alive births 5% of their rate: there the thread
//! that waits mostly leads the commit itself.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

static ON: AtomicBool = AtomicBool::new(false);

/// Blocking work handed out and not finished (running, or waiting for a thread).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The runtime's blocking threads, once told ([`usize::MAX`]: not told, never scarce).
static THREADS: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The runtime's blocking threads are `n` (its builder's `max_blocking_threads`).
pub fn set_blocking_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// Whether every blocking thread is taken (the caller's own included): work
/// handed out now would wait for a thread.
pub(crate) fn threads_scarce() -> bool {
    IN_FLIGHT.load(Ordering::Relaxed) >= THREADS.load(Ordering::Relaxed)
}

/// The blocking work handed out and not finished (tests).
#[cfg(test)]
pub(crate) fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// Blocking work handed out so far, finished or not (tests).
#[cfg(test)]
static HANDED_OUT: AtomicUsize = AtomicUsize::new(0);

/// Blocking work handed out so far, finished or not (tests).
#[cfg(test)]
pub(crate) fn handed_out() -> usize {
    HANDED_OUT.load(Ordering::Relaxed)
}

/// A station's births queue their records whatever the threads ([`queue_station_births`]).
static QUEUE_BIRTHS: AtomicBool = AtomicBool::new(false);

/// From now on, a station's births queue their records for the store's
/// group commit whether or not threads are scarce: for a store whose commit
/// waits on a database's round trips (PostgreSQL), where a birth waiting on
/// its thread holds that thread through every statement of its group's
/// commit, and wakes with it.
pub fn queue_station_births() {
    QUEUE_BIRTHS.store(true, Ordering::Relaxed);
}

/// Whether a station's birth queues its record now rather than wait for its
/// commit on its thread: always once [`queue_station_births`] was called,
/// else when threads are scarce.
pub(crate) fn queue_birth() -> bool {
    QUEUE_BIRTHS.load(Ordering::Relaxed) || threads_scarce()
}

/// Counts one piece of blocking work out while it lives (also when it panics).
struct InFlight;

impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// From now on, the blocking threads of this process's servers run
/// `NICE` steps below its main thread (each as it next takes work).
pub fn lower_blocking_threads() {
    ON.store(true, Ordering::Relaxed);
}

/// How many nice steps a blocking thread runs below the main thread.
pub(crate) const NICE: i32 = 3;

/// The nice value blocking threads take: the main thread's plus [`NICE`],
/// at most 19 (read once, so that a thread spawned by a blocking thread,
/// which inherits its nice value, does not go lower still).
fn target() -> Option<i32> {
    static TARGET: OnceLock<Option<i32>> = OnceLock::new();
    *TARGET.get_or_init(|| {
        // For PRIO_PROCESS with the process ID, Linux answers the main thread's value.
        rustix::process::getpriority_process(Some(rustix::process::getpid())).ok().map(|n| (n + NICE).min(19))
    })
}

/// `f` on one of the runtime's blocking threads, put at its place first: the
/// one way the server hands work to a blocking thread (`http::blocking`,
/// `events::blocking` map the join error each into its own type).
pub(crate) fn spawn_blocking<T, F>(f: F) -> tokio::task::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let counted = InFlight::new();
    tokio::task::spawn_blocking(move || {
        let _counted = counted;
        lower_this_thread();
        f()
    })
}

/// Put the calling (blocking) thread at its place, once per thread. A
/// refusal of the kernel (a sandbox without setpriority) leaves it where it
/// was: only the speed depends on it.
fn lower_this_thread() {
    thread_local! { static DONE: Cell<bool> = const { Cell::new(false) }; }
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    DONE.with(|done| {
        if done.replace(true) {
            return;
        }
        if let Some(nice) = target() {
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
                tracing::debug!(error = %e, "could not lower a blocking thread's priority");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stations_births_queue_when_threads_are_scarce_and_always_once_asked() {
        set_blocking_threads(4);
        assert!(!queue_birth(), "threads to spare, not asked: a birth waits on its thread");
        let held: Vec<_> = (0..4).map(|_| InFlight::new()).collect();
        assert!(queue_birth(), "every thread taken: queued");
        drop(held);
        assert!(!queue_birth());
        queue_station_births();
        assert!(queue_birth(), "asked (PostgreSQL): queued with threads to spare");
    }

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[tokio::test]
    async fn blocking_work_runs_nicer_than_the_workers_and_only_once_lower() {
        lower_blocking_threads();
        let worker = nice_of_this_thread();
        let main = rustix::process::getpriority_process(Some(rustix::process::getpid())).unwrap();
        let want = (main + NICE).min(19);
        // Through the server's own helper, as every request's work runs.
        let (first, again) = crate::http::blocking(|| {
            let first = nice_of_this_thread();
            lower_this_thread();
            (first, nice_of_this_thread())
        })
        .await
        .unwrap();
        assert_eq!(first, want, "the blocking thread runs at the main thread's nice + {NICE}");
        assert_eq!(again, want, "and no lower when asked again");
        // A thread that blocking work spawns inherits the value; it does not sink further.
        let nested = crate::http::blocking(|| {
            std::thread::spawn(|| {
                lower_this_thread();
                nice_of_this_thread()
            })
            .join()
            .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(nested, want);
        assert_eq!(nice_of_this_thread(), worker, "the thread driving the async tasks keeps its priority");
    }
}
