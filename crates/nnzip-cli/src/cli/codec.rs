use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use nnc_codec::{CodebookMode, EncoderConfig, Limits, TensorData};
use nnzip::tensor::{DType, Tensor};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: CodecCommand,
}

#[derive(Debug, Subcommand)]
pub enum CodecCommand {
    /// Encode the tensors of an .npz (float32 and int32) into an NNC bitstream.
    Encode(EncodeArgs),
    /// Decode an NNC bitstream into an .npz (float32 and int32 tensors, names and shapes kept).
    Decode(DecodeArgs),
    /// One line per NNR unit: type, offset, size, tensor name, shape, QP.
    Info(InfoArgs),
}

/// Encoder settings shared with `nnzip compress`; defaults are the reference's.
#[derive(Debug, Clone, clap::Args)]
pub struct CodecSettings {
    /// Quantization parameter of weights (smaller = finer).
    #[arg(long, default_value_t = -38, allow_hyphen_values = true)]
    pub qp: i32,
    /// QP steps per doubling of the quantization step (2^D).
    #[arg(long, default_value_t = 2)]
    pub qp_density: u8,
    /// Uniform quantization instead of dependent (trellis) quantization.
    #[arg(long)]
    pub no_dq: bool,
    /// Codebook mode: 0 uniform, 1 codebook, 2 whichever is smaller per tensor.
    #[arg(long, default_value_t = CodebookMode::Uniform)]
    pub codebook: CodebookMode,
    /// Integer (aligned) quantization to this many bits.
    #[arg(long, value_name = "B")]
    pub bitdepth: Option<u32>,
    /// Signal all-zero rows with one flag each.
    #[arg(long)]
    pub row_skipping: bool,
    /// Skip the encoder's per-context parameter optimization (faster, larger).
    #[arg(long)]
    pub no_param_opt: bool,
    /// Sampled parameter optimization: judge context initializations on the first bins of
    /// each tensor only. About twice as fast to encode and a few bytes per megabyte larger;
    /// no longer byte-identical to the reference encoder (which still decodes it).
    #[arg(long, conflicts_with = "no_param_opt")]
    pub fast: bool,
    /// QP of non-weight tensors (biases, normalization parameters, vectors).
    #[arg(long, default_value_t = -75, allow_hyphen_values = true)]
    pub nonweight_qp: i32,
}

