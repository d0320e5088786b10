//! Where a fleet's models come from and its outputs go: a local folder, or (feature `s3`) an
//! object store (`s3://`, `gs://`, `az://`) through the `object_store` crate, configured by the
//! usual environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, ...).
//!
//! An output tree is a few small objects per item (claim, report) and the bitstream. Every
//! write is atomic: a temp file renamed into place locally, one PUT (or a completed multipart
//! upload) on an object store. Claims are created exclusively (a hard link locally, `If-None-Match`
//! on S3); they only avoid duplicate work, correctness never depends on them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::errors::ErrorClass;

/// What went wrong with a store, by what a scheduler should do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object or file does not exist.
    NotFound,
    /// Credentials or permissions refused (retrying will not help).
    Denied,
    /// A network or server failure; the same request may well succeed later.
    Transient,
    /// A malformed location, a scheme this build lacks, a local I/O failure.
    Other,
}

#[derive(Debug, Error)]
#[error("{what} {location}: {message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub what: &'static str,
    pub location: String,
    pub message: String,
}

impl StoreError {
    fn io(what: &'static str, location: &Path, e: &std::io::Error) -> StoreError {
        StoreError {
            kind: if e.kind() == std::io::ErrorKind::NotFound {
                StoreErrorKind::NotFound
            } else if e.kind() == std::io::ErrorKind::PermissionDenied {
                StoreErrorKind::Denied
            } else {
                StoreErrorKind::Other
            },
            what,
            location: location.display().to_string(),
            message: e.to_string(),
        }
    }

    /// The class when reading an input (a model, calibration data).
    pub fn input_class(&self) -> ErrorClass {
        match self.kind {
            StoreErrorKind::Transient => ErrorClass::Transient,
            _ => ErrorClass::BadInput,
        }
    }

    /// The class when writing outputs.
    pub fn output_class(&self) -> ErrorClass {
        match self.kind {
            StoreErrorKind::Transient => ErrorClass::Transient,
            _ => ErrorClass::Write,
        }
    }
}

/// How to reach object stores.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long one request is retried before it counts as a transient failure.
    pub retry_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retry_timeout: Duration::from_secs(180),
        }
    }
}

