//! `sluice plugins`: the plugins there are, their specs, and a config
//! checked against one. With a daemon (one found in the data directory, or
//! named by `--url`) it asks the daemon, which may see other files than this
//! machine; without one, or with `--local`, this binary answers itself. Both
//! print the same tables and the same JSON. (`sluice plugin` is an old
//! spelling of the same verb.)

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use sluice::admin::access;
use sluice::plugin::{PluginHost, PluginRef, builtin_names};

use super::EXIT_INVALID;
use super::remote::{
    Target, absolute_plugin, client, exit_for, local, path_part, read_document, text,
    with_local_input,
};

/// The arguments of `sluice plugins`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Answer from this binary even if a daemon is found.
    #[arg(long, global = true)]
    local: bool,
    #[command(subcommand)]
    command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// The built-in plugins with their specs.
    List,
    /// One plugin's name, version, description and config schema.
    Inspect {
        /// A built-in name (e.g. `datagen`) or the path of a `.wasm` file.
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
pub async fn exec(args: Args, plugins: &PluginHost) -> anyhow::Result<ExitCode> {
    with_local_input(run(args, plugins)).await
}

/// True when the verb should ask a daemon: one is named, or one has left
/// its address in the data directory.
fn daemon_named(target: &Target) -> bool {
    let data_dir = target
        .data_dir
        .clone()
        .unwrap_or_else(access::default_data_dir);
    target.url.is_some() || data_dir.join(access::DAEMON_FILE).exists()
}

async fn run(args: Args, plugins: &PluginHost) -> anyhow::Result<ExitCode> {
    let answer = if !args.local && daemon_named(&args.target) {
        remote(&args.target, &args.command).await?
    } else {
        on_this_machine(plugins, &args.command).await?
    };
    let value = match answer {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    print(&args.target, &args.command, &value)
}

/// The daemon's answer, or the exit code of its refusal (said on stderr).
async fn remote(
    target: &Target,
    command: &PluginsCommand,
) -> anyhow::Result<Result<Value, ExitCode>> {
    let client = client(target)?;
    let outcome = match command {
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
    Ok(outcome.map_err(|e| {
        eprintln!("error: {e}");
        exit_for(&e)
    }))
}

/// The same answer as the daemon's, from this binary.
async fn on_this_machine(
    plugins: &PluginHost,
    command: &PluginsCommand,
) -> anyhow::Result<Result<Value, ExitCode>> {
    let info = |name: &str| {
        let name = name.to_owned();
        async move {
            let reference = PluginRef::resolve(&name, Path::new("."))?;
            let plugin = plugins.load(&reference)?;
            let spec = plugins.spec(&plugin).await?;
            anyhow::Ok((
                json!({
                    "name": spec.name,
                    "kind": plugin.kind().to_string(),
                    "version": spec.version,
                    "description": spec.description,
                    "config_schema": spec.config_schema,
                }),
                spec,
            ))
        }
    };
    let not_found = |e: anyhow::Error| {
        eprintln!("error: {e:#}");
        ExitCode::from(3)
    };
    Ok(match command {
        PluginsCommand::List => {
            let mut all = Vec::new();
            for name in builtin_names() {
                all.push(info(name).await?.0);
            }
            Ok(Value::Array(all))
        }
        PluginsCommand::Inspect { plugin } => info(plugin).await.map(|(v, _)| v).map_err(not_found),
        PluginsCommand::Validate { plugin, config } => {
            let document = read_document(config)?;
            match info(plugin).await {
                Err(e) => Err(not_found(e)),
                Ok((_, spec)) => {
                    let errors: Vec<String> = local(spec.check_config(&document), || {
                        format!("checking {}", config.display())
                    })?
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                    Ok(json!({ "valid": errors.is_empty(), "errors": errors }))
                }
            }
        }
    })
}

fn print(target: &Target, command: &PluginsCommand, value: &Value) -> anyhow::Result<ExitCode> {
    let invalid = matches!(command, PluginsCommand::Validate { .. })
        && !value["valid"].as_bool().unwrap_or(false);
    if target.json {
        println!("{}", serde_json::to_string_pretty(value)?);
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
            if !invalid {
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
