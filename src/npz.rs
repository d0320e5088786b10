//! NumPy `.npz` archives: named tensors in and out (calibration data, codec input and output).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use npyz::TypeChar;
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

impl NpzError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            NpzError::Write { .. } => C::Write,
            NpzError::Io { .. } | NpzError::Array { .. } | NpzError::Tensor(_) => C::BadInput,
        }
    }
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

/// NumPy's `descr` of an element type, as `numpy.save` writes it (little-endian).
fn npy_descr(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        _ => return None,
    })
}

/// The `.npy` header of a C-ordered array (format 1.0, or 2.0 when the header needs a 32-bit
/// length): magic, version, length, the dictionary padded so the data starts 64-byte aligned.
fn npy_header(descr: &str, dims: &[usize]) -> Vec<u8> {
    let shape = match dims {
        [d] => format!("({d},)"),
        _ => {
            let v: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", v.join(", "))
        }
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let padded = |prefix: usize| (prefix + dict.len() + 1).div_ceil(64) * 64;
    let v1 = padded(10) - 10 <= usize::from(u16::MAX);
    let prefix = if v1 { 10 } else { 12 };
    let total = padded(prefix);
    let len = total - prefix;
    let mut h = Vec::with_capacity(total);
    h.extend_from_slice(b"\x93NUMPY");
    if v1 {
        h.extend_from_slice(&[1, 0]);
        h.extend_from_slice(&(len as u16).to_le_bytes());
    } else {
        h.extend_from_slice(&[2, 0]);
        h.extend_from_slice(&(len as u32).to_le_bytes());
    }
    h.extend_from_slice(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

/// Reads every array of an `.npz` (stored, as `numpy.savez` writes, or deflated, as
/// `numpy.savez_compressed` does), in archive order. Each array is read in one piece into its
/// tensor's bytes; the entry's declared size bounds the allocation.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>, NpzError> {
    let io = |source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    };
    let zerr = |e: npyz::zip::result::ZipError| io(io::Error::other(e.to_string()));
    let file = std::fs::File::open(path).map_err(io)?;
    let mut zip = npyz::zip::ZipArchive::new(BufReader::new(file)).map_err(zerr)?;
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(zerr)?;
        let Some(name) = npyz::npz::array_name_from_file_name(entry.name()).map(str::to_string)
        else {
            continue;
        };
        let stored = entry.size();
        let t = read_array(&mut entry, stored).map_err(|reason| NpzError::Array {
            path: path.to_path_buf(),
            name: name.clone(),
            reason,
        })?;
        // Reading to the end lets the archive check the entry's CRC.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| NpzError::Array {
            path: path.to_path_buf(),
            name: name.clone(),
            reason: e.to_string(),
        })?;
        out.push((name, t));
    }
    Ok(out)
}

/// Reads one `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor, NpzError> {
    let file = std::fs::File::open(path).map_err(|source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let stored = file.metadata().map(|m| m.len()).unwrap_or(0);
    read_array(&mut BufReader::new(file), stored).map_err(|reason| NpzError::Array {
        path: path.to_path_buf(),
        name: String::new(),
        reason,
    })
}

/// One `.npy` array (header, then data) from `r`, whose `stored` bytes bound the allocation.
fn read_array(r: &mut impl Read, stored: u64) -> Result<Tensor, String> {
    let header = npyz::NpyHeader::from_reader(&mut *r).map_err(|e| e.to_string())?;
    if header.order() == npyz::Order::Fortran {
        return Err("Fortran-ordered arrays are not supported; save it C-ordered".into());
    }
    let npy_dtype = header.dtype();
    let dtype =
        dtype_of(&npy_dtype).ok_or_else(|| format!("unsupported dtype {}", npy_dtype.descr()))?;
    let dims: Vec<usize> = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n = crate::tensor::numel(&dims).map_err(|e| e.to_string())?;
    let size = dtype.size().unwrap_or(1);
    let nbytes = n
        .checked_mul(size)
        .filter(|&b| b as u64 <= stored)
        .ok_or_else(|| {
            format!("shape {dims:?} needs more data than the file holds ({stored} bytes)")
        })?;
    let mut bytes = vec![0u8; nbytes];
    r.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    let big =
        matches!(&npy_dtype, npyz::DType::Plain(t) if t.endianness() == npyz::Endianness::Big);
    if big && size > 1 {
        bytes.chunks_exact_mut(size).for_each(<[u8]>::reverse);
    }
    if dtype == DType::Bool {
        bytes.iter_mut().for_each(|b| *b = u8::from(*b != 0));
    }
    Tensor::from_bytes(dtype, dims, bytes).map_err(|e| e.to_string())
}

/// Appends one array as a stored (uncompressed) `.npy` entry, as `numpy.savez` does: header,
/// then the tensor's little-endian bytes in one write.
fn write_array<W: Write + io::Seek>(
    zip: &mut npyz::zip::ZipWriter<W>,
    name: &str,
    t: &Tensor,
) -> io::Result<()> {
    let descr = npy_descr(t.dtype).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot store a {} array", t.dtype),
        )
    })?;
    let header = npy_header(descr, &t.dims);
    let size = header.len() as u64 + t.bytes().len() as u64;
    let opts = npyz::zip::write::FileOptions::default()
        .compression_method(npyz::zip::CompressionMethod::Stored)
        .large_file(size > u64::from(u32::MAX));
    zip.start_file(npyz::npz::file_name_from_array_name(name), opts)
        .map_err(|e| io::Error::other(e.to_string()))?;
    zip.write_all(&header)?;
    zip.write_all(t.bytes())
}

