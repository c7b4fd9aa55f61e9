//! A place where a lane's work runs: a context (the primary one, or a green context over
//! some SMs), a stream in it, the kernels' functions valid there, and a pool of timing
//! events created there.
//!
//! A place is used by one lane at a time (its own, or a partition lease), from the thread
//! running that lane's unit of work, with its context pushed for each call. Busy time is
//! measured per operation: an event before and one after each, so what is charged is the
//! time the stream was executing the lane's work, not the gaps in which the host prepared
//! the next launch. The events' elapsed times are read when the unit synchronises.

use std::time::Duration;

use cudarc::driver::sys;

use super::Kernel;
use super::driver::{self, Arg, CuError, Current};

/// Function handles of every kernel in one context (`None`: not in the loaded modules).
#[derive(Debug, Clone, Copy)]
pub(super) struct Funcs([Option<sys::CUfunction>; Kernel::COUNT]);

// SAFETY: function handles are immutable driver handles, valid in their context on any thread.
unsafe impl Send for Funcs {}
// SAFETY: as above.
unsafe impl Sync for Funcs {}

impl Funcs {
    /// No functions (before the kernels are loaded).
    pub(super) fn empty() -> Funcs {
        Funcs([None; Kernel::COUNT])
    }

    /// The functions of `kernels` (library kernel handles) in the current context.
    pub(super) fn resolve(
        kernels: &[Option<sys::CUkernel>; Kernel::COUNT],
    ) -> Result<Funcs, CuError> {
        let mut out = [None; Kernel::COUNT];
        for (slot, k) in out.iter_mut().zip(kernels) {
            if let Some(k) = *k {
                let mut f: sys::CUfunction = std::ptr::null_mut();
                // SAFETY: a live kernel of a loaded library; the current context is the
                // caller's.
                driver::ok("cuKernelGetFunction", unsafe {
                    sys::cuKernelGetFunction(&mut f, k)
                })?;
                *slot = Some(f);
            }
        }
        Ok(Funcs(out))
    }

    /// The function of `k`, when loaded.
    pub(super) fn get(&self, k: Kernel) -> Option<sys::CUfunction> {
        self.0[k.index()]
    }
}

/// A context, a stream in it, functions and timing events.
#[derive(Debug)]
pub(super) struct Place {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    funcs: Funcs,
    /// Events created in `ctx`; pairs `2i, 2i + 1` bracket operation `i` of this unit.
    events: Vec<sys::CUevent>,
    /// Operations bracketed since the last synchronisation.
    ops: usize,
    /// SMs the context runs on.
    sms: u32,
}

// SAFETY: the handles are driver handles; a place is used by one thread at a time (the lane
// holding it), which pushes its context for every call.
unsafe impl Send for Place {}

impl Place {
    /// A place in `ctx` with a new stream at `priority`. `green` creates the stream through
    /// the green context's own call, as its documentation asks.
    pub(super) fn new(
        ctx: sys::CUcontext,
        green: Option<sys::CUgreenCtx>,
        priority: i32,
        funcs: Funcs,
        sms: u32,
    ) -> Result<Place, CuError> {
        let _cur = Current::push(ctx)?;
        let stream = match green {
            None => driver::stream_create(priority)?,
            Some(g) => {
                let mut s: sys::CUstream = std::ptr::null_mut();
                let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
                // SAFETY: a live green context; the stream is destroyed with the place.
                driver::ok("cuGreenCtxStreamCreate", unsafe {
                    sys::cuGreenCtxStreamCreate(&mut s, g, flags, priority)
                })?;
                s
            }
        };
        Ok(Place {
            ctx,
            stream,
            funcs,
            events: Vec::new(),
            ops: 0,
            sms,
        })
    }

    /// SMs this place's work runs on.
    pub(super) fn sms(&self) -> u32 {
        self.sms
    }

    /// The stream (for copies queued by the lane).
    pub(super) fn stream(&self) -> sys::CUstream {
        self.stream
    }

    /// Makes the place's context current for the guard's life.
    pub(super) fn enter(&self) -> Result<Current, CuError> {
        Current::push(self.ctx)
    }

    /// Runs `queue` (which queues work on [`Place::stream`]) between two timing events. The
    /// caller has entered the place.
    pub(super) fn timed(
        &mut self,
        queue: impl FnOnce(&Place) -> Result<(), CuError>,
    ) -> Result<(), CuError> {
        while self.events.len() < 2 * (self.ops + 1) {
            self.events.push(driver::event_create()?);
        }
        let (start, end) = (self.events[2 * self.ops], self.events[2 * self.ops + 1]);
        driver::event_record(start, self.stream)?;
        queue(self)?;
        driver::event_record(end, self.stream)?;
        self.ops += 1;
        Ok(())
    }

    /// Launches `k` with `grid` CTAs on the stream. The caller has entered the place.
    pub(super) fn launch(&self, k: Kernel, grid: u32, args: &[Arg]) -> Result<(), CuError> {
        let f = self.funcs.get(k).ok_or(CuError {
            call: "cuLaunchKernel",
            code: sys::cudaError_enum::CUDA_ERROR_NOT_FOUND,
        })?;
        let shape = (grid.max(1), k.block(), k.dynamic_smem());
        driver::launch(f, shape, self.stream, args)
    }

    /// Waits for the stream and returns the GPU time of the operations bracketed since the
    /// last call.
    pub(super) fn finish(&mut self) -> Result<Duration, CuError> {
        let _cur = self.enter()?;
        driver::stream_sync(self.stream)?;
        let mut busy = Duration::ZERO;
        for i in 0..self.ops {
            let ms = driver::event_elapsed_ms(self.events[2 * i], self.events[2 * i + 1])?;
            busy += Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
        }
        self.ops = 0;
        Ok(busy)
    }

    /// Waits for the stream without ending the unit's timing (for a staging arena that
    /// must be reused).
    pub(super) fn drain(&self) -> Result<(), CuError> {
        let _cur = self.enter()?;
        driver::stream_sync(self.stream)
    }

    /// Destroys the stream and events (after a final synchronisation, errors ignored).
    pub(super) fn destroy(self) {
        if let Ok(_cur) = self.enter() {
            let _ = driver::stream_sync(self.stream);
            driver::destroy(Some(self.stream), &self.events);
        }
    }
}
