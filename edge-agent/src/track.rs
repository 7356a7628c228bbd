//! Multi-object tracker (ByteTrack-style) that gives detections stable per-camera track ids.
//!
//! One [`Tracker`] per camera. Each inference frame goes through [`Tracker::update`]; frames
//! whose inference was skipped (motion gating, load shedding) go through [`Tracker::coast`], which
//! only moves the tracks forward in time.
//!
//! # How a frame is processed
//!
//! 1. Every track's constant-velocity Kalman filter is predicted forward by the real time since
//!    the previous call (`ts_ms` deltas, not frame counts; a clock that goes backwards counts as
//!    no time passing).
//! 2. Detections are filtered: non-finite or empty boxes, non-finite scores, scores below
//!    `low_score`, and anything below its class's [`ClassFilter`] are dropped. The rest are split
//!    into high (`score >= high_score`) and low detections.
//! 3. Association, each pass an optimal assignment (Hungarian) maximising the sum of
//!    `IoU - min_iou` over matched pairs, with pairs below the minimum IoU or of different
//!    `class_id` never matched:
//!    - pass 1: high detections × confirmed tracks (tracked and lost/coasting), `match_iou`;
//!    - pass 2: low detections × confirmed tracks still unmatched, `low_match_iou` (this is
//!      what keeps a parked vehicle whose score flickers down to 0.2 on the same id);
//!    - pass 3: remaining high detections × tentative tracks, `match_iou`. Tentative tracks come
//!      last, as in ByteTrack, so a fresh duplicate never steals a detection from an
//!      established track.
//! 4. Tentative tracks without a match are dropped; confirmed tracks without a match coast
//!    (`missed += 1`) and are removed once they have gone more than `max_coast_ms` without a
//!    match. Remaining high detections with `score >= new_track_score` start tentative tracks,
//!    which are confirmed (and reported) after `min_hits` matched frames in a row.
//!
//! Classes never mix: a track keeps the `class_id` it was born with and only matches detections
//! of that same `class_id`. Vehicle classes (car/truck/bus) are deliberately *not* allowed to
//! match each other: a detector flipping between car and truck on one van would then keep its
//! id only while the class stays the same, but allowing it would let a bus and a car that pass
//! close to each other swap ids, and class-specific rules (trucks only, no buses) would see an
//! object change class mid-track. The per-class min_score/min_area filters are the tool to
//! suppress flickering minority classes.
//!
//! The Kalman filter state is (cx, cy, w, h) and their velocities. With a diagonal measurement
//! noise and per-axis process noise the 8×8 covariance separates exactly into four independent
//! 2×2 (position, velocity) blocks, so the filter is four tiny scalar-measurement filters: no
//! matrix inversion, cheap, and easy to keep positive definite.

use std::collections::BTreeMap;

use csb_wire::{BBox, Detection};
use serde::Deserialize;

use crate::perception::TrackedObject;

/// Per-class detection filter, applied before tracking. Keyed by label in [`TrackerConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassFilter {
    /// Detections of this class scoring lower are ignored (on top of `low_score`).
    pub min_score: f32,
    /// Detections of this class whose box is smaller (source pixels²) are ignored.
    pub min_area_px: f32,
}

impl Default for ClassFilter {
    fn default() -> Self {
        ClassFilter {
            min_score: 0.0,
            min_area_px: 0.0,
        }
    }
}

/// Tracker settings; every field has a default, so an empty table is a valid config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Detections at or above this score are "high" and take part in the first association.
    pub high_score: f32,
    /// Detections below this score are ignored entirely; those in `low_score..high_score` only
    /// keep existing tracks alive (second association pass).
    pub low_score: f32,
    /// Unmatched high detections at or above this score start a new (tentative) track.
    pub new_track_score: f32,
    /// Minimum IoU between a track's predicted box and a high detection to match.
    pub match_iou: f32,
    /// Minimum IoU between a track's predicted box and a low detection to match (stricter,
    /// since low-score detections are less trustworthy).
    pub low_match_iou: f32,
    /// A track that has gone longer than this without a matched detection is removed. Time
    /// based, because frames may be skipped or dropped.
    pub max_coast_ms: i64,
    /// Matched frames a new track needs before it is reported.
    pub min_hits: u32,
    /// Per-label detection filters; labels not listed pass with [`ClassFilter::default`].
    pub classes: BTreeMap<String, ClassFilter>,
    /// Labels the detector confuses for one physical object (a van scored as both car and
    /// truck). Within a group, overlapping detections are merged (cross-class NMS at
    /// `group_nms_iou`, the higher score wins) and a track may match a detection of any label of
    /// its group, taking that label. Without this one parked van becomes two tracks and two
    /// illegal-parking cases.
    pub class_groups: Vec<Vec<String>>,
    pub group_nms_iou: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            high_score: 0.5,
            low_score: 0.1,
            new_track_score: 0.6,
            match_iou: 0.3,
            low_match_iou: 0.5,
            max_coast_ms: 3000,
            min_hits: 2,
            classes: BTreeMap::new(),
            class_groups: vec![vec!["car".into(), "truck".into(), "bus".into()]],
            group_nms_iou: 0.6,
        }
    }
}

