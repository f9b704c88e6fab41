//! A simulator for unit tests of its router: the fixture dev keys, the system clock, no chaos,
//! and the merchant's signer to sign requests with.

use std::path::Path;

use crate::clock::Clock;
use crate::sim::chaos::Chaos;
use crate::sim::{SimConfig, SimContext, SimKeys};
use crate::wechat::devkeys::DevKeys;
use crate::wechat::sign::MerchantSigner;

pub(crate) fn test_sim(allow_http_notify: bool, bound_to_open_platform: bool) -> (SimContext, MerchantSigner) {
    // The simulator's notification client is built with reqwest, which needs a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-keys");
    let keys = DevKeys::load(&dir).expect("fixture keys");
    let config = SimConfig {
        keys: SimKeys::from_dev_keys(&keys).expect("sim keys"),
        clock: Clock::system(),
        time_scale: 1000.0,
        seed: 7,
        chaos: Chaos::default(),
        allow_http_notify,
        bound_to_open_platform,
    };
    let signer =
        MerchantSigner { mchid: keys.mchid.clone(), serial: keys.merchant_serial.clone(), signer: keys.merchant_key };
    (SimContext::new(config), signer)
}
