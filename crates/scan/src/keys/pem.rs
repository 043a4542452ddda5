//! PEM blocks as firmware holds them: CRLF or LF, indented, lines of any
//! width, and also escaped inside JSON or C string literals (`"...\n"`, `\/`).

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use zeroize::Zeroizing;

use super::decode::{self, Derived};
use super::{der as d, ssh};
use crate::{FindingKind, KeyFormat};

pub(crate) const BEGIN: &[u8] = b"-----BEGIN ";
pub(crate) const END: &[u8] = b"-----END ";
const DASHES: &[u8] = b"-----";
const MAX_LABEL: usize = 48;

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The label of the BEGIN line at the start of `w`, and where its body starts.
pub(crate) fn begin(w: &[u8]) -> Option<(&[u8], usize)> {
    let rest = w.strip_prefix(BEGIN)?;
    let n =
        rest.iter().take(MAX_LABEL + 1).position(|&c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' '))?;
    let label = &rest[..n];
    if label.is_empty() || !rest[n..].starts_with(DASHES) {
        return None;
    }
    Some((label, BEGIN.len() + n + DASHES.len()))
}

/// A PEM block: `window` starts at its BEGIN line, `end` is where the first
/// "-----END " after the BEGIN line starts. Returns the block's length
/// (through its END line) and what it holds, if anything we report.
pub(crate) fn block(window: &[u8], end: usize) -> Option<(usize, Option<FindingKind>)> {
    let (label, body_start) = begin(window)?;
    let tail = window.get(end..)?.strip_prefix(END)?.strip_prefix(label)?.strip_prefix(DASHES)?;
    let len = window.len() - tail.len();
    let body = window.get(body_start..end)?;
    Some((len, finding(label, body)))
}

struct Decoded {
    encrypted: bool,
    dek_info: Option<String>,
    der: Zeroizing<Vec<u8>>,
}

/// The body's headers and its base64, decoded.
fn decode_body(body: &[u8]) -> Option<Decoded> {
    // Unescape: `\n` ends a line, `\r`, `\t`, quotes and CR vanish.
    let mut text = Zeroizing::new(Vec::with_capacity(body.len()));
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => {
                match body.get(i + 1) {
                    Some(b'n') => text.push(b'\n'),
                    // JSON may escape the solidus.
                    Some(b'/') => text.push(b'/'),
                    Some(b'r') | Some(b't') => {}
                    _ => return None,
                }
                i += 2;
                continue;
            }
            b'"' | b'\r' => {}
            c => text.push(c),
        }
        i += 1;
    }
    let mut lines = text.split(|&c| c == b'\n').map(|l| l.trim_ascii()).skip_while(|l| l.is_empty()).peekable();
    let mut encrypted = false;
    let mut dek_info = None;
    if lines.peek().is_some_and(|l| l.contains(&b':')) {
        for line in lines.by_ref() {
            if line.is_empty() {
                break;
            }
            if line.starts_with(b"Proc-Type:") && line.ends_with(b"ENCRYPTED") {
                encrypted = true;
            }
            if let Some(v) = line.strip_prefix(b"DEK-Info:") {
                let v = String::from_utf8_lossy(v.trim_ascii());
                dek_info = Some(v.split(',').next().unwrap_or_default().to_string());
            }
        }
    }
    let mut b64 = Zeroizing::new(Vec::with_capacity(text.len()));
    for line in lines {
        for &c in line {
            if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=' {
                b64.push(c);
            } else if !c.is_ascii_whitespace() {
                return None;
            }
        }
    }
    let der = Zeroizing::new(BASE64.decode(&*b64).ok()?);
    (!der.is_empty()).then_some(Decoded { encrypted, dek_info, der })
}

fn legacy_encrypted(algorithm: &str, dek_info: Option<String>) -> Derived {
    let cipher = dek_info.map(|c| format!(" ({c})")).unwrap_or_default();
    Derived {
        algorithm: algorithm.into(),
        spki: None,
        encrypted: true,
        note: Some(format!("legacy PEM encryption{cipher}: not opened, the scanner has no password")),
    }
}

/// The DER value that is exactly `der`, or `None` if bytes follow or lack.
fn exact(der: &[u8]) -> Option<&[u8]> {
    d::tlv(der).filter(|t| t.raw.len() == der.len()).map(|t| t.raw)
}

fn finding(label: &[u8], body: &[u8]) -> Option<FindingKind> {
    const PEM: &str = "PEM";
    let key = |format, d: Option<Derived>| d.map(|d| d.into_finding(format, PEM));
    match label {
        b"PRIVATE KEY" => key(KeyFormat::Pkcs8, decode::pkcs8(exact(&decode_body(body)?.der)?)),
        b"RSA PRIVATE KEY" => {
            let b = decode_body(body)?;
            if b.encrypted {
                return key(KeyFormat::Pkcs1, Some(legacy_encrypted("rsa", b.dek_info)));
            }
            key(KeyFormat::Pkcs1, decode::pkcs1(exact(&b.der)?))
        }
        b"EC PRIVATE KEY" => {
            let b = decode_body(body)?;
            if b.encrypted {
                return key(KeyFormat::Sec1, Some(legacy_encrypted("ec", b.dek_info)));
            }
            key(KeyFormat::Sec1, decode::sec1(exact(&b.der)?, None))
        }
        b"ENCRYPTED PRIVATE KEY" => {
            key(KeyFormat::EncryptedPkcs8, decode::encrypted_pkcs8(exact(&decode_body(body)?.der)?))
        }
        b"OPENSSH PRIVATE KEY" => key(KeyFormat::OpenSsh, ssh::openssh(&decode_body(body)?.der)),
        b"CERTIFICATE" | b"X509 CERTIFICATE" => decode::certificate(exact(&decode_body(body)?.der)?),
        // OpenSSL's trusted certificate: the certificate, then its trust settings.
        b"TRUSTED CERTIFICATE" => decode::certificate(d::tlv(&decode_body(body)?.der)?.raw),
        _ => None,
    }
}
