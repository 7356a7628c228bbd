//! RTSP resilience, end to end: a real `cloud-hub` and `edge-agent` process, and an RTSP server
//! in this process (gstreamer-rtsp-server on 127.0.0.1) serving real H.264 footage in a loop.
//!
//! The agent watches two cameras: `cam-live` on the server and `cam-dead` on a closed port. The
//! test checks that cam-live runs while cam-dead keeps reconnecting, that stopping the server
//! turns cam-live into an outage (status `reconnecting`, `outages_total` counted), and that
//! frames flow again after the server comes back on the same port — within bounded times.
//! Camera states come from the hub's `GET /api/v1/devices`; per-camera counters from the
//! agent's telemetry, read straight off MQTT (the agent publishes it every second here through
//! `CSB_HEALTH_INTERVAL_MS`).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use csb_test_support::agent::AgentToml;
use csb_test_support::http::{eventually, get_json};
use csb_test_support::mqtt::Client;
use csb_test_support::process::{free_port, root, spawn_agent, Hub};
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use serde_json::Value;

const DEVICE: &str = "gw-rtsp-01";

/// The footage as H.264 access units (byte-stream, SPS/PPS before every key frame), read once
/// from the MP4 so every RTSP client can be fed an endless loop of it without re-encoding.
struct Clip {
    caps: gst::Caps,
    units: Vec<gst::Buffer>,
    /// Length of one pass; pass n is shifted by n times this.
    length: gst::ClockTime,
}

fn load_clip(path: &std::path::Path) -> Clip {
    assert!(path.is_file(), "{} is missing", path.display());
    let launch = format!(
        "filesrc location=\"{}\" ! qtdemux ! h264parse config-interval=-1 \
         ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false",
        path.display()
    );
    let pipeline = gst::parse::launch(&launch)
        .expect("clip pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .expect("appsink")
        .downcast::<gst_app::AppSink>()
        .expect("an appsink");
    pipeline.set_state(gst::State::Playing).expect("play clip");
    let (mut units, mut caps, mut end) = (Vec::new(), None, gst::ClockTime::ZERO);
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(5)) {
        caps = caps.or_else(|| sample.caps_owned());
        let buf = sample.buffer_owned().expect("sample buffer");
        if let Some(pts) = buf.pts() {
            end = end.max(pts + buf.duration().unwrap_or(gst::ClockTime::from_mseconds(80)));
        }
        units.push(buf);
    }
    assert!(sink.is_eos(), "the clip was read to its end");
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(units.len() > 100, "{} access units", units.len());
    Clip {
        caps: caps.expect("clip caps"),
        units,
        length: end,
    }
}

/// An RTSP server on 127.0.0.1:`port`, mount `/live`, on its own GLib main loop thread. Each
/// client gets its own media: an `appsrc` replaying the clip forever, retimestamped per pass.
/// While `frozen` is set every media keeps its sessions and connections but sends nothing (a
/// hung camera): its access units are dropped at the clip's own pace.
struct RtspServer {
    main_loop: glib::MainLoop,
    thread: Option<JoinHandle<()>>,
    /// Media pipelines built so far (one per client session).
    sessions: Arc<AtomicU64>,
}

