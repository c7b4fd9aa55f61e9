//! Lanes: one tenant's slot on a device, with a share that is enforced.
//!
//! On the CPU a share `s` of a device with `N` cores is enforced two ways: the lane's
//! backend uses at most `ceil(s·N)` worker threads, and a token bucket refilled at `s·N`
//! core-seconds per second pays for the work. Each unit of work (a training step, an
//! inference batch) first waits until the bucket is not in debt, then is charged the CPU time
//! its threads used. Over any interval longer than the bucket's burst, the lane therefore
//! uses at most `s` of the device, whatever the other lanes do — the mechanism of Linux's CFS
//! bandwidth control, at the granularity of one unit of work. CPU time, not wall time × threads,
//! is charged: when lanes' threads compete for the cores, wall time stretches for all of them
//! and would charge each for the others' work.
//!
//! Lanes that run parallel work (training) also draw their worker threads from the device's
//! [`CorePermits`]: a unit of work takes as many cores as its budget allows and are free, at
//! least one, and gives them back when it ends. Parallel work that shares cores with other
//! threads stalls at every synchronisation point when one of its threads is descheduled, so
//! the threads of such lanes never outnumber the cores. Latency lanes (inference batches,
//! one thread for tens of microseconds) take no permit: they never wait behind a training
//! step, at the price of briefly sharing a core with one.
//!
//! A lane that is not enforced (the `none` policy: everything runs as it comes) never waits
//! for its share and uses every worker; it still counts what it used.
//!
//! A lane on a part of the CPU (`device.cpu_split`) also waits for the part's time
//! ([`PartBudget`]), under every policy: the part stands for a smaller device, and that is
//! not a policy's choice. Latency lanes wait for it too, before each batch ([`Lane::pace`]).

use super::part::{PartBudget, WorkKind};
use crate::util::sync;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest stretch of idle time a lane may bank: a lane idle for longer starts with this much
/// credit, so one short burst runs at once but a long one is held to the share.
const BURST: Duration = Duration::from_millis(50);

/// The smallest share a lane runs at: the controller's floor.
pub use crate::control::MIN_SHARE;

/// The cores of a device, handed out to parallel lanes one unit of work at a time.
#[derive(Debug)]
pub struct CorePermits {
    total: usize,
    state: Mutex<PermitState>,
    freed: Condvar,
}

#[derive(Debug)]
struct PermitState {
    free: usize,
    waiting: usize,
}

