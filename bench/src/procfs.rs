//! What the kernel says about a process and the network stack, from `/proc`: pure parsers of
//! the files' text, and thin readers around them.

use std::collections::BTreeMap;
use std::fs;
use std::io;

/// The fields of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) that the bench uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The command name (the thread name for a task).
    pub comm: String,
    /// User CPU time, in clock ticks.
    pub utime: u64,
    /// System CPU time, in clock ticks.
    pub stime: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

impl Stat {
    /// User plus system time, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime
    }
}

/// Parses `/proc/PID/stat`. The command name sits between the first `(` and the *last* `)`,
/// since it may itself hold spaces and parentheses; the numbered fields follow it.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the name, numbered as in proc(5): field 3 (state) is at index 0.
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(Stat { comm, utime: field(14)?, stime: field(15)?, rss_pages: field(24)? })
}

/// The fields of `/proc/PID/status` that the bench uses; sizes in KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Resident set size.
    pub vm_rss_kib: u64,
    /// Peak resident set size.
    pub vm_hwm_kib: u64,
    /// Times the task blocked (waited for something) and was woken again.
    pub voluntary_switches: u64,
    /// Times the task was preempted.
    pub nonvoluntary_switches: u64,
    /// Threads in the process.
    pub threads: u64,
}

/// Parses `/proc/PID/status`; missing fields read as 0.
pub fn parse_status(text: &str) -> Status {
    let mut status = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let number = value.split_whitespace().next().and_then(|word| word.parse().ok()).unwrap_or(0);
        match key {
            "VmRSS" => status.vm_rss_kib = number,
            "VmHWM" => status.vm_hwm_kib = number,
            "voluntary_ctxt_switches" => status.voluntary_switches = number,
            "nonvoluntary_ctxt_switches" => status.nonvoluntary_switches = number,
            "Threads" => status.threads = number,
            _ => {}
        }
    }
    status
}

/// The CPU time a task has run, in nanoseconds, from `/proc/PID/task/TID/sched`
/// (`se.sum_exec_runtime`, printed in milliseconds with six decimals). `None` when the kernel
/// does not provide the file or the field.
pub fn parse_sched_runtime(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.trim_start().starts_with("se.sum_exec_runtime"))?;
    let value = line.split(':').nth(1)?.trim();
    let (whole, fraction) = value.split_once('.').unwrap_or((value, "0"));
    let whole: u64 = whole.parse().ok()?;
    // Six decimals of a millisecond are nanoseconds; pad or cut to exactly six.
    let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(6).collect();
    Some(whole * 1_000_000 + digits.parse::<u64>().ok()?)
}

/// The counters of `/proc/net/netstat` (or `/proc/net/snmp`), keyed `Section:Name`
/// (`TcpExt:ListenOverflows`). The file pairs a header line with a value line per section.
pub fn parse_netstat(text: &str) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((section, names)), Some((section2, values))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        if section != section2 {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                counters.insert(format!("{section}:{name}"), value);
            }
        }
    }
    counters
}

/// `MemTotal` from `/proc/meminfo`, in KiB.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit on open files from `/proc/PID/limits`.
pub fn parse_open_files_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The kernel's clock tick rate for the times in `stat` files (`CLK_TCK`, 100 on Linux).
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|ticks| u64::try_from(ticks).ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// Reads and parses `/proc/PID/stat`.
pub fn stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/stat"))
}

/// Reads and parses `/proc/PID/status`.
pub fn status(pid: u32) -> io::Result<Status> {
    Ok(parse_status(&fs::read_to_string(format!("/proc/{pid}/status"))?))
}

/// One thread of a process, as `/proc/PID/task/TID` describes it.
#[derive(Debug, Clone)]
pub struct Thread {
    /// The thread id.
    pub tid: u32,
    /// Its `stat`.
    pub stat: Stat,
    /// Its `status` (context switches are per thread).
    pub status: Status,
    /// Its precise CPU time in nanoseconds, when the kernel says.
    pub runtime_ns: Option<u64>,
}

