//! Checking a manifest's connectors against their plugins, once: each
//! plugin loaded and of the right kind, its secrets resolved, its config
//! accepted by the plugin's own JSON Schema, its grants and restart policy
//! read. What comes out is a [`CheckedConnector`], the typed value that
//! everything downstream runs: `sluice validate` prints it, the
//! [`crate::pipeline`] and the daemon start it, and the
//! [`crate::supervisor`] runs and swaps it.
//!
//! It lives below both `pipeline` and `supervisor` because both need it.
//! A hybrid source's live source is checked in `hybrid`.

mod hybrid;

pub use self::hybrid::CheckedHybrid;

use std::fmt::Write as _;

use anyhow::Context as _;
use toml::Spanned;

use crate::grants::{GrantSet, GrantedHeaders};
use crate::manifest::RestartPolicy;
use crate::manifest::{ConnectorConfig, ConnectorKind, Manifest, ManifestError};
use crate::plugin::{Plugin, PluginHost, PluginKind, PluginRef, Spec};
use crate::secrets::{Redactor, Secrets};
use crate::tls::{TlsClient, TlsError};

/// A connector whose plugin is loaded and whose config its schema accepts.
/// Its `Debug` leaves out the config document, which may hold secrets.
#[derive(Clone)]
pub struct CheckedConnector {
    /// As written in the manifest.
    pub config: ConnectorConfig,
    /// The loaded plugin.
    pub plugin: Plugin,
    /// Where it was loaded from.
    pub plugin_ref: PluginRef,
    /// What the plugin says of itself.
    pub spec: Spec,
    /// The config as the JSON document the plugin receives.
    pub config_json: String,
    /// What it may reach.
    pub grants: GrantSet,
    /// Its resolved secrets (already substituted into `config_json`).
    pub secrets: Secrets,
    /// How its failed instances are restarted.
    pub restart: RestartPolicy,
    /// The transforms of its chain, in order.
    pub chain: Vec<CheckedTransform>,
    /// A hybrid source's live source, which runs once `plugin` has ended.
    pub hybrid: Option<CheckedHybrid>,
}

/// A `[[transform]]` of a connector's chain, its plugin loaded and its
/// config accepted by the plugin's schema. Its `Debug` leaves out the
/// config document, which may hold the connector's secrets.
#[derive(Clone)]
pub struct CheckedTransform {
    /// Its name in the manifest.
    pub name: String,
    /// The loaded plugin.
    pub plugin: Plugin,
    /// What the plugin says of itself.
    pub spec: Spec,
    /// The config as the JSON document the plugin receives.
    pub config_json: String,
}

impl std::fmt::Debug for CheckedTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedTransform")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CheckedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedConnector")
            .field("name", self.config.name.get_ref())
            .field("plugin", &self.plugin)
            .field("grants", &self.grants)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl CheckedConnector {
    /// The same connector with another module: loaded, of the same kind,
    /// and accepting the same config.
    pub async fn with_module(
        &self,
        plugins: &PluginHost,
        reference: &PluginRef,
    ) -> anyhow::Result<CheckedConnector> {
        let plugin = plugins.load(reference)?;
        plugin.expect_kind(plugin_kind(self.config.kind))?;
        let spec = plugins.spec(&plugin).await?;
        let config: serde_json::Value = serde_json::from_str(&self.config_json)?;
        let problems: Vec<String> = spec
            .check_config(&config)?
            .iter()
            .map(ToString::to_string)
            .collect();
        if !problems.is_empty() {
            anyhow::bail!(
                "module {} does not accept the connector's config: {}",
                plugin.name(),
                Redactor::new(self.secrets.values()).redact(&problems.join("; "))
            );
        }
        Ok(CheckedConnector {
            plugin,
            plugin_ref: reference.clone(),
            spec,
            ..self.clone()
        })
    }
}

/// The kind of plugin a connector of `kind` runs.
fn plugin_kind(kind: ConnectorKind) -> PluginKind {
    match kind {
        ConnectorKind::Source => PluginKind::Source,
        ConnectorKind::Sink => PluginKind::Sink,
        ConnectorKind::Transform => PluginKind::Transform,
    }
}

/// Every problem found in a manifest's connectors, not only the first.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\n"))]
pub struct ValidationErrors(pub Vec<anyhow::Error>);

