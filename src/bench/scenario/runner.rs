//! Running one policy of a scenario on a fresh node: the open-loop load generator, the job
//! submissions, the timeline sampled every 100 ms, and the jobs' outcomes at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::summary::{JobOutcome, PolicyReport, Sample, quantile, summarise};
use super::{PolicyName, Scenario, ScenarioError, ScenarioJob};
use crate::config::{Deadline, JobConfig, NodeConfig, OptimizerKind, ServiceConfig};
use crate::node::{JobState, LoadedService, Node};
use crate::util::rng::Rng;

/// A request as the generator hands it to the collector: its scheduled arrival (s), how late
/// it was submitted (s), and its pending answer (`None`: refused).
type Sent = (f64, f64, Option<crate::serve::Pending>);

/// What the collector gathers: `(arrival, server latency)` per request, and lateness.
type Collected = (Vec<(f64, f64)>, Vec<f64>);

/// Trains the service's model once and writes it to `dir/service.ckpt`.
pub(super) fn prepare_model(s: &Scenario, dir: &Path) -> Result<PathBuf, ScenarioError> {
    let cfg = service_config(s, None);
    let model =
        crate::node::services::build_model(&cfg).map_err(|e| ScenarioError::Run(e.to_string()))?;
    let path = dir.join("service.ckpt");
    crate::model::checkpoint::Checkpoint {
        params: model.params,
        normalizer: model.normalizer,
        training: None,
    }
    .save(&path)
    .map_err(|e| ScenarioError::Run(e.to_string()))?;
    Ok(path)
}

/// The scenario's service as the node configures it, from `checkpoint` when given, else
/// trained on its warm-up data.
fn service_config(s: &Scenario, checkpoint: Option<PathBuf>) -> ServiceConfig {
    let mut cfg = crate::config::default_config().services[0].clone();
    cfg.name = s.service.name.clone();
    cfg.layers = Some(s.service.layers.clone());
    cfg.warmup_data = if checkpoint.is_some() {
        None
    } else {
        Some(s.service.warmup_data.clone())
    };
    cfg.checkpoint = checkpoint;
    cfg.seed = s.seed;
    cfg.max_queue = s.service.max_queue;
    cfg.slo.p99_ms = s.service.slo_p99_ms;
    cfg.timeout_ms = s.service.slo_p99_ms * 10.0;
    cfg.slo.window_ms = s.service.window_ms;
    cfg.batching.max_batch_size = s.service.max_batch_size;
    cfg.batching.max_queue_delay_ms = 0.0;
    cfg.replicas = s.service.replicas.clone();
    cfg
}

/// The node of one policy's run: the scenario's settings, its service from `checkpoint`,
/// state under `state_dir`, no jobs yet.
fn node_config(s: &Scenario, checkpoint: &Path, state_dir: &Path) -> NodeConfig {
    let mut c = crate::config::default_config();
    c.state_dir = state_dir.to_path_buf();
    c.control_period_ms = s.control_period_ms;
    c.device.cpu_threads = s.cores;
    c.device.cpu_split = s.cpu_split.clone();
    c.control.reserve_frac = s.reserve_frac;
    c.control.leftover = match s.leftover.as_str() {
        "best-effort" => crate::config::Leftover::BestEffort,
        "spread" => crate::config::Leftover::Spread,
        _ => crate::config::Leftover::Idle,
    };
    c.control.decision_log = None;
    c.services = vec![service_config(s, Some(checkpoint.to_path_buf()))];
    // The service's model is written beside the run, outside the working directory.
    if let Some(dir) = checkpoint.parent() {
        c.paths.data_dirs.push(dir.to_path_buf());
    }
    c.jobs = Vec::new();
    c
}

