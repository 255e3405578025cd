//! The operations that change a connector: create, update its config or
//! its module, pause and resume, stop and start, restart, delete, and reset
//! a stopped sink's offsets. Each change to a definition is stored before
//! it is acted on.

use std::path::PathBuf;
use std::sync::Arc;

use super::store::{Definition, DesiredState, edit_connector, json_to_toml_table, split};
use super::views::{ConnectorInfo, CreateRequest, Offsets, ResetRequest, SwapOutcome};
use super::{Daemon, internal, invalid};
use crate::admin::AdminError;
use crate::broker::Broker;
use crate::check;
use crate::cluster::ClusterError;
use crate::manifest::{ConnectorKind, Manifest};
use crate::supervisor::ConnectorOutcome;

impl Daemon {
    /// Creates the connectors of a manifest text or one JSON connector, and
    /// starts them.
    pub async fn create(&self, request: CreateRequest) -> Result<Vec<String>, AdminError> {
        let path = request.path.map_or_else(
            || self.data_dir.join("connectors").join("created-by-api.toml"),
            PathBuf::from,
        );
        let toml = match (request.toml, request.connector) {
            (Some(t), None) => t,
            (None, Some(c)) => {
                if !c.is_object() {
                    return Err(invalid(
                        "`connector` must be a JSON object with the fields of a [[connector]] table",
                    ));
                }
                toml::to_string(&serde_json::json!({ "connector": [c] })).map_err(|e| {
                    invalid(format!(
                        "the connector cannot be written as TOML: {e} (null values are not allowed)"
                    ))
                })?
            }
            _ => {
                return Err(invalid(
                    "give exactly one of `toml` (a manifest's text) and `connector` (a JSON object)",
                ));
            }
        };
        // The whole text first, so that errors point into the file as given.
        let manifest = Manifest::parse(&path, &toml).map_err(invalid)?;
        check::check(&manifest, &self.plugins)
            .await
            .map_err(invalid)?;
        let defs = split(&toml, &path)?;
        let mut names = Vec::new();
        for def in &defs {
            let m = Manifest::parse(&def.path, &def.toml).map_err(invalid)?;
            let name = m.connectors[0].get_ref().name.get_ref().clone();
            if self
                .entries
                .lock()
                .expect("entries lock")
                .contains_key(&name)
            {
                return Err(AdminError::Conflict(format!(
                    "a connector named {name:?} exists; update it, or delete it first"
                )));
            }
            self.check(def).await?;
        }
        for def in defs {
            names.push(self.add(def, super::Stored::No).await?);
        }
        Ok(names)
    }

    /// Replaces a connector's `[connector.config]` and restarts it (if it
    /// runs) with the new config, as Kafka Connect does. `source` names
    /// where the config came from (a file), for its errors.
    pub async fn update_config(
        &self,
        name: &str,
        config: serde_json::Value,
        source: Option<&str>,
    ) -> Result<ConnectorInfo, AdminError> {
        let entry = self.entry(name)?;
        {
            let mut m = self.lock(&entry).await?;
            // The new config alone against the plugin's schema first, so
            // that a mistake is reported against where it came from, not
            // against the stored definition it would go into.
            let mut substituted = config.clone();
            m.checked.secrets.substitute(&mut substituted);
            let problems = m
                .checked
                .spec
                .check_config(&substituted)
                .map_err(internal)?;
            if !problems.is_empty() {
                let from = source.unwrap_or("the new config");
                let plugin = &m.checked.spec.name;
                let said: Vec<String> = problems
                    .iter()
                    .map(|p| {
                        format!(
                            "{from}: {p} (checked against the config schema of plugin {plugin})"
                        )
                    })
                    .collect();
                let redactor = crate::secrets::Redactor::new(m.checked.secrets.values());
                return Err(invalid(redactor.redact(&said.join("\n"))));
            }
            let table = json_to_toml_table(&config)?;
            let toml = edit_connector(&m.def.toml, |t| {
                t.insert("config", toml_edit::Item::Table(table.clone()));
            })?;
            let def = Definition {
                toml,
                ..m.def.clone()
            };
            let checked = Arc::new(self.check(&def).await?);
            // Which keys changed, never their values: a value may be
            // sensitive without being a declared secret.
            let old = serde_json::to_value(&m.checked.config.config).unwrap_or_default();
            let changed = changed_keys(&old, &config);
            tracing::info!(connector = %name, keys = ?changed, "config replaced; restarting with it");
            // Stored first: in a cluster, a change another host made
            // meanwhile refuses this one (409) before anything stops.
            let old_toml = std::mem::replace(&mut m.def.toml, def.toml);
            if let Err(e) = self.save(name, &mut m).await {
                m.def.toml = old_toml;
                return Err(e);
            }
            let was_running = m.running.is_some();
            self.stop_running(name, &mut m).await;
            m.checked = checked;
            if was_running {
                let paused = m.def.state == DesiredState::Paused;
                self.start_running(&entry, &mut m, paused)?;
            }
        }
        self.get(name).await
    }

