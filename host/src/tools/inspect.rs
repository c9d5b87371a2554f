//! `weir plugin inspect`: what a component is, exports and imports.

use std::fmt::Write;
use std::path::Path;

use super::ToolError;
use crate::runtime::{Runtime, content_hash};

/// A human-readable report on the component at `path`.
pub fn inspect(runtime: &Runtime, path: &Path) -> Result<String, ToolError> {
    let bytes = std::fs::read(path).map_err(|e| ToolError(format!("cannot read {}: {e}", path.display())))?;
    let mut report = String::new();
    let _ = writeln!(report, "file:    {}", path.display());
    let _ = writeln!(report, "size:    {} bytes", bytes.len());
    let _ = writeln!(report, "sha256:  {}", content_hash(&bytes));
    let component = wasmtime::component::Component::new(runtime.engine(), &bytes).map_err(|e| {
        ToolError(format!(
            "{} is not a valid WebAssembly component: {e:#}",
            path.display()
        ))
    })?;
    match runtime.load_plugin_bytes(path, &bytes) {
        Ok(plugin) => {
            let info = plugin.info();
            let _ = writeln!(report, "plugin:  {} {}", info.name, info.version);
            let _ = writeln!(report, "kind:    {}", info.kind.name());
            let _ = writeln!(report, "sdk:     weir-guest {}", info.sdk_version);
            let _ = writeln!(report, "wit:     weir:plugin@{}", info.contract);
            if info.kind.interface() == "keyed-state" {
                let migrates = if info.migrates_state {
                    "converts earlier ones (state-migration)"
                } else {
                    "no state-migration"
                };
                let _ = writeln!(report, "state:   version {}, {migrates}", info.state_version);
            }
        }
        Err(error) => {
            let _ = writeln!(report, "plugin:  not usable by Weir: {error}");
        }
    }
    let ty = component.component_type();
    let engine = runtime.engine();
    let _ = writeln!(report, "exports:");
    for (name, _) in ty.exports(engine) {
        let _ = writeln!(report, "  {name}");
    }
    let _ = writeln!(report, "imports:");
    for (name, _) in ty.imports(engine) {
        let _ = writeln!(report, "  {name}");
    }
    Ok(report)
}
