//! A station's production record: what it issued offline, one entry per
//! birth, each hash-chained to the one before and signed by the station.
//!
//! One JSON object per line:
//! `{"seq":1,"at":T,"batch":"B","serial":"SN","cert":"<base64 DER>","prev":"<hex>","hash":"<hex>","sig":"<base64>"}`.
//! `hash` is SHA-256 over `prev`, `seq`, `at`, `batch`, `serial` and `cert`,
//! each length-prefixed (u64 big-endian); `prev` of entry 1 is 64 zeros;
//! `sig` is the station key's signature over the 32 octets of `hash`. An
//! edited, dropped, reordered or inserted entry breaks the chain; a forged
//! one lacks the station's signature.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;

use crate::keys::{self, KeyType, Signer};
use crate::Error;

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Most entries one upload may carry.
pub const MAX_ENTRIES: usize = 100_000;

/// Longest line accepted.
pub const MAX_LINE: usize = 16 * 1024;

/// One birth in the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position, from 1, without gaps.
    pub seq: u64,
    /// When the station issued it, Unix seconds.
    pub at: i64,
    /// The batch.
    pub batch: String,
    /// The device serial.
    pub serial: String,
    /// The birth certificate, base64 DER.
    pub cert: String,
    /// Hash of the previous entry, hex.
    pub prev: String,
    /// This entry's hash, hex.
    pub hash: String,
    /// The station's signature over the hash's octets, base64.
    pub sig: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The hash of an entry's content.
pub fn entry_hash(prev: &str, seq: u64, at: i64, batch: &str, serial: &str, cert_der: &[u8]) -> [u8; 32] {
    let mut ctx = crate::backend::digest::Context::new(&crate::backend::digest::SHA256);
    for field in [prev.as_bytes(), &seq.to_be_bytes(), &at.to_be_bytes(), batch.as_bytes(), serial.as_bytes(), cert_der]
    {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Entry {
    /// The entry after `prev` (`None`: the first), signed by `station`.
    pub fn next(
        prev: Option<&Entry>,
        at: i64,
        batch: &str,
        serial: &str,
        cert_der: &[u8],
        station: &dyn Signer,
    ) -> Result<Entry, Error> {
        let (seq, prev_hash) = match prev {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        let h = entry_hash(&prev_hash, seq, at, batch, serial, cert_der);
        let sig = station.sign(&h)?;
        Ok(Entry {
            seq,
            at,
            batch: batch.into(),
            serial: serial.into(),
            cert: b64().encode(cert_der),
            prev: prev_hash,
            hash: hex::encode(h),
            sig: b64().encode(sig),
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, Error> {
        b64().decode(&self.cert).map_err(|e| Error::Base64(format!("entry {}: certificate: {e}", self.seq)))
    }

    /// One JSON line (no newline).
    pub fn to_line(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parse a record (JSON lines; blank lines ignored), bounded in size.
pub fn parse(text: &str) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            return Err(Error::der("production record", format!("line {} is over {MAX_LINE} octets", i + 1)));
        }
        if out.len() == MAX_ENTRIES {
            return Err(Error::der("production record", format!("more than {MAX_ENTRIES} entries")));
        }
        out.push(
            serde_json::from_str(line).map_err(|e| Error::der("production record", format!("line {}: {e}", i + 1)))?,
        );
    }
    Ok(out)
}

/// Check `entries` continue a chain at `(first_seq, prev)`: consecutive
/// sequence numbers, each `prev` the hash before, each hash recomputed from
/// the content, each signature by the station key `station`.
pub fn verify(entries: &[Entry], first_seq: u64, prev: &str, station: &SubjectPublicKeyInfoOwned) -> Result<(), Error> {
    let alg = KeyType::of_spki(station)?.signature_algorithm()?;
    let mut want_prev = prev.to_string();
    for (want_seq, e) in (first_seq..).zip(entries) {
        let bad = |m: &str| Error::Profile(format!("production record entry {}: {m}", e.seq));
        if e.seq != want_seq {
            return Err(bad(&format!("expected entry {want_seq} here (replayed, dropped or reordered)")));
        }
        if e.prev != want_prev {
            return Err(bad("does not link to the entry before"));
        }
        let h = entry_hash(&e.prev, e.seq, e.at, &e.batch, &e.serial, &e.cert_der()?);
        if hex::encode(h) != e.hash {
            return Err(bad("its content does not match its hash (edited)"));
        }
        let sig = b64().decode(&e.sig).map_err(|_| bad("signature is not base64"))?;
        keys::verify(station, &alg, &h, &sig).map_err(|_| bad("the station's signature does not verify"))?;
        want_prev = e.hash.clone();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SoftKey;
    use der::Decode;

    fn chain(key: &SoftKey, n: usize) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for i in 0..n {
            let e = Entry::next(out.last(), 100 + i as i64, "B", &format!("S-{i}"), &[0x30, 0x00], key).unwrap();
            out.push(e);
        }
        out
    }

    #[test]
    fn a_chain_verifies_and_every_tamper_is_caught() {
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap();
        let c = chain(&key, 4);
        let text: String = c.iter().map(|e| e.to_line() + "\n").collect();
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed, c);
        verify(&c, 1, GENESIS, &spki).unwrap();
        // A continuation verifies from where the last one stopped.
        verify(&c[2..], 3, &c[1].hash, &spki).unwrap();

        let mut edited = c.clone();
        edited[1].serial = "S-9".into();
        assert!(verify(&edited, 1, GENESIS, &spki).unwrap_err().to_string().contains("edited"));
        let mut dropped = c.clone();
        dropped.remove(1);
        assert!(verify(&dropped, 1, GENESIS, &spki).unwrap_err().to_string().contains("expected entry 2"));
        assert!(verify(&c, 1, &c[3].hash, &spki).unwrap_err().to_string().contains("does not link"));
        assert!(verify(&c[..2], 3, &c[1].hash, &spki).unwrap_err().to_string().contains("replayed"));
        let other = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let forged = chain(&other, 2);
        assert!(verify(&forged, 1, GENESIS, &spki).unwrap_err().to_string().contains("signature"));
        assert!(parse("{\"seq\":1}\n").is_err());
        assert!(parse(&"x".repeat(MAX_LINE + 1)).is_err());
    }
}
