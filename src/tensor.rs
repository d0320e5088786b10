//! Dense tensors as nnzip moves them between ONNX, NumPy files, ONNX Runtime and the codec.
//!
//! A [`Tensor`] keeps its elements as little-endian bytes plus an element type, so every ONNX
//! numeric type round-trips untouched; typed views (`to_f32`, `from_f32`, ...) exist for the
//! types the passes compute on.

use thiserror::Error;

/// Element type, numbered as ONNX's `TensorProto.DataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    Str,
    Bool,
    F16,
    F64,
    U32,
    U64,
    Bf16,
    /// Any other ONNX element type (complex, float8, 4-bit...), kept by its number.
    Other(i32),
}

impl DType {
    pub fn from_onnx(code: i32) -> DType {
        match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::U16,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            8 => DType::Str,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            12 => DType::U32,
            13 => DType::U64,
            16 => DType::Bf16,
            c => DType::Other(c),
        }
    }

    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Str => 8,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::Bf16 => 16,
            DType::Other(c) => c,
        }
    }

    /// Bytes per element in `raw_data` form; `None` for strings and sub-byte or unknown types.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::Bf16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
            // complex64, complex128
            DType::Other(14) => 8,
            DType::Other(15) => 16,
            // float8 variants
            DType::Other(17..=20) => 1,
            DType::Str | DType::Other(_) => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::Bf16)
    }

    pub fn name(self) -> String {
        match self {
            DType::F32 => "float32".into(),
            DType::U8 => "uint8".into(),
            DType::I8 => "int8".into(),
            DType::U16 => "uint16".into(),
            DType::I16 => "int16".into(),
            DType::I32 => "int32".into(),
            DType::I64 => "int64".into(),
            DType::Str => "string".into(),
            DType::Bool => "bool".into(),
            DType::F16 => "float16".into(),
            DType::F64 => "float64".into(),
            DType::U32 => "uint32".into(),
            DType::U64 => "uint64".into(),
            DType::Bf16 => "bfloat16".into(),
            DType::Other(c) => format!("onnx_type_{c}"),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("tensor shape {dims:?} has too many elements")]
    Overflow { dims: Vec<usize> },
    #[error("tensor of type {dtype} and shape {dims:?} needs {expected} bytes, got {got}")]
    SizeMismatch {
        dtype: DType,
        dims: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("element type {0} has no fixed byte size")]
    Unsized(DType),
    #[error("expected a {expected} tensor, found {found}")]
    WrongType { expected: DType, found: DType },
}

impl TensorError {
    /// Tensors come from the files given: a malformed one is bad input (exit 3).
    pub fn class(&self) -> crate::errors::ErrorClass {
        crate::errors::ErrorClass::BadInput
    }
}

/// Number of elements of a shape, refusing overflow.
pub fn numel(dims: &[usize]) -> Result<usize, TensorError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::Overflow {
            dims: dims.to_vec(),
        })
}

/// Checks that `len` bytes are exactly a `dtype` tensor of `dims`.
pub fn check_len(dtype: DType, dims: &[usize], len: usize) -> Result<(), TensorError> {
    let n = numel(dims)?;
    let size = dtype.size().ok_or(TensorError::Unsized(dtype))?;
    let expected = n.checked_mul(size).ok_or_else(|| TensorError::Overflow {
        dims: dims.to_vec(),
    })?;
    if expected != len {
        return Err(TensorError::SizeMismatch {
            dtype,
            dims: dims.to_vec(),
            expected,
            got: len,
        });
    }
    Ok(())
}

/// A Rust type that is an ONNX element type: how it is laid out little-endian. The one place
/// nnzip converts between typed values and tensor bytes (ONNX typed fields, `.npy` payloads,
/// ONNX Runtime values all go through it).
pub trait Element: Copy {
    const DTYPE: DType;
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    /// From exactly `SIZE` bytes.
    fn get(b: &[u8]) -> Self;
}

macro_rules! element {
    ($($t:ty => $d:expr),* $(,)?) => {$(
        impl Element for $t {
            const DTYPE: DType = $d;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}

element!(f32 => DType::F32, f64 => DType::F64, i64 => DType::I64, i32 => DType::I32, i16 => DType::I16,
         i8 => DType::I8, u8 => DType::U8, u16 => DType::U16, u32 => DType::U32, u64 => DType::U64);

/// Values as little-endian bytes.
pub fn le_bytes<T: Element>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len().saturating_mul(T::SIZE));
    for &v in values {
        v.put(&mut out);
    }
    out
}

/// Little-endian bytes as values (a trailing partial element is ignored).
pub fn from_le<T: Element>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(T::SIZE).map(T::get).collect()
}

