//! ONNX Runtime through the `ort` crate, loaded dynamically: locating the shared library,
//! sessions, and conversion between [`Tensor`] and ORT values.
//!
//! The library is searched, in order: an explicit path (`--ort-lib`), `ORT_DYLIB_PATH`, the
//! `onnxruntime` package of a `python3` beside the executable (nnzip installed from its wheel),
//! the project-local folder `.ort/` that `scripts/setup-ort.sh` fills (or `NNZIP_ORT_DIR`), and
//! an installed Python `onnxruntime` package.

pub mod inputs;
pub mod placement;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, ValueType};
use thiserror::Error;

use crate::onnx::{Model, OnnxError, ValueInfo};
use crate::tensor::{DType, Tensor, TensorError};

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error(
        "the ONNX Runtime shared library (libonnxruntime.so) was not found.\n\
         Searched: {searched}.\n\
         Get it with `bash scripts/setup-ort.sh` (fetches the onnxruntime==1.31.1 wheel from PyPI into .ort/), \
         or give its path, or set ORT_DYLIB_PATH=/path/to/libonnxruntime.so"
    )]
    LibraryNotFound { searched: String },
    #[error("cannot load the ONNX Runtime library {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime was already loaded from {loaded}; cannot switch to {requested} in the same process")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
    #[error("execution provider '{name}' is not available in the loaded ONNX Runtime library {lib} (this build has: {available})")]
    ProviderUnavailable {
        name: String,
        lib: PathBuf,
        available: String,
    },
    #[error("unknown execution provider '{0}' (known: cpu, cuda, tensorrt, openvino, xnnpack)")]
    UnknownProvider(String),
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("model input '{0}' was not given")]
    MissingInput(String),
    #[error("ONNX Runtime cannot take a {0} tensor from nnzip")]
    UnsupportedType(DType),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}

impl RuntimeError {
    /// What kind of failure this is (for exit codes).
    pub fn class(&self) -> crate::errors::ErrorClass {
        use crate::errors::ErrorClass as C;
        match self {
            RuntimeError::Onnx(e) => e.class(),
            RuntimeError::Tensor(e) => e.class(),
            RuntimeError::UnknownProvider(_) | RuntimeError::MissingInput(_) => C::Usage,
            RuntimeError::LibraryNotFound { .. }
            | RuntimeError::Load { .. }
            | RuntimeError::AlreadyLoaded { .. }
            | RuntimeError::ProviderUnavailable { .. }
            | RuntimeError::Ort(_)
            | RuntimeError::UnsupportedType(_) => C::Runtime,
        }
    }
}

impl From<ort::Error> for RuntimeError {
    fn from(e: ort::Error) -> Self {
        RuntimeError::Ort(e.to_string())
    }
}

/// Where the library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    Explicit,
    EnvVar,
    ProjectFolder,
    PythonPackage,
}

fn find_in_dir(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join("libonnxruntime.so");
    if exact.is_file() {
        return Some(exact);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so")
                    || n == "libonnxruntime.dylib"
                    || n == "onnxruntime.dll"
            })
        })
        .collect();
    found.sort();
    found.pop()
}

/// Project-local folders that may hold the library.
fn project_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("NNZIP_ORT_DIR") {
        dirs.push(PathBuf::from(d));
    }
    // The repository the binary was built from, and the folders around the executable.
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort"));
    if let Ok(exe) = std::env::current_exe() {
        for anc in exe.ancestors().skip(1).take(4) {
            dirs.push(anc.join(".ort"));
        }
    }
    dirs
}

fn python_package_dir() -> Option<PathBuf> {
    python_package_dir_of(Path::new("python3"))
}

/// The `onnxruntime` package of the Python beside the executable: a `pip install nnzip` puts
/// the binary next to the interpreter (a venv's `bin/`), whose `onnxruntime` dependency then
/// wins over other copies on the machine.
fn sibling_python_package_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let py = exe.parent()?.join("python3");
    py.is_file().then(|| python_package_dir_of(&py)).flatten()
}

