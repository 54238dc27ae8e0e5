//! Replays the fuzz targets' checked-in inputs (fuzz/seeds) and every input a fuzzer found to
//! break something (fuzz/regressions) through the same checks the targets run, on stable Rust:
//! CI holds every past crash fixed without needing nightly or libFuzzer.

use std::path::Path;
use switchyard_core::fuzzing;

/// Runs `check` on every file under fuzz/seeds/TARGET and fuzz/regressions/TARGET.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut ran = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} breaks an invariant", path.display());
            ran += 1;
        }
    }
    assert!(ran > 0, "no inputs for {target}");
}

#[test]
fn decoder_corpus() {
    replay("decoder", fuzzing::check_decoder);
}

#[test]
fn properties_corpus() {
    replay("properties", fuzzing::check_properties);
}

#[test]
fn topics_corpus() {
    replay("topics", fuzzing::check_topics);
}

#[test]
fn websocket_corpus() {
    replay("websocket", fuzzing::check_websocket);
}

#[test]
fn ws_json_corpus() {
    replay("ws_json", fuzzing::check_ws_json);
}

#[test]
fn sessions_corpus() {
    replay("sessions", fuzzing::sessions::check_sessions);
}
