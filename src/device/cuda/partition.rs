//! Which SM groups each lane runs on when shares are SM partitions (green contexts): pure
//! bookkeeping, no driver.
//!
//! A GPU's SMs are split once into `groups` groups (8 SMs each on Hopper). A lane runs a unit
//! of work (a training step, an inference batch) on a *lease*: a contiguous run of free
//! groups, taken when the unit starts and given back when it has synchronised. Leases never
//! overlap, so lanes never share an SM, and their SMs add up to at most the GPU's:
//!
//! - a lane wants `floor(share · groups)` groups, at least one; the arbiter keeps shares
//!   within the device, so the wants fit together;
//! - a lane takes the run it had last time when that is free again (its green context and
//!   stream are then already there), else the first free run of its size, searched from the
//!   low end for inference lanes and from the high end for training lanes, so the two kinds
//!   pack from opposite ends and a growing lane finds room beside its own kind;
//! - when no run of that size is free, it takes the largest free run (fewer SMs for this unit
//!   rather than a wait), and when no group is free at all it waits until one is given back.

use std::ops::Range;

/// Which end of the SM list a lane packs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Inference: from group 0 up.
    Low,
    /// Training and best-effort: from the last group down.
    High,
}

/// The groups a lane wants for a share: `floor(share · groups)`, within `1..=groups`.
pub(crate) fn groups_for(share: f64, groups: usize) -> usize {
    if groups == 0 {
        return 0;
    }
    let s = if share.is_finite() { share } else { 1.0 };
    ((s * groups as f64 + 1e-9).floor() as usize).clamp(1, groups)
}

/// Which lane holds each group.
#[derive(Debug, Clone)]
pub(crate) struct Partitions {
    holder: Vec<Option<u64>>,
}

impl Partitions {
    /// `groups` free groups.
    pub fn new(groups: usize) -> Self {
        Partitions {
            holder: vec![None; groups],
        }
    }

    /// Number of groups.
    pub fn groups(&self) -> usize {
        self.holder.len()
    }

    /// Groups no lane holds.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.holder.iter().filter(|h| h.is_none()).count()
    }

    /// A lease of up to `want` groups for `lane`, or `None` when every group is held.
    /// `last` is the run the lane held before, preferred when it is free and of that size.
    pub(crate) fn acquire(
        &mut self,
        lane: u64,
        want: usize,
        side: Side,
        last: Option<Range<usize>>,
    ) -> Option<Range<usize>> {
        let n = self.groups();
        let want = want.clamp(1, n.max(1));
        let runs = self.free_runs();
        if runs.is_empty() {
            return None;
        }
        let fits =
            |r: &Range<usize>| r.end <= n && self.holder[r.clone()].iter().all(Option::is_none);
        let chosen = match last.filter(|r| r.len() == want && fits(r)) {
            Some(r) => r,
            None => {
                let sized = |r: &&Range<usize>| r.len() >= want;
                let place = |r: &Range<usize>| match side {
                    Side::Low => r.start..r.start + want.min(r.len()),
                    Side::High => r.end - want.min(r.len())..r.end,
                };
                let pick = match side {
                    Side::Low => runs.iter().find(sized),
                    Side::High => runs.iter().rev().find(sized),
                };
                match pick {
                    Some(r) => place(r),
                    // The largest run; the one nearest the lane's own end among equals.
                    None => {
                        let best = runs.iter().map(Range::len).max().unwrap_or(0);
                        let mut largest = runs.iter().filter(|r| r.len() == best);
                        let r = match side {
                            Side::Low => largest.next(),
                            Side::High => largest.next_back(),
                        }?;
                        place(r)
                    }
                }
            }
        };
        for h in &mut self.holder[chosen.clone()] {
            *h = Some(lane);
        }
        Some(chosen)
    }

    /// Gives back what `lane` holds of `range`.
    pub(crate) fn release(&mut self, lane: u64, range: Range<usize>) {
        let end = range.end.min(self.groups());
        for h in &mut self.holder[range.start.min(end)..end] {
            if *h == Some(lane) {
                *h = None;
            }
        }
    }

    /// The maximal runs of free groups, in order.
    fn free_runs(&self) -> Vec<Range<usize>> {
        let mut runs = Vec::new();
        let mut start = None;
        for (i, h) in self.holder.iter().enumerate() {
            match (h, start) {
                (None, None) => start = Some(i),
                (Some(_), Some(s)) => {
                    runs.push(s..i);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push(s..self.holder.len());
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    #[test]
    fn a_share_takes_whole_groups_and_at_least_one() {
        // An H200: 132 SMs, 16 groups of 8 (4 SMs left over).
        assert_eq!(groups_for(1.0, 16), 16);
        assert_eq!(groups_for(0.25, 16), 4);
        assert_eq!(groups_for(0.75, 16), 12);
        assert_eq!(groups_for(0.3, 16), 4);
        assert_eq!(groups_for(0.001, 16), 1);
        assert_eq!(groups_for(0.0, 16), 1);
        assert_eq!(groups_for(7.0, 16), 16);
        assert_eq!(groups_for(f64::NAN, 16), 16);
        assert_eq!(groups_for(0.5, 0), 0);
    }

    #[test]
    fn a_quarter_and_three_quarters_are_disjoint_and_fill_the_gpu() {
        let mut p = Partitions::new(16);
        let svc = p.acquire(1, groups_for(0.25, 16), Side::Low, None).unwrap();
        let job = p
            .acquire(2, groups_for(0.75, 16), Side::High, None)
            .unwrap();
        assert_eq!((svc.clone(), job.clone()), (0..4, 4..16));
        assert_eq!(p.free(), 0);
        // A third lane waits until one gives back.
        assert_eq!(p.acquire(3, 1, Side::High, None), None);
        p.release(1, svc.clone());
        assert_eq!(p.acquire(3, 2, Side::High, None), Some(2..4));
        // The service gets less than it wants rather than waiting, and its old run back
        // later.
        assert_eq!(p.acquire(1, 4, Side::Low, Some(svc.clone())), Some(0..2));
        p.release(1, 0..2);
        p.release(3, 2..4);
        assert_eq!(p.acquire(1, 4, Side::Low, Some(svc.clone())), Some(svc));
    }

    #[test]
    fn leases_never_overlap_under_random_traffic() {
        let mut rng = Rng::new(11);
        let mut p = Partitions::new(16);
        let mut held: Vec<Option<Range<usize>>> = vec![None; 6];
        for _ in 0..5_000 {
            let lane = rng.below(6) as usize;
            match held[lane].take() {
                Some(r) => p.release(lane as u64, r),
                None => {
                    let want = 1 + rng.below(16) as usize;
                    let side = if lane.is_multiple_of(2) {
                        Side::Low
                    } else {
                        Side::High
                    };
                    held[lane] = p.acquire(lane as u64, want, side, None);
                }
            }
            let mut count = [0; 16];
            for r in held.iter().flatten() {
                assert!(!r.is_empty() && r.end <= 16, "{r:?}");
                for g in r.clone() {
                    count[g] += 1;
                }
            }
            assert!(count.iter().all(|&c| c <= 1), "overlap: {held:?}");
            let total: usize = held.iter().flatten().map(Range::len).sum();
            assert_eq!(total + p.free(), 16);
        }
    }
}
