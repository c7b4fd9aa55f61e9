//! The protocols inference requests come over, for the per-protocol metrics.

/// The transport an inference request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The Open Inference Protocol over HTTP/REST (`/v2/models/{model}/infer`).
    Http,
    /// The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`).
    Grpc,
}

impl Protocol {
    /// Every protocol, in the order metrics list them.
    pub const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

    /// The `protocol` label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }

    /// Its position in [`Protocol::ALL`] (the declaration order).
    pub fn index(self) -> usize {
        self as usize
    }
}
