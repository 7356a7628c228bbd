//! The checks that need nothing but this box: runtime, model, GStreamer, cameras, disk, outbox.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Verdict;
use crate::config::{AgentConfig, CameraConfig};
use crate::model::manifest::Manifest;
use crate::model::{locate, runtime, Detector};
use crate::outbox::Outbox;
use crate::source::{self, Pacing, Pulled, Source};

const SETUP_FIX: &str = "run `make setup` in the install folder";

pub fn ort_runtime(cfg: &AgentConfig) -> Verdict {
    let lib = match locate::ort_library(cfg.model.ort_library.as_deref()) {
        Ok(l) => l,
        Err(e) => return Verdict::failed_with_fix_inside(&e.to_string(), SETUP_FIX),
    };
    let shown = std::fs::canonicalize(&lib).unwrap_or(lib.clone());
    match runtime::probe(&lib) {
        Ok(i) if i.supported => Verdict::ok(format!("ONNX Runtime {} ({})", i.version, shown.display())),
        Ok(i) => Verdict::failed(
            format!(
                "ONNX Runtime {} at {} is too old: this agent needs 1.{} or newer",
                i.version,
                shown.display(),
                runtime::API_VERSION
            ),
            "run `make setup` (installs the pinned runtime into .cache/onnxruntime/) or point ORT_DYLIB_PATH / [model] ort_library at a newer libonnxruntime.so",
        ),
        Err(e) => Verdict::failed(
            format!("cannot load ONNX Runtime: {e}"),
            "reinstall ONNX Runtime with `make setup`, or point ORT_DYLIB_PATH / [model] ort_library at a working libonnxruntime.so",
        ),
    }
}

