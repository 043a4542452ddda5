//! A build without the TPM Software Stack: the same API, and no TPM can be
//! opened ([`Tpm::open`] answers [`TpmError::NotBuilt`]), so no [`Tpm`] or
//! [`TpmKey`] value can exist (both types are uninhabited).

use std::sync::Arc;

use iotpki_core::keys::{KeyType, Signer};

use crate::{KeyAttributes, TpmError};

/// A connection to a TPM: none in this build.
#[derive(Debug)]
pub enum Tpm {}

impl Tpm {
    /// Always [`TpmError::NotBuilt`].
    pub fn open(_tcti: &str) -> Result<Arc<Self>, TpmError> {
        Err(TpmError::NotBuilt)
    }

    /// The TCTI string this connection was opened with.
    pub fn tcti(&self) -> &str {
        match *self {}
    }

    /// Make a P-256 signing key in the TPM.
    pub fn create_key(self: &Arc<Self>) -> Result<TpmKey, TpmError> {
        match **self {}
    }

    /// The endorsement key's public key (SubjectPublicKeyInfo DER).
    pub fn ek_public(&self) -> Result<Vec<u8>, TpmError> {
        match *self {}
    }

    /// Load a key from its blob.
    pub fn load_key(self: &Arc<Self>, _blob: &[u8]) -> Result<TpmKey, TpmError> {
        match **self {}
    }
}

/// A key loaded in the TPM: none in this build.
#[derive(Debug)]
pub enum TpmKey {}

impl TpmKey {
    /// The key's loadable blob.
    pub fn blob(&self) -> &[u8] {
        match *self {}
    }

    /// The key's public area (TPMT_PUBLIC).
    pub fn public_area(&self) -> Result<Vec<u8>, TpmError> {
        match *self {}
    }

    /// TPM2_ActivateCredential.
    pub fn activate_credential(&self, _credential_blob: &[u8], _encrypted_secret: &[u8]) -> Result<Vec<u8>, TpmError> {
        match *self {}
    }

    /// The key's object attributes.
    pub fn attributes(&self) -> Result<KeyAttributes, TpmError> {
        match *self {}
    }
}

impl Signer for TpmKey {
    fn key_type(&self) -> KeyType {
        match *self {}
    }

    fn public_key_der(&self) -> &[u8] {
        match *self {}
    }

    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, iotpki_core::Error> {
        match *self {}
    }
}
