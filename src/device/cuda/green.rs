//! Green contexts: SM partitions of one GPU (CUDA driver 12.4 or newer), handed to lanes as
//! leases that never overlap (see [`super::partition`] for the policy).
//!
//! The device's SMs are split once into groups of [`GROUP_SMS`] (Hopper's partition
//! granularity; 16 groups of an H200's 132 SMs, the other 4 SMs in no group). A lease is a
//! contiguous run of groups; its green context, built from exactly those groups, is created
//! on first use and kept, with one [`Place`] (a stream at the lane's priority, the kernels'
//! functions and timing events, all created with that green context current) per priority.
//! A lane takes the place out of the cache for its lease and puts it back when the lease
//! ends, so each green context is current on at most one thread at a time, as the driver
//! requires, and everything used on its streams belongs to it.

use crate::util::sync;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use cudarc::driver::sys;

use super::Kernel;
use super::driver::{self, CuError, Current};
use super::partition::{Partitions, Side};
use super::place::{Funcs, Place};

/// SMs per group of the split.
pub(crate) const GROUP_SMS: u32 = 8;

/// The lowest driver version (as `cuDriverGetVersion` reports it) with green contexts.
pub(crate) const MIN_DRIVER: i32 = 12040;

/// How long a lane waits for a group to be given back before its unit fails.
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// One green context over a run of groups.
struct Green {
    green: sys::CUgreenCtx,
    ctx: sys::CUcontext,
    funcs: Funcs,
    sms: u32,
}

/// The partitions of one GPU.
pub(crate) struct GreenContexts {
    dev: sys::CUdevice,
    primary: sys::CUcontext,
    kernels: [Option<sys::CUkernel>; Kernel::COUNT],
    /// The groups of the split, in order.
    groups: Vec<sys::CUdevResource>,
    leases: Mutex<Partitions>,
    returned: Condvar,
    contexts: Mutex<HashMap<(usize, usize), Green>>,
    /// Places not leased now, by (run, priority).
    places: Mutex<HashMap<(usize, usize, i32), Place>>,
}

// SAFETY: the raw handles are driver handles; the maps and leases are behind mutexes, and a
// green context is made current only by the lane holding a lease on its groups.
unsafe impl Send for GreenContexts {}
// SAFETY: as above.
unsafe impl Sync for GreenContexts {}

impl std::fmt::Debug for GreenContexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreenContexts")
            .field("group_sms", &self.group_sms())
            .finish()
    }
}

/// A lane's hold on a run of groups and the place it runs on there.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) range: Range<usize>,
    pub(super) place: Place,
    priority: i32,
}

/// Why green contexts cannot be built or a lease taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GreenError {
    #[error(
        "the driver supports CUDA {}; green contexts need 12.4 or newer",
        super::version_text(*.0)
    )]
    DriverTooOld(i32),
    #[error("the GPU has {0} SMs: too few for partitions of {GROUP_SMS}")]
    TooFewSms(u32),
    #[error("{0}")]
    Driver(#[from] CuError),
    #[error("no SM group was given back within {} s: every group is leased", LEASE_WAIT.as_secs())]
    LeaseTimeout,
}

impl GreenContexts {
    /// Splits the SMs of device `dev` (whose primary context is `primary`) into groups and
    /// builds a green context over all of them, so that a driver that cannot build them says
    /// so now; or says why it cannot (driver too old, too few SMs, a driver call failed).
    pub(super) fn build(
        dev: sys::CUdevice,
        primary: sys::CUcontext,
        driver_version: i32,
        kernels: [Option<sys::CUkernel>; Kernel::COUNT],
    ) -> Result<Self, GreenError> {
        if driver_version < MIN_DRIVER {
            return Err(GreenError::DriverTooOld(driver_version));
        }
        let groups = split(dev)?;
        let n = groups.len();
        let g = GreenContexts {
            dev,
            primary,
            kernels,
            leases: Mutex::new(Partitions::new(n)),
            returned: Condvar::new(),
            groups,
            contexts: Mutex::new(HashMap::new()),
            places: Mutex::new(HashMap::new()),
        };
        let mut contexts = sync::lock(&g.contexts);
        g.context(&mut contexts, 0..n)?;
        drop(contexts);
        Ok(g)
    }

