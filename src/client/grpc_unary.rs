//! Unary gRPC calls for `setpoint bench http --protocol grpc`: HTTP/2 written and read on a
//! blocking socket by this module, one call at a time per connection, each sent as one write.
//! (`grpc_mux.rs` keeps many calls in flight on one such connection, `grpc_stream.rs` sends
//! calls on one open stream.)
//!
//! The load generator's two clients are meant to cost the same, so that a comparison of
//! protocols measures the daemon. The HTTP/1.1 one (`keepalive.rs`) renders its request once
//! and reads the answer on a blocking socket. (A gRPC client over the `h2` crate spent about
//! 27 µs of CPU per call against 16 for HTTP, on state a call at a time does not need.) Here
//! the request's header blocks are rendered once: the first call on a connection adds its
//! fields to the server's HPACK table and later calls name them by index, as gRPC's C++ core
//! does; a call is HEADERS and DATA with END_STREAM in one write; the answer's frames are
//! read until its stream ends and its `grpc-status` checked (in the trailers, or in the
//! headers of a trailers-only answer). SETTINGS, PING, WINDOW_UPDATE and GOAWAY are answered
//! or obeyed as RFC 9113 asks.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::grpc_message::unframe;
use super::grpc_request::HPACK_TABLE;
pub(crate) use super::grpc_request::Request;
use super::hpack;
use super::keepalive::{Failure, dial};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest window HTTP/2 allows, announced for every stream and for the connection, so
/// that the server never waits for this client to read.
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The largest frame this client accepts (HTTP/2's default; it announces no other).
pub(super) const MAX_FRAME: usize = 16_384;
/// Bytes received before the connection's window is topped up again.
pub(super) const WINDOW_TOP_UP: u64 = 1 << 30;

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why a call failed: the transport, or the status the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// No connection could be made.
    Unreachable,
    /// The connection failed or the answer was not a gRPC answer; what went wrong.
    Transport(String),
    /// The server's `grpc-status`, not OK.
    Status(tonic::Code),
    /// A stream's answer carrying `error_message` (`ModelStreamInfer`): that message.
    InStream(String),
}

impl CallError {
    /// The error's name in the bench's report: the status code's name, as tonic spells it,
    /// `unreachable` or `transport`.
    pub(crate) fn kind(&self) -> String {
        match self {
            CallError::Unreachable => "unreachable".into(),
            CallError::Transport(_) => "transport".into(),
            CallError::Status(code) => format!("{code:?}"),
            CallError::InStream(_) => "error_message".into(),
        }
    }
}

impl From<Failure> for CallError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unreachable => CallError::Unreachable,
            Failure::Transport(why) => CallError::Transport(why),
        }
    }
}

pub(super) fn broke(why: impl std::fmt::Display) -> CallError {
    CallError::Transport(why.to_string())
}

/// One HTTP/2 connection carrying unary calls, opened at the first call and again after a
/// transport failure.
pub(crate) struct UnaryClient {
    authority: String,
    conn: Option<Conn>,
}

impl UnaryClient {
    /// A client of `authority` (`HOST:PORT`); it connects at its first call.
    pub(crate) fn new(authority: String) -> Self {
        UnaryClient {
            authority,
            conn: None,
        }
    }

    /// Sends `req` and reads its answer: the answer's message, its prefix taken off.
    pub(crate) fn call(&mut self, req: &Request) -> Result<Vec<u8>, CallError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => Conn::open(&self.authority)?,
        };
        let answer = conn.call(req);
        // A connection the server is closing (GOAWAY) takes no more calls.
        if !matches!(answer, Err(CallError::Transport(_))) && !conn.going_away {
            self.conn = Some(conn);
        }
        let mut body = answer?;
        unframe(&body)?;
        body.drain(..5);
        Ok(body)
    }
}

/// A frame's header (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameHead {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl FrameHead {
    /// Whether the frame carries part of its stream's answer (DATA or a header block).
    pub(super) fn is_answer(self) -> bool {
        matches!(self.kind, DATA | HEADERS | CONTINUATION)
    }
}