/// A dense tensor: element type, shape and little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub dims: Vec<usize>,
    bytes: Vec<u8>,
}

impl Tensor {
    /// Builds a tensor, checking that the byte count matches the type and shape.
    pub fn from_bytes(
        dtype: DType,
        dims: Vec<usize>,
        bytes: Vec<u8>,
    ) -> Result<Tensor, TensorError> {
        check_len(dtype, &dims, bytes.len())?;
        Ok(Tensor { dtype, dims, bytes })
    }

    /// A tensor of typed values.
    pub fn from_values<T: Element>(dims: Vec<usize>, values: &[T]) -> Result<Tensor, TensorError> {
        Tensor::from_bytes(T::DTYPE, dims, le_bytes(values))
    }

    pub fn from_f32(dims: Vec<usize>, values: &[f32]) -> Result<Tensor, TensorError> {
        Tensor::from_values(dims, values)
    }

    pub fn from_i64(dims: Vec<usize>, values: &[i64]) -> Result<Tensor, TensorError> {
        Tensor::from_values(dims, values)
    }

    pub fn from_i32(dims: Vec<usize>, values: &[i32]) -> Result<Tensor, TensorError> {
        Tensor::from_values(dims, values)
    }

    /// The values, when the element type is `T`'s.
    pub fn values<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        self.expect(T::DTYPE)?;
        Ok(from_le(&self.bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn numel(&self) -> usize {
        match self.dtype.size() {
            Some(s) if s > 0 => self.bytes.len() / s,
            _ => 0,
        }
    }

    fn expect(&self, dtype: DType) -> Result<(), TensorError> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(TensorError::WrongType {
                expected: dtype,
                found: self.dtype,
            })
        }
    }

    pub fn to_f32(&self) -> Result<Vec<f32>, TensorError> {
        self.values()
    }

    pub fn to_i64(&self) -> Result<Vec<i64>, TensorError> {
        self.values()
    }

    pub fn to_i32(&self) -> Result<Vec<i32>, TensorError> {
        self.values()
    }

    /// Integer values of an integer tensor of any width, widened to i64 (for shapes, axes, ...).
    pub fn to_i64_lossy(&self) -> Option<Vec<i64>> {
        let b = &self.bytes;
        fn wide<T: Element + Into<i64>>(b: &[u8]) -> Vec<i64> {
            from_le::<T>(b).into_iter().map(Into::into).collect()
        }
        Some(match self.dtype {
            DType::I64 => from_le::<i64>(b),
            DType::I32 => wide::<i32>(b),
            DType::I16 => wide::<i16>(b),
            DType::I8 => wide::<i8>(b),
            DType::U8 | DType::Bool => wide::<u8>(b),
            DType::U16 => wide::<u16>(b),
            DType::U32 => wide::<u32>(b),
            _ => return None,
        })
    }

    /// Removes the given indices along `axis` (indices past the end are ignored).
    pub fn remove_indices(
        &self,
        axis: usize,
        remove: &std::collections::BTreeSet<usize>,
    ) -> Result<Tensor, TensorError> {
        let size = self.dtype.size().ok_or(TensorError::Unsized(self.dtype))?;
        let d = *self.dims.get(axis).ok_or_else(|| TensorError::Overflow {
            dims: self.dims.clone(),
        })?;
        let outer: usize = self.dims[..axis].iter().product();
        let inner: usize = self.dims[axis + 1..].iter().product::<usize>() * size;
        let keep: Vec<usize> = (0..d).filter(|i| !remove.contains(i)).collect();
        let mut bytes = Vec::with_capacity(outer * keep.len() * inner);
        for o in 0..outer {
            for &k in &keep {
                let s = (o * d + k) * inner;
                bytes.extend_from_slice(&self.bytes[s..s + inner]);
            }
        }
        let mut dims = self.dims.clone();
        dims[axis] = keep.len();
        Tensor::from_bytes(self.dtype, dims, bytes)
    }

