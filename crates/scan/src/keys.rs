//! Finding keys, certificates and token candidates in a stream of bytes.
//!
//! (Skeleton: the key finder lands in the next commits.)

use crate::FindingKind;

/// Finds keys in one stream fed chunk by chunk, holding at most a bounded
/// tail between chunks (an encoding split across two chunks is still found).
#[derive(Debug, Default)]
pub struct Finder {}

impl Finder {
    pub fn new() -> Self {
        Finder {}
    }

    /// Feed the next chunk of the stream. What is found is appended to `out`
    /// with its offset from the start of the stream.
    pub fn feed(&mut self, _chunk: &[u8], _out: &mut Vec<(u64, FindingKind)>) {}

    /// The stream ended: examine what is still held.
    pub fn finish(&mut self, _out: &mut Vec<(u64, FindingKind)>) {}
}
