//! Two lanes busy with GEMMs at shares 0.25 and 0.75, as CTA budgets or as green-context SM
//! partitions: each alone, then both together. The together-rates give the throughput ratio
//! (a share must mean about that fraction of the device); each lane's together-rate against
//! its alone-rate says whether the shares isolate the lanes from each other.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{CheckError, Context, Figures, GpuCheckOptions, Verdict, random};
use crate::device::cuda::{CudaDevice, StreamPriority};
use crate::device::{Backend, Gemm};
use crate::util::rng::Rng;

/// The shares of the two lanes.
pub(crate) const SHARES: [f64; 2] = [0.25, 0.75];
/// A lane beside the other keeps at least this fraction of its rate alone to count as
/// isolated.
pub(crate) const ISOLATION_FRAC: f64 = 0.8;
/// The together-rate ratio (high ÷ low) must lie within this factor of the share ratio.
pub(crate) const RATIO_TOLERANCE: f64 = 1.5;

/// How shares are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mechanism {
    /// Grid caps: share × the device's CTAs.
    CtaBudget,
    /// SM partitions from green contexts.
    GreenContexts,
}

impl Mechanism {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mechanism::CtaBudget => "CTA budgets",
            Mechanism::GreenContexts => "green contexts",
        }
    }
}

/// One lane.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LaneFigures {
    /// Its share.
    pub share: f64,
    /// The CTA budget it was given (share × the device's CTAs).
    pub ctas: usize,
    /// GEMMs per second alone on the device.
    pub alone_per_s: f64,
    /// GEMMs per second beside the other lane.
    pub together_per_s: f64,
    /// together ÷ alone.
    pub kept_frac: f64,
    /// Its busy time (GPU-timed) ÷ wall time while beside the other lane.
    pub together_busy_frac: f64,
}

/// The `lanes` and `lanes-green` sections' figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LanesFigures {
    /// CTA budgets or green contexts.
    pub mechanism: Mechanism,
    /// Square f32 GEMM size each lane repeats.
    pub gemm_n: usize,
    /// Seconds per phase (alone, alone, together).
    pub seconds: f64,
    /// The two lanes, low share first.
    pub lanes: Vec<LaneFigures>,
    /// Together-rates, high share ÷ low share.
    pub ratio: f64,
    /// Shares, high ÷ low.
    pub share_ratio: f64,
    /// Whether each lane kept at least [`ISOLATION_FRAC`] of its rate alone.
    pub isolated: bool,
}

impl Figures for LanesFigures {
    fn verdict(&self) -> Verdict {
        let mut why = Vec::new();
        let (lo, hi) = (
            self.share_ratio / RATIO_TOLERANCE,
            self.share_ratio * RATIO_TOLERANCE,
        );
        if !(lo..=hi).contains(&self.ratio) {
            why.push(format!(
                "throughput ratio {:.2} is outside {lo:.2}..{hi:.2} for shares {:?}",
                self.ratio, SHARES
            ));
        }
        if !self.isolated {
            why.push(format!(
                "not isolated: kept {} of their rates alone (at least {:.0}% needed)",
                self.kept_list(),
                ISOLATION_FRAC * 100.0
            ));
        }
        if why.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(why.join("; "))
        }
    }

    fn headline(&self) -> Vec<String> {
        vec![
            format!(
                "{}: throughput ratio {:.2} for shares {:?} (ideal {:.1}); isolated: {} (kept {})",
                self.mechanism.label(),
                self.ratio,
                SHARES,
                self.share_ratio,
                if self.isolated { "yes" } else { "no" },
                self.kept_list()
            ),
            format!(
                "{0}x{0} f32 GEMMs/s alone {1} / together {2}",
                self.gemm_n,
                self.lanes
                    .iter()
                    .map(|l| format!("{:.0}", l.alone_per_s))
                    .collect::<Vec<_>>()
                    .join(" + "),
                self.lanes
                    .iter()
                    .map(|l| format!("{:.0}", l.together_per_s))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        ]
    }
}

impl LanesFigures {
    fn kept_list(&self) -> String {
        self.lanes
            .iter()
            .map(|l| format!("{:.0}%", l.kept_frac * 100.0))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// What one busy lane did in one phase.
#[derive(Debug, Clone, Copy)]
struct LaneRun {
    ctas: usize,
    per_s: f64,
    busy_frac: f64,
}

/// Lanes at `shares`, all busy at once for `seconds`, each on a thread of its own.
fn busy_lanes(
    dev: &Arc<CudaDevice>,
    shares: &[f64],
    n: usize,
    seconds: f64,
) -> Result<Vec<LaneRun>, CheckError> {
    std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|&share| s.spawn(move || busy_lane(dev, share, n, seconds)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(CheckError::Panicked { thread: "lane" }))
            })
            .collect()
    })
}

