//! The process table as `/proc` shows it now, for the benches' CPU accounting of a server and
//! the processes it started.

/// One process's line of `/proc/<pid>/stat`, the fields the benches read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcStat {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    /// utime + stime + cutime + cstime (its own and its reaped children's), in clock ticks.
    pub(crate) cpu_ticks: u64,
}

/// Every process whose stat could be read; `None` when `/proc` cannot be listed.
pub(crate) fn processes() -> Option<Vec<ProcStat>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    let stats = dir.flatten().filter_map(|entry| {
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // Fields after the command name (which may contain spaces) in ")".
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // ppid is field 4, utime..cstime fields 14–17 (1-based, pid = 1, comm = 2).
        Some(ProcStat {
            pid,
            ppid: num(1) as u32,
            cpu_ticks: num(11) + num(12) + num(13) + num(14),
        })
    });
    Some(stats.collect())
}
