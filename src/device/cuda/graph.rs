//! When a lane's repeated work (an inference batch, a training step) is queued as one CUDA
//! Graph launch instead of one launch per kernel: the law, pure and tested without a GPU.
//!
//! A body of work the caller repeats ([`crate::device::Backend::repeated`]) is run as it
//! always is, operation by operation, but while it runs its kernel launches are held back
//! and recorded ([`Launch`]: the kernel, its grid and every argument by value) instead of
//! queued. At the body's end the recorded list is queued one of three ways ([`Plan`]):
//!
//! - **Replay** a graph built before from a list of the same *shape* (the same kernels with
//!   the same grids, in the same order): the nodes whose arguments differ are given the new
//!   ones first (`cuGraphExecKernelNodeSetParams`; an Adam step's bias corrections change
//!   every step, a batch's size changes its grids and so its shape), then the graph is
//!   launched once.
//! - **Build** a graph from the list, once its shape has been seen [`BUILD_AFTER`] times,
//!   then launch it. Each place keeps at most [`CAPACITY`] graphs, the least recently used
//!   given up first.
//! - **Plain**: the launches one by one, as without graphs (a shape seen too few times, or a
//!   list of fewer than [`MIN_LAUNCHES`] kernels, which a graph would not shorten).
//!
//! The rule is safe by construction: a graph is only launched with exactly the launches
//! the body asked for, arguments and device addresses included, so nothing the host decided
//! while recording (which bf16 copy to fill, which scratch to convert into, how a product
//! is cut for the lane's CTA budget) can be replayed stale, and every address it names is
//! one the plain launches would have named at that moment. What a graph saves is the
//! driver's cost per launch on the host and the gaps between kernels on the device, not the
//! host's own work of deciding the launches.

use std::collections::HashMap;

use super::Kernel;
use super::driver::Arg;

/// A shape seen this many times (this one included) is built into a graph: a body run once
/// (a one-off product, the last short batch of an epoch) never pays for a build.
pub(super) const BUILD_AFTER: u32 = 2;
/// Graphs one place keeps (each batch size an inference lane serves is a shape of its own).
pub(super) const CAPACITY: usize = 64;
/// Fewer kernels than this are launched plainly.
pub(super) const MIN_LAUNCHES: usize = 2;
/// Shapes whose sightings are counted before the count starts over.
const SEEN_LIMIT: usize = 1024;

/// One kernel launch as the body asked for it.
#[derive(Debug, Clone)]
pub(super) struct Launch {
    /// The kernel.
    pub kernel: Kernel,
    /// CTAs (the grid is 1-D; block and shared memory are the kernel's, see [`Kernel`]).
    pub grid: u32,
    /// Its arguments, by value.
    pub args: Vec<Arg>,
}

impl Launch {
    /// Whether the two launch the same kernel on the same grid with arguments of the same
    /// kinds: a graph node can be given the other's arguments.
    fn same_shape(&self, other: &Launch) -> bool {
        self.kernel == other.kernel
            && self.grid == other.grid
            && self.args.len() == other.args.len()
            && self
                .args
                .iter()
                .zip(&other.args)
                .all(|(a, b)| std::mem::discriminant(a) == std::mem::discriminant(b))
    }

    /// Whether the two are the same launch, bit for bit.
    fn same(&self, other: &Launch) -> bool {
        self.same_shape(other)
            && self
                .args
                .iter()
                .zip(&other.args)
                .all(|(a, b)| same_arg(a, b))
    }
}

/// Two arguments with the same bits (floats compared by their bits: a graph must repeat
/// exactly what would have been launched).
fn same_arg(a: &Arg, b: &Arg) -> bool {
    match (a, b) {
        (Arg::Ptr(x), Arg::Ptr(y)) => x == y,
        (Arg::I32(x), Arg::I32(y)) => x == y,
        (Arg::F32(x), Arg::F32(y)) => x.to_bits() == y.to_bits(),
        (Arg::TensorMap(x), Arg::TensorMap(y)) => x.opaque == y.opaque,
        _ => false,
    }
}

/// A hash of a list's shape, to find the graphs and counts it may match.
fn shape_key(launches: &[Launch]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    launches.len().hash(&mut h);
    for l in launches {
        l.kernel.hash(&mut h);
        l.grid.hash(&mut h);
        for a in &l.args {
            std::mem::discriminant(a).hash(&mut h);
        }
    }
    h.finish()
}

