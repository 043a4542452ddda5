//! The line link between a factory station and a device under test: a small
//! framed protocol over any byte stream (TCP here; a UART is the same bytes).
//! This is the device end and the frames both ends share; the station end
//! (`ask`) is in the `iotpki-station` crate.
//!
//! A frame is `type (1 octet) || length (4 octets, big-endian) || payload`,
//! at most [`MAX_FRAME`] octets of payload. The station asks, the device answers:
//!
//! | station → device                  | device → station                |
//! |-----------------------------------|---------------------------------|
//! | `HELLO` (empty)                   | `SERIAL` (its serial, UTF-8)    |
//! | `KEYGEN` (key type name)          | `CSR` (PKCS#10 DER)             |
//! | `ATTEST` (empty)                  | `KEYPUB` (the key's TPMT_PUBLIC) |
//! | `ACTIVATE` (fields, see below)    | `ACTIVATED` (the secret)        |
//! | `INSTALL` (fields, see below)     | `INSTALLED` (cert serial, hex)  |
//! | anything the device cannot do     | `ERROR` (one line, UTF-8)       |
//!
//! `INSTALL` carries length-prefixed fields (4-octet big-endian length each):
//! certificate, trust anchor, server URL, label, then the chain certificates.
//! A birth costs three line round trips; the station adds one EST call.
//!
//! `ATTEST` and `ACTIVATE` are TPM attestation (see `iotpki_authority::attest`):
//! a device whose new key is in a TPM answers `ATTEST` with the key's public
//! area, then `ACTIVATE` (credential blob, encrypted secret: two fields as
//! INSTALL's) with the secret its TPM recovers; a device without a TPM
//! answers `ERROR`, and the station goes on without attestation.

use std::path::Path;
use std::time::Duration;

use iotpki_core::keys::KeyType;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::keystore::Keystore;
use crate::AgentError;

/// Largest payload of one frame.
pub const MAX_FRAME: usize = 64 * 1024;

/// Time allowed for one step (a frame each way).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Frame types.
pub mod kind {
    /// Station: who are you?
    pub const HELLO: u8 = 0x01;
    /// Station: make your key pair and send a request.
    pub const KEYGEN: u8 = 0x02;
    /// Station: here are your certificate, chain and trust anchor.
    pub const INSTALL: u8 = 0x03;
    /// Station: show me your new key's TPM public area.
    pub const ATTEST: u8 = 0x04;
    /// Station: activate this credential with your TPM.
    pub const ACTIVATE: u8 = 0x05;
    /// Device: my serial.
    pub const SERIAL: u8 = 0x81;
    /// Device: my PKCS#10 request.
    pub const CSR: u8 = 0x82;
    /// Device: installed; the certificate's serial.
    pub const INSTALLED: u8 = 0x83;
    /// Device: my new key's TPMT_PUBLIC.
    pub const KEYPUB: u8 = 0x84;
    /// Device: the credential's secret.
    pub const ACTIVATED: u8 = 0x85;
    /// Device: I cannot; why.
    pub const ERROR: u8 = 0xff;
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: u8,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What INSTALL carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// The birth certificate, DER.
    pub cert: Vec<u8>,
    /// The trust anchor, DER.
    pub anchor: Vec<u8>,
    /// The authority's EST server.
    pub server: String,
    /// The EST label the certificate comes from.
    pub label: String,
    /// The issuing CA certificates, DER.
    pub chain: Vec<Vec<u8>>,
}

impl Install {
    /// Encode as INSTALL's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut fields = vec![&self.cert[..], &self.anchor[..], self.server.as_bytes(), self.label.as_bytes()];
        fields.extend(self.chain.iter().map(|c| &c[..]));
        encode_fields(&fields)
    }

    /// Decode INSTALL's payload.
    pub fn decode(b: &[u8]) -> Result<Self, AgentError> {
        let bad = |m: &str| AgentError::BadAnswer(format!("INSTALL: {m}"));
        let fields = decode_fields(b, "INSTALL")?;
        if fields.len() < 4 {
            return Err(bad("needs certificate, anchor, server and label"));
        }
        let mut it = fields.into_iter();
        let (cert, anchor) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
        let text = |v: Vec<u8>| String::from_utf8(v).map_err(|_| bad("server and label must be UTF-8"));
        let server = text(it.next().unwrap_or_default())?;
        let label = text(it.next().unwrap_or_default())?;
        Ok(Self { cert, anchor, server, label, chain: it.collect() })
    }
}

/// Length-prefixed fields (4-octet big-endian length each), as INSTALL and ACTIVATE carry them.
pub fn encode_fields(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// See [`encode_fields`].
pub fn decode_fields(mut b: &[u8], what: &str) -> Result<Vec<Vec<u8>>, AgentError> {
    let bad = |m: &str| AgentError::BadAnswer(format!("{what}: {m}"));
    let mut fields = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(bad("truncated field length"));
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        b = &b[4..];
        if n > b.len() {
            return Err(bad("field longer than the frame"));
        }
        fields.push(b[..n].to_vec());
        b = &b[n..];
    }
    Ok(fields)
}

