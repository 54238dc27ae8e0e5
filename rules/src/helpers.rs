//! The helpers rule functions call: time, encodings, regular expressions, JSON, hashing,
//! UUIDs, bit-level payload decoding and compression (EMQX's names where it has them).

use rhai::{Array, Blob, Dynamic, Engine, EvalAltResult};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::SystemTime;

use crate::message::millis;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

thread_local! {
    static REGEXES: RefCell<HashMap<String, regex::Regex>> = RefCell::new(HashMap::new());
}

fn with_regex<T>(pattern: &str, f: impl FnOnce(&regex::Regex) -> T) -> RhaiResult<T> {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            let re = regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| -> Box<EvalAltResult> {
                    format!("bad regex {pattern:?}: {e}").into()
                })?;
            // Patterns usually are literals in rules; a bounded cache keeps a rule that builds
            // them from data from growing it forever.
            if cache.len() >= 256 {
                cache.clear();
            }
            cache.insert(pattern.to_string(), re);
        }
        Ok(f(&cache[pattern]))
    })
}

pub(crate) fn register_helpers(engine: &mut Engine, max_output: usize) {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    engine.register_fn("now", || millis(SystemTime::now()));
    engine.register_fn("format_time", |ms: i64, fmt: &str| -> RhaiResult<String> {
        use std::fmt::Write as _;
        let t = chrono::DateTime::from_timestamp_millis(ms).ok_or("time out of range")?;
        let mut out = String::new();
        write!(out, "{}", t.format(fmt)).map_err(|_| format!("bad time format {fmt:?}"))?;
        Ok(out)
    });
    engine.register_fn("format_time", |ms: i64| -> RhaiResult<String> {
        let t = chrono::DateTime::from_timestamp_millis(ms).ok_or("time out of range")?;
        Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    });
    engine.register_fn("base64_encode", |b: Blob| B64.encode(b));
    engine.register_fn("base64_encode", |s: &str| B64.encode(s));
    engine.register_fn("base64_decode", |s: &str| -> RhaiResult<Blob> {
        B64.decode(s)
            .map_err(|e| format!("base64_decode: {e}").into())
    });
    engine.register_fn("hex_encode", |b: Blob| hex::encode(b));
    engine.register_fn("hex_encode", |s: &str| hex::encode(s));
    engine.register_fn("hex_decode", |s: &str| -> RhaiResult<Blob> {
        hex::decode(s).map_err(|e| format!("hex_decode: {e}").into())
    });
    engine.register_fn("blob_to_string", |b: Blob| {
        String::from_utf8_lossy(&b).into_owned()
    });
    engine.register_fn("regex_match", |text: &str, pattern: &str| {
        with_regex(pattern, |re| re.is_match(text))
    });
    engine.register_fn("regex_capture", |text: &str, pattern: &str| {
        with_regex(pattern, |re| -> Array {
            re.captures(text).map_or_else(Array::new, |caps| {
                caps.iter()
                    .map(|m| m.map_or(Dynamic::UNIT, |m| Dynamic::from(m.as_str().to_string())))
                    .collect()
            })
        })
    });
    engine.register_fn("regex_replace", |text: &str, pattern: &str, with: &str| {
        with_regex(pattern, |re| re.replace_all(text, with).into_owned())
    });
    engine.register_fn("join", |items: Array, sep: &str| {
        items
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(sep)
    });
    engine.register_fn("json_encode", |v: Dynamic| -> RhaiResult<String> {
        let v: serde_json::Value = rhai::serde::from_dynamic(&v)?;
        Ok(v.to_string())
    });
    engine.register_fn("json_decode", |s: &str| -> RhaiResult<Dynamic> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| format!("json_decode: {e}"))?;
        rhai::serde::to_dynamic(v)
    });
    register_digests(engine);
    register_time_parsing(engine);
    register_bits(engine);
    register_compression(engine, max_output);
}

