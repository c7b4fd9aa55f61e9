//! `setpoint infer`: one inference request to a daemon's v2 endpoint (JSON or binary), its
//! answer as JSON or as the predicted class and probability of each row.

use std::io::Write;

use anyhow::{Context, anyhow};

use super::input_error;
use super::output::{client_error, connect, print_json, print_text};
use crate::cli::InferArgs;
use crate::client::{ClientError, path_segment, table, v2};

/// Runs `setpoint infer`.
pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let info = v2::model_info(&client, &args.model).map_err(client_error)?;
    let input = read_input(&args, &info)?;
    let req = encode(input, &info, args.binary)?;
    let sent = std::time::Instant::now();
    let raw = v2::infer(&client, &args.model, &req).map_err(client_error)?;
    let round_trip = sent.elapsed();
    let decoded = v2::decode_response(&raw).map_err(|message| {
        anyhow!(ClientError::BadResponse {
            method: "POST",
            url: client.url(&format!("/v2/models/{}/infer", path_segment(&args.model))),
            message: message.to_string(),
        })
    })?;
    if args.client.json {
        // A JSON answer as it came; a binary one as its header with the values decoded into
        // each output's `data`.
        if raw.header_len.is_none() {
            let mut out = std::io::stdout().lock();
            out.write_all(&raw.body)?;
            writeln!(out)?;
            return Ok(());
        }
        return print_json(&decoded.json);
    }
    print_classes(&decoded, &info, &args.model)?;
    let server = raw
        .server_us
        .map_or_else(|| "-".into(), |us| format!("{:.2} ms", us as f64 / 1000.0));
    print_text(&format!(
        "latency: {server} in the daemon (request to answer), {:.2} ms round trip seen here\n",
        round_trip.as_secs_f64() * 1000.0
    ))
}

/// The rows to send: from `--json-input FILE` (`-`: standard input) or `--random N`.
fn read_input(args: &InferArgs, info: &v2::ModelInfo) -> anyhow::Result<v2::InputFile> {
    match (&args.json_input, args.random) {
        (Some(path), _) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("cannot read standard input")?;
                s
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| input_error(format!("cannot read {}: {e}", path.display())))?
            };
            Ok(v2::parse_input_file(&text, info)
                .map_err(|e| input_error(format!("{}: {e}", path.display())))?)
        }
        (None, Some(n)) => {
            if n == 0 || n > 1_000_000 {
                return Err(input_error(format!(
                    "--random must be between 1 and 1000000 rows, got {n}"
                )));
            }
            Ok(v2::InputFile::Rows {
                data: v2::random_rows(n, info.features, args.seed),
                rows: n,
            })
        }
        (None, None) => Err(input_error("give --json-input FILE or --random N")),
    }
}

/// The request body: JSON, or binary tensor data with `--binary`.
fn encode(
    input: v2::InputFile,
    info: &v2::ModelInfo,
    binary: bool,
) -> anyhow::Result<v2::EncodedRequest> {
    Ok(match (input, binary) {
        (v2::InputFile::Rows { data, rows }, false) => v2::EncodedRequest {
            body: v2::json_request(info, &data, rows, false),
            header_len: None,
        },
        (v2::InputFile::Rows { data, rows }, true) => v2::binary_request(info, &data, rows),
        (v2::InputFile::Body(body), false) => v2::EncodedRequest {
            body: body.to_string().into_bytes(),
            header_len: None,
        },
        (v2::InputFile::Body(body), true) => {
            let (data, rows) =
                v2::rows_of_body(&body, info).map_err(|e| input_error(e.to_string()))?;
            v2::binary_request(info, &data, rows)
        }
    })
}

/// The predicted class and its probability for each row, as a table.
fn print_classes(
    decoded: &v2::DecodedResponse,
    info: &v2::ModelInfo,
    model: &str,
) -> anyhow::Result<()> {
    let output = decoded
        .outputs
        .iter()
        .find(|o| o.name == info.output_name)
        .or_else(|| decoded.outputs.first())
        .ok_or_else(|| anyhow!("the response of model {model} holds no output"))?;
    let classes = output
        .shape
        .last()
        .copied()
        .filter(|&c| c > 0)
        .map(|c| c as usize)
        .or(info.classes)
        .ok_or_else(|| anyhow!("the response's output has no class dimension"))?;
    let mut t = table::Table::new(&["ROW", "CLASS", "PROBABILITY"]).right_align(&[0, 1, 2]);
    for (i, (c, p)) in v2::argmax_rows(&output.data, classes).iter().enumerate() {
        t.row(vec![(i + 1).to_string(), c.to_string(), format!("{p:.6}")]);
    }
    print_text(&t.render())
}
