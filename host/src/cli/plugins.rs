//! `sluice plugins`: the plugins a daemon offers, through its admin API
//! (`sluice plugin` inspects them locally instead).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;

use super::EXIT_INVALID;
use super::remote::{
    Target, absolute_plugin, client, exit_for, path_part, read_document, text, with_local_input,
};

/// The arguments of `sluice plugins`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// The daemon's built-in plugins with their specs.
    List,
    /// One plugin's spec and config schema.
    Inspect {
        /// A built-in name or a `.wasm` path on the daemon's machine.
        plugin: String,
    },
    /// Check a config file (JSON or TOML) against a plugin's schema.
    Validate {
        /// The plugin.
        plugin: String,
        /// The config.
        config: PathBuf,
    },
}

/// Runs one `plugins` verb.
pub async fn exec(args: Args) -> anyhow::Result<ExitCode> {
    with_local_input(call(args.target, args.command)).await
}

async fn call(target: Target, command: PluginsCommand) -> anyhow::Result<ExitCode> {
    let client = client(&target)?;
    let outcome = match &command {
        PluginsCommand::List => client.call(Method::GET, "/v1/plugins", None).await,
        PluginsCommand::Inspect { plugin } => {
            let path = format!("/v1/plugins/{}", path_part(&absolute_plugin(plugin)));
            client.call(Method::GET, &path, None).await
        }
        PluginsCommand::Validate { plugin, config } => {
            let body = read_document(config)?;
            let path = format!(
                "/v1/plugins/{}/validate",
                path_part(&absolute_plugin(plugin))
            );
            client.call(Method::POST, &path, Some(&body)).await
        }
    };
    let value = match outcome {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit_for(&e));
        }
    };
    let invalid = matches!(command, PluginsCommand::Validate { .. })
        && !value["valid"].as_bool().unwrap_or(false);
    if target.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::from(if invalid { EXIT_INVALID } else { 0 }));
    }
    match command {
        PluginsCommand::List => {
            println!("{:<14} {:<9} {:<8} description", "name", "kind", "version");
            for p in value.as_array().into_iter().flatten() {
                println!(
                    "{:<14} {:<9} {:<8} {}",
                    text(&p["name"]),
                    text(&p["kind"]),
                    text(&p["version"]),
                    text(&p["description"])
                );
            }
        }
        PluginsCommand::Inspect { .. } => {
            println!("name:        {}", text(&value["name"]));
            println!("kind:        {}", text(&value["kind"]));
            println!("version:     {}", text(&value["version"]));
            println!("description: {}", text(&value["description"]));
            println!("config schema:");
            println!("{}", serde_json::to_string_pretty(&value["config_schema"])?);
        }
        PluginsCommand::Validate { .. } => {
            if value["valid"].as_bool().unwrap_or(false) {
                println!("valid");
            } else {
                for e in value["errors"].as_array().into_iter().flatten() {
                    println!("{}", text(e));
                }
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
