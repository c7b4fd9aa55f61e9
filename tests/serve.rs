//! The inference service core: each request gets its own row, batches form under load, the
//! queue is bounded, bad rows are refused, and shutdown answers what was accepted.

use std::sync::Arc;
use std::time::Duration;

use setpoint::data::Normalizer;
use setpoint::device::{Backend, CpuBackend};
use setpoint::model::{Mlp, MlpParams, Workspace};
use setpoint::serve::{BatchConfig, InferenceService, ServeError, ServedModel};
use setpoint::util::rng::Rng;

const LAYERS: [usize; 3] = [8, 16, 4];

fn model() -> ServedModel {
    let mut rng = Rng::new(3);
    ServedModel {
        params: MlpParams::init(&LAYERS, 5).unwrap(),
        normalizer: Normalizer {
            mean: (0..8).map(|_| rng.uniform(-1.0, 1.0) as f32).collect(),
            std: (0..8).map(|_| rng.uniform(0.5, 2.0) as f32).collect(),
        },
    }
}

/// Probabilities for one row computed directly, without the service.
fn direct(m: &ServedModel, row: &[f32]) -> Vec<f32> {
    let be = CpuBackend::single();
    let mlp = Mlp::from_params(&be, &m.params).unwrap();
    let mut ws = Workspace::new(&be, &LAYERS, 1, false).unwrap();
    let mut x = row.to_vec();
    m.normalizer.apply(&mut x);
    let xb = be.upload(&x).unwrap();
    mlp.predict(&be, &mut ws, &xb, 1).unwrap();
    let mut out = vec![0.0; LAYERS[2]];
    be.read(ws.output(), &mut out).unwrap();
    out
}

fn rows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (0..8).map(|_| rng.normal() as f32 * 3.0).collect())
        .collect()
}

#[test]
fn each_request_gets_its_own_row_and_batches_form() {
    let m = model();
    let svc = Arc::new(
        InferenceService::start(
            "mlp",
            CpuBackend::single(),
            m.clone(),
            BatchConfig {
                max_batch_size: 16,
                max_queue_delay: Duration::from_millis(50),
                max_queue: 256,
                ..BatchConfig::default()
            },
        )
        .unwrap(),
    );
    assert_eq!((svc.inputs(), svc.outputs()), (8, 4));
    let inputs = rows(64, 9);
    // Submit all rows before waiting for any, so the batcher has company to batch.
    let pending: Vec<_> = inputs
        .iter()
        .map(|r| svc.submit(r.clone()).unwrap())
        .collect();
    let mut max_batch = 0;
    for (row, p) in inputs.iter().zip(pending) {
        let resp = p.wait().unwrap();
        let want = direct(&m, row);
        for (g, w) in resp.output.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "got {:?} want {want:?}", resp.output);
        }
        assert!((resp.output.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(resp.batch_size >= 1 && resp.batch_size <= 16);
        max_batch = max_batch.max(resp.batch_size);
    }
    assert!(max_batch > 1, "no batching happened");
    let stats = svc.stats();
    assert_eq!(stats.success_count, 64);
    assert_eq!(stats.failure_count, 0);
    let batched: u64 = stats
        .batch_sizes
        .iter()
        .enumerate()
        .map(|(size, b)| size as u64 * b.count)
        .sum();
    assert_eq!(batched, 64, "batch size histogram covers every row");
    assert!(stats.batch_count < 64);
    assert!(stats.compute_ns() > 0);
    assert_eq!(stats.queue_hist.count, 64);
    assert_eq!(stats.compute_hist.count, 64);
    assert_eq!(stats.batch_hist.count, stats.batch_count);
    assert!(stats.last_inference_ms > 0);
    assert_eq!(svc.queue_len(), 0);
}

