//! Camera ingest through GStreamer: `uridecodebin` (file://, rtsp://, http:// …) → `videoscale` →
//! `videoconvert` → `appsink` delivering BGR frames already scaled to fit the model input, so the
//! detector never resizes full-size frames itself.
//!
//! Network cameras fail: [`Source::frame_timeout`] says how long a camera may stay silent before
//! it counts as stalled, and [`Backoff`] paces the reconnects (the camera thread in
//! `pipeline.rs` drives both). `rtsp://` sources get `rtspsrc` settings suited to a live view
//! (see [`RTSP_LATENCY_MS`] and friends); use `rtspt://` to force RTP over the RTSP TCP
//! connection where UDP is blocked (plain `rtsp://` tries UDP and falls back to TCP).

pub use crate::jitter::Backoff;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use thiserror::Error;

use crate::model::yolox::scaled_size;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    #[error("camera `{camera}` ({uri}): cannot build pipeline: {message}")]
    Build {
        camera: String,
        uri: String,
        message: String,
    },
    #[error("camera `{camera}` ({uri}): {message}")]
    Stream {
        camera: String,
        uri: String,
        message: String,
    },
    #[error("camera `{camera}` ({uri}): no frame within {secs} s")]
    Timeout {
        camera: String,
        uri: String,
        secs: u64,
    },
}

/// How long any source may take to deliver its first frame after opening (connect, negotiate,
/// wait for a key frame), and how long a non-RTSP source may then go without a frame.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an RTSP stream that has delivered frames may go silent before it counts as stalled
/// and is reopened: several GOPs of a normal camera, short enough to notice an outage quickly.
pub const RTSP_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// `rtspsrc` jitter-buffer latency: enough to reorder a LAN's packets, far below the 2 s default
/// so frames stay live; late packets are dropped (`drop-on-latency`) rather than queued.
pub const RTSP_LATENCY_MS: u32 = 200;
/// `rtspsrc` `tcp-timeout`: an RTSP request (connect, DESCRIBE, SETUP…) fails after this
/// instead of the 20 s default, so an unreachable camera is retried sooner.
pub const RTSP_TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// `rtspsrc` `timeout`: with no UDP packet for this long, retry the stream over TCP (the
/// fallback for networks that drop UDP).
pub const RTSP_UDP_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether `uri` is an RTSP stream (`rtsp://`, `rtspt://`, `rtsps://`, …).
pub fn is_rtsp(uri: &str) -> bool {
    uri.split_once("://")
        .is_some_and(|(scheme, _)| scheme.to_ascii_lowercase().starts_with("rtsp"))
}

/// Tunes the `rtspsrc` that `uridecodebin` creates for an `rtsp://` URI (its `source-setup`
/// signal); other sources are left as they are. Properties are set only where this GStreamer
/// has them.
fn setup_network_source(source: &gst::Element) {
    let is_rtspsrc = source
        .factory()
        .is_some_and(|f| f.name().as_str() == "rtspsrc");
    if !is_rtspsrc {
        return;
    }
    if source.has_property("latency") {
        source.set_property("latency", RTSP_LATENCY_MS);
    }
    if source.has_property("drop-on-latency") {
        source.set_property("drop-on-latency", true);
    }
    if source.has_property("tcp-timeout") {
        source.set_property("tcp-timeout", RTSP_TCP_TIMEOUT.as_micros() as u64);
    }
    if source.has_property("timeout") {
        source.set_property("timeout", RTSP_UDP_TIMEOUT.as_micros() as u64);
    }
}

/// How frames are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// A live view: play at the stream's own rate and always hand over the newest frame, dropping
    /// the rest when detection is slower than the camera.
    Live,
    /// Every frame, as fast as the consumer takes them (files for `detect` and `bench`).
    EveryFrame,
}

/// One decoded, scaled BGR frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub pts_ms: Option<u64>,
    /// Wall-clock time the frame left the decoder, Unix ms.
    pub ts_ms: i64,
    /// Size of the source frame (boxes are reported in these pixels).
    pub src_width: u32,
    pub src_height: u32,
    /// Size and row stride of `data` (scaled).
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub data: Vec<u8>,
    /// The newest full-resolution frame, when the source was opened with `full_frames`.
    pub full: Option<FullFrame>,
}

