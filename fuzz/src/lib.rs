//! Helpers shared by the fuzz targets.

/// Writes each seed into the directory named by `SKILLGRAFT_FUZZ_SEEDS`, when set (`scripts/dev/fuzz.sh` seeds
/// every corpus this way before fuzzing).
pub fn write_seeds(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    if let Ok(dir) = std::env::var("SKILLGRAFT_FUZZ_SEEDS") {
        for (i, s) in seeds().iter().enumerate() {
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i}")), s);
        }
    }
}
