//! Randomness for core's own decisions (today: the random part of serial
//! numbers), passed in so that tests are deterministic.
//!
//! Key generation and signature nonces stay inside aws-lc (or ring) with its own
//! generator: they are not decisions of ours, and must never be replayable.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

use crate::Error;

/// A source of random octets.
pub trait RandomSource: Send + Sync {
    /// Fill `dest` with random octets.
    fn fill(&self, dest: &mut [u8]) -> Result<(), Error>;
}

/// The operating system's generator (through aws-lc, or ring): what production uses.
#[derive(Debug, Clone)]
pub struct SystemRandomSource(SystemRandom);

impl Default for SystemRandomSource {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemRandomSource {
    /// The system generator.
    pub fn new() -> Self {
        Self(SystemRandom::new())
    }
}

impl RandomSource for SystemRandomSource {
    fn fill(&self, dest: &mut [u8]) -> Result<(), Error> {
        self.0.fill(dest).map_err(|_| Error::Signing("random number generator failed".into()))
    }
}

/// A deterministic generator for tests: the same seed gives the same octets, in
/// the same order. Block `i` of its output is SHA-256(seed ‖ i as u64, big-endian);
/// each `fill` takes fresh blocks. Predictable by design: never use it to issue.
#[derive(Debug)]
pub struct SeededRandom {
    seed: [u8; 32],
    block: AtomicU64,
}

impl SeededRandom {
    /// A generator whose whole output follows from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_be_bytes());
        Self { seed: s, block: AtomicU64::new(0) }
    }
}

impl RandomSource for SeededRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), Error> {
        let blocks = dest.len().div_ceil(32).max(1) as u64;
        let first = self.block.fetch_add(blocks, Ordering::SeqCst);
        for (i, chunk) in dest.chunks_mut(32).enumerate() {
            let h = Sha256::new().chain_update(self.seed).chain_update((first + i as u64).to_be_bytes()).finalize();
            chunk.copy_from_slice(&h[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(r: &dyn RandomSource, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        r.fill(&mut v).unwrap();
        v
    }

    #[test]
    fn the_same_seed_gives_the_same_octets_and_another_seed_others() {
        let (a, b, c) = (SeededRandom::new(7), SeededRandom::new(7), SeededRandom::new(8));
        let (a1, a2) = (take(&a, 40), take(&a, 11));
        assert_eq!((a1.clone(), a2.clone()), (take(&b, 40), take(&b, 11)));
        assert_ne!(a1, take(&c, 40));
        assert_ne!(a1[..11], a2[..], "each fill draws new octets");
    }

    #[test]
    fn the_system_source_varies() {
        let s = SystemRandomSource::new();
        assert_ne!(take(&s, 16), take(&s, 16));
    }
}
