//! The standard `process_*` metrics (CPU, memory, file descriptors, threads, start time), read
//! from `/proc/self` when Prometheus scrapes.
//!
//! The `prometheus` crate has a process collector, but only behind its `process` feature, which
//! pulls in `procfs` and its own dependency tree; the six numbers an SRE needs (restarts, memory
//! growth, CPU, fd leaks) are a few lines of `/proc` parsing. Names and units follow the
//! Prometheus client conventions (no namespace), so stock dashboards and alerts work unchanged.
//! Off Linux the files do not exist and the collector reports nothing.

use std::fs;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

use super::metrics::unreachable_metric;

/// `/proc/<pid>/stat` reports CPU time in USER_HZ ticks, which Linux fixes at 100 on every
/// architecture for user-space interfaces (`sysconf(_SC_CLK_TCK)` would need `unsafe`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/self` into standard process metrics at every collection.
pub struct ProcessCollector {
    cpu_seconds: Counter,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
    descs: Vec<Desc>,
    /// Scrapes may run at once; the CPU counter's read-then-add must not interleave.
    refreshing: Mutex<()>,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCollector {
    pub fn new() -> Self {
        let cpu_seconds = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .unwrap_or_else(|_| unreachable_metric("process_cpu_seconds_total"));
        let gauge = |name: &str, help: &str| {
            Gauge::with_opts(Opts::new(name, help)).unwrap_or_else(|_| unreachable_metric(name))
        };
        let resident_bytes = gauge("process_resident_memory_bytes", "Resident memory size in bytes.");
        let virtual_bytes = gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.");
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge("process_max_fds", "Maximum number of open file descriptors (soft limit).");
        let threads = gauge("process_threads", "Number of OS threads in the process.");
        let start_time =
            gauge("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.");
        let descs = [&cpu_seconds as &dyn Collector, &resident_bytes, &virtual_bytes, &open_fds, &max_fds, &threads]
            .into_iter()
            .chain([&start_time as &dyn Collector])
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Self {
            cpu_seconds,
            resident_bytes,
            virtual_bytes,
            open_fds,
            max_fds,
            threads,
            start_time,
            descs,
            refreshing: Mutex::new(()),
        }
    }

    fn refresh(&self) -> bool {
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(snapshot) = Snapshot::read() else { return false };
        let cpu = snapshot.cpu_ticks as f64 / TICKS_PER_SECOND;
        // A counter only goes up: add what was spent since the last scrape.
        let spent = cpu - self.cpu_seconds.get();
        if spent > 0.0 {
            self.cpu_seconds.inc_by(spent);
        }
        self.resident_bytes.set(snapshot.resident_kib as f64 * 1024.0);
        self.virtual_bytes.set(snapshot.virtual_kib as f64 * 1024.0);
        self.threads.set(snapshot.threads as f64);
        self.open_fds.set(snapshot.open_fds as f64);
        // `unlimited` is exported as +Inf, so "fds used / limit" reads 0, not a division by 0.
        self.max_fds.set(snapshot.max_fds.map_or(f64::INFINITY, |max| max as f64));
        if let Some(start) = snapshot.start_time_secs {
            self.start_time.set(start);
        }
        true
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.refresh() {
            return Vec::new();
        }
        let mut families = self.cpu_seconds.collect();
        for gauge in
            [&self.resident_bytes, &self.virtual_bytes, &self.open_fds, &self.max_fds, &self.threads, &self.start_time]
        {
            families.extend(gauge.collect());
        }
        families
    }
}

/// What `/proc` says about this process right now.
#[derive(Debug, Default, PartialEq)]
struct Snapshot {
    cpu_ticks: u64,
    resident_kib: u64,
    virtual_kib: u64,
    threads: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time_secs: Option<f64>,
}

impl Snapshot {
    fn read() -> Option<Self> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let fields = stat_fields(&stat)?;
        let boot_time = fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time_secs(&s));
        Some(Self {
            cpu_ticks: fields.utime + fields.stime,
            resident_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
            virtual_kib: status_kib(&status, "VmSize:").unwrap_or(0),
            threads: status_kib(&status, "Threads:").unwrap_or(0),
            open_fds: fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64),
            max_fds: fs::read_to_string("/proc/self/limits").ok().and_then(|s| max_open_files(&s)),
            start_time_secs: boot_time.map(|boot| boot as f64 + fields.start_ticks as f64 / TICKS_PER_SECOND),
        })
    }
}

struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// Fields 14, 15 and 22 of `/proc/self/stat`. The command name (field 2) is in parentheses and
/// may itself hold spaces or parentheses, so counting starts after its last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // after_name starts at field 3 (state).
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields { utime: field(14)?, stime: field(15)?, start_ticks: field(22)? })
}

/// A `Key:   value [kB]` line of `/proc/self/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| line.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

/// `btime` of `/proc/stat`: when the machine booted, in Unix seconds.
fn boot_time_secs(stat: &str) -> Option<u64> {
    stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits` (`unlimited` reads as none).
fn max_open_files(limits: &str) -> Option<u64> {
    limits.lines().find_map(|line| line.strip_prefix("Max open files")?.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "1234 (tokio (rt) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 \
                    777 1000000 500 18446744073709551615";
        let fields = stat_fields(stat).unwrap();
        assert_eq!((fields.utime, fields.stime, fields.start_ticks), (250, 50, 777));
        assert!(stat_fields("garbage").is_none());
    }

    #[test]
    fn status_limits_and_boot_time_are_read() {
        let status = "Name:\twxpay-recon\nVmSize:\t  123456 kB\nVmRSS:\t   2048 kB\nThreads:\t7\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(status_kib(status, "VmSize:"), Some(123_456));
        assert_eq!(status_kib(status, "Threads:"), Some(7));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(boot_time_secs("cpu  1 2 3\nbtime 1764633600\nprocesses 9\n"), Some(1_764_633_600));
    }

    #[test]
    fn this_process_is_measured_where_proc_exists() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return; // not Linux: nothing to read, nothing exported
        }
        let collector = ProcessCollector::new();
        let families = collector.collect();
        let value = |name: &str| {
            let family = families.iter().find(|f| f.name() == name).unwrap_or_else(|| panic!("{name} missing"));
            let metric = &family.get_metric()[0];
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                metric.get_counter().get_value()
            } else {
                metric.get_gauge().get_value()
            }
        };
        assert!(value("process_resident_memory_bytes") > 1024.0 * 1024.0, "a Rust test binary uses over 1 MiB");
        assert!(value("process_open_fds") >= 3.0, "stdin, stdout, stderr at least");
        assert!(value("process_threads") >= 1.0);
        let started = value("process_start_time_seconds");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(started > now - 86_400.0 && started <= now + 1.0, "started {started}, now {now}");
    }
}
