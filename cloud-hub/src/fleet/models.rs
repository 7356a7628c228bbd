//! The model warehouse (智慧中枢): detection models registered once at the hub, with their ONNX
//! file and self-test image, that rollouts assign to devices and agents download.
//!
//! On disk, under `{data_dir}/models/{name}/{version}/`:
//! - `manifest.json`: the [`ModelManifest`] with the record's state, who registered it and when,
//!   and when it was retired ([`StoredModel`]);
//! - `model.onnx` and `selftest.img`: present only once uploaded and checked against the
//!   manifest's size and sha256 (streamed to a temporary file in the same folder while hashed,
//!   renamed into place only when they match).
//!
//! Every write is atomic (temporary file, fsync, rename, fsync of the folder) and durable before
//! the call returns. The index in memory is rebuilt by scanning the folders at open.
//!
//! States: `awaiting_files` (registered, files not both uploaded), `ready`, `retired` (files
//! kept: devices may still run it or roll back to it, but it cannot be newly assigned; see
//! [`Warehouse::assignable`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use csb_wire::model::{check_ident, ModelManifest, MAX_IMAGE_BYTES, MAX_MODEL_BYTES};
use csb_wire::sign::hex_lower;
use futures_util::{Stream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// Uploads that may stream at once; more get [`WarehouseError::Busy`].
pub const MAX_CONCURRENT_UPLOADS: usize = 4;

/// Where a model stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Registered; the model file and the self-test image are not both uploaded yet.
    AwaitingFiles,
    /// Both files uploaded and checked: it may be assigned to devices.
    Ready,
    /// Withdrawn: not assigned any more; its files are kept (devices may still run it).
    Retired,
}

/// One of a model's two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// The ONNX file (`sha256`, `bytes`).
    Model,
    /// The self-test image (`selftest.image_sha256`, `selftest.image_bytes`).
    Selftest,
}

impl FileKind {
    pub const ALL: [FileKind; 2] = [FileKind::Model, FileKind::Selftest];

    /// The file's name in the version's folder.
    pub fn file_name(self) -> &'static str {
        match self {
            FileKind::Model => "model.onnx",
            FileKind::Selftest => "selftest.img",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Model => "model",
            FileKind::Selftest => "selftest",
        }
    }

    /// `(sha256, bytes)` the manifest declares for this file.
    pub fn expected(self, m: &ModelManifest) -> (&str, u64) {
        match self {
            FileKind::Model => (&m.sha256, m.bytes),
            FileKind::Selftest => (&m.selftest.image_sha256, m.selftest.image_bytes),
        }
    }

    /// The manifest fields naming this file's hash and size.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            FileKind::Model => ("sha256", "bytes"),
            FileKind::Selftest => ("selftest.image_sha256", "selftest.image_bytes"),
        }
    }

    fn max_bytes(self) -> u64 {
        match self {
            FileKind::Model => MAX_MODEL_BYTES,
            FileKind::Selftest => MAX_IMAGE_BYTES,
        }
    }
}

impl std::str::FromStr for FileKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "model" => Ok(FileKind::Model),
            "selftest" => Ok(FileKind::Selftest),
            other => Err(format!(
                "file kind must be `model` or `selftest`, not `{}`",
                other.chars().take(64).collect::<String>()
            )),
        }
    }
}

/// Which files of a model are uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FilesPresent {
    pub model: bool,
    pub selftest: bool,
}

impl FilesPresent {
    fn has(&self, kind: FileKind) -> bool {
        match kind {
            FileKind::Model => self.model,
            FileKind::Selftest => self.selftest,
        }
    }
    fn set(&mut self, kind: FileKind) {
        match kind {
            FileKind::Model => self.model = true,
            FileKind::Selftest => self.selftest = true,
        }
    }
}

/// A registered model as the warehouse keeps it (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StoredModel {
    pub manifest: ModelManifest,
    pub state: ModelState,
    /// When it was registered (Unix ms).
    pub registered_ms: i64,
    /// The token name that registered it (`anonymous` with auth off).
    pub registered_by: String,
    /// When it was retired (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<i64>,
    /// Who retired it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_by: Option<String>,
    /// Which files are uploaded (rebuilt from the folder at open, not trusted from the file).
    #[serde(default)]
    pub files: FilesPresent,
}