/// A scenario job as the node configures it, its deadline counted from `start`.
fn job_config(j: &ScenarioJob, start: SystemTime) -> JobConfig {
    let mut c = crate::config::default_config().jobs[0].clone();
    c.name = j.name.clone();
    c.data = j.data.clone();
    c.layers = j.layers.clone();
    c.epochs = j.epochs;
    c.batch_size = j.batch_size;
    c.target_accuracy = j.target_accuracy;
    c.optimizer = OptimizerKind::Adam;
    c.lr = 1e-3;
    c.checkpoint_every_steps = 1_000_000;
    c.best_effort = j.deadline_s.is_none();
    c.deadline = j
        .deadline_s
        .map(|d| Deadline::At(start + Duration::from_secs_f64(d)));
    c
}

/// Runs `policy` for the scenario's duration on a fresh node and summarises it.
pub(super) fn run_policy(
    s: &Scenario,
    policy: PolicyName,
    ckpt: &Path,
    state_dir: &Path,
) -> Result<PolicyReport, ScenarioError> {
    let node = start_node(s, policy, ckpt, state_dir)?;
    let svc = node
        .service(&s.service.name)
        .map_err(|e| ScenarioError::Run(e.to_string()))?;
    let features = svc.io.features;
    let mut rng = Rng::derived(s.seed, 0x5E5);
    let rows: Vec<Vec<f32>> = (0..256)
        .map(|_| (0..features).map(|_| rng.normal() as f32).collect())
        .collect();
    // One unmeasured second at the starting rate first, the same for every policy: the
    // first requests of a fresh process pay for page faults and thread start-up.
    warm_up(&svc, &rows, s.rate_at(0.0), s.seed);
    let times = s.arrival_times();
    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Arrivals: submit on schedule; answers are collected in order by a second thread.
    let (tx, rx) = std::sync::mpsc::channel::<Sent>();
    let generator = generate(svc.clone(), times, rows, t0, stop.clone(), tx);
    let collector = collect(rx);
    // Jobs, each submitted at its time on a thread of its own (admission measures a step).
    let starters: Vec<_> = s
        .jobs
        .clone()
        .into_iter()
        .map(|j| submit_at_start(node.clone(), j, t0, wall0))
        .collect();
    let timeline = sample_timeline(s, policy, &node, &svc, t0);
    stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    let (latencies, mut lateness) = collector
        .join()
        .map_err(|_| ScenarioError::Run("the answer collector panicked".into()))?;
    lateness.sort_by(|a, b| a.total_cmp(b));
    let generator_late_p99_ms = 1000.0 * quantile(&lateness, 0.99);
    let refusals: HashMap<String, Option<String>> =
        starters.into_iter().filter_map(|h| h.join().ok()).collect();

    // Jobs' outcomes before the node stops them.
    let used_core_s: f64 = svc
        .replicas()
        .iter()
        .map(|r| r.lane.usage().core_s)
        .sum::<f64>()
        + node
            .jobs()
            .iter()
            .map(|j| j.lane().usage().core_s)
            .sum::<f64>();
    let jobs = job_outcomes(s, &node, wall0, &refusals);
    let cores: f64 = node.devices().map(|d| node.capacity_of(d)).sum();
    node.shutdown();

    let mut r = summarise(
        s,
        policy.name(),
        latencies,
        jobs,
        timeline,
        used_core_s / cores.max(f64::MIN_POSITIVE),
    );
    r.generator_late_p99_ms = generator_late_p99_ms;
    Ok(r)
}

/// A started node under `policy`, once its service is ready (60 s at most).
fn start_node(
    s: &Scenario,
    policy: PolicyName,
    ckpt: &Path,
    state_dir: &Path,
) -> Result<Arc<Node>, ScenarioError> {
    let node = Node::new(node_config(s, ckpt, state_dir))
        .map_err(|e| ScenarioError::Run(e.to_string()))?;
    node.set_policy(policy.policy(s));
    node.start();
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !node.is_ready() {
        if Instant::now() > ready_by {
            node.shutdown();
            return Err(ScenarioError::Run(
                "the service did not become ready in 60 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(node)
}

/// The load generator: submits a row at each of `times` (seconds after `t0`) until done,
/// stopped, or the collector is gone, sending each request on to `tx`.
fn generate(
    svc: Arc<LoadedService>,
    times: Vec<f64>,
    rows: Vec<Vec<f32>>,
    t0: Instant,
    stop: Arc<AtomicBool>,
    tx: Sender<Sent>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for (i, &t) in times.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = t0 + Duration::from_secs_f64(t);
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                let left = due - now;
                if left > Duration::from_micros(200) {
                    std::thread::sleep(left - Duration::from_micros(100));
                } else {
                    std::thread::yield_now();
                }
            }
            let late = t0.elapsed().as_secs_f64() - t;
            let pending = submit(&svc, rows[i % rows.len()].clone());
            if tx.send((t, late, pending)).is_err() {
                break;
            }
        }
    })
}