fn python_package_dir_of(python: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(p.join("capi"))
}

/// Finds the ONNX Runtime shared library (see the module docs for the order).
pub fn locate_library(explicit: Option<&Path>) -> Result<(PathBuf, LibrarySource), RuntimeError> {
    let mut searched = Vec::new();
    let as_lib = |p: &Path| {
        if p.is_dir() {
            find_in_dir(p)
        } else {
            p.is_file().then(|| p.to_path_buf())
        }
    };
    if let Some(p) = explicit {
        return as_lib(p)
            .map(|l| (l, LibrarySource::Explicit))
            .ok_or_else(|| RuntimeError::LibraryNotFound {
                searched: format!("{} (given; no such library)", p.display()),
            });
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if let Some(l) = as_lib(&p) {
            return Ok((l, LibrarySource::EnvVar));
        }
        searched.push(format!("ORT_DYLIB_PATH={}", p.display()));
    } else {
        searched.push("ORT_DYLIB_PATH (unset)".into());
    }
    if let Some(d) = sibling_python_package_dir() {
        if let Some(l) = find_in_dir(&d) {
            return Ok((l, LibrarySource::PythonPackage));
        }
    }
    for d in project_dirs() {
        if let Some(l) = find_in_dir(&d) {
            return Ok((l, LibrarySource::ProjectFolder));
        }
        searched.push(d.display().to_string());
    }
    match python_package_dir() {
        Some(d) => {
            if let Some(l) = find_in_dir(&d) {
                return Ok((l, LibrarySource::PythonPackage));
            }
            searched.push(d.display().to_string());
        }
        None => searched.push("python3 -c 'import onnxruntime' (not installed)".into()),
    }
    Err(RuntimeError::LibraryNotFound {
        searched: searched.join(", "),
    })
}

/// The process-wide ONNX Runtime environment.
pub struct Runtime {
    env: ort::environment::Environment,
    pub lib: PathBuf,
    pub source: LibrarySource,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Runtime {
    /// Loads ONNX Runtime once per process.
    pub fn get(explicit: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            if let Some(p) = explicit {
                let (l, _) = locate_library(Some(p))?;
                if l != rt.lib {
                    return Err(RuntimeError::AlreadyLoaded {
                        loaded: rt.lib.clone(),
                        requested: l,
                    });
                }
            }
            return Ok(rt);
        }
        let (lib, source) = locate_library(explicit)?;
        let load = |reason: String| RuntimeError::Load {
            path: lib.clone(),
            reason,
        };
        let builder = ort::init_from(&lib).map_err(|e| load(e.to_string()))?;
        let env = builder
            .with_name("nnzip")
            .build()
            .map_err(|e| load(e.to_string()))?;
        let rt = Runtime { env, lib, source };
        Ok(RUNTIME.get_or_init(|| rt))
    }

    /// Execution providers compiled into the loaded library.
    pub fn available_providers(&self) -> Vec<&'static str> {
        use ort::ep::{self, ExecutionProvider};
        let mut v = vec!["cpu"];
        type Probe = fn() -> ort::Result<bool>;
        let known: [(&str, Probe); 4] = [
            ("cuda", ep::CUDA::is_available),
            ("tensorrt", ep::TensorRT::is_available),
            ("openvino", ep::OpenVINO::is_available),
            ("xnnpack", ep::XNNPACK::is_available),
        ];
        v.extend(
            known
                .iter()
                .filter(|(_, f)| f().unwrap_or(false))
                .map(|(n, _)| *n),
        );
        v
    }
}

/// Graph optimization level of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptLevel {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl OptLevel {
    pub fn parse(s: &str) -> Option<OptLevel> {
        Some(match s {
            "disable" | "none" | "0" => OptLevel::Disable,
            "basic" | "1" => OptLevel::Basic,
            "extended" | "2" => OptLevel::Extended,
            "all" | "3" => OptLevel::All,
            _ => return None,
        })
    }
}

