//! `cloud-hub model …`: the model warehouse of a running hub, for operators (register a model
//! with its files, list, show, retire), over its HTTP API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use csb_wire::model::ModelManifest;
use sha2::{Digest, Sha256};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Register a model version (its manifest, JSON) and upload its ONNX file and self-test
    /// image; both are checked against the manifest here first, then by the hub.
    Register {
        /// The manifest (csb_wire::model::ModelManifest as JSON).
        #[arg(long)]
        manifest: PathBuf,
        /// The ONNX file.
        #[arg(long)]
        file: PathBuf,
        /// The self-test image.
        #[arg(long)]
        selftest: PathBuf,
    },
    /// Every registered model version.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// One model version: manifest, state, files.
    Show { name: String, version: String },
    /// Retire a model version: no new assignments (its files stay).
    Retire { name: String, version: String },
}

pub fn run(url: &str, token: Option<&str>, action: ModelCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let base = url.trim_end_matches('/').to_string();
    let mut out = std::io::stdout().lock();
    rt.block_on(async {
        match action {
            ModelCommand::Register {
                manifest,
                file,
                selftest,
            } => {
                let text = std::fs::read_to_string(&manifest)
                    .with_context(|| format!("cannot read {}", manifest.display()))?;
                let m: ModelManifest = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a model manifest", manifest.display()))?;
                m.check()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
                check_file(&file, &m.sha256, m.bytes, "sha256", "bytes")?;
                check_file(
                    &selftest,
                    &m.selftest.image_sha256,
                    m.selftest.image_bytes,
                    "selftest.image_sha256",
                    "selftest.image_bytes",
                )?;
                let path = format!("/api/v1/models/{}/{}", m.name, m.version);
                let mut req = client.put(format!("{base}{path}")).json(&m);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let (status, _) = answer("PUT", &path, req.send().await, url).await?;
                writeln!(
                    out,
                    "{}: {}",
                    m.key(),
                    if status == 201 {
                        "registered"
                    } else {
                        "already registered (same manifest)"
                    }
                )?;
                for (kind, f) in [("model", &file), ("selftest", &selftest)] {
                    let body = upload(&client, &base, token, &path, kind, f, url).await?;
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    writeln!(
                        out,
                        "{}: {kind} uploaded ({}); state {}",
                        m.key(),
                        f.display(),
                        v["state"].as_str().unwrap_or("?")
                    )?;
                }
            }
            ModelCommand::List { json } => {
                let body = get(&client, &base, token, "/api/v1/models", url).await?;
                if json {
                    writeln!(out, "{body}")?;
                    return Ok(());
                }
                let v: serde_json::Value = serde_json::from_str(&body).context("not a list")?;
                writeln!(out, "name\tversion\tstate\tbytes\tsha256\tregistered_by")?;
                for m in v["models"].as_array().into_iter().flatten() {
                    let mf = &m["manifest"];
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        mf["name"].as_str().unwrap_or("-"),
                        mf["version"].as_str().unwrap_or("-"),
                        m["state"].as_str().unwrap_or("-"),
                        mf["bytes"],
                        mf["sha256"]
                            .as_str()
                            .unwrap_or("-")
                            .get(..12)
                            .unwrap_or("-"),
                        m["registered_by"].as_str().unwrap_or("-"),
                    )?;
                }
            }
            ModelCommand::Show { name, version } => {
                let path = format!("/api/v1/models/{name}/{version}");
                let body = get(&client, &base, token, &path, url).await?;
                let v: serde_json::Value = serde_json::from_str(&body).context("not a model")?;
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            }
            ModelCommand::Retire { name, version } => {
                let path = format!("/api/v1/models/{name}/{version}/retire");
                let mut req = client.post(format!("{base}{path}"));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                answer("POST", &path, req.send().await, url).await?;
                writeln!(out, "{name}@{version}: retired")?;
            }
        }
        Ok(())
    })
}

/// Checks a local file's size and sha256 against the manifest before sending it.
fn check_file(
    path: &Path,
    sha: &str,
    bytes: u64,
    sha_field: &str,
    bytes_field: &str,
) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let n =
        std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    let got = csb_wire::sign::hex_lower(&h.finalize());
    anyhow::ensure!(
        n == bytes,
        "{} has {n} bytes, the manifest's `{bytes_field}` says {bytes}",
        path.display()
    );
    anyhow::ensure!(
        got == sha,
        "{} has sha256 {got}, the manifest's `{sha_field}` says {sha}",
        path.display()
    );
    Ok(())
}

async fn get(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    path: &str,
    url: &str,
) -> anyhow::Result<String> {
    let mut req = client
        .get(format!("{base}{path}"))
        .timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Ok(answer("GET", path, req.send().await, url).await?.1)
}

/// The status and body of a successful answer; the API's error message otherwise.
async fn answer(
    method: &str,
    path: &str,
    resp: reqwest::Result<reqwest::Response>,
    url: &str,
) -> anyhow::Result<(u16, String)> {
    let resp = resp.with_context(|| format!("cannot reach the hub at {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        anyhow::bail!("{method} {path}: {status}: {message}");
    }
    Ok((status.as_u16(), text))
}

/// Streams `file` to `…/files/{kind}` with a progress bar.
async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    model_path: &str,
    kind: &str,
    file: &Path,
    url: &str,
) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let len = f.metadata().await?.len();
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(kind.to_string());
    let b = bar.clone();
    let stream = futures_util::stream::unfold(Some(f), move |f| {
        let b = b.clone();
        async move {
            let mut f = f?;
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    b.inc(n as u64);
                    Some((Ok::<_, std::io::Error>(buf), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    let path = format!("{model_path}/files/{kind}");
    let mut req = client
        .put(format!("{base}{path}"))
        .header("content-type", "application/octet-stream")
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = answer("PUT", &path, req.send().await, url).await;
    bar.finish_and_clear();
    Ok(r?.1)
}
