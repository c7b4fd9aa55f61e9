//! A lane on a GPU: where its work runs (its own stream, or partition leases), its share,
//! its staging arena and the time it is charged. The operations themselves are in `ops.rs`.

use crate::util::sync;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::StreamPriority;
use super::device::CudaDevice;
use super::driver::CuError;
use super::graph::Plan;
use super::green::Lease;
use super::memory::{DevMem, Staging};
use super::partition::{Side, groups_for};
use super::place::Place;
use crate::device::DeviceError;

pub use super::memory::{CudaBf16, CudaBuf, CudaLabels};

/// A lane on a GPU.
pub struct CudaBackend {
    pub(super) dev: Arc<CudaDevice>,
    pub(super) id: u64,
    priority: i32,
    side: Side,
    /// The CTAs the controller gives the lane (its share × the device's CTAs).
    want: AtomicUsize,
    state: Mutex<LaneState>,
    busy_ns: AtomicU64,
    charged_ns: AtomicU64,
    /// [`crate::device::Precision`] of the GEMMs, as its code.
    pub(super) precision: std::sync::atomic::AtomicU8,
    /// Repeated bodies queued one launch at a time, built into a graph, and replayed.
    graph_counts: [AtomicU64; 3],
}

/// How a lane's repeated bodies went out ([`crate::device::Backend::repeated`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphCounts {
    /// Queued one launch at a time at their end (a shape not yet repeated, a failed body, a
    /// graph refused). Not counted: bodies with graphs off, bodies that held nothing, and
    /// bodies a copy or a synchronisation broke (their launches went out before the end).
    pub plain: u64,
    /// Built into a new graph, then launched as one.
    pub built: u64,
    /// Launched as a graph built before.
    pub replayed: u64,
}

/// What one unit of work uses, under the lane's lock.
pub(super) struct LaneState {
    /// The lane's own place, with CTA budgets.
    home: Option<Place>,
    /// The current partition lease, with green contexts.
    lease: Option<Lease>,
    /// The groups of the last lease, preferred for the next.
    last: Option<Range<usize>>,
    pub(super) staging: Staging,
    /// Per-block partial sums of `sum`.
    pub(super) partials: Option<DevMem>,
    /// The bf16 copies of a mixed-precision GEMM's two operands, grown as products need.
    pub(super) bf16: [Option<DevMem>; 2],
}

/// What an operation sees while it queues work.
pub(super) struct Unit<'a> {
    pub(super) place: &'a mut Place,
    pub(super) staging: &'a mut Staging,
    pub(super) partials: &'a mut Option<DevMem>,
    /// CTAs a launch may use.
    pub(super) budget: usize,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.dev.info.index)
            .field("priority", &self.priority)
            .field("want", &self.want.load(Ordering::Relaxed))
            .finish()
    }
}

impl CudaBackend {
    pub(super) fn new(
        dev: Arc<CudaDevice>,
        kind: StreamPriority,
        priority: i32,
    ) -> Result<Self, DeviceError> {
        let home = match &dev.green {
            Some(_) => None,
            None => Some(
                Place::new(dev.primary, None, priority, dev.funcs, dev.info.sm_count)
                    .map_err(|e| unavailable(&dev, e))?,
            ),
        };
        let id = dev.next_lane.fetch_add(1, Ordering::Relaxed);
        let max = dev.max_ctas();
        Ok(CudaBackend {
            id,
            priority,
            side: match kind {
                StreamPriority::Highest => Side::Low,
                _ => Side::High,
            },
            want: AtomicUsize::new(max),
            state: Mutex::new(LaneState {
                home,
                lease: None,
                last: None,
                staging: Staging::new(dev.primary),
                partials: None,
                bf16: [None, None],
            }),
            busy_ns: AtomicU64::new(0),
            charged_ns: AtomicU64::new(0),
            precision: std::sync::atomic::AtomicU8::new(0),
            graph_counts: Default::default(),
            dev,
        })
    }

    /// The device this lane is on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// The stream's priority (numerically lower is higher).
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// GPU time of this lane's operations so far, up to the last synchronisation.
    pub(crate) fn busy_time(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }

    /// CTAs the controller gives the lane, within the device's.
    pub(super) fn wanted_ctas(&self) -> usize {
        self.want
            .load(Ordering::Relaxed)
            .clamp(1, self.dev.max_ctas().max(1))
    }

    pub(super) fn set_wanted_ctas(&self, ctas: usize) {
        self.want
            .store(ctas.clamp(1, self.dev.max_ctas().max(1)), Ordering::Relaxed);
    }