/// Intra-op threads of sessions that leave the number to ONNX Runtime (0: ONNX Runtime's own
/// choice, one per core). `nnzip batch --jobs J` sets cores / J so J jobs never oversubscribe.
static DEFAULT_INTRA_THREADS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Sets the intra-op threads of every later session whose options give none (0 resets).
pub fn set_default_intra_threads(n: usize) {
    DEFAULT_INTRA_THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// How to build a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Intra-op threads; `None` lets ONNX Runtime choose.
    pub intra_threads: Option<usize>,
    pub opt_level: OptLevel,
    /// Execution provider name (`cpu` when empty).
    pub provider: String,
    /// The provider's own options (`device_type=CPU` for OpenVINO), passed to ONNX Runtime as
    /// given; it refuses the ones it does not know when the session is made.
    pub provider_options: Vec<(String, String)>,
}

fn provider_dispatch(
    name: &str,
    options: &[(String, String)],
) -> Result<Option<(ort::ep::ExecutionProviderDispatch, &'static str)>, RuntimeError> {
    // The second item is the name `available_providers` reports.
    use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider as Configurable};
    fn with<E: Configurable>(mut e: E, options: &[(String, String)]) -> E {
        for (k, v) in options {
            e = e.with_arbitrary_config(k, v);
        }
        e
    }
    let name = name.to_ascii_lowercase();
    if matches!(name.as_str(), "" | "cpu") {
        if let Some((k, _)) = options.first() {
            return Err(RuntimeError::Ort(format!(
                "execution provider option '{k}' given for the CPU provider, which takes none"
            )));
        }
        return Ok(None);
    }
    Ok(Some(match name.as_str() {
        "cuda" => (with(ep::CUDA::default(), options).build(), "cuda"),
        "tensorrt" => (with(ep::TensorRT::default(), options).build(), "tensorrt"),
        "openvino" => (with(ep::OpenVINO::default(), options).build(), "openvino"),
        "xnnpack" => (with(ep::XNNPACK::default(), options).build(), "xnnpack"),
        _ => return Err(RuntimeError::UnknownProvider(name)),
    }))
    .map(|o| o.map(|(d, id)| (d.error_on_failure(), id)))
}

/// A session with the model's input and output descriptions.
pub struct Session {
    inner: ort::session::Session,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    /// The mapped file of a session made from a large model in memory.
    _file: Option<tempfile::TempDir>,
}

/// Models with more tensor data than this reach ONNX Runtime through a mapped temp file
/// ([`crate::modelfile`]) rather than as bytes.
pub const MAPPED_ABOVE: u64 = 8 << 20;

