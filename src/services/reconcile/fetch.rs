//! Getting a day's bill safely: apply for it, stream the download to a temporary file (size
//! limited; a failed download starts over from zero with a freshly applied-for URL; deleted on
//! drop whatever happens), and check its SHA-1 over the uncompressed bytes before anything
//! reads it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use sha1::{Digest, Sha1};
use tempfile::NamedTempFile;

use crate::wechat::{PayClient, WechatError};

use super::ReconcileError;

/// Downloads tried before the run fails. Each attempt applies for the bill again: a
/// `download_url` is valid for 30 s to 5 min only (protocol §5.7), so a retry with the URL of a
/// failed attempt would often be refused as expired.
const DOWNLOAD_ATTEMPTS: u32 = 3;
/// Temporary files are named so a restart can clear those a killed run left.
pub const TEMP_PREFIX: &str = "wxpay-bill-";

/// What WeChat has for a day.
#[derive(Debug)]
pub enum Fetched {
    /// A verified bill in a temporary file (gzip or plain).
    Bill { file: NamedTempFile, sha1: String, bytes: u64 },
    /// NO_STATEMENT_EXIST: no trade that day.
    Empty,
    /// STATEMENT_CREATING: ask again later.
    NotReady,
}

pub async fn fetch(
    pay: &PayClient,
    bill_date: &str,
    work_dir: &Path,
    max_bytes: u64,
    max_plain_bytes: u64,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<Fetched, ReconcileError> {
    std::fs::create_dir_all(work_dir).map_err(|e| io(work_dir, &e))?;
    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".bill")
        .tempfile_in(work_dir)
        .map_err(|e| io(work_dir, &e))?;
    let mut attempt = 0;
    let (info, bytes) = loop {
        attempt += 1;
        let info = match pay.trade_bill(bill_date).await {
            Ok(info) => info,
            Err(err) if err.is_no_bill() => return Ok(Fetched::Empty),
            Err(err) if err.is_bill_not_ready() => return Ok(Fetched::NotReady),
            Err(err) => return Err(err.into()),
        };
        if !info.hash_type.eq_ignore_ascii_case("SHA1") {
            return Err(ReconcileError::Bill(format!("unsupported hash_type {}", info.hash_type)));
        }
        let std_file = temp.reopen().map_err(|e| io(temp.path(), &e))?;
        std_file.set_len(0).map_err(|e| io(temp.path(), &e))?;
        let mut out = tokio::fs::File::from_std(std_file);
        match pay.download_bill(&info.download_url, &mut out, max_bytes).await {
            Ok(n) => break (info, n),
            Err(err) if worth_a_fresh_url(&err) && attempt < DOWNLOAD_ATTEMPTS => {
                tracing::warn!(bill.date = bill_date, attempt, error = %err, "bill download failed; applying for a fresh download URL");
            }
            Err(err) => return Err(err.into()),
        }
    };
    on_bytes(bytes);
    let path = temp.path().to_owned();
    let actual = tokio::task::spawn_blocking(move || sha1_of_plain(&path, max_plain_bytes))
        .await
        .map_err(|e| ReconcileError::Io(e.to_string()))??;
    if !actual.eq_ignore_ascii_case(&info.hash_value) {
        return Err(ReconcileError::HashMismatch { expected: info.hash_value, actual });
    }
    Ok(Fetched::Bill { file: temp, sha1: actual, bytes })
}

/// A download failure another URL may cure: the transport or WeChat's side failing, or WeChat
/// refusing this URL (expired or unknown token, a 4xx). Not our own refusals (a host we do not
/// send our signature to, a bill over the size limit): a new URL repeats them.
fn worth_a_fresh_url(err: &WechatError) -> bool {
    err.retryable() || matches!(err, WechatError::Api { .. })
}

fn io(path: &Path, err: &std::io::Error) -> ReconcileError {
    ReconcileError::Io(format!("{}: {err}", path.display()))
}

/// Ceiling on the uncompressed bytes of a file an operator hands to `bill parse` (no settings
/// are loaded there): generous for a file they chose, yet a gzip bomb still stops.
pub const LOCAL_MAX_PLAIN_BYTES: u64 = 64 << 30;

/// The bill's bytes, uncompressed on the fly when they are gzip; reading fails past
/// `max_plain_bytes` uncompressed (`reconcile.max_bill_plain_bytes`).
pub fn open_plain(path: &Path, max_plain_bytes: u64) -> Result<Box<dyn BufRead + Send>, ReconcileError> {
    const BUF: usize = 256 * 1024;
    let file = File::open(path).map_err(|e| io(path, &e))?;
    crate::bill::plain_reader(BufReader::with_capacity(BUF, file), max_plain_bytes).map_err(|e| io(path, &e))
}

/// SHA-1 (lower hex) of the uncompressed bill; a truncated gzip stream, or one inflating past
/// `max_plain_bytes`, is an error here, before the reader sees a line.
pub fn sha1_of_plain(path: &Path, max_plain_bytes: u64) -> Result<String, ReconcileError> {
    let mut reader = open_plain(path, max_plain_bytes)?;
    let mut hasher = Sha1::new();
    loop {
        let chunk = reader.fill_buf().map_err(|e| ReconcileError::Bill(format!("cannot read the bill: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(chunk);
        let n = chunk.len();
        reader.consume(n);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Deletes temporary bills a killed run left behind: ours, and older than any run could be
/// (a run in progress elsewhere, e.g. the CLI on the same directory, keeps its file).
pub fn clear_stale(work_dir: &Path) {
    const STALE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
    let Ok(entries) = std::fs::read_dir(work_dir) else { return };
    for entry in entries.flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE));
        if old && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl From<WechatError> for ReconcileError {
    fn from(err: WechatError) -> Self {
        ReconcileError::Wechat(err)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// Both passes over a downloaded bill (the hash, then the rows) stop at the ceiling.
    #[test]
    fn a_downloaded_gzip_bomb_fails_the_hash_and_the_reader() {
        let mut file = NamedTempFile::new().expect("temp");
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        for _ in 0..64 {
            encoder.write_all(&[0u8; 1 << 20]).expect("compress");
        }
        file.write_all(&encoder.finish().expect("gzip")).expect("write");
        let err = sha1_of_plain(file.path(), 1 << 20).expect_err("over the ceiling");
        assert!(err.to_string().contains("uncompressed"), "{err}");
        let mut reader = open_plain(file.path(), 1 << 20).expect("open");
        assert!(std::io::copy(&mut reader, &mut std::io::sink()).is_err());
        assert_eq!(sha1_of_plain(file.path(), 64 << 20).expect("at the ceiling").len(), 40);
    }
}