/// Read one frame (refusing one over [`MAX_FRAME`]).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, AgentError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await.map_err(|e| AgentError::Connect(format!("line: {e}")))?;
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if n > MAX_FRAME {
        return Err(AgentError::BadAnswer(format!("line: frame of {n} octets is over the {MAX_FRAME} limit")));
    }
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload).await.map_err(|e| AgentError::Connect(format!("line: {e}")))?;
    Ok(Frame { kind: head[0], payload })
}

/// Write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, kind: u8, payload: &[u8]) -> Result<(), AgentError> {
    if payload.len() > MAX_FRAME {
        return Err(AgentError::Usage(format!("line: frame of {} octets is over the limit", payload.len())));
    }
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await.map_err(|e| AgentError::Connect(format!("line: {e}")))?;
    w.flush().await.map_err(|e| AgentError::Connect(format!("line: {e}")))
}

/// The device end: answer one station's session on `stream` with the
/// device at `state_dir` (serial `serial`), its keys made in `keystore`. Returns the installed
/// certificate's serial once INSTALL succeeded; errors are also sent back as
/// `ERROR` frames so the station can log why.
pub async fn serve_device<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    state_dir: &Path,
    serial: &str,
    keystore: &Keystore,
) -> Result<Option<String>, AgentError> {
    loop {
        let frame = match tokio::time::timeout(STEP_TIMEOUT * 4, read_frame(stream)).await {
            Ok(Ok(f)) => f,
            Ok(Err(AgentError::Connect(_))) => return Ok(None), // the station hung up
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(AgentError::Connect("line: the station went quiet".into())),
        };
        let answer = match frame.kind {
            kind::HELLO => Ok((kind::SERIAL, serial.as_bytes().to_vec())),
            kind::KEYGEN => std::str::from_utf8(&frame.payload)
                .map_err(|_| AgentError::Usage("KEYGEN: key type must be UTF-8".into()))
                .and_then(|s| KeyType::from_name(s).map_err(AgentError::from))
                .and_then(|kt| crate::flow::begin_birth(state_dir, serial, kt, keystore))
                .map(|csr| (kind::CSR, csr)),
            kind::ATTEST => pending_name(keystore)
                .and_then(|name| keystore.tpm_public_area(&name))
                .map(|public| (kind::KEYPUB, public)),
            kind::ACTIVATE => decode_fields(&frame.payload, "ACTIVATE")
                .and_then(|f| match <[Vec<u8>; 2]>::try_from(f) {
                    Ok([blob, secret]) => Ok((blob, secret)),
                    Err(_) => Err(AgentError::BadAnswer("ACTIVATE: needs a credential blob and a secret".into())),
                })
                .and_then(|(blob, secret)| {
                    let (name, _) = keystore
                        .pending()?
                        .ok_or_else(|| AgentError::State("no key made yet (KEYGEN first)".into()))?;
                    keystore.tpm_activate(&name, &blob, &secret)
                })
                .map(|secret| (kind::ACTIVATED, secret)),
            kind::INSTALL => Install::decode(&frame.payload)
                .and_then(|i| {
                    let label = (!i.label.is_empty()).then_some(i.label.as_str());
                    crate::flow::finish_birth(
                        state_dir, serial, &i.cert, &i.chain, &i.anchor, &i.server, label, keystore,
                    )?;
                    Ok(iotpki_core::profile::cert_info(&i.cert)?.serial)
                })
                .map(|s| (kind::INSTALLED, s.into_bytes())),
            other => Err(AgentError::Usage(format!("unknown frame type 0x{other:02x}"))),
        };
        match answer {
            Ok((k, payload)) => {
                write_frame(stream, k, &payload).await?;
                if k == kind::INSTALLED {
                    return Ok(Some(String::from_utf8_lossy(&payload).into_owned()));
                }
            }
            Err(e) => write_frame(stream, kind::ERROR, e.to_string().as_bytes()).await?,
        }
    }
}

/// The name of the key KEYGEN made (the key itself unloaded again: a TPM
/// without a resource manager has few object slots).
fn pending_name(keystore: &Keystore) -> Result<String, AgentError> {
    match keystore.pending()? {
        Some((name, key)) => {
            drop(key);
            Ok(name)
        }
        None => Err(AgentError::State("no key made yet (KEYGEN first)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_round_trip_and_refusals() {
        let i = Install {
            cert: vec![1, 2, 3],
            anchor: vec![4],
            server: "https://x:1".into(),
            label: "birth".into(),
            chain: vec![vec![5, 6], vec![]],
        };
        assert_eq!(Install::decode(&i.encode()).unwrap(), i);
        assert!(Install::decode(&[0, 0, 0, 9, 1]).is_err(), "field longer than the frame");
        assert!(Install::decode(&[0, 0]).is_err(), "truncated length");
        assert!(Install::decode(&i.encode()[..4 + 3]).is_err(), "too few fields");
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_frame(&mut a, kind::CSR, b"abc").await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), Frame { kind: kind::CSR, payload: b"abc".to_vec() });
        let mut big = vec![kind::CSR];
        big.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        tokio::io::AsyncWriteExt::write_all(&mut a, &big).await.unwrap();
        assert!(read_frame(&mut b).await.unwrap_err().to_string().contains("over the"));
    }
}
