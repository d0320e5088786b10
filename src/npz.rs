//! NumPy `.npz` archives: named tensors in and out (calibration data, codec input and output).

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use npyz::{TypeChar, WriterBuilder};
use thiserror::Error;

use crate::fsutil::AtomicFile;
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum NpzError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: array '{name}': {reason}")]
    Array {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

fn dtype_of(d: &npyz::DType) -> Option<DType> {
    let npyz::DType::Plain(ts) = d else {
        return None;
    };
    Some(match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => DType::F32,
        (TypeChar::Float, 8) => DType::F64,
        (TypeChar::Float, 2) => DType::F16,
        (TypeChar::Int, 1) => DType::I8,
        (TypeChar::Int, 2) => DType::I16,
        (TypeChar::Int, 4) => DType::I32,
        (TypeChar::Int, 8) => DType::I64,
        (TypeChar::Uint, 1) => DType::U8,
        (TypeChar::Uint, 2) => DType::U16,
        (TypeChar::Uint, 4) => DType::U32,
        (TypeChar::Uint, 8) => DType::U64,
        (TypeChar::Bool, 1) => DType::Bool,
        _ => return None,
    })
}

/// Reads every array of an `.npz`, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, NpzError> {
    let io = |source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut ar = npyz::npz::NpzArchive::open(path).map_err(io)?;
    // In archive order (array_names() follows a hash map's order).
    let zip = ar.zip_archive();
    let mut names = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| io(io::Error::other(e.to_string())))?;
        if let Some(n) = npyz::npz::array_name_from_file_name(entry.name()) {
            names.push(n.to_string());
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let bad = |reason: String| NpzError::Array {
            path: path.to_path_buf(),
            name: name.clone(),
            reason,
        };
        // The declared uncompressed size bounds what a header may claim.
        let entry = npyz::npz::file_name_from_array_name(&name);
        let stored = ar
            .zip_archive()
            .by_name(&entry)
            .map(|f| f.size())
            .map_err(|e| bad(e.to_string()))?;
        let npy = ar
            .by_name(&name)
            .map_err(io)?
            .ok_or_else(|| bad("listed but missing".into()))?;
        if npy.order() == npyz::Order::Fortran {
            return Err(bad(
                "Fortran-ordered arrays are not supported; save it C-ordered".into(),
            ));
        }
        let dtype = dtype_of(&npy.dtype())
            .ok_or_else(|| bad(format!("unsupported dtype {}", npy.dtype().descr())))?;
        let dims: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let n = crate::tensor::numel(&dims)?;
        let size = dtype.size().unwrap_or(1) as u64;
        if (n as u64).saturating_mul(size) > stored {
            return Err(bad(format!(
                "shape {dims:?} needs more data than the archive holds ({stored} bytes)"
            )));
        }
        let bytes = array_bytes(npy, dtype).map_err(|e| bad(e.to_string()))?;
        out.push((name.clone(), Tensor::from_bytes(dtype, dims, bytes)?));
    }
    Ok(out)
}

/// The values of an array as little-endian bytes of `dtype`.
fn array_bytes<R: io::Read>(npy: npyz::NpyFile<R>, dtype: DType) -> io::Result<Vec<u8>> {
    Ok(match dtype {
        DType::F32 => npy
            .into_vec::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => npy
            .into_vec::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I8 => npy.into_vec::<i8>()?.iter().map(|&v| v as u8).collect(),
        DType::I16 => npy
            .into_vec::<i16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I32 => npy
            .into_vec::<i32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => npy
            .into_vec::<i64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U8 => npy.into_vec::<u8>()?,
        DType::U16 => npy
            .into_vec::<u16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U32 => npy
            .into_vec::<u32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U64 => npy
            .into_vec::<u64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::Bool => npy.into_vec::<bool>()?.iter().map(|&v| v as u8).collect(),
        other => return Err(io::Error::other(format!("unsupported dtype {other}"))),
    })
}

