use super::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

fn data() -> Dataset {
    crate::data::load("synthetic:spirals:size=10", &Default::default()).unwrap()
}

fn measured(data: Dataset) -> Measured {
    Measured {
        data,
        steps_per_epoch: 1,
        step_cost_core_s: 0.5,
        width: None,
        device_bytes: None,
    }
}

type Start = fn() -> Result<(), NodeError>;
type Measure = fn(Dataset) -> Result<(), NodeError>;

/// Threads a wait must not start.
fn none() -> Threads<Start, Measure> {
    Threads {
        rescue: || panic!("the load was started again"),
        measure: |_| panic!("the measurement was started"),
    }
}

fn unseen(_: &Watched) -> Option<Look> {
    None
}

/// A measurement that answers with its data after `after`.
fn measure_on(
    tx: SyncSender<Progress>,
    after: Duration,
) -> impl FnOnce(Dataset) -> Result<(), NodeError> {
    move |data| {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            tx.send(Progress::Measured(Ok(measured(data)))).unwrap();
        });
        Ok(())
    }
}

#[test]
fn the_bound_covers_the_load_and_not_the_measurement() {
    // Nothing loaded within the bound: timed out.
    let (_tx, rx) = sync_channel(5);
    let got = wait(&rx, Duration::from_millis(1), || false, none(), unseen).err();
    assert_eq!(got, Some(Abandoned::TimedOut(None)));
    // Loaded in time: the measurement is started and waited for past the bound.
    let (tx, rx) = sync_channel(5);
    tx.send(Progress::Loaded(Ok(data()))).unwrap();
    let threads = Threads {
        rescue: || panic!("the load was started again"),
        measure: measure_on(tx, Duration::from_millis(30)),
    };
    let got = wait(&rx, Duration::from_millis(1), || false, threads, unseen);
    assert_eq!(got.ok().unwrap().unwrap().data.x.len() / 2, 10);
}

#[test]
fn a_stopping_node_is_not_waited_for_and_errors_pass_through() {
    let (_tx, rx) = sync_channel(5);
    let stopping = AtomicBool::new(false);
    let setter = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            stopping.store(true, Ordering::Release);
        });
        let stopping = || stopping.load(Ordering::Acquire);
        wait(&rx, Duration::from_secs(600), stopping, none(), unseen)
    });
    assert_eq!(setter.err(), Some(Abandoned::ShuttingDown));
    // The data's error, and the measurement's.
    let refusal = NodeError::Invalid(vec!["data: bad".into()]);
    for sent in [
        Progress::Loaded(Err(refusal.clone())),
        Progress::Measured(Err(refusal.clone())),
    ] {
        let (tx, rx) = sync_channel(5);
        tx.send(sent).unwrap();
        let got = wait(&rx, Duration::from_secs(600), || false, none(), unseen);
        assert_eq!(got.ok().unwrap().err(), Some(refusal.clone()));
    }
    // Threads that ended without answering are an internal error, not a hang.
    let (tx, rx) = sync_channel::<Progress>(5);
    drop(tx);
    let got = wait(&rx, Duration::from_secs(600), || false, none(), unseen);
    assert!(matches!(got.ok().unwrap(), Err(NodeError::Internal(_))));
}

#[test]
fn a_load_that_fails_after_the_other_was_taken_is_passed_over() {
    let (tx, rx) = sync_channel(5);
    tx.send(Progress::Loaded(Ok(data()))).unwrap();
    let stopped = NodeError::Invalid(vec![format!("data: {}", crate::data::STOPPED)]);
    tx.send(Progress::Loaded(Err(stopped))).unwrap();
    let threads = Threads {
        rescue: || panic!("the load was started again"),
        measure: measure_on(tx, Duration::from_millis(30)),
    };
    let got = wait(&rx, Duration::from_secs(600), || false, threads, unseen);
    assert_eq!(got.ok().unwrap().unwrap().steps_per_epoch, 1);
}

/// Looks at a thread as if `cpu_per_look` of CPU were used in each 200 ms between looks,
/// while it was runnable throughout.
fn fake_looks(cpu_per_look: Duration) -> impl Fn(&Watched) -> Option<Look> {
    let t0 = Instant::now();
    let n = Cell::new(0u32);
    move |_| {
        n.set(n.get() + 1);
        Some(Look {
            at: t0 + Duration::from_millis(200) * n.get(),
            runnable: true,
            cpu: cpu_per_look * n.get(),
        })
    }
}

