#![no_main]
//! See `switchyard_core::fuzzing::check_ws_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core::fuzzing::check_ws_json(data));
