//! `cloud-hub` binary: argument parsing, logging, signals. All the work is in the library.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloud_hub::bench::history::HistoryOptions as HistoryBench;
use cloud_hub::bench::ingest::BenchOptions;
use cloud_hub::bench::platform::PlatformOptions as PlatformBench;
use cloud_hub::bench::series::BenchOptions as TelemetryBench;
use cloud_hub::support::lognoise::RumqttdNoise;
use cloud_hub::{Hub, HubConfig};
use tracing_subscriber::EnvFilter;

mod model_cli;
mod rollout_cli;

/// Ingest allocates per message (decoded events, batches, acks); mimalloc makes that markedly
/// cheaper than glibc's malloc (measured with `cloud-hub bench-ingest`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cloud-hub",
    version,
    about = "City Super Brain hub: MQTT ingest, storage and REST API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub. Flags override values from the config file.
    Serve {
        /// TOML config file (see configs/hub.example.toml); defaults apply without one.
        #[arg(long, env = "CSB_HUB_CONFIG")]
        config: Option<PathBuf>,
        /// MQTT listen address, e.g. 0.0.0.0:1883.
        #[arg(long, env = "CSB_HUB_MQTT_ADDR")]
        mqtt_addr: Option<SocketAddr>,
        /// HTTP listen address; port 0 picks a free port (the ready line shows it).
        #[arg(long, env = "CSB_HUB_HTTP_ADDR")]
        http_addr: Option<SocketAddr>,
        /// Data directory for the event store.
        #[arg(long, env = "CSB_HUB_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// County model folder (towns, roads, zones, device inventory). Default: `county_dir`
        /// of the config, else `configs/county` when started from the repository.
        #[arg(long, env = "CSB_HUB_COUNTY")]
        county: Option<PathBuf>,
    },
    /// Check a county model folder and print what it holds (default: configs/county).
    County { dir: Option<PathBuf> },
    /// Print the HTTP API's OpenAPI 3.1 document (what `GET /api/v1/openapi.json` serves), or
    /// write it to a file (`make openapi` writes docs/openapi.json).
    Openapi {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The 家底 inventory of a running hub: devices by kind, town, department and status
    /// (unregistered ones included), and what each data source delivered. A table by default.
    Inventory {
        /// The hub's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "CSB_HUB_URL")]
        url: String,
        /// API token (viewer or above) when the hub has `[auth] http = "required"`.
        #[arg(long, env = "CSB_HUB_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print CSV of `devices` or `sources` instead of the table.
        #[arg(long, value_parser = ["devices", "sources"])]
        csv: Option<String>,
        /// Print the JSON report instead of the table.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// A source or gateway silent this long counts as stale.
        #[arg(long, default_value_t = 300)]
        stale_after_s: u32,
    },
    /// Device credentials (for `[auth] devices = "required"`): add, enrol (a one-time token for
    /// `edge-agent provision`), list, remove.
    Device {
        #[command(subcommand)]
        action: DeviceCommand,
    },
    /// Make a private CA and a hub certificate for MQTT over TLS (`[mqtt_tls]`), for a county
    /// without its own PKI. Edge agents trust the CA (`mqtt.ca_file`).
    TlsCert {
        /// Directory for ca-cert.pem, ca-key.pem, hub-cert.pem, hub-key.pem (never overwritten).
        #[arg(long)]
        out_dir: PathBuf,
        /// Host name or IP address edges use to reach the hub; repeat for several.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Validity of the hub certificate in days (the CA gets four times as long).
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// The case workflow of a running hub: list, show, act on a case, evaluate departments.
    Cases {
        /// The hub's HTTP address.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080",
            env = "CSB_HUB_URL",
            global = true
        )]
        url: String,
        /// API token when the hub has `[auth] http = "required"`; its role decides what it may do.
        #[arg(long, env = "CSB_HUB_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: CasesCommand,
    },
    /// Rollouts of warehouse models to the fleet: start (canary, batches, thresholds, soak),
    /// status, pause, resume, abort.
    Rollout {
        /// The hub's HTTP address.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080",
            env = "CSB_HUB_URL",
            global = true
        )]
        url: String,
        /// API token when the hub has `[auth] http = "required"` (operator to start or stop).
        #[arg(long, env = "CSB_HUB_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: rollout_cli::RolloutCommand,
    },
    /// The model warehouse of a running hub: register a model with its files, list, show, retire.
    Model {
        /// The hub's HTTP address.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080",
            env = "CSB_HUB_URL",
            global = true
        )]
        url: String,
        /// API token when the hub has `[auth] http = "required"` (operator to change models).
        #[arg(long, env = "CSB_HUB_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: model_cli::ModelCommand,
    },
    /// HTTP API tokens (for `[auth] http = "required"`): add, list, revoke.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Validate a hub config file and print the effective config; and/or check a governance
    /// folder (categories, departments, routing, stages, calendar, evaluation), against a
    /// county model's towns and zones when one is given (or named by the config).
    CheckConfig {
        file: Option<PathBuf>,
        /// A governance folder, e.g. configs/governance.
        #[arg(long)]
        governance: Option<PathBuf>,
        /// A county model folder to check the governance routing's places against.
        #[arg(long)]
        county: Option<PathBuf>,
    },
    /// Benchmark: raw broker pass-through vs durable ingest (store + acks), side by side.
    BenchIngest {
        #[command(flatten)]
        opts: BenchOptions,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: a fleet of gateways (1,000 by default), each its own MQTT connection,
    /// publishing events and dropping/reconnecting at random, against a `cloud-hub serve`
    /// process on its defaults: lost/duplicated events, PUBACK and app-ack latency, hub RSS per
    /// device and its growth, CPU. Runs for minutes.
    BenchFleet {
        #[command(flatten)]
        opts: cloud_hub::bench::fleet::FleetOptions,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: telemetry series load through the store write path (not MQTT), then query
    /// latency (7-day 1h, 24-hour 1m, 1-hour raw) and disk bytes per point.
    BenchTelemetry {
        #[command(flatten)]
        opts: TelemetryBench,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: event history at volume — load events through the store (no MQTT), reopen,
    /// then p50/p99 of 24 h and 7 day aggregates, a filtered history page and an id lookup,
    /// and disk bytes per event.
    BenchHistory {
        #[command(flatten)]
        opts: HistoryBench,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: the case workflow at county volume — 100,000 cases loaded, then AI events at
    /// 1,000/s of which 20 % open or merge into cases while cases are listed with filters:
    /// event → case visible p99, list p99, SLA sweeps, transitions/s, disk bytes per case.
    BenchCases {
        #[command(flatten)]
        opts: cloud_hub::bench::cases::CasesOptions,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: the data platform at county volume in one store — events and telemetry
    /// loaded through the store (no MQTT), the twin with synthetic sensors over the county —
    /// then p50/p99 of a 24-hour event aggregate, a 7-day telemetry rollup and geo queries
    /// (over HTTP), and disk bytes per event and per point.
    BenchPlatform {
        #[command(flatten)]
        opts: PlatformBench,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Issue credentials for SITE/DEVICE and print the edge agent's `[mqtt]` settings. A running
    /// hub picks them up without a restart.
    Add {
        /// e.g. yuexi/gw-01
        id: String,
        /// The hub's data directory (credentials live in its devices.json).
        #[arg(long, env = "CSB_HUB_DATA_DIR", default_value = "./data/hub")]
        data_dir: PathBuf,
        /// Write the secret to this file (mode 0600) for the agent's `mqtt.secret_file`,
        /// instead of printing it.
        #[arg(long)]
        secret_out: Option<PathBuf>,
    },
    /// Issue a one-time enrolment token for SITE/DEVICE: the technician runs `edge-agent
    /// provision --hub URL --token TOKEN` at the new box, which exchanges it (once, before it
    /// expires) for the device's credentials. Only the token's hash is kept.
    Enrol {
        /// e.g. yuexi/gw-07
        id: String,
        #[arg(long, env = "CSB_HUB_DATA_DIR", default_value = "./data/hub")]
        data_dir: PathBuf,
        /// How long the token stays valid, in seconds (default a day).
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        /// The hub's HTTP address as the box reaches it, for the printed command.
        #[arg(long, default_value = "http://HUB:8080")]
        hub_url: String,
    },
    /// List the devices with credentials (never their secrets).
    List {
        #[arg(long, env = "CSB_HUB_DATA_DIR", default_value = "./data/hub")]
        data_dir: PathBuf,
    },
    /// Withdraw a device's credentials: it can no longer connect, and a running hub
    /// quarantines its payloads (`spoofed`) within a second.
    Remove {
        id: String,
        #[arg(long, env = "CSB_HUB_DATA_DIR", default_value = "./data/hub")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CasesCommand {
    /// Cases, newest first: id, state, SLA light, category, department, town, deadline.
    List {
        /// reported, registered, dispatched, handling, verifying, suspended, closed, rejected, voided
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        department: Option<String>,
        #[arg(long)]
        category: Option<String>,
        #[arg(long)]
        town: Option<String>,
        /// Only open cases.
        #[arg(long)]
        open: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the JSON answer instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One case with its timeline.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Act on a case: register, reject, void, dispatch, accept, return, report_handled, close,
    /// rework, request_extension, approve_extension, deny_extension, suspend, resume, supervise.
    Act {
        id: String,
        action: String,
        /// The action's fields, e.g. `--set department=traffic-police`, `--set reason=false_positive`,
        /// `--set value=2` (a value that is JSON is taken as JSON).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
        /// Why, for the timeline.
        #[arg(long, default_value = "")]
        note: String,
        /// Makes a retried command act once.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// 综合评价 of departments for a period (RFC 3339 or Unix ms), best first.
    Evaluate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Print CSV instead of the table.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue an API token and print it once (only its hash is kept). A running hub accepts it
    /// without a restart.
    Add {
        /// A name for who or what uses it, e.g. grafana or ops-desk (letters, digits, - _ .).
        name: String,
        /// viewer: read; operator: read and write, registers and dispatches cases; admin:
        /// everything; inspector, handler (one department's cases) and supervisor: read, and
        /// their actions on cases.
        #[arg(long)]
        role: String,
        /// A handler's department (a department id of the governance configuration).
        #[arg(long)]
        department: Option<String>,
        /// The hub's data directory (tokens live in its tokens.json).
        #[arg(long, env = "CSB_HUB_DATA_DIR", default_value = "./data/hub")]
        data_dir: PathBuf,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        token_out: Option<PathBuf>,
    },
    /// List the tokens: name, role, creation time (never the tokens).
    List {
        #[arg(long, env = "CSB_HUB_DATA_DIR", default_value = "./data/hub")]
        data_dir: PathBuf,
    },
    /// Revoke a token: a running hub refuses it within a second.
    Revoke {
        name: String,
        #[arg(long, env = "CSB_HUB_DATA_DIR", default_value = "./data/hub")]
        data_dir: PathBuf,
    },
}

fn token(action: TokenCommand) -> anyhow::Result<()> {
    use cloud_hub::http::tokens::{self, Role};
    let mut out = std::io::stdout().lock();
    match action {
        TokenCommand::Add {
            name,
            role,
            department,
            data_dir,
            token_out,
        } => {
            let role: Role = role.parse().context("--role")?;
            let token = tokens::add_with(&data_dir, &name, role, department.as_deref())?;
            match token_out {
                Some(path) => {
                    cloud_hub::ingest::devices::write_private(&path, format!("{token}\n").as_bytes())
                        .with_context(|| {
                            // Only the hash is kept: the token is lost, so say how to recover.
                            format!("token `{name}` was issued but not saved; `cloud-hub token revoke {name}` and add it again")
                        })?;
                    writeln!(
                        out,
                        "token `{name}` ({role}) issued; written to {} (mode 0600)",
                        path.display()
                    )?;
                }
                None => {
                    writeln!(
                        out,
                        "# token `{name}` ({role}) issued; shown only now, keep it secret:"
                    )?;
                    writeln!(out, "{token}")?;
                }
            }
        }
        TokenCommand::List { data_dir } => {
            for (name, rec) in tokens::load(&data_dir)? {
                let dep = rec
                    .department
                    .map(|d| format!("\tdepartment={d}"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{name}\trole={}{dep}\tcreated_ms={}",
                    rec.role, rec.created_ms
                )?;
            }
        }
        TokenCommand::Revoke { name, data_dir } => {
            tokens::revoke(&data_dir, &name)?;
            writeln!(out, "revoked {name}")?;
        }
    }
    Ok(())
}

/// One request to a running hub's API (`path` from `/api/v1/…`); the body of a 2xx answer,
/// else an error with the hub's own message.
fn hub_request(
    url: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let endpoint = format!("{}{path}", url.trim_end_matches('/'));
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let method: reqwest::Method = method.parse().context("HTTP method")?;
        let mut req = client.request(method.clone(), &endpoint);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            // The API's errors are `{"error": "…"}`: show the message itself.
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.trim().to_string());
            anyhow::bail!("{method} {path}: {status}: {message}");
        }
        Ok(text)
    })
}

/// A query string of the given pairs (values percent-encoded), leaving out those without one.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let given: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| Some((*k, v.as_deref()?)))
        .collect();
    // Plain string pairs always encode.
    serde_html_form::to_string(&given).unwrap_or_default()
}

/// Unix ms as local `YYYY-MM-DD HH:MM` (what an operator reads), UTC+8 by the governance
/// calendar's default.
fn when(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| t.to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC)));
    match t {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => ms.to_string(),
    }
}

fn cases(url: &str, token: Option<&str>, action: CasesCommand) -> anyhow::Result<()> {
    use serde_json::Value;
    let mut out = std::io::stdout().lock();
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    match action {
        CasesCommand::List {
            state,
            department,
            category,
            town,
            open,
            limit,
            json,
        } => {
            let q = query(&[
                ("state", state),
                ("department", department),
                ("category", category),
                ("town", town),
                ("open", open.then(|| "true".to_string())),
                ("limit", Some(limit.to_string())),
            ]);
            let body = hub_request(url, token, "GET", &format!("/api/v1/cases?{q}"), None)?;
            if json {
                write!(out, "{body}")?;
                return Ok(());
            }
            let v: Value = serde_json::from_str(&body).context("not a case list")?;
            writeln!(
                out,
                "id\tstate\tlight\tcategory\tdepartment\ttown\tdeadline (UTC+8)"
            )?;
            for c in v["cases"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    s(&c["id"]),
                    s(&c["state"]),
                    s(&c["light"]),
                    s(&c["category"]),
                    s(&c["department"]),
                    s(&c["place"]["town"]),
                    when(c["deadline_ms"].as_i64())
                )?;
            }
            if let Some(next) = v["next"].as_str() {
                writeln!(out, "# more: the API's `after={next}` gives the next page")?;
            }
        }
        CasesCommand::Show { id, json } => {
            let body = hub_request(url, token, "GET", &format!("/api/v1/cases/{id}"), None)?;
            if json {
                write!(out, "{body}")?;
                return Ok(());
            }
            let c: Value = serde_json::from_str(&body).context("not a case")?;
            writeln!(
                out,
                "case {}  {}  {}  light {}  deadline {}",
                s(&c["id"]),
                s(&c["state"]),
                s(&c["category"]),
                s(&c["light"]),
                when(c["deadline_ms"].as_i64())
            )?;
            writeln!(
                out,
                "source {}  department {}  town {}  camera {}",
                s(&c["source"]),
                s(&c["department"]),
                s(&c["place"]["town"]),
                s(&c["camera"])
            )?;
            let evidence: Vec<String> = c["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            writeln!(out, "evidence {}", evidence.join(", "))?;
            for e in c["timeline"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "  {}  {:<18} {:<12} {} → {}  {}",
                    when(e["at_ms"].as_i64()),
                    s(&e["action"]),
                    s(&e["actor"]["id"]),
                    s(&e["from"]),
                    s(&e["to"]),
                    e["note"].as_str().unwrap_or("")
                )?;
            }
        }
        CasesCommand::Act {
            id,
            action,
            set,
            note,
            request_id,
        } => {
            let mut body = serde_json::json!({ "action": action, "note": note });
            for kv in set {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--set `{kv}`: expected FIELD=VALUE"))?;
                let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
                body[k] = v;
            }
            if let Some(r) = request_id {
                body["request_id"] = Value::String(r);
            }
            let answer = hub_request(
                url,
                token,
                "POST",
                &format!("/api/v1/cases/{id}/actions"),
                Some(body),
            )?;
            let v: Value = serde_json::from_str(&answer).context("not an action answer")?;
            writeln!(
                out,
                "{}: {} by {} → {}",
                id,
                s(&v["entry"]["action"]),
                s(&v["entry"]["actor"]["id"]),
                s(&v["case"]["state"])
            )?;
        }
        CasesCommand::Evaluate { from, to, csv } => {
            let q = query(&[
                ("from", Some(from)),
                ("to", Some(to)),
                ("format", Some("csv".to_string())),
            ]);
            let body = hub_request(url, token, "GET", &format!("/api/v1/evaluation?{q}"), None)?;
            if csv {
                write!(out, "{body}")?;
                return Ok(());
            }
            // The CSV's columns, as a table with the Chinese names operators know.
            let names = [
                "部门",
                "立案",
                "处置",
                "按期处置",
                "超期未处置",
                "应结案",
                "结案",
                "按期结案",
                "返工",
                "超期",
                "结案率",
                "按期结案率",
                "处置率",
                "按期处置率",
                "返工率",
                "立案数分值",
                "综合指标值",
            ];
            writeln!(out, "{}", names.join("\t"))?;
            for line in body.lines().skip(1) {
                writeln!(out, "{}", line.replace(',', "\t"))?;
            }
        }
    }
    Ok(())
}

