#![no_main]
//! See `switchyard_core::fuzzing::check_topics`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard_core::fuzzing::check_topics(data));
