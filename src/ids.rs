//! Ids for sessions, items, responses, calls and documents: one small module at the bottom of the
//! import graph, so the stores and tools need not import the wire protocol for them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A new unique id such as `event_0001a3f2…` (process-unique, ordered, unguessable enough for
/// correlation; not a secret).
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{:012x}{n:08x}", start & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = super::new_id("event");
        let b = super::new_id("event");
        assert!(a.starts_with("event_") && a != b);
    }
}
