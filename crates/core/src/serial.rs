//! Certificate serial numbers: random, positive, 127 bits of entropy.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use x509_cert::serial_number::SerialNumber;

use crate::Error;

/// A fresh random serial: 16 random bytes with the top bit cleared, so the
/// INTEGER is positive and needs no padding byte; at least 64 bits of entropy
/// as the CA/Browser Forum asks, 127 here. Returns the serial and its hex form.
pub fn random_serial(rng: &dyn SecureRandom) -> Result<(SerialNumber, String), Error> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes).map_err(|_| Error::Signing("random number generator failed".into()))?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        // Keep the encoding minimal (DER forbids a leading zero byte before a byte < 0x80).
        bytes[0] = 0x01;
    }
    let sn = SerialNumber::new(&bytes).map_err(|e| Error::Signing(format!("serial: {e}")))?;
    Ok((sn, hex::encode(bytes)))
}

/// A serial from the system's random generator.
pub fn system_random_serial() -> Result<(SerialNumber, String), Error> {
    random_serial(&SystemRandom::new())
}

/// Lowercase hex of a serial's content bytes: the key the store uses.
pub fn serial_hex(sn: &SerialNumber) -> String {
    hex::encode(sn.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_unique_and_minimal() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (sn, h) = system_random_serial().unwrap();
            assert_eq!(sn.as_bytes().len(), 16);
            assert!(sn.as_bytes()[0] & 0x80 == 0 && sn.as_bytes()[0] != 0);
            assert_eq!(serial_hex(&sn), h);
            assert!(seen.insert(h));
        }
    }
}
