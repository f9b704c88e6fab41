//! `GET /v3/bill/tradebill`: where to download a day's bill and how to check it.

use serde::{Deserialize, Serialize};

/// The answer to a bill application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillInfo {
    /// `SHA1`: of the uncompressed bill.
    pub hash_type: String,
    pub hash_value: String,
    /// Signed GET, valid for minutes; the body is not signed (the hash stands in for it).
    pub download_url: String,
}