    /// Swaps a connector's module (see [`crate::supervisor`]); the definition
    /// changes only if the swap succeeds.
    pub async fn update_module(&self, name: &str, plugin: &str) -> Result<SwapOutcome, AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        let toml = edit_connector(&m.def.toml, |t| {
            t.insert("plugin", toml_edit::value(plugin));
        })?;
        let def = Definition {
            toml,
            ..m.def.clone()
        };
        let checked = Arc::new(self.check(&def).await?);
        let (live, pause) = match &m.running {
            Some(r) => {
                let (pause, swapped) = r
                    .swap(checked.clone())
                    .await
                    .map_err(|e| AdminError::SwapFailed(format!("{e:#}")))?;
                (swapped > 0, (swapped > 0).then_some(pause))
            }
            None => (false, None),
        };
        m.def.toml = def.toml;
        m.checked = checked.clone();
        self.save(name, &mut m).await?;
        {
            let mut shown = entry.shown.lock().expect("shown lock");
            shown.plugin = checked.plugin.name().to_owned();
            shown.version = checked.spec.version.clone();
        }
        if !live {
            tracing::info!(connector = %name, "module changed; used at the next start");
        }
        Ok(SwapOutcome {
            name: name.to_owned(),
            plugin: checked.plugin.name().to_owned(),
            live,
            pause_ms: pause.map(|p| p.as_secs_f64() * 1000.0),
        })
    }

    /// Pauses a running connector.
    pub async fn pause(&self, name: &str) -> Result<(), AdminError> {
        self.set_paused(name, true).await
    }

    /// Resumes a paused connector.
    pub async fn resume(&self, name: &str) -> Result<(), AdminError> {
        self.set_paused(name, false).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        if m.def.state == DesiredState::Stopped {
            return Err(AdminError::Conflict(format!(
                "connector {name:?} is stopped; use `start`"
            )));
        }
        let state = if paused {
            DesiredState::Paused
        } else {
            DesiredState::Running
        };
        self.set_desired(&entry, &mut m, state).await?;
        if let Some(r) = &m.running {
            r.set_paused(paused);
        }
        Ok(())
    }

    /// Stops a connector: every instance flushes, commits and closes.
    pub async fn stop(&self, name: &str) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        self.set_desired(&entry, &mut m, DesiredState::Stopped)
            .await?;
        self.stop_running(name, &mut m).await;
        Ok(())
    }

    /// Starts a stopped (or ended) connector.
    pub async fn start(&self, name: &str) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        if m.running
            .as_ref()
            .is_some_and(|r| r.report().outcome() == ConnectorOutcome::Running)
        {
            return Err(AdminError::Conflict(format!(
                "connector {name:?} is already running"
            )));
        }
        self.stop_running(name, &mut m).await;
        self.set_desired(&entry, &mut m, DesiredState::Running)
            .await?;
        self.start_running(&entry, &mut m, false)
    }

    /// Restarts every instance, or one.
    pub async fn restart(&self, name: &str, instance: Option<u32>) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        if m.def.state == DesiredState::Stopped {
            return Err(AdminError::Conflict(format!(
                "connector {name:?} is stopped; use `start`"
            )));
        }
        match (instance, m.running.as_ref()) {
            (Some(i), Some(r)) => {
                if i as usize >= r.report().instances.len() {
                    return Err(AdminError::NotFound(format!(
                        "connector {name:?} has {} instances (0 to {})",
                        r.report().instances.len(),
                        r.report().instances.len() - 1
                    )));
                }
                if self.cluster.is_some() && !r.instance_runs(i as usize) {
                    return Err(AdminError::Conflict(format!(
                        "instance {i} of {name:?} does not run on this host ({}); restart it \
                         through the host that runs it",
                        self.holder(name, i).map_or_else(
                            || "no host runs it now".into(),
                            |h| format!("{h} runs it")
                        )
                    )));
                }
                r.restart_instance(i as usize).await?;
                tracing::info!(connector = %name, instance = i, "instance restarted");
            }
            _ => {
                tracing::info!(connector = %name, "restarting every instance");
                self.stop_running(name, &mut m).await;
                let paused = m.def.state == DesiredState::Paused;
                self.start_running(&entry, &mut m, paused)?;
            }
        }
        Ok(())
    }

    /// Stops and deletes a connector: its definition, its group's offsets
    /// and its plugin state.
    pub async fn delete(&self, name: &str) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        // In a cluster, deleted from the bucket first: refused (409), it
        // leaves the connector as it was.
        if let Some(cluster) = &self.cluster {
            cluster
                .delete_definition(name, m.revision)
                .await
                .map_err(|e| match e {
                    ClusterError::Changed(_) => {
                        AdminError::Conflict(format!("{e}; read it again and retry"))
                    }
                    e => internal(e),
                })?;
        }
        self.stop_running(name, &mut m).await;
        if self.cluster.is_none() {
            let path = self
                .data_dir
                .join("connectors")
                .join(format!("{name}.json"));
            std::fs::remove_file(&path).map_err(|e| {
                AdminError::Internal(format!("cannot remove {}: {e}", path.display()))
            })?;
        }
        self.broker
            .forget_connector(name)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        m.deleted = true;
        self.entries.lock().expect("entries lock").remove(name);
        tracing::info!(connector = %name, "connector deleted");
        Ok(())
    }

    /// Resets a stopped sink's committed offsets (KIP-875: only while
    /// stopped). At its next start the sink resumes there, even if it
    /// stores offsets of its own.
    pub async fn reset_offsets(
        &self,
        name: &str,
        request: ResetRequest,
    ) -> Result<Offsets, AdminError> {
        let entry = self.entry(name)?;
        {
            let mut m = self.lock(&entry).await?;
            if m.def.state != DesiredState::Stopped || m.running.is_some() {
                return Err(AdminError::Conflict(format!(
                    "connector {name:?} is not stopped; offsets change only while it is stopped: \
                     `sluice connectors stop {name}` first"
                )));
            }
            let c = m.checked.config.clone();
            if c.kind != ConnectorKind::Sink {
                return Err(AdminError::Invalid(format!(
                    "connector {name:?} is a {}; resetting the position it stores with what it \
                     writes is not supported yet (delete and create it under a new name to \
                     start over)",
                    c.kind
                )));
            }
            let mut list = Vec::new();
            for topic in c.topic_names() {
                if request.topic.as_ref().is_some_and(|t| *t != topic) {
                    continue;
                }
                let partitions = self.broker.ensure_topic(&topic).map_err(internal)?;
                for p in 0..partitions {
                    if request.partition.is_some_and(|want| want != p) {
                        continue;
                    }
                    let start = self.broker.start_offset(&topic, p).map_err(internal)?;
                    let end = self.broker.end_offset(&topic, p).map_err(internal)?;
                    let to = match (request.to.as_str(), request.offset) {
                        ("earliest", _) => start,
                        ("latest", _) => end,
                        ("offset", Some(o)) => o.clamp(start, end),
                        _ => {
                            return Err(invalid(
                                "`to` must be `earliest`, `latest`, or `offset` with an `offset`",
                            ));
                        }
                    };
                    list.push((topic.clone(), p, to));
                }
            }
            if list.is_empty() {
                return Err(AdminError::NotFound(format!(
                    "connector {name:?} reads no such topic or partition"
                )));
            }
            self.broker
                .commit_offsets(name, &list)
                .await
                .map_err(internal)?;
            m.def.offsets_reset = true;
            self.save(name, &mut m).await?;
            tracing::info!(connector = %name, offsets = ?list, "offsets reset");
        }
        self.offsets(name).await
    }
}

/// The top-level keys whose values differ between two configs (added,
/// removed or changed), sorted.
fn changed_keys(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let old = old.as_object().unwrap_or(&empty);
    let new = new.as_object().unwrap_or(&empty);
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}
