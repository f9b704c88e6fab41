//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), kept in the library so the
//! stable suite runs the very same code: it replays the committed corpora
//! (`fuzz/corpus/<target>/`) and a short proptest through these functions (tests below).
//!
//! Each target takes the raw bytes libFuzzer hands it. None may panic or allocate without
//! bound, whatever the input; the `assert!`s are oracles, properties that must hold for every
//! input (a signed notification verifies, a sealed resource opens...), so a fuzzer that breaks
//! one reports it like a crash.
//!
//! Compiled for tests and under `--cfg fuzzing` (set by cargo-fuzz) only: it uses the public
//! test key of `wechat::testkeys`, which must never be linked into a served binary.

use std::io::Cursor;
use std::sync::OnceLock;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};

use crate::bill::{BillItem, BillReader, plain_reader, read_bill};
use crate::config::{DEFAULT_TOML, ENV_PREFIX, Purpose, Settings};
use crate::sim::auth::{AuthRefusal, Merchant, check_authorization};
use crate::wechat::aead::ApiV3Key;
use crate::wechat::sign::{MerchantSigner, RsaSigner, SCHEME, response_message};
use crate::wechat::verify::{PlatformKeys, SignedHeaders, VerifyError};
use crate::wechat::{convert, notification, testkeys};

/// The key id the platform test key is known under (the D6 vector's).
pub const NOTIFY_SERIAL: &str = "PUB_KEY_ID_0000000000000024101100397200000006";
/// "Now" for the notify target: ten seconds after the D6 vector was signed.
pub const NOTIFY_NOW: i64 = 1_614_738_897 + 10;
/// The timestamp tolerance the service uses by default.
const TOLERANCE_SECS: i64 = 300;
/// Nonce and associated data of resources the target seals itself.
const SEAL_NONCE: &str = "fuzz-nonce12";
const SEAL_AAD: &str = "transaction";

struct Keys {
    platform: PlatformKeys,
    signer: RsaSigner,
    apiv3: ApiV3Key,
}

/// Parsed once: parsing a PEM key per input would dominate the fuzzer's time.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signer = testkeys::k1_signer();
        let mut platform = PlatformKeys::default();
        platform.insert(NOTIFY_SERIAL, signer.public_key());
        let apiv3 = ApiV3Key::new(testkeys::D6_APIV3_KEY.as_bytes()).expect("the test APIv3 key is 32 bytes");
        Keys { platform, signer, apiv3 }
    })
}

/// A header value as axum hands it to the notify handler: `HeaderValue::to_str` gives text
/// only for visible ASCII (and tab), anything else reads as a missing header.
fn header_text(bytes: &[u8]) -> Option<&str> {
    bytes.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)).then(|| std::str::from_utf8(bytes).ok()).flatten()
}

/// Flags of the notify input (its first byte).
mod notify_flags {
    /// Bits 0-4: header 0-4 (timestamp, nonce, signature, serial, signature type) is absent.
    pub const ABSENT_MASK: u8 = 0b1_1111;
    /// Sign the (final) body with the platform test key, replacing the signature field.
    pub const SIGN: u8 = 1 << 5;
    /// The body field is a resource plaintext: seal it with the test APIv3 key into an envelope.
    pub const SEAL: u8 = 1 << 6;
    /// The sealed envelope is a `REFUND.SUCCESS` (else `TRANSACTION.SUCCESS`).
    pub const REFUND: u8 = 1 << 7;
}

