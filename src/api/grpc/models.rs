//! The gRPC answers that describe a served model: its metadata, its configuration and its
//! statistics, with the same content as the HTTP answers (`api/http/v2.rs`).

use std::collections::HashMap;

use super::pb;
use crate::node::LoadedService;
use crate::serve::MODEL_VERSION;

/// The model's platform, as HTTP's metadata and config name it.
const PLATFORM: &str = "setpoint_mlp";

fn tensor(name: &str, width: usize) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: name.to_owned(),
        datatype: "FP32".to_owned(),
        shape: vec![-1, width as i64],
    }
}

/// `ModelMetadata`.
pub(crate) fn metadata(svc: &LoadedService) -> pb::ModelMetadataResponse {
    pb::ModelMetadataResponse {
        name: svc.name().to_owned(),
        versions: vec![MODEL_VERSION.to_owned()],
        platform: PLATFORM.to_owned(),
        inputs: vec![tensor(&svc.io.input_name, svc.io.features)],
        outputs: vec![tensor(&svc.io.output_name, svc.io.classes)],
    }
}

/// `ModelConfig`: Triton's model configuration for the service.
pub(crate) fn config(svc: &LoadedService) -> pb::ModelConfig {
    use pb::model_config::SchedulingChoice;
    let config = svc.config();
    let fp32 = pb::DataType::TypeFp32 as i32;
    let delay_us = (config.batching.max_queue_delay_ms * 1000.0).round() as u64;
    let slo = pb::ModelParameter {
        string_value: config.slo.p99_ms.to_string(),
    };
    pb::ModelConfig {
        name: svc.name().to_owned(),
        platform: PLATFORM.to_owned(),
        backend: "setpoint".to_owned(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::Latest(
                pb::model_version_policy::Latest { num_versions: 1 },
            )),
        }),
        max_batch_size: i32::try_from(svc.max_batch_size()).unwrap_or(i32::MAX),
        input: vec![pb::ModelInput {
            name: svc.io.input_name.clone(),
            data_type: fp32,
            dims: vec![svc.io.features as i64],
        }],
        output: vec![pb::ModelOutput {
            name: svc.io.output_name.clone(),
            data_type: fp32,
            dims: vec![svc.io.classes as i64],
        }],
        scheduling_choice: Some(SchedulingChoice::DynamicBatching(
            pb::ModelDynamicBatching {
                max_queue_delay_microseconds: delay_us,
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    max_queue_size: u32::try_from(config.max_queue).unwrap_or(u32::MAX),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        instance_group: vec![pb::ModelInstanceGroup {
            name: svc.name().to_owned(),
            kind: pb::model_instance_group::Kind::Cpu as i32,
            count: 1,
            gpus: Vec::new(),
        }],
        parameters: HashMap::from([("slo_p99_ms".to_owned(), slo)]),
    }
}

fn duration(count: u64, ns: u64) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count, ns })
}

/// Triton's statistics for one model, as `/v2/models/{model}/stats` gives them.
pub(crate) fn statistics(svc: &LoadedService) -> pb::ModelStatistics {
    let st = svc.stats();
    let batch_stats = st
        .batch_sizes
        .iter()
        .enumerate()
        .filter(|(size, b)| *size > 0 && b.count > 0)
        .map(|(size, b)| pb::InferBatchStatistics {
            batch_size: size as u64,
            compute_input: duration(b.count, b.ns.input_ns),
            compute_infer: duration(b.count, b.ns.infer_ns),
            compute_output: duration(b.count, b.ns.output_ns),
        })
        .collect();
    let n = st.success_count;
    let failed = svc.failed_count(&st);
    pb::ModelStatistics {
        name: svc.name().to_owned(),
        version: MODEL_VERSION.to_owned(),
        last_inference: st.last_inference_ms,
        inference_count: st.success_rows,
        execution_count: st.batch_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(n, st.queue_ns + st.compute_ns()),
            fail: duration(failed, 0),
            queue: duration(n, st.queue_ns),
            compute_input: duration(n, st.compute.input_ns),
            compute_infer: duration(n, st.compute.infer_ns),
            compute_output: duration(n, st.compute.output_ns),
            cache_hit: duration(0, 0),
            cache_miss: duration(0, 0),
        }),
        batch_stats,
        ..Default::default()
    }
}
