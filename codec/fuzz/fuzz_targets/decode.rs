//! Fuzz target: any byte string must decode to `Ok` or a typed error (no panic, no hang, no
//! allocation beyond the limits). Run with `cargo +nightly fuzz run decode` in `codec/`;
//! seed corpus: `fixtures/conformance/nnc/*.nnc`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = nnc_codec::Limits {
        max_tensor_elements: 1 << 22,
        max_total_elements: 1 << 23,
        parallel: false,
        ..Default::default()
    };
    let _ = nnc_codec::decode_stream(data, &limits);
    let _ = nnc_codec::units(data);
});
