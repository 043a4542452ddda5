//! The station end of the line link ([`iotpki_agent::line`] holds the frames
//! and the device end).

use iotpki_agent::line::{kind, read_frame, write_frame, STEP_TIMEOUT};
use iotpki_agent::AgentError;
use tokio::io::{AsyncRead, AsyncWrite};

/// The station end: one request, one answer of kind `want` (an `ERROR` becomes an error).
pub async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    kind_out: u8,
    payload: &[u8],
    want: u8,
) -> Result<Vec<u8>, AgentError> {
    let step = async {
        write_frame(stream, kind_out, payload).await?;
        read_frame(stream).await
    };
    let f = tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| AgentError::Connect("line: the device did not answer in time".into()))??;
    match f.kind {
        k if k == want => Ok(f.payload),
        kind::ERROR => {
            Err(AgentError::Refused { status: 0, reason: format!("device: {}", String::from_utf8_lossy(&f.payload)) })
        }
        k => Err(AgentError::BadAnswer(format!("line: expected frame 0x{want:02x}, got 0x{k:02x}"))),
    }
}