impl StoredModel {
    fn derive_state(&mut self) {
        self.state = if self.retired_ms.is_some() {
            ModelState::Retired
        } else if self.files.model && self.files.selftest {
            ModelState::Ready
        } else {
            ModelState::AwaitingFiles
        };
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new model version.
    Created,
    /// The same manifest was already registered: nothing changed.
    Unchanged,
}

#[derive(Debug, Error)]
pub enum WarehouseError {
    /// A path's name, version or kind is not valid.
    #[error("{0}")]
    BadPath(String),
    /// The manifest failed its checks (the field is named).
    #[error("manifest {0}")]
    Invalid(csb_wire::payload::PayloadError),
    #[error("no model {name}@{version} is registered")]
    Unknown { name: String, version: String },
    /// The same name and version is registered with another manifest.
    #[error("{key} is already registered with a different manifest (first difference: `{field}`); register a new version instead")]
    Conflict { key: String, field: String },
    #[error("{key} is retired: {what}")]
    Retired { key: String, what: &'static str },
    #[error("{key} is awaiting its files (missing: {missing}): upload them first")]
    AwaitingFiles { key: String, missing: String },
    #[error("{key}: {file} is {what} than the {declared} bytes the manifest declares (`{field}`)")]
    TooLarge {
        key: String,
        file: &'static str,
        what: &'static str,
        declared: u64,
        field: &'static str,
    },
    #[error("{key}: {file} does not match the manifest: `{field}` is {expected}, the upload's is {got}; nothing was kept")]
    Mismatch {
        key: String,
        file: &'static str,
        field: &'static str,
        expected: String,
        got: String,
    },
    #[error("{key}: {file} is not uploaded")]
    NoFile { key: String, file: &'static str },
    #[error("{0} uploads are already running: try again shortly")]
    Busy(usize),
    #[error("{key}: the upload of {file} broke off: {reason}")]
    Body {
        key: String,
        file: &'static str,
        reason: String,
    },
    #[error("model warehouse: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model warehouse: {path} is not a valid record: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WarehouseError + '_ {
    move |source| WarehouseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

type Key = (String, String);

/// The model warehouse: see the module documentation.
pub struct Warehouse {
    dir: PathBuf,
    index: RwLock<BTreeMap<Key, StoredModel>>,
    /// Held while a record changes on disk and in the index (registrations, retirements, an
    /// upload's final rename), so they apply in one order.
    write: Mutex<()>,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
}

/// The name and version of a path, checked as the manifest checks them.
pub fn check_key(name: &str, version: &str) -> Result<(), WarehouseError> {
    check_ident("name", name, 64)
        .and_then(|_| check_ident("version", version, 32))
        .map_err(|e| WarehouseError::BadPath(format!("path {e}")))
}

impl Warehouse {
    /// Opens (creating) `{data_dir}/models` and indexes every version folder in it. Leftover
    /// temporary files of uploads cut short are removed.
    pub fn open(data_dir: &Path) -> Result<Self, WarehouseError> {
        Self::open_with(data_dir, MAX_CONCURRENT_UPLOADS)
    }

    pub fn open_with(data_dir: &Path, max_uploads: usize) -> Result<Self, WarehouseError> {
        let dir = data_dir.join("models");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut index = BTreeMap::new();
        for name in read_dir_names(&dir)? {
            let ndir = dir.join(&name);
            for version in read_dir_names(&ndir)? {
                let vdir = ndir.join(&version);
                let file = vdir.join("manifest.json");
                if !file.is_file() {
                    continue;
                }
                let text = std::fs::read(&file).map_err(io(&file))?;
                let mut rec: StoredModel =
                    serde_json::from_slice(&text).map_err(|e| WarehouseError::Corrupt {
                        path: file.clone(),
                        reason: e.to_string(),
                    })?;
                if rec.manifest.name != name || rec.manifest.version != version {
                    return Err(WarehouseError::Corrupt {
                        path: file,
                        reason: format!("it describes {}", rec.manifest.key()),
                    });
                }
                for entry in std::fs::read_dir(&vdir).map_err(io(&vdir))?.flatten() {
                    if entry.file_name().to_string_lossy().ends_with(".tmp") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
                rec.files = FilesPresent::default();
                for kind in FileKind::ALL {
                    let (_, bytes) = kind.expected(&rec.manifest);
                    let p = vdir.join(kind.file_name());
                    if std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() == bytes) {
                        rec.files.set(kind);
                    }
                }
                rec.derive_state();
                index.insert((name.clone(), version), rec);
            }
        }
        Ok(Warehouse {
            dir,
            index: RwLock::new(index),
            write: Mutex::new(()),
            uploads: Arc::new(Semaphore::new(max_uploads)),
            max_uploads,
        })
    }

    fn version_dir(&self, name: &str, version: &str) -> PathBuf {
        self.dir.join(name).join(version)
    }

    /// The path of an uploaded file, with its record (for downloads).
    pub fn file(
        &self,
        name: &str,
        version: &str,
        kind: FileKind,
    ) -> Result<(PathBuf, StoredModel), WarehouseError> {
        let rec = self.get(name, version)?;
        if !rec.files.has(kind) {
            return Err(WarehouseError::NoFile {
                key: rec.manifest.key(),
                file: kind.file_name(),
            });
        }
        Ok((self.version_dir(name, version).join(kind.file_name()), rec))
    }

    /// Every registered model version, by name then version.
    pub fn list(&self) -> Vec<StoredModel> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str, version: &str) -> Result<StoredModel, WarehouseError> {
        check_key(name, version)?;
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name.to_string(), version.to_string()))
            .cloned()
            .ok_or_else(|| WarehouseError::Unknown {
                name: name.into(),
                version: version.into(),
            })
    }

