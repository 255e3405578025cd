//! The machine a run was made on, and its physical limits: one core's
//! memory copy bandwidth here, the disk's fsync rate in `end_to_end`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What the figures came from.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Cores this process may use.
    pub cores: usize,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Device and filesystem holding the bench's data.
    pub disk: String,
    /// `rustc --version`.
    pub rustc: String,
}

impl Machine {
    /// Reads the machine's description; what cannot be read is "unknown".
    pub fn describe(data_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        let disk = command_line("df", &["-hT", &data_dir.display().to_string()])
            .and_then(|out| {
                let row = out.lines().nth(1)?.to_owned();
                let cols: Vec<&str> = row.split_whitespace().collect();
                Some(format!(
                    "{} ({}, {} free)",
                    cols[0],
                    cols.get(1)?,
                    cols.get(4)?
                ))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let rustc = command_line("rustc", &["--version"])
            .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel,
            disk,
            rustc,
        }
    }

    /// One line for the top of the output and BENCHMARKS.md.
    pub fn summary(&self) -> String {
        format!(
            "{}, {} cores, {:.0} GiB, Linux {}, disk {}, {}",
            self.cpu, self.cores, self.memory_gib, self.kernel, self.disk, self.rustc
        )
    }
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One core's memory copy bandwidth, in GB/s (10^9 bytes): a 64 MiB buffer
/// copied over and over for about `budget`. A batch crosses the component
/// boundary as two such copies (out of the source, into the sink).
pub fn memcpy_gbps(budget: Duration) -> f64 {
    let size = 64 << 20;
    let src = vec![7u8; size];
    let mut dst = vec![0u8; size];
    let started = Instant::now();
    let mut copied = 0u64;
    while started.elapsed() < budget {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        copied += size as u64;
    }
    copied as f64 / started.elapsed().as_secs_f64() / 1e9
}
