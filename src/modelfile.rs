//! A model handed to ONNX Runtime through a file it can map, instead of a serialized copy in
//! memory. ONNX Runtime maps external data files and uses the tensors in place, so a session on
//! a file with external data costs about half the model's size in resident memory; the same
//! session from bytes holds the bytes, their parsed copy and its own (1.8× the model for
//! MiniLM-L3, measured). Writing the file streams tensor by tensor from the model: nothing of the
//! model's size is copied in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
};

use crate::onnx::{Model, OnnxError};
use crate::tensor::DType;

/// Tensors of at least this many bytes go to the data file.
pub const EXTERNAL_THRESHOLD: usize = 1024;

/// The model's structure with every tensor's data left out (cheap to clone).
pub fn skeleton(p: &ModelProto) -> ModelProto {
    ModelProto {
        ir_version: p.ir_version,
        opset_import: p.opset_import.clone(),
        producer_name: p.producer_name.clone(),
        producer_version: p.producer_version.clone(),
        domain: p.domain.clone(),
        model_version: p.model_version,
        doc_string: p.doc_string.clone(),
        graph: p.graph.as_ref().map(skeleton_graph).into(),
        metadata_props: p.metadata_props.clone(),
        training_info: p.training_info.clone(),
        functions: p.functions.clone(),
        special_fields: p.special_fields.clone(),
    }
}

fn skeleton_graph(g: &GraphProto) -> GraphProto {
    GraphProto {
        node: g.node.iter().map(skeleton_node).collect(),
        name: g.name.clone(),
        initializer: g.initializer.iter().map(skeleton_tensor).collect(),
        sparse_initializer: g.sparse_initializer.clone(),
        doc_string: g.doc_string.clone(),
        input: g.input.clone(),
        output: g.output.clone(),
        value_info: g.value_info.clone(),
        quantization_annotation: g.quantization_annotation.clone(),
        metadata_props: g.metadata_props.clone(),
        special_fields: g.special_fields.clone(),
    }
}

fn skeleton_node(n: &NodeProto) -> NodeProto {
    NodeProto {
        input: n.input.clone(),
        output: n.output.clone(),
        name: n.name.clone(),
        op_type: n.op_type.clone(),
        domain: n.domain.clone(),
        overload: n.overload.clone(),
        attribute: n.attribute.iter().map(skeleton_attr).collect(),
        doc_string: n.doc_string.clone(),
        metadata_props: n.metadata_props.clone(),
        special_fields: n.special_fields.clone(),
    }
}

fn skeleton_attr(a: &AttributeProto) -> AttributeProto {
    AttributeProto {
        name: a.name.clone(),
        ref_attr_name: a.ref_attr_name.clone(),
        doc_string: a.doc_string.clone(),
        type_: a.type_,
        f: a.f,
        i: a.i,
        s: a.s.clone(),
        t: a.t.as_ref().map(skeleton_tensor).into(),
        g: a.g.as_ref().map(skeleton_graph).into(),
        sparse_tensor: a.sparse_tensor.clone(),
        tp: a.tp.clone(),
        floats: a.floats.clone(),
        ints: a.ints.clone(),
        strings: a.strings.clone(),
        tensors: a.tensors.iter().map(skeleton_tensor).collect(),
        graphs: a.graphs.iter().map(skeleton_graph).collect(),
        sparse_tensors: a.sparse_tensors.clone(),
        type_protos: a.type_protos.clone(),
        special_fields: a.special_fields.clone(),
    }
}

/// A tensor without its data (strings are kept: they are not numeric data).
fn skeleton_tensor(t: &TensorProto) -> TensorProto {
    TensorProto {
        dims: t.dims.clone(),
        data_type: t.data_type,
        segment: t.segment.clone(),
        float_data: Vec::new(),
        int32_data: Vec::new(),
        string_data: t.string_data.clone(),
        int64_data: Vec::new(),
        name: t.name.clone(),
        doc_string: t.doc_string.clone(),
        raw_data: Vec::new(),
        external_data: Vec::new(),
        data_location: protobuf::EnumOrUnknown::from_i32(0),
        double_data: Vec::new(),
        uint64_data: Vec::new(),
        metadata_props: t.metadata_props.clone(),
        special_fields: t.special_fields.clone(),
    }
}

/// Calls `f` on each (source, skeleton) tensor pair of two graphs of the same structure.
fn zip_tensors(
    src: &GraphProto,
    dst: &mut GraphProto,
    f: &mut dyn FnMut(&TensorProto, &mut TensorProto) -> Result<(), OnnxError>,
) -> Result<(), OnnxError> {
    for (a, b) in src.initializer.iter().zip(dst.initializer.iter_mut()) {
        f(a, b)?;
    }
    for (na, nb) in src.node.iter().zip(dst.node.iter_mut()) {
        for (aa, ab) in na.attribute.iter().zip(nb.attribute.iter_mut()) {
            if let (Some(x), Some(y)) = (aa.t.as_ref(), ab.t.as_mut()) {
                f(x, y)?;
            }
            for (x, y) in aa.tensors.iter().zip(ab.tensors.iter_mut()) {
                f(x, y)?;
            }
            if let (Some(x), Some(y)) = (aa.g.as_ref(), ab.g.as_mut()) {
                zip_tensors(x, y, f)?;
            }
            for (x, y) in aa.graphs.iter().zip(ab.graphs.iter_mut()) {
                zip_tensors(x, y, f)?;
            }
        }
    }
    Ok(())
}