/// What a frame outside the answers being read asked of the calls in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    /// Obeyed; nothing for the calls.
    Obeyed,
    /// GOAWAY: no new calls; streams after `last` will never be answered.
    GoAway { last: u32, code: u32 },
    /// RST_STREAM: `stream` ends unanswered.
    Reset { stream: u32, code: u32 },
}

impl Control {
    /// The failure of call `id` this says, if it says one.
    pub(super) fn fails(self, id: u32) -> Option<CallError> {
        match self {
            Control::GoAway { last, code } if id > last => {
                Some(broke(format!("the server sent GOAWAY (error code {code})")))
            }
            Control::Reset { stream, code } if stream == id => Some(broke(format!(
                "the server reset the stream (error code {code})"
            ))),
            _ => None,
        }
    }
}

fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An open connection's state.
pub(super) struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet taken as frames, from `start`.
    buf: Vec<u8>,
    /// What each read fills, zeroed once.
    scratch: Box<[u8]>,
    start: usize,
    decoder: hpack::Decoder,
    next_stream: u32,
    /// What the connection's flow control lets this client send.
    send_window: i64,
    /// The window each new stream starts with, as the server announced it.
    pub(super) stream_window: i64,
    /// DATA received since the connection's window was last topped up.
    received: u64,
    /// Frames to send with the next request (a window top-up).
    pending: Vec<u8>,
    /// The request being written, kept to reuse its allocation.
    out: Vec<u8>,
    /// The server sent GOAWAY: the calls in flight may still be answered, no new one.
    pub(super) going_away: bool,
    /// Streams the server lets this client have open at once (`usize::MAX` until it says).
    pub(super) max_streams: usize,
    /// The server's HPACK table size (SETTINGS_HEADER_TABLE_SIZE).
    table_room: usize,
    /// The request (its `id`) whose fields a call on this connection added to the server's
    /// table.
    indexed: Option<u64>,
}

/// What the frames of one call's answer said so far.
#[derive(Default)]
pub(super) struct Answer {
    body: Vec<u8>,
    /// The header block being gathered from HEADERS and CONTINUATION frames.
    block: Vec<u8>,
    block_ends_stream: bool,
    headers_seen: bool,
}

