//! The newest status of every device, as ingest stored it: what a rollout's soak watches
//! (model in service, configuration version, cameras delivering, the agent still talking).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use csb_wire::DeviceStatus;

/// The last stored status per `SITE/DEVICE`, with the time the hub received it.
#[derive(Default)]
pub struct LastStatus {
    map: Mutex<HashMap<String, (DeviceStatus, i64)>>,
}

impl LastStatus {
    pub fn get(&self, device: &str) -> Option<(DeviceStatus, i64)> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .cloned()
    }

    pub fn record(&self, status: DeviceStatus, received_ms: i64) {
        let key = format!("{}/{}", status.site, status.device);
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Batches arrive in order, but a status replayed late must not hide a newer one.
        if m.get(&key).is_some_and(|(s, _)| s.ts_ms > status.ts_ms) {
            return;
        }
        m.insert(key, (status, received_ms));
    }
}

impl crate::ingest::pipeline::DurableSink for LastStatus {
    fn offer(
        &self,
        batch: &Arc<crate::storage::store::WriteBatch>,
        _: &crate::storage::store::WriteOutcome,
    ) {
        for (s, received) in &batch.statuses {
            self.record(s.clone(), *received);
        }
    }
}
