//! Which of NVML's processes are this daemon: [`OwnPids`], shared by the telemetry sources
//! and the code that creates CUDA contexts.
//!
//! The host pid comes from procfs when procfs can tell it ([`super::pids`]). Where it cannot
//! (a container that sees only its own pid namespace) the daemon learns it by a handshake:
//! NVML's list of processes with a compute context, read just before and just after the
//! daemon creates its first CUDA context on a GPU, differs by the daemon's host pid. The
//! pure judgement is [`handshake_outcome`]; [`OwnPids::learn_around`] is the entry point for
//! the code that creates the context.
//!
//! Until the host pid is known, [`OwnPids::host_pids`] is `None` and the sources report own
//! and foreign load as unknown rather than counting the daemon's own load as foreign.

use crate::util::sync;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::TelemetryError;
use super::pids::{self, MappingBasis, PidMapping};

/// Lists the pids (host pids, as NVML gives them) holding a compute context on any GPU of
/// the host: the two reads of the handshake.
pub trait ComputePids {
    /// Every pid with a compute context on any GPU, in any order. An `Err` means the list
    /// could not be read; a GPU that could not be asked must make the whole read fail, or
    /// a missing pid would look new in the next list.
    fn compute_pids(&mut self) -> Result<Vec<u32>, TelemetryError>;
}

/// What a handshake found.
#[derive(Debug, Clone, PartialEq)]
pub enum HandshakeOutcome {
    /// The host pid was already known: no lists were read.
    NotNeeded,
    /// Exactly one pid appeared: it is this daemon's and is now recorded.
    Learned(u32),
    /// Several pids appeared at once (another process made a context at the same moment).
    /// Nothing is recorded; the next handshake keeps only pids from this set.
    Ambiguous(Vec<u32>),
    /// No new pid appeared (the daemon already had a context on that GPU, or the driver had
    /// not listed it yet). A later context creation can try again.
    NothingNew,
    /// No process list to read (NVML not open).
    NoProcessList,
    /// A process list could not be read.
    ListFailed(TelemetryError),
}

/// Judges one handshake: `before` and `after` are the compute pids around the context's
/// creation, `candidates` what an earlier ambiguous handshake left (empty if none).
/// Returns [`HandshakeOutcome::Learned`], [`HandshakeOutcome::Ambiguous`] or
/// [`HandshakeOutcome::NothingNew`].
pub fn handshake_outcome(before: &[u32], after: &[u32], candidates: &[u32]) -> HandshakeOutcome {
    let before: BTreeSet<u32> = before.iter().copied().collect();
    let appeared: BTreeSet<u32> = after
        .iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect();
    let narrowed: BTreeSet<u32> = appeared
        .iter()
        .copied()
        .filter(|p| candidates.contains(p))
        .collect();
    // An earlier ambiguity that this one does not overlap at all was not about this
    // daemon's pid after all (it would be in both): start from this one alone.
    let set = if narrowed.is_empty() {
        appeared
    } else {
        narrowed
    };
    let mut pids = set.iter().copied();
    match (pids.next(), pids.next()) {
        (None, _) => HandshakeOutcome::NothingNew,
        (Some(p), None) => HandshakeOutcome::Learned(p),
        _ => HandshakeOutcome::Ambiguous(set.into_iter().collect()),
    }
}

#[derive(Debug, Default)]
struct State {
    /// Host pids known for certain (procfs on a certain basis, or given by the caller).
    certain: Vec<u32>,
    /// A guess from procfs (old kernel, unreadable namespaces), used until something is
    /// learned.
    guess: Option<u32>,
    /// Host pids learned by a handshake or recorded by the caller.
    learned: Vec<u32>,
    /// What the last ambiguous handshake left.
    candidates: Vec<u32>,
}

/// The host pids of this daemon's own processes, shared (in an `Arc`) by the telemetry
/// sources and the code that creates CUDA contexts. Thread-safe; never fails.
#[derive(Debug)]
pub struct OwnPids {
    mapping: Option<PidMapping>,
    state: Mutex<State>,
}