impl TrackerConfig {
    /// Checks the settings; on error returns `(field, reason)` so the config loader can name the
    /// field. [`Tracker::new`] never panics on a config that fails this, it just tracks poorly.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let unit = |field: &str, v: f32| -> Result<(), (String, String)> {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err((field.to_string(), format!("{v} is not within 0..=1")))
            }
        };
        unit("high_score", self.high_score)?;
        unit("low_score", self.low_score)?;
        unit("new_track_score", self.new_track_score)?;
        unit("match_iou", self.match_iou)?;
        unit("low_match_iou", self.low_match_iou)?;
        unit("group_nms_iou", self.group_nms_iou)?;
        if self.low_score > self.high_score {
            return Err((
                "low_score".into(),
                format!("{} is above high_score {}", self.low_score, self.high_score),
            ));
        }
        if self.new_track_score < self.high_score {
            return Err((
                "new_track_score".into(),
                format!(
                    "{} is below high_score {}",
                    self.new_track_score, self.high_score
                ),
            ));
        }
        if self.max_coast_ms < 0 {
            return Err((
                "max_coast_ms".into(),
                format!("{} is negative", self.max_coast_ms),
            ));
        }
        for (label, f) in &self.classes {
            unit(&format!("classes.{label}.min_score"), f.min_score)?;
            if !(f.min_area_px.is_finite() && f.min_area_px >= 0.0) {
                return Err((
                    format!("classes.{label}.min_area_px"),
                    format!("{} is not a non-negative number", f.min_area_px),
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Motion model
// ---------------------------------------------------------------------------------------------

/// Measurement noise std, as a fraction of the box size along that axis (ByteTrack: 1/20).
const MEAS_STD: f64 = 0.05;
/// Initial velocity std, box sizes per second.
const INIT_VEL_STD: f64 = 1.0;
/// Process noise: white-noise acceleration spectral density std, box sizes per s² (√s).
const ACC_STD: f64 = 1.0;
/// Process noise: position random walk std, box sizes per √s (absorbs detector box changes
/// that are not motion, e.g. a partly occluded object).
const POS_WALK_STD: f64 = 0.25;
/// Longest single prediction step, seconds; beyond that extrapolation is meaningless and large
/// values only risk overflow.
const MAX_PREDICT_S: f64 = 60.0;
/// Smallest box side the filter will produce or use as a noise scale, pixels.
const MIN_SIDE: f64 = 1.0;

/// One axis of a constant-velocity filter: position, velocity and their 2×2 covariance.
#[derive(Debug, Clone, Copy)]
struct Axis {
    p: f64,
    v: f64,
    pp: f64,
    pv: f64,
    vv: f64,
}

impl Axis {
    fn new(p: f64, scale: f64) -> Self {
        let ps = 2.0 * MEAS_STD * scale;
        let vs = INIT_VEL_STD * scale;
        Axis {
            p,
            v: 0.0,
            pp: ps * ps,
            pv: 0.0,
            vv: vs * vs,
        }
    }

    fn predict(&mut self, dt: f64, scale: f64) {
        if dt <= 0.0 {
            return;
        }
        let qa = (ACC_STD * scale).powi(2);
        let qp = (POS_WALK_STD * scale).powi(2);
        let (dt2, dt3) = (dt * dt, dt * dt * dt);
        self.p += self.v * dt;
        self.pp += 2.0 * dt * self.pv + dt2 * self.vv + qa * dt3 / 3.0 + qp * dt;
        self.pv += dt * self.vv + qa * dt2 / 2.0;
        self.vv += qa * dt;
        self.condition();
    }

    fn update(&mut self, z: f64, scale: f64) {
        let r = (MEAS_STD * scale).powi(2);
        let s = self.pp + r;
        if !(s.is_finite() && s > 0.0 && z.is_finite()) {
            return;
        }
        let (k0, k1) = (self.pp / s, self.pv / s);
        let y = z - self.p;
        self.p += k0 * y;
        self.v += k1 * y;
        let (pp, pv, vv) = (self.pp, self.pv, self.vv);
        self.pp = (1.0 - k0) * pp;
        self.pv = (1.0 - k0) * pv;
        self.vv = vv - k1 * pv;
        self.condition();
    }

    /// Keeps the covariance symmetric positive definite despite rounding.
    fn condition(&mut self) {
        const EPS: f64 = 1e-6;
        self.pp = self.pp.max(EPS);
        self.vv = self.vv.max(EPS);
        let lim = (self.pp * self.vv).sqrt() * 0.999;
        self.pv = self.pv.clamp(-lim, lim);
    }

    fn is_finite(&self) -> bool {
        self.p.is_finite()
            && self.v.is_finite()
            && self.pp.is_finite()
            && self.pv.is_finite()
            && self.vv.is_finite()
    }
}

/// Constant-velocity Kalman filter on box centre and size.
#[derive(Debug, Clone, Copy)]
struct Kalman {
    /// cx, cy, w, h.
    ax: [Axis; 4],
}

impl Kalman {
    fn new(b: &BBox) -> Self {
        let [cx, cy, w, h] = measure(b);
        Kalman {
            ax: [
                Axis::new(cx, w),
                Axis::new(cy, h),
                Axis::new(w, w),
                Axis::new(h, h),
            ],
        }
    }

    fn scales(&self) -> [f64; 4] {
        let w = self.ax[2].p.max(MIN_SIDE);
        let h = self.ax[3].p.max(MIN_SIDE);
        [w, h, w, h]
    }

    /// `coasting`: the track missed its last detection; its size is then held (size velocity
    /// zeroed, as ByteTrack does for lost tracks) so a coasting box does not shrink to nothing
    /// or balloon.
    fn predict(&mut self, dt: f64, coasting: bool) {
        if coasting {
            self.ax[2].v = 0.0;
            self.ax[3].v = 0.0;
        }
        let s = self.scales();
        for (a, s) in self.ax.iter_mut().zip(s) {
            a.predict(dt, s);
        }
        for a in &mut self.ax[2..] {
            a.p = a.p.max(MIN_SIDE);
        }
    }

    fn update(&mut self, b: &BBox) {
        let z = measure(b);
        let s = self.scales();
        for ((a, z), s) in self.ax.iter_mut().zip(z).zip(s) {
            a.update(z, s);
        }
        for a in &mut self.ax[2..] {
            a.p = a.p.max(MIN_SIDE);
        }
        if !self.ax.iter().all(Axis::is_finite) {
            *self = Kalman::new(b);
        }
    }

    /// Estimated box, clipped to non-negative coordinates.
    fn bbox(&self) -> BBox {
        let [cx, cy, w, h] = [self.ax[0].p, self.ax[1].p, self.ax[2].p, self.ax[3].p];
        let c = |v: f64| (v.max(0.0)) as f32;
        BBox {
            x1: c(cx - w / 2.0),
            y1: c(cy - h / 2.0),
            x2: c(cx + w / 2.0),
            y2: c(cy + h / 2.0),
        }
    }

    fn velocity(&self) -> (f32, f32) {
        (self.ax[0].v as f32, self.ax[1].v as f32)
    }
}

fn measure(b: &BBox) -> [f64; 4] {
    let (x1, y1, x2, y2) = (b.x1 as f64, b.y1 as f64, b.x2 as f64, b.y2 as f64);
    [
        (x1 + x2) / 2.0,
        (y1 + y2) / 2.0,
        (x2 - x1).max(MIN_SIDE),
        (y2 - y1).max(MIN_SIDE),
    ]
}

// ---------------------------------------------------------------------------------------------
// Tracker
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    class_id: u32,
    label: String,
    score: f32,
    kf: Kalman,
    /// Matched frames in a row while tentative (counts on after confirmation, unused then).
    hits: u32,
    /// Frames (updates and coasts) since the last match.
    missed: u32,
    /// Elapsed time since the last match, summed from non-negative deltas, so clock jumps
    /// backwards cannot make a track immortal.
    since_match_ms: i64,
    confirmed: bool,
    first_seen_ms: i64,
}

impl Track {
    fn output(&self) -> TrackedObject {
        TrackedObject {
            track_id: self.id,
            class_id: self.class_id,
            label: self.label.clone(),
            score: self.score,
            bbox: self.kf.bbox(),
            missed: self.missed,
            first_seen_ms: self.first_seen_ms,
            velocity: self.kf.velocity(),
        }
    }
}

/// A detection that passed the filters.
struct Cand<'a> {
    det: &'a Detection,
    bbox: BBox,
    score: f32,
}

/// ByteTrack-style multi-object tracker for one camera. See the module docs.
#[derive(Debug, Clone)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    last_ts: Option<i64>,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Tracker {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
            last_ts: None,
        }
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// Confirmed tracks currently held (the ones `update`/`coast` report, coasting included).
    pub fn active_count(&self) -> usize {
        self.tracks.iter().filter(|t| t.confirmed).count()
    }

    /// Forgets all tracks (e.g. after the camera reconnects). Ids keep increasing: an id is
    /// never reused within one tracker.
    pub fn reset(&mut self) {
        self.tracks.clear();
        self.last_ts = None;
    }

    /// Processes one inference frame taken at `ts_ms` and returns the confirmed tracks, sorted
    /// by id, including those coasting (`missed > 0`). Boxes are the filter's estimate.
    pub fn update(&mut self, ts_ms: i64, dets: &[Detection]) -> Vec<TrackedObject> {
        self.advance(ts_ms);

        let cands = self.filter(dets);
        let (high, low): (Vec<usize>, Vec<usize>) =
            (0..cands.len()).partition(|&i| cands[i].score >= self.cfg.high_score);

        let boxes: Vec<BBox> = self.tracks.iter().map(|t| t.kf.bbox()).collect();
        let mut track_match: Vec<Option<usize>> = vec![None; self.tracks.len()];
        let mut det_used = vec![false; cands.len()];

        // Pass 1: high detections × confirmed tracks.
        let confirmed: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].confirmed)
            .collect();
        self.pass(
            &confirmed,
            &high,
            &cands,
            &boxes,
            self.cfg.match_iou,
            &mut track_match,
            &mut det_used,
        );
        // Pass 2: low detections × confirmed tracks left over.
        let left: Vec<usize> = confirmed
            .into_iter()
            .filter(|&i| track_match[i].is_none())
            .collect();
        self.pass(
            &left,
            &low,
            &cands,
            &boxes,
            self.cfg.low_match_iou,
            &mut track_match,
            &mut det_used,
        );
        // Pass 3: high detections left over × tentative tracks.
        let tentative: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| !self.tracks[i].confirmed)
            .collect();
        let high_left: Vec<usize> = high.iter().copied().filter(|&d| !det_used[d]).collect();
        self.pass(
            &tentative,
            &high_left,
            &cands,
            &boxes,
            self.cfg.match_iou,
            &mut track_match,
            &mut det_used,
        );

        let min_hits = self.cfg.min_hits.max(1);
        let max_coast = self.cfg.max_coast_ms.max(0);
        for (t, m) in self.tracks.iter_mut().zip(&track_match) {
            match m {
                Some(d) => {
                    let c = &cands[*d];
                    t.kf.update(&c.bbox);
                    t.score = c.score;
                    t.label.clone_from(&c.det.label);
                    t.class_id = c.det.class_id;
                    t.hits = t.hits.saturating_add(1);
                    t.missed = 0;
                    t.since_match_ms = 0;
                    if !t.confirmed && t.hits >= min_hits {
                        t.confirmed = true;
                        t.first_seen_ms = ts_ms;
                    }
                }
                None => {
                    t.missed = t.missed.saturating_add(1);
                    // Unmatched tentative tracks die here; a zero-elapsed frame is no reason to
                    // keep one either.
                    if !t.confirmed {
                        t.since_match_ms = i64::MAX;
                    }
                }
            }
        }
        self.tracks.retain(|t| t.since_match_ms <= max_coast);

        // New tracks from high detections nobody claimed.
        for &d in &high {
            let c = &cands[d];
            if det_used[d] || c.score < self.cfg.new_track_score {
                continue;
            }
            let confirmed = min_hits <= 1;
            self.tracks.push(Track {
                id: self.next_id,
                class_id: c.det.class_id,
                label: c.det.label.clone(),
                score: c.score,
                kf: Kalman::new(&c.bbox),
                hits: 1,
                missed: 0,
                since_match_ms: 0,
                confirmed,
                first_seen_ms: ts_ms,
            });
            self.next_id = self.next_id.saturating_add(1);
        }

        self.report()
    }

    /// A frame whose inference was skipped: tracks are predicted forward to `ts_ms` and count a
    /// miss; nothing is matched or created. Tracks past `max_coast_ms` are removed.
    pub fn coast(&mut self, ts_ms: i64) -> Vec<TrackedObject> {
        self.advance(ts_ms);
        let max_coast = self.cfg.max_coast_ms.max(0);
        for t in &mut self.tracks {
            t.missed = t.missed.saturating_add(1);
        }
        self.tracks.retain(|t| t.since_match_ms <= max_coast);
        self.report()
    }

    /// Moves the clock to `ts_ms` and predicts every track. The step is 0 on the first call and
    /// when time went backwards (the new time is then taken as the clock from here on).
    fn advance(&mut self, ts_ms: i64) {
        let dt_ms = match self.last_ts {
            Some(last) => ts_ms.saturating_sub(last).max(0),
            None => 0,
        };
        self.last_ts = Some(ts_ms);
        let dt = (dt_ms as f64 / 1000.0).min(MAX_PREDICT_S);
        for t in &mut self.tracks {
            t.kf.predict(dt, t.missed > 0);
            t.since_match_ms = t.since_match_ms.saturating_add(dt_ms);
        }
    }

    /// Same class, or two labels of one `class_groups` entry.
    fn compatible(&self, t: &Track, d: &Detection) -> bool {
        t.class_id == d.class_id || self.same_group(&t.label, &d.label)
    }

    fn same_group(&self, a: &str, b: &str) -> bool {
        self.cfg
            .class_groups
            .iter()
            .any(|g| g.iter().any(|l| l == a) && g.iter().any(|l| l == b))
    }

    fn filter<'a>(&self, dets: &'a [Detection]) -> Vec<Cand<'a>> {
        let mut cands = self.filter_each(dets);
        // Cross-class NMS inside groups: highest score first, drop grouped overlaps.
        cands.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut kept: Vec<Cand<'a>> = Vec::with_capacity(cands.len());
        for c in cands {
            let dup = kept.iter().any(|k| {
                k.det.class_id != c.det.class_id
                    && self.same_group(&k.det.label, &c.det.label)
                    && k.bbox.iou(&c.bbox) >= self.cfg.group_nms_iou
            });
            if !dup {
                kept.push(c);
            }
        }
        kept
    }

    fn filter_each<'a>(&self, dets: &'a [Detection]) -> Vec<Cand<'a>> {
        let default = ClassFilter::default();
        dets.iter()
            .filter_map(|det| {
                let b = det.bbox;
                let finite = [b.x1, b.y1, b.x2, b.y2, det.score]
                    .iter()
                    .all(|v| v.is_finite());
                if !finite || b.x2 <= b.x1 || b.y2 <= b.y1 {
                    return None;
                }
                let score = det.score.clamp(0.0, 1.0);
                let f = self.cfg.classes.get(&det.label).unwrap_or(&default);
                // Written so a NaN threshold rejects rather than accepts.
                let pass = score >= self.cfg.low_score
                    && score >= f.min_score
                    && b.area() >= f.min_area_px;
                pass.then_some(Cand {
                    det,
                    bbox: b,
                    score,
                })
            })
            .collect()
    }

    /// One association pass between the given tracks and candidate detections.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        tracks: &[usize],
        dets: &[usize],
        cands: &[Cand],
        boxes: &[BBox],
        min_iou: f32,
        track_match: &mut [Option<usize>],
        det_used: &mut [bool],
    ) {
        if tracks.is_empty() || dets.is_empty() {
            return;
        }
        let mut pairs = Vec::new();
        for (a, &ti) in tracks.iter().enumerate() {
            for (b, &di) in dets.iter().enumerate() {
                let c = &cands[di];
                if !self.compatible(&self.tracks[ti], c.det) {
                    continue;
                }
                let iou = boxes[ti].iou(&c.bbox);
                if iou.is_finite() && iou > 0.0 && iou >= min_iou {
                    pairs.push((a, b, iou));
                }
            }
        }
        for (a, b) in assign(tracks.len(), dets.len(), &pairs, min_iou) {
            track_match[tracks[a]] = Some(dets[b]);
            det_used[dets[b]] = true;
        }
    }

    fn report(&self) -> Vec<TrackedObject> {
        // Tracks are pushed with increasing ids and only ever removed, so this is id order.
        self.tracks
            .iter()
            .filter(|t| t.confirmed)
            .map(Track::output)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Assignment
// ---------------------------------------------------------------------------------------------

/// Components larger than this (tracks + detections) use greedy matching instead of the
/// Hungarian algorithm, bounding the work on pathological input (thousands of overlapping boxes).
const HUNGARIAN_MAX: usize = 200;
const BIG: f64 = 1e6;

/// Matches rows (tracks, `0..n`) to columns (detections, `0..m`) given the admissible pairs
/// `(row, col, iou)`, maximising the sum of `iou - min_iou` over matched pairs. The bipartite
/// graph is split into connected components first (usually single pairs), so a crowded frame
/// costs little.
fn assign(n: usize, m: usize, pairs: &[(usize, usize, f32)], min_iou: f32) -> Vec<(usize, usize)> {
    // Union-find over rows 0..n and columns n..n+m.
    let mut parent: Vec<usize> = (0..n + m).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for &(r, c, _) in pairs {
        let (a, b) = (find(&mut parent, r), find(&mut parent, n + c));
        if a != b {
            parent[a] = b;
        }
    }
    let mut comps: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (k, &(r, _, _)) in pairs.iter().enumerate() {
        let root = find(&mut parent, r);
        comps.entry(root).or_default().push(k);
    }

    let mut out = Vec::new();
    for ks in comps.values() {
        if let [k] = ks[..] {
            out.push((pairs[k].0, pairs[k].1));
            continue;
        }
        let mut rows: Vec<usize> = ks.iter().map(|&k| pairs[k].0).collect();
        let mut cols: Vec<usize> = ks.iter().map(|&k| pairs[k].1).collect();
        rows.sort_unstable();
        rows.dedup();
        cols.sort_unstable();
        cols.dedup();
        if rows.len() + cols.len() > HUNGARIAN_MAX {
            out.extend(greedy(ks.iter().map(|&k| pairs[k])));
            continue;
        }
        // Padded square matrix: rows = tracks then one dummy per detection, columns =
        // detections then one dummy per track. Leaving a track (or detection) unmatched costs
        // limit/2, so a pair is taken exactly when its cost 1 - iou is below limit.
        let (k, l) = (rows.len(), cols.len());
        let size = k + l;
        let limit = (1.0 - min_iou as f64).clamp(0.0, 1.0);
        let mut cost = vec![BIG; size * size];
        for i in 0..k {
            cost[i * size + l + i] = limit / 2.0;
        }
        for j in 0..l {
            cost[(k + j) * size + j] = limit / 2.0;
            for i in 0..k {
                cost[(k + j) * size + l + i] = 0.0;
            }
        }
        for &pk in ks {
            let (r, c, iou) = pairs[pk];
            let i = rows.binary_search(&r).unwrap_or(0);
            let j = cols.binary_search(&c).unwrap_or(0);
            cost[i * size + j] = 1.0 - iou as f64;
        }
        let row_to_col = hungarian(size, &cost);
        for (i, &j) in row_to_col.iter().enumerate().take(k) {
            if j < l && cost[i * size + j] < BIG {
                out.push((rows[i], cols[j]));
            }
        }
    }
    out
}

/// Greedy matching by highest IoU first.
fn greedy(pairs: impl Iterator<Item = (usize, usize, f32)>) -> Vec<(usize, usize)> {
    let mut pairs: Vec<_> = pairs.collect();
    pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut used_r = std::collections::HashSet::new();
    let mut used_c = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (r, c, _) in pairs {
        if !used_r.contains(&r) && !used_c.contains(&c) {
            used_r.insert(r);
            used_c.insert(c);
            out.push((r, c));
        }
    }
    out
}

/// Minimum-cost perfect assignment on a square `n × n` row-major matrix of finite costs
/// (Hungarian algorithm with potentials, O(n³)). Returns the column of each row.
fn hungarian(n: usize, cost: &[f64]) -> Vec<usize> {
    let inf = f64::INFINITY;
    // 1-based; index 0 is the virtual start column / row.
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0usize;
            for j in 1..=n {
                if used[j] {
                    continue;
                }
                let cur = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            if j1 == 0 {
                // Only reachable with non-finite costs; callers never pass those.
                break;
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut row_to_col = vec![usize::MAX; n];
    for j in 1..=n {
        if p[j] != 0 {
            row_to_col[p[j] - 1] = j - 1;
        }
    }
    row_to_col
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAR: u32 = 2;
    const PERSON: u32 = 0;

    /// Box from centre and size.
    fn bx(cx: f32, cy: f32, w: f32, h: f32) -> BBox {
        BBox {
            x1: cx - w / 2.0,
            y1: cy - h / 2.0,
            x2: cx + w / 2.0,
            y2: cy + h / 2.0,
        }
    }

    fn det(class_id: u32, label: &str, score: f32, bbox: BBox) -> Detection {
        Detection {
            class_id,
            label: label.into(),
            score,
            bbox,
            track_id: None,
        }
    }

    fn car(score: f32, bbox: BBox) -> Detection {
        det(CAR, "car", score, bbox)
    }

    fn person(score: f32, bbox: BBox) -> Detection {
        det(PERSON, "person", score, bbox)
    }

    fn centre(b: &BBox) -> (f32, f32) {
        ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0)
    }

    /// Deterministic jitter in -amp..amp.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, amp: f32) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
            (u * 2.0 - 1.0) * amp
        }
    }

    /// Runs a confirmed car track at `b` through two frames (t = 0, 100 ms).
    fn confirmed_car(tr: &mut Tracker, b: BBox) {
        assert!(tr.update(0, &[car(0.9, b)]).is_empty());
        let out = tr.update(100, &[car(0.9, b)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 1);
    }

    #[test]
    fn parked_van_keeps_one_id_through_flicker_misses_and_dark_spells() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let truth = bx(500.0, 400.0, 200.0, 150.0);
        let scores = [0.8, 0.2, 0.55, 0.3, 0.7, 0.15, 0.45, 0.9, 0.25, 0.6];
        let mut rng = Lcg(7);
        let mut first_seen = None;
        // Five minutes at 10 fps.
        for f in 0..3000i64 {
            let ts = 1_700_000_000_000 + f * 100;
            let out = if f > 2 && f % 7 == 0 {
                // Inference skipped by motion gating.
                tr.coast(ts)
            } else if f > 2 && (f % 20 == 0 || f % 20 == 1) {
                // Detector misses the van for two frames.
                tr.update(ts, &[])
            } else {
                // From 1000 to 1060 (6 s, twice max_coast_ms) only low scores: dusk, glare.
                let score = if f < 2 {
                    0.8
                } else if (1000..1060).contains(&f) {
                    [0.2, 0.35, 0.15, 0.45][f as usize % 4]
                } else {
                    scores[f as usize % scores.len()]
                };
                let j = |r: &mut Lcg| r.next(3.0);
                let b = BBox {
                    x1: truth.x1 + j(&mut rng),
                    y1: truth.y1 + j(&mut rng),
                    x2: truth.x2 + j(&mut rng),
                    y2: truth.y2 + j(&mut rng),
                };
                tr.update(ts, &[det(CAR, "car", score, b)])
            };
            if f == 0 {
                assert!(out.is_empty(), "reported before min_hits");
                continue;
            }
            assert_eq!(out.len(), 1, "frame {f}: {out:?}");
            let o = &out[0];
            assert_eq!(o.track_id, 1, "frame {f}");
            assert!(o.missed <= 3, "frame {f}: missed {}", o.missed);
            assert!(o.bbox.iou(&truth) > 0.85, "frame {f}: {:?}", o.bbox);
            assert!(o.velocity.0.abs() < 30.0 && o.velocity.1.abs() < 30.0);
            assert_eq!(*first_seen.get_or_insert(o.first_seen_ms), o.first_seen_ms);
        }
        assert_eq!(tr.next_id, 2, "only one track was ever created");
        assert_eq!(first_seen, Some(1_700_000_000_100));
    }

    #[test]
    fn crossing_pedestrians_keep_their_ids() {
        let mut tr = Tracker::new(TrackerConfig::default());
        // A walks right from x=100, B walks left from x=500, 150 px/s each, 10 fps. They pass
        // through each other around t = 1.33 s; a tracker without a motion model swaps them.
        let mut first: BTreeMap<u64, f32> = BTreeMap::new();
        let mut last: BTreeMap<u64, (f32, (f32, f32))> = BTreeMap::new();
        for f in 0..30i64 {
            let t = f as f32 * 0.1;
            let a = bx(100.0 + 150.0 * t, 200.0, 40.0, 100.0);
            let b = bx(500.0 - 150.0 * t, 205.0, 40.0, 100.0);
            // Detector output order must not matter: alternate it.
            let dets = if f % 2 == 0 {
                vec![person(0.9, a), person(0.85, b)]
            } else {
                vec![person(0.85, b), person(0.9, a)]
            };
            for o in tr.update(f * 100, &dets) {
                let (cx, _) = centre(&o.bbox);
                first.entry(o.track_id).or_insert(cx);
                last.insert(o.track_id, (cx, o.velocity));
                assert_eq!(o.missed, 0);
            }
        }
        assert_eq!(first.len(), 2, "ids seen: {first:?}");
        for (id, x0) in &first {
            let (x1, v) = last[id];
            if *x0 < 300.0 {
                assert!((x1 - (100.0 + 150.0 * 2.9)).abs() < 5.0, "A ended at {x1}");
                assert!((v.0 - 150.0).abs() < 20.0, "A velocity {v:?}");
            } else {
                assert!((x1 - (500.0 - 150.0 * 2.9)).abs() < 5.0, "B ended at {x1}");
                assert!((v.0 + 150.0).abs() < 20.0, "B velocity {v:?}");
            }
        }
    }

    #[test]
    fn crossing_with_occlusion_and_jitter_keeps_ids() {
        // As above, but the walker behind (B) is hidden for 4 frames while they overlap, boxes
        // jitter by a few pixels and scores wobble: B must come back on its own id.
        let mut tr = Tracker::new(TrackerConfig::default());
        let mut rng = Lcg(42);
        let mut ids_a = std::collections::BTreeSet::new();
        let mut ids_b = std::collections::BTreeSet::new();
        for f in 0..30i64 {
            let t = f as f32 * 0.1;
            let mut j = || rng.next(3.0);
            let a = bx(
                100.0 + 150.0 * t + j(),
                200.0 + j(),
                40.0 + j(),
                100.0 + j(),
            );
            let b = bx(
                500.0 - 150.0 * t + j(),
                210.0 + j(),
                40.0 + j(),
                100.0 + j(),
            );
            let sa = 0.7 + 0.2 * (f % 3) as f32 / 2.0;
            let mut dets = vec![person(sa, a)];
            if !(12..16).contains(&f) {
                dets.push(person(if f % 4 == 0 { 0.4 } else { 0.8 }, b));
            }
            for o in tr.update(f * 100, &dets) {
                if o.missed > 0 {
                    continue;
                }
                if o.bbox.iou(&a) > 0.5 && o.bbox.iou(&a) > o.bbox.iou(&b) {
                    ids_a.insert(o.track_id);
                } else if o.bbox.iou(&b) > 0.5 {
                    ids_b.insert(o.track_id);
                } else {
                    panic!("frame {f}: {o:?} matches neither walker");
                }
            }
        }
        assert_eq!(ids_a.len(), 1, "A: {ids_a:?}");
        assert_eq!(ids_b.len(), 1, "B: {ids_b:?}");
        assert_ne!(ids_a, ids_b);
    }

    #[test]
    fn coasting_predicts_forward_and_reassociates() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let at = |t: f32| bx(200.0 + 100.0 * t, 300.0, 80.0, 60.0);
        for f in 0..10i64 {
            tr.update(f * 100, &[car(0.9, at(f as f32 * 0.1))]);
        }
        // 6 skipped frames: the car moves 60 px, so its last seen box overlaps the true one
        // with IoU 0.14 only; without prediction it could not re-associate.
        let mut out = Vec::new();
        for f in 10..16i64 {
            out = tr.coast(f * 100);
        }
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!(o.missed, 6);
        let (cx, cy) = centre(&o.bbox);
        assert!((cx - 350.0).abs() < 8.0, "predicted cx {cx}");
        assert!((cy - 300.0).abs() < 3.0, "predicted cy {cy}");
        assert!((o.velocity.0 - 100.0).abs() < 15.0, "{:?}", o.velocity);
        assert!(at(0.9).iou(&at(1.5)) < 0.3);

        let out = tr.update(1600, &[car(0.9, at(1.6))]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 1);
        assert_eq!(out[0].missed, 0);
        assert_eq!(tr.next_id, 2);
    }

    #[test]
    fn track_expires_after_max_coast_ms() {
        let b = bx(300.0, 300.0, 100.0, 80.0);
        let mut tr = Tracker::new(TrackerConfig::default());
        confirmed_car(&mut tr, b);
        // Last match at 100 ms; mixed empty inference frames and skipped frames.
        for t in (200..=3100).step_by(100) {
            let out = if t % 300 == 0 {
                tr.coast(t)
            } else {
                tr.update(t, &[])
            };
            assert_eq!(out.len(), 1, "t={t}");
            assert_eq!(out[0].missed as i64, (t - 100) / 100);
        }
        assert!(tr.update(3200, &[]).is_empty());
        assert_eq!(tr.active_count(), 0);
        // Back again: a new id after min_hits.
        assert!(tr.update(3300, &[car(0.9, b)]).is_empty());
        let out = tr.update(3400, &[car(0.9, b)]);
        assert_eq!(out[0].track_id, 2);

        // Coasting alone expires too.
        let mut tr = Tracker::new(TrackerConfig::default());
        confirmed_car(&mut tr, b);
        assert_eq!(tr.coast(3100).len(), 1);
        assert!(tr.coast(3101).is_empty());
    }

    #[test]
    fn tentative_tracks_wait_for_min_hits() {
        let b = bx(300.0, 300.0, 100.0, 80.0);
        let mut tr = Tracker::new(TrackerConfig::default());
        assert!(tr.update(0, &[car(0.9, b)]).is_empty());
        assert_eq!(tr.active_count(), 0);
        // Unmatched in its second frame: dropped, so the next sighting is a new track.
        assert!(tr.update(100, &[]).is_empty());
        assert!(tr.tracks.is_empty());
        assert!(tr.update(200, &[car(0.9, b)]).is_empty());
        let out = tr.update(300, &[car(0.9, b)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 2);
        assert_eq!(out[0].first_seen_ms, 300);
        assert_eq!(tr.active_count(), 1);

        // A coast in between neither confirms nor drops a tentative track.
        let cfg = TrackerConfig {
            min_hits: 3,
            ..TrackerConfig::default()
        };
        let mut tr = Tracker::new(cfg);
        assert!(tr.update(0, &[car(0.9, b)]).is_empty());
        assert!(tr.coast(50).is_empty());
        assert!(tr.update(100, &[car(0.9, b)]).is_empty());
        assert_eq!(tr.update(200, &[car(0.9, b)]).len(), 1);

        // High but below new_track_score never starts a track.
        let mut tr = Tracker::new(TrackerConfig::default());
        for f in 0..5 {
            assert!(tr.update(f * 100, &[car(0.55, b)]).is_empty());
        }
        assert!(tr.tracks.is_empty());
    }

    #[test]
    fn low_score_second_pass_keeps_track_alive() {
        let b = bx(300.0, 300.0, 100.0, 80.0);
        let mut tr = Tracker::new(TrackerConfig::default());
        confirmed_car(&mut tr, b);
        // 5 s of low-score detections, longer than max_coast_ms.
        for f in 2..52i64 {
            let out = tr.update(f * 100, &[car(0.3, b)]);
            assert_eq!(out.len(), 1, "frame {f}");
            assert_eq!(out[0].track_id, 1);
            assert_eq!(out[0].missed, 0);
            assert_eq!(out[0].score, 0.3);
        }
        // A low detection overlapping with IoU ~0.4 is below low_match_iou: no match...
        let shifted = bx(300.0 + 43.0, 300.0, 100.0, 80.0);
        let iou = b.iou(&shifted);
        assert!(iou > 0.35 && iou < 0.5, "{iou}");
        let out = tr.update(5200, &[car(0.3, shifted)]);
        assert_eq!(out[0].missed, 1);
        // ...while a high one at the same place is above match_iou.
        let out = tr.update(5300, &[car(0.9, shifted)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].missed, 0);
        assert_eq!(out[0].track_id, 1);

        // Low-score detections alone never start a track.
        let mut tr = Tracker::new(TrackerConfig::default());
        for f in 0..10 {
            assert!(tr.update(f * 100, &[car(0.45, b)]).is_empty());
        }
        assert!(tr.tracks.is_empty());
    }

    #[test]
    fn per_class_filters_apply_before_tracking() {
        let cfg: TrackerConfig = toml::from_str(
            r#"
            max_coast_ms = 2000
            [classes.person]
            min_score = 0.7
            [classes.car]
            min_area_px = 1000
            "#,
        )
        .unwrap();
        assert_eq!(cfg.high_score, 0.5, "unset fields keep their defaults");
        assert_eq!(cfg.max_coast_ms, 2000);
        assert_eq!(cfg.classes["car"].min_score, 0.0);
        assert!(cfg.validate().is_ok());
        assert!(toml::from_str::<TrackerConfig>("max_coast = 1").is_err());
        assert!(toml::from_str::<TrackerConfig>("[classes.car]\nmin_scor = 1").is_err());

        let mut tr = Tracker::new(cfg);
        let small_car = bx(100.0, 100.0, 20.0, 20.0); // 400 px²
        let big_car = bx(300.0, 100.0, 40.0, 40.0); // 1600 px²
        let p = bx(500.0, 300.0, 40.0, 100.0);
        let p2 = bx(700.0, 300.0, 40.0, 100.0);
        let dog = bx(100.0, 400.0, 30.0, 20.0);
        let mut out = Vec::new();
        for f in 0..3 {
            out = tr.update(
                f * 100,
                &[
                    car(0.9, small_car),
                    car(0.9, big_car),
                    person(0.65, p),
                    person(0.75, p2),
                    det(16, "dog", 0.65, dog),
                ],
            );
        }
        let got: Vec<(&str, (f32, f32))> = out
            .iter()
            .map(|o| (o.label.as_str(), centre(&o.bbox)))
            .collect();
        assert_eq!(out.len(), 3, "{got:?}");
        let near = |o: &TrackedObject, b: &BBox| o.bbox.iou(b) > 0.9;
        assert!(out.iter().any(|o| o.label == "car" && near(o, &big_car)));
        assert!(out.iter().any(|o| o.label == "person" && near(o, &p2)));
        assert!(out.iter().any(|o| o.label == "dog" && o.class_id == 16));
        assert!(!out.iter().any(|o| near(o, &small_car) || near(o, &p)));
    }

    #[test]
    fn classes_never_associate() {
        let b = bx(300.0, 300.0, 100.0, 80.0);
        let mut tr = Tracker::new(TrackerConfig::default());
        confirmed_car(&mut tr, b);
        // A person exactly where the car is: the car track coasts, the person gets its own.
        tr.update(200, &[person(0.9, b)]);
        let out = tr.update(300, &[person(0.9, b)]);
        assert_eq!(out.len(), 2, "{out:?}");
        let c = out.iter().find(|o| o.track_id == 1).unwrap();
        assert_eq!((c.class_id, c.label.as_str(), c.missed), (CAR, "car", 2));
        let p = out.iter().find(|o| o.track_id == 2).unwrap();
        assert_eq!(
            (p.class_id, p.label.as_str(), p.missed),
            (PERSON, "person", 0)
        );
        // Low-score persons do not keep the car alive either.
        for f in 4..40i64 {
            tr.update(f * 100, &[person(0.9, b), person(0.3, b)]);
        }
        let out = tr.update(4000, &[person(0.9, b)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 2);
    }

    #[test]
    fn time_going_backwards_and_garbage_input_do_not_panic() {
        let b = bx(300.0, 300.0, 100.0, 80.0);
        let mut tr = Tracker::new(TrackerConfig::default());
        tr.update(10_000, &[car(0.9, b)]);
        tr.update(10_100, &[car(0.9, b)]);
        // Clock steps back 5 s: no prediction step, same track.
        let out = tr.update(5_000, &[car(0.9, b)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].track_id, 1);
        let out = tr.coast(4_000);
        assert_eq!(out[0].missed, 1);
        // Expiry still works on the new clock: the jump back must not make the track immortal.
        assert_eq!(tr.update(7_000, &[]).len(), 1);
        assert!(tr.update(8_100, &[]).is_empty());

        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let garbage = [
            car(nan, b),
            car(inf, b),
            car(-1.0, b),
            car(7.0, b),
            car(0.9, BBox { x1: nan, ..b }),
            car(0.9, BBox { x2: inf, ..b }),
            car(0.9, BBox { x2: b.x1, ..b }),
            car(
                0.9,
                BBox {
                    x1: b.x2,
                    x2: b.x1,
                    ..b
                },
            ),
            car(
                0.9,
                BBox {
                    x1: -50.0,
                    y1: -50.0,
                    x2: -10.0,
                    y2: -10.0,
                },
            ),
            car(
                0.9,
                BBox {
                    x1: 0.0,
                    y1: 0.0,
                    x2: 1e-30,
                    y2: 1e-30,
                },
            ),
            car(
                0.9,
                BBox {
                    x1: -1e30,
                    y1: -1e30,
                    x2: 1e30,
                    y2: 1e30,
                },
            ),
        ];
        let mut tr = Tracker::new(TrackerConfig::default());
        for ts in [0, i64::MAX, i64::MIN, 0, -5, i64::MAX, 100, 100, 50] {
            for o in tr.update(ts, &garbage).into_iter().chain(tr.coast(ts)) {
                assert!(o.bbox.x1 >= 0.0 && o.bbox.y1 >= 0.0);
                assert!(o.bbox.x2 >= o.bbox.x1 && o.bbox.y2 >= o.bbox.y1);
                assert!(o.velocity.0.is_finite() && o.velocity.1.is_finite());
            }
            tr.update(ts, &[]);
        }

        // A broken model flooding identical boxes (greedy fallback path).
        let flood: Vec<Detection> = (0..400).map(|_| car(0.9, b)).collect();
        let mut tr = Tracker::new(TrackerConfig::default());
        tr.update(0, &flood);
        let out = tr.update(100, &flood);
        assert_eq!(out.len(), 400);

        // Nonsense config does not panic either.
        let cfg = TrackerConfig {
            high_score: nan,
            match_iou: -3.0,
            low_match_iou: 2.0,
            max_coast_ms: -10,
            min_hits: 0,
            ..TrackerConfig::default()
        };
        assert!(cfg.validate().is_err());
        let mut tr = Tracker::new(cfg);
        for f in 0..5 {
            tr.update(f * 100, &[car(0.9, b), car(0.3, b)]);
            tr.coast(f * 100 + 50);
        }
    }

    #[test]
    fn assignment_is_optimal_not_greedy() {
        // Greedy takes (0,0) at 0.9 and leaves row 1 unmatched; the optimum matches both.
        let pairs = [(0, 0, 0.9), (0, 1, 0.8), (1, 0, 0.85)];
        let mut m = assign(2, 2, &pairs, 0.3);
        m.sort_unstable();
        assert_eq!(m, vec![(0, 1), (1, 0)]);
        assert_eq!(greedy(pairs.iter().copied()), vec![(0, 0)]);
        // Disconnected pairs and leftovers.
        let mut m = assign(3, 3, &[(2, 0, 0.5), (0, 2, 0.4)], 0.3);
        m.sort_unstable();
        assert_eq!(m, vec![(0, 2), (2, 0)]);
        assert!(assign(2, 2, &[], 0.3).is_empty());
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(TrackerConfig::default().validate().is_ok());
        let bad = TrackerConfig {
            low_score: 0.7,
            ..TrackerConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "low_score");
        let mut bad = TrackerConfig::default();
        bad.classes.insert(
            "car".into(),
            ClassFilter {
                min_score: 0.2,
                min_area_px: -1.0,
            },
        );
        assert_eq!(bad.validate().unwrap_err().0, "classes.car.min_area_px");
    }

    #[test]
    fn grouped_labels_merge_and_a_van_flipping_car_truck_keeps_one_id() {
        let mut t = Tracker::new(TrackerConfig::default());
        let van = BBox {
            x1: 650.0,
            y1: 42.0,
            x2: 724.0,
            y2: 100.0,
        };
        let as_label = |class_id: u32, label: &str, score: f32, b: BBox| Detection {
            class_id,
            label: label.into(),
            score,
            bbox: b,
            track_id: None,
        };
        let mut ids = std::collections::BTreeSet::new();
        for i in 0..100i64 {
            // The detector reports the van as truck and car at once, the winner alternating.
            let (ts, cs) = if i % 3 == 0 {
                (0.59, 0.76)
            } else {
                (0.76, 0.59)
            };
            let jitter = BBox {
                x1: van.x1 + 1.0,
                ..van
            };
            let out = t.update(
                i * 100,
                &[
                    as_label(7, "truck", ts, van),
                    as_label(2, "car", cs, jitter),
                ],
            );
            if i >= 2 {
                assert_eq!(
                    out.len(),
                    1,
                    "frame {i}: one track for one van, got {out:?}"
                );
                ids.insert(out[0].track_id);
            }
        }
        assert_eq!(ids.len(), 1, "the van keeps one id: {ids:?}");
        // A person overlapping the van is not merged with it.
        let p = BBox {
            x1: 660.0,
            y1: 50.0,
            x2: 690.0,
            y2: 100.0,
        };
        let out = t.update(
            10_100,
            &[
                as_label(7, "truck", 0.8, van),
                as_label(0, "person", 0.9, p),
            ],
        );
        let out = if out.len() < 2 {
            t.update(
                10_200,
                &[
                    as_label(7, "truck", 0.8, van),
                    as_label(0, "person", 0.9, p),
                ],
            )
        } else {
            out
        };
        assert_eq!(out.len(), 2);
    }
}
