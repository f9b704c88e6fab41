#![no_main]
//! See `wxpay_recon::fuzzing::notify` for the input format and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxpay_recon::fuzzing::notify(data));