impl RtspServer {
    fn start(port: u16, clip: Arc<Clip>, frozen: Arc<AtomicBool>) -> RtspServer {
        let sessions = Arc::new(AtomicU64::new(0));
        let counter = sessions.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ctx = glib::MainContext::new();
            let main_loop = glib::MainLoop::new(Some(&ctx), false);
            let server = rtsp::RTSPServer::new();
            server.set_address("127.0.0.1");
            server.set_service(&port.to_string());
            let factory = rtsp::RTSPMediaFactory::new();
            factory.set_launch(
                "( appsrc name=src format=time ! h264parse \
                 ! rtph264pay name=pay0 pt=96 config-interval=1 )",
            );
            factory.connect_media_configure(move |_, media| {
                counter.fetch_add(1, Ordering::Relaxed);
                let bin = media.element().downcast::<gst::Bin>().expect("media bin");
                let src = bin
                    .by_name("src")
                    .expect("appsrc")
                    .downcast::<gst_app::AppSrc>()
                    .expect("an appsrc");
                src.set_caps(Some(&clip.caps));
                let frozen = frozen.clone();
                let pace = clip.length / clip.units.len() as u64;
                src.static_pad("src").expect("appsrc pad").add_probe(
                    gst::PadProbeType::BUFFER,
                    move |_, _| {
                        if frozen.load(Ordering::Relaxed) {
                            std::thread::sleep(pace.into());
                            gst::PadProbeReturn::Drop
                        } else {
                            gst::PadProbeReturn::Ok
                        }
                    },
                );
                let clip = clip.clone();
                let mut next = 0usize;
                src.set_callbacks(
                    gst_app::AppSrcCallbacks::builder()
                        .need_data(move |src, _| {
                            let pass = (next / clip.units.len()) as u64;
                            let mut buf = clip.units[next % clip.units.len()].copy();
                            {
                                let b = buf.get_mut().expect("a fresh copy is writable");
                                let shift = clip.length * pass;
                                b.set_pts(b.pts().map(|t| t + shift));
                                b.set_dts(b.dts().map(|t| t + shift));
                            }
                            next += 1;
                            let _ = src.push_buffer(buf);
                        })
                        .build(),
                );
            });
            server
                .mount_points()
                .expect("mount points")
                .add_factory("/live", factory);
            let source = match server.attach(Some(&ctx)) {
                Ok(id) => id,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot serve RTSP on port {port}: {e}")));
                    return;
                }
            };
            let _ = tx.send(Ok(main_loop.clone()));
            main_loop.run();
            // Stopped: end every session (its media stops sending), close every client
            // connection, then the listening socket, as a camera that loses power would.
            if let Some(pool) = server.session_pool() {
                pool.filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
            }
            server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
            // The server's listening source lives in `ctx`, not the default context.
            if let Some(listener) = ctx.find_source_by_id(&source) {
                listener.destroy();
            }
            while ctx.iteration(false) {}
        });
        let main_loop = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("RTSP server thread answers")
            .unwrap_or_else(|e| panic!("{e}"));
        RtspServer {
            main_loop,
            thread: Some(thread),
            sessions,
        }
    }

    fn stop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            t.join().expect("RTSP server thread");
        }
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest agent telemetry (`{cam}.fps`, `{cam}.outages_total`, …) seen on MQTT, with the
/// time it arrived.
#[derive(Default)]
struct Seen {
    metrics: BTreeMap<String, f64>,
    samples: u64,
    /// cam-live fps of every sample while the server was up, to check cam-dead's retries do
    /// not disturb it.
    live_fps: Vec<f64>,
    dead_states: Vec<String>,
}

fn metric(seen: &Mutex<Seen>, name: &str) -> Option<f64> {
    seen.lock().unwrap().metrics.get(name).copied()
}

/// Subscribes to this device's telemetry and status and records them in `seen`.
async fn watch_mqtt(hub: &Hub, seen: Arc<Mutex<Seen>>) -> Client {
    let mut c = Client::options("e2e-rtsp-watch").keep_alive(10);
    for channel in ["telemetry", "status"] {
        c = c.subscribe(&format!("csb/v1/+/{DEVICE}/{channel}"));
    }
    c.on_publish(move |topic, payload| {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        let mut s = seen.lock().unwrap();
        if topic.ends_with("/telemetry") {
            if let Some(m) = v["metrics"].as_object() {
                s.samples += 1;
                for (k, x) in m {
                    if let Some(x) = x.as_f64() {
                        s.metrics.insert(k.clone(), x);
                    }
                }
                if let Some(fps) = m.get("cam-live.fps").and_then(Value::as_f64) {
                    s.live_fps.push(fps);
                }
            }
        } else if let Some(st) = camera_state(&v, "cam-dead") {
            s.dead_states.push(st);
        }
    })
    .connect(hub.mqtt)
    .await
}

/// The state of `camera` in a device status (`/api/v1/devices` record or MQTT payload).
fn camera_state(status: &Value, camera: &str) -> Option<String> {
    status["cameras"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == camera)?["state"]
        .as_str()
        .map(str::to_string)
}

