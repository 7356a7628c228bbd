//! Types that flow between the perception stages: detector → tracker → rules.

use csb_wire::BBox;

/// One tracked object in a frame, as the tracker hands it to the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedObject {
    /// Stable id within one camera while the object stays tracked.
    pub track_id: u64,
    pub class_id: u32,
    pub label: String,
    /// Score of the latest matched detection.
    pub score: f32,
    /// Box in source-frame pixels (the prediction, when coasting).
    pub bbox: BBox,
    /// Frames since a detection last matched (0 = seen in this frame; > 0 = coasting, e.g.
    /// through frames whose inference motion gating skipped).
    pub missed: u32,
    /// When the track was first confirmed (Unix ms).
    pub first_seen_ms: i64,
    /// Velocity of the box centre in source pixels per second (from the motion model).
    pub velocity: (f32, f32),
}

impl TrackedObject {
    /// The point that decides zone membership: the bottom centre of the box (where the object
    /// touches the ground), as Frigate and DeepStream do.
    pub fn anchor(&self) -> (f32, f32) {
        ((self.bbox.x1 + self.bbox.x2) / 2.0, self.bbox.y2)
    }
}

/// The frame a set of tracks belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameMeta {
    pub camera: String,
    /// Frame time, Unix ms. Rules use this as their clock, so replays and tests control time.
    pub ts_ms: i64,
    pub width: u32,
    pub height: u32,
}
