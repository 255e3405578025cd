//! `sluice validate`: a manifest checked, and every connector's config
//! checked against its plugin's schema, without running anything.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice::pipeline::CheckedConnector;
use sluice::plugin::PluginHost;

use super::load_checked;

/// The arguments of `sluice validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest (TOML).
    manifest: PathBuf,
}

/// Checks the manifest and prints each connector and its grants.
pub async fn exec(args: Args, plugins: &PluginHost) -> anyhow::Result<ExitCode> {
    let (manifest, connectors) = match load_checked(&args.manifest, plugins).await {
        Ok(ok) => ok,
        Err(code) => return Ok(code),
    };
    println!("{}: valid", manifest.path.display());
    for c in &connectors {
        println!(
            "  {:<16} {:<9} plugin {} {}  topics: {}{}",
            c.config.name.get_ref(),
            c.config.kind.to_string(),
            c.spec.name,
            c.spec.version,
            c.config.topics_as_named().join(", "),
            c.config
                .output
                .as_ref()
                .map_or_else(String::new, |o| format!(" → {}", o.get_ref()))
        );
        if !c.chain.is_empty() {
            let steps: Vec<String> = c
                .chain
                .iter()
                .map(|t| format!("{} ({})", t.name, t.plugin.name()))
                .collect();
            println!("  {:<16} {:<9} chain {}", "", "", steps.join(" → "));
        }
        if let Some(h) = &c.hybrid {
            println!(
                "  {:<16} {:<9} then {} {} (live, once {} has ended)",
                "", "", h.spec.name, h.spec.version, c.spec.name
            );
        }
    }
    println!();
    print!("{}", grants_table(&connectors));
    Ok(ExitCode::SUCCESS)
}

/// What each connector may reach, one row per grant, for `validate`.
fn grants_table(connectors: &[CheckedConnector]) -> String {
    let rows: Vec<(&str, &str, String)> = connectors
        .iter()
        .flat_map(|c| {
            c.grants
                .describe()
                .into_iter()
                .map(|(grant, allows)| (c.config.name.get_ref().as_str(), grant, allows))
        })
        .collect();
    let width = rows
        .iter()
        .map(|(name, _, _)| name.len())
        .max()
        .unwrap_or(0)
        .max("connector".len());
    let mut out = format!("{:<width$}  {:<8} allows\n", "connector", "grant");
    let mut last = "";
    for (name, grant, allows) in &rows {
        let shown = if *name == last { "" } else { name };
        last = name;
        out.push_str(&format!("{shown:<width$}  {grant:<8} {allows}\n"));
    }
    out
}