fn busy_lane(
    dev: &Arc<CudaDevice>,
    share: f64,
    n: usize,
    seconds: f64,
) -> Result<LaneRun, CheckError> {
    let g = dev
        .lane_backend(StreamPriority::Normal)
        .ctx("creating a lane")?;
    g.set_workers(((share * g.max_workers() as f64).ceil() as usize).max(1));
    let mut rng = Rng::new(9);
    let a = g.upload(&random(&mut rng, n * n)).ctx("uploading")?;
    let b = g.upload(&random(&mut rng, n * n)).ctx("uploading")?;
    let mut c = g.alloc(n * n).ctx("uploading")?;
    let spec = Gemm::new(n, n, n);
    g.gemm(spec, &a, &b, &mut c).ctx("gemm_f32")?;
    g.synchronize().ctx("synchronize")?;
    let busy0 = g.busy_time();
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        g.gemm(spec, &a, &b, &mut c).ctx("gemm_f32")?;
        g.synchronize().ctx("synchronize")?;
        done += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(LaneRun {
        ctas: g.workers(),
        per_s: done as f64 / wall,
        busy_frac: (g.busy_time() - busy0).as_secs_f64() / wall,
    })
}

pub(super) fn run(
    opts: &GpuCheckOptions,
    dev: &Arc<CudaDevice>,
    green: bool,
) -> Result<LanesFigures, CheckError> {
    let seconds = opts.secs(3.0);
    let n = if opts.dry_run { 256 } else { 2048 };
    // Green contexts need a device opened for them; whatever the driver says is the result.
    let green_dev;
    let (dev, mechanism) = if green {
        green_dev =
            super::open_as(opts, super::GREEN).ctx("opening the GPU with green contexts")?;
        (&green_dev, Mechanism::GreenContexts)
    } else {
        (dev, Mechanism::CtaBudget)
    };
    let mut alone = Vec::new();
    for &share in &SHARES {
        alone.push(busy_lanes(dev, &[share], n, seconds)?[0]);
    }
    let together = busy_lanes(dev, &SHARES, n, seconds)?;
    let lanes: Vec<LaneFigures> = SHARES
        .iter()
        .zip(alone.iter().zip(&together))
        .map(|(&share, (a, t))| LaneFigures {
            share,
            ctas: t.ctas,
            alone_per_s: a.per_s,
            together_per_s: t.per_s,
            kept_frac: t.per_s / a.per_s.max(f64::MIN_POSITIVE),
            together_busy_frac: t.busy_frac,
        })
        .collect();
    Ok(LanesFigures {
        mechanism,
        gemm_n: n,
        seconds,
        ratio: lanes[1].together_per_s / lanes[0].together_per_s.max(f64::MIN_POSITIVE),
        share_ratio: SHARES[1] / SHARES[0],
        isolated: lanes.iter().all(|l| l.kept_frac >= ISOLATION_FRAC),
        lanes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(alone: [f64; 2], together: [f64; 2]) -> LanesFigures {
        let lanes: Vec<LaneFigures> = (0..2)
            .map(|i| LaneFigures {
                share: SHARES[i],
                ctas: 10 * (i + 1),
                alone_per_s: alone[i],
                together_per_s: together[i],
                kept_frac: together[i] / alone[i],
                together_busy_frac: 1.0,
            })
            .collect();
        LanesFigures {
            mechanism: Mechanism::CtaBudget,
            gemm_n: 2048,
            seconds: 3.0,
            ratio: together[1] / together[0],
            share_ratio: 3.0,
            isolated: lanes.iter().all(|l| l.kept_frac >= ISOLATION_FRAC),
            lanes,
        }
    }

    #[test]
    fn isolated_lanes_in_the_share_ratio_pass() {
        assert_eq!(
            figures([100.0, 300.0], [95.0, 290.0]).verdict(),
            Verdict::Pass
        );
    }

    #[test]
    fn a_ratio_far_from_the_shares_fails_and_says_so() {
        match figures([100.0, 120.0], [100.0, 120.0]).verdict() {
            Verdict::Fail(why) => assert!(why.contains("throughput ratio 1.20"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_lane_slowed_by_the_other_is_not_isolated() {
        let f = figures([200.0, 300.0], [100.0, 300.0]);
        assert!(!f.isolated);
        match f.verdict() {
            Verdict::Fail(why) => assert!(why.contains("not isolated: kept 50% / 100%"), "{why}"),
            v => panic!("{v:?}"),
        }
        assert!(f.headline()[0].contains("isolated: no"));
    }
}