impl Session {
    fn builder(
        rt: &Runtime,
        opts: &SessionOptions,
    ) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
        let mut b = ort::session::Session::builder(&rt.env)?;
        let level = match opts.opt_level {
            OptLevel::Disable => GraphOptimizationLevel::Disable,
            OptLevel::Basic => GraphOptimizationLevel::Level1,
            OptLevel::Extended => GraphOptimizationLevel::Level2,
            OptLevel::All => GraphOptimizationLevel::Level3,
        };
        b = b
            .with_optimization_level(level)
            .map_err(|e| RuntimeError::Ort(e.to_string()))?;
        let default = DEFAULT_INTRA_THREADS.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(n) = opts.intra_threads.or((default > 0).then_some(default)) {
            b = b
                .with_intra_threads(n)
                .map_err(|e| RuntimeError::Ort(e.to_string()))?;
        }
        if let Some((ep, id)) = provider_dispatch(&opts.provider, &opts.provider_options)? {
            let available = rt.available_providers();
            if !available.contains(&id) {
                return Err(RuntimeError::ProviderUnavailable {
                    name: opts.provider.clone(),
                    lib: rt.lib.clone(),
                    available: available.join(", "),
                });
            }
            b = b.with_execution_providers([ep]).map_err(|e| {
                // ONNX Runtime logs why a provider refused its options but returns only that it
                // failed: name them, and where the reason is.
                let opts: Vec<String> = opts
                    .provider_options
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                RuntimeError::Ort(if opts.is_empty() {
                    e.to_string()
                } else {
                    format!(
                        "{e} (with options {}; ONNX Runtime's log, ORT_LOG=error, has the reason)",
                        opts.join(", ")
                    )
                })
            })?;
        }
        Ok(b)
    }

    /// A session on a model file (external data resolved by ONNX Runtime beside it).
    pub fn from_file(
        rt: &Runtime,
        path: &Path,
        model: &Model,
        opts: &SessionOptions,
    ) -> Result<Session, RuntimeError> {
        Session::from_file_io(rt, path, model.inputs(), model.outputs(), opts)
    }

    /// A session on a model file whose inputs and outputs are known.
    pub fn from_file_io(
        rt: &Runtime,
        path: &Path,
        inputs: Vec<ValueInfo>,
        outputs: Vec<ValueInfo>,
        opts: &SessionOptions,
    ) -> Result<Session, RuntimeError> {
        let inner = Session::builder(rt, opts)?.commit_from_file(path)?;
        Ok(Session {
            inner,
            inputs,
            outputs,
            _file: None,
        })
    }

    /// A session on a model held in memory: small models as bytes (every tensor inlined),
    /// large ones through a mapped temp file.
    pub fn from_model(
        rt: &Runtime,
        model: &Model,
        opts: &SessionOptions,
    ) -> Result<Session, RuntimeError> {
        if crate::modelfile::data_bytes(model) > MAPPED_ABOVE {
            let dir = tempfile::tempdir().map_err(|source| OnnxError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
            let path = crate::modelfile::write_mapped(model, dir.path())?;
            let mut s = Session::from_file(rt, &path, model, opts)?;
            s._file = Some(dir);
            return Ok(s);
        }
        let bytes = model.to_bytes()?;
        let inner = Session::builder(rt, opts)?.commit_from_memory(&bytes)?;
        Ok(Session {
            inner,
            inputs: model.inputs(),
            outputs: model.outputs(),
            _file: None,
        })
    }

    /// Converts named tensors to ORT values in the model's input order (done once per bench).
    pub fn prepare(
        &self,
        inputs: &[(String, Tensor)],
    ) -> Result<Vec<(String, DynValue)>, RuntimeError> {
        self.inputs
            .iter()
            .map(|vi| {
                let t = inputs
                    .iter()
                    .find(|(n, _)| n == &vi.name)
                    .map(|(_, t)| t)
                    .ok_or_else(|| RuntimeError::MissingInput(vi.name.clone()))?;
                Ok((vi.name.clone(), to_ort(t)?))
            })
            .collect()
    }

    /// Runs on prepared values; returns the outputs in the model's order.
    pub fn run_prepared(
        &mut self,
        values: &[(String, DynValue)],
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let feed: Vec<(&str, &DynValue)> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let out = self.inner.run(feed)?;
        let mut res = Vec::with_capacity(out.len());
        for (name, v) in out.iter() {
            res.push((name.to_string(), from_ort(&v)?));
        }
        Ok(res)
    }

    /// Runs on a feed built by hand (inputs and overridden initializers, by name).
    pub fn run_feed(
        &mut self,
        feed: &[(&str, &DynValue)],
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let out = self.inner.run(feed.to_vec())?;
        let mut res = Vec::with_capacity(out.len());
        for (name, v) in out.iter() {
            res.push((name.to_string(), from_ort(&v)?));
        }
        Ok(res)
    }

    /// Runs once, discarding the outputs (for timing).
    pub fn run_discard(&mut self, values: &[(String, DynValue)]) -> Result<(), RuntimeError> {
        let feed: Vec<(&str, &DynValue)> = values.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let out = self.inner.run(feed)?;
        drop(out);
        Ok(())
    }

    pub fn run(
        &mut self,
        inputs: &[(String, Tensor)],
    ) -> Result<Vec<(String, Tensor)>, RuntimeError> {
        let values = self.prepare(inputs)?;
        self.run_prepared(&values)
    }
}