/// Writes named tensors to an `.npz` of stored entries (what `numpy.savez` writes), atomically.
pub fn write_npz(path: &Path, arrays: &[(String, Tensor)]) -> Result<(), NpzError> {
    let werr = |source| NpzError::Write {
        path: path.to_path_buf(),
        source,
    };
    let f = AtomicFile::create(path).map_err(werr)?;
    {
        let file = f.file_try_clone().map_err(werr)?;
        let mut zip = npyz::zip::ZipWriter::new(BufWriter::with_capacity(1 << 16, file));
        for (name, t) in arrays {
            write_array(&mut zip, name, t).map_err(werr)?;
        }
        let mut inner = zip
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

    /// Entries are stored, and each is exactly the `.npy` file `numpy.save` writes (header
    /// text, padding to 64 bytes, little-endian data); an independent reader (npyz's) agrees.
    #[test]
    fn entries_are_stored_npy_files_as_numpy_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        let w = Tensor::from_f32(vec![2, 3], &[1.0, -2.0, 0.0, 3.5, 1e-9, -0.0]).unwrap();
        let b = Tensor::from_i64(vec![3], &[0, 9, -4]).unwrap();
        let s = Tensor::from_i32(vec![], &[7]).unwrap();
        write_npz(
            &p,
            &[("w".into(), w.clone()), ("b".into(), b), ("s".into(), s)],
        )
        .unwrap();
        let mut zip = npyz::zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
        let mut entry = zip.by_name("w.npy").unwrap();
        assert_eq!(entry.compression(), npyz::zip::CompressionMethod::Stored);
        let mut npy = Vec::new();
        entry.read_to_end(&mut npy).unwrap();
        drop(entry);
        // What numpy 1.26 writes for np.save(f, np.zeros((2, 3), np.float32)).
        let dict = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&npy[..6], b"\x93NUMPY");
        assert_eq!(&npy[6..10], &[1, 0, 118, 0]);
        assert_eq!(&npy[10..10 + dict.len()], dict);
        assert!(npy[10 + dict.len()..127].iter().all(|&c| c == b' '));
        assert_eq!(npy[127], b'\n');
        assert_eq!(&npy[128..], w.bytes());
        let mut hdr = |name: &str| {
            let mut e = zip.by_name(name).unwrap();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            String::from_utf8_lossy(&v[10..128]).into_owned()
        };
        assert!(hdr("b.npy").contains("'descr': '<i8', 'fortran_order': False, 'shape': (3,), }"));
        assert!(hdr("s.npy").contains("'shape': (), }"));
        let mut other = npyz::npz::NpzArchive::open(&p).unwrap();
        let ws: Vec<f32> = other.by_name("w").unwrap().unwrap().into_vec().unwrap();
        assert_eq!(ws, w.to_f32().unwrap());
        let bs: Vec<i64> = other.by_name("b").unwrap().unwrap().into_vec().unwrap();
        assert_eq!(bs, [0, 9, -4]);
    }

    #[test]
    fn long_headers_switch_to_format_2() {
        let dims = vec![1usize; 30_000];
        let h = npy_header("<f4", &dims);
        assert_eq!(&h[6..8], &[2, 0]);
        assert_eq!(h.len() % 64, 0);
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        assert_eq!(len + 12, h.len());
        let parsed = npyz::NpyHeader::from_reader(&h[..]).unwrap();
        assert_eq!(parsed.shape(), vec![1u64; 30_000].as_slice());
        assert_eq!(&npy_header("<f4", &[5])[6..8], &[1, 0]);
    }

    /// `numpy.savez_compressed` archives (deflated entries) and big-endian arrays still read.
    #[test]
    fn reads_deflated_and_big_endian_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.npz");
        {
            let f = std::fs::File::create(&p).unwrap();
            let mut zip = npyz::zip::ZipWriter::new(f);
            let deflated = npyz::zip::write::FileOptions::default()
                .compression_method(npyz::zip::CompressionMethod::Deflated);
            zip.start_file("x.npy", deflated).unwrap();
            zip.write_all(&npy_header("<f4", &[3])).unwrap();
            for v in [1.5f32, -2.0, 0.25] {
                zip.write_all(&v.to_le_bytes()).unwrap();
            }
            zip.start_file("y.npy", deflated).unwrap();
            zip.write_all(&npy_header(">i4", &[2])).unwrap();
            for v in [-3i32, 70000] {
                zip.write_all(&v.to_be_bytes()).unwrap();
            }
            zip.finish().unwrap();
        }
        let a = read_npz(&p).unwrap();
        assert_eq!(a[0].0, "x");
        assert_eq!(a[0].1.to_f32().unwrap(), [1.5, -2.0, 0.25]);
        assert_eq!(a[1].0, "y");
        assert_eq!(a[1].1.to_i32().unwrap(), [-3, 70000]);
    }

    /// A shape that needs more bytes than the entry declares is refused before allocating.
    #[test]
    fn oversized_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.npz");
        {
            let mut zip = npyz::zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
            zip.start_file("x.npy", Default::default()).unwrap();
            zip.write_all(&npy_header("<f4", &[1 << 40])).unwrap();
            zip.write_all(&[0; 16]).unwrap();
            zip.finish().unwrap();
        }
        let e = read_npz(&p).unwrap_err();
        assert!(e.to_string().contains("more data"), "{e}");
    }

    /// A corrupted stored entry fails its CRC check instead of decoding wrong values.
    #[test]
    fn corrupted_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        let w = Tensor::from_f32(vec![4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        write_npz(&p, &[("w".into(), w)]).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes
            .windows(4)
            .position(|c| c == 2f32.to_le_bytes())
            .unwrap();
        bytes[at] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        assert!(read_npz(&p).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.npz");
        std::fs::write(&p, b"PK\x03\x04 not really a zip").unwrap();
        assert!(read_npz(&p).is_err());
    }
}
