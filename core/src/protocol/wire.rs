//! The wire primitives every part of the codec shares: a bounds-checked reader over one
//! packet, MQTT strings, and the variable byte integer, read and written. Decode, encode and
//! properties depend on this module and not on each other.

use super::DecodeError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A cursor over one packet's bytes. Slices share the underlying buffer.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    #[inline]
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    #[inline]
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }
    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }
    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }
    /// A length-prefixed field read in place: `f` sees its bytes, no shared slice is made.
    #[inline]
    pub(crate) fn with_binary<T>(
        &mut self,
        f: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let out = f(&self.buf[..n])?;
        self.buf.advance(n);
        Ok(out)
    }
    #[inline]
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        Ok(checked_str(&raw)?.to_owned())
    }
    #[inline]
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader {
            buf: self.bytes(n)?,
        })
    }
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
    #[inline]
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
    #[inline]
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }
}

/// UTF-8 validated once; U+0000 is not allowed in MQTT strings.
#[inline]
pub(crate) fn checked_str(raw: &[u8]) -> Result<&str, DecodeError> {
    if raw.contains(&0) {
        return Err(DecodeError::InvalidUtf8);
    }
    std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)
}

#[inline]
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[inline]
pub(crate) fn put_varint(buf: &mut BytesMut, v: usize) {
    let (bytes, n) = varint_bytes(v);
    buf.put_slice(&bytes[..n]);
}

/// A variable byte integer's bytes and how many of them (at most four; larger values do not
/// occur: packet sizes are bounded far below 256 MiB).
#[inline]
fn varint_bytes(mut v: usize) -> ([u8; 4], usize) {
    let mut out = [0u8; 4];
    let mut n = 0;
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out[n] = b;
        n += 1;
        if v == 0 || n == out.len() {
            return (out, n);
        }
    }
}

#[inline]
pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    put_binary(buf, s.as_bytes());
}

#[inline]
pub(crate) fn put_binary(buf: &mut BytesMut, b: &[u8]) {
    // Lengths above u16::MAX cannot be produced by our own decode; truncating is the safe choice.
    let n = b.len().min(u16::MAX as usize);
    buf.put_u16(n as u16);
    buf.put_slice(&b[..n]);
}

#[inline]
pub(crate) fn header(buf: &mut BytesMut, first: u8, remaining: usize) {
    buf.reserve(1 + varint_len(remaining) + remaining);
    let (head, n) = fixed_header(first, remaining);
    buf.put_slice(&head[..n]);
}

/// The first byte and the remaining length, as bytes and how many of them: a packet's head
/// goes into the buffer in one copy (each `put_*` call checks capacity anew).
#[inline]
pub(crate) fn fixed_header(first: u8, remaining: usize) -> ([u8; 5], usize) {
    let (len, n) = varint_bytes(remaining);
    let mut head = [first, 0, 0, 0, 0];
    head[1..=n].copy_from_slice(&len[..n]);
    (head, n + 1)
}
