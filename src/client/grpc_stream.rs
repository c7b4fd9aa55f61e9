//! `ModelStreamInfer` calls for `setpoint bench http --protocol grpc-stream`: a worker opens
//! one bidirectional stream on an HTTP/2 connection of its own and sends its requests on it
//! back to back, one in flight, each request one DATA frame and its answer read before the
//! next, as perf_analyzer `--streaming` does on a context's stream. A call on an open stream
//! costs neither side a header block or a stream's state: what Triton's streaming API is for.
//!
//! An answer with `error_message` set counts as that error and the stream goes on, as
//! Triton's does. A stream the server ends fails the call in flight: with trailers, the next
//! call opens another stream on the connection; after RST_STREAM, a transport failure or a
//! GOAWAY, on a new connection. The stream's flow control is kept both ways: its send
//! window (the server's initial window, its SETTINGS changes and WINDOW_UPDATEs, less what
//! was sent) and its receive window, topped up as the connection's is.

use prost::Message;

use super::grpc_message::take_message;
use super::grpc_unary::{
    Answer, CONTINUATION, CallError, Conn, DATA, END_STREAM, FrameHead, HEADERS, RST_STREAM,
    Request, WINDOW_TOP_UP, WINDOW_UPDATE, broke,
};

/// RST_STREAM's error code for a stream no longer wanted (RFC 9113 §7).
const CANCEL: u32 = 0x8;

/// One stream on one connection, opened at the first call and again after it ends.
pub(crate) struct StreamClient {
    authority: String,
    open: Option<Open>,
}

impl StreamClient {
    /// A client of `authority` (`HOST:PORT`); it connects at its first call.
    pub(crate) fn new(authority: String) -> Self {
        StreamClient {
            authority,
            open: None,
        }
    }

    /// Sends `req`'s message on the stream (opened with `req`'s headers where none is) and
    /// reads its answer: the `ModelStreamInferResponse` as sent, or the error it carries.
    pub(crate) fn call(&mut self, req: &Request) -> Result<Vec<u8>, CallError> {
        let mut open = match self.open.take() {
            Some(mut o) if o.ended => {
                o.restart(req)?;
                o
            }
            Some(o) => o,
            None => Open::start(&self.authority, req)?,
        };
        let answer = open.call(req);
        open.ended = answer.is_err();
        // A status ends the stream, not the connection; a connection that failed or that
        // the server is closing (GOAWAY) takes no new stream.
        if !matches!(answer, Err(CallError::Transport(_))) && !open.conn.going_away {
            self.open = Some(open);
        }
        let message = answer?;
        let says = ErrorOnly::decode(&message[..])
            .map_err(|e| broke(format!("a stream answer that does not decode: {e}")))?;
        if !says.error_message.is_empty() {
            return Err(CallError::InStream(says.error_message));
        }
        Ok(message)
    }
}

/// `ModelStreamInferResponse`'s `error_message` alone: decoding it skips the answer's
/// tensors, which the other workers do not parse either.
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorOnly {
    #[prost(string, tag = "1")]
    error_message: String,
}

/// A connection and its open stream.
struct Open {
    conn: Conn,
    id: u32,
    /// DATA sent on the stream, and the window the server's WINDOW_UPDATEs added to it.
    sent: i64,
    granted: i64,
    /// DATA received on the stream since its window was last topped up.
    received: u64,
    /// Answer bytes read and not yet taken as a message.
    inbox: Vec<u8>,
    /// The stream's header blocks: the answer's headers, then the trailers that end it.
    headers: Answer,
    /// The stream is over; the next call opens another on the connection.
    ended: bool,
}

impl Open {
    /// A new connection to `authority` with a stream opened by `req`'s headers (sent with
    /// the first message).
    fn start(authority: &str, req: &Request) -> Result<Open, CallError> {
        let mut conn = Conn::open(authority)?;
        let id = conn.open_stream(req)?;
        Ok(Open {
            conn,
            id,
            sent: 0,
            granted: 0,
            received: 0,
            inbox: Vec::new(),
            headers: Answer::default(),
            ended: false,
        })
    }

    /// Opens a new stream on the connection in place of the one the server ended, closing
    /// this client's half of that one (RST_STREAM with CANCEL), as gRPC clients do.
    fn restart(&mut self, req: &Request) -> Result<(), CallError> {
        self.conn
            .queue_frame(RST_STREAM, 0, self.id, &CANCEL.to_be_bytes());
        self.id = self.conn.open_stream(req)?;
        (self.sent, self.granted, self.received) = (0, 0, 0);
        self.inbox.clear();
        self.headers = Answer::default();
        self.ended = false;
        Ok(())
    }

    /// What the stream's flow control lets this client send now.
    fn window(&self) -> i64 {
        self.conn.stream_window + self.granted - self.sent
    }

    /// Sends `req`'s message once both windows take it, then reads until its answer (the
    /// message without its prefix) is whole. An error means the stream is over.
    fn call(&mut self, req: &Request) -> Result<Vec<u8>, CallError> {
        let need = req.body.len();
        if need as i64 > self.conn.stream_window {
            return Err(broke(format!(
                "a {need}-byte request is over the server's stream window of {}",
                self.conn.stream_window
            )));
        }
        while !(self.conn.may_send(need) && need as i64 <= self.window()) {
            let head = self.conn.next_frame()?;
            self.read(head)?;
        }
        self.conn.queue_frame(DATA, 0, self.id, &req.body);
        self.sent += need as i64;
        self.conn.flush()?;
        loop {
            if let Some(message) = take_message(&mut self.inbox)? {
                return Ok(message);
            }
            let head = self.conn.next_frame()?;
            self.read(head)?;
        }
    }

    /// Takes frame `head`: the stream's DATA into the inbox, its header blocks and window
    /// updates; other streams' and the connection's frames are obeyed.
    fn read(&mut self, head: FrameHead) -> Result<(), CallError> {
        if head.stream != self.id
            || !matches!(head.kind, DATA | HEADERS | CONTINUATION | WINDOW_UPDATE)
        {
            // RST_STREAM of this stream, or GOAWAY before it, fail the call here.
            return match self.conn.control(head)?.fails(self.id) {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        match head.kind {
            DATA => {
                let payload = self.conn.payload(head)?;
                self.inbox.extend_from_slice(payload);
                self.conn.took_data(head.len);
                self.top_up(head.len);
                if head.flags & END_STREAM != 0 {
                    return Err(broke("the server ended the stream without trailers"));
                }
            }
            WINDOW_UPDATE => {
                let p = self.conn.payload(head)?;
                let inc = p
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
                    .ok_or_else(|| broke("a short WINDOW_UPDATE"))?;
                self.granted += i64::from(inc);
            }
            _ => {
                if let Some(outcome) = self.conn.take(&mut self.headers, head)? {
                    return Err(match outcome {
                        Ok(_) => broke("the server ended the stream"),
                        Err(e) => e,
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts `len` bytes received on the stream, queueing a top-up of its window when due
    /// (this client announces HTTP/2's largest window for every stream, and tops it up as it
    /// does the connection's).
    fn top_up(&mut self, len: usize) {
        self.received += len as u64;
        if self.received >= WINDOW_TOP_UP {
            let inc = self.received as u32;
            self.conn
                .queue_frame(WINDOW_UPDATE, 0, self.id, &inc.to_be_bytes());
            self.received = 0;
        }
    }
}

#[cfg(test)]
#[path = "grpc_stream_tests.rs"]
mod tests;
