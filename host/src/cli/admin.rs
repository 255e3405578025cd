//! The CLI's admin verbs (`sluice connectors …`, `sluice plugins …`): calls
//! to a daemon's admin API, printed as tables for people or as JSON for
//! scripts (`--json`), with exit codes scripts can rely on (see `main.rs`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};
use sluice::admin::access;
use sluice::admin::client::{AdminClient, CallError};

use crate::{ConnectorsCommand, PluginsCommand, Target, thousands};

/// The exit code for a refused call.
fn exit_for(e: &CallError) -> ExitCode {
    ExitCode::from(match e {
        CallError::Unreachable { .. } => 1,
        CallError::Refused { status, .. } => match status {
            400 => 2,
            404 => 3,
            409 => 4,
            422 => 5,
            401 | 403 => 6,
            _ => 1,
        },
    })
}

fn client(target: &Target) -> anyhow::Result<AdminClient> {
    let data_dir = target
        .data_dir
        .clone()
        .unwrap_or_else(access::default_data_dir);
    AdminClient::locate(target.url.clone(), target.token.clone(), &data_dir)
}

/// Reads a JSON or TOML file as JSON.
fn read_document(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    } else {
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(serde_json::to_value(table)?)
    }
}

/// A plugin argument that names an existing file is sent as an absolute
/// path, so that the daemon finds it whatever its working directory.
fn absolute_plugin(plugin: &str) -> String {
    let p = Path::new(plugin);
    if p.exists() {
        std::path::absolute(p).map_or_else(|_| plugin.to_owned(), |a| a.display().to_string())
    } else {
        plugin.to_owned()
    }
}

fn path_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32)
            }
        })
        .collect()
}

/// The exit code for input the CLI itself cannot read (as for a request
/// the daemon refuses as invalid).
const EXIT_INVALID: u8 = 2;

/// Runs one `connectors` verb.
pub async fn connectors(target: Target, command: ConnectorsCommand) -> anyhow::Result<ExitCode> {
    match connectors_inner(target, command).await {
        Err(e) if e.downcast_ref::<LocalInput>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_INVALID))
        }
        other => other,
    }
}

/// A local file the CLI could not read or parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LocalInput(String);

fn local<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    r.map_err(|e| LocalInput(format!("{}: {e}", what())).into())
}

async fn connectors_inner(target: Target, command: ConnectorsCommand) -> anyhow::Result<ExitCode> {
    let client = client(&target)?;
    let c = |name: &str, rest: &str| format!("/v1/connectors/{}{rest}", path_part(name));
    let outcome = match &command {
        ConnectorsCommand::Create { file } => {
            let text = local(std::fs::read_to_string(file), || {
                format!("reading {}", file.display())
            })?;
            let path = std::path::absolute(file)?.display().to_string();
            let body = if file.extension().is_some_and(|e| e == "json") {
                let connector: Value = local(serde_json::from_str(&text), || {
                    format!("{} is not valid JSON", file.display())
                })?;
                json!({ "connector": connector, "path": path })
            } else {
                json!({ "toml": text, "path": path })
            };
            client
                .call(Method::POST, "/v1/connectors", Some(&body))
                .await
        }
        ConnectorsCommand::Update {
            name,
            config,
            plugin,
        } => match (config, plugin) {
            (Some(file), None) => {
                let body = read_document(file)?;
                client
                    .call(Method::PUT, &c(name, "/config"), Some(&body))
                    .await
            }
            (None, Some(plugin)) => {
                let body = json!({ "plugin": absolute_plugin(plugin) });
                client
                    .call(Method::PUT, &c(name, "/module"), Some(&body))
                    .await
            }
            _ => {
                eprintln!("error: give exactly one of --config FILE and --plugin PLUGIN");
                return Ok(ExitCode::from(2));
            }
        },
        ConnectorsCommand::List => client.call(Method::GET, "/v1/connectors", None).await,
        ConnectorsCommand::Get { name } => client.call(Method::GET, &c(name, ""), None).await,
        ConnectorsCommand::Status { name } => {
            client.call(Method::GET, &c(name, "/status"), None).await
        }
        ConnectorsCommand::Pause { name } => {
            client.call(Method::POST, &c(name, "/pause"), None).await
        }
        ConnectorsCommand::Resume { name } => {
            client.call(Method::POST, &c(name, "/resume"), None).await
        }
        ConnectorsCommand::Stop { name } => {
            client.call(Method::POST, &c(name, "/stop"), None).await
        }
        ConnectorsCommand::Start { name } => {
            client.call(Method::POST, &c(name, "/start"), None).await
        }
        ConnectorsCommand::Restart { name, instance } => {
            let q = instance.map_or_else(String::new, |i| format!("?instance={i}"));
            client
                .call(Method::POST, &c(name, &format!("/restart{q}")), None)
                .await
        }
        ConnectorsCommand::Delete { name } => client.call(Method::DELETE, &c(name, ""), None).await,
        ConnectorsCommand::Offsets {
            name,
            reset,
            topic,
            partition,
        } => match reset {
            None => client.call(Method::GET, &c(name, "/offsets"), None).await,
            Some(to) => {
                let body = match to.as_str() {
                    "earliest" | "latest" => json!({ "to": to }),
                    n => match n.parse::<u64>() {
                        Ok(o) => json!({ "to": "offset", "offset": o }),
                        Err(_) => {
                            eprintln!("error: --reset takes `earliest`, `latest` or an offset");
                            return Ok(ExitCode::from(2));
                        }
                    },
                };
                let mut body = body;
                if let Some(t) = topic {
                    body["topic"] = json!(t);
                }
                if let Some(p) = partition {
                    body["partition"] = json!(p);
                }
                client
                    .call(Method::POST, &c(name, "/offsets/reset"), Some(&body))
                    .await
            }
        },
        ConnectorsCommand::Metrics => match client.text("/metrics").await {
            Ok(text) => {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => Err(e),
        },
    };
    let value = match outcome {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit_for(&e));
        }
    };
    if target.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        ConnectorsCommand::Create { .. } => {
            for n in value.as_array().into_iter().flatten() {
                println!("created {}", n.as_str().unwrap_or_default());
            }
        }
        ConnectorsCommand::List => print_list(&value),
        ConnectorsCommand::Status { .. } => print_status(&value),
        ConnectorsCommand::Get { .. } => {
            println!("{}", value["toml"].as_str().unwrap_or_default());
            println!("# state: {}", value["state"].as_str().unwrap_or_default());
        }
        ConnectorsCommand::Update {
            plugin: Some(_), ..
        } => {
            let live = value["live"].as_bool().unwrap_or(false);
            if live {
                println!(
                    "{}: module swapped to {} while running (pause {:.1} ms)",
                    value["name"].as_str().unwrap_or_default(),
                    value["plugin"].as_str().unwrap_or_default(),
                    value["pause_ms"].as_f64().unwrap_or_default()
                );
            } else {
                println!(
                    "{}: module set to {}; used at its next start",
                    value["name"].as_str().unwrap_or_default(),
                    value["plugin"].as_str().unwrap_or_default()
                );
            }
        }
        ConnectorsCommand::Offsets { .. } => print_offsets(&value),
        _ => {
            if let (Some(n), Some(d)) = (value["name"].as_str(), value["done"].as_str()) {
                println!("{n}: {d}");
            } else {
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_u64().map_or_else(|| n.to_string(), thousands),
        other => other.to_string(),
    }
}

