//! `setpoint bench scenario FILE`: a scripted co-location scenario on the real engine, run
//! under three policies in one invocation — `setpoint` (the controller), `static` (fixed
//! shares an operator would pick) and `none` (no shares) — with the same arrivals and jobs.
//!
//! # File format (TOML)
//!
//! ```toml
//! name = "colocation"            # shown in reports
//! description = "..."            # optional
//! duration_s = 40                # length of each policy's run
//! cores = 2                      # CPU workers the node divides (0 = all)
//! control_period_ms = 100        # the controller's period
//! seed = 1                       # arrivals and request rows
//! reserve_frac = 0.05            # optional, as in the node config
//! leftover = "idle"              # optional: "best-effort" | "idle" | "spread"
//! policies = ["setpoint", "static", "none"]   # optional, which to run, in order
//!
//! [service]                      # one inference service under open-loop Poisson arrivals
//! name = "mlp"
//! layers = [64, 128, 10]
//! warmup_data = "synthetic:blobs"   # trained once, before the policies run
//! slo_p99_ms = 10
//! window_ms = 1000               # SLO window, also the evaluation window
//! max_batch_size = 32
//! max_queue = 4096               # optional
//! arrivals = [                   # piecewise-constant rate, requests/s, from at_s on
//!   { at_s = 0, rate = 500 },
//!   { at_s = 15, rate = 2000 },
//! ]
//! bursts = [ { at_s = 25, duration_s = 1, rate = 5000 } ]   # optional, added on top
//!
//! [[jobs]]                       # training jobs, submitted at start_s
//! name = "train"
//! data = "synthetic:blobs:size=20000"
//! layers = [64, 256, 256, 10]
//! epochs = 4
//! batch_size = 64                # optional
//! target_accuracy = 0.99         # optional
//! start_s = 0                    # optional
//! deadline_s = 30                # seconds after the scenario's start; absent = best-effort
//!
//! [static]                       # shares of the static policy, by tenant name
//! mlp = 0.5
//! train = 0.45
//! ```
//!
//! Unknown keys are errors. A request's latency is the service's response time as the
//! server measures it — from its arrival in the queue to the end of its batch's compute —
//! which is what the SLO is about and what Triton reports as request latency; a request
//! refused because the queue was full counts as over the SLO. The load generator's own
//! lateness (scheduled arrival to submission: timer wake-ups on a loaded machine) is reported
//! beside it, so a reader can tell the harness from the service.

mod arrivals;
mod costs;
mod file;
mod random;
mod runner;
mod summary;
mod sweep;

pub use costs::{Costs, Measured};
pub use file::{
    Burst, InvalidScenario, PolicyName, RateStep, Scenario, ScenarioError, ScenarioJob,
    ScenarioService, UnknownPolicy,
};
pub use random::{RandomSpec, generate};
pub use summary::{JobOutcome, PolicyReport, Ratios, Report, Sample};
pub use sweep::{ScenarioOutcome, Spread, SweepReport, TargetCheck};

/// Draws and runs random scenarios: see [`sweep::run`].
pub fn run_random(
    spec: &RandomSpec,
    save: Option<&std::path::Path>,
    progress: Progress<'_>,
) -> Result<SweepReport, ScenarioError> {
    sweep::run(spec, save, progress)
}

/// A sweep's report as text.
pub fn sweep_text(r: &SweepReport) -> String {
    sweep::text(r)
}

/// Progress lines while the scenario runs (stderr), unless quiet.
pub(crate) type Progress<'a> = &'a mut dyn FnMut(&str);

/// Runs every policy of the scenario and reports.
pub fn run(s: &Scenario, progress: Progress<'_>) -> Result<Report, ScenarioError> {
    run_observed(s, progress, &mut |_| {})
}

/// [`run`], telling `on_phase` when each policy's measured run starts (`Some(policy)`) and
/// ends (`None`), so that samples taken beside it can be attributed.
pub(crate) fn run_observed(
    s: &Scenario,
    progress: Progress<'_>,
    on_phase: &mut dyn FnMut(Option<&str>),
) -> Result<Report, ScenarioError> {
    let dir = tempfile::Builder::new()
        .prefix("setpoint-scenario-")
        .tempdir()
        .map_err(|e| ScenarioError::Run(format!("cannot make a temporary directory: {e}")))?;
    progress(&format!(
        "training the service model on {}",
        s.service.warmup_data
    ));
    let ckpt = runner::prepare_model(s, dir.path())?;
    let mut policies = Vec::new();
    for &policy in &s.policies {
        let name = policy.name();
        progress(&format!("running policy {name} for {} s", s.duration_s));
        let state = dir.path().join(name);
        on_phase(Some(name));
        let r = runner::run_policy(s, policy, &ckpt, &state);
        on_phase(None);
        let r = r?;
        progress(&format!(
            "  {name}: {:.1} % of windows and {:.2} % of requests within the SLO, p99 {:.2} ms, {} deadline misses",
            r.windows_within_slo_pct, r.requests_within_slo_pct, r.p99_ms, r.deadline_misses
        ));
        policies.push(r);
    }
    let ratios = summary::ratios(&policies);
    Ok(Report {
        scenario: s.name.clone(),
        slo_p99_ms: s.service.slo_p99_ms,
        duration_s: s.duration_s,
        cores: if s.cores == 0 {
            crate::device::cpu::available_cores()
        } else {
            s.cores
        },
        policies,
        ratios,
    })
}
