//! Server memory: the resident set size of a process and all its descendants, read from
//! `/proc/<pid>/status` (`VmRSS`) and `/proc/<pid>/stat` (parent pids). Linux only; elsewhere, or
//! for a process that is gone, the reading is `None`.
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
