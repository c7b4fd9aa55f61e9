//! Every integration test but the GPU ones, as one binary: a module per file, each the
//! tests of one part of the daemon as a user meets it (`cargo test --test integration
//! replicas::` runs one file's). `tests/cuda_backend.rs` is its own binary, the one the
//! device check carries to a GPU host.

mod support {
    pub mod child;
    pub mod daemon;
    pub mod emu;
    pub mod emu_gemm;
    pub mod grpc;
    #[cfg(feature = "kubernetes")]
    pub mod kube_fake;
    pub mod kube_validate;
    pub mod machine;
    pub mod promtool;
    pub mod slow_data;
}

mod architecture;
mod bench_http;
mod cli;
mod client_cli;
mod client_daily;
mod client_logs;
mod client_watch;
mod config;
mod connections;
mod control;
mod cpu_foreign;
mod cpu_kernels;
mod data_loaders;
mod deadlines;
mod device_check;
mod faults;
mod grpc;
mod grpc_calls;
mod grpc_frames;
mod hostile;
mod http;
mod jobs_lifecycle;
mod kernels_async_copy;
mod kernels_check;
mod kernels_emulated;
mod kernels_gemm_emulated;
mod kernels_planted;
mod kernels_wgmma_emulated;
mod kube_manifests;
mod kube_node;
mod kube_operator;
mod lanes;
mod ops_configs;
mod precision;
mod properties;
mod reload;
mod replicas;
mod restart;
mod scenario;
mod serve;
mod soak;
mod split_sim;
mod systemd;
mod telemetry;
mod telemetry_node;
mod training;
mod triton_stats;
mod v2codec;
mod views;
