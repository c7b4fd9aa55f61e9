//! The codec of the generated gRPC code: tonic's prost codec, with each call's buffers sized
//! for inference messages.
//!
//! tonic starts every call's encode and decode buffer at 8 KiB. An allocation that size is
//! outside the allocator's small-object caches, and glibc consolidates its freed small
//! chunks before serving it: on the daemon's I/O thread that was about 1 % of a unary call's
//! samples at 4 connections. A single-row request or answer is a few hundred bytes, so the
//! buffers start at 1 KiB; a larger message grows its buffer (the decoder reserves the whole
//! message once its length is read, the encoder as prost writes).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Where a call's encode and decode buffers start, bytes.
const BUFFER_BYTES: usize = 1024;
/// How much an answer stream's encoder gathers before it yields (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers (build.rs names it as the generated code's
/// codec).
#[derive(Debug, Clone)]
pub struct InferenceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for InferenceCodec<T, U> {
    fn default() -> Self {
        InferenceCodec(PhantomData)
    }
}

impl<T, U> Codec for InferenceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}
