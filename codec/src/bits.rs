//! Bit-level reading and writing of the fixed and variable length descriptors of
//! ISO/IEC 15938-17 clause 6 (`u(n)`, `i(n)`, `ue(k)`, `ie(k)`, `flt(n)`, `st(v)`, byte alignment).
//! Bits are most significant first.

use crate::error::{Error, Result};

/// Reads descriptors from a byte slice.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// Starts reading at the first bit of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    /// True when the position is on a byte boundary.
    pub fn is_aligned(&self) -> bool {
        self.pos.is_multiple_of(8)
    }

    fn bit(&mut self, what: &'static str) -> Result<u64> {
        let byte = *self.data.get(self.pos / 8).ok_or(Error::Truncated(what))?;
        let b = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(u64::from(b))
    }

    /// `u(n)`: unsigned integer of `n` bits, n <= 64.
    pub fn u(&mut self, n: u32, what: &'static str) -> Result<u64> {
        debug_assert!(n <= 64);
        if self.pos + n as usize > self.data.len() * 8 {
            return Err(Error::Truncated(what));
        }
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | self.bit(what)?;
        }
        Ok(v)
    }

    /// `u(1)` as a flag.
    pub fn flag(&mut self, what: &'static str) -> Result<bool> {
        Ok(self.bit(what)? == 1)
    }

    /// `i(n)`: two's complement signed integer of `n` bits.
    pub fn i(&mut self, n: u32, what: &'static str) -> Result<i64> {
        let v = self.u(n, what)?;
        if n == 0 {
            return Ok(0);
        }
        let half = 1u64 << (n - 1);
        Ok(if v < half {
            v as i64
        } else {
            (v as i128 - (1i128 << n)) as i64
        })
    }

    /// `ue(k)`: k-th order Exp-Golomb code. Values that do not fit 63 bits are rejected.
    pub fn ue(&mut self, k: u32, what: &'static str) -> Result<u64> {
        let mut k = k;
        let mut x: u64 = 0;
        loop {
            if self.bit(what)? == 1 {
                break;
            }
            if k >= 62 {
                return Err(Error::invalid(what, "Exp-Golomb prefix too long"));
            }
            x += 1u64 << k;
            k += 1;
        }
        if k > 0 {
            let suffix = self.u(k, what)?;
            x = x
                .checked_add(suffix)
                .ok_or_else(|| Error::invalid(what, "Exp-Golomb value overflows"))?;
        }
        Ok(x)
    }

    /// `ie(k)`: signed k-th order Exp-Golomb code.
    pub fn ie(&mut self, k: u32, what: &'static str) -> Result<i64> {
        let x = self.ue(k, what)?;
        Ok(if x & 1 == 1 {
            x.div_ceil(2) as i64
        } else {
            -((x >> 1) as i64)
        })
    }

    /// `flt(32)`: IEEE-754 single, bytes in little-endian order.
    pub fn flt32(&mut self, what: &'static str) -> Result<f32> {
        let mut b = [0u8; 4];
        for byte in &mut b {
            *byte = self.u(8, what)? as u8;
        }
        Ok(f32::from_le_bytes(b))
    }

    /// `st(v)`: NUL terminated UTF-8 string, byte aligned.
    pub fn st(&mut self, what: &'static str) -> Result<String> {
        if !self.is_aligned() {
            return Err(Error::invalid(what, "string not byte aligned"));
        }
        let start = self.pos / 8;
        let rest = self.data.get(start..).ok_or(Error::Truncated(what))?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::Truncated(what))?;
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| Error::invalid(what, "string is not UTF-8"))?
            .to_owned();
        self.pos += (len + 1) * 8;
        Ok(s)
    }

    /// `byte_alignment()`: one bit (equal to one) then zero bits up to the next byte boundary.
    pub fn byte_alignment(&mut self) -> Result<()> {
        self.bit("byte_alignment")?;
        self.pos = self.pos.div_ceil(8) * 8;
        Ok(())
    }

    /// The bytes after the current (aligned) position.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos.div_ceil(8)..).unwrap_or(&[])
    }
}

/// Writes descriptors into a growing byte vector.
#[derive(Debug, Clone, Default)]
pub struct BitWriter {
    buf: Vec<u8>,
    /// Number of bits written.
    pos: usize,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bits written so far.
    pub fn bit_len(&self) -> usize {
        self.pos
    }

    fn bit(&mut self, b: bool) {
        if self.pos.is_multiple_of(8) {
            self.buf.push(0);
        }
        if b {
            if let Some(last) = self.buf.last_mut() {
                *last |= 1 << (7 - (self.pos % 8));
            }
        }
        self.pos += 1;
    }