fn device(action: DeviceCommand) -> anyhow::Result<()> {
    use cloud_hub::ingest::devices;
    let mut out = std::io::stdout().lock();
    match action {
        DeviceCommand::Add {
            id,
            data_dir,
            secret_out,
        } => {
            let secret = devices::add(&data_dir, &id)?;
            writeln!(out, "# credentials issued for {id}; edge agent config:")?;
            writeln!(out, "[mqtt]")?;
            writeln!(out, "username = \"{id}\"")?;
            match secret_out {
                Some(path) => {
                    devices::write_private(&path, format!("{secret}\n").as_bytes())?;
                    writeln!(out, "secret_file = {:?}", path.display().to_string())?;
                }
                None => {
                    writeln!(
                        out,
                        "secret_file = \"/etc/csb/device.secret\"  # a file (mode 0600) holding:"
                    )?;
                    writeln!(out, "# {secret}")?;
                }
            }
        }
        DeviceCommand::Enrol {
            id,
            data_dir,
            ttl_s,
            hub_url,
        } => {
            use cloud_hub::ingest::enrol;
            let ttl_ms = i64::try_from(ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX);
            let t = enrol::issue(&data_dir, &id, ttl_ms, csb_wire::now_ms())?;
            let expires = when(Some(t.expires_ms));
            writeln!(
                out,
                "# one-time enrolment token for {id}, valid until {expires} (UTC+8):"
            )?;
            writeln!(out, "{}", t.token)?;
            writeln!(out, "# at the box:")?;
            writeln!(
                out,
                "edge-agent provision --hub {hub_url} --token {} --config /etc/csb/agent.toml",
                t.token
            )?;
        }
        DeviceCommand::List { data_dir } => {
            for (id, rec) in devices::load(&data_dir)? {
                writeln!(out, "{id}\tadded_ms={}", rec.added_ms)?;
            }
        }
        DeviceCommand::Remove { id, data_dir } => {
            devices::remove(&data_dir, &id)?;
            writeln!(out, "removed {id}")?;
        }
    }
    Ok(())
}

