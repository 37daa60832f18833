//! Writing the JSON snapshot (schema `leaktrace/1`: its types are in `schema`, documented in
//! docs/json-schema.md and docs/leaktrace-1.schema.json).
use std::{
    io::{self, Write},
    path::Path,
};

use crate::{
    output::{write_atomically_with, Access, OutputError},
    schema::Snapshot,
};

/// The snapshot as written to disk (pretty JSON and a final newline), streamed to `out` (a system-wide snapshot is large: it is
/// never held whole in memory).
pub fn write_json(out: &mut dyn Write, snapshot: &Snapshot) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, snapshot).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// Write a snapshot atomically (crate::output's rules).
pub fn write_snapshot(path: &Path, snapshot: &Snapshot, access: Access) -> Result<(), OutputError> {
    write_atomically_with(path, access, |file| write_json(file, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{GrowthClass, ProbeCost};

    #[test]
    fn snapshot_round_trips_through_json() {
        use crate::synthetic::{frame, growth, site, EXE};
        let leak = site(
            "leak_exactly-site",
            50_000,
            500,
            growth(Some(262_144.0), Some(1_048_576.0), GrowthClass::LeakSuspect),
            Some(3.25),
            vec![frame("leak_exactly", EXE, Some(("leaky.c", 42)))],
        );
        let mut process = crate::synthetic::process(42, "leaky", vec![leak]);
        process.heap = Some(crate::synthetic::heap_with_fallbacks());
        let mut snap = crate::synthetic::snapshot(12.5, vec![process]);
        snap.cost = Some(ProbeCost::new(Some(1_200.0), Some(5_000.0)));
        let json = serde_json::to_string(&snap).expect("serializes");
        let back: Snapshot = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, snap);
    }
}
