//! Unary gRPC calls for `setpoint bench http --protocol grpc`, each sent as one write.
//!
//! A call is an HTTP/2 request whose body is one length-prefixed message with END_STREAM on
//! its DATA frame, so HEADERS and DATA leave in one flush, as gRPC's C++ core (under
//! tritonclient and perf_analyzer) sends them. tonic's generated client sends a unary body as
//! a stream instead: HEADERS, DATA, then an empty DATA frame that ends the stream, three
//! writes per call on this machine's loopback (seen with `strace`), which made the load
//! generator, not the daemon, the slower side of a gRPC/HTTP comparison at one connection.
//! The answer is read whole and its `grpc-status` checked (in the trailers, or in the
//! headers of a trailers-only answer).

use hyper::body::Bytes;
use prost::Message;

/// One HTTP/2 connection carrying unary calls.
pub(crate) struct UnaryClient {
    send: h2::client::SendRequest<Bytes>,
    /// `http://HOST:PORT`, the calls' scheme and authority.
    endpoint: String,
}

/// Why a call failed: the transport, or the status the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The connection failed or the answer was not a gRPC answer; what went wrong.
    Transport(String),
    /// The server's `grpc-status`, not OK.
    Status(tonic::Code),
}

impl CallError {
    /// The error's name in the bench's report: the status code's name, as tonic spells it,
    /// or `transport`.
    pub(crate) fn kind(&self) -> String {
        match self {
            CallError::Transport(_) => "transport".into(),
            CallError::Status(code) => format!("{code:?}"),
        }
    }
}

impl UnaryClient {
    /// Connects to `endpoint` (`http://HOST:PORT`); the connection is driven by a task on
    /// the current runtime.
    pub(crate) async fn connect(endpoint: &str) -> Result<Self, String> {
        let authority = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| format!("'{endpoint}': expected http://HOST:PORT"))?
            .trim_end_matches('/');
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = h2::client::handshake(stream)
            .await
            .map_err(|e| format!("{authority}: HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(UnaryClient {
            send,
            endpoint: format!("http://{authority}"),
        })
    }

    /// Calls `path` (`/package.Service/Method`) with `body`, a request [`frame`]d once by the
    /// caller (a load generator sends the same one again and again), and decodes the answer.
    pub(crate) async fn call<Resp: Message + Default>(
        &mut self,
        path: &str,
        body: Bytes,
    ) -> Result<Resp, CallError> {
        let req = hyper::Request::post(format!("{}{path}", self.endpoint))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let transport = |e: h2::Error| CallError::Transport(e.to_string());
        self.send = self.send.clone().ready().await.map_err(transport)?;
        // HEADERS and the one DATA frame with END_STREAM are both queued before the
        // connection's task next writes, so they leave together.
        let (answer, mut out) = self.send.send_request(req, false).map_err(transport)?;
        out.send_data(body, true).map_err(transport)?;
        let answer = answer.await.map_err(transport)?;
        if answer.status() != hyper::StatusCode::OK {
            return Err(CallError::Transport(format!("HTTP {}", answer.status())));
        }
        if let Some(code) = grpc_status(answer.headers()) {
            return Err(CallError::Status(code));
        }
        let mut body = answer.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        match body
            .trailers()
            .await
            .map_err(transport)?
            .as_ref()
            .map(grpc_status)
        {
            Some(None) => {}
            Some(Some(code)) => return Err(CallError::Status(code)),
            None => return Err(CallError::Transport("no grpc-status trailer".into())),
        }
        unframe(&data)
    }
}

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

/// The one message of a unary answer's body.
fn unframe<Resp: Message + Default>(body: &[u8]) -> Result<Resp, CallError> {
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
    Resp::decode(&body[5..]).or_else(|e| bad(&e.to_string()))
}

/// The `grpc-status` in `headers`, when it is there and not OK.
fn grpc_status(headers: &hyper::HeaderMap) -> Option<tonic::Code> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    (code != 0).then(|| tonic::Code::from_i32(code))
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
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            framed.len() - 5
        );
        assert_eq!(unframe::<pb::ModelInferResponse>(&framed), Ok(msg));
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
            match unframe::<pb::ServerLiveResponse>(body) {
                Err(CallError::Transport(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_status_is_read_from_headers_and_ok_is_no_error() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "8".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(tonic::Code::ResourceExhausted));
        assert_eq!(
            CallError::Status(tonic::Code::ResourceExhausted).kind(),
            "ResourceExhausted"
        );
    }
}
