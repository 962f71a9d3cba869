//! One `[[schedules]]` entry as the scheduler uses it: the TOML table parsed
//! into a `ScheduleSpec`, its cron expression (5 fields get a leading `0`
//! seconds field) and IANA time zone parsed, and the next ticks computed in
//! that zone from a few fixed instants (around daylight-saving changes), as
//! `Scheduler::due` does. Input that is not such a table is also tried as a
//! bare cron expression (first line) and time zone (second line). Any input
//! must give values or errors, never a panic.
#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use oprun_scheduler::config::ScheduleSpec;

/// 2026-03-29 00:59:30 UTC (Europe springs forward), 2026-10-25 00:59:30 UTC
/// (Europe falls back), 2026-03-08 09:59:30 UTC (US springs forward),
/// 2026-11-24 20:28:00 UTC.
const STARTS: [i64; 4] = [1_774_745_970, 1_792_889_970, 1_772_963_970, 1_795_552_080];

fn ticks(spec: &ScheduleSpec) {
    let (Ok(cron), Ok(tz)) = (spec.parsed_cron(), spec.tz()) else { return };
    for secs in STARTS {
        let Some(start) = DateTime::<Utc>::from_timestamp(secs, 0) else { continue };
        for t in cron.after(&start.with_timezone(&tz)).map(|t| t.with_timezone(&Utc)).take(3) {
            let _ = t;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = toml::from_str::<ScheduleSpec>(text) {
        ticks(&spec);
        return;
    }
    let mut lines = text.splitn(2, '\n');
    let cron = lines.next().unwrap_or_default();
    let timezone = lines.next().unwrap_or("UTC").trim();
    let mut table = toml::Table::new();
    for (k, v) in [
        ("name", "fuzz"),
        ("cron", cron),
        ("timezone", timezone),
        ("operation", "op"),
        ("workspace", "w"),
        ("actor", "a"),
    ] {
        table.insert(k.into(), toml::Value::String(v.into()));
    }
    if let Ok(spec) = toml::Value::Table(table).try_into::<ScheduleSpec>() {
        ticks(&spec);
    }
});
