//! `oprun access apply FILE` (and `up` with `access_file`): the access file's
//! TOML parsed and validated against the capabilities the bundled demo
//! catalog grants (as the CLI does), and without that check (as the bench
//! does). Any input must give `Ok` or an `AccessFileError`, never a panic.
#![no_main]

use std::collections::BTreeSet;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use oprun_shared::AccessFile;
use oprun_shared::access::grantable_capabilities;
use oprun::config::Config;

static CAPABILITIES: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let catalog = Config::from_toml(include_str!("../../deploy/demo.toml"), "deploy/demo.toml")
        .map(|c| c.catalog())
        .unwrap_or_default();
    grantable_capabilities(&catalog)
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(file) = AccessFile::from_toml(text, "fuzz.toml", Some(&CAPABILITIES)) {
        for c in &file.provider_connections {
            let _ = c.id();
        }
    }
    let _ = AccessFile::from_toml(text, "fuzz.toml", None);
});
