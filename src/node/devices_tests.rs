//! Tests of the device decision: probing, fallbacks, green contexts, selections.
use super::*;

fn gpu(index: usize) -> GpuInfo {
    GpuInfo {
        index,
        name: "test".into(),
        uuid: format!("GPU-{index}"),
        compute_capability: (9, 0),
        sm_count: 132,
        total_memory: 1 << 30,
        priority_range: (0, -5),
        driver_version: 12080,
    }
}

fn config(kind: DeviceKind, require_gpu: bool) -> DeviceConfig {
    DeviceConfig {
        kind,
        gpus: GpuSelection::All,
        require_gpu,
        cpu_threads: 0,
        share_mechanism: ShareMechanism::Auto,
        memory_limit_mib: None,
        cpu_split: Vec::new(),
        gemm_wgmma: false,
        cuda_graphs: false,
    }
}

fn failing_open(_: &GpuInfo, green: bool) -> Result<Arc<CudaDevice>, DeviceError> {
    Err(DeviceError::Unavailable(if green {
        "green contexts on GPU 0: the driver supports CUDA 12.2; green contexts need 12.4 or newer"
            .into()
    } else {
        "out of memory".into()
    }))
}

#[test]
fn without_a_gpu_auto_falls_back_and_cuda_refuses() {
    let auto = decide(
        &config(DeviceKind::Auto, false),
        Err("libcuda not found".into()),
        failing_open,
    )
    .unwrap();
    assert_eq!(auto.backend, "cpu");
    assert!(matches!(auto.placements[..], [Placement::Cpu(_)]));
    assert!(auto.note.contains("libcuda not found"), "{}", auto.note);
    for cfg in [
        config(DeviceKind::Cuda, false),
        config(DeviceKind::Auto, true),
    ] {
        let err = decide(&cfg, Err("libcuda not found".into()), failing_open).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("libcuda not found") && msg.contains("device.kind = \"auto\""),
            "{msg}"
        );
    }
    let cpu = decide(
        &config(DeviceKind::Cpu, false),
        Ok(vec![gpu(0)]),
        failing_open,
    )
    .unwrap();
    assert_eq!(cpu.backend, "cpu");
}

#[test]
fn a_gpu_that_cannot_be_opened_is_named_with_the_reason() {
    let auto = decide(
        &config(DeviceKind::Auto, false),
        Ok(vec![gpu(0), gpu(1)]),
        failing_open,
    )
    .unwrap();
    assert_eq!(auto.backend, "cpu");
    assert_eq!(auto.gpus.len(), 2, "the GPUs are still reported");
    assert!(
        auto.note.contains(
            "cannot open them (GPU 0 (test): device unavailable: out of memory; GPU 1 (test): \
             device unavailable: out of memory)"
        ),
        "{}",
        auto.note
    );
    let err = decide(
        &config(DeviceKind::Cuda, false),
        Ok(vec![gpu(0)]),
        failing_open,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot open any selected GPU (GPU 0 (test): device unavailable"),
        "{err}"
    );
}

#[test]
fn green_contexts_that_cannot_be_built_refuse_to_start_even_under_auto() {
    let mut cfg = config(DeviceKind::Auto, false);
    cfg.share_mechanism = ShareMechanism::Green;
    let err = decide(&cfg, Ok(vec![gpu(0)]), failing_open)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("share_mechanism = \"green\"")
            && err.contains("need 12.4")
            && err.contains("\"cta\""),
        "{err}"
    );
    // Without a GPU the setting has nothing to act on.
    let ok = decide(&cfg, Err("no driver".into()), failing_open).unwrap();
    assert_eq!(ok.backend, "cpu");
}

#[test]
fn auto_asks_for_green_contexts_first_and_cta_never_does() {
    for (mechanism, want) in [
        (ShareMechanism::Auto, vec![(0, true), (0, false)]),
        (ShareMechanism::Cta, vec![(0, false)]),
    ] {
        let mut cfg = config(DeviceKind::Auto, false);
        cfg.share_mechanism = mechanism;
        let mut calls = Vec::new();
        let report = decide(&cfg, Ok(vec![gpu(0)]), |g: &GpuInfo, green: bool| {
            calls.push((g.index, green));
            failing_open(g, green)
        })
        .unwrap();
        assert_eq!(calls, want, "{mechanism:?}");
        // When CTA budgets fail too, the GPU is reported with the plain open's reason.
        assert!(
            report.note.contains("out of memory") && !report.note.contains("need 12.4"),
            "{}",
            report.note
        );
    }
}

#[test]
fn a_selection_of_missing_gpus_names_them() {
    let err = select(vec![gpu(0)], &GpuSelection::Indices(vec![0, 2])).unwrap_err();
    assert!(err.contains("GPU 2") && err.contains("reports 1"), "{err}");
    let ok = select(vec![gpu(0), gpu(1)], &GpuSelection::Indices(vec![1])).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].index, 1);
}