    /// The manifest of a model that may be newly assigned to devices: `ready` ones only.
    pub fn assignable(&self, name: &str, version: &str) -> Result<ModelManifest, WarehouseError> {
        let rec = self.get(name, version)?;
        match rec.state {
            ModelState::Ready => Ok(rec.manifest),
            ModelState::Retired => Err(WarehouseError::Retired {
                key: rec.manifest.key(),
                what: "it cannot be newly assigned",
            }),
            ModelState::AwaitingFiles => {
                let missing: Vec<&str> = FileKind::ALL
                    .into_iter()
                    .filter(|k| !rec.files.has(*k))
                    .map(FileKind::as_str)
                    .collect();
                Err(WarehouseError::AwaitingFiles {
                    key: rec.manifest.key(),
                    missing: missing.join(", "),
                })
            }
        }
    }

    /// Registers `manifest` (checked first). The same manifest again changes nothing; another
    /// one under the same name and version is a conflict. Durable before it returns.
    pub fn register(
        &self,
        manifest: ModelManifest,
        by: &str,
        now_ms: i64,
    ) -> Result<(Registered, StoredModel), WarehouseError> {
        manifest.check().map_err(WarehouseError::Invalid)?;
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let key = (manifest.name.clone(), manifest.version.clone());
        if let Some(old) = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if old.manifest == manifest {
                return Ok((Registered::Unchanged, old.clone()));
            }
            return Err(WarehouseError::Conflict {
                key: manifest.key(),
                field: first_difference(&old.manifest, &manifest),
            });
        }
        let mut rec = StoredModel {
            manifest,
            state: ModelState::AwaitingFiles,
            registered_ms: now_ms,
            registered_by: by.to_string(),
            retired_ms: None,
            retired_by: None,
            files: FilesPresent::default(),
        };
        rec.derive_state();
        let vdir = self.version_dir(&key.0, &key.1);
        std::fs::create_dir_all(&vdir).map_err(io(&vdir))?;
        sync_dir(&self.dir.join(&key.0));
        sync_dir(&self.dir);
        self.save(&vdir, &rec)?;
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, rec.clone());
        Ok((Registered::Created, rec))
    }

    /// Retires a model: it is not assigned any more, its files stay. Retiring twice is fine.
    pub fn retire(
        &self,
        name: &str,
        version: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<StoredModel, WarehouseError> {
        check_key(name, version)?;
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec = self.get(name, version)?;
        if rec.retired_ms.is_some() {
            return Ok(rec);
        }
        rec.retired_ms = Some(now_ms);
        rec.retired_by = Some(by.to_string());
        rec.derive_state();
        self.save(&self.version_dir(name, version), &rec)?;
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.into(), version.into()), rec.clone());
        Ok(rec)
    }

    fn save(&self, vdir: &Path, rec: &StoredModel) -> Result<(), WarehouseError> {
        let json = serde_json::to_vec_pretty(rec).expect("a record serialises");
        let path = vdir.join("manifest.json");
        let tmp = vdir.join(format!(".manifest.json.{}.tmp", ulid::Ulid::new()));
        replace(&path, &tmp, &json)
    }

    /// The declared size of `kind` of a registered, not retired model, before its body is read
    /// (a `Content-Length` over it can be refused at once).
    pub fn declared(
        &self,
        name: &str,
        version: &str,
        kind: FileKind,
    ) -> Result<u64, WarehouseError> {
        let rec = self.get(name, version)?;
        if rec.state == ModelState::Retired {
            return Err(WarehouseError::Retired {
                key: rec.manifest.key(),
                what: "its files cannot be replaced",
            });
        }
        Ok(kind.expected(&rec.manifest).1)
    }

    /// Streams one file of a registered model into place: written to a temporary file in the
    /// version's folder while hashed, refused as soon as it exceeds the declared size, checked
    /// against the manifest's size and sha256, synced, renamed. Nothing is kept on any failure.
    /// Returns the record after the upload (`ready` once both files are in).
    pub async fn upload<S, B, E>(
        &self,
        name: &str,
        version: &str,
        kind: FileKind,
        body: S,
    ) -> Result<StoredModel, WarehouseError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let Ok(_slot) = self.uploads.clone().try_acquire_owned() else {
            return Err(WarehouseError::Busy(self.max_uploads));
        };
        let declared = self.declared(name, version, kind)?;
        let rec = self.get(name, version)?;
        let key = rec.manifest.key();
        let (want_sha, _) = kind.expected(&rec.manifest);
        let (sha_field, bytes_field) = kind.fields();
        let vdir = self.version_dir(name, version);
        let tmp = vdir.join(format!(".{}.{}.tmp", kind.file_name(), ulid::Ulid::new()));
        let result = stream_to(&tmp, body, declared.min(kind.max_bytes()), &key, kind).await;
        let (len, sha) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let mismatch = if len != declared {
            Some((bytes_field, declared.to_string(), len.to_string()))
        } else if sha != want_sha {
            Some((sha_field, want_sha.to_string(), sha))
        } else {
            None
        };
        if let Some((field, expected, got)) = mismatch {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(WarehouseError::Mismatch {
                key,
                file: kind.file_name(),
                field,
                expected,
                got,
            });
        }
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        // Retired meanwhile: keep what is there.
        let mut rec = self.get(name, version)?;
        if rec.state == ModelState::Retired {
            let _ = std::fs::remove_file(&tmp);
            return Err(WarehouseError::Retired {
                key,
                what: "its files cannot be replaced",
            });
        }
        let path = vdir.join(kind.file_name());
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&vdir);
        rec.files.set(kind);
        rec.derive_state();
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.into(), version.into()), rec.clone());
        Ok(rec)
    }
}