impl Conn {
    pub(super) fn open(authority: &str) -> Result<Conn, CallError> {
        let stream = dial(authority)?;
        let mut hello = PREFACE.to_vec();
        let mut settings = Vec::new();
        for (id, value) in [(0x2u16, 0u32), (0x4, MAX_WINDOW)] {
            settings.extend_from_slice(&id.to_be_bytes());
            settings.extend_from_slice(&value.to_be_bytes());
        }
        put_frame(&mut hello, SETTINGS, 0, 0, &settings);
        let top_up = MAX_WINDOW - 65_535;
        put_frame(&mut hello, WINDOW_UPDATE, 0, 0, &top_up.to_be_bytes());
        (&stream).write_all(&hello).map_err(broke)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(2 * MAX_FRAME),
            scratch: vec![0; 2 * MAX_FRAME].into_boxed_slice(),
            start: 0,
            decoder: hpack::Decoder::new(4096),
            next_stream: 1,
            send_window: 65_535,
            stream_window: 65_535,
            received: 0,
            pending: Vec::new(),
            out: Vec::with_capacity(512),
            going_away: false,
            max_streams: usize::MAX,
            table_room: HPACK_TABLE,
            indexed: None,
        })
    }

    /// Reads the server's preface, its SETTINGS (RFC 9113 §3.4), so that its limits are
    /// known before the first call is sent.
    pub(super) fn settle(&mut self) -> Result<(), CallError> {
        let head = self.next_frame()?;
        if head.kind != SETTINGS || head.flags & ACK != 0 {
            return Err(broke("the server's first frame is not its SETTINGS"));
        }
        self.control(head).map(|_| ())
    }

    /// One call on a new stream: its answer's body, the message with its prefix.
    fn call(&mut self, req: &Request) -> Result<Vec<u8>, CallError> {
        let id = loop {
            if let Some(id) = self.queue(req)? {
                break id;
            }
            let head = self.next_frame()?;
            self.obey(head, None)?;
        };
        self.flush()?;
        self.answer(id)
    }

    /// Queues `req` on a new stream, to be sent by the next [`Conn::flush`]: its stream, or
    /// `None` while the connection's flow control does not let it go yet.
    pub(super) fn queue(&mut self, req: &Request) -> Result<Option<u32>, CallError> {
        let need = req.body.len() as i64;
        if need > self.stream_window {
            return Err(broke(format!(
                "a {need}-byte request is over the server's stream window of {}",
                self.stream_window
            )));
        }
        if need > self.send_window {
            return Ok(None);
        }
        let id = self.open_stream(req)?;
        self.queue_frame(DATA, END_STREAM, id, &req.body);
        Ok(Some(id))
    }

    /// Queues the headers of `req` on a new stream, to be sent by the next
    /// [`Conn::flush`], leaving the stream open for [`Conn::queue_frame`]: its stream.
    pub(super) fn open_stream(&mut self, req: &Request) -> Result<u32, CallError> {
        let id = self.next_stream;
        if id > MAX_WINDOW {
            return Err(broke("the connection's stream identifiers are used up"));
        }
        self.next_stream += 2;
        self.out.append(&mut self.pending);
        let (block, indexed) = req.block(self.table_room, self.indexed);
        self.indexed = indexed;
        put_frame(&mut self.out, HEADERS, END_HEADERS, id, block);
        Ok(id)
    }

    /// Queues a frame on stream `id`; DATA spends the connection's window (which the
    /// caller has checked with [`Conn::may_send`]).
    pub(super) fn queue_frame(&mut self, kind: u8, flags: u8, id: u32, payload: &[u8]) {
        self.out.append(&mut self.pending);
        put_frame(&mut self.out, kind, flags, id, payload);
        if kind == DATA {
            self.send_window -= payload.len() as i64;
        }
    }

    /// Whether the connection's flow control lets `len` bytes of DATA go now.
    pub(super) fn may_send(&self, len: usize) -> bool {
        len as i64 <= self.send_window
    }

    /// Counts `len` bytes of DATA taken from a stream read outside [`Conn::take`], topping
    /// the connection's window up when it is due.
    pub(super) fn took_data(&mut self, len: usize) {
        self.received += len as u64;
        self.top_up();
    }

    /// Sends what [`Conn::queue`] queued, in one write.
    pub(super) fn flush(&mut self) -> Result<(), CallError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = (&self.stream).write_all(&self.out);
        self.out.clear();
        written.map_err(broke)
    }

    /// Reads frames until stream `id` ends.
    fn answer(&mut self, id: u32) -> Result<Vec<u8>, CallError> {
        let mut a = Answer::default();
        loop {
            let head = self.next_frame()?;
            if head.stream != id || !head.is_answer() {
                self.obey(head, Some(id))?;
                continue;
            }
            if let Some(outcome) = self.take(&mut a, head)? {
                return outcome;
            }
        }
    }

    /// Takes frame `head` of answer `a`: once its stream ends, the call's outcome (its body,
    /// the message with its prefix, or the status the server answered).
    pub(super) fn take(
        &mut self,
        a: &mut Answer,
        head: FrameHead,
    ) -> Result<Option<Result<Vec<u8>, CallError>>, CallError> {
        let payload = self.payload(head)?;
        match head.kind {
            DATA => {
                a.body.extend_from_slice(payload);
                self.received += head.len as u64;
                if head.flags & END_STREAM != 0 {
                    return Err(broke("the answer ended without a grpc-status trailer"));
                }
            }
            HEADERS => {
                a.block.clear();
                a.block.extend_from_slice(payload);
                a.block_ends_stream = head.flags & END_STREAM != 0;
            }
            _ => a.block.extend_from_slice(payload),
        }
        if head.kind == DATA || head.flags & END_HEADERS == 0 {
            return Ok(None);
        }
        let says = self.read_block(&a.block)?;
        let first = !a.headers_seen;
        a.headers_seen = true;
        let Some(code) = check_block(says, first, a.block_ends_stream)? else {
            return Ok(None);
        };
        self.top_up();
        Ok(Some(match code {
            tonic::Code::Ok => Ok(std::mem::take(&mut a.body)),
            code => Err(CallError::Status(code)),
        }))
    }

    /// Obeys a frame that is not part of the answer to stream `ours`, failing when it ends
    /// that call.
    fn obey(&mut self, head: FrameHead, ours: Option<u32>) -> Result<(), CallError> {
        // Before the call is sent, a GOAWAY refuses it: it would come after any `last`.
        let ours = ours.unwrap_or(u32::MAX);
        match self.control(head)?.fails(ours) {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// A frame's payload without its padding (and a HEADERS frame's priority fields).
    pub(super) fn payload(&self, head: FrameHead) -> Result<&[u8], CallError> {
        let p = &self.buf[self.start - head.len..self.start];
        let mut skip = 0;
        let mut pad = 0;
        if head.flags & PADDED != 0 && matches!(head.kind, DATA | HEADERS) {
            pad = usize::from(*p.first().ok_or_else(|| broke("an empty padded frame"))?);
            skip = 1;
        }
        if head.kind == HEADERS && head.flags & PRIORITY != 0 {
            skip += 5;
        }
        p.get(skip..p.len().saturating_sub(pad))
            .filter(|_| skip + pad <= p.len())
            .ok_or_else(|| broke("a frame's padding is longer than the frame"))
    }

    /// Obeys a frame that is not part of an answer being read, saying what it asks of the
    /// calls in flight.
    pub(super) fn control(&mut self, head: FrameHead) -> Result<Control, CallError> {
        let p = self.buf[self.start - head.len..self.start].to_vec();
        let u32_at = |i: usize| {
            p.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match head.kind {
            SETTINGS if head.flags & ACK == 0 => {
                for s in p.chunks_exact(6) {
                    let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match u16::from_be_bytes([s[0], s[1]]) {
                        // A table shrunk under fields already indexed would need a size
                        // update this client does not send: the connection is replaced.
                        0x1 if self.indexed.is_some() && (value as usize) < HPACK_TABLE => {
                            return Err(broke("the server shrank its HPACK table"));
                        }
                        0x1 => self.table_room = value as usize,
                        0x3 => self.max_streams = value as usize,
                        0x4 => self.stream_window = i64::from(value),
                        0x5 if (value as usize) < MAX_FRAME => {
                            return Err(broke("the server's max frame size is under 16,384"));
                        }
                        _ => {}
                    }
                }
                self.send_now(SETTINGS, ACK, &[])?;
            }
            PING if head.flags & ACK == 0 => self.send_now(PING, ACK, &p)?,
            WINDOW_UPDATE if head.stream == 0 => {
                let inc = u32_at(0).ok_or_else(|| broke("a short WINDOW_UPDATE"))?;
                self.send_window += i64::from(inc & MAX_WINDOW);
            }
            GOAWAY => {
                // Streams up to the last one named are still answered; later ones never.
                self.going_away = true;
                return Ok(Control::GoAway {
                    last: u32_at(0).unwrap_or(0) & MAX_WINDOW,
                    code: u32_at(4).unwrap_or(0),
                });
            }
            RST_STREAM => {
                return Ok(Control::Reset {
                    stream: head.stream,
                    code: u32_at(0).unwrap_or(0),
                });
            }
            // Another stream's header block still moves the decoder's table.
            HEADERS | CONTINUATION => {
                let block = self.payload(head)?.to_vec();
                if head.flags & END_HEADERS == 0 {
                    return Err(broke("a header block on another stream"));
                }
                self.read_block(&block)?;
            }
            DATA => self.received += head.len as u64,
            _ => {}
        }
        Ok(Control::Obeyed)
    }

    /// Decodes a header block (every one moves the decoder's table): what a call needs of
    /// it.
    fn read_block(&mut self, block: &[u8]) -> Result<BlockSays, CallError> {
        let mut says = BlockSays::default();
        self.decoder
            .decode_each(block, |name, value| match name {
                b":status" => {
                    let status = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok());
                    says.status = Some(status.ok_or(()));
                }
                b"grpc-status" => {
                    says.grpc_status = std::str::from_utf8(value).ok().and_then(|t| t.parse().ok());
                }
                _ => {}
            })
            .map_err(broke)?;
        Ok(says)
    }

    fn send_now(&mut self, kind: u8, flags: u8, payload: &[u8]) -> Result<(), CallError> {
        let mut out = Vec::with_capacity(9 + payload.len());
        put_frame(&mut out, kind, flags, 0, payload);
        (&self.stream).write_all(&out).map_err(broke)
    }

    /// Queues a top-up of the connection's window once a gigabyte has arrived.
    fn top_up(&mut self) {
        if self.received >= WINDOW_TOP_UP {
            let inc = self.received as u32;
            put_frame(&mut self.pending, WINDOW_UPDATE, 0, 0, &inc.to_be_bytes());
            self.received = 0;
        }
    }

    /// Whether a whole frame is read and not yet taken.
    pub(super) fn has_frame(&self) -> bool {
        let have = &self.buf[self.start..];
        frame_len(have).is_some_and(|len| have.len() >= 9 + len)
    }

    /// The next whole frame, read as needed; its payload is `buf[start - len..start]`.
    pub(super) fn next_frame(&mut self) -> Result<FrameHead, CallError> {
        loop {
            let have = &self.buf[self.start..];
            if let Some(len) = frame_len(have) {
                if len > MAX_FRAME {
                    return Err(broke(format!("a {len}-byte frame, over {MAX_FRAME}")));
                }
                if have.len() >= 9 + len {
                    let id = u32::from_be_bytes([have[5], have[6], have[7], have[8]]);
                    let head = FrameHead {
                        len,
                        kind: have[3],
                        flags: have[4],
                        stream: id & MAX_WINDOW,
                    };
                    self.start += 9 + len;
                    return Ok(head);
                }
            }
            self.read_more()?;
        }
    }

    fn read_more(&mut self) -> Result<(), CallError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        match (&self.stream).read(&mut self.scratch) {
            Ok(0) => Err(broke("the server closed the connection")),
            Ok(n) => {
                self.buf.extend_from_slice(&self.scratch[..n]);
                Ok(())
            }
            Err(e) => Err(broke(e)),
        }
    }
}

