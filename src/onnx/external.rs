//! External data (ONNX `TensorProto.external_data`): validated reading through memory maps, and
//! writing beside the model when asked or when the model would pass protobuf's 2 GiB limit.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use onnx_protobuf::{GraphProto, Message, ModelProto, StringStringEntryProto, TensorProto};

use super::{decode_tensor_with, Model, OnnxError, PROTOBUF_LIMIT};
use crate::fsutil::AtomicFile;

/// `TensorProto.data_location` value for external data.
const EXTERNAL: i32 = 1;

/// Where external tensors go on save.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Tensors of at least this many bytes go to the external-data file; `None` keeps them inline
    /// unless the model would exceed protobuf's 2 GiB limit (then 1 KiB is used).
    pub external_threshold: Option<u64>,
    /// The data file's name, beside the model; default `<model file name>.data`.
    pub data_file: Option<String>,
    /// With no threshold, a model whose inline size would pass this many bytes is written with
    /// external data anyway (default: protobuf's 2 GiB limit less 64 MiB of headroom).
    pub auto_external_above: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            external_threshold: None,
            data_file: None,
            auto_external_above: PROTOBUF_LIMIT - (64 << 20),
        }
    }
}

/// The parsed `external_data` entries of one tensor.
#[derive(Debug, Clone, PartialEq)]
struct ExternalRef {
    location: String,
    offset: u64,
    length: Option<u64>,
}

fn parse_ref(tp: &TensorProto) -> Result<ExternalRef, OnnxError> {
    let err = |reason: String| OnnxError::External {
        name: tp.name.clone(),
        reason,
    };
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in &tp.external_data {
        let num = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| err(format!("has a bad {} '{v}'", e.key)))
        };
        match e.key.as_str() {
            "location" => location = Some(e.value.clone()),
            "offset" => offset = num(&e.value)?,
            "length" => length = Some(num(&e.value)?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| err("has no location".into()))?;
    Ok(ExternalRef {
        location,
        offset,
        length,
    })
}

/// Resolves an external-data location, refusing anything that leaves the model's folder.
fn resolve(base: &Path, name: &str, location: &str) -> Result<PathBuf, OnnxError> {
    let refuse = |reason: &str| OnnxError::ExternalPath {
        name: name.to_string(),
        location: location.to_string(),
        reason: reason.to_string(),
    };
    if location.is_empty() {
        return Err(refuse("it is empty"));
    }
    let bytes = location.as_bytes();
    let drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    if location.starts_with('/') || location.starts_with('\\') || drive {
        return Err(refuse("it is an absolute path"));
    }
    // Backslashes are separators on Windows: treat them as such so `..\x` cannot slip through.
    if location.split(['/', '\\']).any(|c| c == "..") {
        return Err(refuse("it goes up out of the model's folder"));
    }
    let rel = Path::new(location);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse("it is not a plain relative path"));
    }
    let base = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    let cbase = base
        .canonicalize()
        .map_err(|_| refuse("the model's folder cannot be resolved"))?;
    let full = base
        .join(rel)
        .canonicalize()
        .map_err(|_| refuse("the file does not exist"))?;
    if !full.starts_with(&cbase) {
        return Err(refuse(
            "it resolves, through a link, outside the model's folder",
        ));
    }
    if !full.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    Ok(full)
}

/// The model's external-data files, memory-mapped once each.
#[derive(Debug, Default, Clone)]
pub struct ExternalStore {
    base: PathBuf,
    files: HashMap<String, Arc<memmap2::Mmap>>,
}

impl ExternalStore {
    pub fn new(base: &Path) -> ExternalStore {
        ExternalStore {
            base: base.to_path_buf(),
            files: HashMap::new(),
        }
    }

    /// Opens (once) and validates the data of one external tensor.
    pub(crate) fn open_for(&mut self, tp: &TensorProto) -> Result<(), OnnxError> {
        let r = parse_ref(tp)?;
        if !self.files.contains_key(&r.location) {
            let path = resolve(&self.base, &tp.name, &r.location)?;
            let io = |source| OnnxError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(&path).map_err(io)?;
            // SAFETY: read-only mapping of an input file; nnzip never writes its inputs in place
            // (all output goes through temp file + rename, which leaves mapped inodes intact).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            self.files.insert(r.location.clone(), Arc::new(map));
        }
        self.slice(tp, &r).map(|_| ())
    }

