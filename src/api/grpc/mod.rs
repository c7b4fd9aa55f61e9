//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` as Triton and
//! KServe define it (`proto/grpc_service.proto`), on `grpc_listen`, beside the HTTP API and
//! through the same inference path.

mod buffers;
mod codec;
mod models;
mod same_task;
mod server;
mod service;
mod stream;
mod unary;
mod woken;

pub use server::{GrpcDrained, serve};
pub use service::Inference;

/// The messages, the client and the service of `proto/grpc_service.proto`, generated at
/// build time.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}
