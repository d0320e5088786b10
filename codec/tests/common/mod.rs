//! Shared helpers of the integration tests (also of the codec examples and bench):
//! conformance vector loading, npz reading and writing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use nnc_codec::{Tensor, TensorData};
use std::path::PathBuf;

/// Directory of the NNCodec 2.1.3 conformance vectors.
pub fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/conformance/nnc")
}

/// One vector of manifest.json.
pub struct Vector {
    pub name: String,
    pub settings: serde_json::Value,
    pub bitstream_bytes: usize,
}

pub fn manifest() -> Vec<Vector> {
    let text = std::fs::read_to_string(conformance_dir().join("manifest.json")).expect("manifest");
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest json");
    v["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .map(|e| Vector {
            name: e["name"].as_str().expect("name").to_string(),
            settings: e["encoder_settings"].clone(),
            bitstream_bytes: e["bitstream_bytes"].as_u64().expect("bytes") as usize,
        })
        .collect()
}

/// Element type of an array in an npz file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    F32,
    F64,
    I32,
}

/// Loads an npz in archive order. float64 arrays are narrowed to float32 (asserting exactness).
pub fn load_npz(path: &std::path::Path) -> Vec<(Tensor, Kind)> {
    let mut ar = npyz::npz::NpzArchive::open(path).expect("open npz");
    let mut names = Vec::new();
    let n = ar.zip_archive().len();
    for i in 0..n {
        let f = ar.zip_archive().by_index(i).expect("zip entry");
        let name = f.name().trim_end_matches(".npy").to_string();
        names.push(name);
    }
    let mut out = Vec::new();
    for name in names {
        let npy = ar.by_name(&name).expect("read").expect("present");
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let descr = npy.dtype().descr();
        let (data, kind) = if descr.contains("f4") {
            (
                TensorData::F32(npy.into_vec::<f32>().expect("f32")),
                Kind::F32,
            )
        } else if descr.contains("f8") {
            let v = npy.into_vec::<f64>().expect("f64");
            let f: Vec<f32> = v
                .iter()
                .map(|&x| {
                    assert_eq!(f64::from(x as f32), x, "float64 value not a float32");
                    x as f32
                })
                .collect();
            (TensorData::F32(f), Kind::F64)
        } else if descr.contains("i4") {
            (
                TensorData::I32(npy.into_vec::<i32>().expect("i32")),
                Kind::I32,
            )
        } else {
            panic!("unexpected dtype {descr} in {}", path.display());
        };
        out.push((Tensor { name, shape, data }, kind));
    }
    out
}

/// Bit-exact comparison (floats by bit pattern).
pub fn same_tensor(a: &Tensor, b: &Tensor) -> Result<(), String> {
    if a.name != b.name {
        return Err(format!("name {} vs {}", a.name, b.name));
    }
    if a.shape != b.shape {
        return Err(format!("{}: shape {:?} vs {:?}", a.name, a.shape, b.shape));
    }
    match (&a.data, &b.data) {
        (TensorData::F32(x), TensorData::F32(y)) => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                if p.to_bits() != q.to_bits() {
                    return Err(format!("{}: element {i}: {p} vs {q}", a.name));
                }
            }
            Ok(())
        }
        (TensorData::I32(x), TensorData::I32(y)) => {
            if x != y {
                return Err(format!("{}: int32 values differ", a.name));
            }
            Ok(())
        }
        _ => Err(format!("{}: element types differ", a.name)),
    }
}

/// Writes tensors (float32 / int32) to an npz of stored entries, names and shapes kept.
pub fn write_npz(path: &std::path::Path, tensors: &[Tensor]) {
    let mut npz = npyz::npz::NpzWriter::create(path).expect("create npz");
    for t in tensors {
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        match &t.data {
            TensorData::F32(v) => write_array(&mut npz, &t.name, &shape, v),
            TensorData::I32(v) => write_array(&mut npz, &t.name, &shape, v),
        }
    }
}

fn write_array<T: npyz::AutoSerialize + Copy, W: std::io::Write + std::io::Seek>(
    npz: &mut npyz::npz::NpzWriter<W>,
    name: &str,
    shape: &[u64],
    v: &[T],
) {
    use npyz::WriterBuilder;
    // Stored, as numpy.savez writes (deflating dominated the examples' run time).
    let stored = npyz::zip::write::FileOptions::default()
        .compression_method(npyz::zip::CompressionMethod::Stored);
    let mut w = npz
        .array::<T>(name, stored)
        .expect("array")
        .default_dtype()
        .shape(shape)
        .begin_nd()
        .expect("begin");
    w.extend(v.iter().copied()).expect("write");
    w.finish().expect("finish");
}
