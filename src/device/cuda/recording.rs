//! The launches a place holds back while a repeated body runs ([`super::graph`] decides how
//! they then go out): when holding starts and stops, pure and tested without a GPU.
//!
//! - A body begun inside another is part of the outer one: only the outermost end hands the
//!   launches over.
//! - Anything else about to be queued on the stream (a copy, memory freed that a held launch
//!   names) *interrupts* the body: what it held is handed over to be queued first, and the
//!   rest of the body is not held (it runs plainly), so the stream keeps the body's order.
//! - The end of the unit (the stream synchronised, the place given back) interrupts it too,
//!   and forgets the body: a place leased to another lane afterwards starts afresh.

use super::graph::Launch;

/// A place's held launches and how deep in repeated bodies it is.
#[derive(Debug, Default)]
pub(super) struct Recording {
    held: Option<Vec<Launch>>,
    depth: u32,
}

impl Recording {
    /// A body begins.
    pub(super) fn begin(&mut self) {
        self.depth += 1;
        if self.depth == 1 {
            self.held = Some(Vec::new());
        }
    }

    /// Whether launches are held now (else they are queued as they come).
    pub(super) fn active(&self) -> bool {
        self.held.is_some()
    }

    /// Holds `launch`; the caller has checked [`Recording::active`].
    pub(super) fn hold(&mut self, launch: Launch) {
        if let Some(held) = self.held.as_mut() {
            held.push(launch);
        }
    }

    /// Something else is about to be queued: what was held, to queue first. The rest of the
    /// body is not held.
    pub(super) fn interrupt(&mut self) -> Vec<Launch> {
        self.held.take().unwrap_or_default()
    }

    /// The unit ended: as [`Recording::interrupt`], and no body runs here any more.
    pub(super) fn unit_ended(&mut self) -> Vec<Launch> {
        self.depth = 0;
        self.interrupt()
    }

    /// A body ends: what it held, when it was the outermost, still held launches, and held
    /// any.
    pub(super) fn end(&mut self) -> Option<Vec<Launch>> {
        self.depth = self.depth.saturating_sub(1);
        if self.depth > 0 {
            return None;
        }
        self.held.take().filter(|held| !held.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Kernel;
    use super::super::driver::Arg;
    use super::*;

    fn launch(n: i32) -> Launch {
        Launch {
            kernel: Kernel::Fill,
            grid: 1,
            args: vec![Arg::I32(n)],
        }
    }

    fn ids(launches: &[Launch]) -> Vec<i32> {
        launches
            .iter()
            .map(|l| match l.args[0] {
                Arg::I32(n) => n,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_body_holds_its_launches_until_it_ends() {
        let mut r = Recording::default();
        assert!(!r.active());
        r.begin();
        assert!(r.active());
        r.hold(launch(1));
        r.hold(launch(2));
        assert_eq!(ids(&r.end().unwrap()), [1, 2]);
        assert!(!r.active());
        // An empty body hands nothing over; an end without a begin neither.
        r.begin();
        assert!(r.end().is_none());
        assert!(r.end().is_none());
    }

    #[test]
    fn an_inner_body_is_part_of_the_outer_one() {
        let mut r = Recording::default();
        r.begin();
        r.hold(launch(1));
        r.begin();
        r.hold(launch(2));
        assert!(r.end().is_none());
        assert!(r.active());
        r.hold(launch(3));
        assert_eq!(ids(&r.end().unwrap()), [1, 2, 3]);
    }

    #[test]
    fn an_interruption_hands_over_what_was_held_and_the_rest_runs_plainly() {
        let mut r = Recording::default();
        r.begin();
        r.hold(launch(1));
        assert_eq!(ids(&r.interrupt()), [1]);
        assert!(!r.active());
        assert!(r.interrupt().is_empty());
        assert!(r.end().is_none());
        // The next body holds again.
        r.begin();
        r.hold(launch(2));
        assert_eq!(ids(&r.end().unwrap()), [2]);
    }

    #[test]
    fn the_units_end_forgets_the_body() {
        let mut r = Recording::default();
        r.begin();
        r.begin();
        r.hold(launch(1));
        assert_eq!(ids(&r.unit_ended()), [1]);
        // The place goes to another lane: its first body is the outermost one.
        r.begin();
        r.hold(launch(2));
        assert_eq!(ids(&r.end().unwrap()), [2]);
        // The first lane's two ends find nothing and disturb nothing.
        assert!(r.end().is_none());
        r.begin();
        r.hold(launch(3));
        assert_eq!(ids(&r.end().unwrap()), [3]);
    }
}