/// Loads each connector's plugin, checks its kind, and checks its config
/// against the plugin's own JSON Schema.
pub async fn check(
    manifest: &Manifest,
    plugins: &PluginHost,
) -> Result<Vec<CheckedConnector>, ValidationErrors> {
    let mut checked = Vec::new();
    let mut errors = Vec::new();
    for (index, c) in manifest.connectors.iter().enumerate() {
        let c = c.get_ref();
        match check_one(manifest, plugins, index, c).await {
            Ok(ok) => checked.push(ok),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(ValidationErrors(errors))
    }
}

async fn check_one(
    manifest: &Manifest,
    plugins: &PluginHost,
    index: usize,
    c: &ConnectorConfig,
) -> anyhow::Result<CheckedConnector> {
    let name = c.name.get_ref();
    let at_plugin = |e: &dyn std::fmt::Display| {
        ManifestError::at(
            &manifest.path,
            &manifest.source,
            Some(c.plugin.span()),
            e.to_string(),
        )
        .field(format!("connector[{index}].plugin"))
    };
    let reference = PluginRef::resolve(c.plugin.get_ref(), &manifest.base_dir)
        .map_err(|e| at_plugin(&e).help("`sluice plugins list` shows the built-in plugins"))?;
    let plugin = plugins.load(&reference).map_err(|e| at_plugin(&e))?;
    let needed = plugin_kind(c.kind);
    plugin.expect_kind(needed).map_err(|e| {
        at_plugin(&e).help(format!(
            "use a {needed} plugin here, or change `kind` to match the plugin"
        ))
    })?;
    let spec = plugins.spec(&plugin).await.with_context(|| {
        format!(
            "reading the spec of plugin {} for connector {name:?}",
            plugin.name()
        )
    })?;
    let secrets = Secrets::resolve(manifest, c).map_err(|e| {
        let span = c.grants.secrets.values().next().map_or(c.name.span(), |s| s.span());
        ManifestError::at(&manifest.path, &manifest.source, Some(span), e.to_string())
            .field(format!("connector[{index}].grants.secrets"))
            .help("set the variable or create the file before running; the manifest names only where a secret comes from")
    })?;
    let tls = TlsClient::build(&c.limits.tls, &secrets).map_err(|e| {
        let t = &c.grants.tls;
        let (span, field) = match &e {
            TlsError::CaFile { .. } | TlsError::NoCa { .. } => {
                (t.ca_file.as_ref().map(Spanned::span), "ca_file")
            }
            TlsError::Identity { field, .. } => (
                if *field == "client_key" { t.client_key.as_ref() } else { t.client_cert.as_ref() }
                    .map(Spanned::span),
                *field,
            ),
            TlsError::Mismatch(_) => (t.client_key.as_ref().map(Spanned::span), "client_key"),
        };
        ManifestError::at(&manifest.path, &manifest.source, span.or(Some(c.name.span())), e.to_string())
            .field(format!("connector[{index}].grants.tls.{field}"))
            .help(match e {
                TlsError::CaFile { .. } | TlsError::NoCa { .. } => "name a PEM file of CA certificates, relative to the manifest",
                _ => "the secrets must hold the client's certificate chain and its private key, PEM, and the key must be the certificate's",
            })
    })?;
    let mut http_headers = Vec::new();
    for (name, template) in &c.limits.http_headers {
        let value = secrets.substitute_str(template);
        let value = http::HeaderValue::from_str(&value).map_err(|_| {
            let span = c.grants.http.headers.get(name.as_str()).map(Spanned::span);
            // Names the header, never its value: it may hold a secret.
            ManifestError::at(
                &manifest.path,
                &manifest.source,
                span.or(Some(c.name.span())),
                format!("the value of header {name}, secrets substituted, is not a valid HTTP header value"),
            )
            .field(format!("connector[{index}].grants.http.headers.{name}"))
            .help("a header value is visible ASCII and spaces: no newlines (check the secret's file for a stray line break)")
        })?;
        http_headers.push((name.clone(), value));
    }
    let redactor = Redactor::new(secrets.values());
    let mut config =
        serde_json::to_value(&c.config).context("turning [connector.config] into JSON")?;
    secrets.substitute(&mut config);
    let mut problems = Vec::new();
    for problem in spec.check_config(&config)? {
        let (pointer, field) = (&problem.pointer, problem.field());
        let error = &problem.message;
        let span = manifest
            .config_span(index, pointer)
            .or(Some(c.plugin.span()));
        let mut e = ManifestError::at(
            &manifest.path,
            &manifest.source,
            span,
            format!(
                "connector {name:?}: {error} (checked against the config schema of plugin {})",
                plugin.name()
            ),
        )
        .field(if field.is_empty() {
            format!("connector[{index}].config")
        } else {
            format!("connector[{index}].config.{field}")
        });
        e = e.help(schema_help(&spec.config_schema, pointer, plugin.name()));
        problems.push(redactor.redact(&e.to_string()).into_owned());
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n\n"));
    }
    let chain = check_chain(manifest, plugins, index, c, &secrets).await?;
    let hybrid = hybrid::check(manifest, plugins, index, c, &secrets).await?;
    Ok(CheckedConnector {
        chain,
        hybrid,
        config: c.clone(),
        grants: GrantSet {
            tls,
            http_headers: GrantedHeaders::new(http_headers),
            ..GrantSet::from_manifest(manifest, c)
        },
        plugin,
        plugin_ref: reference,
        spec,
        config_json: config.to_string(),
        secrets,
        restart: c.limits.restart,
    })
}

/// Loads and checks the transforms of connector `index`'s chain (the
/// manifest check has made sure each is defined), each config's
/// `${secret:NAME}` filled from the connector's `secrets`.
async fn check_chain(
    manifest: &Manifest,
    plugins: &PluginHost,
    index: usize,
    c: &ConnectorConfig,
    secrets: &Secrets,
) -> anyhow::Result<Vec<CheckedTransform>> {
    let redactor = Redactor::new(secrets.values());
    let mut chain = Vec::new();
    for step in c.chain() {
        let Some((i, t)) = manifest
            .transforms
            .iter()
            .enumerate()
            .find(|(_, t)| t.get_ref().name.get_ref() == step)
        else {
            anyhow::bail!("connector[{index}] names transform {step:?}, which is not defined");
        };
        let t = t.get_ref();
        let at_plugin = |e: &dyn std::fmt::Display| {
            ManifestError::at(
                &manifest.path,
                &manifest.source,
                Some(t.plugin.span()),
                e.to_string(),
            )
            .field(format!("transform[{i}].plugin"))
        };
        let reference = PluginRef::resolve(t.plugin.get_ref(), &manifest.base_dir)
            .map_err(|e| at_plugin(&e).help("`sluice plugins list` shows the built-in plugins"))?;
        let plugin = plugins.load(&reference).map_err(|e| at_plugin(&e))?;
        plugin.expect_kind(PluginKind::Transform).map_err(|e| {
            at_plugin(&e).help("a chain runs transform plugins, such as `plugin = \"filter\"`")
        })?;
        let spec = plugins.spec(&plugin).await.with_context(|| {
            format!(
                "reading the spec of plugin {} for transform {step:?}",
                plugin.name()
            )
        })?;
        let mut config =
            serde_json::to_value(&t.config).context("turning [transform.config] into JSON")?;
        secrets.substitute(&mut config);
        let mut problems = Vec::new();
        for problem in spec.check_config(&config)? {
            let field = problem.field();
            let e = ManifestError::at(
                &manifest.path,
                &manifest.source,
                Some(t.name.span()),
                format!(
                    "transform {step:?}: {} (checked against the config schema of plugin {})",
                    problem.message,
                    plugin.name()
                ),
            )
            .field(if field.is_empty() {
                format!("transform[{i}].config")
            } else {
                format!("transform[{i}].config.{field}")
            })
            .help(schema_help(
                &spec.config_schema,
                &problem.pointer,
                plugin.name(),
            ));
            problems.push(redactor.redact(&e.to_string()).into_owned());
        }
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("\n\n"));
        }
        chain.push(CheckedTransform {
            name: step.clone(),
            plugin,
            spec,
            config_json: config.to_string(),
        });
    }
    Ok(chain)
}

/// What the schema says of the field at `pointer`, for the fix line.
fn schema_help(schema: &serde_json::Value, pointer: &str, plugin: &str) -> String {
    let mut node = schema;
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        match node.get("properties").and_then(|p| p.get(part)) {
            Some(n) => node = n,
            None => break,
        }
    }
    let mut help = String::new();
    if !pointer.is_empty() {
        if let Some(ty) = node.get("type") {
            let _ = write!(help, "expects {ty}");
        }
        if let Some(d) = node.get("description").and_then(|d| d.as_str()) {
            let d = d.trim_end_matches('.');
            let _ = write!(help, "{}{d}", if help.is_empty() { "" } else { ": " });
        }
    } else if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        let names: Vec<&str> = props.keys().map(String::as_str).collect();
        let _ = write!(help, "its fields are: {}", names.join(", "));
    }
    if !help.is_empty() {
        help.push_str("; ");
    }
    let _ = write!(
        help,
        "`sluice plugins inspect {plugin}` shows the whole schema"
    );
    help
}
