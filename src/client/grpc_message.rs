//! gRPC's message framing (a compression flag byte and a big-endian length before each
//! message), for the bench's HTTP/2 clients.

use hyper::body::Bytes;
use prost::Message;

use super::grpc_unary::CallError;

/// `message` with gRPC's prefix: an uncompressed flag byte and its length, big-endian.
pub(crate) fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    message
        .encode(&mut buf)
        .expect("a Vec grows to take any message");
    Bytes::from(buf)
}

/// The one message of a unary answer's body, without its prefix.
pub(crate) fn unframe(body: &[u8]) -> Result<&[u8], CallError> {
    let bad = |why: &str| Err(CallError::Transport(format!("answer body: {why}")));
    if body.len() < 5 {
        return bad("shorter than a message prefix");
    }
    if body[0] != 0 {
        return bad("compressed, which was not asked for");
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return bad("not one message");
    }
    Ok(&body[5..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::grpc::pb;

    #[test]
    fn a_message_round_trips_through_its_prefix() {
        let msg = pb::ModelInferResponse {
            model_name: "mlp".into(),
            raw_output_contents: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        let framed = frame(&msg);
        assert_eq!(framed[0], 0);
        let inner = unframe(&framed).unwrap();
        assert_eq!(pb::ModelInferResponse::decode(inner).unwrap(), msg);
    }

    #[test]
    fn a_body_that_is_not_one_uncompressed_message_is_named() {
        let framed = frame(&pb::ServerLiveResponse { live: true });
        let mut longer = framed.to_vec();
        longer.push(0);
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        for (body, why) in [
            (&framed[..3], "shorter than a message prefix"),
            (&longer[..], "not one message"),
            (&compressed[..], "compressed"),
        ] {
            match unframe(body) {
                Err(CallError::Transport(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
