//! The agent's local model store: model versions downloaded from the hub's warehouse, each in
//! its own folder, ready for [`crate::model::Detector::load`] and the self-test.
//!
//! Layout under the store's folder (the caller picks it, e.g. `<outbox dir>/models`):
//!
//! ```text
//! store.json                      which version is in service (`current`) and the last good one
//! {name}/{version}/model.onnx     the ONNX file, sha256 and size checked against the manifest
//! {name}/{version}/selftest.img   the self-test image, checked alike
//! {name}/{version}/labels.txt     the labels, one a line
//! {name}/{version}/manifest.toml  the agent's local manifest format, one model named `name`
//! {name}/{version}/complete       written last (after everything is synced): the hub manifest
//! ```
//!
//! Downloads ([`ModelStore::fetch`]) go to `{file}.part` and resume from its length with a
//! `Range` request (and `If-Range` with the file's ETag); a 200 instead of a 206 starts over.
//! The whole file is hashed at the end; a mismatch deletes the part file (and a resumed one is
//! fetched once more from zero). Network errors are retried a few times with backoff, each try
//! resuming. Names and versions are checked (`check_ident`) before any path is built from them,
//! and no file grows past the manifest's size, so a broken or hostile hub cannot write outside
//! the store nor fill the disk.
//!
//! `fetch` blocks (it runs its own small async runtime): call it from a plain thread, not
//! from async code.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csb_wire::model::{check_ident, ModelManifest};
use csb_wire::sign::{
    hex_lower, sign_download, SigningKey, DOWNLOAD_DEVICE_HEADER, DOWNLOAD_TIMESTAMP_HEADER,
    UPLOAD_SIGNATURE_HEADER,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::manifest::{Manifest, ModelEntry, SelfTest};

/// The ONNX file's name in a version's folder.
pub const MODEL_FILE: &str = "model.onnx";
/// The self-test image's name (GStreamer finds its format from the content).
pub const SELFTEST_FILE: &str = "selftest.img";
pub const LABELS_FILE: &str = "labels.txt";
pub const MANIFEST_FILE: &str = "manifest.toml";
/// Written last: the version's folder is complete and checked.
pub const COMPLETE_FILE: &str = "complete";
const STATE_FILE: &str = "store.json";

/// How a download proves who asks.
#[derive(Clone)]
pub enum DownloadAuth {
    /// Nothing (a hub with `[auth] http = "off"`).
    None,
    /// The device signs each request with its key (`csb_wire::sign::sign_download`).
    Device {
        site: String,
        device: String,
        key: SigningKey,
    },
    /// An API bearer token (viewer or higher): tools and tests.
    Token(String),
}

impl std::fmt::Debug for DownloadAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownloadAuth::None => write!(f, "None"),
            DownloadAuth::Device { site, device, .. } => write!(f, "Device({site}/{device})"),
            DownloadAuth::Token(_) => write!(f, "Token(…)"),
        }
    }
}

/// Timeouts and retries of [`ModelStore::fetch`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub connect_timeout: Duration,
    /// A download that receives nothing for this long is cut and resumed.
    pub stall_timeout: Duration,
    /// Tries per file after the first, each resuming where the last stopped.
    pub retries: u32,
    /// First backoff between tries (doubled each time, at most 8 s).
    pub backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            retries: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

/// What one [`ModelStore::fetch_report`] call did.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// Bytes received over the network, both files together (less than their size when a
    /// download resumed, 0 when the version was already complete).
    pub received: u64,
    /// HTTP requests made (each resume is one more).
    pub requests: u32,
    /// Downloads that restarted from zero after a checksum mismatch of a resumed file.
    pub restarts: u32,
}

/// Progress of a fetch: bytes on disk of both files together (resumed ones included), and
/// their total size.
struct Progress<'a> {
    base: u64,
    total: u64,
    report: FetchReport,
    callback: &'a mut (dyn FnMut(u64, u64) + Send),
}

