//! `cloud-hub rollout start|status|pause|resume|abort`: rollouts of a running hub, over its
//! REST API (`/api/v1/rollouts`), for operators at a terminal and scripts (`--json`).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use super::{hub_request, when};

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout of a warehouse model: the canary first, then batches.
    Start {
        /// The model, `NAME@VERSION` (registered and ready in the warehouse).
        #[arg(long)]
        model: String,
        /// Devices `SITE/DEVICE`, comma-separated, in the order batches take them.
        #[arg(long, value_delimiter = ',', conflicts_with = "group")]
        devices: Vec<String>,
        /// A device group instead of --devices.
        #[arg(long)]
        group: Option<String>,
        /// The canary (default: the first device).
        #[arg(long)]
        canary: Option<String>,
        /// A batch size after the canary: a count (`2`) or a percentage (`25%`); repeat for
        /// several, the last repeats. Default: the rest at once.
        #[arg(long = "batch")]
        batches: Vec<String>,
        /// Percent of a step's devices that must succeed before the next step.
        #[arg(long, default_value_t = 100)]
        success_threshold: u32,
        /// Abort when more than this percent of the devices started failed.
        #[arg(long, default_value_t = 0)]
        max_failures: u32,
        /// Seconds a device must stay healthy on the new model.
        #[arg(long, default_value_t = 60)]
        soak: u32,
        /// Seconds a device may take to apply and soak before it counts as failed.
        #[arg(long, default_value_t = 600)]
        device_timeout: u32,
        /// Seconds without a status that fail a soaking device.
        #[arg(long, default_value_t = 60)]
        silent: u32,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Every rollout, or one in detail (devices, reasons, the log).
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Start no new device (those updating go on and are judged).
    Pause { id: String },
    /// Go on after a pause.
    Resume { id: String },
    /// Stop: devices updating go back to their previous configuration.
    Abort { id: String },
}

fn batch(s: &str) -> anyhow::Result<Value> {
    let bad = || anyhow::anyhow!("--batch `{s}`: give a count (`2`) or a percentage (`25%`)");
    match s.strip_suffix('%') {
        Some(p) => Ok(json!({ "percent": p.trim().parse::<u32>().map_err(|_| bad())? })),
        None => Ok(json!({ "count": s.trim().parse::<u32>().map_err(|_| bad())? })),
    }
}

pub fn run(url: &str, token: Option<&str>, action: RolloutCommand) -> anyhow::Result<()> {
    match action {
        RolloutCommand::Start {
            model,
            devices,
            group,
            canary,
            batches,
            success_threshold,
            max_failures,
            soak,
            device_timeout,
            silent,
            json: as_json,
        } => {
            let (name, version) = model
                .split_once('@')
                .context("--model must be NAME@VERSION")?;
            let batches = batches
                .iter()
                .map(|b| batch(b))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut body = json!({
                "model": { "name": name, "version": version },
                "devices": devices,
                "batches": batches,
                "success_threshold_pct": success_threshold,
                "max_failures_pct": max_failures,
                "soak_s": soak,
                "device_timeout_s": device_timeout,
                "silent_s": silent,
            });
            if let Some(g) = group {
                body["group"] = json!(g);
            }
            if let Some(c) = canary {
                body["canary"] = json!(c);
            }
            let text = hub_request(url, token, "POST", "/api/v1/rollouts", Some(body))?;
            print_one(&text, as_json)
        }
        RolloutCommand::Status { id: None, json } => {
            let text = hub_request(url, token, "GET", "/api/v1/rollouts", None)?;
            if json {
                println!("{text}");
                return Ok(());
            }
            let v: Value = serde_json::from_str(&text)?;
            println!(
                "{:<8} {:<24} {:<10} {:>6} {:>8}  {:<17} REASON",
                "ID", "MODEL", "STATE", "STEP", "DEVICES", "CREATED"
            );
            for r in v["rollouts"].as_array().into_iter().flatten() {
                println!(
                    "{:<8} {:<24} {:<10} {:>6} {:>8}  {:<17} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["model"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or(""),
                    format!("{}/{}", r["step"], r["steps"]),
                    r["devices"],
                    when(r["created_ms"].as_i64()),
                    r["reason"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        RolloutCommand::Status { id: Some(id), json } => {
            let text = hub_request(url, token, "GET", &format!("/api/v1/rollouts/{id}"), None)?;
            print_one(&text, json)
        }
        RolloutCommand::Pause { id } => act(url, token, &id, "pause"),
        RolloutCommand::Resume { id } => act(url, token, &id, "resume"),
        RolloutCommand::Abort { id } => act(url, token, &id, "abort"),
    }
}

fn act(url: &str, token: Option<&str>, id: &str, action: &str) -> anyhow::Result<()> {
    let text = hub_request(
        url,
        token,
        "POST",
        &format!("/api/v1/rollouts/{id}/{action}"),
        None,
    )?;
    print_one(&text, false)
}

/// One rollout for a person: state, steps, each device, the newest log lines.
fn print_one(text: &str, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{text}");
        return Ok(());
    }
    let r: Value = serde_json::from_str(text)?;
    let model = format!(
        "{}@{}",
        r["model"]["name"].as_str().unwrap_or("?"),
        r["model"]["version"].as_str().unwrap_or("?")
    );
    let steps = r["steps"].as_array().map_or(0, Vec::len);
    println!(
        "{}  {model}  {}  step {}/{steps}  by {} at {}",
        r["id"].as_str().unwrap_or(""),
        r["state"].as_str().unwrap_or(""),
        r["step"],
        r["created_by"].as_str().unwrap_or(""),
        when(r["created_ms"].as_i64())
    );
    if let Some(reason) = r["reason"].as_str() {
        println!("reason: {reason}");
    }
    println!(
        "\n{:<28} {:>4}  {:<10} {:>8}  REASON",
        "DEVICE", "STEP", "STATE", "VERSION"
    );
    if let Some(devs) = r["devices"].as_object() {
        for (d, run) in devs {
            println!(
                "{:<28} {:>4}  {:<10} {:>8}  {}",
                d,
                run["step"],
                run["state"].as_str().unwrap_or(""),
                run["version"]
                    .as_u64()
                    .map_or("-".into(), |v| v.to_string()),
                run["reason"].as_str().unwrap_or("")
            );
        }
    }
    println!("\nlog (newest last):");
    let log = r["log"].as_array().cloned().unwrap_or_default();
    for e in log.iter().skip(log.len().saturating_sub(20)) {
        println!(
            "  {}  {:<12} {} {}",
            when(e["at_ms"].as_i64()),
            e["what"].as_str().unwrap_or(""),
            e["device"].as_str().unwrap_or(""),
            e["note"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