/// The payload length of the frame `have` starts with, once its 9-byte header is there.
fn frame_len(have: &[u8]) -> Option<usize> {
    (have.len() >= 9).then(|| u32::from_be_bytes([0, have[0], have[1], have[2]]) as usize)
}

/// What a call needs of an answer's header block.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BlockSays {
    /// `:status`, or `Err` when it is not a number.
    status: Option<Result<u16, ()>>,
    /// `grpc-status`, when it is there and a number.
    grpc_status: Option<i32>,
}

/// Checks an answer's header block: the first one must say `:status: 200`; a block that
/// ends the stream (the trailers, or a trailers-only answer) gives its `grpc-status`.
fn check_block(
    says: BlockSays,
    first: bool,
    ends_stream: bool,
) -> Result<Option<tonic::Code>, CallError> {
    if first {
        match says.status {
            None => return Err(broke("an answer without :status")),
            Some(Err(())) => return Err(broke("an answer whose :status is not a number")),
            Some(Ok(200)) => {}
            Some(Ok(status)) => return Err(broke(format!("HTTP {status}"))),
        }
    }
    if !ends_stream {
        return Ok(None);
    }
    let code = says
        .grpc_status
        .ok_or_else(|| broke("the answer ended without a grpc-status"))?;
    Ok(Some(tonic::Code::from_i32(code)))
}

#[cfg(test)]
#[path = "grpc_unary_tests.rs"]
pub(super) mod tests;
