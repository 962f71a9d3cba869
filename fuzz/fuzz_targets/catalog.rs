//! The operation catalog (`capabilities` and `[operations.*]`) parsed and
//! validated on its own. Schedules are not part of the catalog: they live in
//! the config file (see the `config` and `schedule` targets). Any input must
//! give `Ok` or a `CatalogError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oprun_shared::Catalog;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(catalog) = Catalog::from_toml(text) {
        for (name, op) in &catalog.operations {
            let _ = catalog.get(name);
            let _ = catalog.knows_capability(&op.capability);
        }
    }
});
