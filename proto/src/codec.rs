//! The codec of every Cairn service: prost, with small initial buffers.
//!
//! tonic gives each stream an 8 KiB encode buffer by default, held for the
//! stream's whole life: a server holding ten thousand idle watch streams
//! kept 80 MiB for messages of about a hundred bytes. A buffer still grows to
//! whatever one message needs (a role bundle, a report), so only streams of
//! small messages are cheaper.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// What each encode and decode buffer starts with.
const INITIAL_BUFFER_BYTES: usize = 512;
/// How much a stream encodes before it yields to other tasks (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 << 10;

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// Named in `build.rs` as the generated services' codec.
#[derive(Debug, Clone)]
pub struct SmallBuffers<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        SmallBuffers(PhantomData)
    }
}

impl<T, U> Codec for SmallBuffers<T, U>
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
