//! Encoding: a response's JSON header and binary outputs, and the error body.

use std::io::Write;

use serde::Serialize;

use super::{InferRequest, ModelIo};

/// Encodes a response. `probs` holds `req.rows * io.classes` values, row-major. Returns the
/// body and, when binary output was asked for, `Some(json_header_len)` to send as the
/// `Inference-Header-Content-Length` response header (the body is then the JSON header
/// followed by the output's little-endian f32 bytes; send it as `application/octet-stream`,
/// otherwise as `application/json`).
pub fn encode_infer(
    model_name: &str,
    model_version: &str,
    req: &InferRequest,
    probs: &[f32],
    io: &ModelIo,
) -> (Vec<u8>, Option<usize>) {
    debug_assert_eq!(
        probs.len(),
        req.rows * io.classes,
        "probs must be rows * classes"
    );
    let binary = req.output_requested && req.output_binary;
    let per_value = if binary { 4 } else { 14 };
    let mut buf = Vec::with_capacity(
        160 + model_name.len()
            + model_version.len()
            + io.output_name.len()
            + req.id.as_ref().map_or(0, String::len)
            + probs.len() * per_value,
    );
    buf.extend_from_slice(b"{\"model_name\":");
    push_json(&mut buf, model_name);
    buf.extend_from_slice(b",\"model_version\":");
    push_json(&mut buf, model_version);
    if let Some(id) = &req.id {
        buf.extend_from_slice(b",\"id\":");
        push_json(&mut buf, id.as_str());
    }
    buf.extend_from_slice(b",\"outputs\":[");
    if req.output_requested {
        buf.extend_from_slice(b"{\"name\":");
        push_json(&mut buf, io.output_name.as_str());
        buf.extend_from_slice(b",\"datatype\":\"FP32\",\"shape\":[");
        if req.unbatched {
            push_display(&mut buf, io.classes);
        } else {
            push_display(&mut buf, req.rows);
            buf.push(b',');
            push_display(&mut buf, io.classes);
        }
        buf.push(b']');
        if binary {
            buf.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            push_display(&mut buf, std::mem::size_of_val(probs));
            buf.push(b'}');
        } else {
            buf.extend_from_slice(b",\"data\":");
            push_json(&mut buf, probs);
        }
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}");
    if !binary {
        return (buf, None);
    }
    let header_len = buf.len();
    if cfg!(target_endian = "little") {
        buf.extend_from_slice(bytemuck::cast_slice(probs));
    } else {
        for v in probs {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    (buf, Some(header_len))
}

/// The protocol's error body, `{"error": message}`, which tritonclient shows to its user.
pub fn encode_error(message: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(message.len() + 16);
    buf.extend_from_slice(b"{\"error\":");
    push_json(&mut buf, message);
    buf.push(b'}');
    buf
}

fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    // Strings and f32 slices always serialize, and writing to a Vec cannot fail.
    let written = serde_json::to_writer(&mut *buf, value);
    debug_assert!(written.is_ok());
}

fn push_display(buf: &mut Vec<u8>, value: usize) {
    // Writing to a Vec cannot fail.
    let written = write!(buf, "{value}");
    debug_assert!(written.is_ok());
}
