//! Connector definitions on disk: one JSON file per connector in
//! `<data_dir>/connectors/`, written atomically before the daemon acts on a
//! change, and the TOML edits that produce them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{Daemon, invalid};
use crate::admin::AdminError;

/// The state an operator asked a connector to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Its instances run.
    Running,
    /// Its instances are open but take no batches.
    Paused,
    /// Its instances are closed.
    Stopped,
}

/// A connector's definition, as stored on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Definition {
    /// A manifest holding exactly this connector's `[[connector]]` table.
    pub toml: String,
    /// Where it was read from; relative paths in it start at its folder.
    pub path: PathBuf,
    /// The state asked for.
    pub state: DesiredState,
    /// Set by an offsets reset: at its next start a sink resumes from its
    /// group's offsets, setting aside offsets it stored itself.
    #[serde(default)]
    pub offsets_reset: bool,
}

impl Daemon {
    /// Writes a connector's definition, atomically.
    pub(super) fn store(&self, name: &str, def: &Definition) -> Result<(), AdminError> {
        let path = self
            .data_dir
            .join("connectors")
            .join(format!("{name}.json"));
        let tmp = path.with_extension("json.tmp");
        let json =
            serde_json::to_vec_pretty(def).map_err(|e| AdminError::Internal(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Ok(d) = std::fs::File::open(path.parent().unwrap_or(Path::new("."))) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            AdminError::Internal(format!(
                "cannot store the definition of {name:?} in {}: {e}",
                path.display()
            ))
        })
    }
}

/// Splits a manifest's text into one definition per `[[connector]]`.
pub(super) fn split(text: &str, path: &Path) -> Result<Vec<Definition>, AdminError> {
    let doc: toml_edit::DocumentMut = text.parse().map_err(invalid)?;
    let Some(tables) = doc.get("connector").and_then(|c| c.as_array_of_tables()) else {
        return Err(invalid("no [[connector]] table"));
    };
    Ok(tables
        .iter()
        .map(|t| {
            let mut one = toml_edit::DocumentMut::new();
            let mut array = toml_edit::ArrayOfTables::new();
            array.push(t.clone());
            one.insert("connector", toml_edit::Item::ArrayOfTables(array));
            Definition {
                toml: one.to_string(),
                path: path.to_path_buf(),
                state: DesiredState::Running,
                offsets_reset: false,
            }
        })
        .collect())
}

/// Changes the one `[[connector]]` table of a definition.
pub(super) fn edit_connector(
    text: &str,
    edit: impl FnOnce(&mut toml_edit::Table),
) -> Result<String, AdminError> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(invalid)?;
    let table = doc
        .get_mut("connector")
        .and_then(|c| c.as_array_of_tables_mut())
        .and_then(|a| a.get_mut(0))
        .ok_or_else(|| AdminError::Internal("a stored definition has no [[connector]]".into()))?;
    edit(table);
    Ok(doc.to_string())
}

pub(super) fn json_to_toml_table(
    config: &serde_json::Value,
) -> Result<toml_edit::Table, AdminError> {
    if !config.is_object() {
        return Err(invalid("the config must be a JSON object"));
    }
    let text = toml::to_string(config)
        .map_err(|e| invalid(format!("the config cannot be written as TOML: {e}")))?;
    let doc: toml_edit::DocumentMut = text.parse().map_err(invalid)?;
    Ok(doc.as_table().clone())
}

/// Every definition stored in `dir`, in file name order.
pub(super) fn load_definitions(dir: &Path) -> anyhow::Result<Vec<Definition>> {
    let mut defs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let def: Definition = serde_json::from_str(&text)
            .with_context(|| format!("reading the connector definition {}", path.display()))?;
        defs.push(def);
    }
    Ok(defs)
}