    /// SMs of each group, in order.
    pub(crate) fn group_sms(&self) -> Vec<u32> {
        self.groups.iter().map(sm_count).collect()
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// A lease of up to `want` groups for lane `lane`, preferring `last`; waits while every
    /// group is held (at most [`LEASE_WAIT`]).
    pub(super) fn lease(
        &self,
        lane: u64,
        want: usize,
        side: Side,
        priority: i32,
        last: Option<Range<usize>>,
    ) -> Result<Lease, GreenError> {
        let mut parts = sync::lock(&self.leases);
        let range = loop {
            if let Some(r) = parts.acquire(lane, want, side, last.clone()) {
                break r;
            }
            let (next, timeout) = sync::wait_timeout(&self.returned, parts, LEASE_WAIT);
            parts = next;
            if timeout.timed_out() {
                return Err(GreenError::LeaseTimeout);
            }
        };
        drop(parts);
        match self.place(range.clone(), priority) {
            Ok(place) => Ok(Lease {
                range,
                place,
                priority,
            }),
            Err(e) => {
                self.give_back(lane, range);
                Err(e.into())
            }
        }
    }

    /// Ends a lease: the place goes back to the cache and the groups to the pool. The
    /// caller has synchronised the place's stream.
    pub(super) fn end(&self, lane: u64, lease: Lease) {
        let key = (lease.range.start, lease.range.len(), lease.priority);
        sync::lock(&self.places).insert(key, lease.place);
        self.give_back(lane, lease.range);
    }

    fn give_back(&self, lane: u64, range: Range<usize>) {
        sync::lock(&self.leases).release(lane, range);
        self.returned.notify_all();
    }

    /// The cached place for `range` at `priority`, or a new one.
    fn place(&self, range: Range<usize>, priority: i32) -> Result<Place, CuError> {
        let key = (range.start, range.len(), priority);
        if let Some(p) = sync::lock(&self.places).remove(&key) {
            return Ok(p);
        }
        let mut contexts = sync::lock(&self.contexts);
        let g = self.context(&mut contexts, range)?;
        Place::new(g.ctx, Some(g.green), priority, g.funcs, g.sms)
    }

    /// The green context over `range`, created on first use.
    fn context<'a>(
        &self,
        contexts: &'a mut HashMap<(usize, usize), Green>,
        range: Range<usize>,
    ) -> Result<&'a Green, CuError> {
        let key = (range.start, range.len());
        Ok(match contexts.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.create(range)?),
        })
    }

    fn create(&self, range: Range<usize>) -> Result<Green, CuError> {
        // The primary context is current while the green one is built (the documentation
        // advises having it active, to avoid initialising it again).
        let _cur = Current::push(self.primary)?;
        let mut res: Vec<sys::CUdevResource> = self.groups[range].to_vec();
        let sms = res.iter().map(sm_count).sum();
        let mut desc: sys::CUdevResourceDesc = std::ptr::null_mut();
        let count = res.len() as u32;
        // SAFETY: `res` holds `count` SM resources from this device's split.
        driver::ok("cuDevResourceGenerateDesc", unsafe {
            sys::cuDevResourceGenerateDesc(&mut desc, res.as_mut_ptr(), count)
        })?;
        let mut green: sys::CUgreenCtx = std::ptr::null_mut();
        let flags = sys::CUgreenCtxCreate_flags::CU_GREEN_CTX_DEFAULT_STREAM as u32;
        // SAFETY: a descriptor just generated for this device.
        driver::ok("cuGreenCtxCreate", unsafe {
            sys::cuGreenCtxCreate(&mut green, desc, self.dev, flags)
        })?;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: a live green context; the CUcontext lives as long as it does.
        let converted = driver::ok("cuCtxFromGreenCtx", unsafe {
            sys::cuCtxFromGreenCtx(&mut ctx, green)
        });
        let funcs = converted.and_then(|()| {
            let _in_green = Current::push(ctx)?;
            Funcs::resolve(&self.kernels)
        });
        match funcs {
            Ok(funcs) => Ok(Green {
                green,
                ctx,
                funcs,
                sms,
            }),
            Err(e) => {
                // SAFETY: created above and used by nothing.
                unsafe {
                    let _ = sys::cuGreenCtxDestroy(green);
                }
                Err(e)
            }
        }
    }
}

impl Drop for GreenContexts {
    fn drop(&mut self) {
        let places = sync::get_mut(&mut self.places);
        for (_, p) in places.drain() {
            p.destroy();
        }
        let contexts = sync::get_mut(&mut self.contexts);
        for (_, g) in contexts.drain() {
            // SAFETY: every place (stream, events) of this green context was destroyed
            // above, and no lane holds a lease (lanes hold the device alive).
            unsafe {
                let _ = sys::cuGreenCtxDestroy(g.green);
            }
        }
    }
}

fn sm_count(r: &sys::CUdevResource) -> u32 {
    // SAFETY: every resource here is of type SM, whose union member is `sm`.
    unsafe { r.__bindgen_anon_1.sm.smCount }
}

/// Splits the device's SMs into groups of [`GROUP_SMS`].
fn split(dev: sys::CUdevice) -> Result<Vec<sys::CUdevResource>, GreenError> {
    // SAFETY: plain C structs the driver fills in; zero is a valid bit pattern for them.
    let mut all: sys::CUdevResource = unsafe { std::mem::zeroed() };
    // SAFETY: a live device and a pointer to a local.
    driver::ok("cuDeviceGetDevResource", unsafe {
        sys::cuDeviceGetDevResource(
            dev,
            &mut all,
            sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM,
        )
    })?;
    let sms = sm_count(&all);
    let mut n = sms / GROUP_SMS;
    if n < 2 {
        return Err(GreenError::TooFewSms(sms));
    }
    // SAFETY: as above.
    let mut groups: Vec<sys::CUdevResource> = vec![unsafe { std::mem::zeroed() }; n as usize];
    // SAFETY: as above.
    let mut rest: sys::CUdevResource = unsafe { std::mem::zeroed() };
    // SAFETY: `groups` has room for `n` results; the driver writes back how many it made.
    driver::ok("cuDevSmResourceSplitByCount", unsafe {
        sys::cuDevSmResourceSplitByCount(groups.as_mut_ptr(), &mut n, &all, &mut rest, 0, GROUP_SMS)
    })?;
    groups.truncate(n as usize);
    Ok(groups)
}
