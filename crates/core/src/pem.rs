//! PEM helpers for the labels we use.

use der::pem::LineEnding;

use crate::Error;

/// Encode DER under a PEM label.
pub fn encode(label: &str, der: &[u8]) -> String {
    // Encoding to a String cannot fail for valid labels; fall back to empty on the impossible path.
    der::pem::encode_string(label, LineEnding::LF, der).unwrap_or_default()
}

/// Decode every PEM block with `label` from `text`, in order.
pub fn decode_all(label: &str, text: &str) -> Result<Vec<Vec<u8>>, Error> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start..];
        let stop = after.find(&end).ok_or_else(|| Error::Pem(format!("unterminated {label} block")))?;
        let block = &after[..stop + end.len()];
        let (l, der) = der::pem::decode_vec(block.as_bytes()).map_err(|e| Error::Pem(e.to_string()))?;
        if l != label {
            return Err(Error::Pem(format!("expected {label}, found {l}")));
        }
        out.push(der);
        rest = &after[stop + end.len()..];
    }
    Ok(out)
}

/// Decode exactly one PEM block with `label`.
pub fn decode_one(label: &str, text: &str) -> Result<Vec<u8>, Error> {
    let mut all = decode_all(label, text)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        0 => Err(Error::Pem(format!("no {label} block found"))),
        n => Err(Error::Pem(format!("expected one {label} block, found {n}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_several_blocks() {
        let text = format!("junk\n{}{}", encode("CERTIFICATE", b"\x30\x00"), encode("CERTIFICATE", b"\x30\x01\x00"));
        assert_eq!(decode_all("CERTIFICATE", &text).unwrap(), vec![b"\x30\x00".to_vec(), b"\x30\x01\x00".to_vec()]);
        assert!(decode_one("CERTIFICATE", &text).is_err());
        assert!(decode_one("CERTIFICATE", "nothing").is_err());
    }
}
