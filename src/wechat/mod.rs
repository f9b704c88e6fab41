//! Everything about speaking WeChat: signing and verifying, AES-GCM resources, key loading,
//! wire shapes, and the HTTP clients for WeChat Pay and mini-program login. Nothing here
//! touches our database or decides retries.

pub mod aead;
pub mod certificate;
pub mod client;
pub mod convert;
pub mod devkeys;
pub mod error;
pub mod keyring;
pub mod keys;
pub mod login;
pub mod notification;
pub mod ratelimit;
pub mod sign;
pub mod verify;
pub mod wire;

/// Public test vectors; also compiled under `--cfg fuzzing` (cargo-fuzz) for the fuzz targets.
#[cfg(any(test, fuzzing))]
#[allow(clippy::expect_used, reason = "fixed test vectors: failing to parse one is a broken build")]
pub(crate) mod testkeys;

pub use client::PayClient;
pub use error::WechatError;
pub use keys::Credentials;
pub use login::LoginClient;
