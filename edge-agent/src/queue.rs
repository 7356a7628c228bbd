//! Hand-over from camera threads to the one detector thread: one slot per camera holding only
//! that camera's newest frame, taken round-robin. Under load a camera's older, unprocessed frame
//! is replaced (drop oldest, so detection always works on the freshest picture) and a busy
//! camera cannot crowd out a quiet one. Control messages (camera ended or failed) jump the queue.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The receiving side has shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

#[derive(Debug, PartialEq)]
pub enum Item<T, C> {
    Frame(usize, T),
    Control(C),
}

struct Inner<T, C> {
    slots: Vec<Option<T>>,
    control: VecDeque<C>,
    /// Slot to look at first on the next take: after the last one served.
    next: usize,
    closed: bool,
}

pub struct LatestSlots<T, C> {
    inner: Mutex<Inner<T, C>>,
    cv: Condvar,
}

impl<T, C> LatestSlots<T, C> {
    pub fn new(cameras: usize) -> Self {
        LatestSlots {
            inner: Mutex::new(Inner {
                slots: (0..cameras).map(|_| None).collect(),
                control: VecDeque::new(),
                next: 0,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T, C>> {
        // A panicking holder cannot leave the slots inconsistent (plain assignments only).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live cameras: puts `v` in slot `i`, replacing an unprocessed older frame. Returns whether
    /// one was replaced (a dropped frame).
    pub fn put_latest(&self, i: usize, v: T) -> Result<bool, Closed> {
        let mut g = self.lock();
        if g.closed || i >= g.slots.len() {
            return Err(Closed);
        }
        let replaced = g.slots[i].replace(v).is_some();
        drop(g);
        self.cv.notify_all();
        Ok(replaced)
    }

    /// Every-frame sources (files in `bench`): waits until slot `i` is free, so nothing is dropped
    /// and the decoder is paced by the detector.
    pub fn put_wait(&self, i: usize, v: T) -> Result<(), Closed> {
        let mut g = self.lock();
        loop {
            if g.closed || i >= g.slots.len() {
                return Err(Closed);
            }
            if g.slots[i].is_none() {
                g.slots[i] = Some(v);
                drop(g);
                self.cv.notify_all();
                return Ok(());
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn control(&self, c: C) {
        let mut g = self.lock();
        if g.closed {
            return;
        }
        g.control.push_back(c);
        drop(g);
        self.cv.notify_all();
    }

    /// The next control message, else the next camera's frame in round-robin order; waits up
    /// to `timeout`.
    pub fn take(&self, timeout: Duration) -> Option<Item<T, C>> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if let Some(c) = g.control.pop_front() {
                return Some(Item::Control(c));
            }
            let n = g.slots.len();
            for k in 0..n {
                let i = (g.next + k) % n;
                if let Some(v) = g.slots[i].take() {
                    g.next = (i + 1) % n;
                    drop(g);
                    self.cv.notify_all(); // a waiting `put_wait` may go on
                    return Some(Item::Frame(i, v));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if g.closed || left.is_zero() {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Stops the hand-over: senders get `Closed`, waiting ones wake up.
    pub fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    type Q = LatestSlots<u32, &'static str>;

    #[test]
    fn live_keeps_only_the_newest_frame_per_camera() {
        let q = Q::new(2);
        assert_eq!(q.put_latest(0, 1), Ok(false));
        assert_eq!(q.put_latest(0, 2), Ok(true), "frame 1 dropped, not frame 2");
        assert_eq!(q.take(Duration::ZERO), Some(Item::Frame(0, 2)));
        assert_eq!(q.take(Duration::ZERO), None);
    }

    #[test]
    fn cameras_are_served_round_robin_and_control_first() {
        let q = Q::new(3);
        for cam in 0..3 {
            q.put_latest(cam, 10 + cam as u32).unwrap();
        }
        assert_eq!(q.take(Duration::ZERO), Some(Item::Frame(0, 10)));
        // Camera 0 is fast and refills at once; cameras 1 and 2 still go first.
        q.put_latest(0, 11).unwrap();
        q.control("cam 2 ended");
        assert_eq!(q.take(Duration::ZERO), Some(Item::Control("cam 2 ended")));
        assert_eq!(q.take(Duration::ZERO), Some(Item::Frame(1, 11)));
        assert_eq!(q.take(Duration::ZERO), Some(Item::Frame(2, 12)));
        assert_eq!(q.take(Duration::ZERO), Some(Item::Frame(0, 11)));
    }

    #[test]
    fn every_frame_mode_waits_for_the_slot_and_loses_nothing() {
        let q = Arc::new(Q::new(1));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for v in 0..50 {
                    q.put_wait(0, v).unwrap();
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 50 {
            if let Some(Item::Frame(0, v)) = q.take(Duration::from_secs(5)) {
                got.push(v);
            }
        }
        producer.join().unwrap();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn close_releases_a_waiting_sender_and_refuses_more() {
        let q = Arc::new(Q::new(1));
        q.put_wait(0, 1).unwrap();
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.put_wait(0, 2))
        };
        std::thread::sleep(Duration::from_millis(50));
        q.close();
        assert_eq!(waiter.join().unwrap(), Err(Closed));
        assert_eq!(q.put_latest(0, 3), Err(Closed));
        let t = Instant::now();
        assert_eq!(
            q.take(Duration::from_secs(5)).map(|_| ()),
            Some(()),
            "the frame already queued is still handed out"
        );
        assert_eq!(q.take(Duration::from_secs(5)), None);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a closed queue does not wait"
        );
    }
}
