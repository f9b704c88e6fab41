//! `GET /v3/certificates`: the platform certificates, each sealed with the APIv3 key.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificatesResponse {
    pub data: Vec<CertificateEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateEntry {
    pub serial_no: String,
    /// Informational: the validity we use is read from the certificate itself.
    #[serde(default)]
    pub effective_time: String,
    #[serde(default)]
    pub expire_time: String,
    pub encrypt_certificate: SealedCertificate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedCertificate {
    pub algorithm: String,
    pub nonce: String,
    #[serde(default)]
    pub associated_data: String,
    pub ciphertext: String,
}