/// Submits one row to the replica the service's split chooses, as the API does; None when
/// it is refused.
fn submit(svc: &LoadedService, row: Vec<f32>) -> Option<crate::serve::Pending> {
    svc.choose(1).ok()?.batcher.submit(row).ok()
}

/// The answer collector: waits for each request in order; a refused or failed one counts as
/// infinitely late.
fn collect(rx: Receiver<Sent>) -> JoinHandle<Collected> {
    std::thread::spawn(move || {
        let mut lat = Vec::new();
        let mut late = Vec::new();
        for (t, l, p) in rx {
            let answer = p.map(|p| p.wait());
            let server_s = match answer {
                Some(Ok(r)) => (r.queue_us + r.compute_us) as f64 / 1e6,
                _ => f64::INFINITY,
            };
            lat.push((t, server_s));
            late.push(l);
        }
        (lat, late)
    })
}

/// Submits `j` at its start time on a thread of its own; the thread returns its name and the
/// refusal, if any.
fn submit_at_start(
    node: Arc<Node>,
    j: ScenarioJob,
    t0: Instant,
    wall0: SystemTime,
) -> JoinHandle<(String, Option<String>)> {
    std::thread::spawn(move || {
        let due = t0 + Duration::from_secs_f64(j.start_s);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        (
            j.name.clone(),
            node.submit_job(job_config(&j, wall0))
                .err()
                .map(|e| e.to_string()),
        )
    })
}

/// Samples the timeline every 100 ms from `t0` until the scenario's duration is over.
fn sample_timeline(
    s: &Scenario,
    policy: PolicyName,
    node: &Node,
    svc: &LoadedService,
    t0: Instant,
) -> Vec<Sample> {
    let mut timeline = Vec::new();
    let mut next = t0;
    let end = t0 + Duration::from_secs_f64(s.duration_s);
    while Instant::now() < end {
        next += Duration::from_millis(100);
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        timeline.push(sample(s, policy, node, svc, t0));
    }
    timeline
}

/// One sample of the timeline, now.
fn sample(
    s: &Scenario,
    policy: PolicyName,
    node: &Node,
    svc: &LoadedService,
    t0: Instant,
) -> Sample {
    let last = node.last_decisions();
    let svc_decision = last.services.iter().find(|x| x.name == s.service.name);
    let shares = node_shares(policy, node, svc);
    let enforced = svc.primary().lane.is_enforced();
    Sample {
        t_s: t0.elapsed().as_secs_f64(),
        shares: if enforced { shares } else { Vec::new() },
        p99_s: node
            .service_measure(&s.service.name)
            .filter(|m| m.window.count > 0)
            .map(|m| m.window.total.p99),
        busy_frac: node.busy_and_ticks().0,
        arrival_rate: node
            .service_measure(&s.service.name)
            .map_or(0.0, |m| m.arrival_rate),
        feed_forward: svc_decision.map(|d| d.feed_forward),
        cost_per_request_s: svc_decision.and_then(|d| d.cost_per_request_s),
        batch_limit: svc.max_batch_size(),
    }
}