/// The notify path: headers + body → verify (key ring with the platform test key, timestamp
/// window) → UTF-8 → decrypt (`notification::open`) → parse (`convert::notification`), as
/// `services::ingest` runs it.
///
/// Input: a flags byte (see `notify_flags`), then NUL-separated fields: timestamp, nonce,
/// signature, serial, signature type, body (the rest, NULs included). With `SIGN` (and `SEAL`)
/// the fuzzer's bodies and resources get past the signature, so decryption and parsing of
/// attacker-shaped content are exercised too.
pub fn notify(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut fields = rest.splitn(6, |&b| b == 0);
    let mut raw: [&[u8]; 6] = [&[]; 6];
    for slot in &mut raw {
        *slot = fields.next().unwrap_or_default();
    }
    let keys = keys();
    let sealed = flags & notify_flags::SEAL != 0;
    let body: Vec<u8> = if sealed {
        let event = if flags & notify_flags::REFUND != 0 { "REFUND.SUCCESS" } else { "TRANSACTION.SUCCESS" };
        let Ok(ciphertext) = keys.apiv3.encrypt(SEAL_NONCE, SEAL_AAD, raw[5]) else { return };
        serde_json::json!({
            "id": "fuzz", "create_time": "2021-03-03T10:34:57+08:00", "resource_type": "encrypt-resource",
            "event_type": event, "summary": "",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                         "associated_data": SEAL_AAD, "nonce": SEAL_NONCE},
        })
        .to_string()
        .into_bytes()
    } else {
        raw[5].to_vec()
    };
    let text = |i: usize| (flags & notify_flags::ABSENT_MASK & (1 << i) == 0).then(|| header_text(raw[i])).flatten();
    let signed = flags & notify_flags::SIGN != 0;
    let signature = if signed {
        let message = response_message(text(0).unwrap_or(""), text(1).unwrap_or(""), &body);
        keys.signer.sign(&message).ok()
    } else {
        None
    };
    let headers = SignedHeaders {
        timestamp: text(0),
        nonce: text(1),
        signature: if signed { signature.as_deref().filter(|_| text(2).is_some()) } else { text(2) },
        serial: text(3),
        signature_type: text(4),
    };
    let verified = keys.platform.verify(&headers, &body, NOTIFY_NOW, TOLERANCE_SECS);
    if let Err(err) = &verified {
        // The metric label and the log line of a rejection.
        assert!(VerifyError::REASONS.contains(&err.reason()), "reason {} is not listed", err.reason());
        let _ = err.to_string();
    }
    // Clocks and tolerances at the ends of the range must not overflow either.
    for (now, tolerance) in [(i64::MIN, TOLERANCE_SECS), (i64::MAX, TOLERANCE_SECS), (NOTIFY_NOW, i64::MAX)] {
        let _ = keys.platform.verify(&headers, &body, now, tolerance);
    }
    if signed && signature_must_verify(&headers) {
        assert_eq!(verified, Ok(()), "a body signed with the platform key must verify");
    }
    if verified.is_err() {
        return;
    }
    let Ok(raw_body) = std::str::from_utf8(&body) else { return };
    match notification::open(&keys.apiv3, raw_body) {
        Ok(opened) => {
            let _ = convert::notification(&opened.event_type, &opened.resource_json);
        }
        Err(err) => {
            let plaintext_is_json = serde_json::from_slice::<serde_json::Value>(raw[5]).is_ok();
            assert!(!(sealed && plaintext_is_json), "a sealed JSON resource must open: {err:?}");
        }
    }
}

/// Whether headers carrying our own platform signature must pass every check.
fn signature_must_verify(headers: &SignedHeaders<'_>) -> bool {
    let (Some(ts), Some(_), Some(_), Some(serial)) =
        (headers.timestamp, headers.nonce, headers.signature, headers.serial)
    else {
        return false;
    };
    let in_window = ts.trim().parse::<i64>().is_ok_and(|ts| NOTIFY_NOW.abs_diff(ts) <= TOLERANCE_SECS.unsigned_abs());
    serial == NOTIFY_SERIAL && headers.signature_type.is_none_or(|kind| kind == SCHEME) && in_window
}

/// Ceiling on uncompressed bytes in the bill target: small, so a bomb stops at once.
pub const BILL_MAX_PLAIN_BYTES: u64 = 1 << 20;