/// Every thread of `pid` that could be read (threads may end while they are listed).
pub fn threads(pid: u32) -> io::Result<Vec<Thread>> {
    let mut threads = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|name| name.parse().ok()) else { continue };
        let dir = entry.path();
        let (Ok(stat), Ok(status)) = (fs::read_to_string(dir.join("stat")), fs::read_to_string(dir.join("status")))
        else {
            continue;
        };
        let Some(stat) = parse_stat(&stat) else { continue };
        let runtime_ns = fs::read_to_string(dir.join("sched")).ok().and_then(|text| parse_sched_runtime(&text));
        threads.push(Thread { tid, stat, status: parse_status(&status), runtime_ns });
    }
    threads.sort_by_key(|thread| thread.tid);
    Ok(threads)
}

/// The network counters of this network namespace (`/proc/net/netstat` and `/proc/net/snmp`).
pub fn net_counters() -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        if let Ok(text) = fs::read_to_string(file) {
            counters.extend(parse_netstat(&text));
        }
    }
    counters
}

/// A single-value file under `/proc/sys`, trimmed.
pub fn sysctl(path: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (demo (a) server) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        150 37 0 0 20 0 7 0 123456 98765432 2816 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 \
                        0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_reads_times_and_rss_after_a_name_with_parentheses() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(stat, Stat { comm: "demo (a) server".into(), utime: 150, stime: 37, rss_pages: 2816 });
        assert_eq!(stat.cpu_ticks(), 187);
    }

    #[test]
    fn stat_that_is_cut_short_is_refused() {
        assert_eq!(parse_stat("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn status_reads_rss_and_context_switches() {
        let text = "Name:\tdemo-server\nThreads:\t5\nVmHWM:\t   20480 kB\nVmRSS:\t   12345 kB\n\
                    voluntary_ctxt_switches:\t77\nnonvoluntary_ctxt_switches:\t3\n";
        let status = parse_status(text);
        assert_eq!(
            status,
            Status {
                vm_rss_kib: 12345,
                vm_hwm_kib: 20480,
                voluntary_switches: 77,
                nonvoluntary_switches: 3,
                threads: 5
            }
        );
        assert_eq!(parse_status(""), Status::default());
    }

    #[test]
    fn sched_runtime_keeps_nanoseconds() {
        let text = "demo (1, #threads: 1)\n---\nse.exec_start   :   2177647.626290\n\
                    se.sum_exec_runtime                          :            12.345678\n";
        assert_eq!(parse_sched_runtime(text), Some(12_345_678));
        assert_eq!(parse_sched_runtime("se.sum_exec_runtime : 3.5\n"), Some(3_500_000));
        assert_eq!(parse_sched_runtime("se.sum_exec_runtime : 7\n"), Some(7_000_000));
        assert_eq!(parse_sched_runtime("nothing here"), None);
    }

    #[test]
    fn netstat_pairs_header_and_value_lines() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 13\n\
                    IpExt: InNoRoutes InOctets\nIpExt: 0 987654\n";
        let counters = parse_netstat(text);
        assert_eq!(counters["TcpExt:ListenOverflows"], 12);
        assert_eq!(counters["TcpExt:ListenDrops"], 13);
        assert_eq!(counters["IpExt:InOctets"], 987_654);
        assert_eq!(counters.len(), 5);
    }

    #[test]
    fn netstat_skips_mismatched_sections() {
        let counters = parse_netstat("TcpExt: A B\nIpExt: 1 2\n");
        assert!(counters.is_empty());
    }

    #[test]
    fn meminfo_and_limits() {
        assert_eq!(parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24_576_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(20_000));
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(stat(pid).is_ok());
        assert!(status(pid).unwrap().vm_rss_kib > 0);
        assert!(!threads(pid).unwrap().is_empty());
    }
}