impl OwnPids {
    /// This process, as `/proc` tells it (logged once at info level).
    pub fn of_this_process() -> Arc<OwnPids> {
        let own = OwnPids::from_procfs(Path::new("/proc"), std::process::id());
        tracing::info!("GPU telemetry: this daemon is {}", own.describe());
        Arc::new(own)
    }

    /// The process that knows itself as `local_pid`, as the procfs under `proc_root` tells
    /// it (`/proc`, the host's procfs mounted elsewhere, or a test fixture).
    pub fn from_procfs(proc_root: &Path, local_pid: u32) -> OwnPids {
        OwnPids::from_mapping(pids::decide(&pids::resolve(proc_root, local_pid)))
    }

    /// From a mapping already decided.
    pub(crate) fn from_mapping(mapping: PidMapping) -> OwnPids {
        let mut state = State::default();
        match (mapping.host_pid, mapping.basis.is_certain()) {
            (Some(p), true) => state.certain.push(p),
            (Some(p), false) => state.guess = Some(p),
            (None, _) => {}
        }
        OwnPids {
            mapping: Some(mapping),
            state: Mutex::new(state),
        }
    }

    /// Host pids known beforehand (scripted telemetry, tests, or a caller that knows).
    pub fn fixed(host_pids: Vec<u32>) -> OwnPids {
        OwnPids {
            mapping: None,
            state: Mutex::new(State {
                certain: host_pids,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    /// The host pids to count as own, sorted; `None` while unknown (in a container before
    /// the handshake, or after an ambiguous one). A procfs guess is used only while nothing
    /// has been learned: a learned pid is evidence the guess was wrong or redundant.
    pub fn host_pids(&self) -> Option<Vec<u32>> {
        let st = self.state();
        let mut all: BTreeSet<u32> = st.certain.iter().chain(&st.learned).copied().collect();
        if st.learned.is_empty()
            && let Some(g) = st.guess
        {
            all.insert(g);
        }
        (!all.is_empty()).then(|| all.into_iter().collect())
    }

    /// Whether a handshake would tell something: no certain host pid and nothing learned.
    pub fn needs_handshake(&self) -> bool {
        let st = self.state();
        st.certain.is_empty() && st.learned.is_empty()
    }

    /// Records `pid` as a host pid of this daemon (learned by a handshake, or by other
    /// evidence the caller has).
    pub(crate) fn record_host_pid(&self, pid: u32) {
        let mut st = self.state();
        if !st.learned.contains(&pid) {
            st.learned.push(pid);
        }
        st.candidates.clear();
    }

    /// Judges a handshake from the lists read just before and just after this daemon
    /// created a CUDA context, and records a learned pid. For callers that read the lists
    /// themselves; [`OwnPids::learn_around`] does the reading too.
    pub(crate) fn finish_handshake(&self, before: &[u32], after: &[u32]) -> HandshakeOutcome {
        // A procfs guess that appears is preferred over anything appearing beside it.
        let candidates = {
            let st = self.state();
            match (st.candidates.is_empty(), st.guess) {
                (true, Some(g)) => vec![g],
                _ => st.candidates.clone(),
            }
        };
        let outcome = handshake_outcome(before, after, &candidates);
        match &outcome {
            HandshakeOutcome::Learned(p) => {
                self.record_host_pid(*p);
                tracing::info!(
                    host_pid = p,
                    "GPU telemetry: learned this daemon's host pid"
                );
            }
            HandshakeOutcome::Ambiguous(set) => {
                self.state().candidates = set.clone();
                tracing::info!(
                    ?set,
                    "GPU telemetry: several processes made a CUDA context at once; this \
                     daemon's host pid is one of them, the next context will tell"
                );
            }
            _ => {}
        }
        outcome
    }

    /// The handshake around a CUDA context's creation: reads `lister` (NVML's compute
    /// processes), runs `create`, reads `lister` again and learns the pid that appeared.
    /// `create` always runs exactly once and its value is returned whatever the lists say.
    ///
    /// Call it around the process's first context on a GPU (a context that already exists
    /// makes nothing appear). Nothing is read when the host pid is already known. A caller
    /// holding `lister: Option<&mut dyn ComputePids>` passes `lister.as_deref_mut()` each
    /// time.
    pub fn learn_around<L: ComputePids + ?Sized, T>(
        &self,
        lister: Option<&mut L>,
        create: impl FnOnce() -> T,
    ) -> (T, HandshakeOutcome) {
        if !self.needs_handshake() {
            return (create(), HandshakeOutcome::NotNeeded);
        }
        let Some(lister) = lister else {
            return (create(), HandshakeOutcome::NoProcessList);
        };
        let before = match lister.compute_pids() {
            Ok(b) => b,
            Err(e) => return (create(), HandshakeOutcome::ListFailed(e)),
        };
        let value = create();
        let outcome = match lister.compute_pids() {
            Ok(after) => self.finish_handshake(&before, &after),
            Err(e) => HandshakeOutcome::ListFailed(e),
        };
        (value, outcome)
    }

    /// How procfs placed this daemon, when it was asked.
    pub fn mapping(&self) -> Option<PidMapping> {
        self.mapping
    }

    /// One line for logs and reports: the local pid, the basis and the host pids.
    pub fn describe(&self) -> String {
        let hosts = match self.host_pids() {
            Some(p) => format!(
                "host pid {}",
                p.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
            None => "host pid unknown".to_string(),
        };
        let learned = !self.state().learned.is_empty();
        match self.mapping {
            Some(m) => format!(
                "pid {} ({}), {hosts}{}",
                m.local_pid,
                m.basis.describe(),
                if learned { " (learned)" } else { "" }
            ),
            None => hosts,
        }
    }

    /// Whether procfs put the daemon in a container it cannot see out of.
    pub fn in_container(&self) -> bool {
        self.mapping
            .is_some_and(|m| m.basis == MappingBasis::Container)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lists(Vec<Result<Vec<u32>, TelemetryError>>);

    impl ComputePids for Lists {
        fn compute_pids(&mut self) -> Result<Vec<u32>, TelemetryError> {
            if self.0.is_empty() {
                return Err(TelemetryError::Read("no more lists".into()));
            }
            self.0.remove(0)
        }
    }

    fn container() -> OwnPids {
        OwnPids::from_mapping(PidMapping {
            local_pid: 42,
            host_pid: None,
            basis: MappingBasis::Container,
        })
    }

    #[test]
    fn the_pid_that_appears_is_learned() {
        assert_eq!(
            handshake_outcome(&[10, 20], &[20, 90042, 10], &[]),
            HandshakeOutcome::Learned(90042)
        );
        assert_eq!(
            handshake_outcome(&[10, 20], &[10, 20], &[]),
            HandshakeOutcome::NothingNew
        );
        // A process that left in between does not matter.
        assert_eq!(
            handshake_outcome(&[10, 20], &[20, 77], &[]),
            HandshakeOutcome::Learned(77)
        );
        assert_eq!(
            handshake_outcome(&[10], &[10, 77, 78], &[]),
            HandshakeOutcome::Ambiguous(vec![77, 78])
        );
    }

    #[test]
    fn a_second_handshake_narrows_an_ambiguous_one() {
        assert_eq!(
            handshake_outcome(&[], &[78, 90], &[77, 78]),
            HandshakeOutcome::Learned(78)
        );
        assert_eq!(
            handshake_outcome(&[], &[77, 78, 90], &[77, 78]),
            HandshakeOutcome::Ambiguous(vec![77, 78])
        );
        // No overlap: the earlier set is ignored.
        assert_eq!(
            handshake_outcome(&[], &[90], &[77, 78]),
            HandshakeOutcome::Learned(90)
        );
    }

    #[test]
    fn learn_around_reads_before_and_after_the_creation() {
        let own = container();
        assert_eq!(own.host_pids(), None);
        assert!(own.needs_handshake() && own.in_container());
        let mut lists = Lists(vec![Ok(vec![5151]), Ok(vec![5151, 90042])]);
        let (v, o) = own.learn_around(Some(&mut lists), || "context");
        assert_eq!((v, o), ("context", HandshakeOutcome::Learned(90042)));
        assert_eq!(own.host_pids(), Some(vec![90042]));
        assert!(
            own.describe().contains("host pid 90042 (learned)"),
            "{}",
            own.describe()
        );
        // Known now: nothing is read again.
        let mut empty = Lists(vec![]);
        let (_, o) = own.learn_around(Some(&mut empty), || ());
        assert_eq!(o, HandshakeOutcome::NotNeeded);
    }

    #[test]
    fn ambiguity_then_a_second_context_settles_it() {
        let own = container();
        let mut lists = Lists(vec![
            Ok(vec![]),
            Ok(vec![77, 78]),
            Ok(vec![77]),
            Ok(vec![77, 78, 91]),
        ]);
        // As the code that opens GPUs holds it: one optional lister, reborrowed per GPU.
        let mut lister: Option<&mut dyn ComputePids> = Some(&mut lists);
        let mut seen = Vec::new();
        for _gpu in 0..2 {
            let (_, o) = own.learn_around(lister.as_deref_mut(), || ());
            seen.push((o, own.host_pids()));
        }
        // The first is ambiguous and leaves the pid unknown; the second settles it.
        assert_eq!(
            seen,
            [
                (HandshakeOutcome::Ambiguous(vec![77, 78]), None),
                (HandshakeOutcome::Learned(78), Some(vec![78])),
            ]
        );
    }

    #[test]
    fn failures_still_create_and_learn_nothing() {
        let own = container();
        let mut created = 0;
        let (_, o) = own.learn_around(None::<&mut Lists>, || created += 1);
        assert_eq!(o, HandshakeOutcome::NoProcessList);
        let mut lists = Lists(vec![Err(TelemetryError::Read("lost".into()))]);
        let (_, o) = own.learn_around(Some(&mut lists), || created += 1);
        assert_eq!(
            o,
            HandshakeOutcome::ListFailed(TelemetryError::Read("lost".into()))
        );
        let mut lists = Lists(vec![Ok(vec![1])]);
        let (_, o) = own.learn_around(Some(&mut lists), || created += 1);
        assert!(matches!(o, HandshakeOutcome::ListFailed(_)), "{o:?}");
        assert_eq!(created, 3);
        assert_eq!(own.host_pids(), None);
    }

    #[test]
    fn certain_guessed_and_fixed_pids() {
        let host = OwnPids::from_mapping(PidMapping {
            local_pid: 7,
            host_pid: Some(7),
            basis: MappingBasis::HostNamespace,
        });
        assert_eq!(host.host_pids(), Some(vec![7]));
        assert!(!host.needs_handshake());
        let guessed = OwnPids::from_mapping(PidMapping {
            local_pid: 7,
            host_pid: Some(7),
            basis: MappingBasis::NoNsPid,
        });
        assert_eq!(guessed.host_pids(), Some(vec![7]));
        assert!(guessed.needs_handshake(), "a guess can be confirmed");
        // A guess that appears in a handshake is confirmed, whatever appears beside it.
        assert_eq!(
            guessed.finish_handshake(&[1], &[1, 7, 99]),
            HandshakeOutcome::Learned(7)
        );
        assert_eq!(guessed.host_pids(), Some(vec![7]));
        assert!(!guessed.needs_handshake());
        // A learned pid replaces a guess that did not appear.
        let guessed = OwnPids::from_mapping(PidMapping {
            local_pid: 7,
            host_pid: Some(7),
            basis: MappingBasis::Unverified,
        });
        assert_eq!(
            guessed.finish_handshake(&[1], &[1, 9007]),
            HandshakeOutcome::Learned(9007)
        );
        assert_eq!(guessed.host_pids(), Some(vec![9007]));
        let fixed = OwnPids::fixed(vec![3, 1]);
        assert_eq!(fixed.host_pids(), Some(vec![1, 3]));
        assert_eq!(fixed.describe(), "host pid 1, 3");
        assert_eq!(OwnPids::fixed(vec![]).host_pids(), None);
    }
}