    /// Calls `f(outer, index, inner_range)` over the f32 elements whose `axis` index is `i`:
    /// a view of one slice along an axis, as flat element offsets.
    pub fn axis_offsets(&self, axis: usize, i: usize) -> Vec<usize> {
        let Some(&d) = self.dims.get(axis) else {
            return Vec::new();
        };
        let outer: usize = self.dims[..axis].iter().product();
        let inner: usize = self.dims[axis + 1..].iter().product();
        let mut v = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let s = (o * d + i) * inner;
            v.extend(s..s + inner);
        }
        v
    }

    /// Number of elements equal to zero (both signs of zero for floats).
    pub fn count_zeros(&self) -> usize {
        let b = &self.bytes;
        match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .filter(|c| (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) << 1) == 0)
                .count(),
            DType::F64 => b
                .chunks_exact(8)
                .filter(|c| c[..7].iter().all(|&x| x == 0) && (c[7] & 0x7f) == 0)
                .count(),
            DType::F16 | DType::Bf16 => b
                .chunks_exact(2)
                .filter(|c| c[0] == 0 && (c[1] & 0x7f) == 0)
                .count(),
            _ => match self.dtype.size() {
                Some(s) if s > 0 => b
                    .chunks_exact(s)
                    .filter(|c| c.iter().all(|&x| x == 0))
                    .count(),
                _ => 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_count_is_checked() {
        assert!(matches!(
            Tensor::from_bytes(DType::F32, vec![2, 3], vec![0; 20]),
            Err(TensorError::SizeMismatch {
                expected: 24,
                got: 20,
                ..
            })
        ));
        assert!(matches!(
            Tensor::from_bytes(DType::F32, vec![usize::MAX, 3], vec![]),
            Err(TensorError::Overflow { .. })
        ));
    }

    #[test]
    fn zeros_counted_with_both_signs() {
        let t = Tensor::from_f32(vec![5], &[0.0, -0.0, 1.0, f32::MIN_POSITIVE, 0.0]).unwrap();
        assert_eq!(t.count_zeros(), 3);
        let d = Tensor::from_bytes(
            DType::F64,
            vec![2],
            [0.0f64, -0.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .unwrap();
        assert_eq!(d.count_zeros(), 2);
    }

    #[test]
    fn indices_are_removed_along_an_axis() {
        let t = Tensor::from_f32(
            vec![2, 3, 2],
            &(0..12).map(|i| i as f32).collect::<Vec<_>>(),
        )
        .unwrap();
        let r = t.remove_indices(1, &[0, 2].into_iter().collect()).unwrap();
        assert_eq!(r.dims, vec![2, 1, 2]);
        assert_eq!(r.to_f32().unwrap(), vec![2.0, 3.0, 8.0, 9.0]);
        let r0 = t.remove_indices(0, &[1].into_iter().collect()).unwrap();
        assert_eq!(
            r0.to_f32().unwrap(),
            (0..6).map(|i| i as f32).collect::<Vec<_>>()
        );
        assert_eq!(t.axis_offsets(1, 1), vec![2, 3, 8, 9]);
    }

    #[test]
    fn typed_views_round_trip() {
        let t = Tensor::from_i64(vec![3], &[-1, 0, 7]).unwrap();
        assert_eq!(t.to_i64().unwrap(), vec![-1, 0, 7]);
        assert!(t.to_f32().is_err());
        assert_eq!(t.to_i64_lossy().unwrap(), vec![-1, 0, 7]);
    }

    proptest::proptest! {
        /// Every element type's writer against its reader, and the widening reader.
        #[test]
        fn element_bytes_round_trip(f in proptest::collection::vec(proptest::num::f32::ANY, 0..40),
                                    i in proptest::collection::vec(proptest::prelude::any::<i16>(), 0..40)) {
            let back: Vec<f32> = from_le(&le_bytes(&f));
            proptest::prop_assert_eq!(back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), f.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            let t = Tensor::from_values(vec![i.len()], &i).unwrap();
            proptest::prop_assert_eq!(t.dtype, DType::I16);
            proptest::prop_assert_eq!(t.to_i64_lossy().unwrap(), i.iter().map(|&x| i64::from(x)).collect::<Vec<_>>());
            proptest::prop_assert_eq!(t.values::<i16>().unwrap(), i);
        }
    }
}