impl Frame {
    pub fn scaled(&self) -> crate::model::ScaledImage<'_> {
        crate::model::ScaledImage {
            data: &self.data,
            width: self.width,
            height: self.height,
            stride: self.stride,
        }
    }
}

/// What `next_frame` can return besides a frame.
#[derive(Debug)]
pub enum Pulled {
    Frame(Frame),
    /// End of a finite stream (file).
    End,
}

pub fn init() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::Init(e.to_string()))
}

/// Turns a plain path into a `file://` URI; URIs pass through.
pub fn to_uri(input: &str) -> Result<String, String> {
    if input.contains("://") {
        return Ok(input.to_string());
    }
    let path = std::fs::canonicalize(input).map_err(|e| format!("{input}: {e}"))?;
    gst::glib::filename_to_uri(&path, None)
        .map(|u| u.to_string())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A full-resolution BGR frame, kept as the GStreamer sample itself (reference-counted, no
/// copy) and only read when evidence is drawn.
#[derive(Debug, Clone)]
pub struct FullFrame {
    sample: gst::Sample,
    pub width: u32,
    pub height: u32,
    pub stride: usize,
}

impl FullFrame {
    /// Runs `f` on the frame as an OpenCV BGR `Mat` (borrowed, valid during the call).
    pub fn with_mat<R>(
        &self,
        f: impl FnOnce(&opencv::core::Mat) -> Result<R, crate::vision::VisionError>,
    ) -> Result<R, crate::vision::VisionError> {
        let short = || crate::vision::VisionError::ShortBuffer {
            len: 0,
            width: self.width,
            height: self.height,
            stride: self.stride,
        };
        let buffer = self.sample.buffer().ok_or_else(short)?;
        let map = buffer.map_readable().map_err(|_| short())?;
        crate::vision::with_bgr_mat(map.as_slice(), self.width, self.height, self.stride, f)
    }
}

/// What to build for a camera.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    /// Model input size the scaled frames must fit.
    pub target: (u32, u32),
    pub pacing: Pacing,
    /// Also deliver full-resolution BGR frames (for evidence snapshots).
    pub full_frames: bool,
}

/// A running decode pipeline for one camera.
pub struct Source {
    camera: String,
    uri: String,
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    full_sink: Option<gst_app::AppSink>,
    last_full: Option<FullFrame>,
    src_size: Arc<Mutex<Option<(u32, u32)>>>,
    seq: u64,
}

impl Source {
    /// Builds and starts the pipeline. `target` is the model input size the frames must fit.
    pub fn open(
        camera: &str,
        uri: &str,
        target: (u32, u32),
        pacing: Pacing,
    ) -> Result<Self, SourceError> {
        Self::open_with(
            camera,
            uri,
            SourceOptions {
                target,
                pacing,
                full_frames: false,
            },
        )
    }

    /// `uridecodebin ! tee`, then `queue ! videoscale ! videoconvert ! capsfilter ! appsink` for
    /// the detector and, when asked, `queue ! videoconvert ! appsink` at full resolution holding
    /// only the newest frame.
    pub fn open_with(camera: &str, uri: &str, opts: SourceOptions) -> Result<Self, SourceError> {
        init()?;
        let (target, pacing) = (opts.target, opts.pacing);
        let build_err = |message: String| SourceError::Build {
            camera: camera.to_string(),
            uri: uri.to_string(),
            message,
        };
        let pipeline = gst::Pipeline::with_name(&format!("cam-{camera}"));
        let make = |factory: &str| {
            gst::ElementFactory::make(factory)
                .build()
                .map_err(|e| build_err(format!("element `{factory}` is missing ({e}); install the GStreamer plugins (make setup)")))
        };
        let decode = gst::ElementFactory::make("uridecodebin")
            .property("uri", uri)
            .build()
            .map_err(|e| build_err(format!("uridecodebin: {e}")))?;
        decode.connect("source-setup", false, |args| {
            if let Some(Ok(source)) = args.get(1).map(|v| v.get::<gst::Element>()) {
                setup_network_source(&source);
            }
            None
        });
        let tee = make("tee")?;
        let queue = make("queue")?;
        let scale = make("videoscale")?;
        // Bilinear, as the model's reference preprocessing (cv2.resize INTER_LINEAR) does.
        scale.set_property_from_str("method", "bilinear");
        let convert = make("videoconvert")?;
        let filter = make("capsfilter")?;
        let live = pacing == Pacing::Live;
        let is_network = !uri.starts_with("file:");
        let bgr = gst::Caps::builder("video/x-raw")
            .field("format", "BGR")
            .build();
        let sink = gst_app::AppSink::builder()
            .caps(&bgr)
            .max_buffers(if live { 1 } else { 4 })
            .drop(live)
            // Files in live mode play at their own frame rate so they behave like a camera;
            // network streams are already paced by the sender.
            .sync(live && !is_network)
            .build();

        pipeline
            .add_many([
                &decode,
                &tee,
                &queue,
                &scale,
                &convert,
                &filter,
                sink.upcast_ref(),
            ])
            .map_err(|e| build_err(e.to_string()))?;
        gst::Element::link_many([&tee, &queue, &scale, &convert, &filter, sink.upcast_ref()])
            .map_err(|e| build_err(e.to_string()))?;

        let full_sink = if opts.full_frames {
            let fq = make("queue")?;
            let fconv = make("videoconvert")?;
            let fsink = gst_app::AppSink::builder()
                .caps(&bgr)
                .max_buffers(1)
                .drop(true)
                .sync(live && !is_network)
                .build();
            pipeline
                .add_many([&fq, &fconv, fsink.upcast_ref()])
                .map_err(|e| build_err(e.to_string()))?;
            gst::Element::link_many([&tee, &fq, &fconv, fsink.upcast_ref()])
                .map_err(|e| build_err(e.to_string()))?;
            Some(fsink)
        } else {
            None
        };

        // The scaled size depends on the source size, known only once the decoder exposes its
        // pad: set the capsfilter then, and link.
        let src_size = Arc::new(Mutex::new(None));
        let size_slot = src_size.clone();
        let tee_weak = tee.downgrade();
        let filter_weak = filter.downgrade();
        let (tw, th) = target;
        decode.connect_pad_added(move |_, pad| {
            let Some(caps) = pad.current_caps().or_else(|| Some(pad.query_caps(None))) else {
                return;
            };
            let Some(s) = caps.structure(0) else { return };
            if !s.name().starts_with("video/") {
                return; // audio and subtitle pads are ignored
            }
            let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) else {
                tracing::warn!("decoder pad without fixed size: {caps}");
                return;
            };
            let (w, h) = (w.max(1) as u32, h.max(1) as u32);
            let (sw, sh, _) = scaled_size(w, h, tw, th);
            if let Ok(mut slot) = size_slot.lock() {
                *slot = Some((w, h));
            }
            let (Some(tee), Some(filter)) = (tee_weak.upgrade(), filter_weak.upgrade()) else {
                return;
            };
            filter.set_property(
                "caps",
                gst::Caps::builder("video/x-raw")
                    .field("format", "BGR")
                    .field("width", sw as i32)
                    .field("height", sh as i32)
                    .build(),
            );
            if let Some(sinkpad) = tee.static_pad("sink") {
                if !sinkpad.is_linked() {
                    if let Err(e) = pad.link(&sinkpad) {
                        tracing::warn!("cannot link decoder to tee: {e:?}");
                    }
                }
            }
        });

        let src = Source {
            camera: camera.to_string(),
            uri: uri.to_string(),
            pipeline,
            sink,
            full_sink,
            last_full: None,
            src_size,
            seq: 0,
        };
        src.pipeline.set_state(gst::State::Playing).map_err(|_| {
            src.bus_error()
                .unwrap_or_else(|| build_err("cannot start pipeline".into()))
        })?;
        Ok(src)
    }

    pub fn camera(&self) -> &str {
        &self.camera
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn stream_err(&self, message: String) -> SourceError {
        SourceError::Stream {
            camera: self.camera.clone(),
            uri: self.uri.clone(),
            message,
        }
    }

    /// The first error waiting on the bus, if any.
    fn bus_error(&self) -> Option<SourceError> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(err) = msg.view() {
                let from = err
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                let debug = err.debug().map(|d| d.to_string()).unwrap_or_default();
                let detail = debug.lines().last().unwrap_or("").to_string();
                return Some(self.stream_err(format!("{} (from {from}) {detail}", err.error())));
            }
        }
        None
    }

    /// Whether this source is an RTSP stream.
    pub fn is_rtsp(&self) -> bool {
        is_rtsp(&self.uri)
    }

    /// How long to wait for the next frame before the source counts as stalled:
    /// [`FIRST_FRAME_TIMEOUT`] until the first frame, then [`RTSP_STALL_TIMEOUT`] for RTSP
    /// streams (a live camera that stops sending is gone) and [`FIRST_FRAME_TIMEOUT`] otherwise.
    pub fn frame_timeout(&self) -> Duration {
        if self.seq > 0 && self.is_rtsp() {
            RTSP_STALL_TIMEOUT
        } else {
            FIRST_FRAME_TIMEOUT
        }
    }

    /// An error about this source's stream (for callers that decide a stream has failed).
    pub fn stream_error(&self, message: impl Into<String>) -> SourceError {
        self.stream_err(message.into())
    }

    /// Waits up to `timeout` for the next frame.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Pulled, SourceError> {
        // Without a stop flag the wait never ends early: `None` cannot come back.
        self.next_frame_or_stop(timeout, None)
            .map(|p| p.unwrap_or(Pulled::End))
    }

    /// As [`Source::next_frame`], but gives up early, returning `Ok(None)`, once `stop` is set
    /// (checked every 100 ms), so a silent camera cannot hold up a shutdown.
    pub fn next_frame_or_stop(
        &mut self,
        timeout: Duration,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<Pulled>, SourceError> {
        let step = Duration::from_millis(100);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.bus_error() {
                return Err(e);
            }
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Ok(None);
            }
            let t0 = Instant::now();
            if let Some(sample) = self
                .sink
                .try_pull_sample(gst::ClockTime::from_mseconds(step.as_millis() as u64))
            {
                return self.frame_from(sample).map(|f| Some(Pulled::Frame(f)));
            }
            if self.sink.is_eos() {
                return Ok(Some(Pulled::End));
            }
            // A sink that is not playing (yet) answers at once: wait out the step anyway, so
            // the timeout is wall-clock time, not a count of polls.
            if let Some(rest) = step.checked_sub(t0.elapsed()) {
                std::thread::sleep(rest);
            }
            if Instant::now() >= deadline {
                return Err(self.bus_error().unwrap_or(SourceError::Timeout {
                    camera: self.camera.clone(),
                    uri: self.uri.clone(),
                    secs: timeout.as_secs(),
                }));
            }
        }
    }

    fn frame_from(&mut self, sample: gst::Sample) -> Result<Frame, SourceError> {
        let caps = sample
            .caps()
            .ok_or_else(|| self.stream_err("sample without caps".into()))?;
        let info = gst_video::VideoInfo::from_caps(caps)
            .map_err(|e| self.stream_err(format!("bad caps {caps}: {e}")))?;
        let buffer = sample
            .buffer()
            .ok_or_else(|| self.stream_err("sample without buffer".into()))?;
        let map = buffer
            .map_readable()
            .map_err(|e| self.stream_err(format!("cannot map buffer: {e}")))?;
        let (src_width, src_height) = self
            .src_size
            .lock()
            .ok()
            .and_then(|s| *s)
            .unwrap_or((info.width(), info.height()));
        let stride = info.stride()[0].max(0) as usize;
        let needed = stride * info.height() as usize;
        if map.len() < needed {
            return Err(self.stream_err(format!("short buffer: {} < {needed} bytes", map.len())));
        }
        self.seq += 1;
        // The full-resolution branch keeps only its newest frame; it is at most a frame or two
        // apart from this one, which is fine for a snapshot.
        self.pull_full(gst::ClockTime::ZERO);
        Ok(Frame {
            seq: self.seq,
            pts_ms: buffer.pts().map(|p| p.mseconds()),
            ts_ms: csb_wire::now_ms(),
            src_width,
            src_height,
            width: info.width(),
            height: info.height(),
            stride,
            data: map.as_slice()[..needed].to_vec(),
            full: self.last_full.clone(),
        })
    }

    /// Takes the full-resolution branch's newest frame, if one comes within `wait`.
    fn pull_full(&mut self, wait: gst::ClockTime) {
        let Some(fs) = &self.full_sink else { return };
        if let Some(sample) = fs.try_pull_sample(wait) {
            if let Some(info) = sample
                .caps()
                .and_then(|c| gst_video::VideoInfo::from_caps(c).ok())
            {
                self.last_full = Some(FullFrame {
                    width: info.width(),
                    height: info.height(),
                    stride: info.stride()[0].max(0) as usize,
                    sample,
                });
            }
        }
    }

    /// The newest full-resolution frame (sources opened with `full_frames`), waiting up to
    /// `timeout` when none has come yet: that branch runs on its own thread and may lag.
    pub fn full_frame(&mut self, timeout: Duration) -> Option<FullFrame> {
        if self.last_full.is_none() {
            self.pull_full(gst::ClockTime::from_mseconds(timeout.as_millis() as u64));
        } else {
            self.pull_full(gst::ClockTime::ZERO);
        }
        self.last_full.clone()
    }

    /// Restarts a finite stream from the beginning (looping files).
    pub fn rewind(&mut self) -> Result<(), SourceError> {
        self.pipeline
            .seek_simple(
                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                gst::ClockTime::ZERO,
            )
            .map_err(|e| self.stream_err(format!("cannot rewind: {e}")))
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_names_the_camera_and_uri() {
        let uri = "file:///nonexistent/cam.mp4";
        let res = Source::open("cam-x", uri, (416, 416), Pacing::EveryFrame)
            .and_then(|mut s| s.next_frame(Duration::from_secs(5)).map(|_| ()));
        let err = res.unwrap_err().to_string();
        assert!(err.contains("cam-x") && err.contains(uri), "{err}");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let mut b = Backoff::new(min, max, 7);
        let nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for n in nominal {
            let d = b.next_delay().as_secs_f64();
            assert!((0.8 * n..=1.2 * n).contains(&d), "{d} s for nominal {n} s");
        }
        b.reset();
        assert_eq!(b.nominal(), min);
        let d = b.next_delay().as_secs_f64();
        assert!((0.8..=1.2).contains(&d), "{d} s after reset");
        // The jitter is real: 50 draws at the same nominal delay are not all alike, and they
        // spread over most of the ±20 % band.
        let draws: Vec<f64> = (0..50)
            .map(|_| {
                b.reset();
                b.next_delay().as_secs_f64()
            })
            .collect();
        let lo = draws.iter().cloned().fold(f64::MAX, f64::min);
        let hi = draws.iter().cloned().fold(f64::MIN, f64::max);
        assert!(lo >= 0.8 && hi <= 1.2 && hi - lo > 0.2, "{lo}..{hi}");
        // Generators started together with different salts do not retry in lock-step.
        let (mut c, mut d) = (Backoff::new(min, max, 1), Backoff::new(min, max, 2));
        let (cs, ds): (Vec<_>, Vec<_>) = (0..4).map(|_| (c.next_delay(), d.next_delay())).unzip();
        assert_ne!(cs, ds);
    }

    #[test]
    fn rtsp_uris_are_recognised() {
        assert!(is_rtsp("rtsp://10.0.0.7:554/stream1"));
        assert!(is_rtsp("RTSPT://cam/x"));
        assert!(is_rtsp("rtsps://cam/x"));
        assert!(!is_rtsp("file:///tmp/rtsp.mp4"));
        assert!(!is_rtsp("http://cam/rtsp"));
        assert!(!is_rtsp("rtsp.mp4"));
    }

    /// `rtspsrc` gets the live-view settings, and a camera whose port is closed fails within a
    /// few seconds with an error naming the camera and URI (then the caller reconnects).
    #[test]
    fn rtsp_source_is_tuned_and_a_closed_port_fails_fast() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let uri = format!("rtsp://127.0.0.1:{port}/nothing");
        let mut s = Source::open("cam-dead", &uri, (416, 416), Pacing::Live).unwrap();
        assert!(s.is_rtsp());
        assert_eq!(
            s.frame_timeout(),
            FIRST_FRAME_TIMEOUT,
            "before the first frame"
        );
        let rtspsrc = s
            .pipeline
            .iterate_recurse()
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| e.factory().is_some_and(|f| f.name() == "rtspsrc"))
            .expect("uridecodebin made an rtspsrc");
        assert_eq!(rtspsrc.property::<u32>("latency"), RTSP_LATENCY_MS);
        assert!(rtspsrc.property::<bool>("drop-on-latency"));
        assert_eq!(rtspsrc.property::<u64>("tcp-timeout"), 5_000_000);
        assert_eq!(rtspsrc.property::<u64>("timeout"), 3_000_000);
        let t0 = std::time::Instant::now();
        let err = s
            .next_frame_or_stop(Duration::from_secs(10), None)
            .unwrap_err()
            .to_string();
        assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
        assert!(err.contains("cam-dead") && err.contains(&uri), "{err}");
    }

    #[test]
    fn waiting_for_a_frame_ends_when_the_run_stops() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/media/vtest.avi");
        let uri = to_uri(path.to_str().unwrap()).unwrap();
        let mut s = Source::open("cam-stop", &uri, (416, 416), Pacing::Live).unwrap();
        let stop = AtomicBool::new(true);
        let t0 = std::time::Instant::now();
        let got = s
            .next_frame_or_stop(Duration::from_secs(10), Some(&stop))
            .unwrap();
        assert!(got.is_none());
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(s.frame_timeout(), FIRST_FRAME_TIMEOUT, "files are not RTSP");
    }

    #[test]
    fn to_uri_makes_file_uris() {
        let u = to_uri("Cargo.toml").unwrap();
        assert!(
            u.starts_with("file:///") && u.ends_with("/Cargo.toml"),
            "{u}"
        );
        assert_eq!(to_uri("rtsp://h/x").unwrap(), "rtsp://h/x");
        assert!(to_uri("/no/such/file")
            .unwrap_err()
            .contains("/no/such/file"));
    }

    /// Decodes real footage (vtest.avi from opencv-doc, installed by `make setup`) and checks
    /// the frames come scaled to fit the model input with the source size kept.
    #[test]
    fn decodes_and_scales_real_footage() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/media/vtest.avi");
        assert!(
            path.is_file(),
            "{} missing: run `make setup`",
            path.display()
        );
        let uri = to_uri(path.to_str().unwrap()).unwrap();
        let mut s = Source::open("cam-t", &uri, (416, 416), Pacing::EveryFrame).unwrap();
        for i in 1..=3 {
            let Pulled::Frame(f) = s.next_frame(Duration::from_secs(10)).unwrap() else {
                panic!("stream ended early");
            };
            assert_eq!(f.seq, i);
            assert_eq!((f.src_width, f.src_height), (768, 576));
            assert_eq!((f.width, f.height), (416, 312));
            assert!(f.stride >= 416 * 3);
            assert_eq!(f.data.len(), f.stride * 312);
            // Real picture content, not a blank frame.
            let mean = f.data.iter().map(|&b| b as u64).sum::<u64>() / f.data.len() as u64;
            assert!((20..235).contains(&mean), "mean {mean}");
        }
    }

    #[test]
    fn full_resolution_branch_delivers_source_sized_frames() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/media/vtest.avi");
        let uri = to_uri(path.to_str().unwrap()).unwrap();
        let opts = SourceOptions {
            target: (416, 416),
            pacing: Pacing::EveryFrame,
            full_frames: true,
        };
        let mut s = Source::open_with("cam-full", &uri, opts).unwrap();
        let mut full = None;
        // The full-resolution branch is a second appsink: under load its first frame can
        // trail the scaled one by several frames.
        for _ in 0..30 {
            if full.is_some() {
                break;
            }
            if let Pulled::Frame(f) = s.next_frame(Duration::from_secs(10)).unwrap() {
                assert_eq!((f.width, f.height), (416, 312), "scaled branch unchanged");
                full = f.full.or(full);
            }
        }
        let full = full.expect("a full-resolution frame within 30 frames");
        assert_eq!((full.width, full.height), (768, 576));
        let cols = full
            .with_mat(|m| Ok(opencv::prelude::MatTraitConst::cols(m)))
            .unwrap();
        assert_eq!(cols, 768);
    }
}