pub fn model_file(cfg: &AgentConfig) -> Verdict {
    let m = &cfg.model;
    let dir = match locate::models_dir(m.models_dir.as_deref()) {
        Ok(d) => d,
        Err(e) => return Verdict::failed_with_fix_inside(&e.to_string(), SETUP_FIX),
    };
    let manifest_path = dir.join("manifest.toml");
    let entry = match Manifest::load(&manifest_path)
        .and_then(|mf| mf.get(&m.name, &manifest_path).cloned())
    {
        Ok(e) => e,
        Err(e) => return Verdict::failed(
            e.to_string(),
            "set [model] name to a model the manifest lists, or install the manifest that names it",
        ),
    };
    let path = match locate::model_file(m.path.as_deref(), &dir, &entry.file) {
        Ok(p) => p,
        Err(e) => return Verdict::failed_with_fix_inside(&e.to_string(), SETUP_FIX),
    };
    let sha = match crate::model::detector::sha256_file(&path) {
        Ok(s) => s,
        Err(e) => {
            return Verdict::failed(
                format!("cannot read {}: {e}", path.display()),
                "check the file's permissions, or reinstall it with `make setup`",
            )
        }
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let what = format!(
        "{} {} ({:.1} MB)",
        entry.name,
        path.display(),
        size as f64 / 1e6
    );
    if sha == entry.sha256 {
        Verdict::ok(format!("{what}, sha256 matches the manifest"))
    } else {
        // A re-export of the same model differs byte-wise; the self-test judges behaviour.
        Verdict::warning(
            format!("{what}: sha256 {} is not the manifest's {}", &sha[..12], &entry.sha256[..12]),
            "if this is not a deliberate re-export, reinstall the model (`make setup`); the self-test shows whether it behaves",
        )
    }
}

pub fn model_selftest(cfg: &AgentConfig) -> Verdict {
    let t = Instant::now();
    let mut det = match Detector::load(&cfg.model) {
        Ok(d) => d,
        Err(e) => {
            return Verdict::failed_with_fix_inside(
                &e.to_string(),
                "the model file does not load: reinstall it (`make setup`) or roll back to the last good version",
            )
        }
    };
    let load_ms = t.elapsed().as_millis();
    match crate::selftest::run(&mut det) {
        Ok(o) if o.passed() => Verdict::ok(format!(
            "{} loads ({load_ms} ms) and passes its self-test on {}: {} detections, inference {:.0} ms",
            det.entry().name,
            file_name(&o.image),
            o.found.len(),
            o.infer_ms
        )),
        Ok(o) => Verdict::failed(
            format!(
                "{} fails its self-test on {}: missing {}",
                det.entry().name,
                file_name(&o.image),
                o.missing.join("; ")
            ),
            "the model, its labels file or its manifest entry is wrong: reinstall the model or roll back to the last good version",
        ),
        Err(crate::selftest::SelfTestError::None(name)) => Verdict::warning(
            format!("{name} loads ({load_ms} ms) but its manifest entry has no self-test"),
            "add [models.selftest] (an image and the detections it must give) to the manifest",
        ),
        Err(e) => Verdict::failed_with_fix_inside(&e.to_string(), SETUP_FIX),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Elements a camera pipeline needs, with the Debian package providing each.
const FILE_ELEMENTS: &[(&str, &str)] = &[
    ("uridecodebin", "gstreamer1.0-plugins-base"),
    ("tee", "libgstreamer1.0-0"),
    ("queue", "libgstreamer1.0-0"),
    ("videoscale", "gstreamer1.0-plugins-base"),
    ("videoconvert", "gstreamer1.0-plugins-base"),
    ("capsfilter", "libgstreamer1.0-0"),
    ("appsink", "gstreamer1.0-plugins-base"),
    ("jpegdec", "gstreamer1.0-plugins-good"),
];
/// What an H.264 RTSP camera (the common roadside kind) needs besides.
const RTSP_ELEMENTS: &[(&str, &str)] = &[
    ("rtspsrc", "gstreamer1.0-plugins-good"),
    ("rtph264depay", "gstreamer1.0-plugins-good"),
    ("h264parse", "gstreamer1.0-plugins-bad"),
    ("avdec_h264", "gstreamer1.0-libav"),
];

/// Checks the elements; returns the verdict and the names missing.
pub fn gstreamer_plugins(needed: bool) -> (Verdict, Vec<&'static str>) {
    if let Err(e) = source::init() {
        return (
            Verdict::failed(
                e.to_string(),
                "install GStreamer: `apt install gstreamer1.0-plugins-base`",
            ),
            FILE_ELEMENTS
                .iter()
                .chain(RTSP_ELEMENTS)
                .map(|(e, _)| *e)
                .collect(),
        );
    }
    let missing: Vec<(&'static str, &'static str)> = FILE_ELEMENTS
        .iter()
        .chain(RTSP_ELEMENTS)
        .filter(|(e, _)| gstreamer::ElementFactory::find(e).is_none())
        .copied()
        .collect();
    let names: Vec<&'static str> = missing.iter().map(|(e, _)| *e).collect();
    let total = FILE_ELEMENTS.len() + RTSP_ELEMENTS.len();
    if missing.is_empty() {
        return (
            Verdict::ok(format!(
                "all {total} elements for files and H.264 RTSP cameras ({})",
                gstreamer::version_string()
            )),
            names,
        );
    }
    let mut pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    pkgs.sort();
    pkgs.dedup();
    let msg = format!(
        "missing: {}",
        missing
            .iter()
            .map(|(e, p)| format!("{e} ({p})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let fix = format!("sudo apt install {}", pkgs.join(" "));
    let v = if needed {
        Verdict::failed(msg, fix)
    } else {
        Verdict::warning(format!("{msg}; no camera uses them yet"), fix)
    };
    (v, names)
}

pub fn camera(cfg: &AgentConfig, cam: &CameraConfig, missing: &[&str], watch: Duration) -> Verdict {
    let rtsp = source::is_rtsp(&cam.uri);
    let needs: Vec<&str> = FILE_ELEMENTS
        .iter()
        .chain(if rtsp { RTSP_ELEMENTS } else { &[] })
        .map(|(e, _)| *e)
        .filter(|e| missing.contains(e))
        .collect();
    if !needs.is_empty() {
        return Verdict::skipped(format!(
            "needs GStreamer elements missing above: {}",
            needs.join(", ")
        ));
    }
    let shown = redact(&cam.uri);
    let uri = match source::to_uri(&cam.uri) {
        Ok(u) => u,
        Err(e) => {
            return Verdict::failed(
                format!("{shown}: {e}"),
                "correct the camera's uri in the config (a file path or rtsp://…)",
            )
        }
    };
    let target = input_size(cfg);
    let pacing = if rtsp {
        Pacing::Live
    } else {
        Pacing::EveryFrame
    };
    let dead_fix = if rtsp {
        "check the camera is powered and reachable from this box (ping it), and its URL, user and password (try the URL in VLC from a laptop on the same network)"
    } else {
        "check the file exists and is a video GStreamer can decode (`gst-discoverer-1.0 FILE`)"
    };
    let mut src = match Source::open(&cam.id, &uri, target, pacing) {
        Ok(s) => s,
        Err(e) => return Verdict::failed(format!("{shown}: {e}"), dead_fix),
    };
    let first = match src.next_frame(src.frame_timeout()) {
        Ok(Pulled::Frame(f)) => f,
        Ok(Pulled::End) => {
            return Verdict::failed(
                format!("{shown}: the stream ended before its first frame"),
                dead_fix,
            )
        }
        Err(e) => return Verdict::failed(format!("{shown}: {e}"), dead_fix),
    };
    let t0 = Instant::now();
    let mut frames = 0u32;
    let mut last = t0;
    while t0.elapsed() < watch {
        match src.next_frame(Duration::from_secs(5)) {
            Ok(Pulled::Frame(_)) => {
                frames += 1;
                last = Instant::now();
            }
            Ok(Pulled::End) => break,
            Err(e) => {
                return Verdict::failed(
                    format!("{shown}: decoding stopped after {} frames: {e}", frames + 1),
                    dead_fix,
                )
            }
        }
    }
    let secs = (last - t0).as_secs_f64();
    let fps = if frames > 0 && secs > 0.0 {
        frames as f64 / secs
    } else {
        0.0
    };
    let what = format!(
        "{shown}: decoding {}×{} at {fps:.1} fps{}",
        first.src_width,
        first.src_height,
        if rtsp {
            ""
        } else {
            " (a file: as fast as it decodes)"
        }
    );
    if rtsp && fps > 0.0 && fps < 5.0 {
        Verdict::warning(
            format!("{what}: slow for detection"),
            "check the camera's frame-rate setting and the network between it and this box",
        )
    } else {
        Verdict::ok(what)
    }
}

/// `rtsp://user:pass@host/…` → `rtsp://user:***@host/…`: doctor output gets pasted into tickets.
fn redact(uri: &str) -> String {
    if let Some((scheme, rest)) = uri.split_once("://") {
        if let Some((cred, host)) = rest.split_once('@') {
            if let Some((user, _)) = cred.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    uri.to_string()
}

/// The model's input size, from the manifest when it can be read (frames are scaled to it).
fn input_size(cfg: &AgentConfig) -> (u32, u32) {
    locate::models_dir(cfg.model.models_dir.as_deref())
        .ok()
        .and_then(|d| {
            let p = d.join("manifest.toml");
            Manifest::load(&p)
                .ok()?
                .get(&cfg.model.name, &p)
                .ok()
                .map(|e| (e.input.width, e.input.height))
        })
        .unwrap_or((416, 416))
}

/// Free space below this fails: an outage of a busy camera fills it in hours.
const MIN_FREE: u64 = 64 << 20;

pub fn disk_space(cfg: &AgentConfig) -> Verdict {
    let dir = cfg.outbox_dir();
    let Some(existing) = dir.ancestors().find(|a| a.exists()) else {
        return Verdict::failed(
            format!("no part of {} exists", dir.display()),
            "set [outbox] dir to a folder on the data disk",
        );
    };
    let (free, total) = match statvfs(existing) {
        Ok(v) => v,
        Err(e) => {
            return Verdict::failed(
                format!("cannot query the disk of {}: {e}", existing.display()),
                "check the outbox folder is on a mounted disk",
            )
        }
    };
    let used = dir_size(&dir);
    let room = cfg.outbox.max_bytes.saturating_sub(used);
    let what = format!(
        "{} free of {} on the disk of {} (outbox uses {}, may grow to {})",
        mib(free),
        mib(total),
        dir.display(),
        mib(used),
        mib(cfg.outbox.max_bytes)
    );
    if free < MIN_FREE {
        Verdict::failed(
            what,
            "free space on that disk (old logs, recordings), or move [outbox] dir to a bigger one: events waiting for the uplink are stored there",
        )
    } else if free < room {
        Verdict::warning(
            what,
            "an outage could fill the disk before the outbox reaches max_bytes: free space or lower [outbox] max_bytes",
        )
    } else {
        Verdict::ok(what)
    }
}

fn mib(b: u64) -> String {
    if b >= 10 << 30 {
        format!("{:.0} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn statvfs(p: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte")
    })?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `s` a buffer for exactly one statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `s`.
    let s = unsafe { s.assume_init() };
    // 32-bit on armhf gateways, 64-bit here.
    #[allow(clippy::unnecessary_cast)]
    let frsize = s.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok((s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

pub fn outbox_backlog(cfg: &AgentConfig) -> Verdict {
    let dir: PathBuf = cfg.outbox_dir();
    if !dir.join("conf").exists() && !dir.join("db").exists() {
        return Verdict::ok(format!("empty (no outbox yet at {})", dir.display()));
    }
    match Outbox::open(&dir, &cfg.outbox) {
        Ok(ob) => {
            let s = ob.snapshot();
            ob.close();
            judge_backlog(cfg, s.pending, s.pending_events, s.bytes, s.oldest_age_ms, "")
        }
        // The running agent holds it: judge what it last reported.
        Err(e) if e.to_string().contains("lock") => match crate::localstatus::read(&dir) {
            Ok(st) if st.alive(csb_wire::now_ms()) => match &st.outbox {
                Some(o) => judge_backlog(
                    cfg,
                    o.pending,
                    o.pending_events,
                    o.bytes,
                    o.oldest_age_ms,
                    &format!(" (from the running agent, pid {})", st.pid),
                ),
                None => Verdict::skipped("the running agent has not reported its outbox yet"),
            },
            _ => Verdict::skipped(format!(
                "the outbox at {} is held by another process and no live agent status is beside it",
                dir.display()
            )),
        },
        Err(e) => Verdict::failed(
            e.to_string(),
            "see `edge-agent queue` for what it holds; a damaged outbox can be moved aside (the agent starts a new one)",
        ),
    }
}

fn judge_backlog(
    cfg: &AgentConfig,
    pending: u64,
    events: u64,
    bytes: u64,
    oldest_ms: u64,
    whose: &str,
) -> Verdict {
    let age = Duration::from_millis(oldest_ms);
    let full = bytes as f64 / cfg.outbox.max_bytes as f64;
    let what = format!(
        "{pending} waiting ({events} events), {} of {} ({:.0} %), oldest {}{whose}",
        mib(bytes),
        mib(cfg.outbox.max_bytes),
        full * 100.0,
        human_age(age)
    );
    let drain_fix = "the uplink is not draining it: fix broker-reachable / broker-login above; records leave as soon as the hub acks them";
    if pending == 0 {
        Verdict::ok(format!("empty: everything was delivered{whose}"))
    } else if full >= 0.8 || age.as_secs() >= cfg.outbox.max_age_s / 2 {
        Verdict::failed(
            format!(
                "{what}: the oldest will be dropped soon (at {} or {} old)",
                mib(cfg.outbox.max_bytes),
                human_age(Duration::from_secs(cfg.outbox.max_age_s))
            ),
            drain_fix,
        )
    } else if age >= Duration::from_secs(300) {
        Verdict::warning(what, drain_fix)
    } else {
        Verdict::ok(what)
    }
}

pub(crate) fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_passwords_are_not_printed() {
        assert_eq!(
            redact("rtsp://admin:secret@10.0.0.9:554/s1"),
            "rtsp://admin:***@10.0.0.9:554/s1"
        );
        assert_eq!(redact("rtsp://10.0.0.9/s1"), "rtsp://10.0.0.9/s1");
        assert_eq!(redact("/data/a.avi"), "/data/a.avi");
    }

    #[test]
    fn statvfs_reads_this_disk() {
        let (free, total) = statvfs(Path::new("/")).unwrap();
        assert!(total > 0 && free <= total);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(human_age(Duration::from_secs(5)), "5 s");
        assert_eq!(human_age(Duration::from_secs(600)), "10 min");
        assert_eq!(human_age(Duration::from_secs(3 * 86400)), "3 days");
    }
}