fn register_digests(engine: &mut Engine) {
    use hex::encode as hex_of;
    use md5::Digest as _;
    engine.register_fn("md5", |s: &str| hex_of(md5::Md5::digest(s.as_bytes())));
    engine.register_fn("md5", |b: Blob| hex_of(md5::Md5::digest(&b)));
    engine.register_fn("sha256", |s: &str| {
        hex_of(sha2::Sha256::digest(s.as_bytes()))
    });
    engine.register_fn("sha256", |b: Blob| hex_of(sha2::Sha256::digest(&b)));
    engine.register_fn("sha", |s: &str| {
        use sha1::Digest as _;
        hex_of(sha1::Sha1::digest(s.as_bytes()))
    });
    engine.register_fn("uuid_v4", uuid_v4);
}

/// A random (version 4) UUID in its usual text form.
fn uuid_v4() -> RhaiResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("uuid_v4: {e}"))?;
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn register_time_parsing(engine: &mut Engine) {
    // RFC 3339 (`2026-12-06T23:41:44.120Z`, any offset) to milliseconds since the epoch.
    engine.register_fn("parse_time", |text: &str| -> RhaiResult<i64> {
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("parse_time({text:?}): {e}").into())
    });
    // A chrono/strftime format; a time without an offset is UTC.
    engine.register_fn("parse_time", |text: &str, fmt: &str| -> RhaiResult<i64> {
        if let Ok(t) = chrono::DateTime::parse_from_str(text, fmt) {
            return Ok(t.timestamp_millis());
        }
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, fmt) {
            return Ok(t.and_utc().timestamp_millis());
        }
        chrono::NaiveDate::parse_from_str(text, fmt)
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_millis())
            .ok_or_else(|| format!("parse_time({text:?}, {fmt:?}): does not match").into())
    });
}

fn register_bits(engine: &mut Engine) {
    // EMQX's subbits: `bits` bits from bit `start` (1 = the first bit), an unsigned big-endian
    // integer.
    engine.register_fn("subbits", |b: Blob, start: i64, bits: i64| {
        subbits(&b, start, bits, "integer", "unsigned", "big")
    });
    engine.register_fn(
        "subbits",
        |b: Blob, start: i64, bits: i64, kind: &str, sign: &str, endian: &str| {
            subbits(&b, start, bits, kind, sign, endian)
        },
    );
}

/// Reads `bits` bits (1..=64) from 1-based bit `start`: an integer (signed or not, big- or
/// little-endian by whole bytes) or a float (32 or 64 bits).
fn subbits(
    b: &[u8],
    start: i64,
    bits: i64,
    kind: &str,
    sign: &str,
    endian: &str,
) -> RhaiResult<Dynamic> {
    let fail = |why: String| -> RhaiResult<Dynamic> { Err(format!("subbits: {why}").into()) };
    if !(1..=64).contains(&bits) || start < 1 {
        return fail(format!(
            "start {start}, bits {bits}: start >= 1 and 1 <= bits <= 64"
        ));
    }
    let (first, n) = ((start - 1) as usize, bits as usize);
    if first + n > b.len() * 8 {
        return fail(format!(
            "bits {start}..{} past the end of {} bytes",
            first + n,
            b.len()
        ));
    }
    let mut v: u64 = 0;
    for i in first..first + n {
        let bit = (b[i / 8] >> (7 - i % 8)) & 1;
        v = (v << 1) | u64::from(bit);
    }
    match endian {
        "big" => {}
        "little" if n % 8 == 0 => {
            let bytes = v.to_be_bytes();
            let mut le = [0u8; 8];
            let used = &bytes[8 - n / 8..];
            for (i, byte) in used.iter().rev().enumerate() {
                le[8 - n / 8 + i] = *byte;
            }
            v = u64::from_be_bytes(le);
        }
        "little" => return fail("little-endian needs whole bytes".into()),
        other => return fail(format!("endianness {other:?}: big or little")),
    }
    match (kind, sign) {
        ("integer", "unsigned") => Ok(Dynamic::from(v as i64)),
        ("integer", "signed") => {
            let shift = 64 - n as u32;
            Ok(Dynamic::from(((v << shift) as i64) >> shift))
        }
        ("integer", other) => fail(format!("signedness {other:?}: signed or unsigned")),
        ("float", _) if n == 32 => Ok(Dynamic::from(f64::from(f32::from_bits(v as u32)))),
        ("float", _) if n == 64 => Ok(Dynamic::from(f64::from_bits(v))),
        ("float", _) => fail("a float is 32 or 64 bits".into()),
        ("bits", _) => Ok(Dynamic::from_blob(
            v.to_be_bytes()[8 - n.div_ceil(8)..].to_vec(),
        )),
        (other, _) => fail(format!("type {other:?}: integer, float or bits")),
    }
}

