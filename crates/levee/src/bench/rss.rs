//! Server memory: the resident set size of a process and all its descendants, read from
//! `/proc/<pid>/status` (`VmRSS`) and `/proc/<pid>/stat` (parent pids). Linux only; elsewhere, or
//! for a process that is gone, the reading is `None`.
//!
//! CPU time: `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`, in clock ticks) of the
//! same process tree, and of the bench process itself, so that a run can report what each
//! message cost the server and the client in CPU.
//!
//! Summing descendants matters for peers started through wrapper scripts (RabbitMQ's `beam.smp`
//! runs under the `rabbitmq-server` shell script). Memory: one directory scan per sample.

use std::collections::HashMap;
use std::fs;

/// Parses the `VmRSS:` line of a `/proc/<pid>/status` text, in bytes.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => Some(n * 1024),
        Some(_) => None,
    }
}

/// Parses the parent pid out of a `/proc/<pid>/stat` line (field 4, after the parenthesised
/// command name, which may itself contain spaces and parentheses).
pub(crate) fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Parses `utime + stime` (clock ticks) out of a `/proc/<pid>/stat` line.
pub(crate) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut it = after.split_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds used so far by `pid` and its descendants (`None`: `pid` cannot be read).
pub(crate) fn tree_cpu_secs(pid: u32) -> Option<f64> {
    let stat = |p: u32| fs::read_to_string(format!("/proc/{p}/stat")).ok();
    let own = parse_cpu_ticks(&stat(pid)?)?;
    let mut parents = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = stat(p).as_deref().and_then(parse_ppid) {
                parents.insert(p, pp);
            }
        }
    }
    let others: u64 = descendants(pid, &parents)
        .into_iter()
        .skip(1)
        .filter_map(|p| stat(p).as_deref().and_then(parse_cpu_ticks))
        .sum();
    Some((own + others) as f64 / ticks_per_sec())
}

/// CPU seconds used so far by this process.
pub(crate) fn own_cpu_secs() -> Option<f64> {
    let ticks = parse_cpu_ticks(&fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(ticks as f64 / ticks_per_sec())
}

/// The pids of `root` and all its descendants, given every (pid, ppid) pair.
pub(crate) fn descendants(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parents
                .iter()
                .filter(|&(&c, &pp)| pp == p && c != root)
                .map(|(&c, _)| c),
        );
        i += 1;
    }
    out
}

/// RSS in bytes of `pid` plus its descendants; `None` if `pid` cannot be read.
pub(crate) fn tree_rss(pid: u32) -> Option<u64> {
    let own = parse_vm_rss(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)?;
    let mut parents = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_ppid)
            {
                parents.insert(p, pp);
            }
        }
    }
    let others: u64 = descendants(pid, &parents)
        .into_iter()
        .skip(1)
        .filter_map(|p| {
            fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .as_deref()
                .and_then(parse_vm_rss)
        })
        .sum();
    Some(own + others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 99 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(22));
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
        let own = own_cpu_secs().expect("this process can read its own stat");
        assert!(own >= 0.0);
    }

    #[test]
    fn vm_rss_line() {
        let s = "Name:\tlevee\nVmPeak:\t  2000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(s), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn ppid_after_odd_command_names() {
        assert_eq!(parse_ppid("42 (beam.smp) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("42 (a ) b) S 9 1 1"), Some(9));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn descendant_tree() {
        let parents: HashMap<u32, u32> = [(2, 1), (3, 2), (4, 2), (5, 9), (6, 3)]
            .into_iter()
            .collect();
        let mut d = descendants(2, &parents);
        d.sort();
        assert_eq!(d, vec![2, 3, 4, 6]);
        assert_eq!(descendants(5, &parents), vec![5]);
    }

    #[test]
    fn own_process_has_a_resident_set() {
        let rss = tree_rss(std::process::id()).expect("readable on Linux");
        assert!(rss > 1024 * 1024, "{rss}");
        assert_eq!(tree_rss(u32::MAX), None);
    }
}
