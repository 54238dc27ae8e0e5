#![no_main]
//! See `switchyard_core::fuzzing::sessions::check_sessions`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core::fuzzing::sessions::check_sessions(data));