fn register_compression(engine: &mut Engine, max_output: usize) {
    use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::{Read, Write};
    fn packed<W: Write>(
        mut w: W,
        data: &[u8],
        finish: impl FnOnce(W) -> std::io::Result<Vec<u8>>,
    ) -> Blob {
        let _ = w.write_all(data);
        finish(w).unwrap_or_default()
    }
    // Decompressed output is capped (max_string_size): a small hostile payload must not
    // expand into gigabytes.
    fn unpacked(r: impl Read, max: usize, name: &str) -> RhaiResult<Blob> {
        let mut out = Vec::new();
        r.take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("{name}: {e}"))?;
        if out.len() > max {
            return Err(format!("{name}: output larger than {max} bytes").into());
        }
        Ok(out)
    }
    engine.register_fn("gzip", |b: Blob| {
        packed(
            GzEncoder::new(Vec::new(), Compression::default()),
            &b,
            |w| w.finish(),
        )
    });
    engine.register_fn("gunzip", move |b: Blob| {
        unpacked(GzDecoder::new(&b[..]), max_output, "gunzip")
    });
    engine.register_fn("zip", |b: Blob| {
        packed(
            DeflateEncoder::new(Vec::new(), Compression::default()),
            &b,
            |w| w.finish(),
        )
    });
    engine.register_fn("unzip", move |b: Blob| {
        unpacked(DeflateDecoder::new(&b[..]), max_output, "unzip")
    });
    engine.register_fn("zip_compress", |b: Blob| {
        packed(
            ZlibEncoder::new(Vec::new(), Compression::default()),
            &b,
            |w| w.finish(),
        )
    });
    engine.register_fn("zip_uncompress", move |b: Blob| {
        unpacked(ZlibDecoder::new(&b[..]), max_output, "zip_uncompress")
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subbits_reads_integers_and_floats_at_any_bit() {
        let b = [0b1010_0000u8, 0xFF, 0x01, 0x00];
        let int = |start, bits| {
            subbits(&b, start, bits, "integer", "unsigned", "big")
                .unwrap()
                .as_int()
                .unwrap()
        };
        assert_eq!(int(1, 1), 1);
        assert_eq!(int(1, 3), 0b101);
        assert_eq!(int(9, 8), 0xFF);
        let signed = subbits(&b, 9, 8, "integer", "signed", "big")
            .unwrap()
            .as_int()
            .unwrap();
        assert_eq!(signed, -1);
        let le = subbits(&b, 17, 16, "integer", "unsigned", "little")
            .unwrap()
            .as_int()
            .unwrap();
        assert_eq!(le, 1);
        let f = 21.5f32.to_bits().to_be_bytes();
        let v = subbits(&f, 1, 32, "float", "signed", "big")
            .unwrap()
            .as_float()
            .unwrap();
        assert_eq!(v, 21.5);
        assert!(subbits(&b, 30, 8, "integer", "unsigned", "big").is_err());
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
