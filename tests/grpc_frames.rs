//! `ModelInfer`'s message as the wire carries it. The daemon serves well-formed calls on a
//! path of its own and hands the rest to tonic: a message split over DATA frames is answered,
//! and a compressed, short, missing or undecodable one is refused as tonic refuses it; one
//! declared over `max_request_bytes` gets HTTP's words for the limit.

use prost::Message;
use setpoint::api::grpc::pb;

use crate::support::daemon;
use crate::support::grpc;
use daemon::Daemon;
use grpc::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_several_frames_is_answered_and_malformed_ones_are_refused() {
    let d = Daemon::start(&format!("max_request_bytes = 4096\n{SERVICE}"));
    d.wait_ready();
    let msg = framed(0, &raw_request("mlp", 2).encode_to_vec());
    // Split in three DATA frames, the prefix itself cut in two.
    let parts = vec![msg[..3].to_vec(), msg[3..40].to_vec(), msg[40..].to_vec()];
    let a = raw_call(&d, &[], parts).await;
    assert_eq!(a.status, "0", "{}", a.message);
    let answer = pb::ModelInferResponse::decode(&a.body[5..]).unwrap();
    assert_eq!(answer.id, "raw-2");
    assert_eq!(
        answer.raw_output_contents[0].len(),
        2 * 3 * 4,
        "2 rows of 3 classes"
    );
    // The same call whole gives the same answer.
    let whole = raw_call(&d, &[], vec![msg.clone()]).await;
    assert_eq!(whole.body, a.body);

    let refused = |a: &RawAnswer, code: &str, words: &str| {
        assert_eq!(a.status, code, "{}", a.message);
        assert!(a.message.contains(words), "{}", a.message);
    };
    // Compressed without a grpc-encoding, a short message, no message, bytes that are not
    // a ModelInferRequest: tonic's codes and words.
    let payload = raw_request("mlp", 1).encode_to_vec();
    let a = raw_call(&d, &[], vec![framed(1, &payload)]).await;
    refused(&a, "13", "compress");
    let a = raw_call(&d, &[], vec![framed(0, &payload)[..20].to_vec()]).await;
    assert_ne!(a.status, "0", "a short message is not answered");
    let a = raw_call(&d, &[], vec![]).await;
    assert_ne!(a.status, "0", "no message is not answered: {}", a.message);
    let a = raw_call(&d, &[], vec![framed(0, &[0xff; 8])]).await;
    refused(&a, "13", "decode");
    // Declared over the limit: refused before it is read, with HTTP's words.
    let a = raw_call(&d, &[], vec![framed(0, &vec![0; 5000])]).await;
    refused(
        &a,
        "8",
        "exceeds the limit of 4096 bytes (max_request_bytes)",
    );
    // gzip is not served: tonic says so.
    let a = raw_call(&d, &[("grpc-encoding", "gzip")], vec![framed(1, &payload)]).await;
    assert_eq!(a.status, "12", "UNIMPLEMENTED: {}", a.message);
}