fn main() {
    tune_memory();
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cloud-hub: error: {e:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    // Exit explicitly: rumqttd's router thread never ends and must not keep us alive, and the
    // runtime must not wait on blocked worker threads.
    std::process::exit(code);
}

/// Memory settings for a hub holding thousands of MQTT sessions (docs/broker.md, measured with
/// `bench-fleet`), before anything else runs:
/// - No transparent huge pages for this process (and what it starts). mimalloc asks the kernel
///   for huge pages on its 1 GiB arena; the many small, long-lived allocations of sessions are
///   spread over it, and each touched 2 MiB page then counts in full: ~300 KB of RSS per idle
///   connection with huge pages, ~65 KB without. 4 KiB page faults also zero less per allocation.
/// - Freed memory goes back to the OS after 10 ms instead of mimalloc 3's 1 s (its version 2's
///   default): with traffic, ~10 KB less per device, and memory returns when devices leave.
fn tune_memory() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and only sets a process flag.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // `mi_option_purge_delay` of the mimalloc this was built with (3.3.2); options are plain
    // enum numbers, so another version is left as it is rather than set the wrong option.
    const MI_VERSION: i32 = 30302;
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_version reads a constant; mi_option_set is called before any other thread
    // exists (it is not thread safe) with an option this version has.
    unsafe {
        if libmimalloc_sys::mi_version() == MI_VERSION {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10);
        }
    }
}