/// A tensor as an ONNX Runtime value (for feeds built by hand, e.g. overridden initializers).
pub fn value_of(t: &Tensor) -> Result<DynValue, RuntimeError> {
    to_ort(t)
}

/// A float32 ONNX Runtime value from a slice, without an intermediate byte copy.
pub fn f32_value(dims: &[usize], v: &[f32]) -> Result<DynValue, RuntimeError> {
    let shape: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    Ok(ort::value::Tensor::from_array((shape, v.to_vec()))?.into_dyn())
}

fn shape_of(t: &Tensor) -> Vec<i64> {
    t.dims.iter().map(|&d| d as i64).collect()
}

fn to_ort(t: &Tensor) -> Result<DynValue, RuntimeError> {
    use crate::tensor::from_le;
    use ort::value::Tensor as OT;
    let shape = shape_of(t);
    let b = t.bytes();
    let v: DynValue = match t.dtype {
        DType::F32 => OT::from_array((shape, from_le::<f32>(b)))?.into_dyn(),
        DType::F64 => OT::from_array((shape, from_le::<f64>(b)))?.into_dyn(),
        DType::I64 => OT::from_array((shape, from_le::<i64>(b)))?.into_dyn(),
        DType::I32 => OT::from_array((shape, from_le::<i32>(b)))?.into_dyn(),
        DType::I16 => OT::from_array((shape, from_le::<i16>(b)))?.into_dyn(),
        DType::U16 => OT::from_array((shape, from_le::<u16>(b)))?.into_dyn(),
        DType::U32 => OT::from_array((shape, from_le::<u32>(b)))?.into_dyn(),
        DType::U64 => OT::from_array((shape, from_le::<u64>(b)))?.into_dyn(),
        DType::U8 => OT::from_array((shape, b.to_vec()))?.into_dyn(),
        DType::I8 => {
            OT::from_array((shape, b.iter().map(|&x| x as i8).collect::<Vec<i8>>()))?.into_dyn()
        }
        DType::Bool => {
            OT::from_array((shape, b.iter().map(|&x| x != 0).collect::<Vec<bool>>()))?.into_dyn()
        }
        other => return Err(RuntimeError::UnsupportedType(other)),
    };
    Ok(v)
}

fn from_ort(v: &ort::value::DynValueRef<'_>) -> Result<Tensor, RuntimeError> {
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(RuntimeError::Ort(format!("non-tensor output {other:?}"))),
    };
    macro_rules! get {
        ($ty:ty, $d:expr) => {{
            let (shape, data) = v.try_extract_tensor::<$ty>()?;
            let dims = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::from_bytes($d, dims, crate::tensor::le_bytes(data))?
        }};
    }
    Ok(match ty {
        TensorElementType::Float32 => get!(f32, DType::F32),
        TensorElementType::Float64 => get!(f64, DType::F64),
        TensorElementType::Int64 => get!(i64, DType::I64),
        TensorElementType::Int32 => get!(i32, DType::I32),
        TensorElementType::Int16 => get!(i16, DType::I16),
        TensorElementType::Uint16 => get!(u16, DType::U16),
        TensorElementType::Uint32 => get!(u32, DType::U32),
        TensorElementType::Uint64 => get!(u64, DType::U64),
        TensorElementType::Uint8 => get!(u8, DType::U8),
        TensorElementType::Int8 => get!(i8, DType::I8),
        TensorElementType::Bool => {
            let (shape, data) = v.try_extract_tensor::<bool>()?;
            let dims = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::from_bytes(DType::Bool, dims, data.iter().map(|&x| x as u8).collect())?
        }
        other => {
            return Err(RuntimeError::Ort(format!(
                "output type {other:?} is not supported"
            )))
        }
    })
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size in bytes (Linux `VmRSS`), if known.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn proc_status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
