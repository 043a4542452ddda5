//! Cached OCSP answers, bounded by entries and bytes.
//!
//! An answer is kept only when it is worth keeping and cannot be farmed by a
//! stranger: the request asked about one certificate, carried no nonce, and
//! the answer is about a certificate we issued (good or revoked, never
//! unknown). It is keyed by that certificate's id (hash algorithm, issuer
//! name and key hashes, serial; DER), not by the request's bytes, so padding
//! or re-encoding a request makes no new entry. Past [`MAX_ENTRIES`] or
//! [`MAX_BYTES`] the cache is emptied (answers are cheap to make again).

use std::collections::HashMap;

/// Most answers kept.
pub const MAX_ENTRIES: usize = 50_000;
/// Most bytes (keys and answers) kept.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// An answer made earlier, and what it was made from.
pub(crate) struct Cached {
    pub(crate) der: Vec<u8>,
    pub(crate) ca: String,
    pub(crate) mark: (u64, i64),
    pub(crate) produced: i64,
}

#[derive(Default)]
pub(crate) struct OcspCache {
    map: HashMap<Vec<u8>, Cached>,
    bytes: usize,
}

impl OcspCache {
    pub(crate) fn get(&self, cert_id: &[u8]) -> Option<&Cached> {
        self.map.get(cert_id)
    }

    pub(crate) fn insert(&mut self, cert_id: Vec<u8>, c: Cached) {
        let size = cert_id.len() + c.der.len() + c.ca.len();
        if self.map.len() >= MAX_ENTRIES || self.bytes + size > MAX_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        if let Some(old) = self.map.insert(cert_id, c) {
            self.bytes = self.bytes.saturating_sub(old.der.len() + old.ca.len());
        }
    }

    /// Entries and bytes held.
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.map.len(), self.bytes)
    }
}