/// Run as a runtime worker goes idle: hands the OS back what this thread freed (a burst of
/// queries), at most once a second per thread. mimalloc otherwise returns it only on the
/// thread's next allocation, so an idle hub kept the memory of its last burst (~3 MB after
/// `bench-history`'s queries on 10 M events).
fn return_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.set(Some(now));
            // SAFETY: mi_collect only works on the calling thread's own heap (and purges what
            // the arenas marked free); no pointer is passed.
            unsafe { libmimalloc_sys::mi_collect(false) }
        }
    });
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Device { action } => device(action),
        Command::TlsCert {
            out_dir,
            hosts,
            days,
        } => {
            let f = cloud_hub::ingest::mqtt::tls::issue_certificates(&out_dir, &hosts, days)?;
            let mut out = std::io::stdout().lock();
            let q = |p: &std::path::Path| format!("{:?}", p.display().to_string());
            writeln!(out, "# hub config:")?;
            writeln!(out, "[mqtt_tls]")?;
            writeln!(out, "cert_file = {}", q(&f.hub_cert))?;
            writeln!(out, "key_file = {}", q(&f.hub_key))?;
            writeln!(out, "# edge agent config, [mqtt] section:")?;
            writeln!(out, "ca_file = {}", q(&f.ca_cert))?;
            writeln!(
                out,
                "# keep {} offline: it signs new hub certificates.",
                f.ca_key.display()
            )?;
            Ok(())
        }
        Command::Token { action } => token(action),
        Command::Cases { url, token, action } => cases(&url, token.as_deref(), action),
        Command::Model { url, token, action } => model_cli::run(&url, token.as_deref(), action),
        Command::Rollout { url, token, action } => rollout_cli::run(&url, token.as_deref(), action),
        Command::County { dir } => {
            let dir =
                dir.unwrap_or_else(|| PathBuf::from(cloud_hub::platform::county::DEFAULT_DIR));
            let c = cloud_hub::platform::county::County::load(&dir)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", c.summary())?;
            for w in &c.warnings {
                writeln!(out, "warning: {w}")?;
            }
            Ok(())
        }
        Command::Openapi { out } => {
            let text = cloud_hub::http::openapi::to_json(&cloud_hub::http::openapi());
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::stdout().lock().write_all(text.as_bytes())?,
            }
            Ok(())
        }
        Command::Inventory {
            url,
            token,
            csv,
            json,
            stale_after_s,
        } => {
            let format = if csv.is_some() { "csv" } else { "json" };
            let table = csv.as_deref().unwrap_or("devices");
            let endpoint = format!(
                "/api/v1/inventory?format={format}&table={table}&stale_after_s={stale_after_s}"
            );
            let body = hub_request(&url, token.as_deref(), "GET", &endpoint, None)?;
            let mut out = std::io::stdout().lock();
            if csv.is_some() || json {
                write!(out, "{body}")?;
            } else {
                let inv: cloud_hub::platform::inventory::Inventory = serde_json::from_str(&body)
                    .with_context(|| format!("{endpoint}: not an inventory report"))?;
                write!(out, "{}", inv.text())?;
            }
            Ok(())
        }
        Command::CheckConfig {
            file,
            governance,
            county,
        } => {
            if file.is_none() && governance.is_none() {
                anyhow::bail!("check-config needs a hub config FILE, --governance DIR, or both");
            }
            let mut county_dir = county;
            if let Some(file) = file {
                let config = HubConfig::load(&file)?;
                // As the hub would start them: departments known, secrets readable.
                cloud_hub::check_webhooks(&config)
                    .with_context(|| format!("{}: [webhooks]", file.display()))?;
                print!("{}", config.to_toml()?);
                county_dir = county_dir.or(config.county_dir);
            }
            if let Some(dir) = governance {
                check_governance(&dir, county_dir.as_deref())?;
            }
            Ok(())
        }
        Command::BenchTelemetry { opts, json } => {
            let report = bench_runtime("warn")?.block_on(cloud_hub::bench::series::run(&opts))?;
            print_report(json, &report, || report.to_string())
        }
        Command::BenchHistory { opts, json } => {
            let report = bench_runtime("warn")?.block_on(cloud_hub::bench::history::run(&opts))?;
            print_report(json, &report, || report.text())
        }
        Command::BenchCases { opts, json } => {
            let report = cloud_hub::bench::cases::run(&opts)?;
            print_report(json, &report, || report.text())
        }
        Command::BenchPlatform { opts, json } => {
            let report = bench_runtime("warn")?.block_on(cloud_hub::bench::platform::run(&opts))?;
            print_report(json, &report, || report.text())
        }
        Command::BenchFleet { opts, json } => {
            // One socket per device here, a second while one is half-open.
            raise_open_files(2 * opts.devices as u64 + 256);
            let report = bench_runtime("warn")?.block_on(cloud_hub::bench::fleet::run(&opts))?;
            print_report(json, &report, || report.text())
        }
        Command::BenchIngest { opts, json } => {
            // rumqttd logs ERROR lines for ordinary disconnects at the end of a phase.
            let report = bench_runtime("warn,rumqttd=off")?
                .block_on(cloud_hub::bench::ingest::run(&opts))?;
            print_report(json, &report, || report.text())
        }
        Command::Serve {
            config,
            mqtt_addr,
            http_addr,
            data_dir,
            county,
        } => {
            let mut cfg = match &config {
                Some(path) => HubConfig::load(path)?,
                None => HubConfig::default(),
            };
            if let Some(a) = mqtt_addr {
                cfg.mqtt_addr = a;
            }
            if let Some(a) = http_addr {
                cfg.http_addr = a;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(c) = county {
                cfg.county_dir = Some(c);
            } else if cfg.county_dir.is_none() {
                // Started from the repository: the sample county, so the demo's map has one.
                let sample = PathBuf::from(cloud_hub::platform::county::DEFAULT_DIR);
                if sample.join("county.toml").is_file() {
                    cfg.county_dir = Some(sample);
                }
            }
            cfg.validate()?;
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_park(return_freed_memory)
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(cfg))
        }
    }
}

