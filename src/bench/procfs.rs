//! What the OS says about a process, read from `/proc`: CPU time, peak RSS, and the machine.

use std::io;
use std::path::PathBuf;

/// `/proc/<pid>/stat` counts CPU time in `USER_HZ` ticks. The kernel converts to this fixed
/// unit for user space; it is 100 on every Linux architecture.
const USER_HZ: f64 = 100.0;

/// A process to observe: this one, or another by pid.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Proc {
    /// The bench itself.
    Myself,
    /// A child (the daemon).
    Pid(u32),
}

impl Proc {
    fn path(self, file: &str) -> PathBuf {
        match self {
            Proc::Myself => PathBuf::from(format!("/proc/self/{file}")),
            Proc::Pid(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        }
    }

    /// User plus system CPU time of every thread, living or exited, in seconds.
    pub(crate) fn cpu_seconds(self) -> io::Result<f64> {
        let text = std::fs::read_to_string(self.path("stat"))?;
        // The command name (field 2) may hold spaces and parentheses; fields restart after the
        // last ')'. utime and stime are fields 14 and 15, i.e. the 12th and 13th after it.
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| -> io::Result<f64> {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .map(|v| v as f64 / USER_HZ)
                .ok_or_else(|| io::Error::other("malformed /proc stat"))
        };
        Ok(tick(11)? + tick(12)?)
    }

    fn status_kib(self, field: &str) -> io::Result<u64> {
        let text = std::fs::read_to_string(self.path("status"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {field} in /proc status")))
    }

    /// Peak resident set size (`VmHWM`) in KiB, since start or the last [`Proc::reset_peak_rss`].
    pub(crate) fn peak_rss_kib(self) -> io::Result<u64> {
        self.status_kib("VmHWM:")
    }

    /// Resets the peak RSS to the current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux 4.0+).
    pub(crate) fn reset_peak_rss(self) -> io::Result<()> {
        std::fs::write(self.path("clear_refs"), "5")
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> Option<[f64; 3]> {
    let text = read_trimmed("/proc/loadavg")?;
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The kernel release, e.g. `6.1.0-18-amd64`.
pub(crate) fn kernel() -> String {
    read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into())
}

/// The CPU model name.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Online CPUs.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(Proc::Myself.cpu_seconds().unwrap() >= 0.0);
        assert!(Proc::Myself.peak_rss_kib().unwrap() > 0);
        assert!(load_average().is_some());
        assert!(cpus() >= 1);
    }
}
