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

fn bad(why: &str) -> CallError {
    CallError::Transport(format!("answer body: {why}"))
}

/// The length the message at the start of `bytes` declares in its prefix: `None` until the
/// prefix is whole; refused where the message is compressed, which was not asked for.
fn declared_len(bytes: &[u8]) -> Result<Option<usize>, CallError> {
    match bytes {
        [] | [_] | [_, _] | [_, _, _] | [_, _, _, _] => Ok(None),
        [0, a, b, c, d, ..] => Ok(Some(u32::from_be_bytes([*a, *b, *c, *d]) as usize)),
        _ => Err(bad("compressed, which was not asked for")),
    }
}

/// The one message of a unary answer's body, without its prefix.
pub(crate) fn unframe(body: &[u8]) -> Result<&[u8], CallError> {
    match declared_len(body)? {
        None => Err(bad("shorter than a message prefix")),
        Some(len) if body.len() != 5 + len => Err(bad("not one message")),
        Some(_) => Ok(&body[5..]),
    }
}

/// The first whole message in `inbox` (answers read from a stream), without its prefix,
/// taken out of it; `None` until it is whole.
pub(crate) fn take_message(inbox: &mut Vec<u8>) -> Result<Option<Vec<u8>>, CallError> {
    match declared_len(inbox)? {
        Some(len) if inbox.len() >= 5 + len => {
            let message = inbox[5..5 + len].to_vec();
            inbox.drain(..5 + len);
            Ok(Some(message))
        }
        _ => Ok(None),
    }
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