/// How a recorded list is queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// One launch per kernel.
    Plain,
    /// Build a graph of the list (at [`Graphs::insert`]) and launch it.
    Build,
    /// Launch graph `slot`, after giving the nodes at `changed` (indices into the list) the
    /// list's arguments.
    Replay {
        /// The graph.
        slot: usize,
        /// Nodes whose arguments differ from the graph's.
        changed: Vec<usize>,
    },
}

/// One graph a place keeps: the launches its nodes hold now, and the driver's handles (`E`;
/// a plain value in tests).
#[derive(Debug)]
struct Entry<E> {
    key: u64,
    launches: Vec<Launch>,
    exec: E,
    used: u64,
}

/// The graphs of one place and the shapes it has seen.
#[derive(Debug)]
pub(super) struct Graphs<E> {
    entries: Vec<Entry<E>>,
    seen: HashMap<u64, u32>,
    clock: u64,
}

impl<E> Default for Graphs<E> {
    fn default() -> Self {
        Graphs {
            entries: Vec::new(),
            seen: HashMap::new(),
            clock: 0,
        }
    }
}

impl<E> Graphs<E> {
    /// How to queue `launches`. A replay's nodes are taken to hold the list's arguments from
    /// now on (the caller gives them those before launching).
    pub(super) fn plan(&mut self, launches: &[Launch]) -> Plan {
        if launches.len() < MIN_LAUNCHES {
            return Plan::Plain;
        }
        self.clock += 1;
        let key = shape_key(launches);
        let found = self.entries.iter().position(|e| {
            e.key == key
                && e.launches.len() == launches.len()
                && e.launches
                    .iter()
                    .zip(launches)
                    .all(|(a, b)| a.same_shape(b))
        });
        if let Some(slot) = found {
            let e = &mut self.entries[slot];
            e.used = self.clock;
            let changed: Vec<usize> = (0..launches.len())
                .filter(|&i| !e.launches[i].same(&launches[i]))
                .collect();
            for &i in &changed {
                e.launches[i] = launches[i].clone();
            }
            return Plan::Replay { slot, changed };
        }
        if self.seen.len() >= SEEN_LIMIT && !self.seen.contains_key(&key) {
            self.seen.clear();
        }
        let count = self.seen.entry(key).or_insert(0);
        *count += 1;
        if *count >= BUILD_AFTER {
            Plan::Build
        } else {
            Plan::Plain
        }
    }