/// Writes `body` to `tmp` (at most `max` bytes), synced; returns its length and sha256.
async fn stream_to<S, B, E>(
    tmp: &Path,
    mut body: S,
    max: u64,
    key: &str,
    kind: FileKind,
) -> Result<(u64, String), WarehouseError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let mut f = tokio::fs::File::create(tmp).await.map_err(io(tmp))?;
    let mut hash = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| WarehouseError::Body {
            key: key.to_string(),
            file: kind.file_name(),
            reason: e.to_string(),
        })?;
        let chunk = chunk.as_ref();
        len += chunk.len() as u64;
        if len > max {
            return Err(WarehouseError::TooLarge {
                key: key.to_string(),
                file: kind.file_name(),
                what: "longer",
                declared: max,
                field: kind.fields().1,
            });
        }
        hash.update(chunk);
        f.write_all(chunk).await.map_err(io(tmp))?;
    }
    f.flush().await.map_err(io(tmp))?;
    f.sync_all().await.map_err(io(tmp))?;
    Ok((len, hex_lower(&hash.finalize())))
}

/// The first top-level field in which two manifests differ.
fn first_difference(a: &ModelManifest, b: &ModelManifest) -> String {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return "manifest".into();
    };
    a.keys()
        .chain(b.keys())
        .find(|k| a.get(*k) != b.get(*k))
        .cloned()
        .unwrap_or_else(|| "manifest".into())
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, WarehouseError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && check_ident("x", &name, 64).is_ok() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Replaces `path` with `bytes` atomically and durably (temporary file, fsync, rename, fsync of
/// the folder).
fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), WarehouseError> {
    crate::ingest::devices::replace_private(path, tmp, bytes).map_err(|e| WarehouseError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csb_wire::model::{
        ChannelOrder, Decoder, Expected, InputSpec, Layout, OutputSpec, PackageSelfTest,
    };

    fn sha(b: &[u8]) -> String {
        hex_lower(&Sha256::digest(b))
    }

    pub(crate) fn manifest(model: &[u8], image: &[u8]) -> ModelManifest {
        ModelManifest {
            name: "yolox_nano".into(),
            version: "1.0.0".into(),
            decoder: Decoder::Yolox,
            labels: vec!["person".into(), "bus".into()],
            input: InputSpec {
                name: "images".into(),
                width: 416,
                height: 416,
                layout: Layout::Nchw,
                channel_order: ChannelOrder::Bgr,
                scale: 1.0,
                pad_value: 114.0,
            },
            output: OutputSpec {
                name: "output".into(),
                strides: vec![8, 16, 32],
                nms_iou: 0.45,
                scale: None,
                offset: None,
            },
            sha256: sha(model),
            bytes: model.len() as u64,
            license: None,
            origin: None,
            selftest: PackageSelfTest {
                image_sha256: sha(image),
                image_bytes: image.len() as u64,
                expect: vec![Expected {
                    label: "bus".into(),
                    min_score: 0.5,
                    bbox: [1.0, 2.0, 3.0, 4.0],
                    min_iou: 0.5,
                }],
            },
        }
    }

    fn chunks(b: &[u8]) -> impl Stream<Item = Result<Vec<u8>, std::io::Error>> + Unpin {
        futures_util::stream::iter(
            b.chunks(7)
                .map(|c| Ok(c.to_vec()))
                .collect::<Vec<Result<Vec<u8>, std::io::Error>>>(),
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn register_upload_ready_retire_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (model, image) = (b"onnx bytes here".to_vec(), b"\xFF\xD8\xFFjpeg".to_vec());
        let m = manifest(&model, &image);
        let w = Warehouse::open(dir.path()).unwrap();
        let (r, rec) = w.register(m.clone(), "op", 1).unwrap();
        assert_eq!(
            (r, rec.state),
            (Registered::Created, ModelState::AwaitingFiles)
        );
        // The same manifest: idempotent; another one: a conflict naming the field.
        assert_eq!(
            w.register(m.clone(), "op", 2).unwrap().0,
            Registered::Unchanged
        );
        let mut other = m.clone();
        other.labels.push("car".into());
        match w.register(other, "op", 3) {
            Err(WarehouseError::Conflict { field, .. }) => assert_eq!(field, "labels"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            w.assignable("yolox_nano", "1.0.0"),
            Err(WarehouseError::AwaitingFiles { .. })
        ));
        let rt = rt();
        let rec = rt
            .block_on(w.upload("yolox_nano", "1.0.0", FileKind::Model, chunks(&model)))
            .unwrap();
        assert_eq!(rec.state, ModelState::AwaitingFiles);
        match w.assignable("yolox_nano", "1.0.0") {
            Err(WarehouseError::AwaitingFiles { missing, .. }) => assert_eq!(missing, "selftest"),
            other => panic!("{other:?}"),
        }
        let rec = rt
            .block_on(w.upload("yolox_nano", "1.0.0", FileKind::Selftest, chunks(&image)))
            .unwrap();
        assert_eq!(rec.state, ModelState::Ready);
        assert_eq!(w.assignable("yolox_nano", "1.0.0").unwrap(), m);
        let (p, _) = w.file("yolox_nano", "1.0.0", FileKind::Model).unwrap();
        assert_eq!(std::fs::read(p).unwrap(), model);

        // Reopened: the same index.
        drop(w);
        let w = Warehouse::open(dir.path()).unwrap();
        assert_eq!(
            w.get("yolox_nano", "1.0.0").unwrap().state,
            ModelState::Ready
        );
        let rec = w.retire("yolox_nano", "1.0.0", "op", 9).unwrap();
        assert_eq!((rec.state, rec.retired_ms), (ModelState::Retired, Some(9)));
        assert!(matches!(
            w.assignable("yolox_nano", "1.0.0"),
            Err(WarehouseError::Retired { .. })
        ));
        // Files kept and still served.
        assert!(w.file("yolox_nano", "1.0.0", FileKind::Model).is_ok());
        drop(w);
        let w = Warehouse::open(dir.path()).unwrap();
        assert_eq!(w.list().len(), 1);
        assert_eq!(w.list()[0].state, ModelState::Retired);
        assert!(matches!(
            w.assignable("yolox_nano", "9"),
            Err(WarehouseError::Unknown { .. })
        ));
        assert!(matches!(w.get("..", "1"), Err(WarehouseError::BadPath(_))));
    }

    #[test]
    fn wrong_uploads_are_refused_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (model, image) = (b"0123456789".to_vec(), b"img".to_vec());
        let w = Warehouse::open(dir.path()).unwrap();
        w.register(manifest(&model, &image), "op", 1).unwrap();
        let rt = rt();
        let up =
            |b: &[u8]| rt.block_on(w.upload("yolox_nano", "1.0.0", FileKind::Model, chunks(b)));
        match up(b"0123456788") {
            Err(WarehouseError::Mismatch {
                field,
                expected,
                got,
                ..
            }) => {
                assert_eq!(field, "sha256");
                assert_eq!(expected, sha(&model));
                assert_eq!(got, sha(b"0123456788"));
            }
            other => panic!("{other:?}"),
        }
        match up(b"012345678") {
            Err(WarehouseError::Mismatch { field, .. }) => assert_eq!(field, "bytes"),
            other => panic!("{other:?}"),
        }
        match up(b"0123456789 and more") {
            Err(WarehouseError::TooLarge { declared, .. }) => assert_eq!(declared, 10),
            other => panic!("{other:?}"),
        }
        let left: Vec<_> = std::fs::read_dir(dir.path().join("models/yolox_nano/1.0.0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["manifest.json".to_string()]);
        assert!(!w.get("yolox_nano", "1.0.0").unwrap().files.model);
        // Unknown model; an invalid manifest names its field.
        assert!(matches!(
            rt.block_on(w.upload("nope", "1", FileKind::Model, chunks(b"x"))),
            Err(WarehouseError::Unknown { .. })
        ));
        let mut bad = manifest(&model, &image);
        bad.sha256 = "xyz".into();
        match w.register(bad, "op", 1) {
            Err(e @ WarehouseError::Invalid(_)) => assert!(e.to_string().contains("sha256"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn concurrent_uploads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let w = Warehouse::open_with(dir.path(), 1).unwrap();
        w.register(manifest(b"abc", b"img"), "op", 1).unwrap();
        let rt = rt();
        rt.block_on(async {
            // A body that never ends holds the only slot.
            let pending = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
            let first = w.upload("yolox_nano", "1.0.0", FileKind::Model, pending);
            tokio::pin!(first);
            let waited = tokio::time::timeout(std::time::Duration::from_millis(20), &mut first);
            assert!(waited.await.is_err(), "the endless upload finished");
            let second = w
                .upload("yolox_nano", "1.0.0", FileKind::Selftest, chunks(b"img"))
                .await;
            assert!(matches!(second, Err(WarehouseError::Busy(1))), "{second:?}");
        });
    }
}
