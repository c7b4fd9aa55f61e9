//! The driver's side of a lane's CUDA Graphs ([`super::graph`] decides when): a chain of
//! kernel nodes built from recorded launches, instantiated, given new arguments node by
//! node, launched on a stream, destroyed. Every call is made with the place's context
//! current (the caller's guard).

use std::ffi::c_void;

use cudarc::driver::sys;

use super::driver::{Arg, CuError, ok, param_pointers};

/// One node's launch: the function (of the current context), its grid, block and dynamic
/// shared memory, and its arguments.
pub(super) type NodeLaunch<'a> = (sys::CUfunction, (u32, u32, u32), &'a [Arg]);

/// A graph whose nodes run one after the other, instantiated. The graph is kept beside its
/// executable because an update names the graph's own nodes.
#[derive(Debug)]
pub(super) struct GraphExec {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    nodes: Vec<sys::CUgraphNode>,
}

// SAFETY: driver handles, used by one thread at a time (the place's holder), with the
// place's context pushed for every call.
unsafe impl Send for GraphExec {}

/// `cuGraphAddKernelNode`'s and `cuGraphExecKernelNodeSetParams`'s description of one
/// launch; `params` must outlive the call that reads it (the driver copies the values).
fn node_params(
    func: sys::CUfunction,
    (grid, block, smem): (u32, u32, u32),
    params: &mut [*mut c_void],
) -> sys::CUDA_KERNEL_NODE_PARAMS {
    sys::CUDA_KERNEL_NODE_PARAMS {
        func,
        gridDimX: grid.max(1),
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        kernelParams: params.as_mut_ptr(),
        extra: std::ptr::null_mut(),
        // Ignored when `func` is set.
        kern: std::ptr::null_mut(),
        ctx: std::ptr::null_mut(),
    }
}

impl GraphExec {
    /// Builds and instantiates a graph of `launches`, each node depending on the one before,
    /// so they run in the order given, as on a stream.
    pub(super) fn build(launches: &[NodeLaunch<'_>]) -> Result<GraphExec, CuError> {
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: a pointer to a local; flags must be 0.
        ok("cuGraphCreate", unsafe {
            sys::cuGraphCreate(&mut graph, 0)
        })?;
        let mut g = GraphExec {
            graph,
            exec: std::ptr::null_mut(),
            nodes: Vec::with_capacity(launches.len()),
        };
        match g.fill(launches) {
            Ok(()) => Ok(g),
            Err(e) => {
                g.destroy();
                Err(e)
            }
        }
    }

    fn fill(&mut self, launches: &[NodeLaunch<'_>]) -> Result<(), CuError> {
        for &(func, shape, args) in launches {
            let mut values: Vec<Arg> = args.to_vec();
            let mut params = param_pointers(&mut values);
            let p = node_params(func, shape, &mut params);
            let deps: &[sys::CUgraphNode] = match self.nodes.last() {
                Some(prev) => std::slice::from_ref(prev),
                None => &[],
            };
            let mut node: sys::CUgraphNode = std::ptr::null_mut();
            // SAFETY: a live graph; `p` points at one value per kernel parameter (as for
            // `cuLaunchKernel`), which the driver copies into the node.
            ok("cuGraphAddKernelNode", unsafe {
                sys::cuGraphAddKernelNode_v2(&mut node, self.graph, deps.as_ptr(), deps.len(), &p)
            })?;
            self.nodes.push(node);
        }
        // SAFETY: a live, complete graph; the executable is destroyed with `self`.
        ok("cuGraphInstantiateWithFlags", unsafe {
            sys::cuGraphInstantiateWithFlags(&mut self.exec, self.graph, 0)
        })
    }

    /// Gives node `index` the arguments of `launch` (same function and grid as built) for
    /// the launches that follow; launches already queued keep the old ones.
    pub(super) fn set(&self, index: usize, launch: NodeLaunch<'_>) -> Result<(), CuError> {
        let (func, shape, args) = launch;
        let node = *self.nodes.get(index).ok_or(CuError {
            call: "cuGraphExecKernelNodeSetParams",
            code: sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE,
        })?;
        let mut values: Vec<Arg> = args.to_vec();
        let mut params = param_pointers(&mut values);
        let p = node_params(func, shape, &mut params);
        // SAFETY: a live executable and a node of the graph it was instantiated from; the
        // values are copied by the call.
        ok("cuGraphExecKernelNodeSetParams", unsafe {
            sys::cuGraphExecKernelNodeSetParams_v2(self.exec, node, &p)
        })
    }

    /// Queues the graph on `stream` (of the context it was built in).
    pub(super) fn launch(&self, stream: sys::CUstream) -> Result<(), CuError> {
        // SAFETY: a live executable and stream of the current context.
        ok("cuGraphLaunch", unsafe {
            sys::cuGraphLaunch(self.exec, stream)
        })
    }

    /// Destroys the executable and the graph (errors ignored: teardown). An executable still
    /// in flight is not stopped but freed when it completes (`cuGraphExecDestroy`).
    pub(super) fn destroy(self) {
        // SAFETY: handles nothing will use again.
        unsafe {
            if !self.exec.is_null() {
                let _ = sys::cuGraphExecDestroy(self.exec);
            }
            let _ = sys::cuGraphDestroy(self.graph);
        }
    }
}