fn print_list(value: &Value) {
    println!(
        "{:<20} {:<6} {:<24} {:<9} {:>12} {:>10}",
        "connector", "kind", "plugin", "state", "records", "lag"
    );
    for c in value.as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<6} {:<24} {:<9} {:>12} {:>10}",
            text(&c["name"]),
            text(&c["kind"]),
            text(&c["plugin"]),
            text(&c["state"]),
            text(&c["records"]),
            text(&c["lag"])
        );
    }
}

fn print_status(s: &Value) {
    println!(
        "{} ({}), plugin {} {}",
        text(&s["name"]),
        text(&s["kind"]),
        text(&s["plugin"]),
        text(&s["plugin_version"])
    );
    println!(
        "  state        {} since {}",
        text(&s["state"]),
        text(&s["since"])
    );
    println!(
        "  records      {} in, {} out ({} dead-lettered)",
        text(&s["records_in"]),
        text(&s["records_out"]),
        text(&s["dead_lettered"])
    );
    println!(
        "  bytes        {} in, {} out",
        text(&s["bytes_in"]),
        text(&s["bytes_out"])
    );
    println!("  lag          {}", text(&s["lag"]));
    println!("  last record  {}", text(&s["last_record_at"]));
    println!("  restarts     {}", text(&s["restarts"]));
    if let Some(e) = s["last_error"].as_object() {
        println!(
            "  last error   {} (at {})",
            text(&e["message"]),
            text(&e["at"])
        );
    }
    if let Some(w) = s["last_swap"].as_object() {
        let how = if w["ok"].as_bool().unwrap_or(false) {
            format!(
                "ok, paused {:.1} ms",
                w["pause_ms"].as_f64().unwrap_or_default()
            )
        } else {
            format!("failed: {}", text(&w["error"]))
        };
        println!(
            "  last swap    {} -> {} at {}: {how}",
            text(&w["from"]),
            text(&w["to"]),
            text(&w["at"])
        );
    }
    println!(
        "  {:<8} {:<11} {:<26} {:>8} {:>12}  last error",
        "instance", "state", "since", "restarts", "records"
    );
    for i in s["instances"].as_array().into_iter().flatten() {
        println!(
            "  {:<8} {:<11} {:<26} {:>8} {:>12}  {}",
            text(&i["index"]),
            text(&i["state"]),
            text(&i["since"]),
            text(&i["restarts"]),
            text(&i["records"]),
            i["last_error"]["message"].as_str().unwrap_or("-")
        );
    }
}

fn print_offsets(o: &Value) {
    let partitions = o["partitions"].as_array().cloned().unwrap_or_default();
    if !partitions.is_empty() {
        println!(
            "{:<20} {:>9} {:>12} {:>12} {:>12}",
            "topic", "partition", "committed", "start", "end"
        );
        for p in partitions {
            println!(
                "{:<20} {:>9} {:>12} {:>12} {:>12}",
                text(&p["topic"]),
                text(&p["partition"]),
                text(&p["committed"]),
                text(&p["start"]),
                text(&p["end"])
            );
        }
    }
    for p in o["positions"].as_array().into_iter().flatten() {
        println!(
            "{:<20} position {}",
            text(&p["producer"]),
            text(&p["position_hex"])
        );
    }
}

/// Runs one `plugins` verb.
pub async fn plugins(target: Target, command: PluginsCommand) -> anyhow::Result<ExitCode> {
    match plugins_inner(target, command).await {
        Err(e) if e.downcast_ref::<LocalInput>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_INVALID))
        }
        other => other,
    }
}

async fn plugins_inner(target: Target, command: PluginsCommand) -> anyhow::Result<ExitCode> {
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