/// `check-config --governance`: loads and checks the folder, prints what it holds, and warns
/// when the calendar has no holiday schedule for this year.
fn check_governance(dir: &Path, county: Option<&Path>) -> anyhow::Result<()> {
    use cloud_hub::cases::config::Governance;
    let g = Governance::load(dir)?;
    if let Some(c) = county {
        let county = cloud_hub::platform::county::County::load(c)?;
        let towns = county.towns.iter().map(|t| t.props.id.clone()).collect();
        let zones = county.zones.iter().map(|z| z.props.id.clone()).collect();
        g.check_places(&towns, &zones)?;
    }
    let auto = g.categories.iter().filter(|c| c.auto.is_some()).count();
    println!(
        "governance {}: {} categories ({auto} registered automatically from events), {} departments, {} routes; calendar years {:?}; {} working minutes a day{}",
        dir.display(),
        g.categories.len(),
        g.departments.len(),
        g.routes.len(),
        g.calendar_years,
        g.calendar.minutes_per_day(),
        if county.is_some() { "; routing places match the county model" } else { "" },
    );
    let (year, _, _) = csb_wire::civil_from_days(csb_wire::now_ms().div_euclid(86_400_000));
    if !g.calendar_years.contains(&(year as i32)) {
        eprintln!(
            "warning: {}: no holiday schedule for {year}: working-time limits will count its holidays as working days",
            dir.join(cloud_hub::cases::config::CALENDAR).display()
        );
    }
    Ok(())
}