    fn slice(&self, tp: &TensorProto, r: &ExternalRef) -> Result<&[u8], OnnxError> {
        let err = |reason: String| OnnxError::External {
            name: tp.name.clone(),
            reason,
        };
        let map = self
            .files
            .get(&r.location)
            .ok_or_else(|| err(format!("file '{}' was not validated at load", r.location)))?;
        let size = map.len() as u64;
        if r.offset > size {
            return Err(err(format!(
                "offset {} is beyond the end of '{}' ({size} bytes)",
                r.offset, r.location
            )));
        }
        let length = r.length.unwrap_or(size - r.offset);
        let end = r
            .offset
            .checked_add(length)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                err(format!(
                    "range {}+{} is beyond the end of '{}' ({size} bytes)",
                    r.offset, length, r.location
                ))
            })?;
        Ok(&map[r.offset as usize..end as usize])
    }

    /// The bytes of an external tensor (bounded by the data file's size).
    pub(crate) fn read(&self, tp: &TensorProto) -> Result<Vec<u8>, OnnxError> {
        let r = parse_ref(tp)?;
        Ok(self.slice(tp, &r)?.to_vec())
    }

    pub fn file_sizes(&self) -> HashMap<String, u64> {
        self.files
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect()
    }
}

/// Calls `f` on every tensor proto of a graph and its subgraphs: initializers and tensor-valued
/// attributes.
pub(crate) fn for_each_tensor(
    g: &GraphProto,
    f: &mut dyn FnMut(&TensorProto) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    for t in &g.initializer {
        f(t)?;
    }
    for n in &g.node {
        for a in &n.attribute {
            if let Some(t) = a.t.as_ref() {
                f(t)?;
            }
            for t in &a.tensors {
                f(t)?;
            }
            if let Some(sg) = a.g.as_ref() {
                for_each_tensor(sg, f)?;
            }
            for sg in &a.graphs {
                for_each_tensor(sg, f)?;
            }
        }
    }
    Ok(())
}

fn for_each_tensor_mut(
    g: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    for t in &mut g.initializer {
        f(t)?;
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = a.t.as_mut() {
                f(t)?;
            }
            for t in &mut a.tensors {
                f(t)?;
            }
            if let Some(sg) = a.g.as_mut() {
                for_each_tensor_mut(sg, f)?;
            }
            for sg in &mut a.graphs {
                for_each_tensor_mut(sg, f)?;
            }
        }
    }
    Ok(())
}

/// Opens and validates every external reference of a graph.
pub(crate) fn open_all(store: &mut ExternalStore, g: &GraphProto) -> Result<(), OnnxError> {
    for_each_tensor(g, &mut |t| {
        if t.data_location.value() == EXTERNAL {
            store.open_for(t)
        } else {
            Ok(())
        }
    })
}

/// Bytes of a tensor's data however stored, as the byte size it would have in raw form.
fn data_len(tp: &TensorProto) -> u64 {
    if tp.data_location.value() == EXTERNAL {
        return parse_ref(tp).ok().and_then(|r| r.length).unwrap_or(0);
    }
    let dims: Option<usize> = tp
        .dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?));
    let size = crate::tensor::DType::from_onnx(tp.data_type).size();
    match (dims, size) {
        (Some(n), Some(s)) => (n as u64).saturating_mul(s as u64),
        _ => tp.raw_data.len() as u64,
    }
}

fn make_inline(tp: &mut TensorProto, store: &ExternalStore) -> Result<(), OnnxError> {
    if tp.data_location.value() == EXTERNAL {
        let t = decode_tensor_with(tp, Some(store))?;
        super::store_tensor(tp, &t);
    }
    Ok(())
}

/// A copy of the model's proto with every tensor inline.
pub(crate) fn inline_all(model: &Model) -> Result<ModelProto, OnnxError> {
    let mut proto = model.proto.clone();
    let store = model.external_store();
    for_each_tensor_mut(proto.graph.mut_or_insert_default(), &mut |t| {
        make_inline(t, store)
    })?;
    Ok(proto)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// The model's proto with large tensors moved to a data file beside `path` (`opts` says which:
/// over a threshold, or all above 1 KiB when the whole would pass `auto_external_above`) and
/// the rest inline; both files written atomically, the data file first.
pub(crate) fn save(model: &Model, path: &Path, opts: &SaveOptions) -> Result<(), OnnxError> {
    let mut proto = model.proto.clone();
    let store = model.external_store();
    let threshold = external_threshold(model, &proto, opts)?;
    let (data_name, data_path) = data_file(path, opts)?;
    let graph = proto.graph.mut_or_insert_default();
    let data = match threshold {
        None => {
            for_each_tensor_mut(graph, &mut |t| make_inline(t, store))?;
            None
        }
        Some(th) => write_external(graph, store, th, &data_name, &data_path)?,
    };
    let size = proto.compute_size();
    if size > PROTOBUF_LIMIT {
        return Err(OnnxError::Serialize(format!(
            "the model is {size} bytes, over protobuf's 2 GiB limit; save it with external data"
        )));
    }
    let mut f = AtomicFile::create(path).map_err(werr(path))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, f.file());
        proto
            .write_to_writer(&mut w)
            .map_err(|e| OnnxError::Serialize(e.to_string()))?;
        w.flush().map_err(werr(path))?;
    }
    // Data first: a model file never points at a data file that is not complete.
    if let Some(d) = data {
        d.commit().map_err(werr(&data_path))?;
    }
    f.commit().map_err(werr(path))?;
    Ok(())
}