/// Camera states of this device as the hub serves them.
async fn hub_states(hub: &Hub) -> Option<(String, String)> {
    let v = get_json(&hub.url("/api/v1/devices")).await?;
    let dev = v["devices"]
        .as_array()?
        .iter()
        .find(|d| d["device"] == DEVICE)?
        .clone();
    Some((
        camera_state(&dev, "cam-live")?,
        camera_state(&dev, "cam-dead")?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_outage_is_counted_and_the_camera_reconnects() {
    gst::init().expect("GStreamer");
    let clip = Arc::new(load_clip(
        &root().join("../shared/data/video/car-detection.mp4"),
    ));
    let rtsp_port = free_port();
    let dead_port = free_port();
    let live_uri = format!("rtsp://127.0.0.1:{rtsp_port}/live");
    let dead_uri = format!("rtsp://127.0.0.1:{dead_port}/nothing");
    let frozen = Arc::new(AtomicBool::new(false));
    let mut server = RtspServer::start(rtsp_port, clip.clone(), frozen.clone());

    let hub = Hub::start();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _watch = watch_mqtt(&hub, seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cameras = "publish_detections = true\nevent_interval_ms = 0";
    let config = AgentToml::new(DEVICE, hub.mqtt_port)
        .model("intra_threads = 1")
        .camera("cam-live", &live_uri, cameras)
        .camera("cam-dead", &dead_uri, cameras)
        .write(dir.path());
    let mut agent = spawn_agent(&config, 1000);
    let t0 = Instant::now();

    // 1. cam-live runs at the clip's 12.5 fps; cam-dead is one long outage, retrying.
    let running = eventually(Duration::from_secs(30), || async {
        let (live, dead) = hub_states(&hub).await?;
        let fps = metric(&seen, "cam-live.fps")?;
        (live == "running" && dead == "reconnecting" && fps > 5.0).then_some(fps)
    })
    .await
    .expect("cam-live running with frames and cam-dead reconnecting within 30 s");
    let up_at = t0.elapsed();
    // Three more samples at full rate while cam-dead keeps failing beside it.
    let before = seen.lock().unwrap().samples;
    eventually(Duration::from_secs(10), || async {
        (seen.lock().unwrap().samples >= before + 3).then_some(())
    })
    .await
    .expect("telemetry every second");
    let live_fps = seen.lock().unwrap().live_fps.clone();
    let recent = &live_fps[live_fps.len() - 3..];
    let avg = recent.iter().sum::<f64>() / 3.0;
    assert!(
        (9.0..=16.0).contains(&avg),
        "cam-live at the clip's 12.5 fps beside a dead camera: {recent:?}"
    );
    assert_eq!(metric(&seen, "cam-live.outages_total"), Some(0.0));
    assert_eq!(metric(&seen, "cam-dead.outages_total"), Some(1.0));
    assert!(metric(&seen, "cam-live.last_frame_age_ms").unwrap() < 2000.0);
    assert!(
        server.sessions.load(Ordering::Relaxed) >= 1,
        "frames came from our server"
    );

    // 2. The server goes away: cam-live reports an outage and retries.
    server.stop();
    let stopped = Instant::now();
    assert!(
        TcpStream::connect(("127.0.0.1", rtsp_port)).is_err(),
        "the RTSP port is closed"
    );
    eventually(Duration::from_secs(20), || async {
        let (live, _) = hub_states(&hub).await?;
        let outages = metric(&seen, "cam-live.outages_total")?;
        (live == "reconnecting" && outages >= 1.0).then_some(())
    })
    .await
    .expect("cam-live reconnecting with its outage counted within 20 s");
    let detected = stopped.elapsed();
    // Down a few seconds more, so several reconnects fail.
    eventually(Duration::from_secs(15), || async {
        (metric(&seen, "cam-live.reconnects_total")? >= 2.0).then_some(())
    })
    .await
    .expect("cam-live retried at least twice within 15 s");
    let age = metric(&seen, "cam-live.last_frame_age_ms").unwrap();
    assert!(age > 1000.0, "frame age grows in an outage: {age}");

    // 3. The server is back on the same port: frames flow again.
    let mut server = RtspServer::start(rtsp_port, clip, frozen.clone());
    let restarted = Instant::now();
    let fps = eventually(Duration::from_secs(60), || async {
        let (live, _) = hub_states(&hub).await?;
        let fps = metric(&seen, "cam-live.fps")?;
        (live == "running" && fps > 5.0).then_some(fps)
    })
    .await
    .expect("cam-live frames flow again within 60 s of the server coming back");
    let recovered = restarted.elapsed();
    assert_eq!(
        metric(&seen, "cam-live.outages_total"),
        Some(1.0),
        "one outage, however many reconnects"
    );
    assert!(server.sessions.load(Ordering::Relaxed) >= 1);

    // Frames keep flowing (10 telemetry samples ≈ 10 s: long enough to reset the back-off).
    let before = seen.lock().unwrap().live_fps.len();
    eventually(Duration::from_secs(20), || async {
        (seen.lock().unwrap().live_fps.len() >= before + 10).then_some(())
    })
    .await
    .expect("telemetry every second");
    let steady = seen.lock().unwrap().live_fps[before..].to_vec();
    assert!(
        steady.iter().all(|&f| f > 5.0),
        "cam-live steady after reconnecting: {steady:?}"
    );
    assert_eq!(metric(&seen, "cam-live.outages_total"), Some(1.0));

    // 4. The camera hangs: the connection stays up but no frame comes. The stall timeout
    // (5 s for RTSP) turns that into a second outage; when the camera resumes, frames flow.
    frozen.store(true, Ordering::Relaxed);
    let froze = Instant::now();
    let stall_error = eventually(Duration::from_secs(20), || async {
        let v = get_json(&hub.url("/api/v1/devices")).await?;
        let dev = v["devices"]
            .as_array()?
            .iter()
            .find(|d| d["device"] == DEVICE)?;
        let cam = dev["cameras"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == "cam-live")?;
        let outages = metric(&seen, "cam-live.outages_total")?;
        (cam["state"] == "reconnecting" && outages >= 2.0).then(|| cam["error"].to_string())
    })
    .await
    .expect("a hung stream is an outage within 20 s");
    let stall_seen = froze.elapsed();
    assert!(
        stall_error.contains("no frame within"),
        "the stall timeout caught it: {stall_error}"
    );
    assert!(
        stall_seen >= Duration::from_secs(3),
        "a hung stream is given its stall timeout first: {stall_seen:?}"
    );
    frozen.store(false, Ordering::Relaxed);
    let thawed = Instant::now();
    eventually(Duration::from_secs(60), || async {
        let (live, _) = hub_states(&hub).await?;
        let fps = metric(&seen, "cam-live.fps")?;
        (live == "running" && fps > 5.0).then_some(fps)
    })
    .await
    .expect("cam-live frames flow again within 60 s of the camera resuming");
    let thaw_recovered = thawed.elapsed();
    assert_eq!(metric(&seen, "cam-live.outages_total"), Some(2.0));

    // cam-dead never ran, stayed one outage, and kept retrying (with back-off).
    let (_, dead) = hub_states(&hub).await.expect("device status");
    assert_eq!(dead, "reconnecting");
    assert_eq!(metric(&seen, "cam-dead.outages_total"), Some(1.0));
    let dead_retries = metric(&seen, "cam-dead.reconnects_total").unwrap();
    assert!(dead_retries >= 2.0, "cam-dead retries: {dead_retries}");
    let dead_states = seen.lock().unwrap().dead_states.clone();
    assert!(
        dead_states.iter().all(|s| s != "running"),
        "cam-dead never ran: {dead_states:?}"
    );

    // The agent stops promptly, even with cam-dead in a back-off sleep.
    let exit = agent
        .terminate(Duration::from_secs(15))
        .expect("agent exits within 15 s");
    assert!(exit.success(), "agent exit status {exit}");
    server.stop();
    eprintln!(
        "rtsp resilience: running after {:.1} s at {running} fps (avg {avg:.1}); outage seen \
         {:.1} s after the server stopped; frames again {:.1} s after it restarted ({fps} fps); \
         hung stream seen after {:.1} s ({stall_error}), frames again {:.1} s after it resumed; \
         cam-dead retried {dead_retries} times; total {:.1} s",
        up_at.as_secs_f64(),
        detected.as_secs_f64(),
        recovered.as_secs_f64(),
        stall_seen.as_secs_f64(),
        thaw_recovered.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
