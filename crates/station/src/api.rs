//! The authority server's factory API, as a station calls it over its
//! mutual-TLS client: typed answers ([`iotpki_core::wire`]), a missing field
//! refused with an error that names it.

use base64::Engine as _;

use iotpki_agent::est_client::EstClient;
use iotpki_agent::AgentError;
use iotpki_core::wire;
use serde::de::DeserializeOwned;

/// The factory API at a station's EST server (`/factory/...`).
#[derive(Clone)]
pub struct FactoryApi {
    client: EstClient,
}

impl FactoryApi {
    /// Calls over `client` (a station's: the server authenticates the station by its certificate).
    pub fn new(client: EstClient) -> Self {
        Self { client }
    }

    /// `GET /factory/batches/ID?unborn=N`: the batch as the authority shows it to
    /// this station, with up to `unborn` serials not born yet.
    pub async fn batch(&self, batch: &str, unborn: u32) -> Result<wire::StationBatch, AgentError> {
        self.get(&format!("/factory/batches/{batch}?unborn={unborn}"), "batch view").await
    }

    /// `GET /factory/sync?batch=ID`: where this station's record was synced up to.
    pub async fn sync_state(&self, batch: &str) -> Result<wire::SyncState, AgentError> {
        self.get(&format!("/factory/sync?batch={batch}"), "sync state").await
    }

    /// `POST /factory/sync?batch=ID`: upload production record lines (JSON lines).
    pub async fn sync(&self, batch: &str, lines: String) -> Result<wire::SyncOutcome, AgentError> {
        self.post(&format!("/factory/sync?batch={batch}"), "application/x-ndjson", lines.into_bytes(), "sync").await
    }

    /// `GET /factory/crl?batch=ID`: what the next CRL of this station's delegated CA must say.
    pub async fn crl_terms(&self, batch: &str) -> Result<wire::CrlTerms, AgentError> {
        self.get(&format!("/factory/crl?batch={batch}"), "CRL terms").await
    }

    /// `POST /factory/crl?batch=ID`: upload the delegated CA's CRL (DER).
    pub async fn crl_upload(&self, batch: &str, der: Vec<u8>) -> Result<wire::CrlAccepted, AgentError> {
        self.post(&format!("/factory/crl?batch={batch}"), "application/pkix-crl", der, "CRL upload").await
    }

    /// `POST /factory/tpm-challenge`: a TPM attestation challenge for the
    /// device key whose TPMT_PUBLIC is `public_area` (`None`: the batch does
    /// not require attestation). Answers the id, the credential blob and the
    /// encrypted secret for TPM2_ActivateCredential.
    pub async fn tpm_challenge(
        &self,
        batch: &str,
        serial: &str,
        public_area: &[u8],
    ) -> Result<Option<(String, Vec<u8>, Vec<u8>)>, AgentError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let ask =
            wire::TpmChallengeRequest { batch: batch.into(), serial: serial.into(), public: b64.encode(public_area) };
        let body = Some(("application/json", wire::to_string(&ask).into_bytes()));
        let path = "/factory/tpm-challenge";
        let Some(c) = self.client.call_json::<wire::TpmChallenge>("POST", path, body, "TPM challenge").await? else {
            return Ok(None);
        };
        let field = |k: &str, v: &str| {
            b64.decode(v).map_err(|_| AgentError::BadAnswer(format!("TPM challenge: {k} is not base64")))
        };
        Ok(Some((c.id, field("credential_blob", &c.credential_blob)?, field("encrypted_secret", &c.encrypted_secret)?)))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, AgentError> {
        required(self.client.call_json("GET", path, None, what).await?, what)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        what: &str,
    ) -> Result<T, AgentError> {
        required(self.client.call_json("POST", path, Some((content_type, body)), what).await?, what)
    }
}

/// An answer that must have a body (204 is not one of its answers).
fn required<T>(answer: Option<T>, what: &str) -> Result<T, AgentError> {
    answer.ok_or_else(|| AgentError::BadAnswer(format!("{what}: no body")))
}
