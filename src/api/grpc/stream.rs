//! `ModelStreamInfer`: Triton's bidirectional stream. Each request on it runs as a unary
//! `ModelInfer` would (perf_analyzer's `--streaming` keeps many in flight on one stream),
//! and its answer goes back as soon as it is ready, so answers may come in another order
//! than the requests: a client matches them by `id`. A request that fails gets an answer
//! with `error_message` set (and the model and id it named) and the stream goes on, as
//! Triton does; only a broken stream ends it.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::pb;
use super::service::Inference;

/// Answers waiting to be sent on one stream; past this a stream's requests wait for its
/// client to read.
const PENDING_ANSWERS: usize = 256;

/// The answers to the requests of `inbound`, as a stream.
pub(super) fn answers(
    service: Inference,
    mut inbound: Streaming<pb::ModelInferRequest>,
) -> super::service::StreamAnswers {
    let (tx, rx) = mpsc::channel(PENDING_ANSWERS);
    tokio::spawn(async move {
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                next = inbound.message() => match next {
                    Ok(Some(msg)) => {
                        let (service, tx) = (service.clone(), tx.clone());
                        running.spawn(async move {
                            let answer = one(&service, msg).await;
                            // A client gone is no error here: its connection's end says so.
                            let _ = tx.send(Ok(answer)).await;
                        });
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let limit = service.max_request_bytes();
                        let _ = tx.send(Err(super::server::stream_error(status, limit))).await;
                        break;
                    }
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        // The client has sent its last request: answer those still running, then end.
        while running.join_next().await.is_some() {}
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The answer on the stream to one request.
async fn one(service: &Inference, msg: pb::ModelInferRequest) -> pb::ModelStreamInferResponse {
    let (model, version, id) = (
        msg.model_name.clone(),
        msg.model_version.clone(),
        msg.id.clone(),
    );
    match service.infer(msg, Instant::now(), None).await {
        Ok(answer) => pb::ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(answer),
        },
        Err(e) => pb::ModelStreamInferResponse {
            error_message: e.message,
            infer_response: Some(pb::ModelInferResponse {
                model_name: model,
                model_version: version,
                id,
                ..Default::default()
            }),
        },
    }
}