#[test]
fn concurrent_callers_from_many_threads_all_get_answers() {
    let m = model();
    let svc = Arc::new(
        InferenceService::start(
            "mlp",
            CpuBackend::single(),
            m.clone(),
            BatchConfig::default(),
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let svc = svc.clone();
            let m = m.clone();
            std::thread::spawn(move || {
                for row in rows(25, 100 + t) {
                    let resp = svc.infer_blocking(row.clone()).unwrap();
                    let want = direct(&m, &row);
                    assert!(
                        resp.output
                            .iter()
                            .zip(&want)
                            .all(|(g, w)| (g - w).abs() < 1e-6)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(svc.stats().success_count, 200);
}

#[test]
fn max_queue_delay_bounds_the_wait_of_a_lone_request() {
    let svc = InferenceService::start(
        "mlp",
        CpuBackend::single(),
        model(),
        BatchConfig {
            max_batch_size: 32,
            max_queue_delay: Duration::from_millis(30),
            max_queue: 8,
            ..BatchConfig::default()
        },
    )
    .unwrap();
    // A lone request waits for company up to the delay, then runs alone.
    let resp = svc.infer_blocking(rows(1, 1).remove(0)).unwrap();
    assert_eq!(resp.batch_size, 1);
    assert!(resp.queue_us >= 25_000, "queued {} us", resp.queue_us);
    // With no delay it runs at once.
    svc.set_max_queue_delay(Duration::ZERO);
    let resp = svc.infer_blocking(rows(1, 2).remove(0)).unwrap();
    assert!(resp.queue_us < 25_000, "queued {} us", resp.queue_us);
}

#[test]
fn a_full_queue_refuses_and_nothing_accepted_is_lost_on_shutdown() {
    // A model slow enough (64 MB of weights per row) that the queue fills while the
    // batcher works on its first request.
    let layers = [8, 4096, 4096, 4];
    let slow = ServedModel {
        params: MlpParams::init(&layers, 1).unwrap(),
        normalizer: Normalizer::identity(8),
    };
    let svc = InferenceService::start(
        "mlp",
        CpuBackend::single(),
        slow,
        BatchConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            max_queue: 4,
            ..BatchConfig::default()
        },
    )
    .unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for row in rows(20, 4) {
        match svc.submit(row) {
            Ok(p) => accepted.push(p),
            Err(e) => {
                assert_eq!(
                    e,
                    ServeError::Overloaded {
                        service: "mlp".into(),
                        capacity: 4
                    }
                );
                assert_eq!(
                    e.to_string(),
                    "service mlp: queue is full (4 requests waiting); retry later"
                );
                refused += 1;
            }
        }
    }
    // 4 queued, plus the one or two the batcher may have taken off the queue meanwhile.
    assert!(
        (4..=7).contains(&accepted.len()),
        "accepted {}",
        accepted.len()
    );
    assert_eq!(refused, 20 - accepted.len());
    assert_eq!(svc.stats().rejected_count, refused as u64);
    // Shutting down answers every accepted request.
    let n = accepted.len();
    svc.shutdown();
    let answered = accepted.into_iter().filter_map(|p| p.wait().ok()).count();
    assert_eq!(answered, n);
}

#[test]
fn malformed_rows_are_refused_with_what_was_wrong() {
    let svc = InferenceService::start("mlp", CpuBackend::single(), model(), BatchConfig::default())
        .unwrap();
    let err = svc.submit(vec![0.0; 7]).err().unwrap();
    assert_eq!(
        err.to_string(),
        "service mlp: input has 7 values, the model takes 8"
    );
    let mut row = vec![0.0; 8];
    row[3] = f32::NAN;
    let err = svc.submit(row).err().unwrap();
    assert_eq!(
        err.to_string(),
        "service mlp: input value 3 is NaN; inputs must be finite numbers"
    );
    let mut row = vec![0.0; 8];
    row[0] = f32::INFINITY;
    assert!(matches!(
        svc.submit(row),
        Err(ServeError::NotFinite { index: 0, .. })
    ));
    // The service keeps working after bad input.
    assert!(svc.infer_blocking(vec![0.5; 8]).is_ok());
}

#[test]
fn batch_size_can_be_changed_within_the_limit() {
    let svc = InferenceService::start(
        "mlp",
        CpuBackend::single(),
        model(),
        BatchConfig {
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(20),
            max_queue: 64,
            ..BatchConfig::default()
        },
    )
    .unwrap();
    svc.set_max_batch_size(2);
    assert_eq!(svc.max_batch_size(), 2);
    let pending: Vec<_> = rows(10, 5)
        .into_iter()
        .map(|r| svc.submit(r).unwrap())
        .collect();
    for p in pending {
        assert!(p.wait().unwrap().batch_size <= 2);
    }
    svc.set_max_batch_size(1000);
    assert_eq!(svc.max_batch_size(), 8);
    svc.set_max_batch_size(0);
    assert_eq!(svc.max_batch_size(), 1);
}

#[tokio::test]
async fn async_callers_are_answered() {
    let m = model();
    let svc = InferenceService::start(
        "mlp",
        CpuBackend::single(),
        m.clone(),
        BatchConfig::default(),
    )
    .unwrap();
    let row = rows(1, 77).remove(0);
    let resp = svc.submit(row.clone()).unwrap().recv().await.unwrap();
    let want = direct(&m, &row);
    assert!(
        resp.output
            .iter()
            .zip(&want)
            .all(|(g, w)| (g - w).abs() < 1e-6)
    );
}

#[test]
fn a_request_past_its_timeout_leaves_the_queue_unrun() {
    let svc = InferenceService::start("mlp", CpuBackend::single(), model(), BatchConfig::default())
        .unwrap();
    let r = rows(1, 9).remove(0);
    // Already out of time when it reaches the batcher: answered, never computed.
    let err = svc
        .submit_with_timeout(r.clone(), Duration::ZERO)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(err, ServeError::TimedOut { ref service, timeout_us: 0 } if service == "mlp"),
        "{err:?}"
    );
    assert!(err.to_string().contains("dropped unrun"), "{err}");
    let st = svc.stats();
    assert_eq!(st.expired_count, 1);
    assert_eq!(st.success_count, 0);
    assert_eq!(st.batch_count, 0);
    assert_eq!(svc.queue_len(), 0);
    // A generous timeout is answered as usual.
    let ok = svc
        .submit_with_timeout(r, Duration::from_secs(60))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(ok.output.len(), LAYERS[2]);
    let st = svc.stats();
    assert_eq!(
        (st.expired_count, st.success_count, st.batch_count),
        (1, 1, 1)
    );
}

#[test]
fn an_async_waiter_stops_at_its_deadline_while_a_long_batch_runs() {
    // A slow model: one row is tens of megabytes of weights.
    let layers = [8, 2048, 2048, 4];
    let slow = ServedModel {
        params: MlpParams::init(&layers, 1).unwrap(),
        normalizer: Normalizer::identity(8),
    };
    let svc = InferenceService::start(
        "slow",
        CpuBackend::single(),
        slow,
        BatchConfig {
            max_batch_size: 1,
            ..BatchConfig::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let r = rows(1, 2).remove(0);
    // Keep the batcher busy, then queue one request with a short timeout behind the others.
    let ahead: Vec<_> = (0..16).map(|_| svc.submit(r.clone()).unwrap()).collect();
    let late = svc
        .submit_with_timeout(r.clone(), Duration::from_micros(200))
        .unwrap();
    let err = rt.block_on(late.recv()).unwrap_err();
    assert!(
        matches!(
            err,
            ServeError::TimedOut {
                timeout_us: 200,
                ..
            }
        ),
        "{err:?}"
    );
    for p in ahead {
        p.wait().unwrap();
    }
    // Whether it expired in the queue or was already batched when its 200 us ran out,
    // every request is accounted for exactly once.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = svc.stats();
        if st.success_count + st.expired_count == 17 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
