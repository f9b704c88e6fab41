#![no_main]
//! See `wxpay_recon::fuzzing::bill` for the input format and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wxpay_recon::fuzzing::bill(data));