impl CodecSettings {
    pub fn config(&self) -> EncoderConfig {
        EncoderConfig {
            qp: self.qp,
            qp_density: self.qp_density,
            use_dq: !self.no_dq,
            codebook_mode: self.codebook,
            int_quant_bw: self.bitdepth,
            row_skipping: self.row_skipping,
            param_opt: !self.no_param_opt,
            param_opt_bins: self
                .fast
                .then_some(EncoderConfig::fast().param_opt_bins)
                .flatten(),
            nonweight_qp: Some(self.nonweight_qp),
            ..EncoderConfig::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// Input tensors (.npz).
    pub input: PathBuf,
    /// Output bitstream.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub settings: CodecSettings,
}

#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Input bitstream.
    pub input: PathBuf,
    /// Output tensors (.npz).
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Input bitstream.
    pub input: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn to_codec(name: &str, t: &Tensor) -> Result<nnc_codec::Tensor> {
    let data = match t.dtype {
        DType::F32 => TensorData::F32(t.to_f32()?),
        DType::I32 => TensorData::I32(t.to_i32()?),
        DType::I64 => {
            let v = t.to_i64()?;
            let narrowed: Option<Vec<i32>> = v.iter().map(|&x| i32::try_from(x).ok()).collect();
            TensorData::I32(
                narrowed.with_context(|| format!("'{name}': int64 values beyond 32 bits"))?,
            )
        }
        other => bail!("'{name}': element type {other} is not coded (float32 and int32 are)"),
    };
    Ok(nnc_codec::Tensor {
        name: name.to_string(),
        shape: t.dims.clone(),
        data,
    })
}

fn from_codec(t: &nnc_codec::Tensor) -> Result<Tensor> {
    Ok(match &t.data {
        TensorData::F32(v) => Tensor::from_f32(t.shape.clone(), v)?,
        TensorData::I32(v) => Tensor::from_i32(t.shape.clone(), v)?,
    })
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        CodecCommand::Encode(e) => {
            let arrays = nnzip::npz::read_npz(&e.input)
                .with_context(|| format!("cannot read {}", e.input.display()))?;
            let tensors: Vec<nnc_codec::Tensor> = arrays
                .iter()
                .map(|(n, t)| to_codec(n, t))
                .collect::<Result<_>>()?;
            let t0 = std::time::Instant::now();
            let bytes =
                nnc_codec::encode(&tensors, &e.settings.config()).context("encoding failed")?;
            let dt = t0.elapsed().as_secs_f64();
            nnzip::fsutil::write_atomic(&e.output, |w| w.write_all(&bytes))
                .map_err(super::FileError::Write)
                .with_context(|| format!("cannot write {}", e.output.display()))?;
            let n: usize = tensors.iter().map(|t| t.data.len()).sum();
            eprintln!(
                "{} tensors, {n} values -> {} bytes ({:.3} bits/value) in {dt:.3} s",
                tensors.len(),
                bytes.len(),
                bytes.len() as f64 * 8.0 / n.max(1) as f64
            );
            Ok(())
        }
        CodecCommand::Decode(d) => {
            let bytes = std::fs::read(&d.input)
                .map_err(super::FileError::Read)
                .with_context(|| format!("cannot read {}", d.input.display()))?;
            let tensors = nnc_codec::decode(&bytes, &Limits::default())
                .with_context(|| format!("{} is not a valid NNC bitstream", d.input.display()))?;
            let arrays: Vec<(String, Tensor)> = tensors
                .iter()
                .map(|t| Ok((t.name.clone(), from_codec(t)?)))
                .collect::<Result<_>>()?;
            nnzip::npz::write_npz(&d.output, &arrays)
                .with_context(|| format!("cannot write {}", d.output.display()))?;
            eprintln!("{} tensors -> {}", arrays.len(), d.output.display());
            Ok(())
        }
        CodecCommand::Info(i) => {
            let bytes = std::fs::read(&i.input)
                .map_err(super::FileError::Read)
                .with_context(|| format!("cannot read {}", i.input.display()))?;
            let units = nnc_codec::units(&bytes)
                .with_context(|| format!("{} is not a valid NNC bitstream", i.input.display()))?;
            if i.json {
                let v: Vec<serde_json::Value> = units
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "type": format!("{:?}", u.unit_type), "offset": u.offset, "size": u.size,
                            "tensor": u.ndu.as_ref().map(|n| n.name.clone()),
                            "shape": u.ndu.as_ref().map(|n| n.shape.clone()),
                            "payload": u.ndu.as_ref().map(|n| format!("{:?}", n.payload_type)),
                            "qp": u.ndu.as_ref().and_then(|n| n.qp),
                            "dq": u.ndu.as_ref().map(|n| n.dq),
                            "codebook_size": u.ndu.as_ref().and_then(|n| n.codebook_size),
                            "entry_points": u.ndu.as_ref().map(|n| n.entry_points),
                            "formats": u.formats,
                        })
                    })
                    .collect();
                return super::print_json(&v);
            }
            for u in &units {
                match &u.ndu {
                    Some(n) => println!(
                        "{:<8} @{:<8} {:>8} B  {}  {:?}  {:?}{}{}{}",
                        format!("{:?}", u.unit_type),
                        u.offset,
                        u.size,
                        n.name,
                        n.shape,
                        n.payload_type,
                        n.qp.map(|q| format!("  qp {q}")).unwrap_or_default(),
                        if n.dq { "  dq" } else { "" },
                        n.codebook_size
                            .map(|c| format!("  codebook {c}"))
                            .unwrap_or_default()
                    ),
                    None => println!(
                        "{:<8} @{:<8} {:>8} B{}",
                        format!("{:?}", u.unit_type),
                        u.offset,
                        u.size,
                        u.formats
                            .map(|(s, c)| format!("  storage {s} compression {c}"))
                            .unwrap_or_default()
                    ),
                }
            }
            Ok(())
        }
    }
}