/// The trade bill reader over bytes as downloaded: gzip (bombs included) or plain, through the
/// size ceiling, every item read and each row turned into a domain entry.
pub fn bill(data: &[u8]) {
    let Ok(input) = plain_reader(Cursor::new(data.to_vec()), BILL_MAX_PLAIN_BYTES) else { return };
    let mut reader = BillReader::new(input);
    let mut rows = 0u64;
    let mut summaries = 0;
    while let Some(item) = reader.next() {
        match item {
            Ok(BillItem::Row(row)) => {
                rows += 1;
                let _ = convert::bill_entry(&row);
            }
            Ok(BillItem::Summary(stated)) => {
                summaries += 1;
                let _ = stated.disagreements(reader.rows_summary()).iter().map(ToString::to_string).count();
            }
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
    assert_eq!(reader.rows_summary().count, rows, "the running totals count every row yielded");
    assert!(summaries <= 1, "at most one summary");
    if data.len() as u64 <= BILL_MAX_PLAIN_BYTES {
        let _ = read_bill(data);
    }
}

/// Flags of the sim_auth input (its first byte).
mod auth_flags {
    /// Replace the header with one correctly signed by the merchant test key, the header field
    /// serving as its nonce.
    pub const SIGN: u8 = 1;
    /// Bits 1-2: the simulator's clock (now, `i64::MIN`, `i64::MAX`, 0).
    pub const CLOCK_SHIFT: u8 = 1;
}

/// The simulator's check of a merchant `Authorization: WECHATPAY2-SHA256-RSA2048 ...` header
/// over a request. Input: a flags byte (see `auth_flags`), then NUL-separated header, method,
/// request-target and body.
pub fn sim_auth(data: &[u8]) {
    const MCHID: &str = "1900000001";
    const SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
    let Some((&flags, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.splitn(4, '\0');
    let mut field = || fields.next().unwrap_or_default();
    let (header, method, target, body) = (field(), field(), field(), field());
    let now = [NOTIFY_NOW, i64::MIN, i64::MAX, 0][usize::from((flags >> auth_flags::CLOCK_SHIFT) & 0b11)];
    let keys = keys();
    let verifier = keys.signer.public_key();
    let merchant = Merchant { mchid: MCHID, serial: SERIAL, key: &verifier };
    let signed = flags & auth_flags::SIGN != 0;
    // The `k="v",...` syntax carries an alphanumeric nonce unchanged; others may not round-trip.
    let plain_nonce = header.bytes().all(|b| b.is_ascii_alphanumeric());
    let header = if signed {
        let signer = MerchantSigner { mchid: MCHID.into(), serial: SERIAL.into(), signer: keys.signer.clone() };
        let Ok(header) = signer.authorization(method, target, body, now, header) else { return };
        header
    } else {
        header.to_owned()
    };
    let result = check_authorization(&merchant, now, method, target, body, &header);
    if let Err(AuthRefusal::Signature { message }) = &result {
        // The simulator echoes the first 64 characters of the message it expected.
        let _ = message.chars().take(64).count();
    }
    if signed && plain_nonce {
        assert_eq!(result, Ok(()), "a request signed with the merchant key must pass");
    }
}

/// Config loading through the code `Settings::load_for` uses (figment: defaults, then a TOML
/// "file", then environment-like overrides; extraction; validation). Input: UTF-8 text; the
/// part before the first NUL is the TOML file, the rest `KEY=VALUE` lines read as
/// `WXPAY_RECON__*` variables (values parsed as figment parses the environment).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let mut figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml));
    for line in env.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let Some(name) = key
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .map(|_| &key[ENV_PREFIX.len()..])
        else {
            continue;
        };
        // As `Env::prefixed(..).split("__")` does: trimmed, lowercased, empty segments skipped.
        let path = name.trim().replace("__", ".").to_ascii_lowercase();
        if path.split('.').any(str::is_empty) {
            continue;
        }
        let Ok(value) = value.parse::<figment::value::Value>();
        figment = figment.merge(Serialized::default(&path, value));
    }
    for purpose in [Purpose::Serve, Purpose::Dev, Purpose::Ops] {
        match Settings::from_figment(figment.clone(), purpose) {
            Ok(settings) => exercise_settings(&settings),
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
}

/// The derived values start-up computes from valid settings must not panic either.
fn exercise_settings(settings: &Settings) {
    let _ = settings.profile();
    let _ = settings.reconcile.run_at_time();
    let _ = (settings.apply.poll_interval(), settings.apply.hold_before_commit());
    let _ = (settings.platform_certificates.refresh_interval(), settings.platform_certificates.reload_interval());
    let _ = (settings.queue.poll_interval(), settings.worker.sweep_interval());
    for checks in [0, 1, 2, i64::from(u16::MAX), i64::MAX, i64::MIN] {
        let _ = settings.poll.delay_after(checks);
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.expect("entry").path();
                let bytes = std::fs::read(&path).expect("read");
                (path, bytes)
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} has no seeds", dir.display());
        files
    }

    /// Replays a committed corpus through the target, each file naming itself on failure.
    fn replay(target: &str, run: fn(&[u8])) {
        let started = Instant::now();
        for (path, bytes) in corpus(target) {
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{target} replay took {:?}", started.elapsed());
    }

    #[test]
    fn fuzz_corpus_notify_replays() {
        replay("notify", notify);
    }

    #[test]
    fn fuzz_corpus_bill_replays() {
        replay("bill", bill);
    }

    #[test]
    fn fuzz_corpus_sim_auth_replays() {
        replay("sim_auth", sim_auth);
    }

    #[test]
    fn fuzz_corpus_config_replays() {
        replay("config", config);
    }

    /// The seeds reach what they were written for: past the signature, into a row, through
    /// the simulator's check (guards against a target or seed that silently stops early).
    #[test]
    fn fuzz_seeds_reach_deep() {
        let seed = |target: &str, name: &str| {
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target).join(name))
                .expect("seed")
        };
        let d6 = seed("notify", "seed-d6-real-notification");
        let (_, rest) = d6.split_first().expect("flags");
        let parts: Vec<&[u8]> = rest.splitn(6, |&b| b == 0).collect();
        let text = |i: usize| std::str::from_utf8(parts[i]).ok();
        let headers = SignedHeaders {
            timestamp: text(0),
            nonce: text(1),
            signature: text(2),
            serial: text(3),
            signature_type: text(4),
        };
        assert_eq!(keys().platform.verify(&headers, parts[5], NOTIFY_NOW, TOLERANCE_SECS), Ok(()));
        let opened = notification::open(&keys().apiv3, std::str::from_utf8(parts[5]).expect("utf8")).expect("opens");
        assert!(convert::notification(&opened.event_type, &opened.resource_json).is_ok());

        let bill_seed = seed("bill", "seed-protocol-sample");
        let (rows, _) = read_bill(bill_seed.as_slice()).expect("the protocol sample reads");
        assert!(!rows.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_notify_never_panics(flags in any::<u8>(), fields in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 6)) {
            let mut data = vec![flags];
            data.extend(fields.join(&0u8));
            notify(&data);
        }

        #[test]
        fn fuzz_bill_never_panics(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            bill(&data);
        }

        #[test]
        fn fuzz_sim_auth_never_panics(flags in any::<u8>(), header in "[ -~]{0,200}", method in "[A-Z]{0,7}", target in "/[ -~]{0,40}") {
            sim_auth(format!("{}{header}\0{method}\0{target}\0{{}}", char::from(flags & 0x7f)).as_bytes());
        }

        #[test]
        fn fuzz_config_never_panics(toml in "[a-z_.=\\[\\]\"0-9 \n-]{0,200}", env in "(WXPAY_RECON__[A-Z_]{1,30}=[ -~]{0,20}\n){0,4}") {
            config(format!("{toml}\0{env}").as_bytes());
        }
    }
}
