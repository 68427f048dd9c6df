//! Who waits for a build's next log line: a followed log stream waits on
//! its build's bell, which every new line and state change rings, instead
//! of asking the database again and again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Bells {
    by_build: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Bells {
    /// The bell of build `id`, shared by all who follow it.
    pub fn bell(&self, id: &str) -> Arc<Notify> {
        let mut map = self.by_build.lock().unwrap_or_else(|p| p.into_inner());
        // Bells no one holds any more go when a new one is made.
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(b) = map.get(id).and_then(Weak::upgrade) {
            return b;
        }
        let b = Arc::new(Notify::new());
        map.insert(id.to_string(), Arc::downgrade(&b));
        b
    }

    /// Wakes everyone waiting on build `id`.
    pub fn ring(&self, id: &str) {
        let map = self.by_build.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(id).and_then(Weak::upgrade) {
            b.notify_waiters();
        }
    }
}