fn werr(p: &Path) -> impl FnOnce(std::io::Error) -> OnnxError {
    let p = p.to_path_buf();
    move |source| OnnxError::Write { path: p, source }
}

/// The size from which tensors go to the data file: the one asked for, or 1 KiB when the
/// inline model (the proto as it is plus whatever now lives in external files) would pass
/// `auto_external_above`; `None` for all inline.
fn external_threshold(
    model: &Model,
    proto: &ModelProto,
    opts: &SaveOptions,
) -> Result<Option<u64>, OnnxError> {
    if let Some(t) = opts.external_threshold {
        return Ok(Some(t));
    }
    let mut ext = 0u64;
    for_each_tensor(model.graph(), &mut |t| {
        if t.data_location.value() == EXTERNAL {
            ext += data_len(t);
        }
        Ok(())
    })?;
    Ok((proto.compute_size() + ext > opts.auto_external_above).then_some(1024))
}

/// The data file's name (a plain file name, checked) and its path beside the model.
fn data_file(path: &Path, opts: &SaveOptions) -> Result<(String, PathBuf), OnnxError> {
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.onnx".into());
    let data_name = opts
        .data_file
        .clone()
        .unwrap_or_else(|| format!("{file_name}.data"));
    if data_name.contains(['/', '\\'])
        || data_name == ".."
        || data_name == "."
        || data_name.is_empty()
    {
        return Err(OnnxError::ExternalPath {
            name: String::new(),
            location: data_name,
            reason: "the data file must be a plain file name beside the model".into(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let data_path = dir.join(&data_name);
    Ok((data_name, data_path))
}

/// Moves every tensor of at least `th` bytes (strings excepted) into a new data file at
/// `data_path`, 64-byte aligned, and inlines the rest. The file, not yet committed, when any
/// tensor went there.
fn write_external(
    graph: &mut GraphProto,
    store: &ExternalStore,
    th: u64,
    data_name: &str,
    data_path: &Path,
) -> Result<Option<AtomicFile>, OnnxError> {
    let mut pending: Result<(), std::io::Error> = Ok(());
    let mut out: Option<(BufWriter<File>, u64)> = None;
    let mut tmp: Option<AtomicFile> = None;
    for_each_tensor_mut(graph, &mut |t| {
        if data_len(t) < th || t.data_type == crate::tensor::DType::Str.onnx_code() {
            return make_inline(t, store);
        }
        let dense = decode_tensor_with(t, Some(store))?;
        if out.is_none() {
            let f = AtomicFile::create(data_path).map_err(werr(data_path))?;
            let file = f.file_try_clone().map_err(werr(data_path))?;
            tmp = Some(f);
            out = Some((BufWriter::with_capacity(1 << 20, file), 0));
        }
        let Some((w, pos)) = out.as_mut() else {
            return Ok(());
        };
        // 64-byte alignment keeps tensors aligned for SIMD loads once mapped.
        let start = align_up(*pos, 64);
        let r = (|| {
            w.write_all(&vec![0u8; (start - *pos) as usize])?;
            w.write_all(dense.bytes())
        })();
        if let Err(e) = r {
            pending = Err(e);
            return Ok(());
        }
        *pos = start + dense.bytes().len() as u64;
        super::store_tensor(t, &dense);
        t.raw_data.clear();
        t.data_location = protobuf::EnumOrUnknown::from_i32(EXTERNAL);
        let kv = |k: &str, v: String| {
            let mut e = StringStringEntryProto::new();
            e.key = k.into();
            e.value = v;
            e
        };
        t.external_data = vec![
            kv("location", data_name.to_string()),
            kv("offset", start.to_string()),
            kv("length", dense.bytes().len().to_string()),
        ];
        Ok(())
    })?;
    pending.map_err(werr(data_path))?;
    match (out, tmp) {
        (Some((mut w, _)), Some(f)) => {
            w.flush().map_err(werr(data_path))?;
            Ok(Some(f))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_outside_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
        assert!(resolve(dir.path(), "t", "w.bin").is_ok());
        assert!(resolve(dir.path(), "t", "./w.bin").is_ok());
        for bad in [
            "/etc/passwd",
            "../w.bin",
            "a/../../w.bin",
            "..\\w.bin",
            "C:\\w.bin",
            "",
            "missing.bin",
        ] {
            assert!(resolve(dir.path(), "t", bad).is_err(), "{bad} accepted");
        }
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("secret"), [1u8; 4]).unwrap();
            std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link"))
                .unwrap();
            let e = resolve(dir.path(), "t", "link").unwrap_err().to_string();
            assert!(e.contains("outside"), "{e}");
        }
    }
}
