//! A place where a lane's work runs: a context (the primary one, or a green context over
//! some SMs), a stream in it, the kernels' functions valid there, and a pool of timing
//! events created there.
//!
//! A place is used by one lane at a time (its own, or a partition lease), from the thread
//! running that lane's unit of work, with its context pushed for each call. Busy time is
//! measured per operation: an event before and one after each, so what is charged is the
//! time the stream was executing the lane's work, not the gaps in which the host prepared
//! the next launch. The events' elapsed times are read when the unit synchronises.
//!
//! While a repeated body runs ([`Place::begin_repeat`]), launches are recorded instead of
//! queued and go out together at its end, plainly or as one CUDA Graph launch
//! ([`super::graph`] decides; one pair of events brackets them). Anything else queued on
//! the stream meanwhile (a copy, a synchronisation) first queues what was recorded, and
//! the rest of the body then runs plainly, so the stream's order is always the order the
//! body asked for.

use std::cell::RefCell;
use std::time::Duration;

use cudarc::driver::sys;

use super::Kernel;
use super::driver::{self, Arg, CuError, Current};
use super::graph::{Graphs, Launch, Plan};
use super::graph_exec::{GraphExec, NodeLaunch};
use super::recording::Recording;

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

/// How a graph launch went.
enum Graphed {
    /// The graph was queued.
    Queued,
    /// The driver refused the graph (its build, an update or its launch); nothing of it was
    /// queued.
    Refused(CuError),
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
    /// Launches held back by the repeated body running, if one is.
    recording: RefCell<Recording>,
    /// The graphs built here.
    graphs: Graphs<GraphExec>,
    /// Graphs stopped here: the driver refused one (said in the log when it happened).
    graphs_off: bool,
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
            recording: RefCell::new(Recording::default()),
            graphs: Graphs::default(),
            graphs_off: false,
        })
    }

    /// SMs this place's work runs on.
    pub(super) fn sms(&self) -> u32 {
        self.sms
    }

    /// Runs `queue`, which queues a copy on the stream (given), between two timing events,
    /// after anything a repeated body recorded. The caller has entered the place.
    pub(super) fn timed_copy(
        &mut self,
        queue: impl FnOnce(sys::CUstream) -> Result<(), CuError>,
    ) -> Result<(), CuError> {
        self.flush()?;
        let stream = self.stream;
        self.timed(|_| queue(stream))
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
        if self.recording.get_mut().active() {
            // Launches are held; the body's end brackets them.
            return queue(self);
        }
        let (start, end) = self.next_events()?;
        driver::event_record(start, self.stream)?;
        queue(self)?;
        driver::event_record(end, self.stream)?;
        self.ops += 1;
        Ok(())
    }

    /// The pair of events that brackets the next operation, created when the pool is short.
    fn next_events(&mut self) -> Result<(sys::CUevent, sys::CUevent), CuError> {
        while self.events.len() < 2 * (self.ops + 1) {
            self.events.push(driver::event_create()?);
        }
        Ok((self.events[2 * self.ops], self.events[2 * self.ops + 1]))
    }

    /// Launches `k` with `grid` CTAs on the stream, or records the launch while a repeated
    /// body runs. The caller has entered the place.
    pub(super) fn launch(&self, k: Kernel, grid: u32, args: &[Arg]) -> Result<(), CuError> {
        let (func, shape, _) = self.node(k, grid, args)?;
        let mut recording = self.recording.borrow_mut();
        if recording.active() {
            recording.hold(Launch {
                kernel: k,
                grid,
                args: args.to_vec(),
            });
            return Ok(());
        }
        driver::launch(func, shape, self.stream, args)
    }

    /// The function, launch shape and arguments of one launch of `k`.
    fn node<'a>(&self, k: Kernel, grid: u32, args: &'a [Arg]) -> Result<NodeLaunch<'a>, CuError> {
        let f = self.funcs.get(k).ok_or(CuError {
            call: "cuLaunchKernel",
            code: sys::cudaError_enum::CUDA_ERROR_NOT_FOUND,
        })?;
        Ok((f, (grid.max(1), k.block(), k.dynamic_smem()), args))
    }

    /// Queues `launches` one by one.
    fn launch_all(&self, launches: &[Launch]) -> Result<(), CuError> {
        for l in launches {
            let (f, shape, args) = self.node(l.kernel, l.grid, &l.args)?;
            driver::launch(f, shape, self.stream, args)?;
        }
        Ok(())
    }

    /// Starts a repeated body: launches are held until [`Place::end_repeat`] (see
    /// [`Recording`]).
    pub(super) fn begin_repeat(&mut self) {
        self.recording.get_mut().begin();
    }

    /// Ends a repeated body: what it recorded is queued, as one graph launch where
    /// [`super::graph`] says so (never when the body `failed`: its launches go out one by
    /// one, as they would have without graphs). The caller has entered the place. Returns
    /// how it was queued (`None`: nothing was left to queue, or an inner body ended).
    pub(super) fn end_repeat(&mut self, failed: bool) -> Result<Option<Plan>, CuError> {
        let Some(launches) = self.recording.get_mut().end() else {
            return Ok(None);
        };
        let plan = if failed || self.graphs_off {
            Plan::Plain
        } else {
            self.graphs.plan(&launches)
        };
        self.queue(plan, launches).map(Some)
    }

    /// Queues what a body recorded as `plan` says. When the driver refuses a graph (its
    /// build, an update or its launch) without poisoning the context, nothing of it was
    /// queued: graphs stop on this place (said once, in the log) and the launches go out one
    /// by one. Returns how they went out.
    fn queue(&mut self, plan: Plan, launches: Vec<Launch>) -> Result<Plan, CuError> {
        let graphed = match &plan {
            Plan::Plain => None,
            Plan::Build => Some(self.build_and_launch(&launches)?),
            Plan::Replay { slot, changed } => Some(self.replay(*slot, changed, &launches)?),
        };
        match graphed {
            Some(Graphed::Queued) => return Ok(plan),
            Some(Graphed::Refused(e)) if e.is_sticky() => return Err(e),
            Some(Graphed::Refused(e)) => {
                tracing::warn!("CUDA Graphs are off on this stream: the driver refused one ({e})");
                self.graphs_off = true;
                for g in self.graphs.drain() {
                    g.destroy();
                }
            }
            None => {}
        }
        self.timed(|p| p.launch_all(&launches))?;
        Ok(Plan::Plain)
    }

    /// Builds a graph of `launches`, launches it between two timing events and keeps it.
    fn build_and_launch(&mut self, launches: &[Launch]) -> Result<Graphed, CuError> {
        let nodes = launches
            .iter()
            .map(|l| self.node(l.kernel, l.grid, &l.args))
            .collect::<Result<Vec<_>, _>>()?;
        let graph = match GraphExec::build(&nodes) {
            Ok(g) => g,
            Err(e) => return Ok(Graphed::Refused(e)),
        };
        let (start, end) = self.next_events()?;
        driver::event_record(start, self.stream)?;
        if let Err(e) = graph.launch(self.stream) {
            graph.destroy();
            return Ok(Graphed::Refused(e));
        }
        if let Some(old) = self.graphs.insert(launches.to_vec(), graph) {
            old.destroy();
        }
        driver::event_record(end, self.stream)?;
        self.ops += 1;
        Ok(Graphed::Queued)
    }

    /// Gives graph `slot` the arguments of the nodes at `changed`, then launches it between
    /// two timing events.
    fn replay(
        &mut self,
        slot: usize,
        changed: &[usize],
        launches: &[Launch],
    ) -> Result<Graphed, CuError> {
        let (start, end) = self.next_events()?;
        let Some(graph) = self.graphs.get(slot) else {
            return Ok(Graphed::Refused(CuError {
                call: "cuGraphLaunch",
                code: sys::cudaError_enum::CUDA_ERROR_NOT_FOUND,
            }));
        };
        for &i in changed {
            let l = &launches[i];
            if let Err(e) = graph.set(i, self.node(l.kernel, l.grid, &l.args)?) {
                return Ok(Graphed::Refused(e));
            }
        }
        driver::event_record(start, self.stream)?;
        if let Err(e) = graph.launch(self.stream) {
            return Ok(Graphed::Refused(e));
        }
        driver::event_record(end, self.stream)?;
        self.ops += 1;
        Ok(Graphed::Queued)
    }

    /// Queues what the running body held so far, one launch at a time between two timing
    /// events, before anything else is queued on the stream; the rest of the body runs
    /// plainly ([`Recording::interrupt`]).
    pub(super) fn flush(&mut self) -> Result<(), CuError> {
        let held = self.recording.get_mut().interrupt();
        self.queue_held(held)
    }

    fn queue_held(&mut self, held: Vec<Launch>) -> Result<(), CuError> {
        if held.is_empty() {
            return Ok(());
        }
        let _cur = self.enter()?;
        self.timed(|p| p.launch_all(&held))
    }

    /// Waits for the stream and returns the GPU time of the operations bracketed since the
    /// last call. What a repeated body held is queued first, and the body is over here
    /// ([`Recording::unit_ended`]).
    pub(super) fn finish(&mut self) -> Result<Duration, CuError> {
        let _cur = self.enter()?;
        let held = self.recording.get_mut().unit_ended();
        self.queue_held(held)?;
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
    pub(super) fn destroy(mut self) {
        if let Ok(_cur) = self.enter() {
            let held = self.recording.get_mut().unit_ended();
            let _ = self.queue_held(held);
            let _ = driver::stream_sync(self.stream);
            for g in self.graphs.drain() {
                g.destroy();
            }
            driver::destroy(Some(self.stream), &self.events);
        }
    }
}