fn init_logging() {
    init_logging_at("info,rumqttd=warn");
}

fn init_logging_at(default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_string());
    // Logs go to stderr: stdout carries only the ready line that scripts wait for.
    tracing_subscriber::registry()
        .with(filter)
        .with(RumqttdNoise::new(&directives))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
}

async fn serve(cfg: HubConfig) -> anyhow::Result<()> {
    // Each device holds three descriptors: its socket, and both ends of the front's loopback
    // connection to rumqttd. The rest: files, HTTP clients, connections being admitted.
    let wanted = 3 * cfg.mqtt_max_connections as u64 + 1024;
    let got = raise_open_files(wanted);
    if got < wanted {
        tracing::warn!(
            limit = got,
            wanted,
            "the open-files limit allows fewer MQTT devices than mqtt_max_connections; raise the \
             hard limit (systemd: LimitNOFILE={wanted}) or lower mqtt_max_connections"
        );
    }
    let shutdown = shutdown_signal()?;
    let http = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", cfg.http_addr))?;
    let hub = Hub::start(cfg, http).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "cloud-hub ready mqtt={} http=http://{}",
            hub.mqtt_addr(),
            hub.http_addr()
        )?;
        out.flush()?;
    }
    hub.run(shutdown).await?;
    Ok(())
}

/// Registers for SIGINT (Ctrl-C) and SIGTERM now, so a signal that arrives while the hub is
/// starting is not lost (or fatal); the returned future resolves on the first one.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        })
    }
}

/// Raises this process's soft limit on open files towards `wanted` (never above the hard limit,
/// never lowering it); returns the limit now in force.
fn raise_open_files(wanted: u64) -> u64 {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit read and write the struct given.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let target = wanted.min(lim.rlim_max as u64).max(lim.rlim_cur as u64);
        if target > lim.rlim_cur as u64 {
            lim.rlim_cur = target as libc::rlim_t;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return 0;
            }
        }
        lim.rlim_cur as u64
    }
    #[cfg(not(unix))]
    wanted
}

/// A benchmark's runtime, with logging at `filter` (quiet: the report is the output).
fn bench_runtime(filter: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    init_logging_at(filter);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A benchmark report as JSON or as its text.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
    } else {
        write!(out, "{}", text())?;
    }
    Ok(())
}
