//! What every benchmark program shares (DESIGN.md § 9): release builds of
//! the daemons under test, JSON-lines output under `target/bench-results/`
//! with the command line, git revision and core count, and percentiles.
//!
//! Benchmarks are programs, not timed tests: they print a readable table
//! and append one JSON object per figure, so figures from different runs
//! and machines can be compared later without parsing tables.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// The release build of `bin` from `package`, built now if needed: a debug
/// build would measure the compiler, not haven. `HAVEN_<BIN>_BIN` (upper
/// case, `-` as `_`) names a prebuilt binary instead.
///
/// # Errors
/// When cargo fails or the binary is not where cargo puts it.
pub fn release_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let var = format!("HAVEN_{}_BIN", bin.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-q", "--release", "-p", package, "--bin", bin])
        .current_dir(workspace())
        .status()?;
    anyhow::ensure!(st.success(), "cargo build --release -p {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let path = target.join("release").join(bin);
    anyhow::ensure!(path.exists(), "{} not built", path.display());
    Ok(path)
}

/// Appends figures to `target/bench-results/<name>.jsonl`.
#[derive(Debug)]
pub struct Recorder {
    out: File,
    path: PathBuf,
    command: String,
    git_rev: String,
    cores: usize,
}

impl Recorder {
    /// Opens (creates) the results file of benchmark `name`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(name: &str) -> io::Result<Self> {
        let dir = workspace().join("target").join("bench-results");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.jsonl"));
        let out = OpenOptions::new().create(true).append(true).open(&path)?;
        let git_rev = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(workspace())
            .stderr(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        Ok(Self {
            out,
            path,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            git_rev,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// The machine's core count, as recorded.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Where the figures go.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// One figure; `extra` is merged into the object (an object, or null).
    ///
    /// # Errors
    /// When the line cannot be written.
    pub fn figure(
        &mut self,
        figure: &str,
        value: f64,
        unit: &str,
        extra: serde_json::Value,
    ) -> io::Result<()> {
        let mut line = serde_json::json!({
            "figure": figure,
            "value": value,
            "unit": unit,
            "command": self.command,
            "git_rev": self.git_rev,
            "cores": self.cores,
        });
        if let (Some(o), serde_json::Value::Object(e)) = (line.as_object_mut(), extra) {
            o.extend(e);
        }
        writeln!(self.out, "{line}")
    }
}

/// The `q`-quantile (0..=1) of `sorted` (ascending), nearest rank; zero for
/// an empty slice.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or_default()
}

/// Resident set size of process `pid` in bytes (`VmRSS`), if readable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