    /// `u(n)`; only the low `n` bits of `v` are written.
    pub fn u(&mut self, n: u32, v: u64) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }

    /// `u(1)`.
    pub fn flag(&mut self, b: bool) {
        self.bit(b);
    }

    /// `i(n)`.
    pub fn i(&mut self, n: u32, v: i64) {
        self.u(n, v as u64);
    }

    /// `ue(k)`.
    pub fn ue(&mut self, k: u32, v: u64) {
        let mut k = k;
        let mut x = v;
        while k < 64 && x >= (1u64 << k) {
            self.bit(false);
            x -= 1u64 << k;
            k += 1;
        }
        self.bit(true);
        if k > 0 {
            self.u(k, x);
        }
    }

    /// `ie(k)`.
    pub fn ie(&mut self, k: u32, v: i64) {
        let x = if v <= 0 {
            v.unsigned_abs() << 1
        } else {
            ((v as u64) << 1) - 1
        };
        self.ue(k, x);
    }

    /// `flt(32)`.
    pub fn flt32(&mut self, v: f32) {
        for b in v.to_le_bytes() {
            self.u(8, u64::from(b));
        }
    }

    /// `st(v)`; the caller keeps the position byte aligned and the string free of NUL.
    pub fn st(&mut self, s: &str) {
        for b in s.bytes() {
            self.u(8, u64::from(b));
        }
        self.u(8, 0);
    }

    /// `byte_alignment()`.
    pub fn byte_alignment(&mut self) {
        self.bit(true);
        self.pos = self.pos.div_ceil(8) * 8;
    }

    /// The written bytes (the last one zero padded).
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Se {
        U(u32, u64),
        I(u32, i64),
        Ue(u32, u64),
        Ie(u32, i64),
        Flt(f32),
        Align,
    }

    fn se() -> impl Strategy<Value = Se> {
        prop_oneof![
            (1u32..=64, any::<u64>())
                .prop_map(|(n, v)| Se::U(n, if n == 64 { v } else { v & ((1 << n) - 1) })),
            (1u32..=32, any::<i32>()).prop_map(|(n, v)| {
                let v = i64::from(v) >> (32 - n);
                Se::I(n, v)
            }),
            (0u32..12, 0u64..(1 << 40)).prop_map(|(k, v)| Se::Ue(k, v)),
            (0u32..12, -(1i64 << 40)..(1i64 << 40)).prop_map(|(k, v)| Se::Ie(k, v)),
            any::<f32>().prop_map(Se::Flt),
            Just(Se::Align),
        ]
    }

    proptest! {
        #[test]
        fn writer_reader_identity(items in proptest::collection::vec(se(), 0..40)) {
            let mut w = BitWriter::new();
            for it in &items {
                match *it {
                    Se::U(n, v) => w.u(n, v),
                    Se::I(n, v) => w.i(n, v),
                    Se::Ue(k, v) => w.ue(k, v),
                    Se::Ie(k, v) => w.ie(k, v),
                    Se::Flt(f) => w.flt32(f),
                    Se::Align => w.byte_alignment(),
                }
            }
            let bytes = w.into_bytes();
            let mut r = BitReader::new(&bytes);
            for it in &items {
                match *it {
                    Se::U(n, v) => prop_assert_eq!(r.u(n, "u").unwrap(), v),
                    Se::I(n, v) => prop_assert_eq!(r.i(n, "i").unwrap(), v),
                    Se::Ue(k, v) => prop_assert_eq!(r.ue(k, "ue").unwrap(), v),
                    Se::Ie(k, v) => prop_assert_eq!(r.ie(k, "ie").unwrap(), v),
                    Se::Flt(f) => prop_assert_eq!(r.flt32("f").unwrap().to_bits(), f.to_bits()),
                    Se::Align => r.byte_alignment().unwrap(),
                }
            }
        }
    }

    #[test]
    fn strings_and_truncation() {
        let mut w = BitWriter::new();
        w.st("conv1.weight");
        w.u(3, 5);
        w.byte_alignment();
        let b = w.into_bytes();
        let mut r = BitReader::new(&b);
        assert_eq!(r.st("s").unwrap(), "conv1.weight");
        assert_eq!(r.u(3, "u").unwrap(), 5);
        r.byte_alignment().unwrap();
        assert!(matches!(r.u(1, "x"), Err(Error::Truncated(_))));
        // An Exp-Golomb prefix of only zeros must end in an error, not a loop.
        let zeros = [0u8; 16];
        assert!(BitReader::new(&zeros).ue(0, "z").is_err());
    }
}