impl Progress<'_> {
    fn tell(&mut self, done_in_file: u64) {
        (self.callback)(self.base + done_in_file, self.total);
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("model manifest {key}: {reason}")]
    Manifest { key: String, reason: String },
    #[error("model store: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GET {url}: the hub answered {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("GET {url}: {reason} ({attempts} tries)")]
    Network {
        url: String,
        attempts: u32,
        reason: String,
    },
    #[error("{file}: sha256 is {got}, the manifest says {expected}; the download was deleted")]
    Checksum {
        file: PathBuf,
        expected: String,
        got: String,
    },
    #[error("GET {url}: the hub sent more than the manifest's {declared} bytes")]
    TooLong { url: String, declared: u64 },
    #[error("model store: cannot start the download runtime: {0}")]
    Runtime(std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A model version: `(name, version)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoreState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<VersionRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_good: Option<VersionRef>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    options: FetchOptions,
}

/// What one try of one file ended with.
enum Try {
    /// The part file has all the bytes.
    Done,
    /// Worth another try (network trouble, a server error).
    Retry(String),
}

impl ModelStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ModelStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(ModelStore {
            dir: dir.to_path_buf(),
            options: FetchOptions::default(),
        })
    }

    pub fn with_options(mut self, options: FetchOptions) -> Self {
        self.options = options;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of a version (whether or not it is there); `None` for an invalid name or
    /// version.
    pub fn version_dir(&self, name: &str, version: &str) -> Option<PathBuf> {
        (check_ident("name", name, 64).is_ok() && check_ident("version", version, 32).is_ok())
            .then(|| self.dir.join(name).join(version))
    }

    /// Whether the version's folder is complete for exactly this manifest.
    pub fn is_complete(&self, m: &ModelManifest) -> bool {
        let Some(dir) = self.version_dir(&m.name, &m.version) else {
            return false;
        };
        std::fs::read(dir.join(COMPLETE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<ModelManifest>(&b).ok())
            .is_some_and(|stored| &stored == m)
    }

    /// Downloads the model `m` describes from the hub at `hub_url` (`http://host:port`) unless
    /// it is already complete, and returns its folder: pass it as `models_dir` (with
    /// `name = m.name`) to [`crate::model::Detector::load`]. `progress` is called with the
    /// bytes on disk of both files together and their total size. Blocks; see the module docs.
    pub fn fetch(
        &self,
        hub_url: &str,
        m: &ModelManifest,
        auth: &DownloadAuth,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<PathBuf, StoreError> {
        self.fetch_report(hub_url, m, auth, progress)
            .map(|(dir, _)| dir)
    }

    /// [`ModelStore::fetch`], also saying what it transferred.
    pub fn fetch_report(
        &self,
        hub_url: &str,
        m: &ModelManifest,
        auth: &DownloadAuth,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(PathBuf, FetchReport), StoreError> {
        m.check().map_err(|e| StoreError::Manifest {
            key: m.key(),
            reason: e.to_string(),
        })?;
        let dir = self
            .version_dir(&m.name, &m.version)
            .expect("checked by ModelManifest::check");
        if self.is_complete(m) {
            return Ok((dir, FetchReport::default()));
        }
        // An older, different download of the same name and version: start over.
        let _ = std::fs::remove_file(dir.join(COMPLETE_FILE));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from async code: the runtime below must not nest in it.
            return std::thread::scope(|s| {
                s.spawn(|| self.fetch_in(&dir, hub_url, m, auth, progress))
                    .join()
                    .unwrap_or_else(|_| {
                        Err(StoreError::Runtime(std::io::Error::other(
                            "download thread panicked",
                        )))
                    })
            });
        }
        self.fetch_in(&dir, hub_url, m, auth, progress)
    }

    fn fetch_in(
        &self,
        dir: &Path,
        hub_url: &str,
        m: &ModelManifest,
        auth: &DownloadAuth,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<(PathBuf, FetchReport), StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let client = reqwest::Client::builder()
            .connect_timeout(self.options.connect_timeout)
            .read_timeout(self.options.stall_timeout)
            .build()
            .map_err(|e| StoreError::Runtime(std::io::Error::other(e)))?;
        let mut stats = Progress {
            base: 0,
            total: m.bytes + m.selftest.image_bytes,
            report: FetchReport::default(),
            callback: progress,
        };
        let base = hub_url.trim_end_matches('/');
        for (kind, file, sha, bytes) in [
            ("model", MODEL_FILE, m.sha256.as_str(), m.bytes),
            (
                "selftest",
                SELFTEST_FILE,
                m.selftest.image_sha256.as_str(),
                m.selftest.image_bytes,
            ),
        ] {
            let path = format!("/api/v1/models/{}/{}/files/{kind}", m.name, m.version);
            let target = File {
                url: format!("{base}{path}"),
                path,
                dest: dir.join(file),
                name: file,
                sha,
                bytes,
            };
            rt.block_on(self.fetch_file(&client, &target, auth, &mut stats))?;
            stats.base += bytes;
        }
        // The local manifest, so the detector and the self-test load it unchanged.
        let labels = m.labels.join("\n") + "\n";
        replace(&dir.join(LABELS_FILE), labels.as_bytes())?;
        let local = Manifest {
            models: vec![ModelEntry {
                name: m.name.clone(),
                file: MODEL_FILE.into(),
                sha256: m.sha256.clone(),
                bytes: Some(m.bytes),
                license: m.license.clone(),
                origin: m.origin.clone(),
                decoder: m.decoder,
                labels: LABELS_FILE.into(),
                input: m.input.clone(),
                output: m.output.clone(),
                selftest: Some(SelfTest {
                    image: SELFTEST_FILE.into(),
                    expect: m.selftest.expect.clone(),
                }),
            }],
        };
        let text = toml::to_string(&local).map_err(|e| StoreError::Manifest {
            key: m.key(),
            reason: format!("cannot write the local manifest: {e}"),
        })?;
        let header = format!(
            "# {} from the hub's model warehouse (written by the agent's model store).\n",
            m.key()
        );
        replace(&dir.join(MANIFEST_FILE), (header + &text).as_bytes())?;
        let json = serde_json::to_vec_pretty(m).expect("a manifest serialises");
        replace(&dir.join(COMPLETE_FILE), &json)?;
        Ok((dir.to_path_buf(), stats.report))
    }

    async fn fetch_file(
        &self,
        client: &reqwest::Client,
        f: &File<'_>,
        auth: &DownloadAuth,
        stats: &mut Progress<'_>,
    ) -> Result<(), StoreError> {
        let part = f.dest.with_file_name(format!("{}.part", f.name));
        // Already in place (a fetch that stopped before `complete`): check it.
        if std::fs::metadata(&f.dest).is_ok_and(|md| md.len() == f.bytes) {
            if hash_file(&f.dest)? == f.sha {
                stats.tell(f.bytes);
                return Ok(());
            }
            let _ = std::fs::remove_file(&f.dest);
        }
        let mut fresh_retry_left = true;
        let mut tries = 0u32;
        loop {
            let resumed = file_len(&part) > 0;
            let outcome = self.try_once(client, f, &part, auth, stats).await?;
            match outcome {
                Try::Done => {
                    let got = hash_file(&part)?;
                    if got == f.sha {
                        let file = std::fs::OpenOptions::new()
                            .append(true)
                            .open(&part)
                            .map_err(io(&part))?;
                        file.sync_all().map_err(io(&part))?;
                        std::fs::rename(&part, &f.dest).map_err(io(&f.dest))?;
                        sync_dir(&f.dest);
                        return Ok(());
                    }
                    let _ = std::fs::remove_file(&part);
                    // A resumed file may have started from a bad part file: once more, fresh.
                    if resumed && fresh_retry_left {
                        fresh_retry_left = false;
                        stats.report.restarts += 1;
                        tracing::warn!(file = %f.dest.display(), expected = f.sha, %got,
                            "model download: checksum mismatch after a resume; downloading it again from the start");
                        continue;
                    }
                    return Err(StoreError::Checksum {
                        file: f.dest.clone(),
                        expected: f.sha.to_string(),
                        got,
                    });
                }
                Try::Retry(reason) => {
                    tries += 1;
                    if tries > self.options.retries {
                        return Err(StoreError::Network {
                            url: f.url.clone(),
                            attempts: tries,
                            reason,
                        });
                    }
                    let wait = self
                        .options
                        .backoff
                        .saturating_mul(1 << (tries - 1).min(6))
                        .min(Duration::from_secs(8));
                    tracing::warn!(url = %f.url, try_ = tries, %reason, wait_ms = wait.as_millis() as u64,
                        "model download interrupted; resuming");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One request: resumes `part` from its length, appends what comes.
    async fn try_once(
        &self,
        client: &reqwest::Client,
        f: &File<'_>,
        part: &Path,
        auth: &DownloadAuth,
        stats: &mut Progress<'_>,
    ) -> Result<Try, StoreError> {
        let mut have = file_len(part);
        if have > f.bytes {
            let _ = std::fs::remove_file(part);
            have = 0;
        }
        if have == f.bytes {
            return Ok(Try::Done);
        }
        let mut req = client.get(&f.url);
        if have > 0 {
            req = req
                .header("range", format!("bytes={have}-"))
                .header("if-range", format!("\"{}\"", f.sha));
        }
        match auth {
            DownloadAuth::None => {}
            DownloadAuth::Token(t) => req = req.bearer_auth(t),
            DownloadAuth::Device { site, device, key } => {
                let id = format!("{site}/{device}");
                let ts = csb_wire::now_ms().to_string();
                let sig = sign_download(key, &f.path, &id, &ts);
                req = req
                    .header(DOWNLOAD_DEVICE_HEADER, id)
                    .header(DOWNLOAD_TIMESTAMP_HEADER, ts)
                    .header(UPLOAD_SIGNATURE_HEADER, sig);
            }
        }
        stats.report.requests += 1;
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Try::Retry(error_chain(&e))),
        };
        let status = resp.status().as_u16();
        let append = match status {
            200 => false,
            206 => {
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(have) {
                    let _ = std::fs::remove_file(part);
                    return Ok(Try::Retry(format!(
                        "the hub sent a range from {start:?}, not from byte {have}"
                    )));
                }
                true
            }
            416 => {
                // The part is not a prefix of this file (or the file shrank): start over.
                let _ = std::fs::remove_file(part);
                return Ok(Try::Retry("range not satisfiable: starting over".into()));
            }
            408 | 429 | 500..=599 => {
                return Ok(Try::Retry(format!("the hub answered {status}")));
            }
            _ => {
                let text = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| text.chars().take(200).collect());
                return Err(StoreError::Http {
                    url: f.url.clone(),
                    status,
                    message,
                });
            }
        };
        let mut out = if append {
            std::fs::OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(io(part))?
        } else {
            have = 0;
            std::fs::File::create(part).map_err(io(part))?
        };
        let mut resp = resp;
        let mut last_report = Instant::now();
        loop {
            let chunk = match tokio::time::timeout(self.options.stall_timeout, resp.chunk()).await {
                Err(_) => {
                    return Ok(Try::Retry(format!(
                        "nothing received for {} s",
                        self.options.stall_timeout.as_secs()
                    )))
                }
                Ok(Err(e)) => {
                    out.flush().map_err(io(part))?;
                    return Ok(Try::Retry(error_chain(&e)));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if have + chunk.len() as u64 > f.bytes {
                drop(out);
                let _ = std::fs::remove_file(part);
                return Err(StoreError::TooLong {
                    url: f.url.clone(),
                    declared: f.bytes,
                });
            }
            out.write_all(&chunk).map_err(io(part))?;
            have += chunk.len() as u64;
            stats.report.received += chunk.len() as u64;
            if last_report.elapsed() >= Duration::from_millis(200) {
                last_report = Instant::now();
                stats.tell(have);
            }
        }
        out.flush().map_err(io(part))?;
        stats.tell(have);
        if have == f.bytes {
            Ok(Try::Done)
        } else {
            Ok(Try::Retry(format!(
                "the answer ended after {have} of {} bytes",
                f.bytes
            )))
        }
    }

    fn state(&self) -> StoreState {
        std::fs::read(self.dir.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_state(&self, s: &StoreState) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(s).expect("state serialises");
        replace(&self.dir.join(STATE_FILE), &json)
    }

    fn version_ref(name: &str, version: &str) -> Result<VersionRef, StoreError> {
        for (field, v, max) in [("name", name, 64), ("version", version, 32)] {
            check_ident(field, v, max).map_err(|e| StoreError::Manifest {
                key: format!("{name}@{version}"),
                reason: e.to_string(),
            })?;
        }
        Ok(VersionRef {
            name: name.into(),
            version: version.into(),
        })
    }

    /// Records the version now in service (durably).
    pub fn set_current(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let mut s = self.state();
        s.current = Some(Self::version_ref(name, version)?);
        self.save_state(&s)
    }

    pub fn current(&self) -> Option<VersionRef> {
        self.state().current
    }

    /// Records a version as good (it passed its self-test and ran): the one to roll back to.
    pub fn mark_good(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let mut s = self.state();
        s.last_good = Some(Self::version_ref(name, version)?);
        self.save_state(&s)
    }

    pub fn last_good(&self) -> Option<VersionRef> {
        self.state().last_good
    }

    /// Removes every version but the one in service, the last good one and those in `keep`;
    /// returns what it removed.
    pub fn prune(&self, keep: &[VersionRef]) -> Result<Vec<VersionRef>, StoreError> {
        let s = self.state();
        let keep: BTreeSet<&VersionRef> = keep
            .iter()
            .chain(s.current.iter())
            .chain(s.last_good.iter())
            .collect();
        let mut removed = Vec::new();
        for name in subdirs(&self.dir)? {
            let ndir = self.dir.join(&name);
            for version in subdirs(&ndir)? {
                let v = VersionRef {
                    name: name.clone(),
                    version,
                };
                if keep.contains(&v) {
                    continue;
                }
                let vdir = ndir.join(&v.version);
                std::fs::remove_dir_all(&vdir).map_err(io(&vdir))?;
                removed.push(v);
            }
            if subdirs(&ndir)?.is_empty() {
                let _ = std::fs::remove_dir(&ndir);
            }
        }
        sync_dir(&self.dir.join(STATE_FILE));
        Ok(removed)
    }
}

struct File<'a> {
    url: String,
    /// The request's path, as signed.
    path: String,
    dest: PathBuf,
    name: &'static str,
    sha: &'a str,
    bytes: u64,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// sha256 of a file, lowercase hex.
pub fn hash_file(p: &Path) -> Result<String, StoreError> {
    let mut f = std::fs::File::open(p).map_err(io(p))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io(p))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex_lower(&h.finalize()))
}

/// Folder names in `dir` that are valid names or versions.
fn subdirs(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_dir()) && check_ident("x", &name, 64).is_ok() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically and durably.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path);
    Ok(())
}

/// Syncs the folder holding `path` (a rename in it survives a power cut).
fn sync_dir(path: &Path) {
    if let Some(d) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: &str, ver: &str) -> VersionRef {
        VersionRef {
            name: n.into(),
            version: ver.into(),
        }
    }

    #[test]
    fn prune_keeps_current_last_good_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        for ver in ["1", "2", "3", "4"] {
            std::fs::create_dir_all(dir.path().join("m").join(ver)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("other/9")).unwrap();
        s.set_current("m", "4").unwrap();
        s.mark_good("m", "3").unwrap();
        assert_eq!(s.last_good(), Some(v("m", "3")));
        assert_eq!(s.current(), Some(v("m", "4")));
        let mut removed = s.prune(&[v("m", "1")]).unwrap();
        removed.sort();
        assert_eq!(removed, vec![v("m", "2"), v("other", "9")]);
        assert!(dir.path().join("m/1").is_dir());
        assert!(dir.path().join("m/3").is_dir() && dir.path().join("m/4").is_dir());
        assert!(!dir.path().join("other").exists());
        // Reopened: the same state.
        let s = ModelStore::open(dir.path()).unwrap();
        assert_eq!(s.last_good(), Some(v("m", "3")));
        assert!(s.mark_good("../x", "1").is_err());
    }

    #[test]
    fn paths_never_leave_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        assert!(s.version_dir("..", "1").is_none());
        assert!(s.version_dir("a/b", "1").is_none());
        assert!(s.version_dir("m", ".hidden").is_none());
        assert_eq!(s.version_dir("m", "1.0").unwrap(), dir.path().join("m/1.0"));
    }

    #[test]
    fn an_unreachable_hub_is_an_error_naming_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path())
            .unwrap()
            .with_options(FetchOptions {
                connect_timeout: Duration::from_millis(500),
                stall_timeout: Duration::from_secs(1),
                retries: 1,
                backoff: Duration::from_millis(10),
            });
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let m: ModelManifest = serde_json::from_value(serde_json::json!({
            "name": "m", "version": "1", "decoder": "yolox", "labels": ["bus"],
            "input": {"name": "images", "width": 416, "height": 416, "layout": "nchw",
                      "channel_order": "bgr", "scale": 1.0, "pad_value": 114.0},
            "output": {"name": "output", "strides": [8, 16, 32], "nms_iou": 0.45},
            "sha256": "a".repeat(64), "bytes": 10,
            "selftest": {"image_sha256": "b".repeat(64), "image_bytes": 3,
                         "expect": [{"label": "bus", "min_score": 0.5, "box": [0, 0, 1, 1]}]}
        }))
        .unwrap();
        let e = s
            .fetch(
                &format!("http://127.0.0.1:{port}"),
                &m,
                &DownloadAuth::None,
                &mut |_, _| {},
            )
            .unwrap_err();
        match &e {
            StoreError::Network { url, attempts, .. } => {
                assert!(url.ends_with("/api/v1/models/m/1/files/model"), "{url}");
                assert_eq!(*attempts, 2);
            }
            other => panic!("{other}"),
        }
        assert!(!s.is_complete(&m));
    }
}