/// A channel on which the background load has said it started, watched as the calling
/// thread; None (and a line saying the test was skipped) where threads cannot be watched.
fn watching_background() -> Option<(Watched, SyncSender<Progress>, Receiver<Progress>)> {
    let Some(me) = Watched::current() else {
        println!("skipped: threads cannot be watched on this platform");
        return None;
    };
    let (tx, rx) = started_background(me);
    Some((me, tx, rx))
}

/// A channel on which the background load, watched as `me`, has said it started.
fn started_background(me: Watched) -> (SyncSender<Progress>, Receiver<Progress>) {
    let (tx, rx) = sync_channel(5);
    tx.send(Progress::Started(Attempt::Background, Some(me)))
        .unwrap();
    (tx, rx)
}

#[test]
fn a_starved_load_is_started_again_at_normal_priority_and_its_data_measured() {
    let Some((_me, tx, rx)) = watching_background() else {
        return;
    };
    let rescued = Cell::new(false);
    let again = tx.clone();
    let threads = Threads {
        rescue: || {
            rescued.set(true);
            again
                .send(Progress::Started(Attempt::Normal, None))
                .unwrap();
            again.send(Progress::Loaded(Ok(data()))).unwrap();
            Ok(())
        },
        measure: measure_on(tx, Duration::ZERO),
    };
    // 1 ms of CPU in 200 ms: starved once a second of looks is taken.
    let looks = fake_looks(Duration::from_millis(1));
    let got = wait(&rx, Duration::from_secs(600), || false, threads, looks);
    assert!(rescued.get());
    assert_eq!(got.ok().unwrap().unwrap().data.x.len() / 2, 10);
}

#[test]
fn a_load_that_runs_is_not_started_again_and_a_starved_timeout_says_so() {
    let Some((me, _tx, rx)) = watching_background() else {
        return;
    };
    // Half of each 200 ms on a core: not starved, however long it takes.
    let looks = fake_looks(Duration::from_millis(100));
    let got = wait(&rx, Duration::from_millis(600), || false, none(), looks);
    let Err(Abandoned::TimedOut(Some(share))) = got else {
        panic!("{:?}", got.err())
    };
    assert!(!share.starved() && share.ran > 0.4, "{share:?}");
    // The second load's thread is watched too, and a load it could not finish for want of a
    // core is refused with the cores named, not the storage.
    let (tx, rx) = started_background(me);
    let threads = Threads {
        rescue: || {
            tx.send(Progress::Started(Attempt::Normal, Some(me)))
                .unwrap();
            Ok(())
        },
        measure: |_| panic!("the measurement was started"),
    };
    let looks = fake_looks(Duration::from_millis(2));
    let got = wait(&rx, Duration::from_secs(3), || false, threads, looks);
    let Err(Abandoned::TimedOut(Some(share))) = got else {
        panic!("{:?}", got.err())
    };
    assert!(share.starved(), "{share:?}");
}

#[test]
fn a_timed_out_load_names_the_cores_when_it_was_starved_and_the_storage_otherwise() {
    let cfg = crate::config::parse_job_json(&serde_json::json!({
        "name": "j", "data": "big.csv", "layers": [4, 2], "epochs": 1
    }))
    .unwrap();
    let share = |ran: f64, wanting: f64| Share {
        span: Duration::from_secs(1),
        ran,
        wanting,
    };
    let busy = timed_out(&cfg, DATA_LOAD_TIMEOUT, Some(share(0.03, 1.0)));
    assert!(
        busy.starts_with(
            "data: big.csv was not loaded within 60 s (the bound on loading a job's data at \
             submission); the load was stopped and job j was not admitted: the node's cores \
             are busy: the load ran 3 % of its last 1.0 s"
        ) && busy.ends_with("retry when the node is less loaded"),
        "{busy}"
    );
    for share in [None, Some(share(0.03, 0.2)), Some(share(0.9, 1.0))] {
        let slow = timed_out(&cfg, Duration::from_millis(250), share);
        assert!(
            slow.contains("within 250 ms")
                && slow.ends_with("use a smaller file or one on faster storage"),
            "{slow}"
        );
    }
}

#[test]
fn bounds_are_written_in_their_unit() {
    assert_eq!(bound_text(Duration::from_secs(60)), "60 s");
    assert_eq!(bound_text(Duration::from_millis(250)), "250 ms");
    assert_eq!(bound_text(Duration::from_millis(1500)), "1500 ms");
}
