//! A unary gRPC call for the bench's HTTP/2 client, rendered once: its framed message and its
//! header blocks. The first call on a connection adds the header fields to the server's HPACK
//! table and later calls name them by index, as gRPC's C++ core does (tritonclient.grpc and
//! perf_analyzer send that), so the server does not parse them from text on every call.

use hyper::body::Bytes;

use super::grpc_unary::MAX_FRAME;
use super::hpack;

/// The HPACK table's size before SETTINGS change it (RFC 9113 §6.5.2), which this client's
/// header blocks use without a size update.
pub(super) const HPACK_TABLE: usize = 4096;

/// A unary call rendered once: its header blocks and its framed message.
pub(crate) struct Request {
    /// The first call's on a connection: its fields added to the server's table.
    pub(super) first: Vec<u8>,
    /// Later calls': the fields by their index in the server's table.
    pub(super) indexed: Vec<u8>,
    /// Every call's where the server's table cannot hold the fields: literals never indexed.
    pub(super) literal: Vec<u8>,
    /// The bytes the fields take in the server's table (RFC 7541 §4.1).
    pub(super) table_bytes: usize,
    /// Tells requests apart, so a connection indexes the fields of one only.
    pub(super) id: u64,
    pub(super) body: Bytes,
}

/// The next [`Request`]'s `id`.
static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Request {
    /// A call of `path` (`/package.Service/Method`) at `authority` (`HOST:PORT`) carrying
    /// `body`, a message framed with its prefix (`grpc_message::frame`).
    pub(crate) fn new(authority: &str, path: &str, body: Bytes) -> Result<Self, String> {
        if body.len() > MAX_FRAME {
            return Err(format!(
                "a {}-byte gRPC request is over the bench client's one-frame limit of {MAX_FRAME}",
                body.len()
            ));
        }
        // (static name index, name, value); added in this order, the last is index 62.
        let fields = [
            (4, ":path", path),
            (1, ":authority", authority),
            (31, "content-type", "application/grpc"),
            (0, "te", "trailers"),
        ];
        let start = |cap| {
            let mut block = Vec::with_capacity(cap);
            hpack::put_indexed(&mut block, 3); // :method POST
            hpack::put_indexed(&mut block, 6); // :scheme http
            block
        };
        let (mut first, mut indexed, mut literal) = (start(128), start(8), start(128));
        for (i, (index, name, value)) in fields.iter().enumerate() {
            hpack::put_indexing_literal(&mut first, *index, name, value);
            hpack::put_indexed(&mut indexed, 62 + fields.len() - 1 - i);
            hpack::put_literal(&mut literal, *index, name, value);
        }
        if literal.len() > MAX_FRAME {
            return Err(format!(
                "a gRPC request's headers of {} bytes are over the bench client's one-frame \
                 limit of {MAX_FRAME}",
                literal.len()
            ));
        }
        let table_bytes = fields.iter().map(|(_, n, v)| n.len() + v.len() + 32).sum();
        Ok(Request {
            first,
            indexed,
            literal,
            table_bytes,
            id: NEXT_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            body,
        })
    }

    /// The header block for a call on a connection whose server's table holds `table_room`
    /// bytes and holds the fields of request `indexed` (by its `id`), and what the table
    /// holds after it. A table under HPACK's initial size would need a size update this
    /// client does not send, so there the fields are never indexed; nor are another
    /// request's on a connection that indexed one.
    pub(super) fn block(&self, table_room: usize, indexed: Option<u64>) -> (&[u8], Option<u64>) {
        match indexed {
            Some(id) if id == self.id => (&self.indexed, indexed),
            None if table_room >= HPACK_TABLE && self.table_bytes <= HPACK_TABLE => {
                (&self.first, Some(self.id))
            }
            _ => (&self.literal, indexed),
        }
    }
}