/// Reads one `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor, NpzError> {
    let bad = |reason: String| NpzError::Array {
        path: path.to_path_buf(),
        name: String::new(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let stored = f.metadata().map(|m| m.len()).unwrap_or(0);
    let npy = npyz::NpyFile::new(io::BufReader::new(f)).map_err(|e| bad(e.to_string()))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save it C-ordered".into(),
        ));
    }
    let dtype = dtype_of(&npy.dtype())
        .ok_or_else(|| bad(format!("unsupported dtype {}", npy.dtype().descr())))?;
    let dims: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let n = crate::tensor::numel(&dims)?;
    if (n as u64).saturating_mul(dtype.size().unwrap_or(1) as u64) > stored {
        return Err(bad(format!(
            "shape {dims:?} needs more data than the file holds"
        )));
    }
    let bytes = array_bytes(npy, dtype).map_err(|e| bad(e.to_string()))?;
    Ok(Tensor::from_bytes(dtype, dims, bytes)?)
}

fn write_array<W: Write + io::Seek>(
    w: &mut npyz::npz::NpzWriter<W>,
    name: &str,
    t: &Tensor,
) -> io::Result<()> {
    let shape: Vec<u64> = t.dims.iter().map(|&d| d as u64).collect();
    let b = t.bytes();
    macro_rules! put {
        ($ty:ty, $n:expr) => {{
            let mut a = w
                .array::<$ty>(name, Default::default())?
                .default_dtype()
                .shape(&shape)
                .begin_nd()?;
            a.extend(
                b.chunks_exact($n)
                    .map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or([0; $n]))),
            )?;
            a.finish()
        }};
    }
    match t.dtype {
        DType::F32 => put!(f32, 4),
        DType::F64 => put!(f64, 8),
        DType::I16 => put!(i16, 2),
        DType::I32 => put!(i32, 4),
        DType::I64 => put!(i64, 8),
        DType::U16 => put!(u16, 2),
        DType::U32 => put!(u32, 4),
        DType::U64 => put!(u64, 8),
        DType::U8 => {
            let mut a = w
                .array::<u8>(name, Default::default())?
                .default_dtype()
                .shape(&shape)
                .begin_nd()?;
            a.extend(b.iter().copied())?;
            a.finish()
        }
        DType::I8 => {
            let mut a = w
                .array::<i8>(name, Default::default())?
                .default_dtype()
                .shape(&shape)
                .begin_nd()?;
            a.extend(b.iter().map(|&v| v as i8))?;
            a.finish()
        }
        DType::Bool => {
            let mut a = w
                .array::<bool>(name, Default::default())?
                .default_dtype()
                .shape(&shape)
                .begin_nd()?;
            a.extend(b.iter().map(|&v| v != 0))?;
            a.finish()
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot store a {other} array"),
        )),
    }
}

/// Writes named tensors to an `.npz`, atomically.
pub fn write_npz(path: &Path, arrays: &[(String, Tensor)]) -> Result<(), NpzError> {
    let werr = |source| NpzError::Write {
        path: path.to_path_buf(),
        source,
    };
    let f = AtomicFile::create(path).map_err(werr)?;
    {
        let file = f.file_try_clone().map_err(werr)?;
        let mut w = npyz::npz::NpzWriter::new(BufWriter::new(file));
        for (name, t) in arrays {
            write_array(&mut w, name, t).map_err(werr)?;
        }
        let mut inner = w
            .zip_writer()
            .finish()
            .map_err(|e| werr(io::Error::other(e.to_string())))?;
        inner.flush().map_err(werr)?;
    }
    f.commit().map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npz_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        let arrays = vec![
            (
                "w".to_string(),
                Tensor::from_f32(vec![2, 3], &[1.0, -2.0, 0.0, 3.5, 1e-9, -0.0]).unwrap(),
            ),
            (
                "labels".to_string(),
                Tensor::from_i64(vec![3], &[0, 9, 4]).unwrap(),
            ),
            (
                "q".to_string(),
                Tensor::from_i32(vec![1, 1, 2], &[-7, 7]).unwrap(),
            ),
            (
                "m".to_string(),
                Tensor::from_bytes(DType::Bool, vec![2], vec![1, 0]).unwrap(),
            ),
        ];
        write_npz(&p, &arrays).unwrap();
        assert_eq!(read_npz(&p).unwrap(), arrays);
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.npz");
        std::fs::write(&p, b"PK\x03\x04 not really a zip").unwrap();
        assert!(read_npz(&p).is_err());
    }
}