/// The tenants' shares now, in shares of the whole node (a share of a part of the CPU
/// weighed by the part's size); a service with several replicas has one entry per replica,
/// `NAME@DEVICE`. Under the controller, the shares of one tick (lanes read one by one could
/// straddle a tick); under a static policy, the lanes' fixed shares.
fn node_shares(policy: PolicyName, node: &Node, svc: &LoadedService) -> Vec<(String, f64)> {
    let total: f64 = node.devices().map(|d| node.capacity_of(d)).sum();
    let weight = |d: crate::node::DeviceId| node.capacity_of(d) / total.max(f64::MIN_POSITIVE);
    let several = svc.replicas().len() > 1;
    let label = |name: &str, d: crate::node::DeviceId| {
        if several && name == svc.name() {
            format!("{name}@{}", node.placement(d).name())
        } else {
            name.to_string()
        }
    };
    if policy == PolicyName::Setpoint {
        let mut out = Vec::new();
        let mut jobs = Vec::new();
        for d in node.devices() {
            let dec = node.last_decisions_of(d);
            let w = weight(d);
            out.extend(
                dec.services
                    .iter()
                    .map(|x| (label(&x.name, d), x.share * w)),
            );
            jobs.extend(dec.jobs.iter().map(|x| (x.name.clone(), x.share * w)));
        }
        out.extend(jobs);
        return out;
    }
    let replicas = svc.replicas().iter().map(|r| {
        (
            label(svc.name(), r.device),
            r.lane.share() * weight(r.device),
        )
    });
    let jobs = node
        .jobs()
        .into_iter()
        .filter(|j| j.state() == JobState::Running)
        .map(|j| {
            let d = node.device_of(j.lane());
            (j.name.clone(), j.lane().share() * weight(d))
        })
        .collect::<Vec<_>>();
    replicas.chain(jobs).collect()
}

/// The scenario's jobs as they stand on `node`, finish times counted from `wall0`.
fn job_outcomes(
    s: &Scenario,
    node: &Node,
    wall0: SystemTime,
    refusals: &HashMap<String, Option<String>>,
) -> Vec<JobOutcome> {
    s.jobs
        .iter()
        .map(|j| {
            let job = node.job(&j.name).ok();
            let finish_s = job.as_ref().and_then(|job| {
                (job.state() == JobState::Completed)
                    .then(|| job.progress().finished_at)
                    .flatten()
                    .and_then(|f| f.duration_since(wall0).ok())
                    .map(|d| d.as_secs_f64())
            });
            let val_accuracy = job
                .as_ref()
                .and_then(|j| j.progress().history.last().and_then(|r| r.val_accuracy));
            let reached = j
                .target_accuracy
                .zip(val_accuracy)
                .is_some_and(|(t, a)| a >= t);
            let on_time = finish_s.zip(j.deadline_s).is_some_and(|(f, d)| f <= d);
            let met_early = reached && on_time;
            let deviation_pct = match (finish_s, j.deadline_s) {
                (Some(f), Some(d)) if !met_early => Some(100.0 * (f - d) / (d - j.start_s)),
                _ => None,
            };
            JobOutcome {
                name: j.name.clone(),
                deadline_s: j.deadline_s,
                finish_s,
                deviation_pct,
                missed: j.deadline_s.is_some()
                    && finish_s.zip(j.deadline_s).is_none_or(|(f, d)| f > d),
                refused: refusals.get(&j.name).cloned().flatten(),
                state: job.as_ref().map(|j| j.state()),
                val_accuracy,
                epochs_done: job.as_ref().map_or(0, |j| j.progress().epochs_done),
                target_accuracy: j.target_accuracy,
                met_early,
            }
        })
        .collect()
}

/// Sends one second of Poisson arrivals at `rate` and waits for the answers.
fn warm_up(svc: &LoadedService, rows: &[Vec<f32>], rate: f64, seed: u64) {
    let mut rng = Rng::derived(seed, 0xBA5E);
    let start = Instant::now();
    let mut pending = Vec::new();
    if rate <= 0.0 {
        return;
    }
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.next_f64()).ln() / rate;
        if t >= 1.0 {
            break;
        }
        if let Some(wait) =
            (start + Duration::from_secs_f64(t)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        if let Some(p) = submit(svc, rows[pending.len() % rows.len()].clone()) {
            pending.push(p);
        }
    }
    for p in pending {
        let _ = p.wait();
    }
}