    /// Keeps the graph built for `launches` (after [`Plan::Build`]); the least recently used
    /// graph it pushes out, if any, is returned for the caller to destroy.
    pub(super) fn insert(&mut self, launches: Vec<Launch>, exec: E) -> Option<E> {
        let key = shape_key(&launches);
        self.seen.remove(&key);
        let evicted = if self.entries.len() >= CAPACITY {
            let oldest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used)?;
            Some(self.entries.swap_remove(oldest).exec)
        } else {
            None
        };
        self.entries.push(Entry {
            key,
            launches,
            exec,
            used: self.clock,
        });
        evicted
    }

    /// The graph in `slot` (from [`Plan::Replay`]).
    pub(super) fn get(&self, slot: usize) -> Option<&E> {
        self.entries.get(slot).map(|e| &e.exec)
    }

    /// Every graph, to destroy.
    pub(super) fn drain(&mut self) -> Vec<E> {
        self.seen.clear();
        self.entries.drain(..).map(|e| e.exec).collect()
    }

    /// Graphs kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemm(grid: u32, c: u64, beta: f32) -> Launch {
        Launch {
            kernel: Kernel::GemmBf16,
            grid,
            args: vec![Arg::Ptr(0x1000), Arg::Ptr(c), Arg::I32(64), Arg::F32(beta)],
        }
    }

    fn adam(t_scale: f32) -> Launch {
        Launch {
            kernel: Kernel::Adam,
            grid: 8,
            args: vec![Arg::Ptr(0x2000), Arg::F32(t_scale)],
        }
    }

    /// Graph 0 replayed, the nodes at `changed` given new arguments.
    fn replay(changed: &[usize]) -> Plan {
        Plan::Replay {
            slot: 0,
            changed: changed.to_vec(),
        }
    }

    /// Graphs holding `exec`, built from `launches` seen twice.
    fn built(launches: Vec<Launch>, exec: u32) -> Graphs<u32> {
        let mut g = Graphs::default();
        g.plan(&launches);
        g.plan(&launches);
        g.insert(launches, exec);
        g
    }

    fn step(grid: u32, t: f32) -> Vec<Launch> {
        vec![gemm(grid, 0x3000, 0.0), gemm(grid, 0x4000, 1.0), adam(t)]
    }

    #[test]
    fn a_shape_is_built_the_second_time_and_replayed_after() {
        let mut g: Graphs<u32> = Graphs::default();
        assert_eq!(g.plan(&step(4, 0.5)), Plan::Plain);
        assert_eq!(g.plan(&step(4, 0.5)), Plan::Build);
        assert_eq!(g.insert(step(4, 0.5), 7), None);
        assert_eq!(g.plan(&step(4, 0.5)), replay(&[]));
        assert_eq!(g.get(0), Some(&7));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn arguments_that_change_are_named_and_then_held() {
        let mut g = built(step(4, 0.5), 1);
        // The Adam step's scalar changed: only its node is updated.
        let next = step(4, 0.25);
        assert_eq!(g.plan(&next), replay(&[2]));
        // The graph now holds 0.25: the same list again changes nothing.
        assert_eq!(g.plan(&next), replay(&[]));
        // Another output address is a changed argument too.
        let mut moved = step(4, 0.25);
        moved[1] = gemm(4, 0x5000, 1.0);
        assert_eq!(g.plan(&moved), replay(&[1]));
    }

    #[test]
    fn a_float_is_compared_by_its_bits() {
        let zero = vec![gemm(4, 0x3000, 0.0), gemm(4, 0x4000, 0.0)];
        let negative = vec![gemm(4, 0x3000, -0.0), gemm(4, 0x4000, 0.0)];
        let mut g = built(zero, 1);
        assert_eq!(g.plan(&negative), replay(&[0]));
    }

    #[test]
    fn another_grid_or_kernel_is_another_shape() {
        let mut g = built(step(4, 0.5), 1);
        // A smaller CTA budget cuts the products differently: a new shape, counted anew.
        assert_eq!(g.plan(&step(2, 0.5)), Plan::Plain);
        assert_eq!(g.plan(&step(2, 0.5)), Plan::Build);
        let mut other = step(4, 0.5);
        other[0].kernel = Kernel::GemmBf16SmallM;
        assert_eq!(g.plan(&other), Plan::Plain);
        let mut longer = step(4, 0.5);
        longer.push(adam(0.5));
        assert_eq!(g.plan(&longer), Plan::Plain);
        let mut other_kinds = step(4, 0.5);
        other_kinds[2].args[1] = Arg::I32(1);
        assert_eq!(g.plan(&other_kinds), Plan::Plain);
    }

    #[test]
    fn a_single_kernel_is_never_a_graph() {
        let mut g: Graphs<u32> = Graphs::default();
        for _ in 0..5 {
            assert_eq!(g.plan(&[adam(0.5)]), Plan::Plain);
            assert_eq!(g.plan(&[]), Plan::Plain);
        }
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn the_least_recently_used_graph_makes_room() {
        let mut g: Graphs<u32> = Graphs::default();
        for grid in 1..=CAPACITY as u32 {
            g.plan(&step(grid, 0.5));
            assert_eq!(g.plan(&step(grid, 0.5)), Plan::Build);
            assert_eq!(g.insert(step(grid, 0.5), grid), None);
        }
        // Grid 1 is used again, so grid 2 is now the oldest.
        assert!(matches!(g.plan(&step(1, 0.5)), Plan::Replay { .. }));
        g.plan(&step(999, 0.5));
        assert_eq!(g.plan(&step(999, 0.5)), Plan::Build);
        assert_eq!(g.insert(step(999, 0.5), 999), Some(2));
        assert_eq!(g.len(), CAPACITY);
        assert!(matches!(g.plan(&step(1, 0.5)), Plan::Replay { .. }));
        assert_eq!(g.plan(&step(2, 0.5)), Plan::Plain);
        let mut all = g.drain();
        all.sort();
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0], 1);
        assert!(!all.contains(&2));
    }

    #[test]
    fn drained_graphs_are_forgotten_with_the_shapes_seen() {
        let mut g = built(step(4, 0.5), 5);
        g.plan(&step(2, 0.5));
        assert_eq!(g.drain(), vec![5]);
        assert_eq!(g.len(), 0);
        assert_eq!(g.plan(&step(4, 0.5)), Plan::Plain);
        assert_eq!(g.plan(&step(2, 0.5)), Plan::Plain);
        assert_eq!(g.plan(&step(4, 0.5)), Plan::Build);
    }
}
