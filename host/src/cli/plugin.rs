//! `sluice plugin`: the plugins this binary can load, inspected locally
//! (`sluice plugins` asks a daemon instead).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use sluice::plugin::{PluginHost, PluginRef, builtin_names};

/// The arguments of `sluice plugin`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// List the built-in plugins with their specs.
    List,
    /// Print a plugin's name, version, description and config schema.
    Inspect {
        /// A built-in name (e.g. `datagen`) or the path of a `.wasm` file.
        plugin: String,
        /// Print the spec as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `plugin` verb.
pub async fn exec(args: Args, plugins: &PluginHost) -> anyhow::Result<ExitCode> {
    match args.command {
        PluginCommand::List => list(plugins).await,
        PluginCommand::Inspect { plugin, json } => inspect(plugins, &plugin, json).await,
    }
}

async fn list(plugins: &PluginHost) -> anyhow::Result<ExitCode> {
    println!("{:<14} {:<9} {:<8} description", "name", "kind", "version");
    for name in builtin_names() {
        let reference = PluginRef::resolve(name, Path::new("."))?;
        let plugin = plugins.load(&reference)?;
        let spec = plugins.spec(&plugin).await?;
        println!(
            "{:<14} {:<9} {:<8} {}",
            spec.name,
            plugin.kind().to_string(),
            spec.version,
            spec.description
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn inspect(plugins: &PluginHost, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let reference = PluginRef::resolve(name, Path::new("."))?;
    let plugin = plugins.load(&reference)?;
    let spec = plugins.spec(&plugin).await?;
    if json {
        let mut value = serde_json::to_value(&spec)?;
        value["kind"] = plugin.kind().to_string().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("name:        {}", spec.name);
    println!("kind:        {}", plugin.kind());
    println!("version:     {}", spec.version);
    println!("description: {}", spec.description);
    println!("contract:    {}", plugin.kind().qualified());
    println!("config schema:");
    println!("{}", serde_json::to_string_pretty(&spec.config_schema)?);
    Ok(ExitCode::SUCCESS)
}