fn entry(k: &str, v: String) -> StringStringEntryProto {
    let mut e = StringStringEntryProto::new();
    e.key = k.into();
    e.value = v;
    e
}

/// Writes `model` as `dir/model.onnx`, tensors of at least [`EXTERNAL_THRESHOLD`] bytes in
/// `dir/model.onnx.data` (64-byte aligned), one tensor in memory at a time.
pub fn write_mapped(model: &Model, dir: &Path) -> Result<PathBuf, OnnxError> {
    let path = dir.join("model.onnx");
    let data_name = "model.onnx.data";
    let data_path = dir.join(data_name);
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| OnnxError::Write { path: p, source }
    };
    let mut sk = skeleton(&model.proto);
    let mut data =
        BufWriter::with_capacity(1 << 20, File::create(&data_path).map_err(werr(&data_path))?);
    let mut pos = 0u64;
    let mut failed: Option<std::io::Error> = None;
    if let (Some(src), Some(dst)) = (model.proto.graph.as_ref(), sk.graph.as_mut()) {
        zip_tensors(src, dst, &mut |a, b| {
            if a.data_type == DType::Str.onnx_code() {
                *b = a.clone();
                return Ok(());
            }
            let dense = model.decode_tensor(a)?;
            let bytes = dense.bytes();
            if bytes.len() < EXTERNAL_THRESHOLD || failed.is_some() {
                crate::onnx::store_tensor(b, &dense);
                return Ok(());
            }
            let start = pos.div_ceil(64) * 64;
            let r = data
                .write_all(&vec![0u8; (start - pos) as usize])
                .and_then(|_| data.write_all(bytes));
            if let Err(e) = r {
                failed = Some(e);
                return Ok(());
            }
            pos = start + bytes.len() as u64;
            b.data_location = protobuf::EnumOrUnknown::from_i32(1);
            b.external_data = vec![
                entry("location", data_name.to_string()),
                entry("offset", start.to_string()),
                entry("length", bytes.len().to_string()),
            ];
            Ok(())
        })?;
    }
    if let Some(e) = failed {
        return Err(werr(&data_path)(e));
    }
    data.flush().map_err(werr(&data_path))?;
    let mut f = BufWriter::new(File::create(&path).map_err(werr(&path))?);
    sk.write_to_writer(&mut f)
        .map_err(|e| OnnxError::Serialize(e.to_string()))?;
    f.flush().map_err(werr(&path))?;
    Ok(path)
}

/// Saves a model whose tensors are all inline (a decoded one) atomically, serializing straight
/// into the file: no copy of the model in memory, unlike a save that may move tensors out.
/// Falls back to [`Model::save`] when the model needs external data (over 2 GiB).
pub fn save_inline(model: &Model, path: &Path) -> Result<(), OnnxError> {
    if inline_size(model) > (2u64 << 30) - (64 << 20)
        || !crate::onnx::external_files(model).is_empty()
    {
        return model.save(path, &crate::onnx::SaveOptions::default());
    }
    let werr = |source| OnnxError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = crate::fsutil::AtomicFile::create(path).map_err(werr)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, f.file());
        model
            .proto
            .write_to_writer(&mut w)
            .map_err(|e| OnnxError::Serialize(e.to_string()))?;
        w.flush().map_err(werr)?;
    }
    f.commit().map_err(werr)
}

/// The size of the model serialized with every tensor inline, computed without serializing.
pub fn inline_size(model: &Model) -> u64 {
    let external: u64 = crate::onnx::external_files(model).values().sum();
    model.proto.compute_size() + external
}

/// Bytes of tensor data a model holds (what a mapped file saves in memory).
pub fn data_bytes(model: &Model) -> u64 {
    model
        .weights()
        .iter()
        .map(|w| (w.numel() * w.dtype.size().unwrap_or(1)) as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn mapped_file_holds_the_same_model() {
        let mut proto = ModelProto::new();
        proto.ir_version = 8;
        let g = proto.graph.mut_or_insert_default();
        let big: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        g.initializer.push(crate::onnx::tensor_proto(
            "big",
            &Tensor::from_f32(vec![1000], &big).unwrap(),
        ));
        g.initializer.push(crate::onnx::tensor_proto(
            "small",
            &Tensor::from_f32(vec![2], &[1.0, 2.0]).unwrap(),
        ));
        let model = Model::from_proto_in(proto, None, Path::new("")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = write_mapped(&model, dir.path()).unwrap();
        let back = Model::load(&p).unwrap();
        for (a, b) in model.weights().iter().zip(back.weights()) {
            assert_eq!(model.read(&a.id).unwrap(), back.read(&b.id).unwrap());
        }
        assert_eq!(back.weights()[0].storage.to_string(), "external");
        assert_eq!(
            skeleton(&model.proto).graph.initializer[0].raw_data.len(),
            0
        );
    }
}
