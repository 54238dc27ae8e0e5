#![no_main]
//! See `switchyard_core::fuzzing::check_properties`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core::fuzzing::check_properties(data));
