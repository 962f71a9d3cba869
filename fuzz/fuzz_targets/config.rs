//! The config file (`oprun.toml`): what `oprun --config FILE` does with its
//! text — parse and validate (including the schedules' cron expressions and
//! time zones, the catalog and the providers) — then the derived views the
//! commands use. Any input must give `Ok` or a `ConfigError`, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oprun::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::from_toml(text, "fuzz.toml") else { return };
    let _ = config.catalog();
    if let Some(access) = &config.access_file {
        let _ = config.resolve(access);
    }
    let _ = config.resolve(Path::new("access.toml"));
    for s in &config.schedules {
        let _ = s.parsed_cron();
        let _ = s.tz();
    }
});