impl CorePermits {
    /// Permits for `cores` cores.
    pub fn new(cores: usize) -> Arc<Self> {
        let total = cores.max(1);
        Arc::new(CorePermits {
            total,
            state: Mutex::new(PermitState {
                free: total,
                waiting: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// Takes between 1 and `want` cores, as many as are free, waiting for one if none is. A
    /// taker leaves one free core for each lane already waiting, so a wide lane cannot keep
    /// a narrow one out by always taking every core as it comes back.
    pub fn take(&self, want: usize) -> usize {
        loop {
            if let Some(n) = self.take_within(want, Duration::from_secs(3600)) {
                return n;
            }
        }
    }

    /// Like [`CorePermits::take`], giving up after `timeout` with None.
    pub(crate) fn take_within(&self, want: usize, timeout: Duration) -> Option<usize> {
        let want = want.clamp(1, self.total);
        let mut st = sync::lock(&self.state);
        if st.free > st.waiting {
            let got = want.min(st.free - st.waiting);
            st.free -= got;
            return Some(got);
        }
        let deadline = Instant::now() + timeout;
        st.waiting += 1;
        while st.free == 0 {
            let now = Instant::now();
            if now >= deadline {
                st.waiting -= 1;
                return None;
            }
            st = sync::wait_timeout(&self.freed, st, deadline - now).0;
        }
        st.waiting -= 1;
        let got = want.min(st.free);
        st.free -= got;
        Some(got)
    }

    /// Gives back `n` cores.
    pub fn give(&self, n: usize) {
        let mut st = sync::lock(&self.state);
        st.free = (st.free + n).min(self.total);
        self.freed.notify_all();
    }

    /// Cores free now.
    pub fn free(&self) -> usize {
        sync::lock(&self.state).free
    }
}

/// Workers handed to one unit of work by [`Lane::take_workers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "give the workers back with Lane::give_workers"]
pub(crate) struct Workers {
    /// Threads the work may use.
    pub n: usize,
    /// Device permits among them, to give back.
    permits: usize,
}

/// A token bucket of core-seconds, refilled at a rate its owner gives at each call and
/// holding at most [`BURST`] of it.
#[derive(Debug)]
pub(super) struct Bucket {
    /// Credit in core-seconds; negative is debt.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// An empty bucket (no credit, no debt).
    pub(super) fn new() -> Self {
        Bucket {
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Adds the credit earned at `rate` core-seconds per second since the last call.
    fn refill(&mut self, rate: f64) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + rate * dt).min(rate * BURST.as_secs_f64());
        self.last = now;
    }

    /// How long until the debt is paid back at `rate` (zero without debt).
    pub(super) fn wait_time(&mut self, rate: f64) -> Duration {
        self.refill(rate);
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Charges `core_s` core-seconds of work, refilling at `rate` first.
    pub(super) fn charge(&mut self, rate: f64, core_s: f64) {
        self.refill(rate);
        self.tokens -= core_s;
    }
}

/// A tenant's slot on a device.
#[derive(Debug)]
pub struct Lane {
    name: String,
    /// Index of the node's device the lane is on.
    device: usize,
    cores: usize,
    /// Core-seconds per second the device offers at share 1 (`cores`, or less on a part of
    /// the CPU that is a fraction of its cores).
    capacity: f64,
    background: AtomicBool,
    permits: Option<Arc<CorePermits>>,
    share_bits: AtomicU64,
    enforced: AtomicBool,
    bucket: Mutex<Bucket>,
    /// The budget of the part of the CPU the lane is on, when it is less than the whole CPU.
    part: Option<Arc<PartBudget>>,
    used_core_ns: AtomicU64,
    busy_ns: AtomicU64,
    throttled_ns: AtomicU64,
    /// The most workers its units of work could use, as seen so far (0: not known).
    width: AtomicUsize,
}

/// What a lane has used, cumulatively.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaneUsage {
    /// Core-seconds charged.
    pub core_s: f64,
    /// Wall seconds spent working.
    pub busy_s: f64,
    /// Wall seconds spent waiting for credit.
    pub throttled_s: f64,
}

impl Lane {
    /// A latency lane on a device of `cores` workers, starting at `share`, enforced.
    pub fn new(name: &str, cores: usize, share: f64) -> Self {
        Self::build(name, cores, share, None)
    }

    /// A parallel lane whose worker threads come from the device's `permits`.
    pub fn parallel(name: &str, permits: &Arc<CorePermits>, share: f64) -> Self {
        Self::build(name, permits.total, share, Some(permits.clone()))
    }

    fn build(name: &str, cores: usize, share: f64, permits: Option<Arc<CorePermits>>) -> Self {
        Lane {
            name: name.to_string(),
            device: 0,
            cores: cores.max(1),
            capacity: cores.max(1) as f64,
            background: AtomicBool::new(false),
            permits,
            share_bits: AtomicU64::new(clamp_share(share).to_bits()),
            enforced: AtomicBool::new(true),
            bucket: Mutex::new(Bucket::new()),
            part: None,
            used_core_ns: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            width: AtomicUsize::new(0),
        }
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same lane on the node's device `device` (an index; 0 unless the node has several).
    pub(crate) fn on_device(mut self, device: usize) -> Self {
        self.device = device;
        self
    }

    /// The same lane on a device that offers `capacity` core-seconds per second at share 1
    /// (at most its cores): the token bucket's rate at share `s` is `s × capacity`.
    pub(crate) fn with_capacity(mut self, capacity: f64) -> Self {
        if capacity.is_finite() && capacity > 0.0 {
            self.capacity = capacity.min(self.cores as f64);
        }
        self
    }

    /// Core-seconds per second the lane's device offers at share 1.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Index of the node's device the lane is on.
    pub fn device(&self) -> usize {
        self.device
    }

    /// Workers of the device.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The share in force.
    pub fn share(&self) -> f64 {
        f64::from_bits(self.share_bits.load(Ordering::Relaxed))
    }

    /// Sets the share (clamped to `[MIN_SHARE, 1]`); takes effect from the next unit of work.
    pub(crate) fn set_share(&self, share: f64) {
        let share = clamp_share(share);
        let old = self.share();
        if share != old {
            // Credit banked at the old rate is capped at the new burst.
            let mut b = self.lock();
            b.refill(old * self.capacity);
            b.tokens = b.tokens.min(share * self.capacity * BURST.as_secs_f64());
            self.share_bits.store(share.to_bits(), Ordering::Relaxed);
        }
    }

    /// Records how many workers a unit of work could have used (see
    /// [`crate::device::Backend::take_width`]); the lane keeps the most it has seen.
    pub(crate) fn note_width(&self, width: super::Width) {
        self.width
            .fetch_max(width.workers(self.cores), Ordering::Relaxed);
    }

    /// The most workers its units of work could use, when known: share beyond
    /// `width / capacity` would buy it nothing.
    pub fn width(&self) -> Option<usize> {
        Some(self.width.load(Ordering::Relaxed)).filter(|w| *w > 0)
    }

    /// Whether the lane's threads should run at background priority (training lanes under a
    /// policy that prioritises; the thread that starts the lane's work reads it).
    pub(crate) fn is_background(&self) -> bool {
        self.background.load(Ordering::Relaxed)
    }

    /// Marks the lane's threads for background priority.
    pub(crate) fn set_background(&self, on: bool) {
        self.background.store(on, Ordering::Relaxed);
    }

    /// Whether the share is enforced.
    pub(crate) fn is_enforced(&self) -> bool {
        self.enforced.load(Ordering::Relaxed)
    }

    /// Turns enforcement on or off (off: the `none` policy).
    pub(crate) fn set_enforced(&self, on: bool) {
        self.enforced.store(on, Ordering::Relaxed);
    }

    /// Worker threads the lane may use: `ceil(share · capacity)`, at least 1; all of them
    /// when not enforced.
    pub fn workers(&self) -> usize {
        if !self.is_enforced() {
            return self.cores;
        }
        ((self.share() * self.capacity - 1e-9).ceil() as usize).clamp(1, self.cores)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        sync::lock(&self.bucket)
    }

    /// How long the next unit of work must wait for its share's credit (zero when it may
    /// start now).
    pub(crate) fn wait_time(&self) -> Duration {
        if !self.is_enforced() {
            return Duration::ZERO;
        }
        let rate = self.share() * self.capacity;
        self.lock().wait_time(rate)
    }

    /// The same lane on a part of the CPU whose time `part` holds to its size.
    pub(crate) fn on_part(mut self, part: Arc<PartBudget>) -> Self {
        self.part = Some(part);
        self
    }

    /// Whether the lane runs parallel work (training) rather than latency work (batches).
    fn kind(&self) -> WorkKind {
        if self.permits.is_some() {
            WorkKind::Parallel
        } else {
            WorkKind::Latency
        }
    }

    /// Blocks until the lane may start a unit of work: until its share's credit allows it,
    /// and on a part of the CPU until the part's does. Waits in slices of at most 10 ms so
    /// that a raised share takes effect quickly.
    pub(crate) fn acquire(&self) {
        let start = Instant::now();
        loop {
            let wait = self.wait_time();
            if wait.is_zero() {
                break;
            }
            std::thread::sleep(wait.min(Duration::from_millis(10)));
        }
        if let Some(part) = &self.part {
            part.wait(self.kind());
        }
        self.count_throttled(start.elapsed());
    }

    /// Blocks until the part of the CPU the lane is on has time for its next unit of latency
    /// work; returns at once on a whole device. A latency lane is not held to its share (its
    /// batches never wait behind it), but a part is a device of its own size.
    pub(crate) fn pace(&self) {
        if let Some(part) = &self.part {
            let waited = part.wait(self.kind());
            self.count_throttled(waited);
        }
    }

    fn count_throttled(&self, waited: Duration) {
        if !waited.is_zero() {
            self.throttled_ns
                .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Charges a unit of work that took `wall` and used `core` of processor time.
    pub(crate) fn charge(&self, wall: Duration, core: Duration) {
        let core_s = core.as_secs_f64();
        self.used_core_ns
            .fetch_add(core.as_nanos() as u64, Ordering::Relaxed);
        self.busy_ns
            .fetch_add(wall.as_nanos() as u64, Ordering::Relaxed);
        if self.is_enforced() {
            let rate = self.share() * self.capacity;
            self.lock().charge(rate, core_s);
        }
        if let Some(part) = &self.part {
            part.charge(self.kind(), core_s);
        }
    }

    /// Runs `work` as one unit: waits for credit, runs it with the workers it may use, and
    /// charges the processor time `cpu_time` (a cumulative clock of the lane's threads) says
    /// it used.
    pub fn run<R>(&self, cpu_time: impl Fn() -> Duration, work: impl FnOnce(usize) -> R) -> R {
        self.acquire();
        let workers = self.take_workers();
        let c0 = cpu_time();
        let t0 = Instant::now();
        let r = work(workers.n);
        let wall = t0.elapsed();
        self.give_workers(workers);
        self.charge(wall, cpu_time().saturating_sub(c0));
        r
    }

    /// The workers the next unit of work may use: within the share's budget and, for a
    /// parallel lane, as many of the device's cores as are free (at least one, waiting for
    /// it). Hand the result back with [`Lane::give_workers`], whatever happens meanwhile.
    pub(crate) fn take_workers(&self) -> Workers {
        let Some(p) = &self.permits else {
            return Workers {
                n: self.workers(),
                permits: 0,
            };
        };
        // No more than its work can use: a step too small to split holds one core, whatever
        // its share. A lane whose enforcement is turned off while it waits stops waiting.
        let most = self.width().unwrap_or(usize::MAX);
        while self.is_enforced() {
            if let Some(n) = p.take_within(self.workers().min(most), Duration::from_millis(10)) {
                return Workers { n, permits: n };
            }
        }
        Workers {
            n: self.workers(),
            permits: 0,
        }
    }

    /// Returns workers taken with [`Lane::take_workers`]: exactly the permits taken, even if
    /// enforcement changed in between.
    pub(crate) fn give_workers(&self, w: Workers) {
        if w.permits > 0
            && let Some(p) = &self.permits
        {
            p.give(w.permits);
        }
    }

    /// What the lane has used so far.
    pub fn usage(&self) -> LaneUsage {
        LaneUsage {
            core_s: self.used_core_ns.load(Ordering::Relaxed) as f64 / 1e9,
            busy_s: self.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
            throttled_s: self.throttled_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

fn clamp_share(s: f64) -> f64 {
    if s.is_nan() {
        MIN_SHARE
    } else {
        s.clamp(MIN_SHARE, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_hand_out_what_is_free_and_at_least_one() {
        let p = CorePermits::new(2);
        assert_eq!(p.take(5), 2);
        assert_eq!(p.free(), 0);
        p.give(1);
        assert_eq!(p.take(2), 1);
        p.give(2);
        assert_eq!(p.free(), 2);
        // A taker blocked on an empty pool wakes when a core is given back.
        let a = p.take(2);
        let p2 = p.clone();
        let t = std::thread::spawn(move || p2.take(1));
        std::thread::sleep(Duration::from_millis(20));
        p.give(a);
        assert_eq!(t.join().unwrap(), 1);
    }

    #[test]
    fn workers_follow_the_share() {
        let lane = Lane::new("a", 4, 0.25);
        assert_eq!(lane.workers(), 1);
        lane.set_share(0.26);
        assert_eq!(lane.workers(), 2);
        lane.set_share(1.0);
        assert_eq!(lane.workers(), 4);
        lane.set_share(0.0);
        assert_eq!(lane.share(), MIN_SHARE);
        assert_eq!(lane.workers(), 1);
        lane.set_enforced(false);
        assert_eq!(lane.workers(), 4);
    }

    #[test]
    fn debt_is_paid_back_at_the_share_rate() {
        // 2 cores at share 0.5: 1 core-second per second. 20 ms of work on 1 worker costs
        // 20 ms of credit, so the next unit waits about 20 ms minus the banked burst.
        let lane = Lane::new("a", 2, 0.5);
        lane.charge(Duration::from_millis(20), Duration::from_millis(20));
        let wait = lane.wait_time();
        assert!(
            wait > Duration::from_millis(15) && wait <= Duration::from_millis(20),
            "{wait:?}"
        );
        let t = Instant::now();
        lane.acquire();
        assert!(t.elapsed() >= Duration::from_millis(15));
        assert!(lane.usage().throttled_s > 0.0);
        assert!((lane.usage().core_s - 0.02).abs() < 1e-9);
        // Not enforced: never waits.
        lane.charge(Duration::from_millis(500), Duration::from_millis(1000));
        lane.set_enforced(false);
        assert_eq!(lane.wait_time(), Duration::ZERO);
    }
}