    /// CTAs the lane launches with now: its budget, or with partitions what the groups it
    /// would lease hold.
    pub(super) fn ctas_in_force(&self) -> usize {
        let max = self.dev.max_ctas().max(1);
        match &self.dev.green {
            None => self.wanted_ctas(),
            Some(g) => {
                let groups = groups_for(self.wanted_ctas() as f64 / max as f64, g.groups());
                let sms: u32 = g.group_sms().iter().take(groups).sum();
                (sms as usize * self.dev.blocks_per_sm as usize).clamp(1, max)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneState> {
        sync::lock(&self.state)
    }

    /// The error a failed driver call becomes: a sticky one fails the whole device.
    pub(super) fn fault(&self, e: CuError) -> DeviceError {
        if e.is_sticky() {
            self.dev.health.fail(e.to_string());
            if let Some(failed) = self.dev.health.failure() {
                return failed;
            }
        }
        unavailable(&self.dev, e)
    }

    /// Runs `op` on the lane's place (taking a partition lease first when the lane holds
    /// none), with the place's context current. With `finish`, the unit then ends: the
    /// stream is synchronised, its GPU time charged and the lease given back.
    pub(super) fn run<R>(
        &self,
        finish: bool,
        op: impl FnOnce(&mut Unit<'_>) -> Result<R, CuError>,
    ) -> Result<R, DeviceError> {
        let mut st = self.lock();
        let value = self.run_locked(&mut st, op)?;
        if finish {
            self.finish(&mut st)?;
        }
        Ok(value)
    }

    /// Runs `op`, ends the unit, then runs `after` on its result while the lane is still
    /// locked (so a staging region `op` filled is read before anything reuses it).
    pub(super) fn run_then<R, T>(
        &self,
        op: impl FnOnce(&mut Unit<'_>) -> Result<R, CuError>,
        after: impl FnOnce(R) -> T,
    ) -> Result<T, DeviceError> {
        let mut st = self.lock();
        let value = self.run_locked(&mut st, op)?;
        self.finish(&mut st)?;
        Ok(after(value))
    }

    /// The lane's bf16 scratch `slot` (0 or 1, one per operand) for `len` elements: its
    /// device address, the buffer reallocated only when it is too small. The lane's work is
    /// ordered on one stream within a unit and drained between units, so a GEMM queued on
    /// the old contents has run before the next conversion overwrites them.
    pub(super) fn bf16_scratch(
        &self,
        slot: usize,
        len: usize,
    ) -> Result<cudarc::driver::sys::CUdeviceptr, DeviceError> {
        let mut st = self.lock();
        let bytes = len.max(1) * 2;
        if st.bf16[slot].as_ref().is_none_or(|m| m.bytes() < bytes) {
            // Freed first (the driver waits for work using it), then the larger one; launches
            // a repeated body recorded are queued before, as they name the old one.
            if let Some(place) = place_of(&mut st) {
                place.flush().map_err(|e| self.fault(e))?;
            }
            st.bf16[slot] = None;
            st.bf16[slot] = Some(DevMem::alloc(&self.dev, bytes)?);
        }
        Ok(st.bf16[slot].as_ref().map_or(0, |m| m.ptr))
    }

    /// Queues what a repeated body has recorded so far, before memory its launches name is
    /// freed; the rest of the body runs plainly.
    pub(super) fn flush_recorded(&self) -> Result<(), DeviceError> {
        let mut st = self.lock();
        match place_of(&mut st) {
            Some(place) => place.flush().map_err(|e| self.fault(e)),
            None => Ok(()),
        }
    }

    /// Starts a repeated body on the lane's place (taking a partition lease first when it
    /// holds none): its launches are recorded until [`CudaBackend::end_repeat`].
    pub(super) fn begin_repeat(&self) -> Result<(), DeviceError> {
        self.dev.health.check()?;
        let mut st = self.lock();
        self.ensure_place(&mut st)?;
        if let Some(place) = place_of(&mut st) {
            place.begin_repeat();
        }
        Ok(())
    }

    /// Ends a repeated body: its launches are queued, as one graph launch where
    /// [`super::graph`] says so, and counted.
    pub(super) fn end_repeat(&self, failed: bool) -> Result<(), DeviceError> {
        let mut st = self.lock();
        let Some(place) = place_of(&mut st) else {
            return Ok(());
        };
        let plan = place
            .enter()
            .and_then(|_cur| place.end_repeat(failed))
            .map_err(|e| self.fault(e))?;
        let counter = match plan {
            None => return Ok(()),
            Some(Plan::Plain) => 0,
            Some(Plan::Build) => 1,
            Some(Plan::Replay { .. }) => 2,
        };
        self.graph_counts[counter].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How the lane's repeated bodies went out so far.
    pub fn graph_counts(&self) -> GraphCounts {
        let [plain, built, replayed] = &self.graph_counts;
        GraphCounts {
            plain: plain.load(Ordering::Relaxed),
            built: built.load(Ordering::Relaxed),
            replayed: replayed.load(Ordering::Relaxed),
        }
    }

    /// Allocates the lane's partial-sum buffer of `bytes` if it has none.
    pub(super) fn ensure_partials(&self, bytes: usize) -> Result<(), DeviceError> {
        let mut st = self.lock();
        if st.partials.is_none() {
            st.partials = Some(DevMem::alloc(&self.dev, bytes)?);
        }
        Ok(())
    }

    fn run_locked<R>(
        &self,
        st: &mut LaneState,
        op: impl FnOnce(&mut Unit<'_>) -> Result<R, CuError>,
    ) -> Result<R, DeviceError> {
        self.dev.health.check()?;
        self.ensure_place(st)?;
        let budget = self.budget_of(st);
        let result = {
            let LaneState {
                home,
                lease,
                staging,
                partials,
                ..
            } = st;
            let place = match (home.as_mut(), lease.as_mut()) {
                (Some(p), _) => p,
                (None, Some(l)) => &mut l.place,
                (None, None) => return Err(Self::lost_place()),
            };
            let entered = place.enter();
            entered.and_then(|_cur| {
                op(&mut Unit {
                    place,
                    staging,
                    partials,
                    budget,
                })
            })
        };
        result.map_err(|e| self.fault(e))
    }

    fn lost_place() -> DeviceError {
        DeviceError::Unavailable("the lane has no stream to run on".into())
    }

    fn ensure_place(&self, st: &mut LaneState) -> Result<(), DeviceError> {
        let Some(g) = &self.dev.green else {
            return Ok(());
        };
        if st.lease.is_some() {
            return Ok(());
        }
        let max = self.dev.max_ctas().max(1);
        let want = groups_for(self.wanted_ctas() as f64 / max as f64, g.groups());
        let lease = g
            .lease(self.id, want, self.side, self.priority, st.last.clone())
            .map_err(|e| DeviceError::Unavailable(format!("cuda:{}: {e}", self.dev.info.index)))?;
        st.last = Some(lease.range.clone());
        st.lease = Some(lease);
        Ok(())
    }

    fn budget_of(&self, st: &LaneState) -> usize {
        match &st.lease {
            Some(l) => (l.place.sms() as usize * self.dev.blocks_per_sm as usize).max(1),
            None => self.wanted_ctas(),
        }
    }

    /// Ends the unit of work: waits for the stream, charges its GPU time × the CTAs in
    /// force, gives back the lease and frees the staging arena.
    fn finish(&self, st: &mut LaneState) -> Result<(), DeviceError> {
        let budget = self.budget_of(st);
        let timed = match (st.home.as_mut(), st.lease.as_mut()) {
            (Some(p), _) => p.finish(),
            (None, Some(l)) => l.place.finish(),
            (None, None) => return Ok(()),
        };
        if let Some(lease) = st.lease.take()
            && let Some(g) = &self.dev.green
        {
            g.end(self.id, lease);
        }
        st.staging.reset();
        let busy = timed.map_err(|e| self.fault(e))?;
        let ns = busy.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        self.charged_ns
            .fetch_add(ns.saturating_mul(budget as u64), Ordering::Relaxed);
        Ok(())
    }

    /// Ends the unit of work (see [`CudaBackend::run`]).
    pub(super) fn end_unit(&self) -> Result<(), DeviceError> {
        self.dev.health.check()?;
        let mut st = self.lock();
        self.finish(&mut st)
    }

    /// Worker-seconds charged so far: GPU time × CTAs in force.
    pub(super) fn charged(&self) -> Duration {
        Duration::from_nanos(self.charged_ns.load(Ordering::Relaxed))
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let st = sync::get_mut(&mut self.state);
        if let Some(mut lease) = st.lease.take() {
            let _ = lease.place.drain();
            let _ = lease.place.finish();
            if let Some(g) = &self.dev.green {
                g.end(self.id, lease);
            }
        }
        if let Some(home) = st.home.take() {
            home.destroy();
        }
    }
}

/// The place the lane's work runs on now: its own, or the lease it holds.
fn place_of(st: &mut LaneState) -> Option<&mut Place> {
    match (st.home.as_mut(), st.lease.as_mut()) {
        (Some(p), _) => Some(p),
        (None, Some(l)) => Some(&mut l.place),
        (None, None) => None,
    }
}

fn unavailable(dev: &CudaDevice, e: CuError) -> DeviceError {
    DeviceError::Unavailable(format!("cuda:{}: {e}", dev.info.index))
}
