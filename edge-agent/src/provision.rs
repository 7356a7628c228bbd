//! `edge-agent provision`: enrols this box with the hub. The technician brings a one-time token
//! (`cloud-hub device enrol SITE/DEVICE`); the agent sends it with its own `SITE/DEVICE` (from
//! the config's `[agent]`) to `POST {hub}/api/v1/provision`, writes the secret it gets back to a
//! file only the agent's user can read (mode 0600, its folder 0700), and sets `[mqtt] username`
//! and `secret_file` in the config, keeping the rest of the file (comments included) as it was.
//! The edited config is checked with the agent's own loader before it replaces the old one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::config::{AgentConfig, ConfigError};

/// How long the hub may take to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("config {path}: {reason}")]
    Edit { path: PathBuf, reason: String },
    #[error("`--hub {0}` is not an http(s):// URL")]
    BadUrl(String),
    #[error("cannot reach the hub at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The hub said no (the token is unknown, used, expired, or for another device).
    #[error("the hub refused the enrolment ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the hub's answer is not what this agent expects: {0}")]
    Answer(String),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl ProvisionError {
    /// The exit code for scripts: 2 refused by the hub, 3 hub unreachable, 1 anything else
    /// (the config or a local file).
    pub fn exit_code(&self) -> i32 {
        match self {
            ProvisionError::Refused { .. } => 2,
            ProvisionError::Unreachable { .. } => 3,
            _ => 1,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    username: String,
    secret: String,
}

/// What [`provision`] did.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub username: String,
    pub secret_file: PathBuf,
    pub config: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError + '_ {
    move |cause| ProvisionError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Enrols the box whose config is `config` with the hub at `hub` using `token`; the secret goes
/// to `secret_file` (default: `device.secret` beside the config).
pub async fn provision(
    hub: &str,
    token: &str,
    config: &Path,
    secret_file: Option<&Path>,
) -> Result<Enrolled, ProvisionError> {
    if !(hub.starts_with("http://") || hub.starts_with("https://")) {
        return Err(ProvisionError::BadUrl(hub.to_string()));
    }
    // The config must be a valid one before anything is asked of the hub: a token is used once.
    let cfg = AgentConfig::load(config)?;
    let me = format!("{}/{}", cfg.agent.site, cfg.agent.device);
    let text = std::fs::read_to_string(config).map_err(io(config))?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| ProvisionError::Edit {
        path: config.to_path_buf(),
        reason: format!("{e}"),
    })?;
    let secret_path = match secret_file {
        Some(p) => p.to_path_buf(),
        None => config
            .parent()
            .unwrap_or(Path::new("."))
            .join("device.secret"),
    };
    // Absolute in the config: a relative path there is read relative to the config's folder,
    // not to where this command ran.
    let secret_path = std::path::absolute(&secret_path).map_err(io(&secret_path))?;

    let url = format!("{}/api/v1/provision", hub.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| ProvisionError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let resp = client
        .post(&url)
        .json(&serde_json::json!({ "token": token.trim(), "device": me }))
        .send()
        .await
        .map_err(|e| ProvisionError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ProvisionError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        return Err(ProvisionError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let got: Answer =
        serde_json::from_slice(&body).map_err(|e| ProvisionError::Answer(e.to_string()))?;
    if got.username != me {
        return Err(ProvisionError::Answer(format!(
            "credentials for `{}`, but this box is `{me}`",
            got.username
        )));
    }

    // The secret first: whatever happens to the config after, the credentials are not lost.
    write_secret(&secret_path, &got.secret)?;
    let mqtt = doc
        .entry("mqtt")
        .or_insert_with(toml_edit::table)
        .as_table_mut()
        .ok_or_else(|| ProvisionError::Edit {
            path: config.to_path_buf(),
            reason: "`mqtt` is not a table".into(),
        })?;
    mqtt["username"] = toml_edit::value(got.username.clone());
    mqtt["secret_file"] = toml_edit::value(secret_path.to_string_lossy().into_owned());
    // Written beside the config, checked with the agent's own loader, then renamed over it.
    let tmp = config.with_extension("toml.provision");
    std::fs::write(&tmp, doc.to_string()).map_err(io(&tmp))?;
    if let Err(e) = AgentConfig::load(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    std::fs::rename(&tmp, config).map_err(io(config))?;
    Ok(Enrolled {
        username: got.username,
        secret_file: secret_path,
        config: config.to_path_buf(),
    })
}

/// Writes the secret to `path` (mode 0600, its folder created 0700), synced.
fn write_secret(path: &Path, secret: &str) -> Result<(), ProvisionError> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io(dir))?;
            }
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path))?;
    }
    f.write_all(format!("{secret}\n").as_bytes())
        .map_err(io(path))?;
    f.sync_all().map_err(io(path))
}