/// Whether `s` names an object-store location rather than a local path.
pub fn is_uri(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// A location as the runner reads it: a relative path taken against `base` (the manifest's
/// folder), URIs and absolute paths as they are.
pub fn resolve(location: &str, base: &Path) -> String {
    if is_uri(location) || Path::new(location).is_absolute() {
        location.to_string()
    } else {
        base.join(location).display().to_string()
    }
}

/// A version of an object, to replace exactly that one (a stale claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// The fleet's output tree.
pub enum Out {
    Local(PathBuf),
    #[cfg(feature = "s3")]
    Remote(remote::Remote),
}

/// An input fetched or found locally, with its digest.
pub struct Input {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    /// Holds a downloaded copy until the item is done.
    pub _tmp: Option<tempfile::TempDir>,
}

impl Out {
    /// The output tree at a path or URI (`file://` is a local path).
    pub fn open(location: &str, config: &StoreConfig) -> Result<Out, StoreError> {
        if let Some(p) = location.strip_prefix("file://") {
            return Ok(Out::Local(PathBuf::from(p)));
        }
        if !is_uri(location) {
            return Ok(Out::Local(PathBuf::from(location)));
        }
        #[cfg(feature = "s3")]
        {
            remote::Remote::open(location, config).map(Out::Remote)
        }
        #[cfg(not(feature = "s3"))]
        {
            let _ = config;
            Err(no_feature(location))
        }
    }

    /// Where the tree is, for messages.
    pub fn display(&self) -> String {
        match self {
            Out::Local(p) => p.display().to_string(),
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.display(),
        }
    }

    /// Creates the tree and checks, before any work, that it takes new files.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        match self {
            Out::Local(p) => {
                std::fs::create_dir_all(p)
                    .map_err(|e| StoreError::io("cannot create the output folder", p, &e))?;
                crate::fsutil::check_writable(&p.join(".nnzip-probe"))
                    .map_err(|e| StoreError::io("cannot write into", p, &e))
            }
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.check_writable(),
        }
    }

    /// A small file of the tree, `None` when it does not exist.
    pub fn read(&self, rel: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        match self {
            Out::Local(p) => {
                let path = p.join(rel);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some((
                        b,
                        Version {
                            e_tag: None,
                            version: None,
                        },
                    ))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::io("cannot read", &path, &e)),
                }
            }
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.read(rel),
        }
    }

    /// Writes a file of the tree atomically (readers see the old file or the new one).
    pub fn write(&self, rel: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Out::Local(p) => {
                let path = p.join(rel);
                if let Some(d) = path.parent() {
                    std::fs::create_dir_all(d)
                        .map_err(|e| StoreError::io("cannot create", d, &e))?;
                }
                crate::fsutil::write_atomic(&path, |w| w.write_all(&bytes))
                    .map_err(|e| StoreError::io("cannot write", &path, &e))
            }
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.write(rel, bytes),
        }
    }

    /// Creates a file only if it does not exist; `false` when it does.
    pub fn create_new(&self, rel: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        match self {
            Out::Local(p) => {
                let path = p.join(rel);
                let dir = path.parent().unwrap_or(p);
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::io("cannot create", dir, &e))?;
                // Written whole under a temp name, then linked: the link fails if the target
                // exists, so the claim appears complete or not at all.
                let mut tmp = tempfile::Builder::new()
                    .prefix(".nnzip-")
                    .suffix(".tmp")
                    .tempfile_in(dir)
                    .map_err(|e| StoreError::io("cannot write into", dir, &e))?;
                tmp.write_all(bytes)
                    .and_then(|()| tmp.as_file().sync_all())
                    .map_err(|e| StoreError::io("cannot write", tmp.path(), &e))?;
                match std::fs::hard_link(tmp.path(), &path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(StoreError::io("cannot create", &path, &e)),
                }
            }
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.create_new(rel, bytes),
        }
    }

    /// Replaces exactly `version` of a file (a stale claim); `false` when someone else changed
    /// or removed it first. Locally the file is removed and created anew, which two takers
    /// racing for one stale claim can both pass; the work is then done twice, harmlessly.
    pub fn replace(&self, rel: &str, version: &Version, bytes: &[u8]) -> Result<bool, StoreError> {
        match self {
            Out::Local(p) => {
                let path = p.join(rel);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("cannot remove", &path, &e)),
                }
                let _ = version;
                self.create_new(rel, bytes)
            }
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.replace(rel, version, bytes),
        }
    }

    /// Removes a file of the tree (no error when it is gone already).
    pub fn delete(&self, rel: &str) -> Result<(), StoreError> {
        match self {
            Out::Local(p) => {
                let path = p.join(rel);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StoreError::io("cannot remove", &path, &e)),
                }
            }
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.delete(rel),
        }
    }

    /// The item folders of the tree (ids).
    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        let mut v: Vec<String> = match self {
            Out::Local(p) => {
                let rd = match std::fs::read_dir(p) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(StoreError::io("cannot list", p, &e)),
                };
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| super::manifest::valid_id(n))
                    .collect()
            }
            #[cfg(feature = "s3")]
            Out::Remote(r) => r.ids()?,
        };
        v.sort();
        Ok(v)
    }

    /// Removes temp files a killed run left in an item's folder (local trees only; an object
    /// store has no partial objects).
    pub fn clean_item(&self, id: &str) {
        #[allow(irrefutable_let_patterns)]
        if let Out::Local(p) = self {
            let Ok(rd) = std::fs::read_dir(p.join(id)) else {
                return;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with(".nnzip-") && n.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(not(feature = "s3"))]
fn no_feature(location: &str) -> StoreError {
    StoreError {
        kind: StoreErrorKind::Other,
        what: "cannot open",
        location: location.to_string(),
        message: "this nnzip was built without object storage (cargo feature `s3`; see README)"
            .into(),
    }
}

/// A model or calibration file: a local path (relative ones against `base`) or a URI,
/// downloaded (streamed) into a temp folder; hashed on the way.
pub fn fetch(
    location: &str,
    base: &Path,
    config: &StoreConfig,
    what: &'static str,
) -> Result<Input, StoreError> {
    let local = location
        .strip_prefix("file://")
        .map(PathBuf::from)
        .or_else(|| (!is_uri(location)).then(|| base.join(location)));
    if let Some(path) = local {
        let f = std::fs::File::open(&path).map_err(|e| StoreError::io(what, &path, &e))?;
        let (sha256, bytes) =
            super::key::sha256_reader(f).map_err(|e| StoreError::io(what, &path, &e))?;
        return Ok(Input {
            path,
            sha256,
            bytes,
            _tmp: None,
        });
    }
    #[cfg(feature = "s3")]
    {
        remote::fetch(location, config, what)
    }
    #[cfg(not(feature = "s3"))]
    {
        let _ = (config, what);
        Err(no_feature(location))
    }
}

#[cfg(feature = "s3")]
mod remote {
    //! Object stores: one tokio runtime for the process's requests (the runner's threads
    //! block on it), one client per bucket and scheme.

    use std::io::Write;
    use std::sync::{Arc, OnceLock};

    use futures_util::StreamExt;
    use object_store::path::Path as ObjPath;
    use object_store::{
        ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
    };

    use super::{Input, StoreConfig, StoreError, StoreErrorKind, Version};

    /// Objects at least this large are uploaded in parts.
    const MULTIPART_ABOVE: usize = 32 << 20;

    fn runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
        static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
        .ok_or_else(|| StoreError {
            kind: StoreErrorKind::Other,
            what: "cannot start",
            location: "the object-store client".into(),
            message: "no tokio runtime".into(),
        })
    }

    fn classify(e: &object_store::Error) -> StoreErrorKind {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => StoreErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => StoreErrorKind::Denied,
            E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. } => StoreErrorKind::Other,
            _ => StoreErrorKind::Transient,
        }
    }

    fn err(what: &'static str, location: String, e: object_store::Error) -> StoreError {
        let mut message = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        StoreError {
            kind: classify(&e),
            what,
            location,
            message,
        }
    }

    /// A store and the path of `uri` in it.
    fn open_uri(
        uri: &str,
        config: &StoreConfig,
    ) -> Result<(Arc<dyn ObjectStore>, ObjPath), StoreError> {
        let bad = |message: String| StoreError {
            kind: StoreErrorKind::Other,
            what: "cannot open",
            location: uri.to_string(),
            message,
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("not a URI".into()))?;
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        let retry = object_store::RetryConfig {
            retry_timeout: config.retry_timeout,
            max_retries: 10,
            ..Default::default()
        };
        // object_store's defaults (5 s to connect, 30 s a request), shortened when the whole
        // retry budget is shorter, so `--store-retry` bounds how long a dead server holds a run.
        // Set key by key: replacing the client options would drop the environment's
        // (`AWS_ALLOW_HTTP`, proxies).
        use object_store::ClientConfigKey as C;
        let ms = |d: std::time::Duration| format!("{}ms", d.as_millis().max(1));
        let secs = std::time::Duration::from_secs;
        let timeouts = [
            (C::ConnectTimeout, ms(config.retry_timeout.min(secs(5)))),
            (C::Timeout, ms(config.retry_timeout.min(secs(30)))),
        ];
        let base = format!("{scheme}://{bucket}");
        let open_err = |e| err("cannot open", uri.to_string(), e);
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(&base)
                    .with_retry(retry);
                for (k, v) in &timeouts {
                    b = b.with_config(object_store::aws::AmazonS3ConfigKey::Client(*k), v);
                }
                Arc::new(b.build().map_err(open_err)?)
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(&base)
                    .with_retry(retry);
                for (k, v) in &timeouts {
                    b = b.with_config(object_store::gcp::GoogleConfigKey::Client(*k), v);
                }
                Arc::new(b.build().map_err(open_err)?)
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(&base)
                    .with_retry(retry);
                for (k, v) in &timeouts {
                    b = b.with_config(object_store::azure::AzureConfigKey::Client(*k), v);
                }
                Arc::new(b.build().map_err(open_err)?)
            }
            other => {
                return Err(bad(format!(
                    "'{other}://' is not one of s3://, gs://, az://, file://"
                )))
            }
        };
        let path = ObjPath::parse(path.trim_end_matches('/')).map_err(|e| bad(e.to_string()))?;
        Ok((store, path))
    }

    pub struct Remote {
        uri: String,
        store: Arc<dyn ObjectStore>,
        prefix: ObjPath,
    }

    impl Remote {
        pub fn open(uri: &str, config: &StoreConfig) -> Result<Remote, StoreError> {
            let (store, prefix) = open_uri(uri, config)?;
            Ok(Remote {
                uri: uri.trim_end_matches('/').to_string(),
                store,
                prefix,
            })
        }

        pub fn display(&self) -> String {
            self.uri.clone()
        }

        fn path(&self, rel: &str) -> ObjPath {
            rel.split('/')
                .fold(self.prefix.clone(), |p, part| p.join(part))
        }

        fn loc(&self, rel: &str) -> String {
            format!("{}/{rel}", self.uri)
        }

        pub fn check_writable(&self) -> Result<(), StoreError> {
            let probe = format!(".nnzip-probe-{}", std::process::id());
            self.write(&probe, b"probe".to_vec())?;
            self.delete(&probe)
        }

        pub fn read(&self, rel: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
            let p = self.path(rel);
            let r = runtime()?.block_on(async {
                let g = self.store.get(&p).await?;
                let meta = g.meta.clone();
                Ok::<_, object_store::Error>((g.bytes().await?, meta))
            });
            match r {
                Ok((b, meta)) => Ok(Some((
                    b.to_vec(),
                    Version {
                        e_tag: meta.e_tag,
                        version: meta.version,
                    },
                ))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(err("cannot read", self.loc(rel), e)),
            }
        }

        pub fn write(&self, rel: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
            let p = self.path(rel);
            let bytes = bytes::Bytes::from(bytes);
            runtime()?
                .block_on(async {
                    if bytes.len() < MULTIPART_ABOVE {
                        self.store.put(&p, PutPayload::from(bytes)).await.map(drop)
                    } else {
                        // Parts are slices of the one buffer: nothing is copied.
                        let upload = self.store.put_multipart(&p).await?;
                        let mut w =
                            object_store::WriteMultipart::new_with_chunk_size(upload, 16 << 20);
                        w.put(bytes);
                        w.finish().await.map(drop)
                    }
                })
                .map_err(|e| err("cannot write", self.loc(rel), e))
        }

        fn put_mode(&self, rel: &str, bytes: &[u8], mode: PutMode) -> Result<bool, StoreError> {
            let p = self.path(rel);
            let payload = PutPayload::from(bytes.to_vec());
            match runtime()?.block_on(self.store.put_opts(&p, payload, PutOptions::from(mode))) {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(err("cannot create", self.loc(rel), e)),
            }
        }

        pub fn create_new(&self, rel: &str, bytes: &[u8]) -> Result<bool, StoreError> {
            self.put_mode(rel, bytes, PutMode::Create)
        }

        pub fn replace(
            &self,
            rel: &str,
            version: &Version,
            bytes: &[u8],
        ) -> Result<bool, StoreError> {
            self.put_mode(
                rel,
                bytes,
                PutMode::Update(UpdateVersion {
                    e_tag: version.e_tag.clone(),
                    version: version.version.clone(),
                }),
            )
        }

        pub fn delete(&self, rel: &str) -> Result<(), StoreError> {
            let p = self.path(rel);
            match runtime()?.block_on(self.store.delete(&p)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(err("cannot remove", self.loc(rel), e)),
            }
        }

        pub fn ids(&self) -> Result<Vec<String>, StoreError> {
            let l = runtime()?
                .block_on(self.store.list_with_delimiter(Some(&self.prefix)))
                .map_err(|e| err("cannot list", self.uri.clone(), e))?;
            Ok(l.common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .filter(|n| super::super::manifest::valid_id(n))
                .collect())
        }
    }

    /// Downloads `uri` into a temp folder, chunk by chunk, hashing as it goes.
    pub fn fetch(uri: &str, config: &StoreConfig, what: &'static str) -> Result<Input, StoreError> {
        use sha2::Digest;
        let (store, path) = open_uri(uri, config)?;
        let local_err = |e: std::io::Error| StoreError {
            kind: StoreErrorKind::Other,
            what,
            location: uri.to_string(),
            message: format!("local copy: {e}"),
        };
        let dir = tempfile::Builder::new()
            .prefix("nnzip-fetch-")
            .tempdir()
            .map_err(local_err)?;
        let name = path.filename().unwrap_or("object").to_string();
        let local = dir.path().join(&name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&local).map_err(local_err)?);
        let mut h = sha2::Sha256::new();
        let mut n = 0u64;
        runtime()?
            .block_on(async {
                let mut s = store.get(&path).await?.into_stream();
                while let Some(chunk) = s.next().await {
                    let chunk = chunk?;
                    h.update(&chunk);
                    n += chunk.len() as u64;
                    file.write_all(&chunk)
                        .map_err(|e| object_store::Error::Generic {
                            store: "local copy",
                            source: Box::new(e),
                        })?;
                }
                Ok::<_, object_store::Error>(())
            })
            .map_err(|e| err(what, uri.to_string(), e))?;
        file.flush().map_err(local_err)?;
        Ok(Input {
            path: local,
            sha256: super::super::key::hex(&h.finalize()),
            bytes: n,
            _tmp: Some(dir),
        })
    }
}
