#![no_main]
//! See `switchyard_core::fuzzing::check_websocket`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core::fuzzing::check_websocket(data));
